"""reliant.snapshot: install / verify / remove of create-snapshot; the qubesd extension.

A temporary dom0 tree holds stand-ins planted by the tests: a stand-in for the
stock create-snapshot and a stand-in for qubes/storage/file.py (no Qubes file is
copied); their checksums are accepted through `extra_known`, as a user would
accept a reviewed version.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from reliant import snapshot
from repo_paths import ROOT

FILES = ROOT / "salt" / "reliant" / "files" / "snapshots"
OURS = (FILES / "create-snapshot").read_bytes()
EXTENSION_MODULE = FILES / "extension" / "reliant_snapshots_ext" / "__init__.py"
EXTENSION = EXTENSION_MODULE.read_bytes()
STOCK_STAND_IN = b"#!/bin/bash\n# test stand-in for the stock /usr/lib/qubes/create-snapshot\nexit 0\n"
FILE_PY_STAND_IN = b"# test stand-in for qubes/storage/file.py\nCREATE_SCRIPT = 'create-snapshot'\n"
OLD_MTIME_NS = 1_600_000_000_123_456_789


@pytest.fixture
def dom0(tmp_path: Path) -> SimpleNamespace:
    script = tmp_path / "usr/lib/qubes/create-snapshot"
    site = tmp_path / "usr/lib/python3.13/site-packages"
    (site / "qubes/storage").mkdir(parents=True)
    (site / "qubes/storage/file.py").write_bytes(FILE_PY_STAND_IN)
    script.parent.mkdir(parents=True)
    script.write_bytes(STOCK_STAND_IN)
    script.chmod(0o755)
    os.utime(script, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    layout = snapshot.Layout(script=str(script), site_packages=str(site),
                       backup_dir=str(tmp_path / "var/lib/reliant/snapshots"),
                       marker_dir=str(tmp_path / "run/reliant/read-only"))
    known = frozenset({snapshot.sha256_bytes(STOCK_STAND_IN), snapshot.sha256_bytes(FILE_PY_STAND_IN)})
    return SimpleNamespace(root=tmp_path, layout=layout, known=known, script=script, site=site)


def tree(root: Path) -> dict[str, tuple]:
    """Every file under root: checksum, mode, mtime."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            info = path.stat()
            found[str(path.relative_to(root))] = (snapshot.sha256_bytes(path.read_bytes()),
                                                  oct(info.st_mode), info.st_mtime_ns)
    return found


def install(dom0: SimpleNamespace) -> snapshot.Plan:
    plan = snapshot.plan_install(dom0.layout, OURS, dom0.known)
    snapshot.apply_install(dom0.layout, plan)
    return plan


def test_install_then_remove_restores_the_files_exactly(dom0):
    before = tree(dom0.root)
    plan = snapshot.plan_install(dom0.layout, OURS, dom0.known)
    assert not plan.problems
    predicted = plan.changes()
    snapshot.apply_install(dom0.layout, plan)
    after = tree(dom0.root)
    touched = {str(dom0.root / path) for path in set(after) ^ set(before)} | {
        str(dom0.root / path) for path in set(after) & set(before) if after[path] != before[path]}
    assert touched == set(predicted), "test=True predicts exactly what install changes"
    assert dom0.script.read_bytes() == OURS
    assert oct(dom0.script.stat().st_mode) == oct(0o100755)
    assert snapshot.verify(dom0.layout, OURS) == []

    again = snapshot.plan_install(dom0.layout, OURS, dom0.known)
    assert not again.problems and again.changes() == {}

    removal = snapshot.plan_remove(dom0.layout)
    assert removal.restore and removal.drop_backup
    snapshot.apply_remove(dom0.layout, removal)
    assert tree(dom0.root) == before
    assert snapshot.plan_remove(dom0.layout).changes() == {}


@pytest.mark.parametrize(("component", "name", "entry_point"), [
    ("snapshots", "reliant_snapshots_ext", "reliant_snapshots_ext:ReadOnlyVolumes"),
    ("isolation", "reliant-isolation", "reliant_isolation:ReliantIsolation"),
])
def test_each_extension_is_a_package_qubesd_finds_by_its_entry_point(component, name,
                                                                      entry_point, monkeypatch):
    """Both qubesd extensions are installed the same way: the tree under
    files/<component>/extension (a package and its .dist-info) copied into site-packages."""
    tree_dir = ROOT / "salt" / "reliant" / "files" / component / "extension"
    monkeypatch.syspath_prepend(str(tree_dir))
    from importlib.metadata import distribution
    found = distribution(name)
    assert [ep.value for ep in found.entry_points if ep.group == "qubes.ext"] == [entry_point]
    package = entry_point.split(":")[0]
    assert sorted(p.name for p in tree_dir.iterdir()) == sorted(
        [package, f"{package}-0.1.0.dist-info"])
    assert sorted(p.name for p in (tree_dir / f"{package}-0.1.0.dist-info").iterdir()) == [
        "INSTALLER", "METADATA", "entry_points.txt"]


