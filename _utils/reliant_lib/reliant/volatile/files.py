"""The files the volatile component installs: the grub.d script, the dracut and journald
drop-ins, and the unit that keeps /boot read-only in volatile mode."""

from __future__ import annotations

import shlex

from reliant.volatile.settings import (
    BOOT_RO_UNIT,
    ENTRY_IDS,
    MARK,
    VOLATILE_KERNEL_OPTIONS,
    VOLATILE_REQUEST,
    Settings,
)

#: The body of the grub.d script, in the formula's files (the states read it from there).
GRUB_BODY = "salt://reliant/files/volatile/grub-entries.sh"


def grub_script(settings: Settings, body: str) -> str:
    """The grub.d script that emits the volatile and the maintenance entry: the settings
    as shell variables, then `body` (the file `GRUB_BODY`).

    It runs under grub2-mkconfig, which exports GRUB_DEVICE, GRUB_DEVICE_UUID,
    GRUB_DEVICE_BOOT, GRUB_CMDLINE_LINUX(_DEFAULT), GRUB_CMDLINE_XEN(_DEFAULT),
    GRUB_DISABLE_LINUX_UUID and pkgdatadir; the body picks the newest Xen and the
    newest kernel that has an initramfs, at mkconfig time, so kernel updates (which
    rerun grub2-mkconfig) keep the entries current.
    """
    values = {
        "boot_dir": settings.boot_dir, "extra_xen": settings.xen_options,
        "extra_linux": settings.kernel_options,
        "volatile_title": settings.volatile_title, "volatile_id": ENTRY_IDS["volatile"],
        "volatile_options": " ".join(VOLATILE_KERNEL_OPTIONS),
        "maintenance_title": settings.maintenance_title,
        "maintenance_id": ENTRY_IDS["maintenance"], "maintenance_options": "",
    }
    return "\n".join([
        "#!/bin/sh",
        f"# Written by {MARK} (reliant.volatile); removed by reliant.volatile.clean.",
        *(f"{name}={shlex.quote(value)}" for name, value in values.items()),
        body,
    ])


def dracut_dropin() -> str:
    """dracut drop-in: what systemd.volatile=overlay needs in the initramfs."""
    return "\n".join([
        f"# Written by {MARK} (reliant.volatile): what systemd.volatile=overlay needs.",
        "# systemd-volatile-root (started in the initramfs when the kernel command line",
        "# asks for systemd.volatile) mounts a tmpfs and an overlay over /sysroot: the",
        "# overlay driver must be in the image even when hostonly leaves it out.",
        'add_drivers+=" overlay "',
        "# dracut's systemd module installs these only if present (-o): require them.",
        'install_items+=" /usr/lib/systemd/systemd-volatile-root '
        '/usr/lib/systemd/system/systemd-volatile-root.service "',
        "",
    ])


def journald_dropin() -> str:
    """journald drop-in: keep the journal in RAM only (/run/log/journal)."""
    return "\n".join([
        f"# Written by {MARK} (reliant.volatile): the journal names hidden qubes;",
        "# keep it in /run/log/journal (RAM), never in /var/log/journal.",
        "[Journal]",
        "Storage=volatile",
        "",
    ])


def boot_ro_unit() -> str:
    """A unit that remounts /boot (and /boot/efi) read-only in volatile mode.

    /boot is its own file system on Qubes: in volatile mode a kernel update would
    write the new kernel, initramfs and grub.cfg there while its modules under
    /lib/modules vanish at shutdown, and the next boot would pick a kernel
    without modules. Read-only, such an update fails at once instead.
    """
    return "\n".join([
        f"# Written by {MARK} (reliant.volatile): in volatile mode, /boot is read-only so",
        "# that a kernel update fails instead of half-persisting (its modules would vanish).",
        "[Unit]",
        "Description=Read-only /boot in volatile dom0 (reliant-formula)",
        f"ConditionKernelCommandLine={VOLATILE_REQUEST}",
        "DefaultDependencies=no",
        "After=boot.mount boot-efi.mount",
        "Before=local-fs.target",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=/bin/sh -c 'for m in /boot/efi /boot; do if mountpoint -q \"$m\"; then "
        "mount -o remount,ro \"$m\" || exit 1; fi; done'",
        "",
    ])


def boot_ro_wants() -> str:
    """local-fs.target drop-in that pulls in the read-only /boot unit at every boot."""
    return "\n".join([
        f"# Written by {MARK} (reliant.volatile): see {BOOT_RO_UNIT}.",
        "[Unit]",
        f"Wants={BOOT_RO_UNIT}",
        "",
    ])


def managed_paths(settings: Settings) -> list[str]:
    """Where the files of `managed_files` go."""
    return [settings.grub_script_path, settings.dracut_dropin_path,
            settings.journald_dropin_path, settings.boot_ro_unit_path,
            settings.boot_ro_wants_path]


def managed_files(settings: Settings, grub_body: str) -> dict[str, tuple[str, int]]:
    """Every file this component owns: path -> (content, mode)."""
    contents = [(grub_script(settings, grub_body), 0o755), (dracut_dropin(), 0o644),
                (journald_dropin(), 0o644), (boot_ro_unit(), 0o644), (boot_ro_wants(), 0o644)]
    return dict(zip(managed_paths(settings), contents))
