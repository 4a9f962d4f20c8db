"""Adopt and release: move existing qubes between core and a shard, offline
(`reliant.adopt_plan` says what moves and refuses what may not).

Writes go gaining side first (docs/design/writing-safely.md), under the lock of suture
and dissect: adopt saves the dom0 directories into the shard, writes the shard file,
then core, then removes the directories from dom0's qubes directory and the qubes'
libvirt definitions and autostart links (`reliant.shards.traces`: they travel with the
shard); release copies the directories back, writes core, then the shard file, removes
the shard's copies and links the released qubes' autostart again. A crash between two
writes leaves the qube in both files: suture merges core's copy, and a rerun finishes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Optional

from reliant import store
from reliant.adopt_plan import MovePlan, plan_adopt, plan_release
from reliant.operations import Result
from reliant.shards.dom0dirs import (
    ASIDE,
    QUBES_DIR,
    entries,
    release_dom0_dirs,
    restore_dom0_dirs,
    save_dom0_dirs,
)
from reliant.shards.files import DOM0_DIR, Shard, discover
from reliant.shards.records import QubeRecord
from reliant.shards.runtime import default_state_path, operation_lock
from reliant.shards.traces import Traces, autostart_qubes
from reliant.vocab import Problem, ShardError


def _move(plan_move: Callable[..., MovePlan], core: str, roots: Sequence[str],
          names: Sequence[str], shard_id: Optional[str], merged: str, qubes_dir: str,
          max_depth: int, traces: Optional[Traces]) -> Result:
    """Plan under the operation lock, then write in the order of the module docstring."""
    adopting = plan_move is plan_adopt
    what = "adopt" if adopting else "release"
    with operation_lock(default_state_path(merged)):
        problems: list[Problem] = []
        shards = discover(roots, max_depth, problems)
        core_root = store.load(core)
        shard_id = shard_id or _holder(shards, names)
        if shard_id is None:  # a release that finished but for its last fsync, rerun
            missing = set(names) - {QubeRecord(d).name
                                    for d in core_root.iterfind("domains/domain")}
            if missing:
                raise ShardError(f"no visible shard holds {', '.join(sorted(missing))}")
            problems.append(Problem("info", "state", f"{', '.join(names)}: in core already, "
                                    "nothing to release"))
            return Result(problems)
        plan = plan_move(core_root, shards, shard_id, names, core)
        shard = plan.shard
        problems += plan.problems
        saved = os.path.join(shard.path, DOM0_DIR)
        if adopting:
            save_dom0_dirs(shard, plan.dirs, entries(saved) | set(plan.dirs), qubes_dir,
                           problems)
            order = ((shard.file, plan.shard_file, 0o600), (core, plan.core, 0o660))
        else:
            restore_dom0_dirs(shard, plan.dirs, qubes_dir, problems)
            order = ((core, plan.core, 0o660), (shard.file, plan.shard_file, 0o600))
        errors = [p.message for p in problems if p.severity == "error" and p.shard == shard.id]
        if errors:
            raise ShardError(f"{what} refused, nothing written:\n  " + "\n  ".join(errors))
        written = [path for path, data, mode in order if store.write(path, data, mode=mode)]
        release_dom0_dirs(plan.dirs, qubes_dir if adopting else saved)
        moved = [name for _, name in plan.dirs]
        if traces is not None and adopting:
            written += traces.remove(moved, problems)
        elif traces is not None:
            written += traces.restore_autostart(autostart_qubes(plan.core, moved, core),
                                                problems)
    return Result(problems, written, [shard])


def adopt(core: str, roots: Sequence[str], names: Sequence[str], shard_id: str, *,
          merged: str, qubes_dir: str = QUBES_DIR, max_depth: int = 3,
          traces: Optional[Traces] = None) -> Result:
    """Move core qubes into shard `shard_id` (see `plan_adopt`); with `traces`, their
    libvirt definitions and autostart links go. Offline: qubesd must not run. Holds the
    operation lock of suture and dissect (beside `merged`)."""
    return _move(plan_adopt, core, roots, names, shard_id, merged, qubes_dir, max_depth,
                 traces)


def release(core: str, roots: Sequence[str], names: Sequence[str],
            shard_id: Optional[str] = None, *, merged: str, qubes_dir: str = QUBES_DIR,
            max_depth: int = 3, traces: Optional[Traces] = None) -> Result:
    """Move shard qubes into core (see `plan_release`); without `shard_id`, the shard
    holding `names`; with `traces`, the autostart links of those with autostart set
    are made. Offline, like `adopt`."""
    return _move(plan_release, core, roots, names, shard_id, merged, qubes_dir, max_depth,
                 traces)


def _holder(shards: Sequence[Shard], names: Sequence[str]) -> Optional[str]:
    """The one shard holding `names`, or else the saved dom0 directories of some of them
    (a release interrupted before it removed those, or while it did)."""
    holders = {s.id for s in shards for d in s.domains if QubeRecord(d).name in names}
    if not holders:
        left = set(names) | {f".{name}{ASIDE}" for name in names}
        holders = {s.id for s in shards for _, name in entries(os.path.join(s.path, DOM0_DIR))
                   if name in left}
    if len(holders) > 1:
        raise ShardError(f"say which shard with --shard (shards holding these qubes: "
                         f"{', '.join(sorted(holders))})")
    return holders.pop() if holders else None
