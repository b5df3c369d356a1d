"""Authorizations written ahead for a batch of queued stanzas, in one transaction.

An outgoing subscription records the authorization before it leaves (RFC 6121 §3.1.2:
the user's own subscription request is their consent to the contact's presence). A
presence storm queues thousands of them at once; one store transaction each made the
store the bottleneck. The worker therefore records the pairs a batch will need in one
transaction first; each stanza is still routed in order and only after its write, and
a pair recorded here is not written again. If the batch write fails, each stanza tries
on its own (and is bounced if that fails too), exactly as without the batch.
"""

from __future__ import annotations

import logging

from gateway.logs import log_event
from gateway.store.authorizations import StoreError
from gateway.store.protocols import AsyncAuthorizations, Pair

log = logging.getLogger("gateway.router")

SOURCE = "subscription"


class AuthorizationBatch:
    """The authorizations recorded ahead for the batch the worker is routing."""

    def __init__(self, store: AsyncAuthorizations) -> None:
        self.store = store
        self._recorded: set[Pair] = set()

    async def record_ahead(self, pairs: list[Pair]) -> None:
        """One transaction for the batch's pairs (not worth it for fewer than two)."""
        if len(pairs) < 2:
            return
        try:
            await self.store.allow_many(pairs, SOURCE)
        except StoreError as exc:
            log_event(log, logging.WARNING, "store.unavailable", direction="outbound",
                      reason=str(exc), batch=len(pairs))
            return
        self._recorded.update(pairs)

    async def record(self, local_user: str, remote_bare: str) -> None:
        """Before a stanza that needs it leaves (raises StoreError)."""
        if (local_user, remote_bare) not in self._recorded:
            await self.store.allow(local_user, remote_bare, SOURCE)

    async def revoke(self, local_user: str, remote_bare: str) -> None:
        self._recorded.discard((local_user, remote_bare))  # a later grant writes again
        await self.store.revoke(local_user, remote_bare)

    def clear(self) -> None:
        """The batch is routed."""
        self._recorded.clear()
