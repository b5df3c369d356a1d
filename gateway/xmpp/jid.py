"""Minimal, fast JID splitting for routing decisions (RFC 7622 §3.1).

Routing only needs the domainpart and the bare JID. Full stringprep/PRECIS
enforcement of local- and resourceparts is the job of the server that owns the
account; here we split correctly (resource first: it may contain '@' and '/') and
normalise the domain with :func:`gateway.domain.normalize_domain`.
"""

from __future__ import annotations

from functools import lru_cache

from gateway.domain import normalize_domain


class JidError(ValueError):
    """The address is not a valid JID (answer with ``jid-malformed``)."""


@lru_cache(maxsize=65536)
def split_jid(jid: str) -> tuple[str, str, str]:
    """(localpart, domainpart, resourcepart); domainpart normalised. Raises JidError."""
    if not jid or len(jid) > 3071:
        raise JidError("empty or over-long JID")
    bare, sep, resource = jid.partition("/")
    if sep and not resource:
        raise JidError(f"empty resourcepart in {jid!r}")
    local, at, domain = bare.rpartition("@")
    if at and not local:
        raise JidError(f"empty localpart in {jid!r}")
    if len(local) > 1023 or len(resource) > 1023:
        raise JidError("localpart or resourcepart longer than 1023 bytes")
    try:
        domain = normalize_domain(domain)
    except ValueError as exc:
        raise JidError(f"bad domainpart in {jid!r}: {exc}") from None
    return local, domain, resource


def domain_of(jid: str) -> str:
    return split_jid(jid)[1]


def bare_jid(jid: str) -> str:
    local, domain, _ = split_jid(jid)
    return f"{local}@{domain}" if local else domain
