"""Shards: qubes that live in a directory on a hidden volume, merged into qubesd's store.

A *shard* is a directory under a configured root holding ``domains.xml``::

    <reliant-shard version="1" id="ID">
      <qid-range first="1000" last="1499"/>
      <depends-on><shard id="OTHER"/></depends-on>
      <pools> <pool .../> ... </pools>          qubesd's own <pool> elements
      <domains> <domain .../> ... </domains>    qubesd's own <domain> elements
    </reliant-shard>

and ``dom0/appvms/NAME`` / ``dom0/vm-templates/NAME``: the dom0 directories of its
qubes (firewall.xml, icons, libvirt config) while they are not in use.

Public API (stable; the CLI, the Salt modules, reliant_guard/reliant_policy and
reliant_audit use it):

- ``CORE_TAG``, ``shard_tag(id)``: group tags written into the merged store only.
- ``Shard``: ``.id .path .file .qid_range .depends_on .pools .pool_elements
  .domains .root``; ``identifiers(shard)``: every string that would betray it.
- ``discover(roots, max_depth=3, problems=None)``: the shards under `roots`.
- ``init_shard(directory, ...)``: create an empty shard; ``parse_range("A-B")``.
- ``suture(core, roots, out, ...)`` / ``plan_suture(...)``: core + shards -> merged.
- ``dissect(merged, core, roots, ...)`` / ``plan_dissect(...)``: merged -> core + shards.
- ``check(core, roots, ...)``: what suture would report, writing nothing.
- ``rename_qube(...)``, ``review_qube(...)``: offline fixes in a shard file.
- ``status(...)``: what is visible, sutured, in conflict, recovered.
- ``QubeRecord(domain)``: all of the following read in one pass.
- ``qube_name/qube_uuid/qube_qid(domain)``, ``data_pools(domain)`` (pools of a
  qube's own data volumes, ``is_data_volume``), ``references(domain)`` (what it names),
  ``referable_groups(group, dependencies)`` (the reference rule).
- ``isolation_problems(merged_root, record=None)``: qubes whose default disposable is
  in another group (reported by ``check``).
- ``load_shard(dir)``, ``read_metadata(bytes, path)``, ``shard_bytes(shard, pools,
  domains)``: one shard file.
- runtime files beside the merged store: ``default_state_path``, ``read_state``,
  ``default_detached_path``, ``read_detached``, ``write_detached``,
  ``operation_lock``.
- ``Problem`` (severity info/warning/error, kind, message, shard, qube),
  ``Result`` (problems, written, shards; ``.errors``), ``ShardError``.

Suture and dissect read stores in qubesd's layout in chunks, with a memo on tmpfs
(``reliant_chunks``, the ``_Stubs`` section below). Rules, the QID mechanism and
reading in chunks are described in README.md (Shards: library).
"""

import contextlib
import gc
import hashlib
import json
import operator
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import reliant_chunks
import reliant_store
from lxml import etree

CORE = "@core"  # group key of core; no shard id can be this (ids are [A-Za-z0-9_-])
_PENDING = "@pending"  # group not known yet (a qube created while shards are open)
CORE_TAG = "reliant-core"
TAG_PREFIX = "reliant-"
SHARD_FILE = "domains.xml"
SHARD_ELEMENT = "reliant-shard"
FORMAT_VERSION = "1"
DOM0_DIR = "dom0"
MAX_QID = 10000  # qubes.config.max_qid: qids are 1 .. 9999
RANGE_SIZE = 500
FIRST_SHARD_QID = 1000
QUBE_CLASSES = frozenset({"AppVM", "TemplateVM", "StandaloneVM", "DispVM"})
#: Per-qube properties naming another qube (qubes-core-admin).
DOMAIN_REFERENCES = ("template", "netvm", "default_dispvm", "management_dispvm",
                     "guivm", "audiovm", "relayvm")
#: Global properties naming a qube.
GLOBAL_REFERENCES = ("default_template", "default_netvm", "default_dispvm",
                     "management_dispvm", "updatevm", "clockvm", "default_guivm",
                     "default_audiovm")
RECOVERED_PREFIX = "reliant-recovered-"
PROHIBIT_START = "prohibit-start"
RATIONALE_PREFIX = "reliant: "
MISSING_REFERENCE_MODES = ("recover", "skip")

_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
_NAME_RE = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_.-]{0,30}\Z")
#: Volumes that may hold a qube's own data (see `is_data_volume`).
DATA_VOLUMES = ("root", "private", "volatile")


class ShardError(Exception):
    """An operation was refused; the message says why and names the culprit."""


@dataclass(frozen=True)
class Problem:
    """Something a user must know about. severity: info, warning or error.

    kind: conflict, recovered, skipped, invalid, refused, renumbered, violation,
    unplaceable, detached, state, isolation.
    """

    severity: str
    kind: str
    message: str
    shard: Optional[str] = None
    qube: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


def shard_tag(shard_id: str) -> str:
    """The tag that marks the qubes of shard `shard_id` in the merged store."""
    return "reliant-shard-" + shard_id


def valid_qube_name(name: str) -> bool:
    """qubes-core-admin's rule for qube names (qubes/vm/__init__.py validate_name)."""
    return (bool(_NAME_RE.match(name)) and name not in ("none", "default", "Domain-0")
            and not name.endswith("-dm"))


# ---------------------------------------------------------------------------
# domain element helpers


def _properties(element: etree._Element) -> dict[str, etree._Element]:
    props = element.find("properties")
    if props is None:
        return {}
    return {prop.get("name"): prop for prop in props}


def _prop(element: etree._Element, name: str) -> Optional[str]:
    props = element.find("properties")
    if props is not None:
        for prop in props:
            if prop.get("name") == name:
                return prop.text or ""
    return None


def is_data_volume(name: str, snap_on_start: bool, source: Optional[str]) -> bool:
    """True for a volume holding the qube's own data: root, private or volatile, unless
    it is a snapshot of another volume (snap_on_start with a source: an AppVM's root
    taken from its template's)."""
    return name in DATA_VOLUMES and not (snap_on_start and source)


class QubeRecord:
    """What the rules need to know about one <domain>, read in one pass (the hot loop of
    suture and dissect: plain local variables, one attribute read per item). Read-only
    for other modules: .cls .name .uuid .qid .label, .refs (as `references`), .pools,
    .data_pools (as `data_pools`), .volumes (name, pool, vid, source), .group_tags
    (names of its ``reliant-`` tags), .dispvm_none (default_dispvm set to none),
    .dispvm_template (template_for_dispvms); .tags and .reliant_tags are elements (none
    in a record made `from_fields`)."""

    __slots__ = ("cls", "data_pools", "dispvm_none", "dispvm_template", "group_tags", "label",
                 "name", "pools", "qid", "refs", "reliant_tags", "tags", "uuid", "volumes")
    #: the plain data of a record, in the order of `fields`
    _FIELDS = ("cls", "name", "uuid", "label", "qid", "refs", "pools", "data_pools", "volumes",
               "group_tags", "dispvm_none", "dispvm_template")

    def __init__(self, domain: etree._Element) -> None:
        self.cls = domain.get("class")
        admin = self.cls == "AdminVM"
        name, uuid, label = ("dom0" if admin else ""), "", None
        qid: Optional[int] = 0 if admin else None
        refs: list[tuple[str, str]] = []
        devices: list[tuple[str, str]] = []
        pools: set[str] = set()
        own: set[str] = set()
        volumes: list[tuple[str, str, str, Optional[str]]] = []  # name pool vid source
        reliant_tags: list[etree._Element] = []
        tags: Optional[etree._Element] = None
        dispvm_none = dispvm_template = False
        for section in domain:
            kind = section.tag
            if kind == "properties":
                for prop in section:
                    key = prop.get("name")
                    if key in _REFERENCE_SET:
                        text = prop.text
                        if text:
                            refs.append((key, text))
                        elif key == "default_dispvm":
                            dispvm_none = True
                    elif key == "name":
                        if not admin:
                            name = prop.text or ""
                    elif key == "uuid":
                        uuid = prop.text or ""
                    elif key == "qid":
                        try:
                            qid = int(prop.text or "")
                        except ValueError:
                            qid = None
                    elif key == "label":
                        label = prop.text or ""
                    elif key == "template_for_dispvms":
                        dispvm_template = prop.text == "True"
            elif kind == "volume-config":
                for volume in section:
                    pool = volume.get("pool")
                    if not pool:
                        continue
                    volume_name, source = volume.get("name") or "", volume.get("source")
                    pools.add(pool)
                    volumes.append((volume_name, pool, volume.get("vid") or "", source))
                    if is_data_volume(volume_name, volume.get("snap_on_start") == "True",
                                      source):
                        own.add(pool)
            elif kind == "devices":
                for device in section:
                    backend = device.get("backend-domain")
                    if backend:
                        devices.append((f"device {section.get('class')}:{device.get('id')}",
                                        backend))
            elif kind == "tags":
                tags = section
                for tag in section:
                    if (tag.get("name") or "").startswith(TAG_PREFIX):
                        reliant_tags.append(tag)
        self.name, self.uuid, self.label, self.qid = name, uuid, label, qid
        self.refs = refs + devices if devices else refs
        self.pools, self.data_pools, self.volumes = pools, own, volumes
        self.reliant_tags, self.tags = reliant_tags, tags
        self.group_tags = tuple(tag.get("name") for tag in reliant_tags)
        self.dispvm_none, self.dispvm_template = dispvm_none, dispvm_template

    def fields(self) -> tuple[Any, ...]:
        """The record as plain data (for dissect's memo), in the order of _FIELDS."""
        return _record_fields(self)

    @classmethod
    def from_fields(cls, fields: Sequence[Any]) -> "QubeRecord":
        """The record of `fields` (see `fields`), without elements."""
        record = cls.__new__(cls)
        (record.cls, record.name, record.uuid, record.label, record.qid, record.refs,
         record.pools, record.data_pools, record.volumes, record.group_tags,
         record.dispvm_none, record.dispvm_template) = fields
        record.tags, record.reliant_tags = None, []
        return record


