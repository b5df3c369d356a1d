"""XML namespaces of the S2S protocol (RFC 6120, RFC 6121, XEP-0220, XEP-0178)."""

from __future__ import annotations

NS_SERVER = "jabber:server"  # RFC 6120 §4.8.3: content namespace of S2S streams
NS_CLIENT = "jabber:client"
NS_STREAMS = "http://etherx.jabber.org/streams"  # RFC 6120 §4.8.1
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"  # RFC 6120 §4.9.2
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"  # RFC 6120 §8.3.2
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"  # RFC 6120 §5
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"  # RFC 6120 §6
NS_DIALBACK = "jabber:server:dialback"  # XEP-0220 §2.1: the db: prefix on the stream
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"  # XEP-0220 §2.4 (dialback errors)
NS_XML = "http://www.w3.org/XML/1998/namespace"  # xml:lang
NS_PING = "urn:xmpp:ping"  # XEP-0199
NS_BIDI_FEATURE = "urn:xmpp:features:bidi"  # XEP-0288 §2: the stream feature
NS_BIDI = "urn:xmpp:bidi"  # XEP-0288 §2: the initiating server's request
NS_SM = "urn:xmpp:sm:3"  # XEP-0198 stream management

# Prefixes fixed by convention on the stream header; the serializer uses them so that the
# bytes look like what every other server sends (RFC 6120 §4.8.5).
PREFIXES: dict[str, str] = {NS_STREAMS: "stream", NS_DIALBACK: "db", NS_XML: "xml"}
