"""Read and write qubesd-format XML stores safely.

Public API (used by the shard engine and, through it, by the CLI and Salt modules):

- ``StoreError``: every failure, with a message naming the file.
- ``MAX_BYTES``: the default size limit of a store (64 MiB).
- ``guard(data, source)``: refuse a DTD or entity declaration in raw bytes.
- ``parse(data, source)``: hardened parse of bytes -> lxml root element. No DTD,
  no entities, no network, no huge trees; blank text is dropped so that
  ``serialize`` reproduces qubesd's own pretty-printed form.
- ``make_element(tag, **attrib)``: a new root element that elements of parsed
  stores move into cheaply.
- ``serialize(root)``: bytes exactly as qubesd writes them
  (``ElementTree.write(encoding="utf-8", pretty_print=True)``, no declaration).
- ``read(path, max_bytes)``: the file's bytes, read under a shared ``lockf``.
- ``load(path, max_bytes)``: ``parse(read(path))``.
- ``write(path, data, mode)``: atomic replace like qubesd (temp file in the same
  directory, fchmod, fsync, rename, directory fsync) under an exclusive
  ``lockf`` of the current file; writes nothing and returns False when the file
  already holds exactly ``data`` (compared under a shared lock first: a file that
  does not change is never opened for writing, so a read-only volume is no error).
- ``fsync_dir(path)``: make a rename or unlink in a directory durable.
- ``open_regular(path, flags)``: open without following a symlink or blocking on a
  FIFO, and refuse anything but a regular file (every store is opened so).
- ``os_message(exc)``: an OSError as "PATH: reason", never a traceback;
  ``blame(path)``: OSErrors raised on an fd (no file name) name `path`.

Locking follows qubesd (qubes/app.py ``_acquire_lock``): ``fcntl.lockf`` on the
store file itself, retried when the file was replaced while we waited.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from typing import Optional

from lxml import etree

MAX_BYTES = 64 * 1024 * 1024

_FORBIDDEN = (b"<!DOCTYPE", b"<!ENTITY", b"<!doctype", b"<!entity")
# qubesd sets the text of value elements even when empty ("<property ...></property>");
# lxml reads that back as no text, which would print as "<property .../>".
_VALUE_ELEMENTS = ("property", "feature", "option")


class StoreError(Exception):
    """A store could not be read, parsed or written; the message names the file."""


_LOCAL = threading.local()


def _parser() -> etree.XMLParser:
    """One hardened parser per thread: documents parsed (or made) with the same parser
    share its name dictionary, so moving elements between them is cheap."""
    parser = getattr(_LOCAL, "parser", None)
    if parser is None:
        parser = _LOCAL.parser = _new_parser()
    return parser


def make_element(tag: str, **attrib: str) -> etree._Element:
    """A new root element sharing the parser's dictionary (see `_parser`)."""
    return _parser().makeelement(tag, attrib)


def _new_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=True,
        remove_comments=False,
        collect_ids=False,
    )


def guard(data: bytes, source: str) -> None:
    """Refuse bytes holding a DTD or entity declaration (before any parser sees them)."""
    if b"<!" not in data:  # qubesd writes no declaration of any kind
        return
    for token in _FORBIDDEN:
        if token in data:
            raise StoreError(f"{source}: DTD or entity declarations are not allowed")


def parse(data: bytes, source: str) -> etree._Element:
    """Parse untrusted store bytes; raise StoreError naming `source` on anything odd."""
    guard(data, source)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise StoreError(f"{source}: malformed XML: {exc}") from None
    if root.getroottree().docinfo.internalDTD is not None:  # e.g. UTF-16, unseen by guard
        raise StoreError(f"{source}: DTD or entity declarations are not allowed")
    for node in root.iter(etree.Entity, etree.ProcessingInstruction):
        raise StoreError(f"{source}: unexpected {type(node).__name__} in store")
    for node in root.iter(*_VALUE_ELEMENTS):
        if node.text is None and not len(node):
            node.text = ""
    return root


