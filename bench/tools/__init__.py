"""One-off investigations behind figures in docs/performance.md and docs/sip.md (profiles,
in-process variants, components measured alone): run by hand with
``python -m bench.tools.NAME``, never by ``make bench`` (bench/run.py)."""
