"""The plans of adopt and release (`reliant.adopt` writes them): existing qubes moved
between core and a shard.

`adopt` takes core qubes whose data lives in a pool inside a shard's directory (made with
stock Qubes on a hidden volume, so named in qubes.xml) into that shard, with that pool
(which only they may use) and their dom0 directories; `release` gives shard qubes back to
core, with the shard's pools only they use. Both refuse, before writing anything, what
would leave core naming a shard qube or pool (a reference, volume, pool, global property,
``created-by-`` tag), a core qubesd would not load (`reliant.qubesd_load`) or, for adopt,
a qube suture would not merge; each reason says how to fix it.

QIDs follow the group a qube joins, like a new qube's there: the lowest free qid of the
shard's range (kept when it lies there, free), or the lowest free one outside every
visible shard's range. A core-range qid in a shard would be renumbered at each suture and
collide with the next core qube; a shard-range qid in core would show the range. IP
addresses derive from the qid (qubes-core-admin ``qubes/vm/mix/net.py``): they change
once, reported.

A plan is computed again from the files by a rerun: a qube found in both core and the
shard (an interrupted run) moves from core's copy, the live one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Optional

from lxml import etree

from reliant import qubesd_load, qubesd_schema, store
from reliant.audit import Needles
from reliant.shards.confine import within
from reliant.shards.files import Shard, deps_closure, shard_bytes
from reliant.shards.records import QubeRecord, dom0_subdir, set_qid, strip_reliant_tags
from reliant.shards.suture import QUBE_CLASSES, core_sections, plan_suture
from reliant.vocab import GLOBAL_REFERENCES, MAX_QID, Problem, ShardError, is_data_volume

#: Tags qubesd sets that name another qube (qubes-core-admin ``qubes/api/admin.py``:
#: ``created-by-``, ``disp-created-by-``; ``qubes/ext/gui.py``, ``audio.py``: ``guivm-``,
#: ``audiovm-``).
NAMING_TAG_PREFIXES = ("created-by-", "disp-created-by-", "guivm-", "audiovm-")
#: Global properties naming a pool (qubes-core-admin ``qubes/app.py``).
POOL_PROPERTIES = ("default_pool", "default_pool_kernel", "default_pool_private",
                   "default_pool_root", "default_pool_volatile")


@dataclass
class MovePlan:
    """What adopt or release writes: the new core and shard files, the dom0 directories
    of the moving qubes, and what the user must know."""

    shard: Shard
    core: bytes
    shard_file: bytes
    dirs: list[tuple[str, str]]
    problems: list[Problem] = field(default_factory=list)


def _ipv4(qid: int) -> str:
    """The default IPv4 address of a qube with `qid` (qubes/vm/mix/net.py vmid_to_ipv4)."""
    return f"10.137.{qid >> 8}.{qid & 0xff}"


def _by_name(domains: Iterable[etree._Element]) -> dict[str, tuple[etree._Element, QubeRecord]]:
    return {record.name: (domain, record)
            for domain, record in ((d, QubeRecord(d)) for d in domains)}


def _find_shard(shards: Sequence[Shard], which: str) -> Shard:
    """The visible shard whose id or directory is `which`."""
    for shard in shards:
        if which == shard.id or os.path.realpath(which) == os.path.realpath(shard.path):
            return shard
    visible = ", ".join(sorted(s.id for s in shards)) or "none"
    raise ShardError(f"no visible shard {which!r} (visible: {visible})")


def _refuse(reasons: list[str], what: str) -> None:
    if reasons:
        raise ShardError(f"{what} refused, nothing written:\n  "
                         + "\n  ".join(dict.fromkeys(reasons)))


def _renumber(records: list[QubeRecord], fits: Callable[[int], bool], taken: set[Optional[int]],
              free: Iterable[int], where: str, reasons: list[str]) -> dict[str, int]:
    """New qid of each record: its own when it `fits` and is free, else the next of
    `free` not `taken` (the lowest, as qubesd gives a new qube)."""
    free = iter(free)
    chosen = {}
    for record in sorted(records, key=lambda r: (r.qid or 0, r.name)):
        qid = record.qid
        if qid is None or not fits(qid) or qid in taken:
            qid = next((q for q in free if q not in taken), None)
            if qid is None:
                reasons.append(f"qube {record.name}: no free qid left in {where}")
                continue
        taken.add(qid)
        chosen[record.name] = qid
    return chosen


def _qid_notes(records: list[QubeRecord], chosen: dict[str, int], where: str) -> list[Problem]:
    notes = []
    for record in records:
        new = chosen.get(record.name)
        if new is None or new == record.qid:
            continue
        ip = "" if record.cls == "DispVM" else (
            f"; its IP address changes from {_ipv4(record.qid or 0)} to {_ipv4(new)} unless set "
            "explicitly: update firewall rules that name it")
        notes.append(Problem("info", "renumbered", f"qube {record.name}: qid {record.qid} -> "
                             f"{new} ({where}){ip}", qube=record.name))
    return notes


def _insert_sorted(domains: etree._Element, new: Iterable[etree._Element]) -> None:
    """Add `new` where qubesd would write them: dom0 first, then by name (qubes/app.py
    VMCollection iterates sorted, qubes/vm/__init__.py BaseVM.__lt__ compares names)."""
    for domain in sorted(new, key=lambda d: QubeRecord(d).name):
        name = QubeRecord(domain).name
        for index, other in enumerate(domains):
            record = QubeRecord(other)
            if record.cls != "AdminVM" and record.name > name:
                domains.insert(index, domain)
                break
        else:
            domains.append(domain)


def _sorted_domains(domains: Iterable[etree._Element]) -> list[etree._Element]:
    """Shard files hold their qubes by name, as dissect writes them."""
    def order(domain: etree._Element) -> tuple[bool, str]:
        name = QubeRecord(domain).name
        return name == "", name
    return sorted(domains, key=order)


def _loading_releases(core_root: etree._Element) -> list[str]:
    """The Qubes releases whose qubesd would load `core_root` (`reliant.qubesd_load`)."""
    return [release for release in qubesd_schema.RELEASES
            if qubesd_load.loads(core_root, release)]


def _refuse_unloadable(core_root: etree._Element, releases: list[str], what: str) -> None:
    """Refuse a new core that qubesd would not load where the old one loaded."""
    _refuse([f"qubesd (R{release}) would not load the new core: {problem}"
             for release in releases for problem in qubesd_load.problems(core_root, release)
             if problem.fatal], what)


# --- adopt ------------------------------------------------------------------------------

def _in_dir(pool: Optional[etree._Element], directory: str) -> bool:
    """True when `pool` keeps its volumes under `directory`."""
    path = pool.get("dir_path") if pool is not None else None
    return bool(path) and within(path, directory)


def _pool_hint(shard: Shard, core_pools: dict[str, etree._Element]) -> str:
    """The pools a qube's data could move to so that it can join `shard`."""
    names = [n for n, p in core_pools.items() if _in_dir(p, shard.path)] + shard.pools
    if names:
        return " or ".join(dict.fromkeys(names))
    return (f"POOL, after making one there (qvm-pool add POOL file-reflink -o "
            f"dir_path={shard.path}/pool)")


