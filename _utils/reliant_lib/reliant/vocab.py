"""The shared vocabulary of the engine (a leaf: it imports nothing of the package).

Groups: core (``CORE`` in plans, tag ``reliant-core`` in the merged store) and one per
shard (its id; tag ``reliant-shard-<ID>``); the properties that name another qube; the
volumes that hold a qube's own data; which groups a qube may reference; qube names;
`Problem` and `ShardError`, which every operation reports with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

CORE = "@core"  # group key of core; no shard id can be this (ids are [A-Za-z0-9_-])
CORE_TAG = "reliant-core"
TAG_PREFIX = "reliant-"
SHARD_TAG_PREFIX = TAG_PREFIX + "shard-"
#: Marks a qube whose own `@dispvm` is a disposable template of another group (kept by
#: the isolation extension; like every ``reliant-`` tag it never leaves the merged store).
FOREIGN_DISPVM_TAG = TAG_PREFIX + "foreign-dispvm"
MAX_QID = 10000  # qubes.config.max_qid: qids are 1 .. 9999
#: Per-qube properties naming another qube (qubes-core-admin).
DOMAIN_REFERENCES = ("template", "netvm", "default_dispvm", "management_dispvm",
                     "guivm", "audiovm", "relayvm")
#: Global properties naming a qube.
GLOBAL_REFERENCES = ("default_template", "default_netvm", "default_dispvm",
                     "management_dispvm", "updatevm", "clockvm", "default_guivm",
                     "default_audiovm")
#: Volumes that may hold a qube's own data (see `is_data_volume`).
DATA_VOLUMES = ("root", "private", "volatile")

_NAME_RE = re.compile(r"\A[a-zA-Z][a-zA-Z0-9_.-]{0,30}\Z")


class ShardError(Exception):
    """An operation was refused; the message says why and names the culprit."""


@dataclass(frozen=True)
class Problem:
    """Something a user must know about. severity: info, warning or error.

    kind: conflict, recovered, skipped, invalid, refused, renumbered, violation,
    unplaceable, detached, state, isolation.
    """

    severity: str
    kind: str
    message: str
    shard: Optional[str] = None
    qube: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


def shard_tag(shard_id: str) -> str:
    """The tag that marks the qubes of shard `shard_id` in the merged store."""
    return SHARD_TAG_PREFIX + shard_id


def valid_qube_name(name: str) -> bool:
    """qubes-core-admin's rule for qube names (qubes/vm/__init__.py validate_name)."""
    return (bool(_NAME_RE.match(name)) and name not in ("none", "default", "Domain-0")
            and not name.endswith("-dm"))


def is_data_volume(name: str, snap_on_start: bool, source: Optional[str]) -> bool:
    """True for a volume holding the qube's own data: root, private or volatile, unless
    it is a snapshot of another volume (snap_on_start with a source: an AppVM's root
    taken from its template's)."""
    return name in DATA_VOLUMES and not (snap_on_start and source)


def referable_groups(group: Optional[str], dependencies: Iterable[str],
                     core: str = CORE) -> set[Optional[str]]:
    """The reference rule (docs/design/rules-and-qids.md): the groups whose qubes a qube of `group` may
    name. Core (and global properties) name only core; a shard qube names core, its own
    shard and `dependencies` (the shards it depends on). Groups are core's key `core`
    and shard ids in the shard engine, group tags in the isolation guard."""
    return {core} if group == core else {core, group, *dependencies}
