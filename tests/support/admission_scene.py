"""A dom0 with two shards for the admission tests, and the damage of the qubesd-load
corpus (tests/fixtures/qubesd-load) as edits that apply to any qube.

The scene is the real merged fixture split into core and two shards (sflc_0_1, sflc_0_2,
the second depending on the first), with two qubes added to sflc_0_1 so that a shard
holds every class: ``secret-disp`` (a DispVM of ``secret-dvm``) and ``secret-tmpl`` (a
TemplateVM in the shard's pool), both made from qubes of the corpus's base store, which
qubes-core-admin wrote.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from lxml import etree
from reliant import store
from repo_paths import FIXTURES
from shards_helpers import Scene, set_prop, split_scene
from shards_helpers import domains_by_name as domains

CORPUS = FIXTURES / "qubesd-load"
VERDICTS = json.loads((CORPUS / "verdicts.json").read_text())
SHARD_QUBES = {"sflc_0_1": {"secret", "secret-dvm", "secret-vpn", "secret-disp", "secret-tmpl"},
               "sflc_0_2": {"deep-mail", "deep-notes"}}


def drop_prop(domain: etree._Element, name: str) -> None:
    for prop in domain.findall(f"properties/property[@name='{name}']"):
        prop.getparent().remove(prop)


def _extra_qubes(scene_root: Path) -> list[etree._Element]:
    """secret-disp and secret-tmpl, made from the corpus's disp4040 and fedora-42-xfce."""
    base = domains(store.load(str(CORPUS / "base_store.xml")))
    disp = copy.deepcopy(base["disp4040"])
    for name, value in (("name", "secret-disp"), ("qid", "1003"), ("dispid", "4041"),
                        ("uuid", "0b1d63a5-7d4c-4a5e-9a55-5e3c2d9c1a01"),
                        ("template", "secret-dvm"), ("label", "purple")):
        set_prop(disp, name, value)
    disp.set("id", "domain-1003")
    volumes = {v.get("name"): v for v in disp.iterfind("volume-config/volume")}
    volumes["root"].set("vid", "qubes_dom0/vm-secret-disp-root")
    volumes["root"].set("source", "qubes_dom0/vm-debian-13-xfce-root")
    for name in ("private", "volatile"):
        volumes[name].attrib.update(dict(pool="sflc_0_1", vid=f"appvms/secret-disp/{name}",
                                    revisions_to_keep="1"))
    volumes["private"].set("source", "appvms/secret-dvm/private")
    template = copy.deepcopy(base["fedora-42-xfce"])
    for name, value in (("name", "secret-tmpl"), ("qid", "1004"),
                        ("uuid", "0b1d63a5-7d4c-4a5e-9a55-5e3c2d9c1a02"), ("label", "purple")):
        set_prop(template, name, value)
    template.set("id", "domain-1004")
    for volume in template.iterfind("volume-config/volume"):
        if volume.get("pool") == "vm-pool":
            volume.attrib.update(dict(pool="sflc_0_1", revisions_to_keep="1",
                                      vid=f"vm-templates/secret-tmpl/{volume.get('name')}"))
    return [disp, template]


def shard_scene(tmp_path: Path) -> Scene:
    """Core and two shards on disk (split from the merged fixture), qubesd stopped."""
    scene = split_scene(tmp_path, ranges=((1000, 1499), (1500, 1999)))
    scene.edit_shard("sflc_0_1", lambda root: root.find("domains").extend(
        _extra_qubes(scene.root)))
    for step in (scene.suture, lambda: scene.dissect(final=True)):  # files as dissect writes
        result = step()
        assert not [p for p in result.problems if p.severity != "info"], result.problems
    return scene


# --- the corpus's damage ------------------------------------------------------------------
# Each kind of damage that stops the real loader, as an edit of one qube. `names` says
# which qubes the damage names: "appvm" an AppVM that neither provides network nor is a
# disposable template, "taken" a qube name and "taken_qid" its qid.
Damage = Callable[[etree._Element, dict[str, str]], None]


