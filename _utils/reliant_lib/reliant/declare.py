"""Shard declarations: the wanted metadata of a shard, converged by Salt.

A shard is declared by its directory, its QID range and the shards it depends on
(`Declaration`). Salt states (`reliant_shard.present`, `reliant_shard.declared`) use
this module to compute the difference with the shard on disk (`plan`), to apply it
(`apply`) and to read declarations kept on the open volumes themselves: a file
``reliant-shard.json`` in a directory under a shard root declares a shard in that
directory (`find_declarations`), so that no hidden shard is named in dom0's state
tree or pillar::

    {"qid_range": "2000-2499", "depends_on": ["../FIRST"], "id": "work"}

`qid_range` is required (a QID range is chosen once: qids are write-once and IPs
derive from them); `depends_on` (directories of other shards, relative to this one
or absolute; default none) and `id` (default: the directory's name) are optional.
Shard files are read and written with reliant.shards and reliant.store (lockf, atomic).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from reliant import store
from reliant.shards.files import (
    SHARD_FILE,
    Shard,
    discover,
    init_shard,
    load_shard,
    read_metadata,
    shard_bytes,
)
from reliant.shards.files import (
    parse_range as parse_range_text,
)
from reliant.shards.records import qube_name, qube_qid
from reliant.shards.runtime import operation_lock
from reliant.vocab import ShardError

# Salt's utils loader also runs this file, without registering it in sys.modules, where
# @dataclass looks up the module of string annotations: give it an (empty) entry.
sys.modules.setdefault(__name__, types.ModuleType(__name__))

DECLARATION_FILE = "reliant-shard.json"
MAX_DECLARATION_BYTES = 64 * 1024
_KEYS = ("qid_range", "depends_on", "id")


@dataclass(frozen=True)
class Declaration:
    """The wanted state of the shard in `path` (an absolute, normalised directory)."""

    path: str
    qid_range: tuple[int, int]
    depends_on: tuple[str, ...] = ()
    shard_id: Optional[str] = None


@dataclass
class Plan:
    """What converging a declaration changes: `action` is None (nothing), "init" or
    "update"; `old`/`new` hold the metadata that differs (id, qid_range, depends_on)."""

    declaration: Declaration
    action: Optional[str]
    old: dict[str, Any] = field(default_factory=dict)
    new: dict[str, Any] = field(default_factory=dict)


def parse_range(value: Any, source: str) -> tuple[int, int]:
    """A QID range from "FIRST-LAST" or [FIRST, LAST]; ShardError naming `source`."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(item, int) and not isinstance(item, bool) for item in value):
        value = f"{value[0]}-{value[1]}"
    if not isinstance(value, str):
        raise ShardError(f"{source}: qid_range must be \"FIRST-LAST\", "
                                        f"got {value!r}")
    try:
        return parse_range_text(value)
    except ShardError as exc:
        raise ShardError(f"{source}: {exc}") from None


def declaration(path: str, qid_range: Any, depends_on: Sequence[str] = (),
                shard_id: Optional[str] = None, source: Optional[str] = None) -> Declaration:
    """Check and normalise a declaration; dependencies are resolved against `path`."""
    source = source or path
    directory = os.path.abspath(path)
    if isinstance(depends_on, str) or not all(isinstance(d, str) and d for d in depends_on):
        raise ShardError(f"{source}: depends_on must be a list of directories")
    if shard_id is not None and not isinstance(shard_id, str):
        raise ShardError(f"{source}: id must be a string")
    deps = tuple(os.path.normpath(os.path.join(directory, dep)) for dep in depends_on)
    if directory in deps:
        raise ShardError(f"{source}: a shard cannot depend on itself")
    return Declaration(directory, parse_range(qid_range, source), deps, shard_id)


