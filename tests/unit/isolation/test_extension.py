"""The qubesd extension, loaded through its entry point into the qubes.ext double and
driven by the events qubesd fires (tests/doubles/qubes_ext/README.md)."""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
from pathlib import Path

import isolation_helpers as helpers
import pytest
from reliant import store
from reliant.isolation import policy
from repo_paths import ROOT
from shards_helpers import split_scene

PACKAGE = ROOT / "salt" / "reliant" / "files" / "isolation" / "extension"
S1, S2, CORE = "reliant-shard-sflc_0_1", "reliant-shard-sflc_0_2", "reliant-core"
REFERENCES = ("template", "netvm", "default_dispvm", "management_dispvm", "guivm", "audiovm")


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("etc") / "isolation.json"


@pytest.fixture(scope="module")
def qubes(tmp_path_factory, settings_file):
    """The qubes double with the extension installed as the sls installs it."""
    site = tmp_path_factory.mktemp("site-packages")
    for item in PACKAGE.iterdir():
        shutil.copytree(item, site / item.name)
    settings_file.write_bytes(policy.render_settings(policy.PolicySettings()))
    (site / "reliant_isolation" / "_paths.py").write_text(
        policy.render_extension_paths(str(ROOT / "_utils" / "reliant_lib"), str(settings_file)))
    sys.path[:0] = [str(ROOT / "tests" / "doubles" / "qubes_ext"), str(site)]
    importlib.invalidate_caches()
    qubes = importlib.import_module("qubes")
    extensions = qubes.ext.get_extensions()
    assert [type(ext).__name__ for ext in extensions] == ["ReliantIsolation"]
    yield qubes
    sys.path[:] = [p for p in sys.path if p not in (str(site), str(ROOT / "tests/doubles/qubes_ext"))]


def build_app(qubes, root):
    """A double app holding the store's pools and qubes, as qubesd loads them (no events)."""
    import qubes.vm as vm_module

    app = qubes.Qubes()
    for pool in root.iterfind("pools/pool"):
        app.pools[pool.get("name")] = vm_module.Pool(pool.get("name"), pool.get("dir_path"),
                                                     pool.get("driver"), pool.get("volume_group"))
    refs = {}
    for domain in root.iterfind("domains/domain"):
        props = {p.get("name"): p.text or "" for p in domain.iterfind("properties/property")}
        name = props.get("name", "dom0")
        cls = getattr(vm_module, domain.get("class"))
        kwargs = {"name": name} if cls is not vm_module.AdminVM else {}
        if cls is vm_module.DispVM:
            continue
        if cls is not vm_module.AdminVM:
            # QubesVM.__init__ (qubes/vm/qubesvm.py): <volume-config> as read, "True" and
            # "False" turned into bools; the volumes themselves come at domain-load
            kwargs["loading"] = True
            kwargs["volume_config"] = {
                volume.get("name"): {key: {"True": True, "False": False}.get(value, value)
                                     for key, value in volume.items()}
                for volume in domain.iterfind("volume-config/volume")}
        vm = cls(app, tags={t.get("name") for t in domain.iterfind("tags/tag")}, **kwargs)
        if props.get("template_for_dispvms") == "True":
            vm.template_for_dispvms = True
        refs[name] = {p: props[p] for p in REFERENCES if p in props}
        app.domains.add(vm, _enable_events=False)
    for name, props in refs.items():
        for prop, value in props.items():
            setattr(app.domains[name], prop, value)
    for prop in root.iterfind("properties/property"):
        if prop.get("name") in ("default_dispvm", "default_netvm", "default_template",
                                "updatevm", "clockvm", "management_dispvm"):
            setattr(app, prop.get("name"), prop.text or "")
    app.load()
    return app


def group(vm):
    tags = sorted(t for t in vm.tags if t == CORE or t.startswith("reliant-shard-"))
    assert len(tags) == 1, (vm.name, tags)
    return tags[0]


@pytest.fixture
def app(qubes):
    return build_app(qubes, helpers.merged_tagged())


def new_appvm(qubes, app, name, template="debian-13-xfce", pool="vm-pool"):
    """A new AppVM as qubesd creates it: its volumes are built at domain-init."""
    import qubes.vm as vm_module

    vm = vm_module.AppVM(app, name, template=template, volume_config={
        "root": {"name": "root", "pool": "vm-pool", "snap_on_start": True, "rw": True,
                 "source": app.domains[template].volumes["root"].vid},
        "private": {"name": "private", "pool": pool, "snap_on_start": False, "rw": True},
        "volatile": {"name": "volatile", "pool": pool, "snap_on_start": False, "rw": True},
    })
    assert set(vm.volumes) == {"root", "private", "volatile"}
    return app.domains.add(vm)


