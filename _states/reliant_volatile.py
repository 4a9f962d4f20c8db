"""States: the boot setup of a volatile dom0 (`configured`) and its removal (`absent`).

Both compute the difference first, return early when there is none, predict it
exactly with test=True, act, then verify by computing the difference again.
Boot configuration is only changed from a dom0 that writes to disk: in volatile
mode the change would vanish at shutdown, so the state fails and says so. A boot
that asked for volatile mode but did not get it (`volatile-failed`: every write
reaches the disk) fails `configured` until dom0 reboots into a working setup.
"""

from __future__ import annotations

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path

# isort: split
import reliant.config
import reliant.volatile.boot
import reliant.volatile.running
import reliant.volatile.settings

__virtualname__ = "reliant_volatile"


def __virtual__():
    return reliant.config.virtual(__virtualname__, __opts__)


def _converge(name: str, settings: dict | None, planner, done: str,
              boot_must_work: bool) -> dict:
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        resolved = reliant.volatile.settings.Settings.from_pillar(settings or {})
        plan = planner(resolved)
        running = reliant.volatile.running.status(resolved)
    except (reliant.volatile.settings.VolatileError, OSError, UnicodeDecodeError) as exc:
        ret["comment"] = str(exc)
        return ret
    # a volatile-failed boot is not reported as converged: the user believes in RAM-only
    alarm = running["problems"] if boot_must_work and running["mode"] == "volatile-failed" \
        else []
    if plan.empty():
        ret["result"] = not alarm
        ret["comment"] = "; ".join([done, *alarm])
        return ret
    changes = plan.changes(resolved)
    if running["mode"] == "volatile":
        ret["comment"] = ("dom0 runs in volatile mode: a change to the boot setup would be lost "
                          "at shutdown; boot the maintenance entry and apply again. Pending: "
                          + ", ".join(f"{k}: {v}" for k, v in changes.items()))
        return ret
    if __opts__["test"]:
        ret["result"] = None if not alarm else False
        ret["changes"] = changes
        ret["comment"] = "; ".join(["would change the boot setup", *alarm])
        return ret
    try:
        reliant.volatile.boot.apply(plan, resolved, reliant.volatile.boot.run_command)
        left = planner(resolved)
    except (reliant.volatile.settings.VolatileError, OSError) as exc:
        ret["changes"] = changes
        ret["comment"] = f"failed half-way (the next run resumes): {exc}"
        return ret
    ret["changes"] = changes
    if not left.empty():
        ret["comment"] = f"still differs after applying: {left.changes(resolved)}"
        return ret
    ret["result"] = not alarm
    ret["comment"] = "; ".join([done, *alarm])
    return ret


def configured(name: str, settings: dict | None = None) -> dict:
    """Volatile and maintenance GRUB entries, GRUB_DEFAULT from pillar, dracut and
    journald drop-ins, grub.cfg and initramfs regenerated when their inputs changed.

    settings: pillar `reliant:volatile` (map.jinja merges the defaults).
    """
    default = (settings or {}).get("default_entry", "volatile")
    return _converge(name, settings, reliant.volatile.boot.plan_configured,
                     f"volatile boot setup in place (default entry: {default})",
                     boot_must_work=True)


def absent(name: str, settings: dict | None = None) -> dict:
    """Every file of `configured` removed, GRUB_DEFAULT restored, grub.cfg and the
    initramfs regenerated without them."""
    return _converge(name, settings, reliant.volatile.boot.plan_absent,
                     "no volatile boot setup present", boot_must_work=False)
