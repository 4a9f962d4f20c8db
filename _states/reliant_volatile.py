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
import reliant_salt

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
    seen: dict = {}

    def pending() -> dict:
        seen["settings"] = resolved = reliant.volatile.settings.Settings.from_pillar(settings or {})
        seen["plan"] = plan = planner(resolved)
        seen["running"] = reliant.volatile.running.status(resolved)
        return plan.changes(resolved)

    def alarm() -> list:
        # a volatile-failed boot is not reported as converged: the user believes in RAM-only
        running = seen["running"]
        return running["problems"] if boot_must_work and running["mode"] == "volatile-failed" \
            else []

    def refuse(changes: dict) -> str | None:
        if seen["running"]["mode"] != "volatile":
            return None
        return ("dom0 runs in volatile mode: a change to the boot setup would be lost at "
                "shutdown; boot the maintenance entry and apply again. Pending: "
                + ", ".join(f"{k}: {v}" for k, v in changes.items()))

    def apply() -> None:
        reliant.volatile.boot.apply(seen["plan"], seen["settings"],
                                    reliant.volatile.boot.run_command)

    def left() -> list:
        remaining = planner(seen["settings"]).changes(seen["settings"])
        return [f"still differs after applying: {remaining}"] if remaining else []

    return reliant_salt.converge(
        name, __opts__["test"], pending=pending, apply=apply, left=left, alarm=alarm,
        refuse=refuse, errors=(reliant.volatile.settings.VolatileError, OSError,
                               UnicodeDecodeError),
        done=done, would=lambda changes: "would change the boot setup",
        changed=lambda changes: done, failed="failed half-way (the next run resumes): {}",
        changes_on_failure=True)


def configured(name: str, settings: dict | None = None) -> dict:
    """Volatile and maintenance GRUB entries, GRUB_DEFAULT from pillar, dracut and
    journald drop-ins, grub.cfg and initramfs regenerated when their inputs changed.

    settings: pillar `reliant:volatile` (map.jinja merges the defaults).
    """
    default = (settings or {}).get("default_entry", "volatile")

    def planner(resolved):
        body = __salt__["reliant_volatile.grub_body"]()  # the grub.d script's, from the files
        return reliant.volatile.boot.plan_configured(resolved, body)

    return _converge(name, settings, planner,
                     f"volatile boot setup in place (default entry: {default})",
                     boot_must_work=True)


def absent(name: str, settings: dict | None = None) -> dict:
    """Every file of `configured` removed, GRUB_DEFAULT restored, grub.cfg and the
    initramfs regenerated without them."""
    return _converge(name, settings, reliant.volatile.boot.plan_absent,
                     "no volatile boot setup present", boot_must_work=False)
