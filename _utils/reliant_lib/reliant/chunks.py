"""A store cut at its <domain> elements, and dissect's memo of each one.

qubesd writes its store with lxml's pretty printer (``<qubes>``, then ``labels``,
``pools``, ``properties`` and ``domains`` indented by two spaces, each ``<domain>``
starting a line indented by four), and every save rewrites an unchanged qube with
the same bytes; shard files are printed the same way. So a store is cut into its
head (everything up to ``<domains>``) and one *chunk* per ``<domain>``, and only the
chunks not seen before are parsed: the memo maps the exact bytes of a chunk of the
merged store to what is derived from them alone (the qube's record and its bytes
without the ``reliant-`` tags).

Why the cut store is the store (reliant.shards.stubs): the head is
parsed with one stub line per chunk and the tail, and must hold exactly those stubs in
its last section ``<domains>``; a chunk enters the memo only if the new chunks, parsed
together, print back to exactly themselves, one ``<domain>`` each (else each is
parsed on its own). Well-formed pieces begin and end outside any markup, so their
concatenation parses as the head's tree with those elements in ``<domains>``. A store
cut in any other way (written by something else, or with a comment that hides a
boundary) is parsed whole by the caller.

The memo lives on tmpfs beside the merged store, one file per group. Dissect keeps
exactly the chunks of the store it read; suture keeps only the files of core and of
the shards it merges, so the memo knows no qube of a shard that is not merged.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional

from reliant import store

HEAD_END = b"\n  <domains>\n"
_BOUNDARY = b"\n    <domain"
_MEMO_DIR = "dissect.memo"


def tail(root: str) -> bytes:
    """The end of a store whose root element is `root` (``qubes``, a shard's root)."""
    return b"  </domains>\n</" + root.encode() + b">\n"


def split(data: bytes, root: str = "qubes") -> Optional[tuple[bytes, list[bytes]]]:
    """(head, chunks) of a store written in qubesd's layout, None for any other.

    ``join(head, chunks, root) == data``; a chunk has no trailing newline."""
    end = tail(root)
    start = data.find(HEAD_END)
    if start < 0 or not data.endswith(end):
        return None
    head = data[:start + len(HEAD_END)]
    body = data[start + len(HEAD_END) - 1:len(data) - len(end) - 1]
    if not body.startswith(_BOUNDARY) or data[len(data) - len(end) - 1:][:1] != b"\n":
        return None
    chunks = [b"    <domain" + part for part in body.split(_BOUNDARY)[1:]]
    return head, chunks


def join(head: bytes, chunks: Sequence[bytes], root: str = "qubes") -> bytes:
    """The store cut by `split`."""
    return head + b"\n".join(chunks) + b"\n" + tail(root)


class Memo(dict[bytes, tuple[Any, bytes]]):
    """chunk bytes -> (record fields, chunk bytes without reliant- tags), kept in one
    file per group (core, a shard, qubes of no group yet) in `directory`, so that a
    save rewrites only the groups whose chunks changed and suture can drop a shard's
    entries without reading them (`keep_groups`). Files of another `version` (of the
    code that derives the entries) are ignored."""

    def __init__(self, directory: str, version: str) -> None:
        super().__init__()
        self.directory, self.version = directory, version
        self._saved: dict[str, set[bytes]] = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(directory):
                entries = _load(os.path.join(directory, name), version)
                self.update(entries)
                self._saved[name] = set(entries)

    def save(self, chunks: Sequence[bytes], group_of: Callable[[Any], str]) -> None:
        """Keep exactly the entries of `chunks`, each in the file of its group (named by
        `group_of(fields)`); files whose entries did not change are not rewritten."""
        groups: dict[str, dict[bytes, tuple[Any, bytes]]] = {}
        for chunk in chunks:
            groups.setdefault(_file_name(group_of(self[chunk][0])), {})[chunk] = self[chunk]
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        for name, entries in groups.items():
            if self._saved.get(name) != entries.keys():
                store.replace(os.path.join(self.directory, name),
                                      marshal.dumps((self.version, entries)), mode=0o600)
        _remove(self.directory, set(self._saved) - set(groups))


def memo_dir(state_path: str) -> str:
    """Where dissect keeps its memo: beside the runtime state (tmpfs)."""
    return os.path.join(os.path.dirname(os.path.abspath(state_path)), _MEMO_DIR)


def keep_groups(directory: str, groups: Iterable[str]) -> None:
    """Drop the memo entries of every group but `groups` (suture: of shards no longer
    merged, and of qubes of no group)."""
    with contextlib.suppress(FileNotFoundError):
        _remove(directory, set(os.listdir(directory)) - {_file_name(g) for g in groups})


def clear(directory: str) -> None:
    """Drop the whole memo."""
    keep_groups(directory, ())


def _file_name(group: str) -> str:
    return group + ".memo"


def _remove(directory: str, names: Iterable[str]) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))


def _load(path: str, version: str) -> dict[bytes, tuple[Any, bytes]]:
    """Entries of one memo file; none when unreadable or of another version."""
    try:
        with open(path, "rb") as handle:
            found, entries = marshal.loads(handle.read(4 * store.MAX_BYTES))
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    return entries if found == version and isinstance(entries, dict) else {}


def stub_pattern(nonce: str) -> re.Pattern[bytes]:
    """A stub line as the serializer writes it (see `reliant.shards.stubs.Stubs`): group 1
    is the chunk's index."""
    return re.compile(rb'    <domain reliant-stub="' + re.escape(nonce.encode()) + rb'-(\d+)"/>')
