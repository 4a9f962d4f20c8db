"""Suture and dissect over the real qubesd stores: lossless, silent when nothing changed."""

import json

from reliant import store
from reliant.shards.files import identifiers, load_shard
from reliant.shards.records import qube_name, qube_qid
from reliant.vocab import CORE_TAG, shard_tag
from repo_paths import FIXTURES
from shards_helpers import (
    SHARD_QUBES,
    canonical,
    domains_by_name,
    load,
    merged_scene,
    mtimes,
    split_scene,
)


def test_first_dissect_splits_the_fixture_into_core_and_two_shards(tmp_path):
    scene = merged_scene(tmp_path)
    expected = store.parse(scene.merged.read_bytes(), "merged")
    shard_names = set().union(*SHARD_QUBES.values())
    for domain in list(expected.find("domains")):
        if qube_name(domain) in shard_names:
            expected.find("domains").remove(domain)
    for pool in list(expected.find("pools")):
        if pool.get("name") in SHARD_QUBES:
            expected.find("pools").remove(pool)
    result = scene.dissect(final=True)
    assert not result.errors, result.problems
    # core on disk: what qubesd itself would write for the store without the shard qubes
    assert scene.core.read_bytes() == store.serialize(expected)
    for sid, names in SHARD_QUBES.items():
        shard = load_shard(str(scene.shard_dir(sid)))
        assert {qube_name(d) for d in shard.domains} == names
        assert shard.pools == [sid]
        text = scene.core.read_bytes()
        for word in identifiers(shard):
            assert word.encode() not in text, word


def test_split_then_merge_carries_everything_of_the_original(tmp_path):
    scene = split_scene(tmp_path)
    original = domains_by_name(store.parse(scene.merged.read_bytes(), "orig"))
    scene.merged.unlink()
    result = scene.suture()
    assert not [p for p in result.problems if p.severity != "info"], result.problems
    merged = load(scene.merged)
    again = domains_by_name(merged)
    assert again.keys() == original.keys()
    for name, domain in original.items():
        assert canonical(again[name]) == canonical(domain), name
    original_root = store.parse(
        (FIXTURES / "qubes-r4.3-merged.xml").read_bytes(), "orig")
    assert len(merged.find("pools")) == len(original_root.find("pools"))
    assert store.serialize(merged.find("properties")) == store.serialize(
        original_root.find("properties"))
    assert store.serialize(merged.find("labels")) == store.serialize(
        original_root.find("labels"))


def test_suture_tags_every_qube_with_its_group(tmp_path):
    scene = split_scene(tmp_path)
    scene.suture()
    for name, domain in domains_by_name(load(scene.merged)).items():
        tags = {t.get("name") for t in domain.iterfind("tags/tag")
                if t.get("name").startswith("reliant-")}
        if name == "dom0":
            assert tags == set()
            continue
        sid = next((s for s, names in SHARD_QUBES.items() if name in names), None)
        assert tags == {shard_tag(sid) if sid else CORE_TAG}


def test_round_trip_is_byte_for_byte_and_writes_nothing(tmp_path):
    scene = split_scene(tmp_path)
    files = [scene.core, scene.shard_dir("sflc_0_1"), scene.shard_dir("sflc_0_2")]
    contents = {p: p.read_bytes() for p in (scene.core, scene.shard_dir("sflc_0_1") /
                                            "domains.xml", scene.shard_dir("sflc_0_2") /
                                            "domains.xml")}
    scene.suture()
    stamps = mtimes(*files)
    result = scene.dissect(final=True)
    assert result.written == []
    assert not result.problems
    assert mtimes(*files) == stamps
    assert {p: p.read_bytes() for p in contents} == contents


def test_default_ranges_renumber_fixture_qubes_into_their_shard(tmp_path):
    scene = merged_scene(tmp_path, ranges=((1000, 1499), (1500, 1999)))
    original = domains_by_name(load(scene.merged))
    result = scene.dissect(final=True)
    assert [p.kind for p in result.problems] == ["renumbered"] * 5
    scene.suture()
    merged = domains_by_name(load(scene.merged))
    for sid, (first, last) in (("sflc_0_1", (1000, 1499)), ("sflc_0_2", (1500, 1999))):
        for name in SHARD_QUBES[sid]:
            assert first <= qube_qid(merged[name]) <= last
            assert canonical(merged[name], drop_qid=True) == canonical(original[name],
                                                                       drop_qid=True)
    for name in set(original) - set().union(*SHARD_QUBES.values()):
        assert canonical(merged[name]) == canonical(original[name])


def test_state_records_what_was_merged(tmp_path):
    scene = split_scene(tmp_path)
    scene.suture()
    state = json.loads((scene.merged.parent / "shards.json").read_text())
    assert sorted(state["shards"]) == ["sflc_0_1", "sflc_0_2"]
    assert len(state["shards"]["sflc_0_1"]["merged"]) == 3
    assert state["shards"]["sflc_0_1"]["pools"] == ["sflc_0_1"]
