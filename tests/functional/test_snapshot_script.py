"""reliant's create-snapshot against real loop devices (root) and the dmsetup double.

The expected calls of a read-write volume are those of the stock script
(docs/design/decisions-and-benchmarks.md, docs/snapshots.md): `losetup --find
--nooverlap --show -- FILE` for the image and each COW,
`dmsetup create snapshot-<img>-<cow> --table "0 N snapshot
/dev/fd/3 /dev/fd/4 P 256"`, then the snapshot-origin or the top snapshot.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from snapshot_harness import ROOT, SCRIPT, Scenario, loops_usable

MARKERS = "/run/reliant/read-only"
pytestmark = [pytest.mark.root,
              pytest.mark.skipif(bool(loops_usable()), reason=loops_usable() or "usable")]
MIB = 1 << 20


@pytest.fixture
def scenario(tmp_path: Path):
    work = tmp_path / "snap"
    work.mkdir()
    scenario = Scenario(work)
    yield scenario
    scenario.detach_loops()
    assert not scenario.loops(), "loop devices left attached"


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        out.truncate(size)
    return path


def dev_ino(path: Path) -> str:
    info = os.stat(path)
    return f"{info.st_dev:x}:{info.st_ino}"


def fds(call: dict) -> list[str]:
    return [call["fds"][fd] for fd in sorted(call["fds"])]


def test_read_write_volume_gets_the_stock_calls(scenario: Scenario):
    img, cow = sparse(scenario.work / "private.img", 64 * MIB), sparse(
        scenario.work / "private-cow.img", 64 * MIB)
    name = f"origin-{dev_ino(img)}"
    done = scenario.run(f"$CS {name} {img} {cow}")
    assert done.returncode == 0, done.stderr
    assert scenario.losetup_calls() == [f"--find --nooverlap --show -- {img}",
                                        f"--find --nooverlap --show -- {cow}"]
    loops = scenario.loops()
    assert not loops[str(img)]["ro"] and not loops[str(cow)]["ro"]
    sectors = 64 * MIB // 512
    snapshot = f"snapshot-{dev_ino(img)}-{dev_ino(cow)}"
    calls = scenario.dm_calls()
    assert [call["argv"] for call in calls] == [
        ["create", snapshot, "--table", f"0 {sectors} snapshot /dev/fd/3 /dev/fd/4 P 256"],
        ["create", name, "--table", f"0 {sectors} snapshot-origin /dev/fd/3"]]
    assert fds(calls[0]) == [loops[str(img)]["name"], loops[str(cow)]["name"]]
    assert fds(calls[1]) == [loops[str(img)]["name"]]


def test_snapshot_base_is_attached_read_only_and_cows_read_write(scenario: Scenario):
    img = sparse(scenario.work / "root.img", 64 * MIB)
    src_cow = sparse(scenario.work / "root-cow.img", 64 * MIB)
    cows = [sparse(scenario.work / f"app{i}-root-cow.img", 64 * MIB) for i in (1, 2)]
    done = scenario.run(f"$CS snap1 {img} {src_cow} {cows[0]} && $CS snap2 {img} {src_cow} "
                        f"{cows[1]} && ls /dev/mapper")
    assert done.returncode == 0, done.stderr
    assert scenario.losetup_calls()[0] == f"--find --nooverlap --read-only --show -- {img}"
    loops = scenario.loops()
    assert loops[str(img)]["ro"]
    assert not any(loops[str(path)]["ro"] for path in (src_cow, *cows))
    assert len(loops) == 4, "the second snapshot reuses the read-only loop of the image"
    base = f"snapshot-{dev_ino(img)}-{dev_ino(src_cow)}"
    assert sorted(done.stdout.split()) == sorted([base, "snap1", "snap2"])
    argv = [call["argv"] for call in scenario.dm_calls()]
    assert argv == [["create", base, "--table", f"0 {64 * MIB // 512} snapshot /dev/fd/3 "
                     "/dev/fd/4 P 256"],
                    ["create", "snap1", "--table", f"0 {64 * MIB // 512} snapshot /dev/fd/3 "
                     "/dev/fd/4 P 256"],
                    ["create", "snap2", "--table", f"0 {64 * MIB // 512} snapshot /dev/fd/3 "
                     "/dev/fd/4 P 256"]]


def test_read_write_attach_over_a_read_only_loop_fails_clearly(scenario: Scenario):
    img = sparse(scenario.work / "root.img", 64 * MIB)
    cow = sparse(scenario.work / "root-cow.img", 64 * MIB)
    app_cow = sparse(scenario.work / "app-cow.img", 64 * MIB)
    done = scenario.run(f"$CS snap {img} {cow} {app_cow} && $CS origin-x {img} {cow}")
    assert done.returncode == 1
    assert f"{img} is attached read-only" in done.stderr
    assert "stop the qubes based on it" in done.stderr
    assert [call["argv"][1] for call in scenario.dm_calls()] == [
        f"snapshot-{dev_ino(img)}-{dev_ino(cow)}", "snap"], "no snapshot-origin was made"
    assert len(scenario.loops()) == 3


def test_read_only_request_reuses_a_read_write_loop(scenario: Scenario):
    """A template runs (read-write image), then a qube based on it starts."""
    img = sparse(scenario.work / "root.img", 64 * MIB)
    cow = sparse(scenario.work / "root-cow.img", 64 * MIB)
    app_cow = sparse(scenario.work / "app-cow.img", 64 * MIB)
    done = scenario.run(f"$CS origin-t {img} {cow} && $CS snap {img} {cow} {app_cow}")
    assert done.returncode == 0, done.stderr
    loops = scenario.loops()
    assert len(loops) == 3 and not loops[str(img)]["ro"]
    created = [call["argv"][1] for call in scenario.dm_calls()]
    assert created == [f"snapshot-{dev_ino(img)}-{dev_ino(cow)}", "origin-t", "snap"], \
        "the shared snapshot is made once"


def test_volume_marked_read_only_gets_read_only_loop_and_table(scenario: Scenario):
    img = sparse(scenario.work / "private.img", 64 * MIB)
    cow = sparse(scenario.work / "private-cow.img", 64 * MIB)
    marker = f"{MARKERS}/{dev_ino(img)}"
    # /run/reliant is private to the namespace too: the host's marks are untouched.
    done = scenario.run(f"mount -t tmpfs reliant-test /run && mkdir -p {MARKERS} && "
                        f": > {marker} && $CS origin-ro {img} {cow} && test ! -e {marker}")
    assert done.returncode == 0, done.stderr
    loops = scenario.loops()
    assert loops[str(img)]["ro"] and not loops[str(cow)]["ro"]
    assert scenario.dm_calls()[-1]["argv"] == [
        "create", "origin-ro", "--readonly", "--table",
        f"0 {64 * MIB // 512} snapshot-origin /dev/fd/3"]


def test_double_refuses_a_writable_origin_on_a_read_only_loop(scenario: Scenario):
    """Guards the double: without --readonly the kernel refuses such a table."""
    img = sparse(scenario.work / "img", 8 * MIB)
    done = scenario.run(f"l=$(losetup --find --read-only --show {img}) && "
                        "3<$l dmsetup create o --table \"0 16384 snapshot-origin /dev/fd/3\"")
    assert done.returncode == 1
    assert "Permission denied" in done.stderr


def test_wrong_argument_count_is_refused(scenario: Scenario):
    done = scenario.run("$CS a b")
    assert done.returncode == 1
    assert "expected 3 or 4 arguments" in done.stderr
    assert not scenario.losetup_calls() and not scenario.dm_calls()


def test_template_on_overlayfs_is_not_copied_up(scenario: Scenario):
    """docs/snapshots.md: a 3 GB image with data, on overlayfs with a 64 MB tmpfs upper layer."""
    lower, upper, merged = (scenario.work / name for name in ("lower", "upper", "merged"))
    for path in (lower, upper, merged):
        path.mkdir()
    # root.img, and other.img like it for the stock read-write attach.
    for name in ("root.img", "other.img"):
        with open(sparse(lower / name, 3 << 30), "r+b") as out:
            for offset in range(0, 96 * MIB, 4 * MIB):
                out.seek(offset * 20)
                out.write(os.urandom(4 * MIB))
    body = f"""
