"""SIP messages: parsing and serialisation (RFC 3261 §7, §20, §25), sans-I/O.

Why our own: the gateway needs only the non-INVITE half of SIP (MESSAGE, SUBSCRIBE,
NOTIFY, OPTIONS) and must treat every byte from the network as hostile, so a small parser
with explicit limits is easier to trust than a general stack (see docs/sip.md for the
libraries we evaluated).

What this module guarantees:

* a message is a start line, header fields and a body of exactly ``Content-Length``
  bytes (RFC 3261 §18.3: mandatory on stream transports; on UDP a missing length means
  "the rest of the datagram");
* header names are matched case-insensitively and compact forms (``i``, ``f``, ``t``,
  ``v``, ``m``, ``l``, ``c``, ``o``, ``u``, ``k``, ``s``, ``e``, ``r``; RFC 3261 §7.3.3,
  RFC 6665 §8.2.1) are expanded on input; folded header lines (§7.3.1) are unfolded;
* the five headers every request and response needs to be matched to a transaction
  (Via, From, To, Call-ID, CSeq; §8.1.1) are present, or :class:`SipParseError` is raised;
* size limits bound memory: :data:`MAX_HEADER_BYTES` for the head,
  :data:`MAX_BODY_BYTES` for the body;
* parsing is total: every function here returns a value or raises
  :class:`SipParseError`, never another exception, whatever the bytes. Numbers are ASCII
  digits only and bounded in length (``str.isdigit`` also accepts "²" and "٣", which
  ``int`` then refuses or reads as another number), the method is an ASCII token
  (§25.1), and a header section that is not UTF-8 is refused (§7.3.1: UTF-8 text).

When the start line and the header fields could be read but something later is wrong (a
bad CSeq, a Content-Length that is not a number, a body shorter than announced), the
error carries the request as far as it was read (:attr:`SipParseError.request`): enough
to answer it (RFC 3261 §8.2.6 copies Via, From, To, Call-ID and CSeq), so the sender gets
a ``400`` naming the problem (§21.4.1) rather than silence.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_HEADERS = 128

_COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "u": "allow-events", "r": "refer-to",
}
# Spelling used when we serialise a header we only know in lower case.
_CANONICAL = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
}
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
# RFC 3261 §7.3.1: these may be combined into one line with commas.
_MULTI_VALUED = frozenset({"via", "route", "record-route", "contact", "allow", "supported",
                           "require", "accept", "allow-events"})

REASONS = {
    100: "Trying", 200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Request Entity Too Large", 415: "Unsupported Media Type", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    486: "Busy Here", 488: "Not Acceptable Here", 489: "Bad Event", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Server Time-out", 603: "Decline",
}
BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 §8.1.1.7
_BRANCH = re.compile(r";[ \t]*branch=([^;, \t]+)")


class SipParseError(ValueError):
    """Bytes that are not an acceptable SIP message; ``status`` is the response a server
    should send if it can (400 for syntax, 413 for size), 0 when it cannot reply.

    ``reason`` is for the log (it may quote the offending value); ``phrase`` is the
    response's reason phrase (RFC 3261 §21.4.1: "SHOULD identify the syntax problem in
    more detail"), fixed text that never echoes the sender's bytes. ``request`` is the
    request as far as it was read when it can still be answered (see the module
    docstring), else None."""

    def __init__(self, reason: str, status: int = 400, *, phrase: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.phrase = phrase or (REASONS.get(status, "Bad Request") if status else "")
        self.request: SipRequest | None = None


# RFC 3261 §25.1 token characters (a method is a token).
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
# Request methods as spelled on the wire that passed the token check -> upper case: the
# same few arrive in every request (bounded like the header-name caches).
_METHODS: dict[str, str] = {}
# The usual spellings of CSeq and of a Via, read by one regular expression each; anything
# else goes through the general parsers below, which accept every legal spelling.
_CSEQ_USUAL = re.compile(r"([0-9]{1,10}) ([A-Z]+)")
_VIA_USUAL = re.compile(r"SIP/2\.0/([A-Z]+) ([A-Za-z0-9.-]+):([0-9]{1,5})((?:;[^;,\s]*)*)")
# The usual Via as a server transaction key: sent-by and a branch given once, unquoted,
# as the first parameter (Kamailio, Asterisk and most phones write it so).
# The port is matched as 1-65535 without leading zeros (what ``Via.sent_by`` writes), so
# the key needs no number conversion and equals what the full parser gives.
_PORT_USUAL = (r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}"
               r"|[1-9][0-9]{0,3})")
_VIA_KEY_USUAL = re.compile(
    r"SIP/2\.0/[A-Z]+ ([A-Za-z0-9.-]+:" + _PORT_USUAL + r");branch=([^;,\s\"]+)"
    r"(?:;(?!(?i:branch)=)[^;,\s\"]*)*")


def ascii_number(text: str, what: str, *, digits: int = 10) -> int:
    """The value of ``text``, which must be 1 to ``digits`` ASCII digits (leading and
    trailing linear white space allowed); :class:`SipParseError` otherwise."""
    value = text.strip(" \t")
    if not (0 < len(value) <= digits and value.isascii() and value.isdigit()):
        raise SipParseError(f"bad {what} {text[:40]!r}", phrase=f"Bad {what}")
    return int(value)


_KEYS: dict[str, str] = {}
_NAMES: dict[str, str] = {}
_NAME_CACHE_LIMIT = 4096  # names come from the network: never let the caches grow unbounded
# Header names as they appeared on the wire that passed the parser's check (a token, no
# whitespace), with their keys: the same dozen names arrive in every message, so each is
# checked and normalised once, not per line.
_VALID_NAMES: dict[str, str] = {}


def header_key(name: str) -> str:
    """The lower-case long form of a header name."""
    key = _KEYS.get(name)
    if key is None:
        lowered = name.strip().lower()
        key = _COMPACT.get(lowered, lowered)
        if len(_KEYS) < _NAME_CACHE_LIMIT:
            _KEYS[name] = key
    return key


def canonical_name(name: str) -> str:
    spelled = _NAMES.get(name)
    if spelled is None:
        key = header_key(name)
        spelled = _CANONICAL.get(key) or "-".join(part.capitalize() for part in key.split("-"))
        if len(_NAMES) < _NAME_CACHE_LIMIT:
            _NAMES[name] = spelled
    return spelled


def split_values(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas inside quotes and ``<>``."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    index = 0
    while index < len(value):
        char = value[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            depth += 1
        elif char == ">":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            parts.append(value[start:index].strip())
            start = index + 1
        index += 1
    parts.append(value[start:].strip())
    return [part for part in parts if part]


@dataclass(slots=True)
class SipMessage:
    """Start line aside, a message is its header fields in order and a body.

    ``headers`` keeps every field as received (name spelling included) so that responses
    copy them faithfully (RFC 3261 §8.2.6.2). Change it only through :meth:`add`,
    :meth:`set` and :meth:`remove`: lookups go through an index (long-form lower-case
    name → first value) built on first use, because a message is looked up a dozen times
    on the hot path and a scan with name normalisation per lookup dominated its cost.
    """

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    _index: dict[str, str] | None = field(default=None, repr=False, compare=False, kw_only=True)
    _via: Via | None = field(default=None, repr=False, compare=False, kw_only=True)
    _cseq: tuple[int, str] | None = field(default=None, repr=False, compare=False,
                                          kw_only=True)
    # Whether ``headers`` holds a Content-Length (a parsed message does): serialising
    # writes the real length instead, so that one must be left out.
    _has_length: bool = field(default=False, repr=False, compare=False, kw_only=True)
    _branch: str | None = field(default=None, repr=False, compare=False, kw_only=True)
    # (branch, sent-by) of the top Via: what a server transaction is keyed by (§17.2.3)
    _via_key: tuple[str, str] | None = field(default=None, repr=False, compare=False,
                                             kw_only=True)
    _from_uri: str | None = field(default=None, repr=False, compare=False, kw_only=True)
    # The long-form key of each entry of ``headers`` (set by the parser; None once the
    # headers change): answering a request copies five of them without normalising
    # every name again.
    _keys: list[str] | None = field(default=None, repr=False, compare=False, kw_only=True)

    def _lookup(self) -> dict[str, str]:
        index = self._index
        if index is None:
            index = {}
            for header, value in self.headers:
                index.setdefault(header_key(header), value)
            self._index = index
        return index

    def get(self, name: str) -> str | None:
        return self._lookup().get(header_key(name))

    def get_all(self, name: str) -> list[str]:
        """All values of a header, comma-combined lines split for multi-valued headers."""
        key = header_key(name)
        values: list[str] = []
        for header, value in self.headers:
            if header_key(header) == key:
                values.extend(split_values(value) if key in _MULTI_VALUED else [value])
        return values

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self.headers.append((canonical_name(name), value))
        self._keys = None
        self._from_uri = None
        key = header_key(name)
        if self._index is not None:
            self._index.setdefault(key, value)
        if key == "content-length":
            self._has_length = True

    def remove(self, name: str) -> None:
        key = header_key(name)
        self.headers = [(h, v) for h, v in self.headers if header_key(h) != key]
        self._keys = None
        if key == "content-length":
            self._has_length = False
        if key == "via":
            self._via = self._branch = self._via_key = None
        self._from_uri = None
        self._index = None
        self._via = None
        self._cseq = None

    @property
    def call_id(self) -> str:
        return self._lookup().get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        cseq = self._cseq
        if cseq is None:
            cseq = self._cseq = parse_cseq(self._lookup().get("cseq") or "")
        return cseq

    @property
    def branch(self) -> str:
        """The top Via's branch: what matches a response to its client transaction
        (RFC 3261 §17.1.3). Read without parsing the whole Via, which a response to us
        only needs for this."""
        branch = self._branch
        if branch is None:
            if self._via is not None:
                branch = self._via.branch
            else:
                found = _BRANCH.search(self._lookup().get("via") or "")
                # unusual spelling (spaces, case): the full parser
                branch = self.top_via.branch if found is None else found.group(1)
            self._branch = branch
        return branch

    @property
    def via_key(self) -> tuple[str, str]:
        """(branch, sent-by) of the top Via, as :attr:`top_via` gives them; read by one
        regular expression when the Via is spelled the usual way (a server transaction is
        looked up by it for every request received, and a retransmission too)."""
        key = self._via_key
        if key is None:
            key = self._via_key = _read_via_key(self, self._lookup().get("via") or "")
        return key

    @property
    def top_via(self) -> Via:
        via = self._via
        if via is None:
            first = self._lookup().get("via")
            if first is None:
                raise SipParseError("no Via header")
            if "," in first:
                values = split_values(first)
                if not values:  # "Via: ," holds no Via at all
                    raise SipParseError(f"empty Via {first[:40]!r}", phrase="Bad Via")
                first = values[0]
            via = self._via = parse_via(first)
        return via

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self._lookup().get("from") or "")

    @property
    def from_uri(self) -> str:
        """The URI of ``From`` (:func:`address_uri`), read once: the sender is named from
        it more than once per request."""
        uri = self._from_uri
        if uri is None:
            uri = self._from_uri = address_uri(self._lookup().get("from") or "")
        return uri

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self._lookup().get("to") or "")

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased ('' when absent)."""
        return (self._lookup().get("content-type") or "").split(";", 1)[0].strip().lower()

    def _serialize(self, start_line: str) -> bytes:
        headers = self.headers
        if self._has_length:
            headers = [(n, v) for n, v in headers if header_key(n) != "content-length"]
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers])
        return (f"{start_line}\r\n{lines}Content-Length: {len(self.body)}\r\n\r\n"
                .encode() + self.body)


