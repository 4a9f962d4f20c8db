"""Suture admits only what loads: the merged store a suture plan would write is checked
against the model of qubesd's loader (`reliant.qubesd_load`) and, where qubes-core-admin
is importable, against its own loader (`reliant.shards.real_loader`), before it is
written.

A shard qube the model refuses is left out of the merged store (its shard file is not
touched) and reported naming the shard, the qube and the rule; a shard whose pool the
model refuses is left out as a whole. Leaving a qube out can break another that names
it (template, netvm, default_dispvm, a device's backend): those are recovered as a
missing reference is (`reliant.shards.suture.recover_reference`), or left out, and the
store is checked again until nothing changes. Core is never changed: what the model
says of core is reported.

When the model is satisfied and a real loader is given, it has the last word: if it
refuses the store, the shard qubes that make it fail are found by bisection (each step
loads the store with a prefix of the shard qubes) and left out, until it loads. If it
refuses even the core alone, the fault is not in a shard: that is reported, and the
store is written as the model admitted it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Optional

from lxml import etree

from reliant import qubesd_load, store
from reliant.shards.files import Shard, deps_closure
from reliant.shards.real_loader import RealLoader
from reliant.shards.records import QubeRecord
from reliant.shards.suture import SuturePlan, describe_recovery, recover_reference
from reliant.vocab import SHARD_TAG_PREFIX, Problem, ShardError


def admit(plan: SuturePlan, *, release: Optional[str], missing_reference: str = "recover",
          loader: Optional[RealLoader] = None, scratch: Optional[str] = None,
          data: Optional[bytes] = None) -> bytes:
    """Leave out of `plan` (changed in place) what would stop qubesd from loading it;
    returns the merged store's bytes. `release`: the Qubes release dom0 runs (None:
    every release the model knows); `loader` and `scratch` (a private directory is made
    in it for each load: tmpfs, beside the merged store): the real loader, if any;
    `data`: the plan's store, if serialized already."""
    if loader is not None and scratch is None:
        raise ShardError("the real loader needs a scratch directory on tmpfs")
    admission = _Admission(plan, release, missing_reference)
    data = admission.settle(data)
    if loader is not None and scratch is not None:
        data = admission.last_word(loader, data, scratch)
    return data


