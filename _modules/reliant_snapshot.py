"""Execution module: read-only loop snapshots (reliant's create-snapshot; the state
``reliant.snapshots`` installs the qubesd extension beside it, into `site_packages`).

``settings`` is the ``reliant:snapshots`` pillar mapping (default: defaults.yaml merged
with pillar); the script to install is read from the Salt fileserver
(``salt://reliant/files/snapshots/create-snapshot``).

CLI Examples::

    salt-call reliant_snapshot.plan
    salt-call reliant_snapshot.verify
    salt-call reliant_snapshot.install
    salt-call reliant_snapshot.remove
"""

from __future__ import annotations

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path
import reliant_salt

# isort: split
import reliant.config
import reliant.snapshot

__virtualname__ = "reliant_snapshot"

SCRIPT_SOURCE = "salt://reliant/files/snapshots/create-snapshot"


def __virtual__():
    return reliant.config.virtual(__virtualname__, __opts__)


def _settings(settings: dict | None) -> dict:
    """`settings` over pillar `reliant:snapshots` over its defaults (defaults.yaml)."""
    return {**reliant_salt.formula_settings(__salt__, __pillar__)["snapshots"],
            **(settings or {})}


def _layout(settings: dict, removing: bool = False) -> reliant.snapshot.Layout:
    site_packages = settings["site_packages"]
    if not site_packages:
        try:
            site_packages = reliant.snapshot.find_site_packages()
        except reliant.snapshot.SnapshotError:
            if not removing:
                raise
            # No qubes package: the script may still be restored.
            site_packages = ""
    return reliant.snapshot.Layout(script=settings["script"], site_packages=site_packages,
                                   backup_dir=settings["backup_dir"])


def _script() -> bytes:
    return reliant_salt.formula_file(__salt__, SCRIPT_SOURCE)


def site_packages(settings: dict | None = None, missing_ok: bool = False) -> str:
    """Where the qubesd extension goes: ``site_packages`` of the settings, else the one
    site-packages holding the `qubes` package ("" if there is none and `missing_ok`).

    CLI Example: ``qubesctl reliant_snapshot.site_packages``
    """
    with reliant_salt.salt_errors(reliant.snapshot.SnapshotError):
        return _layout(_settings(settings), removing=missing_ok).site_packages


def _install_plan(settings: dict) -> tuple[reliant.snapshot.Layout, reliant.snapshot.Plan]:
    layout = _layout(settings)
    script = _script()
    extra = frozenset(settings["extra_known_sha256"])
    return layout, reliant.snapshot.plan_install(layout, script, extra)


def plan(settings: dict | None = None, remove: bool = False) -> dict:
    """What installing (or, with ``remove=True``, removing) would change, and why not.

    Returns ``{"problems": [...], "changes": {path: what}}``; no problem and no change
    means the component is in place (or absent).
    """
    settings = _settings(settings)
    result = reliant.snapshot.plan_remove(_layout(settings, removing=True)) if remove else \
        _install_plan(settings)[1]
    return {"problems": result.problems, "changes": result.changes()}


def install(settings: dict | None = None) -> dict:
    """Install reliant's create-snapshot; return the changes.

    Refuses, changing nothing, on a Qubes version it does not know.
    """
    layout, result = _install_plan(_settings(settings))
    reliant.snapshot.apply_install(layout, result)
    return result.changes()


def remove(settings: dict | None = None) -> dict:
    """Put the original create-snapshot back, remove the marks."""
    layout = _layout(_settings(settings), removing=True)
    result = reliant.snapshot.plan_remove(layout)
    reliant.snapshot.apply_remove(layout, result)
    return result.changes()


def verify(settings: dict | None = None) -> list:
    """Problems that make the installed files not reliant's or not intact ([] = fine)."""
    return reliant.snapshot.verify(_layout(_settings(settings)), _script())
