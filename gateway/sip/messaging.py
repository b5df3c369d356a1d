"""Messages between XMPP and SIP users (RFC 7572), with what chat clients send along them:
typing (XEP-0085 ↔ RFC 3994), receipts and markers (XEP-0184, XEP-0333 ↔ IMDN, RFC 5438),
CPIM (RFC 3862), HTML (XEP-0071), languages, subject; errors mapped by RFC 7247 §8.

docs/sip.md "What maps to what" has the clause-by-clause table; in short:

* SIP → XMPP: ``text/plain``, ``text/html`` (a plain body plus sanitised XHTML-IM),
  ``multipart/alternative`` of those (one ``<body xml:lang/>`` per language), all of them
  also inside ``message/cpim``; ``application/im-iscomposing+xml`` becomes a chat state
  and ``message/imdn+xml`` a receipt or displayed marker. Anything else is answered 415
  with an ``Accept`` listing what can cross, and counted by content type. A MESSAGE is
  answered once the router has decided: ``202 Accepted`` when the stanza is on its way
  (RFC 3428 §7: accepted, final disposition unknown), or the refusal mapped by RFC 7247
  §8.1. An XMPP error that arrives later is told to the SIP user as a MESSAGE.
* XMPP → SIP: the body (several languages: ``multipart/alternative``), subject, chat
  states (rate-limited, :mod:`gateway.sip.composing`), receipts/markers as IMDN. A
  message asking for a receipt or marker goes in CPIM with the IMDN headers, as does
  every message to a phone that spoke CPIM first; a phone that refuses CPIM (415/488)
  gets plain text from then on. Over the configured size: ``policy-violation`` at once;
  over the UDP limit: TCP to the proxy (RFC 3261 §18.1.1), or ``policy-violation`` at
  once when the proxy takes no TCP. What cannot cross is counted and, where the sender
  waits for an answer, answered ``feature-not-implemented``.

Ids are derived, never stored (:mod:`gateway.sip.message_ids`), so a receipt finds its
message on any node after any restart.
"""

from __future__ import annotations

import codecs
import logging
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from xml.etree.ElementTree import Element

from gateway.logs import log_event
from gateway.sip.addresses import jid_to_sip
from gateway.sip.composing import ComposingGate
from gateway.sip.cpim import (
    CPIM_TYPE,
    CpimError,
    CpimMessage,
    build_cpim,
    format_datetime,
    parse_cpim,
)
from gateway.sip.endpoint import SipEndpoint
from gateway.sip.errors import sip_status_for, xmpp_condition_for
from gateway.sip.imdn import IMDN_TYPE, Imdn, ImdnError, build_imdn, parse_imdn
from gateway.sip.iscomposing import (
    IS_COMPOSING_TYPE,
    IsComposingError,
    build_is_composing,
    parse_is_composing,
)
from gateway.sip.message import SipParseError, SipRequest, SipResponse, unique_token
from gateway.sip.message_ids import (
    sip_id_for_stanza,
    sip_origin,
    stanza_id_for_sip,
    stanza_id_from_sip_id,
)
from gateway.sip.mime import (
    MediaType,
    MimeError,
    clean_header_value,
    language_tag,
    parse_media_type,
)
from gateway.sip.multipart import BodyPart, MultipartError, build_multipart, parse_multipart
from gateway.sip.parties import Refused, request_parties, sender_address
from gateway.sip.spellings import UserSpellings
from gateway.sip.stanzas import (
    BODY,
    MESSAGE,
    XML_LANG,
    MessageParts,
    chat_message,
    chat_state,
    error_condition,
    read_message,
    receipt,
    text_message,
)
from gateway.sip.transaction import RequestReceived
from gateway.sip.xhtml import html_to_message
from gateway.xmpp.errors import make_error_reply, parse_error_child
from gateway.xmpp.jid import Jid
from gateway.xmpp.xml import XmlCharacterError, XmlOutputError, check_element, check_text

log = logging.getLogger("gateway.sip")

ToXmpp = Callable[[Element, Callable[[], None] | None], None]
TEXT_PLAIN = "text/plain;charset=UTF-8"
# What a SIP MESSAGE may carry to XMPP (the Accept of a 415, RFC 3261 §21.4.13)
ACCEPTED = ("text/plain", "text/html", "multipart/alternative", CPIM_TYPE,
            IS_COMPOSING_TYPE, IMDN_TYPE)
ACCEPT_HEADER = ", ".join(ACCEPTED)
DEFAULT_MAX_MESSAGE_SIZE = 60_000
# RFC 3261 §18.1.1: a request larger than 1300 bytes, path MTU unknown, goes over a
# congestion-controlled transport; RFC 3428 §7 repeats it for MESSAGE.
UDP_LIMIT = 1300
CLOCK_TOLERANCE = 60.0  # seconds: an older CPIM DateTime is shown as XEP-0203 delay
TCP_REFUSAL_MEMORY = 60.0  # seconds a proxy that took no TCP is not asked again
MAX_REMEMBERED_USERS = 65_536
MAX_REMEMBERED_PARTIES = 4096  # (From URI, Request-URI) pairs named (MessageRelay._parties)
_RICH_REFUSED = (415, 488)  # a phone that does not read CPIM/multipart (Linphone: 488)


