"""FORMULA holds as Qubes' builder reads it, and the package's other files agree with it.

qubes-mgmt-salt's Makefile.install copies each of `formula-files` with `cp -r` from the
repository root into `formula_dir` and `pillar-files` with `cp -Tr` into `pillar_dir`;
Qubes' formula packages carry `os: Qubes` and a GPL-2 LICENSE.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
FORMULA = yaml.safe_load((ROOT / "FORMULA").read_text())
SPEC = (ROOT / "rpm_spec" / f"{FORMULA['package-name']}.spec.in").read_text()


def installed(path: str) -> str:
    """Where `cp -r PATH formula_dir/` puts a formula file."""
    return f"{FORMULA['formula_dir']}/{Path(path).name}"


def test_formula_has_what_the_builder_needs():
    assert {"package-name", "name", "version", "release", "summary", "description"} <= set(FORMULA)
    assert FORMULA["os"] == "Qubes" and FORMULA["os_family"] == "RedHat"
    assert re.fullmatch(r"\d+\.\d+\.\d+", FORMULA["version"])


def test_every_formula_and_pillar_file_exists_at_the_repository_root():
    for path in FORMULA["formula-files"].split():
        assert (ROOT / path).exists(), path
    assert (ROOT / FORMULA["pillar-files"]).is_dir()


def test_the_enabled_tops_are_where_topd_finds_them():
    # topd finds the top `reliant` as reliant.top at a root: the formula's directory for
    # the state top, pillar_dir (a pillar root) for the pillar top
    for name in FORMULA["state-tops"]["base"]["enable"]:
        assert installed(f"salt/{name}.top") in map(installed, FORMULA["formula-files"].split())
    for name in FORMULA["pillar-tops"]["base"]["enable"]:
        assert (ROOT / FORMULA["pillar-files"] / f"{name}.top").is_file()
        assert (ROOT / FORMULA["pillar-files"] / name / "init.sls").is_file()


def test_the_drop_in_registers_the_formula_directory():
    drop_in = yaml.safe_load((ROOT / "etc/salt/minion.d/formula-reliant.conf").read_text())
    assert drop_in == {"file_roots": {"base": [FORMULA["formula_dir"]]}}


def test_the_shipped_pillar_is_valid_and_takes_the_defaults():
    pillar = yaml.safe_load((ROOT / FORMULA["pillar-files"] / "reliant" / "init.sls").read_text())
    assert pillar == {"reliant": {}}


def test_the_spec_packages_what_formula_installs():
    assert re.search(rf"^Name: +{re.escape(FORMULA['package-name'])}$", SPEC, re.MULTILINE)
    assert re.search(r"^License: +GPL-2.0-or-later$", SPEC, re.MULTILINE)
    assert f"%dir {FORMULA['formula_dir']}\n" in SPEC
    assert f"{FORMULA['pillar_dir']}/reliant.top\n" in SPEC
    assert f"%config(noreplace) {FORMULA['pillar_dir']}/reliant/init.sls\n" in SPEC
    assert "%config(noreplace) /etc/salt/minion.d/formula-reliant.conf\n" in SPEC
    assert "make install DESTDIR=%{buildroot}\n" in SPEC


def test_the_spec_enables_the_tops_after_install_and_disables_them_on_erase():
    post = SPEC.split("%post\n", 1)[1].split("\n%", 1)[0]
    assert [line.split(" -l ")[0] for line in post.splitlines() if line.startswith("qubesctl")] == [
        "qubesctl saltutil.clear_cache", "qubesctl saltutil.sync_all refresh=true",
        "qubesctl top.enable reliant", "qubesctl top.enable reliant pillar=true"]
    preun = SPEC.split("%preun\n", 1)[1].split("\n%", 1)[0]
    assert 'if [ "$1" -eq 0 ]' in preun
    assert "qubesctl top.disable reliant " in preun and "qubesctl top.disable reliant pillar=true" in preun


def test_license_is_the_gpl_2():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE\n                       Version 2, June 1991")
