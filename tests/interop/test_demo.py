"""`make demo` and `DEMO=sip make demo`: run as a newcomer would, they must print
the whole exchange, exit 0, finish in under a minute, and leave nothing behind.

The demo runs as its own process (``python -m demo``, what the Makefile runs), with its own
namespace, servers and temporary directory; the test reads only its output and then checks
that the namespace it named is gone and that none of its servers still runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_demo(*args: str) -> tuple[str, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "demo", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    namespace = re.search(r"removed namespace (gwdemo\d+)\.", result.stdout)
    assert namespace, result.stdout
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert namespace[1] not in listed.split(), listed
    assert not (Path("/etc/netns") / namespace[1]).exists()
    leftovers = subprocess.run(["pgrep", "-af", f"xmpp-gateway-demo-|{namespace[1]}"],
                               capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"demo processes still running:\n{leftovers}"
    return result.stdout, elapsed


def steps(output: str) -> list[list[str]]:
    """The numbered steps of the report, each with its indented detail lines."""
    found: list[list[str]] = []
    for line in output.splitlines():
        if re.match(r"  \d+\. ", line):
            found.append([line])
        elif found and line.startswith("             "):
            found[-1].append(line.strip())
    return found


def test_demo_with_the_development_backend() -> None:
    output, elapsed = run_demo()
    assert elapsed < 60, elapsed
    assert "OK: 3 of 3 steps worked" in output, output
    one, two, three = steps(output)
    assert one[0].endswith('ok     alice@a.example → echo@gw.example: message '
                           '"Hello from Prosody!"'), output
    assert one[1] == "via S2S a.example → gw.example, SASL over TLS (TLSv1.3)", output
    assert re.fullmatch(r"\d+ ms round trip: .*", one[3]), output
    assert two[0].endswith("ok     echo@gw.example → alice@a.example: message "
                           '"Hello from Prosody!" (the echo)'), output
    assert two[1] == "via S2S gw.example → a.example, SASL over TLS (TLSv1.3)", output
    assert three[0].endswith("alice@a.example → echo@gw.example: presence subscription")
    assert three[2] == "answered: subscribed, then echo@gw.example is available", output
    assert re.fullmatch(r"\d+ ms", three[3]), output
    assert re.search(r"inbound +a\.example → gw\.example +SASL over TLS +TLSv1\.3", output)
    assert re.search(r"outbound +gw\.example → a\.example +SASL over TLS +TLSv1\.3", output)


def test_demo_with_kamailio_and_a_sip_phone() -> None:
    output, elapsed = run_demo("--sip")
    assert elapsed < 60, elapsed
    assert "OK: 4 of 4 steps worked" in output, output
    found = steps(output)
    assert [s[0].split(maxsplit=2)[-1] for s in found] == [
        'alice@a.example → bob@gw.example: message "Hello from Prosody!"',
        'bob@gw.example → alice@a.example: message "Hi Alice, this is Bob on SIP."',
        "alice@a.example → bob@gw.example: presence subscription",
        "bob@gw.example → alice@a.example: presence subscription"], output
    assert all(s[0].split()[1] == "ok" for s in found), output
    assert found[0][1] == ("via S2S a.example → gw.example, SASL over TLS (TLSv1.3) then "
                           "SIP over UDP through Kamailio (MESSAGE)"), output
    assert found[0][2] == "bob's phone got a SIP MESSAGE from sip:alice@a.example", output
    assert found[1][2] == ("gateway answered 202 Accepted; alice got it from "
                           "bob@gw.example/sip"), output
    assert found[2][2] == 'subscribed; bob is available, note "at my desk" (from his PIDF)'
    assert found[3][2].startswith("200 OK; NOTIFY active"), output
    assert all(re.fullmatch(r"\d+ ms", s[3]) for s in found), output


@pytest.mark.parametrize(("command", "expected"), [
    (["make", "-n", "demo"], ".venv/bin/python -m demo"),
    (["make", "-n", "demo", "DEMO=sip"], ".venv/bin/python -m demo --sip"),
])
def test_make_demo_runs_the_module(command: list[str], expected: str) -> None:
    # --no-print-directory: under `make test` this make is a sub-make, which would say so.
    result = subprocess.run([*command, "--no-print-directory"], cwd=REPO, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].strip() == expected, result.stdout


def test_make_demo_refuses_an_unknown_variant() -> None:
    result = subprocess.run(["make", "-n", "demo", "DEMO=pbx"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "DEMO=pbx" in result.stderr, result