def _add(tag: str, **attrib: str) -> Damage:
    def damage(domain: etree._Element, names: dict[str, str]) -> None:
        section = domain.find(tag + "s")
        etree.SubElement(section, tag, **attrib)
    return damage


def _second_adminvm(domain: etree._Element, names: dict[str, str]) -> None:
    added = etree.SubElement(domain.getparent(), "domain", id="domain-41", **{"class": "AdminVM"})
    props = etree.SubElement(added, "properties")
    for name, value in (("label", "black"), ("name", "fake-dom0"), ("qid", "41"),
                        ("uuid", "00000000-0000-4000-8000-000000000041")):
        etree.SubElement(props, "property", name=name).text = value
    etree.SubElement(added, "features")
    tags = etree.SubElement(added, "tags")
    for name in ("audiovm-dom0", "guivm-dom0"):
        etree.SubElement(tags, "tag", name=name)


def _qid(value: str) -> Damage:
    def damage(domain: etree._Element, names: dict[str, str]) -> None:
        set_prop(domain, "qid", value)
        domain.set("id", f"domain-{value}")
    return damage


def _private_pool(domain: etree._Element, names: dict[str, str]) -> None:
    domain.find("volume-config/volume[@name='private']").set("pool", "sflc_9_9")


#: corpus file -> (class of the qube it damages, the damage)
QUBE_DAMAGE: dict[str, tuple[str, Damage]] = {
    "appvm_template_is_appvm": ("AppVM", lambda d, n: set_prop(d, "template", n["appvm"])),
    "appvm_template_removed": ("AppVM", lambda d, n: drop_prop(d, "template")),
    "appvm_template_unknown_qube": ("AppVM", lambda d, n: set_prop(d, "template",
                                                                   "no-such-qube")),
    "class_unknown": ("AppVM", lambda d, n: d.set("class", "HiddenVM")),
    "default_dispvm_unknown_qube": ("AppVM", lambda d, n: set_prop(d, "default_dispvm",
                                                                   "no-such-qube")),
    "dispvm_template_not_dvm_template": ("DispVM", lambda d, n: set_prop(d, "template",
                                                                         n["plain"])),
    "dispvm_template_removed": ("DispVM", lambda d, n: drop_prop(d, "template")),
    "dispvm_template_unknown_qube": ("DispVM", lambda d, n: set_prop(d, "template",
                                                                     "no-such-qube")),
    "duplicate_name": ("AppVM", lambda d, n: set_prop(d, "name", n["taken"])),
    "duplicate_qid": ("AppVM", lambda d, n: set_prop(d, "qid", n["taken_qid"])),
    "label_undefined": ("AppVM", lambda d, n: set_prop(d, "label", "ultraviolet")),
    "netvm_not_provides_network": ("AppVM", lambda d, n: set_prop(d, "netvm", n["appvm"])),
    "netvm_unknown_qube": ("AppVM", lambda d, n: set_prop(d, "netvm", "no-such-qube")),
    "qid_above_max": ("AppVM", _qid("10001")),
    "qid_missing": ("AppVM", lambda d, n: drop_prop(d, "qid")),
    "second_adminvm": ("AppVM", _second_adminvm),
    "standalone_has_template": ("AppVM", lambda d, n: d.set("class", "StandaloneVM")),
    "tag_with_space": ("AppVM", _add("tag", name="bad tag")),
    "template_vm_has_template": ("TemplateVM", lambda d, n: set_prop(d, "template",
                                                                     n["template"])),
    "unknown_property": ("AppVM", lambda d, n: set_prop(d, "no_such_property", "1")),
    "volume_pool_undefined": ("AppVM", _private_pool),
}
#: Damage of the store as a whole: no shard qube can carry it (a shard file holds no
#: global properties: `Shard.use_root` refuses them); a shard's pool is tested apart.
STORE_DAMAGE = {"global_default_netvm_unknown", "global_default_template_unknown",
                "pool_dir_missing_attr"}
