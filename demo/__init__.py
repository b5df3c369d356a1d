"""``make demo``: see the gateway federate with a real XMPP server in one command.

In a network namespace it creates (and removes), the demo starts a real Prosody
(``a.example``, one user), the gateway (``gw.example``) and, with ``--sip``, Kamailio and a
SIP user agent; then it sends a message each way and a presence subscription, prints the
conversation (who said what to whom, over which S2S authentication method, in how many
milliseconds) and stops everything. Exit status 0 only when every step worked.

It reuses the test bed the interop tests and the benchmarks share (testbed/: the namespace,
Prosody, the gateway, Kamailio) rather than a copy of it, so it runs from a checkout, like
``make test``; it is not part of the installed package.
"""