def serialize(root: etree._Element) -> bytes:
    """Bytes of `root` in qubesd's format (UTF-8, pretty-printed, no declaration)."""
    return etree.tostring(root, encoding="utf-8", pretty_print=True, with_tail=False)


def os_message(exc: OSError) -> str:
    """`exc` as "PATH: reason" (both paths of a rename), or the reason alone."""
    reason = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(map(os.fsdecode, paths))}: {reason}" if paths else reason


@contextlib.contextmanager
def blame(path: str) -> Iterator[None]:
    """Give an OSError raised without a file name (a read, write or fsync on an fd)
    `path` as its file name."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), path) from None
        raise


def open_regular(path: str, flags: int = os.O_RDONLY, mode: int = 0o600,
                 dir_fd: Optional[int] = None) -> int:
    """An fd of the regular file `path`: never through a symlink (ELOOP), never blocking
    on a FIFO or a device (O_NONBLOCK, which regular files ignore), and anything but a
    regular file is closed again and refused (OSError EINVAL naming `path`)."""
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, mode,
                 dir_fd=dir_fd)
    try:
        kind = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd


@contextlib.contextmanager
def locked(path: str, exclusive: bool, create: bool = False) -> Iterator[int | None]:
    """Hold `lockf` on `path` like qubesd; yield the fd (None if absent and not `create`).

    Only a regular file is opened (`open_regular`): a symlink is refused (ELOOP), a FIFO
    or device is refused without blocking."""
    while True:
        flags = os.O_RDWR if exclusive else os.O_RDONLY
        if create:
            flags |= os.O_CREAT
        try:
            fd = open_regular(path, flags)
        except FileNotFoundError:
            if create:
                raise
            yield None
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)


def _read_fd(fd: int, path: str, max_bytes: int) -> bytes:
    size = os.fstat(fd).st_size
    if size > max_bytes:
        raise StoreError(f"{path}: {size} bytes is more than the limit of {max_bytes}")
    chunks = []
    remaining = max_bytes + 1
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise StoreError(f"{path}: more than the limit of {max_bytes} bytes")
    return data


def read(path: str, max_bytes: int = MAX_BYTES) -> bytes:
    """Bytes of the store at `path`, read under a shared lock; StoreError if absent."""
    try:
        with locked(path, exclusive=False) as fd:
            if fd is None:
                raise StoreError(f"{path}: no such file")
            return _read_fd(fd, path, max_bytes)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load(path: str, max_bytes: int = MAX_BYTES) -> etree._Element:
    """Parse the store at `path` (see `parse`)."""
    return parse(read(path, max_bytes), path)


def fsync_dir(path: str) -> None:
    """fsync the directory `path` so that renames and unlinks in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with blame(path):
            os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace(path: str, data: bytes, mode: int = 0o600, uid: int = -1, gid: int = -1,
            mtime_ns: Optional[int] = None) -> None:
    """Atomically replace `path` with `data` (temp file, fsync, rename, dir fsync).

    The directory is made (0755) if missing; `uid`/`gid` other than -1 set the owner,
    `mtime_ns` the modification time, both before the rename.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + "~")
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def read_or_none(path: str) -> Optional[bytes]:
    """The content of `path` (symbolic links followed, no size limit), or None if absent."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write(path: str, data: bytes, mode: int = 0o600, max_bytes: int = MAX_BYTES) -> bool:
    """Atomically store `data` at `path` unless it already holds it; True if written.

    The current file (if any) stays locked with ``lockf`` during the write, so a
    concurrent writer following the same protocol waits. On any failure the
    previous file is intact and StoreError names `path`.
    """
    try:
        with locked(path, exclusive=False) as fd:
            if fd is not None and _read_fd(fd, path, max(max_bytes, len(data))) == data:
                return False
        with locked(path, exclusive=True) as fd:
            if fd is not None:
                current = _read_fd(fd, path, max(max_bytes, len(data)))
                if current == data:
                    return False
            replace(path, data, mode)
            return True
    except OSError as exc:
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from None
