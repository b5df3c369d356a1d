"""What a stream keeps alive after traffic and while idle (issues: memory per idle session).

* The parser must not keep the last batch of stanzas it returned.
* Long texts arriving in many expat callbacks are joined exactly once, correctly.
* The TLS engine moves ciphertext through OpenSSL's memory BIOs in bounded slices (a
  memory BIO never shrinks), and large transfers still arrive intact, in order.
* An idle stream frees its parser and TLS BIOs without changing what is parsed or sent,
  and an idle authenticated session pair stays within its measured Python allocations.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import tracemalloc
import weakref
from pathlib import Path

import pytest

from gateway.auth.tls_provider import OpenSslTlsProvider, TlsConfigError
from gateway.net.outbound_sessions import OutboundSession
from gateway.sip.development import message
from gateway.xmpp.events import StanzaReceived
from gateway.xmpp.inbound import InboundStream
from gateway.xmpp.outbound import OutboundStream
from gateway.xmpp.parser import ParserLimits, StanzaElement, StreamParser, XmlStreamError
from gateway.xmpp.stream import RELEASE_IDLE_AFTER, S2SStream
from gateway.xmpp.tls import BIO_SLICE
from testbed.pki import Pki
from testbed.tls_pair import TlsPairFactory
from tests.unit.s2s_world import CoreServer, partner

HEADER = (b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
          b" from='a.example' to='b.example' version='1.0'>")
MESSAGE = b"<message to='u@b.example' type='chat'><body>hello</body></message>"


def test_parser_keeps_no_stanza_after_returning_it() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    items = parser.feed(MESSAGE * 150 + MESSAGE[:40])  # ends inside a token
    assert len(items) == 150
    first = items[0]
    assert isinstance(first, StanzaElement)
    ref = weakref.ref(first.element)
    del items, first
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("size", [1, 1023, 1024, 1025, 5000, 300_000])
def test_long_text_in_many_pieces_is_exact(size: int) -> None:
    text = "abc&amp;\n" * (size // 9) + "z" * (size % 9)  # never cuts an entity
    expected = text.replace("&amp;", "&")
    parser = StreamParser()
    parser.feed(HEADER)
    stanza = f"<message to='u@b.example'><body>{text}</body><x xmlns='urn:t'/>tail</message>"
    data = stanza.encode()
    items = []
    for start in range(0, len(data), 777):  # arbitrary TCP segmentation
        items += parser.feed(data[start:start + 777])
    [item] = items
    assert isinstance(item, StanzaElement)
    body = item.element.find("{jabber:server}body")
    assert body is not None and body.text == expected
    extra = item.element.find("{urn:t}x")
    assert extra is not None and extra.tail == "tail"
    assert item.size == len(data)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory):
    return TlsPairFactory(Pki(Path(tmp_path_factory.mktemp("pki"))), "b.example").handshake


def test_large_transfers_arrive_intact_in_bounded_records(engines) -> None:
    server, client = engines()
    payload = bytes(range(256)) * 1200  # 300 KiB
    client.send(payload)
    ciphertext = client.data_to_send()
    assert len(ciphertext) > len(payload)
    # Records carry at most BIO_SLICE bytes of plaintext each: count the record headers.
    records, offset = 0, 0
    while offset < len(ciphertext):
        length = int.from_bytes(ciphertext[offset + 3:offset + 5], "big")
        assert length <= BIO_SLICE + 256
        offset += 5 + length
        records += 1
    assert records >= len(payload) // BIO_SLICE
    # Delivered in uneven TCP-like pieces, some larger than a slice.
    received = bytearray()
    for start in range(0, len(ciphertext), 50_000):
        received += server.receive(ciphertext[start:start + 50_000])
    assert bytes(received) == payload
    server.send(payload[::-1])
    assert client.receive(server.data_to_send()) == payload[::-1]


def test_close_notify_in_the_middle_of_a_large_read(engines) -> None:
    server, client = engines()
    client.send(b"x" * 20_000)
    client.close()
    received = server.receive(client.data_to_send())
    assert received == b"x" * 20_000
    assert server.peer_closed


# ---------------------------------------------------------------------------- idle streams

STANZA = b"<db:result from='a.example' to='b.example'>k</db:result>"


def _items(items: list) -> list[tuple]:
    out = []
    for item in items:
        if isinstance(item, StanzaElement):
            e = item.element
            out.append((e.tag, dict(e.attrib), e.text, [(c.tag, c.text, c.tail) for c in e],
                        item.size))
        else:
            out.append(item)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_released_parser_gives_the_same_items_sizes_and_limits(seed: int) -> None:
    """Releasing between items (and re-creating on the next bytes) changes nothing that
    comes out: same elements, namespaces from the header's prefixes, sizes, keepalives."""
    rng = random.Random(seed)
    header = HEADER.replace(b" from=", b" xmlns:db='jabber:server:dialback' from=")
    pieces = [header]
    for _ in range(60):  # whole items, or items cut anywhere (inside tags, texts, names)
        item = rng.choice([MESSAGE, STANZA, b" ", b"\n", MESSAGE + b"  ", MESSAGE * 3])
        cut = rng.randrange(len(item)) if rng.random() < 0.5 else 0
        pieces += [item[:cut], item[cut:]] if cut else [item]
    kept, released = StreamParser(), StreamParser()
    got_kept, got_released, releases = [], [], 0
    for piece in pieces:
        got_kept += _items(kept.feed(piece))
        got_released += _items(released.feed(piece))
        releases += released.release()
    assert got_released == got_kept
    assert releases > 5 and len(got_kept) > 40
    assert ("{jabber:server:dialback}result", {"from": "a.example", "to": "b.example"}, "k",
            [], len(STANZA)) in got_released


