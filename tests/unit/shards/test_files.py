"""Shard files: init, metadata, discovery bounds, identifiers."""

import os

import pytest
from reliant import store
from reliant.shards.files import (
    discover,
    identifiers,
    init_shard,
    load_shard,
    parse_range,
    read_metadata,
    shard_bytes,
)
from reliant.vocab import ShardError


def test_init_picks_free_blocks_and_records_dependencies(tmp_path):
    root = tmp_path / "roots"
    first = init_shard(str(root / "a"), roots=[str(root)])
    second = init_shard(str(root / "b"), depends_on=[first.path],
                                       roots=[str(root)])
    assert first.qid_range == (1000, 1499)
    assert second.qid_range == (1500, 1999)
    assert (first.id, second.depends_on) == ("a", ("a",))
    assert oct(os.stat(first.path).st_mode & 0o777) == "0o700"
    assert oct(os.stat(first.file).st_mode & 0o777) == "0o600"
    loaded = load_shard(second.path)
    assert (loaded.id, loaded.qid_range, loaded.depends_on) == ("b", (1500, 1999), ("a",))
    assert loaded.domains == [] and loaded.pools == []


def test_init_refuses_overlaps_duplicates_and_bad_ids(tmp_path):
    root = tmp_path / "roots"
    init_shard(str(root / "a"), qid_range=(2000, 2099))
    with pytest.raises(ShardError, match="overlaps 2000-2099 of shard a"):
        init_shard(str(root / "b"), qid_range=(2050, 2150), roots=[str(root)])
    with pytest.raises(ShardError, match="already used"):
        init_shard(str(root / "c"), shard_id="a", roots=[str(root)])
    with pytest.raises(ShardError, match="must be 1-64"):
        init_shard(str(root / "d"), shard_id="no/slash")
    with pytest.raises(ShardError, match="already exists"):
        init_shard(str(root / "a"))
    with pytest.raises(ShardError, match="FIRST-LAST"):
        parse_range("12")
    with pytest.raises(ShardError, match="1 <= first <= last <= 9999"):
        parse_range("0-10")


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
    with pytest.raises((ShardError, store.StoreError),
                       match=words) as info:
        read_metadata(data, "/v/x/domains.xml")
    assert "/v/x/domains.xml" in str(info.value)


def test_discovery_is_bounded_in_depth_and_ignores_symlinked_files(tmp_path):
    root = tmp_path / "roots"
    init_shard(str(root / "1" / "2" / "3"), qid_range=(3000, 3001))
    init_shard(str(root / "1" / "2" / "3" / "4" / "deep"),
                              qid_range=(3002, 3003))
    init_shard(str(root / "l1" / "l2" / "l3" / "l4"), qid_range=(3004, 3005))
    assert [s.id for s in discover([str(root)], max_depth=3)] == ["3"]
    assert [s.id for s in discover([str(root)], max_depth=4)] == ["3", "l4"]
    linked = root / "linked"
    linked.mkdir()
    os.symlink(root / "1" / "2" / "3" / "domains.xml", linked / "domains.xml")
    problems = []
    discover([str(root)], problems=problems)
    assert [p.kind for p in problems] == ["refused"]
    assert "is a symlink" in problems[0].message


def test_identifiers_cover_names_uuids_pools_tag_and_path(tmp_path):
    shard = init_shard(str(tmp_path / "s"), qid_range=(4000, 4001))
    pool = store.parse(f'<pool name="p1" dir_path="{shard.path}/pool" '
                               'driver="file"/>'.encode(), "pool")
    domain = store.parse(
        b'<domain id="domain-4000" class="AppVM"><properties><property name="name">q1'
        b'</property><property name="uuid">u-1</property></properties></domain>', "d")
    store.write(shard.file, shard_bytes(shard, [pool], [domain]))
    found = identifiers(load_shard(shard.path))
    assert found == {"q1", "u-1", "p1", f"{shard.path}/pool", "reliant-shard-s", shard.path}
