"""Shard files: `Shard` (one directory holding ``domains.xml``), its metadata, discovery
under the shard roots, and `init_shard`.

A *shard* is a directory under a configured root holding ``domains.xml``::

    <reliant-shard version="1" id="ID">
      <qid-range first="1000" last="1499"/>
      <depends-on><shard id="OTHER"/></depends-on>
      <pools> <pool .../> ... </pools>          qubesd's own <pool> elements
      <domains> <domain .../> ... </domains>    qubesd's own <domain> elements
    </reliant-shard>

and ``dom0/appvms/NAME`` / ``dom0/vm-templates/NAME``: the dom0 directories of its
qubes (firewall.xml, icons, libvirt config) while they are not in use.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

from lxml import etree

from reliant import store
from reliant.shards.confine import PoolFacts, shard_pool_problem, within
from reliant.shards.records import qube_name, qube_uuid
from reliant.vocab import MAX_QID, Problem, ShardError, shard_tag

SHARD_FILE = "domains.xml"
SHARD_ELEMENT = "reliant-shard"
FORMAT_VERSION = "1"
DOM0_DIR = "dom0"
RANGE_SIZE = 500
FIRST_SHARD_QID = 1000
ID_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


@dataclass
class Shard:
    """One shard directory. `data` is the bytes of its domains.xml as read."""

    path: str
    id: str
    qid_range: tuple[int, int]
    depends_on: tuple[str, ...]
    data: bytes = field(repr=False, default=b"")
    _root: Optional[etree._Element] = field(repr=False, default=None)

    @property
    def file(self) -> str:
        return os.path.join(self.path, SHARD_FILE)

    @property
    def root(self) -> etree._Element:
        """The parsed shard file (parsed once, on first use)."""
        if self._root is None:
            self.use_root(store.parse(self.data, self.file))
        return self._root

    def use_root(self, root: etree._Element) -> None:
        """Take `root` as the shard file's tree (checked as a parse is)."""
        for extra in root:
            if extra.tag not in ("qid-range", "depends-on", "pools", "domains"):
                raise store.StoreError(
                    f"{self.file}: a shard may not hold <{extra.tag}> (only qid-range, "
                    "depends-on, pools, domains)")
        self._root = root

    @property
    def pool_elements(self) -> list[etree._Element]:
        pools = self.root.find("pools")
        return list(pools) if pools is not None else []

    @property
    def pools(self) -> list[str]:
        return [pool.get("name") or "" for pool in self.pool_elements]

    @property
    def domains(self) -> list[etree._Element]:
        domains = self.root.find("domains")
        return list(domains) if domains is not None else []

    def contains_qid(self, qid: int) -> bool:
        return self.qid_range[0] <= qid <= self.qid_range[1]

    def free_qids(self, taken: set[Optional[int]]) -> Iterator[int]:
        """The qids of the range not in `taken` (read as it grows), lowest first."""
        return (q for q in range(self.qid_range[0], self.qid_range[1] + 1) if q not in taken)


def held_pools(shard: Shard) -> dict[str, str]:
    """The shard's pools that may not hold its data (name -> why): suture does not merge
    them, dissect keeps them in the file (`reliant.shards.confine.shard_pool_problem`)."""
    dom0 = os.path.join(shard.path, DOM0_DIR)
    found = {}
    for pool in (PoolFacts.of(p.attrib) for p in shard.pool_elements):
        reason = shard_pool_problem(pool, (shard.path,), (dom0,))
        if reason is not None:
            found[pool.name] = reason
    return found


def identifiers(shard: Shard) -> set[str]:
    """Every string whose presence outside the shard would betray it: qube names and
    uuids, pool names and dir paths, its tag, its directory."""
    found = {shard_tag(shard.id), shard.path}
    for pool in shard.pool_elements:
        found.update(v for v in (pool.get("name"), pool.get("dir_path")) if v)
    for domain in shard.domains:
        found.update(v for v in (qube_name(domain), qube_uuid(domain)) if v)
    return found


