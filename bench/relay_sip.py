"""The SIP load of the relay benchmark: N MESSAGEs (SIP→XMPP) or N SUBSCRIBEs from N
distinct watchers (the presence storm) sent by one UDP user agent through Kamailio, with
the UA's side of RFC 3261 non-INVITE client transactions: retransmission on Timer E (T1
doubling to T2, §17.1.2.2) until a final answer or Timer F (64*T1), so a datagram lost
anywhere is sent again as a real phone would; responses matched by the top Via branch.
A ``503`` with ``Retry-After`` (RFC 3261 §21.5.4: the gateway's way of asking a sender to
slow down) is not a refusal: the request is sent again, as a new transaction, once the
time asked for has passed; such answers are counted as ``busy``.

    python -m bench.relay_sip KIND HOST PROXY_PORT N RATE WINDOW LIMIT RECIPIENT [--open-loop]
        [--notify-quiet SECONDS]

KIND: ``message`` (From sip:sipwriter@gw.example, body = monotonic_ns index) or
``subscribe`` (From sip:wNNNNN@gw.example, Event: presence; NOTIFYs to it are answered
200 and counted). RATE msg/s (0 = as fast as the window allows), WINDOW = at most that
many requests without a final answer (0 = no window), LIMIT = wall-clock seconds for the
whole run. RECIPIENT may hold ``{…}``, formatted with the request's index (one XMPP user
per watcher: ``u{:05d}@a.example``). Prints one JSON line.

``--notify-quiet``: after the last answer, NOTIFYs are still answered and counted until
none came for this long (default 2 s): a watcher that left early would leave the
gateway's NOTIFYs to time out at the proxy.

``--open-loop``: a flood, not a phone: N requests as fast as the socket takes them, never
retransmitted and never sent again after a 503; every final answer is counted by status
and what got none is ``unanswered`` (the answers are awaited until none came for 3 s).
"""

from __future__ import annotations

import heapq
import itertools
import json
import secrets
import select
import sys
import time
from collections import Counter

from bench import sipwire

T1, T2, TIMER_F = 0.5, 4.0, 32.0
TICK = 0.0005  # the send loop's period: pacing and timer resolution
DOMAIN = "gw.example"


OPEN_LOOP_QUIET = 3.0  # an open-loop run has every answer it will get after this silence
NOTIFY_QUIET = 2.0  # a watcher has every NOTIFY it will get after this silence (by default)


