"""Unacknowledged stanzas are kept as the bytes written (gateway/xmpp/stream_management.py)
and parsed back only to bounce or re-send them (``parse_written``): what comes back must
be the stanza that was sent, and its bounce the same error reply as from the original."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement

import pytest

from gateway.net import resent
from gateway.sip.development import message
from gateway.xmpp import stream_management as sm
from gateway.xmpp.errors import make_error_reply
from gateway.xmpp.namespaces import NS_SERVER
from gateway.xmpp.parser import XmlStreamError, parse_written
from gateway.xmpp.xml import serialize
from testbed.pki import Pki
from tests.unit.test_s2s_stream_management import linked

NS_RECEIPTS = "urn:xmpp:receipts"
NS_XHTML_IM = "http://jabber.org/protocol/xhtml-im"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def rich_message() -> Element:
    """What the SIP side sends, and then some: an id, xml:lang, a receipt request, an
    XHTML-IM body with mixed content and tails, escapes, CR/LF/tab, a namespaced attribute
    and non-ASCII text."""
    stanza = message("alice@a.example/sip", "bob@b.example", "a < b & c > d\r\n\t'é' \"😀\"")
    stanza.set("id", "m<1>&'\"")
    stanza.set(XML_LANG, "de-CH")
    SubElement(stanza, f"{{{NS_RECEIPTS}}}request")
    html = SubElement(stanza, f"{{{NS_XHTML_IM}}}html")
    body = SubElement(html, "{http://www.w3.org/1999/xhtml}body")
    body.text = "x "
    bold = SubElement(body, "{http://www.w3.org/1999/xhtml}b", {"style": "a\nb"})
    bold.text = "bold"
    bold.tail = " tail & more"
    SubElement(stanza, "{urn:example:x}thing", {"{urn:example:attr}flag": "1"})
    return stanza


def same_tree(a: Element, b: Element) -> bool:
    return (a.tag == b.tag and a.attrib == b.attrib and (a.text or "") == (b.text or "")
            and (a.tail or "") == (b.tail or "") and len(a) == len(b)
            and all(same_tree(x, y) for x, y in zip(a, b, strict=True)))


@pytest.mark.parametrize("stanza", [rich_message(),
                                    message("x@a.example/r", "y@b.example", ""),
                                    Element(f"{{{NS_SERVER}}}presence",
                                            {"from": "x@a.example", "to": "y@b.example"})],
                         ids=["rich", "empty-body", "presence"])
def test_parsed_back_is_the_stanza_written(stanza: Element) -> None:
    written = serialize(stanza)
    [back] = parse_written([written], NS_SERVER)
    assert same_tree(back, stanza)
    assert serialize(back) == written


def test_bounce_from_bytes_is_the_bounce_from_the_stanza() -> None:
    stanza = rich_message()
    before = make_error_reply(stanza, "remote-server-timeout", "link lost", "wait")
    after = make_error_reply(parse_written([serialize(stanza)], NS_SERVER)[0],
                             "remote-server-timeout", "link lost", "wait")
    assert before is not None and after is not None
    assert serialize(after) == serialize(before)


@pytest.mark.parametrize("data", [b"", b"<message", b"<a/><b/>", b"<a/><b>", b"</x>"])
def test_not_one_element_is_refused(data: bytes) -> None:
    with pytest.raises(XmlStreamError):
        parse_written([b"<ok/>", data, b"<ok/>"], NS_SERVER)


def test_many_parsed_back_with_one_parser() -> None:
    written = [serialize(message("x@a.example/r", "y@b.example", f"m{n}")) for n in range(300)]
    assert [serialize(e) for e in parse_written(written, NS_SERVER)] == written
    assert parse_written([], NS_SERVER) == []


def test_the_queue_holds_no_trees_and_hands_back_the_stanzas(pki: Pki) -> None:
    """The stanza's tree is free once written; a lost link gives back equal stanzas,
    re-sendable (marked as held) and bounceable, with their tokens, in order."""
    world, out, _into = linked(pki)
    sent = [rich_message() for _ in range(3)]
    for n, stanza in enumerate(sent):
        stanza.set("id", f"m{n}")
    copies = [serialize(s) for s in sent]
    probe = weakref.ref(sent[0])
    for n, stanza in enumerate(sent):
        out.send_stanza(stanza, token=n)
    del sent, stanza
    gc.collect()
    assert probe() is None  # not kept by the stream
    queue = out.sm_out
    assert queue is not None and len(queue) == 3
    assert not any(gc.is_tracked(item) for item in queue._unacked or ())
    world.run()
    out.connection_lost("TCP connection reset")
    left = out.take_unacked()
    assert [token for _s, token in left] == [0, 1, 2]
    assert [serialize(s) for s, _t in left] == copies
    stanza = left[0][0]
    resent.mark(stanza, "a.example")
    assert resent.marked_by(stanza, "a.example")


def test_ack_releases_tokens_in_order() -> None:
    queue = sm.SentQueue()
    for n in range(5):
        queue.push(b"<message/>", None if n == 1 else n)
    assert queue.ack("2") == (2, [0])
    assert queue.ack("2") == (0, [])
    assert queue.ack("5") == (3, [2, 3, 4])
    assert len(queue) == 0 and queue.take() == []