def parse_range(text: str) -> tuple[int, int]:
    """(first, last) from "FIRST-LAST"; ShardError when malformed or out of 1..9999."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not match:
        raise ShardError(f"QID range {text!r} is not of the form FIRST-LAST")
    first, last = int(match.group(1)), int(match.group(2))
    _check_range((first, last), f"QID range {text!r}")
    return first, last


def _check_range(qid_range: tuple[int, int], what: str) -> None:
    first, last = qid_range
    if not 1 <= first <= last < MAX_QID:
        raise ShardError(f"{what}: need 1 <= first <= last <= {MAX_QID - 1}")


_BODY_RE = re.compile(rb"<(?:pools|domains)[\s/>]")


def read_metadata(data: bytes, path: str) -> tuple[str, tuple[int, int], tuple[str, ...]]:
    """(id, qid range, dependencies) from the head of a shard file (the part before
    <pools>), without parsing the rest. StoreError/ShardError naming `path`."""
    body = _BODY_RE.search(data)
    head = data[:body.start()] + b"</" + SHARD_ELEMENT.encode() + b">" if body else data
    root = store.parse(head, path)
    if root.tag != SHARD_ELEMENT:
        raise ShardError(f"{path}: root element is <{root.tag}>, not <{SHARD_ELEMENT}>")
    if root.get("version") != FORMAT_VERSION:
        raise ShardError(f"{path}: unknown format version {root.get('version')!r}")
    shard_id = root.get("id") or ""
    if not ID_RE.match(shard_id):
        raise ShardError(f"{path}: shard id {shard_id!r} must be 1-64 of A-Z a-z 0-9 _ -")
    element = root.find("qid-range")
    if element is None:
        raise ShardError(f"{path}: no <qid-range>")
    try:
        qid_range = (int(element.get("first", "")), int(element.get("last", "")))
    except ValueError:
        raise ShardError(f"{path}: qid-range needs integer first and last") from None
    _check_range(qid_range, f"{path}: qid-range")
    depends = tuple(dep.get("id") or "" for dep in root.iterfind("depends-on/shard"))
    for dep in depends:
        if not ID_RE.match(dep):
            raise ShardError(f"{path}: dependency id {dep!r} is invalid")
    return shard_id, qid_range, depends


def load_shard(path: str, max_bytes: int = store.MAX_BYTES) -> Shard:
    """Read the shard in directory `path` (metadata only; the rest parses on demand)."""
    file = os.path.join(path, SHARD_FILE)
    if os.path.islink(file):
        raise ShardError(f"{file}: is a symlink; a shard file must be a regular file")
    data = store.read(file, max_bytes)
    shard_id, qid_range, depends = read_metadata(data, file)
    return Shard(path=path, id=shard_id, qid_range=qid_range, depends_on=depends, data=data)


def discover(roots: Sequence[str], max_depth: int = 3,
             problems: Optional[list[Problem]] = None) -> list[Shard]:
    """Shards in the directories under `roots`, at most `max_depth` levels down.

    Symlinks are never followed; one pointing outside its root is reported. A
    directory holding ``domains.xml`` is a shard and is not searched further. With
    `problems` given, unreadable shards are reported there and skipped; without it
    the first one raises ShardError. Duplicate ids: the first found wins.
    """
    found: list[Shard] = []
    seen: dict[str, str] = {}

    def report(message: str) -> None:
        if problems is None:
            raise ShardError(message)
        problems.append(Problem("error", "refused", message))

    for root in roots:
        if os.path.isdir(root):
            root = os.path.abspath(root)
            _walk(root, root, 0, max_depth, found, seen, report)
    return found


def _walk(directory: str, root: str, depth: int, max_depth: int, found: list[Shard],
          seen: dict[str, str], report: Callable[[str], None]) -> None:
    """`discover` below `directory` (a plain function: a closure calling itself would
    keep the shards found, and their parsed files, alive until a garbage collection)."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        report(f"{directory}: cannot list: {exc.strerror}")
        return
    names = {entry.name for entry in entries}
    if SHARD_FILE in names and directory != root:
        try:
            shard = load_shard(directory)
        except (ShardError, store.StoreError) as exc:
            report(str(exc))
            return
        if shard.id in seen:
            report(f"{directory}: shard id {shard.id!r} is already used by {seen[shard.id]}")
            return
        seen[shard.id] = directory
        found.append(shard)
        return
    for entry in entries:
        if entry.is_symlink():
            if not within(entry.path, root):
                report(f"{entry.path}: symlink points outside {root} "
                       f"(to {os.path.realpath(entry.path)}); not followed")
            continue
        if depth < max_depth and entry.is_dir(follow_symlinks=False):
            _walk(entry.path, root, depth + 1, max_depth, found, seen, report)