_REFERENCE_SET = frozenset(DOMAIN_REFERENCES)
_GROUP_TAGS_FIELD = QubeRecord._FIELDS.index("group_tags")
_record_fields = operator.attrgetter(*QubeRecord._FIELDS)


def qube_name(domain: etree._Element) -> str:
    """The name of a <domain> ("dom0" for the AdminVM, "" if it has none)."""
    return QubeRecord(domain).name


def qube_uuid(domain: etree._Element) -> str:
    return QubeRecord(domain).uuid


def qube_qid(domain: etree._Element) -> Optional[int]:
    """The qid (0 for the AdminVM), None if missing or not a number."""
    return QubeRecord(domain).qid


def data_pools(domain: etree._Element) -> set[str]:
    """Pools of the qube's own data: private, volatile, and root unless it is a
    snapshot of a template's volume (snap_on_start with a source)."""
    return QubeRecord(domain).data_pools


def references(domain: etree._Element) -> list[tuple[str, str]]:
    """(what, qube name) for every reference of a <domain> to another qube: reference
    properties, then device assignments ("device CLASS:ID", backend)."""
    return QubeRecord(domain).refs


def _set_qid(domain: etree._Element, qid: int) -> None:
    _properties(domain)["qid"].text = str(qid)
    domain.set("id", f"domain-{qid}")


class _Facts:
    """`QubeRecord` records of the domains a plan looks at, each read once. A domain
    read in chunks is a stub (see `_Stubs`) until something must change it: then
    `materialize` parses its chunk into it."""

    def __init__(self, stubs: Optional["_Stubs"] = None) -> None:
        self._seen: dict[etree._Element, QubeRecord] = {}
        self.stubs = stubs
        if stubs is not None:
            self._seen.update(stubs.records())

    def materialize(self, domain: etree._Element) -> None:
        """Make a stub the <domain> of its chunk (with its tags); no-op for others."""
        if self.stubs is not None and self.stubs.materialize(domain):
            self.forget(domain)

    def expand(self, data: bytes) -> bytes:
        """`data` (a serialized file) with the bytes of each stub in its place."""
        return data if self.stubs is None else self.stubs.expand(data)

    def __call__(self, domain: etree._Element) -> QubeRecord:
        qube = self._seen.get(domain)
        if qube is None:
            qube = self._seen[domain] = QubeRecord(domain)
        return qube

    def forget(self, domain: etree._Element) -> None:
        """Read `domain` again next time (after changing it)."""
        self._seen.pop(domain, None)

    def name(self, domain: etree._Element) -> str:
        return self(domain).name

    def uuid(self, domain: etree._Element) -> str:
        return self(domain).uuid

    def qid(self, domain: Optional[etree._Element]) -> Optional[int]:
        return None if domain is None else self(domain).qid

    def set_qid(self, domain: etree._Element, qid: int) -> None:
        self.materialize(domain)
        _set_qid(domain, qid)
        self(domain).qid = qid

    def add_tag(self, domain: etree._Element, name: str) -> None:
        qube = self(domain)
        if self.stubs is not None and self.stubs.carries(domain, (*qube.group_tags, name)):
            qube.group_tags += (name,)  # a stub whose bytes carry the tag already
            return
        self.materialize(domain)
        qube = self(domain)
        if qube.tags is None:
            qube.tags = etree.SubElement(domain, "tags")
        qube.reliant_tags.append(etree.SubElement(qube.tags, "tag", name=name))
        qube.group_tags += (name,)

    def strip_tags(self, domain: etree._Element) -> None:
        """Remove the domain's ``reliant-`` tags."""
        qube = self(domain)
        for tag in qube.reliant_tags:
            parent = tag.getparent()
            if parent is not None:
                parent.remove(tag)
        qube.reliant_tags, qube.group_tags = [], ()


def _strip_reliant_tags(domain: etree._Element) -> set[str]:
    """Remove every ``reliant-`` tag; return the names removed."""
    removed = set()
    tags = domain.find("tags")
    if tags is not None:
        for tag in list(tags):
            name = tag.get("name") or ""
            if name.startswith(TAG_PREFIX):
                removed.add(name)
                tags.remove(tag)
    return removed


def _features(domain: etree._Element) -> etree._Element:
    features = domain.find("features")
    if features is None:
        features = etree.Element("features")
        domain.insert(1, features)
    return features


def _set_feature(domain: etree._Element, name: str, value: str) -> None:
    features = _features(domain)
    for feature in features:
        if feature.get("name") == name:
            feature.text = value
            return
    etree.SubElement(features, "feature", name=name).text = value


def _feature(domain: etree._Element, name: str) -> Optional[str]:
    features = domain.find("features")
    if features is not None:
        for feature in features:
            if feature.get("name") == name:
                return feature.text or ""
    return None


def dom0_subdir(qube: QubeRecord) -> str:
    """Where qubes-core-admin keeps the qube's dom0 directory under /var/lib/qubes."""
    return "vm-templates" if qube.cls == "TemplateVM" else "appvms"


