"""States: reliant's create-snapshot and qubesd extension (`installed`) and their removal
(`removed`, which puts the original create-snapshot back exactly).

Both compute the difference first, return early when there is none, predict it
exactly with test=True, act, then verify. A Qubes version the formula does not
know is refused before anything is changed.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
for _lib in (os.path.join(_HERE, os.pardir, "utils", "reliant_lib"),
             os.path.join(_HERE, os.pardir, "_utils", "reliant_lib")):
    if os.path.isdir(_lib) and os.path.abspath(_lib) not in sys.path:
        sys.path.insert(0, os.path.abspath(_lib))

import reliant_config  # noqa: E402
import reliant_snapshot  # noqa: E402

__virtualname__ = "reliant_snapshot"


def __virtual__():
    if not reliant_config.is_dom0(__opts__.get("reliant_dom0_marker", reliant_config.DOM0_MARKER)):
        return (False, "reliant_snapshot: not a Qubes dom0 (no /etc/qubes-release)")
    return __virtualname__


def _converge(name: str, settings: dict | None, remove: bool) -> dict:
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    what = "removal of reliant's create-snapshot" if remove else "reliant's create-snapshot"
    try:
        plan = __salt__["reliant_snapshot.plan"](settings, remove=remove)
    except (reliant_snapshot.SnapshotError, OSError) as exc:
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
    except (reliant_snapshot.SnapshotError, OSError) as exc:
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
