"""The S2S output recording (a debugging aid the interop harness turns on) and the
harness's check of it: what every stream wrote, before TLS, judged by expat."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.net.s2s_record import S2SOutputRecorder, split_documents
from gateway.sip.development import message
from gateway.xmpp.stream import set_output_tap
from testbed.pki import Pki
from testbed.servers import assert_well_formed_output
from tests.unit.s2s_world import CoreServer, World, partner


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def test_every_stream_is_recorded_in_clear_document_by_document(tmp_path: Path,
                                                                 pki: Pki) -> None:
    world = World()  # before the recorder: the core has one output tap, the recorder's
    recorder = S2SOutputRecorder(tmp_path / "out")
    set_output_tap(recorder)
    try:
        for here, there in (("a.example", "b.example"), ("b.example", "a.example")):
            world.add(CoreServer(here, [partner(there, "optional", "optional")],
                                 pki.tls_settings(here)))
        out = world.outbound("a.example", "b.example")
        world.run()
        out.send_stanza(message("x@a.example/r", "y@b.example", "in clear <&>"))
        world.run()
    finally:
        set_output_tap(None)
        recorder.close()
    files = sorted((tmp_path / "out").glob("*.xml"))
    assert [f.name.split("-", 1)[1] for f in files] == ["outbound.xml", "inbound.xml"]
    outbound = files[0].read_bytes()
    # STARTTLS and SASL restart the stream: three documents, the stanza in the last,
    # readable although it crossed TLS
    documents = split_documents(outbound)
    assert len(documents) == 3
    assert b"in clear &lt;&amp;&gt;" in documents[2]
    assert assert_well_formed_output(tmp_path / "out") == 2


def test_the_harness_fails_on_a_byte_a_partner_refuses(tmp_path: Path) -> None:
    good = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
            b"xmlns:stream='http://etherx.jabber.org/streams'>")
    (tmp_path / "1-outbound.xml").write_bytes(good + b"<message><body>a\x00b</body>")
    with pytest.raises(AssertionError, match=r"1-outbound.xml at byte \d+"):
        assert_well_formed_output(tmp_path)
    (tmp_path / "1-outbound.xml").write_bytes(good + b"<message><body>ok</body></message>")
    (tmp_path / "2-inbound.xml").write_bytes(good + b"<x:y/>")  # undeclared prefix
    with pytest.raises(AssertionError, match=r"2-inbound\.xml"):
        assert_well_formed_output(tmp_path)