# ---------------------------------------------------------------------------
# shards


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
            self.use_root(reliant_store.parse(self.data, self.file))
        return self._root

    def use_root(self, root: etree._Element) -> None:
        """Take `root` as the shard file's tree (checked as a parse is)."""
        for extra in root:
            if extra.tag not in ("qid-range", "depends-on", "pools", "domains"):
                raise reliant_store.StoreError(
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
    root = reliant_store.parse(head, path)
    if root.tag != SHARD_ELEMENT:
        raise ShardError(f"{path}: root element is <{root.tag}>, not <{SHARD_ELEMENT}>")
    if root.get("version") != FORMAT_VERSION:
        raise ShardError(f"{path}: unknown format version {root.get('version')!r}")
    shard_id = root.get("id") or ""
    if not _ID_RE.match(shard_id):
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
        if not _ID_RE.match(dep):
            raise ShardError(f"{path}: dependency id {dep!r} is invalid")
    return shard_id, qid_range, depends


def load_shard(path: str, max_bytes: int = reliant_store.MAX_BYTES) -> Shard:
    """Read the shard in directory `path` (metadata only; the rest parses on demand)."""
    file = os.path.join(path, SHARD_FILE)
    if os.path.islink(file):
        raise ShardError(f"{file}: is a symlink; a shard file must be a regular file")
    data = reliant_store.read(file, max_bytes)
    shard_id, qid_range, depends = read_metadata(data, file)
    return Shard(path=path, id=shard_id, qid_range=qid_range, depends_on=depends, data=data)


def _within(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


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
        except (ShardError, reliant_store.StoreError) as exc:
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
            if not _within(entry.path, root):
                report(f"{entry.path}: symlink points outside {root} "
                       f"(to {os.path.realpath(entry.path)}); not followed")
            continue
        if depth < max_depth and entry.is_dir(follow_symlinks=False):
            _walk(entry.path, root, depth + 1, max_depth, found, seen, report)


def referable_groups(group: Optional[str], dependencies: Iterable[str],
                     core: str = CORE) -> set[Optional[str]]:
    """The reference rule (DESIGN.md 3): the groups whose qubes a qube of `group` may
    name. Core (and global properties) name only core; a shard qube names core, its own
    shard and `dependencies` (the shards it depends on). Groups are core's key `core`
    and shard ids here, group tags in reliant_guard."""
    return {core} if group == core else {core, group, *dependencies}


def _deps_closure(shard_id: str, by_id: dict[str, Shard]) -> set[str]:
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
        root = reliant_store.make_element(SHARD_ELEMENT, version=FORMAT_VERSION, id=shard.id)
    else:
        root = etree.SubElement(home, SHARD_ELEMENT, version=FORMAT_VERSION, id=shard.id)
    etree.SubElement(root, "qid-range", first=str(shard.qid_range[0]),
                     last=str(shard.qid_range[1]))
    deps = etree.SubElement(root, "depends-on")
    for dep in shard.depends_on:
        etree.SubElement(deps, "shard", id=dep)
    etree.SubElement(root, "pools").extend(pools)
    etree.SubElement(root, "domains").extend(domains)
    return reliant_store.serialize(root)


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
        shard_id = base if _ID_RE.match(base) else secrets.token_hex(4)
    if not _ID_RE.match(shard_id):
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
    reliant_store.write(file, shard.data, mode=0o600)
    return shard


# ---------------------------------------------------------------------------
# runtime state (on tmpfs next to the merged store)


def default_state_path(merged: str) -> str:
    """Where suture records what it merged: next to the merged store (tmpfs)."""
    return os.path.join(os.path.dirname(os.path.abspath(merged)), "shards.json")


def default_detached_path(merged: str) -> str:
    """Where `detach` lists the shards suture must leave out (tmpfs)."""
    return os.path.join(os.path.dirname(os.path.abspath(merged)), "detached.json")


def read_detached(path: str) -> set[str]:
    """Ids of detached shards (empty if the list does not exist)."""
    try:
        with open(path, "rb") as handle:
            ids = json.loads(handle.read(1 << 20))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: cannot read the detached shards: {exc}") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ShardError(f"{path}: expected a JSON list of shard ids")
    return set(ids)


def write_detached(path: str, ids: Iterable[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    reliant_store.write(path, json.dumps(sorted(set(ids))).encode() + b"\n", mode=0o600)


@contextlib.contextmanager
def operation_lock(state_path: str) -> Iterator[None]:
    """Serialize suture and dissect runs (the path unit's dissect may overlap the one
    after qubesd stops): an exclusive lockf on ``shards.lock`` beside the state."""
    directory = os.path.dirname(os.path.abspath(state_path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    with reliant_store.locked(os.path.join(directory, "shards.lock"), exclusive=True,
                              create=True):
        yield


def read_state(path: str) -> Optional[dict[str, Any]]:
    """The runtime state written by suture, None if absent or unreadable."""
    try:
        with open(path, "rb") as handle:
            state = json.loads(handle.read(reliant_store.MAX_BYTES))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("shards"), dict) else None


def write_state(path: str, state: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    # compact: the encoder written in C serves only JSON without indentation
    data = json.dumps(state, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    reliant_store.write(path, data, mode=0o600)


# ---------------------------------------------------------------------------
# suture


@dataclass
class SuturePlan:
    merged: etree._Element
    facts: _Facts  # records of the merged domains (stubs among them: serialize with .expand)
    state: dict[str, Any]
    problems: list[Problem]
    sutured: list[Shard]
    dirs: dict[str, list[tuple[str, str]]]  # shard id -> dom0 dirs of its merged qubes


def _core_sections(root: etree._Element, source: str) -> dict[str, etree._Element]:
    if root.tag != "qubes":
        raise ShardError(f"{source}: root element is <{root.tag}>, not <qubes>")
    sections = {}
    for name in ("labels", "pools", "properties", "domains"):
        section = root.find(name)
        if section is None:
            raise ShardError(f"{source}: no <{name}> section")
        sections[name] = section
    return sections


def _order_shards(shards: Sequence[Shard], problems: list[Problem]) -> list[Shard]:
    """Dependencies first; shards in a dependency cycle are refused."""
    by_id = {shard.id: shard for shard in shards}
    ordered: list[Shard] = []
    done: set[str] = set()
    for shard in shards:
        if not _visit(shard, (), by_id, done, ordered):
            problems.append(Problem("error", "refused", f"shard {shard.id} ({shard.path}) is "
                                    "part of a dependency cycle; not merged", shard.id))
    return ordered


def _visit(shard: Shard, path: tuple[str, ...], by_id: dict[str, Shard], done: set[str],
           ordered: list[Shard]) -> bool:
    """Put `shard` after its dependencies into `ordered`; False if it is in a cycle (a
    plain function: a closure calling itself would keep the shards alive until a
    garbage collection)."""
    if shard.id in done:
        return True
    if shard.id in path:
        return False
    ok = True
    for dep in shard.depends_on:
        if dep in by_id and not _visit(by_id[dep], (*path, shard.id), by_id, done, ordered):
            ok = False
    if ok:
        done.add(shard.id)
        ordered.append(shard)
    return ok


def _recover(facts: _Facts, domain: etree._Element, what: str, target: str, shard: Shard) -> None:
    """Reset a missing reference to its default, keep the old value, prohibit start."""
    name = facts.name(domain)
    facts.materialize(domain)
    if what.startswith("device "):
        device = _remove_device(domain, what)
        key = RECOVERED_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", what.replace(" ", "-"))
        _set_feature(domain, key, etree.tostring(device, encoding="unicode", with_tail=False))
    else:
        prop = _properties(domain)[what]
        prop.getparent().remove(prop)
        _set_feature(domain, RECOVERED_PREFIX + what, target)
    facts.forget(domain)
    current = _feature(domain, PROHIBIT_START)
    if current is None or current.startswith(RATIONALE_PREFIX):
        _set_feature(domain, PROHIBIT_START,
                     f"{RATIONALE_PREFIX}{what} {target!r} was missing when shard {shard.id} was "
                     f"opened and was reset to its default; check the qube, then run "
                     f"'reliant-shard review {name}'")


def plan_suture(core_root: etree._Element, shards: Sequence[Shard], *,
                core_source: str = "core", missing_reference: str = "recover",
                detached: Iterable[str] = (), stubs: Optional["_Stubs"] = None) -> SuturePlan:
    """Merge `shards` into `core_root` (modified in place: it becomes the merged store);
    `stubs`: those of their domains read in chunks (`_read_in_chunks`).

    Raises ShardError only when the core itself is unusable; everything about a shard
    or a qube is reported in `problems` and the culprit is left out of the merge,
    untouched in its shard.
    """
    if missing_reference not in MISSING_REFERENCE_MODES:
        raise ShardError(f"missing_reference must be one of {MISSING_REFERENCE_MODES}, "
                         f"not {missing_reference!r}")
    problems: list[Problem] = []
    facts = _Facts(stubs)
    sections = _core_sections(core_root, core_source)
    labels = {label.text for label in sections["labels"]} | {
        label.get("id") for label in sections["labels"]}
    pool_owner = {pool.get("name"): CORE for pool in sections["pools"]}
    owner: dict[str, str] = {}  # qube name -> group
    uuids: set[str] = set()
    qids: set[int] = set()
    core_refs: set[str] = set()
    kernel_pools = {p.get("name") for p in sections["pools"]
                    if p.get("driver") == "linux-kernel"}
    merged_by_name: dict[str, QubeRecord] = {}
    used_vids: dict[tuple[str, str], str] = {}
    for domain in sections["domains"]:
        qube = facts(domain)
        name = qube.name
        owner[name] = CORE
        merged_by_name[name] = qube
        _note_volumes(qube, used_vids, kernel_pools)
        uuids.add(qube.uuid)
        qid = qube.qid
        if qid is not None:
            qids.add(qid)
        core_refs.update(target for _, target in qube.refs)
        if qube.cls != "AdminVM":
            facts.strip_tags(domain)
            facts.add_tag(domain, CORE_TAG)
    for prop in sections["properties"]:
        if prop.get("name") in GLOBAL_REFERENCES and prop.text:
            core_refs.add(prop.text)
    owner.setdefault("dom0", CORE)
    detached = set(detached)
    state: dict[str, Any] = {"version": 1, "shards": {}, "detached": sorted(detached)}
    sutured: list[Shard] = []
    dirs: dict[str, list[tuple[str, str]]] = {}
    ranges: list[tuple[tuple[int, int], str]] = []
    by_id = {shard.id: shard for shard in shards}

    for shard in _order_shards(shards, problems):
        if shard.id in detached:
            problems.append(Problem("info", "detached", f"shard {shard.id} ({shard.path}) is "
                                    "detached; not merged", shard.id))
            continue
        refusal = _refusal(shard, pool_owner, ranges)
        if refusal:
            problems.append(Problem("error", "refused", f"shard {shard.id} ({shard.path}): "
                                    f"{refusal}; not merged", shard.id))
            continue
        allowed = referable_groups(shard.id, _deps_closure(shard.id, by_id)
                                   & {s.id for s in sutured})
        visible_pools = {p for p, g in pool_owner.items() if g in allowed} | set(shard.pools)
        candidates = _admissible(facts, shard, owner, uuids, labels, visible_pools, core_refs,
                                 problems)
        candidates = _own_volumes(facts, shard, candidates, merged_by_name, used_vids,
                                  kernel_pools, problems)
        candidates = _resolve_references(facts, shard, candidates, owner, allowed,
                                         missing_reference, problems)
        candidates = _assign_qids(facts, shard, candidates, qids, problems)
        merged_uuids = []
        dirs[shard.id] = []
        tag = shard_tag(shard.id)
        for domain in candidates:
            qube = facts(domain)
            _note_volumes(qube, used_vids, kernel_pools)
            merged_by_name[qube.name] = qube
            dirs[shard.id].append((dom0_subdir(qube), qube.name))
            facts.strip_tags(domain)
            facts.add_tag(domain, tag)
            owner[qube.name] = shard.id
            uuids.add(qube.uuid)
            qids.add(qube.qid)
            merged_uuids.append(qube.uuid)
        sections["domains"].extend(candidates)
        pool_names = shard.pools
        for pool in shard.pool_elements:
            pool_owner[pool.get("name")] = shard.id
            sections["pools"].append(pool)
        ranges.append((shard.qid_range, shard.id))
        sutured.append(shard)
        state["shards"][shard.id] = {"path": shard.path, "pools": pool_names,
                                     "merged": merged_uuids}
    state["problems"] = [asdict(p) for p in problems]
    state["refused"] = sorted({p.shard for p in problems if p.kind == "refused" and p.shard})
    return SuturePlan(core_root, facts, state, problems, sutured, dirs)


def _refusal(shard: Shard, pool_owner: dict[str, str],
             ranges: list[tuple[tuple[int, int], str]]) -> Optional[str]:
    """Why `shard` as a whole cannot be merged, None if it can."""
    try:
        pools = shard.pool_elements
        shard.domains  # noqa: B018 - parse now so that a broken file refuses the shard
    except (reliant_store.StoreError, ShardError) as exc:
        return str(exc)
    for (first, last), other in ranges:
        if shard.qid_range[0] <= last and first <= shard.qid_range[1]:
            return (f"QID range {shard.qid_range[0]}-{shard.qid_range[1]} overlaps "
                    f"{first}-{last} of shard {other}")
    names = set()
    for pool in pools:
        name = pool.get("name") or ""
        if not name or name in names:
            return f"pool name {name!r} is empty or repeated"
        names.add(name)
        if name in pool_owner:
            holder = "core" if pool_owner[name] == CORE else f"shard {pool_owner[name]}"
            return f"pool {name!r} redefines a pool of {holder}"
        dir_path = pool.get("dir_path")
        if dir_path is not None and not _within(dir_path, shard.path):
            return f"pool {name!r} has dir_path {dir_path} outside the shard directory"
    return None


def _admissible(facts: _Facts, shard: Shard, owner: dict[str, str], uuids: set[str],
                labels: set[str],
                pools: set[str], core_refs: set[str],
                problems: list[Problem]) -> list[etree._Element]:
    """The shard's qubes that may be merged at all (class, qid, name, uuid, label, pools)."""
    kept: list[etree._Element] = []
    names: set[str] = set()
    own_uuids: set[str] = set()
    for domain in shard.domains:
        qube = facts(domain)
        name, uuid, qid, label = qube.name, qube.uuid, qube.qid, qube.label
        reason, kind = None, "invalid"
        if domain.tag != "domain":
            reason = f"<{domain.tag}> is not a <domain>"
        elif qube.cls not in QUBE_CLASSES:
            reason = f"class {qube.cls!r} is not allowed in a shard"
        elif not valid_qube_name(name):
            reason = f"name {name!r} is not a valid qube name"
        elif qid is None or not 0 < qid < MAX_QID:
            facts.materialize(domain)  # a stub: read the text of its qid
            reason = f"qid {_prop(domain, 'qid')!r} is not between 1 and {MAX_QID - 1}"
        elif not uuid:
            reason = "it has no uuid"
        elif name in names or uuid in own_uuids:
            reason = "its name or uuid appears twice in the shard"
        elif name in owner:
            holder = "core" if owner[name] == CORE else f"shard {owner[name]}"
            reason, kind = f"a qube named {name!r} exists in {holder}", "conflict"
        elif uuid in uuids:
            reason, kind = f"its uuid {uuid} is used by another visible qube", "conflict"
        elif name in core_refs:
            reason, kind = (f"core references a qube named {name!r}; a core qube may not "
                            "reference a shard qube", "conflict")
        elif not label or label not in labels:
            reason = f"label {label!r} is not defined in core"
        else:
            missing = sorted(qube.pools - pools)
            if missing:
                reason = f"its volumes use pools {', '.join(missing)} that are not visible"
        if reason:
            hint = " Rename it with 'reliant-shard rename'." if kind == "conflict" else ""
            problems.append(Problem("warning", kind, f"qube {name or '?'} of shard {shard.id} "
                                    f"not merged: {reason}; it stays intact in "
                                    f"{shard.file}.{hint}", shard.id, name or None))
            continue
        names.add(name)
        own_uuids.add(uuid)
        kept.append(domain)
    return kept


def _note_volumes(qube: QubeRecord, used: dict[tuple[str, str], str], kernel_pools: set[str]) -> None:
    for _, pool, vid, _ in qube.volumes:
        if vid and pool not in kernel_pools:
            used.setdefault((pool, vid), qube.name)


def _own_volumes(facts: _Facts, shard: Shard, candidates: list[etree._Element],
                 merged: dict[str, QubeRecord], used: dict[tuple[str, str], str],
                 kernel_pools: set[str], problems: list[Problem]) -> list[etree._Element]:
    """Leave out shard qubes whose volumes would open another qube's data: a volume
    (pool, vid) already used by another qube, or a snapshot source that is not a
    volume of the qube's template (checked when the template is visible)."""
    local = {qube.name: qube for qube in map(facts, candidates)}
    claimed: dict[tuple[str, str], str] = {}
    sources_of: dict[str, set[str]] = {}  # template name -> its vids and sources
    kept = []
    for domain in candidates:
        qube = facts(domain)
        template_name = dict(qube.refs).get("template", "")
        template = local.get(template_name) or merged.get(template_name)
        sources = sources_of.get(template_name)
        if sources is None:
            sources = sources_of[template_name] = set() if template is None else {
                v for _, _, vid, source in template.volumes for v in (vid, source) if v}
        reason = None
        for volume, pool, vid, source in qube.volumes:
            key = (pool, vid) if vid and pool not in kernel_pools else None
            holder = None if key is None else used.get(key) or claimed.get(key)
            if holder is not None and holder != qube.name:
                reason = f"volume {volume} is {pool}:{vid}, a volume of qube {holder}"
            elif source and template is not None and source not in sources:
                reason = (f"volume {volume} takes its data from {source}, which is not a "
                          f"volume of its template {template.name}")
            if reason:
                break
            if key is not None:
                claimed.setdefault(key, qube.name)
        if reason:
            problems.append(Problem("warning", "invalid", f"qube {qube.name} of shard "
                                    f"{shard.id} not merged: {reason}; it stays intact in "
                                    f"{shard.file}", shard.id, qube.name))
            continue
        kept.append(domain)
    return kept


def _resolve_references(facts: _Facts, shard: Shard, candidates: list[etree._Element],
                        owner: dict[str, str],
                        allowed: set[str], mode: str,
                        problems: list[Problem]) -> list[etree._Element]:
    """Recover (or skip) qubes whose references do not resolve to an allowed qube."""
    while True:
        local = {facts(d).name for d in candidates}
        dropped = False
        for domain in list(candidates):
            qube = facts(domain)
            name = qube.name
            for what, target in qube.refs:
                if target in local or owner.get(target) in allowed:
                    continue
                where = ("is not visible" if target not in owner
                         else "belongs to a shard this one does not depend on")
                if mode == "skip":
                    candidates.remove(domain)
                    dropped = True
                    problems.append(Problem("warning", "skipped", f"qube {name} of shard "
                                            f"{shard.id} not merged: {what} {target!r} {where}; "
                                            f"it stays intact in {shard.file}", shard.id, name))
                    break
                _recover(facts, domain, what, target, shard)
                problems.append(Problem("warning", "recovered", f"qube {name} of shard "
                                        f"{shard.id}: {what} {target!r} {where}; reset to its "
                                        f"default, start prohibited until 'reliant-shard "
                                        f"review {name}'", shard.id, name))
        if not dropped:
            return candidates


def _assign_qids(facts: _Facts, shard: Shard, candidates: list[etree._Element], qids: set[int],
                 problems: list[Problem]) -> list[etree._Element]:
    """Keep qids inside the shard's range and free; give the others the lowest free one."""
    taken = set(qids)
    keep, move = [], []
    for domain in candidates:
        qid = facts.qid(domain)
        if shard.contains_qid(qid) and qid not in taken:
            taken.add(qid)
            keep.append(domain)
        else:
            move.append(domain)
    free = shard.free_qids(taken)
    for domain in move:
        qid = next(free, None)
        name = facts.name(domain)
        if qid is None:
            problems.append(Problem("warning", "invalid", f"qube {name} of shard {shard.id} not "
                                    f"merged: QID range {shard.qid_range[0]}-"
                                    f"{shard.qid_range[1]} is full", shard.id, name))
            continue
        problems.append(Problem("info", "renumbered", f"qube {name} of shard {shard.id}: qid "
                                f"{facts.qid(domain)} -> {qid} (the shard's range)", shard.id,
                                name))
        facts.set_qid(domain, qid)
        taken.add(qid)
        keep.append(domain)
    return keep


# ---------------------------------------------------------------------------
# stores read in chunks (see reliant_chunks)


class _Stubs:
    """<domain> elements read in chunks (`reliant_chunks`) stand in their document as
    stubs ``<domain reliant-stub="NONCE-INDEX"/>``. Each stub has its record, the chunk
    to parse when something must change it (`materialize`), the bytes that replace it
    in a serialized file (`expand`) and the group tags those bytes carry: a stub is
    written only while its record has exactly those tags. The nonce is new for each
    run, so no stored byte can pose as a stub."""

    def __init__(self) -> None:
        self._nonce = secrets.token_hex(8)
        self._pattern = reliant_chunks.stub_pattern(self._nonce)
        self._index: dict[etree._Element, int] = {}
        self._by_index: list[tuple[QubeRecord, bytes, bytes, tuple[str, ...], str]] = []

    def read(self, head: bytes, root_tag: str,
             entries: Sequence[tuple[QubeRecord, bytes, bytes, tuple[str, ...]]],
             source: str) -> etree._Element:
        """The store `head` with a stub for each (record, chunk to parse, bytes, tags of
        the bytes) in its <domains>; StoreError when `head` is not a store's head."""
        first = len(self._by_index)
        marks = [f'    <domain reliant-stub="{self._nonce}-{first + i}"/>'.encode()
                 for i in range(len(entries))]
        root = reliant_store.parse(head + b"\n".join(marks) + b"\n"
                                   + reliant_chunks.tail(root_tag), source)
        domains = root.find("domains")
        stubs = list(domains) if len(root) and domains is root[-1] else []
        if len(stubs) != len(entries) or any(
                stub.get("reliant-stub") != f"{self._nonce}-{first + i}"
                for i, stub in enumerate(stubs)):
            raise reliant_store.StoreError(f"{source}: the head of the store holds domains")
        for stub, (record, chunk, data, tags) in zip(stubs, entries):
            self._index[stub] = len(self._by_index)
            self._by_index.append((record, chunk, data, tags, source))
        return root

    def records(self) -> dict[etree._Element, QubeRecord]:
        """The record of each stub."""
        return {stub: self._by_index[index][0] for stub, index in self._index.items()}

    def carries(self, domain: etree._Element, tags: tuple[str, ...]) -> bool:
        """True if `domain` is a stub whose bytes carry exactly the group tags `tags`."""
        index = self._index.get(domain)
        return index is not None and self._by_index[index][3] == tags

    def materialize(self, stub: etree._Element) -> bool:
        """Turn `stub` into the <domain> of its chunk; False if it is not a stub."""
        index = self._index.pop(stub, None)
        if index is None:
            return False
        _, chunk, _, _, source = self._by_index[index]
        domain = _parse_chunk(chunk, source)
        stub.attrib.clear()
        stub.attrib.update(domain.attrib)
        stub.text = domain.text
        stub.extend(list(domain))
        return True

    def expand(self, data: bytes) -> bytes:
        """`data` (a serialized file) with the bytes of each stub in its place."""
        def replacement(match: re.Match[bytes]) -> bytes:
            record, _, stub_bytes, tags, source = self._by_index[int(match.group(1))]
            if record.group_tags != tags:
                raise ShardError(f"{source}: internal error: qube {record.name} would be "
                                 f"written with tags {tags}, not {record.group_tags}")
            return stub_bytes

        data = self._pattern.sub(replacement, data)
        if self._nonce.encode() in data:  # a stub not on a line of its own: never write it
            raise ShardError("internal error: a qube was not expanded")
        return data


def _parse_chunk(chunk: bytes, source: str) -> etree._Element:
    domain = reliant_store.parse(chunk, source)
    if domain.tag != "domain":
        raise reliant_store.StoreError(f"{source}: <{domain.tag}> among the domains")
    return domain


def _learn(chunks: list[bytes], memo: reliant_chunks.Memo, source: str) -> bool:
    """Add the chunks `memo` does not know: each chunk's record and its bytes without
    reliant- tags. False when a chunk is not one <domain> element on its own."""
    new = [chunk for chunk in dict.fromkeys(chunks) if chunk not in memo]
    if not new:
        return True
    home = _parse_chunks(new, source)
    if home is None:
        return False
    domains = home.find("domains")
    fields = [QubeRecord(domain).fields() for domain in domains]
    for domain in domains:
        _strip_reliant_tags(domain)
    tag_free = _chunks_of(home)
    if tag_free is None or len(tag_free) != len(new):
        return False
    memo.update(zip(new, zip(fields, tag_free)))
    return True


def _parse_chunks(chunks: list[bytes], source: str) -> Optional[etree._Element]:
    """A store holding the <domain> of each chunk, in order; None if a chunk is not a
    <domain> element on its own.

    All are parsed at once and kept if that store prints back to exactly `chunks` (so
    each chunk is its element's own text); else they are parsed one by one."""
    try:
        home = reliant_store.parse(reliant_chunks.join(b"<qubes>" + reliant_chunks.HEAD_END,
                                                       chunks), source)
        if (len(home) == 1 and len(home[0]) == len(chunks) and _chunks_of(home) == chunks
                and all(domain.tag == "domain" for domain in home[0])):
            return home  # one <domain> per chunk, each chunk printed from its own
    except reliant_store.StoreError:
        pass
    try:
        domains = [_parse_chunk(chunk, source) for chunk in chunks]
    except reliant_store.StoreError:
        return None
    home = reliant_store.make_element("qubes")
    etree.SubElement(home, "domains").extend(domains)
    return home


def _chunks_of(home: etree._Element) -> Optional[list[bytes]]:
    """The chunks of the store `home` as it prints (None if it cannot be cut)."""
    cut = reliant_chunks.split(reliant_store.serialize(home))
    return None if cut is None else cut[1]


def _memo_version() -> str:
    """What the memo's entries depend on: this code, lxml's serializer, Python (marshal)."""
    digest = hashlib.sha256()
    for module in (__file__, reliant_chunks.__file__, reliant_store.__file__):
        with open(module, "rb") as handle:
            digest.update(handle.read())
    return (f"{digest.hexdigest()} lxml {'.'.join(map(str, etree.LXML_VERSION))} "
            f"python {sys.version_info[:3]}")


def _memo_group(group: Optional[str]) -> str:
    """Name of the memo file of `group` (CORE, a shard id, None: no group yet)."""
    return "core" if group == CORE else "new" if group is None else "shard-" + group


def _memo_group_of(fields: Sequence[Any]) -> str:
    """The memo file of a chunk: by the group tag in its record `fields`."""
    tags = fields[_GROUP_TAGS_FIELD]
    if CORE_TAG in tags:
        return _memo_group(CORE)
    shards = sorted(t[len(shard_tag("")):] for t in tags if t.startswith(shard_tag("")))
    return _memo_group(shards[0] if shards else None)


def _read_merged(path: str, memo: reliant_chunks.Memo, stubs: _Stubs) -> tuple[etree._Element,
                                                                              Optional[list[bytes]]]:
    """The merged store and its chunks: its domains are `stubs` standing for their
    tag-free bytes (chunks not in `memo` are added to it) when it has qubesd's layout,
    else it is parsed whole (no chunks). ShardError naming `path`."""
    try:
        data = reliant_store.read(path)
        found = reliant_chunks.split(data)
        if found is not None and _learn(found[1], memo, path):
            entries = [(QubeRecord.from_fields(memo[chunk][0]), chunk, memo[chunk][1], ())
                       for chunk in found[1]]
            with contextlib.suppress(reliant_store.StoreError):
                return stubs.read(found[0], "qubes", entries, path), found[1]
        return reliant_store.parse(data, path), None
    except reliant_store.StoreError as exc:
        raise ShardError(str(exc)) from None


def _merged_chunks(memo: reliant_chunks.Memo) -> dict[tuple[tuple[str, ...], bytes],
                                                      tuple[bytes, Any]]:
    """(group tags, tag-free bytes) -> (chunk of the merged store, its record fields):
    what suture may write for a <domain> of core or of a shard file without parsing it."""
    return {(fields[_GROUP_TAGS_FIELD], tag_free): (chunk, fields)
            for chunk, (fields, tag_free) in memo.items()}


def _read_in_chunks(data: bytes, root_tag: str, tags: Sequence[tuple[str, ...]],
                    known: dict[tuple[tuple[str, ...], bytes], tuple[bytes, Any]],
                    stubs: _Stubs, source: str) -> Optional[etree._Element]:
    """Core or a shard file (`data`) with stubs for its domains, each standing for the
    chunk of the merged store that suture wrote or qubesd saved for it with the first of
    `tags` it is known under; None unless every domain is known."""
    found = reliant_chunks.split(data, root_tag)
    if found is None:
        return None
    entries = []
    for chunk in found[1]:
        hit = next(((key, known[key, chunk]) for key in tags if (key, chunk) in known), None)
        if hit is None:
            return None
        key, (merged_chunk, fields) = hit
        record = QubeRecord.from_fields(fields)
        record.group_tags = ()  # as read: a file on disk holds no reliant- tag
        entries.append((record, chunk, merged_chunk, key))
    try:
        return stubs.read(found[0], root_tag, entries, source)
    except reliant_store.StoreError:
        return None


# ---------------------------------------------------------------------------
# dissect


@dataclass
class DissectPlan:
    """What dissect will write: `outputs` in a safe order (files that gain qubes first,
    core last), the dom0 directories of each shard's merged qubes and of its qubes kept
    aside, the new runtime state and the problems."""

    outputs: list[tuple[str, bytes, int]]
    dirs: dict[str, list[tuple[str, str]]]
    keep_dirs: dict[str, set[tuple[str, str]]]
    state: dict[str, Any]
    problems: list[Problem]
    shards: dict[str, Shard]


_UUID_RE = re.compile(rb'<property name="uuid">([^<]*)</property>')


def _file_uuids(shard: Shard) -> Optional[set[str]]:
    """uuids of the shard file's qubes without parsing it; None if a qube has none."""
    found = {m.decode("utf-8", "replace") for m in _UUID_RE.findall(shard.data)}
    return found if len(found) == shard.data.count(b"<domain ") else None


def _pool_owners(merged_pools: etree._Element, core_pools: set[str],
                 writable: dict[str, Shard], sutured: dict[str, Any],
                 visible: dict[str, Shard], roots: Sequence[str]) -> dict[str, Optional[str]]:
    """Group of each merged pool; None when it cannot be placed without a leak."""
    owners: dict[str, Optional[str]] = {}
    for pool in merged_pools:
        name, dir_path = pool.get("name"), pool.get("dir_path")
        if name in core_pools:
            owners[name] = CORE
            continue
        sid = next((s for s, info in sutured.items() if name in info.get("pools", ())), None)
        if sid is None:
            sid = next((s for s, shard in writable.items() if name in shard.pools), None)
        if sid is None and dir_path:
            sid = next((s for s, shard in visible.items() if _within(dir_path, shard.path)),
                       None)
            if sid is None and any(_within(dir_path, root) for root in roots):
                owners[name] = None
                continue
        owners[name] = CORE if sid is None else (sid if sid in writable else None)
    return owners


def plan_dissect(merged_root: etree._Element, core_root: Optional[etree._Element],
                 shards: Sequence[Shard], state: Optional[dict[str, Any]], *,
                 core_path: str, roots: Sequence[str] = (),
                 stubs: Optional["_Stubs"] = None) -> DissectPlan:
    """Split `merged_root` (consumed) into the core file and the files of merged shards;
    `stubs`: those of its domains read in chunks (`_read_merged`).

    Never writes a shard's qube, pool, tag or reference into core or into a shard that
    may not know it; what cannot be placed safely is reported as `unplaceable` and
    written nowhere (it stays in the merged store). Qubes of a shard that were kept out
    of the merge stay in its file.
    """
    problems: list[Problem] = []
    facts = _Facts(stubs)
    sections = _core_sections(merged_root, "merged store")
    core_pools = {p.get("name") for p in core_root.find("pools")} if core_root is not None \
        else set()
    visible = {shard.id: shard for shard in shards}
    if state is not None:
        sutured = dict(state["shards"])
    else:
        tagged = {tag[len(shard_tag("")):] for domain in sections["domains"]
                  for tag in facts(domain).group_tags if tag.startswith(shard_tag(""))}
        sutured = {sid: {"path": visible[sid].path, "pools": visible[sid].pools, "merged": None}
                   for sid in sorted(tagged) if sid in visible}
        if sutured:
            problems.append(Problem("warning", "state", "no runtime state from suture: qubes "
                                    "absent from the merged store are kept in their shards"))
    untouchable = set((state or {}).get("detached", ())) | set((state or {}).get("refused", ()))
    writable = _writable(visible, sutured, untouchable, problems)
    pool_owner = _pool_owners(sections["pools"], core_pools, writable, sutured, visible, roots)
    for name, group in pool_owner.items():
        if group is None:
            problems.append(Problem("error", "unplaceable", f"pool {name} lies under a shard "
                                    "root but in no merged shard; not written anywhere"))
    core_previous = _index(facts, core_root.find("domains") if core_root is not None else None)
    previous_cache: dict[str, dict[str, etree._Element]] = {CORE: core_previous}

    def previous(group: str) -> dict[str, etree._Element]:
        if group not in previous_cache:
            previous_cache[group] = _index(facts, writable[group].root.find("domains"))
        return previous_cache[group]

    groups: dict[str, list[etree._Element]] = {CORE: [], **{sid: [] for sid in writable}}
    owner: dict[str, Optional[str]] = {}
    unplaced: set[str] = set()  # uuids: their files keep the earlier version
    pending = []
    merged_qids = set()
    for domain in sections["domains"]:
        group = _group_by_pools_or_tag(facts, domain, pool_owner, writable, visible, problems)
        qube = facts(domain)
        merged_qids.add(qube.qid)
        if group == _PENDING:
            pending.append(domain)
            continue
        owner[qube.name] = group
        if group is None:
            unplaced.add(qube.uuid)
        else:
            groups[group].append(domain)
    for domain in pending:
        group = _group_of_new(facts, domain, owner, pool_owner, core_previous, writable, visible)
        owner[facts.name(domain)] = group
        groups[group].append(domain)

    _fix_global_references(facts, sections["properties"], core_root, owner, problems)
    pools_of = {sid: [p for p in sections["pools"] if pool_owner.get(p.get("name")) == sid]
                for sid in groups}
    for sid in set(writable) - set(sutured):  # not merged: its own pools stay as they are
        merged_names = {p.get("name") for p in pools_of[sid]}
        pools_of[sid] = [p for p in writable[sid].pool_elements
                         if p.get("name") not in merged_names] + pools_of[sid]
    new_state: dict[str, Any] = {"version": 1, "shards": {},
                                 "detached": (state or {}).get("detached", []),
                                 "refused": (state or {}).get("refused", [])}
    gaining, losing = [], []
    scratch = etree.SubElement(merged_root, "reliant-scratch")  # shard files built in place
    dirs: dict[str, list[tuple[str, str]]] = {}
    keep_dirs: dict[str, set[tuple[str, str]]] = {}
    for sid, shard in writable.items():
        allowed = referable_groups(sid, _deps_closure(sid, visible) & set(writable))
        members = [d for d in groups[sid] if _fix_references(
            facts, d, sid, allowed, owner, pool_owner, lambda s=sid: previous(s), problems)]
        member_qubes = [facts(d) for d in members]
        merged_uuids = {qube.uuid for qube in member_qubes}
        hold = unplaced if len(members) == len(groups[sid]) else \
            unplaced | {facts(d).uuid for d in groups[sid]} - merged_uuids
        known = sutured.get(sid, {}).get("merged")
        known = set(known) if known is not None else None
        file_uuids = _file_uuids(shard)
        if (known is not None and file_uuids is not None
                and file_uuids <= merged_uuids | known and not file_uuids & hold):
            kept = []
        else:
            kept = [d for d in previous(sid).values() if facts.uuid(d) not in merged_uuids and
                    (known is None or facts.uuid(d) not in known or facts.uuid(d) in hold)]
        _fix_qids(facts, shard, members, kept, merged_qids, lambda s=sid: previous(s), problems)
        for domain in members + kept:
            facts.strip_tags(domain)
        dirs[sid] = [(dom0_subdir(q), q.name) for q in member_qubes]
        keep_dirs[sid] = {(dom0_subdir(q), q.name) for q in map(facts, kept)}
        new_state["shards"][sid] = {
            "path": shard.path, "pools": [p.get("name") for p in pools_of[sid]],
            "merged": sorted((known or set()) | merged_uuids)}
        lost = (file_uuids if file_uuids is not None else set(previous(sid))) - merged_uuids \
            - {facts.uuid(d) for d in kept}
        ordered = sorted(members + kept, key=lambda d: _order(facts(d)))
        content = facts.expand(shard_bytes(shard, pools_of[sid], ordered, home=scratch))
        (losing if lost else gaining).append((shard.file, content, 0o600))
    for sid in set(sutured) - set(writable):
        new_state["shards"][sid] = sutured[sid]

    core_members = [d for d in groups[CORE] if _fix_references(
        facts, d, CORE, referable_groups(CORE, ()), owner, pool_owner, lambda: core_previous,
        problems)]
    hold = unplaced | {facts.uuid(d) for d in groups[CORE]} - {facts.uuid(d) for d in core_members}
    core_members += [deepcopy(d) for u, d in core_previous.items() if u in hold]
    for domain in core_members:
        facts.strip_tags(domain)
    sections["domains"][:] = core_members
    sections["pools"][:] = pools_of[CORE]
    # core is built in place too; nothing is unlinked from the merged document (lxml
    # frees a large unlinked subtree slowly while elements in it are still referenced)
    core_out = etree.SubElement(scratch, merged_root.tag, dict(merged_root.attrib))
    core_out.extend([child for child in merged_root if child is not scratch])
    outputs = [*gaining, *losing, (core_path, facts.expand(reliant_store.serialize(core_out)), 0o660)]
    return DissectPlan(outputs, dirs, keep_dirs, new_state, problems, writable)


def _order(qube: QubeRecord) -> tuple[bool, str]:
    """Order of qubes in a shard file: by name, nameless ones last."""
    return qube.name == "", qube.name


def _writable(visible: dict[str, Shard], sutured: dict[str, Any], detached: set[str],
              problems: list[Problem]) -> dict[str, Shard]:
    """Shards dissect may write: merged ones still at their place, and visible ones that
    were not merged (their qubes are all kept; merged qubes join them by their pools,
    e.g. when an existing store is first split), never detached or unreadable ones."""
    writable = {}
    for sid in sorted(set(sutured) - set(visible)):
        problems.append(Problem("error", "unplaceable", f"shard {sid} ({sutured[sid]['path']}) "
                                "was merged but is not visible any more; its qubes stay only "
                                "in the merged store", sid))
    for sid, shard in visible.items():
        if sid in detached:
            continue
        if sid in sutured and os.path.realpath(shard.path) != os.path.realpath(
                sutured[sid]["path"]):
            problems.append(Problem("error", "unplaceable", f"shard {sid} was merged from "
                                    f"{sutured[sid]['path']} but is now at {shard.path}; not "
                                    "written", sid))
            continue
        if sid not in sutured:  # merged shards parsed at suture; parse this one now
            try:
                shard.domains  # noqa: B018
            except (reliant_store.StoreError, ShardError) as exc:
                problems.append(Problem("error", "refused", f"{exc}; not written", sid))
                continue
        writable[sid] = shard
    return writable


def _index(facts: _Facts, domains: Optional[etree._Element]) -> dict[str, etree._Element]:
    """uuid -> <domain> of an earlier file (read cheaply: only the uuid is needed)."""
    return {_prop(d, "uuid") or "": d for d in domains} if domains is not None else {}


def _group_by_pools_or_tag(facts: _Facts, domain: etree._Element,
                           pool_owner: dict[str, Optional[str]],
                           writable: dict[str, Shard], visible: dict[str, Shard],
                           problems: list[Problem]) -> Optional[str]:
    """The group of a merged qube by its data pools, else by its tag; _PENDING when
    neither says (a qube created while shards are open); None when unplaceable."""
    qube = facts(domain)
    name = qube.name
    if qube.cls == "AdminVM":
        return CORE
    owners = {pool_owner.get(p, CORE) for p in qube.data_pools} - {CORE}
    if None in owners:
        problems.append(Problem("error", "unplaceable", f"qube {name}: its data volumes lie in a "
                                "pool that belongs to no writable shard; not written anywhere",
                                qube=name))
        return None
    if len(owners) > 1:
        top = [s for s in owners if owners - {s} <= _deps_closure(s, visible)]
        if len(top) != 1:
            problems.append(Problem("error", "unplaceable", f"qube {name}: its data volumes lie "
                                    f"in shards {', '.join(sorted(owners))}; not written "
                                    "anywhere", qube=name))
            return None
        owners = set(top)
    if owners:
        return owners.pop()
    tags = set(qube.group_tags)
    if CORE_TAG in tags:
        return CORE
    for tag in sorted(tags):
        if tag.startswith(shard_tag("")):
            sid = tag[len(shard_tag("")):]
            if sid in writable:
                return sid
            problems.append(Problem("error", "unplaceable", f"qube {name} of shard {sid}: the "
                                    "shard is not writable now; not written anywhere", sid, name))
            return None
    return _PENDING


def _group_of_new(facts: _Facts, domain: etree._Element, owner: dict[str, Optional[str]],
                  pool_owner: dict[str, Optional[str]], core_previous: dict[str, etree._Element],
                  writable: dict[str, Shard], visible: dict[str, Shard]) -> str:
    """Group of an untagged qube with no data in a shard's pools: the file it was written
    to last time, else the first group allowed to reference all it references."""
    uuid = facts.uuid(domain)
    if uuid in core_previous:
        return CORE
    for sid, shard in writable.items():
        if uuid in (_file_uuids(shard) or {facts.uuid(d) for d in shard.domains}):
            return sid
    needed = {owner.get(target, CORE) for _, target in facts(domain).refs}
    needed |= {pool_owner.get(p, CORE) for p in facts(domain).pools}
    needed -= {CORE, None}
    if needed:
        for sid in writable:
            if needed <= {sid} | _deps_closure(sid, visible):
                return sid
    return CORE


def _fix_global_references(facts: _Facts, props: etree._Element,
                           core_root: Optional[etree._Element],
                           owner: dict[str, Optional[str]], problems: list[Problem]) -> None:
    """Global properties naming a non-core qube keep their earlier core value on disk."""
    old = core_root.find("properties") if core_root is not None else None
    for prop in list(props):
        target = prop.text
        if prop.get("name") not in GLOBAL_REFERENCES or not target:
            continue
        if owner.get(target, CORE) == CORE:
            continue
        old_value = _prop(core_root, prop.get("name")) if old is not None else None
        problems.append(Problem("warning", "violation", f"global property {prop.get('name')} "
                                f"names {target!r}, which is not a core qube; on disk it stays "
                                f"{old_value!r}"))
        if old_value is None:
            props.remove(prop)
        else:
            prop.text = old_value


def _fix_references(facts: _Facts, domain: etree._Element, group: str, allowed: set[str],
                    owner: dict[str, Optional[str]], pool_owner: dict[str, Optional[str]],
                    previous: Any, problems: list[Problem]) -> bool:
    """Undo what `domain` references outside `allowed` (on disk only); False when it
    cannot be undone (then the qube is written nowhere)."""
    qube = facts(domain)
    bad_pools = sorted(p for p in qube.pools if pool_owner.get(p, CORE) not in allowed)
    bad_refs = [(w, t) for w, t in qube.refs if owner.get(t, CORE) not in allowed]
    if not bad_pools and not bad_refs:
        return True
    name = qube.name
    where = "core" if group == CORE else f"shard {group}"
    shard = None if group == CORE else group
    old = previous().get(facts.uuid(domain))
    facts.materialize(domain)
    if bad_pools:
        old_config = old.find("volume-config") if old is not None else None
        if old_config is None:
            problems.append(Problem("error", "unplaceable", f"qube {name} of {where} uses pools "
                                    f"{', '.join(bad_pools)} of a group it may not use and has no "
                                    "earlier version to fall back to; not written anywhere",
                                    shard, name))
            return False
        domain.replace(domain.find("volume-config"), deepcopy(old_config))
        problems.append(Problem("warning", "violation", f"qube {name} of {where}: volumes in "
                                f"pools {', '.join(bad_pools)} of a group it may not use; on "
                                "disk its earlier volume configuration stays", shard, name))
    for what, target in bad_refs:
        if what.startswith("device "):
            _remove_device(domain, what)
            kept = "dropped"
        else:
            prop = _properties(domain)[what]
            old_value = _prop(old, what) if old is not None else None
            if old_value is None:
                prop.getparent().remove(prop)
                kept = "reset to its default"
            else:
                prop.text = old_value
                kept = f"kept as {old_value!r}"
        problems.append(Problem("warning", "violation", f"qube {name} of {where}: {what} names "
                                f"{target!r} of a group it may not reference; on disk {kept}",
                                shard, name))
    facts.forget(domain)
    return True


def _remove_device(domain: etree._Element, what: str) -> Optional[etree._Element]:
    for devices in domain.iterfind("devices"):
        for device in devices:
            if f"device {devices.get('class')}:{device.get('id')}" == what:
                devices.remove(device)
                return device
    return None


def _fix_qids(facts: _Facts, shard: Shard, members: list[etree._Element],
              kept: list[etree._Element],
              merged_qids: set[Optional[int]], previous: Any, problems: list[Problem]) -> None:
    """Give qubes created while the shard was open (qid outside its range) a qid of the
    range in the shard file: the one written last time if still free, else the lowest
    free one. qubesd keeps the old qid until the next suture."""
    first, last = shard.qid_range
    outside = [d for d in members if not first <= (facts(d).qid or 0) <= last]
    if not outside:
        return
    taken = merged_qids | {facts.qid(d) for d in members + kept}
    moving = []
    for domain in outside:
        old = previous().get(facts.uuid(domain))
        qid = facts.qid(old) if old is not None else None
        if qid is not None and shard.contains_qid(qid) and qid not in taken:
            facts.set_qid(domain, qid)
            taken.add(qid)
        else:
            moving.append(domain)
    free = shard.free_qids(taken)
    for domain in moving:
        qid = next(free, None)
        name = facts.name(domain)
        if qid is None:
            problems.append(Problem("warning", "renumbered", f"qube {name} of shard {shard.id}: "
                                    f"QID range full, keeps qid {facts.qid(domain)}", shard.id,
                                    name))
            continue
        problems.append(Problem("info", "renumbered", f"qube {name} of shard {shard.id}: qid "
                                f"{facts.qid(domain)} -> {qid} in the shard file (qubesd uses it "
                                "from the next suture)", shard.id, name))
        facts.set_qid(domain, qid)
        taken.add(qid)


# ---------------------------------------------------------------------------
# dom0 directories (qubes-core-admin keeps firewall.xml, icons, libvirt config there)

QUBES_DIR = "/var/lib/qubes"


def _fsync_tree(path: str) -> None:
    for directory, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        reliant_store.fsync_dir(directory)


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


def _recover_swaps(parent: str) -> None:
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
                reliant_store.fsync_dir(parent)
        elif entry.startswith(".") and entry.endswith(".new"):
            shutil.rmtree(path)


def _replace_tree(src: str, parent: str, name: str, skipped: list[str]) -> bool:
    """Make `parent/name` a copy of `src` unless it already is one; True if copied.

    The copy is written and fsynced as ``.name.new``; the old tree is renamed to
    ``.name.old`` before the new one takes its name, so an interruption leaves one
    complete tree that `_recover_swaps` restores."""
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
    reliant_store.fsync_dir(parent)
    if os.path.lexists(old):
        shutil.rmtree(old)
        reliant_store.fsync_dir(parent)
    return True


def _remove_tree(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    else:
        return
    reliant_store.fsync_dir(os.path.dirname(path))


def _real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _entries(base: str) -> set[tuple[str, str]]:
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
        _recover_swaps(os.path.join(shard.path, DOM0_DIR, subdir))
    saved = _entries(os.path.join(shard.path, DOM0_DIR))
    for subdir, name in qubes:
        if (subdir, name) not in saved:
            continue
        src = os.path.join(shard.path, DOM0_DIR, subdir, name)
        dst = os.path.join(qubes_dir, subdir, name)
        if os.path.islink(src):
            problems.append(Problem("warning", "invalid", f"{src} is a symlink; not used",
                                    shard.id, name))
            continue
        if not _real_dir(src) or os.path.lexists(dst):
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
        _recover_swaps(os.path.join(shard.path, DOM0_DIR, subdir))
    present = _entries(qubes_dir)
    for subdir, name in qubes:
        if (subdir, name) not in present:
            continue
        src = os.path.join(qubes_dir, subdir, name)
        if _real_dir(src):
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
    """Remove the (saved) dom0 directories of shard qubes from `qubes_dir`."""
    for subdir, name in qubes:
        _remove_tree(os.path.join(qubes_dir, subdir, name))


# ---------------------------------------------------------------------------
# operations on files


@dataclass
class Result:
    """Outcome of an operation: files written, problems, the shards involved."""

    problems: list[Problem]
    written: list[str] = field(default_factory=list)
    shards: list[Shard] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


@contextlib.contextmanager
def _without_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: suture and dissect allocate records for
    every qube, which reference counting frees; collection passes over them while they
    are alive cost time for nothing (about 10% of a suture)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_core(path: str, known: Optional[dict[tuple[tuple[str, ...], bytes],
                                                 tuple[bytes, Any]]] = None,
               stubs: Optional[_Stubs] = None) -> etree._Element:
    """A qubesd store; with `known` and `stubs`, in chunks when every domain is known
    (see `_read_in_chunks`: core qubes carry the core tag in the merged store, dom0 none)."""
    try:
        data = reliant_store.read(path)
        root = None if stubs is None or known is None else _read_in_chunks(
            data, "qubes", [(CORE_TAG,), ()], known, stubs, path)
        return root if root is not None else reliant_store.parse(data, path)
    except reliant_store.StoreError as exc:
        raise ShardError(str(exc)) from None


def suture(core: str, roots: Sequence[str], out: str, *, max_depth: int = 3,
           missing_reference: str = "recover", policy_dir: Optional[str] = None,
           services: Optional[list[str]] = None, qubes_dir: str = QUBES_DIR,
           state_path: Optional[str] = None, detached: Iterable[str] = ()) -> Result:
    """Write the merged store `out` from `core` and the shards under `roots`.

    Reads core and shards, never writes them. Order: runtime policy (if `policy_dir`;
    then the `isolation_problems` of the merged store are reported too),
    dom0 directories back into `qubes_dir`, old runtime state removed, merged store,
    new state. ShardError (nothing merged) if core is unusable or the policy
    cannot be written.
    """
    state_path = state_path or default_state_path(out)
    with operation_lock(state_path), _without_gc():
        return _suture(core, roots, out, max_depth, missing_reference, policy_dir, services,
                       qubes_dir, state_path, detached)


def _suture(core: str, roots: Sequence[str], out: str, max_depth: int,
            missing_reference: str, policy_dir: Optional[str], services: Optional[list[str]],
            qubes_dir: str, state_path: str, detached: Iterable[str]) -> Result:
    problems: list[Problem] = []
    known = _merged_chunks(reliant_chunks.Memo(reliant_chunks.memo_dir(state_path),
                                               _memo_version()))
    stubs = _Stubs()
    core_root = _load_core(core, known, stubs)
    shards = discover(roots, max_depth, problems)
    for shard in shards:
        root = _read_in_chunks(shard.data, SHARD_ELEMENT, [(shard_tag(shard.id),)], known,
                               stubs, shard.file)
        if root is not None:
            with contextlib.suppress(reliant_store.StoreError):  # reported when parsed
                shard.use_root(root)
    plan = plan_suture(core_root, shards, core_source=core,
                       missing_reference=missing_reference, detached=detached, stubs=stubs)
    problems += plan.problems
    if policy_dir is not None:
        try:
            reliant_policy.write_runtime_policy(policy_dir, plan.merged, services,
                                                record=plan.facts)
        except Exception as exc:  # any failure: do not start qubesd without isolation
            raise ShardError(f"runtime qrexec policy in {policy_dir} not written ({exc}); "
                             "merged store not written") from None
        problems += isolation_problems(plan.merged, plan.facts)  # the calls policy denies
    wanted = [qube for shard in plan.sutured for qube in plan.dirs[shard.id]]
    present = _entries(qubes_dir)
    try:
        for shard in plan.sutured:
            restore_dom0_dirs(shard, plan.dirs[shard.id], qubes_dir, problems)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_path)
        os.makedirs(os.path.dirname(os.path.abspath(out)), mode=0o755, exist_ok=True)
        try:  # the memo of dissect keeps only what is merged now
            reliant_chunks.keep_groups(reliant_chunks.memo_dir(state_path), [_memo_group(CORE)]
                                       + [_memo_group(shard.id) for shard in plan.sutured])
        except OSError as exc:
            problems.append(Problem("error", "state", f"dissect memo beside {state_path} not "
                                    f"pruned ({exc}): remove it"))
        written = []
        if reliant_store.write(out, plan.facts.expand(reliant_store.serialize(plan.merged)),
                               mode=0o660):
            written.append(out)
        plan.state["problems"] = [asdict(p) for p in problems]
        write_state(state_path, plan.state)
    except BaseException:
        # qubesd will not start: take back the shard qubes' directories copied out
        with contextlib.suppress(OSError):
            for subdir in ("appvms", "vm-templates"):
                _recover_swaps(os.path.join(qubes_dir, subdir))
            release_dom0_dirs([q for q in wanted if q not in present], qubes_dir)
        raise
    return Result(problems, written, plan.sutured)


def dissect(merged: str, core: str, roots: Sequence[str], *, max_depth: int = 3,
            qubes_dir: str = QUBES_DIR, state_path: Optional[str] = None,
            final: bool = False) -> Result:
    """Write core and every merged shard back from the merged store (only files whose
    content changed). With `final` (qubesd stopped), the dom0 directories of shard
    qubes leave `qubes_dir` once saved in their shard.

    Order: dom0 directories into shards, runtime state, shard files gaining qubes,
    those losing qubes, core, then (final) removal of saved directories.
    """
    state_path = state_path or default_state_path(merged)
    with operation_lock(state_path), _without_gc():
        return _dissect(merged, core, roots, max_depth, qubes_dir, state_path, final)


def _dissect(merged: str, core: str, roots: Sequence[str], max_depth: int, qubes_dir: str,
             state_path: str, final: bool) -> Result:
    problems: list[Problem] = []
    memo = reliant_chunks.Memo(reliant_chunks.memo_dir(state_path), _memo_version())
    stubs = _Stubs()
    merged_root, chunks = _read_merged(merged, memo, stubs)
    core_root = _load_core(core) if os.path.lexists(core) else None
    shards = discover(roots, max_depth, problems)
    plan = plan_dissect(merged_root, core_root, shards, read_state(state_path),
                        core_path=core, roots=roots, stubs=stubs)
    problems += plan.problems
    saved = [sid for sid, shard in plan.shards.items()
             if save_dom0_dirs(shard, plan.dirs[sid], plan.keep_dirs[sid], qubes_dir, problems)]
    write_state(state_path, plan.state)
    written = [path for path, content, mode in plan.outputs
               if reliant_store.write(path, content, mode=mode)]
    try:  # the memo only saves time: not saving it fails nothing
        if chunks is not None:
            memo.save(chunks, _memo_group_of)
        else:
            reliant_chunks.clear(memo.directory)
    except OSError as exc:
        problems.append(Problem("warning", "state", f"dissect memo in {memo.directory} not "
                                f"saved ({exc}); the next dissect reads the whole store"))
        with contextlib.suppress(OSError):
            reliant_chunks.clear(memo.directory)
    if final:
        for sid in saved:
            release_dom0_dirs(plan.dirs[sid], qubes_dir)
    return Result(problems, written, list(plan.shards.values()))


def check(core: str, roots: Sequence[str], *, max_depth: int = 3,
          missing_reference: str = "recover", detached: Iterable[str] = ()) -> Result:
    """What suture would report, and the isolation problems of the merged store it
    would write (`isolation_problems`), writing nothing."""
    problems: list[Problem] = []
    shards = discover(roots, max_depth, problems)
    plan = plan_suture(_load_core(core), shards, core_source=core,
                       missing_reference=missing_reference, detached=detached)
    return Result(problems + plan.problems + isolation_problems(plan.merged, plan.facts), [],
                  plan.sutured)


def isolation_problems(merged_root: etree._Element,
                       record: Optional[Callable[[etree._Element], QubeRecord]] = None
                       ) -> list[Problem]:
    """A warning (kind ``isolation``) for each qube of a merged store whose default
    disposable is in another group: the runtime policy denies its @dispvm calls
    (`record`: the plan's records of its domains)."""
    try:
        found = reliant_guard.cross_group_dispvm_qubes(merged_root, record)
    except reliant_guard.GuardError as exc:
        return [Problem("error", "isolation", f"merged store: {exc}")]
    prefix = shard_tag("")
    return [Problem("warning", "isolation", str(cross),  # reliant_guard.cross_group_dispvms
                    cross.group[len(prefix):] if (cross.group or "").startswith(prefix) else None,
                    cross.qube)
            for cross in found]


def status(core: str, merged: str, roots: Sequence[str], *, max_depth: int = 3,
           state_path: Optional[str] = None) -> dict[str, Any]:
    """What is visible and merged, and what needs attention (JSON-serialisable)."""
    problems: list[Problem] = []
    shards = discover(roots, max_depth, problems)
    state = read_state(state_path or default_state_path(merged)) or {"shards": {}}
    report: dict[str, Any] = {"core": core, "merged": merged,
                              "merged_exists": os.path.exists(merged), "shards": [],
                              "recovered": [], "detached": state.get("detached", []),
                              "problems": [asdict(p) for p in problems]
                              + list(state.get("problems", []))}
    for shard in shards:
        entry = {"id": shard.id, "path": shard.path, "qid_range": list(shard.qid_range),
                 "depends_on": list(shard.depends_on), "merged": shard.id in state["shards"]}
        try:
            entry["qubes"] = sorted(qube_name(d) for d in shard.domains)
            entry["pools"] = shard.pools
        except (reliant_store.StoreError, ShardError) as exc:
            entry["error"] = str(exc)
            report["shards"].append(entry)
            continue
        for domain in shard.domains:
            features = domain.find("features")
            recovered = {f.get("name"): f.text or "" for f in (features if features is not None
                                                                else ())
                         if (f.get("name") or "").startswith(RECOVERED_PREFIX)}
            if recovered:
                report["recovered"].append({"shard": shard.id, "qube": qube_name(domain),
                                            "features": recovered})
        report["shards"].append(entry)
    return report


def _find_qube(roots: Sequence[str], name: str, shard_id: Optional[str],
               max_depth: int) -> tuple[Shard, etree._Element, list[Shard]]:
    shards = discover(roots, max_depth, problems=[])
    hits = [(s, d) for s in shards if shard_id in (None, s.id)
            for d in s.domains if qube_name(d) == name]
    if not hits:
        raise ShardError(f"no qube named {name!r} in any visible shard"
                         + (f" with id {shard_id}" if shard_id else ""))
    if len(hits) > 1:
        raise ShardError(f"qube {name!r} is in shards {', '.join(s.id for s, _ in hits)}; "
                         "say which with --shard")
    return hits[0][0], hits[0][1], shards


def _rewrite(shard: Shard) -> bool:
    for domain in shard.domains:
        _strip_reliant_tags(domain)
    data = reliant_store.serialize(shard.root)
    written = reliant_store.write(shard.file, data, mode=0o600)
    shard.data = data
    return written


def rename_qube(roots: Sequence[str], name: str, new: str, *, core: str,
                shard_id: Optional[str] = None, max_depth: int = 3) -> Result:
    """Rename a shard qube (e.g. to resolve a name conflict with core), with the
    references to it in its shard and the shards depending on it, and its saved dom0
    directory. Offline: qubesd must not be running on these files."""
    shard, domain, shards = _find_qube(roots, name, shard_id, max_depth)
    if not valid_qube_name(new):
        raise ShardError(f"{new!r} is not a valid qube name")
    taken = {qube_name(d) for d in _load_core(core).iterfind("domains/domain")}
    for other in shards:
        taken |= {qube_name(d) for d in other.domains}
    if new in taken:
        raise ShardError(f"a qube named {new!r} already exists in core or a visible shard")
    by_id = {s.id: s for s in shards}
    affected = [shard] + [s for s in shards if shard.id in _deps_closure(s.id, by_id)]
    _properties(domain)["name"].text = new
    for other in affected:
        for qube in other.domains:
            for prop in _properties(qube).values():
                if prop.get("name") in DOMAIN_REFERENCES and prop.text == name:
                    prop.text = new
            for device in qube.iterfind("devices/device"):
                if device.get("backend-domain") == name:
                    device.set("backend-domain", new)
    subdir = dom0_subdir(QubeRecord(domain))
    saved = os.path.join(shard.path, DOM0_DIR, subdir, name)
    written = [s.file for s in affected if _rewrite(s)]
    if _real_dir(saved):
        os.rename(saved, os.path.join(shard.path, DOM0_DIR, subdir, new))
        reliant_store.fsync_dir(os.path.dirname(saved))
        written.append(saved)
    return Result([], written, [shard])


def review_qube(roots: Sequence[str], name: str, *, shard_id: Optional[str] = None,
                max_depth: int = 3) -> Result:
    """Accept a recovered qube: drop the prohibit-start set by suture and the
    reliant-recovered-* records. Offline: qubesd must not be running on these files."""
    shard, domain, _ = _find_qube(roots, name, shard_id, max_depth)
    features = domain.find("features")
    ours = [f for f in (features if features is not None else ())
            if (f.get("name") or "").startswith(RECOVERED_PREFIX)
            or (f.get("name") == PROHIBIT_START and (f.text or "").startswith(RATIONALE_PREFIX))]
    if not ours:
        raise ShardError(f"qube {name!r} of shard {shard.id} has nothing to review")
    for feature in ours:
        features.remove(feature)
    return Result([], [shard.file] if _rewrite(shard) else [], [shard])


# The isolation component's modules import this one: imported last, once everything they
# use is defined; at module level, since Salt's loader drops the utils directory from
# sys.path once its modules are loaded (an import inside a function would fail there).
import reliant_guard  # noqa: E402
import reliant_policy  # noqa: E402