def test_unknown_qubes_version_changes_nothing(dom0):
    Path(dom0.layout.file_py).write_bytes(FILE_PY_STAND_IN + b"# changed\n")
    before = tree(dom0.root)
    plan = snapshot.plan_install(dom0.layout, OURS, dom0.known)
    assert len(plan.problems) == 1
    assert dom0.layout.file_py in plan.problems[0] and "nothing was changed" in plan.problems[0]
    with pytest.raises(snapshot.SnapshotError):
        snapshot.apply_install(dom0.layout, plan)
    assert tree(dom0.root) == before


def test_known_release_checksum_is_accepted_without_extra(dom0):
    plan = snapshot.plan_install(dom0.layout, OURS)
    assert [problem.split(" (sha256")[0] for problem in plan.problems] == [
        dom0.layout.file_py, dom0.layout.script], "stand-ins are not Qubes releases"
    assert all(len(digest) == 64 for digest in (*snapshot.KNOWN_FILE_PY, *snapshot.KNOWN_STOCK_SCRIPT))


def test_missing_qubes_files_are_named(dom0):
    os.unlink(dom0.layout.file_py)
    os.unlink(dom0.layout.script)
    problems = snapshot.plan_install(dom0.layout, OURS, dom0.known).problems
    assert problems == [f"{dom0.layout.file_py} not found: is qubes-core-dom0 installed?",
                        f"{dom0.layout.script} not found: is qubes-core-dom0 installed?"]


def test_unknown_script_is_refused(dom0):
    dom0.script.write_bytes(b"#!/bin/sh\n# someone else's\n")
    plan = snapshot.plan_install(dom0.layout, OURS, dom0.known)
    assert len(plan.problems) == 1 and "neither reliant's nor a stock" in plan.problems[0]


def test_ours_without_backup_is_refused(dom0):
    dom0.script.write_bytes(OURS)
    plan = snapshot.plan_install(dom0.layout, OURS, dom0.known)
    assert plan.problems == [f"{dom0.layout.script} is reliant's but {dom0.layout.manifest} is "
                             "missing: the original cannot be restored; reinstall qubes-core-dom0"]


def test_damaged_backup_is_refused_both_ways(dom0):
    install(dom0)
    Path(dom0.layout.original).write_bytes(b"truncated")
    for plan in (snapshot.plan_install(dom0.layout, OURS, dom0.known),
                 snapshot.plan_remove(dom0.layout)):
        assert len(plan.problems) == 1 and dom0.layout.original in plan.problems[0]
    assert snapshot.verify(dom0.layout, OURS) == [snapshot.plan_remove(dom0.layout).problems[0]]


def test_updated_stock_script_is_backed_up_again_and_kept_on_remove(dom0):
    install(dom0)
    update = STOCK_STAND_IN + b"# a newer qubes-core-dom0\n"
    known = dom0.known | {snapshot.sha256_bytes(update)}
    dom0.script.write_bytes(update)  # what an update of qubes-core-dom0 does
    assert snapshot.verify(dom0.layout, OURS) == [
        f"{dom0.layout.script} is not reliant's (sha256 {snapshot.sha256_bytes(update)})"]
    plan = snapshot.plan_install(dom0.layout, OURS, known)
    assert plan.changes() == {dom0.layout.original: "original create-snapshot saved",
                              dom0.layout.manifest: "written", dom0.layout.script: "installed"}
    snapshot.apply_install(dom0.layout, plan)
    snapshot.apply_remove(dom0.layout, snapshot.plan_remove(dom0.layout))
    assert dom0.script.read_bytes() == update


def test_remove_after_an_update_keeps_the_newer_script(dom0):
    install(dom0)
    update = STOCK_STAND_IN + b"# a newer qubes-core-dom0\n"
    dom0.script.write_bytes(update)
    plan = snapshot.plan_remove(dom0.layout)
    assert not plan.restore and plan.drop_backup
    snapshot.apply_remove(dom0.layout, plan)
    assert dom0.script.read_bytes() == update
    assert not Path(dom0.layout.backup_dir).exists()


def test_crash_before_the_script_was_replaced_resumes(dom0):
    plan = snapshot.plan_install(dom0.layout, OURS, dom0.known)
    plan.write.pop(dom0.layout.script)  # the run stopped before the last file
    snapshot.apply_install(dom0.layout, plan)
    assert dom0.script.read_bytes() == STOCK_STAND_IN
    resumed = snapshot.plan_install(dom0.layout, OURS, dom0.known)
    assert set(resumed.write) == {dom0.layout.script}
    snapshot.apply_install(dom0.layout, resumed)
    assert snapshot.verify(dom0.layout, OURS) == []


