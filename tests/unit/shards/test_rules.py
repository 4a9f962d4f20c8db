"""Rules of suture and dissect: bad input is reported and loses nothing; references,
QIDs, pools, tags and dom0 directories go where they belong."""

import os

import pytest
from lock_holder import assert_waits_for_lockf
from lxml import etree
from reliant import operations, store
from reliant.shards.files import discover, init_shard
from reliant.shards.records import feature_value, property_value, qube_name, qube_qid, qube_uuid
from reliant.shards.runtime import default_state_path, read_state
from reliant.vocab import CORE_TAG, ShardError, shard_tag
from shards_helpers import (
    SHARD_QUBES,
    dispvms_in_own_group,
    domains_by_name,
    load,
    new_domain,
    set_prop,
    split_scene,
)


def edit_shard(scene, sid, change):
    """Apply `change(root)` to a shard file on disk."""
    path = scene.shard_dir(sid) / "domains.xml"
    root = load(path)
    change(root)
    path.write_bytes(store.serialize(root))
    return path


def domain_of(root, name):
    return domains_by_name(root)[name]


def kinds(result):
    return sorted(p.kind for p in result.problems if p.severity != "info")


def all_uuids(scene):
    """uuid of every qube that can be recovered from the files on disk."""
    found = {qube_uuid(d) for d in load(scene.core).iterfind("domains/domain")}
    for sid in SHARD_QUBES:
        path = scene.shard_dir(sid) / "domains.xml"
        if path.exists():
            found |= {qube_uuid(d) for d in load(path).iterfind(".//domain")}
    return found


# --- bad input: reported with the culprit named, nothing lost -----------------------------

BAD_SHARDS = {
    "malformed XML": (lambda p: p.write_bytes(p.read_bytes()[:-30]), "malformed XML"),
    "entity expansion": (lambda p: p.write_bytes(
        b'<!DOCTYPE r [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n'
        + p.read_bytes()), "DTD or entity"),
    "labels in a shard": (lambda p: p.write_bytes(p.read_bytes().replace(
        b"<pools>", b"<labels><label id=\"label-1\" color=\"0x000000\">red</label></labels>"
        b"<pools>")), "may not hold <labels>"),
    "shadows a core pool": (lambda p: p.write_bytes(p.read_bytes().replace(
        b'name="sflc_0_2" dir_path', b'name="vm-pool" dir_path')), "redefines a pool of core"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHARDS))
def test_a_bad_shard_is_refused_and_left_intact(tmp_path, case):
    scene = split_scene(tmp_path)
    spoil, words = BAD_SHARDS[case]
    path = scene.shard_dir("sflc_0_2") / "domains.xml"
    spoil(path)
    bad = path.read_bytes()
    result = scene.suture()
    refused = [p for p in result.problems if p.kind == "refused"]
    assert len(refused) == 1 and words in refused[0].message, result.problems
    assert str(scene.shard_dir("sflc_0_2")) in refused[0].message
    merged = domains_by_name(load(scene.merged))
    assert SHARD_QUBES["sflc_0_1"] <= merged.keys()
    assert not SHARD_QUBES["sflc_0_2"] & merged.keys()
    scene.dissect(final=True)
    assert path.read_bytes() == bad


QUBE_CASES = {
    "redefines a core qube": (lambda d: set_prop(d, "name", "work"), "conflict",
                              "a qube named 'work' exists in core"),
    "same uuid as a core qube": (lambda d: set_prop(
        d, "uuid", "f4eed94b-26f6-4a23-a73c-a0b1d2099589"), "conflict", "uuid"),
    "class AdminVM": (lambda d: d.set("class", "AdminVM"), "invalid", "class 'AdminVM'"),
    "qid 0": (lambda d: set_prop(d, "qid", "0"), "invalid", "qid '0'"),
    "unknown label": (lambda d: set_prop(d, "label", "pink"), "invalid", "label 'pink'"),
    "unknown pool": (lambda d: d.find("volume-config/volume").set("pool", "elsewhere"),
                     "invalid", "elsewhere"),
}


@pytest.mark.parametrize("case", sorted(QUBE_CASES))
def test_a_bad_qube_stays_intact_in_its_shard(tmp_path, case):
    scene = split_scene(tmp_path)
    change, kind, words = QUBE_CASES[case]
    path = edit_shard(scene, "sflc_0_2", lambda r: change(domain_of(r, "deep-notes")))
    before = {etree.tostring(d) for d in load(path).iterfind(".//domain")}
    result = scene.suture()
    assert kinds(result) == [kind], result.problems
    assert words in result.problems[0].message and "sflc_0_2" in result.problems[0].message
    assert "deep-notes" not in domains_by_name(load(scene.merged))
    scene.dissect(final=True)
    assert {etree.tostring(d) for d in load(path).iterfind(".//domain")} == before