mount -t tmpfs -o size=64m reliant-upper {upper}
mkdir {upper}/data {upper}/work
mount -t overlay reliant-ovl -o lowerdir={lower},upperdir={upper}/data,workdir={upper}/work {merged}
truncate -s 3G {merged}/root-cow.img {merged}/app-root-cow.img
used() {{ echo $(( $(stat -f -c '(%b-%f)*%S' {upper}) )); }}
before=$(used)
$CS snap {merged}/root.img {merged}/root-cow.img {merged}/app-root-cow.img || exit 9
after=$(used)
echo "upper used before=$before after=$after"
test -e {upper}/data/root.img && echo "root.img copied up"
if l=$(losetup --find --nooverlap --show {merged}/other.img 2>&1); then echo "rw attach: $l";
else echo "rw attach failed: $l"; fi
echo "upper used after rw=$(used)"
"""
    done = scenario.run(body)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    before, after = (int(part.split("=")[1]) for part in lines[0].split()[2:4])
    assert before == after, lines
    assert "root.img copied up" not in lines
    loops = scenario.loops()
    assert loops[f"{merged}/root.img"]["ro"]
    assert not loops[f"{merged}/root-cow.img"]["ro"]
    assert not loops[f"{merged}/app-root-cow.img"]["ro"]
    # What the stock read-write attach does to such an image: copy-up, out of space.
    assert any(line.startswith("rw attach failed") for line in lines), lines
    assert "No space left on device" in done.stderr or "No space left" in done.stdout
    print("\n".join(lines))



QUBESD_START = """
import importlib.util, sys
from types import SimpleNamespace as NS
import qubes.vm
spec = importlib.util.spec_from_file_location("ext", sys.argv[1])
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)
ext.ReadOnlyVolumes()
qube = qubes.vm.LocalVM(None, "work")
qube.events_enabled = True
qube.volumes = {"private": NS(path=sys.argv[2], rw=False, pool=NS(driver="file"),
                              save_on_stop=True, snap_on_start=False)}
