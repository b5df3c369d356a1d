"""Inbound S2S stream: we are the Receiving Server (and the Authoritative Server).

What is offered and accepted follows the partner's permitted methods from the pure
negotiation rule (docs/configuration.md, "The negotiation matrix"):

- STARTTLS is offered unless tls=not-supported, with ``<required/>`` when no permitted
  method works without TLS; then nothing but STARTTLS is accepted before TLS.
- SASL EXTERNAL is offered after TLS only when "SASL over TLS" is permitted and the
  peer's certificate verifies for the stream's ``from`` domain (XEP-0178 §3).
- Dialback requests are answered only when the permitted set holds a dialback method
  for the stream's state (TLS or not); otherwise a XEP-0220 §2.4 dialback error.
- Stanzas are accepted only for authenticated (from-domain, to-domain) pairs
  (RFC 6120 §8.1.1.2 / §13.7): otherwise <invalid-from/>, <host-unknown/>,
  <improper-addressing/> or <not-authorized/>.
- XEP-0288 bidi is offered on TLS streams before authentication; once the peer asked
  for it, this stream also carries our stanzas to the peer's authenticated domains.
- XEP-0198 stream management is offered once the peer is authenticated (the features
  after the SASL restart, as Prosody does); ``<enable/>`` is answered ``<enabled/>``
  without resumption.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from gateway.config.model import PartnerPolicy
from gateway.domain import normalize_domain
from gateway.policy.negotiation import AuthMethod, Support
from gateway.xmpp import elements as el
from gateway.xmpp import stream_management as sm
from gateway.xmpp.errors import StreamError
from gateway.xmpp.events import (
    STANZA_TAGS,
    BidiNegotiated,
    DialbackVerifyNeeded,
    Direction,
    StreamManagementEnabled,
    StreamOpened,
)
from gateway.xmpp.parser import StreamHeader
from gateway.xmpp.stream import Phase, S2SStream, StreamContext

MAX_SASL_ATTEMPTS = 2
MAX_PENDING_DIALBACK = 32  # per stream: bounds work a peer can make us do (XEP-0220 §4)


class InboundStream(S2SStream):
    __slots__ = ("_legacy", "_pending_dialback", "_sasl_attempts", "_sasl_done",
                 "_sasl_waiting_response", "claimed_domain")
    direction = Direction.INBOUND

    def __init__(
        self,
        context: StreamContext,
        *,
        now: float,
        peer_address: str = "",
        direct_tls: bool = False,
    ) -> None:
        super().__init__(context, now=now, peer_address=peer_address)
        self._sasl_done = False
        self._sasl_attempts = 0
        self._sasl_waiting_response = False
        self._pending_dialback: dict[tuple[str, str], str] = {}
        self.claimed_domain: str | None = None  # the header's 'from', before any check
        self._legacy = False  # peer sent no version: RFC 3920-era dialback-only stream
        if direct_tls:  # XEP-0368: TLS from the first byte, then the stream header
            self._start_tls(server_side=True)

    # ------------------------------------------------------------------ driver API

    def dialback_verified(
        self, remote: str, local: str, valid: bool | None, condition: str = "", text: str = ""
    ) -> None:
        """The outcome of the db:verify we asked the Authoritative Server (XEP-0220 §2.1.2).

        ``valid`` None means no verdict could be had; ``condition`` then names the
        dialback error (remote-server-not-found, remote-connection-failed,
        remote-server-timeout).
        """
        key = self._pending_dialback.pop((remote, local), None)
        if key is None or self.phase in (Phase.CLOSED, Phase.CLOSING):
            return  # XEP-0220 §2.1.2: no matching request → drop silently
        if valid:
            self._send(el.db_result_answer(local, remote, "valid"))
            method = AuthMethod.TLS_DIALBACK if self.tls_active else AuthMethod.TCP_DIALBACK
            self._authenticated(remote, local, method)
        elif valid is None:
            self._send(
                el.db_error(
                    el.TAG_DB_RESULT, local, remote, condition or "remote-server-not-found", text
                )
            )
        elif self.pairs:
            # Keep the stream and the pairs already verified on it (XEP-0220 §2.1.2).
            self._send(
                el.db_error(
                    el.TAG_DB_RESULT,
                    local,
                    remote,
                    "forbidden",
                    "dialback key was declared invalid by the authoritative server",
                )
            )
        else:
            self._send(el.db_result_answer(local, remote, "invalid"))
            self._close_gracefully(
                f"dialback key for {remote} declared invalid by its authoritative server"
            )

    # ------------------------------------------------------------------ header

    def _header_from(self) -> str | None:
        return self.local_domain or next(iter(sorted(self.ctx.local_domains)), None)

    def _on_header(self, header: StreamHeader, now: float) -> None:
        if self.phase is not Phase.WAIT_HEADER:
            raise StreamError("invalid-xml", "unexpected second stream header")
        to = header.to
        try:
            local = normalize_domain(to) if to else ""
        except ValueError:
            local = ""
        if not local or local not in self.ctx.local_domains:
            raise StreamError("host-unknown", f"this gateway does not serve {to!r}")
        if self.local_domain is not None and local != self.local_domain:
            raise StreamError("host-unknown", "the 'to' domain changed across a stream restart")
        self.local_domain = local
        remote = self._remote_from_header(header)
        if self.stream_id is None or self._restarts:
            self.stream_id = self.ctx.new_stream_id()
        self._events.append(StreamOpened(header.from_, to, self.stream_id, header.version))
        self._legacy = not header.version
        # RFC 6120 §4.7.5: no 'version' from the peer means 0.9; answer without one.
        self._send_header(
            from_=local, to=remote, stream_id=self.stream_id,
            version=None if self._legacy else "1.0",
        )
        if self._legacy:
            # RFC 3920 peers get no features; only TCP dialback can work (XEP-0220 §2).
            if (
                not self.tls_active
                and self.partner is not None
                and not self.partner.negotiation.permits(AuthMethod.TCP_DIALBACK)
            ):
                raise StreamError(
                    "unsupported-version",
                    f"XMPP 1.0 streams are required: TLS is mandatory for {remote}",
                )
            self.phase = Phase.NEGOTIATING if not self.pairs else Phase.OPEN
            return
        self._send(self._features())
        self.phase = Phase.OPEN if self.pairs else Phase.NEGOTIATING

    def _remote_from_header(self, header: StreamHeader) -> str | None:
        raw = header.from_
        if not raw:
            return self.remote_domain  # RFC 6120 §4.7.1: 'from' is only SHOULD
        self.claimed_domain = raw  # for the log line even when refused below
        try:
            remote = normalize_domain(raw)
        except ValueError:
            raise StreamError("invalid-from", f"malformed 'from' domain {raw!r}") from None
        if self.remote_domain is not None and remote != self.remote_domain:
            raise StreamError("invalid-from", "the 'from' domain changed across a restart")
        partner = self.ctx.partner_for(remote)
        if partner is None:
            raise StreamError(
                "policy-violation", f"{remote} is not a federation partner of this gateway"
            )
        if partner.negotiation.tls_mandatory and not self.tls_active and not self.ctx.tls_available:
            raise StreamError(
                "policy-violation", f"TLS is required for {remote} but no certificate is configured"
            )
        self.remote_domain, self.partner = remote, partner
        return remote

    def _features(self) -> Element:
        partner = self.partner
        negotiation = partner.negotiation if partner is not None else None
        if not self.tls_active:
            starttls = self.ctx.tls_available and (
                partner is None or partner.tls is not Support.NOT_SUPPORTED
            )
            required = starttls and negotiation is not None and negotiation.tls_mandatory
            dialback = negotiation is None or negotiation.permits(AuthMethod.TCP_DIALBACK)
            return el.features(
                starttls=starttls, starttls_required=required, external=False, dialback=dialback
            )
        external = (
            negotiation is not None
            and not self._sasl_done
            and negotiation.permits(AuthMethod.SASL_TLS)
            and self._certificate_ok_for(self.remote_domain)
        )
        dialback = negotiation is None or negotiation.permits(AuthMethod.TLS_DIALBACK)
        return el.features(
            starttls=False, starttls_required=False, external=external, dialback=dialback,
            stream_management=bool(self.pairs) and self.ctx.stream_management
            and not self.stream_management,
            bidi=self._offers_bidi(),
        )

    def _certificate_ok_for(self, domain: str | None) -> bool:
        if domain is None or self._peer_cert is None or self._peer_cert.leaf is None:
            return False
        return self.ctx.check_certificate(self._peer_cert, domain).ok

    # ------------------------------------------------------------------ elements

    def _on_tls_ready(self) -> None:
        self.phase = Phase.WAIT_HEADER  # the peer restarts the stream (RFC 6120 §5.4.3.3)

    def _carries_outgoing(self) -> bool:
        return self.bidi


    def _offers_bidi(self) -> bool:
        """XEP-0288 on TLS streams only, before authentication (as Prosody offers it)."""
        return self.ctx.bidi and self.tls_active and not self.pairs and not self.bidi

    # XEP-0288 §2
    def _on_bidi(self) -> None:
        if not self._offers_bidi():
            raise StreamError("unsupported-stanza-type", "bidi was not offered on this stream")
        self.bidi = True
        self._events.append(BidiNegotiated())

    # XEP-0198 §3
    def _on_enable(self) -> None:
        if self.stream_management or not self.pairs or not self.ctx.stream_management:
            why = "unexpected-request" if self.pairs else "not-authorized"
            self._send(sm.failed(why if self.ctx.stream_management else "service-unavailable"))
            return
        # No resumption on S2S (as Prosody): a lost link's stanzas go over a new one.
        self.sm_in = sm.ReceivedCounter()
        self._send(sm.enabled())
        if self.bidi:  # what we send on this stream is counted from <enabled/> on
            self.sm_out = sm.SentQueue()
        self._events.append(StreamManagementEnabled(initiated_by_us=False))

    def _on_element(self, element: Element, now: float) -> None:
        if self.phase is Phase.WAIT_HEADER:
            raise StreamError("not-well-formed", "element before the stream header")
        tag = element.tag
        if tag in STANZA_TAGS:  # first: nearly every element is one
            self._on_stanza(element, now)
        elif self._dispatch_common(element):
            return
        elif tag == el.TAG_STARTTLS:
            self._on_starttls()
        elif self._plaintext_forbidden():
            raise StreamError(
                "policy-violation", f"TLS is required for {self.remote_domain} before anything else"
            )
        elif tag == el.TAG_DB_RESULT:
            self._on_db_result(element)
        elif tag == el.TAG_DB_VERIFY:
            self._on_db_verify(element)
        elif tag in (el.TAG_AUTH, el.TAG_RESPONSE, el.TAG_ABORT):
            self._on_sasl(element)
        elif tag == sm.TAG_ENABLE:
            self._on_enable()
        elif tag == sm.TAG_RESUME:
            self._send(sm.failed("item-not-found"))  # no resumption on S2S
        elif tag == el.TAG_BIDI:
            self._on_bidi()
        else:
            raise StreamError("unsupported-stanza-type", f"unexpected element {tag}")

    def _plaintext_forbidden(self) -> bool:
        return (
            not self.tls_active
            and self.partner is not None
            and self.partner.negotiation.tls_mandatory
        )

    # STARTTLS — RFC 6120 §5.4.2
    def _on_starttls(self) -> None:
        partner = self.partner
        if (
            self.tls_active
            or self.pairs
            or not self.ctx.tls_available
            or (partner is not None and partner.tls is Support.NOT_SUPPORTED)
        ):
            self._send(el.tls_failure())  # §5.4.2.2: failure, then close the stream
            self._close_gracefully(
                "STARTTLS refused: "
                + ("already encrypted" if self.tls_active else "TLS not offered to this peer")
            )
            return
        self._send(el.proceed())
        self._start_tls(server_side=True)

    # SASL EXTERNAL — RFC 6120 §6.4, XEP-0178 §3
    def _on_sasl(self, element: Element) -> None:
        if element.tag == el.TAG_ABORT:
            self._sasl_waiting_response = False
            self._send(el.sasl_failure("aborted"))
            return
        if element.tag == el.TAG_RESPONSE and not self._sasl_waiting_response:
            raise StreamError("not-authorized", "SASL response without a pending challenge")
        if element.tag == el.TAG_AUTH:
            self._sasl_attempts += 1
            if self._sasl_attempts > MAX_SASL_ATTEMPTS:
                raise StreamError("policy-violation", "too many SASL attempts")
            refusal = self._sasl_refusal(element.get("mechanism", ""))
            if refusal:
                self._send(el.sasl_failure(*refusal))
                return
        try:
            authzid = el.decode_sasl_payload(element.text)
        except el.SaslPayloadError:
            self._sasl_waiting_response = False
            self._send(el.sasl_failure("incorrect-encoding"))
            return
        if authzid is None and element.tag == el.TAG_AUTH:
            self._sasl_waiting_response = True  # §6.4.2: no initial response yet
            self._send(el.sasl_challenge_empty())
            return
        self._sasl_waiting_response = False
        remote = self.remote_domain
        assert remote is not None and self.local_domain is not None  # _sasl_refusal checked
        if authzid:
            try:
                authz_domain = normalize_domain(authzid)
            except ValueError:
                authz_domain = ""
            if authz_domain != remote:
                self._send(
                    el.sasl_failure(
                        "invalid-authzid", f"authorization identity {authzid!r} is not {remote}"
                    )
                )
                return
        self._send(el.sasl_success())
        self._sasl_done = True
        self._authenticated(remote, self.local_domain, AuthMethod.SASL_TLS)
        self._restart_stream()

    def _sasl_refusal(self, mechanism: str) -> tuple[str, str] | None:
        if mechanism != "EXTERNAL":
            return ("invalid-mechanism", f"mechanism {mechanism!r} is not offered")
        if not self.tls_active:
            return ("encryption-required", "SASL EXTERNAL needs TLS")
        if self._sasl_done:
            return ("not-authorized", "already authenticated")
        partner, remote = self.partner, self.remote_domain
        if partner is None or remote is None:
            return ("not-authorized", "the stream header named no 'from' domain")
        if not partner.negotiation.permits(AuthMethod.SASL_TLS):
            return ("not-authorized", f"SASL is not permitted for {remote} by partner policy")
        assert self._peer_cert is not None
        verdict = self.ctx.check_certificate(self._peer_cert, remote)
        if not verdict.ok:
            return ("not-authorized", verdict.reason)
        return None

    # Dialback, Receiving Server — XEP-0220 §2.2.1
    def _on_db_result(self, element: Element) -> None:
        from_, to = element.get("from", ""), element.get("to", "")
        key = (element.text or "").strip()
        if element.get("type"):
            raise StreamError(
                "unsupported-stanza-type", "typed db:result on an inbound stream (XEP-0220 §2.2)"
            )
        remote, local = self._dialback_domains(from_, to)
        if local is None:
            self._send(
                el.db_error(
                    el.TAG_DB_RESULT, to, from_, "item-not-found", f"{to!r} is not served here"
                )
            )
            return
        if remote is None:
            raise StreamError("invalid-from", f"malformed dialback 'from' {from_!r}")
        refusal = self._dialback_refusal(remote)
        if refusal is not None:
            self._send(el.db_error(el.TAG_DB_RESULT, local, remote, *refusal))
            return
        if (remote, local) in self.pairs:
            self._send(el.db_result_answer(local, remote, "valid"))  # already (e.g. SASL)
            return
        if not key:
            raise StreamError("bad-format", "db:result without a key")
        if len(self._pending_dialback) >= MAX_PENDING_DIALBACK:
            raise StreamError("policy-violation", "too many pending dialback requests")
        assert self.stream_id is not None
        self._pending_dialback[(remote, local)] = key
        self._events.append(DialbackVerifyNeeded(remote, local, self.stream_id, key))

    def _dialback_domains(self, from_: str, to: str) -> tuple[str | None, str | None]:
        try:
            local = normalize_domain(to)
        except ValueError:
            local = None
        if local is not None and local not in self.ctx.local_domains:
            local = None
        try:
            remote: str | None = normalize_domain(from_)
        except ValueError:
            remote = None
        return remote, local

    def _dialback_refusal(self, remote: str) -> tuple[str, str] | None:
        """Why dialback from ``remote`` is not acceptable here (XEP-0220 §2.4 conditions)."""
        partner: PartnerPolicy | None = self.ctx.partner_for(remote)
        if partner is None:
            return ("forbidden", f"{remote} is not a federation partner of this gateway")
        negotiation = partner.negotiation
        if negotiation.permits_dialback(over_tls=self.tls_active):
            return None
        if not self.tls_active and negotiation.permits(AuthMethod.TLS_DIALBACK):
            return ("policy-violation", f"TLS is required before dialback for {remote}")
        return (
            "not-authorized",
            f"partner policy for {remote} permits only {negotiation.methods_text} "
            "(dialback not allowed"
            + (" on an unencrypted stream)" if not self.tls_active else ")"),
        )

    # Dialback, Authoritative Server — XEP-0220 §2.2.2
    def _on_db_verify(self, element: Element) -> None:
        from_, to, stream_id = element.get("from", ""), element.get("to", ""), element.get("id")
        key = (element.text or "").strip()
        if element.get("type"):
            raise StreamError(
                "unsupported-stanza-type", "typed db:verify on an inbound stream (XEP-0220 §2.2)"
            )
        if not stream_id or not key or not from_:
            raise StreamError("bad-format", "db:verify needs from, to, id and a key")
        remote, local = self._dialback_domains(from_, to)
        if local is None:
            self._send(
                el.db_error(
                    el.TAG_DB_VERIFY,
                    to,
                    from_,
                    "item-not-found",
                    f"{to!r} is not served here",
                    stream_id=stream_id,
                )
            )
            return
        if remote is None:
            raise StreamError("invalid-from", f"malformed dialback 'from' {from_!r}")
        # The key was made by us as Originating Server for (receiving=remote, us, id).
        valid = self.ctx.keys.verify(key, remote, local, stream_id)
        self._send(el.db_verify_answer(local, remote, stream_id, "valid" if valid else "invalid"))