def test_duplicate_qids_are_renumbered_inside_the_range(tmp_path):
    scene = split_scene(tmp_path, ranges=((1000, 1499), (1500, 1999)))
    edit_shard(scene, "sflc_0_1", lambda r: [set_prop(d, "qid", "1000")
                                             for d in r.iterfind(".//domain")])
    result = scene.suture()
    assert kinds(result) == []
    qids = [qube_qid(d) for d in load(scene.merged).iterfind("domains/domain")]
    assert len(qids) == len(set(qids))
    assert all(1000 <= q <= 1002 for q, d in zip(qids, load(scene.merged).iterfind(
        "domains/domain")) if qube_name(d) in SHARD_QUBES["sflc_0_1"])


def test_a_core_qube_naming_a_shard_qube_keeps_that_qube_out(tmp_path):
    scene = split_scene(tmp_path)
    core = load(scene.core)
    set_prop(domain_of(core, "work"), "netvm", "secret-vpn")
    scene.core.write_bytes(store.serialize(core))
    result = scene.suture()
    # core names a qube it does not hold: qubesd would not load core (reported, not fixed)
    assert kinds(result) == ["conflict", "invalid", "recovered", "recovered", "recovered"]
    assert "core references a qube named 'secret-vpn'" in result.problems[0].message
    assert "secret-vpn" not in domains_by_name(load(scene.merged))
    scene.dissect(final=True)
    assert "secret-vpn" in domains_by_name(load(scene.shard_dir("sflc_0_1") / "domains.xml"))


def test_symlink_out_of_a_root_is_reported_and_not_followed(tmp_path):
    scene = split_scene(tmp_path)
    outside = tmp_path / "elsewhere" / "evil"
    outside.mkdir(parents=True)
    init_shard(str(outside), qid_range=(3000, 3100))
    os.symlink(outside, scene.root / "link")
    problems = []
    shards = discover(scene.roots, problems=problems)
    assert {s.id for s in shards} == {"sflc_0_1", "sflc_0_2"}
    assert len(problems) == 1 and "link: symlink points outside" in problems[0].message
    with pytest.raises(ShardError, match="symlink points outside"):
        discover(scene.roots)


def test_overlapping_ranges_refuse_the_later_shard(tmp_path):
    scene = split_scene(tmp_path)
    other = scene.root / "third"
    init_shard(str(other), qid_range=(2000, 2100))
    edit_shard(scene, "third", lambda r: r.find("qid-range").set("first", "16"))
    result = scene.suture()
    assert [p.kind for p in result.problems] == ["refused"]
    assert "overlaps 15-17 of shard sflc_0_1" in result.problems[0].message


# --- missing references -----------------------------------------------------------------


def test_missing_template_is_recovered_with_prohibit_start(tmp_path):
    scene = split_scene(tmp_path)
    edit_shard(scene, "sflc_0_1", lambda r: (
        set_prop(domain_of(r, "secret"), "template", "gone-template"),
        # its root still names the removed template's volume, as qubesd left it
        set_volume(domain_of(r, "secret"), "root", source="qubes_dom0/vm-gone-template-root")))
    result = scene.suture()
    assert kinds(result) == ["recovered"]
    secret = domain_of(load(scene.merged), "secret")
    assert property_value(secret, "template") == "fedora-42-xfce"  # the global default_template
    assert feature_value(secret, "reliant-recovered-template") == "gone-template"
    assert feature_value(secret, "prohibit-start").startswith("reliant: template 'gone-template'")
    scene.dissect(final=True)
    status = operations.status(str(scene.core), str(scene.merged), scene.roots)
    assert [r["qube"] for r in status["recovered"]] == ["secret"]
    operations.review_qube(scene.roots, "secret")
    secret = domain_of(load(scene.shard_dir("sflc_0_1") / "domains.xml"), "secret")
    assert feature_value(secret, "prohibit-start") is None
    assert feature_value(secret, "reliant-recovered-template") is None
    with pytest.raises(ShardError, match="nothing to review"):
        operations.review_qube(scene.roots, "secret")


