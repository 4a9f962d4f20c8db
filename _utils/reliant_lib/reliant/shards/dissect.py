"""The dissect plan: the merged store -> core and the file of each merged shard.

Never writes a shard's qube, pool, tag or reference into core or into a shard that may
not know it; what cannot be placed safely is reported (`unplaceable`) and written
nowhere. Qubes created while shards are open go to the group their data pools, their
tag or their references say.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Optional

from lxml import etree

from reliant import store
from reliant.shards.confine import within
from reliant.shards.files import Shard, deps_closure, held_pools, shard_bytes
from reliant.shards.records import QubeRecord, dom0_subdir, properties, property_value, remove_device
from reliant.shards.stubs import Facts, Stubs
from reliant.shards.suture import core_sections
from reliant.vocab import (
    CORE,
    CORE_TAG,
    GLOBAL_REFERENCES,
    Problem,
    ShardError,
    referable_groups,
    shard_tag,
)

_PENDING = "@pending"  # group not known yet (a qube created while shards are open)


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
            sid = next((s for s, shard in visible.items() if within(dir_path, shard.path)),
                       None)
            if sid is None and any(within(dir_path, root) for root in roots):
                owners[name] = None
                continue
        owners[name] = CORE if sid is None else (sid if sid in writable else None)
    return owners


def plan_dissect(merged_root: etree._Element, core_root: Optional[etree._Element],
                 shards: Sequence[Shard], state: Optional[dict[str, Any]], *,
                 core_path: str, roots: Sequence[str] = (),
                 stubs: Optional[Stubs] = None,
                 unwritable: Optional[dict[str, str]] = None) -> DissectPlan:
    """Split `merged_root` (consumed) into the core file and the files of merged shards;
    `stubs`: those of its domains read in chunks (`read_merged`); `unwritable`: shards
    that cannot be written (id -> why), whose qubes are placed as if the shard were gone.

    Never writes a shard's qube, pool, tag or reference into core or into a shard that
    may not know it; what cannot be placed safely is reported as `unplaceable` and
    written nowhere (it stays in the merged store). Qubes of a shard that were kept out
    of the merge stay in its file.
    """
    problems: list[Problem] = []
    facts = Facts(stubs)
    sections = core_sections(merged_root, "merged store")
    core_pools = {p.get("name") for p in core_root.find("pools")} if core_root is not None \
        else set()
    visible = {shard.id: shard for shard in shards}
    if state is not None:
        sutured = dict(state["shards"])
    else:
        tagged = {tag[len(shard_tag("")):] for domain in sections["domains"]
                  for tag in facts(domain).group_tags if tag.startswith(shard_tag(""))}
        sutured = {sid: {"path": visible[sid].path, "pools": visible[sid].pools,
                         "held_pools": sorted(held_pools(visible[sid])), "merged": None}
                   for sid in sorted(tagged) if sid in visible}
        if sutured:
            problems.append(Problem("warning", "state", "no runtime state from suture: qubes "
                                    "absent from the merged store are kept in their shards"))
    untouchable = set((state or {}).get("detached", ())) | set((state or {}).get("refused", ()))
    writable = _writable(visible, sutured, untouchable, unwritable or {}, problems)
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
    held_of = {sid: set(sutured[sid].get("held_pools", ())) for sid in writable if sid in sutured}
    for sid, held in held_of.items():
        if held:
            pools_of[sid] = _with_held_pools(writable[sid], held, pools_of[sid])
    new_state: dict[str, Any] = {"version": 1, "shards": {},
                                 "detached": (state or {}).get("detached", []),
                                 "refused": (state or {}).get("refused", [])}
    gaining, losing = [], []
    scratch = etree.SubElement(merged_root, "reliant-scratch")  # shard files built in place
    dirs: dict[str, list[tuple[str, str]]] = {}
    keep_dirs: dict[str, set[tuple[str, str]]] = {}
    for sid, shard in writable.items():
        allowed = referable_groups(sid, deps_closure(sid, visible) & set(writable))
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
            # every <domain> of the file, not one per uuid: qubes without a uuid or sharing
            # one were left out at suture and stay, each of them
            kept = [d for d in shard.domains if facts.uuid(d) not in merged_uuids and
                    (known is None or facts.uuid(d) not in known or facts.uuid(d) in hold)]
        _fix_qids(facts, shard, members, kept, merged_qids, lambda s=sid: previous(s), problems)
        for domain in members + kept:
            facts.strip_tags(domain)
        dirs[sid] = [(dom0_subdir(q), q.name) for q in member_qubes]
        keep_dirs[sid] = {(dom0_subdir(q), q.name) for q in map(facts, kept)}
        held = held_of.get(sid, set())
        new_state["shards"][sid] = {
            "path": shard.path,
            "pools": [p.get("name") for p in pools_of[sid] if p.get("name") not in held],
            "held_pools": sorted(held), "merged": sorted((known or set()) | merged_uuids)}
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
    outputs = [*gaining, *losing, (core_path, facts.expand(store.serialize(core_out)), 0o660)]
    return DissectPlan(outputs, dirs, keep_dirs, new_state, problems, writable)


def _with_held_pools(shard: Shard, held: set[str],
                     merged: list[etree._Element]) -> list[etree._Element]:
    """The shard's pools: those of the merged store and those suture left in its file
    (`held`, unsafe to merge), in the file's order (pools new since then last)."""
    in_file = shard.pool_elements
    order = {p.get("name"): index for index, p in enumerate(in_file)}
    names = {p.get("name") for p in merged}
    kept = [p for p in in_file if p.get("name") in held and p.get("name") not in names]
    return sorted(kept + merged, key=lambda p: order.get(p.get("name"), len(order)))


