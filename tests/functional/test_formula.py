"""The formula as Salt sees it: tops, rendering, pillar checks."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_show_top_lists_reliant_for_dom0(salt_minion):
    result = salt_minion.run("state.show_top", check=True)
    assert result.data == {"base": ["reliant"]}


def test_wrong_type_in_pillar_fails_naming_the_key(salt_minion):
    salt_minion.set_pillar({"shards": {"roots": "/run/shufflecake"}})
    result = salt_minion.run("state.highstate")
    assert result.returncode != 0
    failed = [ret for ret in result.states.values() if ret["result"] is False]
    assert failed[0]["__id__"] == "reliant-pillar"
    assert failed[0]["name"] == (
        "reliant pillar: reliant:shards:roots: expected a list, got str '/run/shufflecake'"
    )
    # no component is included while the pillar is wrong: nothing else runs
    assert len(result.states) == 1
    assert all(not ret["changes"] for ret in result.states.values())
    assert "Traceback" not in result.stderr


def test_unknown_pillar_key_fails_naming_the_key(salt_minion):
    salt_minion.set_pillar({"shards": {"enable": False}})
    result = salt_minion.run("state.highstate", "test=True")
    assert result.returncode != 0
    names = [ret["name"] for ret in result.states.values()]
    assert len(names) == 1 and "reliant:shards:enable: unknown key" in names[0]


def test_pillar_example_renders_every_sls(salt_minion):
    salt_minion.set_pillar(yaml.safe_load((ROOT / "pillar.example").read_text())["reliant"])
    names = []
    for sls in sorted(ROOT.glob("salt/reliant/**/*.sls")):
        name = ".".join(sls.relative_to(ROOT / "salt").with_suffix("").parts)
        names.append(name.removesuffix(".init"))
    result = salt_minion.run("state.show_sls", ",".join(names))
    assert result.returncode == 0, f"{result.data}\n{result.stderr}"
    rendered = {ret["__sls__"] for ret in result.states.values()}
    # reliant and reliant.clean only include the others
    assert set(names) - rendered == {"reliant", "reliant.clean"}