def test_skip_mode_leaves_the_qube_and_its_dependents_out(tmp_path):
    scene = split_scene(tmp_path)
    edit_shard(scene, "sflc_0_1", lambda r: set_prop(domain_of(r, "secret-vpn"), "netvm",
                                                     "gone-net"))
    result = scene.suture(missing_reference="skip")
    skipped = sorted(p.qube for p in result.problems if p.kind == "skipped")
    # secret, secret-dvm and deep-mail use secret-vpn as netvm
    assert skipped == ["deep-mail", "secret", "secret-dvm", "secret-vpn"]
    before = all_uuids(scene)
    scene.dissect(final=True)
    assert all_uuids(scene) == before


# --- qubes created or changed while shards are open -----------------------------------


def test_a_qube_created_while_open_joins_the_shard_of_its_pools(tmp_path):
    scene = split_scene(tmp_path, ranges=((1000, 1499), (1500, 1999)))
    scene.suture()
    merged = load(scene.merged)
    merged.find("domains").append(new_domain("fresh", 15, "sflc_0_1", "0000-fresh"))
    merged.find("domains").append(new_domain("plain", 16, "vm-pool", "0000-plain"))
    scene.merged.write_bytes(store.serialize(merged))
    scene.dissect()
    shard1 = domains_by_name(load(scene.shard_dir("sflc_0_1") / "domains.xml"))
    core = domains_by_name(load(scene.core))
    assert "fresh" in shard1 and "fresh" not in core
    assert qube_qid(shard1["fresh"]) == 1003
    assert qube_qid(core["plain"]) == 16
    assert b"fresh" not in scene.core.read_bytes()
    # qubesd keeps qid 15 until the next suture; later dissects keep the same shard qid
    scene.dissect()
    assert qube_qid(domain_of(load(scene.shard_dir("sflc_0_1") /
                                                 "domains.xml"), "fresh")) == 1003
    # removed in qubesd: removed from the shard
    merged = load(scene.merged)
    merged.find("domains").remove(domain_of(merged, "fresh"))
    scene.merged.write_bytes(store.serialize(merged))
    scene.dissect()
    assert "fresh" not in domains_by_name(load(scene.shard_dir("sflc_0_1") / "domains.xml"))


def test_core_never_gets_a_reference_to_a_shard_qube(tmp_path):
    scene = split_scene(tmp_path)
    scene.suture()
    merged = load(scene.merged)
    set_prop(domain_of(merged, "work"), "netvm", "secret-vpn")
    for prop in merged.find("properties"):
        if prop.get("name") == "default_netvm":
            prop.text = "secret-vpn"
    scene.merged.write_bytes(store.serialize(merged))
    result = scene.dissect()
    assert kinds(result) == ["violation", "violation"]
    assert b"secret" not in scene.core.read_bytes()
    assert property_value(load(scene.core), "default_netvm") == "sys-firewall"


def test_a_vanished_shard_is_never_written_into_core(tmp_path):
    scene = split_scene(tmp_path)
    scene.suture()
    (scene.shard_dir("sflc_0_2") / "domains.xml").rename(tmp_path / "hidden.xml")
    result = scene.dissect(final=True)
    assert {p.kind for p in result.errors} == {"unplaceable"}
    assert {p.qube for p in result.errors} == {None, "deep-mail", "deep-notes"}
    assert "shard sflc_0_2" in result.errors[0].message
    core = scene.core.read_bytes()
    assert b"deep-" not in core and b"sflc_0_2" not in core


def test_detached_shard_is_neither_merged_nor_written(tmp_path):
    scene = split_scene(tmp_path)
    path = scene.shard_dir("sflc_0_2") / "domains.xml"
    os.utime(path, (1, 1))
    result = scene.suture(detached={"sflc_0_2"})
    assert [p.kind for p in result.problems] == ["detached"]
    assert not SHARD_QUBES["sflc_0_2"] & domains_by_name(load(scene.merged)).keys()
    scene.dissect(final=True)
    assert path.stat().st_mtime == 1


# --- dom0 directories -------------------------------------------------------------------


