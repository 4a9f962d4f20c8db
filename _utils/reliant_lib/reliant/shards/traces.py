"""What a merged shard qube leaves in dom0's /etc besides qubes.xml, made to travel with
its shard: its libvirt definition and its autostart link.

Facts (qubes-core-admin, release4.2 and release4.3):
- qubesd defines a qube in libvirt only when it starts it (`QubesVM.start` calls
  `_update_libvirt_domain`, i.e. `libvirt_conn.defineXML`; qubes/vm/qubesvm.py), over
  the connection `qubes.config.defaults["libvirt_uri"]` = ``xen:///`` (qubes/app.py,
  qubes/config.py); the domain is named after the qube (templates/libvirt/xen.xml). Its
  `libvirt_domain` only looks the qube up and reads an undefined one as halted, and it
  undefines a qube only when the qube is removed (qubes/app.py, VMCollection.__delitem__).
  libvirt's libxl driver keeps the definition in ``/etc/libvirt/libxl/NAME.xml``
  (libvirt src/libxl/libxl_conf.h, LIBXL_CONFIG_DIR) until then.
- Setting `autostart` runs ``ln -sf /usr/lib/systemd/system/qubes-vm@.service
  /etc/systemd/system/multi-user.target.wants/qubes-vm@NAME.service``; clearing it
  ``systemctl disable qubes-vm@NAME.service`` (qubes/vm/qubesvm.py,
  on_property_pre_set_autostart); qubes-vm@.service is WantedBy=multi-user.target
  (linux/systemd/qubes-vm@.service).

So when qubesd has stopped (`dissect --final`), the merged shard qubes are undefined
(``virsh -c xen:/// undefine NAME`` while libvirtd runs, else their file removed) and
their autostart links removed; suture puts the links back for the merged shard qubes
whose `autostart` is True, and qubesd defines each qube again when it starts it. A
failure is a problem naming the qube, never an exception: qubesd must start and stop.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

from reliant import store
from reliant.shards.records import property_value
from reliant.vocab import Problem

LIBVIRT_URI = "xen:///"
UNIT_TEMPLATE = "/usr/lib/systemd/system/qubes-vm@.service"
AUTOSTART_WANTS = "multi-user.target.wants"
_AUTOSTART_TRUE = b'<property name="autostart">True</property>'


class Libvirt:
    """libvirtd, reached with systemctl and virsh."""

    def __init__(self, uri: str = LIBVIRT_URI, virsh: str = "virsh",
                 systemctl: str = "systemctl") -> None:
        self.uri, self.virsh, self.systemctl = uri, virsh, systemctl

    def running(self) -> bool:
        """True if libvirtd is active (False when systemctl cannot tell)."""
        try:
            return subprocess.run([self.systemctl, "is-active", "--quiet", "libvirtd"],
                                  check=False, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def undefine(self, name: str) -> Optional[str]:
        """Undefine domain `name`; None when done, else virsh's error."""
        try:
            proc = subprocess.run([self.virsh, "-c", self.uri, "undefine", name],
                                  capture_output=True, text=True, check=False, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        return None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()


@dataclass
class Traces:
    """Where the traces are (`systemd_dir`, `libvirt_dir`) and how libvirtd is reached."""

    systemd_dir: str = "/etc/systemd/system"
    libvirt_dir: str = "/etc/libvirt/libxl"
    libvirt: Libvirt = field(default_factory=Libvirt)

    def autostart_link(self, name: str) -> str:
        return os.path.join(self.systemd_dir, AUTOSTART_WANTS, f"qubes-vm@{name}.service")

    def libvirt_definition(self, name: str) -> str:
        return os.path.join(self.libvirt_dir, f"{name}.xml")

    def restore_autostart(self, names: Iterable[str], problems: list[Problem]) -> list[str]:
        """Link each of `names` (merged shard qubes whose autostart is True) as qubesd's
        autostart setter does; the links made."""
        made = []
        for name in names:
            link = self.autostart_link(name)
            try:
                if os.path.islink(link) and os.readlink(link) == UNIT_TEMPLATE:
                    continue
                if os.path.lexists(link) and not os.path.islink(link):
                    raise OSError(f"{link} exists and is not a link")
                os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
                temporary = f"{link}.reliant~"
                if os.path.lexists(temporary):
                    os.unlink(temporary)
                os.symlink(UNIT_TEMPLATE, temporary)
                os.replace(temporary, link)
                made.append(link)
            except OSError as exc:
                problems.append(Problem("warning", "traces", f"qube {name}: autostart link "
                                        f"not made ({exc}); it will not start at boot",
                                        qube=name))
        return made

    def remove(self, names: Iterable[str], problems: list[Problem]) -> list[str]:
        """Undefine `names` (shard qubes; qubesd has stopped) in libvirt and remove their
        autostart links; the files removed. A definition is undefined through libvirtd
        while it runs (it would keep the domain otherwise), else its file is removed."""
        removed: list[str] = []
        libvirt_running: Optional[bool] = None
        for name in names:
            definition = self.libvirt_definition(name)
            if os.path.lexists(definition):
                if libvirt_running is None:
                    libvirt_running = self.libvirt.running()
                error = self.libvirt.undefine(name) if libvirt_running else None
                if error is not None:
                    problems.append(Problem("warning", "traces", f"qube {name}: virsh "
                                            f"undefine failed ({error}); removing {definition}",
                                            qube=name))
                if not os.path.lexists(definition) or self._unlink(definition, name, problems):
                    removed.append(definition)
            link = self.autostart_link(name)
            if os.path.islink(link) and self._unlink(link, name, problems):
                removed.append(link)
        return removed

    @staticmethod
    def _unlink(path: str, name: str, problems: list[Problem]) -> bool:
        try:
            os.unlink(path)
            store.fsync_dir(os.path.dirname(path))
        except OSError as exc:
            problems.append(Problem("error", "traces", f"qube {name}: {path} not removed "
                                    f"({exc}); remove it by hand", qube=name))
            return False
        return True


def autostart_qubes(shard_data: bytes, names: Iterable[str], source: str) -> list[str]:
    """Those of `names` (qubes merged from the shard file `source` of content
    `shard_data`) whose autostart is True. The file is parsed again only if some qube of
    it has autostart set (StoreError if it does not parse)."""
    if _AUTOSTART_TRUE not in shard_data:
        return []
    wanted = set(names)
    root = store.parse(shard_data, source)
    found = []
    for domain in root.iterfind("domains/domain"):
        name = property_value(domain, "name")
        if name in wanted and property_value(domain, "autostart") == "True":
            found.append(name)
    return sorted(found)
