"""Just enough SIP wire handling (RFC 3261 §7, §8.2.6, §18) for the benchmark's SIP ends to
keep up with >=10,000 requests/s in one Python process.

The gateway's own parser (gateway.sip.message) builds objects for every header; a load
generator or sink only needs the start line, the headers a response copies (Via, From,
To, Call-ID, CSeq; §8.2.6.2), the status of a response and the body. Everything here
works on ``bytes`` split at CRLF, nothing more. Compact header forms (§7.3.3) are
understood because Kamailio may relay them as received.
"""

from __future__ import annotations

import re
import secrets
import socket

_COMPACT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}
_COPIED = (b"via", b"from", b"to", b"call-id", b"cseq")
# The branch of the first value of the first Via header line: the top Via (§20.42, §7.3.1;
# compact form "v", §7.3.3), read from the head only.
_TOP_VIA_BRANCH = re.compile(
    rb"^(?:via|v)[ \t]*:[^\r\n,]*?;[ \t]*branch[ \t]*=[ \t]*([^;,\s]+)",
    re.IGNORECASE | re.MULTILINE)
_RETRY_AFTER = re.compile(rb"^retry-after[ \t]*:[ \t]*(\d+)", re.IGNORECASE | re.MULTILINE)


def split(datagram: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """(start line, [(lower-case full header name, raw header line)], body)."""
    head, _, body = datagram.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name = line.partition(b":")[0].strip().lower()
        headers.append((_COMPACT.get(name, name), line))
    return lines[0], headers, body


def value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    """The value of the first header called ``name`` (lower-case full name), or b""."""
    for found, line in headers:
        if found == name:
            return line.partition(b":")[2].strip()
    return b""


def response(headers: list[tuple[bytes, bytes]], status: int, reason: str,
             to_tag: bytes) -> bytes:
    """A response to the request whose headers are given: Via, From, To (tagged when the
    request's To had no tag), Call-ID and CSeq copied in order (RFC 3261 §8.2.6.2)."""
    out = [f"SIP/2.0 {status} {reason}".encode()]
    for name, line in headers:
        if name in _COPIED:
            if name == b"to" and b";tag=" not in line.lower():
                line += b";tag=" + to_tag
            out.append(line)
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(out)


def status_of(start_line: bytes) -> int:
    """The status code of a response's start line, 0 for a request."""
    if not start_line.startswith(b"SIP/2.0 "):
        return 0
    return int(start_line[8:11])


def branch_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The branch parameter of the top Via (the transaction's key, RFC 3261 §17.1.3)."""
    via = value(headers, b"via").split(b",")[0]
    for param in via.split(b";")[1:]:
        key, _, val = param.partition(b"=")
        if key.strip().lower() == b"branch":
            return val.strip()
    return b""


def response_key(datagram: bytes) -> tuple[int, bytes, int | None]:
    """(status, top Via branch, Retry-After seconds or None) of a response, status 0 for a
    request: what a client transaction needs from each response (RFC 3261 §17.1.3,
    §21.5.4), without splitting every header as :func:`split` does — the SIP load reads
    one response per request it sends."""
    if not datagram.startswith(b"SIP/2.0 "):
        return 0, b"", None
    end = datagram.find(b"\r\n\r\n")
    head = datagram if end < 0 else datagram[:end]
    found = _TOP_VIA_BRANCH.search(head)
    status = int(datagram[8:11])
    after = _RETRY_AFTER.search(head) if status == 503 else None
    return (status, found.group(1) if found else b"",
            int(after.group(1)) if after else None)


def udp_socket(host: str, *, port: int = 0, buffer: int = 8 * 1024 * 1024) -> socket.socket:
    """A UDP socket on ``host`` (``port``, default any) with large buffers, so that the
    benchmark's own ends never are where datagrams are lost (SO_RCVBUFFORCE when root,
    else capped by net.core.rmem_max)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force or plain, buffer)
        except (OSError, TypeError):
            sock.setsockopt(socket.SOL_SOCKET, plain, buffer)
    sock.bind((host, port))
    return sock


def register(sock: socket.socket, proxy: tuple[str, int], user: str, domain: str,
             expires: int = 600, timeout: float = 5.0) -> tuple[int, int]:
    """REGISTER ``user@domain`` with this socket's address as Contact (RFC 3261 §10);
    ``expires=0`` removes that binding again (§10.2.2). Returns the final status (0 when
    nothing came back in ``timeout``) and how many bindings the AoR has now: the 200 lists
    every current Contact (§10.3 step 8). A registrar forks a request to all of them
    (Kamailio's ``lookup`` + ``t_relay``), so a stale binding left by an earlier UA costs
    the proxy a branch per message."""
    host, port = sock.getsockname()
    branch = "z9hG4bK" + secrets.token_hex(8)
    request = (
        f"REGISTER sip:{domain} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{domain}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:{user}@{domain}>\r\n"
        f"Call-ID: {secrets.token_hex(8)}@{host}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@{host}:{port}>\r\n"
        f"Expires: {expires}\r\nContent-Length: 0\r\n\r\n").encode()
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        sock.sendto(request, proxy)
        while True:
            data = sock.recv(65535)
            start, headers, _ = split(data)
            status = status_of(start)
            if status >= 200 and branch_of(headers) == branch.encode():
                return status, sum(len(line.partition(b":")[2].split(b","))
                                   for name, line in headers
                                   if name in (b"contact", b"m") and b"<" in line)
    except TimeoutError:
        return 0, 0
    finally:
        sock.settimeout(previous)
