"""Enough file descriptors for ``limits.max_connections``.

Every S2S connection is a socket, and the process also needs descriptors for outbound
connections, DNS, the store, the SIP side and the admin socket. The usual soft limit is
1,024 (systemd's default for services, PAM's for login sessions) while the configured
maximum is 10,000 by default: without raising it, the gateway would refuse connections
with "too many open files" at about a thousand peers — an error nobody configured. So we
raise the soft limit up to the hard one at start, and say so when even the hard limit is
too low (fix: ``LimitNOFILE=`` in the systemd unit, ``ulimit -n`` elsewhere).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Descriptors beyond one per S2S connection: outbound sessions being set up, DNS sockets,
# SQLite (database + WAL + shm), SIP transport, admin and metrics listeners, logs.
RESERVE = 256


@dataclass(frozen=True, slots=True)
class FdLimit:
    before: int
    now: int
    wanted: int

    @property
    def sufficient(self) -> bool:
        return self.now >= self.wanted


def ensure_fd_limit(max_connections: int) -> FdLimit:
    """Raise RLIMIT_NOFILE's soft limit towards ``max_connections + RESERVE`` (never above
    the hard limit; never lowered)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + RESERVE
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return FdLimit(soft, target, wanted)
    return FdLimit(soft, soft, wanted)