def _read_via_key(message: SipMessage, via: str) -> tuple[str, str]:
    """:attr:`SipMessage.via_key` from the first Via value ``via``: one regular
    expression for the usual spelling, the full parser for anything else."""
    usual = _VIA_KEY_USUAL.fullmatch(via)
    if usual is not None:
        sent_by, branch = usual.group(1, 2)
        return branch, sent_by
    top = message.top_via
    return top.branch, top.sent_by


@dataclass(slots=True)
class SipRequest(SipMessage):
    method: str = ""
    uri: str = ""

    def serialize(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} SIP/2.0")

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri} call-id={self.call_id!r}>"


@dataclass(slots=True)
class SipResponse(SipMessage):
    status: int = 200
    reason: str = "OK"

    def serialize(self) -> bytes:
        return self._serialize(f"SIP/2.0 {self.status} {self.reason}")

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason} call-id={self.call_id!r}>"


class Via(NamedTuple):
    """A parsed Via value (RFC 3261 §20.42). A named tuple: one is made per request
    received, and a tuple is built several times faster than a frozen dataclass."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A ``From``/``To``/``Contact``/``Route`` value: display name, URI, parameters."""

    uri: str
    display: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.params.get("tag", "")

    def with_tag(self, tag: str) -> NameAddr:
        return NameAddr(self.uri, self.display, {**self.params, "tag": tag})

    def __str__(self) -> str:
        display = f'"{self.display}" ' if self.display else ""
        params = "".join(f";{k}={v}" if v else f";{k}" for k, v in self.params.items())
        return f"{display}<{self.uri}>{params}"