class _Scope:
    """Core and the visible shards as a move sees them (records read once)."""

    def __init__(self, core_root: etree._Element, shards: Sequence[Shard], which: str,
                 core_source: str) -> None:
        self.sections = core_sections(core_root, core_source)
        self.shard = _find_shard(shards, which)
        self.by_id = {s.id: s for s in shards}
        self.core = _by_name(self.sections["domains"])
        self.own = _by_name(self.shard.domains)
        self.core_pools = {p.get("name"): p for p in self.sections["pools"]}
        self.shard_pools = {p.get("name"): p for p in self.shard.pool_elements}
        self.reasons: list[str] = []
        self.problems: list[Problem] = []
        self.others: list[Shard] = []
        self.foreign: dict[str, list[QubeRecord]] = {}
        for other in shards:
            if other is self.shard:
                continue
            try:
                self.foreign[other.id] = [QubeRecord(d) for d in other.domains]
            except (store.StoreError, ShardError) as exc:
                self.problems.append(Problem("warning", "refused", f"{exc}; not checked for "
                                             "references to the moving qubes", other.id))
                continue
            self.others.append(other)


def _adopted(scope: _Scope, names: Sequence[str]
             ) -> tuple[dict[str, tuple[etree._Element, QubeRecord]], list[QubeRecord]]:
    """The core qubes to move, and those already moved by an interrupted run."""
    shard = scope.shard
    movers: dict[str, tuple[etree._Element, QubeRecord]] = {}
    done: list[QubeRecord] = []
    for name in dict.fromkeys(names):
        in_core, in_shard = scope.core.get(name), scope.own.get(name)
        if in_core is None:
            if in_shard is None:
                scope.reasons.append(f"no qube named {name!r} in core nor in shard {shard.id}")
            else:
                done.append(in_shard[1])
        elif in_core[1].cls not in QUBE_CLASSES:
            scope.reasons.append(f"qube {name}: a {in_core[1].cls} cannot live in a shard")
        elif in_shard is not None and in_shard[1].uuid != in_core[1].uuid:
            scope.reasons.append(f"qube {name}: shard {shard.id} holds another qube of that "
                                 "name; rename one of them first")
        else:
            movers[name] = in_core
    uuids = {record.uuid for _, record in movers.values()}
    for name, (_, record) in scope.own.items():
        if record.uuid in uuids and name not in movers:
            scope.reasons.append(f"qube {name} of shard {shard.id} has the uuid of a qube "
                                 "to adopt")
    for sid, records in scope.foreign.items():
        for record in records:
            if record.uuid in uuids or record.name in movers:
                scope.reasons.append(f"qube {record.name}: shard {sid} holds a qube of that "
                                     "name or uuid; rename one of them first")
    return movers, done


