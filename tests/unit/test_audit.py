"""reliant_audit: a planted leak in each location is found; a core-only dom0 is clean.

Shards and leaks come from tests/support/audit_plants.py (shared with the kitchen suite).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from audit_plants import CORE, LEAKS, core_only_dom0, make_shards, plant, write
from reliant import audit
from reliant.volatile.running import parse_mountinfo


@pytest.fixture
def dom0(tmp_path: Path):
    root = tmp_path / "root"
    core_only_dom0(root)
    return root


def test_core_only_dom0_has_no_finding(dom0, tmp_path, matcher):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    assert audit.audit(shards, CORE, str(dom0)) == []


def test_no_open_shard_means_nothing_to_look_for(dom0):
    assert audit.audit([], CORE, str(dom0)) == []


@pytest.fixture(params=["python", "grep"])
def matcher(request, monkeypatch):
    """Both ways a stream is read: the exact matcher alone, and grep -F in front of it
    (used from GREP_FROM bytes on; 0 here so that every file takes that way)."""
    if request.param == "grep":
        monkeypatch.setattr(audit, "GREP_FROM", 0)
    return request.param


@pytest.mark.parametrize(("path", "data", "reason"), LEAKS, ids=[leak[0] for leak in LEAKS])
def test_each_planted_leak_is_found_and_nothing_else(dom0, tmp_path, path, data, reason,
                                                     matcher):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    plant(dom0, path, data)
    findings = audit.audit(shards, CORE, str(dom0))
    assert [(f.path, f.reason, f.storage) for f in findings] == [(path, reason, audit.DISK)]


def test_all_planted_leaks_at_once(dom0, tmp_path):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    for path, data, _ in LEAKS:
        plant(dom0, path, data)
    found = {(f.path, f.reason) for f in audit.audit(shards, CORE, str(dom0))}
    assert found == {(path, reason) for path, data, reason in LEAKS}


def test_shard_volumes_writing_into_a_core_pool(dom0, tmp_path):
    shards = make_shards(tmp_path / "run/shufflecake")  # roots as in the fixture: vm-pool
    findings = audit.audit(shards, CORE, str(dom0))
    assert {f.path for f in findings} == {"lvm:qubes_dom0/vm-pool"}
    assert sorted(f.reason for f in findings) == [
        f"qube {name!r} of shard {shard}: volume 'root' (a snapshot of its template's volume) "
        "writes into core pool 'vm-pool'"
        for name, shard in (("deep-mail", "sflc_0_2"), ("secret", "sflc_0_1"),
                            ("secret-dvm", "sflc_0_1"), ("secret-vpn", "sflc_0_1"))]


def test_a_leak_across_a_chunk_boundary_is_found(dom0, tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "CHUNK", 64)
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    write(dom0, "/var/log/messages", "x" * 60 + " deep-notes started\n")
    findings = audit.audit(shards, CORE, str(dom0))
    assert [f.reason for f in findings] == [
        "content names qube name 'deep-notes' of shard sflc_0_2"]


def test_words_that_only_contain_a_name_are_not_findings(dom0, tmp_path, matcher):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    write(dom0, "/var/log/app.log",
          "secrets, client2secret, client_secret, secret_key, secretive, undeep-notesx\n")
    assert audit.audit(shards, CORE, str(dom0)) == []


def test_symlinks_are_not_followed_but_their_targets_are_read(dom0, tmp_path):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "deep-mail.txt").write_text("deep-mail")
    os.symlink(outside, dom0 / "var/log/link-out")
    os.symlink("/run/shufflecake/sflc_0_1/pool/appvms/secret", dom0 / "var/log/link-a")
    findings = audit.audit(shards, CORE, str(dom0))
    assert [(f.path, f.reason) for f in findings] == [
        ("/var/log/link-a", "symlink target names path '/run/shufflecake/sflc_0_1/pool' of "
                            "shard sflc_0_1"),
        ("/var/log/link-a", "symlink target names qube name 'secret' of shard sflc_0_1")]


def test_bounds_that_are_hit_are_findings(dom0, tmp_path):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    write(dom0, "/var/log/big.log", "y" * 5000)
    findings = audit.audit(shards, CORE, str(dom0), limits=audit.Limits(max_file_bytes=4096))
    too_big = "not fully read: larger than 4096 bytes (reliant:audit:max_file_bytes)"
    assert [(f.path, f.reason) for f in findings] == [
        (CORE, too_big), ("/var/log/big.log", too_big)]
    findings = audit.audit(shards, CORE, str(dom0), limits=audit.Limits(max_files=5))
    assert len(findings) == 1 and findings[0].reason.startswith("not fully scanned: more than 5")
    findings = audit.audit(shards, CORE, str(dom0), paths=["/home"], limits=audit.Limits(max_depth=2))
    assert {f.reason for f in findings} == {
        "not fully scanned: deeper than 2 levels (reliant:audit:max_depth)"}


def test_image_contents_are_skipped_but_their_names_checked(dom0, tmp_path):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    write(dom0, "/var/lib/qubes/appvms/work/private.img", "deep-mail was here\n")
    write(dom0, "/var/lib/qubes/appvms/work/deep-mail-copy.img", "\n")
    findings = audit.audit(shards, CORE, str(dom0))
    assert [(f.path, f.reason) for f in findings] == [(
        "/var/lib/qubes/appvms/work/deep-mail-copy.img",
        "name contains qube name 'deep-mail' of shard sflc_0_2")]


def test_the_shards_own_directories_are_not_findings(dom0, tmp_path):
    run = dom0 / "run/shufflecake"
    shards = make_shards(run, own_roots=True)
    assert audit.audit(shards, CORE, str(dom0), paths=[*audit.DEFAULT_PATHS, "/run"]) == []


def test_unreadable_core_store_is_an_error(dom0, tmp_path):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    (dom0 / CORE.lstrip("/")).write_text("<qubes><!DOCTYPE x></qubes>")
    with pytest.raises(audit.AuditError, match=r"qubes\.xml"):
        audit.audit(shards, CORE, str(dom0))


# --- volatile mode: disk or RAM ---------------------------------------------------------

MOUNTS = parse_mountinfo(
    "30 1 0:31 / / rw - overlay overlay rw,lowerdir=/sysroot\n"
    "40 30 253:3 / /home rw - ext4 /dev/mapper/qubes_dom0-home rw\n"
    "41 30 0:40 / /home/user/.cache rw - tmpfs tmpfs rw\n")


def test_split_by_storage_follows_other_mounts():
    live = [audit.Finding("/home/user/.local/share/applications/x", "r"),
            audit.Finding("/home/user/.cache/y", "r"), audit.Finding("/var/log/z", "r"),
            audit.Finding("lvm:qubes_dom0/vm-pool", "w")]
    disk = [audit.Finding("lvm:qubes_dom0/vm-pool", "w")]
    assert [(f.path, f.storage) for f in audit.split_by_storage(live, disk, MOUNTS)] == [
        ("/home/user/.cache/y", audit.RAM),
        ("/home/user/.local/share/applications/x", audit.DISK),  # a separate ext4 /home
        ("/var/log/z", audit.RAM),
        ("lvm:qubes_dom0/vm-pool", audit.DISK),
    ]


def test_split_by_storage_tells_disk_from_ram(tmp_path):
    live, disk = tmp_path / "live", tmp_path / "disk"
    core_only_dom0(live)
    core_only_dom0(disk)
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    # on disk and in the running dom0 (came from the lower layer)
    plant(live, "/etc/lvm/backup/qubes_dom0", 'tags = ["reliant-shard-sflc_0_2"]\n')
    plant(disk, "/etc/lvm/backup/qubes_dom0", 'tags = ["reliant-shard-sflc_0_2"]\n')
    # created since boot: RAM only
    plant(live, "/var/lib/qubes/appvms/secret", "dir")
    # deleted since boot: gone from the running view, still on disk
    plant(disk, "/var/log/libvirt/libxl/deep-mail.log", "started\n")
    findings = audit.split_by_storage(audit.audit(shards, CORE, str(live)),
                                   audit.audit(shards, CORE, str(disk)), MOUNTS)
    assert {(f.path, f.storage) for f in findings} == {
        ("/etc/lvm/backup/qubes_dom0", audit.DISK),
        ("/var/lib/qubes/appvms/secret", audit.RAM),
        ("/var/log/libvirt/libxl/deep-mail.log", audit.DISK),
    }
    deleted = next(f for f in findings if f.path.endswith("deep-mail.log"))
    assert deleted.reason.endswith("(deleted in the running dom0, still on disk)")
    assert audit.summary(findings) == {"disk": {"/etc/lvm/backup": 1, "/var/log": 1},
                                    "ram": {"/var/lib/qubes": 1}}


def test_audit_running_mounts_the_disk_read_only_and_unmounts(tmp_path, monkeypatch):
    disk_view = tmp_path / "disk-view"
    device = tmp_path / "dm-0"
    device.write_text("")
    link = tmp_path / "volatile-root"
    link.symlink_to(device)
    calls = []
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    monkeypatch.setattr(audit, "audit", lambda s, core, root, paths, limits: [])
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("30 1 0:31 / / rw - overlay overlay rw\n")
    found = audit.audit_running(shards, CORE, True, str(disk_view), run=calls.append,
                             volatile_root_link=str(link), mountinfo=str(mountinfo))
    assert found == []
    assert calls == [["mount", "-o", "ro,nosuid,nodev,noexec", str(device), str(disk_view)],
                     ["umount", str(disk_view)]]


def test_audit_running_without_the_device_link_refuses(tmp_path, monkeypatch):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    monkeypatch.setattr(audit, "audit", lambda s, core, root, paths, limits: [])
    with pytest.raises(audit.AuditError, match="cannot tell disk from RAM"):
        audit.audit_running(shards, CORE, True, str(tmp_path / "v"), run=lambda argv: None,
                         volatile_root_link=str(tmp_path / "missing"))


def test_the_formulas_own_code_is_excluded(dom0, tmp_path):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    example = "salt-call reliant_shard.init /run/shufflecake/sflc_0_1\n"
    write(dom0, "/srv/formulas/base/reliant-formula/_modules/reliant_shard.py", example)
    write(dom0, "/var/cache/salt/minion/extmods/modules/reliant_shard.py", example)
    write(dom0, "/srv/salt/user.sls", example)
    findings = audit.audit(shards, CORE, str(dom0))
    assert [f.path for f in findings] == ["/srv/salt/user.sls"]


def test_a_source_that_fails_while_grep_reads_it_is_a_finding(dom0, tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "GREP_FROM", 0)
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    scan = audit._Scan(audit.Needles(shards), audit.Limits(), str(dom0))

    def failing():
        yield b"deep-notes\n"
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        scan.labels_in(failing(), 10)


def test_grep_finds_what_python_finds_in_a_large_file(dom0, tmp_path):
    shards = make_shards(tmp_path / "run/shufflecake", own_roots=True)
    line = b"Nov 27 dom0 qrexec: qubes.Filecopy work -> personal allowed\n"
    body = line * (3 * audit.GREP_FROM // len(line)) + b"xx QUBES_VM=Secret-VPN yy\n" + line * 10
    write(dom0, "/var/log/big.log", body)
    findings = audit.audit(shards, CORE, str(dom0))
    assert [(f.path, f.reason) for f in findings] == [
        ("/var/log/big.log", "content names qube name 'secret-vpn' of shard sflc_0_1")]


@pytest.mark.parametrize(("pillar", "message"), [
    ({"paths": "/var/log"}, "reliant:audit:paths: expected a list of strings"),
    ({"max_files": "10"}, "reliant:audit:max_files: expected int, got str"),
    ({"max_depth": True}, "reliant:audit:max_depth: expected int, got bool"),
    ({"max_files": 0}, "reliant:audit:max_files: must be at least 1"),
    ({"paths": ["var/log"]}, "reliant:audit: 'var/log' is not an absolute path"),
    ({"path": ["/var/log"]}, "reliant:audit: unknown keys ['path']"),
])
def test_bad_audit_settings_are_refused_naming_the_key(pillar, message):
    with pytest.raises(audit.AuditError) as error:
        audit.Settings.from_pillar(pillar)
    assert str(error.value) == message
