"""Execution module: shards of qubes.xml (thin wrappers over reliant.commands and reliant.declare).

Settings come from the reliant-shard configuration (``/etc/reliant/reliant.json``,
written by the ``reliant.shards`` state; ``config=PATH`` names another one), and any
of ``core``, ``merged``, ``roots`` (list or comma-separated), ``max_depth`` given as
arguments override it. Refusals raise CommandExecutionError with the library's
message (salt-call exits 1). Offline operations (suture, dissect final=True, rename,
review) refuse while qubesd runs, as the CLI does. Off the volatile root, suture merges
core alone unless ``require_volatile`` is false (reliant.volatile.interlock); status
reports the root's mode and warns.

CLI Examples::

    salt-call reliant_shard.status
    salt-call reliant_shard.check
    salt-call reliant_shard.declarations
    salt-call reliant_shard.init /run/shufflecake/VOLUME qid_range=1000-1499
    salt-call reliant_shard.rename work work-hidden
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path
import reliant_salt

# isort: split
import reliant.commands
import reliant.config
import reliant.declare
import reliant.operations
import reliant.shards.files
from salt.exceptions import CommandExecutionError

__virtualname__ = "reliant_shard"
#: Settings an argument may set.
OVERRIDES = ("core", "merged", "roots", "max_depth")


def __virtual__():
    return reliant.config.virtual(__virtualname__, __opts__)


def _refusals():
    """Refusals of the library as Salt's CommandExecutionError."""
    return reliant_salt.salt_errors(*reliant.commands.REFUSALS)


def settings(config: Optional[str] = None, **overrides: Any) -> dict:
    """The reliant-shard settings: its configuration file, then `overrides` that are set.

    CLI Example: ``salt-call reliant_shard.settings roots=/run/shufflecake,/mnt/hidden``
    """
    with _refusals():
        return reliant.commands.settings(config, {key: overrides.get(key) for key in OVERRIDES})


def _result(result: reliant.operations.Result) -> dict:
    return {"written": result.written, "shards": [shard.id for shard in result.shards],
            "problems": [dataclasses.asdict(problem) for problem in result.problems],
            "errors": len(result.errors)}


def status(config: Optional[str] = None, **overrides: Any) -> dict:
    """What is visible and merged, conflicts and recovered qubes (as ``reliant-shard status``).

    CLI Example: ``salt-call reliant_shard.status``
    """
    found = settings(config, **overrides)
    with _refusals():
        return reliant.commands.status(found, reliant.commands.Host())


def check(config: Optional[str] = None, **overrides: Any) -> dict:
    """What suture would report, writing nothing; ``ok`` is False on any warning or error.

    CLI Example: ``salt-call reliant_shard.check``
    """
    found = settings(config, **overrides)
    with _refusals():
        result = reliant.commands.check(found)
    report = _result(result)
    report["ok"] = all(problem.severity == "info" for problem in result.problems)
    return report


def suture(config: Optional[str] = None, **overrides: Any) -> dict:
    """Write the merged store from core and the visible shards (qubesd must be stopped).

    CLI Example: ``salt-call reliant_shard.suture``
    """
    found = settings(config, **overrides)
    with _refusals():
        return _result(reliant.commands.suture(found, reliant.commands.Host()))


def dissect(final: bool = False, config: Optional[str] = None, **overrides: Any) -> dict:
    """Write core and each merged shard back from the merged store (`final`: qubesd has
    stopped, move shard qubes' dom0 directories into their shards).

    CLI Example: ``salt-call reliant_shard.dissect``
    """
    found = settings(config, **overrides)
    with _refusals():
        result = reliant.commands.dissect(found, reliant.commands.Host(), final=final)
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
    with _refusals():
        shard = reliant.commands.init(
            found, directory, reliant.shards.files.parse_range(qid_range) if qid_range else None,
            depends_on or (), shard_id)
    return {"id": shard.id, "path": shard.path,
            "qid_range": f"{shard.qid_range[0]}-{shard.qid_range[1]}",
            "depends_on": list(shard.depends_on)}


def rename(qube: str, new: str, shard: Optional[str] = None, config: Optional[str] = None,
           **overrides: Any) -> dict:
    """Rename a shard qube, e.g. one whose name a core qube took (qubesd must be stopped).

    CLI Example: ``salt-call reliant_shard.rename work work-hidden``
    """
    found = settings(config, **overrides)
    with _refusals():
        return _result(reliant.commands.rename(found, reliant.commands.Host(), qube, new, shard))


def review(qube: str, shard: Optional[str] = None, config: Optional[str] = None,
           **overrides: Any) -> dict:
    """Accept a recovered qube: clear the prohibit-start set by suture (qubesd stopped).

    CLI Example: ``salt-call reliant_shard.review mail``
    """
    found = settings(config, **overrides)
    with _refusals():
        return _result(reliant.commands.review(found, reliant.commands.Host(), qube, shard))


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