def _params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in text.split(";"):
        item = item.strip()
        if item:
            name, _, value = item.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
    return params


def _split_address(value: str) -> tuple[str, str, str]:
    """(display text, URI, header-parameter text) of a ``name-addr / addr-spec`` value
    (RFC 3261 §20.10, §25.1). In the addr-spec form the parameters are what follows the
    first ``;`` (§20.10: they belong to the header), returned with that ``;``."""
    text = value.strip()
    if not text:
        raise SipParseError("empty address header", phrase="Bad address header")
    if "<" in text:
        display, _, rest = text.partition("<")
        uri, closing, params = rest.partition(">")
        if not closing:
            raise SipParseError(f"unterminated '<' in {value[:80]!r}",
                                phrase="Bad address header")
        return display, uri.strip(), params
    uri, semicolon, params = text.partition(";")
    return "", uri.strip(), semicolon + params


def parse_name_addr(value: str) -> NameAddr:
    """RFC 3261 §20.10/§25.1 ``name-addr / addr-spec`` with header parameters."""
    display, uri, params = _split_address(value)
    return NameAddr(uri, display.strip().strip('"'), _params(params))


def address_uri(value: str) -> str:
    """``parse_name_addr(value).uri`` without building the display name and parameters:
    all that naming the sender of a request needs, once per relayed message."""
    return _split_address(value)[1]


