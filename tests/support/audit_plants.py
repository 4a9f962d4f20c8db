"""Shards and planted leaks for the audit tests (unit tests and the kitchen suite).

Shards are real Shard objects built from the merged fixture: the
qubes whose data lives in pool sflc_0_1 or sflc_0_2, in shard directories named
after the pool. LEAKS plants one trace per location the audit covers.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

from reliant import store
from reliant.shards.files import SHARD_FILE, Shard, shard_bytes
from reliant.shards.records import data_pools

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CORE = "/var/lib/qubes/qubes.xml"


def make_shards(run: Path, own_roots: bool = False) -> list[Shard]:
    """Shards sflc_0_1 and sflc_0_2 of the merged fixture; `own_roots`: their qubes'
    root volumes moved from the core pool into the shard's pool (a clean setup)."""
    merged = store.load(str(FIXTURES / "qubes-r4.3-merged.xml"))
    shards = []
    for index, pool_name in enumerate(("sflc_0_1", "sflc_0_2")):
        pools = [deepcopy(p) for p in merged.find("pools") if p.get("name") == pool_name]
        domains = [deepcopy(d) for d in merged.find("domains")
                   if data_pools(d) == {pool_name}]
        if own_roots:
            for domain in domains:
                for volume in domain.find("volume-config"):
                    if volume.get("name") == "root":
                        volume.set("pool", pool_name)
        path = run / pool_name
        path.mkdir(parents=True)
        shard = Shard(path=str(path), id=pool_name,
                                     qid_range=(1000 + 500 * index, 1499 + 500 * index),
                                     depends_on=())
        shard.data = shard_bytes(shard, pools, domains)
        (path / SHARD_FILE).write_bytes(shard.data)
        shards.append(shard)
    return shards


def write(root: Path, path: str, data: str | bytes) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        target.write_text(data)
    else:
        target.write_bytes(data)


def core_only_dom0(root: Path) -> None:
    """What a dom0 with only the core qubes of the fixture keeps on disk."""
    write(root, CORE, (FIXTURES / "qubes-r4.3-core.xml").read_text())
    for name in ("work", "personal", "vault", "untrusted", "sys-net", "sys-firewall"):
        write(root, f"/var/lib/qubes/appvms/{name}/firewall.xml",
              f'<firewall version="2"><rules/></firewall><!-- {name} -->\n')
        write(root, f"/var/lib/qubes/appvms/{name}/private.img", "private image bytes\n")
        write(root, f"/var/log/qubes/guid.{name}.log", f"guid for {name} started\n")
        escaped = name.replace("-", "_d")
        write(root, f"/home/user/.local/share/applications/org.qubes-os.vm._{escaped}."
                    "org.mozilla.firefox.desktop", f"[Desktop Entry]\nExec=qvm-run {name} ff\n")
    write(root, "/var/lib/qubes/vm-templates/fedora-42-xfce/libvirt.xml", "<domain/>\n")
    write(root, "/etc/qubes/policy.d/30-user.policy",
          "qubes.Filecopy * work personal ask\nqubes.Gpg * work vault allow\n")
    write(root, "/etc/lvm/archive/qubes_dom0_00001-1.vg",
          'vm-work-private {\n  id = "x"\n}\nvm-sys--firewall\n')
    write(root, "/etc/lvm/backup/qubes_dom0", "qubes_dom0 {\n  vm-pool {}\n}\n")
    write(root, "/srv/pillar/top.sls", "base:\n  dom0:\n    - reliant\n")
    write(root, "/var/cache/salt/minion/accumulator/x", "sys-usb secrets client_secret\n")
    write(root, "/var/log/journal/0123/system.journal",
          b"LPKSHHRH\x00\x01" + b"\x00" * 64 + b"_HOSTNAME=dom0\x00QUBES_VM=work\x00" * 8)
    write(root, "/root/.bash_history", "qvm-start work\n")


