"""Volatile dom0: boot entries, initramfs and journald settings, and the running mode.

A volatile dom0 boots with ``systemd.volatile=overlay``: in the initramfs,
systemd-volatile-root mounts a tmpfs and lays an overlay over the real root, so
every write after boot lands in RAM and is gone at shutdown. This module renders
everything that needs, as files and checked edits that a state applies:

- a grub.d script that, each time ``grub2-mkconfig`` runs, emits two Xen
  multiboot2 entries (as Qubes' own 20_linux_xen does) for the newest Xen and
  kernel in /boot: a volatile one and a clearly named maintenance one that
  persists changes;
- ``GRUB_DEFAULT`` in /etc/default/grub, naming one of them by its entry id;
- a dracut drop-in with what the overlay root needs in the initramfs;
- a journald drop-in with ``Storage=volatile``.

Regeneration of grub.cfg and of the initramfs is decided by hashing their
inputs (stamps kept in a small JSON state file), so that a run whose inputs did
not change regenerates nothing, and a run interrupted before regenerating does
it the next time. Nothing here imports Salt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

import reliant_store

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
            if not isinstance(getattr(self, f.name), str):
                raise VolatileError(f"reliant:volatile:{f.name}: expected a string, got "
                                    f"{type(getattr(self, f.name)).__name__}")
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
            if f.name.endswith(("_dir", "_d", "_file", "_grub", "_cfg")) and \
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


# --- rendered files ---------------------------------------------------------------

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


# --- /etc/default/grub: checked edits of the keys this component owns -------------

def _assignment(key: str) -> re.Pattern:
    return re.compile(rf"^[ \t]*(?:export[ \t]+)?{re.escape(key)}=(.*)$", re.MULTILINE)


def get_shell_var(text: str, key: str, source: str = "/etc/default/grub") -> Optional[str]:
    """The value `text` assigns to `key` (None if unset); quotes removed."""
    found = _assignment(key).findall(text)
    if len(found) > 1:
        raise VolatileError(f"{source}: {key} is assigned {len(found)} times; "
                            "keep one assignment and re-run")
    if not found:
        return None
    raw = found[0].strip()
    try:
        words = shlex.split(raw, comments=True)
    except ValueError as exc:
        raise VolatileError(f"{source}: cannot parse {key}={raw}: {exc}") from None
    if len(words) > 1:
        raise VolatileError(f"{source}: {key}={raw} is not a single value")
    return words[0] if words else ""


def assignment_line(text: str, key: str, source: str = "/etc/default/grub") -> Optional[str]:
    """The exact line of `text` that assigns `key` (None if none); two raise."""
    found = [m.group(0) for m in _assignment(key).finditer(text)]
    if len(found) > 1:
        raise VolatileError(f"{source}: {key} is assigned {len(found)} times; "
                            "keep one assignment and re-run")
    return found[0] if found else None


def replace_assignment(text: str, key: str, line: Optional[str],
                       source: str = "/etc/default/grub") -> str:
    """`text` with the assignment of `key` replaced by `line` (appended if there is
    none; removed if `line` is None); every other byte untouched."""
    current = assignment_line(text, key, source)
    if current is None:
        if line is None:
            return text
        return text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    if line is None:
        return "".join(kept for kept in text.splitlines(keepends=True)
                       if kept.rstrip("\r\n") != current)
    return _assignment(key).sub(lambda _m: line, text, count=1)


def set_shell_var(text: str, key: str, value: Optional[str],
                  source: str = "/etc/default/grub") -> str:
    """`text` with `key` set to `value` (None: the assignment removed); rest untouched."""
    get_shell_var(text, key, source)  # refuses what it cannot parse
    return replace_assignment(text, key, None if value is None else f'{key}="{value}"', source)


# --- inputs, stamps and the plan ---------------------------------------------------

def _sha(parts: list[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def dracut_inputs(settings: Settings, present: bool) -> str:
    """Hash of what this component puts into the initramfs (both drop-ins:
    dracut copies journald.conf.d into hostonly images)."""
    if not present:
        return _sha([b"absent"])
    return _sha([dracut_dropin().encode(), journald_dropin().encode(), settings.dracut.encode()])


def grub_inputs(settings: Settings, default_grub: bytes, script: Optional[bytes]) -> str:
    """Hash of what grub2-mkconfig reads: /etc/default/grub, the executable grub.d
    scripts (ours as it will be) and the Xen/kernel/initramfs names in /boot."""
    parts = [settings.mkconfig.encode(), settings.grub_cfg.encode(), default_grub]
    try:
        names = sorted(os.listdir(settings.grub_d))
    except FileNotFoundError:
        names = []
    if script is not None and settings.grub_script not in names:
        names = sorted([*names, settings.grub_script])
    for name in names:
        path = os.path.join(settings.grub_d, name)
        if name == settings.grub_script:
            if script is not None:
                parts += [name.encode(), script]
            continue
        if name.endswith("~") or not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        parts += [name.encode(), reliant_store.read_or_none(path) or b""]
    try:
        boot = sorted(n for n in os.listdir(settings.boot_dir)
                      if n.startswith(("xen-", "vmlinuz-", "initramfs-")))
    except FileNotFoundError:
        boot = []
    parts.append("\n".join(boot).encode())
    return _sha(parts)


def load_state(path: str) -> dict:
    """The component's state file ({} when absent); a corrupt one raises."""
    raw = reliant_store.read_or_none(path)
    if raw is None:
        return {}
    try:
        state = json.loads(raw)
    except ValueError as exc:
        raise VolatileError(f"{path}: not valid JSON ({exc}); remove it to start over") from None
    if not isinstance(state, dict):
        raise VolatileError(f"{path}: not a JSON object; remove it to start over")
    return state


