"""Execution module: check the `reliant` pillar (used by map.jinja before any state renders)."""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
for _lib in (os.path.join(_HERE, os.pardir, "utils", "reliant_lib"),
             os.path.join(_HERE, os.pardir, "_utils", "reliant_lib")):
    if os.path.isdir(_lib) and os.path.abspath(_lib) not in sys.path:
        sys.path.insert(0, os.path.abspath(_lib))

import reliant_config  # noqa: E402

__virtualname__ = "reliant_config"


def __virtual__():
    return __virtualname__


def problems(pillar: dict, defaults: dict) -> list:
    """List every key of pillar `reliant` whose value has the wrong type or is unknown.

    CLI Example: ``salt-call reliant_config.problems '{"shards": {"roots": "/x"}}' ...``
    """
    return reliant_config.problems(pillar, defaults)