def test_remove_takes_the_marks_too(dom0):
    install(dom0)
    marks = Path(dom0.layout.marker_dir)
    marks.mkdir(parents=True)
    (marks / "fd01:12").touch()
    plan = snapshot.plan_remove(dom0.layout)
    assert plan.remove == [str(marks / "fd01:12")]
    snapshot.apply_remove(dom0.layout, plan)
    assert not marks.exists()


def test_find_site_packages(tmp_path):
    for version in ("3.11", "3.13"):
        (tmp_path / f"usr/lib/python{version}/site-packages").mkdir(parents=True)
    pattern = (str(tmp_path / "usr/lib/python3*/site-packages"),)
    with pytest.raises(snapshot.SnapshotError, match="found none of"):
        snapshot.find_site_packages(pattern)
    qubes = tmp_path / "usr/lib/python3.13/site-packages/qubes/storage"
    qubes.mkdir(parents=True)
    (qubes / "file.py").touch()
    assert snapshot.find_site_packages(pattern) == str(tmp_path / "usr/lib/python3.13/site-packages")
    (tmp_path / "usr/lib/python3.11/site-packages/qubes/storage").mkdir(parents=True)
    (tmp_path / "usr/lib/python3.11/site-packages/qubes/storage/file.py").touch()
    with pytest.raises(snapshot.SnapshotError, match="expected one site-packages"):
        snapshot.find_site_packages(pattern)


def test_script_and_extension_use_the_library_marker_dir():
    assert f"readonly MARKERS={snapshot.MARKER_DIR}\n" in OURS.decode()
    assert f'MARKERS = "{snapshot.MARKER_DIR}"\n' in EXTENSION.decode()


# --- the qubesd extension, loaded by the qubes-core-admin double (tests/doubles/qubes_ext) ---


@pytest.fixture
def extension(tmp_path, monkeypatch):
    """reliant's extension loaded as qubesd loads it; its handlers unregistered afterwards."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "doubles" / "qubes_ext"))
    spec = importlib.util.spec_from_file_location("reliant_snapshots_ext", EXTENSION_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "MARKERS", str(tmp_path / "marks"))
    instance = module.ReadOnlyVolumes()
    yield module, instance
    import qubes.vm
    for handlers in qubes.vm.LocalVM.__handlers__.values():
        handlers.difference_update({h for h in handlers if getattr(h, "__self__", None) is instance})


def volume(path: Path, rw: bool, driver="file", save_on_stop=True, snap_on_start=False):
    """The attributes of a qubes.storage volume that the extension reads."""
    return SimpleNamespace(path=str(path), rw=rw, pool=SimpleNamespace(driver=driver),
                           save_on_stop=save_on_stop, snap_on_start=snap_on_start)


def stat_name(path: Path) -> str:
    """The name create-snapshot gives the mark of `path`."""
    return subprocess.run(["stat", "-L", "--printf=%D:%i", str(path)], capture_output=True,
                          text=True, check=True).stdout


def test_extension_marks_read_only_origin_volumes_as_the_script_names_them(tmp_path, extension):
    module, instance = extension
    import qubes.vm
    images = {name: tmp_path / f"{name}.img" for name in ("ro", "rw", "snap", "lvm")}
    for path in images.values():
        path.touch()
    qube = qubes.vm.LocalVM(None, "work")
    qube.events_enabled = True
    qube.volumes = {
        "root": volume(images["ro"], rw=False),
        "private": volume(images["rw"], rw=True),
        "snap": volume(images["snap"], rw=False, save_on_stop=False, snap_on_start=True),
        "other": volume(images["lvm"], rw=False, driver="lvm_thin"),
        "gone": volume(tmp_path / "missing.img", rw=False),
    }
    marks = Path(module.MARKERS)
    marks.mkdir()
    (marks / stat_name(images["rw"])).touch()  # left from when the volume was read-only
    assert instance is module.ReadOnlyVolumes(), "one instance per extension class"

    qube.fire_event("domain-pre-start", pre_event=True, start_guid=True, mem_required=None)
    assert {path.name for path in marks.iterdir()} == {stat_name(images["ro"])}
    qube.fire_event("domain-start-failed", reason="test")
    assert list(marks.iterdir()) == []
    qube.fire_event("domain-pre-start", pre_event=True, start_guid=True, mem_required=None)
    qube.fire_event("domain-shutdown")
    assert list(marks.iterdir()) == []


def test_remove_without_qubes_package_restores_the_script(dom0):
    before_install = tree(dom0.root)
    install(dom0)
    os.unlink(dom0.layout.file_py)  # qubes-core-dom0 gone: site-packages is not found any more
    bare = snapshot.Layout(script=dom0.layout.script, site_packages="",
                           backup_dir=dom0.layout.backup_dir, marker_dir=dom0.layout.marker_dir)
    plan = snapshot.plan_remove(bare)
    assert plan.restore and plan.remove == []
    snapshot.apply_remove(bare, plan)
    del before_install[str(Path(dom0.layout.file_py).relative_to(dom0.root))]
    assert tree(dom0.root) == before_install
