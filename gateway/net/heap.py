"""Handing the memory idle sessions free back to the operating system (glibc only).

An idle stream frees its XML parser and TLS buffers (gateway/xmpp/stream.py,
``RELEASE_IDLE_AFTER``). glibc's allocator keeps what is freed inside its heap for later
allocations and returns memory to the kernel only from the top of the heap; freed blocks
between long-lived ones (the sessions' OpenSSL objects) stay resident. ``malloc_trim(0)``
gives back every whole free page wherever it is (``madvise(MADV_DONTNEED)``). It walks the
allocator's free lists, so it is not called per stream: once after a batch of releases, at
most every ``MIN_INTERVAL`` seconds, and never when nothing was released.

Other C libraries (musl) have no ``malloc_trim``: then this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import platform
import time
from collections.abc import Callable

# Seconds at least between two trims, and after the first release of a batch (so that
# the streams going idle together are freed before the heap is walked once for them).
MIN_INTERVAL = 5.0
DELAY = 0.5


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on another C library."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class HeapTrimmer:
    """Calls ``trim(0)`` once after each batch of releases, rate-limited; keeps how often
    and at what CPU cost (for docs/performance.md and the admin status)."""

    def __init__(self, trim: Callable[[int], int] | None, *, min_interval: float = MIN_INTERVAL,
                 delay: float = DELAY) -> None:
        self._trim = trim
        self.min_interval = min_interval
        self.delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._handle_loop: asyncio.AbstractEventLoop | None = None
        self._last = float("-inf")
        self.trims = 0
        self.cpu_seconds = 0.0  # thread CPU spent in trim, all calls
        self.max_cpu_seconds = 0.0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def released(self, loop: asyncio.AbstractEventLoop) -> None:
        """A stream freed memory: trim soon, unless a trim is already due (on this loop: a
        trim left pending by a loop that was closed meanwhile never runs)."""
        if self._trim is None:
            return
        due = self._handle is not None and not self._handle.cancelled()
        if due and self._handle_loop is loop and not loop.is_closed():
            return
        when = max(loop.time() + self.delay, self._last + self.min_interval)
        self._handle, self._handle_loop = loop.call_at(when, self._run, loop), loop

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = self._handle_loop = None
        assert self._trim is not None
        started = time.thread_time()
        self._trim(0)
        spent = time.thread_time() - started
        self._last = loop.time()
        self.trims += 1
        self.cpu_seconds += spent
        self.max_cpu_seconds = max(self.max_cpu_seconds, spent)

    def stats(self) -> dict[str, float | int | bool]:
        return {"available": self.available, "trims": self.trims,
                "cpu_ms": round(1000 * self.cpu_seconds, 3),
                "max_cpu_ms": round(1000 * self.max_cpu_seconds, 3)}


# The heap is the process's: one trimmer for all connections.
TRIMMER = HeapTrimmer(_glibc_malloc_trim())
