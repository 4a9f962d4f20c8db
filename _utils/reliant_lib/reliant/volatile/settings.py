"""Pillar `reliant:volatile`, validated (`Settings`), and the names the component uses."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields

ENTRY_IDS = {"volatile": "reliant-volatile", "maintenance": "reliant-maintenance"}
# systemd.volatile=overlay: root becomes an overlay whose upper layer is a tmpfs.
# systemd.swap=0: systemd-fstab-generator ignores fstab swap, so tmpfs pages of
# the upper layer are never written to a disk swap.
VOLATILE_KERNEL_OPTIONS = ("systemd.volatile=overlay", "systemd.swap=0")
VOLATILE_REQUEST = "systemd.volatile=overlay"
MARK = "reliant-formula"
BOOT_RO_UNIT = "reliant-volatile-boot-ro.service"

_OPTION_TOKEN = re.compile(r"^[A-Za-z0-9_.,:=/+@%-]+$")
_TITLE = re.compile(r"^[A-Za-z0-9 _.,:;()/+@%-]+$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class VolatileError(Exception):
    """A setting or a file that the volatile component refuses to work with."""


@dataclass(frozen=True)
class Settings:
    """Pillar `reliant:volatile` (everything but `enabled`), validated."""

    default_entry: str = "volatile"
    volatile_title: str = "Qubes, volatile dom0 (forgets every change at shutdown)"
    maintenance_title: str = "Qubes, MAINTENANCE dom0 (changes are written to disk)"
    xen_options: str = ""
    kernel_options: str = ""
    boot_dir: str = "/boot"
    default_grub: str = "/etc/default/grub"
    grub_d: str = "/etc/grub.d"
    grub_script: str = "15_reliant_volatile"
    grub_cfg: str = "/boot/grub2/grub.cfg"
    mkconfig: str = "grub2-mkconfig"
    dracut_conf_d: str = "/etc/dracut.conf.d"
    dracut: str = "dracut"
    journalctl: str = "journalctl"
    systemctl: str = "systemctl"
    journald_conf_d: str = "/etc/systemd/journald.conf.d"
    systemd_dir: str = "/etc/systemd/system"
    dropin_name: str = "50-reliant-volatile.conf"
    state_file: str = "/var/lib/reliant/volatile.json"
    cmdline: str = "/proc/cmdline"
    mountinfo: str = "/proc/self/mountinfo"
    swaps: str = "/proc/swaps"
    # the link systemd-volatile-root makes to the disk under the overlay (see running)
    volatile_root: str = "/run/systemd/volatile-root"
    # `status` warns when the overlay's RAM layer is this full (percent of its size)
    upper_warn_percent: int = 90

    @classmethod
    def from_pillar(cls, pillar: dict) -> Settings:
        """Build from pillar `reliant:volatile`; unknown keys and bad values raise."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in pillar.items() if k != "enabled"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise VolatileError(f"reliant:volatile: unknown keys {unknown}")
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise VolatileError naming the first bad setting."""
        for f in fields(self):
            want = int if f.name == "upper_warn_percent" else str
            value = getattr(self, f.name)
            if not isinstance(value, want) or isinstance(value, bool):
                raise VolatileError(f"reliant:volatile:{f.name}: expected "
                                    f"{'an integer' if want is int else 'a string'}, got "
                                    f"{type(value).__name__}")
        if not 1 <= self.upper_warn_percent <= 100:
            raise VolatileError("reliant:volatile:upper_warn_percent: "
                                f"{self.upper_warn_percent} is not between 1 and 100")
        if self.default_entry not in ENTRY_IDS:
            raise VolatileError(
                f"reliant:volatile:default_entry: {self.default_entry!r} is not one of "
                f"{sorted(ENTRY_IDS)}")
        for key in ("volatile_title", "maintenance_title"):
            if not _TITLE.match(getattr(self, key)):
                raise VolatileError(
                    f"reliant:volatile:{key}: {getattr(self, key)!r} may hold only letters, "
                    "digits, spaces and _.,:;()/+@%-")
        for key in ("xen_options", "kernel_options"):
            for token in getattr(self, key).split():
                if not _OPTION_TOKEN.match(token):
                    raise VolatileError(
                        f"reliant:volatile:{key}: option {token!r} may hold only letters, "
                        "digits and _.,:=/+@%-")
        for key in ("grub_script", "dropin_name"):
            if not _FILE_NAME.match(getattr(self, key)):
                raise VolatileError(f"reliant:volatile:{key}: {getattr(self, key)!r} is not a "
                                    "plain file name")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_dir", "_d", "_file", "_grub", "_cfg", "_root")) and \
                    not os.path.isabs(value):
                raise VolatileError(f"reliant:volatile:{f.name}: {value!r} is not absolute")

    @property
    def entry_id(self) -> str:
        """The GRUB entry id that GRUB_DEFAULT names."""
        return ENTRY_IDS[self.default_entry]

    @property
    def grub_script_path(self) -> str:
        return os.path.join(self.grub_d, self.grub_script)

    @property
    def dracut_dropin_path(self) -> str:
        return os.path.join(self.dracut_conf_d, self.dropin_name)

    @property
    def journald_dropin_path(self) -> str:
        return os.path.join(self.journald_conf_d, self.dropin_name)

    @property
    def boot_ro_unit_path(self) -> str:
        return os.path.join(self.systemd_dir, BOOT_RO_UNIT)

    @property
    def boot_ro_wants_path(self) -> str:
        return os.path.join(self.systemd_dir, "local-fs.target.d", self.dropin_name)
