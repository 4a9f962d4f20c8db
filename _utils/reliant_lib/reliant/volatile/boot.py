"""The boot setup of a volatile dom0: checked edits of /etc/default/grub, the plan
(what differs from the wanted files and stamps) and how it is applied.

Regeneration of grub.cfg and of the initramfs is decided by hashing their inputs
(stamps kept in a small JSON state file), so that a run whose inputs did not change
regenerates nothing, and a run interrupted before regenerating does it the next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Optional

from reliant import store
from reliant.volatile.files import dracut_dropin, journald_dropin, managed_files, managed_paths
from reliant.volatile.settings import ENTRY_IDS, MARK, Settings, VolatileError

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
        parts += [name.encode(), store.read_or_none(path) or b""]
    try:
        boot = sorted(n for n in os.listdir(settings.boot_dir)
                      if n.startswith(("xen-", "vmlinuz-", "initramfs-")))
    except FileNotFoundError:
        boot = []
    parts.append("\n".join(boot).encode())
    return _sha(parts)


def load_state(path: str) -> dict:
    """The component's state file ({} when absent); a corrupt one raises."""
    raw = store.read_or_none(path)
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
        """The changes as a state reports them (same with test=True and without; empty
        exactly when the plan is)."""
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
        if self.state is not None and not out:
            out["state"] = settings.state_file
        return out


def _file_differs(path: str, content: str, mode: int) -> bool:
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return True
    return (not os.path.isfile(path) or os.path.islink(path)
            or (current.st_mode & 0o7777) != mode or store.read_or_none(path) != content.encode())


def _ours(path: str) -> bool:
    """A regular file that this component wrote (it carries the mark)."""
    return (os.path.isfile(path) and not os.path.islink(path)
            and f"Written by {MARK}".encode() in (store.read_or_none(path) or b""))


def _grub_cfg_has_entries(settings: Settings) -> bool:
    text = (store.read_or_none(settings.grub_cfg) or b"").decode("utf-8", "replace")
    return all(f"--id '{entry}'" in text for entry in ENTRY_IDS.values())


def plan_configured(settings: Settings, grub_body: str) -> Plan:
    """The plan that makes dom0 boot-ready for volatile mode with `settings` (`grub_body`:
    the body of the grub.d script, see `reliant.volatile.files.grub_script`)."""
    state = load_state(settings.state_file)
    wanted = managed_files(settings, grub_body)
    for path in wanted:
        if os.path.lexists(path) and not _ours(path):
            raise VolatileError(f"{path}: exists and was not written by {MARK}; move it away "
                                "or choose another name (reliant:volatile:grub_script, "
                                "dropin_name)")
    write = {p: cm for p, cm in wanted.items() if _file_differs(p, *cm)}

    grub_raw = store.read_or_none(settings.default_grub)
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
    remove = [p for p in managed_paths(settings) if os.path.lexists(p) and _ours(p)]
    if os.path.lexists(settings.state_file):
        remove.append(settings.state_file)
    new_grub = None
    grub_raw = store.read_or_none(settings.default_grub)
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
        store.replace(path, content.encode(), mode)
    if plan.relinquish_journal:
        run([settings.journalctl, "--relinquish-var"])
    if plan.default_grub is not None:
        mode = os.stat(settings.default_grub).st_mode & 0o7777
        store.replace(settings.default_grub, plan.default_grub.encode(), mode)
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
    store.replace(settings.state_file,
                          (json.dumps(state, indent=1, sort_keys=True) + "\n").encode(), 0o600)