def _order(qube: QubeRecord) -> tuple[bool, str]:
    """Order of qubes in a shard file: by name, nameless ones last."""
    return qube.name == "", qube.name


def _writable(visible: dict[str, Shard], sutured: dict[str, Any], detached: set[str],
              unwritable: dict[str, str], problems: list[Problem]) -> dict[str, Shard]:
    """Shards dissect may write: merged ones still at their place, and visible ones that
    were not merged (their qubes are all kept; merged qubes join them by their pools,
    e.g. when an existing store is first split), never detached, unreadable or
    `unwritable` ones."""
    writable = {}
    for sid in sorted(set(sutured) - set(visible)):
        problems.append(Problem("error", "unplaceable", f"shard {sid} ({sutured[sid]['path']}) "
                                "was merged but is not visible any more; its qubes stay only "
                                "in the merged store", sid))
    for sid, shard in visible.items():
        if sid in detached:
            continue
        if sid in unwritable:
            problems.append(Problem("error", "unplaceable", f"shard {sid} ({shard.path}) cannot "
                                    f"be written ({unwritable[sid]}); its changes stay only in "
                                    "the merged store", sid))
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
            except (store.StoreError, ShardError) as exc:
                problems.append(Problem("error", "refused", f"{exc}; not written", sid))
                continue
        writable[sid] = shard
    return writable


def _index(facts: Facts, domains: Optional[etree._Element]) -> dict[str, etree._Element]:
    """uuid -> <domain> of an earlier file (read cheaply: only the uuid is needed)."""
    return {property_value(d, "uuid") or "": d for d in domains} if domains is not None else {}


def _group_by_pools_or_tag(facts: Facts, domain: etree._Element,
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
        top = [s for s in owners if owners - {s} <= deps_closure(s, visible)]
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


def _group_of_new(facts: Facts, domain: etree._Element, owner: dict[str, Optional[str]],
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
            if needed <= {sid} | deps_closure(sid, visible):
                return sid
    return CORE


def _fix_global_references(facts: Facts, props: etree._Element,
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
        old_value = property_value(core_root, prop.get("name")) if old is not None else None
        problems.append(Problem("warning", "violation", f"global property {prop.get('name')} "
                                f"names {target!r}, which is not a core qube; on disk it stays "
                                f"{old_value!r}"))
        if old_value is None:
            props.remove(prop)
        else:
            prop.text = old_value


def _fix_references(facts: Facts, domain: etree._Element, group: str, allowed: set[str],
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
            remove_device(domain, what)
            kept = "dropped"
        else:
            prop = properties(domain)[what]
            old_value = property_value(old, what) if old is not None else None
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


def _fix_qids(facts: Facts, shard: Shard, members: list[etree._Element],
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
