"""The qubesd extension keeps shard qubes' volumes confined at runtime, through the Admin
API calls that place, fill or add storage (tests/doubles/qubes_ext/qubes/api/admin.py):
the hostile forms suture refuses in shard files (tests/unit/shards/test_confine.py), as
the Admin API can express them."""
# ruff: noqa: F811 - the fixtures of test_extension are imported, then requested by name

from __future__ import annotations

import os
import re
from pathlib import Path

import isolation_helpers as helpers
import pytest
from reliant.isolation import policy

# the extension loaded into the qubes.ext double, and a double app of the merged fixture
from test_extension import build_app, qubes, settings_file  # noqa: F401 - fixtures

S1, S2, CORE = "reliant-shard-sflc_0_1", "reliant-shard-sflc_0_2", "reliant-core"


@pytest.fixture
def app(qubes):
    app = build_app(qubes, helpers.merged_tagged())
    app.default_pool = app.pools["vm-pool"]  # global default_pool of the fixture
    return app


def call(app, method, **params):
    from qubes.api import admin

    return admin.call(app, method, **params)


def create(app, name, template="debian-13-xfce", cls="AppVM", **placement):
    return call(app, f"admin.vm.CreateInPool.{cls}", arg=template, name=name, label="red",
                **placement)


def group(vm):
    (tag,) = [t for t in vm.tags if t == CORE or t.startswith("reliant-shard-")]
    return tag


def test_a_shard_qube_created_in_its_pool_is_confined_there(qubes, app):
    vm = create(app, "fresh", pool=app.pools["sflc_0_1"])
    assert group(vm) == S1
    assert {n: (str(v.pool), v.vid) for n, v in vm.volumes.items() if n != "kernel"} == {
        "root": ("vm-pool", "qubes_dom0/vm-fresh-root"),
        "private": ("sflc_0_1", "appvms/fresh/private"),
        "volatile": ("sflc_0_1", "appvms/fresh/volatile")}
    disposable = create(app, "disp7", template="secret-dvm", cls="DispVM")
    assert group(disposable) == S1  # its private: a snapshot of its template's
    assert str(disposable.volumes["volatile"].pool) == "sflc_0_1"  # its template's pool


@pytest.mark.parametrize("placement, words", [
    ({"private": "sflc_0_1"}, "would keep volume volatile in a default pool of core"),
    ({"private": "sflc_0_1", "volatile": "vm-pool"},  # dom0's logical volume group
     "would keep volume volatile in pool vm-pool, not a pool of its shard"),
    ({"private": "varlibqubes", "volatile": "sflc_0_1"},  # core's varlibqubes pool
     "would keep volume private in pool varlibqubes, not a pool of its shard"),
    ({"private": "sflc_0_1", "volatile": "sflc_0_2"}, "pools of several shards"),
], ids=["default pool", "core lvm pool", "varlibqubes", "two shards"])
def test_a_shard_qube_with_data_outside_its_shard_is_refused_before_any_volume(
        qubes, app, placement, words):
    pools = {volume: app.pools[name] for volume, name in placement.items()}
    with pytest.raises(qubes.exc.PermissionDenied, match=words):
        create(app, "leaky", pools=pools)
    assert "leaky" not in app.domains


def test_a_second_lvm_pool_on_dom0s_thin_pool_holds_no_shard_data(qubes, app):
    call(app, "admin.pool.Add", arg="lvm_thin", name="sneaky", volume_group="qubes_dom0",
         thin_pool="vm-pool")  # a pool of core: allowed
    with pytest.raises(qubes.exc.PermissionDenied, match="volume volatile in pool sneaky"):
        create(app, "leaky", pools={"private": app.pools["sflc_0_1"],
                                    "volatile": app.pools["sneaky"]})
    assert "leaky" not in app.domains


def test_a_pool_climbing_out_of_a_shard_is_a_core_pool_and_holds_no_shard_data(qubes, app):
    call(app, "admin.pool.Add", arg="file", name="climber",
         dir_path="/run/shufflecake/sflc_0_1/../../../var/lib/qubes")
    with pytest.raises(qubes.exc.PermissionDenied, match="volume private in pool climber"):
        create(app, "leaky", pools={"private": app.pools["climber"],
                                    "volatile": app.pools["sflc_0_1"]})


