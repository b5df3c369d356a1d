"""Does the certificate we present authenticate every domain we serve?

A certificate that does not name a served domain still gives TLS, so nothing fails
loudly: partners just refuse SASL EXTERNAL (XEP-0178 §3: the receiving server checks the
initiator's certificate against the stream's ``from``) and fall back to dialback where they
allow it, or refuse the stream. The gateway therefore checks the names wherever a
certificate enters: ``check config``, ``reload`` (refused) and start (logged), with the
exact mismatch (RFC 6125 §6: DNS-ID, SRV-ID, then xmppAddr; CN only without SANs).

Pure apart from reading the certificate files; missing files are not reported here
(``check config`` warns about them: STARTTLS is then not offered at all).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gateway.auth.identity import check_identity
from gateway.config.model import TlsSettings


@dataclass(frozen=True, slots=True)
class CoverageProblem:
    """One served domain the certificate chosen for it cannot authenticate."""

    domain: str
    setting: str  # the configuration key naming the certificate file
    certificate: Path
    reason: str

    def __str__(self) -> str:
        return (f"{self.setting} {self.certificate} does not authenticate served domain "
                f"{self.domain}: {self.reason}; partners will refuse SASL EXTERNAL (and fall "
                "back to dialback where their policy allows it)")


def certificate_for(tls: TlsSettings, domain: str) -> tuple[str, Path]:
    """The setting and file of the certificate presented for ``domain`` (SNI / stream
    ``from``): its ``tls.per_domain`` entry, else ``tls.certificate``."""
    files = tls.per_domain.get(domain)
    if files is not None:
        return f"tls.per_domain.{domain}.certificate", Path(files.certificate)
    return "tls.certificate", Path(tls.certificate)


def coverage_problems(tls: TlsSettings, domains: Iterable[str],
                      now: dt.datetime | None = None) -> list[CoverageProblem]:
    """Every served domain whose certificate does not name it or is out of its dates."""
    now = now or dt.datetime.now(dt.UTC)
    problems = []
    for domain in domains:
        setting, path = certificate_for(tls, domain)
        try:
            leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            problems.append(CoverageProblem(domain, setting, path,
                                            f"not a PEM certificate ({exc})"))
            continue
        identity = check_identity(leaf, domain)
        if not identity.ok:
            problems.append(CoverageProblem(domain, setting, path, identity.reason))
        elif leaf.not_valid_after_utc <= now:
            problems.append(CoverageProblem(
                domain, setting, path, f"it expired on {leaf.not_valid_after_utc:%Y-%m-%d}"))
        elif leaf.not_valid_before_utc > now:
            problems.append(CoverageProblem(
                domain, setting, path,
                f"it is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"))
    return problems
