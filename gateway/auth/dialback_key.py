"""Server dialback keys (XEP-0185, as incorporated into XEP-0220 §2.1.1 and §4).

XEP-0185 §2 ("Recommended Algorithm")::

    key = HMAC-SHA256( SHA256(Secret), { Receiving Server, ' ', Originating Server, ' ',
                                         Stream ID } )

with the notes of the same section: the secret is hashed with SHA-256 first (the HMAC key
should be at least half the hash output), the SHA-256 output is used in its *hexadecimal*
representation (so the HMAC key is the 64 ASCII hex characters, not the 32 raw bytes), the
three inputs are joined by a single U+0020 space, and the resulting HMAC is sent as lower
case hex. XEP-0185 §3 works the example through: secret ``s3cr3tf0rd14lb4ck``, receiving
``xmpp.example.com``, originating ``example.org``, stream id ``D60000229F`` gives
``37c69b1c…075643`` (the unit tests pin this vector and XEP-0220's).

The secret: XEP-0185 §2 says it is either configured or "generated as a random string when
starting the XMPP server", and never negotiated with anyone. A key is verified by the
*authoritative* server, i.e. whichever node receives the ``db:verify`` — so several gateway
nodes behind one domain must be configured with the **same** secret, or a key minted by one
node is reported invalid by another. A random secret is fine for a single node.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

RANDOM_SECRET_BYTES = 32


class DialbackKeyGenerator:
    """Mints and checks XEP-0185 dialback keys from one secret.

    ``secret=""`` makes a random 32-byte secret once, at construction (see the module
    docstring for why clustered nodes must share a configured secret instead).
    """

    __slots__ = ("_hmac_key", "_secret_is_random")

    def __init__(self, secret: str) -> None:
        self._secret_is_random = not secret
        if not secret:
            secret = secrets.token_hex(RANDOM_SECRET_BYTES)
        # XEP-0185 §2 notes 2 and 4: SHA-256 of the secret, in hexadecimal, is the HMAC key.
        self._hmac_key = hashlib.sha256(secret.encode("utf-8")).hexdigest().encode("ascii")

    @property
    def secret_is_random(self) -> bool:
        """True when no secret was configured (keys are only valid on this process)."""
        return self._secret_is_random

    def generate(self, receiving: str, originating: str, stream_id: str) -> str:
        """The key the Originating Server sends in ``db:result`` (and the Authoritative
        Server recomputes for ``db:verify``): ``receiving`` is the domain the stream is to,
        ``originating`` the domain it is from, ``stream_id`` the id the Receiving Server
        put in its stream header (XEP-0220 §2.1.1)."""
        message = f"{receiving} {originating} {stream_id}".encode()
        return hmac.new(self._hmac_key, message, hashlib.sha256).hexdigest()

    def verify(self, key: str, receiving: str, originating: str, stream_id: str) -> bool:
        """Whether ``key`` is the key for these inputs (constant-time comparison).

        Whitespace around the key is ignored (``db:verify`` bodies are often pretty-printed,
        as in XEP-0185 §3) and hex case does not matter.
        """
        expected = self.generate(receiving, originating, stream_id)
        candidate = key.strip().lower()
        if not candidate.isascii():
            return False
        return hmac.compare_digest(expected.encode("ascii"), candidate.encode("ascii"))
