"""reliant.isolation.guard: group of a qube, references that cross groups, disposables of another group."""

from __future__ import annotations

import isolation_helpers as helpers
import pytest
from lxml import etree
from reliant import vocab
from reliant.isolation import guard

S1, S2, CORE = "reliant-shard-sflc_0_1", "reliant-shard-sflc_0_2", "reliant-core"


def facts():
    qubes, global_refs = guard.facts_from_store(helpers.merged_tagged())
    return qubes, global_refs


def set_prop(root: etree._Element, qube: str, prop: str, value: str) -> None:
    if qube == "":
        props = root.find("properties")
    else:
        props = next(d for d in root.iterfind("domains/domain")
                     if d.findtext("properties/property[@name='name']") == qube).find("properties")
    node = props.find(f"property[@name='{prop}']")
    if node is None:
        node = etree.SubElement(props, "property", name=prop)
    node.text = value


def test_group_tags():
    assert guard.is_group_tag(CORE) and guard.is_group_tag(S1)
    assert not guard.is_group_tag("reliant-shard-") and not guard.is_group_tag("guivm-dom0")
    assert guard.group_of(guard.QubeFacts("a", "AppVM", frozenset({"x", S1}))) == S1
    assert guard.group_of(guard.QubeFacts("a", "AppVM", frozenset({"x"}))) is None
    assert guard.group_of(guard.QubeFacts("dom0", "AdminVM")) == CORE
    with pytest.raises(guard.GuardError, match="'a' carries more than one group tag"):
        guard.group_of(guard.QubeFacts("a", "AppVM", frozenset({CORE, S1})))
    with pytest.raises(guard.GuardError, match="dom0 carries the shard tag"):
        guard.group_of(guard.QubeFacts("dom0", "AdminVM", frozenset({S1})))


def test_expected_group_of_every_fixture_qube_follows_its_data_pools():
    qubes, _ = facts()
    pools = guard.pool_groups(qubes.values())
    assert pools == {"vm-pool": CORE, "sflc_0_1": S1, "sflc_0_2": S2}
    wanted = helpers.expected_groups(helpers.load(helpers.MERGED))
    for name, qube in qubes.items():
        assert guard.expected_group(qube, pools) == wanted[name], name
    # untagged facts give the same answer: the decision does not read the tag
    bare = guard.QubeFacts("secret", "AppVM", data_pools=qubes["secret"].data_pools)
    assert guard.expected_group(bare, pools) == S1


def test_disposables_take_their_templates_group():
    dispvm = guard.QubeFacts("disp1", "DispVM", references={"template": "secret-dvm"})
    assert guard.expected_group(dispvm, {}, template_group=S1) == S1
    with pytest.raises(guard.GuardError, match="disposable 'disp1'"):
        guard.expected_group(dispvm, {})


def test_data_in_two_shards_and_shared_pools_are_refused():
    split = guard.QubeFacts("x", "AppVM", data_pools=frozenset({"p1", "p2"}))
    with pytest.raises(guard.GuardError, match="'x' keeps data in pools of several shards"):
        guard.expected_group(split, {"p1": S1, "p2": S2})
    assert guard.expected_group(split, {"p1": S1, "p2": CORE}) == S1
    owners = [guard.QubeFacts("a", "AppVM", frozenset({S1}), data_pools=frozenset({"p"})),
              guard.QubeFacts("b", "AppVM", frozenset({CORE}), data_pools=frozenset({"p"}))]
    with pytest.raises(guard.GuardError, match="pool 'p' holds data of 'a'"):
        guard.pool_groups(owners)


def test_data_volumes():
    assert vocab.is_data_volume("private", False, None)
    assert vocab.is_data_volume("root", True, None)  # a template's own root
    assert not vocab.is_data_volume("root", True, "qubes_dom0/vm-fedora-root")
    assert not vocab.is_data_volume("kernel", False, None)


def test_unowned_pools_under_a_shard_root_are_unknown():
    paths = {"new": "/run/shufflecake/sflc_0_3/pool", "lvm": "", "disk": "/var/lib/qubes",
             "sneaky": "/run/shufflecake-not/pool"}
    unknown = guard.unknown_shard_pools(paths, {"vm-pool": CORE}, paths, ["/run/shufflecake/"])
    assert unknown == ["new"]


