"""Where a shard qube's volumes may live: one set of rules for suture (shard files) and
the isolation extension (the Admin API at runtime).

- A shard's own pools keep their data in files under its directory: driver ``file`` or
  ``file-reflink``, `dir_path` strictly inside the shard directory once resolved (no
  symlink out), not in its ``dom0`` tree (`shard_pool_problem`).
- A volume holding the qube's own data (not a snapshot, not a kernel) lies in one of
  those pools, under a vid that is a plain relative name and stays inside the pool
  directory; its files there are regular files, not symlinks (`volume_problem`).
- A snapshot (``snap_on_start``) takes as source the same-named volume of the qube's
  template (or, for a disposable, that volume's own source), in a pool of a group it may
  reference; in a pool that is not its shard's, its vid is the one qubesd gives it.
- A volume of a ``linux-kernel`` pool is always allowed (its vid is ignored).

Facts (qubes-core-admin, release4.2 and release4.3):
- ``qubes/storage/file.py``: ``dir_path`` is normalised (normpath); a volume's files are
  ``os.path.join(dir_path, vid + SUFFIX)`` (``.img``, ``-cow.img``, ``-import.img``,
  ``-cow.img.old``: FileVolume.path, path_cow, path_import, revisions); a snapshot reads
  ``os.path.join(dir_path, source.vid + ".img")``; new vids are
  ``{appvms|vm-templates}/NAME/VOLUME`` (FilePool._vid_prefix, init_volume).
- ``qubes/storage/reflink.py``: ``dir_path`` is made absolute; a volume's files are
  ``os.path.join(dir_path, vid)`` + ``.img``, ``-precache.img``, ``-dirty.img``,
  ``-import.img`` and revisions ``.img.N@TIMESTAMPZ``; a snapshot hardlinks its source's
  ``.img``; new vids are ``vm.dir_path_prefix/NAME/VOLUME``. It qualifies as a shard
  pool like ``file``: every byte of its volumes is in files under ``dir_path`` (only the
  copies are reflinks), and shards use it (the fixtures' shard pools are file-reflink).
- ``qubes/storage/lvm.py``: new vids are ``VG/vm-NAME-VOLUME``; starting a snapshot
  removes and re-creates ``VID-snap``, removing a qube removes ``VID`` and its revisions,
  a volatile volume is removed and re-created at each start: a vid can name any logical
  volume of the group (dom0's root is ``qubes_dom0/root``).
- ``qubes/storage/kernels.py``: LinuxModules ignores its vid (the kernel is vm.kernel) and
  is read-only.
- ``qubes/storage/__init__.py``: a volume's ``source`` is stored as the source's vid
  (``Volume.__str__``) and looked up in the volume's own pool (Storage.init_volume;
  Volume.__init__ asserts both share the pool); a volume without a pool goes to the
  app's default pool (core's).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional

from reliant.vocab import DATA_VOLUMES

SHARD_POOL_DRIVERS = ("file", "file-reflink")
#: drivers whose vids `qubesd_vids` knows: where a snapshot may live outside its shard
SNAPSHOT_POOL_DRIVERS = ("file", "file-reflink", "lvm_thin")
KERNEL_POOL_DRIVER = "linux-kernel"


@dataclass(frozen=True)
class PoolFacts:
    """The attributes of a <pool> (or of a qubesd pool) the rules read."""

    name: str
    driver: str = ""
    dir_path: str = ""
    volume_group: str = ""

    @classmethod
    def of(cls, attributes: Mapping[str, str]) -> PoolFacts:
        """The facts of a <pool> element's attributes (``element.attrib``)."""
        return cls(*(attributes.get(key) or "" for key in
                     ("name", "driver", "dir_path", "volume_group")))


class VolumeFacts(NamedTuple):
    """One volume of a qube: `pool` is "" when it names none; `source` is the vid of the
    volume it is a snapshot of, in the same pool (a tuple: suture makes one per volume)."""

    name: str
    pool: str
    vid: str
    source: Optional[str] = None
    snap_on_start: bool = False


