"""Shard files: init, metadata, discovery bounds, identifiers."""

import importlib.util
import os

import pytest
import reliant_shards
import reliant_store


def test_init_picks_free_blocks_and_records_dependencies(tmp_path):
    root = tmp_path / "roots"
    first = reliant_shards.init_shard(str(root / "a"), roots=[str(root)])
    second = reliant_shards.init_shard(str(root / "b"), depends_on=[first.path],
                                       roots=[str(root)])
    assert first.qid_range == (1000, 1499)
    assert second.qid_range == (1500, 1999)
    assert (first.id, second.depends_on) == ("a", ("a",))
    assert oct(os.stat(first.path).st_mode & 0o777) == "0o700"
    assert oct(os.stat(first.file).st_mode & 0o777) == "0o600"
    loaded = reliant_shards.load_shard(second.path)
    assert (loaded.id, loaded.qid_range, loaded.depends_on) == ("b", (1500, 1999), ("a",))
    assert loaded.domains == [] and loaded.pools == []


def test_init_refuses_overlaps_duplicates_and_bad_ids(tmp_path):
    root = tmp_path / "roots"
    reliant_shards.init_shard(str(root / "a"), qid_range=(2000, 2099))
    with pytest.raises(reliant_shards.ShardError, match="overlaps 2000-2099 of shard a"):
        reliant_shards.init_shard(str(root / "b"), qid_range=(2050, 2150), roots=[str(root)])
    with pytest.raises(reliant_shards.ShardError, match="already used"):
        reliant_shards.init_shard(str(root / "c"), shard_id="a", roots=[str(root)])
    with pytest.raises(reliant_shards.ShardError, match="must be 1-64"):
        reliant_shards.init_shard(str(root / "d"), shard_id="no/slash")
    with pytest.raises(reliant_shards.ShardError, match="already exists"):
        reliant_shards.init_shard(str(root / "a"))
    with pytest.raises(reliant_shards.ShardError, match="FIRST-LAST"):
        reliant_shards.parse_range("12")
    with pytest.raises(reliant_shards.ShardError, match="1 <= first <= last <= 9999"):
        reliant_shards.parse_range("0-10")


@pytest.mark.parametrize("data, words", [
    (b'<reliant-shard version="2" id="a"><qid-range first="1" last="2"/></reliant-shard>',
     "unknown format version"),
    (b'<reliant-shard version="1" id="a b"><qid-range first="1" last="2"/></reliant-shard>',
     "shard id 'a b'"),
    (b'<reliant-shard version="1" id="a"><pools/></reliant-shard>', "no <qid-range>"),
    (b'<reliant-shard version="1" id="a"><qid-range first="x" last="2"/><pools/>'
     b'</reliant-shard>', "integer first and last"),
    (b'<qubes><pools/></qubes>', "malformed XML"),
    (b'<reliant-shard version="1" id="a"><qid-range first="5" last="2"/></reliant-shard>',
     "qid-range"),
])
def test_bad_metadata_names_the_file(data, words):
    with pytest.raises((reliant_shards.ShardError, reliant_store.StoreError),
                       match=words) as info:
        reliant_shards.read_metadata(data, "/v/x/domains.xml")
    assert "/v/x/domains.xml" in str(info.value)


def test_discovery_is_bounded_in_depth_and_ignores_symlinked_files(tmp_path):
    root = tmp_path / "roots"
    reliant_shards.init_shard(str(root / "1" / "2" / "3"), qid_range=(3000, 3001))
    reliant_shards.init_shard(str(root / "1" / "2" / "3" / "4" / "deep"),
                              qid_range=(3002, 3003))
    reliant_shards.init_shard(str(root / "l1" / "l2" / "l3" / "l4"), qid_range=(3004, 3005))
    assert [s.id for s in reliant_shards.discover([str(root)], max_depth=3)] == ["3"]
    assert [s.id for s in reliant_shards.discover([str(root)], max_depth=4)] == ["3", "l4"]
    linked = root / "linked"
    linked.mkdir()
    os.symlink(root / "1" / "2" / "3" / "domains.xml", linked / "domains.xml")
    problems = []
    reliant_shards.discover([str(root)], problems=problems)
    assert [p.kind for p in problems] == ["refused"]
    assert "is a symlink" in problems[0].message


def test_identifiers_cover_names_uuids_pools_tag_and_path(tmp_path):
    shard = reliant_shards.init_shard(str(tmp_path / "s"), qid_range=(4000, 4001))
    pool = reliant_store.parse(f'<pool name="p1" dir_path="{shard.path}/pool" '
                               'driver="file"/>'.encode(), "pool")
    domain = reliant_store.parse(
        b'<domain id="domain-4000" class="AppVM"><properties><property name="name">q1'
        b'</property><property name="uuid">u-1</property></properties></domain>', "d")
    reliant_store.write(shard.file, reliant_shards.shard_bytes(shard, [pool], [domain]))
    found = reliant_shards.identifiers(reliant_shards.load_shard(shard.path))
    assert found == {"q1", "u-1", "p1", f"{shard.path}/pool", "reliant-shard-s", shard.path}


@pytest.mark.parametrize("name", ["reliant_store", "reliant_shards", "reliant_cli"])
def test_modules_load_as_salt_utils_do(name):
    """Salt's loader executes a utils module before registering it in sys.modules;
    dataclasses with postponed annotations would fail there."""
    path = os.path.join(os.path.dirname(reliant_shards.__file__), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"salt.loaded.ext.utils.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__
