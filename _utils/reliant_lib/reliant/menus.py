"""Application menus of shard qubes, made in the desktop user's home after `attach` and
removed at `detach` (in the volatile boot that home is in RAM).

Read from qubes-desktop-linux-common (https://github.com/QubesOS/qubes-desktop-linux-common,
branch main; release4.2 alike):

- qubesd's appmenus extension (``qubesappmenusext/__init__.py``) makes a qube's menus when
  the qube is created or changed, not when qubesd loads its store: a shard qube merged by
  `attach` has none unless they are made here.
- Menus are made by ``qvm-appmenus`` (``qubesappmenus/__init__.py``) run as the desktop
  user, whom the extension (``run_as_user``) and the ``qubes.UpdateAppMenusFor`` and
  ``qubes.RemoveAppMenusFor`` services find as the first member of the group ``qubes``:
  ``runuser -u USER -- env DISPLAY=:0 qvm-appmenus --update --force --quiet -- NAME``,
  and ``--remove --quiet -- NAME...`` to remove them (by name: the qube need not exist).
- The extension asks the qube's GUI qube (``guivm``, default the global
  ``default_guivm``, itself default dom0: qubes-core-admin ``qubes/vm/qubesvm.py``,
  ``qubes/app.py``); only qubes whose GUI runs in dom0 get their menus in dom0.
- The files (``vm_name_escape``: ``_`` + the name with ``_`` -> ``_u``, ``-`` -> ``_d``,
  ``.`` -> ``_p``): ``~/.local/share/qubes-appmenus/NAME/``, and what
  ``xdg-desktop-menu install`` copies of them: ``~/.local/share/applications/
  org.qubes-os.vm.ESC.*`` (``org.qubes-os.dispvm.ESC.*``,
  ``org.qubes-os.qubes-vm-settings.ESC.desktop``), ``~/.local/share/desktop-directories/
  qubes-vm-directoryESC.directory`` and ``~/.config/menus/applications-merged/
  user-qubes-vm-directoryESC.menu`` (``qubes-dispvm-directory`` alike).

A failure to make menus never fails `attach`: it is a warning naming the qube.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from lxml import etree

from reliant.shards.records import QubeRecord, property_value
from reliant.vocab import SHARD_TAG_PREFIX, shard_tag

APPMENUS = "qvm-appmenus"
DESKTOP_GROUP = "qubes"
ADMIN_NAME = "dom0"


def escape(name: str) -> str:
    """A qube name as qvm-appmenus puts it in file names (vm_name_escape)."""
    return "_" + name.replace("_", "_u").replace("-", "_d").replace(".", "_p")


def menu_paths(home: str, name: str) -> list[str]:
    """The menu files and directories of qube `name` that exist under `home`."""
    esc = escape(name)
    share = os.path.join(home, ".local", "share")
    patterns = [
        os.path.join(share, "qubes-appmenus", name),
        os.path.join(share, "applications", f"org.qubes-os.vm.{esc}.*"),
        os.path.join(share, "applications", f"org.qubes-os.dispvm.{esc}.*"),
        os.path.join(share, "applications", f"org.qubes-os.qubes-vm-settings.{esc}.desktop"),
    ]
    for kind in ("qubes-vm-directory", "qubes-dispvm-directory"):
        patterns.append(os.path.join(share, "desktop-directories", f"{kind}{esc}.directory"))
        patterns.append(os.path.join(home, ".config", "menus", "applications-merged",
                                     f"user-{kind}{esc}.menu"))
    return sorted(path for pattern in patterns for path in glob.glob(
        os.path.join(glob.escape(os.path.dirname(pattern)), os.path.basename(pattern))))


@dataclass(frozen=True)
class Desktop:
    """Whose menus: `user` to switch to (None: the current user) and that user's home."""

    user: Optional[str]
    home: str

    @classmethod
    def find(cls) -> Optional[Desktop]:
        """The desktop user of dom0 (the first member of group `qubes`), None if there is
        none or this process may not act as them."""
        try:
            members = grp.getgrnam(DESKTOP_GROUP).gr_mem
            entry = pwd.getpwnam(members[0]) if members else None
        except KeyError:
            return None
        if entry is None:
            return None
        if os.geteuid() == 0:
            return cls(entry.pw_name, entry.pw_dir)
        return cls(None, entry.pw_dir) if os.geteuid() == entry.pw_uid else None

    def run(self, *args: str) -> Optional[str]:
        """Run qvm-appmenus with `args` as the desktop user; None if it worked, else why
        not."""
        prefix = ["runuser", "-u", self.user, "--", "env", "DISPLAY=:0"] if self.user else []
        env = None if self.user else dict(os.environ, HOME=self.home)
        try:
            result = subprocess.run([*prefix, APPMENUS, *args], check=False, env=env,
                                    capture_output=True, text=True)
        except OSError as exc:
            return f"{exc.filename or APPMENUS}: {exc.strerror}"
        if result.returncode:
            return result.stderr.strip() or f"exit status {result.returncode}"
        return None


def merged_qubes(merged_root: etree._Element, shard_ids: Optional[Iterable[str]] = None,
                 gui_in_dom0: bool = False) -> list[str]:
    """Names of the qubes of `shard_ids` (default: of every shard) in a merged store, by
    their tag; with `gui_in_dom0`, only those whose GUI qube is dom0."""
    tags = None if shard_ids is None else {shard_tag(sid) for sid in shard_ids}
    default_guivm = property_value(merged_root, "default_guivm")
    names = []
    for domain in merged_root.iterfind("domains/domain"):
        record = QubeRecord(domain)
        if not any(tag.startswith(SHARD_TAG_PREFIX) and (tags is None or tag in tags)
                   for tag in record.group_tags):
            continue
        guivm = property_value(domain, "guivm")
        if guivm is None:
            guivm = ADMIN_NAME if default_guivm is None else default_guivm
        if not gui_in_dom0 or guivm == ADMIN_NAME:
            names.append(record.name)
    return sorted(names)


def make_menus(desktop: Optional[Desktop], names: Sequence[str]) -> list[str]:
    """Make the menus of each qube of `names`; a warning for each that failed."""
    if not names:
        return []
    if desktop is None:
        return [f"no desktop user (group {DESKTOP_GROUP} has no member this command can act "
                f"as): menus of {', '.join(names)} not made"]
    warnings = []
    for name in names:
        failure = desktop.run("--update", "--force", "--quiet", "--", name)
        if failure:
            warnings.append(f"menus of {name} not made: {failure}")
    return warnings


def remove_menus(desktop: Optional[Desktop], names: Sequence[str]) -> list[str]:
    """Remove the menus of `names`; a warning naming each qube whose files remain."""
    if not names or desktop is None:
        return []
    failure = desktop.run("--remove", "--quiet", "--", *names)
    warnings = [f"{APPMENUS} --remove failed: {failure}"] if failure else []
    for name in names:
        left = menu_paths(desktop.home, name)
        if left:
            warnings.append(f"menus of {name} not removed; remove by hand: {' '.join(left)}")
    return warnings
