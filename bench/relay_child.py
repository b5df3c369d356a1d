"""A benchmark end (load generator or sink) run as a child process inside the namespace,
spoken to over stdin and read as JSON lines from stdout, every read bounded in time."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class Child:
    def __init__(self, ns_exec: list[str], module: str, args: list[Any], log: Path) -> None:
        self.name = f"{module} {' '.join(map(str, args))}"
        self.log = log
        self._stderr = log.open("ab")
        self.process = subprocess.Popen(
            [*ns_exec, sys.executable, "-m", module, *map(str, args)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def line(self, timeout: float) -> dict:
        """The next JSON line; an error naming the child and its stderr if none comes."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: nothing after {timeout:.0f}s\n"
                               f"{self._tail()}") from None
        if line is None:
            self.process.wait(5)
            raise RuntimeError(f"{self.name}: exited ({self.process.returncode})\n"
                               f"{self._tail()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(text + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass

    def _tail(self) -> str:
        self._stderr.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def close(self, wait: float = 10.0) -> None:
        """Wait ``wait`` seconds for a clean exit, then kill (never left running)."""
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._stderr.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process.poll() is None and _exc[0] is not None:
            self.process.kill()
        self.close()
