"""A failure at every write, copy, fsync, rename and removal of adopt and release: no qube and no
dom0 directory is lost, suture accepts the files as they are (qubesd starts with every
qube), and a rerun finishes exactly as an undisturbed run does."""

from adopt_scene import adopt_scene, disk_uuids, scene_files
from fault_injection import INJECTED, fails_at
from reliant import adopt
from reliant.shards.files import discover
from reliant.shards.stubs import load_core
from reliant.shards.suture import plan_suture
from shards_helpers import SHARD_QUBES, domains_by_name

MOVED = sorted(SHARD_QUBES["sflc_0_1"])
#: removals too: a crash while a directory is being removed must not leave half of it
CALLS = (*INJECTED, "unlink", "rmdir")


def move(scene, release):
    if release:
        return adopt.release(str(scene.core), scene.roots, MOVED, merged=str(scene.merged),
                             qubes_dir=str(scene.qubes_dir))
    return adopt.adopt(str(scene.core), scene.roots, MOVED, "sflc_0_1",
                       merged=str(scene.merged), qubes_dir=str(scene.qubes_dir))


def prepared(tmp_path, monkeypatch, release):
    """Shard 2's qubes adopted (and shard 1's too, for a release)."""
    scene = adopt_scene(tmp_path, monkeypatch)
    adopt.adopt(str(scene.core), scene.roots, sorted(SHARD_QUBES["sflc_0_2"]), "sflc_0_2",
                merged=str(scene.merged), qubes_dir=str(scene.qubes_dir))
    if release:
        move(scene, release=False)
    return scene


def firewall_copies(scene):
    """The complete copies of secret-vpn's dom0 directory (a swap may hold one aside)."""
    saved = scene.shard_dir("sflc_0_1") / "dom0" / "appvms"
    places = [scene.qubes_dir / "appvms" / "secret-vpn", saved / "secret-vpn",
              saved / ".secret-vpn.old"]
    return [p for p in places if (p / "firewall.xml").is_file()]


def check_faults(tmp_path, monkeypatch, release):
    reference_dir = tmp_path / "reference"
    reference = prepared(reference_dir, monkeypatch, release)
    move(reference, release)
    expected = {k: v.replace(str(reference_dir).encode(), b"@")
                for k, v in scene_files(reference).items()}
    points = 0
    for n in range(1, 200):
        scene = prepared(tmp_path / f"n{n}", monkeypatch, release)
        before = disk_uuids(scene)
        core_names = set(domains_by_name(load_core(str(scene.core))))
        if not fails_at(monkeypatch, n, lambda scene=scene: move(scene, release), CALLS):
            break
        points += 1
        assert before <= disk_uuids(scene), n
        assert firewall_copies(scene), n
        merged = plan_suture(load_core(str(scene.core)), discover(scene.roots))
        assert core_names | set(MOVED) <= set(domains_by_name(merged.merged)), n
        assert not [p for p in merged.problems
                    if p.severity == "error" and p.shard != "sflc_0_1"], (n, merged.problems)
        move(scene, release)  # the rerun
        got = {k: v.replace(str(scene.tmp).encode(), b"@")
               for k, v in scene_files(scene).items()}
        assert got == expected, n
    return points


def test_fault_at_every_point_of_adopt(tmp_path, monkeypatch):
    assert check_faults(tmp_path, monkeypatch, release=False) >= 10


def test_fault_at_every_point_of_release(tmp_path, monkeypatch):
    assert check_faults(tmp_path, monkeypatch, release=True) >= 10