def read_declaration(directory: str) -> Declaration:
    """The declaration file in `directory`: a regular file (no symlink), small, JSON."""
    file = os.path.join(directory, DECLARATION_FILE)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ShardError(f"{file}: cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ShardError(f"{file}: not a regular file")
        data = handle.read(MAX_DECLARATION_BYTES + 1)
    if len(data) > MAX_DECLARATION_BYTES:
        raise ShardError(f"{file}: larger than {MAX_DECLARATION_BYTES} bytes")
    try:
        content = json.loads(data)
    except ValueError as exc:
        raise ShardError(f"{file}: not JSON: {exc}") from None
    if not isinstance(content, dict):
        raise ShardError(f"{file}: must hold a JSON object")
    unknown = sorted(set(content) - set(_KEYS))
    if unknown:
        raise ShardError(f"{file}: unknown key {unknown[0]!r} "
                                        f"(known: {', '.join(_KEYS)})")
    if "qid_range" not in content:
        raise ShardError(f"{file}: qid_range is required")
    return declaration(directory, content["qid_range"], content.get("depends_on", ()),
                       content.get("id"), source=file)


def find_declarations(roots: Sequence[str], max_depth: int,
                      problems: list[str]) -> list[Declaration]:
    """Declarations in directories under `roots`, at most `max_depth` levels down, found
    like shards (symlinks never followed, a shard directory not searched further).
    Unreadable ones are reported in `problems` and skipped."""
    found: list[Declaration] = []

    def walk(directory: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            problems.append(f"{directory}: cannot list: {exc.strerror}")
            return
        names = {entry.name for entry in entries}
        if depth and DECLARATION_FILE in names:
            try:
                found.append(read_declaration(directory))
            except ShardError as exc:
                problems.append(str(exc))
            return
        if depth and SHARD_FILE in names:
            return
        for entry in entries:
            if depth < max_depth and entry.is_dir(follow_symlinks=False):
                walk(entry.path, depth + 1)

    for root in roots:
        if os.path.isdir(root):
            walk(os.path.abspath(root), 0)
    return found


def _under_a_root(directory: str, roots: Sequence[str], max_depth: int) -> bool:
    """True if discovery would reach `directory`: at most `max_depth` levels under a
    root, through no symlink."""
    for root in roots:
        top = os.path.abspath(root).rstrip("/")
        if directory.startswith(top + "/"):
            parts = directory[len(top) + 1:].split("/")
            below = [os.path.join(top, *parts[:n]) for n in range(1, len(parts) + 1)]
            return len(parts) <= max_depth and not any(map(os.path.islink, below))
    return False


def _closure(shard_id: str, depends: dict[str, Sequence[str]]) -> set[str]:
    """Every shard that `shard_id` depends on, directly or not."""
    seen: set[str] = set()
    todo = list(depends.get(shard_id, ()))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(depends.get(dep, ()))
    return seen


def _read_locked(fd: int, file: str) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
        if sum(map(len, chunks)) > store.MAX_BYTES:
            raise ShardError(f"{file}: larger than {store.MAX_BYTES} "
                                            "bytes")
    return b"".join(chunks)


def _load(path: str, what: str) -> Shard:
    """The shard in `path`; any failure as a ShardError saying what it was for."""
    try:
        return load_shard(path)
    except store.StoreError as exc:
        raise ShardError(f"{what} {path} is not a readable shard: {exc}") \
            from None


def _metadata(shard_id: str, qid_range: tuple[int, int],
              depends_on: Sequence[str]) -> dict[str, Any]:
    return {"id": shard_id, "qid_range": f"{qid_range[0]}-{qid_range[1]}",
            "depends_on": sorted(depends_on)}


def _declared_id(wanted: Declaration) -> str:
    return wanted.shard_id or os.path.basename(wanted.path)


def _exists(wanted: Declaration) -> bool:
    return os.path.lexists(os.path.join(wanted.path, SHARD_FILE))


def plan(wanted: Declaration, core: str, roots: Sequence[str], max_depth: int,
         pending: Sequence[Declaration] = ()) -> Plan:
    """The difference between `wanted` and the shard on disk; ShardError when converging
    it would be refused (outside the roots, unknown dependency, a dependency cycle, an
    id change, a range overlapping core, another shard or leaving out one of its qubes).
    `pending`: other declarations converged before this one, taken as done."""
    directory = wanted.path
    if not _under_a_root(directory, roots, max_depth):
        raise ShardError(
            f"{directory}: not within {max_depth} levels under a shard root "
            f"({', '.join(roots)}); suture would never see it")
    future = {other.path: Shard(other.path, _declared_id(other),
                                               other.qid_range, ())
              for other in pending if other.path != directory and not _exists(other)}
    deps = [future[path] if path in future else _load(path, f"{directory}: dependency")
            for path in wanted.depends_on]
    dep_ids = [dep.id for dep in deps]
    current = _load(directory, "shard") if _exists(wanted) else None
    shard_id = wanted.shard_id or (current.id if current else os.path.basename(directory))
    if current and shard_id != current.id:
        raise ShardError(
            f"{directory}: shard id is {current.id!r}; it cannot become {shard_id!r} "
            "(its qubes' tags and the shards depending on it name it)")
    # The wanted metadata, checked by the library's own reader (id syntax, range bounds).
    probe = Shard(path=directory, id=shard_id, qid_range=wanted.qid_range,
                                 depends_on=tuple(dep_ids))
    read_metadata(shard_bytes(probe, (), ()), directory)
    # Other shards as they are or, declared earlier in this run, as they will be.
    declared = {other.path: other for other in pending}
    others = [Shard(shard.path, shard.id, declared[shard.path].qid_range,
                                   shard.depends_on) if shard.path in declared else shard
              for shard in discover(roots, max_depth, problems=[])
              if os.path.realpath(shard.path) != os.path.realpath(directory)]
    others += future.values()
    depends = {shard.id: shard.depends_on for shard in [*others, *deps]}
    depends[shard_id] = tuple(dep_ids)
    if shard_id in _closure(shard_id, depends):
        raise ShardError(f"{directory}: dependencies form a cycle through "
                                        f"shard {shard_id!r}")
    _check_range(wanted.qid_range, directory, current, others, core)
    new = _metadata(shard_id, wanted.qid_range, dep_ids)
    if current is None:
        return Plan(wanted, "init", {}, new)
    old = _metadata(current.id, current.qid_range, current.depends_on)
    changed = [key for key in new if new[key] != old[key]]
    if not changed:
        return Plan(wanted, None)
    return Plan(wanted, "update", {k: old[k] for k in changed}, {k: new[k] for k in changed})


@dataclass
class Outcome:
    """What converging one declaration did (or, dry run, would do): its plan, or why
    it was refused."""

    declaration: Declaration
    plan: Optional[Plan] = None
    error: Optional[str] = None
    applied: bool = False  # the shard file was written (even if verify then failed)

    @property
    def change(self) -> Optional[str]:
        """"init"/"update" if it was (dry run: would be) carried out, else None."""
        if self.plan is None or self.plan.action is None:
            return None
        return self.plan.action if (self.applied or not self.error) else None


def in_dependency_order(declarations: Sequence[Declaration]) -> list[Declaration]:
    """`declarations` with each one after the declared shards it depends on."""
    by_path = {wanted.path: wanted for wanted in declarations}
    ordered: list[Declaration] = []
    placed: set[str] = set()

    def place(wanted: Declaration, visiting: set[str]) -> None:
        if wanted.path in placed or wanted.path in visiting:
            return
        visiting.add(wanted.path)
        for dep in wanted.depends_on:
            if dep in by_path:
                place(by_path[dep], visiting)
        placed.add(wanted.path)
        ordered.append(wanted)

    for wanted in declarations:
        place(wanted, set())
    return ordered


def converge(declarations: Sequence[Declaration], core: str, roots: Sequence[str],
             max_depth: int, dry_run: bool, state_path: Optional[str] = None) -> list[Outcome]:
    """Plan and (unless `dry_run`) apply and verify each declaration, dependencies
    first, so that a shard can depend on one declared next to it. Of two new shards
    whose QID ranges overlap, the first in that order is created, the other refused."""
    ordered = in_dependency_order(declarations)
    outcomes: list[Outcome] = []
    for wanted in ordered:
        outcome = Outcome(wanted)
        earlier = [done.declaration for done in outcomes if not done.error]
        try:
            outcome.plan = plan(wanted, core, roots, max_depth, earlier)
            if outcome.plan.action and not dry_run:
                apply(outcome.plan, roots, max_depth, state_path)
                outcome.applied = True
                verify(outcome.plan)
        except (ShardError, store.StoreError) as exc:
            outcome.error = str(exc)
        except OSError as exc:
            outcome.error = store.os_message(exc)
        outcomes.append(outcome)
    return outcomes


def _check_range(qid_range: tuple[int, int], directory: str,
                 current: Optional[Shard],
                 others: Sequence[Shard], core: str) -> None:
    first, last = qid_range
    text = f"QID range {first}-{last} of {directory}"
    for other in others:
        if first <= other.qid_range[1] and other.qid_range[0] <= last:
            raise ShardError(
                f"{text} overlaps {other.qid_range[0]}-{other.qid_range[1]} of shard "
                f"{other.id} ({other.path})")
    try:
        core_root = store.load(core)
    except store.StoreError as exc:
        raise ShardError(str(exc)) from None
    for domain in core_root.iterfind("domains/domain"):
        qid = qube_qid(domain)
        if qid is not None and first <= qid <= last:
            raise ShardError(f"{text} holds qid {qid} of core qube "
                                            f"{qube_name(domain)!r}")
    for domain in current.domains if current else ():
        qid = qube_qid(domain)
        if qid is not None and not first <= qid <= last:
            raise ShardError(
                f"{text} leaves out qid {qid} of its qube "
                f"{qube_name(domain)!r} (qids never change)")


def apply(change: Plan, roots: Sequence[str], max_depth: int,
          state_path: Optional[str] = None) -> None:
    """Carry out `change` (from `plan`); the shard file is replaced atomically under
    lockf, and only if it still holds the metadata the plan was made from. With
    `state_path` (suture's runtime state), under the lock that serializes suture and
    dissect, so that a dissect running meanwhile cannot write the old metadata back."""
    if state_path is None:
        _apply(change, roots, max_depth)
        return
    with operation_lock(state_path):
        _apply(change, roots, max_depth)


def _apply(change: Plan, roots: Sequence[str], max_depth: int) -> None:
    wanted = change.declaration
    if change.action == "init":
        init_shard(wanted.path, wanted.qid_range, wanted.depends_on,
                                  change.new["id"], roots, max_depth)
        return
    if change.action != "update":
        return
    file = os.path.join(wanted.path, SHARD_FILE)
    with store.locked(file, exclusive=True) as fd:
        if fd is None:
            raise ShardError(f"{file}: vanished")
        data = _read_locked(fd, file)
        current = Shard(wanted.path, *read_metadata(data, file),
                                       data=data)
        old = _metadata(current.id, current.qid_range, current.depends_on)
        if any(old[key] != value for key, value in change.old.items()):
            raise ShardError(f"{file}: changed while being converged; "
                                            "run again")
        deps = tuple(_load(path, "dependency").id for path in wanted.depends_on)
        shard = Shard(wanted.path, current.id, wanted.qid_range, deps)
        content = shard_bytes(shard, current.pool_elements, current.domains)
        store.replace(file, content, mode=0o600)


def verify(change: Plan) -> None:
    """ShardError unless the shard on disk now holds the metadata of `change`."""
    wanted = change.declaration
    shard = _load(wanted.path, "shard")
    deps = [_load(path, "dependency").id for path in wanted.depends_on]
    now = _metadata(shard.id, shard.qid_range, shard.depends_on)
    want = _metadata(shard.id, wanted.qid_range, deps)
    if now != want:
        raise ShardError(f"{shard.file}: holds {now} after converging, "
                                        f"not {want}")
