"""Builders and readers for the negotiation elements of S2S streams.

RFC 6120 §4.3 (features), §5 (STARTTLS), §6 (SASL); XEP-0220 (dialback);
XEP-0178 (SASL EXTERNAL for servers). Kept apart from the state machine so that the
wire format of each element is in one place and the state machine reads as logic.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from xml.etree.ElementTree import Element, SubElement

from gateway.xmpp.errors import error_child
from gateway.xmpp.namespaces import (
    NS_BIDI,
    NS_BIDI_FEATURE,
    NS_DIALBACK,
    NS_DIALBACK_FEATURE,
    NS_SASL,
    NS_STREAMS,
    NS_TLS,
)
from gateway.xmpp.stream_management import TAG_SM_FEATURE

TAG_FEATURES = f"{{{NS_STREAMS}}}features"
TAG_STREAM_ERROR = f"{{{NS_STREAMS}}}error"
TAG_STARTTLS = f"{{{NS_TLS}}}starttls"
TAG_PROCEED = f"{{{NS_TLS}}}proceed"
TAG_TLS_FAILURE = f"{{{NS_TLS}}}failure"
TAG_AUTH = f"{{{NS_SASL}}}auth"
TAG_RESPONSE = f"{{{NS_SASL}}}response"
TAG_ABORT = f"{{{NS_SASL}}}abort"
TAG_CHALLENGE = f"{{{NS_SASL}}}challenge"
TAG_SUCCESS = f"{{{NS_SASL}}}success"
TAG_SASL_FAILURE = f"{{{NS_SASL}}}failure"
TAG_DB_RESULT = f"{{{NS_DIALBACK}}}result"
TAG_DB_VERIFY = f"{{{NS_DIALBACK}}}verify"
TAG_BIDI_FEATURE = f"{{{NS_BIDI_FEATURE}}}bidi"
TAG_BIDI = f"{{{NS_BIDI}}}bidi"


@dataclass(frozen=True, slots=True)
class OfferedFeatures:
    """What a receiving server offered in ``<stream:features/>`` (RFC 6120 §4.3.2)."""

    starttls: bool
    starttls_required: bool
    sasl_mechanisms: tuple[str, ...]
    dialback_errors: bool  # XEP-0220 §2.4 feature: graceful dialback errors
    stream_management: bool = False  # XEP-0198 <sm xmlns='urn:xmpp:sm:3'/>
    bidi: bool = False  # XEP-0288 <bidi xmlns='urn:xmpp:features:bidi'/>

    @classmethod
    def parse(cls, features: Element) -> OfferedFeatures:
        starttls = features.find(TAG_STARTTLS)
        mechanisms = tuple(
            (m.text or "").strip().upper()
            for m in features.iterfind(f"{{{NS_SASL}}}mechanisms/{{{NS_SASL}}}mechanism")
        )
        return cls(
            starttls=starttls is not None,
            starttls_required=starttls is not None
            and starttls.find(f"{{{NS_TLS}}}required") is not None,
            sasl_mechanisms=mechanisms,
            dialback_errors=features.find(f"{{{NS_DIALBACK_FEATURE}}}dialback") is not None,
            stream_management=features.find(TAG_SM_FEATURE) is not None,
            bidi=features.find(TAG_BIDI_FEATURE) is not None,
        )


def features(*, starttls: bool, starttls_required: bool, external: bool, dialback: bool,
             stream_management: bool = False, bidi: bool = False) -> Element:
    root = Element(TAG_FEATURES)
    if bidi:
        SubElement(root, TAG_BIDI_FEATURE)
    if stream_management:
        SubElement(root, TAG_SM_FEATURE)
    if starttls:
        tls = SubElement(root, TAG_STARTTLS)
        if starttls_required:
            SubElement(tls, f"{{{NS_TLS}}}required")
    if external:
        mechanisms = SubElement(root, f"{{{NS_SASL}}}mechanisms")
        SubElement(mechanisms, f"{{{NS_SASL}}}mechanism").text = "EXTERNAL"
    if dialback:
        SubElement(
            SubElement(root, f"{{{NS_DIALBACK_FEATURE}}}dialback"),
            f"{{{NS_DIALBACK_FEATURE}}}errors",
        )
    return root


def bidi_request() -> Element:
    return Element(TAG_BIDI)


def starttls() -> Element:
    return Element(TAG_STARTTLS)


def proceed() -> Element:
    return Element(TAG_PROCEED)


def tls_failure() -> Element:
    return Element(TAG_TLS_FAILURE)


def sasl_external_auth(authzid: str) -> Element:
    """XEP-0178 §3 step 6: the initiating server offers its domain as authorization id."""
    auth = Element(TAG_AUTH, {"mechanism": "EXTERNAL"})
    auth.text = base64.b64encode(authzid.encode()).decode() if authzid else "="
    return auth


def sasl_success() -> Element:
    return Element(TAG_SUCCESS)


def sasl_challenge_empty() -> Element:
    """RFC 6120 §6.4.2: an empty challenge asks for the (possibly empty) response."""
    return Element(TAG_CHALLENGE)


def sasl_failure(condition: str, text: str = "") -> Element:
    failure = Element(TAG_SASL_FAILURE)
    SubElement(failure, f"{{{NS_SASL}}}{condition}")
    if text:
        SubElement(failure, f"{{{NS_SASL}}}text").text = text
    return failure


def sasl_failure_condition(failure: Element) -> str:
    for child in failure:
        name = child.tag.rpartition("}")[2]
        if name != "text":
            return name
    return "not-authorized"


class SaslPayloadError(ValueError):
    """Not valid base64 (RFC 6120 §6.4.2: answer with <incorrect-encoding/>)."""


def decode_sasl_payload(text: str | None) -> str | None:
    """None when absent; "" for "=" (explicitly empty); the decoded string otherwise."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text == "=":
        return ""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise SaslPayloadError("SASL payload is not valid base64 UTF-8") from None


def db_result_key(from_: str, to: str, key: str) -> Element:
    result = Element(TAG_DB_RESULT, {"from": from_, "to": to})
    result.text = key
    return result


def db_result_answer(from_: str, to: str, type_: str) -> Element:
    return Element(TAG_DB_RESULT, {"from": from_, "to": to, "type": type_})


def db_verify_request(from_: str, to: str, stream_id: str, key: str) -> Element:
    verify = Element(TAG_DB_VERIFY, {"from": from_, "to": to, "id": stream_id})
    verify.text = key
    return verify


def db_verify_answer(from_: str, to: str, stream_id: str, type_: str) -> Element:
    return Element(TAG_DB_VERIFY, {"from": from_, "to": to, "id": stream_id, "type": type_})


def db_error(
    tag: str, from_: str, to: str, condition: str, text: str = "", stream_id: str | None = None
) -> Element:
    """XEP-0220 §2.4 dialback error: answers one domain pair and keeps the stream."""
    attrs = {"from": from_, "to": to, "type": "error"}
    if stream_id is not None:
        attrs["id"] = stream_id
    answer = Element(tag, attrs)
    answer.append(error_child(condition, "cancel", text))
    return answer
