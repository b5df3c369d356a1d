-- Prosody a.example for the docker-compose demo (same settings as the interop harness).
daemonize = false
log = { { levels = { min = "debug" }, to = "console" } }
interfaces = { "*" }
modules_enabled = { "roster", "saslauth", "tls", "dialback", "disco", "ping", "presence", "register" }
allow_registration = true
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_require_encryption = true
s2s_secure_auth = false
ssl = { certificate = "/certs/a.example.crt"; key = "/certs/a.example.key"; cafile = "/certs/ca.crt" }
VirtualHost "a.example"
