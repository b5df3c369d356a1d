"""The gateway's one JID type: RFC 7622 enforcement, canonical forms, precise refusals."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from precis_i18n import get_profile

from gateway.xmpp.jid import LOCALPART_EXCLUDED, Jid, JidError, bare_jid, domain_of

# Characters XML 1.0 (§2.2 Char) does not allow in a document.
XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# RFC 7622 §3.5 examples of valid JIDs, with their enforced forms.
@pytest.mark.parametrize(("text", "canonical"), [
    ("juliet@example.com", "juliet@example.com"),
    ("juliet@example.com/foo", "juliet@example.com/foo"),
    ("juliet@example.com/foo bar", "juliet@example.com/foo bar"),
    ("juliet@example.com/foo@bar", "juliet@example.com/foo@bar"),
    ("foo\\20bar@example.com", "foo\\20bar@example.com"),
    ("fussball@example.com", "fussball@example.com"),
    ("fußball@example.com", "fußball@example.com"),
    ("π@example.com", "π@example.com"),
    ("\u03a3@example.com/foo", "\u03c3@example.com/foo"),  # capital sigma, case-mapped
    ("\u03c3@example.com/foo", "\u03c3@example.com/foo"),
    ("ς@example.com/foo", "ς@example.com/foo"),
    ("king@example.com/♚", "king@example.com/♚"),
    ("example.com", "example.com"),
    ("example.com/foobar", "example.com/foobar"),
    ("a.example.com/b@example.net", "a.example.com/b@example.net"),
    # what enforcement maps rather than refuses
    ("Juliet@Example.COM/Balcony", "juliet@example.com/Balcony"),
    ("juliet@example.com./r", "juliet@example.com/r"),
    ("juliet@xn--bcher-kva.example", "juliet@bücher.example"),
    ("JULIET@BÜCHER.example", "juliet@bücher.example"),
    ("\uff2aULIET@example.com", "juliet@example.com"),  # fullwidth J: width-mapped
    ("juliet@example.com/\u00a0x", "juliet@example.com/ x"),  # non-ASCII space → U+0020
    ("juliet@[2001:DB8:0::1]", "juliet@[2001:db8::1]"),
    ("juliet@192.0.2.1", "juliet@192.0.2.1"),
])
def test_valid_jids_come_back_enforced(text: str, canonical: str) -> None:
    jid = Jid.parse(text)
    assert jid.full == str(jid) == canonical
    assert Jid.parse(canonical) == jid  # enforcement is idempotent


# RFC 7622 §3.5 examples of invalid JIDs, and others, with the part at fault.
@pytest.mark.parametrize(("text", "part", "words"), [
    ('"juliet"@example.com', "localpart", "U+0022 QUOTATION MARK at position 0"),
    ("foo bar@example.com", "localpart", "a space (U+0020 SPACE) at position 3"),
    ("henri\u2163@example.com", "localpart", "compatibility character"),
    ("\u265a@example.com", "localpart", "a symbol (U+265A BLACK CHESS KING)"),
    ("@example.com", "localpart", "empty localpart"),
    ("user@example.com/", "resourcepart", "empty resourcepart"),
    ("user@", "domainpart", "empty domainpart"),
    ("user@/resource", "domainpart", "empty domainpart"),
    ("user@exa mple.com", "domainpart", "white space"),
    ("user@a..example", "domainpart", "empty label"),
    ("user@a_b.example", "domainpart", "domainpart 'a_b.example'"),
    ("a@b@example.com", "domainpart", "U+0040"),
    ("x\x00y@example.com", "localpart", "a control character (U+0000) at position 1"),
    ("juliet@example.com/\x07", "resourcepart", "a control character (U+0007)"),
    ("juliet@example.com/x\ufffe", "resourcepart", "non-character"),
    ("\ud800@example.com", "localpart", "U+D800"),
    ("juliet@example.com/\ud83d", "resourcepart", "U+D83D"),
    ("\u0627a@example.com", "localpart", "Bidi rule"),
    ("a&b@example.com", "localpart", "U+0026 AMPERSAND"),
    ("a\uff20b@example.com", "localpart", "U+0040 COMMERCIAL AT"),  # fullwidth @ maps to @
    ("x" * 1024 + "@example.com", "localpart", "longer than 1023 octets"),
    ("x@example.com/" + "é" * 512, "resourcepart", "longer than 1023 octets"),
    ("", "jid", "empty JID"),
])
def test_invalid_jids_are_refused_with_the_part_and_the_reason(
        text: str, part: str, words: str) -> None:
    with pytest.raises(JidError) as caught:
        Jid.parse(text)
    assert caught.value.part == part
    assert words in str(caught.value)
    assert words in caught.value.reason or part == "jid"


def test_the_constructor_enforces_like_parse() -> None:
    assert Jid("Alice", "Bücher.Example.", "Phone") == Jid.parse("alice@bücher.example/Phone")
    assert Jid("", "example.com").full == "example.com"
    with pytest.raises(JidError, match=r"U\+0020 SPACE"):
        Jid("a b", "example.com")
    with pytest.raises(JidError, match="empty domainpart"):
        Jid("a", "")


def test_a_jid_is_immutable_hashable_and_survives_copies() -> None:
    jid = Jid.parse("alice@example.com/r")
    with pytest.raises(AttributeError):
        jid.local = "mallory"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del jid.domain
    assert not hasattr(jid, "__dict__")
    assert {jid: 1}[Jid.parse("Alice@EXAMPLE.com/r")] == 1
    assert jid != "alice@example.com/r"  # a JID is not its text
    assert pickle.loads(pickle.dumps(jid)) == jid
    assert copy.copy(jid) == copy.deepcopy(jid) == jid
    assert (jid.local, jid.domain, jid.resource) == ("alice", "example.com", "r")
    assert jid.bare == "alice@example.com"
    assert jid.bare_jid() == Jid.parse("alice@example.com")
    assert jid.with_resource("\u00a0x").full == "alice@example.com/ x"
    assert repr(jid) == "Jid('alice@example.com/r')"


def test_helpers_give_the_canonical_bare_jid_and_domain() -> None:
    assert bare_jid("Alice@xn--bcher-kva.example/phone") == "alice@bücher.example"
    assert domain_of("alice@Bücher.Example/phone") == "bücher.example"
    with pytest.raises(JidError):
        bare_jid("a b@example.com")


def test_long_texts_are_parsed_too_without_being_cached() -> None:
    text = "alice@example.com/" + "r" * 1000
    assert Jid.parse(text).resource == "r" * 1000


# ASCII parts skip PRECIS through a shortcut; it must give PRECIS's answer exactly.
_ASCII = st.text(st.characters(max_codepoint=0x7F), min_size=1, max_size=12)
_USERNAME = get_profile("UsernameCaseMapped")
_OPAQUE = get_profile("OpaqueString")


def _precis(profile, text: str) -> str | None:
    try:
        return profile.enforce(text)
    except UnicodeEncodeError:
        return None


@settings(max_examples=300, deadline=None)
@given(_ASCII)
def test_ascii_localpart_shortcut_agrees_with_precis(local: str) -> None:
    expected = _precis(_USERNAME, local)
    if expected is not None and LOCALPART_EXCLUDED.intersection(expected):
        expected = None
    try:
        got: str | None = Jid(local, "example.com").local
    except JidError:
        got = None
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(_ASCII)
def test_ascii_resourcepart_shortcut_agrees_with_precis(resource: str) -> None:
    try:
        got: str | None = Jid("", "example.com", resource).resource
    except JidError:
        got = None
    assert got == _precis(_OPAQUE, resource)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=10), st.text(min_size=1, max_size=10))
def test_whatever_text_comes_in_an_enforced_jid_is_valid_xml(local: str, resource: str) -> None:
    try:
        jid = Jid(local, "example.com", resource)
    except JidError as exc:
        assert exc.part in ("localpart", "resourcepart")
        return
    assert not XML_FORBIDDEN.search(jid.full)
    assert Jid.parse(jid.full) == jid  # and it reads back as itself
