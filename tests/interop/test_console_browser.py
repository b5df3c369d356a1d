"""The admin console in a real browser, and the monitoring in a real Prometheus, against
running gateways with a real Prosody partner (one set-up shared by every test here).

    Prosody a.example (127.0.0.2) ──S2S── gw1 gw.example 127.0.0.4 (development backend,
                                          console :8480, metrics :9269)
                                          gw2 gw.example 127.0.0.6 (SIP backend → Kamailio
                                          127.0.0.6:5070, console :8480, metrics :9269)
                                          both: one PostgreSQL store (a two-node cluster)

Chromium is Debian's package, driven by Playwright through its executable path (no
browser download), started inside the test's network namespace by a two-line wrapper;
Prometheus is Debian's package, in the namespace too. Each page's screenshot is written to
docs/console/ (the documentation shows them). The tests run in file order: the last two
drain gw2 and lock this browser's address out of gw1's login.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from testbed.in_namespace import XmppUser, run_in_namespace
from testbed.kamailio import Kamailio
from testbed.namespace import IPS, REPO, Namespace, stop_process
from testbed.pki import Pki
from testbed.postgres import PostgresServer, postgres_bindir
from testbed.servers import Prosody

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "docs" / "console"
DASHBOARD = REPO / "deploy" / "monitoring" / "xmpp-gateway-dashboard.json"
NODE_IPS = {"gw1": IPS["gw.example"], "gw2": "127.0.0.6"}
KAMAILIO = (NODE_IPS["gw2"], 5070)
WEB, METRICS = 8480, 9269
PASSWORD = "a long console password"


@dataclass
class ConsoleNode:
    ns: Namespace
    pki: Pki
    name: str
    store_url: str
    accounts: Path
    sip: str = ""  # the `sip:` section; "" = development backend
    process: subprocess.Popen[bytes] | None = None
    dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir = self.ns.workdir / f"console-{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def ip(self) -> str:
        return NODE_IPS[self.name]

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{WEB}"

    @property
    def config(self) -> Path:
        return self.dir / "gateway.yaml"

    def start(self) -> ConsoleNode:
        tls = self.pki.tls_settings("gw.example")
        self.config.write_text("\n".join([
            "# gateway node " + self.name,
            "domains: [gw.example]",
            f"listen: [{{host: {self.ip}, port: 5269}}]",
            f"tls: {{certificate: {tls.certificate}, key: {tls.key}, "
            f"ca_file: {self.pki.root / 'ca.crt'}, use_system_cas: false}}",
            "dialback: {secret: console-cluster-secret}",
            "dns: {nameservers: ['127.0.0.53'], timeout: 3}",
            "logging: {level: info}",
            "limits: {negotiation_timeout: 10}",
            f"store: {{url: '{self.store_url}', timeout: 3}}",
            f"cluster: {{node_id: {self.name}, heartbeat_interval: 0.5, lease: 3, "
            "drain_timeout: 10, drain_grace: 1}",
            "admin_socket: admin.sock",
            f"metrics: {{enabled: true, host: {self.ip}, port: {METRICS}}}",
            f'admin_web: {{enabled: true, listen: "{self.ip}:{WEB}", '
            f"accounts: {self.accounts}}}",
            *([self.sip] if self.sip else []),
            "partners:",
            "  # Prosody in the test namespace",
            "  - {domain: a.example, type: federated}",
        ]) + "\n")
        out = (self.dir / "gateway.log").open("ab")
        self.process = subprocess.Popen(
            [*self.ns.exec, sys.executable, "-m", "gateway.cli.main", "-c", str(self.config),
             "run"], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def wait_started(self) -> None:
        deadline = time.monotonic() + 30
        while "gateway.started" not in self.log:
            if self.process is None or self.process.poll() is not None or \
                    time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} did not start: {self.log[-3000:]}")
            time.sleep(0.05)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.ns.exec, sys.executable, "-m", "gateway.cli.main", "-c",
                               str(self.config), *args], capture_output=True, text=True,
                              cwd=REPO, timeout=60, input=stdin, check=False)

    @property
    def log(self) -> str:
        path = self.dir / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, timeout=30)


@dataclass
class World:
    ns: Namespace
    prosody: Prosody
    gw1: ConsoleNode
    gw2: ConsoleNode
    browser: Any
    kamailio: Kamailio

    def explain(self) -> str:
        return "".join(f"\n--- {n.name} log (tail) ---\n{n.log[-3000:]}"
                       for n in (self.gw1, self.gw2)) + \
            f"\n--- prosody log (tail) ---\n{self.prosody.log[-1500:]}"


def _require(tool: str) -> None:
    if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
        pytest.fail(f"{tool} is not installed: run `make debs` (make test does)")


@pytest.fixture(scope="module")
def world(ns: Namespace, pki: Pki) -> Iterator[World]:
    for tool in ("prometheus", "kamailio"):
        _require(tool)
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed: run `make debs` (make test does)")
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: run `make debs` (make test does)")
    subprocess.run([*ns.exec, "ip", "addr", "add", f"{NODE_IPS['gw2']}/8", "dev", "lo"],
                   capture_output=True, check=False)
    with contextlib.ExitStack() as stack:
        # The servers start side by side (each waits for its own port), to keep the
        # set-up short.
        database = PostgresServer(bindir, prefix=ns.exec)
        stack.callback(database.cleanup)
        prosody = Prosody(ns, pki, secure_auth=False, users=("user",))
        stack.callback(prosody.stop)
        sip_dir = ns.workdir / "console-kamailio"
        sip_dir.mkdir(exist_ok=True)
        kamailio = Kamailio(sip_dir, domain="gw.example", host=KAMAILIO[0], port=KAMAILIO[1],
                            gateway=(NODE_IPS["gw2"], 5062), prefix=ns.exec)
        stack.callback(kamailio.stop)
        with ThreadPoolExecutor(3) as pool:
            started = [pool.submit(lambda: (database.initdb(), database.start())),
                       pool.submit(prosody.start), pool.submit(kamailio.start)]
            for future in started:
                future.result()
        accounts = ns.workdir / "admin-users"
        url = database.url("postgres")
        gw1 = ConsoleNode(ns, pki, "gw1", url, accounts)
        gw2 = ConsoleNode(ns, pki, "gw2", url, accounts, sip=(
            f"sip: {{backend: sip, proxy_host: {KAMAILIO[0]}, proxy_port: {KAMAILIO[1]}, "
            f"transport: udp, local_host: {NODE_IPS['gw2']}, local_port: 5062}}"))
        for node in (gw1, gw2):
            stack.callback(node.stop)
            node.start()
        # The operator's way to make accounts: the CLI, password on standard input.
        made = gw1.cli("admin-user", "add", "ada", "--password-stdin", stdin=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
        assert gw1.cli("admin-user", "add", "rita", "--role", "read-only",
                       "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
        playwright = stack.enter_context(sync_api.sync_playwright())
        wrapper = Path(tempfile.mkdtemp(prefix="gw-chromium-")) / "chromium"
        stack.callback(shutil.rmtree, wrapper.parent, True)
        # Chromium in the namespace: Playwright talks to it over pipes, not the network.
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} {CHROMIUM} "$@"\n')
        wrapper.chmod(0o755)
        browser = playwright.chromium.launch(executable_path=str(wrapper),
                                             args=["--no-sandbox"], headless=True)
        stack.callback(browser.close)
        for node in (gw1, gw2):
            node.wait_started()
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield World(ns, prosody, gw1, gw2, browser, kamailio)


def new_page(world: World) -> Any:
    context = world.browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def log_in(page: Any, node: ConsoleNode, name: str = "ada",
           password: str = PASSWORD) -> None:
    page.goto(node.url + "/")
    assert "/login" in page.url  # nothing without logging in
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("form button[type=submit]")


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def xmpp_message(world: World, to: str, body: str) -> dict[str, str]:
    """user@a.example writes to ``to`` through Prosody; the first answer (or error)."""
    async def scenario() -> dict[str, str]:
        user = await XmppUser("user@a.example", IPS["a.example"]).start()
        try:
            user.client.send_message(mto=to, mbody=body, mtype="chat")
            return await user.next_message(15)
        finally:
            await user.stop()

    return run_in_namespace(world.ns.name, scenario, timeout=40)


def test_log_in_and_see_the_live_session(world: World) -> None:
    answer = xmpp_message(world, "echo@gw.example", "hello console")
    assert answer["type"] != "error" and answer["body"] == "hello console", world.explain()
    page = new_page(world)
    page.goto(world.gw1.url + "/login")
    shot(page, "login")
    log_in(page, world.gw1)
    assert page.url == world.gw1.url + "/"
    assert "ada (admin)" in page.inner_text("header")
    status = json.loads(world.gw1.cli("status", "--json").stdout)
    inbound = [s for s in status["sessions"] if s["direction"] == "inbound"
               and s["peer_domain"] == "a.example"]
    assert inbound and inbound[0]["method"], status
    page.click("nav >> text=Sessions")
    rows = page.locator("#sessions tbody tr", has_text="a.example").all_inner_texts()
    assert any("inbound" in r and inbound[0]["method"] in r and inbound[0]["tls_version"] in r
               for r in rows), rows
    shot(page, "sessions")
    page.click("button:has-text('Check a.example')")
    trace = page.inner_text("#check")
    assert "partner policy: type=federated" in trace and "DNS" in trace, trace
    assert page.locator("#check.ok").count() == 1, trace
    shot(page, "connectivity-check")
    page.click("nav >> text=Overview")
    counters = page.inner_text("table.counters")
    assert re.search(r"Stanzas received from partners \(XMPP → SIP\)\s+[1-9]", counters)
    shot(page, "overview")
    page.context.close()


def test_partner_refused_in_the_matrix_words_then_added(world: World) -> None:
    page = new_page(world)
    log_in(page, world.gw1)
    page.click("nav >> text=Partners")
    page.fill("input[name=domain]", "b.example")
    page.select_option("select[name=tls]", "not-supported")
    page.select_option("select[name=sasl]", "required")
    page.select_option("select[name=dialback]", "false")
    page.click("form.partner button[type=submit]")
    refusal = page.inner_text("pre.notice.error")
    assert refusal == ("refused: tls=not-supported, sasl=required, dialback=false: Because "
                       "SASL requires TLS, and TLS is not available, SASL/TLS cannot succeed. "
                       "TCP Dialback is set to false, and cannot be used.")
    shot(page, "partner-refused")
    assert "b.example" not in world.gw1.cli("partner", "list").stdout
    page.select_option("select[name=tls]", "required")
    page.select_option("select[name=sasl]", "optional")
    page.select_option("select[name=dialback]", "true")
    page.fill("input[name=description]", "B's XMPP service")
    page.click("form.partner button[type=submit]")
    notices = page.locator("p.notice").all_inner_texts()
    assert "added b.example: permits SASL over TLS; TLS Dialback" in notices, notices
    assert "reloaded: 2 partners, 0 sessions closed" in notices, notices
    listed = world.gw1.cli("partner", "list").stdout
    assert re.search(r"^b\.example\s+federated\s+required\s+optional\s+true", listed, re.M), \
        listed
    assert "# Prosody in the test namespace" in world.gw1.config.read_text()
    shot(page, "partners")
    page.locator("#partners tr", has_text="b.example").locator("text=Edit").click()
    assert page.input_value("input[name=description]") == "B's XMPP service"
    page.select_option("select[name=sasl]", "required")
    shot(page, "partner-edit")
    page.click("form.partner button[type=submit]")
    notices = page.locator("p.notice").all_inner_texts()
    assert "updated b.example: permits SASL over TLS" in notices, notices
    assert re.search(r"^b\.example\s+federated\s+required\s+required",
                     world.gw1.cli("partner", "list").stdout, re.M)
    page.context.close()


def test_user_switch_refuses_the_next_message(world: World) -> None:
    page = new_page(world)
    log_in(page, world.gw1)
    page.click("nav >> text=Users")
    page.fill("input[name=q]", "echo")
    page.click("form.search button")
    page.click("text=echo@gw.example: switch and authorized contacts")
    assert page.inner_text("#switch").startswith("enabled (default)")
    page.click("button:has-text('Disable')")
    assert "echo@gw.example: XMPP federation disabled" in page.inner_text("p.notice")
    page.fill("form.allow input[name=jid]", "User@A.example/laptop")
    page.click("form.allow button")
    assert "echo@gw.example now authorizes user@a.example" in page.inner_text("p.notice")
    assert "console:ada" in page.inner_text("#contacts")
    assert "user@a.example  (since" in world.gw1.cli("contacts", "list", "echo").stdout
    shot(page, "user")
    try:
        answer = xmpp_message(world, "echo@gw.example", "are you there?")
        assert answer["type"] == "error" and answer["error"] == "service-unavailable", answer
        page.goto(world.gw1.url + "/")
        counters = page.inner_text("table.counters")
        assert re.search(r"Refused \(contact rules, policy\)\s+[1-9]", counters), counters
        page.goto(world.gw1.url + "/users")
        assert "echo@gw.example" in page.inner_text("#users")
        shot(page, "users")
    finally:
        page.goto(world.gw1.url + "/users/echo@gw.example")
        page.click("button:has-text('Back to the default')")
    assert "echo@gw.example: XMPP federation enabled (default)" in page.inner_text("p.notice")
    assert re.search(r'admin_web.change user=ada role=admin client=127\.0\.0\.\d+ node=gw1 '
                     r'action="users disable" result=ok local_user=echo@gw.example',
                     world.gw1.log), world.gw1.log[-2000:]
    page.context.close()


def test_csrf_token_and_read_only_role(world: World) -> None:
    reloads = world.gw1.log.count("gateway.reloaded")
    page = new_page(world)
    log_in(page, world.gw1)
    page.goto(world.gw1.url + "/reload")
    shot(page, "reload-confirm")
    page.evaluate("document.querySelector('main input[name=csrf]').remove()")
    page.click("button:has-text('Reload')")
    assert "CSRF token is missing or wrong" in page.inner_text("body")
    # A form on another site posting to the console: the SameSite=Strict cookie stays home.
    page.goto("about:blank")
    page.set_content(f'<form method="post" action="{world.gw1.url}/drain">'
                     '<button>win a prize</button></form>')
    page.click("button")
    assert "not logged in" in page.inner_text("body")
    assert "gateway.draining" not in world.gw1.log
    assert world.gw1.log.count("gateway.reloaded") == reloads
    assert re.search(r"admin_web.csrf_refused user=ada client=127\.0\.0\.\d+ path=/reload",
                     world.gw1.log)
    page.context.close()

    reader = new_page(world)
    log_in(reader, world.gw1, "rita")
    assert "rita (read-only)" in reader.inner_text("header")
    reader.goto(world.gw1.url + "/partners")
    assert reader.locator("form.partner").count() == 0
    reader.context.close()



PROMETHEUS = """global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [{rules}]
scrape_configs:
  - job_name: xmpp-gateway
    static_configs:
      - targets: [{targets}]
