"""Execution module: volatile dom0 (root as an overlay on tmpfs), its boot setup and status.

Every function takes `settings` (pillar `reliant:volatile` form); without it, pillar's.
"""

from __future__ import annotations

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path
import reliant_salt

# isort: split
import reliant.config
import reliant.volatile.boot
import reliant.volatile.files
import reliant.volatile.running
import reliant.volatile.settings

__virtualname__ = "reliant_volatile"


def __virtual__():
    return reliant.config.virtual(__virtualname__, __opts__)


def _settings(settings: dict | None) -> reliant.volatile.settings.Settings:
    """The given settings, else pillar `reliant:volatile` (missing keys: the defaults).

    __pillar__, not pillar.get: Salt 3008 masks what pillar.get returns to modules.
    """
    if settings is None:
        settings = dict(__pillar__.get("reliant", {}).get("volatile", {}))
    return reliant.volatile.settings.Settings.from_pillar(settings)


def status(settings: dict | None = None) -> dict:
    """Which mode dom0 runs in (volatile, maintenance, volatile-failed), the root
    file system type, active swap, and in volatile mode the RAM the overlay's
    upper layer uses.

    CLI Example: ``qubesctl reliant_volatile.status``
    """
    return reliant.volatile.running.status(_settings(settings))


def pending(settings: dict | None = None) -> dict:
    """What `reliant_volatile.configured` would change with these settings ({} if nothing).

    CLI Example: ``qubesctl reliant_volatile.pending '{"default_entry": "maintenance"}'``
    """
    resolved = _settings(settings)
    return reliant.volatile.boot.plan_configured(resolved, grub_body()).changes(resolved)


def grub_script(settings: dict | None = None) -> str:
    """The grub.d script that emits the volatile and the maintenance entry.

    CLI Example: ``qubesctl reliant_volatile.grub_script``
    """
    return reliant.volatile.files.grub_script(_settings(settings), grub_body())


def grub_body() -> str:
    """The body of the grub.d script (salt://reliant/files/volatile/grub-entries.sh).

    CLI Example: ``qubesctl reliant_volatile.grub_body``
    """
    return reliant_salt.formula_file(__salt__, reliant.volatile.files.GRUB_BODY).decode()