def parse_via(value: str) -> Via:
    """RFC 3261 §20.42: ``SIP/2.0/UDP host[:port];params``."""
    usual = _VIA_USUAL.fullmatch(value)
    if usual is not None:
        transport, host, port_text, params = usual.groups()
        usual_port = int(port_text)
        if 0 < usual_port < 65536:
            return Via(transport, host, usual_port, _params(params))
    protocol, _, rest = value.strip().partition(" ")
    parts = protocol.split("/")
    if len(parts) != 3 or parts[0].upper() != "SIP":
        raise SipParseError(f"bad Via {value[:80]!r}", phrase="Bad Via")
    sent_by, _, params = rest.strip().partition(";")
    sent_by = sent_by.strip()
    port: int | None = None
    if sent_by.startswith("["):
        host, closing, after = sent_by[1:].partition("]")
        if not closing or (after and not after.startswith(":")):
            raise SipParseError(f"bad IPv6 reference in Via {value[:80]!r}",
                                phrase="Bad Via")
        if after:
            port = _port(after[1:], value)
    else:
        host, colon, port_text = sent_by.partition(":")
        if colon:
            port = _port(port_text, value)
    if not host:
        raise SipParseError(f"Via without host: {value[:80]!r}", phrase="Bad Via")
    return Via(parts[2].upper(), host, port, _params(params))


def _port(text: str, value: str) -> int:
    port = ascii_number(text, "Via port", digits=5)
    if not 0 < port < 65536:
        raise SipParseError(f"bad port in {value[:80]!r}", phrase="Bad Via port")
    return port


# CSeq values read before (bounded like the header-name caches): every new MESSAGE a
# phone sends starts a transaction with "1 MESSAGE".
_CSEQS: dict[str, tuple[int, str]] = {}


def parse_cseq(value: str) -> tuple[int, str]:
    """RFC 3261 §20.16 ``CSeq: 1*DIGIT LWS Method``; the number fits 32 bits (§8.1.1.5)."""
    known = _CSEQS.get(value)
    if known is not None:
        return known
    usual = _CSEQ_USUAL.fullmatch(value)
    if usual is not None:
        sequence = int(usual.group(1))
        if sequence < 1 << 32:
            known = (sequence, usual.group(2))
            if len(_CSEQS) < _NAME_CACHE_LIMIT:
                _CSEQS[value] = known
            return known
    number, _, method = value.strip().partition(" ")
    method = method.strip()
    sequence = ascii_number(number, "CSeq", digits=10)
    if sequence >= 1 << 32 or _TOKEN.fullmatch(method) is None:
        raise SipParseError(f"bad CSeq {value[:80]!r}", phrase="Bad CSeq")
    return sequence, method.upper()