def warning_header(agent: str, text: str) -> list[tuple[str, str]]:
    """``Warning: 399 agent "text"`` (RFC 3261 §20.43, "miscellaneous warning ... to be
    presented to a human user"): the XMPP error's own words, e.g. which policy refused the
    message; none without a text."""
    if not text:
        return []
    quoted = " ".join(text.split()).replace("\\", "\\\\").replace('"', '\\"')
    return [("Warning", f'399 {agent} "{quoted}"')]


@dataclass(slots=True)
class SipContent:
    """What a MESSAGE body says, once unwrapped."""

    kind: str  # "message" | "composing" | "imdn"
    bodies: list[tuple[str, str]] = field(default_factory=list)  # (language, text)
    xhtml: Element | None = None
    composing: bool = False
    refresh: int = 0
    notice: Imdn | None = None
    cpim: CpimMessage | None = None


class Unsupported(Exception):
    """A content type that cannot cross (415)."""

    def __init__(self, content_type: str) -> None:
        super().__init__(content_type)
        self.content_type = content_type


class BadBody(Exception):
    """A body that does not parse as its content type (400)."""


_NO_TYPE = MediaType("")
# Content-Type values of a plain UTF-8 text MESSAGE as phones write them (the fast path)
_PLAIN_UTF8 = frozenset({"text/plain;charset=UTF-8", "text/plain; charset=UTF-8",
                         "text/plain;charset=utf-8", "text/plain; charset=utf-8",
                         "text/plain", "text/plain;charset=\"UTF-8\""})


@lru_cache(maxsize=65536)
def _sip_uri(jid: str) -> str:
    """``sip:user@domain`` of a (bare or full) JID; cached: users repeat, and the
    percent-encoding of RFC 3261 §25.1 is the slow part."""
    return jid_to_sip(jid).uri


@lru_cache(maxsize=65536)
def _gruu_uri(jid: str) -> str:
    """``sip:user@domain;gr=resource`` of a full JID (RFC 7572 §4), cached likewise."""
    return jid_to_sip(jid).gruu_uri


def decode_text(body: bytes, media_type: MediaType) -> str:
    """A text body in its charset (RFC 2046 §4.1.2; none → UTF-8, the charset of SIP,
    RFC 3261 §20.15; one Python does not know → 415); invalid bytes → 400."""
    charset = media_type.charset or "utf-8"
    if charset not in ("utf-8", "us-ascii"):
        try:
            codecs.lookup(charset)
        except LookupError:
            raise Unsupported(f"{media_type.type};charset={charset}") from None
    try:
        return body.decode(charset)
    except LookupError:  # a codec Python has, but of bytes to bytes (base64, rot13 …)
        raise Unsupported(f"{media_type.type};charset={charset}") from None
    except (UnicodeDecodeError, ValueError):
        raise BadBody(f"body is not valid {charset}") from None


def _html_source(body: bytes, media_type: MediaType) -> str:
    """The HTML as the user wrote it; a character XML cannot carry, written raw, raises
    :class:`XmlCharacterError` (the same 400 as in plain text: the conversion would
    replace it, altering the message behind the user's back). Character references to
    such characters are HTML's own business (HTML 5 replaces or drops them)."""
    source = decode_text(body, media_type)
    check_text(source, "body")
    return source


