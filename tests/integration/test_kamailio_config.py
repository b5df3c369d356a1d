"""deploy/kamailio/kamailio.cfg: Kamailio accepts it with every feature, and docs/sip.md
shows the authentication route it really runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from testbed.kamailio import SHIPPED_CONFIG, local_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("features", [[], ["WITH_AUTH"], ["WITH_TLS"], ["WITH_DISPATCHER"],
                                      ["WITH_PHONE_PRESENCE"],
                                      ["WITH_AUTH", "WITH_TLS", "WITH_DISPATCHER",
                                       "WITH_PHONE_PRESENCE"]])
def test_kamailio_accepts_the_shipped_configuration(tmp_path: Path,
                                                    features: list[str]) -> None:
    values = {"SIP_DOMAIN": "contoso.example", "SIP_ADDR": "127.0.0.1", "SIP_PORT": 5070,
              "GW_ADDR": "127.0.0.1", "GW_PORT": 5062, "DB_URL": f"text://{tmp_path}",
              "CTL_SOCKET": f"unix:{tmp_path / 'ctl'}", "TLS_CONFIG": tmp_path / "tls.cfg",
              "DISPATCHER_LIST": tmp_path / "dispatcher.list"}
    (tmp_path / "kamailio-local.cfg").write_text(
        local_config(values, features, log_level=2, children=1))
    check = subprocess.run(["kamailio", "-c", "-f", str(SHIPPED_CONFIG)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr[-3000:]
    said = check.stdout + check.stderr  # "Listening on ... Aliases: ..."
    assert "udp: 127.0.0.1:5070" in said or "udp: localhost:5070" in said
    assert "*: contoso.example:*" in said  # the alias: the SIP domain is served here


def test_the_documented_authentication_route_is_the_shipped_one() -> None:
    """docs/sip.md's snippet (with the gateway at 10.0.0.5) is the shipped AUTH route."""
    shipped = SHIPPED_CONFIG.read_text()
    route = re.search(r"route\[AUTH\] \{\n(.*?)\n\}\n", shipped, re.DOTALL)
    assert route is not None
    doc = (REPO / "docs" / "sip.md").read_text()
    snippet = route.group(1).replace("GW_ADDR", "10.0.0.5")
    assert snippet in doc