class _Ids:
    """Branches, tags and Call-IDs: a random 64-bit prefix per process (drawn again in a
    forked child) followed by a counter. RFC 3261 asks branches to be unique across space
    and time (§8.1.1.7) and tags/Call-IDs to be globally unique with 32 bits of randomness
    (§19.3); the prefix gives that, the counter gives uniqueness within the process, and
    a counter is much cheaper than a getrandom() system call per identifier."""

    def __init__(self) -> None:
        self._prefix = ""
        self._next = 0
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._next = secrets.randbelow(1 << 20)

    def __call__(self) -> str:
        self._next += 1
        return f"{self._prefix}{self._next:x}"


_unique = _Ids()


def unique_token() -> str:
    """A fresh identifier unique in space and time (see :class:`_Ids`): one per request
    can serve as its branch (with the magic cookie), From tag and Call-ID at once."""
    return _unique()


def new_branch() -> str:
    return BRANCH_MAGIC + _unique()


def new_tag() -> str:
    return _unique()


def new_call_id(host: str) -> str:
    return f"{_unique()}@{host}"


def parse_message(data: bytes, *, stream: bool = False) -> SipRequest | SipResponse:
    """Parse one complete message (a UDP datagram, or what :class:`StreamDeframer` cut).

    Total: returns the message or raises :class:`SipParseError`, with
    :attr:`SipParseError.request` set when the failed message is a request that can still
    be answered."""
    head_end = data.find(b"\r\n\r\n")
    separator = 4
    if head_end < 0:
        head_end = data.find(b"\n\n")
        separator = 2
    if head_end < 0:
        if len(data) > MAX_HEADER_BYTES:
            raise SipParseError("header section too large", 413)
        raise SipParseError("no blank line after the headers",
                            phrase="No blank line after the headers")
    if head_end > MAX_HEADER_BYTES:
        raise SipParseError("header section too large", 413)
    try:
        head = data[:head_end].decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header section is not UTF-8",
                            phrase="Header section is not UTF-8") from None
    lines = head.split("\r\n")  # the usual case: CRLF line ends, no folding, no empty lines
    if _IRREGULAR_LINE.search(head) is not None:
        lines = _unfold(head)
    if not lines or not lines[0]:
        raise SipParseError("empty message", 0)
    start = lines[0]
    if len(lines) > MAX_HEADERS + 1:
        raise SipParseError("too many header fields", 413)
    parsed_headers: list[tuple[str, str]] = []
    header_keys: list[str] = []
    index: dict[str, str] = {}
    valid = _VALID_NAMES
    failure: SipParseError | None = None
    add_header, add_key, first = parsed_headers.append, header_keys.append, index.setdefault
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = valid.get(name)
        if key is None or not colon:
            name = name.strip(" \t")
            if not colon or _TOKEN.fullmatch(name) is None:
                # read on: the fields a response needs may still follow
                failure = failure or SipParseError(f"malformed header line {line[:60]!r}",
                                                   phrase="Malformed header line")
                continue
            key = header_key(name)
            if len(valid) < _NAME_CACHE_LIMIT:
                valid[name] = key
        value = value.strip(" \t")  # LWS only (§7.3.1)
        add_header((name, value))
        add_key(key)
        first(key, value)
    message: SipRequest | SipResponse
    if start.startswith("SIP/"):
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if version != "SIP/2.0" or len(code) != 3 or not (code.isascii() and code.isdigit()) \
                or not 100 <= int(code) <= 699:
            raise SipParseError(f"bad status line {start[:60]!r}", 0)
        message = SipResponse(parsed_headers, b"", int(code), reason, _index=index,
                              _has_length="content-length" in index, _keys=header_keys)
    else:
        parts = start.split(" ")
        method = _METHODS.get(parts[0]) if len(parts) == 3 else None
        if method is None:
            if len(parts) != 3 or _TOKEN.fullmatch(parts[0]) is None:
                raise SipParseError(f"bad request line {start[:60]!r}",
                                    phrase="Bad request line")
            method = parts[0].upper()
            if len(_METHODS) < _NAME_CACHE_LIMIT:
                _METHODS[parts[0]] = method
        if parts[2] != "SIP/2.0" or not parts[1]:
            raise SipParseError(f"bad request line {start[:60]!r}", phrase="Bad request line")
        message = SipRequest(parsed_headers, b"", method, parts[1], _index=index,
                             _has_length="content-length" in index, _keys=header_keys)
    try:
        if failure is not None:
            raise failure
        _check_message(message, index, data[head_end + separator:], stream)
    except SipParseError as exc:
        if isinstance(message, SipRequest) and message.method != "ACK" \
                and all(index.get(name) for name in _REQUIRED):
            exc.request = message
        raise
    return message


