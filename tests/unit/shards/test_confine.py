"""Volumes confined (issue 12 part 1): each hostile volume form of a shard file keeps its
qube out of the merged store, the report names the qube, the volume and the rule, and the
shard file comes back from dissect byte for byte."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree
from reliant import store
from reliant.shards.confine import (
    PoolFacts,
    VolumeFacts,
    plain_relative,
    renamed_vid,
    shard_pool_problem,
    volume_problem,
)
from reliant.shards.runtime import default_state_path
from shards_helpers import Scene, domains_by_name, load, split_scene

S2 = "sflc_0_2"


def volume(domain: etree._Element, name: str) -> etree._Element:
    return domain.find(f"volume-config/volume[@name='{name}']")


def edit(scene: Scene, change: Callable[[etree._Element, Scene], None]) -> bytes:
    """Apply `change(root, scene)` to shard sflc_0_2's file; its new bytes."""
    path = scene.shard_dir(S2) / "domains.xml"
    root = load(path)
    change(root, scene)
    path.write_bytes(store.serialize(root))
    return path.read_bytes()


def notes_private(**attrs: str) -> Callable[[etree._Element, Scene], None]:
    def change(root: etree._Element, scene: Scene) -> None:
        target = volume(domains_by_name(root)["deep-notes"], "private")
        for key, value in attrs.items():
            target.set(key, value)
    return change


def mail_root(**attrs: str) -> Callable[[etree._Element, Scene], None]:
    def change(root: etree._Element, scene: Scene) -> None:
        target = volume(domains_by_name(root)["deep-mail"], "root")
        for key, value in attrs.items():
            target.set(key, value)
    return change


def second_lvm_pool(root: etree._Element, scene: Scene) -> None:
    """The shard brings its own lvm_thin pool on dom0's thin pool, and opens a core
    qube's private volume through it."""
    etree.SubElement(root.find("pools"), "pool", name="sflc_0_2_lvm", driver="lvm_thin",
                     volume_group="qubes_dom0", thin_pool="vm-pool", revisions_to_keep="2")
    notes_private(pool="sflc_0_2_lvm", vid="qubes_dom0/vm-vault-private")(root, scene)


def symlinked_directory(root: etree._Element, scene: Scene) -> None:
    """appvms/deep-notes inside the shard pool is a symlink to a directory of dom0."""
    outside = scene.tmp / "varlibqubes-appvms-vault"
    outside.mkdir()
    (outside / "private.img").write_bytes(b"core data")
    appvms = scene.shard_dir(S2) / "pool" / "appvms"
    appvms.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, appvms / "deep-notes")


def symlinked_image(root: etree._Element, scene: Scene) -> None:
    """The private image of deep-notes is a symlink to a file of dom0."""
    outside = scene.tmp / "core-private.img"
    outside.write_bytes(b"core data")
    directory = scene.shard_dir(S2) / "pool" / "appvms" / "deep-notes"
    directory.mkdir(parents=True)
    os.symlink(outside, directory / "private.img")