def _adopted_pools(scope: _Scope, movers: dict[str, tuple[etree._Element, QubeRecord]]
                   ) -> list[str]:
    """The core pools inside the shard's directory that move with `movers`; refusals for
    their volumes elsewhere."""
    shard, core_pools = scope.shard, scope.core_pools
    pools: list[str] = []
    for name, (domain, _) in movers.items():
        for volume in domain.iterfind("volume-config/volume"):
            pool, label = volume.get("pool") or "", volume.get("name") or "?"
            if pool in scope.shard_pools or _in_dir(core_pools.get(pool), shard.path):
                if pool in core_pools and pool not in pools:
                    pools.append(pool)
            elif is_data_volume(label, volume.get("snap_on_start") == "True",
                                volume.get("source")):
                scope.reasons.append(
                    f"qube {name}: volume {label} is in pool {pool}, outside shard "
                    f"{shard.id}'s directory {shard.path}; move its data first: qvm-clone -P "
                    f"{_pool_hint(shard, core_pools)} {name} NEW, then qvm-remove {name}")
            elif pool not in core_pools:
                scope.reasons.append(f"qube {name}: volume {label} is in pool {pool}, which "
                                     "core does not define")
            else:
                for other in scope.others:
                    if _in_dir(core_pools[pool], other.path):
                        scope.reasons.append(f"qube {name}: volume {label} is in pool {pool}, "
                                             f"inside shard {other.id}'s directory")
    for pool in pools:
        users = sorted(n for n, (_, r) in scope.core.items() if n not in movers and pool in r.pools)
        if users:  # the pool must move: a shard qube's data lives in its shard's pools
            scope.reasons.append(f"pool {pool} moves into shard {shard.id} with the qubes "
                                 f"whose data it holds, but core qubes {', '.join(users)} use "
                                 "it too: adopt them in the same call")
        if pool in scope.shard_pools and dict(scope.shard_pools[pool].attrib) != dict(
                core_pools[pool].attrib):
            scope.reasons.append(f"pool {pool}: shard {shard.id} defines another pool of "
                                 "that name")
        for other in scope.others:
            if pool in other.pools:
                scope.reasons.append(f"pool {pool}: shard {other.id} defines a pool of that "
                                     "name")
            elif shard.id not in deps_closure(other.id, scope.by_id):
                users = sorted(r.name for r in scope.foreign[other.id] if pool in r.pools)
                if users:
                    scope.reasons.append(f"pool {pool}: qubes {', '.join(users)} of shard "
                                         f"{other.id} use it, and shard {other.id} does not "
                                         f"depend on shard {shard.id}")
    return pools


