"""Dissect never writes a core or shard file that the model of qubesd's loader says
would not load: the write is refused with a message and the previous file stays."""

from __future__ import annotations

import copy

from admission_scene import domains, set_prop, shard_scene
from qubesd.qubesd_double import Store
from reliant import store


def add_core_template(scene, name, qid):
    """A spare TemplateVM in core (a copy of fedora-42-xfce), the global default one."""
    root = store.load(str(scene.core))
    spare = copy.deepcopy(domains(root)["fedora-42-xfce"])
    for prop, value in (("name", name), ("qid", str(qid)),
                        ("uuid", f"00000000-0000-4000-8000-{qid:012d}")):
        set_prop(spare, prop, value)
    spare.set("id", f"domain-{qid}")
    for volume in spare.iterfind("volume-config/volume[@vid]"):
        volume.set("vid", volume.get("vid").replace("fedora-42-xfce", name))
    root.find("domains").append(spare)
    set_prop(root, "default_template", name)
    scene.core.write_bytes(store.serialize(root))


def test_a_core_that_would_not_load_is_not_written(tmp_path):
    scene = shard_scene(tmp_path)
    add_core_template(scene, "old-tmpl", 30)
    assert not [p for p in scene.suture().problems if p.severity != "info"]
    core_before = scene.core.read_bytes()
    # qubesd's session: the default template becomes a shard's, the old one is removed
    merged = store.load(str(scene.merged))
    set_prop(merged, "default_template", "secret-tmpl")
    merged.find("domains").remove(domains(merged)["old-tmpl"])
    scene.merged.write_bytes(store.serialize(merged))
    Store(str(scene.merged), str(tmp_path / "base")).load()  # qubesd loads that

    result = scene.dissect(final=True)
    # on disk core keeps its own default_template, 'old-tmpl', which is gone from it now
    refused = [p for p in result.problems if "not written: qubesd would not load core" in
               p.message]
    assert refused and "old-tmpl" in refused[0].message, result.problems
    assert scene.core.read_bytes() == core_before
    Store(str(scene.core), str(tmp_path / "base2")).load()
