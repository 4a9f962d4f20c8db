"""adopt and release: qubes made with stock Qubes on hidden volumes move from core into
their shards and back, core keeps no trace of them, and what cannot move is refused with
a reason naming the qube."""

import os

import pytest
from adopt_scene import OfflineHost, adopt_scene, scene_files, shard_cli
from lxml import etree
from reliant import adopt_plan, operations, qubesd_load, store
from reliant.shards.files import discover
from reliant.shards.records import qube_name, qube_qid
from reliant.shards.stubs import load_core
from reliant.shards.suture import plan_suture
from reliant.vocab import ShardError
from repo_paths import FIXTURES
from shards_helpers import SHARD_QUBES, canonical, domains_by_name, load

HIDDEN = SHARD_QUBES["sflc_0_1"] | SHARD_QUBES["sflc_0_2"]


def pool_names(root):
    return [p.get("name") for p in root.find("pools")]


def adopt_all(scene):
    assert shard_cli("adopt", "deep-mail", "deep-notes", "--shard", "sflc_0_2") == 0
    assert shard_cli("adopt", *sorted(SHARD_QUBES["sflc_0_1"]), "--shard", "sflc_0_1") == 0


def test_adopt_and_release_the_hidden_qubes_of_a_stock_store(tmp_path, monkeypatch, capsys):
    scene = adopt_scene(tmp_path, monkeypatch)
    original = scene.core.read_bytes()
    merged_fixture = domains_by_name(load(scene.core))
    core_fixture = etree.fromstring((FIXTURES / "qubes-r4.3-core.xml").read_bytes())
    assert qubesd_load.loads(load(scene.core), "4.3")

    # shard 1's qubes first: deep-mail, still in core, uses secret-vpn as its netvm
    before = scene_files(scene)
    assert shard_cli("adopt", "secret", "secret-dvm", "secret-vpn", "--shard", "sflc_0_1") == 1
    assert "core qube deep-mail: netvm names secret-vpn" in capsys.readouterr().err
    assert scene_files(scene) == before

    adopt_all(scene)
    out = capsys.readouterr()
    assert "qube secret-vpn: qid 15 -> 1000" in out.err and "10.137.3.232" in out.err
    core = load(scene.core)
    assert domains_by_name(core).keys() == domains_by_name(core_fixture).keys()
    assert pool_names(core) == pool_names(core_fixture)
    for name, domain in domains_by_name(core).items():
        assert canonical(domain) == canonical(merged_fixture[name]), name
    data = scene.core.read_bytes()
    assert not [word for word in (*HIDDEN, "sflc_0", str(scene.root)) if word.encode() in data]
    for sid, qubes in SHARD_QUBES.items():
        shard = load(scene.shard_dir(sid) / "domains.xml")
        assert pool_names(shard) == [sid]
        assert domains_by_name(shard).keys() == qubes
        first = 1000 if sid == "sflc_0_1" else 1500
        for name, domain in domains_by_name(shard).items():
            assert canonical(domain, drop_qid=True) == canonical(merged_fixture[name],
                                                                 drop_qid=True)
            assert first <= qube_qid(domain) < first + 500
    assert sorted(p.name for p in (scene.qubes_dir / "appvms").iterdir()) == ["work"]
    for sid, name in (("sflc_0_1", "secret-vpn"), ("sflc_0_2", "deep-notes")):
        saved = scene.shard_dir(sid) / "dom0" / "appvms" / name / "firewall.xml"
        assert saved.read_text() == f"<firewall qube='{name}'/>"
    assert qubesd_load.loads(load(scene.core), "4.3")

    # suture merges everything as it is, and dissect writes the files back unchanged
    adopted = scene_files(scene)
    result = scene.suture(policy_dir=None)
    assert not [p for p in result.problems if p.severity != "info"], result.problems
    assert domains_by_name(load(scene.merged)).keys() == merged_fixture.keys()
    assert qubesd_load.loads(load(scene.merged), "4.3")
    assert not scene.dissect(final=True).errors
    after = scene_files(scene)
    assert {k: v for k, v in after.items() if not k.startswith("run/")} == adopted

    # release: shard 2 first is refused (deep-mail would name secret-vpn of shard 1)
    assert shard_cli("release", "deep-mail", "deep-notes") == 1
    assert "netvm names qube secret-vpn of shard sflc_0_1" in capsys.readouterr().err
    assert shard_cli("release", "secret", "secret-dvm", "secret-vpn") == 0
    assert shard_cli("release", "deep-mail", "deep-notes", "--shard", "sflc_0_2") == 0
    assert scene.core.read_bytes() == original
    for sid in SHARD_QUBES:
        shard = load(scene.shard_dir(sid) / "domains.xml")
        assert not pool_names(shard) and not domains_by_name(shard)
        assert not list((scene.shard_dir(sid) / "dom0" / "appvms").iterdir())
    assert sorted(p.name for p in (scene.qubes_dir / "appvms").iterdir()) == sorted(
        ["work", "secret-vpn", "deep-notes"])
    assert qubesd_load.loads(load(scene.core), "4.3")