@dataclass
class Plan:
    """What differs from the wanted state, and what converging it will do."""

    write: dict[str, tuple[str, int]]
    remove: list[str]
    default_grub: Optional[str]
    regenerate_initramfs: bool
    regenerate_grub: bool
    state: Optional[dict]
    relinquish_journal: bool = False
    reload_systemd: bool = False

    def empty(self) -> bool:
        return not (self.write or self.remove or self.default_grub is not None
                    or self.regenerate_initramfs or self.regenerate_grub
                    or self.state is not None or self.relinquish_journal
                    or self.reload_systemd)

    def changes(self, settings: Settings) -> dict[str, Any]:
        """The changes as a state reports them (same with test=True and without)."""
        out: dict[str, Any] = {}
        if self.write:
            out["written"] = sorted(self.write)
        if self.remove:
            out["removed"] = sorted(self.remove)
        if self.default_grub is not None:
            out["edited"] = settings.default_grub
        if self.relinquish_journal:
            out["journal"] = f"{settings.journalctl} --relinquish-var"
        if self.reload_systemd:
            out["systemd"] = f"{settings.systemctl} daemon-reload"
        if self.regenerate_initramfs:
            out["initramfs"] = f"{settings.dracut} --force --regenerate-all"
        if self.regenerate_grub:
            out["grub.cfg"] = f"{settings.mkconfig} -o {settings.grub_cfg}"
        return out


def _file_differs(path: str, content: str, mode: int) -> bool:
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return True
    return (not os.path.isfile(path) or os.path.islink(path)
            or (current.st_mode & 0o7777) != mode or reliant_store.read_or_none(path) != content.encode())


def _ours(path: str) -> bool:
    """A regular file that this component wrote (it carries the mark)."""
    return (os.path.isfile(path) and not os.path.islink(path)
            and f"Written by {MARK}".encode() in (reliant_store.read_or_none(path) or b""))


def _grub_cfg_has_entries(settings: Settings) -> bool:
    text = (reliant_store.read_or_none(settings.grub_cfg) or b"").decode("utf-8", "replace")
    return all(f"--id '{entry}'" in text for entry in ENTRY_IDS.values())


def plan_configured(settings: Settings) -> Plan:
    """The plan that makes dom0 boot-ready for volatile mode with `settings`."""
    state = load_state(settings.state_file)
    wanted = managed_files(settings)
    for path in wanted:
        if os.path.lexists(path) and not _ours(path):
            raise VolatileError(f"{path}: exists and was not written by {MARK}; move it away "
                                "or choose another name (reliant:volatile:grub_script, "
                                "dropin_name)")
    write = {p: cm for p, cm in wanted.items() if _file_differs(p, *cm)}

    grub_raw = reliant_store.read_or_none(settings.default_grub)
    if grub_raw is None:
        raise VolatileError(f"{settings.default_grub}: missing; is GRUB installed?")
    grub_text = grub_raw.decode("utf-8")
    new_grub = set_shell_var(grub_text, "GRUB_DEFAULT", settings.entry_id, settings.default_grub)
    new_state = dict(state)
    if "grub_default_line_before" not in state:
        new_state["grub_default_line_before"] = assignment_line(
            grub_text, "GRUB_DEFAULT", settings.default_grub)

    new_state["dracut_inputs"] = dracut_inputs(settings, present=True)
    regenerate_initramfs = state.get("dracut_inputs") != new_state["dracut_inputs"]
    script = wanted[settings.grub_script_path][0].encode()
    new_state["grub_inputs"] = grub_inputs(settings, new_grub.encode(), script)
    regenerate_grub = (state.get("grub_inputs") != new_state["grub_inputs"]
                       or not _grub_cfg_has_entries(settings))
    return Plan(
        write=write,
        remove=[],
        default_grub=new_grub if new_grub != grub_text else None,
        regenerate_initramfs=regenerate_initramfs,
        regenerate_grub=regenerate_grub,
        state=new_state if new_state != state else None,
        # journald reads its drop-in at start: until then, stop it writing to /var/log
        relinquish_journal=settings.journald_dropin_path in write,
        reload_systemd=bool({settings.boot_ro_unit_path, settings.boot_ro_wants_path} & set(write)),
    )


