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


def grub_script(settings: Settings) -> str:
    """The grub.d script that emits the volatile and the maintenance entry.

    It runs under grub2-mkconfig, which exports GRUB_DEVICE, GRUB_DEVICE_UUID,
    GRUB_DEVICE_BOOT, GRUB_CMDLINE_LINUX(_DEFAULT), GRUB_CMDLINE_XEN(_DEFAULT),
    GRUB_DISABLE_LINUX_UUID and pkgdatadir; it picks the newest Xen and the
    newest kernel that has an initramfs, at mkconfig time, so kernel updates
    (which rerun grub2-mkconfig) keep the entries current.
    """
    volatile_options = " ".join(VOLATILE_KERNEL_OPTIONS)
    lines = [
        "#!/bin/sh",
        f"# Written by {MARK} (reliant.volatile); removed by reliant.volatile.clean.",
        "# Emits a volatile dom0 entry (root on an overlay over tmpfs) and a",
        "# maintenance entry that writes to disk, for the newest Xen and kernel.",
        "set -e",
        '. "${pkgdatadir:-/usr/share/grub}/grub-mkconfig_lib"',
        f"boot_dir={shlex.quote(settings.boot_dir)}",
        f"extra_xen={shlex.quote(settings.xen_options)}",
        f"extra_linux={shlex.quote(settings.kernel_options)}",
        "",
        "newest() { ls -1 \"$@\" 2>/dev/null | sort -V | tail -n 1; }",
        'xen=$(newest "$boot_dir"/xen-*.gz)',
        'kernel=""',
        'for candidate in $(ls -1 "$boot_dir"/vmlinuz-* 2>/dev/null | sort -V -r); do',
        '  version=${candidate#"$boot_dir"/vmlinuz-}',
        '  case "$version" in *rescue*) continue ;; esac',
        '  if [ -f "$boot_dir/initramfs-$version.img" ]; then kernel=$candidate; break; fi',
        "done",
        'if [ -z "$xen" ] || [ -z "$kernel" ]; then',
        f'  echo "{MARK}: no Xen or no kernel with an initramfs in $boot_dir:'
        ' no volatile entries" >&2',
        "  exit 0",
        "fi",
        'version=${kernel#"$boot_dir"/vmlinuz-}',
        "# root= as grub's own scripts choose it: the device on LVM or without a UUID",
        'if [ -z "${GRUB_DEVICE_UUID}" ] || [ "${GRUB_DISABLE_LINUX_UUID}" = "true" ] \\',
        '    || ! [ -e "/dev/disk/by-uuid/${GRUB_DEVICE_UUID}" ] \\',
        '    || uses_abstraction "${GRUB_DEVICE}" lvm; then',
        '  root_device="${GRUB_DEVICE}"',
        "else",
        '  root_device="UUID=${GRUB_DEVICE_UUID}"',
        "fi",
        'xen_path=$(make_system_path_relative_to_its_root "$xen")',
        'kernel_path=$(make_system_path_relative_to_its_root "$kernel")',
        'initrd_path=$(make_system_path_relative_to_its_root "$boot_dir/initramfs-$version.img")',
        'access=$(prepare_grub_to_access_device "${GRUB_DEVICE_BOOT}" | sed "s/^/\t/")',
        "# word lists with single spaces (no globbing while splitting)",
        "words() { set -f; set -- $*; set +f; echo \"$*\"; }",
        'xen_args=$(words "${GRUB_CMDLINE_XEN} ${GRUB_CMDLINE_XEN_DEFAULT} ${extra_xen}")',
        'linux_args="root=${root_device} ro ${GRUB_CMDLINE_LINUX} ${GRUB_CMDLINE_LINUX_DEFAULT}'
        ' ${extra_linux}"',
        "",
        "# Xen needs these on EFI, as in 20_linux_xen.",
        "cat <<EOF",
        'if [ "\\$grub_platform" = "pc" -o "\\$grub_platform" = "" ]; then',
        "\treliant_xen_rm_opts=",
        "else",
        '\treliant_xen_rm_opts="no-real-mode edd=off"',
        "fi",
        "EOF",
        "",
        "entry() {",
        "  cat <<EOF",
        "menuentry '$1' --class qubes --class xen --class gnu-linux --class os --id '$2' {",
        "$access",
        "\techo 'Loading Xen $xen_path ...'",
        "\tmultiboot2 $xen_path placeholder $xen_args \\${reliant_xen_rm_opts}",
        "\techo 'Loading Linux $version ...'",
        "\tmodule2 $kernel_path placeholder $(words \"$linux_args $3\")",
        "\techo 'Loading initial ramdisk ...'",
        "\tmodule2 --nounzip $initrd_path",
        "}",
        "EOF",
        "}",
        f"entry {shlex.quote(settings.volatile_title)} {ENTRY_IDS['volatile']}"
        f" {shlex.quote(volatile_options)}",
        f"entry {shlex.quote(settings.maintenance_title)} {ENTRY_IDS['maintenance']} ''",
        "",
    ]
    return "\n".join(lines)


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


def managed_files(settings: Settings) -> dict[str, tuple[str, int]]:
    """Every file this component owns: path -> (content, mode)."""
    return {
        settings.grub_script_path: (grub_script(settings), 0o755),
        settings.dracut_dropin_path: (dracut_dropin(), 0o644),
        settings.journald_dropin_path: (journald_dropin(), 0o644),
        settings.boot_ro_unit_path: (boot_ro_unit(), 0o644),
        settings.boot_ro_wants_path: (boot_ro_wants(), 0o644),
    }
