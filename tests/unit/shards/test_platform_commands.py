"""reliant-shard on each Qubes release: on R4.2 (qrexec without /run/qubes/policy.d, qubesd
without prohibit-start) shards are not merged while isolation is enabled and `recover`
acts as `skip`, saying so; on R4.3 both work as designed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from host_double import HostDouble
from qubes_platforms import R42, R43, image_platform, minion_opts
from reliant import cli, commands, store
from reliant.shards.records import feature_value
from shards_helpers import SHARD_QUBES, domains_by_name, load, set_prop, split_scene

SHARD_NAMES = SHARD_QUBES["sflc_0_1"] | SHARD_QUBES["sflc_0_2"]
#: Host's own method (tests/conftest.py replaces it while each test runs)
READ_PLATFORM = commands.Host.qubes_platform
NO_RUNTIME_DIR = ("qubes-core-qrexec 4.2.25 has no runtime qrexec policy directory "
                  "/run/qubes/policy.d (it starts at qubes-core-qrexec 4.3.0)")
NO_PROHIBIT_START = ("missing_reference: recover acts as skip: qubes-core-dom0 4.2.39 has no "
                     "qube feature prohibit-start (it starts at qubes-core-dom0 4.3.19)")


@pytest.fixture
def dom0(tmp_path: Path, monkeypatch):
    """Core and two shards on disk, isolation enabled (a runtime policy directory)."""
    scene = split_scene(tmp_path / "dom0")
    scene.policy_dir = tmp_path / "run-policy.d"
    scene.config = tmp_path / "reliant.json"
    scene.settings = {"core": str(scene.core), "merged": str(scene.merged),
                      "roots": scene.roots, "qubes_dir": str(scene.qubes_dir),
                      "policy_dir": str(scene.policy_dir),
                      "systemd_dir": str(tmp_path / "systemd"),
                      "libvirt_dir": str(tmp_path / "libxl")}
    configure(scene)
    monkeypatch.setenv("RELIANT_CONFIG", str(scene.config))
    return scene


def configure(dom0, **changes) -> None:
    dom0.config.write_text(json.dumps({**dom0.settings, **changes}))


def merged_names(dom0) -> set[str]:
    return set(domains_by_name(load(dom0.merged)))


def remove_template_of_secret(dom0) -> None:
    """The template of the shard qube `secret` was removed while its shard was hidden (its
    root still names the template's volume, as qubesd left it)."""
    path = dom0.shard_dir("sflc_0_1") / "domains.xml"
    root = load(path)
    secret = domains_by_name(root)["secret"]
    set_prop(secret, "template", "gone-template")
    secret.find("volume-config/volume[@name='root']").set(
        "source", "qubes_dom0/vm-gone-template-root")
    path.write_bytes(store.serialize(root))


@pytest.mark.parametrize("release", ["4.2", "4.3"])
def test_the_host_reads_the_release_file_and_rpm(tmp_path, release):
    opts = minion_opts(tmp_path, release)
    host = commands.Host(release_file=opts["reliant_dom0_marker"], rpm=opts["reliant_rpm"])
    assert READ_PLATFORM(host) == image_platform(release)


def test_r42_attach_refuses_while_isolation_is_enabled(dom0, capsys):
    host = HostDouble(True, unit=True, facts=R42)
    assert cli.main(["attach"], host=host) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"reliant-shard: refused: {NO_RUNTIME_DIR}: the deny rules between "
                          "shards name them and may only go to /run/qubes/policy.d on tmpfs")
    assert "reliant:isolation:enabled: false" in err
    assert host.actions == [], "qubesd is not restarted"