def decoded_body(request: SipRequest, limit: int) -> bytes | None:
    """The body without its Content-Encoding (RFC 3261 §20.12; Linphone deflates its IMDNs),
    None when it is (or inflates to) more than ``limit`` bytes: a few compressed bytes
    must not become megabytes here."""
    body = request.body
    if len(body) > limit:
        return None
    encoding = (request.get("content-encoding") or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("deflate", "gzip"):
        raise Unsupported(f"Content-Encoding {encoding[:40]}")
    # zlib or gzip framing (wbits 32+), else raw deflate: senders differ in "deflate"
    for wbits in (zlib.MAX_WBITS | 32, -zlib.MAX_WBITS):
        inflater = zlib.decompressobj(wbits)
        try:
            inflated = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(inflated) > limit or inflater.unconsumed_tail:
            return None
        return inflated
    raise BadBody(f"body does not inflate ({encoding})")


def read_sip_content(media_type: MediaType, body: bytes, language: str,
                     cpim: CpimMessage | None = None) -> SipContent:
    """Unwrap a MESSAGE body into :class:`SipContent` (raises :class:`Unsupported` or
    :class:`BadBody`)."""
    kind = media_type.type
    if kind == "text/plain" or (kind == "" and body):
        return SipContent("message", [(language, decode_text(body, media_type))], cpim=cpim)
    if kind == "text/html":
        text, xhtml = html_to_message(_html_source(body, media_type), language)
        return SipContent("message", [(language, text)], xhtml, cpim=cpim)
    if kind == "multipart/alternative":
        try:
            parts = parse_multipart(media_type, body)
        except MultipartError as exc:
            raise BadBody(str(exc)) from None
        return _alternatives(parts, language, cpim)
    if kind == IS_COMPOSING_TYPE:
        try:
            indication = parse_is_composing(body)
        except IsComposingError as exc:
            raise BadBody(str(exc)) from None
        return SipContent("composing", composing=indication.active,
                          refresh=indication.timeout, cpim=cpim)
    if kind == IMDN_TYPE:
        try:
            return SipContent("imdn", notice=parse_imdn(body), cpim=cpim)
        except ImdnError as exc:
            raise BadBody(str(exc)) from None
    if kind == CPIM_TYPE and cpim is None:
        try:
            wrapped = parse_cpim(body)
        except CpimError as exc:
            raise BadBody(str(exc)) from None
        return read_sip_content(wrapped.content_type, wrapped.body,
                                wrapped.content_language or language, wrapped)
    raise Unsupported(kind or "(none)")


def _alternatives(parts: list[BodyPart], language: str, cpim: CpimMessage | None
                  ) -> SipContent:
    """RFC 2046 §5.1.4: the parts say the same thing; keep every plain-text language
    and the HTML as XHTML-IM (its text stands in when there is no plain part)."""
    bodies: list[tuple[str, str]] = []
    xhtml: Element | None = None
    html_text = ""
    for part in parts:
        part_language = part.language or language
        if part.content_type.type == "text/plain":
            text = decode_text(part.body, part.content_type)
            if (part_language, text) not in bodies:
                bodies.append((part_language, text))
        elif part.content_type.type == "text/html" and xhtml is None:
            html_text, xhtml = html_to_message(_html_source(part.body, part.content_type),
                                               part_language)
    if not bodies and (xhtml is not None or html_text):
        bodies.append((language, html_text))
    if not bodies:
        raise Unsupported("multipart/alternative without text/plain or text/html")
    return SipContent("message", bodies, xhtml, cpim=cpim)


class _AnswerWhenDecided:
    """Answers a relayed MESSAGE once the XMPP side has decided its outcome.

    One small object rather than a closure (a function, three cells and a tuple): it
    waits, per message, for the peer server's acknowledgement (docs/delivery.md), long
    enough to be walked by the garbage collector's older generations."""

    __slots__ = ("event", "relay", "stanza_id")

    def __init__(self, relay: MessageRelay, event: RequestReceived, stanza_id: str) -> None:
        self.relay, self.event, self.stanza_id = relay, event, stanza_id

    def __call__(self) -> None:
        self.relay._answer(self.event, self.stanza_id)


class MessageRelay:
    """Both directions of one-to-one messages and what travels with them."""

    def __init__(self, endpoint: SipEndpoint, served: frozenset[str], to_xmpp: ToXmpp, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 receipts_from_200: bool = False) -> None:
        self.endpoint = endpoint
        self.served = served
        self.trust_asserted_identity = False  # set by the backend
        self.to_xmpp = to_xmpp
        self.max_message_size = max_message_size
        self.receipts_from_200 = receipts_from_200
        # SIP→XMPP stanza id → the error condition the router answered with, if any:
        # filled while the router decides (RFC 7247 §8.1 answer instead of a blind 202).
        self.inflight: dict[str, str | None] = {}
        # ... and the error's <text/> when it had one, for the answer's Warning header.
        self.inflight_text: dict[str, str] = {}
        self.typing_out = ComposingGate()  # XMPP → SIP: the SIP phone times out itself
        self.typing_in = ComposingGate(expire=True)  # SIP → XMPP: XMPP clients do not
        # SIP users whose phone refused CPIM/multipart (plain text from then on), and
        # those whose phone spoke CPIM first (answer in CPIM): bounded, oldest forgotten.
        self.plain_only: OrderedDict[str, None] = OrderedDict()
        self.cpim_speakers: OrderedDict[str, None] = OrderedDict()
        self.not_crossed: Counter[str] = Counter()  # by content type / payload
        self.metrics: Any = None
        self.spellings = UserSpellings()  # SIP users' spelling, memory + store
        # (From URI, Request-URI) -> what naming the parties gave: see _known_parties
        self._parties: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        self._tcp_refused_until = 0.0

    # ------------------------------------------------------------------ shared

    def _count(self, what: str, **fields: Any) -> None:
        """Something could not cross: counted by content type (never silent)."""
        self.not_crossed[what] += 1
        log_event(log, logging.INFO, "sip.not_crossed", content_type=what, **fields)
        if self.metrics is not None:
            self.metrics.count("not_crossed", what)

    @staticmethod
    def _remember(table: OrderedDict[str, None], user: str) -> None:
        table[user] = None
        table.move_to_end(user)
        if len(table) > MAX_REMEMBERED_USERS:
            table.popitem(last=False)

    def _known_parties(self, request: SipRequest) -> tuple[str, str, str, str] | None:
        """What :func:`request_parties` and :func:`sender_address` gave for an earlier
        request with the same From URI and Request-URI (sender, recipient, bare sender,
        SIP user part), or None: the same few users write again and again, and naming
        them (URI parsing, domain checks, XEP-0106 escaping) is a pure function of the
        two URIs and the served domains. Only accepted requests are remembered; with
        P-Asserted-Identity trusted the sender depends on another header, so nothing is."""
        if self.trust_asserted_identity:
            return None
        try:
            return self._parties.get((request.from_uri, request.uri))
        except SipParseError:  # an unreadable From: request_parties answers it
            return None

    def _user_uri(self, local_user: str) -> str:
        """The Request-URI of a local SIP user, spelled as the SIP side spells it."""
        return self.spellings.uri(local_user)

    # ------------------------------------------------------------------ SIP → XMPP

    def incoming(self, event: RequestReceived) -> None:
        request = event.request
        parties = self._known_parties(request)
        if parties is None:
            try:
                sender, recipient = request_parties(
                    request, self.served, trust_asserted_identity=self.trust_asserted_identity)
            except Refused as refusal:
                refuse(self.endpoint, event, refusal)
                return
            bare_sender = sender.partition("/")[0]
            user_part = sender_address(
                request, trust_asserted_identity=self.trust_asserted_identity).user
            if not self.trust_asserted_identity:
                if len(self._parties) >= MAX_REMEMBERED_PARTIES:
                    self._parties.clear()  # a spray of senders must not grow it
                self._parties[(request.from_uri, request.uri)] = (sender, recipient,
                                                                  bare_sender, user_part)
        else:
            sender, recipient, bare_sender, user_part = parties
        self.spellings.learn(bare_sender, user_part)
        type_text = request.get("content-type")
        if type_text in _PLAIN_UTF8 and len(request.body) <= self.max_message_size and \
                request.get("content-encoding") is None:
            # the common case, a UTF-8 text message, without the general unwrapping
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError:
                self.endpoint.reply(event, 400, "Body is not valid utf-8")
                return
            language = request.get("content-language")
            self._incoming_text(event, sender, recipient, text,
                                language_tag(language) if language else "")
            return
        try:
            body = decoded_body(request, self.max_message_size)
        except Unsupported as exc:
            self._count(exc.content_type, direction="sip-to-xmpp", sender=sender,
                        recipient=recipient, answer=415)
            self.endpoint.reply(event, 415, headers=[("Accept-Encoding", "deflate, gzip")])
            return
        except BadBody as exc:
            self.endpoint.reply(event, 400, clean_header_value(str(exc), 100))
            return
        if body is None:
            log_event(log, logging.INFO, "sip.message_too_large", sender=sender,
                      recipient=recipient, size=len(request.body), limit=self.max_message_size)
            self.endpoint.reply(event, 413)  # RFC 3261 §21.4.11
            return
        language = request.get("content-language")
        language = language_tag(language) if language else ""
        try:
            media_type = parse_media_type(type_text) if type_text else _NO_TYPE
            content = read_sip_content(media_type, body, language)
        except MimeError as exc:
            self.endpoint.reply(event, 400, clean_header_value(str(exc), 100))
            return
        except Unsupported as exc:
            self._count(exc.content_type, direction="sip-to-xmpp", sender=sender,
                        recipient=recipient, answer=415)
            self.endpoint.reply(event, 415, headers=[("Accept", ACCEPT_HEADER)])
            return
        except BadBody as exc:
            self.endpoint.reply(event, 400, clean_header_value(str(exc), 100))
            return
        except XmlOutputError as exc:
            refuse(self.endpoint, event, Refused(400, str(exc)), _xml_phrase(exc))
            return
        if content.cpim is not None:
            self._remember(self.cpim_speakers, bare_sender)
        if content.kind == "composing":
            self._incoming_typing(event, sender, recipient, content)
        elif content.kind == "imdn":
            self._incoming_notice(event, sender, recipient, content)
        else:
            self._incoming_message(event, sender, recipient, content, language)

    def _incoming_text(self, event: RequestReceived, sender: str, recipient: str,
                       text: str, language: str) -> None:
        """:meth:`_incoming_message` for a plain text MESSAGE, the Python work of every
        relayed message kept small: the same stanza, built directly."""
        request = event.request
        call_id = request.call_id
        stanza_id = stanza_id_for_sip(call_id, cpim=False, sent=int(time.time()))
        subject = request.get("subject")
        active = False
        typing_pairs = self.typing_in.pairs
        if typing_pairs:
            pair = (sender.partition("/")[0], recipient)
            if pair in typing_pairs:
                self.typing_in.message_sent(pair)
                active = True
        # Every name in this stanza is a constant: its characters are those of these
        # strings, checked in one search instead of a walk of the tree (check_element
        # still walks it to name the place when the search finds something).
        try:
            check_text("".join((sender, recipient, stanza_id, language, subject or "", text,
                                call_id)), "message")
        except XmlCharacterError:
            checked = False
        else:
            checked = True
        self._relay(event, stanza_id, text_message(
            sender, recipient, text, stanza_id, language=language, subject=subject or "",
            thread=call_id, active=active), checked=checked)

    def _incoming_message(self, event: RequestReceived, sender: str, recipient: str,
                          content: SipContent, language: str) -> None:
        request = event.request
        cpim = content.cpim
        now = time.time()
        sent = cpim.datetime if cpim is not None else None
        message_id = (cpim.imdn_message_id if cpim is not None else None) or request.call_id
        wanted = cpim.disposition_notification if cpim is not None else frozenset()
        stanza_id = stanza_id_for_sip(message_id, cpim=cpim is not None,
                                      sent=int(sent.timestamp() if sent else now))
        delay = ""
        if sent is not None and abs(now - sent.timestamp()) > CLOCK_TOLERANCE:
            delay = format_datetime(sent)  # XEP-0203: it was written earlier than now
        pair = (sender.partition("/")[0], recipient)
        typing = pair in self.typing_in.pairs
        self.typing_in.message_sent(pair)
        first_language, first_text = content.bodies[0]
        subject = request.get("subject") or (cpim.subject if cpim is not None else "") or ""
        stanza = chat_message(
            sender, recipient, first_text, stanza_id, bodies=content.bodies[1:],
            language=first_language, subject=subject, thread=request.call_id,
            chat_state="active" if typing else "", xhtml=content.xhtml,
            request_receipt="positive-delivery" in wanted and stanza_id[0] == "s",
            markable="display" in wanted and stanza_id[0] == "s", delay=delay,
            delay_from=sender.partition("@")[2].partition("/")[0] if delay else "")
        self._relay(event, stanza_id, stanza)

    def _incoming_typing(self, event: RequestReceived, sender: str, recipient: str,
                         content: SipContent) -> None:
        pair = (sender.partition("/")[0], recipient)
        if not self.typing_in.offer(pair, content.composing, time.monotonic(),
                                    refresh=float(content.refresh)):
            self.endpoint.reply(event, 200)  # the XMPP side already knows (or will soon)
            return
        stanza_id = "t" + unique_token()
        self._relay(event, stanza_id, chat_state(
            sender, recipient, "composing" if content.composing else "paused", stanza_id))

    def _incoming_notice(self, event: RequestReceived, sender: str, recipient: str,
                         content: SipContent) -> None:
        notice = content.notice
        assert notice is not None
        found = stanza_id_from_sip_id(notice.message_id)
        if found is None or notice.kind == "processing":
            why = "unknown message id" if found is None else "processing notification"
            self._count(IMDN_TYPE, direction="sip-to-xmpp", sender=sender,
                        recipient=recipient, reason=why, answer=202)
            self.endpoint.reply(event, 202)
            return
        original, resource = found
        if resource:  # the resource that sent the message (the phone answers the AOR)
            recipient = f"{recipient.partition('/')[0]}/{resource}"
        stanza_id = "n" + unique_token()
        if not notice.positive:
            # RFC 5438 §7.2.1.1 failed/forbidden/error: the message did not arrive, which
            # XMPP says with an error reply to it (RFC 6120 §8.3)
            stanza = _error_for(recipient, sender, original, "service-unavailable",
                                f"IMDN {notice.kind} {notice.status}")
        else:
            stanza = receipt(sender, recipient, original, stanza_id,
                             displayed=notice.kind == "display")
        self._relay(event, stanza_id, stanza)

    def _relay(self, event: RequestReceived, stanza_id: str, stanza: Element, *,
               checked: bool = False) -> None:
        """Hand ``stanza`` to the router; its answer goes to the SIP request once decided.
        ``checked``: the caller knows it holds no character XML 1.0 forbids."""
        if not checked and not valid_for_xmpp(self.endpoint, event, stanza):
            return
        self.inflight[stanza_id] = None
        self.to_xmpp(stanza, _AnswerWhenDecided(self, event, stanza_id))

    def _answer(self, event: RequestReceived, stanza_id: str) -> None:
        condition = self.inflight.pop(stanza_id, None)
        text = self.inflight_text.pop(stanza_id, "")
        if condition:
            self.endpoint.reply(event, sip_status_for(condition),
                                condition.replace("-", " ").title(),
                                headers=warning_header(min(self.served), text))
        else:
            self.endpoint.reply(event, 202)

    def failed(self, stanza: Element) -> None:
        """Routing ``stanza`` failed inside the gateway: its SIP answer is a 500."""
        stanza_id = stanza.get("id", "")
        if stanza_id in self.inflight:
            self.inflight[stanza_id] = "internal-server-error"

    def error_reply(self, stanza: Element, local_user: str) -> None:
        """An XMPP error addressed to a local user about a message they sent."""
        stanza_id = stanza.get("id", "")
        if stanza_id in self.inflight:
            self.inflight[stanza_id] = error_condition(stanza)
            text = parse_error_child(stanza)[1]
            if text:
                self.inflight_text[stanza_id] = text
            return
        if stanza_id[:1] in ("t", "n"):
            # an error about a typing indication or a receipt: nobody to tell (XEP-0085
            # §5.5, XEP-0184 §5), and a notice per lost indication would be noise
            log_event(log, logging.DEBUG, "sip.notice_failed", recipient=local_user,
                      contact=stanza.get("from"), condition=error_condition(stanza))
            return
        self._late_error(stanza, local_user)

    def _late_error(self, stanza: Element, local_user: str) -> None:
        """An XMPP error for a message our SIP user sent, after we answered 202."""
        condition = error_condition(stanza)
        contact = Jid.parse(stanza.get("from", "")).bare
        text = stanza.findtext(BODY) or ""
        note = f"[message to {contact} not delivered: {condition}]"
        # The error's own words (RFC 6120 §8.3.2 <text/>): which policy, which failure.
        reason = parse_error_child(stanza)[1]
        if reason:
            note += f" {reason}" + ("" if reason.endswith(".") else ".")
        if text:
            note += f" Your message: {text}" if reason else f" {text}"
        log_event(log, logging.INFO, "sip.delivery_failure_notice", recipient=local_user,
                  contact=contact, condition=condition)
        self.endpoint.send(self.request_to(local_user, contact, note), _ignore)

    # ------------------------------------------------------------------ XMPP → SIP

    def outgoing(self, stanza: Element, sender: str, local_user: str) -> None:
        if len(stanza) == 1 and stanza[0].tag == BODY and XML_LANG not in stanza[0].attrib \
                and local_user not in self.cpim_speakers:
            self._outgoing_text(stanza, stanza[0].text or "", sender, local_user)
            return
        parts = read_message(stanza)
        pair = (sender.partition("/")[0], local_user)
        handled = False
        if parts.bodies:
            self.typing_out.message_sent(pair)
            self._outgoing_message(stanza, parts, sender, local_user)
            handled = True
        elif parts.chat_state:
            composing = parts.chat_state == "composing"
            if self.typing_out.offer(pair, composing, time.monotonic()):
                self._send_typing(sender, local_user, composing)
            handled = True
        if parts.received:
            handled = self._outgoing_notice(parts.received, "delivery", sender,
                                            local_user) or handled
        if parts.displayed:
            handled = self._outgoing_notice(parts.displayed, "display", sender,
                                            local_user) or handled
        for what in parts.unmapped:
            self._count(what, direction="xmpp-to-sip", sender=sender, recipient=local_user)
        if not handled:
            self._cannot_cross(stanza, parts, sender, local_user)

    def _cannot_cross(self, stanza: Element, parts: MessageParts, sender: str,
                      local_user: str) -> None:
        """A message with nothing SIP can carry: counted (above, per payload); answered
        ``feature-not-implemented`` when its sender waits for an answer (it carries an id
        and asks for something: a receipt, a call, a payload SIP has no form for)."""
        if not parts.unmapped:
            self._count("empty message", direction="xmpp-to-sip", sender=sender,
                        recipient=local_user)
            return
        if stanza.get("id") and stanza.get("type") != "error":
            reply = make_error_reply(stanza, "feature-not-implemented",
                                     f"SIP users cannot receive {parts.unmapped[0]}")
            if reply is not None:
                self.to_xmpp(reply, None)

    def _outgoing_text(self, stanza: Element, text: str, sender: str,
                       local_user: str) -> None:
        """A message that is one body and nothing else, to a phone that has not spoken
        CPIM: the request :meth:`_message_request` would make, made directly (this is
        the Python work of every relayed message)."""
        typing_pairs = self.typing_out.pairs
        if typing_pairs:
            self.typing_out.message_sent((sender.partition("/")[0], local_user))
        resource = sender.partition("/")[2]
        request = self._request(self._user_uri(local_user), _sip_uri(sender), TEXT_PLAIN,
                                text.encode("utf-8"),
                                sip_id_for_stanza(stanza.get("id", ""), resource))
        if resource:  # RFC 7572 §4: the resource as a GRUU (RFC 5627: in Contact)
            request.headers.append(("Contact", f"<{_gruu_uri(sender)}>"))
        language = language_tag(stanza.get(XML_LANG) or "")
        if language:  # RFC 7572 §8 (Prosody writes its stream's xml:lang on every stanza)
            request.headers.append(("Content-Language", language))
        self._send_message(stanza, request, None, sender, local_user, rich=False,
                           asked_imdn=False)

    def _outgoing_message(self, stanza: Element, parts: MessageParts, sender: str,
                          local_user: str) -> None:
        stanza_id = stanza.get("id", "")
        plain = local_user in self.plain_only
        wants_receipt = parts.receipt_request or parts.markable
        use_cpim = not plain and (local_user in self.cpim_speakers or (
            wants_receipt and bool(stanza_id)))
        request, rich = self._message_request(parts, sender, local_user, stanza_id,
                                              use_cpim=use_cpim, plain=plain)
        self._send_message(stanza, request, parts, sender, local_user, rich=rich,
                           asked_imdn=use_cpim and wants_receipt and bool(stanza_id))

    def _send_message(self, stanza: Element, request: SipRequest, parts: MessageParts | None,
                      sender: str, local_user: str, *, rich: bool, asked_imdn: bool) -> None:
        """Size and transport checks (both answered at once), then the request."""
        if len(request.body) > self.max_message_size:
            self._too_large(stanza, f"the message is {len(request.body)} bytes, over the "
                            f"{self.max_message_size} bytes this gateway carries to SIP")
            return
        over_tcp = self._transport_for(request, stanza)
        if over_tcp is None:
            return
        self.endpoint.send(request, lambda response: self._outcome(
            stanza, parts, sender, local_user, response, rich=rich, asked_imdn=asked_imdn,
            over_tcp=over_tcp))

    def _message_request(self, parts: MessageParts, sender: str, local_user: str,
                         stanza_id: str, *, use_cpim: bool, plain: bool
                         ) -> tuple[SipRequest, bool]:
        """The MESSAGE for ``parts`` and whether it is "rich" (CPIM or multipart: a phone
        may refuse it and get plain text instead)."""
        language = parts.language
        bodies = parts.bodies
        if len(bodies) > 1 and (plain or len({lang or language for lang, _ in bodies}) < 2):
            primary = parts.body or ""
            bodies = [(next((lang for lang, text in parts.bodies if text == primary), ""),
                        primary)]
        if len(bodies) == 1:
            content_type, body = TEXT_PLAIN, bodies[0][1].encode("utf-8")
            language = bodies[0][0] or language
        else:
            # RFC 7572 §8 / RFC 2046 §5.1.4: one text/plain part per language, the
            # stanza's own language last (the last alternative is the preferred one)
            ordered = sorted(bodies, key=lambda item: (item[0] or language) == language)
            content_type, body = build_multipart("alternative", [
                BodyPart(MediaType("text/plain", {"charset": "UTF-8"}), text.encode("utf-8"),
                         [("Content-Language", language_tag(lang or language))]
                         if language_tag(lang or language) else [])
                for lang, text in ordered])
            language = ""
        from_uri = _sip_uri(sender)
        user_uri = self._user_uri(local_user)
        message_id = sip_id_for_stanza(stanza_id, sender.partition("/")[2])
        rich = content_type != TEXT_PLAIN
        if use_cpim:
            disposition = tuple(name for name, wanted in (
                ("positive-delivery", parts.receipt_request), ("display", parts.markable))
                if wanted)
            body = build_cpim(from_uri, user_uri, content_type, body,
                              message_id=message_id, disposition=disposition,
                              language=language)
            content_type, language, rich = CPIM_TYPE, "", True
        request = self._request(user_uri, from_uri, content_type, body, message_id)
        headers = request.headers  # nothing looked up yet: appended as new_request does
        if "/" in sender:  # RFC 7572 §4: the resource as a GRUU (RFC 5627: in Contact)
            headers.append(("Contact", f"<{_gruu_uri(sender)}>"))
        language = language_tag(language)
        if language:
            headers.append(("Content-Language", language))
        if parts.subject:
            headers.append(("Subject", clean_header_value(parts.subject)))
        return request, rich

    def _request(self, user_uri: str, from_uri: str, content_type: str, body: bytes,
                 message_id: str = "") -> SipRequest:
        # one unique token as branch and From tag (and Call-ID, unless the message id
        # is: it carries the stanza id for Linphone's IMDNs, and starts unique)
        token = unique_token()
        request = self.endpoint.new_request(
            "MESSAGE", user_uri, f"<{from_uri}>;tag={token}", f"<{user_uri}>", token=token,
            call_id=message_id)
        request.headers.append(("Content-Type", content_type))
        request.body = body
        return request

    def _transport_for(self, request: SipRequest, stanza: Element) -> bool | None:
        """Over UDP a request over :data:`UDP_LIMIT` bytes goes over TCP (RFC 3261
        §18.1.1): True when it does, False when it goes as configured, None when it is
        refused now (the proxy took no TCP lately; the sender has its answer)."""
        if self.endpoint.transport.kind != "udp" or len(request.body) < UDP_LIMIT // 2:
            return False
        if len(request.serialize()) <= UDP_LIMIT:
            return False
        if time.monotonic() < self._tcp_refused_until:
            self._too_large(stanza, self._tcp_reason())
            return None
        return self.endpoint.over_stream(request)

    def _tcp_reason(self) -> str:
        proxy = self.endpoint.transport.proxy
        why = self.endpoint.transport.last_error or "connection failed"
        return (f"the message is over the {UDP_LIMIT} bytes SIP may send over UDP (RFC 3261 "
                f"§18.1.1) and the SIP proxy {proxy[0]}:{proxy[1]} takes no TCP ({why})")

    def _too_large(self, stanza: Element, why: str) -> None:
        """RFC 7572 §6: a message the SIP side cannot carry is refused with
        ``policy-violation``, at once (the sender must not wait for Timer F)."""
        log_event(log, logging.INFO, "sip.message_refused", sender=stanza.get("from"),
                  recipient=stanza.get("to"), condition="policy-violation", reason=why)
        reply = make_error_reply(stanza, "policy-violation", why)  # with the payload, so
        if reply is not None:  # that the client can tell which message (RFC 6120 §8.3.1)
            self.to_xmpp(reply, None)

    def _send_typing(self, sender: str, local_user: str, composing: bool) -> None:
        body = build_is_composing(composing, refresh=120 if composing else 0,
                                  last_active="" if composing
                                  else format_datetime(datetime.now(UTC)))
        request = self._request(self._user_uri(local_user), _sip_uri(sender),
                                IS_COMPOSING_TYPE, body)
        self.endpoint.send(request, lambda response: self._notice_outcome(
            "typing", sender, local_user, response))

    def flush_typing(self, now: float) -> None:
        """Typing indications the rate gates held back, now due (called every second)."""
        for (sender, local_user), composing in self.typing_out.due(now):
            self._send_typing(sender, local_user, composing)
        for (sip_user, contact), composing in self.typing_in.due(now):
            stanza_id = "t" + unique_token()
            self.to_xmpp(chat_state(f"{sip_user}/sip", contact,
                                    "composing" if composing else "paused", stanza_id), None)

    def _outgoing_notice(self, acknowledged: str, kind: str, sender: str,
                         local_user: str) -> bool:
        """An XMPP receipt or displayed marker → IMDN (RFC 5438 §7) for the SIP message
        it names; False when it names no message of ours (counted)."""
        origin = sip_origin(acknowledged)
        if origin is None:
            what = ("urn:xmpp:receipts received" if kind == "delivery"
                    else "urn:xmpp:chat-markers:0 displayed")
            self._count(f"{what} (unknown id)", direction="xmpp-to-sip", sender=sender,
                        recipient=local_user)
            return False
        from_uri, user_uri = _sip_uri(sender), self._user_uri(local_user)
        notice = build_imdn(Imdn(origin.message_id, kind,
                                 "delivered" if kind == "delivery" else "displayed",
                                 format_datetime(datetime.fromtimestamp(origin.sent, UTC)),
                                 recipient_uri=from_uri))
        content_type = IMDN_TYPE
        if origin.cpim:  # RFC 5438 §7.1: an IMDN travels as the message did, in CPIM
            notice = build_cpim(from_uri, user_uri, IMDN_TYPE, notice,
                                message_id=unique_token())
            content_type = CPIM_TYPE
        request = self._request(user_uri, from_uri, content_type, notice)
        self.endpoint.send(request, lambda response: self._notice_outcome(
            kind, sender, local_user, response))
        return True

    def _notice_outcome(self, kind: str, sender: str, local_user: str,
                        response: SipResponse | None) -> None:
        """Typing and IMDN requests: nobody waits for them (XEP-0085 §5.5, XEP-0184 §5),
        so a failure is logged, not bounced."""
        if response is None or response.status >= 300:
            log_event(log, logging.DEBUG, "sip.notice_failed", kind=kind, sender=sender,
                      recipient=local_user,
                      status=response.status if response is not None else "timeout")

    def request_to(self, local_user: str, sender: str, text: str) -> SipRequest:
        """A text/plain MESSAGE (RFC 3428) to a local SIP user from an XMPP address."""
        return self._request(self._user_uri(local_user), _sip_uri(sender), TEXT_PLAIN,
                             text.encode("utf-8"))

    def _outcome(self, stanza: Element, parts: MessageParts | None, sender: str,
                 local_user: str,
                 response: SipResponse | None, *, rich: bool, asked_imdn: bool,
                 over_tcp: bool = False) -> None:
        if response is not None and response.status < 300:
            if (self.receipts_from_200 and not asked_imdn and parts is not None
                    and parts.receipt_request and response.status == 200
                    and stanza.get("id")):
                # docs/sip.md "Receipts": a 200 is the phone's own answer (RFC 3428 §7)
                # only behind a proxy that never answers MESSAGE itself
                self.to_xmpp(receipt(f"{local_user}/sip", sender, stanza.get("id", ""),
                                     "n" + unique_token(), displayed=False), None)
            return
        if response is not None and response.status in _RICH_REFUSED and rich and parts:
            # The phone does not read CPIM or multipart (Linphone without CPIM answers
            # 488): plain text from now on, and this message again as plain text.
            self._remember(self.plain_only, local_user)
            self.cpim_speakers.pop(local_user, None)
            log_event(log, logging.INFO, "sip.plain_text_only", recipient=local_user,
                      status=response.status)
            self._outgoing_message(stanza, parts, sender, local_user)
            return
        if response is None and over_tcp and self.endpoint.transport.last_error:
            # the connection to the proxy failed, not the proxy: say why, and do not try
            # again for a while (the next large messages are refused at once)
            self._tcp_refused_until = time.monotonic() + TCP_REFUSAL_MEMORY
            self._too_large(stanza, self._tcp_reason())
            return
        if response is None:
            status, reason = 408, "no answer from the SIP side (Timer F)"
        else:
            status, reason = response.status, response.reason
        condition = xmpp_condition_for(status)
        log_event(log, logging.INFO, "sip.message_failed", sender=stanza.get("from"),
                  recipient=stanza.get("to"), status=status, condition=condition,
                  transport="tcp" if over_tcp else None)
        reply = make_error_reply(stanza, condition, f"SIP {status} {reason}")
        if reply is not None:
            self.to_xmpp(reply, None)

    def describe(self) -> dict[str, Any]:
        return {"not_crossed": dict(self.not_crossed),
                "typing_suppressed": self.typing_out.suppressed + self.typing_in.suppressed}


def _error_for(sender: str, recipient: str, stanza_id: str, condition: str,
               text: str) -> Element:
    """The error reply (RFC 6120 §8.3) to a message ``sender`` sent ``recipient`` with
    ``stanza_id``, without its payload."""
    original = Element(MESSAGE, {"from": sender, "to": recipient, "type": "chat"})
    if stanza_id:
        original.set("id", stanza_id)
    reply = make_error_reply(original, condition, text)
    assert reply is not None  # the original is not an error
    return reply


def refuse(endpoint: SipEndpoint, event: RequestReceived, refusal: Refused,
           phrase: str | None = None) -> None:
    log_event(log, logging.INFO, "sip.refused", method=event.request.method,
              status=refusal.status, reason=refusal.reason,
              sender=event.request.get("from"), uri=event.request.uri)
    endpoint.reply(event, refusal.status, phrase or refusal.phrase or None)


def valid_for_xmpp(endpoint: SipEndpoint, event: RequestReceived, stanza: Element) -> bool:
    """Whether ``stanza`` can be written to a partner as it is; if not, the request is
    answered ``400`` naming the character (before any 202: a character XML 1.0 forbids
    would make the partner close the stream every other user's messages travel on, and
    the serialiser would otherwise replace it, altering what the user wrote)."""
    try:
        check_element(stanza)
    except XmlOutputError as exc:
        refuse(endpoint, event, Refused(400, str(exc)), _xml_phrase(exc))
        return False
    return True


def _xml_phrase(exc: XmlOutputError) -> str:
    if isinstance(exc, XmlCharacterError):
        return f"U+{exc.code_point:04X} in {exc.where} is not allowed in XML"
    return "Not representable in XML"


def _ignore(_response: SipResponse | None) -> None:
    """A notice to a SIP user: nobody to tell if it fails (it is itself the report)."""