class _Admission:
    """The plan's shard qubes, and what has been left out of it."""

    def __init__(self, plan: SuturePlan, release: Optional[str], mode: str) -> None:
        self.plan = plan
        self.release = release
        self.mode = mode
        self.domains = plan.merged.find("domains")
        shards = {shard.id: shard for shard in plan.sutured}
        #: name -> (<domain> of the merged store, its shard), for every merged shard qube
        self.shard_qubes: dict[str, tuple[etree._Element, Shard]] = {}
        for domain in self.domains:
            qube = plan.facts(domain)
            for tag in qube.group_tags:
                if tag.startswith(SHARD_TAG_PREFIX) and tag[len(SHARD_TAG_PREFIX):] in shards:
                    self.shard_qubes[qube.name] = (domain, shards[tag[len(SHARD_TAG_PREFIX):]])
        self.left_out: set[str] = set()
        self.reported_core: set[qubesd_load.LoadProblem] = set()

    # -- the model --------------------------------------------------------------------
    def settle(self, data: Optional[bytes] = None) -> bytes:
        """Leave out what the model refuses until it refuses nothing of a shard (`data`:
        the plan's store, if serialized already)."""
        while True:
            data = data or self.plan.facts.expand(store.serialize(self.plan.merged))
            context = qubesd_load.StoreContext(store.parse(data, "merged store"), self.release)
            changed = False
            for problem in qubesd_load.check_store(context):
                changed |= self._store_problem(problem)
            for domain in context.domains:
                found = qubesd_load.check_domain(domain, context)
                if not found:
                    continue
                name = QubeRecord(domain).name
                if name in self.shard_qubes:
                    worst = next((p for p in found if p.fatal), found[0])
                    self.leave_out(name, f"qubesd would not load it: {worst.item}: "
                                   f"{worst.rule}")
                    changed = True
                else:
                    self._report_core(p for p in found if p.fatal)
            if not changed:
                return data
            self.knock_on()
            data = None

    def _store_problem(self, problem: qubesd_load.LoadProblem) -> bool:
        """A store-wide problem: a shard's pool refuses the shard; others are core's."""
        if problem.item.startswith("pool "):
            pool = problem.item[len("pool "):]
            for sid, info in list(self.plan.state["shards"].items()):
                if pool in info.get("pools", ()):
                    self.refuse_shard(sid, f"qubesd would not load its pool {pool}: "
                                      f"{problem.rule}")
                    return True
        self._report_core([problem] if problem.fatal else [])
        return False

    def _report_core(self, problems: Iterable[qubesd_load.LoadProblem]) -> None:
        for problem in problems:
            if problem not in self.reported_core:
                self.reported_core.add(problem)
                self.plan.problems.append(Problem(
                    "error", "invalid", f"core: {problem}; qubesd will not load the core "
                    "store (not a shard's fault: nothing left out for it)"))

    # -- leaving out --------------------------------------------------------------------
    def leave_out(self, name: str, reason: str, kind: str = "invalid") -> None:
        """Take shard qube `name` out of the plan; its shard file keeps it."""
        domain, shard = self.shard_qubes.pop(name)
        qube = self.plan.facts(domain)
        self.domains.remove(domain)
        self.plan.facts.forget(domain)
        info = self.plan.state["shards"].get(shard.id)
        if info is not None and qube.uuid in info["merged"]:
            info["merged"].remove(qube.uuid)
        self.plan.dirs[shard.id] = [d for d in self.plan.dirs.get(shard.id, ()) if d[1] != name]
        self.left_out.add(name)
        self.plan.problems.append(Problem("warning", kind, f"qube {name} of shard {shard.id} "
                                          f"not merged: {reason}; it stays intact in "
                                          f"{shard.file}", shard.id, name))

    def refuse_shard(self, sid: str, reason: str) -> None:
        """Take a whole shard out of the plan (its pools and qubes); its file stays."""
        shard = next(s for s in self.plan.sutured if s.id == sid)
        for name in [n for n, (_, s) in self.shard_qubes.items() if s.id == sid]:
            domain, _ = self.shard_qubes.pop(name)
            self.domains.remove(domain)
            self.plan.facts.forget(domain)
            self.left_out.add(name)
        pools = self.plan.merged.find("pools")
        names = set(self.plan.state["shards"].pop(sid).get("pools", ()))
        for pool in [p for p in pools if p.get("name") in names]:
            pools.remove(pool)
        self.plan.sutured.remove(shard)
        self.plan.dirs.pop(sid, None)
        self.plan.state["refused"] = sorted({*self.plan.state.get("refused", ()), sid})
        self.plan.problems.append(Problem("error", "refused", f"shard {sid} ({shard.path}): "
                                          f"{reason}; not merged", sid))

    def knock_on(self) -> None:
        """Recover (or leave out) the shard qubes that name a qube left out, until none
        does."""
        changed = True
        while changed:
            changed = False
            for name, (domain, shard) in list(self.shard_qubes.items()):
                hit = next(((what, target) for what, target in self.plan.facts(domain).refs
                            if target in self.left_out), None)
                if hit is None:
                    continue
                what, target = hit
                changed = True
                why = None if self.mode == "skip" else recover_reference(
                    self.plan.facts, domain, what, target, shard, self.plan.defaults,
                    [other for other, _ in self.shard_qubes.values()])
                if self.mode == "skip" or why:
                    self.leave_out(name, f"{what} {target!r} was left out"
                                   + (f", and {why}" if why else ""), kind="skipped")
                    continue
                self.plan.problems.append(Problem(
                    "warning", "recovered", f"qube {name} of shard {shard.id}: {what} "
                    f"{target!r} was left out; {describe_recovery(self.plan.facts(domain), what)}, "
                    f"start prohibited until 'reliant-shard review {name}'", shard.id, name))

    # -- the real loader ----------------------------------------------------------------
    def last_word(self, loader: RealLoader, data: bytes, scratch: str) -> bytes:
        """Leave out the shard qubes qubes-core-admin's loader refuses, until it loads."""
        while True:
            verdict = loader.load(data, scratch)
            if verdict.loads is None:
                self.plan.problems.append(Problem("info", "state", "qubes-core-admin's loader "
                                                  f"did not check the store: {verdict.message}"))
                return data
            if verdict.loads:
                return data
            suspects = list(self.shard_qubes)
            keep_none = loader.load(_without(data, set(suspects)), scratch)
            if keep_none.loads is not True:
                self.plan.problems.append(Problem(
                    "error", "invalid", "qubes-core-admin refuses the merged store even "
                    f"without any shard qube ({verdict.message}); the store is written as "
                    "the model of its loader admits it"))
                return data
            low, high = 0, len(suspects)  # keeping suspects[:low] loads, [:high] does not
            while high - low > 1:
                middle = (low + high) // 2
                trial = loader.load(_without(data, set(suspects[middle:])), scratch)
                if trial.loads is True:
                    low = middle
                else:
                    high = middle
            self.leave_out(suspects[high - 1], f"qubes-core-admin refuses the store with it "
                           f"({verdict.message})")
            self.knock_on()
            data = self.settle()


