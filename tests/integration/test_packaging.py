"""The wheel stands alone: built without deprecation noise, installed into a fresh venv
outside the checkout, it runs ``--version`` and ``check config``.

The source tree is copied to a temporary directory first (what ``git clone`` would give,
without local state), so the build neither writes into the checkout nor can pick up files
that only exist on this machine. The wheel is then installed by path into a new venv; its
dependencies come from the configured index / pip cache, as for any user. Everything runs
with the temporary directory as working directory and no ``PYTHONPATH``, so the checkout's
``gateway/`` cannot be imported by accident (asserted, too).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
LOCAL_STATE = {".git", ".venv", "build", "dist", "certs", "data", "run", "results",
               "__pycache__", ".pytest_cache", ".ruff_cache"}


def run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "XMPP_GATEWAY_CONFIG")}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n" \
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def deprecations(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.search("deprecat", line, re.I)]


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=lambda _dir, names: [
        n for n in names if n in LOCAL_STATE or n.endswith(".egg-info")])
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

    # -v: pip shows the build backend's own output, where setuptools prints its
    # deprecation warnings (SetuptoolsDeprecationWarning / BuildBackendWarning).
    build = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "--wheel-dir",
                 str(tmp_path / "wheels"), str(source)], cwd=tmp_path)
    assert not deprecations(build.stdout + build.stderr), deprecations(build.stdout +
                                                                       build.stderr)
    (wheel,) = (tmp_path / "wheels").glob("xmpp_gateway-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    install = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-v", str(wheel)],
                  cwd=tmp_path, timeout=300)
    assert not deprecations(install.stdout + install.stderr), \
        deprecations(install.stdout + install.stderr)

    # Imported from the venv, data files included.
    where = run([str(venv / "bin" / "python"), "-c",
                 "import gateway, importlib.resources as r; print(gateway.__file__); "
                 "print(len((r.files('gateway.policy') / 'negotiation-matrix.csv')"
                 ".read_text().splitlines()))"], cwd=tmp_path).stdout.split()
    assert Path(where[0]).is_relative_to(venv), where
    assert where[1] == "19", "the matrix (header + 18 rows) is missing from the wheel"
    licence = list(venv.glob("lib/python*/site-packages/xmpp_gateway-*.dist-info/licenses/"
                             "LICENSE"))
    assert licence and "Apache License" in licence[0].read_text()

    gateway = str(venv / "bin" / "xmpp-gateway")
    assert run([gateway, "--version"], cwd=tmp_path).stdout.strip() == \
        f"xmpp-gateway {version}"
    config = tmp_path / "etc" / "gateway.yaml"
    config.parent.mkdir()
    shutil.copy(REPO / "config" / "gateway.yaml", config)
    check = run([gateway, "-c", str(config), "check", "config"], cwd=tmp_path)
    assert check.stdout.startswith(f"{config}: valid; serving "), check.stdout
    assert "permits SASL over TLS" in check.stdout, check.stdout
