"""Unit-test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit import s2s_world


@pytest.fixture(autouse=True)
def no_world_left_listening() -> Iterator[None]:
    """A test's in-memory S2S worlds stop recording what the cores write when it ends."""
    yield
    s2s_world.forget_worlds()
