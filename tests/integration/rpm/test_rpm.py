"""Kitchen suite `rpm`: the package as dom0 installs it. The runner unpacked the RPM that
`make rpm` built (RELIANT_RPM) into a dom0 whose Salt has qubes-mgmt-salt's own defaults
(file_roots base: /srv/salt only), ran its %post, enabled the tops and converged with the
pillar the package ships. Then: without the formula's minion.d drop-in Salt finds no
reliant state, and erasing the package (%preun, then its files) leaves no top behind.

The tests run in file order and share the container's state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "kitchen"))
import run  # noqa: E402

RPM = Path(os.environ["RELIANT_RPM"])
DROP_IN = "/etc/salt/minion.d/formula-reliant.conf"
FORMULA_DIR = "/srv/formulas/base/reliant-formula"
STATE_LINK = "/srv/salt/_tops/base/reliant.top"
PILLAR_LINK = "/srv/pillar/_tops/base/reliant.top"


def salt(host, *args: str):
    """salt-call --local with JSON output: (exit status, the `local` return)."""
    result = host.run(" ".join(["salt-call", "--local", "--out", "json", *args]))
    return result.rc, json.loads(result.stdout)["local"]


def payload() -> list[str]:
    return subprocess.run(["rpm", "-qlp", str(RPM)], check=True, capture_output=True,
                          text=True).stdout.split()


def test_every_file_of_the_package_is_installed(host):
    files = payload()
    assert {DROP_IN, f"{FORMULA_DIR}/reliant.top", "/srv/pillar/base/reliant/init.sls"} <= set(files)
    missing = [path for path in files
               if not path.startswith("/usr/share/doc/") and not host.file(path).exists]
    assert missing == []
    assert host.file(FORMULA_DIR).mode == 0o750


def test_the_drop_in_adds_the_formula_to_file_roots(host):
    _, roots = salt(host, "config.get", "file_roots")
    assert roots["base"] == ["/srv/salt", FORMULA_DIR]  # qubes' default, then the package's


def test_post_enabled_the_state_and_pillar_tops(host):
    assert host.file(STATE_LINK).linked_to == f"{FORMULA_DIR}/reliant.top"
    assert host.file(PILLAR_LINK).linked_to == "/srv/pillar/base/reliant.top"
    _, top = salt(host, "state.show_top")
    assert top == {"base": ["reliant"]}


def test_the_packaged_pillar_takes_every_default(host):
    template = "{{ pillar.reliant | json }}"
    _, rendered = salt(host, "slsutil.renderer", f"string='{template}'", "default_renderer=jinja")
    shipped = yaml.safe_load((ROOT / "pillar" / "reliant" / "init.sls").read_text())
    assert json.loads(rendered) == shipped["reliant"] == {}


def test_without_the_drop_in_salt_finds_no_reliant_state(host):
    host.check_output(f"mv {DROP_IN} /root/formula-reliant.conf")
    try:
        # the tops stay enabled, but no root holds the state they name
        rc, out = salt(host, "state.highstate")
        assert rc != 0
        assert out == ["No matching sls found for 'reliant' in env 'base'"]
        # and topd cannot enable the top again: no root holds reliant.top
        host.check_output("qubesctl top.disable reliant")
        rc, out = salt(host, "top.enable", "reliant")
        assert rc == 0 and out == {"error": "No valid top names provided: ['reliant']"}
        assert not host.file(STATE_LINK).exists
    finally:
        host.check_output(f"mv /root/formula-reliant.conf {DROP_IN}")
        host.check_output("qubesctl top.enable reliant")
    assert host.file(STATE_LINK).linked_to == f"{FORMULA_DIR}/reliant.top"


def test_erase_disables_the_tops_before_removing_the_files(host):
    preun = run.rpm_scriptlets(RPM)["preuninstall"]
    result = host.run(f"sh -s 0 <<'EOF'\n{preun}EOF")  # $1 = 0: erase
    assert result.rc == 0, result.stderr
    assert not host.file(STATE_LINK).exists and not host.file(PILLAR_LINK).exists
    for path in payload():
        host.check_output(f"rm -rf {path}")
    rc, out = salt(host, "state.highstate")
    assert rc != 0
    assert [ret["comment"] for ret in out.values()] == [
        "No Top file or master_tops data matches found. Please see master log for details."]