def _check_message(message: SipRequest | SipResponse, index: dict[str, str], rest: bytes,
                   stream: bool) -> None:
    """The body by Content-Length and the fields every transaction needs (§8.1.1)."""
    length_text = index.get("content-length")
    if length_text is None:
        if stream:
            raise SipParseError("Content-Length is required on stream transports",
                                phrase="Missing Content-Length")
        length = len(rest)
    elif length_text.isdigit() and length_text.isascii() and len(length_text) <= 10:
        length = int(length_text)  # the usual spelling (stripped by the parser already)
    else:
        length = ascii_number(length_text, "Content-Length")
    if length > MAX_BODY_BYTES:
        raise SipParseError("body too large", 413)
    if length > len(rest):
        raise SipParseError("body shorter than Content-Length",
                            phrase="Body shorter than Content-Length")
    message.body = rest[:length]
    get = index.get
    if not (get("via") and get("from") and get("to") and get("call-id") and get("cseq")):
        for name in _REQUIRED:
            if not get(name):  # absent, or empty (none of the five may be, §25.1)
                spelled = canonical_name(name)
                raise SipParseError(f"missing {spelled} header", phrase=f"Missing {spelled}")
    message._cseq = parse_cseq(index["cseq"])  # validates CSeq
    if isinstance(message, SipRequest):
        message._via_key = _read_via_key(message, index["via"])  # validates the Via
        if message._cseq[1] != message.method:
            raise SipParseError("CSeq method does not match the request method",
                                phrase="CSeq method does not match")
    elif not message.branch:  # a response is matched by the branch alone (§17.1.3)
        raise SipParseError("response without a Via branch")


# A bare LF line end, or a folded line (one starting with white space, §7.3.1): either
# sends the head to :func:`_unfold`. One search (0.24 µs for a usual head) instead of a
# count and two substring scans (0.6 µs).
_IRREGULAR_LINE = re.compile("\n(?<!\r\n)|\n[ \t]")


def _unfold(head: str) -> list[str]:
    """Lines of a head with bare-LF line ends, folded lines (RFC 3261 §7.3.1) or empty
    lines: the slow path of :func:`parse_message`."""
    lines: list[str] = []
    for line in head.replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()
        elif line:
            lines.append(line)
    return lines


class StreamDeframer:
    """Cuts a TCP/TLS byte stream into messages using Content-Length (RFC 3261 §18.3).

    Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped. A head longer than
    :data:`MAX_HEADER_BYTES`, a body over :data:`MAX_BODY_BYTES` or a Content-Length that
    is not a number loses the framing: :attr:`error` is set (with the request as far as
    it was read, to answer it) and nothing more is cut; the connection must then be
    closed, since nothing after it can be trusted to be a message boundary. The messages
    cut before the error are still returned.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.error: SipParseError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            return []
        self._buffer += data
        messages: list[bytes] = []
        try:
            self._cut(messages)
        except SipParseError as exc:
            self.error = exc
            self._buffer.clear()
        return messages

    def _cut(self, messages: list[bytes]) -> None:
        buffer = self._buffer
        while True:
            while buffer[:2] == b"\r\n":
                del buffer[:2]
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise SipParseError("header section too large", 413)
                return
            if end > MAX_HEADER_BYTES:
                raise SipParseError("header section too large", 413)
            try:
                length = _content_length(bytes(buffer[:end]))
                if length > MAX_BODY_BYTES:
                    raise SipParseError("body too large", 413)
            except SipParseError as exc:
                exc.request = answerable_request(bytes(buffer[:end + 4]))
                raise
            total = end + 4 + length
            if len(buffer) < total:
                return
            messages.append(bytes(buffer[:total]))
            del buffer[:total]


def answerable_request(data: bytes) -> SipRequest | None:
    """The request in ``data`` as far as it can be read to answer it (its five
    transaction fields present; not an ACK), or None: what a refusal is built from when
    the message as a whole does not parse, or need not be parsed whole (a 503 while
    overloaded)."""
    try:
        message = parse_message(data)
    except SipParseError as exc:
        return exc.request
    if isinstance(message, SipRequest) and message.method != "ACK":
        return message
    return None


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            text = value.strip(b" \t")
            if not (0 < len(text) <= 10 and text.isdigit()):  # bytes.isdigit: ASCII only
                raise SipParseError(f"bad Content-Length {text[:20]!r}",
                                    phrase="Bad Content-Length")
            return int(text)
    raise SipParseError("Content-Length is required on stream transports",
                        phrase="Missing Content-Length")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What :func:`read_head` found: enough to decide about a request and to answer it,
    read without parsing it (see there)."""

    method: str
    uri: str
    transaction: tuple[str, str, str]  # (branch, sent-by, method): the server transaction
    to_tagged: bool  # the To has a tag: an in-dialog request
    # the fields a response copies, as received: Via lines and From; the To line without
    # its CRLF; Call-ID and CSeq
    before_to: bytes
    to_field: bytes
    after_to: bytes


