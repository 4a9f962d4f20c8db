"""Suite `volatile`: boot entries, initramfs and journald settings, mode switch, audit.

Runs after the kitchen converge (highstate, a second highstate with no change, a
test=True run with no change). GRUB and dracut are the doubles of
tests/doubles/dom0-boot; each appends one line per run to /run/reliant-doubles/.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from audit_plants import CORE, LEAKS, make_shards, plant

INSTANCE = os.environ.get("KITCHEN_INSTANCE", "volatile-dom0")
PILLAR = "/srv/pillar/base/reliant/init.sls"
GRUB_CFG = "/boot/grub2/grub.cfg"


def runs(host, tool: str) -> int:
    log = host.file(f"/run/reliant-doubles/{tool}.log")
    return len(log.content_string.splitlines()) if log.exists else 0


def highstate(host) -> dict:
    result = host.run("salt-call --local --retcode-passthrough --out json state.highstate")
    assert result.rc == 0, result.stdout + result.stderr
    return json.loads(result.stdout)["local"]


def changed(states: dict) -> dict:
    return {ret["__id__"]: ret["changes"] for ret in states.values() if ret["changes"]}


def menu_entries(text: str) -> dict[str, list[str]]:
    found, current = {}, None
    for line in text.splitlines():
        if line.startswith("menuentry "):
            current = line.split("--id '")[1].split("'")[0]
            found[current] = []
        elif line.strip() == "}":
            current = None
        elif current:
            found[current].append(line.strip())
    return found


def podman(*args: str) -> None:
    subprocess.run(["podman", *args], check=True, capture_output=True)


def test_grub_cfg_has_the_volatile_and_the_maintenance_entry(host):
    text = host.file(GRUB_CFG).content_string
    entries = menu_entries(text)
    assert 'set default="reliant-volatile"' in text
    kernel = host.check_output("ls /boot | grep vmlinuz-").strip()
    version = kernel.removeprefix("vmlinuz-")
    for entry_id in ("reliant-volatile", "reliant-maintenance"):
        body = entries[entry_id]
        assert any(line.startswith("multiboot2 /boot/xen-") and " placeholder " in line
                   for line in body)
        assert f"module2 --nounzip /boot/initramfs-{version}.img" in body
    volatile = next(line for line in entries["reliant-volatile"] if "vmlinuz" in line)
    maintenance = next(line for line in entries["reliant-maintenance"] if "vmlinuz" in line)
    assert volatile.startswith(f"module2 /boot/{kernel} placeholder "
                               "root=/dev/mapper/qubes_dom0-root ro ")
    assert volatile.endswith(" systemd.volatile=overlay systemd.swap=0")
    assert maintenance == volatile.removesuffix(" systemd.volatile=overlay systemd.swap=0")
    titles = [line for line in text.splitlines() if line.startswith("menuentry 'Qubes, ")]
    assert any("MAINTENANCE" in title and "written to disk" in title for title in titles)


def test_grub_default_is_the_only_edit_of_etc_default_grub(host):
    text = host.file("/etc/default/grub").content_string
    assert 'GRUB_DEFAULT="reliant-volatile"\n' in text
    assert "GRUB_DEFAULT=saved" not in text
    assert 'GRUB_CMDLINE_XEN_DEFAULT="console=none dom0_mem=min:1024M' in text


def test_dracut_and_journald_dropins_and_the_initramfs(host):
    dracut = host.file("/etc/dracut.conf.d/50-reliant-volatile.conf")
    assert dracut.mode == 0o644
    assert 'add_drivers+=" overlay "' in dracut.content_string
    assert "/usr/lib/systemd/systemd-volatile-root " in dracut.content_string
    journald = host.file("/etc/systemd/journald.conf.d/50-reliant-volatile.conf")
    assert "[Journal]\nStorage=volatile\n" in journald.content_string
    initramfs = host.check_output("cat /boot/initramfs-*.img")
    assert 'add_drivers+=" overlay "' in initramfs and "Storage=volatile" in initramfs
    script = host.file("/etc/grub.d/15_reliant_volatile")
    assert script.mode == 0o755


def test_boot_read_only_unit_is_valid_and_pulled_in_but_inactive_here(host):
    unit = "reliant-volatile-boot-ro.service"
    verify = host.run(f"systemd-analyze verify /etc/systemd/system/{unit}")
    assert verify.rc == 0, verify.stderr
    wants = host.check_output("systemctl show -p Wants --value local-fs.target")
    assert unit in wants.split()
    # this kernel command line has no systemd.volatile: the condition keeps it off
    host.run(f"systemctl start {unit}")
    assert host.check_output(f"systemctl show -p ConditionResult --value {unit}") == "no"


def test_three_converges_regenerated_once(host):
    # converge, converge again, test=True: one initramfs and one grub.cfg generation
    assert runs(host, "dracut") == 1
    assert runs(host, "grub2-mkconfig") == 1


def test_running_mode_is_maintenance_here(host):
    out = json.loads(host.check_output("salt-call --local --out json reliant_volatile.status"))
    assert out["local"]["mode"] == "maintenance"  # no systemd.volatile on this kernel


@pytest.fixture
def restore_pillar(host):
    original = host.file(PILLAR).content_string
    yield
    host.run(f"cat > {PILLAR} <<'EOF'\n{original}EOF")
    highstate(host)


def test_switching_the_default_changes_only_the_default_entry(host, restore_pillar):
    before = host.file(GRUB_CFG).content_string
    dracut_runs, grub_runs = runs(host, "dracut"), runs(host, "grub2-mkconfig")
    host.run(f"sed -i 's/default_entry: volatile/default_entry: maintenance/' {PILLAR}")
    states = highstate(host)
    assert changed(states) == {"reliant-volatile-boot": {
        "edited": "/etc/default/grub", "grub.cfg": f"grub2-mkconfig -o {GRUB_CFG}"}}
    after = host.file(GRUB_CFG).content_string
    diff = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert diff == [('set default="reliant-volatile"', 'set default="reliant-maintenance"')]
    assert len(before.splitlines()) == len(after.splitlines())
    assert (runs(host, "dracut"), runs(host, "grub2-mkconfig")) == (dracut_runs, grub_runs + 1)
    assert changed(highstate(host)) == {}


@pytest.fixture
def planted(host, tmp_path):
    """Two open shards under /run/shufflecake; undone afterwards."""
    make_shards(tmp_path / "shufflecake", own_roots=True)
    podman("cp", str(tmp_path / "shufflecake"), f"{INSTANCE}:/run/")
    core = host.file(CORE).content_string
    yield tmp_path
    host.run("rm -rf /run/shufflecake")
    for path, _data, _reason in LEAKS:
        if path != CORE:
            host.run(f"rm -rf '{path}'")
    host.run(f"cat > {CORE} <<'EOF'\n{core}EOF")


def audit(host) -> list[tuple[str, str, str]]:
    out = json.loads(host.check_output("salt-call --local --out json reliant_audit.run"))
    return sorted((f["path"], f["reason"], f["storage"]) for f in out["local"]["findings"])


def test_audit_finds_each_planted_leak_and_nothing_else(host, planted):
    # a dom0 with only core qubes, after three highstates: no false positive
    assert audit(host) == []
    tree = planted / "tree"
    (tree / CORE.lstrip("/")).parent.mkdir(parents=True)
    (tree / CORE.lstrip("/")).write_text(host.file(CORE).content_string)
    for path, data, _reason in LEAKS:
        plant(tree, path, data)
    podman("cp", f"{tree}/.", f"{INSTANCE}:/")
    assert audit(host) == sorted((path, reason, "disk") for path, _data, reason in LEAKS)
    result = host.run("salt-call --local --retcode-passthrough --out json "
                      "state.apply reliant.audit")
    assert result.rc != 0
    ret = next(iter(json.loads(result.stdout)["local"].values()))
    assert ret["comment"].startswith(f"{len(LEAKS)} trace(s) of open shards on dom0's disk (")
    assert "secret" not in ret["comment"] and "deep-" not in ret["comment"]


@pytest.fixture
def disk_under_overlay(host, planted):
    """A stand-in for the disk under a volatile root: an ext4 image holding the core store
    and two traces, attached read-only to a loop device that /run/systemd/volatile-root
    names, as systemd-volatile-root records it. Mode files say volatile."""
    tree = "/tmp/reliant-disk-tree"
    host.run(f"rm -rf {tree} && mkdir -p {tree}/var/lib/qubes && cp {CORE} {tree}{CORE}")
    host.run(f"mkdir -p {tree}/etc/lvm/backup {tree}/var/log/libvirt/libxl")
    host.run(f"""printf 'tags = ["reliant-shard-sflc_0_2"]\\n' > {tree}/etc/lvm/backup/qubes_dom0""")
    host.run(f"echo started > {tree}/var/log/libvirt/libxl/deep-mail.log")
    host.check_output(f"truncate -s 32M /tmp/reliant-disk.img && "
                      f"mkfs.ext4 -q -F -d {tree} /tmp/reliant-disk.img")
    loop = host.check_output("losetup --find --show --read-only /tmp/reliant-disk.img").strip()
    host.run(f"ln -sfn {loop} /run/systemd/volatile-root")
    host.run("echo 'placeholder ro systemd.volatile=overlay systemd.swap=0' > /tmp/cmdline")
    host.run("echo '1 0 0:31 / / rw - overlay overlay rw,lowerdir=/sysroot' > /tmp/mountinfo")
    yield loop
    host.run(f"losetup -d {loop}; rm -rf {tree} /tmp/reliant-disk.img /tmp/cmdline "
             "/tmp/mountinfo /run/systemd/volatile-root")


def test_audit_in_volatile_mode_tells_disk_from_ram(host, disk_under_overlay):
    # running dom0: the LVM backup (also on disk) and a qube directory created since boot;
    # the libxl log exists on disk only (deleted since boot)
    host.run("""printf 'tags = ["reliant-shard-sflc_0_2"]\\n' > /etc/lvm/backup/qubes_dom0""")
    host.run("mkdir -p /var/lib/qubes/appvms/secret")
    volatile = json.dumps({"cmdline": "/tmp/cmdline", "mountinfo": "/tmp/mountinfo"})
    out = json.loads(host.check_output(
        f"salt-call --local --out json reliant_audit.run volatile='{volatile}'"))["local"]
    assert out["mode"] == "volatile" and out["shards"] == 2
    assert sorted((f["path"], f["storage"]) for f in out["findings"]) == [
        ("/etc/lvm/backup/qubes_dom0", "disk"),
        ("/var/lib/qubes/appvms/secret", "ram"),
        ("/var/log/libvirt/libxl/deep-mail.log", "disk"),
    ]
    deleted = next(f for f in out["findings"] if f["path"].endswith("deep-mail.log"))
    assert deleted["reason"].endswith("(deleted in the running dom0, still on disk)")
    # the disk view was mounted read-only for the scan only
    assert "/run/reliant/audit-disk" not in host.check_output("cat /proc/self/mountinfo")
    host.run("rm -rf /etc/lvm/backup/qubes_dom0 /var/lib/qubes/appvms/secret")


def test_audit_reads_journal_entries_that_journald_compressed(host, planted):
    # journald (Storage=volatile here: /run/log/journal) compresses long values
    host.run("""msg="$(head -c 600 /dev/urandom | base64 -w0) qube deep-notes started \
$(head -c 300 /dev/urandom | base64 -w0)"; printf '%s\\n' "$msg" | logger -t qrexec""")
    host.run("journalctl --sync")
    source = host.check_output("ls /run/log/journal/*/system.journal").strip()
    copy = "/var/log/journal/reliant-test/system.journal"
    host.run(f"mkdir -p /var/log/journal/reliant-test && cp {source} {copy}")
    try:
        assert host.run(f"grep -c deep-notes {copy}").stdout.strip() == "0"  # not in raw bytes
        assert audit(host) == [
            (copy, "content names qube name 'deep-notes' of shard sflc_0_2", "disk")]
    finally:
        host.run("rm -rf /var/log/journal/reliant-test")


def test_clean_restores_the_boot_setup_last(host):
    """Runs last: removes the setup, then checks dom0 is as the image left it."""
    result = host.run("salt-call --local --retcode-passthrough --out json "
                      "state.apply reliant.volatile.clean")
    assert result.rc == 0, result.stdout + result.stderr
    # byte for byte the file the image was built with
    image_grub = Path(__file__).resolve().parents[2] / "doubles/dom0-boot/default-grub"
    assert host.file("/etc/default/grub").content_string == image_grub.read_text()
    for path in ("/etc/grub.d/15_reliant_volatile", "/etc/dracut.conf.d/50-reliant-volatile.conf",
                 "/etc/systemd/journald.conf.d/50-reliant-volatile.conf",
                 "/etc/systemd/system/reliant-volatile-boot-ro.service",
                 "/etc/systemd/system/local-fs.target.d/50-reliant-volatile.conf",
                 "/var/lib/reliant/volatile.json"):
        assert not host.file(path).exists, path
    assert "reliant-" not in host.file(GRUB_CFG).content_string
    assert "overlay" not in host.check_output("cat /boot/initramfs-*.img")
    again = json.loads(host.check_output(
        "salt-call --local --out json state.apply reliant.volatile.clean"))["local"]
    assert all(not ret["changes"] for ret in again.values())
