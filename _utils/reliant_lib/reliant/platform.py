"""The Qubes dom0 the formula runs on: its release and the versions of the Qubes packages
whose behaviour the components depend on, and those behaviours (`Fact`), each with the
version it starts at and where that was read (a leaf: it imports nothing of the package).

The release comes from /etc/qubes-release ("Qubes release 4.2.4 (R4.2)"); the versions
from rpm's database (`rpm -q`): qubes-core-admin is installed as the package
`qubes-core-dom0` (qubes-core-admin rpm_spec/core-dom0.spec.in, release4.2 and
release4.3), the qrexec policy daemon and parser as `qubes-core-qrexec`
(qubes-core-qrexec rpm_spec/qubes-qrexec.spec.in; its `qrexec/policy/` files). When rpm
cannot tell a version, the release bounds it: every package of release 4.x is 4.x.y.

A component asks `Platform.lacks(FACT)`: None when the fact holds, else why it does not
or why nobody can tell (unknown counts as missing: each component then does the safe
thing, and says so).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

RELEASE_FILE = "/etc/qubes-release"
CORE_ADMIN = "qubes-core-dom0"
QREXEC = "qubes-core-qrexec"
PACKAGES = (CORE_ADMIN, QREXEC)
RPM_TIMEOUT = 30

Version = tuple[int, ...]

_RELEASE_RE = re.compile(r"\bQubes release (\d+)\.(\d+)")
_VERSION_RE = re.compile(r"\A\d+(\.\d+)*\Z")


@dataclass(frozen=True)
class Fact:
    """A behaviour of a Qubes package that starts at version `since` (where it was read in
    the Qubes sources: the comment above each)."""

    key: str
    what: str
    package: str
    since: Version

    @property
    def since_text(self) -> str:
        return f"{self.package} {'.'.join(map(str, self.since))}"


#: qrexec reads /run/qubes/policy.d (tmpfs) before /etc/qubes/policy.d. qubes-core-qrexec
#: qrexec/__init__.py RUNTIME_POLICY_PATH, used by qrexec/policy/parser.py (commit f2ed5fb
#: "Support additional policy directories", first tagged v4.3.0; its tmpfiles.d
#: systemd/qrexec.conf creates the directory). release4.2 reads only POLICYPATH.
RUNTIME_POLICY_DIR = Fact(
    "runtime_policy_dir", "runtime qrexec policy directory /run/qubes/policy.d", QREXEC,
    (4, 3, 0))
#: QubesVM.start() refuses a qube with the feature prohibit-start. qubes-core-admin
#: qubes/vm/qubesvm.py (commit 5de215d5 "Add the feature to prohibit starting of a qube",
#: first tagged v4.3.19); not in release4.2.
PROHIBIT_START = Fact(
    "prohibit_start", "qube feature prohibit-start", CORE_ADMIN, (4, 3, 19))
#: qubesd saves its store when it gets SIGTERM or SIGINT. qubes-core-admin
#: qubes/tools/qubesd.py sighandler() calls app.save() (commit 3d5833ea, first tagged
#: v4.3.39); before, only the Admin API calls save.
SAVE_ON_SIGTERM = Fact(
    "save_on_sigterm", "save of qubesd's store on SIGTERM", CORE_ADMIN, (4, 3, 39))
#: A file-pool volume with revisions_to_keep=-1, save_on_stop and not snap_on_start
#: (Volume.snapshots_disabled, qubes/storage/__init__.py) skips create-snapshot: its
#: image goes to libvirt as is (qubes/storage/file.py start() and _block_device_path();
#: commit 1264ab11 "storage: snapshots_disabled for file storage", first tagged v4.3.30).
FILE_SNAPSHOTS_DISABLED = Fact(
    "file_snapshots_disabled", "create-snapshot bypass for file-pool volumes with "
    "revisions_to_keep=-1", CORE_ADMIN, (4, 3, 30))
FACTS = (RUNTIME_POLICY_DIR, PROHIBIT_START, SAVE_ON_SIGTERM, FILE_SNAPSHOTS_DISABLED)


def parse_version(text: str) -> Optional[Version]:
    """`4.3.12` -> (4, 3, 12); None for anything else."""
    text = text.strip()
    return tuple(int(part) for part in text.split(".")) if _VERSION_RE.match(text) else None


def parse_release(text: str) -> Optional[Version]:
    """The release (major, minor) of /etc/qubes-release's text; None if it names none."""
    match = _RELEASE_RE.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _text(version: Version) -> str:
    return ".".join(map(str, version))