@pytest.mark.parametrize(("holder", "holder_group", "target_group", "deps", "problem"), [
    (None, CORE, CORE, {}, None),
    (None, CORE, S1, {}, "global property 'p' would name 't', a qube of a shard"),
    ("c", CORE, S1, {}, "property 'p' of 'c' would name 't', a qube of a shard"),
    ("s", S1, CORE, {}, None),
    ("s", S1, S1, {}, None),
    ("s", S2, S1, {}, "of another shard, which the shard of 's' does not depend on"),
    ("s", S2, S1, {S2: {S1}}, None),
    ("s", S1, S2, {S2: {S1}}, "does not depend on"),
    ("s", S1, None, {}, "'t' carries no group tag"),
    ("s", None, S1, {}, "'s' carries no group tag"),
])
def test_reference_problem(holder, holder_group, target_group, deps, problem):
    found = guard.reference_problem(holder, holder_group, "p", "t", target_group, deps)
    assert found == problem if problem is None else problem in found


#: The fixture's second shard uses a qube of the first (deep-mail's netvm is secret-vpn).
DEPS = {S2: [S1]}


def test_reference_problems_of_a_merged_store():
    root = helpers.merged_tagged()
    assert helpers.reference_problems(root, DEPS) == []
    assert helpers.reference_problems(root, {}) == [
        "property 'netvm' of 'deep-mail' would name 'secret-vpn' of another shard, which "
        "the shard of 'deep-mail' does not depend on"]
    set_prop(root, "", "default_dispvm", "secret-dvm")
    set_prop(root, "work", "netvm", "secret-vpn")
    set_prop(root, "secret", "netvm", "deep-notes")
    problems = helpers.reference_problems(root, DEPS)
    assert len(problems) == 3
    assert "global property 'default_dispvm' would name 'secret-dvm'" in problems[0]
    assert any("'netvm' of 'work'" in p for p in problems)
    assert any("'netvm' of 'secret' would name 'deep-notes' of another shard" in p
               for p in problems)


def test_device_backends_are_references():
    root = helpers.merged_tagged()
    domain = next(d for d in root.iterfind("domains/domain")
                  if d.findtext("properties/property[@name='name']") == "work")
    devices = etree.SubElement(domain, "devices", **{"class": "pci"})
    etree.SubElement(devices, "device", id="00_1f.0", **{"backend-domain": "deep-notes"})
    problems = helpers.reference_problems(root, DEPS)
    assert problems == ["property 'device pci:00_1f.0' of 'work' would name 'deep-notes', "
                        "a qube of a shard: core never references a shard"]


def test_dependencies_from_references():
    qubes, _ = guard.facts_from_store(helpers.merged_tagged())
    assert guard.dependencies_from_references(qubes.values()) == {S2: {S1}}


def test_cross_group_dispvms_matches_qrexec_resolution():
    root = helpers.merged_tagged()
    domains = helpers.system_info(root)
    group = {n: next(t for t in d.tags if t.startswith("reliant-")) for n, d in domains.items()}
    wanted = sorted(n for n, d in domains.items() if d.type != "AdminVM" and d.default_dispvm
                    and group[d.default_dispvm] != group[n])
    problems = [str(cross) for cross in guard.cross_group_dispvm_qubes(root)]
    assert wanted == ["deep-mail", "deep-notes", "secret-dvm", "secret-vpn"]
    assert [p.split("'")[1] for p in problems] == wanted
    assert "default_dispvm 'default-dvm' is in another group (reliant-core)" in problems[0]
    set_prop(root, "deep-mail", "default_dispvm", "")
    assert "deep-mail" not in " ".join([str(cross) for cross in guard.cross_group_dispvm_qubes(root)])


def test_effective_default_dispvm():
    q = guard.QubeFacts
    assert guard.effective_default_dispvm(q("a", "AppVM"), "dvm") == "dvm"
    assert guard.effective_default_dispvm(q("a", "AppVM", references={"default_dispvm": ""}),
                                          "dvm") is None
    assert guard.effective_default_dispvm(q("d", "DispVM", references={"template": "t"}),
                                          "dvm") == "t"
