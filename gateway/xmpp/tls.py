"""Sans-I/O TLS: a pyOpenSSL connection over memory BIOs.

Why not the ``ssl`` module / ``loop.start_tls``? Federation must *see* a peer
certificate that does not verify (untrusted issuer, serverAuth-only EKU, wrong name)
and then decide by policy — fall back to dialback, or refuse with a precise reason
(docs/admin-guide.md, "Certificates"). ``ssl`` can only abort the handshake on a bad
client certificate; OpenSSL's verify callback (exposed by pyOpenSSL) lets us record each
verification error and carry on, as Prosody (LuaSec) and ejabberd (fast_tls) do. Keeping
TLS in the core also makes every STARTTLS path testable by piping bytes between two cores.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from gateway.xmpp.openssl_internals import release_memory_bios

# OpenSSL X509_V_ERR_INVALID_PURPOSE: the certificate's EKU does not allow this use.
# Public CAs now issue serverAuth-only certificates; a peer server
# presenting one as its client certificate is still who it claims to be (RFC 6125).
X509_V_ERR_INVALID_PURPOSE = 26


class TlsError(Exception):
    """The TLS layer failed (handshake or record error); the stream is lost."""


@dataclass(slots=True)
class VerifyError:
    errno: int
    depth: int
    certificate: x509.Certificate | None


@dataclass(slots=True)
class PeerCertificate:
    """What the peer presented and what OpenSSL thought of its chain.

    Only the leaf's DER is kept and parsed on each use (a few times per stream: at
    authentication and for piggybacked domains): a parsed certificate with its extension
    objects costs a few KiB per idle session for nothing (docs/performance.md).
    """

    leaf_der: bytes | None
    errors: list[VerifyError] = field(default_factory=list)

    @property
    def leaf(self) -> x509.Certificate | None:
        return None if self.leaf_der is None else x509.load_der_x509_certificate(self.leaf_der)

    @property
    def chain_errors(self) -> list[VerifyError]:
        """Errors that matter: a wrong EKU on the leaf is not one (see module doc)."""
        return [
            e for e in self.errors if not (e.errno == X509_V_ERR_INVALID_PURPOSE and e.depth == 0)
        ]


def _record_verify_result(
    conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int
) -> bool:
    if not ok:
        engine = conn.get_app_data()
        if isinstance(engine, TlsEngine):
            try:
                parsed = cert.to_cryptography()  # type: ignore[attr-defined]
            except Exception:
                parsed = None
            engine._verify_errors.append(VerifyError(errno, depth, parsed))
    return True  # never abort here: the policy layer decides (module doc)


def install_verify_callback(context: SSL.Context) -> None:
    """Ask for (never require) the peer's certificate and record verification errors.

    VERIFY_PEER without FAIL_IF_NO_PEER_CERT: a server context sends a CertificateRequest
    (needed for SASL EXTERNAL, XEP-0178) yet accepts peers with no certificate, who can
    still use dialback where the partner policy permits it.
    """
    context.set_verify(SSL.VERIFY_PEER, _record_verify_result)


# Ciphertext moved between Python and OpenSSL's memory BIOs per call (see TlsEngine.receive):
# bounds what each BIO keeps allocated for the rest of the connection.
BIO_SLICE = 8 * 1024


class TlsEngine:
    """One TLS connection, bytes in / bytes out, no sockets."""

    __slots__ = ("_conn", "_handshake_done", "_outgoing", "_peer", "_peer_closed",
                 "_verify_errors")

    def __init__(
        self, context: SSL.Context, *, server_side: bool, server_name: str | None = None,
        alpn: tuple[bytes, ...] = (),
    ) -> None:
        self._conn = SSL.Connection(context, None)
        self._conn.set_app_data(self)
        self._outgoing: list[bytes] = []
        self._verify_errors: list[VerifyError] = []
        self._handshake_done = False
        self._peer_closed = False
        self._peer: PeerCertificate | None = None
        if server_side:
            self._conn.set_accept_state()
        else:
            if server_name:
                self._conn.set_tlsext_host_name(server_name.encode("idna"))
            if alpn:  # XEP-0368 §3: direct TLS names the protocol, 'xmpp-server'
                self._conn.set_alpn_protos(list(alpn))
            self._conn.set_connect_state()
            self._advance_handshake()  # produces the ClientHello

    @property
    def handshake_done(self) -> bool:
        return self._handshake_done

    @property
    def peer_closed(self) -> bool:
        return self._peer_closed

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    @property
    def cipher(self) -> str:
        return self._conn.get_cipher_name() or ""

    @property
    def server_name(self) -> str | None:
        name = self._conn.get_servername()
        return name.decode("ascii", "replace") if name else None

    def peer_certificate(self) -> PeerCertificate:
        if self._peer is None:
            leaf = self._conn.get_peer_certificate(as_cryptography=True)
            der = leaf.public_bytes(Encoding.DER) if leaf is not None else None
            self._peer = PeerCertificate(der, list(self._verify_errors))
        return self._peer

    @property
    def alpn_protocol(self) -> str:
        """The ALPN protocol both ends agreed on ("" when none was)."""
        if not self._handshake_done:
            return ""
        return self._conn.get_alpn_proto_negotiated().decode("ascii", "replace")

    def peer_chain_der(self) -> list[bytes]:
        """The chain the peer presented, leaf first, as DER (for DANE, RFC 7671); only
        while the connection lives, not kept (most sessions never need it again)."""
        chain = self._conn.get_peer_cert_chain(as_cryptography=True) or []
        return [certificate.public_bytes(Encoding.DER) for certificate in chain]

    def _advance_handshake(self) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return
        except SSL.Error as exc:
            raise TlsError(f"TLS handshake failed: {_describe(exc)}") from None
        self._handshake_done = True

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; return whatever application data it decrypted to.

        The ciphertext goes into OpenSSL's memory BIO in slices of :data:`BIO_SLICE`, each
        decrypted before the next: a memory BIO keeps the largest buffer it ever held for
        the life of the connection (OpenSSL bss_mem.c never shrinks it), so one 256 KiB
        read would otherwise stay allocated by every session that was once busy.
        """
        chunks: list[bytes] = []
        view = memoryview(data)
        while True:
            if view:
                self._conn.bio_write(view[:BIO_SLICE])
                view = view[BIO_SLICE:]
            if not self._handshake_done:
                self._advance_handshake()
                if not self._handshake_done:
                    if view:
                        continue
                    return b""
            self._drain_plaintext(chunks)
            if not view or self._peer_closed:
                return b"".join(chunks)

    def _drain_plaintext(self, chunks: list[bytes]) -> None:
        while True:
            try:
                chunks.append(self._conn.recv(65536))
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self._peer_closed = True
                return
            except SSL.Error as exc:
                raise TlsError(f"TLS error: {_describe(exc)}") from None

    def send(self, data: bytes) -> None:
        """Encrypt ``data``; the records are collected by :meth:`data_to_send`. Written in
        slices of :data:`BIO_SLICE`, the outgoing BIO drained after each (see receive)."""
        view = memoryview(data)
        while view:
            try:
                sent = self._conn.send(view[:BIO_SLICE])
            except SSL.Error as exc:
                raise TlsError(f"TLS error while sending: {_describe(exc)}") from None
            view = view[sent:]
            if view:
                self._drain_ciphertext()

    def _drain_ciphertext(self) -> None:
        outgoing = self._outgoing
        while True:
            try:
                outgoing.append(self._conn.bio_read(65536))
            except SSL.WantReadError:
                return

    def data_to_send(self) -> bytes:
        self._drain_ciphertext()
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def release_buffers(self) -> bool:
        """Give an idle connection fresh, empty memory BIOs; True if done.

        A memory BIO keeps the largest buffer it ever held (see :meth:`receive`): after the
        handshake that is the peer's and our whole flights (certificates, the
        X25519MLKEM768 key share: about 5 KiB per connection), after traffic up to a slice
        and a record each way. Only after the handshake and when nothing is in flight
        (our queued records, OpenSSL's plaintext buffer and both BIOs empty), so nothing
        is lost. pyOpenSSL has no API for this:
        :func:`gateway.xmpp.openssl_internals.release_memory_bios` does it.
        """
        if not self._handshake_done or self._outgoing:
            return False
        return release_memory_bios(self._conn)

    def close(self) -> None:
        """Queue a close_notify alert (best effort: the stream is ending anyway)."""
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()


def _describe(exc: SSL.Error) -> str:
    parts = []
    for entry in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(entry, tuple) and len(entry) == 3:
            parts.append(str(entry[2]))
    return "; ".join(parts) or str(exc) or exc.__class__.__name__


class TlsProvider(Protocol):
    """Makes TLS engines from the configured certificates (see ``gateway.net.tls_config``)."""

    @property
    def available(self) -> bool:
        """False when no certificate is configured: STARTTLS cannot be offered or used."""

    def server_engine(self) -> TlsEngine: ...

    def client_engine(self, server_name: str, local_domain: str | None = None,
                      alpn: tuple[bytes, ...] = ()) -> TlsEngine: ...
