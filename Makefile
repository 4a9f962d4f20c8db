# reliant-formula. The two commands a new user needs (README.md):
#   make converge   converge pillar.example in a container playing dom0, show the result
#   make test       lint + unit + functional (on each Salt of the matrix) + kitchen suites
#                   (what CI runs)
SHELL := /bin/bash
# The Salt that unit and functional tests run on: empty for the newest (requirements.txt,
# in .venv), or a line of SALT_MATRIX (requirements-salt$(SALT).txt, in .venv-salt$(SALT)),
# e.g. `make unit functional SALT=3006`.
SALT ?=
SALT_MATRIX := 3006
ifeq ($(SALT),)
VENV ?= .venv
REQUIREMENTS := requirements.txt
else
VENV := .venv-salt$(SALT)
REQUIREMENTS := requirements-salt$(SALT).txt
endif
PY := $(VENV)/bin/python
APT_PACKAGES := podman debootstrap runc make rpm cpio
SUITES ?=
DESTDIR ?=

# FORMULA says what is installed where, as Qubes' builder reads it (qubes-mgmt-salt
# Makefile.install): `make install`, the RPM and the kitchen suites all follow it.
formula = $(shell sed -n 's/^$(1): *//p' FORMULA)
FORMULA_FILES := $(call formula,formula-files)
PILLAR_FILES := $(call formula,pillar-files)
FORMULA_DIR := $(abspath $(DESTDIR)$(call formula,formula_dir))
PILLAR_DIR := $(abspath $(DESTDIR)$(call formula,pillar_dir))
PACKAGE := $(call formula,package-name)
VERSION := $(call formula,version)
RELEASE := $(call formula,release)
RPM_BUILD := build/rpm

.PHONY: deps converge test lint unit functional salt-matrix kitchen bench install rpm

# System packages (root, Debian): podman and debootstrap build and run the dom0 container;
# rpm (rpmbuild, rpm2cpio) and cpio build and unpack the package.
deps:
	@missing=""; for tool in podman debootstrap runc rpmbuild rpm2cpio cpio; do \
	  command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "[deps] installing $(APT_PACKAGES) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

# Python tools, all pinned in $(REQUIREMENTS).
$(VENV)/.installed: $(REQUIREMENTS)
	@echo "[deps] creating $(VENV) from $(REQUIREMENTS)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r $(REQUIREMENTS)
	touch $@

converge: deps $(VENV)/.installed
	$(PY) tests/kitchen/run.py default-dom0-r43 --converge-only

test: lint unit functional salt-matrix kitchen

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	find salt -name '*.sls' -print0 | xargs -0 $(VENV)/bin/salt-lint

unit: $(VENV)/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

functional: $(VENV)/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/functional

# Unit and functional tests again on each older Salt that dom0 may ship.
salt-matrix:
	@for salt in $(SALT_MATRIX); do \
	  echo "[salt-matrix] unit and functional tests on Salt $$salt"; \
	  $(MAKE) --no-print-directory unit functional SALT=$$salt || exit 1; \
	done

kitchen: deps $(VENV)/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/kitchen/test_runner.py
	$(PY) tests/kitchen/run.py $(SUITES)

bench: deps $(VENV)/.installed
	$(PY) bench/shards.py
	$(PY) bench/highstate.py
	$(PY) bench/loadcheck.py

# Install as Qubes' Makefile.install does with FORMULA: formula-files with `cp -r`,
# pillar-files with `cp -Tr` (a pillar .sls already there, your settings, is kept), and
# the minion.d drop-in that adds the formula's directory to file_roots (as
# qubes-mgmt-salt-dom0-virtual-machines installs its etc/). DESTDIR as usual.
install:
	install -d $(FORMULA_DIR) $(PILLAR_DIR)
	cp -r $(FORMULA_FILES) $(FORMULA_DIR)/
	cd $(PILLAR_FILES) && find . -type f | while read -r file; do \
	  if [[ $$file == *.sls && -e $(PILLAR_DIR)/$$file ]]; then continue; fi; \
	  install -D -m 0644 "$$file" "$(PILLAR_DIR)/$$file"; \
	done
	cp -Tr etc $(DESTDIR)/etc

# build/PACKAGE-VERSION-RELEASE.noarch.rpm from the files git knows (tracked and new,
# as they are in the work tree), with rpmbuild as Qubes' builder runs it.
rpm: deps
	rm -rf $(RPM_BUILD) && mkdir -p $(RPM_BUILD)/SOURCES $(RPM_BUILD)/SPECS
	git ls-files -z --cached --others --exclude-standard \
	  | tar --null -T - --transform 's,^,$(PACKAGE)-$(VERSION)/,' \
	        -czf $(RPM_BUILD)/SOURCES/$(PACKAGE)-$(VERSION).tar.gz
	sed -e 's/@VERSION@/$(VERSION)/' -e 's/@RELEASE@/$(RELEASE)/' -e 's/@CHANGELOG@//' \
	  rpm_spec/$(PACKAGE).spec.in > $(RPM_BUILD)/SPECS/$(PACKAGE).spec
	rpmbuild --quiet --nodeps --define '_topdir $(CURDIR)/$(RPM_BUILD)' \
	  -bb $(RPM_BUILD)/SPECS/$(PACKAGE).spec
	cp $(RPM_BUILD)/RPMS/noarch/$(PACKAGE)-$(VERSION)-$(RELEASE).noarch.rpm build/
	@echo "[rpm] build/$(PACKAGE)-$(VERSION)-$(RELEASE).noarch.rpm"
