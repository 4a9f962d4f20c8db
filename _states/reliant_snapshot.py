"""States: reliant's create-snapshot and qubesd extension (`installed`) and their removal
(`removed`, which puts the original create-snapshot back exactly).

Both compute the difference first, return early when there is none, predict it
exactly with test=True, act, then verify. A Qubes version the formula does not
know is refused before anything is changed.
"""

from __future__ import annotations

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path

# isort: split
import reliant.config
import reliant.snapshot

__virtualname__ = "reliant_snapshot"


def __virtual__():
    return reliant.config.virtual(__virtualname__, __opts__)


def _converge(name: str, settings: dict | None, remove: bool) -> dict:
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    what = "removal of reliant's create-snapshot" if remove else "reliant's create-snapshot"
    try:
        plan = __salt__["reliant_snapshot.plan"](settings, remove=remove)
    except (reliant.snapshot.SnapshotError, OSError) as exc:
        ret["comment"] = str(exc)
        return ret
    if plan["problems"]:
        ret["comment"] = "; ".join(plan["problems"])
        return ret
    if not plan["changes"]:
        problems = [] if remove else __salt__["reliant_snapshot.verify"](settings)
        ret["result"] = not problems
        ret["comment"] = "; ".join(problems) or f"{what}: nothing to do"
        return ret
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = plan["changes"]
        ret["comment"] = f"{what}: would change {len(plan['changes'])} file(s)"
        return ret
    try:
        ret["changes"] = __salt__[
            "reliant_snapshot.remove" if remove else "reliant_snapshot.install"](settings)
        left = __salt__["reliant_snapshot.plan"](settings, remove=remove)
        problems = left["problems"] + [f"{path} still to be {change}"
                                       for path, change in left["changes"].items()]
        if not remove:
            problems += __salt__["reliant_snapshot.verify"](settings)
    except (reliant.snapshot.SnapshotError, OSError) as exc:
        ret["comment"] = (f"{what} failed (each file is either as before or complete; the next "
                          f"run resumes): {exc}")
        return ret
    ret["result"] = not problems
    ret["comment"] = "; ".join(problems) or f"{what}: done"
    if ret["result"]:
        ret["comment"] += "; qubesd (re)loads its extensions when it next starts"
    return ret


def installed(name: str, settings: dict | None = None) -> dict:
    """reliant's create-snapshot at ``settings.script`` and the qubesd extension, verified.

    name
        a label for the state
    settings
        the ``reliant:snapshots`` mapping (default: from pillar)
    """
    return _converge(name, settings, remove=False)


def removed(name: str, settings: dict | None = None) -> dict:
    """The original create-snapshot back (checksum, mode, owner, times), ours gone."""
    return _converge(name, settings, remove=True)
