from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testbed.namespace import Namespace
from testbed.pki import Pki


@pytest.fixture(scope="module")
def ns(tmp_path_factory: pytest.TempPathFactory):
    for tool in ("prosody", "dnsmasq", "ip"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed: run `make debs` (make test does)")
    namespace = Namespace(f"gwt{os.getpid()}", tmp_path_factory.mktemp("interop"))
    namespace.up()
    try:
        yield namespace
    finally:
        namespace.down()


@pytest.fixture(scope="module")
def pki(ns: Namespace) -> Pki:
    return Pki(ns.workdir / "pki")