def test_dom0_directories_travel_with_their_shard(tmp_path):
    scene = split_scene(tmp_path)
    scene.suture()
    firewall = scene.qubes_dir / "appvms" / "secret" / "firewall.xml"
    firewall.parent.mkdir(parents=True)
    firewall.write_text("<firewall/>")
    (scene.qubes_dir / "appvms" / "work").mkdir()
    scene.dissect()  # qubesd running: saved, still in place
    saved = scene.shard_dir("sflc_0_1") / "dom0" / "appvms" / "secret" / "firewall.xml"
    assert saved.read_text() == "<firewall/>" and firewall.exists()
    scene.dissect(final=True)  # qubesd stopped: gone from dom0
    assert not (scene.qubes_dir / "appvms" / "secret").exists()
    assert (scene.qubes_dir / "appvms" / "work").exists()
    assert sorted(os.listdir(scene.qubes_dir / "appvms")) == ["work"]
    scene.suture()
    assert firewall.read_text() == "<firewall/>"


def test_a_symlink_in_a_saved_dom0_directory_is_not_restored(tmp_path):
    scene = split_scene(tmp_path)
    saved = scene.shard_dir("sflc_0_1") / "dom0" / "appvms" / "secret"
    saved.mkdir(parents=True)
    os.symlink("/etc/shadow", saved / "firewall.xml")
    result = scene.suture()
    assert [p.kind for p in result.problems if p.kind == "invalid"] == ["invalid"]
    assert not os.path.lexists(scene.qubes_dir / "appvms" / "secret" / "firewall.xml")


def test_rename_resolves_a_name_conflict(tmp_path):
    scene = split_scene(tmp_path)
    edit_shard(scene, "sflc_0_1", lambda r: (  # qubesd created it as "work" in the shard
        set_volume(domain_of(r, "secret-vpn"), "root", vid="qubes_dom0/vm-work-root"),
        set_prop(domain_of(r, "secret-vpn"), "name", "work")))
    edit_shard(scene, "sflc_0_1", lambda r: [set_prop(domain_of(r, n), "netvm", "work")
                                             for n in ("secret", "secret-dvm")])
    edit_shard(scene, "sflc_0_2", lambda r: set_prop(domain_of(r, "deep-mail"), "netvm",
                                                     "work"))
    result = scene.suture()
    assert "conflict" in kinds(result)
    with pytest.raises(ShardError, match="already exists"):
        operations.rename_qube(scene.roots, "work", "personal", core=str(scene.core))
    operations.rename_qube(scene.roots, "work", "hidden-vpn", core=str(scene.core))
    result = scene.suture()
    assert kinds(result) == [], result.problems
    merged = domains_by_name(load(scene.merged))
    assert property_value(merged["secret"], "netvm") == "hidden-vpn"
    assert property_value(merged["deep-mail"], "netvm") == "hidden-vpn"


# --- runtime qrexec policy (reliant.isolation.policy) ----------------------


def test_suture_writes_the_runtime_policy_for_the_merged_groups(tmp_path):
    scene = split_scene(tmp_path)
    policy_dir = tmp_path / "policy.d"
    result = scene.suture(policy_dir=str(policy_dir))
    (policy_file,) = policy_dir.iterdir()
    text = policy_file.read_text()
    for sid in SHARD_QUBES:
        assert shard_tag(sid) in text
    assert CORE_TAG in text
    isolation = sorted(p.qube for p in result.problems if p.kind == "isolation")
    assert isolation == ["deep-mail", "deep-notes", "secret-dvm", "secret-vpn"]
    state = read_state(default_state_path(str(scene.merged)))
    assert sorted(p["qube"] for p in state["problems"] if p["kind"] == "isolation") == isolation
    assert not [p for p in scene.suture().problems if p.kind == "isolation"]  # no policy


def test_suture_refuses_when_the_policy_cannot_be_written(tmp_path):
    scene = split_scene(tmp_path)
    blocker = tmp_path / "policy.d"
    blocker.write_text("not a directory")
    before = scene.merged.read_bytes()
    with pytest.raises(ShardError, match="merged store not written"):
        scene.suture(policy_dir=str(blocker))
    assert scene.merged.read_bytes() == before
    assert not (scene.qubes_dir / "appvms").exists()


def test_check_reports_each_shard_qube_whose_default_disposable_is_in_another_group(tmp_path):
    scene = split_scene(tmp_path)
    result = operations.check(str(scene.core), scene.roots)
    isolation = [p for p in result.problems if p.kind == "isolation"]
    assert [(p.severity, p.shard, p.qube) for p in isolation] == [
        ("warning", "sflc_0_2", "deep-mail"), ("warning", "sflc_0_2", "deep-notes"),
        ("warning", "sflc_0_1", "secret-dvm"), ("warning", "sflc_0_1", "secret-vpn")]
    assert "default_dispvm 'default-dvm' is in another group (reliant-core)" in isolation[0].message
    assert kinds(result) == ["isolation"] * 4
    dispvms_in_own_group(scene)
    assert operations.check(str(scene.core), scene.roots).problems == []


