"""State `reliant_audit.clean`: fails while dom0's disk holds a trace of an open shard.

It changes nothing (test=True gives the same answer). Its comment says how many
traces there are and under which configured location, never what they are: Salt
may log state results, and the findings name hidden qubes. `qubesctl
reliant.audit.run` or `reliant-shard audit` prints them.
"""

from __future__ import annotations

__virtualname__ = "reliant_audit"


def __virtual__():
    if "reliant_audit.run" not in __salt__:
        return (False, "reliant_audit: the execution module is not available (not dom0?)")
    return __virtualname__


def _counts(by_location: dict) -> str:
    return ", ".join(f"{location}: {count}" for location, count in sorted(by_location.items()))


def clean(name: str, audit: dict | None = None, shards: dict | None = None,
          volatile: dict | None = None) -> dict:
    """No trace of an open shard on dom0's disk. Traces that live in RAM only (volatile
    mode) are counted, not failed on."""
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        report = __salt__["reliant_audit.run"](audit=audit, shards=shards, volatile=volatile)
    except Exception as exc:  # any failure of the audit fails the state
        ret["comment"] = f"audit could not run: {type(exc).__name__}: {exc}"
        return ret
    warnings = list(report.get("warnings", ()))  # about the root: they name no shard
    disk = report["summary"].get("disk", {})
    ram = report["summary"].get("ram", {})
    if not report["shards"]:
        ret["result"] = True
        ret["comment"] = "; ".join(["no shard is open: nothing to look for", *warnings])
        return ret
    parts = []
    if disk:
        parts.append(f"{sum(disk.values())} trace(s) of open shards on dom0's disk "
                     f"({_counts(disk)})")
    if ram:
        parts.append(f"{sum(ram.values())} in RAM only, gone at shutdown ({_counts(ram)})")
    if not disk:
        ret["result"] = True
        ret["comment"] = "; ".join([*parts, *warnings] if parts else [
            f"no trace of the {report['shards']} open shard(s) on dom0's disk", *warnings])
        return ret
    ret["comment"] = ("; ".join([*parts, *warnings]) + ". See them with `qubesctl reliant_audit.run` or "
                      "`reliant-shard audit` (they name hidden qubes: not logged here)")
    return ret
