"""Re-sent stanzas (gateway/net/resent.py): marked with a XEP-0203 delay by the sender,
recognised by the receiver only when marked and already delivered."""

from __future__ import annotations

from xml.etree.ElementTree import SubElement

from gateway.net.resent import TAG_DELAY, RecentStanzas, mark, marked_by
from gateway.sip.development import message


def stanza(body: str, stanza_id: str | None = "m1") -> object:
    element = message("alice@a.example/pc", "bob@b.example", body)
    if stanza_id:
        element.set("id", stanza_id)
    return element


def test_mark_once() -> None:
    element = stanza("x")
    mark(element, "a.example")  # type: ignore[arg-type]
    mark(element, "a.example")  # type: ignore[arg-type]
    assert len(element.findall(TAG_DELAY)) == 1  # type: ignore[attr-defined]
    assert marked_by(element, "a.example") and not marked_by(element, "c.example")  # type: ignore[arg-type]


def test_a_mark_by_a_full_jid_names_its_domain_even_with_at_signs_in_the_resource() -> None:
    element = stanza("x")
    SubElement(element, TAG_DELAY,  # type: ignore[arg-type]
               {"from": "node@a.example/res@c.example", "stamp": "2026-01-01T00:00:00Z"})
    assert marked_by(element, "a.example")  # type: ignore[arg-type]
    assert not marked_by(element, "c.example")  # type: ignore[arg-type]


def test_only_a_marked_repeat_of_a_remembered_stanza_is_a_duplicate() -> None:
    recent = RecentStanzas(capacity=2)
    assert not recent.keys
    first = stanza("x")
    recent.remember(first, "a.example")  # type: ignore[arg-type]
    assert recent.keys
    assert not recent.seen(stanza("x"), "a.example")  # type: ignore[arg-type]  # unmarked
    again = stanza("x")
    mark(again, "a.example")  # type: ignore[arg-type]
    assert not recent.seen(again, "c.example")  # type: ignore[arg-type]  # another peer's
    assert recent.seen(again, "a.example") and recent.duplicates == 1  # type: ignore[arg-type]
    assert not recent.seen(again, "a.example")  # type: ignore[arg-type]  # once only
    recent.remember(stanza("no id", None), "a.example")  # type: ignore[arg-type]
    assert not recent.keys
    for stanza_id in ("m1", "m2", "m3"):  # m1 forgotten: capacity 2
        recent.remember(stanza("y", stanza_id), "a.example")  # type: ignore[arg-type]
    old = stanza("y", "m1")
    mark(old, "a.example")  # type: ignore[arg-type]
    assert not recent.seen(old, "a.example")  # type: ignore[arg-type]
