"""Execution module: shards of qubes.xml (thin wrappers over reliant_shards and reliant_declare).

Settings come from the reliant-shard configuration (``/etc/reliant/reliant.json``,
written by the ``reliant.shards`` state; ``config=PATH`` names another one), and any
of ``core``, ``merged``, ``roots`` (list or comma-separated), ``max_depth`` given as
arguments override it. Refusals raise CommandExecutionError with the library's
message (salt-call exits 1). Offline operations (suture, dissect final=True, rename,
review) refuse while qubesd runs, as the CLI does.

CLI Examples::

    salt-call reliant_shard.status
    salt-call reliant_shard.check
    salt-call reliant_shard.declarations
    salt-call reliant_shard.init /run/shufflecake/VOLUME qid_range=1000-1499
    salt-call reliant_shard.rename work work-hidden
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path

# isort: split
import reliant.cli
import reliant.config
import reliant.declare
import reliant.operations
import reliant.shards.files
import reliant.shards.runtime
import reliant.store
import reliant.vocab
from salt.exceptions import CommandExecutionError

__virtualname__ = "reliant_shard"
# an OSError's message names its path
REFUSALS = (reliant.vocab.ShardError, reliant.store.StoreError, reliant.cli.UsageError, OSError)


def __virtual__():
    return reliant.config.virtual(__virtualname__, __opts__)


def settings(config: Optional[str] = None, **overrides: Any) -> dict:
    """The reliant-shard settings: its configuration file, then `overrides` that are set.

    CLI Example: ``salt-call reliant_shard.settings roots=/run/shufflecake,/mnt/hidden``
    """
    path = config or os.environ.get("RELIANT_CONFIG", reliant.cli.CONFIG_PATH)
    try:
        found = reliant.cli.load_config(path)
    except reliant.cli.UsageError as exc:
        raise CommandExecutionError(str(exc)) from None
    for key in ("core", "merged", "roots", "max_depth"):
        value = overrides.get(key)
        if value is not None:
            found[key] = value
    if isinstance(found["roots"], str):
        found["roots"] = [root for root in found["roots"].split(",") if root]
    return found


def _problems(problems: list) -> list[dict]:
    return [dataclasses.asdict(problem) for problem in problems]


def _result(result: reliant.operations.Result) -> dict:
    return {"written": result.written, "shards": [shard.id for shard in result.shards],
            "problems": _problems(result.problems), "errors": len(result.errors)}


def _refuse_if_qubesd_runs(what: str) -> None:
    if reliant.cli.Host().qubesd_active():
        raise CommandExecutionError(f"qubesd is running: {what} needs it stopped")


def status(config: Optional[str] = None, **overrides: Any) -> dict:
    """What is visible and merged, conflicts and recovered qubes (as ``reliant-shard status``).

    CLI Example: ``salt-call reliant_shard.status``
    """
    found = settings(config, **overrides)
    try:
        return reliant.operations.status(found["core"], found["merged"], found["roots"],
                                     max_depth=found["max_depth"])
    except REFUSALS as exc:
        raise CommandExecutionError(str(exc)) from None


def check(config: Optional[str] = None, **overrides: Any) -> dict:
    """What suture would report, writing nothing; ``ok`` is False on any warning or error.

    CLI Example: ``salt-call reliant_shard.check``
    """
    found = settings(config, **overrides)
    try:
        detached = reliant.shards.runtime.read_detached(
            reliant.shards.runtime.default_detached_path(found["merged"]))
        result = reliant.operations.check(found["core"], found["roots"],
                                      max_depth=found["max_depth"],
                                      missing_reference=found["missing_reference"],
                                      detached=detached,
                                      dom0_dir_max_bytes=found["dom0_dir_max_bytes"])
    except REFUSALS as exc:
        raise CommandExecutionError(str(exc)) from None
    report = _result(result)
    report["ok"] = all(problem.severity == "info" for problem in result.problems)
    return report


def suture(config: Optional[str] = None, **overrides: Any) -> dict:
    """Write the merged store from core and the visible shards (qubesd must be stopped).

    CLI Example: ``salt-call reliant_shard.suture``
    """
    found = settings(config, **overrides)
    _refuse_if_qubesd_runs("suture")
    try:
        detached = reliant.shards.runtime.read_detached(
            reliant.shards.runtime.default_detached_path(found["merged"]))
        result = reliant.operations.suture(
            found["core"], found["roots"], found["merged"], max_depth=found["max_depth"],
            missing_reference=found["missing_reference"],
            policy_dir=found["policy_dir"] or None, services=found["services"],
            qubes_dir=found["qubes_dir"], detached=detached,
            dom0_dir_max_bytes=found["dom0_dir_max_bytes"])
    except REFUSALS as exc:
        raise CommandExecutionError(str(exc)) from None
    return _result(result)


def dissect(final: bool = False, config: Optional[str] = None, **overrides: Any) -> dict:
    """Write core and each merged shard back from the merged store (`final`: qubesd has
    stopped, move shard qubes' dom0 directories into their shards).

    CLI Example: ``salt-call reliant_shard.dissect``
    """
    found = settings(config, **overrides)
    if final:
        _refuse_if_qubesd_runs("dissect final=True")
    try:
        result = reliant.operations.dissect(found["merged"], found["core"], found["roots"],
                                        max_depth=found["max_depth"],
                                        qubes_dir=found["qubes_dir"], final=final)
    except REFUSALS as exc:
        raise CommandExecutionError(str(exc)) from None
    if result.errors:
        raise CommandExecutionError("; ".join(str(problem) for problem in result.errors))
    return _result(result)


def init(directory: str, qid_range: Optional[str] = None, depends_on: Any = None,
         shard_id: Optional[str] = None, config: Optional[str] = None,
         **overrides: Any) -> dict:
    """Create an empty shard in `directory` (as ``reliant-shard init``).

    CLI Example: ``salt-call reliant_shard.init /run/shufflecake/VOLUME qid_range=1000-1499``
    """
    found = settings(config, **overrides)
    if isinstance(depends_on, str):
        depends_on = [dep for dep in depends_on.split(",") if dep]
    try:
        shard = reliant.shards.files.init_shard(
            directory, reliant.shards.files.parse_range(qid_range) if qid_range else None,
            depends_on or (), shard_id, found["roots"], found["max_depth"])
    except REFUSALS as exc:
        raise CommandExecutionError(str(exc)) from None
    return {"id": shard.id, "path": shard.path,
            "qid_range": f"{shard.qid_range[0]}-{shard.qid_range[1]}",
            "depends_on": list(shard.depends_on)}


def rename(qube: str, new: str, shard: Optional[str] = None, config: Optional[str] = None,
           **overrides: Any) -> dict:
    """Rename a shard qube, e.g. one whose name a core qube took (qubesd must be stopped).

    CLI Example: ``salt-call reliant_shard.rename work work-hidden``
    """
    found = settings(config, **overrides)
    _refuse_if_qubesd_runs("rename")
    try:
        result = reliant.operations.rename_qube(found["roots"], qube, new, core=found["core"],
                                            shard_id=shard, max_depth=found["max_depth"])
    except REFUSALS as exc:
        raise CommandExecutionError(str(exc)) from None
    return _result(result)


def review(qube: str, shard: Optional[str] = None, config: Optional[str] = None,
           **overrides: Any) -> dict:
    """Accept a recovered qube: clear the prohibit-start set by suture (qubesd stopped).

    CLI Example: ``salt-call reliant_shard.review mail``
    """
    found = settings(config, **overrides)
    _refuse_if_qubesd_runs("review")
    try:
        result = reliant.operations.review_qube(found["roots"], qube, shard_id=shard,
                                            max_depth=found["max_depth"])
    except REFUSALS as exc:
        raise CommandExecutionError(str(exc)) from None
    return _result(result)


def declarations(config: Optional[str] = None, **overrides: Any) -> list:
    """The shards declared on the open volumes (``reliant-shard.json`` in a directory under
    the roots) and what converging each would change, or why it is refused. Printed to
    the terminal only: Salt caches no execution-module result unless ``cache_jobs`` is set.

    CLI Example: ``salt-call reliant_shard.declarations``
    """
    found = settings(config, **overrides)
    problems: list[str] = []
    declared = reliant.declare.find_declarations(found["roots"], found["max_depth"], problems)
    report: list[dict] = []
    for outcome in reliant.declare.converge(declared, found["core"], found["roots"],
                                            found["max_depth"], dry_run=True):
        wanted = outcome.declaration
        entry: dict[str, Any] = {
            "directory": wanted.path, "qid_range": "{}-{}".format(*wanted.qid_range),
            "depends_on": list(wanted.depends_on), "id": wanted.shard_id}
        if outcome.error:
            entry["error"] = outcome.error
        else:
            entry.update(action=outcome.plan.action, old=outcome.plan.old,
                         new=outcome.plan.new)
        report.append(entry)
    report += [{"error": problem} for problem in problems]
    return report