def within(path: str, directory: str) -> bool:
    """True when `path` is `directory` or below it, both resolved (realpath of the part
    that exists)."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _inside(path: str, directory: str) -> bool:
    """`within`, but strictly below `directory`."""
    return within(path, directory) and os.path.realpath(path) != os.path.realpath(directory)


def _bad_text(text: str) -> bool:
    return "\0" in text or "\n" in text or "\r" in text


def shard_pool_problem(pool: PoolFacts, homes: Iterable[str],
                       excluded: Iterable[str] = ()) -> Optional[str]:
    """Why `pool` may not hold a shard's data, None if it may: `homes` are the
    directories it must lie strictly inside (the shard's directory at suture, the shard
    roots at runtime), `excluded` those it may not lie in (the shard's dom0 tree)."""
    if pool.driver not in SHARD_POOL_DRIVERS:
        return (f"pool {pool.name} has driver {pool.driver or 'none'!r}: a shard's pools keep "
                f"their data in files under the shard ({' or '.join(SHARD_POOL_DRIVERS)})")
    if not pool.dir_path or _bad_text(pool.dir_path) or not os.path.isabs(pool.dir_path):
        return f"pool {pool.name} has no absolute dir_path"
    if not any(_inside(pool.dir_path, home) for home in homes):
        return (f"pool {pool.name} has dir_path {pool.dir_path} (resolved "
                f"{os.path.realpath(pool.dir_path)}), not inside the shard directory")
    if any(within(pool.dir_path, other) for other in excluded):
        return f"pool {pool.name} has dir_path {pool.dir_path} in the shard's saved dom0 tree"
    return None


def plain_relative(vid: str) -> bool:
    """True for a vid made of plain names: relative, no empty, ``.`` or ``..`` part, no
    NUL or line break."""
    return bool(vid) and not _bad_text(vid) and not vid.startswith("/") and all(
        part not in ("", ".", "..") for part in vid.split("/"))


def qubesd_vids(pool: PoolFacts, qube: str, klass: str, volume: str) -> set[str]:
    """The vid qubesd gives volume `volume` of a qube named `qube` of class `klass` in
    `pool` (both file prefixes when the class is not known); empty for other drivers."""
    if pool.driver == "lvm_thin":
        return {f"{pool.volume_group}/vm-{qube}-{volume}"}
    if pool.driver in ("file", "file-reflink"):
        kinds = {"TemplateVM": ("vm-templates",), "": ("appvms", "vm-templates")}
        return {f"{kind}/{qube}/{volume}" for kind in kinds.get(klass, ("appvms",))}
    return set()


def renamed_vid(pool: PoolFacts, klass: str, volume: str, vid: str, old: str,
                new: str) -> str:
    """The vid of `volume` once its qube `old` is named `new`: the one qubesd gives the new
    name when `vid` is the one it gave the old (a snapshot outside the shard must stay
    named so, see `volume_problem`), else `vid` unchanged."""
    if vid not in qubesd_vids(pool, old, klass, volume):
        return vid
    head = vid.split("/")[0]  # the volume group, or appvms / vm-templates
    return next(v for v in sorted(qubesd_vids(pool, new, klass, volume))
                if v.split("/")[0] == head)


class PathView:
    """Directories resolved and listed once (realpath is a chain of lstat calls, and the
    volumes of a shard share their directories): use one view per check of a store, a
    new one when the files may have changed."""

    def __init__(self) -> None:
        self._resolved: dict[str, str] = {}
        self._missing: set[str] = set()  # resolved paths that do not exist
        self._listed: dict[str, list[tuple[str, bool, bool]]] = {}
        #: (pool directory, vid) found fine (the source of many snapshots is one volume)
        self.fine: set[tuple[str, str]] = set()

    def resolve(self, path: str) -> str:
        """os.path.realpath of an absolute path without ``.`` or ``..`` parts."""
        found = self._resolved.get(path)
        if found is None:
            parent, name = os.path.split(path)
            if not name or parent == path:
                found = os.path.realpath(path)
            else:
                base = self.resolve(parent)
                found = os.path.join(base, name)
                if base in self._missing:
                    self._missing.add(found)
                else:
                    try:
                        if stat.S_ISLNK(os.lstat(found).st_mode):
                            found = os.path.realpath(found)
                    except OSError:
                        self._missing.add(found)
            self._resolved[path] = found
        return found

    def entries(self, directory: str) -> list[tuple[str, bool, bool]]:
        """(name, regular file, directory) of each entry of `directory` (resolved),
        symlinks not followed; none if it cannot be listed."""
        found = [] if directory in self._missing else self._listed.get(directory)
        if found is None:
            try:
                with os.scandir(directory) as listing:
                    found = [(e.name, e.is_file(follow_symlinks=False),
                              e.is_dir(follow_symlinks=False)) for e in listing]
            except OSError:
                found = []
            self._listed[directory] = found
        return found


def _files_problem(volume: str, pool: PoolFacts, directory: str, vid: str,
                   paths: PathView) -> Optional[str]:
    """Why the files of `vid` in the pool directory `directory` (resolved) would leave it or
    are not plain files; None if they are fine (or do not exist yet)."""
    if (directory, vid) in paths.fine:
        return None
    if not plain_relative(vid):
        return f"volume {volume}: vid {vid!r} in pool {pool.name} is not a plain relative name"
    head, stem = os.path.split(vid)
    parent = paths.resolve(os.path.join(directory, head)) if head else directory
    if not (parent == directory or parent.startswith(directory.rstrip("/") + "/")):
        return (f"volume {volume}: vid {vid!r} leads out of the directory of pool {pool.name} "
                f"(to {parent})")
    for name, regular, is_dir in paths.entries(parent):
        if (name == stem or name.startswith((stem + ".", stem + "-"))) and not regular \
                and not (name == stem and is_dir):
            return (f"volume {volume}: {os.path.join(parent, name)} in pool {pool.name} is not "
                    "a regular file (a symlink or device could reach outside the shard)")
    paths.fine.add((directory, vid))
    return None


def _snapshot_problem(qube: str, klass: str, volume: VolumeFacts, pool: PoolFacts,
                      own_dirs: Mapping[str, str], template: str,
                      template_volumes: Optional[Sequence[VolumeFacts]],
                      paths: PathView) -> Optional[str]:
    name = volume.name
    if not volume.source:
        return f"volume {name} is a snapshot without a source"
    where = f"{volume.pool}:{volume.source}"
    if not template:
        return f"volume {name} is a snapshot of {where}, but the qube has no template"
    if template_volumes is None:  # template not visible: only its own volume's name fits
        if volume.source not in qubesd_vids(pool, template, "", name):
            return (f"volume {name} is a snapshot of {where}, which is not the {name} volume "
                    f"of its template {template} (not visible)")
    else:
        sources = {(v.pool, vid) for v in template_volumes if v.name == name
                   for vid in (v.vid, v.source if v.snap_on_start else None) if vid}
        if (volume.pool, volume.source) not in sources:
            return (f"volume {name} is a snapshot of {where}, which is not a volume of its "
                    f"template {template}")
    if volume.pool in own_dirs:
        return (_files_problem(name, pool, own_dirs[volume.pool], volume.vid, paths)
                or _files_problem(name, pool, own_dirs[volume.pool], volume.source, paths))
    if pool.driver not in SNAPSHOT_POOL_DRIVERS:
        return (f"volume {name} is a snapshot in pool {pool.name} (driver {pool.driver!r}); "
                f"outside its shard a snapshot may only be in a "
                f"{', '.join(SNAPSHOT_POOL_DRIVERS)} pool")
    wanted = qubesd_vids(pool, qube, klass, name)
    if volume.vid not in wanted:
        return (f"volume {name} is a snapshot with vid {volume.vid!r} in pool {pool.name} of "
                f"another group; there it must be named as qubesd names it: "
                f"{' or '.join(sorted(wanted))}")
    return None


def volume_problem(qube: str, klass: str, volume: VolumeFacts, pools: Mapping[str, PoolFacts],
                   own_dirs: Mapping[str, str], template: str = "",
                   template_volumes: Optional[Sequence[VolumeFacts]] = None,
                   paths: Optional[PathView] = None) -> Optional[str]:
    """Why `volume` of shard qube `qube` (class `klass`) breaks confinement; None if it
    does not.

    `pools`: the pools it may use (its shard's and those of the groups it may reference);
    `own_dirs`: its shard's pools that passed `shard_pool_problem`, with their resolved
    directory; `template`: its template's name ("" if none); `template_volumes`: the
    template's volumes, None when the template is not visible; `paths`: the view of the
    files to use (default: a new one)."""
    name = volume.name
    paths = paths or PathView()
    if not volume.pool:
        return f"volume {name} names no pool (qubesd would put it in a default pool of core)"
    pool = pools.get(volume.pool)
    if pool is None:
        return f"volume {name} is in pool {volume.pool}, which it may not use"
    if pool.driver == KERNEL_POOL_DRIVER:
        return None
    if volume.snap_on_start:
        return _snapshot_problem(qube, klass, volume, pool, own_dirs, template,
                                 template_volumes, paths)
    if volume.pool not in own_dirs:
        return (f"volume {name} is in pool {volume.pool} (driver {pool.driver or 'none'!r}), "
                f"not a file pool of its shard: a shard qube's own data lives only there")
    return _files_problem(name, pool, own_dirs[volume.pool], volume.vid, paths)


def defaulted_volumes(klass: str) -> tuple[str, ...]:
    """The volumes of a new qube of `klass` that go to core's default pools unless placed
    elsewhere: the others are snapshots of its template's, and a disposable's own
    volatile takes its template's pool (qubes/vm/appvm.py and dispvm.py volume_config)."""
    if klass == "DispVM":
        return ()
    if klass == "AppVM":
        return ("private", "volatile")
    return DATA_VOLUMES
