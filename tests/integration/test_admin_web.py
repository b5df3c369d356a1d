"""The admin console's HTTP side against a running gateway (in-process, real sockets):
login and its throttle, cookies, CSRF, the read-only role, partner edits through the CLI's
code, the federation switch, and what the log says about each change.

The browser flows with a real Prosody partner are in tests/interop/test_console_browser.py.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yarl
from argon2 import PasswordHasher

from gateway.admin_web.accounts import AccountFile, Role
from gateway.config.loader import load_config
from gateway.daemon import Gateway
from gateway.logs import KeyValueFormatter
from gateway.sip.development import message
from testbed.dnsmasq import free_port
from testbed.pki import Pki

REPO = Path(__file__).resolve().parents[2]
# Test accounts hashed with test-sized parameters; real accounts use argon2-cffi's defaults.
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery"
CONFIG = """# the operator's comment, kept by every edit
domains: [gw.example]
listen: [{{host: 127.0.0.1, port: {s2s}}}]
store: {{path: store.sqlite3}}
admin_socket: admin.sock
dns: {{nameservers: ['127.0.0.1:9'], timeout: 1}}
admin_web: {{enabled: true, listen: "127.0.0.1:{web}"{extra}}}
partners:
  # our first partner
  - {{domain: a.example, type: federated}}
