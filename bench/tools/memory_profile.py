"""Where an idle S2S session's memory goes: the parts measured one by one.

    python -m bench.tools.memory_profile            # prints one JSON object

* ``tls_server_kib`` — one server-side TLS connection after a TLS 1.3 handshake with a
  client certificate (what an inbound SASL EXTERNAL session holds), OpenSSL's default key
  exchange (X25519MLKEM768): bytes in use by the C allocator (glibc ``mallinfo2``) for
  OpenSSL + pyOpenSSL, measured as N handshakes' growth after the client sides are freed.
  Runs in a child process with ``PYTHONMALLOC=malloc`` so that Python objects go through
  the same allocator. ``tls_server_idle_kib``: the same once the idle stream has replaced
  its memory BIOs (TlsEngine.release_buffers); ``tls_server_x25519_idle_kib``: and with
  ``tls.groups: [X25519]``, the key exchange Prosody and ejabberd negotiate here;
  ``tls_new_connection_kib``: what SSL_new alone costs before any handshake.
* ``tls_server_no_client_cert_kib`` — the same without asking for a client certificate
  (a dialback-only peer): the difference is the peer certificate and its verification.
* ``tls_after_traffic_kib`` — a connection pair after 200 KB each way (the memory-BIO
  slicing in gateway/xmpp/tls.py keeps this bounded).
* ``parser_kib`` — one stream's XML parser (expat + pyexpat + our state) after the stream
  header and a stanza, from tracemalloc (expat allocates through Python's allocator);
  ``parser_released_kib`` — what is left once the idle stream released it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

N = 300


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _in_use() -> int:
    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def tls_child(mode: str) -> float:
    """In a PYTHONMALLOC=malloc child: KiB in use per server-side TLS connection."""
    from OpenSSL import SSL

    from gateway.auth.tls_provider import OpenSslTlsProvider
    from testbed.pki import Pki
    from testbed.tls_pair import TlsPairFactory

    pki = Pki(Path(tempfile.mkdtemp(prefix="memprofile-")))
    factory = TlsPairFactory(pki)
    if "x25519" in mode:  # tls.groups: [X25519] on the server side
        domain = factory.server_domain
        factory.server = OpenSslTlsProvider(
            dataclasses.replace(pki.tls_settings(domain), groups=("X25519",)), (domain,))
    if mode == "no-client-cert":  # measurement only: a dialback-only peer
        factory.server._server.set_verify(SSL.VERIFY_NONE)
    if mode == "new-connection":
        SSL.Connection(factory.server._server, None)
        base = _in_use()
        connections = [SSL.Connection(factory.server._server, None) for _ in range(N)]
        result = (_in_use() - base) / N / 1024
        del connections
        return result

    def pair():
        s, c = factory.handshake()
        s.peer_certificate()
        if "idle" in mode:
            assert s.release_buffers()
        if mode == "traffic":
            c.send(b"x" * 200_000)
            s.receive(c.data_to_send())
            s.send(b"y" * 200_000)
            c.receive(s.data_to_send())
        return s, c

    pair()
    base = _in_use()
    pairs = [pair() for _ in range(N)]
    if mode == "traffic":
        return (_in_use() - base) / N / 1024  # the pair
    servers = [p[0] for p in pairs]
    del pairs
    result = (_in_use() - base) / N / 1024
    del servers
    return result


def parser_kib() -> tuple[float, float]:
    from gateway.xmpp.parser import StreamParser

    header = (b"<stream:stream xmlns='jabber:server' xmlns:stream="
              b"'http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
              b"from='a.example' to='gw.example' version='1.0'>")
    stanza = b"<message to='user@gw.example' type='chat'><body>hello</body></message>"
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    parsers = [StreamParser() for _ in range(N)]
    for parser in parsers:
        parser.feed(header)
        parser.feed(stanza)
    gc.collect()
    after = tracemalloc.take_snapshot()
    for parser in parsers:
        assert parser.release()
    gc.collect()
    released = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return tuple(sum(s.size_diff for s in snapshot.compare_to(before, "filename")) / N / 1024
                 for snapshot in (after, released))


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--tls-child":
        print(tls_child(sys.argv[2]))
        return 0
    root = Path(__file__).resolve().parents[2]

    def child(mode: str) -> float:
        out = subprocess.run(
            [sys.executable, "-m", "bench.tools.memory_profile", "--tls-child", mode],
            capture_output=True, text=True, timeout=300, cwd=root, check=True,
            env={**os.environ, "PYTHONMALLOC": "malloc"})
        return round(float(out.stdout.strip().splitlines()[-1]), 1)

    parser, parser_released = parser_kib()
    print(json.dumps({
        "connections": N,
        "tls_new_connection_kib": child("new-connection"),
        "tls_server_kib": child("client-cert"),
        "tls_server_idle_kib": child("client-cert-idle"),
        "tls_server_x25519_idle_kib": child("client-cert-x25519-idle"),
        "tls_server_no_client_cert_kib": child("no-client-cert"),
        "tls_after_traffic_pair_kib": child("traffic"),
        "parser_kib": round(parser, 1),
        "parser_released_kib": round(parser_released, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
