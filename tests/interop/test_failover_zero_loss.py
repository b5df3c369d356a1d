"""Zero loss when a gateway node dies (SIGKILL) under 2,000 messages a second, both
directions, with a real Prosody 0.12 using stream management (XEP-0198) on its links to
two gateway nodes on one PostgreSQL store, and Kamailio's dispatcher in front of them
(bench/failover.py builds the world and counts by index at the receivers).

The short version of ``make bench``'s failover row (10 runs each way): one run each way
with Prosody re-sending what a lost link left unacknowledged (``smacks_s2s_resend``), and
one XMPP → SIP run without, where Prosody bounces it instead: nothing is lost silently.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.failover import failover_runs
from testbed.namespace import Namespace
from testbed.pki import Pki
from testbed.postgres import postgres_bindir

RATE, SECONDS, KILL_AFTER, QUIET = 2000, 2.0, 0.8, 4.0


@pytest.fixture
def fresh_ns() -> Iterator[tuple[Namespace, Pki]]:
    if postgres_bindir() is None:
        pytest.fail("PostgreSQL is not installed: run `make debs` (make test does)")
    workdir = Path(tempfile.mkdtemp(prefix="gw-failover-"))
    ns = Namespace(f"gwf{os.getpid()}", workdir)
    ns.up()
    try:
        yield ns, Pki(workdir / "pki")
    finally:
        ns.down()
        shutil.rmtree(workdir, ignore_errors=True)


def test_sigkill_under_load_loses_nothing_with_resend(fresh_ns: tuple[Namespace, Pki]) -> None:
    ns, pki = fresh_ns
    results = failover_runs(ns, pki, runs=1, rate=RATE, seconds=SECONDS,
                            kill_after=KILL_AFTER, quiet=QUIET)
    for direction in ("xmpp_sip", "sip_xmpp"):
        [outcome] = results["runs"][direction]
        assert outcome["sent"] == RATE * SECONDS, outcome
        assert outcome["lost"] == 0, outcome
        # Prosody re-sent over the survivor what the dead node had not acknowledged
        # (XMPP → SIP); Kamailio sent again what the dead node had not answered (SIP →
        # XMPP): nothing needed to come back to the sender as an error.
        assert outcome["delivered"] == outcome["sent"], outcome
    print(f"failover (resend): {results['xmpp_sip']} {results['sip_xmpp']}")


def test_without_resend_every_unacknowledged_stanza_is_bounced(
        fresh_ns: tuple[Namespace, Pki]) -> None:
    ns, pki = fresh_ns
    results = failover_runs(ns, pki, runs=1, rate=RATE, seconds=SECONDS,
                            kill_after=KILL_AFTER, resend=False, quiet=QUIET,
                            directions=("xmpp_sip",))
    [outcome] = results["runs"]["xmpp_sip"]
    assert outcome["lost"] == 0, outcome  # delivered, or an error back to the writer
    assert outcome["refused"] > 0, outcome  # what the dead node held came back as errors
    print(f"failover (no resend): {outcome}")
