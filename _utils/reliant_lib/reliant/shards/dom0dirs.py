"""dom0 directories of shard qubes: qubes-core-admin keeps firewall.xml (and, from R4.3,
notes.txt) of each qube in /var/lib/qubes/{appvms,vm-templates}/NAME; while the shard is
closed they live in the shard (``dom0/``), and are copied back at suture.

Every change is made so that a kill at any point leaves each directory complete, in its
old or its new version, and never costs the newer one:

- a copy is written and fsynced as ``.NAME.new``; the current tree becomes ``.NAME.old``,
  the copy takes its name, the old tree is then removed (`_replace_tree`);
- a removal first renames the tree to ``.NAME.gone`` in the same parent, then deletes it
  (`_discard`): a half-deleted tree never carries a qube's name;
- `recover_swaps` finishes what an interrupted run left: ``.NAME.new`` wins over
  ``.NAME.old`` when NAME is missing (it was complete before the old tree moved aside),
  ``.NAME.old`` comes back when it is alone, the rest goes.

Only directories and regular files are copied (opened with `store.open_regular`: no
symlink followed, no FIFO blocking), holes of sparse files are kept, and what is copied
into /var/lib/qubes is bounded (`MAX_BYTES` by default, `MAX_ENTRIES`, `MAX_DEPTH`);
a qube whose saved directory is over a bound is left out of the merge at suture
(`saved_dir_refusal`). Symlinks and other stray entries are reported and skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from typing import Optional

from reliant import store
from reliant.shards.files import DOM0_DIR, Shard
from reliant.vocab import Problem

QUBES_DIR = "/var/lib/qubes"
SUBDIRS = ("appvms", "vm-templates")
#: default bound of the bytes (data, holes excluded) copied into /var/lib/qubes for one
#: qube (setting shards:dom0_dir_max_bytes); qubesd writes a few KiB there
MAX_BYTES = 16 * 1024 * 1024
#: entries and directory levels of one qube's directory that are copied at most
MAX_ENTRIES = 4096
MAX_DEPTH = 8
#: The suffix of a directory being removed (`release_dom0_dirs`).
ASIDE = ".gone"
_NEW, _OLD = ".new", ".old"
_CHUNK = 1 << 20


def _marked(parent: str, name: str, mark: str) -> str:
    return os.path.join(parent, f".{name}{mark}")


def real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the data of the file `fd` up to `size`; holes are left out."""
    ranges, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from `offset` on
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        ranges.append((start, end))
        offset = end
    return ranges


class _Budget:
    """What one copy may still write: bytes of data and entries (None: unbounded)."""

    def __init__(self, max_bytes: Optional[int]) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries = 0

    def take(self, path: str, data: int = 0) -> None:
        self.bytes += data
        self.entries += 1
        if self.max_bytes is None:
            return
        if self.bytes > self.max_bytes:
            raise OSError(errno.EFBIG, f"more than the limit of {self.max_bytes} bytes "
                          "for one qube's dom0 directory", path)
        if self.entries > MAX_ENTRIES:
            raise OSError(errno.EFBIG, f"more than {MAX_ENTRIES} entries in one qube's "
                          "dom0 directory", path)


def _copy_file(src: str, dst: str, budget: _Budget) -> None:
    """Copy the regular file `src` to the new file `dst` with its holes, mode and times."""
    source = store.open_regular(src)
    try:
        with store.blame(src):
            info = os.fstat(source)
            ranges = _data_ranges(source, info.st_size)
        budget.take(src, sum(end - start for start, end in ranges))
        target = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        try:
            for start, end in ranges:
                for offset in range(start, end, _CHUNK):
                    with store.blame(src):
                        data = os.pread(source, min(_CHUNK, end - offset), offset)
                    if not data:  # the file shrank under us: the rest reads as a hole
                        break
                    with store.blame(dst):
                        _pwrite_all(target, data, offset)
            with store.blame(dst):
                os.ftruncate(target, info.st_size)
                os.fchmod(target, stat.S_IMODE(info.st_mode))
                os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
                os.fsync(target)
        finally:
            os.close(target)
    finally:
        os.close(source)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _copy_tree(src: str, dst: str, skipped: list[str], budget: _Budget,
               depth: int = 0) -> None:
    """Copy directories and regular files only (never a symlink, FIFO or device: those
    go to `skipped`, as do directories deeper than MAX_DEPTH); each directory is fsynced."""
    info = os.lstat(src)
    os.mkdir(dst, 0o700)
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        target = os.path.join(dst, entry.name)
        if entry.is_dir(follow_symlinks=False) and depth < MAX_DEPTH:
            budget.take(entry.path)
            _copy_tree(entry.path, target, skipped, budget, depth + 1)
        elif entry.is_file(follow_symlinks=False):
            _copy_file(entry.path, target, budget)
        else:
            budget.take(entry.path)
            skipped.append(entry.path)
    os.chmod(dst, stat.S_IMODE(info.st_mode))
    os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
    store.fsync_dir(dst)