def deps_closure(shard_id: str, by_id: dict[str, Shard]) -> set[str]:
    closure: set[str] = set()
    todo = list(by_id[shard_id].depends_on) if shard_id in by_id else []
    while todo:
        dep = todo.pop()
        if dep not in closure and dep != shard_id:
            closure.add(dep)
            if dep in by_id:
                todo.extend(by_id[dep].depends_on)
    return closure


def shard_bytes(shard: Shard, pools: Iterable[etree._Element],
                domains: Iterable[etree._Element], home: Optional[etree._Element] = None) -> bytes:
    """The shard file of `shard` (its metadata) holding `pools` and `domains` (moved).

    With `home`, the shard element is built under it, in the document the pools and
    domains come from: moving elements within a document is much cheaper than between
    documents, and an element serializes the same wherever it hangs."""
    if home is None:
        root = store.make_element(SHARD_ELEMENT, version=FORMAT_VERSION, id=shard.id)
    else:
        root = etree.SubElement(home, SHARD_ELEMENT, version=FORMAT_VERSION, id=shard.id)
    etree.SubElement(root, "qid-range", first=str(shard.qid_range[0]),
                     last=str(shard.qid_range[1]))
    deps = etree.SubElement(root, "depends-on")
    for dep in shard.depends_on:
        etree.SubElement(deps, "shard", id=dep)
    etree.SubElement(root, "pools").extend(pools)
    etree.SubElement(root, "domains").extend(domains)
    return store.serialize(root)


def init_shard(directory: str, qid_range: Optional[tuple[int, int]] = None,
               depends_on: Sequence[str] = (), shard_id: Optional[str] = None,
               roots: Sequence[str] = (), max_depth: int = 3) -> Shard:
    """Create an empty shard in `directory` (created if needed, 0700).

    `depends_on`: directories of existing shards. Without `qid_range`, the first block
    of RANGE_SIZE qids from FIRST_SHARD_QID that no visible shard (under `roots` or
    among the dependencies) uses. The id defaults to the directory name when valid.
    """
    file = os.path.join(directory, SHARD_FILE)
    if os.path.lexists(file):
        raise ShardError(f"{file} already exists")
    deps = [load_shard(path) for path in depends_on]
    visible = discover(roots, max_depth, problems=[]) + deps
    if shard_id is None:
        base = os.path.basename(os.path.normpath(directory))
        shard_id = base if ID_RE.match(base) else secrets.token_hex(4)
    if not ID_RE.match(shard_id):
        raise ShardError(f"shard id {shard_id!r} must be 1-64 of A-Z a-z 0-9 _ -")
    for other in visible:
        if other.id == shard_id and os.path.realpath(other.path) != os.path.realpath(directory):
            raise ShardError(f"shard id {shard_id!r} is already used by {other.path}")
    if qid_range is None:
        first = FIRST_SHARD_QID
        while any(first <= o.qid_range[1] and o.qid_range[0] <= first + RANGE_SIZE - 1
                  for o in visible):
            first += RANGE_SIZE
        qid_range = (first, min(first + RANGE_SIZE - 1, MAX_QID - 1))
    _check_range(qid_range, f"QID range {qid_range[0]}-{qid_range[1]}")
    for other in visible:
        if qid_range[0] <= other.qid_range[1] and other.qid_range[0] <= qid_range[1]:
            raise ShardError(f"QID range {qid_range[0]}-{qid_range[1]} overlaps "
                             f"{other.qid_range[0]}-{other.qid_range[1]} of shard {other.id} "
                             f"({other.path})")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    shard = Shard(path=directory, id=shard_id, qid_range=qid_range,
                  depends_on=tuple(dep.id for dep in deps))
    shard.data = shard_bytes(shard, (), ())
    store.write(file, shard.data, mode=0o600)
    return shard
