# reliant-formula. The two commands a new user needs (README.md):
#   make converge   converge pillar.example in a container playing dom0, show the result
#   make test       lint + unit + functional + kitchen suites (what CI runs)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := podman debootstrap runc make
SUITES ?=
DESTDIR ?=
FORMULA_DIR := $(DESTDIR)/srv/formulas/base/reliant-formula
PILLAR_DIR := $(DESTDIR)/srv/pillar/base

.PHONY: deps converge test lint unit functional kitchen bench install clean-venv

# System packages (root, Debian): podman and debootstrap build and run the dom0 container.
deps:
	@missing=""; for tool in podman debootstrap runc; do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "[deps] installing $(APT_PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

# Python tools, all pinned in requirements.txt.
$(VENV)/.installed: requirements.txt
	@echo "[deps] creating $(VENV) from requirements.txt"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

converge: deps $(VENV)/.installed
	$(PY) tests/kitchen/run.py default --converge-only

test: lint unit functional kitchen

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	find salt -name '*.sls' -print0 | xargs -0 $(VENV)/bin/salt-lint

unit: $(VENV)/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

functional: $(VENV)/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/functional

kitchen: deps $(VENV)/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/kitchen/test_runner.py
	$(PY) tests/kitchen/run.py $(SUITES)

bench: deps $(VENV)/.installed
	$(PY) bench/shards.py
	$(PY) bench/highstate.py
	$(PY) bench/loadcheck.py

# Lay the formula out as a dom0 package does (FORMULA: formula-files, pillar-files).
install:
	install -d $(FORMULA_DIR) $(PILLAR_DIR)/reliant
	cp -r salt/reliant salt/reliant.top _modules _states _utils bin $(FORMULA_DIR)/
	install -m 0644 pillar/reliant.top $(PILLAR_DIR)/reliant.top
	test -e $(PILLAR_DIR)/reliant/init.sls || install -m 0644 pillar.example $(PILLAR_DIR)/reliant/init.sls