def test_adopt_and_release_refuse_while_qubesd_runs(tmp_path, monkeypatch, capsys):
    scene = adopt_scene(tmp_path, monkeypatch)
    before = scene_files(scene)
    for argv in (("adopt", "deep-notes", "--shard", "sflc_0_2"), ("release", "deep-notes")):
        assert shard_cli(*argv, host=OfflineHost(active=True)) == 1
        assert "qubesd is running" in capsys.readouterr().err
    assert scene_files(scene) == before


def plan(scene, names, shard="sflc_0_1", release=False):
    make = adopt_plan.plan_release if release else adopt_plan.plan_adopt
    return make(store.load(str(scene.core)), discover(scene.roots), shard, names)


def refusal(scene, names, shard="sflc_0_1", release=False) -> str:
    with pytest.raises(ShardError) as error:
        plan(scene, names, shard, release)
    return str(error.value)


def edit_core(scene, change):
    root = load(scene.core)
    change(domains_by_name(root), root)
    scene.core.write_bytes(store.serialize(root))


def set_property(domain, name, value):
    props = domain.find("properties")
    prop = props.find(f"property[@name='{name}']")
    if prop is None:
        prop = etree.SubElement(props, "property", name=name)
    prop.text = value


def test_data_outside_the_shard_is_refused_with_how_to_move_it(tmp_path, monkeypatch):
    scene = adopt_scene(tmp_path, monkeypatch)
    message = refusal(scene, ["work", "dom0", "nosuch"])
    assert ("qube work: volume private is in pool vm-pool, outside shard sflc_0_1's "
            "directory") in message
    assert "qvm-clone -P sflc_0_1 work NEW, then qvm-remove work" in message
    assert "qube dom0: a AdminVM cannot live in a shard" in message
    assert "no qube named 'nosuch'" in message


def test_core_references_to_adopted_qubes_are_refused(tmp_path, monkeypatch):
    scene = adopt_scene(tmp_path, monkeypatch)

    def change(domains, root):
        set_property(domains["work"], "default_dispvm", "secret-dvm")
        etree.SubElement(domains["personal"].find("tags"), "tag", name="created-by-secret")
        root.find("properties/property[@name='clockvm']").text = "secret-vpn"
        root.find("properties/property[@name='default_pool']").text = "sflc_0_1"
        device = etree.SubElement(domains["sys-usb"], "devices", {"class": "pci"})
        etree.SubElement(device, "device", {"backend-domain": "secret", "id": "00_1f.0"})
    edit_core(scene, change)
    message = refusal(scene, ["secret", "secret-dvm", "secret-vpn", "deep-mail"],
                      shard="sflc_0_1")
    for part in ("core qube work: default_dispvm names secret-dvm",
                 "core qube personal: tag created-by-secret names secret",
                 "(qvm-tags personal del created-by-secret)",
                 "global property clockvm names secret-vpn",
                 "global property default_pool names pool sflc_0_1",
                 "core qube sys-usb: device pci:00_1f.0 names secret",
                 "qube deep-mail: volume private is in pool sflc_0_2, outside shard sflc_0_1"):
        assert part in message


