"""Every OSError becomes a message naming its path, never a traceback: through the
reliant-shard CLI and the Salt execution module, for a path that cannot be made and
for a file that cannot be read (EIO injected into the reads of dom0 directories)."""

from __future__ import annotations

import errno
import os

import pytest
import salt_modules
from host_double import HostDouble
from reliant import cli, commands, store
from salt.exceptions import CommandExecutionError
from shards_helpers import SHARD_QUBES, domains_by_name, load, split_scene, write_settings

module = salt_modules.load("modules", "reliant_shard")


@pytest.fixture
def configure_loader_modules(tmp_path):
    marker = tmp_path / "qubes-release"
    marker.write_text("Qubes release 4.3\n")
    return {module: {"__opts__": {"test": False, "reliant_dom0_marker": str(marker)}}}


@pytest.fixture
def scene(tmp_path, monkeypatch):
    scene = split_scene(tmp_path)
    write_config(scene, tmp_path, monkeypatch)
    return scene


def write_config(scene, tmp_path, monkeypatch, **changes) -> None:
    write_settings(scene, monkeypatch, policy_dir="", **changes)
    # the Salt module's own Host: qubesd stopped, the volatile root (as HostDouble())
    monkeypatch.setattr(commands.Host, "qubesd_active", lambda self: False)
    monkeypatch.setattr(commands.Host, "volatile_status",
                        lambda self, settings: HostDouble().volatile_status(settings))


def failing_reads(monkeypatch, inside: str) -> None:
    """Reads of files under `inside` fail with EIO, as on a broken disk (os.pread names
    no file: the library must)."""
    real_open, real_pread = store.open_regular, os.pread
    broken: set[int] = set()

    def open_regular(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if str(path).startswith(inside):
            broken.add(fd)
        return fd

    def pread(fd, *args):
        if fd in broken:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, *args)

    monkeypatch.setattr(store, "open_regular", open_regular)
    monkeypatch.setattr(os, "pread", pread)


def test_a_path_that_cannot_be_made_is_named(scene, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory must go")
    write_config(scene, tmp_path, monkeypatch, merged=str(blocker / "run" / "qubes.xml"))
    for argv in (["suture"], ["dissect"]):
        assert cli.main(argv, host=HostDouble()) == 1
        err = capsys.readouterr().err
        assert str(blocker) in err and "Traceback" not in err, (argv, err)
    with pytest.raises(CommandExecutionError, match=str(blocker)):
        module.suture()


def test_an_unreadable_saved_directory_leaves_its_shard_out(scene, monkeypatch, capsys):
    saved = scene.shard_dir("sflc_0_1") / "dom0" / "appvms" / "secret"
    saved.mkdir(parents=True)
    (saved / "firewall.xml").write_text("<secret/>")
    failing_reads(monkeypatch, str(saved))
    assert cli.main(["suture"], host=HostDouble()) == 0
    err = capsys.readouterr().err
    assert f"shard sflc_0_1 ({scene.shard_dir('sflc_0_1')}): its dom0 directories cannot be " \
           f"copied: {saved / 'firewall.xml'}: Input/output error; not merged" in err
    names = set(domains_by_name(load(scene.merged)))
    assert SHARD_QUBES["sflc_0_2"] <= names and not SHARD_QUBES["sflc_0_1"] & names
    assert not (scene.qubes_dir / "appvms" / "secret").exists()  # nothing half-copied stays
    assert os.listdir(scene.qubes_dir / "appvms") == []


def test_an_unreadable_dom0_directory_at_dissect_costs_only_its_shard(scene, monkeypatch,
                                                                      capsys):
    assert cli.main(["suture"], host=HostDouble()) == 0
    live = scene.qubes_dir / "appvms" / "secret"
    live.mkdir(parents=True)
    (live / "firewall.xml").write_text("<secret/>")
    merged = load(scene.merged)
    domains_by_name(merged)["work"].find("properties/property[@name='label']").text = "green"
    scene.merged.write_bytes(store.serialize(merged))
    failing_reads(monkeypatch, str(live))
    assert cli.main(["dissect", "--final"], host=HostDouble()) == 1
    err = capsys.readouterr().err
    assert f"{live / 'firewall.xml'}: Input/output error" in err and "Traceback" not in err
    assert "shard sflc_0_1" in err
    assert b'<property name="label">green</property>' in scene.core.read_bytes()
    assert (live / "firewall.xml").read_text() == "<secret/>"  # kept: not saved
    with pytest.raises(CommandExecutionError, match="Input/output error"):
        module.dissect(final=True)
