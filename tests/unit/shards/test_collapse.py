"""No qube collapses: shard qubes without a uuid, or sharing one, are left out of the
merge and stay verbatim in their shard file through suture and dissect (issue 12 part 3)."""

from __future__ import annotations

import copy

import pytest
from lxml import etree
from reliant import store
from reliant.shards.records import qube_name
from shards_helpers import domains_by_name, load, set_prop, split_scene

SHARD = "sflc_0_2"


def without_uuid(domain: etree._Element) -> etree._Element:
    for prop in domain.iterfind("properties/property[@name='uuid']"):
        prop.getparent().remove(prop)
    return domain


def twins(template: etree._Element, names: tuple[str, str], uuid: str | None,
          qids: tuple[int, int]) -> list[etree._Element]:
    """Two copies of `template` named `names`, both with `uuid` (None: without one)."""
    made = []
    for name, qid in zip(names, qids):
        domain = copy.deepcopy(template)
        set_prop(domain, "name", name)
        set_prop(domain, "qid", str(qid))
        domain.set("id", f"domain-{qid}")
        for volume in domain.iterfind("volume-config/volume"):
            if volume.get("pool") == SHARD:
                volume.set("vid", f"appvms/{name}/{volume.get('name')}")
        made.append(without_uuid(domain) if uuid is None else domain)
        if uuid is not None:
            set_prop(domain, "uuid", uuid)
    return made


@pytest.mark.parametrize("uuid", [None, "0c1d2e3f-0000-4000-8000-00000000abcd"],
                         ids=["without uuid", "same uuid"])
def test_qubes_without_or_sharing_a_uuid_are_left_out_and_kept_verbatim(tmp_path, uuid):
    scene = split_scene(tmp_path, ranges=((1000, 1499), (1500, 1999)))
    path = scene.shard_dir(SHARD) / "domains.xml"
    root = load(path)
    notes = domains_by_name(root)["deep-notes"]
    root.find("domains").extend(twins(notes, ("twin-a", "twin-b"), uuid, (1600, 1601)))
    path.write_bytes(store.serialize(root))
    before = {qube_name(d): etree.tostring(d) for d in load(path).iterfind(".//domain")}

    result = scene.suture()
    left_out = {p.qube: p.message for p in result.problems if p.kind == "invalid"}
    assert sorted(left_out) == ["twin-a", "twin-b"], result.problems
    assert all(("no uuid" if uuid is None else "appears more than once") in message
               for message in left_out.values()), left_out
    assert not {"twin-a", "twin-b"} & domains_by_name(load(scene.merged)).keys()
    assert {"deep-mail", "deep-notes"} <= domains_by_name(load(scene.merged)).keys()

    for final in (False, True):
        scene.dissect(final=final)
        after = {qube_name(d): etree.tostring(d) for d in load(path).iterfind(".//domain")}
        assert after == before