# one planted leak per location: (path, data, what the finding must say)
LEAKS = [
    (CORE, None, "content names qube name 'secret-vpn' of shard sflc_0_1"),
    ("/var/lib/qubes/appvms/secret", "dir", "name contains qube name 'secret' of shard sflc_0_1"),
    ("/var/lib/qubes/vm-templates/fedora-42-xfce/libvirt.xml",
     "<disk><source dir='/run/shufflecake/sflc_0_2/pool'/></disk>",
     "content names path '/run/shufflecake/sflc_0_2/pool' of shard sflc_0_2"),
    ("/srv/pillar/notes.sls", "notes:\n  qube: deep-notes\n",
     "content names qube name 'deep-notes' of shard sflc_0_2"),
    ("/var/cache/salt/minion/files/base/x.json", '{"uuid": "274890A6-1AB1-445F-9CFE-A36E5E75C30F"}',
     "content names qube uuid '274890a6-1ab1-445f-9cfe-a36e5e75c30f' of shard sflc_0_1"),
    ("/var/log/libvirt/libxl/deep-mail.log", "started\n",
     "name contains qube name 'deep-mail' of shard sflc_0_2"),
    ("/var/log/journal/0123/user-1000.journal",
     b"LPKSHHRH\x00\x02" + b"\xff" * 100 + b"QUBES_VM=secret-dvm\x00" + b"\x00" * 100,
     "content names qube name 'secret-dvm' of shard sflc_0_1"),
    ("/etc/qubes/policy.d/30-user.policy",
     "qubes.Filecopy * work personal ask\nqubes.Gpg * secret vault allow\n",
     "content names qube name 'secret' of shard sflc_0_1"),
    ("/home/user/.local/share/applications/org.qubes-os.vm._secret_ddvm.firefox.desktop",
     "[Desktop Entry]\n", "name contains qube name 'secret-dvm' of shard sflc_0_1 "
                          "(as 'secret_ddvm')"),
    ("/home/user/.config/menus/applications-merged/user-qubes-vm-directory-_deep_dmail.menu",
     "<Menu/>\n", "name contains qube name 'deep-mail' of shard sflc_0_2 (as 'deep_dmail')"),
    ("/etc/qubes-rpc/policy/qubes.Filecopy", "deep-mail work ask\n",
     "content names qube name 'deep-mail' of shard sflc_0_2"),
    ("/etc/libvirt/libxl/secret-dvm.xml", "<domain type='xen'/>\n",
     "name contains qube name 'secret-dvm' of shard sflc_0_1"),
    ("/var/lib/libvirt/libxl/save/x.save", "uuid 9cb41288-0f18-44c6-8882-fa8f4e4ed4dc\n",
     "content names qube uuid '9cb41288-0f18-44c6-8882-fa8f4e4ed4dc' of shard sflc_0_1"),
    ("/etc/lvm/archive/qubes_dom0_00002-2.vg", 'vm-secret--vpn--private\n',
     "content names qube name 'secret-vpn' of shard sflc_0_1 (as 'secret--vpn')"),
    ("/etc/lvm/backup/qubes_dom0", 'tags = ["reliant-shard-sflc_0_2"]\n',
     "content names tag 'reliant-shard-sflc_0_2' of shard sflc_0_2"),
    # autostart link, as qubes-core-admin's autostart setter makes it (qubesvm.py)
    ("/etc/systemd/system/multi-user.target.wants/qubes-vm@secret-vpn.service",
     ("symlink", "/usr/lib/systemd/system/qubes-vm@.service"),
     "name contains qube name 'secret-vpn' of shard sflc_0_1"),
    # libxl's record of a running domain: userdata-d.DOMID.UUID.libxl-json
    ("/var/lib/xen/userdata-d.7.274890a6-1ab1-445f-9cfe-a36e5e75c30f.libxl-json",
     '{"c_info": {"type": "pvh"}}\n',
     "name contains qube uuid '274890a6-1ab1-445f-9cfe-a36e5e75c30f' of shard sflc_0_1"),
    # app menu files: the (escaped) qube name after "directory_"
    ("/home/user/.local/share/desktop-directories/qubes-vm-directory_secret_dvpn.directory",
     "[Desktop Entry]\n", "name contains qube name 'secret-vpn' of shard sflc_0_1 "
                          "(as 'secret_dvpn')"),
    ("/home/user/.config/menus/applications-merged/user-qubes-vm-directory_deep_dnotes.menu",
     "<Menu/>\n", "name contains qube name 'deep-notes' of shard sflc_0_2 (as 'deep_dnotes')"),
]


def plant(root: Path, path: str, data) -> None:
    if data is None:  # the core store: a global property naming a shard qube
        text = (root / CORE.lstrip("/")).read_text()
        write(root, path, text.replace('"default_netvm">sys-firewall<', '"default_netvm">secret-vpn<'))
    elif data == "dir":
        (root / path.lstrip("/")).mkdir(parents=True)
        write(root, path + "/firewall.xml", '<firewall version="2"/>\n')
    elif isinstance(data, tuple):  # ("symlink", target)
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(data[1])
    else:
        write(root, path, data)
