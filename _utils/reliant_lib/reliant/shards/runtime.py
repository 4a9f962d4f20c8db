"""Runtime files on tmpfs beside the merged store: suture's state (``shards.json``), the
detached shards (``detached.json``) and the lock that serializes suture and dissect.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any, Optional

from reliant import store
from reliant.vocab import ShardError


def default_state_path(merged: str) -> str:
    """Where suture records what it merged: next to the merged store (tmpfs)."""
    return os.path.join(os.path.dirname(os.path.abspath(merged)), "shards.json")


def default_detached_path(merged: str) -> str:
    """Where `detach` lists the shards suture must leave out (tmpfs)."""
    return os.path.join(os.path.dirname(os.path.abspath(merged)), "detached.json")


def read_detached(path: str) -> set[str]:
    """Ids of detached shards (empty if the list does not exist)."""
    try:
        with open(path, "rb") as handle:
            ids = json.loads(handle.read(1 << 20))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: cannot read the detached shards: {exc}") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ShardError(f"{path}: expected a JSON list of shard ids")
    return set(ids)


def write_detached(path: str, ids: Iterable[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    store.write(path, json.dumps(sorted(set(ids))).encode() + b"\n", mode=0o600)


@contextlib.contextmanager
def operation_lock(state_path: str) -> Iterator[None]:
    """Serialize suture and dissect runs (the path unit's dissect may overlap the one
    after qubesd stops): an exclusive lockf on ``shards.lock`` beside the state."""
    directory = os.path.dirname(os.path.abspath(state_path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    with store.locked(os.path.join(directory, "shards.lock"), exclusive=True,
                              create=True):
        yield


def read_state(path: str) -> Optional[dict[str, Any]]:
    """The runtime state written by suture, None if absent or unreadable."""
    try:
        with open(path, "rb") as handle:
            state = json.loads(handle.read(store.MAX_BYTES))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("shards"), dict) else None


def write_state(path: str, state: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    # compact: the encoder written in C serves only JSON without indentation
    data = json.dumps(state, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    store.write(path, data, mode=0o600)
