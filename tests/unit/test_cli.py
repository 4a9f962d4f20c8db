"""reliant-shard CLI: commands, configuration, exit codes, refusals while qubesd runs."""

import json
import subprocess
import sys

import pytest
from host_double import HostDouble
from reliant import cli, commands
from reliant.shards.files import init_shard, load_shard
from reliant.shards.records import qube_name
from repo_paths import ROOT
from shards_helpers import (
    SHARD_QUBES,
    dispvms_in_own_group,
    domains_by_name,
    load,
    split_scene,
    write_settings,
)


@pytest.fixture
def scene(tmp_path, monkeypatch):
    scene = split_scene(tmp_path)
    write_settings(scene, monkeypatch)
    return scene


def run_cli(*argv, host=None):
    return cli.main(list(argv), host=host or HostDouble())


def test_suture_then_dissect_through_the_cli(scene, capsys):
    assert run_cli("suture") == 0
    assert SHARD_QUBES["sflc_0_1"] <= domains_by_name(load(scene.merged)).keys()
    assert run_cli("dissect", "--final") == 0
    assert run_cli("status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(s["id"] for s in report["shards"]) == ["sflc_0_1", "sflc_0_2"]
    assert all(s["merged"] for s in report["shards"])


def test_flags_override_the_configuration(scene, tmp_path):
    other = tmp_path / "other.xml"
    assert run_cli("suture", "--out", str(other), "--roots", str(tmp_path / "none")) == 0
    assert not SHARD_QUBES["sflc_0_1"] & domains_by_name(load(other)).keys()


@pytest.mark.parametrize("argv", [["suture"], ["rename", "secret", "x"], ["review", "secret"],
                                  ["dissect", "--final"]])
def test_offline_commands_refuse_while_qubesd_runs(scene, capsys, argv):
    before = {p: p.read_bytes() for p in scene.tmp.rglob("*.xml")}
    assert run_cli(*argv, host=HostDouble(active=True)) == 1
    assert "qubesd is running" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in scene.tmp.rglob("*.xml")} == before


def test_dissect_while_qubesd_runs_is_allowed(scene):
    assert run_cli("suture") == 0
    assert run_cli("dissect", host=HostDouble(active=True)) == 0


def test_bad_usage_exits_2(scene, capsys):
    assert run_cli("suture", "--bogus") == 2
    assert run_cli("init", "/x", "--qid-range", "9-3") == 2
    assert run_cli() == 2
    assert "QID range" in capsys.readouterr().err


def test_bad_configuration_exits_2(scene, tmp_path, monkeypatch, capsys):
    config = tmp_path / "bad.json"
    config.write_text('{"roots": ["/x"], "colour": "red"}')
    monkeypatch.setenv("RELIANT_CONFIG", str(config))
    assert run_cli("status") == 2
    assert "unknown key 'colour'" in capsys.readouterr().err


def test_init_and_check(scene, tmp_path, capsys):
    assert run_cli("init", str(scene.root / "third")) == 0
    assert "qids 1000-1499" in capsys.readouterr().out
    assert run_cli("init", str(scene.root / "third")) == 1
    assert "already exists" in capsys.readouterr().err
    assert run_cli("check") == 1
    out, err = capsys.readouterr()
    assert "4 problem(s)" in out
    assert "warning: qube 'deep-mail' (reliant-shard-sflc_0_2): default_dispvm" in err
    dispvms_in_own_group(scene)
    assert run_cli("check") == 0
    init_shard(str(scene.root / "fourth"), qid_range=(16, 20))
    assert run_cli("check") == 1
    assert "overlaps" in capsys.readouterr().err


def test_detach_refuses_while_a_qube_of_the_shard_runs(scene, capsys):
    assert run_cli("suture") == 0
    host = HostDouble(active=True, running={"deep-mail", "work"})
    assert run_cli("detach", "sflc_0_2", host=host) == 1
    assert "deep-mail" in capsys.readouterr().err
    assert host.actions == []


