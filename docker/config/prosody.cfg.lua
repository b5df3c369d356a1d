-- Prosody a.example in the compose stack (settings of the interop harness,
-- testbed/servers.py). Runs as user prosody; data on the prosody-data volume.
daemonize = false
pidfile = "/tmp/prosody.pid"
data_path = "/var/lib/prosody"
log = { { levels = { min = "info" }, to = "console" } }
interfaces = { "*" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
http_ports = {}
https_ports = {}
modules_enabled = { "roster", "saslauth", "tls", "dialback", "disco", "ping", "presence" }
modules_disabled = { "s2s_bidi" }
authentication = "internal_plain"
-- Clients of the stack connect over its private network without TLS; S2S is TLS only.
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = true
s2s_secure_auth = true
ssl = { certificate = "/certs/a.example.crt"; key = "/certs/a.example.key"; cafile = "/certs/ca.crt" }
VirtualHost "a.example"