"""


@pytest.fixture(autouse=True)
def cheap_hashes(request: pytest.FixtureRequest) -> Iterator[None]:
    """The console's own hashes made with the test-sized parameters too (a login re-hashes
    an account made with other parameters than the console's, at 64 MiB and ~0.1 s each),
    except where a test is about the real parameters."""
    if request.node.get_closest_marker("argon2_defaults") is not None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gateway.admin_web.accounts.PasswordHasher",
                      lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        yield


async def start_gateway(tmp_path: Path, extra: str = "") -> Gateway:
    path = tmp_path / "gw.yaml"
    path.write_text(CONFIG.format(s2s=free_port(kind=socket.SOCK_STREAM),
                                  web=free_port(kind=socket.SOCK_STREAM), extra=extra))
    accounts = AccountFile(tmp_path / "admin-users", CHEAP)
    accounts.add("ada", Role.ADMIN, PASSWORD)
    accounts.add("rita", Role.READ_ONLY, PASSWORD)
    gateway = Gateway(load_config(path))
    await gateway.start()
    return gateway


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(tmp_path)
    try:
        yield gateway
    finally:
        await gateway.stop()


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """The log lines as the gateway writes them (``event key=value …``)."""
    formatter = KeyValueFormatter()
    return "\n".join(formatter.format(record) for record in caplog.records)


def base(gateway: Gateway) -> str:
    host, port = gateway.console.address
    return f"http://{host}:{port}"


def client() -> aiohttp.ClientSession:
    # unsafe: keep cookies of an IP-address host (the console listens on 127.0.0.1)
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no {name} field in:\n{page[:2000]}"
    return found.group(1)


async def login(session: aiohttp.ClientSession, url: str, name: str = "ada",
                password: str = PASSWORD) -> aiohttp.ClientResponse:
    async with session.get(f"{url}/login") as page:
        token = field(await page.text(), "token")
    response = await session.post(f"{url}/login", data={
        "name": name, "password": password, "token": token, "next": "/"},
        allow_redirects=False)
    await response.read()
    return response


async def csrf(session: aiohttp.ClientSession, url: str, path: str = "/") -> str:
    async with session.get(f"{url}{path}") as page:
        assert page.status == 200
        return field(await page.text(), "csrf")


async def test_nothing_is_reachable_without_login(gateway: Gateway) -> None:
    url = base(gateway)
    async with client() as session:
        for path in ("/", "/partners", "/sessions", "/users", "/users/bob", "/drain",
                     "/partners/a.example", "/reload", "/nowhere"):
            async with session.get(url + path, allow_redirects=False) as response:
                assert response.status == 303, path
                assert response.headers["Location"].startswith("/login?next=")
        for path in ("/reload", "/drain", "/partners", "/users/bob/switch", "/logout"):
            async with session.post(url + path, data={}) as response:
                assert response.status == 403, path
        async with session.get(url + "/login") as response:
            assert response.status == 200
            headers = response.headers
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none'
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["Cache-Control"] == "no-store"
    assert not gateway.draining and gateway.reloads == 0


async def test_login_cookie_logout(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    url = base(gateway)
    caplog.set_level(logging.INFO, "gateway.admin_web")
    async with client() as session:
        response = await login(session, url)
        assert response.status == 303 and response.headers["Location"] == "/"
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP on localhost: a Secure cookie would be lost
        async with session.get(url + "/") as page:
            text = await page.text()
            assert page.status == 200 and "gw.example" in text and "ada (admin)" in text
        stolen = session.cookie_jar.filter_cookies(yarl.URL(url))["gw_session"].value
        token = field(text, "csrf")
        async with session.post(url + "/logout", data={"csrf": token},
                                allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/login"
    async with client() as replay, replay.get(  # the old cookie is worth nothing now
            url + "/", cookies={"gw_session": stolen}, allow_redirects=False) as response:
        assert response.status == 303
    assert "admin_web.login user=ada role=admin client=127.0.0.1" in logged(caplog)
    assert "admin_web.logout user=ada" in logged(caplog)


async def test_every_change_needs_the_csrf_token(gateway: Gateway,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    url = base(gateway)
    caplog.set_level(logging.INFO, "gateway.admin_web")
    async with client() as session:
        await login(session, url)
        for data in ({}, {"csrf": "forged"}):
            async with session.post(url + "/reload", data=data) as response:
                assert response.status == 403
                assert "CSRF token is missing or wrong" in await response.text()
            async with session.post(url + "/users/bob/switch",
                                    data={**data, "value": "disable"}) as response:
                assert response.status == 403
        assert gateway.reloads == 0
        assert await gateway.store.list_users() == []
        token = await csrf(session, url)
        async with session.post(url + "/reload", data={"csrf": token}) as response:
            assert response.status == 200 and "reloaded: 1 partners" in await response.text()
        assert gateway.reloads == 1
    assert "admin_web.csrf_refused user=ada client=127.0.0.1 path=/reload" in logged(caplog)
    assert 'admin_web.change user=ada role=admin client=127.0.0.1' in logged(caplog)
    assert 'action=reload result=ok' in logged(caplog)


async def test_the_login_form_has_its_own_token(gateway: Gateway) -> None:
    """Another site cannot post a login form: no pre-login cookie, no valid token."""
    url = base(gateway)
    async with client() as session, session.post(url + "/login", data={
            "name": "ada", "password": PASSWORD, "token": "0" * 64},
            allow_redirects=False) as response:
        assert response.status == 403
        assert "gw_session" not in response.cookies


async def test_wrong_passwords_are_throttled(gateway: Gateway,
                                             caplog: pytest.LogCaptureFixture) -> None:
    url = base(gateway)
    caplog.set_level(logging.INFO, "gateway.admin_web")
    async with client() as session:
        for attempt in range(4):
            response = await login(session, url, password=f"wrong {attempt}")
            assert response.status == 401
        response = await login(session, url, password="wrong again")
        assert response.status == 401
        assert "Too many failed logins: try again in 30 s" in await response.text()
        # Even the right password waits now, or the wait would not slow guessing down.
        response = await login(session, url)
        assert response.status == 429
        assert "Too many failed logins" in await response.text()
    async with client() as other:  # the same address under another name waits too
        assert (await login(other, url, name="rita")).status == 429
    assert 'admin_web.login_refused user=ada client=127.0.0.1 reason="wrong name or ' \
           'password"' in logged(caplog)
    assert 'reason="throttled after repeated failures"' in logged(caplog)


async def test_read_only_sees_everything_and_changes_nothing(
        gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = base(gateway)
    caplog.set_level(logging.INFO, "gateway.admin_web")
    before = (tmp_path / "gw.yaml").read_text()
    async with client() as session:
        assert (await login(session, url, name="rita")).status == 303
        for path in ("/", "/partners", "/sessions", "/users", "/users/bob"):
            async with session.get(url + path) as page:
                assert page.status == 200, path
                text = await page.text()
                assert "Add a partner" not in text and "Drain this node" not in text
        token = await csrf(session, url)
        for path, data in (("/partners", {"domain": "c.example", "type": "federated",
                                          "tls": "optional", "sasl": "optional",
                                          "dialback": "true"}),
                           ("/reload", {}), ("/drain", {}),
                           ("/users/bob/switch", {"value": "disable"}),
                           ("/partners/a.example/remove", {})):
            async with session.post(url + path, data={"csrf": token, **data}) as response:
                assert response.status == 403, path
                assert "rita is a read-only account" in await response.text()
    assert (tmp_path / "gw.yaml").read_text() == before
    assert gateway.reloads == 0 and not gateway.draining
    assert 'admin_web.change_refused user=rita client=127.0.0.1 path=/drain ' \
           'reason="read-only account"' in logged(caplog)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", "-c", str(config), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=30)


async def test_partner_edits_say_what_the_cli_says_and_keep_comments(
        gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = base(gateway)
    config = tmp_path / "gw.yaml"
    caplog.set_level(logging.INFO, "gateway.admin_web")
    # What the CLI answers for the same invalid combination, on a copy of the file.
    copy = tmp_path / "copy" / "gw.yaml"
    copy.parent.mkdir()
    copy.write_text(config.read_text())
    refused = cli(copy, "partner", "add", "b.example", "--type", "federated", "--tls",
                  "not-supported", "--sasl", "required", "--dialback", "false")
    assert refused.returncode == 2
    words = refused.stderr.strip()
    assert words.startswith("refused: tls=not-supported, sasl=required, dialback=false: ")
    before = config.read_text()
    form = {"domain": "b.example", "type": "federated", "tls": "not-supported",
            "sasl": "required", "dialback": "false", "additional": "", "description": ""}
    async with client() as session:
        await login(session, url)
        token = await csrf(session, url, "/partners")
        async with session.post(url + "/partners", data={"csrf": token, **form}) as response:
            assert response.status == 422
            page = await response.text()
        assert words.replace("'", "&#39;") in page
        assert 'value="b.example"' in page  # the form is shown again as it was filled in
        assert config.read_text() == before
        form.update(tls="required", sasl="optional", dialback="true",
                    additional="conference.b.example", description="B & Co")
        async with session.post(url + "/partners", data={"csrf": token, **form}) as response:
            page = await response.text()
            assert response.status == 200 and str(response.url).endswith("/partners")
        added = cli(copy, "partner", "add", "b.example", "--type", "federated", "--tls",
                    "required", "--additional-domain", "conference.b.example")
        assert added.stdout.splitlines()[0] in page  # "added b.example: permits …"
        assert "reloaded: 2 partners, 0 sessions closed" in page
        assert "B &amp; Co" in page  # escaped, never markup
    text = config.read_text()
    assert "# the operator's comment, kept by every edit" in text and "# our first partner" in text
    listed = cli(config, "partner", "list")
    assert "b.example, conference.b.example  federated  required  optional" in listed.stdout
    assert gateway.config.partner_for("conference.b.example") is not None  # reloaded
    assert 'admin_web.change user=ada role=admin client=127.0.0.1 node=' in logged(caplog)
    assert 'action="partner add" result=refused domain=b.example' in logged(caplog)
    assert 'action="partner add" result=ok domain=b.example' in logged(caplog)


async def test_edit_and_remove_a_partner(gateway: Gateway, tmp_path: Path) -> None:
    url = base(gateway)
    async with client() as session:
        await login(session, url)
        token = await csrf(session, url, "/partners/a.example")
        async with session.post(url + "/partners/a.example", data={
                "csrf": token, "type": "public-verified", "tls": "required", "sasl": "optional",
                "dialback": "true", "additional": "", "description": ""}) as response:
            assert "updated a.example: permits SASL over TLS; TLS Dialback" in \
                await response.text()
        assert str(gateway.config.partner_for("a.example").partner_type) == "public-verified"
        async with session.get(url + "/partners/a.example/remove") as page:
            assert "Remove partner a.example?" in await page.text()
        async with session.post(url + "/partners/a.example/remove",
                                data={"csrf": token}) as response:
            assert "removed the partner entry of a.example" in await response.text()
    assert gateway.config.partners == ()
    assert "a.example" not in cli(tmp_path / "gw.yaml", "partner", "list").stdout


async def test_federation_switch_applies_to_the_next_stanza(
        gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """The development backend's echo user answers alice; switched off, it cannot be
    written to any more, and the change is the one ``users disable`` makes."""
    url = base(gateway)
    caplog.set_level(logging.INFO, "gateway.admin_web")
    async with client() as session:
        await login(session, url)
        token = await csrf(session, url, "/users/echo")
        async with session.post(url + "/users/echo/switch",
                                data={"csrf": token, "value": "disable"}) as response:
            text = await response.text()
        assert "echo@gw.example: XMPP federation disabled" in text
        assert (await gateway.store.list_users())[0].enabled is False
        async with session.get(url + "/users?q=ech") as page:
            assert "echo@gw.example" in await page.text()
        async with session.post(url + "/users/echo/contacts", data={
                "csrf": token, "action": "allow", "jid": "Alice@A.example/pc"}) as response:
            assert "echo@gw.example now authorizes alice@a.example" in await response.text()
        contacts = await gateway.store.list_contacts("echo@gw.example")
        assert [(c.remote_jid, c.source) for c in contacts] == [("alice@a.example",
                                                                 "console:ada")]
    assert 'action="users disable" result=ok local_user=echo@gw.example' in logged(caplog)
    assert 'action="contacts allow" result=ok local_user=echo@gw.example ' \
           'contact=alice@a.example' in logged(caplog)


async def test_the_overview_counts_traffic_and_failures(gateway: Gateway) -> None:
    """A message toward a partner whose DNS does not answer: bounced to its sender, and
    one S2S session failure by its condition, on the overview and in the metrics."""
    url = base(gateway)
    backend = gateway.backend
    await backend.inject(message("alice@gw.example/dev", "someone@a.example", "hi"))
    bounce = await backend.next_delivered(15)
    assert bounce.get("type") == "error"
    failures = {k: v for k, v in gateway.parts.metrics.traffic()["s2s_failures"].items() if v}
    assert list(failures.values()) == [1.0], failures
    reason = next(iter(failures))
    assert reason in ("remote-server-timeout", "remote-server-not-found")
    async with client() as session:
        await login(session, url)
        async with session.get(url + "/") as page:
            text = await page.text()
    assert "Stanzas per second, last 1 min" in text and "<polyline" in text
    assert "development backend" in text and "not part of a cluster" in text
    assert re.search(r"Bounced to their sender</th><td>1<", text), text
    assert re.search(rf"S2S session failures by reason</h3>\s*<table><tr><th>{reason}</th>"
                     r"<td>1</td>", text), text


async def test_sessions_end_when_the_account_goes(gateway: Gateway, tmp_path: Path) -> None:
    url = base(gateway)
    async with client() as session:
        await login(session, url, name="rita")
        async with session.get(url + "/", allow_redirects=False) as page:
            assert page.status == 200
        AccountFile(tmp_path / "admin-users", CHEAP).remove("rita")
        async with session.get(url + "/", allow_redirects=False) as page:
            assert page.status == 303


@pytest.mark.argon2_defaults
async def test_first_login_rehashes_with_todays_parameters(gateway: Gateway,
                                                           tmp_path: Path) -> None:
    async with client() as session:
        assert (await login(session, base(gateway))).status == 303
        async with session.get(base(gateway) + "/", allow_redirects=False) as page:
            assert page.status == 200  # the rewritten account still holds the session
    ada = AccountFile(tmp_path / "admin-users").get("ada")
    assert ada is not None and "$m=65536,t=3,p=4$" in ada.password_hash
    assert (tmp_path / "admin-users").stat().st_mode & 0o777 == 0o600


async def test_no_redirect_to_another_site(gateway: Gateway) -> None:
    url = base(gateway)
    for target in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
        async with client() as session:
            async with session.get(url + "/login") as page:
                token = field(await page.text(), "token")
            async with session.post(url + "/login", data={
                    "name": "ada", "password": PASSWORD, "token": token,
                    "next": target}, allow_redirects=False) as response:
                assert response.headers["Location"] == "/", target


async def test_idle_sessions_expire(tmp_path: Path) -> None:
    import asyncio

    gateway = await start_gateway(tmp_path, ", session_idle: 0.5")
    try:
        async with client() as session:
            await login(session, base(gateway))
            await asyncio.sleep(0.7)
            async with session.get(base(gateway) + "/", allow_redirects=False) as page:
                assert page.status == 303
    finally:
        await gateway.stop()


async def test_https_cookies_are_secure(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    tls = pki.tls_settings("gw.example")
    gateway = await start_gateway(
        tmp_path, f", certificate: {tls.certificate}, key: {tls.key}")
    try:
        host, port = gateway.console.address
        context = ssl.create_default_context(cafile=str(pki.root / "ca.crt"))
        context.check_hostname = False
        async with aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True),
                connector=aiohttp.TCPConnector(ssl=context)) as session:
            response = await login(session, f"https://{host}:{port}")
            assert response.status == 303
            cookie = response.headers["Set-Cookie"]
            assert cookie.startswith("__Host-gw_session=") and "Secure" in cookie
            assert "max-age" in response.headers["Strict-Transport-Security"]
    finally:
        await gateway.stop()


async def test_a_taken_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    from gateway.daemon import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "gw.yaml"
        path.write_text(CONFIG.format(s2s=free_port(kind=socket.SOCK_STREAM), web=port,
                                      extra=""))
        gateway = Gateway(load_config(path))
        try:
            with pytest.raises(StartupError) as failed:
                await gateway.start()
        finally:
            await gateway.stop()
    assert str(failed.value).startswith(f"admin_web.listen 127.0.0.1:{port}: ")
    assert "already in use" in str(failed.value)


async def test_console_settings_change_on_restart_and_reload_says_so(
        gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(path.read_text().replace('admin_web: {enabled: true, ',
                                             'admin_web: {enabled: true, session_idle: 60, '))
    answer = await gateway.reload()
    assert answer["ok"] and answer["note"] == "admin_web settings change only on restart"
    assert gateway.config.admin_web.session_idle == 1800  # the running console's, kept
