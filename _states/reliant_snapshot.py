"""States: reliant's create-snapshot (`installed`) and its removal (`removed`, which puts
the original create-snapshot back exactly). The qubesd extension beside it is a file
tree the ``reliant.snapshots`` sls installs once this state succeeded.

Both compute the difference first, return early when there is none, predict it
exactly with test=True, act, then verify. A Qubes version the formula does not
know is refused before anything is changed.
"""

from __future__ import annotations

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path
import reliant_salt

# isort: split
import reliant.config
import reliant.snapshot

__virtualname__ = "reliant_snapshot"


def __virtual__():
    return reliant.config.virtual(__virtualname__, __opts__)


def _converge(name: str, settings: dict | None, remove: bool) -> dict:
    what = "removal of reliant's create-snapshot" if remove else "reliant's create-snapshot"

    def pending() -> dict:
        plan = __salt__["reliant_snapshot.plan"](settings, remove=remove)
        problems = plan["problems"] or ([] if remove or plan["changes"]
                                        else __salt__["reliant_snapshot.verify"](settings))
        if problems:
            raise reliant.snapshot.SnapshotError("; ".join(problems))
        return plan["changes"]

    def left() -> list:
        plan = __salt__["reliant_snapshot.plan"](settings, remove=remove)
        problems = plan["problems"] + [f"{path} still to be {change}"
                                       for path, change in plan["changes"].items()]
        return problems if problems or remove else __salt__["reliant_snapshot.verify"](settings)

    return reliant_salt.converge(
        name, __opts__["test"], pending=pending, left=left,
        apply=lambda: __salt__[
            "reliant_snapshot.remove" if remove else "reliant_snapshot.install"](settings),
        errors=(reliant.snapshot.SnapshotError, OSError), done=f"{what}: nothing to do",
        would=lambda changes: f"{what}: would change {len(changes)} file(s)",
        changed=lambda changes: f"{what}: done",
        failed=f"{what} failed (each file is either as before or complete; the next run "
               "resumes): {}")


def installed(name: str, settings: dict | None = None) -> dict:
    """reliant's create-snapshot at ``settings.script``, verified.

    name
        a label for the state
    settings
        the ``reliant:snapshots`` mapping (default: from pillar)
    """
    return _converge(name, settings, remove=False)


def removed(name: str, settings: dict | None = None) -> dict:
    """The original create-snapshot back (checksum, mode, owner, times), ours gone."""
    return _converge(name, settings, remove=True)