qube.fire_event("domain-pre-start", pre_event=True, start_guid=True, mem_required=None)
"""


def test_extension_mark_makes_the_script_attach_read_only(scenario: Scenario):
    """The installed pair end to end: the extension's mark, then the script (MARKERS as shipped)."""
    img = sparse(scenario.work / "private.img", 64 * MIB)
    cow = sparse(scenario.work / "private-cow.img", 64 * MIB)
    (scenario.work / "qubesd_start.py").write_text(QUBESD_START)
    extension = SCRIPT.parent / "extension" / "reliant_snapshots_ext" / "__init__.py"
    doubles = ROOT / "tests" / "doubles" / "qubes_ext"
    done = scenario.run(
        f"mount -t tmpfs reliant-test /run && PYTHONPATH={doubles} {sys.executable} "
        f"qubesd_start.py {extension} {img} && ls {MARKERS} && $CS origin-ro {img} {cow} && "
        f"ls -A {MARKERS}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [dev_ino(img)], "one mark, consumed by the script"
    loops = scenario.loops()
    assert loops[str(img)]["ro"] and not loops[str(cow)]["ro"]
    assert "--readonly" in scenario.dm_calls()[-1]["argv"]


def test_missing_image_fails_naming_it_and_attaches_nothing(scenario: Scenario):
    cow = sparse(scenario.work / "private-cow.img", 8 * MIB)
    missing = scenario.work / "private.img"
    done = scenario.run(f"$CS origin-x {missing} {cow}")
    assert done.returncode == 1
    assert str(missing) in done.stderr
    assert not scenario.losetup_calls() and not scenario.dm_calls()


def test_symbolic_link_is_attached_as_its_target(scenario: Scenario):
    img = sparse(scenario.work / "root.img", 8 * MIB)
    src_cow = sparse(scenario.work / "root-cow.img", 8 * MIB)
    cow = sparse(scenario.work / "app-cow.img", 8 * MIB)
    link = scenario.work / "link.img"
    link.symlink_to(img)
    done = scenario.run(f"$CS snap {link} {src_cow} {cow}")
    assert done.returncode == 0, done.stderr
    assert scenario.losetup_calls()[0] == f"--find --nooverlap --read-only --show -- {img}"
    # Named, as by the stock script, with `stat` of the link itself (no -L).
    info = os.lstat(link)
    assert scenario.dm_calls()[0]["argv"][1] == \
        f"snapshot-{info.st_dev:x}:{info.st_ino}-{dev_ino(src_cow)}"