def test_a_shard_that_does_not_depend_on_the_target_may_not_keep_its_references(
        tmp_path, monkeypatch):
    scene = adopt_scene(tmp_path, monkeypatch)
    assert shard_cli("adopt", "deep-mail", "deep-notes", "--shard", "sflc_0_2") == 0
    path = scene.shard_dir("sflc_0_2") / "domains.xml"
    path.write_bytes(path.read_bytes().replace(b"<depends-on>\n    <shard id=\"sflc_0_1\"/>\n"
                                               b"  </depends-on>", b"<depends-on/>"))
    message = refusal(scene, ["secret", "secret-dvm", "secret-vpn"])
    assert ("qube deep-mail of shard sflc_0_2: netvm names secret-vpn, and shard sflc_0_2 "
            "does not depend on shard sflc_0_1") in message


def test_a_pool_moves_with_every_core_qube_using_it(tmp_path, monkeypatch):
    scene = adopt_scene(tmp_path, monkeypatch)
    assert shard_cli("adopt", "deep-mail", "deep-notes", "--shard", "sflc_0_2") == 0
    message = refusal(scene, ["secret"])
    assert ("pool sflc_0_1 moves into shard sflc_0_1 with the qubes whose data it holds, but "
            "core qubes secret-dvm, secret-vpn use it too: adopt them in the same call") \
        in message


def test_a_qube_suture_would_not_merge_is_not_adopted(tmp_path, monkeypatch):
    """Suture's own rules decide: here a data volume whose vid climbs out of its pool."""
    scene = adopt_scene(tmp_path, monkeypatch)
    edit_core(scene, lambda domains, root: domains["deep-notes"].find(
        "volume-config/volume[@name='private']").set("vid", "../../escape/private"))
    message = refusal(scene, ["deep-mail", "deep-notes"], shard="sflc_0_2")
    assert "suture would not merge it: qube deep-notes of shard sflc_0_2 not merged" in message
    assert "volume private" in message


def test_core_mentions_beyond_references_are_reported(tmp_path, monkeypatch, capsys):
    scene = adopt_scene(tmp_path, monkeypatch)

    def change(domains, root):  # the appmenus extension's queue on a GUI qube
        feature = etree.SubElement(domains["work"].find("features"), "feature",
                                   name="menu-update-pending-for")
        feature.text = "deep-notes personal"
    edit_core(scene, change)
    assert shard_cli("adopt", "deep-mail", "deep-notes", "--shard", "sflc_0_2") == 0
    err = capsys.readouterr().err
    assert "warning: core qube work still mentions qube name 'deep-notes'" in err
    assert "deep-mail" not in err.split("still mentions")[-1]


def test_qids_stay_when_they_fit_and_a_full_range_is_refused(tmp_path, monkeypatch):
    scene = adopt_scene(tmp_path, monkeypatch)
    edit_core(scene, lambda domains, root: [
        set_property(domains["deep-notes"], "qid", "1501"),
        domains["deep-notes"].set("id", "domain-1501")])
    moved = plan(scene, ["deep-mail", "deep-notes"], shard="sflc_0_2")
    qids = {qube_name(d): qube_qid(d) for d in
            etree.fromstring(moved.shard_file).iterfind("domains/domain")}
    assert qids == {"deep-notes": 1501, "deep-mail": 1500}
    path = scene.shard_dir("sflc_0_1") / "domains.xml"
    path.write_bytes(path.read_bytes().replace(b'last="1499"', b'last="1001"'))
    message = refusal(scene, ["secret", "secret-dvm", "secret-vpn"])
    assert "qube secret: no free qid left in shard sflc_0_1's range" in message


def test_release_takes_the_lowest_qid_outside_every_shard_range(tmp_path, monkeypatch):
    scene = adopt_scene(tmp_path, monkeypatch)
    adopt_all(scene)
    path = scene.shard_dir("sflc_0_2") / "domains.xml"  # core holds qids 0-14
    path.write_bytes(path.read_bytes().replace(b'first="1500" last="1999"',
                                               b'first="15" last="17"'))
    moved = plan(scene, ["secret", "secret-dvm", "secret-vpn"], release=True)
    qids = {name: qube_qid(d) for name, d in
            domains_by_name(etree.fromstring(moved.core)).items()}
    assert {name: qids[name] for name in SHARD_QUBES["sflc_0_1"]} == {
        "secret-vpn": 18, "secret-dvm": 19, "secret": 20}


