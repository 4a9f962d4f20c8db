"""qubes-core-admin's own loader has the last word (here its double,
tests/doubles/qubes_loader, through the same child process dom0 runs)."""

from __future__ import annotations

import os

import pytest
from admission_scene import CORPUS, SHARD_QUBES, domains, shard_scene
from lxml import etree
from qubesd.qubesd_double import Store
from reliant import store
from reliant.shards.real_loader import RealLoader, dom0_release
from repo_paths import ROOT

DOUBLE = ROOT / "tests" / "doubles" / "qubes_loader"
LIBRARY = ROOT / "_utils" / "reliant_lib"


def loader() -> RealLoader:
    return RealLoader(pythonpath=[str(DOUBLE), str(LIBRARY)], timeout=60)


def refusing(domain: etree._Element) -> None:
    """What the model accepts and the loader (double) refuses."""
    etree.SubElement(domain.find("features"), "feature", name="loader-double-refuses").text = "1"


@pytest.mark.parametrize(("text", "release"), [
    ("Qubes release 4.2.4 (R4.2)\n", "4.2"), ("Qubes release 4.3.0 (R4.3)\n", "4.3"),
    ("Qubes release 4.9 (R4.9)\n", "4.3"), (None, "4.3")])
def test_dom0_release(tmp_path, text, release):
    path = tmp_path / "qubes-release"
    if text is not None:
        path.write_text(text)
    assert dom0_release(str(path)) == release


def test_the_loader_loads_a_copy_and_leaves_nothing(tmp_path):
    scratch = tmp_path / "run"
    scratch.mkdir()
    data = (CORPUS / "base_store.xml").read_bytes()
    assert loader().load(data, str(scratch)).loads is True
    verdict = loader().load((CORPUS / "tag_with_space.xml").read_bytes(), str(scratch))
    assert verdict.loads is False and "tag 'bad tag'" in verdict.message
    assert os.listdir(scratch) == []


def test_without_qubes_core_admin_the_check_says_so(tmp_path):
    verdict = RealLoader(pythonpath=[str(LIBRARY)]).load(b"<qubes/>", str(tmp_path))
    assert verdict.loads is None and "not importable" in verdict.message
    assert os.listdir(tmp_path) == []


def test_suture_leaves_out_the_shard_qube_the_loader_refuses(tmp_path):
    scene = shard_scene(tmp_path)
    bad = scene.edit_shard("sflc_0_2", lambda root: refusing(domains(root)["deep-mail"]))
    result = scene.suture(real_loader=loader())
    Store(str(scene.merged), str(tmp_path / "base")).load()
    assert loader().load(scene.merged.read_bytes(), str(tmp_path)).loads is True
    merged = set(domains(store.load(str(scene.merged))))
    assert "deep-mail" not in merged and SHARD_QUBES["sflc_0_1"] | {"deep-notes"} <= merged
    refused = [p for p in result.problems if p.qube == "deep-mail"]
    assert refused and "qubes-core-admin refuses the store with it" in refused[0].message
    assert [p for p in os.listdir(scene.merged.parent) if p.startswith("reliant-loadcheck")] == []
    scene.dissect(final=True)
    assert scene.shard_file("sflc_0_2").read_bytes() == bad


def test_a_core_the_loader_refuses_is_no_shard_s_fault(tmp_path):
    scene = shard_scene(tmp_path)
    core = store.load(str(scene.core))
    refusing(domains(core)["work"])
    scene.core.write_bytes(store.serialize(core))
    result = scene.suture(real_loader=loader())
    assert set().union(*SHARD_QUBES.values()) <= set(domains(store.load(str(scene.merged))))
    assert [p.severity for p in result.problems if "even without any shard qube" in p.message] \
        == ["error"]

