"""The interlock: shards are merged only while dom0 runs on the volatile root.

On a root that writes to the disk, qubesd and its helpers would write a merged shard
qube's name there: its dom0 directory, its logs (/var/log/qubes, /var/log/xen/console,
/var/log/libvirt/libxl), its libvirt definition; deleted files stay readable on the disk.
So `attach` refuses, and suture (the qubesd unit's, the CLI's, the execution module's)
merges core alone, unless pillar `reliant:shards:require_volatile` is false: then
`status`, `audit` and `attach` say every time that traces reach the disk.

`check_root` is the one decision; what it reads is `reliant.volatile.running.status`, the
one test of volatile mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from reliant.vocab import Problem
from reliant.volatile.settings import Settings

REQUIRE_KEY = "reliant:shards:require_volatile"


@dataclass(frozen=True)
class RootCheck:
    """What the running root allows: `refusal` says why no shard may be merged (None: they
    may); `warnings` are what status, audit and attach tell the user."""

    mode: str
    refusal: Optional[str]
    warnings: tuple[str, ...]

    def problems(self) -> list[Problem]:
        """The check as problems of a status report (kind ``volatile``)."""
        found = [Problem("warning", "volatile", f"shards are not merged: {self.refusal}")] \
            if self.refusal else []
        return found + [Problem("warning", "volatile", text) for text in self.warnings]


def _where(running: Mapping[str, Any], settings: Settings) -> str:
    fstype = running.get("root_fstype") or "not mounted"
    return f"/ is {fstype}" + (f" without {settings.volatile_root}"
                               if fstype == "overlay" else "")


def check_root(running: Mapping[str, Any], require_volatile: bool,
               settings: Settings) -> RootCheck:
    """Decide from `running` (`reliant.volatile.running.status`) whether shards may be
    merged; `settings` gives the volatile entry's title for the message."""
    warnings = list(running.get("problems", ()))
    if running["mode"] == "volatile":
        return RootCheck("volatile", None, tuple(warnings))
    where = _where(running, settings)
    if require_volatile:
        return RootCheck(running["mode"], (
            f"dom0 does not run on the volatile root ({where}): qubesd would write the names "
            "of the shards' qubes to the disk (their directories, logs and libvirt "
            f"definitions). Reboot and choose the boot entry '{settings.volatile_title}'; "
            f"to merge shards on this root anyway, set {REQUIRE_KEY}: false"),
            tuple(warnings))
    warnings.insert(0, f"dom0 does not run on the volatile root ({where}) and {REQUIRE_KEY} "
                       "is false: qubesd writes the names of merged shards' qubes to the "
                       f"disk; boot the entry '{settings.volatile_title}' to keep them in RAM")
    return RootCheck(running["mode"], None, tuple(warnings))


def volatile_settings(config: Mapping[str, Any]) -> Settings:
    """The volatile settings the reliant-shard configuration carries (`volatile_title`,
    `upper_warn_percent`; the rest are their defaults); VolatileError if one is bad."""
    values = {key: config[key] for key in ("volatile_title", "upper_warn_percent")
              if key in config}
    settings = Settings(**values)
    settings.check()
    return settings
