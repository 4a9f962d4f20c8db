"""A temporary dom0 root for the volatile tests: GRUB and dracut doubles installed by
tests/doubles/dom0-boot/install.sh, and settings whose every path lies inside it (so
that no test can touch the host's /etc or /boot, whatever setting is added later)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

from reliant.volatile.settings import Settings

BOOT_DOUBLES = Path(__file__).resolve().parents[1] / "doubles" / "dom0-boot"
#: The body of the grub.d script, as the states read it from the formula's files.
GRUB_BODY = (Path(__file__).resolve().parents[2] / "salt/reliant/files/volatile/grub-entries.sh"
             ).read_text()


def install(root: Path, logs: Path) -> dict[str, str]:
    """Install the doubles into `root`; return the environment that points them there."""
    subprocess.run([str(BOOT_DOUBLES / "install.sh"), str(root)], check=True)
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/cmdline").write_text("placeholder root=/dev/mapper/qubes_dom0-root ro\n")
    (root / "proc/self/mountinfo").write_text(
        "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/qubes_dom0-root rw\n")
    (root / "proc/swaps").write_text("Filename Type Size Used Priority\n")
    return {
        "GRUB_DOUBLE_SYSCONFDIR": str(root / "etc"),
        "GRUB_DOUBLE_PKGDATADIR": str(root / "usr/share/grub"),
        "GRUB_DOUBLE_BOOT": str(root / "boot"),
        "GRUB_DOUBLE_LOG": str(logs / "grub2-mkconfig.log"),
        "DRACUT_DOUBLE_SYSCONFDIR": str(root / "etc"),
        "DRACUT_DOUBLE_BOOT": str(root / "boot"),
        "DRACUT_DOUBLE_LOG": str(logs / "dracut.log"),
    }


def settings(root: Path) -> dict[str, str]:
    """Pillar `reliant:volatile` for `root`: every default path moved inside it, the
    doubles as commands, `true` for journalctl and systemctl (never the host's)."""
    values = {}
    for field in dataclasses.fields(Settings):
        if isinstance(field.default, str) and field.default.startswith("/"):
            values[field.name] = str(root / field.default.lstrip("/"))
    values.update(mkconfig=str(root / "usr/sbin/grub2-mkconfig"),
                  dracut=str(root / "usr/bin/dracut"), journalctl="true", systemctl="true")
    return values
