"""What the relay benchmark reads from /proc about the servers it runs: CPU time
(utime + stime of /proc/PID/stat, summed over a process and all its descendants, so
Kamailio's forked workers count), peak RSS (VmHWM, reset between phases through
/proc/PID/clear_refs, proc(5)) and the kernel's UDP receive-buffer drops in the namespace.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
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


def cpu_us(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, in µs (resolution: one clock tick)."""
    total = 0
    for member in descendants(pid):
        fields = _stat(member)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total * TICK_US


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


def udp_receive_drops(ns_exec: list[str]) -> int:
    """UDP datagrams dropped for lack of receive buffer in the namespace (RcvbufErrors)."""
    snmp = subprocess.run([*ns_exec, "cat", "/proc/net/snmp"], capture_output=True, text=True,
                          timeout=10).stdout.splitlines()
    names, values = (line.split()[1:] for line in snmp if line.startswith("Udp:"))
    return int(dict(zip(names, values, strict=True))["RcvbufErrors"])


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
