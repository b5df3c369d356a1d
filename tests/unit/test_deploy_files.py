"""docker/ and deploy/ files are consistent (no Docker engine here: checked structurally)."""

from __future__ import annotations

import configparser
from pathlib import Path

from ruamel.yaml import YAML

from gateway.config.loader import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_compose_services_and_files() -> None:
    compose = YAML(typ="safe").load((ROOT / "docker" / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"certs", "dns", "gateway", "prosody", "ejabberd"}
    addresses = {}
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            assert (ROOT / "docker" / service["build"]["context"] /
                    service["build"]["dockerfile"]).is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / "docker" / source).is_file(), f"{name}: {source} missing"
        network = service.get("networks", {}).get("xmpp")
        if network:
            addresses[name] = network["ipv4_address"]
    # The DNS container's records point at the addresses the services really have.
    dns_command = compose["services"]["dns"]["command"]
    for domain, service in (("a.example", "prosody"), ("b.example", "ejabberd"),
                            ("gw.example", "gateway")):
        assert f"--host-record=xmpp.{domain},{addresses[service]}" in dns_command
        assert f"--srv-host=_xmpp-server._tcp.{domain},xmpp.{domain},5269" in dns_command


def test_compose_gateway_config_is_valid() -> None:
    config = load_config(ROOT / "docker" / "config" / "gateway.yaml")
    assert config.domains == ("gw.example",)
    assert {p.primary_domain for p in config.partners} == {"a.example", "b.example"}
    assert config.dns.nameservers == ("172.28.0.53",)


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "xmpp-gateway.service")
    service = unit["Service"]
    assert service["User"] == "xmpp-gateway"
    assert "CAP_NET_BIND_SERVICE" in service["AmbientCapabilities"]
    assert service["ExecReload"].endswith("-HUP $MAINPID")
    assert service["ExecStart"].endswith("xmpp-gateway run")
    # Enough descriptors for the default limits.max_connections (gateway/net/fdlimit.py).
    from gateway.config.model import Limits
    from gateway.net.fdlimit import RESERVE

    assert int(service["LimitNOFILE"]) >= Limits().max_connections + RESERVE
    assert unit["Install"]["WantedBy"] == "multi-user.target"
