"""reliant_volatile: rendering, checked edits, regeneration by input hash, status.

GRUB and dracut run as the doubles of tests/doubles/dom0-boot, installed into a
temporary root laid out like a Qubes dom0 (install.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import volatile_root
from reliant.volatile.boot import (
    Plan,
    apply,
    get_shell_var,
    plan_absent,
    plan_configured,
    run_command,
    set_shell_var,
)
from reliant.volatile.files import managed_paths
from reliant.volatile.running import Mount, parse_mountinfo, status
from reliant.volatile.settings import Settings, VolatileError

KERNEL = "6.12.40-1.qubes.fc41.x86_64"


@pytest.fixture
def dom0(tmp_path: Path, monkeypatch) -> SimpleNamespace:
    """A temporary root with the GRUB/dracut doubles and settings pointing into it."""
    root, logs = tmp_path / "root", tmp_path / "logs"
    for name, value in volatile_root.install(root, logs).items():
        monkeypatch.setenv(name, value)
    settings = Settings(**volatile_root.settings(root))
    return SimpleNamespace(root=root, settings=settings, logs=logs)


def runs(dom0, tool: str) -> int:
    log = dom0.logs / f"{tool}.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def converge(settings: Settings) -> Plan:
    plan = plan_configured(settings, volatile_root.GRUB_BODY)
    apply(plan, settings, run_command)
    return plan


def entries(grub_cfg: str) -> dict[str, list[str]]:
    """menuentry id -> the lines of its body."""
    found, current = {}, None
    for line in Path(grub_cfg).read_text().splitlines():
        if line.startswith("menuentry "):
            current = line.split("--id '")[1].split("'")[0]
            found[current] = []
        elif line == "}":
            current = None
        elif current:
            found[current].append(line.strip())
    return found


# --- settings -----------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "message"), [
    ("default_entry", "persistent", "default_entry: 'persistent' is not one of"),
    ("volatile_title", "it's", "volatile_title"),
    ("kernel_options", "quiet $(reboot)", "option '$(reboot)'"),
    ("xen_options", "a'b", "option \"a'b\""),
    ("grub_script", "../15_x", "not a plain file name"),
    ("grub_cfg", "boot/grub.cfg", "grub_cfg: 'boot/grub.cfg' is not absolute"),
    ("default_entry", ["volatile"], "default_entry: expected a string, got list"),
])
def test_bad_settings_are_refused_naming_the_key(key, value, message):
    with pytest.raises(VolatileError) as error:
        Settings.from_pillar({key: value})
    assert message in str(error.value)


def test_unknown_setting_is_refused():
    with pytest.raises(VolatileError, match="unknown keys \\['defaultentry'\\]"):
        Settings.from_pillar({"enabled": True, "defaultentry": "volatile"})


# --- /etc/default/grub edits ------------------------------------------------------------

GRUB = 'GRUB_TIMEOUT=5\nGRUB_DEFAULT=saved\nGRUB_CMDLINE_LINUX="rhgb quiet"\n'


def test_set_shell_var_replaces_only_its_line():
    edited = set_shell_var(GRUB, "GRUB_DEFAULT", "reliant-volatile")
    assert edited == GRUB.replace("GRUB_DEFAULT=saved", 'GRUB_DEFAULT="reliant-volatile"')
    assert get_shell_var(edited, "GRUB_DEFAULT") == "reliant-volatile"


def test_set_shell_var_appends_when_unset_and_removes_on_none():
    text = 'GRUB_TIMEOUT=5'
    edited = set_shell_var(text, "GRUB_DEFAULT", "reliant-maintenance")
    assert edited == 'GRUB_TIMEOUT=5\nGRUB_DEFAULT="reliant-maintenance"\n'
    assert set_shell_var(edited, "GRUB_DEFAULT", None) == "GRUB_TIMEOUT=5\n"


def test_a_key_assigned_twice_is_refused():
    with pytest.raises(VolatileError, match="GRUB_DEFAULT is assigned 2 times"):
        set_shell_var(GRUB + "GRUB_DEFAULT=0\n", "GRUB_DEFAULT", "x")


def test_clean_removes_an_assignment_that_was_not_there_before(dom0):
    grub = Path(dom0.settings.default_grub)
    original = grub.read_text().replace("GRUB_DEFAULT=saved\n", "")
    grub.write_text(original)
    converge(dom0.settings)
    assert 'GRUB_DEFAULT="reliant-volatile"' in grub.read_text()
    apply(plan_absent(dom0.settings), dom0.settings, run_command)
    assert grub.read_text() == original


def test_a_file_of_someone_else_at_our_path_is_refused_and_kept(dom0):
    foreign = Path(dom0.settings.dracut_dropin_path)
    foreign.write_text('add_drivers+=" nvme "\n')
    with pytest.raises(VolatileError, match="exists and was not written by reliant-formula"):
        plan_configured(dom0.settings, volatile_root.GRUB_BODY)
    assert plan_absent(dom0.settings).empty()
    assert foreign.read_text() == 'add_drivers+=" nvme "\n'


def test_get_shell_var_reads_quoted_and_bare_values():
    assert get_shell_var("export GRUB_DEFAULT='a b'\n", "GRUB_DEFAULT") == "a b"
    assert get_shell_var("GRUB_DEFAULT=0 # first\n", "GRUB_DEFAULT") == "0"
    assert get_shell_var("GRUB_TIMEOUT=1\n", "GRUB_DEFAULT") is None


# --- grub entries -------------------------------------------------------------------

def test_entries_boot_xen_multiboot2_with_volatile_root(dom0):
    converge(dom0.settings)
    found = entries(dom0.settings.grub_cfg)
    volatile, maintenance = found["reliant-volatile"], found["reliant-maintenance"]
    boot = dom0.root / "boot"
    xen = f"multiboot2 {boot}/xen-4.19.3.gz placeholder console=none dom0_mem=min:1024M"
    assert any(line.startswith(xen) for line in volatile)
    linux = next(line for line in volatile if line.startswith("module2 ") and "vmlinuz" in line)
    assert linux.startswith(f"module2 {boot}/vmlinuz-{KERNEL} placeholder "
                            "root=/dev/mapper/qubes_dom0-root ro rd.luks.uuid=")
    assert linux.endswith("rhgb quiet systemd.volatile=overlay systemd.swap=0")
    assert f"module2 --nounzip {boot}/initramfs-{KERNEL}.img" in volatile
    maintenance_linux = next(line for line in maintenance if "vmlinuz" in line)
    assert "systemd.volatile" not in maintenance_linux and "systemd.swap" not in maintenance_linux
    assert maintenance_linux.endswith("rhgb quiet")
    # the stock Qubes entry is still there, and the default names ours
    assert "xen-gnulinux-simple-double" in found
    assert 'set default="reliant-volatile"' in Path(dom0.settings.grub_cfg).read_text()


def test_entries_take_the_newest_kernel_that_has_an_initramfs(dom0):
    boot = dom0.root / "boot"
    (boot / "vmlinuz-6.13.1-1.qubes.fc41.x86_64").write_text("no initramfs yet\n")
    (boot / "vmlinuz-6.12.9-1.qubes.fc41.x86_64").write_text("older\n")
    (boot / "initramfs-6.12.9-1.qubes.fc41.x86_64.img").write_text("older\n")
    (boot / "xen-4.19.10.gz").write_text("newer xen\n")
    settings = Settings(**{**vars(dom0.settings), "xen_options": "dom0_mem=max:6144M"})
    apply(plan_configured(settings, volatile_root.GRUB_BODY), settings, lambda argv: None)
    script = Path(settings.grub_script_path)
    out = subprocess.run([str(script)], capture_output=True, text=True, check=True,
                         env={**os.environ, "pkgdatadir": str(dom0.root / "usr/share/grub"),
                              "GRUB_DEVICE": "/dev/sda2", "GRUB_DEVICE_UUID": ""}).stdout
    assert f"vmlinuz-{KERNEL} placeholder root=/dev/sda2 ro" in out
    assert "xen-4.19.10.gz placeholder dom0_mem=max:6144M ${reliant_xen_rm_opts}" in out


def test_no_kernel_means_no_entries_and_a_failed_verification(dom0):
    for kernel in (dom0.root / "boot").glob("vmlinuz-*"):
        kernel.unlink()
    converge(dom0.settings)
    assert "reliant-volatile" not in entries(dom0.settings.grub_cfg)
    # never reported as converged
    assert plan_configured(dom0.settings, volatile_root.GRUB_BODY).regenerate_grub


# --- regeneration only when inputs changed ------------------------------------------------

def test_second_run_changes_nothing_and_regenerates_nothing(dom0):
    first = converge(dom0.settings)
    assert first.regenerate_initramfs and first.regenerate_grub
    assert runs(dom0, "dracut") == 1 and runs(dom0, "grub2-mkconfig") == 1
    initramfs = (dom0.root / f"boot/initramfs-{KERNEL}.img").read_text()
    assert 'add_drivers+=" overlay "' in initramfs and "Storage=volatile" in initramfs
    second = plan_configured(dom0.settings, volatile_root.GRUB_BODY)
    assert second.empty(), second.changes(dom0.settings)
    assert runs(dom0, "dracut") == 1 and runs(dom0, "grub2-mkconfig") == 1


def test_first_converge_relinquishes_the_journal_and_the_second_does_not(dom0):
    calls = []

    def run(argv):
        calls.append(argv[1:] if argv[0] == "true" else argv[:1])
        run_command(argv)

    plan = plan_configured(dom0.settings, volatile_root.GRUB_BODY)
    assert plan.relinquish_journal
    apply(plan, dom0.settings, run)
    assert ["--relinquish-var"] in calls
    assert not plan_configured(dom0.settings, volatile_root.GRUB_BODY).relinquish_journal


def test_switching_the_default_changes_only_the_default_entry(dom0):
    converge(dom0.settings)
    before = Path(dom0.settings.grub_cfg).read_text()
    grub_before = Path(dom0.settings.default_grub).read_text()
    maintenance = Settings(**{**vars(dom0.settings), "default_entry": "maintenance"})
    plan = converge(maintenance)
    assert plan.changes(maintenance).keys() == {"edited", "grub.cfg"}
    assert runs(dom0, "dracut") == 1 and runs(dom0, "grub2-mkconfig") == 2
    after = Path(dom0.settings.grub_cfg).read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert changed == [('set default="reliant-volatile"', 'set default="reliant-maintenance"')]
    grub_after = Path(dom0.settings.default_grub).read_text()
    assert grub_after == grub_before.replace('"reliant-volatile"', '"reliant-maintenance"')
    assert plan_configured(maintenance, volatile_root.GRUB_BODY).empty()


def test_a_failed_mkconfig_keeps_the_initramfs_stamp_and_retries_grub(dom0):
    failing = Settings(**{**vars(dom0.settings), "mkconfig": "/bin/false"})
    with pytest.raises(VolatileError, match=r"/bin/false -o .* failed with exit code 1"):
        converge(failing)
    assert runs(dom0, "dracut") == 1
    retry = plan_configured(dom0.settings, volatile_root.GRUB_BODY)
    assert not retry.regenerate_initramfs and retry.regenerate_grub
    converge(dom0.settings)
    assert runs(dom0, "dracut") == 1 and runs(dom0, "grub2-mkconfig") == 1


def test_a_corrupt_state_file_is_named(dom0):
    Path(dom0.settings.state_file).parent.mkdir(parents=True)
    Path(dom0.settings.state_file).write_text("{oops")
    with pytest.raises(VolatileError, match=r"volatile\.json: not valid JSON"):
        plan_configured(dom0.settings, volatile_root.GRUB_BODY)


def test_absent_restores_grub_default_and_regenerates(dom0):
    original = Path(dom0.settings.default_grub).read_text()
    converge(dom0.settings)
    state = json.loads(Path(dom0.settings.state_file).read_text())
    assert state["grub_default_line_before"] == "GRUB_DEFAULT=saved"
    plan = plan_absent(dom0.settings)
    apply(plan, dom0.settings, run_command)
    assert Path(dom0.settings.default_grub).read_text() == original  # byte for byte
    for path in managed_paths(dom0.settings):
        assert not os.path.lexists(path)
    assert not os.path.exists(dom0.settings.state_file)
    assert "reliant-volatile" not in Path(dom0.settings.grub_cfg).read_text()
    assert "overlay" not in (dom0.root / f"boot/initramfs-{KERNEL}.img").read_text()
    assert plan_absent(dom0.settings).empty()


# --- status -----------------------------------------------------------------------------

OVERLAY_ROOT = ("30 1 0:31 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/sysroot,"
                "upperdir=/run/systemd/overlay-sysroot/upper,workdir=/run/systemd/overlay-sysroot/work\n")


def fake_statvfs(path: str) -> os.statvfs_result:
    assert path == "/"
    # f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_flag f_namemax
    return os.statvfs_result((4096, 4096, 1000, 750, 750, 0, 0, 0, 0, 255))


@pytest.mark.parametrize(("cmdline", "mountinfo", "mode"), [
    ("ro systemd.volatile=overlay systemd.swap=0", OVERLAY_ROOT, "volatile"),
    ("ro quiet", "22 1 253:0 / / rw - ext4 /dev/dm-0 rw\n", "maintenance"),
    ("ro systemd.volatile=overlay", "22 1 253:0 / / rw - ext4 /dev/dm-0 rw\n",
     "volatile-failed"),
])
def test_status_tells_the_mode(dom0, cmdline, mountinfo, mode):
    Path(dom0.settings.volatile_root).parent.mkdir(parents=True)
    Path(dom0.settings.volatile_root).symlink_to("/dev/dm-0")  # systemd-volatile-root's
    Path(dom0.settings.cmdline).write_text(cmdline + "\n")
    Path(dom0.settings.mountinfo).write_text(mountinfo)
    Path(dom0.settings.swaps).write_text(
        "Filename Type Size Used Priority\n/dev/dm-1 partition 8388604 0 -2\n")
    result = status(dom0.settings, statvfs=fake_statvfs)
    assert result["mode"] == mode
    assert result["swap_active"] == ["/dev/dm-1"]
    if mode == "volatile":
        assert result["upper_used_bytes"] == 250 * 4096
        assert result["upper_size_bytes"] == 1000 * 4096
        assert result["problems"] == [
            "swap is on (/dev/dm-1): pages of RAM, the overlay's upper layer included, may "
            "be written to disk"]
    else:
        assert "upper_used_bytes" not in result
    if mode == "volatile-failed":
        assert result["problems"] == [
            "systemd.volatile=overlay is on the kernel command line but / is ext4: every "
            "write of this boot reaches the disk (the initramfs lacks systemd-volatile-root "
            "or the overlay driver)"]
    if mode == "maintenance":
        assert result["problems"] == []


def test_parse_mountinfo_unescapes_paths():
    mounts = parse_mountinfo("40 22 0:50 / /mnt/a\\040b rw - tmpfs tmpfs rw,size=10k\n")
    assert mounts == [Mount("/mnt/a b", "tmpfs", "tmpfs", "rw,size=10k")]


def test_boot_is_made_read_only_only_in_volatile_mode(dom0):
    converge(dom0.settings)
    unit = Path(dom0.settings.boot_ro_unit_path).read_text()
    assert "ConditionKernelCommandLine=systemd.volatile=overlay\n" in unit
    assert "mount -o remount,ro" in unit and "/boot/efi /boot" in unit
    wants = Path(dom0.settings.boot_ro_wants_path)
    assert wants.parent.name == "local-fs.target.d"
    assert "Wants=reliant-volatile-boot-ro.service\n" in wants.read_text()
    # not an input of the initramfs or of grub.cfg
    assert plan_configured(dom0.settings, volatile_root.GRUB_BODY).empty()
