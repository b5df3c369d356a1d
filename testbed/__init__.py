"""What the tests and the benchmarks both stand up: a network namespace with DNS, real
Prosody, ejabberd, Kamailio, PostgreSQL and gateway processes, a certificate world, SIP
user agents. Development only: not part of the gateway's wheel (pyproject.toml packages
``gateway*`` alone); importable from a checkout (``make test``: pytest's ``pythonpath``;
``python -m bench.run`` from the repository root). It never imports ``tests``."""
