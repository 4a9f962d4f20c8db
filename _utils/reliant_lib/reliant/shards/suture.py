"""The suture plan: core plus the visible shards -> the merged store qubesd runs on.

Rules (docs/design/rules-and-qids.md), each failure a `Problem` naming shard and qube: a shard is refused
as a whole (unreadable, overlapping QID range, pools that redefine others); a pool that
may not hold its data (`reliant.shards.confine`) is held back in its file; a qube is left
out (class, name, uuid, label, pools, volumes of another qube or not confined) and stays
intact in its shard; a reference to a qube that is not visible is reset to its
default and the qube may not start until it is reviewed (or the qube is skipped); qids
outside the shard's range get the lowest free one of it.

Bounds: at most `MAX_MERGED_SHARDS` shards are merged at once (the runtime qrexec policy
grows with the square of the number of groups), and a shard whose file would make the
merged store larger than what dissect reads back (`store.MAX_BYTES`) is left out; both
are refusals of the whole shard, reported, and leave it intact.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

from lxml import etree

from reliant import platform, store
from reliant.shards.confine import PathView, PoolFacts, VolumeFacts, volume_problem
from reliant.shards.files import Shard, deps_closure, held_pools
from reliant.shards.records import (
    QubeRecord,
    dom0_subdir,
    feature_value,
    properties,
    property_value,
    remove_device,
    set_feature,
)
from reliant.shards.recovery import DEFAULT_FOR_CLASS, CoreDefaults
from reliant.shards.stubs import Facts, Stubs
from reliant.vocab import (
    CORE,
    CORE_TAG,
    GLOBAL_REFERENCES,
    MAX_QID,
    Problem,
    ShardError,
    referable_groups,
    shard_tag,
    valid_qube_name,
)

QUBE_CLASSES = frozenset({"AppVM", "TemplateVM", "StandaloneVM", "DispVM"})
RECOVERED_PREFIX = "reliant-recovered-"
PROHIBIT_START = "prohibit-start"
RATIONALE_PREFIX = "reliant: "
MISSING_REFERENCE_MODES = ("recover", "skip")
#: shards merged at once at most: the runtime policy has 2 or 3 lines per service for
#: each ordered pair of groups (about 4 MB for 7 services and 65 groups)
MAX_MERGED_SHARDS = 64
#: bytes a merged <domain> may gain over its bytes in the shard file (group tag, the
#: features of a recovered reference)
_MERGE_GROWTH = 256


@dataclass
class SuturePlan:
    merged: etree._Element
    facts: Facts  # records of the merged domains (stubs among them: serialize with .expand)
    state: dict[str, Any]
    problems: list[Problem]
    sutured: list[Shard]
    dirs: dict[str, list[tuple[str, str]]]  # shard id -> dom0 dirs of its merged qubes
    defaults: Optional[CoreDefaults] = None  # what a qube whose template is gone gets


def core_sections(root: etree._Element, source: str) -> dict[str, etree._Element]:
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


def recover_reference(facts: Facts, domain: etree._Element, what: str, target: str, shard: Shard,
                      defaults: CoreDefaults, others: Iterable[etree._Element] = ()
                      ) -> Optional[str]:
    """Reset a missing reference (a missing template: the global default one, see
    `reliant.shards.recovery`; the disposables among `others` whose template it is
    follow), keep the old value, prohibit start. Returns why the qube cannot be
    recovered (it is then left out), None when it was."""
    name = facts.name(domain)
    replaced = ""
    if what == "template":
        replacement = defaults.replacement(facts(domain).cls)
        if replacement.template is None:
            return replacement.reason
        facts.materialize(domain)
        old = defaults.retarget(domain, replacement.template, name)
        if old is None:
            facts.forget(domain)
            return (f"a snapshot volume has no counterpart in the global {replacement.prop} "
                    f"{replacement.template!r}")
        for key, value in old.items():
            if feature_value(domain, RECOVERED_PREFIX + key) is None:  # keep the first
                set_feature(domain, RECOVERED_PREFIX + key, value)
        for other in others:
            if facts(other).cls == "DispVM" and ("template", name) in facts(other).refs:
                facts.materialize(other)
                defaults.follow(other, domain, facts.name(other))
                facts.forget(other)
        replaced = f"replaced by the global {replacement.prop} {replacement.template!r}"
    else:
        facts.materialize(domain)
    if what.startswith("device "):
        device = remove_device(domain, what)
        key = RECOVERED_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", what.replace(" ", "-"))
        set_feature(domain, key, etree.tostring(device, encoding="unicode", with_tail=False))
    elif what != "template":
        prop = properties(domain)[what]
        prop.getparent().remove(prop)
        set_feature(domain, RECOVERED_PREFIX + what, target)
    facts.forget(domain)
    current = feature_value(domain, PROHIBIT_START)
    if current is None or current.startswith(RATIONALE_PREFIX):
        set_feature(domain, PROHIBIT_START,
                     f"{RATIONALE_PREFIX}{what} {target or '(none)'!r} was missing when shard "
                     f"{shard.id} was "
                     f"opened and was {replaced or 'reset to its default'}; check the qube, "
                     f"then run 'reliant-shard review {name}'")
    return None


def missing_reference_mode(wanted: str, found: platform.Platform
                           ) -> tuple[str, list[Problem]]:
    """The mode suture runs with on the dom0 `found`, and a warning if it is not `wanted`:
    `recover` lets a repaired qube into qubesd only because the feature prohibit-start
    stops it from starting before review; where qubesd lacks that feature (R4.2), or
    nobody can tell, recover acts as skip."""
    reason = found.lacks(platform.PROHIBIT_START) if wanted == "recover" else None
    if reason is None:
        return wanted, []
    return "skip", [Problem("warning", "recovery", f"missing_reference: recover acts as "
                            f"skip: {reason}, so a qube whose reference is missing could "
                            "start before review; such qubes are left out, intact in "
                            "their shards")]


def plan_suture(core_root: etree._Element, shards: Sequence[Shard], *,
                core_source: str = "core", missing_reference: str = "recover",
                detached: Iterable[str] = (), stubs: Optional[Stubs] = None,
                core_bytes: int = 0,
                saved_dir_refusal: Optional[Callable[[Shard, str, str], Optional[str]]] = None
                ) -> SuturePlan:
    """Merge `shards` into `core_root` (modified in place: it becomes the merged store);
    `stubs`: those of their domains read in chunks (`read_in_chunks`); `core_bytes`:
    the size of the core file (what is left of `store.MAX_BYTES` is the shards' room);
    `saved_dir_refusal(shard, subdir, name)`: why a qube's saved dom0 directory cannot
    be restored (the qube is left out).

    Raises ShardError only when the core itself is unusable; everything about a shard
    or a qube is reported in `problems` and the culprit is left out of the merge,
    untouched in its shard.
    """
    if missing_reference not in MISSING_REFERENCE_MODES:
        raise ShardError(f"missing_reference must be one of {MISSING_REFERENCE_MODES}, "
                         f"not {missing_reference!r}")
    problems: list[Problem] = []
    facts = Facts(stubs)
    sections = core_sections(core_root, core_source)
    labels = {label.text for label in sections["labels"]} | {
        label.get("id") for label in sections["labels"]}
    pool_owner = {pool.get("name"): CORE for pool in sections["pools"]}
    owner: dict[str, str] = {}  # qube name -> group
    uuids: set[str] = set()
    qids: set[int] = set()
    core_refs: set[str] = set()
    kernel_pools = {p.get("name") for p in sections["pools"]
                    if p.get("driver") == "linux-kernel"}
    pool_facts = {p.get("name"): PoolFacts.of(p.attrib) for p in sections["pools"]}
    paths = PathView()  # the shards' files, resolved and listed once
    merged_by_name: dict[str, QubeRecord] = {}
    used_vids: dict[tuple[str, str], str] = {}
    core_elements: dict[str, etree._Element] = {}
    for domain in sections["domains"]:
        qube = facts(domain)
        name = qube.name
        owner[name] = CORE
        core_elements.setdefault(name, domain)
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
    defaults = CoreDefaults(sections["properties"], core_elements, sections["pools"],
                            lambda d: (facts.materialize(d), d)[1])
    detached = set(detached)
    state: dict[str, Any] = {"version": 1, "shards": {}, "detached": sorted(detached)}
    sutured: list[Shard] = []
    dirs: dict[str, list[tuple[str, str]]] = {}
    ranges: list[tuple[tuple[int, int], str]] = []
    by_id = {shard.id: shard for shard in shards}
    room = store.MAX_BYTES - core_bytes - _MERGE_GROWTH * len(sections["domains"])

    for shard in _order_shards(shards, problems):
        if shard.id in detached:
            problems.append(Problem("info", "detached", f"shard {shard.id} ({shard.path}) is "
                                    "detached; not merged", shard.id))
            continue
        refusal = _over_bounds(shard, len(sutured), room) or _refusal(shard, pool_owner,
                                                                      ranges)
        if refusal:
            problems.append(Problem("error", "refused", f"shard {shard.id} ({shard.path}): "
                                    f"{refusal}; not merged", shard.id))
            continue
        allowed = referable_groups(shard.id, deps_closure(shard.id, by_id)
                                   & {s.id for s in sutured})
        held, own_dirs = _confined_pools(shard, problems)
        usable = {p: pool_facts[p] for p, g in pool_owner.items() if g in allowed}
        usable.update((p.get("name"), PoolFacts.of(p.attrib)) for p in shard.pool_elements
                      if p.get("name") not in held)
        candidates = _admissible(facts, shard, owner, uuids, labels,
                                 set(usable) | set(held), core_refs, problems)
        if saved_dir_refusal is not None:
            candidates = _restorable(facts, shard, candidates, saved_dir_refusal, problems)
        confinement = _Confinement(usable, own_dirs, held, owner, allowed, merged_by_name,
                                   used_vids, kernel_pools, paths)
        candidates = _confined(facts, shard, candidates, confinement, problems)
        candidates = _resolve_references(facts, shard, candidates, owner, allowed,
                                         missing_reference, defaults, problems)
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
        merged_pools = [pool for pool in shard.pool_elements if pool.get("name") not in held]
        for pool in merged_pools:
            pool_owner[pool.get("name")] = shard.id
            pool_facts[pool.get("name")] = PoolFacts.of(pool.attrib)
            sections["pools"].append(pool)
        ranges.append((shard.qid_range, shard.id))
        room -= _merged_size(shard)
        sutured.append(shard)
        # held_pools: left in the shard file (dissect keeps them there)
        state["shards"][shard.id] = {"path": shard.path,
                                     "pools": [p.get("name") for p in merged_pools],
                                     "held_pools": sorted(held), "merged": merged_uuids}
    state["problems"] = [asdict(p) for p in problems]
    state["refused"] = sorted({p.shard for p in problems if p.kind == "refused" and p.shard})
    return SuturePlan(core_root, facts, state, problems, sutured, dirs, defaults)


def _refusal(shard: Shard, pool_owner: dict[str, str],
             ranges: list[tuple[tuple[int, int], str]]) -> Optional[str]:
    """Why `shard` as a whole cannot be merged, None if it can."""
    try:
        pools = shard.pool_elements
        shard.domains  # noqa: B018 - parse now so that a broken file refuses the shard
    except (store.StoreError, ShardError) as exc:
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
    return None


def _merged_size(shard: Shard) -> int:
    """Bytes the shard may add to the merged store, at most."""
    return len(shard.data) + _MERGE_GROWTH * shard.data.count(b"<domain")


def _over_bounds(shard: Shard, merged: int, room: int) -> Optional[str]:
    """Why `shard` would overstep a bound of the merged store, None if it would not."""
    if merged >= MAX_MERGED_SHARDS:
        return f"{MAX_MERGED_SHARDS} shards are merged already (the most at once)"
    if _merged_size(shard) > room:
        return (f"its {len(shard.data)} bytes would make the merged store larger than the "
                f"{store.MAX_BYTES} bytes dissect reads back")
    return None


def _restorable(facts: Facts, shard: Shard, candidates: list[etree._Element],
                refusal: Callable[[Shard, str, str], Optional[str]],
                problems: list[Problem]) -> list[etree._Element]:
    """Leave out the qubes whose saved dom0 directory cannot be restored: qubesd would run
    them without it, and dissect would then save what qubesd made over the shard's copy."""
    kept = []
    for domain in candidates:
        qube = facts(domain)
        reason = refusal(shard, dom0_subdir(qube), qube.name)
        if reason:
            problems.append(Problem("warning", "invalid", f"qube {qube.name} of shard "
                                    f"{shard.id} not merged: {reason}; it stays intact in "
                                    f"{shard.file}", shard.id, qube.name))
            continue
        kept.append(domain)
    return kept


def _confined_pools(shard: Shard, problems: list[Problem]) -> tuple[dict[str, str],
                                                                    dict[str, str]]:
    """The shard's pools that may not hold its data (name -> why; they are not merged and
    stay in its file, with the qubes using them) and the others (name -> resolved
    directory)."""
    held = held_pools(shard)
    for name, reason in held.items():
        problems.append(Problem("warning", "invalid", f"pool {name} of shard {shard.id} "
                                f"not merged: {reason}; it stays in {shard.file} with the "
                                "qubes using it", shard.id))
    own_dirs = {p.get("name"): os.path.realpath(p.get("dir_path")) for p in shard.pool_elements
                if p.get("name") not in held}
    return held, own_dirs


def _admissible(facts: Facts, shard: Shard, owner: dict[str, str], uuids: set[str],
                labels: set[str],
                pools: set[str], core_refs: set[str],
                problems: list[Problem]) -> list[etree._Element]:
    """The shard's qubes that may be merged at all (class, qid, name, uuid, label, pools)."""
    kept: list[etree._Element] = []
    names: set[str] = set()
    # a uuid twice in the file leaves out both qubes: neither is the qube (dissect keeps both)
    uuid_count = Counter(facts.uuid(domain) for domain in shard.domains)
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
            reason = f"qid {property_value(domain, 'qid')!r} is not between 1 and {MAX_QID - 1}"
        elif not uuid:
            reason = "it has no uuid"
        elif uuid_count[uuid] > 1:
            reason = f"its uuid {uuid} appears more than once in the shard"
        elif name in names:
            reason = "its name appears twice in the shard"
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
        kept.append(domain)
    return kept


def _note_volumes(qube: QubeRecord, used: dict[tuple[str, str], str], kernel_pools: set[str]) -> None:
    for _, pool, vid, _, _ in qube.volumes:
        if vid and pool and pool not in kernel_pools:
            used.setdefault((pool, vid), qube.name)


@dataclass
class _Confinement:
    """What `_confined` checks a shard's qubes against: the pools they may use, their
    shard's own pools (name -> directory) and those held back (name -> why), the group
    of each merged qube and the groups this shard may reference, the merged qubes and
    their volumes (pool, vid) -> qube."""

    pools: dict[str, PoolFacts]
    own_dirs: dict[str, str]
    held: dict[str, str]
    owner: dict[str, str]
    allowed: set[str]
    merged: dict[str, QubeRecord]
    used: dict[tuple[str, str], str]
    kernel_pools: set[str]
    paths: PathView


def _confined(facts: Facts, shard: Shard, candidates: list[etree._Element],
              rules: _Confinement, problems: list[Problem]) -> list[etree._Element]:
    """Leave out shard qubes whose volumes break confinement (`reliant.shards.confine`)
    or would open a volume another qube uses; again until none is left out, since a qube
    left out is no longer a template whose volumes others may take snapshots of."""
    kept = candidates
    while True:
        local = {qube.name: qube for qube in map(facts, kept)}
        claimed: dict[tuple[str, str], str] = {}
        templates: dict[str, Optional[list[VolumeFacts]]] = {}
        refused = {}
        for domain in kept:
            qube = facts(domain)
            reason = _volume_reason(qube, local, claimed, templates, rules)
            if reason:
                refused[domain] = reason
                problems.append(Problem("warning", "invalid", f"qube {qube.name} of shard "
                                        f"{shard.id} not merged: {reason}; it stays intact in "
                                        f"{shard.file}", shard.id, qube.name))
        if not refused:
            return kept
        kept = [domain for domain in kept if domain not in refused]


def _volume_reason(qube: QubeRecord, local: dict[str, QubeRecord],
                   claimed: dict[tuple[str, str], str],
                   templates: dict[str, Optional[list[VolumeFacts]]],
                   rules: _Confinement) -> Optional[str]:
    """Why a volume of `qube` breaks confinement, None if none does (`templates`: the
    volumes of each template looked up so far, None for one not visible)."""
    template_name = next((target for what, target in qube.refs if what == "template"), "")
    if template_name not in templates:
        template = local.get(template_name)
        if template is None and rules.owner.get(template_name) in rules.allowed:
            template = rules.merged.get(template_name)
        templates[template_name] = None if template is None else [
            VolumeFacts._make(v) for v in template.volumes]
    template_volumes = templates[template_name]
    mine = []
    for volume in map(VolumeFacts._make, qube.volumes):
        key = ((volume.pool, volume.vid) if volume.vid and volume.pool
               and volume.pool not in rules.kernel_pools else None)
        holder = None if key is None else rules.used.get(key) or claimed.get(key)
        if holder is not None and holder != qube.name:
            return f"volume {volume.name} is {volume.pool}:{volume.vid}, a volume of qube {holder}"
        if volume.pool in rules.held:
            return (f"volume {volume.name} is in pool {volume.pool}, which is not merged "
                    f"({rules.held[volume.pool]})")
        if template_volumes is None and volume.snap_on_start and volume.source \
                and qube.cls in DEFAULT_FOR_CLASS:
            # its template is gone: recovery makes it a snapshot of the default template's
            # volume, or leaves the qube out (recover_reference); no source is used as is
            continue
        reason = volume_problem(qube.name, qube.cls or "", volume, rules.pools, rules.own_dirs,
                                template_name, template_volumes, rules.paths)
        if reason:
            return reason
        if key is not None:
            mine.append(key)
    for key in mine:
        claimed.setdefault(key, qube.name)
    return None


def _resolve_references(facts: Facts, shard: Shard, candidates: list[etree._Element],
                        owner: dict[str, str],
                        allowed: set[str], mode: str, defaults: CoreDefaults,
                        problems: list[Problem]) -> list[etree._Element]:
    """Recover (or skip) qubes whose references do not resolve to an allowed qube; a
    qube that cannot be recovered (no valid default template) is left out."""
    while True:
        local = {facts(d).name for d in candidates}
        dropped = False
        for domain in list(candidates):
            qube = facts(domain)
            name = qube.name
            for what, target in _references_and_missing_template(qube):
                if target in local or owner.get(target) in allowed:
                    continue
                where = ("is not set" if not target else "is not visible" if target not in owner
                         else "belongs to a shard this one does not depend on")
                unrecoverable = None if mode == "skip" else recover_reference(
                    facts, domain, what, target, shard, defaults, candidates)
                if mode == "skip" or unrecoverable:
                    candidates.remove(domain)
                    dropped = True
                    why = f", and {unrecoverable}" if unrecoverable else ""
                    problems.append(Problem("warning", "skipped", f"qube {name} of shard "
                                            f"{shard.id} not merged: {what} {target!r} {where}"
                                            f"{why}; it stays intact in {shard.file}",
                                            shard.id, name))
                    break
                problems.append(Problem("warning", "recovered", f"qube {name} of shard "
                                        f"{shard.id}: {what} {target!r} {where}; "
                                        f"{describe_recovery(facts(domain), what)}, start "
                                        f"prohibited until 'reliant-shard review {name}'",
                                        shard.id, name))
        if not dropped:
            return candidates


def _references_and_missing_template(qube: QubeRecord) -> list[tuple[str, str]]:
    """The qube's references, and ("template", "") for an AppVM or DispVM without one
    (as an earlier suture left them: qubesd loads none)."""
    if qube.cls in DEFAULT_FOR_CLASS and not any(what == "template" for what, _ in qube.refs):
        return [*qube.refs, ("template", "")]
    return qube.refs


def describe_recovery(qube: QubeRecord, what: str) -> str:
    if what == "template":
        return f"its template is now {dict(qube.refs).get('template')!r}"
    return "reset to its default"


def _assign_qids(facts: Facts, shard: Shard, candidates: list[etree._Element], qids: set[int],
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
