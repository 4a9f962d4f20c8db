"""A shard that becomes visible while qubesd runs (its volume opened after suture) is not
merged: the dissects that follow (every qubesd save, then the final one at stop) keep its
file, pools included, so that the next suture merges it."""

from __future__ import annotations

import os

from shards_helpers import SHARD_QUBES, domains_by_name, load, split_scene


def test_a_shard_opened_after_suture_keeps_its_pools_through_dissects(tmp_path):
    scene = split_scene(tmp_path / "dom0")
    files = {sid: scene.shard_dir(sid) / "domains.xml" for sid in SHARD_QUBES}
    before = {sid: path.read_bytes() for sid, path in files.items()}
    for sid in SHARD_QUBES:  # volumes closed at suture
        os.rename(scene.shard_dir(sid), tmp_path / sid)
    assert not scene.suture().errors
    for sid in SHARD_QUBES:  # opened while qubesd runs on core alone
        os.rename(tmp_path / sid, scene.shard_dir(sid))
    for final in (False, False, True):  # qubesd saves, then stops
        assert not scene.dissect(final=final).errors
        assert {sid: path.read_bytes() for sid, path in files.items()} == before
    result = scene.suture()
    assert [p for p in result.problems if p.severity != "info"] == []
    assert set(domains_by_name(load(scene.merged))) >= set().union(*SHARD_QUBES.values())