def _same_file(a: str, b: str) -> bool:
    """Same size, mode and bytes; only the data ranges of either file are read."""
    with contextlib.ExitStack() as stack:
        fds = []
        for path in (a, b):
            fd = store.open_regular(path)
            stack.callback(os.close, fd)
            fds.append(fd)
        infos = [os.fstat(fd) for fd in fds]
        if infos[0].st_size != infos[1].st_size or infos[0].st_mode != infos[1].st_mode:
            return False
        size = infos[0].st_size
        with store.blame(a):
            ranges = sorted(r for fd in fds for r in _data_ranges(fd, size))
            for start, end in ranges:
                for offset in range(start, end, _CHUNK):
                    length = min(_CHUNK, end - offset)
                    if os.pread(fds[0], length, offset) != os.pread(fds[1], length, offset):
                        return False
    return True


def _listing(path: str, depth: int) -> dict[str, os.DirEntry]:
    """What `_copy_tree` copies of the directory `path` at `depth`."""
    return {e.name: e for e in os.scandir(path) if e.is_file(follow_symlinks=False)
            or (e.is_dir(follow_symlinks=False) and depth < MAX_DEPTH)}


def _trees_equal(a: str, b: str, depth: int = 0) -> bool:
    """Same names, kinds, modes and file contents (symlinks and others ignored)."""
    left, right = _listing(a, depth), _listing(b, depth)
    if left.keys() != right.keys():
        return False
    for name, entry in left.items():
        other = right[name]
        if entry.is_dir(follow_symlinks=False) != other.is_dir(follow_symlinks=False):
            return False
        if entry.is_dir(follow_symlinks=False):
            if (entry.stat(follow_symlinks=False).st_mode
                    != other.stat(follow_symlinks=False).st_mode
                    or not _trees_equal(entry.path, other.path, depth + 1)):
                return False
        elif not _same_file(entry.path, other.path):
            return False
    return True


def _discard(path: str) -> None:
    """Remove whatever is at `path`; a directory is first renamed to ``.NAME.gone`` in the
    same parent, so that a kill half-way never leaves a partial tree under its name."""
    if not os.path.lexists(path):
        return
    parent, name = os.path.split(path)
    if not real_dir(path):
        os.unlink(path)
        store.fsync_dir(parent)
        return
    if _mark_of(name) != ASIDE:
        gone = _marked(parent, name, ASIDE)
        _discard(gone)
        os.rename(path, gone)
        store.fsync_dir(parent)
        path = gone
    shutil.rmtree(path)
    store.fsync_dir(parent)


def _mark_of(entry: str) -> Optional[str]:
    """The mark of a marked name (``.NAME.new`` ...), None for any other name."""
    if entry.startswith("."):
        for mark in (_NEW, _OLD, ASIDE):
            if entry.endswith(mark) and len(entry) > len(mark) + 1:
                return mark
    return None


def recover_swaps(parent: str) -> list[str]:
    """Finish or undo the replacements and removals in `parent` that a run left half-way
    (see the module docstring); the paths of leftovers that were not directories (stray
    entries, e.g. a planted ``.NAME.old`` symlink) are returned, removed."""
    if not real_dir(parent):
        return []
    stray = []
    for entry in sorted(os.listdir(parent)):  # .NAME.new before .NAME.old
        mark = _mark_of(entry)
        path = os.path.join(parent, entry)
        if mark is None or not os.path.lexists(path):
            continue
        if not real_dir(path):
            stray.append(path)
            _discard(path)
            continue
        name = entry[1:-len(mark)]
        final = os.path.join(parent, name)
        if mark == ASIDE or os.path.lexists(final):
            _discard(path)
        elif mark == _NEW:
            if not real_dir(_marked(parent, name, _OLD)):  # else taken with the .old
                _discard(path)
        else:
            new = _marked(parent, name, _NEW)
            # a .new beside an .old is complete: the old tree moved aside after its fsync
            os.rename(new if real_dir(new) else path, final)
            store.fsync_dir(parent)
            _discard(path)
    return stray