#: hostile form -> (shard file change, qube left out, words of the rule in the report)
HOSTILE = {
    "dom0's root logical volume as private": (
        notes_private(pool="vm-pool", vid="qubes_dom0/root"), "deep-notes",
        "volume private is in pool vm-pool (driver 'lvm_thin'), not a file pool of its shard"),
    "dom0's root logical volume as a snapshot": (
        mail_root(vid="qubes_dom0/root"), "deep-mail",
        "volume root is a snapshot with vid 'qubes_dom0/root' in pool vm-pool of another "
        "group; there it must be named as qubesd names it: qubes_dom0/vm-deep-mail-root"),
    "a core qube's private through core's pool": (
        notes_private(pool="vm-pool", vid="qubes_dom0/vm-vault-private"), "deep-notes",
        "volume private is vm-pool:qubes_dom0/vm-vault-private, a volume of qube vault"),
    "a second lvm_thin pool of the shard on dom0's thin pool": (
        second_lvm_pool, "deep-notes",
        "volume private is in pool sflc_0_2_lvm, which is not merged (pool sflc_0_2_lvm has "
        "driver 'lvm_thin'"),
    "a vid climbing out of its file pool": (
        notes_private(vid="appvms/../../../../varlibqubes/appvms/vault/private"), "deep-notes",
        "volume private: vid 'appvms/../../../../varlibqubes/appvms/vault/private' in pool "
        "sflc_0_2 is not a plain relative name"),
    "an absolute vid": (
        notes_private(vid="/var/lib/qubes/appvms/vault/private"), "deep-notes",
        "is not a plain relative name"),
    "a vid through a symlinked directory": (
        symlinked_directory, "deep-notes",
        "vid 'appvms/deep-notes/root' leads out of the directory of pool sflc_0_2"),
    "a volume image that is a symlink": (
        symlinked_image, "deep-notes", "private.img in pool sflc_0_2 is not a regular file"),
    "a root that is a snapshot of a core qube's private": (
        mail_root(source="qubes_dom0/vm-vault-private"), "deep-mail",
        "volume root is a snapshot of vm-pool:qubes_dom0/vm-vault-private, which is not a "
        "volume of its template debian-13-xfce"),
    "a volume in core's varlibqubes pool": (
        notes_private(pool="varlibqubes"), "deep-notes",
        "volume private is in pool varlibqubes (driver 'file'), not a file pool of its shard"),
    "a volume without a pool": (
        lambda root, scene: volume(domains_by_name(root)["deep-notes"], "private").attrib.pop(
            "pool"), "deep-notes", "volume private names no pool"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_volume_keeps_its_qube_out_and_its_shard_file_intact(tmp_path, case):
    change, qube, words = HOSTILE[case]
    scene = split_scene(tmp_path)
    before = edit(scene, change)

    result = scene.suture()
    about = [p for p in result.problems if p.qube == qube]
    assert len(about) == 1 and about[0].kind == "invalid", result.problems
    assert words in about[0].message and S2 in about[0].message, about[0].message
    merged = domains_by_name(load(scene.merged))
    assert qube not in merged
    assert {"deep-mail", "deep-notes"} - {qube} <= merged.keys()  # the rest of the shard
    assert "sflc_0_2_lvm" not in {p.get("name") for p in load(scene.merged).iterfind(
        "pools/pool")}
    assert not result.errors

    scene.dissect(final=True)
    assert (scene.shard_dir(S2) / "domains.xml").read_bytes() == before


def test_a_shard_pool_outside_its_directory_is_held_with_its_qubes(tmp_path):
    """A pool whose dir_path leaves the shard (here through a symlink) is not merged; the
    qubes keeping data there are named; the other pool and its qubes merge."""
    scene = split_scene(tmp_path)
    escape = scene.shard_dir(S2) / "escape"
    os.symlink(scene.qubes_dir, escape)

    def spread(root: etree._Element, scene: Scene) -> None:
        etree.SubElement(root.find("pools"), "pool", name="sflc_0_2_out", driver="file",
                         dir_path=str(escape / "pool"), revisions_to_keep="1")
        notes_private(pool="sflc_0_2_out")(root, scene)
        for name in ("volatile", "root"):
            volume(domains_by_name(root)["deep-notes"], name).set("pool", "sflc_0_2_out")

    before = edit(scene, spread)
    result = scene.suture()
    pool_problem = [p for p in result.problems if p.qube is None and p.shard == S2]
    assert len(pool_problem) == 1 and "sflc_0_2_out" in pool_problem[0].message
    assert "not inside the shard directory" in pool_problem[0].message
    assert [p.qube for p in result.problems if p.kind == "invalid" and p.qube] == ["deep-notes"]
    merged = load(scene.merged)
    assert "deep-mail" in domains_by_name(merged) and "deep-notes" not in domains_by_name(merged)
    assert {p.get("name") for p in merged.iterfind("pools/pool")} >= {"sflc_0_1", "sflc_0_2"}
    assert "sflc_0_2_out" not in {p.get("name") for p in merged.iterfind("pools/pool")}
    for final in (False, True):
        scene.dissect(final=final)
        assert (scene.shard_dir(S2) / "domains.xml").read_bytes() == before


def test_a_held_pool_survives_a_dissect_that_lost_the_runtime_state(tmp_path):
    scene = split_scene(tmp_path)
    before = edit(scene, second_lvm_pool)
    scene.suture()
    os.unlink(default_state_path(str(scene.merged)))
    result = scene.dissect(final=True)
    assert [p.kind for p in result.problems] == ["state"], result.problems
    assert (scene.shard_dir(S2) / "domains.xml").read_bytes() == before


def test_a_template_left_out_cannot_vouch_for_its_disposables_snapshots(tmp_path):
    """A disposable template whose root snapshots dom0's root is left out; a disposable of
    it taking the same source is then left out too (its template no longer vouches)."""
    scene = split_scene(tmp_path)

    def chain(root: etree._Element, scene: Scene) -> None:
        mail = domains_by_name(root)["deep-mail"]
        volume(mail, "root").set("source", "qubes_dom0/root")
        disposable = etree.fromstring(etree.tostring(mail))
        disposable.set("class", "DispVM")
        disposable.set("id", "domain-19")
        for prop in disposable.iterfind("properties/property"):
            prop.text = {"name": "disp19", "qid": "19", "template": "deep-mail",
                         "uuid": "5d6e7f80-0000-4000-8000-000000000019"}.get(
                prop.get("name"), prop.text)
        volume(disposable, "root").set("vid", "qubes_dom0/vm-disp19-root")
        for name in ("private", "volatile"):
            volume(disposable, name).set("vid", f"appvms/disp19/{name}")
        root.find("domains").append(disposable)
        notes = domains_by_name(root)["deep-notes"]
        notes.getparent().remove(notes)  # its qid 19 is the disposable's now

    edit(scene, chain)
    result = scene.suture()
    left_out = {p.qube: p.message for p in result.problems if p.kind == "invalid"}
    # disp19 is left out too (its template gone, a recovery would replace every snapshot
    # source it names, reliant.shards.recovery; here it also lacks its dispid)
    assert sorted(left_out) == ["deep-mail", "disp19"], result.problems


# --- the rules themselves ------------------------------------------------------------------


@pytest.mark.parametrize("vid, plain", [
    ("appvms/q/private", True), ("private", True), ("a.b/c-d", True),
    ("", False), ("/abs", False), ("a//b", False), ("a/", False), ("./a", False),
    ("a/../b", False), ("..", False), ("a\nb", False), ("a\0b", False),
])
def test_a_vid_is_a_plain_relative_name(vid, plain):
    assert plain_relative(vid) is plain


def test_a_shard_pool_needs_a_file_driver_and_a_directory_strictly_inside(tmp_path):
    shard = tmp_path / "shard"
    (shard / "dom0").mkdir(parents=True)
    inside = str(shard / "pool")
    assert shard_pool_problem(PoolFacts("p", "file", inside), [str(shard)]) is None
    assert shard_pool_problem(PoolFacts("p", "file-reflink", inside), [str(shard)]) is None
    for pool, words in [
        (PoolFacts("p", "lvm_thin", "", "qubes_dom0"), "driver 'lvm_thin'"),
        (PoolFacts("p", "zfs", inside), "driver 'zfs'"),
        (PoolFacts("p", "file", ""), "no absolute dir_path"),
        (PoolFacts("p", "file", "pool"), "no absolute dir_path"),
        (PoolFacts("p", "file", str(shard)), "not inside the shard directory"),
        (PoolFacts("p", "file", f"{shard}/pool/../../elsewhere"), "not inside the shard"),
        (PoolFacts("p", "file", str(shard / "dom0" / "pool")), "saved dom0 tree"),
    ]:
        problem = shard_pool_problem(pool, [str(shard)], [str(shard / "dom0")])
        assert problem is not None and words in problem, (pool, problem)


LVM = PoolFacts("vm-pool", "lvm_thin", volume_group="qubes_dom0")
KERNELS = PoolFacts("linux-kernel", "linux-kernel", "/var/lib/qubes/vm-kernels")


def test_snapshots_follow_the_template_chain_and_kernels_are_free(tmp_path):
    own = PoolFacts("own", "file", str(tmp_path / "pool"))
    pools = {p.name: p for p in (LVM, KERNELS, own)}
    own_dirs = {"own": str(tmp_path / "pool")}
    template = [VolumeFacts("root", "vm-pool", "qubes_dom0/vm-dvm-root",
                            "qubes_dom0/vm-debian-root", True),
                VolumeFacts("private", "own", "appvms/dvm/private")]
    ok = [VolumeFacts("root", "vm-pool", "qubes_dom0/vm-disp1-root",
                      "qubes_dom0/vm-debian-root", True),  # the template's own source
          VolumeFacts("private", "own", "appvms/disp1/private", "appvms/dvm/private", True),
          VolumeFacts("kernel", "linux-kernel", "../../../anything")]
    for item in ok:
        assert volume_problem("disp1", "DispVM", item, pools, own_dirs, "dvm", template) is None
    bad = VolumeFacts("private", "vm-pool", "qubes_dom0/vm-disp1-private",
                      "qubes_dom0/vm-dvm-root", True)  # another volume's name
    assert "not a volume of its template dvm" in volume_problem(
        "disp1", "DispVM", bad, pools, own_dirs, "dvm", template)
    unseen = VolumeFacts("root", "vm-pool", "qubes_dom0/vm-app-root",
                         "qubes_dom0/vm-gone-root", True)
    assert volume_problem("app", "AppVM", unseen, pools, own_dirs, "gone", None) is None
    assert "not visible" in volume_problem("app", "AppVM", unseen, pools, own_dirs, "other",
                                           None)


def test_rename_gives_snapshots_outside_the_shard_the_new_names():
    file_pool = PoolFacts("varlibqubes", "file", "/var/lib/qubes")
    assert renamed_vid(LVM, "AppVM", "root", "qubes_dom0/vm-old-root", "old", "new") == \
        "qubes_dom0/vm-new-root"
    assert renamed_vid(file_pool, "AppVM", "root", "appvms/old/root", "old", "new") == \
        "appvms/new/root"
    assert renamed_vid(LVM, "AppVM", "root", "qubes_dom0/custom", "old", "new") == \
        "qubes_dom0/custom"


def test_the_fixture_store_passes(tmp_path):
    """The real store's shard qubes (file-reflink pools, roots snapshotted in vm-pool) are
    confined as they are."""
    scene = split_scene(tmp_path)
    result = scene.suture()
    assert not [p for p in result.problems if p.kind == "invalid"], result.problems
    assert Path(scene.merged).exists()