def test_parser_is_kept_inside_a_stanza_or_a_token() -> None:
    parser = StreamParser()
    assert not parser.release()  # no header yet
    parser.feed(HEADER)
    for partial in (MESSAGE[:5], MESSAGE[5:30], MESSAGE[30:-3]):  # inside a tag, a stanza
        parser.feed(partial)
        assert not parser.release() and not parser.released
    [item] = parser.feed(MESSAGE[-3:] + b" ")
    assert isinstance(item, StanzaElement) and item.size == len(MESSAGE)
    assert parser.release() and parser.released
    limited = StreamParser(ParserLimits(max_stanza_bytes=100))
    limited.feed(HEADER)
    assert limited.release()
    with pytest.raises(XmlStreamError, match="stanza larger than 100"):
        limited.feed(b"<message><body>" + b"x" * 200 + b"</body></message>")
    assert not limited.release()  # a failed parser stays failed


def test_tls_buffers_released_without_losing_anything_in_flight(engines) -> None:
    server, client = engines()
    client.send(b"x" * 10_000)
    records = client.data_to_send()
    # OpenSSL has taken a partial record out of the BIO into its record layer: the BIOs
    # are empty and can be replaced without losing it.
    assert server.receive(records[:100]) == b""
    assert server.release_buffers()
    assert server.receive(records[100:]) == b"x" * 10_000
    assert server.release_buffers()
    server.send(b"after release")
    assert client.receive(server.data_to_send()) == b"after release"
    client.send(b"y" * 30_000)
    assert server.receive(client.data_to_send()) == b"y" * 30_000
    server.send(b"z")  # queued, not yet collected: kept
    assert not server.release_buffers()
    assert client.receive(server.data_to_send()) == b"z"


def _idle_pairs(pki: Pki, count: int) -> tuple[list[tuple[S2SStream, S2SStream]], float]:
    """``count`` authenticated TLS + SASL EXTERNAL stream pairs (a.example -> b.example),
    bytes passed in memory, left idle past RELEASE_IDLE_AFTER."""
    rules = ("required", "required")
    a = CoreServer("a.example", [partner("b.example", *rules, dialback=False)],
                   pki.tls_settings("a.example"))
    b = CoreServer("b.example", [partner("a.example", *rules, dialback=False)],
                   pki.tls_settings("b.example"))
    now = 1000.0
    pairs = []
    for _ in range(count):
        client = OutboundStream(a.ctx, local_domain="a.example", remote_domain="b.example",
                                partner=a.ctx.partner_for("b.example"), now=now)
        server = InboundStream(b.ctx, now=now)
        client.initiate(now)
        pairs.append((client, server))
    for _ in range(30):
        for client, server in pairs:
            up = client.data_to_send()
            if up:
                server.receive_data(up, now)
            down = server.data_to_send()
            if down:
                client.receive_data(down, now)
            list(client.events()), list(server.events())
    now += RELEASE_IDLE_AFTER
    for client, server in pairs:
        assert str(client.method) == "SASL over TLS" and server.pairs, "not authenticated"
        for stream in (client, server):
            assert stream.get_timer() == now
            stream.handle_timer(now)
            assert stream._parser.released and stream.memory_releases == 1
    return pairs, now


