"""The fallback: if qubesd does not start on a merged store, the next start merges core
only, and says why.

The qubesd unit's drop-in (salt/reliant/files/shards/qubesd-dropin.conf.jinja) runs
suture before qubesd starts, ``reliant-shard started`` once qubesd is ready
(``ExecStartPost``: for ``Type=notify`` after ``READY=1``) and dissect after it stops;
qubes-core-admin's unit restarts qubesd after a failure (``Restart=on-failure``,
``RestartSec=1s``, linux/systemd/qubesd.service, R4.2 and R4.3). Each suture leaves an
*attempt* beside the merged store (tmpfs): which shards it merged, whether qubesd
started on it, and how it stopped if it did not. A suture that finds the last attempt
merged shards and qubesd stopped before it started on it detaches every visible shard
(the runtime list `attach` clears) and records why in the *fallback* note, which `status`
shows until `attach`. A failure on a core-only store is not a shard's: nothing more is
left out.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from reliant import store

ATTEMPT = "qubesd-start.json"
FALLBACK = "fallback.json"
#: what systemd tells ExecStopPost about how the service ended (systemd.exec(5))
EXIT_VARIABLES = ("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS")


def _path(merged: str, name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(merged)), name)


def _read(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: str, data: dict[str, Any]) -> None:
    store.write(path, json.dumps(data, sort_keys=True).encode() + b"\n", mode=0o600)


def begin(merged: str, shards: Sequence[str]) -> None:
    """Suture wrote `merged` with `shards` merged: qubesd has not started on it yet."""
    _write(_path(merged, ATTEMPT), {"shards": sorted(shards), "started": False,
                                    "time": time.strftime("%Y-%m-%d %H:%M:%S")})


def started(merged: str) -> None:
    """qubesd is ready on the last merged store."""
    attempt = _read(_path(merged, ATTEMPT))
    if attempt is not None:
        attempt["started"] = True
        _write(_path(merged, ATTEMPT), attempt)


def stopped(merged: str, environ: Mapping[str, str]) -> None:
    """qubesd stopped: keep how, if it never started on the last merged store."""
    attempt = _read(_path(merged, ATTEMPT))
    if attempt is not None and not attempt.get("started"):
        attempt["stopped"] = True
        attempt["exit"] = " ".join(f"{key}={environ[key]}" for key in EXIT_VARIABLES
                                   if environ.get(key))
        _write(_path(merged, ATTEMPT), attempt)


def failed_merge(merged: str) -> Optional[str]:
    """Why the next start must merge core only: the last suture merged shards, and qubesd
    stopped without having started on it (None: it started, it has not been tried, or
    no shard was merged)."""
    attempt = _read(_path(merged, ATTEMPT))
    if attempt is None or attempt.get("started") or not attempt.get("stopped") \
            or not attempt.get("shards"):
        return None
    shards = ", ".join(str(s) for s in attempt["shards"])
    how = f" ({attempt['exit']})" if attempt.get("exit") else ""
    return (f"qubesd did not start on the merged store written at {attempt.get('time')} with "
            f"shards {shards}{how}; every shard is detached and qubesd runs on core only. "
            "Look at 'reliant-shard check', then 'reliant-shard attach'")


def fall_back(merged: str, reason: str) -> None:
    """Record why every shard is detached (the caller detaches them)."""
    _write(_path(merged, FALLBACK), {"reason": reason,
                                     "time": time.strftime("%Y-%m-%d %H:%M:%S")})


def fallback(merged: str) -> Optional[str]:
    """Why shards are detached by the fallback, None if they are not."""
    note = _read(_path(merged, FALLBACK))
    return str(note.get("reason")) if note else None


def clear_fallback(merged: str) -> None:
    """`attach`: shards are merged again (the attempt decides the next fallback)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(merged, FALLBACK))
