"""The console's pure parts: accounts file, sessions, login throttle, rate history and
chart, the ``admin_web`` configuration section, the SIP proxy health state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from gateway.admin_web.accounts import AccountError, AccountFile, Role, parse_accounts
from gateway.admin_web.history import RateHistory, chart
from gateway.admin_web.security import (
    LoginThrottle,
    SessionTable,
    prelogin_ok,
    prelogin_token,
)
from gateway.config.loader import ConfigError, config_warnings, load_config_text
from gateway.sip.health import ProxyHealth

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def test_accounts_file_round_trip(tmp_path: Path) -> None:
    accounts = AccountFile(tmp_path / "admin-users", CHEAP)
    accounts.add("ada", Role.ADMIN, "long enough password")
    accounts.add("rita", Role.READ_ONLY, "another long password")
    assert (tmp_path / "admin-users").stat().st_mode & 0o777 == 0o600
    text = (tmp_path / "admin-users").read_text()
    assert "long enough" not in text and "$argon2id$" in text
    again = AccountFile(tmp_path / "admin-users", CHEAP)
    assert again.verify("ada", "long enough password").role is Role.ADMIN
    assert again.verify("ada", "wrong password!!") is None
    assert again.verify("nobody", "long enough password") is None
    again.set_role("rita", Role.ADMIN)
    again.remove("ada")
    assert {a.name: a.role for a in accounts.accounts().values()} == {"rita": Role.ADMIN}


@pytest.mark.parametrize(("name", "password", "words"), [
    ("ada", "short", "at least 10 characters"),
    ("-ada", "long enough password", "is not an account name"),
    ("a:b", "long enough password", "is not an account name"),
])
def test_bad_names_and_passwords_are_refused(tmp_path: Path, name: str, password: str,
                                             words: str) -> None:
    with pytest.raises(AccountError, match=words):
        AccountFile(tmp_path / "admin-users", CHEAP).add(name, Role.ADMIN, password)
    assert not (tmp_path / "admin-users").exists()


def test_a_malformed_accounts_line_is_named() -> None:
    with pytest.raises(AccountError, match=r"f:3: not 'name:admin\|read-only:hash'"):
        parse_accounts("# comment\n\nada:root:$argon2id$x\n", "f")
    with pytest.raises(AccountError, match="f:1: the password hash is not an argon2 hash"):
        parse_accounts("ada:admin:plain\n", "f")


def test_sessions_expire_and_follow_their_account(tmp_path: Path) -> None:
    accounts = AccountFile(tmp_path / "admin-users", CHEAP)
    ada = accounts.add("ada", Role.ADMIN, "long enough password")
    table = SessionTable(idle=10, lifetime=100)
    session = table.create(ada, now=0)
    assert table.get(session.id, 5, ada) is session
    assert table.get(session.id, 14, ada) is session  # idle counts from the last request
    assert table.get(session.id, 25, ada) is None  # idle too long
    session = table.create(ada, now=0)
    for now in range(5, 100, 5):
        assert table.get(session.id, now, ada) is session
    assert table.get(session.id, 101, ada) is None  # lifetime, whatever the activity
    session = table.create(ada, now=0)
    assert table.get(session.id, 1, ada.__class__(ada.name, Role.READ_ONLY,
                                                  ada.password_hash)) is None
    assert table.get("forged", 1, ada) is None
    assert session.csrf_ok(session.csrf) and not session.csrf_ok("") and \
        not session.csrf_ok(None) and not session.csrf_ok(session.csrf[:-1])


def test_throttle_doubles_its_wait_and_forgets_success() -> None:
    throttle = LoginThrottle()
    keys = ["ip:192.0.2.1", "name:ada"]
    for now in range(4):
        assert throttle.failed(keys, now) == 0
        assert throttle.wait(keys, now) == 0
    assert throttle.failed(keys, 4) == 30
    assert throttle.wait(["ip:192.0.2.1"], 10) == 24
    assert throttle.wait(["name:ada", "ip:198.51.100.7"], 10) == 24  # by name, any address
    assert throttle.wait(["ip:198.51.100.7", "name:bob"], 10) == 0
    assert throttle.failed(keys, 40) == 60
    assert throttle.failed(keys, 110) == 120
    for now in range(200, 2000, 100):
        throttle.failed(keys, now)
    # Failures older than the window are forgotten, the lockouts are not: the next burst
    # of five waits the longest, 15 minutes.
    assert [throttle.failed(keys, now) for now in range(3000, 3005)] == [0, 0, 0, 0, 900]
    throttle.succeeded(keys)
    assert throttle.wait(keys, 3001) == 0


def test_login_form_token_is_bound_to_its_cookie() -> None:
    token = prelogin_token(b"k" * 32, "nonce-1")
    assert prelogin_ok(b"k" * 32, "nonce-1", token)
    assert not prelogin_ok(b"k" * 32, "nonce-2", token)
    assert not prelogin_ok(b"x" * 32, "nonce-1", token)
    assert not prelogin_ok(b"k" * 32, None, token)


def test_rates_and_chart() -> None:
    history = RateHistory(interval=10, span=60)
    for step in range(10):
        history.sample(step * 10.0, {"xmpp_to_sip": step * 50.0, "sip_to_xmpp": step * 5.0})
    rates = history.rates()
    assert len(rates) == 6  # 7 samples kept (one hour = 60 s here), 6 intervals
    assert rates[-1] == (90.0, {"xmpp_to_sip": 5.0, "sip_to_xmpp": 0.5})
    drawn = chart(rates, now=90.0, width=600, height=100, span=60)
    assert drawn.top == 5.0 and drawn.minutes == 1
    xmpp, sip = drawn.lines
    assert xmpp.points.split()[-1] == "600.0,0.0" and sip.points.split()[-1] == "600.0,90.0"
    assert xmpp.points.split()[0] == "100.0,0.0"  # 50 s ago of 60
    assert xmpp.last == 5.0
    young = chart([(1000.0, {"xmpp_to_sip": 1.0}), (1100.0, {"xmpp_to_sip": 2.0})],
                  now=1120.0, width=600)
    assert young.minutes == 2  # the 2 minutes it has, across the whole width
    assert young.lines[0].points == "0.0,70.0 500.0,0.0"
    assert chart([], now=0).minutes == 1
    history.sample(100.0, {"xmpp_to_sip": 3.0, "sip_to_xmpp": 0.0})  # counters restarted
    assert history.rates()[-1][1] == {"xmpp_to_sip": 0.3, "sip_to_xmpp": 0.0}
    assert chart([], now=0).top == 0.1


def test_admin_web_section() -> None:
    config = load_config_text('domains: [a.example]\nadmin_web: {enabled: true, '
                              'listen: "[::1]:9000"}\n', base_dir=Path("/etc/gw"))
    assert config.admin_web.address == ("::1", 9000)
    assert config.admin_web.accounts == Path("/etc/gw/admin-users")
    assert not any("reachable beyond" in w for w in config_warnings(config))
    wide = load_config_text('domains: [a.example]\nadmin_web: {enabled: true, '
                            'listen: "0.0.0.0:8480", accounts: users}\n', base_dir=Path("/x"))
    assert wide.admin_web.accounts == Path("/x/users")
    warnings = config_warnings(wide)
    assert "admin_web.listen 0.0.0.0:8480 makes the admin console reachable beyond this " \
           "host: without admin_web.certificate and key, passwords and session cookies " \
           "cross the network in clear text" in warnings
    assert "admin_web.accounts /x/users does not exist: nobody can log in to the console " \
           "(create an account: xmpp-gateway admin-user add NAME)" in warnings
    for bad, words in (('"8480"', "is not host:port"), ('"::1:80"', "is not host:port"),
                       ('"a:70000"', "is not host:port"),
                       ('"a:1", key: k.pem', "admin_web.certificate: is required")):
        with pytest.raises(ConfigError, match=words):
            load_config_text(f"domains: [a.example]\nadmin_web: {{listen: {bad}}}\n")


@dataclass
class Answer:
    status: int
    reason: str


async def test_proxy_health_remembers_the_last_answer() -> None:
    answers: list[Answer | None] = [Answer(200, "OK"), None, Answer(404, "Not Here")]

    async def ping(timeout: float) -> Answer | None:
        await asyncio.sleep(0)
        return answers.pop(0)

    health = ProxyHealth(ping, "192.0.2.5:5060", "udp", lambda: "")
    assert health.describe()["up"] is None
    await health.check()
    assert health.describe()["up"] == 1 and health.describe()["status"] == 200
    await health.check()
    down = health.describe()
    assert down["up"] == 0 and down["rtt_seconds"] is None and down["failures"] == 1
    assert down["problem"] == "no answer to OPTIONS within 5 s"
    await health.check()  # any final answer: the proxy is there and speaks SIP
    assert health.describe()["up"] == 1 and health.describe()["reason"] == "Not Here"
