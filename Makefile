# xmpp-gateway — developer entry points. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GW := $(VENV)/bin/xmpp-gateway
CONFIG ?= config/gateway.yaml
# Debian packages the test suite runs for real (interop, SIP side, DNS, namespaces).
TEST_DEBS := prosody ejabberd dnsmasq-base lua-unbound kamailio kamailio-presence-modules \
             kamailio-tls-modules \
             sip-tester iproute2 openssl postgresql

.PHONY: help venv certs run test test-unit lint bench clean debs

help:
	@echo "make run    - install into .venv, make dev certificates, start the gateway"
	@echo "make test   - install test dependencies (apt + pip) and run the whole suite"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks against Prosody and ejabberd (not part of make test)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

certs: venv
	@test -s certs/gateway.crt || $(GW) -c $(CONFIG) cert selfsigned --out-dir certs

run: venv certs
	$(GW) -c $(CONFIG) run

debs:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root for apt-get (missing:$$missing)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: debs venv
	$(PY) -m ruff check gateway tests bench
	$(PY) -m pytest -q -ra

test-unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(PY) -m ruff check gateway tests bench

bench: debs venv
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
