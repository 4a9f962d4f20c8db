"""A template removed while its shard was hidden: the shard's qubes come back on the
global default template (or disposable template), with volumes that are its snapshots,
start prohibited and the old values recorded, until `review`."""

from __future__ import annotations

from admission_scene import domains, set_prop, shard_scene
from qubesd.qubesd_double import Store
from reliant import operations, store
from reliant.shards.records import feature_value, property_value

USERS = ("secret", "secret-dvm", "secret-vpn", "deep-mail")  # AppVMs of debian-13-xfce


def remove_from_core(scene, name, move_to="fedora-42-xfce"):
    """Remove core qube `name`, its core users moved to `move_to` first (as qubesd
    requires); the hidden shards still name it."""
    root = store.load(str(scene.core))
    for domain in domains(root).values():
        if property_value(domain, "template") == name:
            set_prop(domain, "template", move_to)
            for volume in domain.iterfind("volume-config/volume[@source]"):
                volume.set("source", volume.get("source").replace(name, move_to))
    root.find("domains").remove(domains(root)[name])
    scene.core.write_bytes(store.serialize(root))


def volume(domain, name):
    return domain.find(f"volume-config/volume[@name='{name}']")


def test_a_template_removed_while_hidden(tmp_path):
    scene = shard_scene(tmp_path)
    remove_from_core(scene, "debian-13-xfce")
    result = scene.suture()
    Store(str(scene.merged), str(tmp_path / "base")).load()
    assert sorted(p.qube for p in result.problems if p.kind == "recovered") == sorted(USERS)
    merged = domains(store.load(str(scene.merged)))
    fedora_root = volume(merged["fedora-42-xfce"], "root")
    for name in USERS:
        qube = merged[name]
        assert property_value(qube, "template") == "fedora-42-xfce"
        assert merged["fedora-42-xfce"].get("class") == "TemplateVM"
        root = volume(qube, "root")
        assert (root.get("pool"), root.get("source"), root.get("size"), root.get("vid")) == (
            fedora_root.get("pool"), fedora_root.get("vid"), fedora_root.get("size"),
            f"qubes_dom0/vm-{name}-root")
        assert feature_value(qube, "reliant-recovered-template") == "debian-13-xfce"
        assert feature_value(qube, "reliant-recovered-volume-root") == \
            "vm-pool:qubes_dom0/vm-debian-13-xfce-root"
        assert feature_value(qube, "prohibit-start").startswith(
            "reliant: template 'debian-13-xfce' was missing")
    # secret-dvm's disposable follows it, as qubesd makes it do
    assert volume(merged["secret-disp"], "root").get("source") == fedora_root.get("vid")
    scene.dissect(final=True)

    status = operations.status(str(scene.core), str(scene.merged), scene.roots)
    assert sorted(r["qube"] for r in status["recovered"]) == sorted(USERS)
    for name in USERS:
        operations.review_qube(scene.roots, name)
    result = scene.suture()
    assert not [p for p in result.problems if p.severity != "info"], result.problems
    merged = domains(store.load(str(scene.merged)))
    for name in USERS:
        assert property_value(merged[name], "template") == "fedora-42-xfce"
        assert feature_value(merged[name], "prohibit-start") is None
        assert feature_value(merged[name], "reliant-recovered-template") is None
    assert operations.status(str(scene.core), str(scene.merged), scene.roots)["recovered"] == []


def test_a_disposable_whose_template_is_gone_gets_the_default_disposable_template(tmp_path):
    scene = shard_scene(tmp_path)
    scene.edit_shard("sflc_0_1", lambda root: root.find("domains").remove(
        domains(root)["secret-dvm"]))
    result = scene.suture()
    Store(str(scene.merged), str(tmp_path / "base")).load()
    merged = domains(store.load(str(scene.merged)))
    disp = merged["secret-disp"]
    assert property_value(disp, "template") == "default-dvm"
    assert volume(disp, "private").get("source") == "qubes_dom0/vm-default-dvm-private"
    assert volume(disp, "root").get("source") == "qubes_dom0/vm-fedora-42-xfce-root"
    assert feature_value(disp, "reliant-recovered-template") == "secret-dvm"
    assert ("secret", "recovered") in {(p.qube, p.kind) for p in result.problems}


def test_without_a_valid_default_the_qube_is_left_out_and_reported(tmp_path):
    scene = shard_scene(tmp_path)
    remove_from_core(scene, "debian-13-xfce")
    root = store.load(str(scene.core))
    root.find("properties").remove(root.find("properties/property[@name='default_template']"))
    scene.core.write_bytes(store.serialize(root))
    before = scene.shard_file("sflc_0_2").read_bytes()
    result = scene.suture()
    Store(str(scene.merged), str(tmp_path / "base")).load()
    skipped = {p.qube: p.message for p in result.problems if p.kind == "skipped"}
    assert "deep-mail" in skipped and "default_template is not set" in skipped["deep-mail"]
    assert "deep-mail" not in domains(store.load(str(scene.merged)))
    scene.dissect(final=True)
    assert scene.shard_file("sflc_0_2").read_bytes() == before
