"""Pure parsers for setting values that the loader checks and the services use at start.

The loader validates a file without touching the network or importing the services
(no DNS resolver, no SIP stack); the services parse the same texts again when they start.
One parser each, here, keeps the two readings identical.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``"127.0.0.53"``, ``"127.0.0.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` → (address, port).

    Nameservers must be IP addresses: a resolver cannot look up its own nameserver's name.
    """
    text = spec.strip()
    host, port = text, 53
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1 :] if close > 0 else ""
        if close < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {spec!r}: expected [IPv6] or [IPv6]:port")
        host = text[1:close]
        if rest:
            port = _port(spec, rest[1:])
    elif text.count(":") == 1:  # IPv4 or name with a port; bare IPv6 has several colons
        host, port_text = text.split(":")
        port = _port(spec, port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"nameserver {spec!r}: {host!r} is not an IP address "
            "(write host or host:port, IPv6 with a port as [address]:port)"
        ) from None
    return host, port


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"nameserver {spec!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_network(text: str) -> Network:
    """One ``sip.trusted_sources`` entry: an address (``10.0.0.7``, ``::1``) or a CIDR
    network (``10.0.0.0/29``). Host bits set under the prefix are an error: ``10.0.0.7/24``
    most likely means a typo, and silently widening it to the /24 would trust more than
    intended."""
    value = text.strip()
    if not value:
        raise ValueError("is empty; write an address (10.0.0.7) or a network (10.0.0.0/29)")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            network = ipaddress.ip_network(value, strict=False)
            raise ValueError(f"{value!r} has bits set after the /{network.prefixlen} prefix; "
                             f"write {network} for the whole network, or the single "
                             "address without a prefix") from None
        raise ValueError(f"{value!r} is not an IP address or network (CIDR such as "
                         "10.0.0.0/29 or 2001:db8::/64); host names are not accepted here, "
                         "use sip.proxy_host for the proxy's name") from None


def parse_host_port(spec: str) -> tuple[str, int]:
    """``"127.0.0.1:8480"``, ``"name:8480"`` or ``"[::1]:8480"`` → (host, port): where a
    service listens (``admin_web.listen``). An IPv6 address must be in brackets: without
    them its last group would read as the port."""
    text = spec.strip()
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not host or (":" in host and not bracketed) or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r} is not host:port (e.g. 127.0.0.1:8480 or [::1]:8480)")
    return host, int(port)
