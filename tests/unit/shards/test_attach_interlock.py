"""reliant-shard off the volatile root (refused, or allowed and warned about), and attach ->
a shard qube with autostart -> detach leaving no file under etc/ or var/ that names it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from host_double import HostDouble
from reliant import cli
from reliant.shards.files import SHARD_FILE
from reliant.shards.traces import UNIT_TEMPLATE, Libvirt
from shards_helpers import SHARD_QUBES, domains_by_name, load, split_scene
from test_traces import set_autostart

TITLE = "Qubes, volatile dom0 (forgets every change at shutdown)"
SHARD_NAMES = SHARD_QUBES["sflc_0_1"] | SHARD_QUBES["sflc_0_2"]


@pytest.fixture
def dom0(tmp_path: Path, monkeypatch):
    """A dom0 whose /etc and /var are in `fs`: core store, qubes dir, systemd and libvirt
    directories; shards open under `shufflecake`, qubesd running on the merged store."""
    scene = split_scene(tmp_path)
    fs = tmp_path / "fs"
    (fs / "etc/libvirt/libxl").mkdir(parents=True)
    (fs / "var/lib").mkdir(parents=True)
    scene.qubes_dir.rename(fs / "var/lib/qubes")
    core = fs / "var/lib/qubes/qubes.xml"
    scene.core.rename(core)
    config = tmp_path / "reliant.json"
    settings = {"core": str(core), "merged": str(scene.merged), "roots": scene.roots,
                "qubes_dir": str(fs / "var/lib/qubes"), "policy_dir": None,
                "systemd_dir": str(fs / "etc/systemd/system"),
                "libvirt_dir": str(fs / "etc/libvirt/libxl")}
    config.write_text(json.dumps(settings))
    monkeypatch.setenv("RELIANT_CONFIG", str(config))
    monkeypatch.setattr(Libvirt, "running", lambda self: False)  # never the host's libvirtd
    scene.fs, scene.config, scene.settings = fs, config, settings
    return scene


def configure(dom0, **changes) -> None:
    dom0.config.write_text(json.dumps({**dom0.settings, **changes}))


def merged_names(dom0) -> set[str]:
    return set(domains_by_name(load(dom0.merged)))


def test_attach_is_refused_off_the_volatile_root_naming_the_boot_entry(dom0, capsys):
    host = HostDouble(True, unit=True, mode="maintenance")
    assert cli.main(["attach"], host=host) == 1
    err = capsys.readouterr().err
    assert err.startswith("reliant-shard: refused: dom0 does not run on the volatile root "
                          "(/ is ext4)")
    assert f"choose the boot entry '{TITLE}'" in err
    assert "reliant:shards:require_volatile: false" in err
    assert host.actions == []


def test_off_the_volatile_root_qubesd_starts_on_core_alone(dom0, capsys):
    host = HostDouble(True, unit=True, mode="maintenance")
    host.active = False
    assert cli.main(["suture"], host=host) == 0
    assert not merged_names(dom0) & SHARD_NAMES and "work" in merged_names(dom0)
    assert "is not merged (volatile: see above)" in capsys.readouterr().err
    assert cli.main(["status", "--json"], host=host) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "maintenance"
    assert not any(shard["merged"] for shard in report["shards"])
    assert any(p["message"].startswith("shards are not merged: dom0 does not run")
               for p in report["problems"])
    for shard in SHARD_QUBES:  # with no shard visible, suture is as before
        os.rename(dom0.shard_dir(shard), dom0.tmp / f"closed-{shard}")
    assert cli.main(["suture"], host=host) == 0
    assert "error" not in capsys.readouterr().err


def test_require_volatile_false_merges_and_warns(dom0, capsys):
    configure(dom0, require_volatile=False, volatile_title="Qubes RAM")
    host = HostDouble(True, unit=True, mode="maintenance")
    assert cli.main(["attach"], host=host) == 0
    assert host.actions == ["stop", "start"]
    assert merged_names(dom0) >= SHARD_NAMES
    warning = ("dom0 does not run on the volatile root (/ is ext4) and "
               "reliant:shards:require_volatile is false: qubesd writes the names of merged "
               "shards' qubes to the disk; boot the entry 'Qubes RAM' to keep them in RAM")
    assert f"reliant-shard: warning: {warning}" in capsys.readouterr().err
    assert cli.main(["status"], host=host) == 0
    assert f"warning: {warning}" in capsys.readouterr().out
    cli.main(["audit", "--fs-root", str(dom0.fs)], host=host)
    assert f"reliant-shard: warning: {warning}" in capsys.readouterr().err
    configure(dom0, require_volatile="no")
    assert cli.main(["status"], host=host) == 2


def test_attach_says_when_the_ram_layer_is_nearly_full(dom0, capsys):
    full = "the overlay's RAM layer is 93.0% full (950 of 1021 MiB; ...)"
    host = HostDouble(True, unit=True, problems=(full,))
    assert cli.main(["attach"], host=host) == 0
    assert f"reliant-shard: warning: {full}" in capsys.readouterr().err
    assert cli.main(["status", "--json"], host=host) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["mode"], report["problems"][-1]["message"]) == ("volatile", full)


def names_under(top: Path, names: set[str]) -> list[str]:
    """Paths under `top` whose name or content names one of `names`."""
    found = []
    for path in [top, *top.rglob("*")]:
        text = path.name + (path.read_text(errors="replace") if path.is_file()
                            and not path.is_symlink() else "")
        if path.is_symlink():
            text += os.readlink(path)
        if any(name in text for name in names):
            found.append(str(path.relative_to(top)))
    return found


def test_autostart_and_libvirt_travel_with_the_shard(dom0, capsys):
    host = HostDouble(True, unit=True)
    host.active = False  # qubesd stopped: its store is the files, autostart set in one
    set_autostart(dom0.shard_dir("sflc_0_1") / SHARD_FILE, "secret-vpn")
    assert cli.main(["attach"], host=host) == 0
    link = dom0.fs / "etc/systemd/system/multi-user.target.wants/qubes-vm@secret-vpn.service"
    assert os.readlink(link) == UNIT_TEMPLATE
    # qubesd starts the qube: libvirt writes its definition (qubesvm.py start, defineXML)
    (dom0.fs / "etc/libvirt/libxl/secret-vpn.xml").write_text("<domain type='xen'/>\n")
    assert cli.main(["detach"], host=host) == 0
    assert names_under(dom0.fs / "etc", SHARD_NAMES) == []
    assert names_under(dom0.fs / "var", SHARD_NAMES) == []
    capsys.readouterr()
    cli.main(["audit", "--json", "--fs-root", str(dom0.fs),
              "--core", "/var/lib/qubes/qubes.xml"], host=host)
    findings = json.loads(capsys.readouterr().out)
    # the fixture's shard qubes keep their root volume in core's vm-pool: no file names them
    assert findings and all(f["reason"].endswith("writes into core pool 'vm-pool'")
                            for f in findings), findings
    assert cli.main(["attach"], host=host) == 0
    assert os.readlink(link) == UNIT_TEMPLATE
    assert merged_names(dom0) >= SHARD_NAMES