def _replace_tree(src: str, parent: str, name: str, skipped: list[str],
                  budget: _Budget) -> bool:
    """Make `parent/name` a copy of `src` unless it already is one; True if copied.
    Anything but a directory at `parent/name` (e.g. a symlink) is replaced."""
    final = os.path.join(parent, name)
    if real_dir(final) and _trees_equal(src, final):
        return False
    os.makedirs(parent, mode=0o755, exist_ok=True)
    new, old = _marked(parent, name, _NEW), _marked(parent, name, _OLD)
    _discard(new)
    if real_dir(final):  # else an .old is the only complete tree: recovery keeps it
        _discard(old)
    _copy_tree(src, new, skipped, budget)
    if os.path.lexists(final):
        if real_dir(final):
            os.rename(final, old)
        else:
            os.unlink(final)
    os.rename(new, final)
    store.fsync_dir(parent)
    _discard(old)
    return True


def entries(base: str) -> set[tuple[str, str]]:
    """(subdir, name) of everything in base/appvms and base/vm-templates."""
    found = set()
    for subdir in SUBDIRS:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            found.update((subdir, name) for name in os.listdir(os.path.join(base, subdir)))
    return found


def _unusable_parts(shard: Shard) -> list[str]:
    """The shard's dom0, dom0/appvms, dom0/vm-templates that exist but are not real
    directories (a hostile shard could point them at dom0's own files)."""
    found = []
    for part in (DOM0_DIR, *(os.path.join(DOM0_DIR, s) for s in SUBDIRS)):
        path = os.path.join(shard.path, part)
        if os.path.lexists(path) and not real_dir(path):
            found.append(path)
    return found