def _adoption_references(scope: _Scope, movers: dict[str, tuple[etree._Element, QubeRecord]],
                         pools: list[str]) -> None:
    """Refusals for what would name the adopted qubes or pools from core, or from a
    shard that may not reference this one."""
    for prop in scope.sections["properties"]:
        key, value = prop.get("name"), prop.text or ""
        if key in POOL_PROPERTIES and value in pools:
            scope.reasons.append(f"global property {key} names pool {value}; change it "
                                 f"first (qubes-prefs {key} vm-pool)")
        elif key in GLOBAL_REFERENCES and value in movers:
            scope.reasons.append(f"global property {key} names {value}; change it first "
                                 f"(qubes-prefs {key} OTHER)")
    for name, (domain, record) in scope.core.items():
        if name in movers:
            continue
        for what, target in record.refs:
            if target in movers:
                scope.reasons.append(
                    f"core qube {name}: {what} names {target}, and a core qube may not "
                    f"reference a shard qube; change it first (qvm-prefs {name} {what} ...) "
                    f"or adopt {name} too")
        for tag in domain.iterfind("tags/tag"):
            tag_name = tag.get("name") or ""
            for prefix in NAMING_TAG_PREFIXES:
                if tag_name.startswith(prefix) and tag_name[len(prefix):] in movers:
                    scope.reasons.append(f"core qube {name}: tag {tag_name} names "
                                         f"{tag_name[len(prefix):]}; remove it first "
                                         f"(qvm-tags {name} del {tag_name})")
    for sid, records in scope.foreign.items():
        if scope.shard.id in deps_closure(sid, scope.by_id):
            continue
        for record in records:
            for what, target in record.refs:
                if target in movers:
                    scope.reasons.append(f"qube {record.name} of shard {sid}: {what} names "
                                         f"{target}, and shard {sid} does not depend on "
                                         f"shard {scope.shard.id}")


def plan_adopt(core_root: etree._Element, shards: Sequence[Shard], shard_id: str,
               names: Sequence[str], core_source: str = "core") -> MovePlan:
    """Move the core qubes `names` into shard `shard_id` (id or directory; `core_root`
    and the shard's tree are consumed). ShardError listing every reason when they cannot
    move; nothing is changed then."""
    scope = _Scope(core_root, shards, shard_id, core_source)
    shard, sections = scope.shard, scope.sections
    loaded = _loading_releases(core_root)
    movers, done = _adopted(scope, names)
    pools = _adopted_pools(scope, movers)
    _adoption_references(scope, movers, pools)
    records = [record for _, record in movers.values()]
    uuids = {record.uuid for record in records}
    taken = {r.qid for _, r in scope.own.values() if r.uuid not in uuids}
    taken |= {r.qid for n, (_, r) in scope.core.items() if n not in movers}
    where = f"shard {shard.id}'s range"
    chosen = _renumber(records, shard.contains_qid, taken, shard.free_qids(set()), where,
                       scope.reasons)
    _refuse(scope.reasons, "adopt")

    for name, (domain, _) in movers.items():
        strip_reliant_tags(domain)
        set_qid(domain, chosen[name])
    problems = scope.problems + _qid_notes(records, chosen, where)
    moved_pools = [scope.core_pools[p] for p in pools]
    domains = [domain for domain, _ in movers.values()]
    problems += _mentions(sections, shard, domains, moved_pools)
    kept_pools = [p for p in shard.pool_elements if p.get("name") not in pools]
    kept = [d for d, r in scope.own.values() if r.uuid not in uuids]
    for element in moved_pools:
        sections["pools"].remove(element)
    for domain in domains:
        sections["domains"].remove(domain)
    _refuse_unloadable(core_root, loaded, "adopt")
    new_shard = shard_bytes(shard, kept_pools + moved_pools, _sorted_domains(kept + domains))
    new_core = store.serialize(core_root)
    _refuse(_left_out_by_suture(new_core, shards, shard, new_shard, set(movers)), "adopt")
    dirs = [(dom0_subdir(r), r.name) for r in records + done]
    return MovePlan(shard, new_core, new_shard, dirs, problems)


