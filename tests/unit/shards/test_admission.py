"""Suture admits only what loads: each kind of damage of the qubesd-load corpus, applied
to one qube of a shard, leaves a merged store the qubesd double loads, with every other
qube in it, the damaged one reported and its shard file untouched."""

from __future__ import annotations

import copy

import pytest
from admission_scene import (
    CORPUS,
    QUBE_DAMAGE,
    SHARD_QUBES,
    STORE_DAMAGE,
    VERDICTS,
    domains,
    shard_scene,
)
from lxml import etree
from qubesd.qubesd_double import Store
from reliant import store
from reliant.shards.records import feature_value, qube_name, qube_uuid

#: the qubes a damage names in the corpus's base store
BASE_NAMES = {"appvm": "vault", "plain": "work", "taken": "vault", "taken_qid": "13",
              "template": "debian-13-xfce"}
#: and in the scene's core ("taken" sorts where the damaged qube does in its shard file)
NAMES = {**BASE_NAMES, "taken": "debian-13-xfce"}
#: the shard qube the scene damages, by class (no other qube names it)
TARGETS = {"AppVM": ("sflc_0_2", "deep-mail"), "DispVM": ("sflc_0_1", "secret-disp"),
           "TemplateVM": ("sflc_0_1", "secret-tmpl")}
REPAIRED = {"recovered", "renumbered"}


def canonical(root: etree._Element) -> bytes:
    return etree.tostring(store.parse(store.serialize(root), "store"), method="c14n")


def test_every_damage_that_stops_the_real_loader_is_covered():
    refused = {name for name, verdict in VERDICTS.items() if not verdict["loads"]}
    assert refused == set(QUBE_DAMAGE) | STORE_DAMAGE


@pytest.mark.parametrize("case", sorted(QUBE_DAMAGE))
def test_the_damage_is_the_corpus_store_s(case):
    """Applied to the base store, each damage makes exactly the corpus's store."""
    klass, damage = QUBE_DAMAGE[case]
    wanted = canonical(store.load(str(CORPUS / f"{case}.xml")))
    base = store.load(str(CORPUS / "base_store.xml"))
    made = []
    for index, domain in enumerate(base.iterfind("domains/domain")):
        if domain.get("class") == klass:
            root = copy.deepcopy(base)
            damage(root.find("domains")[index], BASE_NAMES)
            made.append(canonical(root))
    assert wanted in made


@pytest.mark.parametrize("case", sorted(QUBE_DAMAGE))
def test_a_damaged_shard_qube_never_stops_qubesd(tmp_path, case):
    scene = shard_scene(tmp_path)
    klass, damage = QUBE_DAMAGE[case]
    sid, target = TARGETS[klass]
    damaged: dict[str, set[str]] = {}

    def spoil(root):
        before = set(root.iterfind("domains/domain"))
        domain = domains(root)[target]
        damage(domain, NAMES)
        hit = [d for d in root.iterfind("domains/domain") if d not in before] or [domain]
        damaged["names"] = {qube_name(d) for d in hit}
        damaged["uuids"] = {qube_uuid(d) for d in hit}

    bad = scene.edit_shard(sid, spoil)
    core = set(domains(store.load(str(scene.core))))
    result = scene.suture()

    Store(str(scene.merged), str(tmp_path / "base")).load()  # the double loads it
    merged = store.load(str(scene.merged))
    others = core | set().union(*SHARD_QUBES.values()) - damaged["names"] - {target}
    assert others <= set(domains(merged)), result.problems
    reports = [p for p in result.problems
               if (p.qube in damaged["names"] and p.shard == sid and p.severity != "info")
               or (p.kind == "renumbered" and p.qube == target)]
    assert reports, result.problems
    assert scene.shard_file(sid).read_bytes() == bad
    merged_uuids = {qube_uuid(d) for d in merged.iterfind("domains/domain")}
    if {p.kind for p in reports} & REPAIRED:
        assert damaged["uuids"] <= merged_uuids
        return
    assert not damaged["uuids"] & merged_uuids
    scene.dissect(final=True)
    assert scene.shard_file(sid).read_bytes() == bad


def test_a_shard_pool_qubesd_refuses_takes_only_that_shard_s_qubes(tmp_path):
    """pool_dir_missing_attr: a pool without its dir_path."""
    scene = shard_scene(tmp_path)
    bad = scene.edit_shard("sflc_0_2", lambda root: root.find("pools/pool").attrib.pop(
        "dir_path"))
    result = scene.suture()
    Store(str(scene.merged), str(tmp_path / "base")).load()
    merged = set(domains(store.load(str(scene.merged))))
    assert SHARD_QUBES["sflc_0_1"] <= merged and not SHARD_QUBES["sflc_0_2"] & merged
    named = [p for p in result.problems if p.shard == "sflc_0_2" and "dir_path" in p.message]
    assert named, result.problems
    scene.dissect(final=True)
    assert scene.shard_file("sflc_0_2").read_bytes() == bad


def test_leaving_a_template_out_recovers_the_qubes_using_it(tmp_path):
    """Knock-on: a shard template the model refuses takes its AppVMs to the default."""
    scene = shard_scene(tmp_path)

    def spoil(root):
        found = domains(root)
        etree.SubElement(found["secret-tmpl"].find("tags"), "tag", name="bad tag")
        found["secret"].find("properties/property[@name='template']").text = "secret-tmpl"
        root_volume = found["secret"].find("volume-config/volume[@name='root']")
        root_volume.attrib.update(dict(pool="sflc_0_1", source="vm-templates/secret-tmpl/root",
                                  vid="appvms/secret/root", revisions_to_keep="1"))

    scene.edit_shard("sflc_0_1", spoil)
    result = scene.suture()
    Store(str(scene.merged), str(tmp_path / "base")).load()
    kinds = {(p.qube, p.kind) for p in result.problems}
    assert {("secret-tmpl", "invalid"), ("secret", "recovered")} <= kinds, result.problems
    secret = domains(store.load(str(scene.merged)))["secret"]
    assert feature_value(secret, "reliant-recovered-template") == "secret-tmpl"
    assert secret.find("volume-config/volume[@name='root']").get("source") == \
        "qubes_dom0/vm-fedora-42-xfce-root"