@pytest.fixture
def roots_in(qubes, tmp_path):
    """The settings name `tmp_path/roots` as the only shard root, for one test (in the
    settings file of the extension as loaded: once per test session)."""
    from reliant_isolation import _paths

    settings = Path(_paths.SETTINGS)
    original = settings.read_bytes()
    root = tmp_path / "roots"
    (root / "s1").mkdir(parents=True)
    settings.write_bytes(policy.render_settings(policy.PolicySettings(shard_roots=(str(root),))))
    yield root
    settings.write_bytes(original)


def test_a_pool_below_a_shard_root_must_hold_files_inside_it(qubes, app, roots_in, tmp_path):
    outside = tmp_path / "varlibqubes"
    outside.mkdir()
    os.symlink(outside, roots_in / "s1" / "link")
    for driver, dir_path, words in [
        ("file", roots_in / "s1" / "link" / "pool", "not inside the shard directory"),
        ("linux-kernel", roots_in / "s1" / "kernels", "driver 'linux-kernel'"),
    ]:
        with pytest.raises(qubes.exc.PermissionDenied, match=words):
            call(app, "admin.pool.Add", arg=driver, name="bad", dir_path=str(dir_path))
        assert "bad" not in app.pools
    call(app, "admin.pool.Add", arg="file-reflink", name="good",
         dir_path=str(roots_in / "s1" / "pool"))
    assert "good" in app.pools


@pytest.mark.parametrize("volume, attrs, words", [
    ("root", {"source": "qubes_dom0/vm-vault-private"},  # a snapshot of a core qube's private
     "volume root is a snapshot of vm-pool:qubes_dom0/vm-vault-private, which is not a "
     "volume of its template debian-13-xfce"),
    ("root", {"vid": "qubes_dom0/root"},  # dom0's root logical volume
     "must be named as qubesd names it: qubes_dom0/vm-hand-root"),
    ("volatile", {"pool": "vm-pool", "vid": "qubes_dom0/vm-vault-private"},
     "volume volatile is in pool vm-pool (driver 'lvm_thin'), not a file pool of its shard"),
    ("private", {"vid": "appvms/../../../../var/lib/qubes/appvms/vault/private"},
     "is not a plain relative name"),
])
def test_volumes_the_admin_api_cannot_express_are_refused_once_on_disk(qubes, app, volume,
                                                                       attrs, words):
    """What qubesd would only get from a store: the same rules at domain-create-on-disk."""
    from test_extension import new_appvm

    vm = new_appvm(qubes, app, "hand", pool="sflc_0_1")
    target = vm.volumes[volume]
    for key, value in attrs.items():
        setattr(target, key, app.pools[value] if key == "pool" else value)
    with pytest.raises(qubes.exc.QubesException, match=re.escape(words)):
        vm.create_on_disk()


@pytest.mark.parametrize("source, dest, volume, refused", [
    ("secret", "work", "private", True),        # shard data into core
    ("deep-notes", "secret", "private", True),  # into a shard it does not depend on
    ("secret", "deep-notes", "private", False),  # sflc_0_2 depends on sflc_0_1
    ("vault", "deep-notes", "private", False),   # core data into a shard
    ("debian-13-xfce", "deep-notes", "root", False),  # a core template cloned into a shard
])
def test_clone_to_takes_data_only_from_groups_the_qube_may_reference(qubes, app, source, dest,
                                                                     volume, refused):
    src_volume = app.domains[source].volumes[volume]
    if refused:
        with pytest.raises(qubes.exc.PermissionDenied, match="may not reference"):
            call(app, "admin.vm.volume.CloneTo", dest=dest, arg=volume, src_volume=src_volume)
        assert not hasattr(app.domains[dest].volumes[volume], "cloned_from")
    else:
        call(app, "admin.vm.volume.CloneTo", dest=dest, arg=volume, src_volume=src_volume)
        assert app.domains[dest].volumes[volume].cloned_from is src_volume