def test_detach_and_attach_restart_qubesd_around_the_shard(scene):
    assert run_cli("suture") == 0
    assert run_cli("started") == 0  # qubesd runs on it

    def stop():  # what the qubesd unit does: dissect when it stops, suture when it starts
        assert run_cli("dissect", "--final") == 0

    def start():  # ... and `started` once qubesd is ready
        assert run_cli("suture") == 0
        assert run_cli("started") == 0

    host = HostDouble(active=True, running={"work"}, on_stop=stop, on_start=start)
    assert run_cli("detach", str(scene.shard_dir("sflc_0_2")), host=host) == 0
    assert host.actions == ["stop", "start"]
    merged = domains_by_name(load(scene.merged))
    assert not SHARD_QUBES["sflc_0_2"] & merged.keys()
    assert SHARD_QUBES["sflc_0_1"] <= merged.keys()
    assert run_cli("attach", host=host) == 0
    assert SHARD_QUBES["sflc_0_2"] <= domains_by_name(load(scene.merged)).keys()


def test_rename_and_review_offline(scene, capsys):
    assert run_cli("rename", "deep-notes", "notes2") == 0
    shard = load_shard(str(scene.shard_dir("sflc_0_2")))
    assert "notes2" in {qube_name(d) for d in shard.domains}
    assert run_cli("review", "notes2") == 1
    assert "nothing to review" in capsys.readouterr().err


def test_launcher_runs_from_the_repository(scene, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bin" / "reliant-shard"), "init",
                             str(tmp_path / "viaexe"), "--qid-range", "5000-5099"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert load_shard(str(tmp_path / "viaexe")).qid_range == (5000, 5099)


def test_audit_reports_a_trace_of_a_shard(scene, tmp_path, capsys):
    fs_root = tmp_path / "fsroot"
    (fs_root / "var/lib/qubes/appvms/secret").mkdir(parents=True)
    (fs_root / "var/lib/qubes/qubes.xml").write_bytes(scene.core.read_bytes())
    assert run_cli("audit", "--json", "--fs-root", str(fs_root), "--core",
               "/var/lib/qubes/qubes.xml") == 1
    findings = json.loads(capsys.readouterr().out)
    assert any(f["path"].endswith("appvms/secret") for f in findings), findings
    (fs_root / "var/lib/qubes/appvms/secret").rmdir()
    run_cli("audit", "--json", "--fs-root", str(fs_root), "--core", "/var/lib/qubes/qubes.xml")
    assert not any(f["path"].endswith("appvms/secret")
                   for f in json.loads(capsys.readouterr().out))


def test_the_real_host_refuses_when_it_cannot_ask_systemd(scene, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(scene.tmp))  # no systemctl, xl or qvm-ls here
    assert cli.main(["suture"]) == 1
    assert "cannot tell whether qubesd runs" in capsys.readouterr().err


def test_the_real_host_reads_xl_list(tmp_path, monkeypatch):
    xl = tmp_path / "xl"
    xl.write_text("#!/bin/sh\necho 'Name  ID Mem VCPUs State Time(s)'\n"
                  "echo 'Domain-0 0 4096 4 r----- 10.0'\necho 'secret 3 400 2 -b---- 1.0'\n")
    xl.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert commands.Host().running_qubes() == {"secret"}


def test_status_text_names_merged_detached_and_recovered(scene, capsys):
    assert run_cli("suture") == 0
    assert run_cli("started") == 0
    host = HostDouble(active=True, on_stop=lambda: run_cli("dissect", "--final"),
                    on_start=lambda: run_cli("suture") or run_cli("started"))
    assert run_cli("detach", "sflc_0_2", host=host) == 0
    capsys.readouterr()
    assert run_cli("status") == 0
    out = capsys.readouterr().out
    assert "shard sflc_0_1 at " in out and ": merged, qids 15-17" in out
    assert "shard sflc_0_2 at " in out and ": detached," in out
    assert run_cli("attach", "sflc_0_2", host=host) == 0
    capsys.readouterr()
    assert run_cli("status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["detached"] == [] and all(s["merged"] for s in report["shards"])