def test_load_gives_a_qube_suture_left_untagged_the_group_of_its_pools(qubes):
    root = helpers.merged_tagged()
    wanted = helpers.expected_groups(root)
    for domain in root.iterfind("domains/domain"):
        if domain.findtext("properties/property[@name='name']") in ("secret", "deep-mail", "work"):
            domain.find("tags").clear()
    app = build_app(qubes, root)
    assert {vm.name: group(vm) for vm in app.domains} == wanted


def test_load_cannot_invent_a_shard_for_pools_no_tagged_qube_uses(qubes, caplog):
    root = helpers.load(helpers.MERGED)
    with caplog.at_level(logging.ERROR):
        app = build_app(qubes, root)
    wanted = helpers.expected_groups(root)
    for vm in app.domains:
        if wanted[vm.name] == CORE:
            assert group(vm) == CORE
        else:
            assert not any(t.startswith("reliant-") for t in vm.tags), vm.name
    assert "group cannot be decided" in caplog.text


def test_load_keeps_the_tags_suture_wrote(app):
    assert group(app.domains["secret"]) == S1 and group(app.domains["deep-notes"]) == S2
    assert group(app.domains["work"]) == CORE


def test_new_qube_follows_its_pools_after_create_on_disk(qubes, app):
    vm = new_appvm(qubes, app, "fresh")
    assert group(vm) == CORE  # domain-add: volumes still in the default pool
    vm.create_on_disk(pool=app.pools["sflc_0_1"])
    assert group(vm) == S1


def test_disposables_take_their_templates_group(qubes, app):
    import qubes.vm as vm_module

    dispvm = app.add_new_vm(vm_module.DispVM, name="disp42", template="secret-dvm")
    assert group(dispvm) == S1
    core_dispvm = app.add_new_vm(vm_module.DispVM, name="disp43", template="default-dvm")
    assert group(core_dispvm) == CORE


def test_a_qube_in_an_unknown_shard_pool_is_refused(qubes, app):
    import qubes.vm as vm_module

    app.pools["sflc_0_3"] = vm_module.Pool("sflc_0_3", "/run/shufflecake/sflc_0_3/pool", "file")
    vm = new_appvm(qubes, app, "orphan")
    with pytest.raises(qubes.exc.QubesException, match="shard cannot be decided"):
        vm.create_on_disk(pool=app.pools["sflc_0_3"])


def test_a_core_qube_created_on_a_shard_template_is_refused(qubes, app):
    vm = new_appvm(qubes, app, "leaky", template="secret-dvm")
    with pytest.raises(qubes.exc.QubesException, match="'template' of 'leaky' would name"):
        vm.create_on_disk()


def test_core_may_not_reference_a_shard_qube(qubes, app):
    work = app.domains["work"]
    with pytest.raises(qubes.exc.QubesPropertyValueError,
                       match="'netvm' of 'work' would name 'secret-vpn'"):
        work.netvm = "secret-vpn"
    assert work.netvm is None
    with pytest.raises(qubes.exc.QubesPropertyValueError,
                       match="global property 'default_dispvm' would name 'secret-dvm'"):
        app.default_dispvm = "secret-dvm"
    assert app.default_dispvm.name == "default-dvm"
    app.default_dispvm = "vault"  # core to core is fine
    assert app.default_dispvm.name == "vault"


def test_shard_qubes_reference_core_their_shard_and_dependencies_only(qubes, app):
    secret, notes = app.domains["secret"], app.domains["deep-notes"]
    secret.netvm = "sys-firewall"
    secret.default_dispvm = "secret-dvm"
    with pytest.raises(qubes.exc.QubesPropertyValueError, match="does not depend on"):
        secret.netvm = "deep-notes"
    notes.netvm = "secret-vpn"  # shard 2 already depends on shard 1 (deep-mail uses it)
    assert notes.netvm.name == "secret-vpn"


def test_group_tags_changed_by_hand_are_put_back(app):
    work = app.domains["work"]
    work.tags.discard(CORE)
    assert group(work) == CORE
    work.tags.add(S1)
    assert group(work) == CORE
    work.tags.add("my-own-tag")
    assert "my-own-tag" in work.tags