def plan_absent(settings: Settings) -> Plan:
    """The plan that removes every trace of this component from the boot setup."""
    state = load_state(settings.state_file)
    remove = [p for p in managed_files(settings) if os.path.lexists(p) and _ours(p)]
    if os.path.lexists(settings.state_file):
        remove.append(settings.state_file)
    new_grub = None
    grub_raw = reliant_store.read_or_none(settings.default_grub)
    if grub_raw is not None and "grub_default_line_before" in state:
        grub_text = grub_raw.decode("utf-8")
        restored = replace_assignment(grub_text, "GRUB_DEFAULT",
                                      state["grub_default_line_before"], settings.default_grub)
        new_grub = restored if restored != grub_text else None
    touched = bool(remove) or new_grub is not None
    units = {settings.boot_ro_unit_path, settings.boot_ro_wants_path}
    return Plan(write={}, remove=remove, default_grub=new_grub,
                regenerate_initramfs=touched, regenerate_grub=touched, state=None,
                reload_systemd=bool(units & set(remove)))


# --- acting ----------------------------------------------------------------------

def run_command(argv: list[str], timeout: int = 900) -> None:
    """Run `argv`; a failure raises VolatileError with its exit code and error output."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VolatileError(f"{argv[0]}: {exc}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise VolatileError(f"{' '.join(argv)} failed with exit code {proc.returncode}: "
                            + " / ".join(tail))


def apply(plan: Plan, settings: Settings, run: Callable[[list[str]], None]) -> None:
    """Carry out `plan`; `run` executes a command and raises on failure.

    Stamps are written only after the regeneration they record succeeded, so an
    interrupted run regenerates the next time.
    """
    for path, (content, mode) in plan.write.items():
        reliant_store.replace(path, content.encode(), mode)
    if plan.relinquish_journal:
        run([settings.journalctl, "--relinquish-var"])
    if plan.default_grub is not None:
        mode = os.stat(settings.default_grub).st_mode & 0o7777
        reliant_store.replace(settings.default_grub, plan.default_grub.encode(), mode)
    for path in plan.remove:
        if path != settings.state_file:
            os.unlink(path)
    if plan.reload_systemd:
        run([settings.systemctl, "daemon-reload"])
    if plan.regenerate_initramfs:
        run([settings.dracut, "--force", "--regenerate-all"])
        if plan.state is not None:
            # the initramfs stamp survives a grub2-mkconfig failure; grub's does not
            before = load_state(settings.state_file).get("grub_inputs")
            _save_state(settings, {**plan.state, "grub_inputs": before})
    if plan.regenerate_grub:
        run([settings.mkconfig, "-o", settings.grub_cfg])
    if plan.state is not None:
        _save_state(settings, plan.state)
    elif settings.state_file in plan.remove:
        os.unlink(settings.state_file)


def _save_state(settings: Settings, state: dict) -> None:
    reliant_store.replace(settings.state_file,
                          (json.dumps(state, indent=1, sort_keys=True) + "\n").encode(), 0o600)


# --- what is running ---------------------------------------------------------------

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
    cmdline = (reliant_store.read_or_none(settings.cmdline) or b"").decode("utf-8", "replace").split()
    requested = VOLATILE_REQUEST in cmdline
    mountinfo = reliant_store.read_or_none(settings.mountinfo) or b""
    mounts = parse_mountinfo(mountinfo.decode("utf-8", "replace"))
    roots = [m for m in mounts if m.mount_point == "/"]
    root = roots[-1] if roots else None
    root_overlay = root is not None and root.fstype == "overlay"
    swaps = [line.split()[0] for line in
             (reliant_store.read_or_none(settings.swaps) or b"").decode("utf-8", "replace").splitlines()[1:]
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
