"""A test certificate world: a trusted CA, an unrelated one, and certificates issued on
demand for any domain (expired, for another name, with or without id-on-xmppAddr), as the
gateway, Prosody, ejabberd and the load generators read them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from gateway.auth import devcerts
from gateway.config.model import TlsSettings


@dataclass
class Pki:
    """A trusted CA, an unrelated CA and certificates written under ``root``."""

    root: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca, self.ca_key = devcerts.make_ca("s2s-world CA", key_type="ec")
        self.other_ca, _ = devcerts.make_ca("unrelated CA", key_type="ec")
        (self.root / "ca.crt").write_bytes(devcerts.certificates_to_pem([self.ca]))
        (self.root / "other-ca.crt").write_bytes(devcerts.certificates_to_pem([self.other_ca]))

    def tls_settings(
        self,
        domain: str,
        *,
        trusts_peers: bool = True,
        expired: bool = False,
        cert_domain: str | None = None,
        xmpp_addrs: bool = True,
    ) -> TlsSettings:
        name = (
            f"{domain}{'-expired' if expired else ''}{'-for-' + cert_domain if cert_domain else ''}"
        )
        name += "" if xmpp_addrs else "-noxmppaddr"
        crt, key = self.root / f"{name}.crt", self.root / f"{name}.key"
        if not crt.exists():
            kwargs = {}
            if expired:
                now = dt.datetime.now(dt.UTC)
                kwargs = {
                    "not_before": now - dt.timedelta(days=30),
                    "not_after": now - dt.timedelta(days=1),
                }
            cert, pkey = devcerts.issue_certificate(
                self.ca, self.ca_key, [cert_domain or domain], key_type="ec",
                xmpp_addrs=xmpp_addrs, **kwargs
            )
            devcerts.write_key_and_cert(crt, key, cert, pkey)
        ca = self.root / ("ca.crt" if trusts_peers else "other-ca.crt")
        return TlsSettings(certificate=crt, key=key, ca_file=ca, use_system_cas=False)
