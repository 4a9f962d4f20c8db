"""Double of qubes-mgmt-salt-base-topd's Salt module `top` (`qubesctl top.enable NAME`).

Reproduces what topd does with a top (qubes-mgmt-salt-base-topd release4.2 and main,
`_modules/topd.py`, `_utils/toputils.py`, `_utils/fileinfo.py`), with the opts Salt
built from /etc/salt/minion and minion.d/*.conf:

- it walks every root of `file_roots` (with `pillar=true`: `pillar_roots`) of each salt
  environment, following symlinks, and names each `*.top` file by its path under its
  root, after any directory named like a salt environment: `a/b.top`, `a/b/init.top`
  and the enabled link `_tops/base/a.b.top` are all the top `a.b`;
- `enable` links `<topd_base_state or topd_base_pillar>/_tops/<saltenv>/NAME.top` to the
  first such file that is not itself an enabled link, and reports `enabled` (or
  `unchanged` when the link is there);
- a name no root holds is no error for Salt: the function returns
  `{"error": "No valid top names provided: [...]"}` and salt-call exits 0, so nothing
  is enabled and the next highstate finds no state for it;
- `disable` removes an enabled link only while its target exists (`os.path.exists`):
  a link whose target is gone stays.

Left out: topd's status/report functions, `.top.d` drop-in directories, `get_top`
(the container's /srv/salt/top.sls merges the enabled links itself).
"""

# ruff: noqa: F821 - Salt's loader injects __opts__, as into _modules/
from __future__ import annotations

import os
import re

__virtualname__ = "top"


def __virtual__():
    return __virtualname__


def _settings(pillar: bool) -> tuple[dict, str]:
    """The roots topd searches and the directory of its links (`<base>/_tops`)."""
    roots, base = (("pillar_roots", "topd_base_pillar") if pillar
                   else ("file_roots", "topd_base_state"))
    default = "/srv/pillar" if pillar else "/srv/salt"
    return __opts__[roots], os.path.join(__opts__.get(base, default),
                                         __opts__.get("topd_dir", "_tops"))


def _top_name(relpath: str, saltenvs: list[str]) -> str:
    """topd's name of a top file from its path under its root (toputils.toppath): the
    path after the first directory named like a salt environment, then `/init.top` and
    `.top` dropped and `/` read as `.` (`base/a/b.top`, `_tops/base/a.b.top`: `a.b`)."""
    envs = "|".join(re.escape(env) for env in saltenvs)
    match = re.match(rf"(.*?)(?:{envs})/(.*)", relpath, re.IGNORECASE)
    if match:
        relpath = match.group(2)
    name = relpath.lower().split("/init.top")[0]
    return os.path.splitext(name)[0].replace("/", ".")


def _tops(roots: dict, link_dir: str) -> list[tuple[str, str, str, bool]]:
    """(name, saltenv, path, is an enabled link) of every top file under the roots."""
    found = []
    for saltenv, dirs in roots.items():
        for root in dirs:
            if not os.path.isdir(os.path.realpath(root)):
                continue
            for parent, _, files in sorted(os.walk(root, followlinks=True)):
                for filename in sorted(name for name in files if name.endswith(".top")):
                    path = os.path.join(parent, filename)
                    name = _top_name(os.path.relpath(path, root), list(roots))
                    found.append((name, saltenv, path, path.startswith(link_dir + os.sep)))
    return found


def _is_pillar(kwargs: dict) -> bool:
    return str(kwargs.get("pillar", False)).lower() in ("true", "1", "yes")


def enable(*names, **kwargs):
    """Enable the tops NAMES (`pillar=true`: pillar tops), as topd's `top.enable`."""
    roots, links = _settings(_is_pillar(kwargs))
    saltenv = kwargs.get("saltenv")
    tops = [top for top in _tops(roots, links) if saltenv in (None, top[1])]
    known = {top[0] for top in tops}
    wanted = [name.removesuffix(".top") for name in names]
    if not wanted or not set(wanted) & known:
        return {"error": f"No valid top names provided: {list(names)}"}
    results = {}
    for name in wanted:
        if name not in known:
            results["error"] = f"Top path not found: {name}"
            continue
        source = next((top for top in tops if top[0] == name and not top[3]), None)
        if source is None:
            results[f"{name}.top"] = {"status": "unchanged"}
            continue
        link_dir = os.path.join(links, source[1])
        os.makedirs(link_dir, exist_ok=True)
        link = os.path.join(link_dir, f"{name}.top")
        if os.path.lexists(link):
            results[f"{name}.top"] = {"status": "unchanged"}
        else:
            os.symlink(source[2], link)
            results[f"{name}.top"] = {"status": "enabled"}
    return results


def disable(*names, **kwargs):
    """Disable the tops NAMES (`pillar=true`: pillar tops), as topd's `top.disable`."""
    _, links = _settings(_is_pillar(kwargs))
    results: dict[str, list[str]] = {}
    for name in (name.removesuffix(".top") for name in names):
        enabled = [os.path.join(parent, f"{name}.top") for parent, _, files in os.walk(links)
                   if f"{name}.top" in files]
        removed = [link for link in enabled if os.path.exists(link)]
        for link in removed:
            os.remove(link)
        results.setdefault("disabled" if removed else "unchanged", []).append(f"{name}.top")
    return results
