"""qrexec policy (format v5) that denies data-moving calls between deniable groups.

Two files (docs/isolation.md):

- the *persistent* file in /etc/qubes/policy.d names no shard: with shards hidden there is
  nothing to separate, so it only reserves its place in the sort order and says where the
  rules come from;
- the *runtime* file, written at suture into /run/qubes/policy.d (tmpfs, read by qrexec
  R4.3+), denies each listed service between every two groups, both directions, for named
  targets (``@tag:``) and for disposables (``@dispvm:@tag:``, which is how qrexec matches
  ``@dispvm`` resolved through the caller's default_dispvm and ``@dispvm:NAME``; ``@tag:``
  never matches a disposable target), and from shards to dom0 (``@adminvm``). By default
  it has the persistent file's name, so it replaces it while shards are open.

Calls inside one group match no generated rule and fall through to the user's own rules.
Settings (services, directions, notify, runtime file name) come from pillar through the
settings file that reliant.isolation writes; it names no shard either.
"""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from lxml import etree

from reliant import platform, store
from reliant.isolation import guard
from reliant.vocab import CORE_TAG, FOREIGN_DISPVM_TAG, valid_qube_name

DEFAULT_SERVICES = (
    "qubes.Filecopy", "qubes.OpenInVM", "qubes.OpenURL", "qubes.ClipboardPaste",
    "qubes.VMShell", "qubes.VMExec", "qubes.StartApp",
)
#: Kinds of (source group, target group) pairs the rules may cover.
DIRECTIONS = ("core-to-shard", "shard-to-core", "shard-to-shard")
RUNTIME_DIR = "/run/qubes/policy.d"
POLICY_FILE_NAME = "20-reliant-isolation.policy"
SETTINGS_PATH = "/etc/reliant/isolation.json"
SHARD_ROOTS = ("/run/shufflecake",)
POLICY_MODE = 0o644

# qrexec: policy file names (qrexec/policy/parser.py FILENAME_ALLOWED_CHARSET), service
# names (RPCNAME_ALLOWED_CHARSET without "+"), tags (qubes/vm/__init__.py validate_tag).
_FILE_NAME_CHARS = frozenset(string.digits + string.ascii_lowercase + "_.-")
_SERVICE_RE = re.compile(r"\A[A-Za-z0-9._-]+\Z")
_TAG_RE = re.compile(r"\A[A-Za-z0-9_-]+\Z")
#: User files (30-user, 50-config-*, 90-default) must come after ours.
_FIRST_USER_FILE = "30-user.policy"

HEADER = """\
# reliant-formula (reliant.isolation): qrexec calls between qubes on different deniable
# volumes. Generated; do not edit: pillar reliant:isolation sets services and directions.
"""
PERSISTENT_NOTE = """\
# While hidden volumes are open, a file of the same name in /run/qubes/policy.d replaces
# this one with these rules plus deny rules between the groups of qubes.
"""


class PolicyError(ValueError):
    """Bad settings or a store the rules cannot be generated from; the message says which."""


@dataclass(frozen=True)
class PolicySettings:
    """Pillar reliant:isolation as the runtime needs it."""

    services: tuple[str, ...] = DEFAULT_SERVICES
    directions: tuple[str, ...] = DIRECTIONS
    notify: bool = True
    policy_file: str = POLICY_FILE_NAME
    #: where shards are opened: a pool below one of them belongs to a shard
    shard_roots: tuple[str, ...] = SHARD_ROOTS

    def __post_init__(self) -> None:
        validate_services(self.services)
        for direction in self.directions:
            if direction not in DIRECTIONS:
                raise PolicyError(f"direction {direction!r}: expected one of "
                                  f"{', '.join(DIRECTIONS)}")
        validate_file_name(self.policy_file)
        for root in self.shard_roots:
            if not (isinstance(root, str) and os.path.isabs(root)):
                raise PolicyError(f"shard root {root!r}: expected an absolute path")