def saved_dir_refusal(shard: Shard, subdir: str, name: str,
                      max_bytes: int = MAX_BYTES) -> Optional[str]:
    """Why the saved dom0 directory of qube `name` cannot be copied into /var/lib/qubes
    (over a bound, unreadable), None when it can or there is none. Looks at metadata only:
    allocated bytes of regular files (holes excluded), entries, depth."""
    if _unusable_parts(shard):
        return None  # reported (and not used) when restoring
    path = os.path.join(shard.path, DOM0_DIR, subdir, name)
    if not real_dir(path):
        return None
    data, count = 0, 0
    todo = [(path, 0)]
    try:
        while todo:
            directory, depth = todo.pop()
            for entry in os.scandir(directory):
                count += 1
                if entry.is_dir(follow_symlinks=False) and depth < MAX_DEPTH:
                    todo.append((entry.path, depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    data += min(info.st_size, info.st_blocks * 512)
                if count > MAX_ENTRIES:
                    return f"its saved dom0 directory {path} has more than {MAX_ENTRIES} entries"
                if data > max_bytes:
                    return (f"its saved dom0 directory {path} holds more than {max_bytes} "
                            "bytes (shards:dom0_dir_max_bytes)")
    except OSError as exc:
        return f"its saved dom0 directory cannot be read: {store.os_message(exc)}"
    return None


def restore_dom0_dirs(shard: Shard, qubes: Iterable[tuple[str, str]], qubes_dir: str,
                      problems: list[Problem], max_bytes: int = MAX_BYTES) -> None:
    """Copy the shard's saved dom0 directories of `qubes` into `qubes_dir`, at most
    `max_bytes` of data each. An existing directory there is left alone (it is the same
    or newer). OSError naming the path when a copy fails (what was copied stays)."""
    unusable = _unusable_parts(shard)
    if unusable:  # an error: release must not go on to remove through the link
        problems.append(Problem("error", "refused", f"{unusable[0]} is a symlink or not a "
                                "directory; the shard's dom0 directories are not used",
                                shard.id))
        return
    for subdir in SUBDIRS:
        try:  # leftovers only: the saved directories are complete without this
            stray = recover_swaps(os.path.join(shard.path, DOM0_DIR, subdir))
        except OSError as exc:
            problems.append(Problem("warning", "invalid", "leftovers of an interrupted run "
                                    f"not cleaned: {store.os_message(exc)}", shard.id))
            continue
        _report_stray(stray, shard, problems)
    saved = entries(os.path.join(shard.path, DOM0_DIR))
    for subdir, name in qubes:
        if (subdir, name) not in saved:
            continue
        src = os.path.join(shard.path, DOM0_DIR, subdir, name)
        dst = os.path.join(qubes_dir, subdir, name)
        if not real_dir(src):
            problems.append(Problem("warning", "invalid", f"{src} is a symlink or not a "
                                    "directory; not used", shard.id, name))
            continue
        if os.path.lexists(dst):
            continue
        skipped: list[str] = []
        _replace_tree(src, os.path.join(qubes_dir, subdir), name, skipped, _Budget(max_bytes))
        for path in skipped:
            problems.append(Problem("warning", "invalid", f"{path} is not a regular file or "
                                    "directory (or lies too deep); not copied", shard.id, name))


def _report_stray(stray: list[str], shard: Shard, problems: list[Problem]) -> None:
    for path in stray:
        problems.append(Problem("warning", "invalid", f"{path} is not a directory; removed",
                                shard.id))


def save_dom0_dirs(shard: Shard, qubes: Sequence[tuple[str, str]], keep: set[tuple[str, str]],
                   qubes_dir: str, problems: list[Problem]) -> None:
    """Copy the dom0 directories of the shard's `qubes` from `qubes_dir` into the shard;
    drop saved directories of qubes that are neither in `qubes` nor in `keep`. A symlink
    or file where the shard's dom0 directories belong is reported and replaced. OSError
    naming the path when the shard cannot be written (its saved copies stay complete)."""
    for path in _unusable_parts(shard):
        problems.append(Problem("warning", "invalid", f"{path} is a symlink or not a "
                                "directory; replaced by a directory", shard.id))
        _discard(path)
    for subdir in SUBDIRS:
        _report_stray(recover_swaps(os.path.join(shard.path, DOM0_DIR, subdir)), shard,
                      problems)
    present = entries(qubes_dir)
    for subdir, name in qubes:
        src = os.path.join(qubes_dir, subdir, name)
        if (subdir, name) not in present or not real_dir(src):
            continue
        parent = os.path.join(shard.path, DOM0_DIR, subdir)
        if os.path.lexists(os.path.join(parent, name)) and not real_dir(
                os.path.join(parent, name)):
            problems.append(Problem("warning", "invalid", f"{os.path.join(parent, name)} is "
                                    "a symlink or not a directory; replaced", shard.id, name))
        skipped: list[str] = []
        _replace_tree(src, parent, name, skipped, _Budget(None))
        for path in skipped:
            problems.append(Problem("warning", "invalid", f"{path} is not a regular file or "
                                    "directory (or lies too deep); not saved", shard.id, name))
    wanted = set(qubes) | keep
    for subdir in SUBDIRS:
        parent = os.path.join(shard.path, DOM0_DIR, subdir)
        if real_dir(parent):
            for name in sorted(os.listdir(parent)):
                if not name.startswith(".") and (subdir, name) not in wanted:
                    _discard(os.path.join(parent, name))


def recover_qubes_dir(qubes_dir: str) -> None:
    """Finish the copies and removals an interrupted run left in `qubes_dir` (their
    marked names would betray a hidden qube's name)."""
    for subdir in SUBDIRS:
        recover_swaps(os.path.join(qubes_dir, subdir))


def release_dom0_dirs(qubes: Iterable[tuple[str, str]], qubes_dir: str) -> None:
    """Remove the (saved) dom0 directories of `qubes` from `qubes_dir` (or from a shard's
    ``dom0/``), each renamed aside (``.NAME.gone``) first (`_discard`); an aside copy an
    interrupted call left goes too."""
    for subdir, name in qubes:
        _discard(os.path.join(qubes_dir, subdir, name))
        _discard(_marked(os.path.join(qubes_dir, subdir), name, ASIDE))
