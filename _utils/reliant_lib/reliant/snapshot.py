"""Read-only loop snapshots: install, verify and remove reliant's create-snapshot.

What is installed in dom0 (docs/snapshots.md):

* reliant's ``create-snapshot`` over Qubes' ``/usr/lib/qubes/create-snapshot``, whose
  original is kept in the backup directory with a manifest (checksum, mode, owner,
  times) so that removal puts it back exactly;
* a qubesd extension that marks the save_on_stop volumes with ``rw=False`` for
  create-snapshot: a package with its ``.dist-info`` (entry point in group
  ``qubes.ext``), installed next to the ``qubes`` package by the ``reliant.snapshots``
  state once the script is in place, as reliant.isolation installs its own.

From qubes-core-admin 4.3.30 qubesd starts some file-pool volumes without create-snapshot
(`reliant.platform.FILE_SNAPSHOTS_DISABLED`): `unprotected_volumes` names them.

Nothing is changed unless the installed ``qubes/storage/file.py`` and the stock
create-snapshot are versions whose calling convention this module knows (sha256
below, read from qubes-core-admin's release tags); otherwise `plan_install`
reports a problem and no file is touched. The manifest names every file an earlier
version installed, so that an update or a removal takes away what is not wanted.
"""

import glob
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Optional

from lxml import etree

from reliant import platform, store

#: sha256 of qubes/storage/file.py -> qubes-core-admin releases that ship it. All of
#: them run create-snapshot with the 3- and 4-argument forms this formula handles.
KNOWN_FILE_PY = {
    "a58baaa2d0d2b922c97c779420353cf75d2f4f01580c14849c7fe84d9b0721ba": "4.2.0-4.2.3",
    "6990fe968508afc46cf2ed955efc4e354e9ba0a6a6c173db80e4d1896b46d3fc": "4.2.4-4.2.7",
    "e98f322e665e25b5444de78253fb4a388ae034e9ea18a6b2ae7df2f9ee58b928":
        "4.2.8-4.2.39, 4.3.0-4.3.12",
    "db86da1a76550ce4eb7e5bc2f003a30b235d9c56be20f8bc7beb13e69c67f058": "4.3.13-4.3.22",
    "4a042b83366c649fe889fc035683d2ef8dd88bdcda6c37bedf4d7f731e7b30b1": "4.3.23-4.3.29",
    "866cf143fd2979fc51643764672e43d1dcd29859d12c1abd2717b3a9898212b0": "4.3.30-4.3.38",
    "f47ffb951e198c2a6bac92c596f8e6074fd99b3fa1cc048391240ac265de2c9f": "4.3.39-4.3.49",
    "2fcb639084ba898ec4a405352ae72faf8b1bc21726fdcda143b288230ff61c11": "4.3.50",
    # main after 4.3.50 (unreleased): only resize() changed.
    "2c9eedad72863aa7dfe7471031732ce7ec1b67d3b326cc37b18a1a0627cc38d9": "main after 4.3.50",
}
#: sha256 of the stock /usr/lib/qubes/create-snapshot -> releases that ship it.
KNOWN_STOCK_SCRIPT = {
    "69d009669c0f65544cb41a8695736cb29f8f76b236c37cc1d6c9620451558954": "4.2.0-4.3.50",
}

#: Where the extension leaves its marks for create-snapshot (the same literal is in
#: both installed files; a unit test checks it).
MARKER_DIR = "/run/reliant/read-only"
ORIGINAL_NAME = "create-snapshot.orig"
MANIFEST_NAME = "manifest.json"
SITE_PACKAGES_GLOBS = ("/usr/lib/python3*/site-packages", "/usr/lib64/python3*/site-packages")


class SnapshotError(Exception):
    """A refusal: the message names the file and what is wrong with it."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def find_site_packages(globs: tuple[str, ...] = SITE_PACKAGES_GLOBS) -> str:
    """The one site-packages directory holding the `qubes` package qubesd imports."""
    found = sorted({os.path.realpath(path) for pattern in globs for path in glob.glob(pattern)
                    if os.path.isfile(os.path.join(path, "qubes", "storage", "file.py"))})
    if len(found) != 1:
        where = ", ".join(found) or "none of " + ", ".join(globs)
        raise SnapshotError(
            f"expected one site-packages with qubes/storage/file.py (qubes-core-dom0), found "
            f"{where}; set reliant:snapshots:site_packages")
    return found[0]


@dataclass(frozen=True)
class Layout:
    """Where the component's files are in dom0."""

    script: str
    site_packages: str
    backup_dir: str
    marker_dir: str = MARKER_DIR

    @property
    def file_py(self) -> str:
        return os.path.join(self.site_packages, "qubes", "storage", "file.py")

    @property
    def original(self) -> str:
        return os.path.join(self.backup_dir, ORIGINAL_NAME)

    @property
    def manifest(self) -> str:
        return os.path.join(self.backup_dir, MANIFEST_NAME)


def desired_files(layout: Layout, script: bytes) -> dict[str, bytes]:
    """Every file this module installs (path -> content)."""
    return {layout.script: script}