"""


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, its variables filled in."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$instance", ".*").replace("$__rate_interval",
                                                                     "20s")
            found.append((panel["title"], expr))
    variable = board["templating"]["list"][0]["query"]["query"]
    found.append(("variable instance",
                  re.sub(r"label_values\((\w+), instance\)", r"count by (instance) (\1)",
                         variable)))
    return found


QUERY = r"""
import json, sys, urllib.parse, urllib.request
base, queries = sys.argv[1], json.loads(sys.stdin.read())
out = []
for q in queries:
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
    out.append(json.load(urllib.request.urlopen(url, timeout=5)))
print(json.dumps(out))
"""


def prometheus_query(ns: Namespace, base: str, queries: list[str]) -> list[dict[str, Any]]:
    result = subprocess.run([*ns.exec, sys.executable, "-c", QUERY, base],
                            input=json.dumps(queries), capture_output=True, text=True,
                            timeout=60, check=True)
    return json.loads(result.stdout)


def test_prometheus_answers_every_dashboard_query(world: World) -> None:
    ns = world.ns
    workdir = ns.workdir / "prometheus"
    workdir.mkdir(exist_ok=True)
    config = workdir / "prometheus.yml"
    rules = REPO / "deploy" / "monitoring" / "xmpp-gateway-rules.yml"
    config.write_text(PROMETHEUS.format(
        rules=rules, targets=", ".join(f"'{n.ip}:{METRICS}'" for n in (world.gw1, world.gw2))))
    base = "http://127.0.0.53:9090"
    process = subprocess.Popen(
        [*ns.exec, "prometheus", f"--config.file={config}",
         f"--storage.tsdb.path={workdir / 'data'}", "--web.listen-address=127.0.0.53:9090"],
        stdout=(workdir / "prometheus.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        # Traffic while it scrapes: a message each way (and an outbound handshake).
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
            try:
                up = prometheus_query(ns, base, ["up"])[0]["data"]["result"]
            except subprocess.CalledProcessError:  # not listening yet
                up = []
            if len([r for r in up if r["value"][1] == "1"]) == 2:
                break
            assert time.monotonic() < deadline, (workdir / "prometheus.log").read_text()[-3000:]
            time.sleep(0.3)
        answer = xmpp_message(world, "echo@gw.example", "measured")
        assert answer["body"] == "measured"
        time.sleep(2.5)  # two scrapes after the traffic: the 20 s rates see it
        queries = dashboard_queries()
        results = prometheus_query(ns, base, [q for _, q in queries])
        empty = [f"{title}: {expr}" for (title, expr), result in zip(queries, results,
                                                                     strict=True)
                 if result["status"] != "success" or not result["data"]["result"]]
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        # The rules load in this Prometheus too, and none fires on a healthy pair of nodes.
        alerts = prometheus_query(ns, base, ['ALERTS{alertstate="firing"}'])[0]
        assert alerts["data"]["result"] == [], alerts
        names = prometheus_query(ns, base, ['count by (__name__) ({__name__=~"xmpp_gateway_.+"})'])
        exported = {r["metric"]["__name__"] for r in names[0]["data"]["result"]}
        used = {m for _, expr in queries for m in re.findall(r"xmpp_gateway_\w+", expr)}
        assert used <= exported, used - exported
    finally:
        stop_process(process)


def test_drain_a_node_of_the_cluster_then_log_out(world: World) -> None:
    """Near the end: gw2 goes away. Its console shows the SIP proxy's health; gw1's then shows gw2
    draining and stopped."""
    page = new_page(world)
    log_in(page, world.gw2)
    deadline = time.monotonic() + 20
    while "up" not in page.inner_text(".card:has(h2:text('SIP proxy'))"):
        assert time.monotonic() < deadline, world.explain()
        time.sleep(0.5)
        page.reload()
    proxy = page.inner_text(".card:has(h2:text('SIP proxy'))")
    assert f"{KAMAILIO[0]}:{KAMAILIO[1]} (udp): 200" in proxy, proxy
    members = page.inner_text("#cluster")
    assert re.search(r"gw1\s+running", members) and re.search(r"gw2 \(this node\)\s+running",
                                                              members), members
    shot(page, "overview-sip-cluster")
    page.click("text=Drain this node…")
    assert "Drain node gw2?" in page.inner_text("h1")
    shot(page, "drain-confirm")
    page.click("button:has-text('Drain and stop this node')")
    assert "node gw2 is draining (up to 10.0 s)" in page.inner_text("p.notice")
    assert world.gw2.process is not None
    assert world.gw2.process.wait(30) == 0, world.gw2.log[-3000:]
    assert "admin_web.change user=ada role=admin" in world.gw2.log
    assert "action=drain result=started" in world.gw2.log
    page.context.close()

    page = new_page(world)
    log_in(page, world.gw1)
    deadline = time.monotonic() + 15
    while not re.search(r"gw2\s+stopped", page.inner_text("#cluster")):
        assert time.monotonic() < deadline, page.inner_text("#cluster")
        time.sleep(0.5)
        page.reload()
    shot(page, "cluster-after-drain")
    page.click("header button:has-text('Log out')")
    assert "/login" in page.url
    page.goto(world.gw1.url + "/partners")
    assert "/login?next=/partners" in page.url
    page.context.close()


def test_wrong_passwords_are_throttled(world: World) -> None:
    """Last: the throttle holds every login from this browser's address for a while."""
    intruder = new_page(world)
    for attempt in range(5):
        log_in(intruder, world.gw1, "ada", f"guess {attempt}")
    assert "Too many failed logins: try again in 30 s" in intruder.inner_text(".notice.error")
    intruder.fill("input[name=password]", PASSWORD)
    intruder.click("form button[type=submit]")
    assert "Too many failed logins" in intruder.inner_text(".notice.error")
    assert "/login" in intruder.url
    shot(intruder, "login-throttled")
    intruder.context.close()
    assert 'reason="throttled after repeated failures"' in world.gw1.log
