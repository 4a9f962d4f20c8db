"""Execution module: check the `reliant` pillar (used by map.jinja before any state renders)."""

from __future__ import annotations

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path

# isort: split
import reliant.config

__virtualname__ = "reliant_config"


def __virtual__():
    return __virtualname__


def problems(pillar: dict, defaults: dict) -> list:
    """List every key of pillar `reliant` whose value has the wrong type or is unknown.

    CLI Example: ``salt-call reliant_config.problems '{"shards": {"roots": "/x"}}' ...``
    """
    return reliant.config.problems(pillar, defaults)
