"""A fast stand-in for the SIP proxy side, for profiling the gateway's SIP half.

    python -m bench.tools.sip_peer answer HOST PORT SECONDS
        answer every request arriving on HOST:PORT (UDP) with 200 OK, echoing the
        transaction headers; prints how many it answered.
    python -m bench.tools.sip_peer send HOST PORT TARGET_HOST TARGET_PORT COUNT RATE SECONDS
        send COUNT MESSAGE requests (RATE per second, 0 = as fast as possible) from
        HOST:PORT to the gateway at TARGET, retransmitting on 503 after Retry-After,
        and count the final answers by status.

It works on bytes with no SIP library so that its own cost stays small next to the
gateway's. Bounded by COUNT and SECONDS.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

SO_RCVBUFFORCE = 33  # Linux: not capped by net.core.rmem_max (a new namespace's is 208 KiB)
HEADERS = (b"via:", b"from:", b"to:", b"call-id:", b"cseq:", b"v:", b"f:", b"t:", b"i:")


def answer(host: str, port: int, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    sock.bind((host, port))
    sock.setblocking(False)
    print(json.dumps({"ready": True}), flush=True)
    answered = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if not ready:
            continue
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                break
            if data.startswith(b"SIP/2.0"):
                continue
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            kept = [line for line in head[1:] if line[:8].lower().startswith(HEADERS)]
            kept = [line + b";tag=p1" if line[:3].lower() in (b"to:", b"t: ") and b"tag="
                    not in line else line for line in kept]
            sock.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(kept) +
                        b"\r\nContent-Length: 0\r\n\r\n", addr)
            answered += 1
    print(json.dumps({"answered": answered}), flush=True)


def send(host: str, port: int, target: tuple[str, int], count: int, rate: float,
         seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    sock.bind((host, port))
    sock.setblocking(False)
    tag = os.urandom(4).hex()
    statuses: dict[str, int] = {}
    pending: dict[int, bytes] = {}
    retry: list[tuple[float, int]] = []
    started = time.monotonic()
    deadline = started + seconds
    sent = done = 0

    attempts: dict[int, int] = {}

    def request(i: int) -> bytes:
        # A request answered 503 is sent again as a new transaction (new branch, RFC 3261
        # §21.5.4): the same branch would only fetch the cached 503 again.
        attempt = attempts[i] = attempts.get(i, -1) + 1
        body = f"message {i}".encode()
        return (f"MESSAGE sip:bob@a.example SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{tag}{i}x{attempt}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:alice@gw.example>;tag={tag}\r\n"
                f"To: <sip:bob@a.example>\r\nCall-ID: {tag}-{i}@{host}\r\n"
                f"CSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    while done < count and time.monotonic() < deadline:
        now = time.monotonic()
        due = count if rate <= 0 else min(count, int((now - started) * rate) + 1)
        while sent < due and len(pending) < 20000:
            pending[sent] = request(sent)
            try:
                sock.sendto(pending[sent], target)
            except BlockingIOError:
                break
            sent += 1
        while retry and retry[0][0] <= now:
            _, i = retry.pop(0)
            pending[i] = request(i)
            sock.sendto(pending[i], target)
        select.select([sock], [], [], 0.001)
        for _ in range(512):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            status = data[8:11].decode()
            call_id = data.split(b"Call-ID: ", 1)[1].split(b"@", 1)[0]
            i = int(call_id.rsplit(b"-", 1)[1])
            if status == "503":
                after = data.split(b"Retry-After: ", 1)[1].split(b"\r\n", 1)[0]
                retry.append((time.monotonic() + int(after), i))
                statuses["503"] = statuses.get("503", 0) + 1
                continue
            if i in pending:
                del pending[i]
                statuses[status] = statuses.get(status, 0) + 1
                done += 1
    print(json.dumps({"sent": sent, "answered": done, "statuses": statuses,
                      "seconds": round(time.monotonic() - started, 3)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "answer":
        answer(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        send(sys.argv[2], int(sys.argv[3]), (sys.argv[4], int(sys.argv[5])), int(sys.argv[6]),
             float(sys.argv[7]), float(sys.argv[8]))
