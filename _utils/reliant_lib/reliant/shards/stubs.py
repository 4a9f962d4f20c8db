"""Stores read in chunks (see `reliant.chunks`), and `Facts`: the records of the domains
a plan looks at.

Suture and dissect read stores in qubesd's layout in chunks, with a memo on tmpfs: a
<domain> whose chunk is known stands in its document as a stub until something must
change it. Reading in chunks is described in README.md (Shards: library).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import sys
from collections.abc import Sequence
from typing import Any, Optional

from lxml import etree

from reliant import chunks as chunking
from reliant import store, vocab
from reliant.shards import records
from reliant.shards.records import GROUP_TAGS_FIELD, QubeRecord, set_qid, strip_reliant_tags
from reliant.vocab import CORE, CORE_TAG, ShardError, shard_tag


class Stubs:
    """<domain> elements read in chunks (`reliant.chunks`) stand in their document as
    stubs ``<domain reliant-stub="NONCE-INDEX"/>``. Each stub has its record, the chunk
    to parse when something must change it (`materialize`), the bytes that replace it
    in a serialized file (`expand`) and the group tags those bytes carry: a stub is
    written only while its record has exactly those tags. The nonce is new for each
    run, so no stored byte can pose as a stub."""

    def __init__(self) -> None:
        self._nonce = secrets.token_hex(8)
        self._pattern = chunking.stub_pattern(self._nonce)
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
        root = store.parse(head + b"\n".join(marks) + b"\n"
                                   + chunking.tail(root_tag), source)
        domains = root.find("domains")
        stubs = list(domains) if len(root) and domains is root[-1] else []
        if len(stubs) != len(entries) or any(
                stub.get("reliant-stub") != f"{self._nonce}-{first + i}"
                for i, stub in enumerate(stubs)):
            raise store.StoreError(f"{source}: the head of the store holds domains")
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
    domain = store.parse(chunk, source)
    if domain.tag != "domain":
        raise store.StoreError(f"{source}: <{domain.tag}> among the domains")
    return domain


def _learn(chunks: list[bytes], memo: chunking.Memo, source: str) -> bool:
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
        strip_reliant_tags(domain)
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
        home = store.parse(chunking.join(b"<qubes>" + chunking.HEAD_END,
                                                       chunks), source)
        if (len(home) == 1 and len(home[0]) == len(chunks) and _chunks_of(home) == chunks
                and all(domain.tag == "domain" for domain in home[0])):
            return home  # one <domain> per chunk, each chunk printed from its own
    except store.StoreError:
        pass
    try:
        domains = [_parse_chunk(chunk, source) for chunk in chunks]
    except store.StoreError:
        return None
    home = store.make_element("qubes")
    etree.SubElement(home, "domains").extend(domains)
    return home


def _chunks_of(home: etree._Element) -> Optional[list[bytes]]:
    """The chunks of the store `home` as it prints (None if it cannot be cut)."""
    cut = chunking.split(store.serialize(home))
    return None if cut is None else cut[1]


def memo_version() -> str:
    """What the memo's entries depend on: the code that makes them (records, this
    module, the cutting, the store's parser and printer, the tags), lxml's serializer,
    Python (marshal)."""
    digest = hashlib.sha256()
    for module in (records.__file__, __file__, chunking.__file__, store.__file__,
                   vocab.__file__):
        with open(module, "rb") as handle:
            digest.update(handle.read())
    return (f"{digest.hexdigest()} lxml {'.'.join(map(str, etree.LXML_VERSION))} "
            f"python {sys.version_info[:3]}")


def memo_group(group: Optional[str]) -> str:
    """Name of the memo file of `group` (CORE, a shard id, None: no group yet)."""
    return "core" if group == CORE else "new" if group is None else "shard-" + group


def memo_group_of(fields: Sequence[Any]) -> str:
    """The memo file of a chunk: by the group tag in its record `fields`."""
    tags = fields[GROUP_TAGS_FIELD]
    if CORE_TAG in tags:
        return memo_group(CORE)
    shards = sorted(t[len(shard_tag("")):] for t in tags if t.startswith(shard_tag("")))
    return memo_group(shards[0] if shards else None)


def read_merged(path: str, memo: chunking.Memo, stubs: Stubs) -> tuple[etree._Element,
                                                                              Optional[list[bytes]]]:
    """The merged store and its chunks: its domains are `stubs` standing for their
    tag-free bytes (chunks not in `memo` are added to it) when it has qubesd's layout,
    else it is parsed whole (no chunks). ShardError naming `path`."""
    try:
        data = store.read(path)
        found = chunking.split(data)
        if found is not None and _learn(found[1], memo, path):
            entries = [(QubeRecord.from_fields(memo[chunk][0]), chunk, memo[chunk][1], ())
                       for chunk in found[1]]
            with contextlib.suppress(store.StoreError):
                return stubs.read(found[0], "qubes", entries, path), found[1]
        return store.parse(data, path), None
    except store.StoreError as exc:
        raise ShardError(str(exc)) from None


def merged_chunks(memo: chunking.Memo) -> dict[tuple[tuple[str, ...], bytes],
                                                      tuple[bytes, Any]]:
    """(group tags, tag-free bytes) -> (chunk of the merged store, its record fields):
    what suture may write for a <domain> of core or of a shard file without parsing it."""
    return {(fields[GROUP_TAGS_FIELD], tag_free): (chunk, fields)
            for chunk, (fields, tag_free) in memo.items()}


def read_in_chunks(data: bytes, root_tag: str, tags: Sequence[tuple[str, ...]],
                    known: dict[tuple[tuple[str, ...], bytes], tuple[bytes, Any]],
                    stubs: Stubs, source: str) -> Optional[etree._Element]:
    """Core or a shard file (`data`) with stubs for its domains, each standing for the
    chunk of the merged store that suture wrote or qubesd saved for it with the first of
    `tags` it is known under; None unless every domain is known."""
    found = chunking.split(data, root_tag)
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
    except store.StoreError:
        return None


class Facts:
    """`QubeRecord` records of the domains a plan looks at, each read once. A domain
    read in chunks is a stub (see `Stubs`) until something must change it: then
    `materialize` parses its chunk into it."""

    def __init__(self, stubs: Optional[Stubs] = None) -> None:
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
        set_qid(domain, qid)
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


def load_core(path: str, known: Optional[dict[tuple[tuple[str, ...], bytes],
                                                 tuple[bytes, Any]]] = None,
               stubs: Optional[Stubs] = None) -> etree._Element:
    """A qubesd store; with `known` and `stubs`, in chunks when every domain is known
    (see `read_in_chunks`: core qubes carry the core tag in the merged store, dom0 none)."""
    try:
        data = store.read(path)
        root = None if stubs is None or known is None else read_in_chunks(
            data, "qubes", [(CORE_TAG,), ()], known, stubs, path)
        return root if root is not None else store.parse(data, path)
    except store.StoreError as exc:
        raise ShardError(str(exc)) from None
