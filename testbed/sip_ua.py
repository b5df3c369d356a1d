"""A small SIP user agent for tests: registers, publishes presence, subscribes, sends and
receives MESSAGEs — what a SIP softphone's IM/presence side does (RFC 3261, 3428, 3903,
6665). It sends everything to one proxy (its outbound proxy), over UDP or TCP.

It reuses the gateway's message parser/serialiser only (the wire format); the dialog and
transaction behaviour here is its own, written the plain way a UA does it, so the gateway's
transaction/dialog code is tested against something it does not share.

Incoming requests: MESSAGE and NOTIFY are answered at once (``answers`` sets the status,
default 200) and queued in :attr:`messages` / :attr:`notifies`; everything else is queued
in :attr:`requests` for the test to answer with :meth:`reply`. With ``presence_agent``
the UA is its own presence agent, as phones are where the proxy has no presence server:
it accepts SUBSCRIBEs for itself and NOTIFYs its watchers of :meth:`set_presence`
(RFC 3856 §5: a PUA that also acts as presence agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import socket
from dataclasses import dataclass, field

from gateway.sip.message import (
    SipRequest,
    SipResponse,
    StreamDeframer,
    make_response,
    parse_message,
    parse_name_addr,
)

PIDF = "application/pidf+xml"


def pidf(entity: str, basic: str = "open", note: str = "", activity: str = "",
         tuple_id: str = "t1") -> bytes:
    person = (f'<dm:person id="p1"><rpid:activities><rpid:{activity}/></rpid:activities>'
              f"</dm:person>") if activity else ""
    note_xml = f"<note>{note}</note>" if note else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
        'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" '
        f'entity="sip:{entity}"><tuple id="{tuple_id}"><status><basic>{basic}</basic></status>'
        f"{note_xml}</tuple>{person}</presence>"
    ).encode()


@dataclass
class UaDialog:
    call_id: str
    local_tag: str
    remote_tag: str
    target: str
    local_uri: str
    remote_uri: str
    cseq: int = 1
    route: list[str] = field(default_factory=list)


class _Connection(asyncio.Protocol):
    """One TCP connection of the UA (to the proxy, or accepted from it)."""

    def __init__(self, ua: SipUserAgent) -> None:
        self.ua = ua
        self.deframer = StreamDeframer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for chunk in self.deframer.feed(data):
            self.ua._handle(parse_message(chunk, stream=True), self)


class SipUserAgent(asyncio.DatagramProtocol):
    def __init__(self, user: str, domain: str, proxy: tuple[str, int], *,
                 host: str = "127.0.0.1", transport: str = "udp", password: str = "",
                 auth_user: str = "") -> None:
        self.user, self.domain, self.proxy, self.host = user, domain, proxy, host
        # Digest credentials (RFC 3261 §22.2, RFC 2617): a 401/407 is answered once.
        self.password, self.auth_user = password, auth_user or user
        self.kind = transport
        self.aor = f"sip:{user}@{domain}"
        self.port = 0
        self.messages: asyncio.Queue[SipRequest] = asyncio.Queue()
        self.notifies: asyncio.Queue[SipRequest] = asyncio.Queue()
        self.requests: asyncio.Queue[SipRequest] = asyncio.Queue()
        self.answers: dict[str, int] = {"MESSAGE": 200, "NOTIFY": 200}
        # content type → status: a phone that does not read it (Linphone without CPIM: 488)
        self.refuse: dict[str, int] = {}
        self.dialogs: dict[str, UaDialog] = {}  # by remote AOR (our subscriptions)
        self._waiting: dict[str, asyncio.Future[SipResponse]] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._outgoing: _Connection | None = None
        self._server: asyncio.Server | None = None
        self._etag = ""
        self._arrived_on: dict[int, _Connection] = {}  # request → its TCP connection
        self.presence_agent = False
        self.presence_state = ("open", "")  # (basic, note) told to watchers
        self.watchers: dict[str, UaDialog] = {}  # by Call-ID (subscriptions to us)

    # ------------------------------------------------------------------ wiring

    async def start(self) -> SipUserAgent:
        loop = asyncio.get_running_loop()
        if self.kind == "udp":
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(self.host, 0))
            self.port = self._udp.get_extra_info("sockname")[1]
            # This UA does not retransmit: a burst of answers must not overflow its socket
            # (SO_RCVBUFFORCE, 33 on Linux, is not capped by net.core.rmem_max).
            with contextlib.suppress(OSError):
                self._udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
        else:
            # Like a softphone: requests go out on our connection to the proxy, and we
            # listen on the port our Via and Contact name, where the proxy connects to
            # deliver requests to us (RFC 3261 §18.1.1, §18.2.1).
            self._server = await loop.create_server(lambda: _Connection(self), self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._outgoing = _Connection(self)
            await loop.create_connection(lambda: self._outgoing, *self.proxy,
                                         local_addr=(self.host, 0))
        return self

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._outgoing is not None and self._outgoing.transport is not None:
            self._outgoing.transport.close()
        if self._server is not None:
            self._server.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.strip():
            self._handle(parse_message(data))

    def _write(self, data: bytes, connection: _Connection | None = None) -> None:
        if self._udp is not None and connection is None:
            self._udp.sendto(data, self.proxy)
            return
        target = connection or self._outgoing
        if target is not None and target.transport is not None:
            target.transport.write(data)

    @property
    def contact(self) -> str:
        suffix = "" if self.kind == "udp" else ";transport=tcp"
        return f"sip:{self.user}@{self.host}:{self.port}{suffix}"

    # ------------------------------------------------------------------ requests

    def _new(self, method: str, uri: str, to: str, *, to_tag: str = "", from_tag: str = "",
             call_id: str = "", cseq: int = 1, route: list[str] | None = None) -> SipRequest:
        branch = "z9hG4bK" + secrets.token_hex(8)
        request = SipRequest([], b"", method, uri)
        request.add("via", f"SIP/2.0/{self.kind.upper()} {self.host}:{self.port};"
                    f"branch={branch};rport")
        request.add("max-forwards", "70")
        for hop in route or []:
            request.add("route", hop)
        request.add("from", f"<{self.aor}>;tag={from_tag or secrets.token_hex(4)}")
        request.add("to", f"<{to}>" + (f";tag={to_tag}" if to_tag else ""))
        request.add("call-id", call_id or secrets.token_hex(8) + "@" + self.host)
        request.add("cseq", f"{cseq} {method}")
        request.add("contact", f"<{self.contact}>")
        return request

    async def request(self, request: SipRequest, timeout: float = 5.0) -> SipResponse:
        response = await self._exchange(request, timeout)
        if response.status in (401, 407) and self.password:
            header = "www-authenticate" if response.status == 401 else "proxy-authenticate"
            request = self._authorized(request, response.get(header) or "",
                                       "authorization" if response.status == 401
                                       else "proxy-authorization")
            response = await self._exchange(request, timeout)
        return response

    def _authorized(self, request: SipRequest, challenge: str, header: str) -> SipRequest:
        """The request again (new branch, CSeq + 1) with digest credentials, qop=auth."""
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
        realm, nonce = params.get("realm", self.domain), params.get("nonce", "")

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()  # MD5: what the digest scheme uses

        ha1 = md5(f"{self.auth_user}:{realm}:{self.password}")
        ha2 = md5(f"{request.method}:{request.uri}")
        cnonce, nc = secrets.token_hex(8), "00000001"
        if "auth" in params.get("qop", "").split(","):
            answer = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            qop = f", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
        else:
            answer, qop = md5(f"{ha1}:{nonce}:{ha2}"), ""
        again = SipRequest([(name, value) for name, value in request.headers], request.body,
                           request.method, request.uri)
        via = request.get("via") or ""
        again.set("via", re.sub(r"branch=[^;]+", "branch=z9hG4bK" + secrets.token_hex(8), via))
        number, method = request.cseq
        again.set("cseq", f"{number + 1} {method}")
        again.add(header, f'Digest username="{self.auth_user}", realm="{realm}", '
                          f'nonce="{nonce}", uri="{request.uri}", response="{answer}", '
                          f'algorithm=MD5{qop}')
        return again

    async def _exchange(self, request: SipRequest, timeout: float) -> SipResponse:
        branch = request.top_via.branch
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._waiting[branch] = future
        self._write(request.serialize())
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(branch, None)

    async def register(self, expires: int = 300) -> SipResponse:
        request = self._new("REGISTER", f"sip:{self.domain}", self.aor)
        request.set("expires", str(expires))
        return await self.request(request)

    async def send_message(self, to: str, text: str | bytes,
                           content_type: str = "text/plain;charset=UTF-8", *,
                           headers: tuple[tuple[str, str], ...] = (),
                           call_id: str = "") -> SipResponse:
        request = self._new("MESSAGE", to, to, call_id=call_id)
        request.add("content-type", content_type)
        for name, value in headers:
            request.add(name, value)
        request.body = text.encode() if isinstance(text, str) else text
        return await self.request(request)

    # What a chat client such as Linphone sends beside text, written out literally here
    # (not with the gateway's builders): CPIM (RFC 3862), isComposing (RFC 3994), IMDN
    # (RFC 5438).

    def cpim(self, to: str, content_type: str, body: str, *, message_id: str = "",
             disposition: str = "", date: str = "2026-12-04T18:00:00Z") -> bytes:
        imdn = (f"NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: {message_id}\r\n"
                if message_id else "")
        if disposition:
            imdn += f"imdn.Disposition-Notification: {disposition}\r\n"
        payload = body.encode()
        return (f"From: <{self.aor}>\r\nTo: <{to}>\r\nDateTime: {date}\r\n{imdn}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n"
                ).encode() + payload

    async def send_cpim(self, to: str, text: str, *, message_id: str = "",
                        disposition: str = "", date: str = "2026-12-04T18:00:00Z"
                        ) -> SipResponse:
        return await self.send_message(to, self.cpim(
            to, "text/plain;charset=UTF-8", text, message_id=message_id,
            disposition=disposition, date=date), "message/cpim")

    async def send_typing(self, to: str, active: bool) -> SipResponse:
        state = "<state>active</state><refresh>60</refresh>" if active else \
            "<state>idle</state><lastactive>2026-12-04T18:00:00Z</lastactive>"
        return await self.send_message(
            to, '<?xml version="1.0" encoding="UTF-8"?><isComposing xmlns="urn:ietf:params'
                f':xml:ns:im-iscomposing">{state}<contenttype>text/plain</contenttype>'
                "</isComposing>", "application/im-iscomposing+xml")

    async def send_imdn(self, to: str, message_id: str, status: str = "delivered", *,
                        cpim: bool = False) -> SipResponse:
        kind = "display" if status == "displayed" else "delivery"
        notice = ('<?xml version="1.0" encoding="UTF-8"?><imdn xmlns="urn:ietf:params:xml:'
                  f'ns:imdn"><message-id>{message_id}</message-id><datetime>2026-12-04T18:00'
                  f":00Z</datetime><{kind}-notification><status><{status}/></status></{kind}"
                  "-notification></imdn>")
        if not cpim:
            return await self.send_message(to, notice, "message/imdn+xml")
        return await self.send_message(to, self.cpim(
            to, "message/imdn+xml", notice, message_id=secrets.token_hex(6)), "message/cpim")

    async def listen_tcp(self) -> None:
        """Also accept TCP on our (UDP) port, as a proxy listening on both does: where
        a gateway sends requests too large for UDP (RFC 3261 §18.1.1)."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), self.host, self.port)

    async def publish(self, basic: str = "open", note: str = "", activity: str = "",
                      expires: int = 600) -> SipResponse:
        request = self._new("PUBLISH", self.aor, self.aor)
        request.add("event", "presence")
        request.add("expires", str(expires))
        if self._etag:
            request.add("sip-if-match", self._etag)
        request.add("content-type", PIDF)
        # each device its own tuple (RFC 3863 §4.1.2: a presence server merges them)
        request.body = pidf(f"{self.user}@{self.domain}", basic, note, activity,
                            tuple_id=f"t{self.port}")
        response = await self.request(request)
        self._etag = response.get("sip-etag") or self._etag
        return response

    async def subscribe(self, to: str, expires: int = 600) -> SipResponse:
        dialog = self.dialogs.get(to)
        if dialog is None:
            request = self._new("SUBSCRIBE", to, to)
        else:
            dialog.cseq += 1
            request = self._new("SUBSCRIBE", dialog.target, dialog.remote_uri,
                                to_tag=dialog.remote_tag, from_tag=dialog.local_tag,
                                call_id=dialog.call_id, cseq=dialog.cseq, route=dialog.route)
        request.add("event", "presence")
        request.add("accept", PIDF)
        request.add("expires", str(expires))
        response = await self.request(request)
        if dialog is None and response.status < 300:
            contact = response.get("contact")
            self.dialogs[to] = UaDialog(
                request.call_id, request.from_.tag, response.to.tag,
                parse_name_addr(contact).uri if contact else to, self.aor, to,
                route=list(reversed(response.get_all("record-route"))))
        if expires == 0:
            self.dialogs.pop(to, None)
        return response

    def reply(self, request: SipRequest, status: int, *headers: tuple[str, str],
              connection: _Connection | None = None) -> None:
        response = make_response(request, status, to_tag=secrets.token_hex(4))
        for name, value in headers:
            response.add(name, value)
        arrived_on = self._arrived_on.pop(id(request), None)  # answered: forget it
        self._write(response.serialize(), connection or arrived_on)

    # ------------------------------------------------------------------ input

    def _handle(self, message: SipRequest | SipResponse,
                connection: _Connection | None = None) -> None:
        if isinstance(message, SipResponse):
            if message.status < 200:
                return
            future = self._waiting.get(message.top_via.branch)
            if future is not None and not future.done():
                future.set_result(message)
            return
        if message.method == "ACK":
            return
        if connection is not None:
            self._arrived_on[id(message)] = connection
        if message.method == "SUBSCRIBE" and self.presence_agent:
            self._serve_subscribe(message, connection)
            return
        refused = self.refuse.get((message.get("content-type") or "").split(";")[0].lower())
        if message.method == "MESSAGE" and refused:
            self.reply(message, refused, connection=connection)
            return
        if message.method in self.answers:
            self.reply(message, self.answers[message.method], connection=connection)
            queue = self.messages if message.method == "MESSAGE" else self.notifies
            queue.put_nowait(message)
            return
        self.requests.put_nowait(message)

    # ------------------------------------------------------------------ presence agent

    def _serve_subscribe(self, request: SipRequest, connection: _Connection | None) -> None:
        expires = int((request.get("expires") or "3600").strip() or 3600)
        dialog = self.watchers.get(request.call_id)
        tag = dialog.local_tag if dialog is not None else secrets.token_hex(4)
        response = make_response(request, 200, to_tag=tag)
        response.add("expires", str(expires))
        response.add("contact", f"<{self.contact}>")
        self._arrived_on.pop(id(request), None)
        self._write(response.serialize(), connection)
        contact = request.get("contact")
        if dialog is None:
            dialog = UaDialog(request.call_id, tag, request.from_.tag,
                              parse_name_addr(contact).uri if contact else request.from_.uri,
                              self.aor, request.from_.uri, cseq=0,
                              route=list(request.get_all("record-route")))
            self.watchers[request.call_id] = dialog
        elif contact:
            dialog.target = parse_name_addr(contact).uri
        if expires == 0:
            self.watchers.pop(request.call_id, None)
            self._notify_watcher(dialog, "terminated;reason=timeout")
        else:
            self._notify_watcher(dialog, f"active;expires={expires}")

    def _notify_watcher(self, dialog: UaDialog, state: str) -> None:
        dialog.cseq += 1
        request = self._new("NOTIFY", dialog.target, dialog.remote_uri,
                            to_tag=dialog.remote_tag, from_tag=dialog.local_tag,
                            call_id=dialog.call_id, cseq=dialog.cseq, route=dialog.route)
        request.add("event", "presence")
        request.add("subscription-state", state)
        request.add("content-type", PIDF)
        basic, note = self.presence_state
        request.body = pidf(f"{self.user}@{self.domain}", basic, note)
        self._write(request.serialize())  # answers are not waited for

    def set_presence(self, basic: str = "open", note: str = "") -> None:
        """Tell every watcher (as presence agent) the new state."""
        self.presence_state = (basic, note)
        for dialog in list(self.watchers.values()):
            self._notify_watcher(dialog, "active")

    async def next_notify(self, *, timeout: float = 5.0, state: str = "") -> SipRequest:
        """The next NOTIFY, skipping those whose Subscription-State is not ``state``."""
        async with asyncio.timeout(timeout):
            while True:
                notify = await self.notifies.get()
                current = (notify.get("subscription-state") or "").split(";")[0]
                if not state or current == state:
                    return notify

    async def notify_where(self, predicate, *, timeout: float = 10.0) -> SipRequest:
        """The next NOTIFY for which ``predicate(notify)`` holds (others are skipped: a
        presence change may take several notifications to settle)."""
        async with asyncio.timeout(timeout):
            while True:
                notify = await self.notifies.get()
                if predicate(notify):
                    return notify

    async def drain(self) -> None:
        for queue in (self.messages, self.notifies, self.requests):
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    queue.get_nowait()
