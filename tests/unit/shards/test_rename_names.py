"""`rename` checks both names (qubes-core-admin's syntax, reliant.vocab.valid_qube_name)
before using either as a path or anything else (issue 12 part 6)."""

from __future__ import annotations

import pytest
from reliant import operations, store
from reliant.vocab import ShardError
from shards_helpers import domains_by_name, load, set_prop, split_scene

SHARD = "sflc_0_1"


@pytest.mark.parametrize("old, new", [
    ("../../../outside", "fine-name"),   # a shard file naming its qube like a path
    ("secret", "../../../outside"),
    ("secret", "dom0/x"),
    ("secret", ""),
    ("secret", "default"),
    ("secret", "a" * 32),
])
def test_rename_refuses_a_name_that_is_not_a_qube_name(tmp_path, old, new):
    scene = split_scene(tmp_path)
    path = scene.shard_dir(SHARD) / "domains.xml"
    if old != "secret":
        root = load(path)
        set_prop(domains_by_name(root)["secret"], "name", old)
        path.write_bytes(store.serialize(root))
    outside = scene.shard_dir(SHARD) / "dom0" / "appvms" / "../../../outside"
    outside.mkdir(parents=True)
    (outside / "keep").write_text("data")
    saved = scene.shard_dir(SHARD) / "dom0" / "appvms" / "secret"
    saved.mkdir(parents=True, exist_ok=True)
    before = path.read_bytes()

    with pytest.raises(ShardError, match="is not a valid qube name") as refusal:
        operations.rename_qube(scene.roots, old, new, core=str(scene.core))
    assert repr(old if old != "secret" else new) in str(refusal.value)
    assert path.read_bytes() == before
    assert (outside / "keep").read_text() == "data" and saved.is_dir()


def test_rename_moves_the_saved_directory_of_a_valid_name(tmp_path):
    scene = split_scene(tmp_path)
    saved = scene.shard_dir(SHARD) / "dom0" / "appvms" / "secret"
    saved.mkdir(parents=True, exist_ok=True)
    (saved / "firewall.xml").write_text("<firewall/>")
    operations.rename_qube(scene.roots, "secret", "hidden", core=str(scene.core))
    moved = scene.shard_dir(SHARD) / "dom0" / "appvms" / "hidden"
    assert (moved / "firewall.xml").read_text() == "<firewall/>" and not saved.exists()
    assert "hidden" in domains_by_name(load(scene.shard_dir(SHARD) / "domains.xml"))
