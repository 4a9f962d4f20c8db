"""Kill -9 at every step of the copies and removals of dom0 directories: at suture (saved
directories copied into /var/lib/qubes) and at dissect --final (copied into the shard,
then removed from /var/lib/qubes). Each run is killed in a child process just before
its n-th call that changes the disk; every directory under a qube's name stays complete
in its earlier or its newer version, and a rerun leaves each dom0 directory, in the
shard and in /var/lib/qubes, exactly as qubesd last wrote it."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

from reliant import store
from shards_helpers import domains_by_name, load, split_scene

# every os call through which suture and dissect change files or directories
CHANGES = ("mkdir", "rename", "replace", "unlink", "rmdir", "write", "pwrite", "ftruncate",
           "fchmod", "chmod", "utime", "fsync")

OLD = {("sflc_0_1", "secret"): {"firewall.xml": b"<old-secret/>"},
       ("sflc_0_2", "deep-notes"): {"firewall.xml": b"<notes/>"}}
NEW = {("sflc_0_1", "secret"): {"firewall.xml": b"<new-secret/>",
                                "notes.txt": b"written while open"},
       ("sflc_0_1", "secret-vpn"): {"firewall.xml": b"<vpn/>", "sub/deep": b"x" * 5000},
       ("sflc_0_2", "deep-mail"): {"firewall.xml": b"<mail/>"}}
CORE_DIRS = {"work": {"firewall.xml": b"<work/>"}}


def write_tree(path: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)


def tree(path: Path) -> dict[str, bytes] | None:
    """Relative path -> bytes of the files under `path`; None if it does not exist."""
    if not path.exists():
        return None
    assert path.is_dir() and not path.is_symlink(), path
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def saved(scene, sid: str, name: str) -> Path:
    return scene.shard_dir(sid) / "dom0" / "appvms" / name


def leftovers(scene) -> list[Path]:
    places = [scene.qubes_dir / "appvms"] + [scene.shard_dir(s) / "dom0" / "appvms"
                                             for s in ("sflc_0_1", "sflc_0_2")]
    return [p for place in places if place.is_dir() for p in place.iterdir()
            if p.name.startswith(".")]


def open_session(tmp: Path):
    """Shards saved by an earlier session, sutured; then qubesd removed deep-notes and
    wrote newer dom0 directories (and a core qube's)."""
    scene = split_scene(tmp)
    for (sid, name), files in OLD.items():
        write_tree(saved(scene, sid, name), files)
    assert not scene.suture().errors
    merged = load(scene.merged)
    merged.find("domains").remove(domains_by_name(merged)["deep-notes"])
    scene.merged.write_bytes(store.serialize(merged))
    for (_, name), files in NEW.items():
        write_tree(scene.qubes_dir / "appvms" / name, files)
    for name, files in CORE_DIRS.items():
        write_tree(scene.qubes_dir / "appvms" / name, files)
    shutil.rmtree(scene.qubes_dir / "appvms" / "deep-notes")  # as qubesd removes a qube
    return scene


def killing_before(n: int, calls: list[int], real):
    """`real` counted in `calls`; the process is killed just before the n-th call."""
    def change(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return change


def killed_at(n: int, operation) -> bool:
    """Run `operation` in a child killed (SIGKILL) just before its n-th change; True if
    it was killed, False if it ended before."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            calls = [0]
            for name in CHANGES:
                setattr(os, name, killing_before(n, calls, getattr(os, name)))
            operation()
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, -signal.SIGKILL), f"the run failed at call {n} (exit {code})"
    return code == -signal.SIGKILL


def on_disk(path: Path) -> dict[str, bytes] | None:
    """The version a directory holds, looking through a replacement in progress: when
    the name is missing between the two renames, ``.NAME.new`` (complete) is it."""
    found = tree(path)
    if found is None and tree(path.parent / f".{path.name}.old") is not None:
        found = tree(path.parent / f".{path.name}.new")
    return found


def assert_complete_versions(scene, n: int) -> None:
    """Every qube's dom0 directory holds one complete version, earlier or newer."""
    for (sid, name), files in NEW.items():
        assert tree(scene.qubes_dir / "appvms" / name) in (files, None), (n, name)
        assert on_disk(saved(scene, sid, name)) in (files, OLD.get((sid, name))), (n, name)
    notes = OLD[("sflc_0_2", "deep-notes")]
    assert tree(saved(scene, "sflc_0_2", "deep-notes")) in (notes, None), n
    assert tree(scene.qubes_dir / "appvms" / "work") == CORE_DIRS["work"], n


def assert_as_qubesd_wrote(scene) -> None:
    for (sid, name), files in NEW.items():
        assert tree(saved(scene, sid, name)) == files, name
    assert sorted(p.name for p in (scene.qubes_dir / "appvms").iterdir()) == ["work"]
    assert tree(scene.qubes_dir / "appvms" / "work") == CORE_DIRS["work"]
    assert tree(saved(scene, "sflc_0_2", "deep-notes")) is None
    assert not leftovers(scene)


def test_kill_at_every_change_of_dissect_final_then_rerun(tmp_path):
    points = 0
    for n in range(1, 2000):
        scene = open_session(tmp_path / f"n{n}")
        if not killed_at(n, lambda scene=scene: scene.dissect(final=True)):
            break
        points += 1
        assert_complete_versions(scene, n)
        result = scene.dissect(final=True)
        assert not result.errors, (n, result.problems)
        assert_as_qubesd_wrote(scene)
        # and the next session gets back what qubesd last wrote
        assert not scene.suture().errors
        for (_, name), files in NEW.items():
            assert tree(scene.qubes_dir / "appvms" / name) == files, (n, name)
    print(f"dissect --final: killed at each of {points} changes")
    assert points >= 100


def test_kill_at_every_change_of_suture_then_rerun(tmp_path):
    points = 0
    for n in range(1, 2000):
        scene = open_session(tmp_path / f"n{n}")
        assert not scene.dissect(final=True).errors
        if not killed_at(n, scene.suture):
            break
        points += 1
        for (sid, name), files in NEW.items():
            assert tree(saved(scene, sid, name)) == files, (n, name)  # suture only reads
            assert tree(scene.qubes_dir / "appvms" / name) in (files, None), (n, name)
        assert not scene.suture().errors
        for (_, name), files in NEW.items():
            assert tree(scene.qubes_dir / "appvms" / name) == files, (n, name)
        assert not leftovers(scene), n
    print(f"suture: killed at each of {points} changes")
    assert points >= 20
