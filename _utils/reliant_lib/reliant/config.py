"""Check the `reliant` pillar against the formula's defaults.

Each default's type is the type pillar must give for that key; a problem names
the key by its colon path (as `pillar.get` spells it), e.g.
``reliant:shards:roots: expected a list, got str``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

from reliant import platform

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping"}

DOM0_MARKER = platform.RELEASE_FILE


def is_dom0(marker: str = DOM0_MARKER) -> bool:
    """True on a Qubes dom0 (the file /etc/qubes-release exists)."""
    return os.path.isfile(marker)


def virtual(name: str, opts: Mapping[str, Any]) -> Union[str, tuple[bool, str]]:
    """`__virtual__` of the formula's modules: `name` on a Qubes dom0, else (False, reason).

    The minion option `reliant_dom0_marker` names another marker file (tests).
    """
    marker = opts.get("reliant_dom0_marker", DOM0_MARKER)
    if is_dom0(marker):
        return name
    return (False, f"{name}: not a Qubes dom0 (no {marker})")


def platform_sources(opts: Mapping[str, Any]) -> dict[str, str]:
    """Where the minion's dom0 tells its release and package versions (`reliant.platform`):
    the marker file, which is the release file, and the rpm command (minion option
    `reliant_rpm`, default `rpm`; tests name a double)."""
    return {"release_file": opts.get("reliant_dom0_marker", DOM0_MARKER),
            "rpm": opts.get("reliant_rpm", "rpm")}


def dom0_platform(opts: Mapping[str, Any]) -> platform.Platform:
    """The Qubes release and package versions of the minion's dom0."""
    return platform.read(**platform_sources(opts))


def _kind(value: Any) -> type:
    # bool is a subclass of int: test it first so that `true` is not an integer.
    for kind in (bool, int, float, str, list, dict):
        if isinstance(value, kind):
            return kind
    return type(value)


def problems(value: Any, default: Any, path: str = "reliant") -> list[str]:
    """Every place where `value` does not have the shape of `default`."""
    found: list[str] = []
    want, got = _kind(default), _kind(value)
    if want is float and got is int:
        return found
    if want is not got:
        name = _TYPE_NAMES.get(want, want.__name__)
        return [f"{path}: expected {name}, got {type(value).__name__} {value!r}"]
    if want is dict:
        if not default:  # an empty default mapping takes any keys
            return found
        for key, item in value.items():
            if key not in default:
                known = ", ".join(sorted(default))
                found.append(f"{path}:{key}: unknown key (known: {known})")
            else:
                found.extend(problems(item, default[key], f"{path}:{key}"))
    elif want is list and default:
        for index, item in enumerate(value):
            found.extend(problems(item, default[0], f"{path}:{index}"))
    return found
