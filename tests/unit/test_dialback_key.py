"""XEP-0185 dialback keys, pinned to the published vectors (so a wrong input order or a
raw-bytes secret hash cannot pass)."""

from __future__ import annotations

import pytest

from gateway.auth.dialback_key import DialbackKeyGenerator

SECRET = "s3cr3tf0rd14lb4ck"
STREAM_ID = "D60000229F"
# XEP-0185 §3: Receiving Server xmpp.example.com, Originating Server example.org.
XEP0185_KEY = "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
# XEP-0220 §2.1.1: <db:result from='capulet.example' to='montague.example'>.
XEP0220_KEY = "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3"


def test_xep0185_vector() -> None:
    generator = DialbackKeyGenerator(SECRET)
    assert generator.generate("xmpp.example.com", "example.org", STREAM_ID) == XEP0185_KEY
    assert not generator.secret_is_random


def test_xep0220_vector() -> None:
    generator = DialbackKeyGenerator(SECRET)
    assert generator.generate("montague.example", "capulet.example", STREAM_ID) == XEP0220_KEY


def test_verify_accepts_the_key_with_whitespace_and_upper_case() -> None:
    generator = DialbackKeyGenerator(SECRET)
    args = ("xmpp.example.com", "example.org", STREAM_ID)
    assert generator.verify(XEP0185_KEY, *args)
    assert generator.verify(f"\n    {XEP0185_KEY.upper()}\n", *args)


@pytest.mark.parametrize(
    "args",
    [
        ("example.org", "xmpp.example.com", STREAM_ID),  # roles swapped
        ("xmpp.example.com", "example.org", "D60000229G"),  # other stream
        ("xmpp.example.com", "example.net", STREAM_ID),  # other originating domain
    ],
)
def test_verify_rejects_other_inputs(args: tuple[str, str, str]) -> None:
    assert not DialbackKeyGenerator(SECRET).verify(XEP0185_KEY, *args)


def test_verify_rejects_garbage() -> None:
    generator = DialbackKeyGenerator(SECRET)
    args = ("xmpp.example.com", "example.org", STREAM_ID)
    assert not generator.verify("", *args)
    assert not generator.verify(XEP0185_KEY[:-1], *args)
    assert not generator.verify("ä" * 64, *args)


def test_nodes_sharing_a_secret_verify_each_others_keys() -> None:
    node_a, node_b = DialbackKeyGenerator("shared"), DialbackKeyGenerator("shared")
    key = node_a.generate("b.example", "a.example", "s1")
    assert node_b.verify(key, "b.example", "a.example", "s1")
    assert not DialbackKeyGenerator("other").verify(key, "b.example", "a.example", "s1")


def test_empty_secret_is_random_once_per_generator() -> None:
    first, second = DialbackKeyGenerator(""), DialbackKeyGenerator("")
    assert first.secret_is_random
    key = first.generate("b.example", "a.example", "s1")
    assert first.generate("b.example", "a.example", "s1") == key  # stable within a node
    assert first.verify(key, "b.example", "a.example", "s1")
    assert not second.verify(key, "b.example", "a.example", "s1")
    assert key != DialbackKeyGenerator("").generate("b.example", "a.example", "s1")
