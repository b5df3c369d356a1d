"""A certificate that does not authenticate a served domain, wherever it enters: the
gateway logs it at start with the exact mismatch, and a reload that would bring it in is
refused with that mismatch while the running certificate stays."""

from __future__ import annotations

import logging
import shutil
import socket
from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.daemon import Gateway
from testbed.dnsmasq import free_port
from testbed.pki import Pki


def write_config(directory: Path, certificate: Path, key: Path, ca: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.yaml"
    path.write_text(
        "domains: [contoso.example]\n"
        f"listen: [{{host: 127.0.0.1, port: {free_port(kind=socket.SOCK_STREAM)}}}]\n"
        f"tls: {{certificate: {certificate}, key: {key}, ca_file: {ca}, use_system_cas: false}}\n"
        "store: {path: store.sqlite3}\nadmin_socket: admin.sock\npartners: []\n")
    return path


async def test_start_warns_and_reload_refuses_a_certificate_for_another_name(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    good = pki.tls_settings("contoso.example")
    wrong = pki.tls_settings("contoso.example", cert_domain="gw.contoso.example")
    # The files the configuration names: the right certificate first.
    certificate, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    shutil.copy(good.certificate, certificate)
    shutil.copy(good.key, key)
    config = write_config(tmp_path / "gw", certificate, key, Path(good.ca_file))
    gateway = Gateway(load_config(config))
    await gateway.start()
    try:
        assert "tls.certificate_mismatch" not in caplog.text
        # A certificate for gw.contoso.example copied in by hand, then `reload`.
        shutil.copy(wrong.certificate, certificate)
        shutil.copy(wrong.key, key)
        answer = await gateway.reload()
        assert answer["ok"] is False
        assert answer["error"] == (
            f"tls.certificate {certificate} does not authenticate served domain "
            "contoso.example: name mismatch (presented: gw.contoso.example; expected: "
            "contoso.example); partners will refuse SASL EXTERNAL (and fall back to dialback "
            "where their policy allows it)")
        assert "gateway.reload_refused" in caplog.text
        assert gateway.reloads == 0
    finally:
        await gateway.stop()
    # Started with it: it runs (dialback may still work), and says so at once.
    caplog.clear()
    gateway = Gateway(load_config(config))
    await gateway.start()
    try:
        records = [r for r in caplog.records if r.getMessage() == "tls.certificate_mismatch"]
        assert len(records) == 1 and records[0].levelno == logging.WARNING
        assert "name mismatch (presented: gw.contoso.example" in str(records[0].__dict__)
    finally:
        await gateway.stop()
