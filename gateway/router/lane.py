"""One ordered queue and the count of what it still owes (queued or being handled).

Why not ``asyncio.Queue``: the router's fast path may route a stanza at once only when
nothing from the same direction is *queued or in flight* — a worker that took the
previous stanza may still be waiting for its store write, and routing the next one
before it would reorder one sender's stanzas. ``Queue.empty()`` cannot tell; a lane's
:attr:`Lane.pending` can. It is also cheaper per item (a deque append, a counter).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Lane(Generic[T]):
    """A FIFO with one consumer: :meth:`put` never blocks, :meth:`take` waits for items,
    :meth:`done` marks taken items finished."""

    __slots__ = ("_idle", "_items", "_wakeup", "pending")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self.pending = 0  # queued + taken and not yet done

    def put(self, item: T) -> None:
        self._items.append(item)
        self.pending += 1
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    @property
    def queued(self) -> int:
        """Items not yet taken."""
        return len(self._items)

    async def take(self) -> T:
        """The oldest item (waits for one)."""
        items = self._items
        while not items:
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        return items.popleft()

    def take_nowait(self, limit: int) -> list[T]:
        """Up to ``limit`` more items, without waiting."""
        items = self._items
        return [items.popleft() for _ in range(min(limit, len(items)))]

    def done(self, count: int = 1) -> None:
        self.pending -= count
        if not self.pending and self._idle is not None:
            if not self._idle.done():
                self._idle.set_result(None)
            self._idle = None

    async def join(self) -> None:
        """Wait until nothing is queued or in flight."""
        while self.pending:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)

    def take_all(self) -> list[T]:
        """Everything still queued, counted as done (the worker is gone)."""
        items = list(self._items)
        self._items.clear()
        if items:
            self.done(len(items))
        return items
