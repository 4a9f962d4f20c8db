"""Execution module: the deniability audit of dom0 (traces of open shards on disk).

Its results name hidden qubes: they are returned to the caller, never logged.
"""

from __future__ import annotations

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path
import reliant_salt

# isort: split
import reliant.audit
import reliant.config
import reliant.shards.files
import reliant.volatile.interlock
import reliant.volatile.running
import reliant.volatile.settings

__virtualname__ = "reliant_audit"


def __virtual__():
    return reliant.config.virtual(__virtualname__, __opts__)


def run(audit: dict | None = None, shards: dict | None = None,
        volatile: dict | None = None) -> dict:
    """Audit dom0 for traces of the shards open now.

    audit, shards, volatile: pillar `reliant:audit`, `reliant:shards`, `reliant:volatile`
    (default: the formula's defaults merged with pillar). Returns `findings` (path,
    reason, storage: disk or ram, location), `summary` (counts that name no shard),
    `shards` (how many are open), `mode` (volatile or not) and `warnings` (about the root
    shards are merged on, `reliant.volatile.interlock`; they name no shard).

    CLI Example: ``qubesctl reliant_audit.run``
    """
    if audit is None or shards is None or volatile is None:
        merged = reliant_salt.formula_settings(__salt__, __pillar__)
        audit = merged.get("audit", {}) if audit is None else audit
        shards = merged.get("shards", {}) if shards is None else shards
        volatile = merged.get("volatile", {}) if volatile is None else volatile
    settings = reliant.audit.Settings.from_pillar(audit)
    volatile_settings = reliant.volatile.settings.Settings.from_pillar(volatile)
    running = reliant.volatile.running.status(volatile_settings)
    mode = running["mode"]
    check = reliant.volatile.interlock.check_root(
        running, bool(shards.get("require_volatile", True)), volatile_settings)
    problems: list = []
    open_shards = reliant.shards.files.discover(shards["roots"], shards["max_depth"], problems)
    findings = reliant.audit.audit_running(
        open_shards, shards["core"], mode == "volatile", settings.disk_view,
        settings.paths, settings.limits, mountinfo=volatile_settings.mountinfo,
        volatile_root_link=volatile_settings.volatile_root)
    # a shard that cannot be read cannot be looked for: the audit cannot vouch for it
    findings += [reliant.audit.Finding(", ".join(shards["roots"]),
                                       f"{p.message}: its traces were not looked for",
                                       reliant.audit.DISK, "shards") for p in problems]
    return {
        "mode": mode,
        "shards": len(open_shards),
        "findings": [f.as_dict() for f in findings],
        "summary": reliant.audit.summary(findings),
        "warnings": list(check.warnings),
    }
