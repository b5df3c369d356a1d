"""Two servers whose policies do not meet, told as such to the users on both sides and to
the admin: Prosody requires encrypted server-to-server connections, the gateway's policy
for it is ``tls=not-supported``.

* The SIP user who writes to the Prosody user is told ``policy-violation`` with the policy
  in words (RFC 6120 §8.3.3.12), not ``remote-server-not-found`` (there is a server, it
  answered, the policies differ).
* When the Prosody user writes to the SIP user, Prosody connects, wants TLS and is refused
  it (RFC 6120 §5.4.2.2: a bare ``<failure/>``); the gateway logs a WARNING naming the
  partner and the setting to change, not an INFO line about a closed stream. (What the
  Prosody user is told is Prosody's to say.)

Prosody 0.12 and Kamailio 5.6 (the shipped configuration) in the interop namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from testbed.in_namespace import XmppUser, run_in_namespace
from testbed.kamailio import Kamailio
from testbed.namespace import IPS, Namespace
from testbed.servers import GatewayProcess, Prosody
from testbed.sip_ua import SipUserAgent

GW = IPS["gw.example"]
PHONE = "127.0.0.6"
KAMAILIO_PORT, GATEWAY_SIP_PORT = 5070, 5062

pytestmark = pytest.mark.interop


def test_encryption_required_against_tls_not_supported(ns: Namespace, pki) -> None:
    with contextlib.ExitStack() as started:  # whatever started is stopped, even mid-way
        prosody = Prosody(ns, pki, users=("user",), secure_auth=False,
                          require_encryption=True, log_level="info")
        started.callback(prosody.stop)
        prosody.start()
        workdir = ns.workdir / "kamailio-refusal"
        workdir.mkdir(exist_ok=True)
        sip = Kamailio(workdir, domain="gw.example", host=GW, port=KAMAILIO_PORT,
                       gateway=(GW, GATEWAY_SIP_PORT), prefix=ns.exec)
        started.callback(sip.stop)
        sip.start()
        gateway = GatewayProcess(
            ns, pki, [{"domain": "a.example", "type": "federated", "tls": "not-supported",
                       "sasl": "optional", "dialback": "true"}], log_level="info",
            sip={"backend": "sip", "proxy_host": GW, "proxy_port": KAMAILIO_PORT,
                 "transport": "udp", "local_host": GW, "local_port": GATEWAY_SIP_PORT})
        started.callback(gateway.stop)
        gateway.start()
        check(ns, prosody, gateway)


def check(ns: Namespace, prosody: Prosody, gateway: GatewayProcess) -> None:
    async def scenario() -> dict[str, Any]:
        phone = await SipUserAgent("carol", "gw.example", (GW, KAMAILIO_PORT),
                                   host=PHONE).start()
        xmpp = await XmppUser("user@a.example", IPS["a.example"]).start()
        try:
            assert (await phone.register()).status == 200
            answer = await phone.send_message("sip:user@a.example", "hello over there")
            # The refusal comes back fast: as the answer itself when it beats the gateway's
            # 202 (RFC 7247 §8.1: 403 for policy-violation, the text in a Warning header,
            # RFC 3261 §20.43), else as a notice after the 202. Both must name the policy.
            notice = await asyncio.wait_for(phone.messages.get(), 20) \
                if answer.status == 202 else None
            # The other way: Prosody connects to us, wants TLS, is not offered any.
            xmpp.client.send_message(mto="carol@gw.example", mbody="hello", mtype="chat")
            deadline = asyncio.get_running_loop().time() + 20
            while "s2s.policy_mismatch" not in gateway.log and \
                    asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            return {"status": answer.status, "warning": answer.get("warning") or "",
                    "notice": notice.body.decode() if notice else "",
                    "notice_from": notice.from_.uri if notice else ""}
        finally:
            await xmpp.stop()
            await phone.close()

    try:
        result = run_in_namespace(ns.name, scenario, timeout=90)
    except BaseException as exc:
        raise AssertionError(f"{exc!r}\n--- gateway log ---\n{gateway.log[-5000:]}"
                             f"\n--- prosody ---\n{prosody.log[-3000:]}") from exc
    why = (f"\n--- gateway log ---\n{gateway.log[-5000:]}"
           f"\n--- prosody ---\n{prosody.log[-3000:]}")
    # Toward the SIP user: the condition that says policy, and the policy in words.
    policy = ("the server policies of gw.example and a.example do not allow a "
              "connection: a.example requires TLS but partner policy tls=not-supported")
    if result["status"] == 202:
        assert result["notice_from"] == "sip:user@a.example", result
        assert result["notice"] == (
            "[message to user@a.example not delivered: policy-violation] "
            f"{policy}. Your message: hello over there"), result["notice"] + why
    else:
        assert result["status"] == 403, result
        assert result["warning"] == f'399 gw.example "{policy}"', result
    # The admin: a WARNING naming the partner and the setting to change.
    warnings = [line for line in gateway.log.splitlines()
                if " WARNING s2s.policy_mismatch " in line and "peer=a.example" in line
                and "direction=inbound" in line]
    assert warnings, why
    assert ("change=\"our policy for a.example is tls=not-supported sasl=optional "
            "dialback=true while a.example requires encryption: xmpp-gateway partner "
            "set a.example --tls optional (or required)\"") in warnings[0], warnings[0]
