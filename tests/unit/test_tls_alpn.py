"""ALPN on direct TLS (XEP-0368 §3): our client names 'xmpp-server', our server selects it
when offered and selects nothing when only other protocols are."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.tls_provider import OpenSslTlsProvider
from gateway.xmpp.tls import TlsEngine
from testbed.pki import Pki


@pytest.fixture(scope="module")
def providers(tmp_path_factory: pytest.TempPathFactory) -> tuple[OpenSslTlsProvider, ...]:
    pki = Pki(Path(tmp_path_factory.mktemp("pki")))
    return (OpenSslTlsProvider(pki.tls_settings("a.example"), ("a.example",)),
            OpenSslTlsProvider(pki.tls_settings("b.example"), ("b.example",)))


def handshake(client: TlsEngine, server: TlsEngine) -> None:
    for _ in range(10):
        server.receive(client.data_to_send())
        client.receive(server.data_to_send())
        if client.handshake_done and server.handshake_done:
            return
    raise AssertionError("no handshake")


@pytest.mark.parametrize("offered, chosen", [((b"xmpp-server",), "xmpp-server"),
                                             ((b"h2", b"xmpp-server"), "xmpp-server"),
                                             ((), "")])
def test_alpn(providers: tuple[OpenSslTlsProvider, ...], offered: tuple[bytes, ...],
              chosen: str) -> None:
    a, b = providers
    client, server = a.client_engine("b.example", "a.example", offered), b.server_engine()
    handshake(client, server)
    assert client.alpn_protocol == server.alpn_protocol == chosen


def test_other_protocols_only(providers: tuple[OpenSslTlsProvider, ...]) -> None:
    """Only protocols we do not speak: no protocol is selected (RFC 7301 §3.2 lets the
    server go on without one); the XMPP stream then decides as over STARTTLS."""
    a, b = providers
    client, server = a.client_engine("b.example", "a.example", (b"h2",)), b.server_engine()
    handshake(client, server)
    assert client.alpn_protocol == server.alpn_protocol == ""
