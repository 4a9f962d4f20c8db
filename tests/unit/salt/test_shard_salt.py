"""reliant_shard execution and state modules under Salt's loader mocks (the real
salt-call runs are in tests/functional/test_shards_sls.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import salt_modules
from reliant import commands, declare
from reliant.shards.files import init_shard, load_shard
from reliant.vocab import ShardError
from repo_paths import FIXTURES
from salt.exceptions import CommandExecutionError

module = salt_modules.load("modules", "reliant_shard")
state = salt_modules.load("states", "reliant_shard")


@pytest.fixture
def configure_loader_modules(tmp_path):
    marker = tmp_path / "qubes-release"
    marker.write_text("Qubes release 4.3\n")
    opts = {"test": False, "reliant_dom0_marker": str(marker)}
    return {module: {"__opts__": opts},
            state: {"__opts__": opts, "__salt__": {"reliant_shard.settings": module.settings}}}


@pytest.fixture
def dom0(tmp_path, monkeypatch) -> dict:
    """Core store, one empty shard (qids 1000-1499), a config naming them, qubesd stopped."""
    core = tmp_path / "qubes.xml"
    core.write_bytes((FIXTURES / "qubes-r4.3-core.xml").read_bytes())
    root = tmp_path / "shufflecake"
    init_shard(str(root / "sflc_0_1"), qid_range=(1000, 1499))
    config = tmp_path / "reliant.json"
    config.write_text(json.dumps({
        "core": str(core), "merged": str(tmp_path / "run" / "qubes.xml"),
        "roots": [str(root)], "policy_dir": "", "qubes_dir": str(tmp_path / "varlibqubes"),
        "systemd_dir": str(tmp_path / "systemd"), "libvirt_dir": str(tmp_path / "libxl")}))
    (tmp_path / "varlibqubes").mkdir()
    monkeypatch.setenv("RELIANT_CONFIG", str(config))
    monkeypatch.setattr(commands.Host, "qubesd_active", lambda self: False)
    monkeypatch.setattr(commands.Host, "volatile_status", lambda self, settings: {
        "mode": "volatile", "root_fstype": "overlay", "problems": []})
    return {"core": core, "root": root, "config": str(config), "tmp": tmp_path}


def write_declaration(directory: Path, **content) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / declare.DECLARATION_FILE).write_text(json.dumps(content))


def test_virtual(tmp_path):
    assert module.__virtual__() == "reliant_shard"
    assert state.__virtual__() == "reliant_shard"
    module.__opts__["reliant_dom0_marker"] = str(tmp_path / "absent")
    assert module.__virtual__() == (False, f"reliant_shard: not a Qubes dom0 (no {tmp_path}/absent)")
    state.__salt__.clear()
    assert state.__virtual__()[0] is False


# --- execution module --------------------------------------------------------------------
def test_settings_config_then_overrides(dom0):
    found = module.settings(roots="/a,/b", max_depth=1)
    assert (found["roots"], found["max_depth"], found["core"]) == (
        ["/a", "/b"], 1, str(dom0["core"]))
    assert module.settings(dom0["config"], core="/elsewhere")["core"] == "/elsewhere"
    Path(dom0["config"]).write_text('{"rootz": []}')
    with pytest.raises(CommandExecutionError, match="unknown key 'rootz'"):
        module.settings()


def test_suture_dissect_status_check(dom0):
    result = module.suture()
    assert result["written"] == [str(dom0["tmp"] / "run" / "qubes.xml")]
    assert result["shards"] == ["sflc_0_1"] and result["errors"] == 0
    assert module.dissect()["written"] == []
    status = module.status()
    assert [shard["id"] for shard in status["shards"]] == ["sflc_0_1"]
    assert status["shards"][0]["merged"] is True
    assert module.check()["ok"] is True


@pytest.mark.parametrize("call", [
    lambda: module.suture(), lambda: module.dissect(final=True),
    lambda: module.rename("a", "b"), lambda: module.review("a")])
def test_offline_operations_refuse_while_qubesd_runs(dom0, monkeypatch, call):
    monkeypatch.setattr(commands.Host, "qubesd_active", lambda self: True)
    with pytest.raises(CommandExecutionError, match="qubesd is running"):
        call()
    assert not (dom0["tmp"] / "run").exists()


def test_refusals_carry_the_library_message(dom0):
    with pytest.raises(CommandExecutionError, match="already exists"):
        module.init(str(dom0["root"] / "sflc_0_1"), qid_range="2000-2499")
    with pytest.raises(CommandExecutionError, match="no qube named 'ghost'"):
        module.review("ghost")
    with pytest.raises(CommandExecutionError, match="no such file"):
        module.dissect()  # no merged store yet


def test_init_and_declarations(dom0):
    made = module.init(str(dom0["root"] / "sflc_0_2"), qid_range="1500-1999",
                       depends_on=str(dom0["root"] / "sflc_0_1"))
    assert made == {"id": "sflc_0_2", "path": str(dom0["root"] / "sflc_0_2"),
                    "qid_range": "1500-1999", "depends_on": ["sflc_0_1"]}
    write_declaration(dom0["root"] / "sflc_0_3", qid_range="1200-2200")
    write_declaration(dom0["root"] / "sflc_0_1", qid_range="1000-1199")
    report = module.declarations()
    assert [entry.get("action") for entry in report] == ["update", None]
    assert report[0]["old"] == {"qid_range": "1000-1499"}
    assert "overlaps 1500-1999 of shard sflc_0_2" in report[1]["error"]
    assert load_shard(str(dom0["root"] / "sflc_0_1")).qid_range == (1000, 1499)


# --- reliant_shard.present ------------------------------------------------------------------
def test_present_predicts_exactly_then_converges_then_does_nothing(dom0):
    directory = str(dom0["root"] / "sflc_0_2")
    state.__opts__["test"] = True
    predicted = state.present(directory, "1500-1999", ["../sflc_0_1"], "second")
    assert predicted["result"] is None
    assert predicted["changes"] == {"old": {}, "new": {
        "id": "second", "qid_range": "1500-1999", "depends_on": ["sflc_0_1"]}}
    assert not Path(directory).exists()
    state.__opts__["test"] = False
    done = state.present(directory, "1500-1999", ["../sflc_0_1"], "second")
    assert (done["result"], done["changes"]) == (True, predicted["changes"])
    again = state.present(directory, "1500-1999", ["../sflc_0_1"])
    assert (again["result"], again["changes"]) == (True, {})
    wider = state.present(directory, "1500-2999", ["../sflc_0_1"])
    assert wider["changes"] == {"old": {"qid_range": "1500-1999"},
                                "new": {"qid_range": "1500-2999"}}


def test_present_refusal_changes_nothing(dom0):
    before = (dom0["root"] / "sflc_0_1" / "domains.xml").read_bytes()
    ret = state.present(str(dom0["root"] / "sflc_0_1"), "10-20")
    assert ret["result"] is False and "holds qid" in ret["comment"]
    assert ret["changes"] == {}
    assert (dom0["root"] / "sflc_0_1" / "domains.xml").read_bytes() == before


def test_present_verifies_what_it_wrote(dom0, monkeypatch):
    monkeypatch.setattr(declare, "apply", lambda change, roots, depth, lock: None)
    ret = state.present(str(dom0["root"] / "sflc_0_1"), "1000-1999")
    assert ret["result"] is False
    assert "updated, but" in ret["comment"] and "after converging" in ret["comment"]
    assert ret["changes"] == {"old": {"qid_range": "1000-1499"},
                              "new": {"qid_range": "1000-1999"}}


def test_present_failed_write_reports_no_change(dom0, monkeypatch):
    def apply(change, roots, depth, lock):
        raise ShardError("disk full")

    monkeypatch.setattr(declare, "apply", apply)
    ret = state.present(str(dom0["root"] / "sflc_0_1"), "1000-1999")
    assert (ret["result"], ret["changes"], ret["comment"]) == (False, {}, "disk full")


# --- reliant_shard.declared -----------------------------------------------------------------
def test_declared_counts_and_names_nothing(dom0):
    write_declaration(dom0["root"] / "sflc_0_2", qid_range="1500-1999", depends_on=["../sflc_0_1"])
    write_declaration(dom0["root"] / "sflc_0_1", qid_range="1000-1299")
    roots = str(dom0["root"])
    state.__opts__["test"] = True
    predicted = state.declared(roots)
    assert (predicted["result"], predicted["changes"]) == (
        None, {"shards": {"created": 1, "updated": 1}})
    assert not (dom0["root"] / "sflc_0_2" / "domains.xml").exists()
    state.__opts__["test"] = False
    done = state.declared(roots)
    assert (done["result"], done["changes"]) == (True, predicted["changes"])
    assert "sflc" not in json.dumps(done)
    assert state.declared(roots) == {
        "name": roots, "changes": {}, "result": True,
        "comment": "Every shard declared on the open volumes is as declared"}


def test_declared_converges_the_good_and_fails_on_the_bad(dom0, monkeypatch):
    write_declaration(dom0["root"] / "sflc_0_2", qid_range="1500-1999")
    write_declaration(dom0["root"] / "sflc_0_3", qid_range="2000-2499")
    (dom0["root"] / "sflc_0_4").mkdir()
    (dom0["root"] / "sflc_0_4" / declare.DECLARATION_FILE).write_text("{")
    real_apply = declare.apply

    def apply(change, roots, depth, lock):
        if change.declaration.path.endswith("sflc_0_3"):
            raise ShardError("disk full")
        real_apply(change, roots, depth, lock)

    monkeypatch.setattr(declare, "apply", apply)
    ret = state.declared(str(dom0["root"]))
    assert ret["result"] is False
    assert ret["changes"] == {"shards": {"created": 1}}
    assert ret["comment"].startswith("2 declaration(s) refused")
    assert "sflc" not in json.dumps(ret) and "disk full" not in ret["comment"]
    assert (dom0["root"] / "sflc_0_2" / "domains.xml").exists()
    assert not (dom0["root"] / "sflc_0_3" / "domains.xml").exists()
