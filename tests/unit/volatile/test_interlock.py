"""The interlock: volatile mode is / an overlay plus systemd-volatile-root's link; shards
may be merged only then, unless require_volatile is false; the RAM layer's fill warns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from reliant.volatile import interlock
from reliant.volatile.running import status
from reliant.volatile.settings import Settings, VolatileError

OVERLAY = ("30 1 0:31 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/sysroot,"
           "upperdir=/run/systemd/overlay-sysroot/upper\n")
EXT4 = "22 1 253:0 / / rw - ext4 /dev/mapper/qubes_dom0-root rw\n"
TITLE = "Qubes, volatile dom0 (forgets every change at shutdown)"


def statvfs_double(blocks=1000, free=750, files=1000, ffree=900):
    """os.statvfs of an overlay: its upper layer's figures (fs/overlayfs ovl_statfs)."""
    def statvfs(path: str) -> os.statvfs_result:
        assert path == "/"
        return os.statvfs_result((4096, 4096, blocks, free, free, files, ffree, ffree, 0, 255))
    return statvfs


@pytest.fixture
def proc(tmp_path: Path):
    """A /proc and /run in `tmp_path`; returns a function that sets them up."""
    settings = Settings(cmdline=str(tmp_path / "cmdline"), mountinfo=str(tmp_path / "mountinfo"),
                        swaps=str(tmp_path / "swaps"),
                        volatile_root=str(tmp_path / "run/systemd/volatile-root"))

    def setup(cmdline: str, mountinfo: str, link: bool, **overrides) -> Settings:
        Path(settings.cmdline).write_text(cmdline + "\n")
        Path(settings.mountinfo).write_text(mountinfo)
        Path(settings.swaps).write_text("Filename Type Size Used Priority\n")
        if link:
            Path(settings.volatile_root).parent.mkdir(parents=True, exist_ok=True)
            Path(settings.volatile_root).symlink_to("/dev/dm-0")
        return Settings(**{**settings.__dict__, **overrides})
    return setup


@pytest.mark.parametrize(("cmdline", "mountinfo", "link", "mode"), [
    ("ro systemd.volatile=overlay", OVERLAY, True, "volatile"),
    ("ro", OVERLAY, True, "volatile"),  # what counts is what runs
    ("ro systemd.volatile=overlay", OVERLAY, False, "volatile-failed"),
    ("ro systemd.volatile=overlay", EXT4, False, "volatile-failed"),
    ("ro", OVERLAY, False, "maintenance"),  # e.g. a container's overlay root
    ("ro", EXT4, False, "maintenance"),
])
def test_volatile_means_an_overlay_root_and_the_volatile_root_link(proc, cmdline, mountinfo,
                                                                    link, mode):
    settings = proc(cmdline, mountinfo, link)
    assert status(settings, statvfs_double())["mode"] == mode


def test_an_overlay_without_the_link_is_named_as_the_failure(proc):
    settings = proc("ro systemd.volatile=overlay", OVERLAY, link=False)
    assert status(settings)["problems"] == [
        "systemd.volatile=overlay is on the kernel command line and / is an overlay, but "
        f"{settings.volatile_root} is missing: this overlay was not laid by "
        "systemd-volatile-root over a disk, so what it writes through cannot be told"]


@pytest.mark.parametrize(("statvfs", "percent"), [
    (statvfs_double(free=750), 25.0),
    (statvfs_double(free=50), 95.0),  # bytes nearly full
    (statvfs_double(free=750, ffree=30), 97.0),  # inodes (nr_inodes=1m) nearly full
])
def test_upper_layer_use_is_the_fuller_of_bytes_and_inodes(proc, statvfs, percent):
    result = status(proc("ro", OVERLAY, link=True), statvfs)
    assert result["upper_used_percent"] == percent
    assert result["upper_size_bytes"] == 1000 * 4096
    assert (len(result["problems"]) == 1) == (percent >= 90)


def test_a_nearly_full_upper_layer_warns_at_the_threshold(proc):
    settings = proc("ro", OVERLAY, link=True, upper_warn_percent=95)
    assert status(settings, statvfs_double(free=60))["problems"] == []  # 94%
    (warning,) = status(settings, statvfs_double(free=50))["problems"]  # 95%
    assert warning.startswith("the overlay's RAM layer is 95.0% full (3 of 3 MiB; 100 of "
                              "1000 inodes): when it is full every write to / fails")
    assert "reliant:volatile:upper_warn_percent = 95" in warning


def test_on_the_volatile_root_shards_may_be_merged(proc):
    running = status(proc("ro", OVERLAY, link=True), statvfs_double(free=50))
    check = interlock.check_root(running, True, Settings())
    assert (check.mode, check.refusal) == ("volatile", None)
    assert check.warnings == tuple(running["problems"])  # the upper layer's fill


@pytest.mark.parametrize(("mountinfo", "where"), [
    (EXT4, "/ is ext4"), (OVERLAY, "/ is overlay without {link}")])
def test_off_the_volatile_root_shards_are_refused_naming_the_boot_entry(proc, mountinfo, where):
    settings = proc("ro", mountinfo, link=False)
    check = interlock.check_root(status(settings), True, settings)
    assert check.mode == "maintenance"
    assert check.refusal == (
        f"dom0 does not run on the volatile root ({where.format(link=settings.volatile_root)}): "
        "qubesd would write the names of the shards' qubes to the disk (their directories, "
        f"logs and libvirt definitions). Reboot and choose the boot entry '{TITLE}'; to merge "
        "shards on this root anyway, set reliant:shards:require_volatile: false")
    assert [p.severity for p in check.problems()] == ["warning"]


def test_allowed_off_the_volatile_root_it_warns(proc):
    settings = proc("ro", EXT4, link=False, volatile_title="Qubes RAM")
    check = interlock.check_root(status(settings), False, settings)
    assert check.refusal is None
    assert check.warnings == (
        "dom0 does not run on the volatile root (/ is ext4) and "
        "reliant:shards:require_volatile is false: qubesd writes the names of merged shards' "
        "qubes to the disk; boot the entry 'Qubes RAM' to keep them in RAM",)
    assert [(p.kind, p.message) for p in check.problems()] == [("volatile", check.warnings[0])]


def test_volatile_settings_from_the_cli_configuration():
    assert interlock.volatile_settings({"core": "x"}) == Settings()
    chosen = interlock.volatile_settings({"volatile_title": "RAM", "upper_warn_percent": 80})
    assert (chosen.volatile_title, chosen.upper_warn_percent) == ("RAM", 80)
    for bad in ({"upper_warn_percent": 0}, {"upper_warn_percent": True},
                {"upper_warn_percent": "90"}, {"volatile_title": "a'b"}):
        with pytest.raises(VolatileError, match="reliant:volatile:"):
            interlock.volatile_settings(bad)
