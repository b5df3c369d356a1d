"""Outbound S2S stream: we are the Initiating Server (RFC 6120 §4-6, XEP-0220, XEP-0178).

Negotiation follows the partner's permitted methods (docs/configuration.md, "The
negotiation matrix"):

- STARTTLS is used whenever offered unless tls=not-supported; when no permitted method
  works without TLS, a peer that does not offer it is not talked to (never downgrade).
- After TLS, SASL EXTERNAL is used when permitted, offered, and the peer's certificate
  verifies for its domain; otherwise (or when SASL fails, XEP-0178 §3) dialback, when
  the permitted set holds dialback for the stream's state.
- The same stream also carries our ``db:verify`` requests when we act as Receiving
  Server for an inbound dialback from this peer (XEP-0220 §2.1.2: reuse allowed).
- XEP-0288 bidi is requested where offered over TLS when the peer's certificate
  verifies for its domain (we then take the peer's stanzas on this stream too: the
  certificate, not DNS, says who is talking).
- XEP-0198 stream management is enabled where the peer offers it (after SASL, as
  Prosody offers it); what we send is then kept until acknowledged.
- Direct TLS (XEP-0368) names the ALPN protocol ``xmpp-server``; DANE (RFC 7673), when
  the driver found TLSA records for the target, is checked as soon as TLS is up, and a
  DANE-EE/DANE-TA match authenticates the peer's certificate for its domain.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from gateway.auth.identity import check_identity
from gateway.config.model import PartnerPolicy
from gateway.dns import dane
from gateway.domain import normalize_domain
from gateway.policy.negotiation import AuthMethod, Support
from gateway.xmpp import elements as el
from gateway.xmpp import stream_management as sm
from gateway.xmpp.errors import StreamError, parse_error_child
from gateway.xmpp.events import (
    BidiNegotiated,
    DialbackVerifyAnswered,
    Direction,
    PairFailed,
    StanzasAcked,
    StreamManagementEnabled,
    StreamManagementFailed,
    StreamOpened,
    is_stanza,
)
from gateway.xmpp.namespaces import NS_DIALBACK
from gateway.xmpp.parser import StreamHeader
from gateway.xmpp.stream import (
    CertificateVerdict,
    NotAuthenticated,
    Phase,
    S2SStream,
    StreamContext,
)

__all__ = ["NotAuthenticated", "OutboundStream"]


class OutboundStream(S2SStream):
    __slots__ = ("_awaiting_tls", "_dialback_channel", "_dialback_sent", "_failure_notes",
                 "_main_failure_reported", "_peer_dialback", "_sasl_done", "_sasl_sent",
                 "_verify_queue", "_verify_sent", "dane", "dane_verdict", "direct_tls",
                 "offered_features", "peer_header_received")
    direction = Direction.OUTBOUND

    def __init__(
        self,
        context: StreamContext,
        *,
        local_domain: str,
        remote_domain: str,
        partner: PartnerPolicy,
        now: float,
        peer_address: str = "",
        direct_tls: bool = False,
        dane_expectation: dane.DaneExpectation | None = None,
    ) -> None:
        super().__init__(context, now=now, peer_address=peer_address)
        self.dane = dane_expectation
        self.dane_verdict: dane.DaneVerdict | None = None
        self.local_domain = local_domain
        self.remote_domain = remote_domain
        self.partner = partner
        self.direct_tls = direct_tls
        self.peer_header_received = False
        self._peer_dialback = False  # the peer declared jabber:server:dialback
        self._sasl_sent = False
        self._sasl_done = False
        self._dialback_sent: set[tuple[str, str]] = set()
        self._verify_queue: list[tuple[str, str, str, str]] = []
        self._verify_sent: set[tuple[str, str, str]] = set()
        self._dialback_channel = False  # may db:* elements be sent now?
        self._failure_notes: list[str] = []
        self._awaiting_tls = False
        self._main_failure_reported = False
        self.offered_features: list[el.OfferedFeatures] = []
        self.phase = Phase.CONNECTING

    @property
    def failure_notes(self) -> tuple[str, ...]:
        """Why each authentication method was not possible, so far (for diagnostics)."""
        return tuple(self._failure_notes)

    # ------------------------------------------------------------------ driver API

    def initiate(self, now: float) -> None:
        """Call once the TCP connection is up."""
        self._now = now
        if self.direct_tls:  # XEP-0368: TLS first, header after the handshake
            self._start_tls(server_side=False, server_name=self.remote_domain,
                            alpn=(b"xmpp-server",))
        else:
            self._open()

    def add_local_domain(self, local: str) -> bool:
        """Authenticate another of our domains on this stream (XEP-0220 §2.4 piggybacking).

        Returns False when it cannot be tried here (the caller opens a new stream): the
        stream is not open, ``local`` is not served, or the partner policy does not permit
        dialback in the stream's state. Success or failure arrives as PairAuthenticated /
        PairFailed for (remote, local).
        """
        partner = self.partner
        if (self.phase is not Phase.OPEN or partner is None or self.stream_id is None
                or local not in self.ctx.local_domains):
            return False
        pair = (self.remote_domain, local)
        if pair in self.pairs or pair in self._dialback_sent:
            return True
        if not partner.negotiation.permits_dialback(over_tls=self.tls_active):
            return False
        self._send_db_result(local)
        return True

    def request_verify(self, local: str, remote: str, stream_id: str, key: str) -> None:
        """Ask ``remote`` (Authoritative Server) whether ``key`` is genuine (XEP-0220 §2.1.2)."""
        self._verify_queue.append((local, remote, stream_id, key))
        if self._dialback_channel:
            self._flush_verifies()

    # ------------------------------------------------------------------ negotiation

    def _open(self) -> None:
        self._send_header(from_=self.local_domain, to=self.remote_domain, stream_id=None)
        self.phase = Phase.WAIT_HEADER

    def _on_tls_ready(self) -> None:
        if self.dane is not None and not self._check_dane():
            return
        self._open()  # RFC 6120 §5.4.3.3: a new stream over TLS

    def _check_dane(self) -> bool:
        """RFC 7673 §3.3: the chain must match the target's TLSA records (when usable)."""
        assert self._tls is not None and self.remote_domain
        peer = self._peer_cert
        leaf = peer.leaf if peer is not None else None
        name_ok = leaf is not None and check_identity(
            leaf, self.remote_domain, direct_tls=self.direct_tls).ok
        pkix_ok = peer is not None and leaf is not None and not peer.chain_errors
        verdict = dane.verify(self.dane, self._tls.peer_chain_der(), pkix_ok=pkix_ok,
                              name_ok=name_ok)
        self.dane_verdict = verdict
        if verdict.ok:
            return True
        # Nothing but TLS has happened: an unauthenticated peer gets no stream.
        self._report_main_failure("remote-server-not-found", verdict.reason)
        self._abort(verdict.reason)
        return False

    def _certificate_verdict(self) -> CertificateVerdict:
        """Whether the peer's certificate authenticates its domain: DANE's word when a
        DANE-EE/DANE-TA record matched, else PKIX and the name (RFC 6125)."""
        if self.dane_verdict is not None and self.dane_verdict.authenticated:
            return CertificateVerdict(True, self.dane_verdict.reason)
        assert self._peer_cert is not None and self.remote_domain
        return self.ctx.check_certificate(self._peer_cert, self.remote_domain)

    def _carries_outgoing(self) -> bool:
        return True


    def _on_header(self, header: StreamHeader, now: float) -> None:
        if self.phase is not Phase.WAIT_HEADER:
            raise StreamError("invalid-xml", "unexpected second stream header")
        self.peer_header_received = True
        self.stream_id = header.id or None  # id='' is no id: dialback cannot use it
        self._peer_dialback = NS_DIALBACK in header.namespaces.values()
        self._events.append(StreamOpened(header.from_, header.to, header.id, header.version))
        self.phase = Phase.NEGOTIATING if not self.pairs else Phase.OPEN
        if not header.version:
            # RFC 3920 peer: no features will come; only dialback without TLS can work.
            self._choose_authentication(el.OfferedFeatures(False, False, (), False))

    def _on_element(self, element: Element, now: float) -> None:
        if self.phase in (Phase.WAIT_HEADER, Phase.CONNECTING):
            raise StreamError("not-well-formed", "element before the stream header")
        if self._dispatch_common(element):
            return
        tag = element.tag
        if tag == el.TAG_FEATURES:
            self._on_features(el.OfferedFeatures.parse(element))
        elif tag == el.TAG_PROCEED and self._awaiting_tls:
            self._awaiting_tls = False
            self._start_tls(server_side=False, server_name=self.remote_domain)
        elif tag == el.TAG_TLS_FAILURE and self._awaiting_tls:
            self._give_up("remote-server-not-found", f"{self.remote_domain} refused STARTTLS")
        elif tag == el.TAG_SUCCESS and self._sasl_sent:
            self._on_sasl_success()
        elif tag == el.TAG_SASL_FAILURE and self._sasl_sent:
            self._on_sasl_failure(el.sasl_failure_condition(element))
        elif tag == el.TAG_DB_RESULT:
            self._on_db_result(element)
        elif tag == el.TAG_DB_VERIFY:
            self._on_db_verify(element)
        elif is_stanza(element):
            self._on_stanza(element, now)
        elif tag == sm.TAG_ENABLED and self.sm_out is not None and self.sm_in is None:
            self.sm_in = sm.ReceivedCounter()  # §3: counting what we receive starts now
            self._events.append(StreamManagementEnabled(initiated_by_us=True))
        elif tag == sm.TAG_FAILED and self.sm_out is not None and self.sm_in is None:
            self._on_sm_failed(element)
        else:
            raise StreamError("unsupported-stanza-type", f"unexpected element {tag}")

    def _on_features(self, offered: el.OfferedFeatures) -> None:
        self.offered_features.append(offered)  # for diagnostics (check connectivity)
        partner = self.partner
        assert partner is not None
        if not self.tls_active:
            use_tls = (
                offered.starttls
                and partner.tls is not Support.NOT_SUPPORTED
                and self.ctx.tls_available
            )
            if use_tls:
                self._send(el.starttls())
                self._awaiting_tls = True
                return
            if offered.starttls_required:
                why = (
                    "partner policy tls=not-supported"
                    if partner.tls is Support.NOT_SUPPORTED
                    else "no certificate is configured here"
                )
                self._give_up(
                    "remote-server-not-found", f"{self.remote_domain} requires TLS but {why}"
                )
                return
            if partner.negotiation.tls_mandatory:
                self._give_up(
                    "remote-server-not-found",
                    f"{self.remote_domain} does not offer STARTTLS; partner policy requires "
                    f"TLS (tls={partner.tls}, permits {partner.negotiation.methods_text})",
                    stream_error="policy-violation",
                )
                return
        if (offered.bidi and self.ctx.bidi and self.tls_active and not self.bidi
                and not self._sasl_done and self._peer_cert is not None
                and self._certificate_verdict().ok):
            self._send(el.bidi_request())  # XEP-0288 §2, before authentication
            self.bidi = True
            self._events.append(BidiNegotiated())
        if self._sasl_done:
            # Stream restarted after SASL success: the pair is authenticated now.
            if offered.stream_management and self.ctx.stream_management \
                    and not self.stream_management:
                # XEP-0198 §3: what we send from here on is counted and kept.
                self._send(sm.enable())
                self.sm_out = sm.SentQueue()
            self._dialback_channel = True
            remote, local = self.remote_domain, self.local_domain
            assert remote is not None and local is not None  # set when the stream was made
            self._authenticated(remote, local, AuthMethod.SASL_TLS)
            self._flush_verifies()
            return
        self._choose_authentication(offered)

    def _choose_authentication(self, offered: el.OfferedFeatures) -> None:
        partner = self.partner
        assert partner is not None and self.remote_domain and self.local_domain
        negotiation = partner.negotiation
        self._dialback_channel = True
        self._flush_verifies()
        if self.tls_active and negotiation.permits(AuthMethod.SASL_TLS):
            if "EXTERNAL" not in offered.sasl_mechanisms:
                self._failure_notes.append(f"{self.remote_domain} did not offer SASL EXTERNAL")
            else:
                verdict = self._certificate_verdict()
                if verdict.ok:
                    self._send(el.sasl_external_auth(self.local_domain))
                    self._sasl_sent = True
                    self._dialback_channel = False  # nothing else during SASL (§6.4)
                    return
                self._failure_notes.append(f"certificate of {self.remote_domain}: {verdict.reason}")
        self._try_dialback(offered_dialback=offered.dialback_errors or self._peer_dialback)

    def _try_dialback(self, *, offered_dialback: bool) -> None:
        partner = self.partner
        assert partner is not None and self.remote_domain and self.local_domain
        negotiation = partner.negotiation
        if not negotiation.permits_dialback(over_tls=self.tls_active):
            state = "over TLS" if self.tls_active else "without TLS"
            self._failure_notes.append(
                f"dialback {state} not permitted (partner policy permits "
                f"{negotiation.methods_text})"
            )
        elif not offered_dialback:
            self._failure_notes.append(f"{self.remote_domain} does not support dialback")
        elif self.stream_id is None:
            self._failure_notes.append(f"{self.remote_domain} sent no stream id for dialback")
        else:
            self._send_db_result(self.local_domain)
            return
        self._give_up(
            "remote-server-not-found",
            "cannot authenticate: " + "; ".join(self._failure_notes),
            stream_error="policy-violation",
        )

    def _send_db_result(self, local: str) -> None:
        assert self.remote_domain and self.stream_id
        key = self.ctx.keys.generate(self.remote_domain, local, self.stream_id)
        self._dialback_sent.add((self.remote_domain, local))
        self._send(el.db_result_key(local, self.remote_domain, key))

    def _on_sm_failed(self, element: Element) -> None:
        """The peer refused <enable/>: go on as plain S2S. What was sent meanwhile has no
        acknowledgement coming; it counts as sent, as it would without the attempt."""
        condition = next((child.tag.rpartition("}")[2] for child in element), "")
        queue, self.sm_out = self.sm_out, None
        left = queue.take() if queue is not None else []
        self._events.append(StreamManagementFailed(condition or "undefined-condition"))
        if left:
            self._events.append(StanzasAcked(len(left), tuple(t for _data, t in left
                                                              if t is not None)))

    # SASL EXTERNAL — XEP-0178 §3
    def _on_sasl_success(self) -> None:
        self._sasl_sent = False
        self._sasl_done = True
        self._restart_stream()
        self._open()

    def _on_sasl_failure(self, condition: str) -> None:
        self._sasl_sent = False
        self._dialback_channel = True
        self._failure_notes.append(f"{self.remote_domain} refused SASL EXTERNAL <{condition}/>")
        # XEP-0178 §3: fall back to dialback only where the policy permits it.
        self._flush_verifies()
        self._try_dialback(offered_dialback=self._peer_dialback)

    # Dialback results — XEP-0220 §2.1.1 step 4
    def _on_db_result(self, element: Element) -> None:
        type_ = element.get("type")
        try:
            remote = normalize_domain(element.get("from", ""))
            local = normalize_domain(element.get("to", ""))
        except ValueError:
            raise StreamError("invalid-from", "malformed dialback answer addresses") from None
        if (remote, local) not in self._dialback_sent:
            # XEP-0220 §5.1: unsolicited results are an attack vector; never act on them.
            raise StreamError("not-authorized", "unsolicited dialback result")
        self._dialback_sent.discard((remote, local))
        if type_ == "valid":
            method = AuthMethod.TLS_DIALBACK if self.tls_active else AuthMethod.TCP_DIALBACK
            self._authenticated(remote, local, method)
        elif type_ == "invalid":
            reason = f"{remote} declared our dialback key invalid (dialback secret mismatch?)"
            self._pair_failed(remote, local, "internal-server-error", reason)
            self._close_gracefully(reason)
        else:
            condition, text = parse_error_child(element)
            reason = (
                f"{remote} answered dialback with error "
                f"<{condition or 'undefined-condition'}/>" + (f": {text}" if text else "")
            )
            self._pair_failed(remote, local, "remote-server-timeout", reason)
            if not self.pairs:
                self._close_gracefully(reason)

    def _pair_failed(self, remote: str, local: str, condition: str, reason: str) -> None:
        if (remote, local) == (self.remote_domain, self.local_domain):
            self._report_main_failure(condition, reason)
        else:
            self._events.append(PairFailed(remote, local, condition, reason))

    # Dialback verification answers — XEP-0220 §2.1.2 step 3
    def _on_db_verify(self, element: Element) -> None:
        key = (element.get("from", ""), element.get("to", ""), element.get("id", ""))
        try:
            remote, local = normalize_domain(key[0]), normalize_domain(key[1])
        except ValueError:
            raise StreamError("invalid-from", "malformed db:verify answer addresses") from None
        if (remote, local, key[2]) not in self._verify_sent:
            raise StreamError("not-authorized", "unsolicited db:verify answer")
        self._verify_sent.discard((remote, local, key[2]))
        type_ = element.get("type")
        if type_ in ("valid", "invalid"):
            self._events.append(DialbackVerifyAnswered(remote, local, key[2], type_ == "valid"))
        else:
            condition, text = parse_error_child(element)
            self._events.append(
                DialbackVerifyAnswered(
                    remote, local, key[2], None, f"<{condition or 'undefined-condition'}/> {text}"
                )
            )

    def _flush_verifies(self) -> None:
        for local, remote, stream_id, key in self._verify_queue:
            self._verify_sent.add((remote, local, stream_id))
            self._send(el.db_verify_request(local, remote, stream_id, key))
        self._verify_queue.clear()

    # ------------------------------------------------------------------ failure

    def _give_up(self, bounce_condition: str, reason: str, *, stream_error: str = "") -> None:
        """The main domain pair cannot be authenticated: report it and close."""
        assert self.remote_domain and self.local_domain
        self._report_main_failure(bounce_condition, reason)
        if stream_error:
            self.close(stream_error, reason)
        else:
            self._close_gracefully(reason)

    def _report_main_failure(self, bounce_condition: str, reason: str) -> None:
        if self._main_failure_reported:
            return
        self._main_failure_reported = True
        assert self.remote_domain and self.local_domain
        self._dialback_sent.discard((self.remote_domain, self.local_domain))
        self._events.append(
            PairFailed(self.remote_domain, self.local_domain, bounce_condition, reason)
        )

    def _on_finished(self) -> None:
        reason = self.close_reason or "stream closed"
        main = (self.remote_domain, self.local_domain)
        if main not in self.pairs and self.remote_domain and self.local_domain:
            timeout = self.close_error == "connection-timeout"
            self._report_main_failure(
                "remote-server-timeout" if timeout else "remote-server-not-found",
                reason
                if not self._failure_notes
                else f"{reason} ({'; '.join(self._failure_notes)})",
            )
        for remote, local in sorted(self._dialback_sent):
            self._events.append(
                PairFailed(
                    remote,
                    local,
                    "remote-server-not-found",
                    f"stream closed during dialback: {reason}",
                )
            )
        self._dialback_sent.clear()
        for remote, local, stream_id in sorted(self._verify_sent):
            self._events.append(
                DialbackVerifyAnswered(
                    remote, local, stream_id, None, f"stream closed before answering: {reason}"
                )
            )
        for local, remote, stream_id, _key in self._verify_queue:
            self._events.append(
                DialbackVerifyAnswered(
                    remote, local, stream_id, None, f"stream closed before sending: {reason}"
                )
            )
        self._verify_sent.clear()
        self._verify_queue.clear()
