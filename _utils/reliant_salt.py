"""What the formula's execution and state modules share on Salt's side.

- `salt_errors(*errors)`: the one place where a refusal of the library becomes Salt's
  CommandExecutionError (salt-call exits 1), with the library's message;
- `converge(...)`: the run of a state: the difference first, nothing to do when there is
  none, an exact prediction with test=True, then the change and its verification;
- `formula_settings(...)`: the formula's defaults (parameters/defaults.yaml, the one
  source of every default) merged with pillar `reliant`;
- `formula_file(...)`: a file the formula installs, from Salt's fileserver.

The modules import it at module level, like `reliant_lib_path` (Salt puts its utils
directories on sys.path while it loads them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Optional

import yaml
from salt.exceptions import CommandExecutionError

DEFAULTS_FILE = "salt://reliant/parameters/defaults.yaml"


@contextlib.contextmanager
def salt_errors(*errors: type[BaseException]) -> Iterator[None]:
    """Raise CommandExecutionError with the message of any of `errors` raised inside."""
    try:
        yield
    except errors as exc:
        raise CommandExecutionError(str(exc)) from None


def converge(name: str, test: bool, *, pending: Callable[[], dict],
             apply: Callable[[], Optional[dict]], left: Callable[[], list[str]],
             errors: tuple[type[BaseException], ...], done: str,
             would: Callable[[dict], str], changed: Callable[[dict], str],
             failed: str = "{}", alarm: Callable[[], list[str]] = list,
             refuse: Callable[[dict], Optional[str]] = lambda changes: None,
             changes_on_failure: bool = False) -> dict[str, Any]:
    """A state's return: difference -> test -> apply -> verify.

    pending: the changes to make ({}: none; one of `errors`: refused, nothing done);
    refuse: why these changes must not be made now (None: they may);
    apply: make them (returns the changes made, or None for those predicted);
    left: what still differs afterwards, each a message ([]: converged);
    alarm: problems that fail the state even when nothing is to change;
    done / would / changed: comments when converged, predicted, changed; failed: the
    comment when applying raised one of `errors` (``{}``: its message), with the
    predicted changes if `changes_on_failure` (some may be made), else none.
    """
    ret: dict[str, Any] = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        changes = pending()
    except errors as exc:
        return {**ret, "comment": str(exc)}
    if not changes:
        problems = alarm()
        return {**ret, "result": not problems, "comment": "; ".join([done, *problems])}
    why = refuse(changes)
    if why:
        return {**ret, "comment": why}
    if test:
        problems = alarm()
        return {**ret, "result": None if not problems else False, "changes": changes,
                "comment": "; ".join([would(changes), *problems])}
    try:
        made = apply()
        remaining = left()
    except errors as exc:
        return {**ret, "changes": changes if changes_on_failure else {},
                "comment": failed.format(exc)}
    changes = changes if made is None else made
    if remaining:
        return {**ret, "changes": changes, "comment": "; ".join(remaining)}
    problems = alarm()
    return {**ret, "result": not problems, "changes": changes,
            "comment": "; ".join([changed(changes), *problems])}


def formula_settings(salt: Any, pillar: Any) -> dict[str, Any]:
    """parameters/defaults.yaml merged with pillar `reliant` (as map.jinja merges them);
    `salt` and `pillar` are the module's ``__salt__`` and ``__pillar__``."""
    defaults = (yaml.safe_load(salt["cp.get_file_str"](DEFAULTS_FILE) or "") or {}).get(
        "reliant", {})
    # __pillar__, not pillar.get: Salt 3008 masks what pillar.get returns to modules
    return salt["slsutil.merge"](defaults, _plain(pillar.get("reliant", {})),
                                 strategy="recurse", merge_lists=False)


def _plain(value: Any) -> Any:
    """Plain dicts and lists (Salt 3008 wraps pillar in masking subclasses)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def formula_file(salt: Any, url: str) -> bytes:
    """The bytes of `url` (salt://...) from the fileserver; FileNotFoundError if absent.
    `salt` is the module's ``__salt__``."""
    cached = salt["cp.cache_file"](url)
    if not cached:
        raise FileNotFoundError(f"{url} not found on the fileserver")
    with open(cached, "rb") as handle:
        return handle.read()
