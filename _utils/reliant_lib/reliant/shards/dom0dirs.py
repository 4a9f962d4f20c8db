"""dom0 directories of shard qubes: qubes-core-admin keeps firewall.xml, icons and the
libvirt config of each qube in /var/lib/qubes/{appvms,vm-templates}/NAME; while the
shard is closed they live in the shard (``dom0/``), and are copied back at suture.

Copies are of directories and regular files only, written aside and swapped in by
rename, so an interruption leaves one complete tree (`recover_swaps`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Sequence

from reliant import store
from reliant.shards.files import DOM0_DIR, Shard
from reliant.vocab import Problem

QUBES_DIR = "/var/lib/qubes"
#: The suffix of a directory being removed (`release_dom0_dirs`).
ASIDE = ".gone"


def _fsync_tree(path: str) -> None:
    for directory, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        store.fsync_dir(directory)


def _copy_regular_tree(src: str, dst: str, skipped: list[str]) -> None:
    """Copy directories and regular files only (never a symlink or device)."""
    os.mkdir(dst, 0o700)
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        target = os.path.join(dst, entry.name)
        if entry.is_dir(follow_symlinks=False):
            _copy_regular_tree(entry.path, target, skipped)
        elif entry.is_file(follow_symlinks=False):
            shutil.copy2(entry.path, target, follow_symlinks=False)
        else:
            skipped.append(entry.path)
    shutil.copystat(src, dst, follow_symlinks=False)


def _trees_equal(a: str, b: str) -> bool:
    """Same names, kinds, modes and file contents (symlinks and others ignored)."""
    def listing(path: str) -> dict[str, os.DirEntry]:
        return {e.name: e for e in os.scandir(path)
                if e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False)}
    left, right = listing(a), listing(b)
    if left.keys() != right.keys():
        return False
    for name, entry in left.items():
        other = right[name]
        if entry.is_dir(follow_symlinks=False) != other.is_dir(follow_symlinks=False):
            return False
        if entry.stat(follow_symlinks=False).st_mode != other.stat(follow_symlinks=False).st_mode:
            return False
        if entry.is_dir(follow_symlinks=False):
            if not _trees_equal(entry.path, other.path):
                return False
        else:
            with open(entry.path, "rb") as x, open(other.path, "rb") as y:
                if x.read() != y.read():
                    return False
    return True


def recover_swaps(parent: str) -> None:
    """Finish or undo a directory replacement interrupted half-way (see `_replace_tree`)."""
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith(".") and entry.endswith(".old"):
            final = os.path.join(parent, entry[1:-4])
            if os.path.lexists(final):
                shutil.rmtree(path)
            else:
                os.rename(path, final)
                store.fsync_dir(parent)
        elif entry.startswith(".") and entry.endswith(".new"):
            shutil.rmtree(path)


def _replace_tree(src: str, parent: str, name: str, skipped: list[str]) -> bool:
    """Make `parent/name` a copy of `src` unless it already is one; True if copied.

    The copy is written and fsynced as ``.name.new``; the old tree is renamed to
    ``.name.old`` before the new one takes its name, so an interruption leaves one
    complete tree that `recover_swaps` restores."""
    final = os.path.join(parent, name)
    if os.path.isdir(final) and not os.path.islink(final) and _trees_equal(src, final):
        return False
    os.makedirs(parent, mode=0o755, exist_ok=True)
    new, old = os.path.join(parent, f".{name}.new"), os.path.join(parent, f".{name}.old")
    if os.path.lexists(new):
        shutil.rmtree(new)
    _copy_regular_tree(src, new, skipped)
    _fsync_tree(new)
    if os.path.lexists(final):
        os.rename(final, old)
    os.rename(new, final)
    store.fsync_dir(parent)
    if os.path.lexists(old):
        shutil.rmtree(old)
        store.fsync_dir(parent)
    return True


def _remove_tree(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    else:
        return
    store.fsync_dir(os.path.dirname(path))


def real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def entries(base: str) -> set[tuple[str, str]]:
    """(subdir, name) of everything in base/appvms and base/vm-templates."""
    found = set()
    for subdir in ("appvms", "vm-templates"):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            found.update((subdir, name) for name in os.listdir(os.path.join(base, subdir)))
    return found


def _saved_dirs_usable(shard: Shard, problems: list[Problem]) -> bool:
    """False (reported) when the shard's dom0, dom0/appvms or dom0/vm-templates is a
    symlink or not a directory: a hostile shard could point them at dom0's own files."""
    for part in (DOM0_DIR, os.path.join(DOM0_DIR, "appvms"),
                 os.path.join(DOM0_DIR, "vm-templates")):
        path = os.path.join(shard.path, part)
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            problems.append(Problem("error", "refused", f"{path} is a symlink or not a "
                                    "directory; the shard's dom0 directories are not used",
                                    shard.id))
            return False
    return True


