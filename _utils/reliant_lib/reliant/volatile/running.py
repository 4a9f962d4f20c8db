"""Which mode dom0 runs in (volatile, maintenance, volatile-failed), from the kernel
command line, the mount table and the active swap."""

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


def status(settings: Settings, statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> dict:
    """Which mode dom0 runs in, and how much RAM the overlay's upper layer uses.

    mode: `volatile` (asked for on the kernel command line and / is an overlay),
    `maintenance` (not asked for), or `volatile-failed` (asked for, yet / is not
    an overlay: every write reaches the disk; the initramfs lacks what
    systemd-volatile-root needs). The overlay's statfs reports its upper layer,
    the tmpfs that systemd-volatile-root mounted in the initramfs.
    """
    cmdline = (store.read_or_none(settings.cmdline) or b"").decode("utf-8", "replace").split()
    requested = VOLATILE_REQUEST in cmdline
    mountinfo = store.read_or_none(settings.mountinfo) or b""
    mounts = parse_mountinfo(mountinfo.decode("utf-8", "replace"))
    roots = [m for m in mounts if m.mount_point == "/"]
    root = roots[-1] if roots else None
    root_overlay = root is not None and root.fstype == "overlay"
    swaps = [line.split()[0] for line in
             (store.read_or_none(settings.swaps) or b"").decode("utf-8", "replace").splitlines()[1:]
             if line.strip()]
    if requested and root_overlay:
        mode = "volatile"
    elif requested:
        mode = "volatile-failed"
    else:
        mode = "maintenance"
    problems = []
    if mode == "volatile-failed":
        problems.append(f"{VOLATILE_REQUEST} is on the kernel command line but / is "
                        f"{root.fstype if root else 'not mounted'}: every write of this boot "
                        "reaches the disk (the initramfs lacks systemd-volatile-root or the "
                        "overlay driver)")
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
        stats = statvfs("/")
        result["upper_used_bytes"] = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        result["upper_size_bytes"] = stats.f_blocks * stats.f_frsize
    return result