def test_undecidable_qube_at_load_is_logged_without_its_name(qubes, caplog):
    root = helpers.merged_tagged()
    for domain in root.iterfind("domains/domain"):
        if domain.findtext("properties/property[@name='name']") == "secret":
            domain.find("tags").clear()
            for volume in domain.iterfind("volume-config/volume[@name='volatile']"):
                volume.set("pool", "sflc_0_2")
    with caplog.at_level(logging.ERROR):
        app = build_app(qubes, root)
    assert "group cannot be decided" in caplog.text
    assert "secret" not in caplog.text and "sflc" not in caplog.text
    assert not any(t.startswith("reliant-") for t in app.domains["secret"].tags)


FOREIGN = "reliant-foreign-dispvm"
#: Shard qubes of the fixture whose @dispvm is the global default-dvm (core).
CORE_DISPVM_CALLERS = {"deep-mail", "deep-notes", "secret-dvm", "secret-vpn"}


def foreign(app) -> set[str]:
    return {vm.name for vm in app.domains if FOREIGN in vm.tags}


def test_qubes_whose_dispvm_is_of_another_group_are_marked(qubes, app):
    assert foreign(app) == CORE_DISPVM_CALLERS
    app.domains["secret"].default_dispvm = "default-dvm"
    app.domains["deep-notes"].default_dispvm = ""
    app.domains["secret-vpn"].default_dispvm = "secret-dvm"
    assert foreign(app) == {"secret", "deep-mail", "secret-dvm"}
    app.domains["work"].default_dispvm = "default-dvm"
    assert "work" not in foreign(app)


def test_the_mark_follows_the_directions_in_the_settings(qubes, app, settings_file):
    original = settings_file.read_bytes()
    settings_file.write_bytes(policy.render_settings(
        policy.PolicySettings(directions=("core-to-shard",))))
    try:
        app.default_dispvm = "default-dvm"  # any global change re-decides every qube
        assert foreign(app) == set()
    finally:
        settings_file.write_bytes(original)
    app.default_dispvm = "default-dvm"
    assert foreign(app) == CORE_DISPVM_CALLERS


def test_a_new_shard_qube_inheriting_a_core_dispvm_is_marked(qubes, app):
    vm = new_appvm(qubes, app, "fresh2")
    assert FOREIGN not in vm.tags  # core qube, core disposable
    vm.create_on_disk(pool=app.pools["sflc_0_2"])
    assert group(vm) == S2 and FOREIGN in vm.tags


def test_a_damaged_settings_file_falls_back_to_denying_every_direction(qubes, app, settings_file,
                                                                       caplog):
    original = settings_file.read_bytes()
    settings_file.write_text("{damaged")
    try:
        with caplog.at_level(logging.ERROR):
            app.default_dispvm = "default-dvm"
        assert foreign(app) == CORE_DISPVM_CALLERS
        assert "settings file is unreadable" in caplog.text
    finally:
        settings_file.write_bytes(original)


# --- backups (admin.backup.Execute / Info) while shards are merged ----------------------

BACKUP_CALLS = ("admin.backup.Execute", "admin.backup.Info")


@pytest.mark.parametrize("method", BACKUP_CALLS)
@pytest.mark.parametrize("caller", ["dom0", "work"])
def test_a_backup_is_refused_while_a_shard_is_merged(qubes, tmp_path, method, caller):
    import qubes.api.admin

    scene = split_scene(tmp_path)
    assert not scene.suture(detached=["sflc_0_2"]).errors  # one shard merged is enough
    app = build_app(qubes, store.load(str(scene.merged)))
    with pytest.raises(qubes.exc.QubesException) as refused:
        qubes.api.admin.call(app, method, arg="daily", src=caller)
    message = str(refused.value)
    assert message.startswith("reliant: backups are refused while shards are merged")
    assert "reliant-shard detach" in message and "docs/shards.md" in message
    assert not any(name in message for name in ("secret", "deep-", "sflc"))
    assert getattr(app, "backups", []) == []


@pytest.mark.parametrize("method", BACKUP_CALLS)
def test_after_detach_backups_work_as_before(qubes, tmp_path, method):
    import qubes.api.admin

    scene = split_scene(tmp_path)
    assert not scene.suture(detached=["sflc_0_1", "sflc_0_2"]).errors  # as after detach
    app = build_app(qubes, store.load(str(scene.merged)))
    assert qubes.api.admin.call(app, method, arg="daily") in ("execute", "info")
    assert app.backups == [(method.rsplit(".", 1)[1].lower(), "daily")]
    with pytest.raises(qubes.api.PermissionDenied):  # the API's own checks still apply
        qubes.api.admin.call(app, method, arg="a/b")


def test_other_admin_calls_are_not_refused_while_shards_are_merged(app):
    dom0 = app.domains["dom0"]
    assert dom0.fire_event("admin-permission:admin.vm.List", pre_event=True,
                           dest=dom0, arg="") == []
