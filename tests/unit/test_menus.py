"""Application menus of shard qubes: made after attach, removed at detach, as the desktop
user; a failure never fails attach (a warning naming the qube)."""

import os
import sys
from collections import namedtuple

import pytest
from adopt_scene import etc_dirs
from host_double import HostDouble
from reliant import cli, menus
from repo_paths import ROOT
from shards_helpers import SHARD_QUBES, domains_by_name, load, set_prop, split_scene, write_settings

DOUBLES = ROOT / "tests" / "doubles"


@pytest.fixture
def scene(tmp_path, monkeypatch):
    scene = split_scene(tmp_path)
    write_settings(scene, monkeypatch, **etc_dirs(tmp_path))
    fast = tmp_path / "bin"  # the double's python3 without a version manager's shim
    fast.mkdir()
    (fast / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", os.pathsep.join([str(fast), str(DOUBLES), os.environ["PATH"]]))
    monkeypatch.setenv("QVM_APPMENUS_DOUBLE_STORE", str(scene.merged))
    for name in [k for k in os.environ if k.startswith("XDG_")]:
        monkeypatch.delenv(name)
    return scene


def with_menus(home):
    return {name for group in SHARD_QUBES.values() for name in group
            if menus.menu_paths(str(home), name)}


def test_attach_makes_the_menus_of_newly_merged_qubes_and_detach_removes_them(
        scene, tmp_path, capsys):
    home = tmp_path / "home"
    host = HostDouble(unit=True, home=home)
    assert cli.main(["attach"], host=host) == 0
    assert with_menus(home) == SHARD_QUBES["sflc_0_1"] | SHARD_QUBES["sflc_0_2"]
    assert menus.menu_paths(str(home), "secret-vpn") == [str(home / p) for p in (
        ".config/menus/applications-merged/user-qubes-vm-directory_secret_dvpn.menu",
        ".local/share/applications/org.qubes-os.qubes-vm-settings._secret_dvpn.desktop",
        ".local/share/desktop-directories/qubes-vm-directory_secret_dvpn.directory",
        ".local/share/qubes-appmenus/secret-vpn")]
    assert not menus.menu_paths(str(home), "work")  # core qubes: Qubes made theirs

    assert cli.main(["detach", "sflc_0_2"], host=host) == 0
    assert with_menus(home) == SHARD_QUBES["sflc_0_1"]
    assert not list((home / ".local/share/applications").glob("*deep*"))
    # attach again: only the shard merged by it gets menus made (a marker shows which)
    marker = home / ".local/share/qubes-appmenus/secret/apps/marker"
    marker.write_text("")
    assert cli.main(["attach"], host=host) == 0
    assert with_menus(home) == SHARD_QUBES["sflc_0_1"] | SHARD_QUBES["sflc_0_2"]
    assert marker.exists()
    assert "warning" not in capsys.readouterr().err


def test_a_menu_failure_is_a_warning_naming_the_qube(scene, tmp_path, capsys):
    home = tmp_path / "home"
    home.write_text("not a directory")
    assert cli.main(["attach", "sflc_0_2"], host=HostDouble(unit=True, home=home)) == 0
    err = capsys.readouterr().err
    for name in SHARD_QUBES["sflc_0_2"]:
        assert f"warning: menus of {name} not made" in err
    assert SHARD_QUBES["sflc_0_2"] <= domains_by_name(load(scene.merged)).keys()


def test_menus_only_for_qubes_whose_gui_runs_in_dom0(scene):
    assert not scene.suture(policy_dir=None).errors
    merged = load(scene.merged)
    domains = domains_by_name(merged)
    set_prop(domains["secret"], "guivm", "sys-gui")
    set_prop(domains["secret-dvm"], "guivm", "")
    assert menus.merged_qubes(merged, ["sflc_0_1"], gui_in_dom0=True) == ["secret-vpn"]
    assert menus.merged_qubes(merged, ["sflc_0_1"]) == sorted(SHARD_QUBES["sflc_0_1"])
    set_prop(merged, "default_guivm", "")
    assert menus.merged_qubes(merged, ["sflc_0_1"], gui_in_dom0=True) == []


def test_leftover_menu_files_are_named_after_detach(scene, tmp_path, capsys):
    home = tmp_path / "home"
    host = HostDouble(unit=True, home=home)
    assert cli.main(["attach"], host=host) == 0
    stray = home / ".local/share/applications/org.qubes-os.vm._deep_dmail.old.desktop"
    stray.write_text("")  # an entry qvm-appmenus no longer knows of
    assert cli.main(["detach"], host=host) == 0
    err = capsys.readouterr().err
    assert f"menus of deep-mail not removed; remove by hand: {stray}" in err
    assert with_menus(home) == {"deep-mail"}


Group = namedtuple("Group", "gr_mem")
User = namedtuple("User", "pw_name pw_uid pw_dir")


@pytest.mark.parametrize(("euid", "members", "expected"), [
    (0, ["alice"], menus.Desktop("alice", "/home/alice")),
    (1000, ["alice"], menus.Desktop(None, "/home/alice")),
    (1001, ["alice"], None),
    (0, [], None),
    (0, None, None),
])
def test_the_desktop_user_is_the_first_member_of_group_qubes(monkeypatch, euid, members,
                                                             expected):
    def getgrnam(name):
        if members is None or name != "qubes":
            raise KeyError(name)
        return Group(members)
    monkeypatch.setattr(menus.grp, "getgrnam", getgrnam)
    monkeypatch.setattr(menus.pwd, "getpwnam", lambda name: User(name, 1000, f"/home/{name}"))
    monkeypatch.setattr(menus.os, "geteuid", lambda: euid)
    assert menus.Desktop.find() == expected


def test_root_runs_qvm_appmenus_as_the_desktop_user(monkeypatch):
    calls = []

    def run(argv, **kwargs):
        calls.append((argv, kwargs["env"]))
        return namedtuple("Done", "returncode stderr")(1, "boom")
    monkeypatch.setattr(menus.subprocess, "run", run)
    warnings = menus.make_menus(menus.Desktop("alice", "/home/alice"), ["secret"])
    assert calls == [(["runuser", "-u", "alice", "--", "env", "DISPLAY=:0", "qvm-appmenus",
                       "--update", "--force", "--quiet", "--", "secret"], None)]
    assert warnings == ["menus of secret not made: boom"]
    assert menus.make_menus(None, ["secret"]) == [
        "no desktop user (group qubes has no member this command can act as): menus of "
        "secret not made"]


def test_escape_follows_qvm_appmenus():
    assert menus.escape("my_vm-2.x") == "_my_uvm_d2_px"
