"""What a stream keeps alive after traffic (issue: memory per idle session).

* The parser must not keep the last batch of stanzas it returned.
* Long texts arriving in many expat callbacks are joined exactly once, correctly.
* The TLS engine moves ciphertext through OpenSSL's memory BIOs in bounded slices (a
  memory BIO never shrinks), and large transfers still arrive intact, in order.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from gateway.xmpp.parser import StanzaElement, StreamParser
from gateway.xmpp.tls import BIO_SLICE
from tests.support.tls_pair import TlsPairFactory
from tests.unit.s2s_world import Pki

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
