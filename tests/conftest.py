"""Session-wide fixtures shared by unit, integration and interop tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.postgres import PostgresServer, postgres_bindir


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run (started once: ~1 s); each test takes
    its own empty database with ``create_database()``."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server not installed (make debs installs postgresql)")
    server = PostgresServer(bindir)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        server.cleanup()
