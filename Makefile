# xmpp-gateway — developer entry points. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GW := $(VENV)/bin/xmpp-gateway
CONFIG ?= config/gateway.yaml
# Debian packages the test suite runs for real (interop, SIP side, DNS, namespaces; the
# console in a real browser, the monitoring rules and dashboard in a real Prometheus;
# unbound, nsd and ldnsutils: a DNSSEC-signed zone and a validating resolver for DANE).
TEST_DEBS := prosody ejabberd dnsmasq-base lua-unbound kamailio kamailio-presence-modules \
             kamailio-tls-modules \
             sip-tester iproute2 openssl postgresql linphone-cli \
             chromium prometheus unbound nsd ldnsutils
# The compose stack's test: podman and runc from Debian, debootstrap for the
# Debian base image where no registry is reachable; podman-compose from PyPI into the venv
# (bookworm's 1.0.3 ignores per-network ipv4_address and ipam, which the stack uses).
COMPOSE_DEBS := podman runc debootstrap
PODMAN_COMPOSE := podman-compose>=1.6,<2

.PHONY: help venv certs run demo test test-unit lint bench clean debs compose-debs compose-test

help:
	@echo "make run    - install into .venv, make dev certificates, start the gateway"
	@echo "make demo   - watch it federate with a real Prosody in a throw-away namespace (root)"
	@echo "              DEMO=sip make demo: with Kamailio and a SIP phone (sip backend)"
	@echo "make test   - install test dependencies (apt + pip) and run the whole suite"
	@echo "make lint   - ruff"
	@echo "make compose-test - build the container images and run the compose stack (podman)"
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

# DEMO=sip (or `make demo DEMO=sip`): the SIP backend with Kamailio and a SIP user agent.
demo: debs venv
	$(if $(filter-out sip,$(DEMO)),$(error DEMO=$(DEMO): the variants are `make demo` and `DEMO=sip make demo`))
	$(PY) -m demo $(if $(filter sip,$(DEMO)),--sip)

# Without root podman cannot be installed here: tests/compose then skips and says why.
compose-debs:
	@missing=""; for p in $(COMPOSE_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "not root: cannot install$$missing (compose test will skip)"; \
	  else echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	fi

$(VENV)/.podman-compose: $(VENV)/.installed
	$(PY) -m pip install -q '$(PODMAN_COMPOSE)'
	touch $@

# Builds the base and the images (layer cache: a warm run rebuilds nothing), brings the
# stack up, checks health, runs the XMPP<->SIP exchange, removes everything by name.
compose-test: compose-debs venv $(VENV)/.podman-compose
	$(PY) -m pytest -q -s -ra tests/compose

# Type-checked strictly (pyproject.toml [tool.mypy]): the sans-I/O protocol cores, the pure
# policy, the contracts between the gateway's parts and the parts built on them (imports
# are followed silently: their own strictness is their modules' matter).
MYPY_STRICT := gateway/xmpp gateway/sip gateway/policy \
               gateway/contracts.py gateway/backend.py gateway/store/protocols.py \
               gateway/router gateway/cluster gateway/assembly.py gateway/daemon.py \
               gateway/admin_web gateway/config/partner_changes.py \
               gateway/net/federation.py gateway/net/connector.py gateway/net/context.py \
               gateway/net/probe.py gateway/net/links.py gateway/net/inbound_streams.py \
               gateway/net/listeners.py gateway/net/outbound_sessions.py \
               gateway/net/outbound_links.py

test: debs compose-debs venv $(VENV)/.podman-compose
	$(PY) -m ruff check gateway testbed tests bench demo
	$(PY) -m mypy --strict --follow-imports=silent $(MYPY_STRICT)
	$(PY) -m pytest -q -ra

test-unit: venv
	$(PY) -m pytest -q tests/unit

lint: venv
	$(PY) -m ruff check gateway testbed tests bench demo

bench: debs venv
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
