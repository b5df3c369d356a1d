"""Contact rules across two real gateways: public-unverified contacts are refused until
the local user authorizes them; status notes are stripped toward public partners."""

from __future__ import annotations

from xml.etree.ElementTree import Element, SubElement

from gateway.config.model import PartnerPolicy, PartnerType
from gateway.policy.negotiation import Support
from gateway.sip.development import message
from tests.integration.test_two_gateways import Pair, pair  # noqa: F401 - fixture


def policy(domain: str, kind: PartnerType) -> PartnerPolicy:
    return PartnerPolicy(domain, kind, Support.OPTIONAL, Support.OPTIONAL, True)


async def test_public_unverified_needs_authorization(pair: Pair) -> None:  # noqa: F811
    await pair.start(policy("b.example", PartnerType.FEDERATED),
                     policy("a.example", PartnerType.PUBLIC_UNVERIFIED))
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "hi"))
    refusal = await pair.a.backend.next_delivered(10)
    assert refusal.get("type") == "error"
    assert refusal.find("{jabber:server}error/{urn:ietf:params:xml:ns:xmpp-stanzas}"
                        "service-unavailable") is not None  # same as "no such user"
    assert not pair.b.backend.delivered
    await pair.b.store.allow("bob@b.example", "alice@a.example", "test")
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "again"))
    delivered = await pair.b.backend.next_delivered(10)
    assert delivered.findtext("{jabber:server}body") == "again"


async def test_status_note_stripped_toward_public_verified(pair: Pair) -> None:  # noqa: F811
    await pair.start(policy("b.example", PartnerType.PUBLIC_VERIFIED),
                     policy("a.example", PartnerType.FEDERATED))
    presence = Element("{jabber:server}presence", {"from": "alice@a.example/pc",
                                                    "to": "bob@b.example"})
    SubElement(presence, "{jabber:server}status").text = "in a meeting with the CFO"
    SubElement(presence, "{jabber:server}show").text = "dnd"
    await pair.a.backend.inject(presence)
    delivered = await pair.b.backend.next_delivered(10)
    assert delivered.find("{jabber:server}status") is None
    assert delivered.findtext("{jabber:server}show") == "dnd"


async def test_disabled_user_cannot_federate(pair: Pair) -> None:  # noqa: F811
    await pair.start(policy("b.example", PartnerType.FEDERATED),
                     policy("a.example", PartnerType.FEDERATED))
    await pair.a.store.set_user_enabled("alice@a.example", False)
    await pair.a.backend.inject(message("alice@a.example/pc", "bob@b.example", "hi"))
    refusal = await pair.a.backend.next_delivered(10)
    assert refusal.get("type") == "error"
    assert refusal.find("{jabber:server}error/{urn:ietf:params:xml:ns:xmpp-stanzas}"
                        "forbidden") is not None