def _left_out_by_suture(core: bytes, shards: Sequence[Shard], target: Shard, data: bytes,
                        names: set[str]) -> list[str]:
    """Why suture would not merge the adopted qubes `names` from the new shard file
    `data` (all its rules, e.g. where a shard qube's volumes may live: one source)."""
    trial = [Shard(s.path, s.id, s.qid_range, s.depends_on,
                   data=data if s is target else s.data) for s in shards]
    plan = plan_suture(store.parse(core, "the new core"), trial)
    return [f"suture would not merge it: {p.message}" for p in plan.problems
            if p.severity != "info" and (p.qube in names or (
                p.shard == target.id and p.kind == "refused"))]


def _mentions(sections: dict[str, etree._Element], shard: Shard,
              domains: list[etree._Element], pools: list[etree._Element]) -> list[Problem]:
    """A warning for each mention of the moving qubes and pools that core would keep
    beyond the references refused above (a feature value, say), by the audit's rule of
    what names a qube."""
    probe = Shard(path=shard.path, id=shard.id, qid_range=shard.qid_range,
                  depends_on=shard.depends_on)
    probe.data = shard_bytes(probe, [deepcopy(p) for p in pools],
                             [deepcopy(d) for d in domains])
    needles = Needles([probe])
    leaving = {id(d) for d in domains}
    places = [("global properties", sections["properties"])] + [
        (f"core qube {QubeRecord(d).name}", d) for d in sections["domains"]
        if id(d) not in leaving]
    return [Problem("warning", "violation", f"{where} still mentions {label}: if it names "
                    "the adopted qube, remove it", shard.id)
            for where, element in places
            for label in sorted(needles.find(etree.tostring(element)))]


# --- release ----------------------------------------------------------------------------

def _released(scope: _Scope, names: Sequence[str]
              ) -> tuple[dict[str, tuple[etree._Element, QubeRecord]], list[QubeRecord]]:
    """The shard qubes to move, and those core holds already (an interrupted run: core's
    copy is the live one)."""
    shard = scope.shard
    core_uuids = {record.uuid: name for name, (_, record) in scope.core.items()}
    movers: dict[str, tuple[etree._Element, QubeRecord]] = {}
    settled: list[QubeRecord] = []
    for name in dict.fromkeys(names):
        in_core, in_shard = scope.core.get(name), scope.own.get(name)
        if in_shard is None:
            if in_core is None:
                scope.reasons.append(f"no qube named {name!r} in shard {shard.id} nor in core")
            else:
                settled.append(in_core[1])
        elif in_core is not None:
            if in_core[1].uuid != in_shard[1].uuid:
                scope.reasons.append(f"qube {name}: core holds another qube of that name; "
                                     "rename one of them first")
            else:
                settled.append(in_core[1])
        elif in_shard[1].uuid in core_uuids:
            scope.reasons.append(f"qube {name}: its uuid is that of core qube "
                                 f"{core_uuids[in_shard[1].uuid]}")
        else:
            movers[name] = in_shard
    return movers, settled


