"""docker/ and deploy/ files are consistent (no Docker engine here: checked structurally)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from ruamel.yaml import YAML

from gateway.config.loader import load_config

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return YAML(typ="safe").load((ROOT / "docker" / "docker-compose.yml").read_text())


def _addresses(compose: dict) -> dict[str, str]:
    return {name: service["networks"]["xmpp"]["ipv4_address"]
            for name, service in compose["services"].items() if "networks" in service}


def test_compose_services_and_files() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"certs", "dns", "gateway", "prosody", "ejabberd",
                                        "kamailio", "sip-ua"}
    for name, service in compose["services"].items():
        # Every image is built here, from the Debian base the build arg names.
        assert service["image"].startswith("localhost/"), name
        build = service["build"]
        assert (ROOT / "docker" / build["context"] / build["dockerfile"]).is_file(), name
        assert build["args"]["BASE"] == "${BASE_IMAGE:-debian:bookworm-slim}", name
        assert service.get("network_mode") in (None, "none"), f"{name}: host networking"
        assert service["restart"] == ("no" if name == "certs" else "unless-stopped"), name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for volume in service.get("volumes", []):
            source, _target, *mode = volume.split(":")
            if source.startswith(("./", "../")):  # a file of the repo, read-only
                assert (ROOT / "docker" / source).is_file(), f"{name}: {source} missing"
                assert mode == ["ro"], f"{name}: {source} must be mounted read-only"
            else:
                assert source in compose["volumes"], f"{name}: {source} is not a named volume"
    for dockerfile in (ROOT / "docker").glob("*/Containerfile"):
        text = dockerfile.read_text()
        assert "ARG BASE=debian:bookworm-slim" in text and "FROM ${BASE}" in text, dockerfile


def test_gateway_image() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "ARG BASE=debian:bookworm-slim" in text and "FROM ${BASE}" in text
    assert "python3 python3-venv" in text  # Debian's Python, the gateway in a venv
    assert "USER xmpp-gateway" in text
    assert 'CMD ["xmpp-gateway", "status"]' in text  # asks the admin socket
    health = _compose()["services"]["gateway"]["healthcheck"]["test"]
    assert health == ["CMD", "xmpp-gateway", "status"]


def kamailio_values(path: Path) -> dict[str, str]:
    """The ``#!substdef "!NAME!value!g"`` lines of a kamailio-local.cfg."""
    found = re.findall(r'^#!substdef "!(\w+)!([^!]*)!g"$', path.read_text(), re.MULTILINE)
    return dict(found)


def test_compose_addresses_agree() -> None:
    """The DNS records, the gateway's and Kamailio's configs name the addresses the
    services really have."""
    compose = _compose()
    addresses = _addresses(compose)
    subnet = compose["networks"]["xmpp"]["ipam"]["config"][0]["subnet"]
    assert subnet.startswith("172.29.") and subnet.endswith(".0/24")
    assert all(a.startswith(subnet.rsplit(".", 1)[0] + ".") for a in addresses.values())
    dnsmasq = (ROOT / "docker" / "config" / "dnsmasq.conf").read_text().splitlines()
    for domain, service in (("a.example", "prosody"), ("b.example", "ejabberd"),
                            ("gw.example", "gateway")):
        assert f"host-record=xmpp.{domain},{addresses[service]}" in dnsmasq
        assert f"srv-host=_xmpp-server._tcp.{domain},xmpp.{domain},5269,0,5" in dnsmasq
    for service in ("gateway", "prosody", "ejabberd", "sip-ua"):
        assert compose["services"][service]["dns"] == [addresses["dns"]], service
    config = load_config(ROOT / "docker" / "config" / "gateway.yaml")
    assert config.dns.nameservers == (addresses["dns"],)
    assert (config.sip.backend, config.sip.proxy_host) == ("sip", addresses["kamailio"])
    assert config.sip.local_host == addresses["gateway"]
    # Kamailio runs the shipped configuration with the stack's values.
    kamailio = compose["services"]["kamailio"]["volumes"]
    assert "../deploy/kamailio/kamailio.cfg:/etc/kamailio/kamailio.cfg:ro" in kamailio
    values = kamailio_values(ROOT / "docker" / "config" / "kamailio-local.cfg")
    assert (values["SIP_ADDR"], values["SIP_PORT"]) == (addresses["kamailio"],
                                                       str(config.sip.proxy_port))
    assert (values["GW_ADDR"], values["GW_PORT"], values["GW_TRANSPORT"]) == (
        addresses["gateway"], str(config.sip.local_port), config.sip.transport)
    assert f"{addresses['kamailio']}:{config.sip.proxy_port}" in \
        compose["services"]["sip-ua"]["command"]


def test_compose_gateway_config_is_valid() -> None:
    config = load_config(ROOT / "docker" / "config" / "gateway.yaml")
    assert config.domains == ("gw.example",)
    assert {p.primary_domain for p in config.partners} == {"a.example", "b.example"}
    # The store is on the gateway-store volume, the admin socket where the image made room.
    gateway = _compose()["services"]["gateway"]
    assert "gateway-store:/var/lib/xmpp-gateway" in gateway["volumes"]
    assert config.store.path.parent == Path("/var/lib/xmpp-gateway")
    assert config.admin_socket.parent == Path("/run/xmpp-gateway")


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
