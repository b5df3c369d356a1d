"""The in-process development backend behaves as documented (it is what `make run` and the
S2S integration tests talk to)."""

from __future__ import annotations

from xml.etree.ElementTree import Element

import pytest

from gateway.backend import DeliveryError, SipSide
from gateway.contracts import OnDecided
from gateway.sip.development import (
    BODY,
    IQ,
    DevelopmentBackend,
    message,
    presence,
)


class Sink:
    """Stands where the router is: records what local users send."""

    def __init__(self) -> None:
        self.stanzas: list[Element] = []

    def submit_local(self, stanza: Element, on_decided: OnDecided = None) -> None:
        self.stanzas.append(stanza)
        if on_decided is not None:
            on_decided()

    async def from_local(self, stanza: Element) -> None:
        self.submit_local(stanza)

    def xmpp_saturated(self, domain: str) -> bool:
        return False


@pytest.fixture
async def started() -> tuple[DevelopmentBackend, Sink]:
    backend = DevelopmentBackend(["Contoso.example"])
    sink = Sink()
    await backend.start(sink)
    return backend, sink


def test_satisfies_the_protocol() -> None:
    backend: SipSide = DevelopmentBackend(["contoso.example"])
    assert backend.domains == frozenset({"contoso.example"})


async def test_records_and_awaits_delivered_stanzas(started) -> None:
    backend, sink = started
    stanza = message("bob@fabrikam.example/pc", "alice@contoso.example", "hi")
    await backend.deliver(stanza)
    assert await backend.next_delivered(timeout=1) is stanza
    assert list(backend.delivered) == [stanza]
    assert sink.stanzas == []  # alice is not the echo user


async def test_keeps_only_the_latest_stanzas(monkeypatch) -> None:
    """A long-running `make run` gateway must not grow with every stanza it delivers."""
    monkeypatch.setattr("gateway.sip.development.KEPT", 5)
    backend = DevelopmentBackend(["contoso.example"])
    await backend.start(Sink())
    stanzas = [message("bob@fabrikam.example/pc", "alice@contoso.example", str(index))
               for index in range(8)]
    for stanza in stanzas:
        await backend.deliver(stanza)
    assert list(backend.delivered) == stanzas[3:]
    assert [await backend.next_delivered(timeout=1) for _ in range(5)] == stanzas[3:]
    with pytest.raises(TimeoutError):
        await backend.next_delivered(timeout=0.05)
    late = message("bob@fabrikam.example/pc", "alice@contoso.example", "late")
    await backend.deliver(late)  # a waiter that came first still gets it
    assert await backend.next_delivered(timeout=1) is late


async def test_next_delivered_times_out(started) -> None:
    backend, _ = started
    with pytest.raises(TimeoutError):
        await backend.next_delivered(timeout=0.01)


async def test_echo_user_replies_with_same_body_and_type(started) -> None:
    backend, sink = started
    await backend.deliver(message("bob@fabrikam.example/pc", "echo@contoso.example", "ping"))
    [reply] = sink.stanzas
    assert reply.get("from") == "echo@contoso.example/dev"
    assert reply.get("to") == "bob@fabrikam.example/pc"
    assert reply.get("type") == "chat"
    assert reply.findtext(BODY) == "ping"


async def test_echo_ignores_bodyless_and_error_messages(started) -> None:
    backend, sink = started
    await backend.deliver(
        Element("{jabber:server}message", {"from": "b@f.example", "to": "echo@contoso.example"})
    )
    await backend.deliver(message("b@f.example", "echo@contoso.example", "x", message_type="error"))
    assert sink.stanzas == []


async def test_subscribe_is_approved_and_followed_by_presence(started) -> None:
    backend, sink = started
    await backend.deliver(presence("bob@fabrikam.example", "alice@contoso.example", "subscribe"))
    subscribed, available = sink.stanzas
    assert (subscribed.get("type"), subscribed.get("from"), subscribed.get("to")) == (
        "subscribed",
        "alice@contoso.example",
        "bob@fabrikam.example",
    )
    assert available.get("type") is None
    assert available.get("from") == "alice@contoso.example/dev"


async def test_probe_answered_with_available(started) -> None:
    backend, sink = started
    await backend.deliver(presence("bob@fabrikam.example", "alice@contoso.example", "probe"))
    [available] = sink.stanzas
    assert available.get("type") is None and available.get("to") == "bob@fabrikam.example"


async def test_iq_request_is_service_unavailable(started) -> None:
    backend, _ = started
    iq = Element(
        IQ, {"from": "b@f.example/r", "to": "alice@contoso.example", "type": "get", "id": "1"}
    )
    with pytest.raises(DeliveryError) as info:
        await backend.deliver(iq)
    assert info.value.condition == "service-unavailable"


@pytest.mark.parametrize(
    ("recipient", "condition"),
    [
        ("alice@other.example", "item-not-found"),
        ("contoso.example", "service-unavailable"),
        ("", "jid-malformed"),
    ],
)
async def test_unservable_recipients(started, recipient: str, condition: str) -> None:
    backend, _ = started
    with pytest.raises(DeliveryError) as info:
        await backend.deliver(message("b@f.example", recipient, "x"))
    assert info.value.condition == condition
    assert not backend.delivered


async def test_inject_goes_to_sink_only_for_local_users(started) -> None:
    backend, sink = started
    stanza = message("alice@contoso.example/dev", "bob@fabrikam.example", "hello")
    await backend.inject(stanza)
    assert sink.stanzas == [stanza]
    with pytest.raises(ValueError, match="not a user"):
        await backend.inject(message("mallory@evil.example", "bob@fabrikam.example", "x"))


async def test_deliver_before_start_is_an_error() -> None:
    backend = DevelopmentBackend(["contoso.example"])
    with pytest.raises(DeliveryError):
        await backend.deliver(message("b@f.example", "alice@contoso.example", "x"))
    await backend.start(Sink())
    await backend.stop()
    with pytest.raises(DeliveryError):
        await backend.deliver(message("b@f.example", "alice@contoso.example", "x"))
