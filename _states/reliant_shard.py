"""States: shards converge to their declarations (directory, QID range, dependencies).

``reliant_shard.present``: one shard, named by its directory in the state itself.
``reliant_shard.declared``: every shard declared on the open volumes (a
``reliant-shard.json`` in a directory under the roots); what `reliant.shards` uses,
so that the state tree, pillar and Salt's compiled highstate cache name no shard.
Its return names no shard either (only how many were created or changed), as Salt
writes results to ``sls.p`` (state.sls/state.apply) and failures to its log:
``salt-call reliant_shard.declarations`` shows the details on the terminal.

Both compute the difference first, return when there is none, predict it exactly
with test=True, act, then verify. A shard file is rewritten atomically under lockf
and only its metadata changes; qubes, pools and dom0 directories are kept.
"""

from __future__ import annotations

from typing import Any, Optional

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path
import reliant_salt

# isort: split
import reliant.declare
import reliant.shards.runtime
import reliant.store
import reliant.vocab
from salt.exceptions import CommandExecutionError

__virtualname__ = "reliant_shard"
_ERRORS = (reliant.vocab.ShardError, reliant.store.StoreError, CommandExecutionError, OSError)


def __virtual__():
    if "reliant_shard.settings" not in __salt__:
        return (False, "reliant_shard: the reliant_shard execution module is not loaded "
                       "(not a Qubes dom0?)")
    return __virtualname__


def _settings(config: Optional[str], roots: Any = None, max_depth: Optional[int] = None) -> dict:
    return __salt__["reliant_shard.settings"](config, roots=roots, max_depth=max_depth)


def _state_path(found: dict) -> str:
    """Suture's runtime state beside the merged store: its lock serializes with dissect."""
    return reliant.shards.runtime.default_state_path(found["merged"])


def present(name: str, qid_range: Any, depends_on: Optional[list] = None,
            shard_id: Optional[str] = None, config: Optional[str] = None) -> dict:
    """Ensure the shard in directory `name` exists with QID range `qid_range` ("A-B")
    and depends on exactly the shards in directories `depends_on` (relative to `name`
    or absolute). `shard_id` names a new shard (default: the directory's name); an
    existing shard's id never changes. The state names `name` in its result.

    .. code-block:: yaml

        /run/shufflecake/SECOND:
          reliant_shard.present:
            - qid_range: 1500-1999
            - depends_on: [../FIRST]
    """
    seen: dict = {}

    def pending() -> dict:
        seen["found"] = found = _settings(config)
        wanted = reliant.declare.declaration(name, qid_range, depends_on or (), shard_id)
        seen["change"] = change = reliant.declare.plan(wanted, found["core"], found["roots"],
                                                       found["max_depth"])
        return {} if change.action is None else {"old": change.old, "new": change.new}

    def verb() -> str:
        return "created" if seen["change"].action == "init" else "updated"

    def apply() -> None:
        found = seen["found"]
        reliant.declare.apply(seen["change"], found["roots"], found["max_depth"],
                              _state_path(found))

    def left() -> list:
        try:
            reliant.declare.verify(seen["change"])
        except _ERRORS as exc:
            return [f"Shard {name} {verb()}, but: {exc}"]
        return []

    return reliant_salt.converge(
        name, __opts__["test"], pending=pending, apply=apply, left=left, errors=_ERRORS,
        done=f"Shard {name} is as declared",
        would=lambda changes: f"Shard {name} would be {verb()}",
        changed=lambda changes: f"Shard {name} {verb()}")


def declared(name: str, max_depth: Optional[int] = None, config: Optional[str] = None) -> dict:
    """Converge every shard declared on the open volumes under the roots `name` (a
    comma-separated list); nothing of a shard appears in the result.

    .. code-block:: yaml

        reliant-shards-declared:
          reliant_shard.declared:
            - name: /run/shufflecake
    """
    ret: dict[str, Any] = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        found = _settings(config, roots=name, max_depth=max_depth)
    except CommandExecutionError as exc:
        return {**ret, "result": False, "comment": str(exc)}
    problems: list[str] = []
    found_declarations = reliant.declare.find_declarations(found["roots"], found["max_depth"],
                                                           problems)
    outcomes = reliant.declare.converge(found_declarations, found["core"], found["roots"],
                                        found["max_depth"], dry_run=__opts__["test"],
                                        state_path=_state_path(found))
    refused = len(problems) + sum(1 for outcome in outcomes if outcome.error)
    actions = [outcome.change for outcome in outcomes if outcome.change]
    counts = {"created": actions.count("init"), "updated": actions.count("update")}
    counts = {key: value for key, value in counts.items() if value}
    details = "details: salt-call reliant_shard.declarations"
    if counts:
        ret["changes"] = {"shards": counts}
    if __opts__["test"] and counts:
        ret["result"] = None
        ret["comment"] = f"{len(actions)} declared shard(s) would be converged"
    elif counts:
        ret["comment"] = f"{len(actions)} declared shard(s) converged"
    elif refused:
        ret["comment"] = "No declared shard converged"
    else:
        ret["comment"] = "Every shard declared on the open volumes is as declared"
    if refused:
        ret["result"] = False
        ret["comment"] = f"{refused} declaration(s) refused; {ret['comment']}; {details}"
    return ret
