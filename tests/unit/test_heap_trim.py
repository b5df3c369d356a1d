"""gateway/net/heap.py: memory freed by idle streams is handed back to the OS with glibc's
malloc_trim, once per batch of releases and at most every ``min_interval`` seconds
(it walks the allocator's free lists, so it must not run per stream)."""

from __future__ import annotations

import asyncio
import platform

import pytest

from gateway.net.heap import TRIMMER, HeapTrimmer, _glibc_malloc_trim

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


@glibc
def test_one_trim_per_batch_and_rate_limited() -> None:
    trimmer = HeapTrimmer(_glibc_malloc_trim(), min_interval=0.3, delay=0.05)

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        seen = []
        for _ in range(100):  # a batch of streams going idle together
            trimmer.released(loop)
        await asyncio.sleep(0.15)
        seen.append(trimmer.trims)  # one trim for the batch, after the delay
        trimmer.released(loop)
        await asyncio.sleep(0.15)
        seen.append(trimmer.trims)  # not before min_interval since the last one
        await asyncio.sleep(0.3)
        seen.append(trimmer.trims)
        await asyncio.sleep(0.5)
        seen.append(trimmer.trims)  # nothing released: no trim
        return seen

    assert asyncio.run(scenario()) == [1, 1, 2, 2]
    assert trimmer.cpu_seconds >= 0 and trimmer.stats()["trims"] == 2


@glibc
def test_a_trim_left_pending_by_a_closed_loop_does_not_block_the_next() -> None:
    trimmer = HeapTrimmer(_glibc_malloc_trim(), min_interval=0.0, delay=0.05)

    async def release_only() -> None:
        trimmer.released(asyncio.get_running_loop())

    async def release_and_wait() -> None:
        trimmer.released(asyncio.get_running_loop())
        await asyncio.sleep(0.15)

    asyncio.run(release_only())  # its loop closes before the trim is due
    assert trimmer.trims == 0
    asyncio.run(release_and_wait())
    assert trimmer.trims == 1


@glibc
def test_the_process_trimmer_uses_glibc() -> None:
    assert TRIMMER.available and _glibc_malloc_trim() is not None


def test_without_malloc_trim_nothing_is_scheduled() -> None:
    trimmer = HeapTrimmer(None)

    async def scenario() -> None:
        trimmer.released(asyncio.get_running_loop())
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert not trimmer.available and trimmer.trims == 0 and trimmer._handle is None