def test_check_reports_a_store_the_isolation_guard_cannot_read(tmp_path):
    scene = split_scene(tmp_path)
    core = load(scene.core)
    name = next(p for p in domain_of(core, "work").find("properties")
                if p.get("name") == "name")
    name.getparent().remove(name)
    scene.core.write_bytes(store.serialize(core))
    result = operations.check(str(scene.core), scene.roots)
    (error,) = [p for p in result.problems if p.kind == "isolation"]
    assert error.severity == "error" and "has no name" in error.message


def test_dissect_waits_for_a_running_suture_or_dissect(tmp_path):
    scene = split_scene(tmp_path)
    scene.suture()
    lock = scene.merged.parent / "shards.lock"
    assert_waits_for_lockf(lock, scene.dissect)


def test_a_shard_named_core_or_carrying_group_tags_cannot_pass_as_core(tmp_path):
    scene = split_scene(tmp_path)
    path = scene.shard_dir("sflc_0_2") / "domains.xml"
    path.write_bytes(path.read_bytes().replace(b'id="sflc_0_2"', b'id="core"'))
    edit_shard(scene, "sflc_0_1", lambda r: [
        etree.SubElement(d.find("tags"), "tag", name=CORE_TAG)
        for d in r.iterfind(".//domain")])
    scene.suture()
    for name, domain in domains_by_name(load(scene.merged)).items():
        tags = {t.get("name") for t in domain.iterfind("tags/tag")
                if t.get("name").startswith("reliant-")}
        if name in SHARD_QUBES["sflc_0_1"]:
            assert tags == {"reliant-shard-sflc_0_1"}
        elif name in SHARD_QUBES["sflc_0_2"]:
            assert tags == {"reliant-shard-core"}
    scene.dissect(final=True)
    core = scene.core.read_bytes()
    assert b"deep-" not in core and b"secret" not in core
    for sid in SHARD_QUBES:
        assert b'<tag name="reliant-' not in (scene.shard_dir(sid) / "domains.xml").read_bytes()


def test_a_symlinked_dom0_directory_in_a_shard_is_never_followed(tmp_path):
    scene = split_scene(tmp_path)
    victim = scene.qubes_dir / "appvms"
    (victim / "work").mkdir(parents=True)
    (victim / "work" / "firewall.xml").write_text("<core/>")
    os.symlink(scene.qubes_dir, scene.shard_dir("sflc_0_1") / "dom0")
    result = scene.suture()
    assert any("is a symlink" in p.message for p in result.problems)
    (victim / "secret").mkdir()
    (victim / "secret" / "firewall.xml").write_text("<secret/>")
    result = scene.dissect(final=True)
    # the link (not what it points at) makes room for a real directory
    assert any("is a symlink" in p.message for p in result.problems)
    assert (victim / "work" / "firewall.xml").read_text() == "<core/>"
    saved = scene.shard_dir("sflc_0_1") / "dom0"
    assert not saved.is_symlink()
    assert (saved / "appvms" / "secret" / "firewall.xml").read_text() == "<secret/>"


def set_volume(domain, volume, **attrs):
    for element in domain.iterfind("volume-config/volume"):
        if element.get("name") == volume:
            for key, value in attrs.items():
                element.set(key, value)


@pytest.mark.parametrize("qube, volume, attrs, words", [
    ("deep-notes", "private", {"pool": "vm-pool", "vid": "qubes_dom0/vm-vault-private"},
     "vm-pool:qubes_dom0/vm-vault-private, a volume of qube vault"),
    ("deep-mail", "root", {"source": "qubes_dom0/vm-vault-private"},
     "not a volume of its template debian-13-xfce"),
])
def test_a_shard_qube_cannot_open_another_qubes_volume(tmp_path, qube, volume, attrs, words):
    scene = split_scene(tmp_path)
    path = edit_shard(scene, "sflc_0_2", lambda r: set_volume(domain_of(r, qube), volume,
                                                             **attrs))
    result = scene.suture()
    assert kinds(result) == ["invalid"], result.problems
    assert words in result.problems[0].message
    assert qube not in domains_by_name(load(scene.merged))
    scene.dissect(final=True)
    assert qube in domains_by_name(load(path))
