"""Double of qubes-core-admin's `qubes` package, for its offline loader only (see
../README.md). It is NOT qubes-core-admin."""

from __future__ import annotations

import fcntl
import os
from types import SimpleNamespace

from lxml import etree
from reliant import qubesd_load
from reliant.shards.real_loader import dom0_release

#: a qube with this feature is refused, as the real loader may refuse what the model accepts
REFUSING_FEATURE = "loader-double-refuses"

class QubesException(Exception):
    """qubes/exc.py QubesException."""


exc = SimpleNamespace(QubesException=QubesException)


class property:
    """qubes/__init__.py property: the descriptor of a qube's properties (none here)."""


class Qubes:
    """qubes/app.py Qubes, loading only (offline)."""

    def __init__(self, store: str, offline_mode: bool = False) -> None:
        if not offline_mode:
            raise QubesException("the loader double works in offline mode only")
        fd = os.open(store, os.O_RDWR)  # qubes/app.py _acquire_lock
        with os.fdopen(fd, "r+b") as handle:
            fcntl.lockf(handle, fcntl.LOCK_EX)
            root = etree.parse(handle, etree.XMLParser(remove_blank_text=True,
                                                       resolve_entities=False)).getroot()
        refused = [p for p in qubesd_load.problems(root, dom0_release()) if p.fatal]
        if refused:
            raise QubesException(str(refused[0]))
        for domain in root.iterfind("domains/domain"):
            if domain.find(f"features/feature[@name='{REFUSING_FEATURE}']") is not None:
                raise QubesException(f"{REFUSING_FEATURE} on {domain.get('id')}")
        self.domains = [SimpleNamespace() for _ in root.iterfind("domains/domain")]