@dataclass(frozen=True)
class Platform:
    """What was read of the dom0: `release` (major, minor), `versions` by package, and
    `unread`: what could not be read, and why."""

    release: Optional[Version] = None
    versions: Mapping[str, Version] = field(default_factory=dict)
    unread: tuple[str, ...] = ()

    def has(self, fact: Fact) -> Optional[bool]:
        """Whether `fact` holds here; None when neither rpm nor the release can tell."""
        version = self.versions.get(fact.package)
        if version is not None:
            return version >= fact.since
        if self.release is None:
            return None
        if self.release != fact.since[:2]:
            return self.release > fact.since[:2]
        return True if not any(fact.since[2:]) else None

    def lacks(self, fact: Fact) -> Optional[str]:
        """None when `fact` holds; else why not (or why nobody can tell), in a phrase."""
        holds = self.has(fact)
        if holds:
            return None
        version = self.versions.get(fact.package)
        if version is not None:
            return (f"{fact.package} {_text(version)} has no {fact.what} (it starts at "
                    f"{fact.since_text})")
        release = f"Qubes R{_text(self.release)}" if self.release else "this dom0"
        if holds is False:
            return f"{release} has no {fact.what} (it starts at {fact.since_text})"
        others = [f"rpm -q {name}:" for name in PACKAGES if name != fact.package]
        why = "; ".join(text for text in self.unread if not text.startswith(tuple(others)))
        why = why or f"{fact.package}: version unknown"
        return (f"cannot tell whether {release} has {fact.what} (it starts at "
                f"{fact.since_text}): {why}")

    def report(self) -> dict[str, Any]:
        """What was read and which facts hold (None: cannot tell), for status reports."""
        return {"release": _text(self.release) if self.release else None,
                "packages": {name: _text(v) for name, v in sorted(self.versions.items())},
                "facts": {fact.key: self.has(fact) for fact in FACTS},
                "unread": list(self.unread)}


def read_release(path: str = RELEASE_FILE) -> tuple[Optional[Version], Optional[str]]:
    """The release named by `path`, or None and why not."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(4096)
    except OSError as exc:
        return None, f"{path}: {exc.strerror}"
    release = parse_release(text)
    return (release, None) if release else (None, f"{path}: names no Qubes release")


def read_versions(packages: Sequence[str] = PACKAGES, rpm: str = "rpm"
                  ) -> tuple[dict[str, Version], list[str]]:
    """The installed versions of `packages` as rpm reports them, and what it could not
    tell (rpm prints `package NAME is not installed` and exits with their count)."""
    try:
        result = subprocess.run([rpm, "-q", "--qf", "%{NAME} %{VERSION}\\n", *packages],
                                check=False, capture_output=True, text=True,
                                timeout=RPM_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, [f"rpm -q: {getattr(exc, 'strerror', None) or exc}"]
    versions: dict[str, Version] = {}
    for line in result.stdout.splitlines():
        name, _, text = line.partition(" ")
        version = parse_version(text)
        if name in packages and version is not None:
            versions[name] = version
    missing = [name for name in packages if name not in versions]
    detail = result.stderr.strip().splitlines()[:1] or ["not installed"]
    return versions, [f"rpm -q {name}: {detail[0]}" for name in missing]


def read(release_file: str = RELEASE_FILE, rpm: str = "rpm") -> Platform:
    """The platform of this dom0: the release file, then rpm's database."""
    release, why = read_release(release_file)
    versions, unread = read_versions(PACKAGES, rpm)
    return Platform(release, versions, tuple(([why] if why else []) + unread))
