"""deploy/monitoring/: the alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``), and the rules and the dashboard only name metrics the gateway
exports. (A real Prometheus scraping running gateways answers every dashboard query in
tests/interop/test_console_browser.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.drops import REASONS
from gateway.metrics import Metrics
from testbed.pki import Pki

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "xmpp-gateway-rules.yml"
DASHBOARD = MONITORING / "xmpp-gateway-dashboard.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run `make debs` (Debian package prometheus)")
    return found


def test_rules_are_valid() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_rules_unit_tests_pass() -> None:
    result = subprocess.run([promtool(), "test", "rules", "xmpp-gateway-rules.test.yml"],
                            capture_output=True, text=True, timeout=60, cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def exported_names(certificate: Path) -> set[str]:
    """Every sample name a gateway with all its gauges wired exports."""
    metrics = Metrics()
    metrics.watch(lambda: 0, lambda: 0, lambda: 0, lambda: 1000)
    metrics.watch_sip(dict)
    metrics.watch_proxy(dict)
    metrics.watch_certificates(lambda: [("*", certificate)])
    metrics.handshake(0.1, "SASL over TLS")
    metrics.session_authenticated("inbound", "SASL over TLS")
    metrics.count("stanzas_in", "a.example")
    metrics.count("stanzas_out", "a.example")
    metrics.count("refusals", "contact rules")
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\bxmpp_gateway_\w+", text))


def test_rules_and_dashboard_name_exported_metrics(tmp_path: Path) -> None:
    exported = exported_names(Pki(tmp_path).tls_settings("a.example").certificate)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for source, names in (("rules", used_names(RULES.read_text())),
                          ("dashboard", used_names("\n".join(exprs)))):
        assert names, source
        assert names <= exported, f"{source} names metrics the gateway does not export: " \
                                  f"{sorted(names - exported)}"


def test_dashboard_imports_with_a_datasource_choice() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {"${DS_PROMETHEUS}"}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"SIP proxy", "Stanzas per second, each way", "S2S session failures, by reason",
            "Certificate expires in"} <= titles


def test_every_drop_reason_is_exported_from_the_start() -> None:
    """A drop reason missing from REASONS would have no series until its first drop, and
    the alert on increase() would miss that first one."""
    source = "\n".join(path.read_text() for path in
                       (Path(__file__).resolve().parents[2] / "gateway").rglob("*.py"))
    recorded = set(re.findall(r"drops\.record\(\s*\"([^\"]+)\"", source))
    assert recorded and recorded <= set(REASONS), recorded - set(REASONS)
    metrics = Metrics()
    assert set(metrics.dropped.values) == set(REASONS)
    assert all(value == 0 for value in metrics.dropped.values.values())