# Python allocations per idle authenticated pair (both ends: streams, parsers' state, TLS
# engines' Python side, peer certificates), measured with this test's set-up: 7.5 KiB
# with slotted streams (10.0 with instance dicts; 35.0 KiB when idle streams kept their
# parsers). OpenSSL's own memory is not seen by tracemalloc
# (docs/performance.md has both).
IDLE_PAIR_BYTES = 7.5 * 1024


def test_python_memory_of_an_idle_session_pair(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    _idle_pairs(pki, 2)  # warm-up: caches, interned names, OpenSSL's error strings
    count = 40
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        pairs, now = _idle_pairs(pki, count)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    here = tracemalloc.Filter(False, __file__)  # this test's own bookkeeping
    grown = sum(s.size_diff for s in after.filter_traces([here]).compare_to(
        before.filter_traces([here]), "filename"))
    per_pair = grown / count
    assert per_pair <= IDLE_PAIR_BYTES * 1.1, (
        f"an idle session pair holds {per_pair / 1024:.1f} KiB of Python allocations, more "
        f"than {IDLE_PAIR_BYTES / 1024:.1f} KiB + 10 %: see docs/performance.md")
    # Still usable after the release: a stanza goes through both re-created parsers.
    client, server = pairs[0]
    client.send_stanza(message("x@a.example/r", "y@b.example", "after idle"))
    server.receive_data(client.data_to_send(), now + 1)
    [received] = [e for e in server.events() if isinstance(e, StanzaReceived)]
    assert received.stanza.findtext("{jabber:server}body") == "after idle"


def test_tls_groups_setting(tmp_path: Path) -> None:
    """tls.groups chooses the key exchange (X25519 keeps ~8 KiB less per session than
    OpenSSL's default X25519MLKEM768); a name OpenSSL does not know is a config error."""
    pki = Pki(tmp_path / "pki")
    server = OpenSslTlsProvider(
        dataclasses.replace(pki.tls_settings("b.example"), groups=("X25519",)), ("b.example",))
    client = OpenSslTlsProvider(pki.tls_settings("a.example"), ("a.example",))
    s, c = server.server_engine(), client.client_engine("b.example", "a.example")
    for _ in range(10):
        s.receive(c.data_to_send())
        c.receive(s.data_to_send())
    assert s.handshake_done and s._conn.get_group_name().lower() == "x25519"
    with pytest.raises(TlsConfigError, match="does not know"):
        OpenSslTlsProvider(dataclasses.replace(pki.tls_settings("b.example"),
                                               groups=("X25519", "no-such-group")))


def test_an_idle_outbound_session_holds_no_queue_and_no_random_state() -> None:
    """Every inbound session a peer made bidi (XEP-0288) gets an OutboundSession: idle, it
    must not own a deque (0.6 KiB) nor a ``random.Random`` (2.8 KiB) of its own."""
    session, other = OutboundSession("gw.example", "a.example"), OutboundSession("x", "y")
    assert session.queue is None and not hasattr(session, "__dict__")
    assert session.backoff.rng is other.backoff.rng
    session.enqueue("first")  # type: ignore[arg-type]  # the queue takes any item
    session.enqueue("zeroth", front=True)  # type: ignore[arg-type]
    assert list(session.queue or ()) == ["zeroth", "first"] and session.queued() == 2
    session.queue.clear()  # type: ignore[union-attr]
    session.drop_queue_if_empty()
    assert session.queue is None and session.queued() == 0
