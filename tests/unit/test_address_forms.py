"""One JID type and one domain normal form, whichever side an address arrives from.

SIP writes an internationalised host in A-labels (``xn--bcher-kva.example``), XMPP in
U-labels (``bücher.example``), users in any case: the store key, the served-domain check
and the certificate comparison must all see one domain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.identity import a_label_domain
from gateway.domain import normalize_domain, to_a_labels
from gateway.sip.addresses import jid_to_sip, parse_sip_uri, sip_to_jid
from gateway.sip.message import SipRequest, parse_message
from gateway.sip.parties import Refused, request_parties
from gateway.store import normalize_bare_jid
from gateway.store.sqlite import SqliteAuthorizationStore
from gateway.xmpp.jid import Jid, JidError, bare_jid

SERVED = frozenset({normalize_domain("Bücher.Example")})


def sip_request(sender_uri: str, target_uri: str) -> SipRequest:
    data = (f"SUBSCRIBE {target_uri} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.4:5070;branch=z9hG4bKkam1\r\n"
            "Max-Forwards: 69\r\n"
            f"From: <{sender_uri}>;tag=ua1\r\n"
            f"To: <{target_uri}>\r\n"
            "Call-ID: c1@127.0.0.9\r\nCSeq: 1 SUBSCRIBE\r\nEvent: presence\r\n"
            "Content-Length: 0\r\n\r\n").encode()
    request = parse_message(data)
    assert isinstance(request, SipRequest)
    return request


def test_one_domain_form_for_keys_a_labels_only_for_the_wire() -> None:
    for spelling in ("bücher.example", "Bücher.Example.", "xn--bcher-kva.example",
                     "XN--BCHER-KVA.EXAMPLE"):
        assert normalize_domain(spelling) == "bücher.example"
        assert to_a_labels(spelling) == "xn--bcher-kva.example"
        assert a_label_domain(spelling) == "xn--bcher-kva.example"  # certificates


def test_a_non_ascii_domain_reaches_the_same_store_key_from_sip_and_from_xmpp(
        tmp_path: Path) -> None:
    """A SIP user of an IDN domain subscribes (the SIP side names the user with the
    A-label host, in its own case); later an XMPP contact writes to the same user with the
    U-label domain. Both must find the one authorization in the store."""
    request = sip_request("sip:Alice@xn--bcher-kva.example", "sip:bob@fabrikam.example")
    sender, recipient = request_parties(request, SERVED)  # not 403: the domain is served
    assert sender == "alice@bücher.example/sip"
    store = SqliteAuthorizationStore(tmp_path / "store.sqlite3")
    try:
        assert store.allow(normalize_bare_jid(sender), recipient, source="subscribe")
        # the XMPP side: an inbound stanza's addresses as the router keys them
        local_user = bare_jid("ALICE@Bücher.Example/phone")
        remote = bare_jid("Bob@Fabrikam.Example/laptop")
        assert local_user == normalize_bare_jid(sender) == "alice@bücher.example"
        assert store.is_authorized(local_user, remote)
        assert store.is_authorized("alice@xn--bcher-kva.example", "bob@fabrikam.example")
        assert [c.remote_jid for c in store.list_contacts(local_user)] == [
            "bob@fabrikam.example"]
    finally:
        store.close()


def test_a_sip_request_for_an_idn_domain_served_here_is_a_404_whatever_the_spelling() -> None:
    with pytest.raises(Refused) as caught:
        request_parties(sip_request("sip:alice@Bücher.example",
                                    "sip:carol@xn--bcher-kva.example"), SERVED)
    assert caught.value.status == 404


def test_the_sip_uri_of_an_idn_jid_is_ascii_and_maps_back_to_the_same_jid() -> None:
    jid = Jid.parse("bob@bücher.example")
    address = jid_to_sip(jid)
    assert address.uri == "sip:bob@xn--bcher-kva.example"
    assert sip_to_jid(parse_sip_uri(address.uri), resource="") == jid


@pytest.mark.parametrize(("user", "words"), [
    ("al%01ice", "localpart has a control character (U+0001) at position 2"),
    ("%E2%99%9Aking", "localpart has a symbol (U+265A BLACK CHESS KING) at position 0"),
    ("al%EF%BF%BEice", "default-ignorable code point or non-character (U+FFFE)"),
    ("\uff21%EF%AC%80", "compatibility character (U+FB00 LATIN SMALL LIGATURE FF)"),
])
def test_a_sip_user_no_xmpp_server_would_accept_is_refused_with_the_character(
        user: str, words: str) -> None:
    """What a SIP user part may carry (percent-encoded) but PRECIS forbids in a JID fails
    the JID with the part and the character, and the request is a 400 that says so."""
    address = parse_sip_uri(f"sip:{user}@bücher.example")
    with pytest.raises(JidError) as caught:
        sip_to_jid(address)
    assert caught.value.part == "localpart"
    assert words in caught.value.reason
    with pytest.raises(Refused) as refused:
        request_parties(sip_request(f"sip:{user}@xn--bcher-kva.example",
                                    "sip:bob@fabrikam.example"), SERVED)
    assert refused.value.status == 400
    assert words in refused.value.reason


def test_a_sip_gruu_no_xmpp_server_would_accept_as_resource_is_refused() -> None:
    address = parse_sip_uri("sip:alice@bücher.example;gr=urn:uuid:%07x")
    with pytest.raises(JidError) as caught:
        sip_to_jid(address)
    assert caught.value.part == "resourcepart"
    assert "U+0007" in caught.value.reason