def test_r42_qubesd_start_merges_core_alone_while_isolation_is_enabled(dom0, capsys):
    host = HostDouble(unit=True, facts=R42)
    assert cli.main(["suture"], host=host) == 0
    assert not merged_names(dom0) & SHARD_NAMES and "work" in merged_names(dom0)
    err = capsys.readouterr().err
    assert f"reliant-shard: error: {NO_RUNTIME_DIR}" in err
    assert "shard sflc_0_1 " in err and "is not merged (isolation: see above)" in err
    assert not dom0.policy_dir.exists(), "no runtime policy where qrexec reads none"
    assert cli.main(["status", "--json"], host=host) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["platform"]["release"] == "4.2"
    assert report["platform"]["facts"]["runtime_policy_dir"] is False
    assert {"severity": "warning", "kind": "isolation", "shard": None, "qube": None,
            "message": f"shards are not merged: {NO_RUNTIME_DIR}: the deny rules between "
                       "shards name them and may only go to /run/qubes/policy.d on tmpfs (a "
                       "persistent policy in /etc/qubes/policy.d would name the shards on "
                       "the disk), so shards are not merged while reliant:isolation is "
                       "enabled. Use Qubes R4.3, or set reliant:isolation:enabled: false to "
                       "merge shards without isolation"} in report["problems"]
    for shard in SHARD_QUBES:  # nothing to merge: nothing to refuse
        dom0.shard_dir(shard).rename(dom0.tmp / f"closed-{shard}")
    assert cli.main(["suture"], host=host) == 0
    assert "isolation" not in capsys.readouterr().err


def test_r42_without_isolation_merges_shards(dom0, capsys):
    configure(dom0, policy_dir="")
    host = HostDouble(True, unit=True, facts=R42)
    assert cli.main(["attach"], host=host) == 0
    assert host.actions == ["stop", "start"]
    assert merged_names(dom0) >= SHARD_NAMES
    assert "isolation" not in capsys.readouterr().err


def test_r43_attach_merges_shards_and_writes_the_runtime_policy(dom0, capsys):
    host = HostDouble(True, unit=True, facts=R43)
    assert cli.main(["attach"], host=host) == 0
    assert merged_names(dom0) >= SHARD_NAMES
    assert [p.name for p in dom0.policy_dir.iterdir()] == ["20-reliant-isolation.policy"]
    err = capsys.readouterr().err
    assert "error" not in err and "runtime qrexec policy" not in err


@pytest.mark.parametrize("command", [["suture"], ["check"]])
def test_r42_recover_acts_as_skip_and_says_so(dom0, capsys, command):
    configure(dom0, policy_dir="")
    remove_template_of_secret(dom0)
    cli.main(command, host=HostDouble(unit=True, facts=R42))
    err = capsys.readouterr().err
    assert f"reliant-shard: warning: {NO_PROHIBIT_START}" in err
    assert "qube secret of shard sflc_0_1 not merged: template 'gone-template' is not visible" \
        in err
    assert "recovered" not in err
    if command == ["suture"]:
        assert "secret" not in merged_names(dom0) and "secret-vpn" in merged_names(dom0)
        cli.main(["status"], host=HostDouble(unit=True, facts=R42))
        out = capsys.readouterr().out
        assert f"warning: {NO_PROHIBIT_START}" in out
        assert "platform: Qubes R4.2 (qubes-core-dom0 4.2.39, qubes-core-qrexec 4.2.25)" in out


def test_r43_recovers_with_prohibit_start(dom0, capsys):
    configure(dom0, policy_dir="")
    remove_template_of_secret(dom0)
    assert cli.main(["suture"], host=HostDouble(unit=True, facts=R43)) == 0
    assert "acts as skip" not in capsys.readouterr().err
    secret = domains_by_name(load(dom0.merged))["secret"]
    assert feature_value(secret, "prohibit-start").startswith("reliant: template")


def test_skip_chosen_by_the_user_needs_no_warning(dom0, capsys):
    configure(dom0, policy_dir="", missing_reference="skip")
    remove_template_of_secret(dom0)
    assert cli.main(["suture"], host=HostDouble(unit=True, facts=R42)) == 0
    err = capsys.readouterr().err
    assert "acts as skip" not in err and "qube secret of shard sflc_0_1 not merged" in err
