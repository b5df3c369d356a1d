"""Two TLS engines handshaking in memory: a server side for ``server_domain`` and a client
side for ``client_domain``, both from the test PKI, with no sockets in between."""

from __future__ import annotations

from gateway.auth.tls_provider import OpenSslTlsProvider
from gateway.xmpp.tls import TlsEngine
from testbed.pki import Pki


class TlsPairFactory:
    def __init__(self, pki: Pki, server_domain: str = "gw.example",
                 client_domain: str = "a.example") -> None:
        self.server_domain, self.client_domain = server_domain, client_domain
        self.server = OpenSslTlsProvider(pki.tls_settings(server_domain), (server_domain,))
        self.client = OpenSslTlsProvider(pki.tls_settings(client_domain), (client_domain,))

    def handshake(self) -> tuple[TlsEngine, TlsEngine]:
        """A completed TLS handshake: (server engine, client engine)."""
        server = self.server.server_engine()
        client = self.client.client_engine(self.server_domain, self.client_domain)
        for _ in range(10):
            data = client.data_to_send()
            if data:
                server.receive(data)
            data = server.data_to_send()
            if data:
                client.receive(data)
        if not (server.handshake_done and client.handshake_done):
            raise RuntimeError("TLS handshake did not complete in 10 round trips")
        return server, client
