"""The open-files limit is raised for limits.max_connections, or the shortfall is known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import json, resource, sys
from gateway.net.fdlimit import ensure_fd_limit
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
limit = ensure_fd_limit(int(sys.argv[3]))
print(json.dumps({"before": limit.before, "now": limit.now, "wanted": limit.wanted,
                  "sufficient": limit.sufficient,
                  "actual": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))
"""


def run(soft: int, hard: int, max_connections: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(soft), str(hard),
                          str(max_connections)], capture_output=True, text=True, timeout=30,
                         cwd=REPO, check=True)
    return json.loads(out.stdout)


def test_soft_limit_is_raised_to_what_the_connections_need() -> None:
    result = run(100, 4096, 1000)
    assert result == {"before": 100, "now": 1256, "wanted": 1256, "sufficient": True,
                      "actual": 1256}


def test_hard_limit_caps_it_and_the_shortfall_is_reported() -> None:
    result = run(64, 512, 10_000)
    assert result == {"before": 64, "now": 512, "wanted": 10_256, "sufficient": False,
                      "actual": 512}


def test_a_sufficient_limit_is_left_alone() -> None:
    result = run(2000, 4096, 100)
    assert result == {"before": 2000, "now": 2000, "wanted": 356, "sufficient": True,
                      "actual": 2000}
