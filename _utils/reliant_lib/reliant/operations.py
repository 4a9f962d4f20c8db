"""Operations on the files: `suture`, `dissect`, `check`, `status`, `rename_qube` and
`review_qube`, each reading and writing core, the shards under the roots, the merged
store and the runtime files beside it (the plans are in `reliant.shards`).

suture writes the runtime qrexec policy (`reliant.isolation.policy`) before the merged
store; check and suture report the qubes whose default disposable is in another group
(`isolation_problems`).

One shard's failure stays that shard's: a shard whose dom0 directories cannot be copied
at suture, or that would make the merged store too large, is left out and the plan made
again without it; a shard that cannot be written at dissect (read-only, full, gone)
keeps its earlier files and its changes stay only in the merged store (reported as
unplaceable), and core is written all the same.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lxml import etree

from reliant import chunks as chunking
from reliant import store
from reliant.isolation import guard, policy
from reliant.shards.admission import admit, loadable_outputs
from reliant.shards.confine import PoolFacts, renamed_vid
from reliant.shards.dissect import DissectPlan, plan_dissect
from reliant.shards.dom0dirs import MAX_BYTES as DOM0_DIR_MAX_BYTES
from reliant.shards.dom0dirs import (
    QUBES_DIR,
    entries,
    real_dir,
    recover_qubes_dir,
    release_dom0_dirs,
    restore_dom0_dirs,
    save_dom0_dirs,
    saved_dir_refusal,
)
from reliant.shards.files import (
    DOM0_DIR,
    SHARD_ELEMENT,
    Shard,
    deps_closure,
    discover,
)
from reliant.shards.real_loader import RealLoader, dom0_release
from reliant.shards.records import (
    QubeRecord,
    dom0_subdir,
    properties,
    qube_name,
    strip_reliant_tags,
)
from reliant.shards.runtime import default_state_path, operation_lock, read_state, write_state
from reliant.shards.startup import fallback
from reliant.shards.stubs import (
    Stubs,
    load_core,
    memo_group,
    memo_group_of,
    memo_version,
    merged_chunks,
    read_in_chunks,
    read_merged,
)
from reliant.shards.suture import (
    PROHIBIT_START,
    RATIONALE_PREFIX,
    RECOVERED_PREFIX,
    SuturePlan,
    plan_suture,
)
from reliant.shards.traces import Traces, autostart_qubes
from reliant.vocab import CORE, DOMAIN_REFERENCES, Problem, ShardError, shard_tag, valid_qube_name


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


def suture(core: str, roots: Sequence[str], out: str, *, max_depth: int = 3,
           missing_reference: str = "recover", policy_dir: Optional[str] = None,
           services: Optional[list[str]] = None, qubes_dir: str = QUBES_DIR,
           state_path: Optional[str] = None, detached: Iterable[str] = (),
           dom0_dir_max_bytes: int = DOM0_DIR_MAX_BYTES, hold_shards: Sequence[Problem] = (),
           traces: Optional[Traces] = None, release: Optional[str] = None,
           real_loader: Optional[RealLoader] = None) -> Result:
    """Write the merged store `out` from `core` and the shards under `roots`.

    Only what qubesd loads is merged (`reliant.shards.admission`: the model of its
    loader for `release`, default dom0's, then `real_loader` if given).

    Reads core and shards, never writes them. Order: runtime policy (if `policy_dir`;
    then the `isolation_problems` of the merged store are reported too),
    dom0 directories back into `qubes_dir` (at most `dom0_dir_max_bytes` each), old
    runtime state removed, merged store, autostart links of merged shard qubes (if
    `traces`), new state. ShardError (nothing merged) if core is unusable or the policy
    cannot be written. `hold_shards`: why no shard may be merged now (the volatile
    interlock, isolation without a runtime policy directory): core alone is merged, they
    are reported and each visible shard is
    reported refused (dissect leaves it untouched).
    """
    state_path = state_path or default_state_path(out)
    with operation_lock(state_path), _without_gc():
        return _suture(core, roots, out, max_depth, missing_reference, policy_dir, services,
                       qubes_dir, state_path, detached, dom0_dir_max_bytes, hold_shards,
                       traces, release or dom0_release(), real_loader)


def _plan_suture(core: str, roots: Sequence[str], max_depth: int, missing_reference: str,
                 detached: Iterable[str], known: Any, dom0_dir_max_bytes: int,
                 left_out: dict[str, str], hold_shards: Sequence[Problem]
                 ) -> tuple[SuturePlan, list[Problem]]:
    """Read core and the shards and plan the merge without the shards `left_out` (id ->
    why) or, with `hold_shards`, without any shard; those are reported and recorded as
    refused."""
    problems: list[Problem] = []
    stubs = Stubs()
    core_root = load_core(core, known, stubs)
    shards = discover(roots, max_depth, problems)
    held = shards if hold_shards else []
    if held:
        problems += hold_shards
        why = ", ".join(hold.kind for hold in hold_shards)
        problems += [Problem("error", "refused", f"shard {shard.id} ({shard.path}) is not "
                             f"merged ({why}: see above)", shard.id) for shard in held]
        shards = []
    for shard in shards:
        if shard.id in left_out:
            problems.append(Problem("error", "refused", f"shard {shard.id} ({shard.path}): "
                                    f"{left_out[shard.id]}; not merged", shard.id))
            continue
        root = read_in_chunks(shard.data, SHARD_ELEMENT, [(shard_tag(shard.id),)], known,
                               stubs, shard.file)
        if root is not None:
            with contextlib.suppress(store.StoreError):  # reported when parsed
                shard.use_root(root)
    plan = plan_suture(core_root, [s for s in shards if s.id not in left_out],
                       core_source=core, missing_reference=missing_reference,
                       detached=detached, stubs=stubs, core_bytes=os.path.getsize(core),
                       saved_dir_refusal=lambda shard, subdir, name: saved_dir_refusal(
                           shard, subdir, name, dom0_dir_max_bytes))
    plan.state["refused"] = sorted(set(plan.state["refused"]) | set(left_out)
                                   | {shard.id for shard in held})
    return plan, problems + plan.problems


def _restore_all(plan: SuturePlan, qubes_dir: str, max_bytes: int, problems: list[Problem],
                 left_out: dict[str, str]) -> bool:
    """Copy the saved dom0 directories of the merged shards into `qubes_dir`; False when
    one shard's cannot be (it joins `left_out`, what was copied of it is removed)."""
    for shard in plan.sutured:
        present = entries(qubes_dir)
        try:
            restore_dom0_dirs(shard, plan.dirs[shard.id], qubes_dir, problems, max_bytes)
        except OSError as exc:
            left_out[shard.id] = ("its dom0 directories cannot be copied: "
                                  f"{store.os_message(exc)}")
            recover_qubes_dir(qubes_dir)
            release_dom0_dirs([q for q in plan.dirs[shard.id] if q not in present], qubes_dir)
            return False
    return True


def _suture(core: str, roots: Sequence[str], out: str, max_depth: int,
            missing_reference: str, policy_dir: Optional[str], services: Optional[list[str]],
            qubes_dir: str, state_path: str, detached: Iterable[str],
            dom0_dir_max_bytes: int, hold_shards: Sequence[Problem],
            traces: Optional[Traces], release: str,
            real_loader: Optional[RealLoader]) -> Result:
    known = merged_chunks(chunking.Memo(chunking.memo_dir(state_path),
                                               memo_version()))
    recover_qubes_dir(qubes_dir)
    present = entries(qubes_dir)
    wanted: list[tuple[str, str]] = []  # dom0 directories of every plan made
    left_out: dict[str, str] = {}
    scratch = os.path.dirname(os.path.abspath(out))  # tmpfs beside the merged store
    try:
        while True:
            plan, problems = _plan_suture(core, roots, max_depth, missing_reference, detached,
                                          known, dom0_dir_max_bytes, left_out, hold_shards)
            data = plan.facts.expand(store.serialize(plan.merged))
            if len(data) > store.MAX_BYTES and plan.sutured:  # the largest shard goes
                left_out[max(plan.sutured, key=lambda shard: len(shard.data)).id] = (
                    f"the merged store would be {len(data)} bytes, more than the "
                    f"{store.MAX_BYTES} dissect reads back")
                continue
            os.makedirs(scratch, mode=0o755, exist_ok=True)
            before = len(plan.problems)
            data = admit(plan, release=release, missing_reference=missing_reference,
                         loader=real_loader, scratch=scratch, data=data)
            problems += plan.problems[before:]
            if policy_dir is not None:
                try:
                    policy.write_runtime_policy(policy_dir, plan.merged, services,
                                                record=plan.facts)
                except Exception as exc:  # any failure: do not start qubesd without isolation
                    raise ShardError(f"runtime qrexec policy in {policy_dir} not written "
                                     f"({exc}); merged store not written") from None
                problems += isolation_problems(plan.merged, plan.facts)  # what policy denies
            wanted += [qube for shard in plan.sutured for qube in plan.dirs[shard.id]]
            if _restore_all(plan, qubes_dir, dom0_dir_max_bytes, problems, left_out):
                break
        final = {qube for shard in plan.sutured for qube in plan.dirs[shard.id]}
        release_dom0_dirs({q for q in wanted if q not in present and q not in final}, qubes_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_path)
        try:  # the memo of dissect keeps only what is merged now
            chunking.keep_groups(chunking.memo_dir(state_path), [memo_group(CORE)]
                                       + [memo_group(shard.id) for shard in plan.sutured])
        except OSError as exc:
            problems.append(Problem("error", "state", f"dissect memo beside {state_path} not "
                                    f"pruned ({exc}): remove it"))
        written = []
        if store.write(out, data, mode=0o660):
            written.append(out)
        if traces is not None:
            _restore_autostart(plan.sutured, plan.dirs, traces, problems)
        plan.state["problems"] = [asdict(p) for p in problems]
        write_state(state_path, plan.state)
    except BaseException:
        # qubesd will not start: take back the shard qubes' directories copied out
        with contextlib.suppress(OSError):
            recover_qubes_dir(qubes_dir)
            release_dom0_dirs([q for q in wanted if q not in present], qubes_dir)
        raise
    return Result(problems, written, plan.sutured)


def _restore_autostart(sutured: Sequence[Shard], dirs: dict[str, list[tuple[str, str]]],
                       traces: Traces, problems: list[Problem]) -> None:
    for shard in sutured:
        try:
            names = autostart_qubes(shard.data, [name for _, name in dirs[shard.id]],
                                    shard.file)
        except store.StoreError as exc:
            problems.append(Problem("warning", "traces", f"shard {shard.id}: autostart not "
                                    f"read ({exc})", shard.id))
            continue
        traces.restore_autostart(names, problems)


def dissect(merged: str, core: str, roots: Sequence[str], *, max_depth: int = 3,
            qubes_dir: str = QUBES_DIR, state_path: Optional[str] = None,
            final: bool = False, traces: Optional[Traces] = None,
            release: Optional[str] = None) -> Result:
    """Write core and every merged shard back from the merged store (only files whose
    content changed). With `final` (qubesd stopped), the dom0 directories of shard
    qubes leave `qubes_dir` once saved in their shard, and (with `traces`) shard qubes
    are undefined in libvirt and lose their autostart links.

    Order: dom0 directories into shards, runtime state, shard files gaining qubes,
    those losing qubes, core, then (final) removal of saved directories and traces. A
    file the model of qubesd's loader (for `release`, default dom0's) says would not load
    is not written (`reliant.shards.admission.loadable_outputs`).
    """
    state_path = state_path or default_state_path(merged)
    with operation_lock(state_path), _without_gc():
        return _dissect(merged, core, roots, max_depth, qubes_dir, state_path, final, traces,
                        release or dom0_release())


def _plan_dissect(merged: str, core: str, roots: Sequence[str], max_depth: int,
                  state_path: str, memo: chunking.Memo, unwritable: dict[str, str]
                  ) -> tuple[DissectPlan, Optional[list[bytes]], list[Problem]]:
    problems: list[Problem] = []
    stubs = Stubs()
    merged_root, chunks = read_merged(merged, memo, stubs)
    core_root = load_core(core) if os.path.lexists(core) else None
    shards = discover(roots, max_depth, problems)
    plan = plan_dissect(merged_root, core_root, shards, read_state(state_path),
                        core_path=core, roots=roots, stubs=stubs, unwritable=unwritable)
    return plan, chunks, problems + plan.problems


def _write_shards(plan: DissectPlan, qubes_dir: str, state_path: str,
                  problems: list[Problem]) -> tuple[list[str], list[str], Optional[tuple[str, str]]]:
    """dom0 directories into the shards, the runtime state, then the shard files (those
    gaining qubes first); (ids of shards whose directories were saved, files written,
    (id, why) of the first shard that could not be written, else None)."""
    saved = []
    for sid, shard in plan.shards.items():
        try:
            save_dom0_dirs(shard, plan.dirs[sid], plan.keep_dirs[sid], qubes_dir, problems)
        except OSError as exc:
            return saved, [], (sid, f"its dom0 directories: {store.os_message(exc)}")
        saved.append(sid)
    write_state(state_path, plan.state)
    owner = {shard.file: sid for sid, shard in plan.shards.items()}
    written = []
    for path, content, mode in plan.outputs:
        if path not in owner:
            continue
        try:
            if store.write(path, content, mode=mode):
                written.append(path)
        except store.StoreError as exc:
            return saved, written, (owner[path], str(exc))
    return saved, written, None


def _dissect(merged: str, core: str, roots: Sequence[str], max_depth: int, qubes_dir: str,
             state_path: str, final: bool, traces: Optional[Traces], release: str) -> Result:
    memo = chunking.Memo(chunking.memo_dir(state_path), memo_version())
    recover_qubes_dir(qubes_dir)
    unwritable: dict[str, str] = {}
    written: list[str] = []
    while True:  # a shard that cannot be written: plan again without it
        plan, chunks, problems = _plan_dissect(merged, core, roots, max_depth, state_path,
                                               memo, unwritable)
        if any(p.kind in ("violation", "unplaceable") for p in plan.problems):
            # the plan changed what qubesd saved (qubesd loaded it, then checked each
            # change): only then may a file hold what would not load
            plan.outputs, refused = loadable_outputs(plan.outputs, core_path=core,
                                                     shards=plan.shards, release=release)
            problems += refused
        saved, done, failed = _write_shards(plan, qubes_dir, state_path, problems)
        written += [path for path in done if path not in written]
        if failed is None:
            break
        unwritable[failed[0]] = failed[1]
    for core_path, core_content, core_mode in plan.outputs[-1:]:
        if core_path == core and store.write(core_path, core_content, mode=core_mode):
            written.append(core_path)
    try:  # the memo only saves time: not saving it fails nothing
        if chunks is not None:
            memo.save(chunks, memo_group_of)
        else:
            chunking.clear(memo.directory)
    except OSError as exc:
        problems.append(Problem("warning", "state", f"dissect memo in {memo.directory} not "
                                f"saved ({exc}); the next dissect reads the whole store"))
        with contextlib.suppress(OSError):
            chunking.clear(memo.directory)
    if final:
        for sid in saved:
            try:
                release_dom0_dirs(plan.dirs[sid], qubes_dir)
            except OSError as exc:  # saved in the shard: only a trace stays behind
                problems.append(Problem("error", "state", f"dom0 directories of shard {sid} "
                                        f"not all removed: {store.os_message(exc)}", sid))
        if traces is not None:
            traces.remove(sorted({name for sid in plan.shards for _, name in plan.dirs[sid]}),
                          problems)
    return Result(problems, written, list(plan.shards.values()))


def check(core: str, roots: Sequence[str], *, max_depth: int = 3,
          missing_reference: str = "recover", detached: Iterable[str] = (),
          dom0_dir_max_bytes: int = DOM0_DIR_MAX_BYTES, release: Optional[str] = None,
          real_loader: Optional[RealLoader] = None, scratch: Optional[str] = None) -> Result:
    """What suture would report, and the isolation problems of the merged store it
    would write (`isolation_problems`), writing nothing (`real_loader` loads copies in
    private directories under `scratch`, which must be on tmpfs)."""
    problems: list[Problem] = []
    shards = discover(roots, max_depth, problems)
    plan = plan_suture(load_core(core), shards, core_source=core,
                       missing_reference=missing_reference, detached=detached,
                       core_bytes=os.path.getsize(core),
                       saved_dir_refusal=lambda shard, subdir, name: saved_dir_refusal(
                           shard, subdir, name, dom0_dir_max_bytes))
    if real_loader is not None and scratch is not None:
        os.makedirs(scratch, mode=0o755, exist_ok=True)
    admit(plan, release=release or dom0_release(), missing_reference=missing_reference,
          loader=real_loader, scratch=scratch)
    return Result(problems + plan.problems + isolation_problems(plan.merged, plan.facts), [],
                  plan.sutured)


def isolation_problems(merged_root: etree._Element,
                       record: Optional[Callable[[etree._Element], QubeRecord]] = None
                       ) -> list[Problem]:
    """A warning (kind ``isolation``) for each qube of a merged store whose default
    disposable is in another group: the runtime policy denies its @dispvm calls
    (`record`: the plan's records of its domains)."""
    try:
        found = guard.cross_group_dispvm_qubes(merged_root, record)
    except guard.GuardError as exc:
        return [Problem("error", "isolation", f"merged store: {exc}")]
    prefix = shard_tag("")
    return [Problem("warning", "isolation", str(cross),
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
                              "fallback": fallback(merged),
                              "problems": [asdict(p) for p in problems]
                              + list(state.get("problems", []))}
    for shard in shards:
        entry = {"id": shard.id, "path": shard.path, "qid_range": list(shard.qid_range),
                 "depends_on": list(shard.depends_on), "merged": shard.id in state["shards"]}
        try:
            entry["qubes"] = sorted(qube_name(d) for d in shard.domains)
            entry["pools"] = shard.pools
        except (store.StoreError, ShardError) as exc:
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
        strip_reliant_tags(domain)
    data = store.serialize(shard.root)
    written = store.write(shard.file, data, mode=0o600)
    shard.data = data
    return written


def _rename_snapshot_vids(domain: etree._Element, old: str, new: str, shard: Shard,
                          pools: Iterable[etree._Element]) -> None:
    """Snapshots of the renamed qube outside its shard take the vids qubesd gives the new
    name (`reliant.shards.confine.volume_problem` wants them so); its own files keep theirs."""
    facts = {p.get("name"): PoolFacts.of(p.attrib) for p in pools}
    for volume in domain.iterfind("volume-config/volume"):
        pool = facts.get(volume.get("pool"))
        if (pool is None or pool.name in shard.pools or volume.get("snap_on_start") != "True"
                or not volume.get("vid")):
            continue
        volume.set("vid", renamed_vid(pool, domain.get("class") or "", volume.get("name") or "",
                                      volume.get("vid"), old, new))


def rename_qube(roots: Sequence[str], name: str, new: str, *, core: str,
                shard_id: Optional[str] = None, max_depth: int = 3) -> Result:
    """Rename a shard qube (e.g. to resolve a name conflict with core), with the
    references to it in its shard and the shards depending on it, and its saved dom0
    directory. Offline: qubesd must not be running on these files. Both names are
    checked first: the old one comes from a shard file and names a directory."""
    for candidate in (name, new):
        if not valid_qube_name(candidate):
            raise ShardError(f"{candidate!r} is not a valid qube name")
    shard, domain, shards = _find_qube(roots, name, shard_id, max_depth)
    core_root = load_core(core)
    taken = {qube_name(d) for d in core_root.iterfind("domains/domain")}
    for other in shards:
        taken |= {qube_name(d) for d in other.domains}
    if new in taken:
        raise ShardError(f"a qube named {new!r} already exists in core or a visible shard")
    by_id = {s.id: s for s in shards}
    affected = [shard] + [s for s in shards if shard.id in deps_closure(s.id, by_id)]
    properties(domain)["name"].text = new
    _rename_snapshot_vids(domain, name, new, shard,
                          [*core_root.iterfind("pools/pool"),
                           *(p for s in shards for p in s.pool_elements)])
    for other in affected:
        for qube in other.domains:
            for prop in properties(qube).values():
                if prop.get("name") in DOMAIN_REFERENCES and prop.text == name:
                    prop.text = new
            for device in qube.iterfind("devices/device"):
                if device.get("backend-domain") == name:
                    device.set("backend-domain", new)
    subdir = dom0_subdir(QubeRecord(domain))
    saved = os.path.join(shard.path, DOM0_DIR, subdir, name)
    written = [s.file for s in affected if _rewrite(s)]
    if real_dir(saved):
        os.rename(saved, os.path.join(shard.path, DOM0_DIR, subdir, new))
        store.fsync_dir(os.path.dirname(saved))
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
