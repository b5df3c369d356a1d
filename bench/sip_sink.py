"""The SIP end of the XMPP→SIP benchmarks: a UA registered at Kamailio that answers every
request 200 at once and counts the MESSAGEs (each Call-ID once: a retransmission is not a
second message) and records when they arrived.

Fast enough for >=10,000 MESSAGE/s in one process: a blocking UDP socket with a large
receive buffer and bench/sipwire.py's byte-level handling instead of the gateway's parser.
A body starting with the sender's ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by all
processes of the machine) gives the latency across the whole path. Run inside the
benchmark namespace:

    python -m bench.sip_sink PROXY_HOST PROXY_PORT USER DOMAIN COUNT TIMEOUT [--control]

Prints ``{"ready": true, "bindings": N}`` once registered (N: the AoR's bindings, 1 unless
another UA is registered for USER too), then one JSON line with the statistics when COUNT
messages arrived or TIMEOUT seconds passed; before that line the sink removes its binding
again (REGISTER with Expires: 0), so that a later sink for the same user is its only
binding: Kamailio forks a MESSAGE to every binding of the user, and bindings left behind
by earlier sinks cost it a dead branch per message. With ``--control`` the stop condition
comes on stdin once the sender is done: a line ``EXPECTED QUIET LIMIT`` (stop at EXPECTED
messages, or QUIET seconds after the last arrival, or LIMIT seconds after the line).
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time

from bench import sipwire

ANSWERED = (b"MESSAGE", b"NOTIFY", b"OPTIONS", b"INFO")


class FastSipSink:
    def __init__(self, host: str, proxy: tuple[str, int], user: str, domain: str) -> None:
        self.proxy, self.user, self.domain = proxy, user, domain
        self.sock = sipwire.udp_socket(host)
        self.call_ids: set[bytes] = set()
        self.latencies_ns: list[int] = []
        self.indices: set[int] = set()  # from bodies "<monotonic_ns> <index> …"
        # MESSAGEs that are no user-visible message (typing, IMDN), by Content-Type
        self.notices: dict[str, int] = {}
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.retransmissions = 0
        self.max_gap_s = 0.0  # longest pause between two arrivals (a failover's stall)
        self.expected = 1 << 62
        self.quiet = float("inf")
        self.deadline = float("inf")
        self.cpu_started = time.process_time()  # reset once registered
        self.cpu_s = 0.0

    def register(self) -> tuple[int, int]:
        """(status, bindings of the AoR now): more than 1 means an earlier UA left its
        binding behind, and Kamailio forks every MESSAGE to it as well."""
        return sipwire.register(self.sock, self.proxy, self.user, self.domain)

    def unregister(self) -> int:
        """Remove this UA's binding (RFC 3261 §10.2.2), as a phone does when it shuts
        down: the next sink registered for the same user must be the only destination."""
        return sipwire.register(self.sock, self.proxy, self.user, self.domain, expires=0)[0]

    def stop_when(self, expected: int, quiet: float, limit: float) -> None:
        self.quiet = quiet
        self.deadline = time.monotonic() + limit
        if self.last_at is None:
            self.last_at = time.monotonic()  # quiet counts from now if nothing came yet
        self.expected = expected

    def run(self) -> None:
        sock, to_tag = self.sock, b"sink"
        sock.settimeout(0.05)
        while True:
            now = time.monotonic()
            if len(self.indices) >= self.expected or now > self.deadline or (
                    self.last_at is not None and now - self.last_at > self.quiet):
                return
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            arrived = time.monotonic_ns()
            start, headers, body = sipwire.split(data)
            method = start.partition(b" ")[0]
            if method not in ANSWERED:
                continue  # responses, ACKs
            sock.sendto(sipwire.response(headers, 200, "OK", to_tag), peer)
            if method != b"MESSAGE":
                continue
            call_id = sipwire.value(headers, b"call-id")
            if call_id in self.call_ids:
                self.retransmissions += 1
                continue
            self.call_ids.add(call_id)
            if self.last_at is not None and self.first_at is not None:
                self.max_gap_s = max(self.max_gap_s, arrived / 1e9 - self.last_at)
            self.last_at = arrived / 1e9
            if self.first_at is None:
                self.first_at = self.last_at
            kind = (sipwire.value(headers, b"content-type") or b"").partition(b";")[0]
            if kind.lower() == b"message/cpim":  # the text inside: after two header blocks
                parts = body.split(b"\r\n\r\n", 2)
                kind, body = (b"message/cpim " + parts[1].rpartition(b"Content-Type: ")[2]
                              .partition(b"\r\n")[0], parts[2]) if len(parts) == 3 \
                    else (kind, b"")
            stamp, _, rest = body.partition(b" ")
            if not stamp.isdigit():
                name = kind.decode("ascii", "replace")
                self.notices[name] = self.notices.get(name, 0) + 1
            else:
                self.latencies_ns.append(arrived - int(stamp))
                index = rest.partition(b" ")[0]
                if index.isdigit():
                    self.indices.add(int(index))

    def stats(self) -> dict:
        values = sorted(v / 1e6 for v in self.latencies_ns)
        return {
            # the load's messages (stamped bodies, a redelivery under a new Call-ID counted
            # again): the warm-up, typing and receipts are counted apart as notices
            "received": len(self.latencies_ns), "notices": self.notices,
            "sip_messages": len(self.call_ids),
            "expected": None if self.expected >= 1 << 62
            else self.expected, "retransmissions_seen": self.retransmissions,
            "first_at": self.first_at, "last_at": self.last_at,
            "max_gap_s": round(self.max_gap_s, 3),
            "latency_p50_ms": statistics.median(values) if values else None,
            "latency_p90_ms": percentile(values, 0.90) if values else None,
            "latency_p99_ms": percentile(values, 0.99) if values else None,
            "latency_max_ms": values[-1] if values else None,
            # this UA's own CPU (all threads) from registration to the end of the run: the
            # benchmark's ends share the machine's cores with the servers they measure
            "cpu_s": self.cpu_s,
        }


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def read_control(sink: FastSipSink) -> None:
    """Wait (in a thread) for the ``EXPECTED QUIET LIMIT`` line on stdin."""
    expected, quiet, limit = sys.stdin.readline().split()
    sink.stop_when(int(expected), float(quiet), float(limit))


def main() -> None:
    host, port, user, domain, count, timeout = sys.argv[1:7]
    sink = FastSipSink(host, (host, int(port)), user, domain)
    status, bindings = sink.register()
    if status != 200:
        raise SystemExit(f"REGISTER {user}@{domain} at {host}:{port} failed: {status}")
    print(json.dumps({"ready": True, "bindings": bindings}), flush=True)
    if "--control" in sys.argv[7:]:
        sink.deadline = time.monotonic() + float(timeout)  # bound even without a line
        threading.Thread(target=read_control, args=(sink,), daemon=True).start()
    else:
        sink.expected, sink.deadline = int(count), time.monotonic() + float(timeout)
    sink.cpu_started = time.process_time()
    try:
        sink.run()
    finally:
        sink.cpu_s = time.process_time() - sink.cpu_started
        unregistered = sink.unregister()
    stats = sink.stats()
    stats["unregistered"] = unregistered
    if "--control" in sys.argv[7:]:
        stats["indices"] = sorted(sink.indices)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
