"""Deniability audit: every place in dom0's storage that betrays an open shard.

With the shards open, the audit looks for their identifiers (``reliant.shards.files.
identifiers``: qube names and uuids, pool names and directories, the shard tag
and directory) in file and directory names, in the raw bytes of files, and in the
entries of binary journals as journalctl decodes them, under
the locations where dom0 keeps traces (the core store, /var/lib/qubes, /srv,
Salt's cache, /var/log with the binary journal, /etc/qubes, libvirt's
definitions, /etc/systemd with the autostart links, /var/lib/xen with libxl's
userdata-d.* files of running domains, LVM metadata backups, home directories), and
reports every shard qube volume that writes into a pool of the core store. Qube names
are also looked for in the two forms dom0 derives from them: the app-menu escape of
desktop-linux-common (``_`` -> ``_u``, ``-`` -> ``_d``, ``.`` -> ``_p``; the menu files
are ``qubes-vm-directory_NAME.directory`` and ``user-qubes-vm-directory_NAME.menu``)
and the device-mapper form that doubles dashes.

Scanning is bounded (bytes per file, files, depth) and follows no symlink; a
bound that is hit is itself a finding, since the audit cannot vouch for what it
did not read. In volatile mode (root an overlay over tmpfs), the same scan over a
read-only view of the disk under the overlay tells what is on disk from what
lives in RAM only.

Findings name hidden qubes: callers print them, never log them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from lxml import etree

from reliant import store
from reliant.shards.files import Shard, identifiers
from reliant.shards.records import qube_name
from reliant.vocab import shard_tag
from reliant.volatile.running import Mount, parse_mountinfo

DEFAULT_PATHS = ("/var/lib/qubes", "/srv", "/var/cache/salt", "/var/log", "/etc/qubes",
                 "/etc/qubes-rpc", "/etc/libvirt", "/var/lib/libvirt", "/etc/systemd",
                 "/var/lib/xen", "/etc/lvm/archive", "/etc/lvm/backup", "/home", "/root")
DEFAULT_SKIP_GLOBS = ("*.img", "*.img.*", "*.img@*")
# The formula's own code, installed and cached by Salt: its examples are not traces.
DEFAULT_EXCLUDE = ("/srv/formulas/base/reliant-formula", "/var/cache/salt/minion/extmods",
                   "/var/cache/salt/minion/files/base/reliant",
                   "/var/cache/salt/minion/files/base/_modules",
                   "/var/cache/salt/minion/files/base/_states",
                   "/var/cache/salt/minion/files/base/_utils")
DISK = "disk"
RAM = "ram"
VOLATILE_ROOT_LINK = "/run/systemd/volatile-root"
CHUNK = 1 << 20
GREP_FROM = 1 << 20  # streams from this size on are prefiltered by grep -F
_UUID = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.I)


class AuditError(Exception):
    """The audit could not run (unreadable core store, failed mount...)."""


@dataclass(frozen=True, order=True)
class Finding:
    """One trace: where it is, why it betrays a shard, and whether it is on disk."""

    path: str
    reason: str
    storage: str = DISK
    location: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "storage": self.storage,
                "location": self.location}


@dataclass(frozen=True)
class Limits:
    """Bounds of one scan; hitting one is reported as a finding."""

    max_file_bytes: int = 256 * 1024 * 1024
    max_files: int = 200_000
    max_depth: int = 24
    skip_globs: tuple[str, ...] = DEFAULT_SKIP_GLOBS
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    journalctl: str = "journalctl"


@dataclass(frozen=True)
class Settings:
    """Pillar `reliant:audit` (everything but `enabled`), validated."""

    paths: tuple[str, ...] = DEFAULT_PATHS
    skip_globs: tuple[str, ...] = DEFAULT_SKIP_GLOBS
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    max_file_bytes: int = Limits.max_file_bytes
    max_files: int = Limits.max_files
    max_depth: int = Limits.max_depth
    journalctl: str = Limits.journalctl
    disk_view: str = "/run/reliant/audit-disk"

    @classmethod
    def from_pillar(cls, pillar: dict) -> Settings:
        """Build from pillar `reliant:audit`; unknown keys and bad values raise AuditError."""
        values = {k: v for k, v in pillar.items() if k != "enabled"}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise AuditError(f"reliant:audit: unknown keys {unknown}")
        for key, value in values.items():
            want = type(getattr(cls, key))
            if want is tuple:
                if not isinstance(value, (list, tuple)) or \
                        not all(isinstance(item, str) for item in value):
                    raise AuditError(f"reliant:audit:{key}: expected a list of strings")
                values[key] = tuple(value)
            elif not isinstance(value, want) or isinstance(value, bool) is not (want is bool):
                raise AuditError(f"reliant:audit:{key}: expected {want.__name__}, got "
                                 f"{type(value).__name__}")
        settings = cls(**values)
        for path in (*settings.paths, *settings.exclude, settings.disk_view):
            if not os.path.isabs(path):
                raise AuditError(f"reliant:audit: {path!r} is not an absolute path")
        for key in ("max_file_bytes", "max_files", "max_depth"):
            if getattr(settings, key) < 1:
                raise AuditError(f"reliant:audit:{key}: must be at least 1")
        return settings

    @property
    def limits(self) -> Limits:
        return Limits(self.max_file_bytes, self.max_files, self.max_depth, self.skip_globs,
                      self.exclude, self.journalctl)


# --- what to look for -------------------------------------------------------------------

def qube_name_forms(name: str) -> set[str]:
    """The name and the forms dom0 derives from it (app menus, device-mapper)."""
    forms = {name}
    forms.add(name.replace("_", "_u").replace("-", "_d").replace(".", "_p"))
    forms.add(name.replace("-", "--"))
    return forms


def _kind(shard: Shard, value: str, names: set[str]) -> str:
    if value == shard_tag(shard.id):
        return "tag"
    if value in names:
        return "qube name"
    if _UUID.match(value):
        return "qube uuid"
    if value in shard.pools:
        return "pool name"
    return "path"


class Needles:
    """One compiled pattern for the identifiers of every shard, and what each means."""

    def __init__(self, shards: Iterable[Shard]):
        self.labels: dict[str, str] = {}
        for shard in shards:
            names = {qube_name(d) for d in shard.domains} - {""}
            for value in sorted(identifiers(shard)):
                kind = _kind(shard, value, names)
                forms = qube_name_forms(value) if kind == "qube name" else {value}
                for form in forms:
                    label = f"{kind} {value!r} of shard {shard.id}"
                    if form != value:
                        label += f" (as {form!r})"
                    self.labels.setdefault(form.lower(), label)
        alternatives = sorted(self.labels, key=len, reverse=True)
        self.literals = b"\n".join(a.encode() for a in alternatives) + b"\n"
        self.longest = max((len(a.encode()) for a in alternatives), default=0)
        body = b"|".join(re.escape(a.encode()) for a in alternatives)
        # a match may not continue a longer word: no letter or digit on either side,
        # nor a word joined by one underscore ("client_secret" does not name "secret";
        # "vm._secret.firefox" does), except after "directory_", where the app menus
        # put the qube's name ("qubes-vm-directory_secret.directory")
        self.pattern = re.compile(
            rb"(?:(?<=directory_)|(?<![A-Za-z0-9])(?<![A-Za-z0-9]_))(?:" + body
            + rb")(?![A-Za-z0-9])(?!_[A-Za-z0-9])", re.IGNORECASE) if alternatives else None

    def find(self, data: bytes) -> set[str]:
        """The labels of every identifier in `data`."""
        if self.pattern is None:
            return set()
        return {self.labels[m.group().decode("utf-8", "replace").lower()]
                for m in self.pattern.finditer(data)}


# --- scanning files ----------------------------------------------------------------------

class _Scan:
    def __init__(self, needles: Needles, limits: Limits, fs_root: str,
                 excluded: Iterable[str] = ()):
        self.needles = needles
        self.excluded = {os.path.realpath(p) for p in excluded}
        self.limits = limits
        self.fs_root = fs_root
        self.files = 0
        self.seen: set[tuple[int, int]] = set()
        self.findings: list[Finding] = []
        self.stopped = False

    def shown(self, path: str) -> str:
        """The path as dom0 sees it (fs_root stripped)."""
        rel = os.path.relpath(path, self.fs_root)
        return "/" + rel if rel != "." else "/"

    def add(self, path: str, reason: str, location: str) -> None:
        self.findings.append(Finding(self.shown(path), reason, DISK, location))

    def name(self, path: str, location: str) -> None:
        labels = self.needles.find(os.path.basename(path).encode("utf-8", "surrogateescape"))
        for label in sorted(labels):
            self.add(path, f"name contains {label}", location)

    def file(self, path: str, location: str) -> None:
        if any(fnmatch.fnmatch(os.path.basename(path), g) for g in self.limits.skip_globs):
            return
        try:
            handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
        except OSError as exc:
            self.add(path, f"cannot read: {exc.strerror}", location)
            return
        limit = self.limits.max_file_bytes
        more = False

        def chunks() -> Iterator[bytes]:
            nonlocal more
            read = 0
            while read < limit:
                chunk = handle.read(min(CHUNK, limit - read))
                if not chunk:
                    return
                read += len(chunk)
                yield chunk
            more = bool(handle.read(1))

        with handle:
            try:
                labels = self.labels_in(chunks(), os.fstat(handle.fileno()).st_size)
            except OSError as exc:
                self.add(path, f"cannot read: {exc.strerror or exc}", location)
                return
        if path.endswith((".journal", ".journal~")):
            labels |= self.journal(path, location)
        for label in sorted(labels):
            self.add(path, f"content names {label}", location)
        if more:
            self.add(path, f"not fully read: larger than {limit} bytes "
                     "(reliant:audit:max_file_bytes)", location)

    def journal(self, path: str, location: str) -> set[str]:
        """Labels in the entries of a binary journal as journalctl decodes them:
        journald compresses long field values, which a raw search cannot see. A
        journal journalctl cannot read yields nothing here (its raw bytes were read)."""
        command = shutil.which(self.limits.journalctl) if self.limits.journalctl else None
        if command is None:
            return set()
        limit = self.limits.max_file_bytes
        cut = False
        with subprocess.Popen([command, f"--file={path}", "--output=export", "--no-pager"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            out = proc.stdout

            def chunks() -> Iterator[bytes]:
                nonlocal cut
                read = 0
                while True:
                    chunk = out.read(CHUNK)
                    if not chunk:
                        return
                    read += len(chunk)
                    yield chunk
                    if read >= limit:
                        cut = True
                        proc.kill()
                        return

            labels = self.labels_in(chunks(), GREP_FROM)
        if cut:
            self.add(path, f"not fully decoded: journal entries longer than {limit} bytes "
                     "(reliant:audit:max_file_bytes)", location)
        return labels

    def labels_in(self, chunks: Iterable[bytes], size: int) -> set[str]:
        """Labels in a byte stream. From GREP_FROM bytes on, the stream goes through
        `grep -a -i -F` first (fast on gigabytes) and only the lines it keeps reach
        the exact matcher; grep keeps a superset of what the matcher accepts."""
        if self.needles.pattern is None:
            return set()
        grep = shutil.which("grep") if size >= GREP_FROM else None
        return self._match(self._grepped(grep, chunks) if grep else chunks)

    def _match(self, chunks: Iterable[bytes]) -> set[str]:
        labels: set[str] = set()
        overlap = max(self.needles.longest - 1, 0)
        tail = b""
        for chunk in chunks:
            labels |= self.needles.find(tail + chunk)
            tail = (tail + chunk)[-overlap:] if overlap else b""
        return labels

    def _grepped(self, grep: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The lines of `chunks` that hold a needle, through grep. The needles reach
        grep through a pipe: never a file on disk, never its command line."""
        patterns, patterns_in = os.pipe()
        proc = subprocess.Popen([grep, "-a", "-i", "-F", "-f", f"/dev/fd/{patterns}"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, pass_fds=(patterns,),
                                env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")})
        os.close(patterns)
        failure: list[BaseException] = []

        def feed() -> None:
            assert proc.stdin is not None
            try:
                with os.fdopen(patterns_in, "wb") as out:
                    out.write(self.needles.literals)
                for chunk in chunks:
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                pass
            except BaseException as exc:  # reading the source failed: report it below
                failure.append(exc)
            finally:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        assert proc.stdout is not None
        try:
            while True:
                chunk = proc.stdout.read(CHUNK)
                if not chunk:
                    break
                yield chunk
        finally:
            feeder.join()
            proc.stdout.close()
            proc.wait()
        if failure:
            raise failure[0]
        if proc.returncode not in (0, 1):  # 1: no line matched
            raise OSError(f"grep exited {proc.returncode}")

    def walk(self, path: str, location: str, depth: int) -> None:
        if self.stopped:
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.add(path, f"cannot read: {exc.strerror}", location)
            return
        if (st.st_dev, st.st_ino) in self.seen:
            return
        shown = self.shown(path)
        if any(shown == e or shown.startswith(e.rstrip("/") + "/") for e in self.limits.exclude):
            return
        if stat.S_ISDIR(st.st_mode) and os.path.realpath(path) in self.excluded:
            return
        self.seen.add((st.st_dev, st.st_ino))
        self.files += 1
        if self.files > self.limits.max_files:
            self.stopped = True
            self.add(path, f"not fully scanned: more than {self.limits.max_files} files "
                     "(reliant:audit:max_files)", location)
            return
        if depth > 0:
            self.name(path, location)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path).encode("utf-8", "surrogateescape")
            for label in sorted(self.needles.find(target)):
                self.add(path, f"symlink target names {label}", location)
        elif stat.S_ISREG(st.st_mode):
            self.file(path, location)
        elif stat.S_ISDIR(st.st_mode):
            if depth >= self.limits.max_depth:
                self.add(path, f"not fully scanned: deeper than {self.limits.max_depth} "
                         "levels (reliant:audit:max_depth)", location)
                return
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                self.add(path, f"cannot list: {exc.strerror}", location)
                return
            for entry in names:
                self.walk(os.path.join(path, entry), location, depth + 1)


def _inside(fs_root: str, path: str) -> str:
    return os.path.join(fs_root, path.lstrip("/"))


def core_pool_writes(shards: Iterable[Shard],
                     core_root: etree._Element) -> list[Finding]:
    """Shard qube volumes that write (rw) into a pool of the core store."""
    pools = {}
    core_pools = core_root.find("pools")
    for pool in core_pools if core_pools is not None else []:
        where = pool.get("dir_path") or (f"lvm:{pool.get('volume_group')}/{pool.get('thin_pool')}"
                                         if pool.get("volume_group") else f"pool {pool.get('name')}")
        pools[pool.get("name")] = where
    findings = []
    for shard in shards:
        for domain in shard.domains:
            config = domain.find("volume-config")
            for volume in config if config is not None else []:
                pool = volume.get("pool")
                if pool in pools and volume.get("rw") == "True":
                    how = " (a snapshot of its template's volume)" if \
                        volume.get("snap_on_start") == "True" else ""
                    findings.append(Finding(
                        pools[pool],
                        f"qube {qube_name(domain)!r} of shard {shard.id}: volume "
                        f"{volume.get('name')!r}{how} writes into core pool {pool!r}",
                        DISK, "core pools"))
    return findings


def audit(shards: Sequence[Shard], core: str, fs_root: str = "/",
          paths: Sequence[str] = DEFAULT_PATHS, limits: Limits = Limits()) -> list[Finding]:
    """Every trace of `shards` under `fs_root` (paths are as dom0 sees them).

    `core` is the core store, as dom0 sees it; it is scanned first, then `paths`.
    With no shard there is nothing to look for and the result is empty.
    """
    if not shards:
        return []
    core_file = _inside(fs_root, core)
    try:
        core_root = store.load(core_file)
    except store.StoreError as exc:
        raise AuditError(str(exc)) from None
    # the shards' own directories are where their traces belong
    scan = _Scan(Needles(shards), limits, fs_root, [shard.path for shard in shards])
    scan.walk(core_file, core, 1)
    for location in paths:
        scan.walk(_inside(fs_root, location), location, 0)
    return sorted(set(scan.findings + core_pool_writes(shards, core_root)))


RAM_FSTYPES = frozenset({"tmpfs", "ramfs"})


def _mount_of(path: str, mounts: Sequence[Mount]) -> Optional[Mount]:
    """The mount `path` lives on (the last mounted of the longest matching mount point)."""
    best = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") + "/"
        if (path + "/").startswith(point) and (
                best is None or len(mount.mount_point) >= len(best.mount_point)):
            best = mount
    return best


def split_by_storage(live: Sequence[Finding], disk: Sequence[Finding],
                     mounts: Sequence[Mount] = ()) -> list[Finding]:
    """Findings of a scan of the running dom0 and of the disk under its root overlay.

    A trace on another mount than the root (a separate /home, say) is on disk unless
    that mount is a tmpfs. On the root overlay: a trace also found on disk is on
    disk; one found only in the running root lives in the overlay's RAM layer; one
    only on disk was deleted since boot (a whiteout hides it) and stays on disk.
    """
    on_disk = {(f.path, f.reason) for f in disk}
    merged = []
    for finding in live:
        mount = _mount_of(finding.path, mounts) if finding.path.startswith("/") else None
        if mount is not None and mount.mount_point != "/":
            storage = RAM if mount.fstype in RAM_FSTYPES else DISK
        else:
            storage = DISK if (finding.path, finding.reason) in on_disk else RAM
        merged.append(Finding(finding.path, finding.reason, storage, finding.location))
    live_keys = {(f.path, f.reason) for f in live}
    merged += [Finding(f.path, f.reason + " (deleted in the running dom0, still on disk)",
                       DISK, f.location) for f in disk if (f.path, f.reason) not in live_keys]
    return sorted(merged)


def audit_running(shards: Sequence[Shard], core: str, volatile: bool,
                  disk_view: str, paths: Sequence[str] = DEFAULT_PATHS,
                  limits: Limits = Limits(),
                  run: Optional[Callable[[list[str]], None]] = None,
                  volatile_root_link: str = VOLATILE_ROOT_LINK,
                  mountinfo: str = "/proc/self/mountinfo") -> list[Finding]:
    """The audit of the running dom0. In volatile mode the disk under the overlay
    (the device systemd-volatile-root recorded in /run/systemd/volatile-root) is
    mounted read-only at `disk_view` for the time of the scan, to split findings
    into on-disk and RAM-only ones (see split_by_storage)."""
    live = audit(shards, core, "/", paths, limits)
    if not volatile or not shards:
        return live
    run = run or _run
    device = os.path.realpath(volatile_root_link)
    if not os.path.exists(device) or device == volatile_root_link:
        raise AuditError(f"{volatile_root_link}: no device recorded by systemd-volatile-root; "
                         "cannot tell disk from RAM")
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            mounts = parse_mountinfo(handle.read())
    except OSError as exc:
        raise AuditError(f"{mountinfo}: {exc.strerror}; cannot tell disk from RAM") from None
    os.makedirs(disk_view, mode=0o700, exist_ok=True)
    run(["mount", "-o", "ro,nosuid,nodev,noexec", device, disk_view])
    try:
        disk = audit(shards, core, disk_view, paths, limits)
    finally:
        run(["umount", disk_view])
    return split_by_storage(live, disk, mounts)


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise AuditError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


def summary(findings: Sequence[Finding]) -> dict[str, dict[str, int]]:
    """Counts per storage and location: what may be logged (it names no shard)."""
    out: dict[str, dict[str, int]] = {}
    for finding in findings:
        by_location = out.setdefault(finding.storage, {})
        by_location[finding.location] = by_location.get(finding.location, 0) + 1
    return out
