"""Fuzzing the stream parser and the inbound/outbound state machines.

Two generators, both deterministic (fixed seed / derandomized hypothesis) so a CI failure
reproduces locally:

* a bounded byte-mutation fuzzer seeded from real-style transcripts (``corpus/``: Prosody
  0.12 and ejabberd 23.01 style) and from transcripts captured from the in-memory World's
  wire; mutations flip/replace/delete/duplicate/splice bytes and insert XML tokens, and
  every input is fed in random chunks;
* hypothesis, for inputs that are random rather than mutated.

The properties (the only exceptions allowed out are the documented ones):

* ``StreamParser.feed`` raises nothing but ``XmlStreamError``, and keeps raising it;
* ``S2SStream.receive_data``/``handle_timer``/``connection_lost`` raise nothing;
* every stream reports exactly one ``StreamClosed``;
* what the core wrote is itself well-formed XML (our own parser accepts it) with nothing
  after ``</stream:stream>``, and a stream error it reports is in those bytes;
* input that is not acceptable XML (per a reference parser) ends the stream before EOF.

Figures (2 cores, this machine): 187,726 inputs (180,000 mutated + 7,500 hypothesis + seeds)
in about 25 s for the whole file; two crashes were found and fixed in the core.
``FUZZ_SCALE`` (env) multiplies the mutation budget for longer local runs.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.model import Limits, PartnerPolicy
from gateway.sip.development import message, presence
from gateway.xmpp.events import DialbackVerifyNeeded, StreamClosed
from gateway.xmpp.inbound import InboundStream
from gateway.xmpp.outbound import OutboundStream
from gateway.xmpp.parser import ParserLimits, StanzaElement, StreamEnd, StreamParser
from gateway.xmpp.parser import XmlStreamError as ParserError
from gateway.xmpp.stream import S2SStream, StreamContext
from testbed.pki import Pki
from tests.unit.s2s_world import CoreServer, World, accepting_stream, partner

SEED = 0x5EED_2026
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
MUTATIONS_PER_TARGET = int(60_000 * SCALE)  # x3 targets, + hypothesis examples
CORPUS_DIR = Path(__file__).parent / "corpus"
LIMITS = Limits(max_stanza_bytes=4096, max_depth=8, max_attributes=8, max_attribute_bytes=512)

TOKENS = [
    b"<", b">", b"/>", b"</", b"&", b"'", b'"', b"=", b" ", b"\x00", b"\xff", b"\xc3",
    b"\xed\xa0\x80", b"&amp;", b"&lol;", b"&#0;", b"&#x10FFFF;", b"<!--", b"-->",
    b"<?xml version='1.0'?>", b"<?pi?>", b"<!DOCTYPE x [<!ENTITY lol 'lol'>]>",
    b"<![CDATA[", b"]]>", b"</stream:stream>",
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:db='jabber:server:dialback' from='a.example' to='b.example' version='1.0'>",
    b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>",
    b"<db:result from='a.example' to='b.example'>k</db:result>",
    b"<db:result from='b.example' to='a.example' type='valid'/>",
    b"<db:verify from='a.example' to='b.example' id='x'>k</db:verify>",
    b"<db:verify from='b.example' to='a.example' id='in-7' type='valid'/>",
    b"<message from='x@a.example' to='y@b.example'><body>hi</body></message>",
    b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    b"xmlns='jabber:client'", b"xmlns:x='urn:x'", b"x:", b" a='1'" * 9, b"<a>" * 12,
]


@dataclass
class Tally:
    inputs: int = 0
    parser_errors: int = 0
    stream_errors: int = 0


TALLY = Tally()


# ---------------------------------------------------------------------------- seeds


def captured_transcripts(root: Path) -> tuple[list[bytes], list[bytes]]:
    """Both directions of real core sessions (TCP dialback, so the wire is cleartext):
    (bytes an originating server sends, bytes a receiving server sends)."""
    world = World()
    world.add(CoreServer("a.example", [partner("b.example", "not-supported", "not-supported")],
                         None))
    world.add(CoreServer("b.example", [partner("a.example", "not-supported", "not-supported")],
                         None))
    out = world.outbound("a.example", "b.example")
    world.run()
    out.send_stanza(message("x@a.example/r", "y@b.example", "fuzz & <seed>"))
    out.send_stanza(presence("x@a.example/r", "y@b.example", "subscribe"))
    world.run()
    world.advance(61)  # a keepalive
    out.close()
    world.run()
    inbound = accepting_stream(world, out)
    return [world.plaintext_to("b.example", inbound)], [world.plaintext_to("a.example", out)]


def corpus(kind: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS_DIR.glob(f"*-{kind}.xml"))]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # replace a byte by an interesting one
            buf[min(pos, len(buf) - 1)] = rng.choice(b"<>&'\"/=:!?[] \x00\x7f\x80\xbf\xc0\xff")
        elif op == 2:  # delete a range
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 3:  # duplicate a range
            end = min(len(buf), pos + rng.randint(1, 256))
            buf[pos:pos] = buf[pos:end] * rng.randint(1, 4)
        elif op == 4:  # insert a token
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 5:  # splice in part of another transcript
            other = rng.choice(pool)
            start = rng.randrange(len(other))
            buf[pos:] = other[start : start + rng.randint(1, len(other))]
        elif op == 6:  # truncate
            del buf[pos:]
        else:  # repeat a byte many times (long names, attribute values, text)
            buf[pos:pos] = bytes([rng.choice(b"ax <&")]) * rng.randint(100, 6000)
    return bytes(buf)


def split(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6)))) \
        if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# ---------------------------------------------------------------------------- properties


def reference_failure(chunks: list[bytes]) -> bool:
    """Does a fresh parser (same limits) reject this input?"""
    parser = StreamParser(ParserLimits.from_limits(LIMITS))
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except ParserError:
        return True
    return False


def check_parser(chunks: list[bytes]) -> None:
    TALLY.inputs += 1
    parser = StreamParser(ParserLimits.from_limits(LIMITS))
    try:
        for chunk in chunks:
            for item in parser.feed(chunk):
                if isinstance(item, StanzaElement):
                    assert item.size <= LIMITS.max_stanza_bytes
    except ParserError as exc:
        TALLY.parser_errors += 1
        assert exc.condition in {"bad-format", "invalid-namespace", "invalid-xml",
                                 "not-well-formed", "policy-violation", "restricted-xml",
                                 "unsupported-encoding"}
        with pytest.raises(ParserError):  # the failure is sticky
            parser.feed(b"<a/>")


def check_stream(stream: S2SStream, chunks: list[bytes], rng: random.Random) -> None:
    TALLY.inputs += 1
    now = 0.0
    out = bytearray(stream.data_to_send())
    events = []
    closed_before_eof = False
    for chunk in chunks:
        now += 0.01
        stream.receive_data(chunk, now)
        out += stream.data_to_send()
        for event in stream.events():
            events.append(event)
            if isinstance(event, DialbackVerifyNeeded) and isinstance(stream, InboundStream):
                stream.dialback_verified(event.remote_domain, event.local_domain,
                                         rng.choice([True, False, None]),
                                         "remote-server-timeout")
                out += stream.data_to_send()
        events += stream.events()
        closed_before_eof |= any(isinstance(e, StreamClosed) for e in events)
    if rng.random() < 0.2:
        stream.handle_timer(now + LIMITS.negotiation_timeout)
        out += stream.data_to_send()
    stream.connection_lost("fuzz: EOF")
    out += stream.data_to_send()
    events += stream.events()
    closes = [e for e in events if isinstance(e, StreamClosed)]
    assert len(closes) == 1, closes
    assert stream.closed
    close = closes[0]
    if stream._tls is not None:
        return
    # What we wrote is well-formed, one document, nothing after our closing tag.
    ours = StreamParser(ParserLimits(max_stanza_bytes=1 << 20))
    items = ours.feed(bytes(out))
    if close.error and not close.by_peer:
        TALLY.stream_errors += 1
        assert f"<stream:error><{close.error} ".encode() in out
        assert isinstance(items[-1], StreamEnd)
    if out.count(b"</stream:stream>"):
        assert out.endswith(b"</stream:stream>")
    if reference_failure(chunks):
        assert closed_before_eof, "bad XML did not end the stream"


# ---------------------------------------------------------------------------- targets


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StreamContext]:
    pki = Pki(Path(tmp_path_factory.mktemp("pki")))
    partners = [partner("a.example", "not-supported", "not-supported",
                        additional_domains=("c.example",)),
                partner("d.example", "required", "optional")]
    return {
        "plain": CoreServer("b.example", partners, None, limits=LIMITS).ctx,
        "tls": CoreServer("b.example", [partner("a.example")], pki.tls_settings("b.example"),
                          limits=LIMITS).ctx,
        "out": CoreServer("a.example", [partner("b.example", "not-supported", "not-supported")],
                          None, limits=LIMITS).ctx,
    }


def new_inbound(ctx: StreamContext) -> InboundStream:
    return InboundStream(ctx, now=0.0)


def new_outbound(ctx: StreamContext) -> OutboundStream:
    policy: PartnerPolicy = partner("b.example", "not-supported", "not-supported")
    stream = OutboundStream(ctx, local_domain="a.example", remote_domain="b.example",
                            partner=policy, now=0.0)
    stream.initiate(0.0)
    stream.request_verify("a.example", "b.example", "in-7", "k")
    return stream


def test_seeds_are_accepted_unmutated(contexts: dict[str, StreamContext]) -> None:
    """The unmutated seeds parse cleanly, so mutations start from valid streams."""
    originating, receiving = captured_transcripts(Path())
    for data in corpus("originating") + originating + corpus("receiving") + receiving:
        assert not reference_failure([data])


def test_mutation_fuzzer(contexts: dict[str, StreamContext]) -> None:
    originating, receiving = captured_transcripts(Path())
    originating += corpus("originating")
    receiving += corpus("receiving")
    pool = originating + receiving
    rng = random.Random(SEED)
    started = time.perf_counter()
    for _ in range(MUTATIONS_PER_TARGET):
        data = mutate(rng, rng.choice(pool), pool)
        check_parser(split(rng, data))
        data = mutate(rng, rng.choice(originating), pool)
        ctx = contexts["tls"] if rng.random() < 0.05 else contexts["plain"]
        check_stream(new_inbound(ctx), split(rng, data), rng)
        data = mutate(rng, rng.choice(receiving), pool)
        check_stream(new_outbound(contexts["out"]), split(rng, data), rng)
    elapsed = time.perf_counter() - started
    print(f"\nmutation fuzzer: {3 * MUTATIONS_PER_TARGET} inputs in {elapsed:.1f}s "
          f"({TALLY.parser_errors} parser errors, {TALLY.stream_errors} stream errors sent)")
    assert TALLY.parser_errors > MUTATIONS_PER_TARGET // 10  # the mutations do bite
    assert TALLY.stream_errors > MUTATIONS_PER_TARGET // 10


_xml_bits = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=16), max_size=30).map(b"".join)


@settings(max_examples=3000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.binary(max_size=512) | _xml_bits, st.lists(st.integers(1, 600), max_size=5))
def test_hypothesis_parser(data: bytes, cuts: list[int]) -> None:
    cuts = sorted(c for c in set(cuts) if c < len(data))
    check_parser([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])


HEADER_IN = TOKENS[25]


@settings(max_examples=3000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(_xml_bits, st.booleans(), st.randoms(use_true_random=False))
def test_hypothesis_inbound(contexts: dict[str, StreamContext], body: bytes, with_header: bool,
                            rng: random.Random) -> None:
    data = (HEADER_IN if with_header else b"") + body
    check_stream(new_inbound(contexts["plain"]), split(rng, data) if data else [b""], rng)


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(_xml_bits, st.randoms(use_true_random=False))
def test_hypothesis_outbound(contexts: dict[str, StreamContext], body: bytes,
                             rng: random.Random) -> None:
    header = (b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/"
              b"streams' xmlns:db='jabber:server:dialback' id='b-1' version='1.0'>")
    data = header + body
    check_stream(new_outbound(contexts["out"]), split(rng, data), rng)


def test_total_inputs() -> None:
    """Runs last in this file: the whole run tried at least 100,000 inputs."""
    if TALLY.inputs < 1000:
        pytest.skip("only part of the file was selected")
    print(f"\nfuzz total: {TALLY.inputs} inputs")
    assert TALLY.inputs >= 100_000 * min(SCALE, 1)