def _without(data: bytes, names: set[str]) -> bytes:
    """The store `data` without the qubes `names` nor, in turn, the qubes naming a qube
    taken out (a trial store for bisection: it answers whether the rest loads)."""
    root = store.parse(data, "merged store")
    domains = root.find("domains")
    gone = set(names)
    changed = True
    while changed:
        changed = False
        for domain in list(domains):
            qube = QubeRecord(domain)
            if qube.name in gone or any(target in gone for _, target in qube.refs):
                domains.remove(domain)
                gone.add(qube.name)
                changed = True
    return store.serialize(root)


# --- dissect: never write a file that would not load ------------------------------------
def loadable_outputs(outputs: list[tuple[str, bytes, int]], *, core_path: str,
                     shards: dict[str, Shard], release: Optional[str]
                     ) -> tuple[list[tuple[str, bytes, int]], list[Problem]]:
    """The outputs of a dissect plan (path, content, mode) that it may write: a core or
    shard file in which the model of qubesd's loader finds a problem the file on disk
    does not have is refused (reported; the previous file stays), and so is, when one
    is refused, every file that would lose a qube (it may have moved to the refused one).
    A shard file is checked with core, its own pools and qubes and its dependencies'."""
    current = {path: store.read_or_none(path) for path, _, _ in outputs}
    new = {path: content for path, content, _ in outputs}
    by_file = {shard.file: shard for shard in shards.values()}

    def now(path: str) -> Optional[bytes]:
        return new[path] if path in new else store.read_or_none(path)

    problems: list[Problem] = []
    refused: set[str] = set()
    for path, content, _ in outputs:
        if current[path] == content:
            continue
        if path == core_path:
            added = _store_problems(content, release) - _store_problems(current[path], release)
            what = "core"
        elif path in by_file:
            shard = by_file[path]
            parts = [now(shards[dep].file) for dep in sorted(deps_closure(shard.id, shards))
                     if dep in shards]
            core = now(core_path)
            added = _shard_problems(content, core, parts, release) - _shard_problems(
                current[path], core, parts, release)
            what = f"shard {shard.id}"
        else:
            continue
        if added:
            refused.add(path)
            problems.append(Problem("error", "unplaceable", f"{path} not written: qubesd would "
                                    f"not load {what} ({sorted(added)[0]}); the previous file "
                                    "stays", None if path == core_path else by_file[path].id))
    if not refused:
        return outputs, problems
    kept = []
    for path, content, mode in outputs:
        if path in refused:
            continue
        if _uuids(current[path]) - _uuids(content):
            problems.append(Problem("error", "unplaceable", f"{path} not written: it would "
                                    "lose qubes while another file of this dissect is refused"))
            continue
        kept.append((path, content, mode))
    return kept, problems


_UUID = re.compile(rb'<property name="uuid">([^<]*)</property>')


def _uuids(data: Optional[bytes]) -> set[bytes]:
    return set(_UUID.findall(data or b""))


def _store_problems(data: Optional[bytes], release: Optional[str]) -> set[str]:
    """What the model finds fatal in a store (in words), empty for no file."""
    if data is None:
        return set()
    return {str(p) for p in qubesd_load.problems(store.parse(data, "store"), release)
            if p.fatal}


def _shard_problems(data: Optional[bytes], core: Optional[bytes], others: list[Optional[bytes]],
                    release: Optional[str]) -> set[str]:
    """What the model finds fatal in a shard file's pools and qubes, with `core` and the
    files of the shards it depends on (`others`) around them."""
    if data is None or core is None:
        return set()
    root = store.parse(core, "core")
    own = store.parse(data, "shard")
    for part in [own, *(store.parse(o, "shard") for o in others if o is not None)]:
        for section in ("pools", "domains"):
            root.find(section).extend(copy.deepcopy(part.findall(f"{section}/*")))
    names = {QubeRecord(d).name for d in own.iterfind("domains/domain")}
    pools = [p.get("name") for p in own.iterfind("pools/pool")]
    context = qubesd_load.StoreContext(root, release)
    found = [p for pool in root.iterfind("pools/pool") if pool.get("name") in pools
             for p in qubesd_load.check_pool(pool)]
    for domain in context.domains:
        if QubeRecord(domain).name in names:
            found += qubesd_load.check_domain(domain, context)
    return {str(p) for p in found if p.fatal}
