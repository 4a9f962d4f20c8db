"""Which mode dom0 runs in (volatile, maintenance, volatile-failed), from the kernel
command line, the mount table, systemd-volatile-root's link and the active swap, and
how full the overlay's RAM layer is."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from reliant import store
from reliant.volatile.settings import VOLATILE_REQUEST, Settings


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_point: str
    fstype: str
    source: str
    options: str


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a mountinfo table, in order."""
    mounts = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        left_fields, right_fields = left.split(), right.split()
        if len(left_fields) < 5 or len(right_fields) < 3:
            continue
        mounts.append(Mount(_unescape(left_fields[4]), right_fields[0],
                            _unescape(right_fields[1]), right_fields[2]))
    return mounts


def _percent(used: int, total: int) -> float:
    return round(100.0 * used / total, 1) if total > 0 else 0.0


def upper_usage(statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> dict[str, Any]:
    """How full the overlay's upper layer (RAM) is, in bytes and inodes.

    Read through `/`: overlayfs answers statfs with its upper layer's figures (Linux
    fs/overlayfs/super.c, ovl_statfs: "writes always target the upper layer"). The upper
    directory itself cannot be reached after boot: systemd-volatile-root unmounts its
    tmpfs at /run/systemd/overlay-sysroot once the overlay holds it (src/volatile-root/
    volatile-root.c, make_overlay, v251 and v256). That tmpfs is mounted with
    TMPFS_LIMITS_ROOTFS = ",size=25%,nr_inodes=1m" (src/shared/mount-util.h in v251,
    src/basic/mountpoint-util.h in v256): a quarter of dom0's RAM at boot, and at most a
    million inodes, on R4.2 (Fedora 37, systemd 251) and R4.3 (Fedora 41, systemd 256).
    """
    stats = statvfs("/")
    used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    size = stats.f_blocks * stats.f_frsize
    used_inodes = stats.f_files - stats.f_ffree
    return {"upper_used_bytes": used, "upper_size_bytes": size,
            "upper_used_inodes": used_inodes, "upper_inodes": stats.f_files,
            "upper_used_percent": max(_percent(used, size),
                                      _percent(used_inodes, stats.f_files))}


def status(settings: Settings, statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> dict:
    """Which mode dom0 runs in, and how much of the overlay's RAM layer is used.

    mode: `volatile` (/ is an overlay and `settings.volatile_root` exists: the link that
    systemd-volatile-root makes to the disk it laid the overlay over, src/volatile-root/
    volatile-root.c), `maintenance` (volatile mode not asked for on the kernel command
    line), or `volatile-failed` (asked for, yet not running: every write may reach the
    disk; e.g. the initramfs lacks systemd-volatile-root or the overlay driver).
    This is the one test of volatile mode: the shard interlock (`interlock`), the
    volatile state and the audit use it.
    """
    cmdline = (store.read_or_none(settings.cmdline) or b"").decode("utf-8", "replace").split()
    requested = VOLATILE_REQUEST in cmdline
    mountinfo = store.read_or_none(settings.mountinfo) or b""
    mounts = parse_mountinfo(mountinfo.decode("utf-8", "replace"))
    roots = [m for m in mounts if m.mount_point == "/"]
    root = roots[-1] if roots else None
    root_overlay = root is not None and root.fstype == "overlay"
    recorded = os.path.lexists(settings.volatile_root)
    swaps = [line.split()[0] for line in
             (store.read_or_none(settings.swaps) or b"").decode("utf-8", "replace").splitlines()[1:]
             if line.strip()]
    if root_overlay and recorded:
        mode = "volatile"
    elif requested:
        mode = "volatile-failed"
    else:
        mode = "maintenance"
    problems = []
    if mode == "volatile-failed" and not root_overlay:
        problems.append(f"{VOLATILE_REQUEST} is on the kernel command line but / is "
                        f"{root.fstype if root else 'not mounted'}: every write of this boot "
                        "reaches the disk (the initramfs lacks systemd-volatile-root or the "
                        "overlay driver)")
    elif mode == "volatile-failed":
        problems.append(f"{VOLATILE_REQUEST} is on the kernel command line and / is an "
                        f"overlay, but {settings.volatile_root} is missing: this overlay was "
                        "not laid by systemd-volatile-root over a disk, so what it writes "
                        "through cannot be told")
    if mode == "volatile" and swaps:
        problems.append(f"swap is on ({', '.join(swaps)}): pages of RAM, the overlay's upper "
                        "layer included, may be written to disk")
    result: dict[str, Any] = {
        "mode": mode,
        "root_fstype": root.fstype if root else None,
        "swap_active": swaps,
        "problems": problems,
    }
    if mode == "volatile":
        result.update(upper_usage(statvfs))
        if result["upper_used_percent"] >= settings.upper_warn_percent:
            problems.append(
                f"the overlay's RAM layer is {result['upper_used_percent']}% full "
                f"({result['upper_used_bytes'] >> 20} of {result['upper_size_bytes'] >> 20} "
                f"MiB; {result['upper_used_inodes']} of {result['upper_inodes']} inodes): "
                "when it is full every write to / fails (qubesd cannot save, qubes cannot "
                "start). Its size is a quarter of dom0's RAM at boot: raise dom0_mem "
                "(reliant:volatile:xen_options), or save your work and reboot "
                f"(warned from reliant:volatile:upper_warn_percent = "
                f"{settings.upper_warn_percent})")
    return result
