"""Re-sent stanzas (gateway/net/resent.py): marked with a XEP-0203 delay by the sender,
recognised by the receiver only when marked and already delivered."""

from __future__ import annotations

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


def test_only_a_marked_repeat_is_a_duplicate() -> None:
    recent = RecentStanzas(capacity=2)
    first = stanza("x")
    assert not recent.seen(first, "a.example")  # type: ignore[arg-type]
    assert not recent.seen(stanza("x"), "a.example")  # type: ignore[arg-type]  # unmarked: a sender reusing ids
    again = stanza("x")
    mark(again, "a.example")  # type: ignore[arg-type]
    assert recent.seen(again, "a.example") and recent.duplicates == 1  # type: ignore[arg-type]
    assert not recent.seen(again, "c.example")  # type: ignore[arg-type]  # another peer's
    assert not recent.seen(stanza("no id", None), "a.example")  # type: ignore[arg-type]
    recent.seen(stanza("y", "m2"), "a.example")  # type: ignore[arg-type]
    recent.seen(stanza("z", "m3"), "a.example")  # type: ignore[arg-type]  # m1 forgotten
    assert not recent.seen(again, "a.example")  # type: ignore[arg-type]