class SipLoad:
    def __init__(self, kind: str, host: str, proxy: tuple[str, int], recipient: str,
                 open_loop: bool = False, notify_quiet: float = NOTIFY_QUIET) -> None:
        self.kind, self.proxy, self.recipient = kind, proxy, recipient
        self.open_loop, self.notify_quiet = open_loop, notify_quiet
        self.sock = sipwire.udp_socket(host)
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()
        self.prefix = secrets.token_hex(4)
        self.outstanding: dict[bytes, list] = {}  # branch -> [datagram, interval, give_up]
        self.timers: list[tuple[float, bytes]] = []
        self.finals: Counter[int] = Counter()
        self.refused_indices: list[int] = []
        self.timed_out_indices: list[int] = []  # no final answer within Timer F
        self.retransmissions = 0
        self.timed_out = 0
        self.notify_call_ids: set[bytes] = set()
        self.notify_states: Counter[str] = Counter()
        self.notifies = 0
        self._tag = itertools.count()
        self.busy = 0  # 503 + Retry-After answers (the request is sent again later)
        self.retries: list[tuple[float, int]] = []  # (when, index) to send again
        self.attempts: Counter[int] = Counter()

    def request(self, index: int) -> tuple[bytes, bytes]:
        attempt = self.attempts[index]
        # a new transaction for every attempt (§21.5.4): the same branch would only fetch
        # the cached 503 again
        branch = f"z9hG4bK{self.prefix}{index}" + (f"r{attempt}" if attempt else "")
        host, port = self.host, self.port
        if self.kind == "message":
            user, extra = "sipwriter", ""
            body = f"{time.monotonic_ns()} {index}".encode()
        else:
            user, body = f"w{index:05d}", b""
            extra = (f"Contact: <sip:{user}@{host}:{port}>\r\nEvent: presence\r\n"
                     "Accept: application/pidf+xml\r\nExpires: 600\r\n")
        method = self.kind.upper()
        recipient = self.recipient.format(index)
        head = (f"{method} sip:{recipient} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {host}:{port};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:{user}@{DOMAIN}>;tag={self.prefix}{index}\r\n"
                f"To: <sip:{recipient}>\r\n"
                f"Call-ID: {self.prefix}-{index}@{host}\r\n"
                f"CSeq: 1 {method}\r\n{extra}"
                + ("Content-Type: text/plain;charset=UTF-8\r\n" if body else "")
                + f"Content-Length: {len(body)}\r\n\r\n")
        return branch.encode(), head.encode() + body

    def send(self, index: int, now: float) -> None:
        branch, data = self.request(index)
        while True:
            try:
                self.sock.sendto(data, self.proxy)
                break
            except BlockingIOError:  # our send buffer is full: as fast as it takes them
                select.select([], [self.sock], [], 0.01)
        self.outstanding[branch] = [data, T1, now + TIMER_F]
        if not self.open_loop:
            heapq.heappush(self.timers, (now + T1, branch))

    def resend_deferred(self, now: float) -> None:
        while self.retries and self.retries[0][0] <= now:
            _, index = heapq.heappop(self.retries)
            self.send(index, now)

    def retransmit(self, now: float) -> None:
        while self.timers and self.timers[0][0] <= now:
            _, branch = heapq.heappop(self.timers)
            entry = self.outstanding.get(branch)
            if entry is None:
                continue
            if now >= entry[2]:
                del self.outstanding[branch]
                self.timed_out += 1
                self.timed_out_indices.append(self.index_of(branch))
                continue
            self.sock.sendto(entry[0], self.proxy)
            self.retransmissions += 1
            entry[1] = min(entry[1] * 2, T2)
            heapq.heappush(self.timers, (now + entry[1], branch))

    def index_of(self, branch: bytes) -> int:
        """The request's index: branch = z9hG4bK<prefix><index>[r<attempt>]."""
        return int(branch[7 + len(self.prefix):].split(b"r")[0])

    def receive(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            status, branch, after = sipwire.response_key(data)
            if status:
                if status >= 200 and self.outstanding.pop(branch, None):
                    index = self.index_of(branch)
                    if status == 503 and after is not None and not self.open_loop:
                        self.busy += 1
                        self.attempts[index] += 1
                        heapq.heappush(self.retries, (time.monotonic() + after, index))
                        continue
                    self.finals[status] += 1
                    if status >= 300:  # branch = z9hG4bK<prefix><index>[r<attempt>]
                        self.refused_indices.append(index)
                continue
            start, headers, _ = sipwire.split(data)
            method = start.partition(b" ")[0]
            if method == b"ACK":
                continue
            self.sock.sendto(sipwire.response(headers, 200, "OK", f"n{next(self._tag)}"
                                              .encode()), peer)
            if method == b"NOTIFY":
                self.notifies += 1
                self.notify_call_ids.add(sipwire.value(headers, b"call-id"))
                state = sipwire.value(headers, b"subscription-state").split(b";")[0]
                self.notify_states[state.decode().strip()] += 1

    def run(self, n: int, rate: float, window: int, limit: float) -> dict:
        cpu_started = time.process_time()
        started = time.monotonic()
        deadline = started + limit
        sent = 0
        while sent < n and time.monotonic() < deadline:
            now = time.monotonic()
            due = n if rate <= 0 else min(n, int((now - started) * rate) + 1)
            while sent < due and (window <= 0 or len(self.outstanding) < window):
                self.send(sent, now)
                sent += 1
                if sent % 64 == 0:
                    self.receive()
            self.receive()
            self.retransmit(now)
            self.resend_deferred(now)
            # A fixed tick, not a wakeup per arriving answer: the answers wait in the
            # socket's 8 MiB buffer and are read in a batch. Waking on each (a select and
            # a failed recvfrom per datagram) cost this UA 24-26 us per MESSAGE at a
            # paced 10,000/s against 16-18 now (Kamailio alone answering at once).
            time.sleep(TICK)
        send_seconds = time.monotonic() - started
        heard = time.monotonic()
        while (self.outstanding or self.retries) and time.monotonic() < deadline:
            if self.open_loop:
                answered = sum(self.finals.values())
                if select.select([self.sock], [], [], 0.05)[0]:
                    self.receive()
                if sum(self.finals.values()) != answered:
                    heard = time.monotonic()
                elif time.monotonic() - heard > OPEN_LOOP_QUIET:
                    break  # the rest will never be answered: nothing is retransmitted
                continue
            select.select([self.sock], [], [], 0.01)
            self.receive()
            now = time.monotonic()
            self.retransmit(now)
            self.resend_deferred(now)
        if self.kind == "subscribe":  # NOTIFYs may trail the answers a little
            quiet_until = min(deadline, time.monotonic() + self.notify_quiet)
            while time.monotonic() < quiet_until:
                if select.select([self.sock], [], [], 0.05)[0]:
                    self.receive()
                    quiet_until = min(deadline, time.monotonic() + self.notify_quiet)
        answered = sum(self.finals.values())
        return {
            "kind": self.kind, "open_loop": self.open_loop, "sent": sent, "wanted": n,
            "started_at": started,
            "send_seconds": send_seconds, "offered_rate": sent / send_seconds if sent else 0,
            "accepted": sum(c for s, c in self.finals.items() if s < 300),
            "refused": sum(c for s, c in self.finals.items() if s >= 300),
            "finals": {str(s): c for s, c in sorted(self.finals.items())},
            "unanswered": sent - answered, "timed_out": self.timed_out,
            "busy": self.busy, "still_deferred": len(self.retries),
            "retransmissions": self.retransmissions, "window": window,
            "notifies": self.notifies, "notified_subscriptions": len(self.notify_call_ids),
            "notify_states": dict(self.notify_states),
            "refused_indices": sorted(self.refused_indices),
            "timed_out_indices": sorted(self.timed_out_indices),
            "cpu_s": time.process_time() - cpu_started,  # this UA's own CPU over the run
        }


def main() -> None:
    kind, host, port, n, rate, window, limit, recipient = sys.argv[1:9]
    options = sys.argv[9:]
    quiet = (float(options[options.index("--notify-quiet") + 1])
             if "--notify-quiet" in options else NOTIFY_QUIET)
    load = SipLoad(kind, host, (host, int(port)), recipient, "--open-loop" in options, quiet)
    print(json.dumps(load.run(int(n), float(rate), int(window), float(limit))), flush=True)


if __name__ == "__main__":
    main()
