"""What every benchmark run starts from: a network namespace of its own (loopback IPs,
dnsmasq with the test domains; testbed/namespace.py) and a PKI holding the load
generator's certificates."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from gateway.auth import devcerts
from testbed.namespace import Namespace
from testbed.pki import Pki

ROOT = Path(__file__).resolve().parents[1]


def bench_pki(root: Path) -> Pki:
    """The test CA plus load.example's certificate (DNS-IDs only: ejabberd 23.01 crashes on
    xmppAddr client certificates, docs/interop.md) and a *.load.example wildcard for the
    idle sessions' many domains, at the paths bench/loadgen.py and bench/idle.py read."""
    pki = Pki(root)
    load = pki.tls_settings("load.example", xmpp_addrs=False)
    shutil.copy(load.certificate, pki.root / "load.example.crt")
    shutil.copy(load.key, pki.root / "load.example.key")
    wild, wild_key = devcerts.issue_certificate(
        pki.ca, pki.ca_key, ["*.load.example"], key_type="ec", xmpp_addrs=False)
    devcerts.write_key_and_cert(pki.root / "wild.load.example.crt",
                                pki.root / "wild.load.example.key", wild, wild_key)
    return pki


@contextlib.contextmanager
def bench_namespace(kind: str, *, keep_workdir: bool = True) -> Iterator[tuple[Namespace, Pki]]:
    """A namespace named after ``kind`` and this process, with its PKI; removed on exit
    (the work directory too unless ``keep_workdir``, which keeps logs for a post-mortem)."""
    workdir = Path(f"/tmp/xmpp-gateway-{kind}-{os.getpid()}")
    workdir.mkdir(parents=True)
    ns = Namespace(f"gw{kind[:1]}{os.getpid()}", workdir)
    ns.up()
    try:
        yield ns, bench_pki(workdir / "pki")
    finally:
        ns.down()
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