@dataclass
class Manifest:
    """What the backup directory records: the original script and what was installed."""

    original_sha256: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    installed: dict[str, str] = field(default_factory=dict)

    def dump(self) -> bytes:
        return json.dumps(self.__dict__, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def load(cls, layout: Layout) -> "Optional[Manifest]":
        """The manifest, None when absent; SnapshotError when it or the backup is damaged."""
        data = store.read_or_none(layout.manifest)
        if data is None:
            return None
        try:
            manifest = cls(**json.loads(data))
        except (ValueError, TypeError) as exc:
            raise SnapshotError(f"{layout.manifest}: not a manifest of reliant.snapshots: {exc}")\
                from exc
        original = store.read_or_none(layout.original)
        if original is None or sha256_bytes(original) != manifest.original_sha256:
            raise SnapshotError(
                f"{layout.original}: backup of the original create-snapshot is missing or does "
                f"not match {layout.manifest}; restore it from the qubes-core-dom0 package")
        return manifest


@dataclass
class Plan:
    """The difference between dom0 and the wanted state, and what closing it takes."""

    layout: Layout
    problems: list[str] = field(default_factory=list)
    backup: Optional[Manifest] = None
    manifest: Optional[Manifest] = None
    write: dict[str, bytes] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    restore: bool = False
    drop_backup: bool = False

    def changes(self) -> dict[str, str]:
        """What applying the plan changes, path -> what happens to it."""
        changes: dict[str, str] = {}
        if self.backup:
            changes[self.layout.original] = "original create-snapshot saved"
        if self.manifest and not self.drop_backup:
            changes[self.layout.manifest] = "written"
        changes.update({path: "installed" for path in self.write})
        changes.update({path: "removed" for path in self.remove})
        if self.restore:
            changes[self.layout.script] = "original restored"
        if self.drop_backup:
            changes[self.layout.original] = "removed"
            changes[self.layout.manifest] = "removed"
        return changes


def check_qubes_version(layout: Layout, extra_known: frozenset[str]) -> list[str]:
    """Problems with the Qubes files the component relies on (file.py)."""
    data = store.read_or_none(layout.file_py)
    if data is None:
        return [f"{layout.file_py} not found: is qubes-core-dom0 installed?"]
    digest = sha256_bytes(data)
    if digest in KNOWN_FILE_PY or digest in extra_known:
        return []
    return [f"{layout.file_py} (sha256 {digest}) is not a qubes-core-admin release whose "
            f"create-snapshot calls this formula knows ({', '.join(KNOWN_FILE_PY.values())}); "
            "nothing was changed. Update reliant-formula, or review that it still calls "
            "create-snapshot NAME IMG COW / NAME IMG SRC_COW COW and add the sha256 to "
            "reliant:snapshots:extra_known_sha256"]


def plan_install(layout: Layout, script: bytes,
                 extra_known: frozenset[str] = frozenset()) -> Plan:
    """Compute what installing the component changes; problems mean: change nothing."""
    plan = Plan(layout)
    plan.problems = check_qubes_version(layout, extra_known)
    try:
        manifest = Manifest.load(layout)
    except SnapshotError as exc:
        plan.problems.append(str(exc))
        return plan
    wanted = desired_files(layout, script)
    current = store.read_or_none(layout.script)
    ours = sha256_bytes(script)
    if current is None:
        plan.problems.append(f"{layout.script} not found: is qubes-core-dom0 installed?")
    elif manifest and sha256_bytes(current) in (manifest.installed.get(layout.script), ours):
        pass  # ours (this version or the one installed before): the backup stays
    elif sha256_bytes(current) == ours:
        plan.problems.append(f"{layout.script} is reliant's but {layout.manifest} is missing: "
                             "the original cannot be restored; reinstall qubes-core-dom0")
    elif sha256_bytes(current) in KNOWN_STOCK_SCRIPT or sha256_bytes(current) in extra_known:
        info = os.stat(layout.script)
        plan.backup = Manifest(sha256_bytes(current), stat.S_IMODE(info.st_mode), info.st_uid,
                               info.st_gid, info.st_mtime_ns)
        manifest = plan.backup
    else:
        plan.problems.append(
            f"{layout.script} (sha256 {sha256_bytes(current)}) is neither reliant's nor a stock "
            f"qubes-core-admin create-snapshot ({', '.join(KNOWN_STOCK_SCRIPT.values())}); "
            "nothing was changed")
    if plan.problems:
        return plan
    plan.write = {path: data for path, data in wanted.items() if store.read_or_none(path) != data}
    installed = {path: sha256_bytes(data) for path, data in wanted.items()}
    if manifest is not None and (plan.write or manifest.installed != installed):
        manifest.installed = installed
        plan.manifest = manifest
    return plan


def plan_remove(layout: Layout) -> Plan:
    """Compute what removing the component changes: the original script back, ours gone."""
    plan = Plan(layout)
    try:
        manifest = Manifest.load(layout)
    except SnapshotError as exc:
        plan.problems.append(str(exc))
        return plan
    if os.path.isdir(layout.marker_dir):
        plan.remove = [os.path.join(layout.marker_dir, name)
                       for name in sorted(os.listdir(layout.marker_dir))]
    if manifest is None:
        return plan
    # Only reliant's script is replaced: one that a qubes-core-dom0 update wrote since stays.
    current = store.read_or_none(layout.script)
    plan.restore = current is not None and \
        sha256_bytes(current) == manifest.installed.get(layout.script)
    plan.drop_backup = True
    plan.manifest = manifest
    return plan


def apply_install(layout: Layout, plan: Plan) -> None:
    """Back up the original, record the manifest, then install the script."""
    if plan.problems:
        raise SnapshotError("; ".join(plan.problems))
    if plan.backup:
        with open(layout.script, "rb") as handle:
            original = handle.read()
        if sha256_bytes(original) != plan.backup.original_sha256:
            raise SnapshotError(f"{layout.script} changed while installing; nothing was changed")
        os.makedirs(layout.backup_dir, mode=0o700, exist_ok=True)
        store.replace(layout.original, original, 0o600)
    if plan.manifest:
        os.makedirs(layout.backup_dir, mode=0o700, exist_ok=True)
        store.replace(layout.manifest, plan.manifest.dump(), 0o600)
    manifest = plan.manifest or Manifest.load(layout)
    for path, data in plan.write.items():
        store.replace(path, data, manifest.mode, manifest.uid, manifest.gid)


def apply_remove(layout: Layout, plan: Plan) -> None:
    """Remove reliant's files and put the original create-snapshot back as it was."""
    if plan.problems:
        raise SnapshotError("; ".join(plan.problems))
    if plan.restore:
        manifest = plan.manifest
        with open(layout.original, "rb") as handle:
            original = handle.read()
        store.replace(layout.script, original, manifest.mode, manifest.uid, manifest.gid,
                     manifest.mtime_ns)
    for path in plan.remove:
        os.unlink(path)
    if os.path.isdir(layout.marker_dir) and not os.listdir(layout.marker_dir):
        os.rmdir(layout.marker_dir)
    if plan.drop_backup:
        os.unlink(layout.manifest)
        os.unlink(layout.original)
        if not os.listdir(layout.backup_dir):
            os.rmdir(layout.backup_dir)


def verify(layout: Layout, script: bytes) -> list[str]:
    """Problems that make the installed component not ours or not intact ([] = fine)."""
    problems = []
    try:
        manifest = Manifest.load(layout)
    except SnapshotError as exc:
        return [str(exc)]
    if manifest is None:
        problems.append(f"{layout.manifest} missing: the original create-snapshot is not saved")
    for path, data in desired_files(layout, script).items():
        current = store.read_or_none(path)
        if current is None:
            problems.append(f"{path} missing")
        elif current != data:
            problems.append(f"{path} is not reliant's (sha256 {sha256_bytes(current)})")
    return problems


def _snapshots_disabled(volume: etree._Element, pool: Optional[etree._Element]) -> bool:
    """qubes-core-admin's Volume.snapshots_disabled (qubes/storage/__init__.py, 4.3.30) for
    a volume of a file pool: save_on_stop, not snap_on_start, revisions_to_keep -1 (the
    volume's, else its pool's: FilePool.init_volume in qubes/storage/file.py)."""
    if pool is None or pool.get("driver") != "file":
        return False
    if volume.get("save_on_stop") != "True" or volume.get("snap_on_start") == "True":
        return False
    return volume.get("revisions_to_keep", pool.get("revisions_to_keep", "1")).strip() == "-1"


def unprotected_volumes(root: etree._Element, found: platform.Platform) -> list[str]:
    """The volumes of the qubesd store `root` that qubesd on the dom0 `found` starts
    without create-snapshot, each a message naming qube and volume: reliant's
    create-snapshot never sees them, so none of them is attached read-only. [] where
    qubes-core-admin has no such bypass (before 4.3.30)."""
    reason = found.lacks(platform.FILE_SNAPSHOTS_DISABLED)
    if found.has(platform.FILE_SNAPSHOTS_DISABLED) is False:
        return []
    pools = {pool.get("name"): pool for pool in root.iterfind("pools/pool")}
    found_volumes = []
    for domain in root.iterfind("domains/domain"):
        qube = domain.findtext("properties/property[@name='name']") or domain.get("id")
        for volume in domain.iterfind("volume-config/volume"):
            if _snapshots_disabled(volume, pools.get(volume.get("pool"))):
                found_volumes.append(f"{qube}:{volume.get('name')}")
    if reason:
        why = f"may not be protected ({reason})"
    else:
        why = (f"not protected: from {platform.FILE_SNAPSHOTS_DISABLED.since_text} a file-pool "
               "volume with revisions_to_keep=-1 skips create-snapshot and its image goes "
               "to libvirt as it is, never read-only; set revisions_to_keep to 0 or 1 "
               "(qvm-volume config QUBE:VOLUME revisions_to_keep 1) to protect it")
    return [f"volume {name} (file pool, revisions_to_keep=-1) {why}" for name in found_volumes]