# The five fields a response copies (RFC 3261 §8.2.6.2), long or compact (§7.3.3), in any
# case, each with its value up to the end of its line: one pass over the head in C.
_HEAD_FIELDS = re.compile(
    rb"\r\n(?:(via|v)|(from|f)|(to|t)|(call-id|i)|(cseq))[ \t]*:[ \t]*([^\r\n]*)(?=\r\n)",
    re.IGNORECASE)
_FOLDED = re.compile(rb"\r\n[ \t]")
_HEAD_METHODS = {b"MESSAGE": "MESSAGE", b"SUBSCRIBE": "SUBSCRIBE"}


def read_head(data: bytes) -> RequestHead | None:
    """A MESSAGE or SUBSCRIBE read only as far as answering it needs: the start line, the
    top Via's transaction key and the five fields a response copies, found in one regular
    expression pass (a few µs where :func:`parse_message` takes several times that).
    None when the request is not one of those two or is spelled in any way this does not
    read exactly (folded lines, a Via it cannot read, From/To/Call-ID/CSeq missing or
    twice): the caller then parses it in full.

    For answering ``503`` while overloaded (RFC 3261 §21.5.4) without handling the
    request: what arrives faster than it can be handled is answered at this cost instead
    of waiting in the socket buffer until the kernel drops it."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > MAX_HEADER_BYTES:
        return None
    first = data.find(b" ")
    method = _HEAD_METHODS.get(data[:first])
    if method is None:
        return None
    line_end = data.find(b"\r\n")
    uri, space, version = data[first + 1:line_end].partition(b" ")
    head = data[line_end:end + 2]
    if not space or version != b"SIP/2.0" or _FOLDED.search(head) is not None:
        return None
    vias: list[bytes] = []
    found: dict[int, bytes] = {}
    for via, sender, to, call_id, _cseq, value in _HEAD_FIELDS.findall(head):
        value = value.rstrip(b" \t")
        if via:
            vias.append(value)
            continue
        kind = 1 if sender else 2 if to else 3 if call_id else 4
        if kind in found or not value:
            return None
        found[kind] = value
    if not vias or len(found) != 4:
        return None
    try:
        via_match = _VIA_USUAL.fullmatch(vias[0].split(b",", 1)[0].decode())
        text_uri = uri.decode()
        to_text = found[2].decode()
    except UnicodeDecodeError:
        return None
    branch = _BRANCH.search(via_match.group(4)) if via_match is not None else None
    if via_match is None or branch is None:
        return None
    sent_by = f"{via_match.group(2)}:{via_match.group(3)}"
    before_to = b"".join([*(b"Via: " + via + b"\r\n" for via in vias),
                          b"From: ", found[1], b"\r\n"])
    after_to = b"".join([b"Call-ID: ", found[3], b"\r\nCSeq: ", found[4], b"\r\n"])
    return RequestHead(method, text_uri, (branch.group(1), sent_by, method),
                       _TAG_PARAM.search(_split_address(to_text)[2]) is not None
                       if _TAG_ANYWHERE.search(to_text) else False,
                       before_to, b"To: " + found[2], after_to)


def head_answer(head: RequestHead, status: int, reason: str, *, to_tag: str,
                extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """The bytes of a response to a request known by its :class:`RequestHead`: its
    fields copied as received, the To tagged when it had no tag (§8.2.6.2)."""
    to = head.to_field if head.to_tagged else head.to_field + b";tag=" + to_tag.encode()
    tail = "".join(f"{canonical_name(name)}: {value}\r\n" for name, value in extra)
    return b"".join([f"SIP/2.0 {status} {reason}\r\n".encode(), head.before_to, to,
                     b"\r\n", head.after_to, tail.encode(), b"Content-Length: 0\r\n\r\n"])


def make_response(request: SipRequest, status: int, reason: str | None = None,
                  *, to_tag: str = "") -> SipResponse:
    """A response to ``request`` (RFC 3261 §8.2.6.2): Via, From, Call-ID, CSeq copied,
    To copied with our tag added when the request had none."""
    return SipResponse(_response_headers(request, status, to_tag), b"", status,
                       reason or REASONS.get(status, "Unknown"))


def response_wire(request: SipRequest, status: int, reason: str | None = None, *,
                  to_tag: str = "", extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """``make_response(...)`` with ``extra`` headers added, serialised, without building
    the response object: the bytes of every answer the gateway gives a request (a 202
    per relayed MESSAGE)."""
    status_line = f"SIP/2.0 {status} {reason or REASONS.get(status, 'Unknown')}\r\n"
    tag = to_tag if status > 100 else ""
    keys, index = request._keys, request._index
    if keys is not None and index is not None and not extra:
        # As the parser left it (every message answered gets here): the five fields from
        # its index, one string. Vias in their order (§8.2.6.2); From, To, Call-ID and
        # CSeq occur once in a request (§7.3), so the first of each is the one.
        via = index.get("via")
        frm, to, call_id, cseq = (index.get("from"), index.get("to"), index.get("call-id"),
                                  index.get("cseq"))
        if via is not None and frm is not None and to is not None and call_id is not None \
                and cseq is not None:
            if keys.count("via") > 1:
                via = "\r\nVia: ".join([value for key, (_, value)
                                         in zip(keys, request.headers)  # noqa: B905
                                         if key == "via"])
            if tag:
                to = _tagged_to(to, tag)
            return (f"{status_line}Via: {via}\r\nFrom: {frm}\r\nTo: {to}\r\n"
                    f"Call-ID: {call_id}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
                    ).encode()
    lines = [status_line]
    lines += [f"{name}: {value}\r\n" for name, value in _response_headers(request, status, tag)]
    lines += [f"{canonical_name(name)}: {value}\r\n" for name, value in extra]
    lines.append("Content-Length: 0\r\n\r\n")
    return "".join(lines).encode()


def _tagged_to(value: str, tag: str) -> str:
    """A To value with our ``tag`` (:func:`_with_tag`), copied as it came when unreadable."""
    if value[-1:] == ">" and _TAG_ANYWHERE.search(value) is None:
        # "<uri>" with no tag anywhere: what _with_tag does, without splitting
        return f"{value};tag={tag}"
    try:
        return _with_tag(value, tag)
    except SipParseError:
        return value


def _response_headers(request: SipRequest, status: int, to_tag: str) -> list[tuple[str, str]]:
    """The header fields a response copies from its request, in order (Via order is kept,
    §8.2.6.2), the To tagged when ``to_tag`` is given and the response is not a 100."""
    headers = request.headers
    keys = request._keys or [header_key(header) for header, _ in headers]
    names = _RESPONSE_NAMES
    copied = [(names[key], pair[1]) for key, pair in zip(keys, headers, strict=True)
              if key in names]
    if to_tag and status > 100:
        for position, (name, value) in enumerate(copied):
            if name == "To":
                copied[position] = (name, _tagged_to(value, to_tag))
                break
    return copied


_TAG_PARAM = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE)
_TAG_ANYWHERE = re.compile("tag", re.IGNORECASE)  # without it, no tag: nothing to split


def _with_tag(to: str, tag: str) -> str:
    """``to`` (a To value) with ``;tag=`` appended, unless it has a tag already: "the To
    header field in the response MUST equal the To header field in the request" with our
    tag added (§8.2.6.2), so the rest is kept as the request spelled it. A ``tag`` inside
    the ``<URI>`` is a URI parameter, not the header's tag."""
    if _TAG_PARAM.search(_split_address(to)[2]) is not None:
        return to
    return f"{to};tag={tag}"


_RESPONSE_NAMES = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID",
                   "cseq": "CSeq"}
