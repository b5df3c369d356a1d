"""Everything the benchmarks read from /proc (proc(5)) about the servers they run, in one
place: CPU time (utime + stime of /proc/PID/stat, of one process or summed over it and all
its descendants, so Kamailio's forked workers and ejabberd's helpers count), RSS (VmRSS of
a process tree, and once it has settled), peak RSS (VmHWM, reset between phases through
/proc/PID/clear_refs) and the kernel's UDP counters in a namespace (receive-buffer drops,
in total and per socket).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Kamailio forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def process_cpu_us(pid: int) -> float:
    """utime + stime of ``pid`` alone, in µs (0 once it has gone)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) * TICK_US if fields else 0.0  # fields 14, 15


def cpu_us(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, in µs (resolution: one clock tick)."""
    return sum(process_cpu_us(member) for member in descendants(pid))


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid``; RuntimeError for a process without one (a kernel thread)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def tree_rss_kib(root: int) -> int:
    """RSS of ``root`` and all its descendants: a server is one process (gateway, Prosody)
    or several (ejabberd: the Erlang VM beam.smp, its erl_child_setup and port programs,
    under the ejabberdctl shell), and what the runtime spreads over them all counts."""
    total = 0
    for pid in descendants(root):
        with contextlib.suppress(OSError, RuntimeError):  # exited meanwhile, kernel thread
            total += rss_kib(pid)
    return total


def settled_rss(root: int, settle: float) -> int:
    """The process tree's RSS once it stops moving: after ``settle`` seconds, sampled each
    second until two samples agree within 0.2 % (at most 30 s more)."""
    time.sleep(settle)
    previous = tree_rss_kib(root)
    for _ in range(30):
        time.sleep(1.0)
        current = tree_rss_kib(root)
        if abs(current - previous) <= previous * 0.002:
            return current
        previous = current
    return previous


def peak_rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def reset_peak_rss(pid: int) -> bool:
    """Start VmHWM again from the current RSS (``5`` into clear_refs, Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def udp_counters(ns_exec: list[str]) -> dict[str, int]:
    """The kernel's UDP counters in the namespace (the ``Udp:`` lines of /proc/net/snmp)."""
    snmp = subprocess.run([*ns_exec, "cat", "/proc/net/snmp"], capture_output=True, text=True,
                          timeout=10).stdout.splitlines()
    names, values = (line.split()[1:] for line in snmp if line.startswith("Udp:"))
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def udp_receive_drops(ns_exec: list[str]) -> int:
    """UDP datagrams dropped for lack of receive buffer in the namespace (RcvbufErrors; a
    lost SIP request costs a retransmission: 500 ms and more of latency)."""
    return udp_counters(ns_exec)["RcvbufErrors"]


def udp_socket_drops(ns_exec: list[str]) -> dict[int, int]:
    """Datagrams each UDP socket of the namespace dropped (the ``drops`` column of
    /proc/net/udp), by local port: tells whose receive buffer overflowed."""
    table = subprocess.run([*ns_exec, "cat", "/proc/net/udp"], capture_output=True, text=True,
                           timeout=10).stdout.splitlines()[1:]
    drops: dict[int, int] = {}
    for line in table:
        fields = line.split()
        port = int(fields[1].rpartition(":")[2], 16)
        drops[port] = drops.get(port, 0) + int(fields[-1])
    return drops
