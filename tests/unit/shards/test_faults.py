"""Fault injection: a failure at every write, fsync and rename of dissect and suture
leaves every qube recoverable from the files on disk, and a rerun completes the job."""

import os

import pytest
from fault_injection import fails_at
from reliant import store
from reliant.shards.records import qube_name, qube_uuid
from shards_helpers import SHARD_QUBES, domains_by_name, load, new_domain, set_prop, split_scene


def disk_uuids(scene):
    """uuid -> name of every qube in the core file and the shard files (which must parse)."""
    found = {}
    paths = [scene.core] + [scene.shard_dir(s) / "domains.xml" for s in SHARD_QUBES]
    for path in paths:
        for domain in load(path).iterfind(".//domains/domain"):
            found[qube_uuid(domain)] = qube_name(domain)
    return found


def firewall_copies(scene, sid, name):
    places = [scene.qubes_dir / "appvms" / name,
              scene.shard_dir(sid) / "dom0" / "appvms" / name,
              scene.shard_dir(sid) / "dom0" / "appvms" / f".{name}.old"]
    return [p for p in places if (p / "firewall.xml").is_file()]


def session(tmp_path):
    """Shards open, qubesd ran: a qube created in shard 1, one in core, a shard 2 qube
    removed, a core qube changed, firewall rules written for a shard qube."""
    scene = split_scene(tmp_path, ranges=((1000, 1499), (1500, 1999)))
    scene.suture()
    merged = load(scene.merged)
    merged.find("domains").append(new_domain("fresh", 15, "sflc_0_1", "0000-fresh"))
    merged.find("domains").append(new_domain("plain", 16, "vm-pool", "0000-plain"))
    merged.find("domains").remove(domains_by_name(merged)["deep-notes"])
    set_prop(domains_by_name(merged)["work"], "label", "green")
    scene.merged.write_bytes(store.serialize(merged))
    for name in ("secret", "fresh"):
        (scene.qubes_dir / "appvms" / name).mkdir(parents=True)
        (scene.qubes_dir / "appvms" / name / "firewall.xml").write_text(f"<{name}/>")
    return scene


def files(scene):
    """Every file of the scene but dissect's memo (a cache, with paths in its encoding)."""
    return {p.relative_to(scene.tmp): p.read_bytes() for p in scene.tmp.rglob("*")
            if p.is_file() and p.parent.name != "dissect.memo"}


def reference(tmp_path):
    scene = session(tmp_path / "reference")
    assert not scene.dissect(final=True).errors
    return files(scene)


def test_fault_at_every_point_of_dissect(tmp_path, monkeypatch):
    expected = reference(tmp_path)
    points = 0
    for n in range(1, 500):
        scene = session(tmp_path / f"n{n}")
        before = disk_uuids(scene)
        merged_uuids = {qube_uuid(d)
                        for d in load(scene.merged).iterfind("domains/domain")}
        if not fails_at(monkeypatch, n, lambda scene=scene: scene.dissect(final=True)):
            break
        points += 1
        after = disk_uuids(scene)
        # nothing that was on disk is lost (deep-notes was removed in qubesd)
        assert set(before) - {u for u, name in before.items() if name == "deep-notes"} \
            <= set(after), n
        assert b"secret" not in scene.core.read_bytes() and b"fresh" not in \
            scene.core.read_bytes()
        for sid, name in (("sflc_0_1", "secret"), ("sflc_0_1", "fresh")):
            assert firewall_copies(scene, sid, name), (n, name)
        # a rerun finishes the job exactly as an undisturbed dissect does
        result = scene.dissect(final=True)
        assert not result.errors, (n, result.problems)
        assert merged_uuids <= set(disk_uuids(scene))
        got = files(scene)
        assert got.keys() == expected.keys(), n
        for path, content in expected.items():
            assert got[path] == content.replace(str(tmp_path / "reference").encode(),
                                                str(scene.tmp).encode()), (n, path)
    assert points >= 20


def test_fault_at_every_point_of_suture(tmp_path, monkeypatch):
    points = 0
    for n in range(1, 500):
        scene = split_scene(tmp_path / f"n{n}")
        saved = scene.shard_dir("sflc_0_1") / "dom0" / "appvms" / "secret"
        saved.mkdir(parents=True)
        (saved / "firewall.xml").write_text("<secret/>")
        files = {p: p.read_bytes() for p in [scene.core] + [
            scene.shard_dir(s) / "domains.xml" for s in SHARD_QUBES]}
        if not fails_at(monkeypatch, n, scene.suture):
            break
        points += 1
        assert {p: p.read_bytes() for p in files} == files, n  # suture only reads them
        assert (saved / "firewall.xml").read_text() == "<secret/>"
        assert not [p for p in (scene.qubes_dir / "appvms").glob("*") if "secret" in p.name], n
        result = scene.suture()
        assert not result.errors
        assert SHARD_QUBES["sflc_0_1"] <= domains_by_name(load(scene.merged)).keys()
        assert (scene.qubes_dir / "appvms" / "secret" / "firewall.xml").read_text() == \
            "<secret/>"
    assert points >= 5


@pytest.mark.parametrize("leftover", ["old", "new"])
def test_an_interrupted_directory_swap_is_repaired(tmp_path, leftover):
    scene = split_scene(tmp_path)
    parent = scene.shard_dir("sflc_0_1") / "dom0" / "appvms"
    (parent / f".secret.{leftover}").mkdir(parents=True)
    (parent / f".secret.{leftover}" / "firewall.xml").write_text("<saved/>")
    scene.suture()
    restored = scene.qubes_dir / "appvms" / "secret" / "firewall.xml"
    assert restored.exists() == (leftover == "old")
    assert sorted(os.listdir(parent)) == (["secret"] if leftover == "old" else [])