def validate_file_name(name: str) -> None:
    """PolicyError unless qrexec would load `name` and sort it before the user's files."""
    if not name.endswith(".policy") or name.startswith(".") or "/" in name:
        raise PolicyError(f"policy file name {name!r}: must end in .policy, "
                          "without a leading dot or a slash")
    bad = sorted(set(name) - _FILE_NAME_CHARS)
    if bad:
        raise PolicyError(f"policy file name {name!r}: qrexec refuses the characters {bad}")
    if name >= _FIRST_USER_FILE:
        raise PolicyError(f"policy file name {name!r} sorts after {_FIRST_USER_FILE}: the user's "
                          "rules would win over the deny rules")


def validate_services(services: Iterable[str]) -> None:
    """PolicyError unless every entry is a qrexec service name (or ``*``, every service)."""
    services = list(services)
    if not services:
        raise PolicyError("services: the list is empty")
    for service in services:
        if not isinstance(service, str) or not (service == "*" or _SERVICE_RE.match(service)):
            raise PolicyError(f"service {service!r}: not a qrexec service name")


def settings_from_mapping(data: dict[str, Any]) -> PolicySettings:
    """Settings from a mapping with the keys of `PolicySettings` (missing: default)."""
    known = {item.name for item in fields(PolicySettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyError(f"settings: unknown keys {', '.join(unknown)}")
    values = dict(data)
    for key in ("services", "directions", "shard_roots"):
        if key in values:
            if not isinstance(values[key], (list, tuple)):
                raise PolicyError(f"settings: {key} must be a list")
            values[key] = tuple(values[key])
    if not isinstance(values.get("notify", True), bool):
        raise PolicyError("settings: notify must be true or false")
    if not isinstance(values.get("policy_file", ""), str):
        raise PolicyError("settings: policy_file must be a string")
    return PolicySettings(**values)


def load_settings(path: str = SETTINGS_PATH) -> PolicySettings:
    """Settings from the file reliant.isolation writes; the defaults if it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return PolicySettings()
    except (OSError, ValueError) as exc:
        raise PolicyError(f"{path}: cannot read the isolation settings: {exc}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a JSON object")
    return settings_from_mapping(data)


def settings_to_mapping(settings: PolicySettings) -> dict[str, Any]:
    """The settings as plain JSON-able data (lists, not tuples)."""
    return json.loads(json.dumps(asdict(settings)))


def render_settings(settings: PolicySettings) -> bytes:
    """The settings file (JSON, sorted keys, trailing newline)."""
    return (json.dumps(settings_to_mapping(settings), indent=2, sort_keys=True) + "\n").encode()


def _action(settings: PolicySettings) -> str:
    return "deny" if settings.notify else "deny notify=no"


def render_persistent_rules(settings: PolicySettings) -> list[str]:
    """Rules that name no shard: a qube the extension tagged FOREIGN_DISPVM_TAG may not
    call its own ``@dispvm`` (a disposable of another group), which also keeps that
    disposable out of qrexec's "ask" dialog."""
    return [f"{service}\t*\t@tag:{FOREIGN_DISPVM_TAG}\t@dispvm\t"
            f"{_action(settings)}" for service in settings.services]


def render_persistent_policy(settings: PolicySettings) -> bytes:
    """The persistent /etc file: names no shard."""
    return (HEADER + PERSISTENT_NOTE + "\n".join(render_persistent_rules(settings))
            + "\n").encode()


def _direction(source: str, target: str) -> str:
    if source == CORE_TAG:
        return "core-to-shard"
    if target == CORE_TAG:
        return "shard-to-core"
    return "shard-to-shard"


def denied_between(settings: PolicySettings, source: str | None, target: str | None) -> bool:
    """True when calls from group `source` to group `target` are denied by the settings."""
    if source is None or target is None or source == target:
        return False
    return _direction(source, target) in settings.directions


def render_rules(groups: Iterable[str], settings: PolicySettings,
                 cross_dispvms: Iterable[guard.CrossDispvm] = ()) -> list[str]:
    """Deny rules for every ordered pair of distinct groups whose direction is enabled.

    `cross_dispvms`: qubes whose own ``@dispvm`` is a disposable of another group. Their
    ``@dispvm`` calls are denied by the pair rules already; a rule naming the qube and
    ``@dispvm`` also takes that disposable out of the "ask" dialog, where qrexec adds the
    caller's ``@dispvm`` back after the deny rules were applied."""
    ordered = sorted(set(groups), key=lambda tag: (tag != CORE_TAG, tag))
    for tag in ordered:
        if not (_TAG_RE.match(tag) and guard.is_group_tag(tag)):
            raise PolicyError(f"tag {tag!r} is not a group tag qrexec can match")
    action = _action(settings)
    callers = sorted({cross.qube for cross in cross_dispvms
                      if denied_between(settings, cross.group, cross.dispvm_group)})
    for name in callers:
        if not valid_qube_name(name):
            raise PolicyError(f"qube name {name!r} cannot appear in a policy rule")
    rules = []
    for service in settings.services:
        rules.extend(f"{service}\t*\t{name}\t@dispvm\t{action}" for name in callers)
        for source in ordered:
            for target in ordered:
                if source == target or _direction(source, target) not in settings.directions:
                    continue
                rules.append(f"{service}\t*\t@tag:{source}\t@tag:{target}\t{action}")
                rules.append(f"{service}\t*\t@tag:{source}\t@dispvm:@tag:{target}\t{action}")
                if target == CORE_TAG:  # dom0 is core, tagged or not
                    rules.append(f"{service}\t*\t@tag:{source}\t@adminvm\t{action}")
    return rules


def groups_of_store(merged_root: etree._Element,
                    record: Callable[[etree._Element], Any] | None = None) -> list[str]:
    """The group tags of a merged store; PolicyError naming a qube with no or two.
    `record`: see guard.facts_from_store."""
    qubes, _ = guard.facts_from_store(merged_root, record)
    groups = set()
    for name, qube in sorted(qubes.items()):
        try:
            group = guard.group_of(qube)
        except guard.GuardError as exc:
            raise PolicyError(str(exc)) from None
        if group is None:
            raise PolicyError(f"qube {name!r} carries no group tag: cannot write its deny rules")
        groups.add(group)
    return sorted(groups)


def render_runtime_policy(groups: Sequence[str], settings: PolicySettings,
                          cross_dispvms: Iterable[guard.CrossDispvm] = ()
                          ) -> bytes | None:
    """The runtime file for these groups, None when no shard is among them."""
    if all(group == CORE_TAG for group in groups):
        return None
    rules = render_persistent_rules(settings) + render_rules(groups, settings, cross_dispvms)
    return (HEADER + "\n".join(rules) + "\n").encode()


def runtime_policy_refusal(found: platform.Platform) -> str | None:
    """Why the deny rules cannot be in force on the dom0 `found` (None: they can). They
    name the shards' groups, so they may only live in qrexec's runtime policy directory
    on tmpfs: a qrexec without it (R4.2) would need them in /etc/qubes/policy.d, on the
    disk. Shards are then not merged while isolation is enabled."""
    reason = found.lacks(platform.RUNTIME_POLICY_DIR)
    if reason is None:
        return None
    return (f"{reason}: the deny rules between shards name them and may only go to "
            f"{RUNTIME_DIR} on tmpfs (a persistent policy in /etc/qubes/policy.d would "
            "name the shards on the disk), so shards are not merged while "
            "reliant:isolation is enabled. Use Qubes R4.3, or set "
            "reliant:isolation:enabled: false to merge shards without isolation")


def write_runtime_policy(policy_dir: str, merged_root: etree._Element,
                         services: list[str] | None = None, *,
                         settings_path: str | None = None,
                         record: Callable[[etree._Element], Any] | None = None) -> bool:
    """Write (or, with no shard present, remove) the runtime deny rules; True if changed.

    Every domain of `merged_root` must carry one group tag. The file is replaced
    atomically (temp file, fsync, rename, directory fsync), so qrexec never sees half a
    file; on any failure the previous file stays. Settings come from `settings_path`
    (default: SETTINGS_PATH, written by reliant.isolation); `services`, if given, replaces
    the listed services; `record`: see guard.facts_from_store.
    """
    settings = load_settings(settings_path or SETTINGS_PATH)
    if services is not None:
        settings = replace(settings, services=tuple(services))
    content = render_runtime_policy(groups_of_store(merged_root, record), settings,
                                    guard.cross_group_dispvm_qubes(merged_root, record))
    path = os.path.join(policy_dir, settings.policy_file)
    if content is None:
        return remove_policy_file(path)
    os.makedirs(policy_dir, mode=0o755, exist_ok=True)
    return store.write(path, content, mode=POLICY_MODE)


def remove_policy_file(path: str) -> bool:
    """Remove a policy file durably; True if it existed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    store.fsync_dir(os.path.dirname(path) or ".")
    return True


def _previous_policy_file(settings_path: str) -> str | None:
    """The policy file name the installed settings name, None if there are none (or bad)."""
    try:
        if not os.path.exists(settings_path):
            return None
        return load_settings(settings_path).policy_file
    except PolicyError:
        return None


def install_plan(persistent_dir: str, settings: PolicySettings,
                 settings_path: str = SETTINGS_PATH) -> dict[str, bytes | None]:
    """What reliant.isolation installs: path -> content (None: remove).

    A renamed policy file removes the persistent file of the old name; a runtime file of the
    old name is left to deny until reboot (the next suture writes the new name)."""
    plan: dict[str, bytes | None] = {
        settings_path: render_settings(settings),
        os.path.join(persistent_dir, settings.policy_file): render_persistent_policy(settings),
    }
    previous = _previous_policy_file(settings_path)
    if previous and previous != settings.policy_file:
        plan[os.path.join(persistent_dir, previous)] = None
    return plan


def removal_plan(persistent_dir: str, runtime_dir: str, policy_file: str,
                 settings_path: str = SETTINGS_PATH) -> dict[str, bytes | None]:
    """What removing reliant.isolation deletes: both policy files (under the pillar's name
    and the installed settings' name) and the settings file."""
    names = {policy_file, _previous_policy_file(settings_path) or policy_file}
    plan: dict[str, bytes | None] = {
        os.path.join(directory, name): None
        for directory in (persistent_dir, runtime_dir) for name in sorted(names)}
    plan[settings_path] = None
    return plan


def pending_changes(plan: dict[str, bytes | None]) -> dict[str, str]:
    """For each path of `plan` that differs: created, updated, mode or removed."""
    changes = {}
    for path, data in sorted(plan.items()):
        exists = os.path.lexists(path)
        if data is None:
            if exists:
                changes[path] = "removed"
            continue
        if not exists:
            changes[path] = "created"
            continue
        try:
            with open(path, "rb") as handle:
                current = handle.read()
            mode = os.stat(path).st_mode & 0o7777
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if current != data:
            changes[path] = "updated"
        elif mode != POLICY_MODE:
            changes[path] = "mode"
    return changes


def apply_plan(plan: dict[str, bytes | None]) -> None:
    """Write (atomically, mode 0644) or remove every path of `plan`."""
    for path, data in sorted(plan.items()):
        if data is None:
            remove_policy_file(path)
            continue
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        store.write(path, data, mode=POLICY_MODE)
        if os.stat(path).st_mode & 0o7777 != POLICY_MODE:
            os.chmod(path, POLICY_MODE)


def python_purelib(python: str = "/usr/bin/python3") -> str:
    """The directory `python` installs pure-Python packages into (where qubesd finds them)."""
    try:
        out = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PolicyError(f"{python}: cannot ask for its site-packages: {exc}") from None
    path = out.stdout.strip()
    if not os.path.isabs(path):
        raise PolicyError(f"{python}: unexpected site-packages {path!r}")
    return path


def render_extension_paths(libdir: str, settings_path: str = SETTINGS_PATH) -> str:
    """``reliant_isolation/_paths.py``: where the extension finds the library and settings."""
    for path in (libdir, settings_path):
        if not os.path.isabs(path):
            raise PolicyError(f"{path!r}: expected an absolute path")
    return (f'"""Written by reliant.isolation."""\n\nLIBDIR = {libdir!r}\n'
            f"SETTINGS = {settings_path!r}\n")