def _released_pools(scope: _Scope, movers: dict[str, tuple[etree._Element, QubeRecord]],
                    leaving: set[str]) -> list[str]:
    """The shard's pools that move to core with `movers` (no other shard qube uses them);
    refusals for volumes core could not use."""
    shard = scope.shard
    pools: list[str] = []
    for name, (domain, _) in movers.items():
        blocked: set[str] = set()
        for volume in domain.iterfind("volume-config/volume"):
            pool, label = volume.get("pool") or "", volume.get("name") or "?"
            if pool not in scope.shard_pools:
                if pool not in scope.core_pools:
                    scope.reasons.append(
                        f"qube {name}: volume {label} is in pool {pool}, not a pool of core "
                        f"nor of shard {shard.id}; move it to a core pool first (qvm-clone "
                        f"-P vm-pool {name} NEW)")
                continue
            users = sorted(n for n, (_, r) in scope.own.items()
                           if n not in leaving and pool in r.pools)
            if users and pool in blocked:
                continue
            if users:
                blocked.add(pool)
                scope.reasons.append(
                    f"qube {name}: volume {label} is in pool {pool}, which shard qubes "
                    f"{', '.join(users)} use too; release them as well, or move its data "
                    f"to a core pool first (qvm-clone -P vm-pool {name} NEW)")
            elif pool in scope.core_pools and dict(scope.core_pools[pool].attrib) != dict(
                    scope.shard_pools[pool].attrib):
                scope.reasons.append(f"pool {pool}: core defines another pool of that name")
            elif pool not in pools:
                pools.append(pool)
    for pool, element in scope.shard_pools.items():  # moved to core by an interrupted run
        if pool not in pools and pool in scope.core_pools and dict(element.attrib) == dict(
                scope.core_pools[pool].attrib) and not any(
                pool in r.pools for n, (_, r) in scope.own.items() if n not in leaving):
            pools.append(pool)
    return pools


def _release_references(scope: _Scope,
                        movers: dict[str, tuple[etree._Element, QubeRecord]]) -> None:
    """Refusals for references of released qubes that core could not keep."""
    holders = {r.name: sid for sid, records in scope.foreign.items() for r in records}
    for name, (_, record) in movers.items():
        for what, target in record.refs:
            if target in movers or (target in scope.core and target not in scope.own):
                continue
            sid = scope.shard.id if target in scope.own else holders.get(target)
            where = f"qube {target} of shard {sid}" if sid else \
                f"{target}, which core does not hold"
            scope.reasons.append(f"qube {name}: {what} names {where}; a core qube may only "
                                 f"reference core qubes: release {target} too or change it "
                                 f"first (qvm-prefs {name} {what} ...)")


def plan_release(core_root: etree._Element, shards: Sequence[Shard], shard_id: str,
                 names: Sequence[str], core_source: str = "core") -> MovePlan:
    """Move the qubes `names` of shard `shard_id` (id or directory) into core
    (`core_root` and the shard's tree are consumed). ShardError listing every reason
    when they cannot move; nothing is changed then."""
    scope = _Scope(core_root, shards, shard_id, core_source)
    shard, sections = scope.shard, scope.sections
    loaded = _loading_releases(core_root)
    movers, settled = _released(scope, names)
    leaving = set(movers) | {r.name for r in settled if r.name in scope.own}
    pools = _released_pools(scope, movers, leaving)
    _release_references(scope, movers)
    records = [record for _, record in movers.values()]
    ranges = [s.qid_range for s in shards]

    def outside(qid: int) -> bool:
        return not any(first <= qid <= last for first, last in ranges)

    taken = {r.qid for _, r in scope.core.values()} | {
        r.qid for records in scope.foreign.values() for r in records} | {
        r.qid for n, (_, r) in scope.own.items() if n not in movers}
    chosen = _renumber(records, outside, taken, filter(outside, range(1, MAX_QID)), "core",
                       scope.reasons)
    _refuse(scope.reasons, "release")

    for name, (domain, _) in movers.items():
        strip_reliant_tags(domain)
        set_qid(domain, chosen[name])
    problems = scope.problems + _qid_notes(records, chosen, "core")
    sections["pools"].extend(scope.shard_pools[p] for p in pools if p not in scope.core_pools)
    _insert_sorted(sections["domains"], [domain for domain, _ in movers.values()])
    _refuse_unloadable(core_root, loaded, "release")
    kept_pools = [p for p in shard.pool_elements if p.get("name") not in pools]
    kept = [d for n, (d, _) in scope.own.items() if n not in leaving]
    new_shard = shard_bytes(shard, kept_pools, _sorted_domains(kept))
    dirs = [(dom0_subdir(r), r.name) for r in records + settled]
    return MovePlan(shard, store.serialize(core_root), new_shard, dirs, problems)
