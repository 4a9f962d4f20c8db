"""Decisions of the isolation guard: which group a qube belongs to, which references cross groups.

A *group* is either core (tag ``reliant-core``) or one shard (tag ``reliant-shard-<ID>``);
the names come from ``reliant.vocab``. The same functions serve the core-admin extension
(live qubes, through `QubeFacts` built from qubesd objects), the ``check`` command and the
tests (through `facts_from_store`, on a merged qubes.xml).

Rules (docs/design/rules-and-qids.md, docs/isolation.md):
- a disposable (class DispVM) belongs to the group of its template;
- any other qube belongs to the group of the pools that hold its own writable data
  (volumes with rw and without snap_on_start); volumes in core pools do not count,
  volumes in two different shards are an error;
- core qubes and global properties never reference a shard qube; a shard qube may
  reference core qubes, qubes of its own shard and of shards it depends on;
- a shard qube's volumes are confined as at suture (`reliant.shards.confine`): its own data
  in file pools of its shard, snapshots only of its template's volumes
  (`confinement_problem`, `placement_problem`); a volume takes data only from a group its
  qube may reference (`clone_problem`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from lxml import etree

from reliant.shards.confine import (
    KERNEL_POOL_DRIVER,
    PoolFacts,
    VolumeFacts,
    defaulted_volumes,
    shard_pool_problem,
    volume_problem,
)
from reliant.shards.records import QubeRecord
from reliant.vocab import CORE_TAG, GLOBAL_REFERENCES, SHARD_TAG_PREFIX, referable_groups


class GuardError(ValueError):
    """A qube or a change breaks isolation; the message names the qube and the property."""


@dataclass(frozen=True)
class QubeFacts:
    """What the guard needs to know about one qube."""

    name: str
    klass: str
    tags: frozenset[str] = frozenset()
    #: property (or "device CLASS:ID") -> name of the referenced qube; unset properties are
    #: left out, default_dispvm set to none is ""
    references: Mapping[str, str] = field(default_factory=dict)
    #: pools holding the qube's own writable data
    data_pools: frozenset[str] = frozenset()
    template_for_dispvms: bool = False


def is_group_tag(tag: str) -> bool:
    """True for ``reliant-core`` and any ``reliant-shard-<ID>`` tag."""
    if tag == CORE_TAG:
        return True
    return tag.startswith(SHARD_TAG_PREFIX) and len(tag) > len(SHARD_TAG_PREFIX)


def group_of(qube: QubeFacts) -> Optional[str]:
    """The group tag a qube carries (dom0 is always core), None if it carries none.

    GuardError if it carries two."""
    tags = sorted(tag for tag in qube.tags if is_group_tag(tag))
    if len(tags) > 1:
        raise GuardError(f"qube {qube.name!r} carries more than one group tag: {', '.join(tags)}")
    if qube.klass == "AdminVM":
        if tags and tags[0] != CORE_TAG:
            raise GuardError(f"dom0 carries the shard tag {tags[0]}")
        return CORE_TAG
    return tags[0] if tags else None


def expected_group(qube: QubeFacts, pool_groups: Mapping[str, str],
                   template_group: Optional[str] = None) -> str:
    """The group tag `qube` must carry.

    `pool_groups` maps each known pool to its group tag (pools missing from it are core);
    `template_group` is the group of the qube's template, used for disposables.
    """
    if qube.klass == "DispVM":
        if template_group is None:
            raise GuardError(f"disposable {qube.name!r}: the group of its template is unknown")
        return template_group
    shards = sorted({pool_groups[pool] for pool in qube.data_pools
                     if pool_groups.get(pool, CORE_TAG) != CORE_TAG})
    if len(shards) > 1:
        raise GuardError(f"qube {qube.name!r} keeps data in pools of several shards: "
                         f"{', '.join(shards)}")
    return shards[0] if shards else CORE_TAG



def pool_groups(qubes: Iterable[QubeFacts]) -> dict[str, str]:
    """Group of each pool, from the tagged qubes whose own data it holds.

    GuardError if a pool holds data of qubes of two groups (a shard pool shared with core
    or with another shard)."""
    found: dict[str, str] = {}
    owner: dict[str, str] = {}
    for qube in qubes:
        group = group_of(qube)
        if group is None:
            continue
        for pool in qube.data_pools:
            if found.setdefault(pool, group) != group:
                raise GuardError(f"pool {pool!r} holds data of {owner[pool]!r} ({found[pool]}) "
                                 f"and of {qube.name!r} ({group})")
            owner.setdefault(pool, qube.name)
    return found


def unknown_shard_pools(pools: Iterable[str], known: Mapping[str, str],
                        pool_paths: Mapping[str, str], shard_roots: Iterable[str]) -> list[str]:
    """Pools among `pools` that no tagged qube uses yet but that lie under a shard root.

    The group of such a pool cannot be decided (it belongs to some shard, but which?), so a
    qube keeping data there must not be tagged core."""
    roots = [os.path.normpath(root) for root in shard_roots]
    unknown = []
    for pool in sorted(pools):
        if pool in known:
            continue
        path = os.path.normpath(pool_paths.get(pool) or "/")
        if any(path == root or path.startswith(root + os.sep) for root in roots):
            unknown.append(pool)
    return unknown


def _referable(group: str, dependencies: Mapping[str, Iterable[str]]) -> set[Optional[str]]:
    return referable_groups(group, dependencies.get(group, ()), core=CORE_TAG)


def confinement_problem(qube: str, klass: str, group: Optional[str],
                        volumes: Iterable[VolumeFacts], pools: Mapping[str, PoolFacts],
                        groups: Mapping[str, str], dependencies: Mapping[str, Iterable[str]],
                        shard_roots: Iterable[str], template: str = "",
                        template_volumes: Optional[Iterable[VolumeFacts]] = None
                        ) -> Optional[str]:
    """Why the volumes of live qube `qube` of `group` break confinement, None if they do
    not (core qubes are not confined). `groups`: the group of each pool (`pool_groups`;
    missing: core); its shard's own pools are those of its group that lie inside a shard
    root; `template_volumes`: those of its template."""
    if group is None or group == CORE_TAG:
        return None
    allowed = _referable(group, dependencies)
    usable = {name: pool for name, pool in pools.items()
              if groups.get(name, CORE_TAG) in allowed}
    roots = list(shard_roots)
    own_dirs = {name: os.path.realpath(pool.dir_path) for name, pool in usable.items()
                if groups.get(name) == group and shard_pool_problem(pool, roots) is None}
    listed = None if template_volumes is None else list(template_volumes)
    for volume in volumes:
        problem = volume_problem(qube, klass, volume, usable, own_dirs, template, listed)
        if problem:
            return f"qube {qube!r} of {group}: {problem}"
    return None


def placement_problem(klass: str, pool: Optional[str], pools: Mapping[str, str],
                      facts: Mapping[str, PoolFacts], groups: Mapping[str, str],
                      shard_roots: Iterable[str]) -> Optional[str]:
    """Why a new qube of `klass` created with `pool` (every writable volume that is no
    snapshot goes there) or `pools` (volume -> pool; the others stay in core's default
    pools, `defaulted_volumes`) would keep its own data outside its shard; None when it would not, or when it
    is no qube of a known shard (its volumes are checked once created).
    (qubes/vm/qubesvm.py create_on_disk, _patch_pool_config.)"""
    placed = [pool] if pool is not None else list(pools.values())
    shards = sorted({groups[p] for p in placed if groups.get(p, CORE_TAG) != CORE_TAG})
    if not shards:
        return None
    if len(shards) > 1:
        return f"a new qube would keep data in pools of several shards: {', '.join(shards)}"
    roots = list(shard_roots)
    if pool is not None:
        return shard_pool_problem(facts[pool], roots)
    for volume in defaulted_volumes(klass):
        if volume not in pools:
            return (f"a new qube of {shards[0]} would keep volume {volume} in a default pool "
                    "of core")
    for volume, name in sorted(pools.items()):
        if volume == "kernel" and facts[name].driver == KERNEL_POOL_DRIVER:
            continue
        if groups.get(name) != shards[0]:
            return (f"a new qube of {shards[0]} would keep volume {volume} in pool {name}, "
                    "not a pool of its shard")
        problem = shard_pool_problem(facts[name], roots)
        if problem:
            return problem
    return None


def clone_problem(qube: str, group: Optional[str], source_group: Optional[str],
                  dependencies: Mapping[str, Iterable[str]]) -> Optional[str]:
    """Why a volume of `qube` (of `group`) may not take the data of a volume of
    `source_group`: only from groups it may reference (never shard data into core)."""
    if group is None or source_group is None:
        return f"a volume of {qube!r} would take data across groups the guard cannot tell"
    if source_group in _referable(group, dependencies):
        return None
    return (f"a volume of {qube!r} ({group}) would take the data of a volume of "
            f"{source_group}, which it may not reference")


def reference_problem(holder: Optional[str], holder_group: Optional[str], prop: str,
                      target: str, target_group: Optional[str],
                      dependencies: Mapping[str, Iterable[str]]) -> Optional[str]:
    """Why a reference from `holder` (None: a global property) to `target` breaks isolation.

    Returns None when the reference is allowed; a holder or target without group tag is
    refused (the guard cannot tell where it belongs)."""
    where = f"global property {prop!r}" if holder is None else f"property {prop!r} of {holder!r}"
    if target_group is None:
        return f"{where}: {target!r} carries no group tag"
    group = CORE_TAG if holder is None else holder_group
    if target_group in referable_groups(
            group, dependencies.get(group, ()), core=CORE_TAG):
        return None
    if group == CORE_TAG:
        return f"{where} would name {target!r}, a qube of a shard: core never references a shard"
    if group is None:
        return f"{where}: {holder!r} carries no group tag"
    return (f"{where} would name {target!r} of another shard, which the shard of "
            f"{holder!r} does not depend on")


def dependencies_from_references(qubes: Iterable[QubeFacts]) -> dict[str, set[str]]:
    """For each shard group, the shard groups its qubes already reference.

    qubesd knows no shard metadata, so the extension allows new cross-shard references only
    where suture already accepted one (a conservative under-approximation)."""
    qubes = list(qubes)
    groups = {qube.name: group_of(qube) for qube in qubes}
    deps: dict[str, set[str]] = {}
    for qube in qubes:
        holder = groups[qube.name]
        if holder is None or holder == CORE_TAG:
            continue
        for target in qube.references.values():
            target_group = groups.get(target)
            if target_group not in (None, CORE_TAG, holder):
                deps.setdefault(holder, set()).add(target_group)
    return deps


def effective_default_dispvm(qube: QubeFacts,
                             global_default_dispvm: Optional[str]) -> Optional[str]:
    """The disposable template `@dispvm` resolves to for calls from `qube` (qubes/vm/*.py)."""
    if "default_dispvm" in qube.references:
        return qube.references["default_dispvm"] or None
    if qube.klass == "DispVM":
        return qube.references.get("template")
    return global_default_dispvm


# --- merged qubes.xml ---------------------------------------------------------------------


def facts_from_store(root: etree._Element, record: Optional[Callable[[etree._Element], Any]] = None
                     ) -> tuple[dict[str, QubeFacts], dict[str, str]]:
    """Facts of every qube of a qubesd store, and its global properties naming a qube.
    `record`: the `QubeRecord` of a <domain> (default: read it now)."""
    record = record or QubeRecord
    qubes: dict[str, QubeFacts] = {}
    for domain in root.iterfind("domains/domain"):
        qube = record(domain)
        if not qube.name:
            raise GuardError(f"domain {domain.get('id')!r} has no name")
        references = dict(qube.refs)
        if qube.dispvm_none:
            references.setdefault("default_dispvm", "")
        qubes[qube.name] = QubeFacts(
            name=qube.name,
            klass=qube.cls or "",
            tags=frozenset(qube.group_tags),
            references=references,
            data_pools=frozenset(qube.data_pools),
            template_for_dispvms=qube.dispvm_template,
        )
    global_refs = {}
    for prop in root.iterfind("properties/property"):
        if prop.get("name") in GLOBAL_REFERENCES and prop.text:
            global_refs[prop.get("name")] = prop.text
    return qubes, global_refs


@dataclass(frozen=True)
class CrossDispvm:
    """A qube whose `@dispvm` resolves to a disposable template of another group."""

    qube: str
    group: Optional[str]
    dispvm: str
    dispvm_group: Optional[str]

    def __str__(self) -> str:
        return (f"qube {self.qube!r} ({self.group or 'no group'}): default_dispvm "
                f"{self.dispvm!r} is in another group ({self.dispvm_group or 'no group'}); "
                "its @dispvm calls are denied")


def cross_group_dispvm_qubes(merged_root: etree._Element,
                             record: Optional[Callable[[etree._Element], Any]] = None) -> list[CrossDispvm]:
    """Every qube (dom0 aside) whose effective default_dispvm is in another group
    (`record`: see `facts_from_store`)."""
    qubes, global_refs = facts_from_store(merged_root, record)
    found = []
    for name in sorted(qubes):
        qube = qubes[name]
        dispvm = effective_default_dispvm(qube, global_refs.get("default_dispvm"))
        if qube.klass == "AdminVM" or dispvm is None or dispvm not in qubes:
            continue
        group, dispvm_group = group_of(qube), group_of(qubes[dispvm])
        if group != dispvm_group:
            found.append(CrossDispvm(name, group, dispvm, dispvm_group))
    return found