def test_release_refusals_name_the_qube(tmp_path, monkeypatch):
    scene = adopt_scene(tmp_path, monkeypatch)
    adopt_all(scene)
    message = refusal(scene, ["secret"], release=True)
    assert ("qube secret: volume private is in pool sflc_0_1, which shard qubes secret-dvm, "
            "secret-vpn use too") in message
    assert "qube secret: default_dispvm names qube secret-dvm of shard sflc_0_1" in message
    assert "qube secret: netvm names qube secret-vpn of shard sflc_0_1" in message
    edit_core(scene, lambda domains, root: set_property(domains["work"], "name",
                                                         "deep-notes"))
    message = refusal(scene, ["deep-notes"], shard="sflc_0_2", release=True)
    assert "qube deep-notes: core holds another qube of that name" in message


def test_an_interrupted_adopt_is_finished_by_a_rerun_from_cores_copy(tmp_path, monkeypatch):
    """Both files hold the qubes (the shard written, core not yet): suture runs on core's
    copy, and the rerun takes core's copy, even when qubesd changed it meanwhile."""
    scene = adopt_scene(tmp_path, monkeypatch)
    moved = plan(scene, ["deep-mail", "deep-notes"], shard="sflc_0_2")
    (scene.shard_dir("sflc_0_2") / "domains.xml").write_bytes(moved.shard_file)
    merged = plan_suture(load_core(str(scene.core)), discover(scene.roots))
    assert {p.shard for p in merged.problems if p.kind == "refused"} == {"sflc_0_2"}
    assert domains_by_name(merged.merged).keys() >= HIDDEN
    edit_core(scene, lambda domains, root: set_property(domains["deep-notes"], "label", "red"))
    assert shard_cli("adopt", "deep-mail", "deep-notes", "--shard", "sflc_0_2") == 0
    shard = domains_by_name(load(scene.shard_dir("sflc_0_2") / "domains.xml"))
    assert shard["deep-notes"].find("properties/property[@name='label']").text == "red"
    assert qube_qid(shard["deep-notes"]) == 1500
    assert not domains_by_name(load(scene.core)).keys() & SHARD_QUBES["sflc_0_2"]
    result = operations.check(str(scene.core), scene.roots)
    assert not [p for p in result.problems if p.kind in ("refused", "conflict")]


def test_a_release_qubesd_would_not_load_is_refused(tmp_path, monkeypatch):
    scene = adopt_scene(tmp_path, monkeypatch)
    adopt_all(scene)
    assert shard_cli("release", *sorted(SHARD_QUBES["sflc_0_1"])) == 0
    path = scene.shard_dir("sflc_0_2") / "domains.xml"
    shard = load(path)
    set_property(domains_by_name(shard)["deep-notes"], "vcpus", "0")
    path.write_bytes(store.serialize(shard))
    message = refusal(scene, ["deep-notes", "deep-mail"], shard="sflc_0_2", release=True)
    assert "qubesd (R4.3) would not load the new core: qube 'deep-notes': property vcpus" \
        in message


def test_libvirt_definitions_and_autostart_links_travel_with_adopted_qubes(tmp_path,
                                                                           monkeypatch):
    """Stock Qubes left them in /etc; adopted qubes' go (suture links them again while
    their shard is merged), released qubes' autostart link is made again."""
    scene = adopt_scene(tmp_path, monkeypatch)
    edit_core(scene, lambda domains, root: set_property(domains["secret-vpn"], "autostart",
                                                         "True"))
    etc = tmp_path / "etc"
    definition = etc / "libvirt/libxl/secret-vpn.xml"
    link = etc / "systemd/system/multi-user.target.wants/qubes-vm@secret-vpn.service"
    definition.parent.mkdir(parents=True)
    definition.write_text("<domain/>")
    link.parent.mkdir(parents=True)
    link.symlink_to("/usr/lib/systemd/system/qubes-vm@.service")
    kept = etc / "libvirt/libxl/work.xml"
    kept.write_text("<domain/>")
    adopt_all(scene)
    assert not definition.exists() and not os.path.lexists(link) and kept.exists()
    assert shard_cli("release", *sorted(SHARD_QUBES["sflc_0_1"])) == 0
    assert os.readlink(link) == "/usr/lib/systemd/system/qubes-vm@.service"