def restore_dom0_dirs(shard: Shard, qubes: Iterable[tuple[str, str]], qubes_dir: str,
                      problems: list[Problem]) -> None:
    """Copy the shard's saved dom0 directories of `qubes` into `qubes_dir`. An existing
    directory there is left alone (it is the same or newer)."""
    if not _saved_dirs_usable(shard, problems):
        return
    for subdir in ("appvms", "vm-templates"):
        recover_swaps(os.path.join(shard.path, DOM0_DIR, subdir))
    saved = entries(os.path.join(shard.path, DOM0_DIR))
    for subdir, name in qubes:
        if (subdir, name) not in saved:
            continue
        src = os.path.join(shard.path, DOM0_DIR, subdir, name)
        dst = os.path.join(qubes_dir, subdir, name)
        if os.path.islink(src):
            problems.append(Problem("warning", "invalid", f"{src} is a symlink; not used",
                                    shard.id, name))
            continue
        if not real_dir(src) or os.path.lexists(dst):
            continue
        skipped: list[str] = []
        _replace_tree(src, os.path.join(qubes_dir, subdir), name, skipped)
        for path in skipped:
            problems.append(Problem("warning", "invalid", f"{path} is not a regular file or "
                                    "directory; not copied", shard.id, name))


def save_dom0_dirs(shard: Shard, qubes: Sequence[tuple[str, str]], keep: set[tuple[str, str]],
                   qubes_dir: str, problems: list[Problem]) -> bool:
    """Copy the dom0 directories of the shard's `qubes` from `qubes_dir` into the shard;
    drop saved directories of qubes that are neither in `qubes` nor in `keep`. False
    (nothing done) when the shard's directories cannot be used safely."""
    if not _saved_dirs_usable(shard, problems):
        return False
    for subdir in ("appvms", "vm-templates"):
        recover_swaps(os.path.join(shard.path, DOM0_DIR, subdir))
    present = entries(qubes_dir)
    for subdir, name in qubes:
        if (subdir, name) not in present:
            continue
        src = os.path.join(qubes_dir, subdir, name)
        if real_dir(src):
            skipped: list[str] = []
            _replace_tree(src, os.path.join(shard.path, DOM0_DIR, subdir), name, skipped)
            for path in skipped:
                problems.append(Problem("warning", "invalid", f"{path} is not a regular file or "
                                        "directory; not saved", shard.id, name))
    wanted = set(qubes) | keep
    for subdir in ("appvms", "vm-templates"):
        parent = os.path.join(shard.path, DOM0_DIR, subdir)
        if os.path.isdir(parent):
            for name in sorted(os.listdir(parent)):
                if not name.startswith(".") and (subdir, name) not in wanted:
                    _remove_tree(os.path.join(parent, name))
    return True


def release_dom0_dirs(qubes: Iterable[tuple[str, str]], qubes_dir: str) -> None:
    """Remove the (saved) dom0 directories of `qubes` from `qubes_dir` (or from a shard's
    ``dom0/``). Each is renamed aside (``.NAME.gone``) before it is removed, so that an
    interruption leaves it whole or only the aside copy, which the next call removes."""
    for subdir, name in qubes:
        parent = os.path.join(qubes_dir, subdir)
        path, aside = os.path.join(parent, name), os.path.join(parent, f".{name}{ASIDE}")
        if os.path.lexists(path):
            if os.path.lexists(aside):
                _remove_tree(aside)
            os.rename(path, aside)
            store.fsync_dir(parent)
        _remove_tree(aside)
