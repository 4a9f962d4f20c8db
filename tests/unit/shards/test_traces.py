"""libvirt definitions and autostart links travel with the shard: removed when qubesd has
stopped (dissect --final), autostart links made again at suture; the interlock's hold
leaves every shard out of the merge and untouched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest
from lxml import etree
from reliant import store
from reliant.shards.files import SHARD_FILE
from reliant.shards.traces import UNIT_TEMPLATE, Traces, autostart_qubes
from shards_helpers import SHARD_QUBES, domains_by_name, load, mtimes, split_scene


class LibvirtDouble:
    """libvirtd as virsh sees it: `undefine` removes the definition file as libvirtd does,
    and fails like virsh on a domain it does not know (or on every call, `broken`)."""

    def __init__(self, directory: Path, running: bool = True, broken: bool = False):
        self.directory, self._running, self.broken = directory, running, broken
        self.undefined: list[str] = []

    def running(self) -> bool:
        return self._running

    def undefine(self, name: str) -> Optional[str]:
        definition = self.directory / f"{name}.xml"
        if self.broken or not definition.exists():
            return f"error: failed to get domain '{name}'"
        definition.unlink()
        self.undefined.append(name)
        return None


@pytest.fixture
def traces(tmp_path: Path) -> Traces:
    libvirt_dir = tmp_path / "etc/libvirt/libxl"
    libvirt_dir.mkdir(parents=True)
    return Traces(str(tmp_path / "etc/systemd/system"), str(libvirt_dir),
                  LibvirtDouble(libvirt_dir))


def defined(traces: Traces, name: str) -> Path:
    """What libvirtd writes when qubesd defines `name` at its start (defineXML)."""
    path = Path(traces.libvirt_definition(name))
    path.write_text(f"<domain type='xen'><name>{name}</name></domain>\n")
    return path


def test_autostart_links_are_made_as_qubesd_makes_them(traces):
    problems = []
    assert traces.restore_autostart(["secret"], problems) == [traces.autostart_link("secret")]
    link = Path(traces.autostart_link("secret"))
    assert link == Path(traces.systemd_dir, "multi-user.target.wants", "qubes-vm@secret.service")
    assert os.readlink(link) == UNIT_TEMPLATE
    assert traces.restore_autostart(["secret"], problems) == [] and problems == []
    link.unlink()
    link.write_text("not a link\n")
    assert traces.restore_autostart(["secret"], problems) == []
    assert [p.qube for p in problems] == ["secret"] and "is not a link" in problems[0].message


@pytest.mark.parametrize("running", [True, False])
def test_remove_undefines_through_libvirtd_or_removes_the_file(traces, running):
    traces.libvirt._running = running
    definition = defined(traces, "secret")
    traces.restore_autostart(["secret"], [])
    problems = []
    removed = traces.remove(["secret", "deep-mail"], problems)
    assert removed == [str(definition), traces.autostart_link("secret")]
    assert not definition.exists() and not os.path.lexists(traces.autostart_link("secret"))
    assert traces.libvirt.undefined == (["secret"] if running else [])
    assert problems == []


def test_a_failed_undefine_is_reported_and_the_file_still_goes(traces):
    traces.libvirt.broken = True
    definition = defined(traces, "secret")
    problems = []
    assert traces.remove(["secret"], problems) == [str(definition)]
    assert not definition.exists()
    assert [(p.severity, p.qube) for p in problems] == [("warning", "secret")]
    assert "failed to get domain 'secret'" in problems[0].message


def test_autostart_is_read_only_for_the_merged_qubes_that_have_it():
    shard = (b'<shard><domains>'
             b'<domain><properties><property name="name">a</property>'
             b'<property name="autostart">True</property></properties></domain>'
             b'<domain><properties><property name="name">b</property>'
             b'<property name="autostart">False</property></properties></domain>'
             b'<domain><properties><property name="name">c</property>'
             b'<property name="autostart">True</property></properties></domain>'
             b'</domains></shard>')
    assert autostart_qubes(shard, ["a", "b"], "s") == ["a"]
    assert autostart_qubes(shard.replace(b"True", b"False"), ["a", "c"], "s") == []
    with pytest.raises(store.StoreError):
        autostart_qubes(shard[:-3], ["a"], "s")


def set_autostart(shard_file: Path, name: str) -> None:
    """What qubesd's autostart setter leaves in the store, once dissected into the shard."""
    root = store.parse(shard_file.read_bytes(), str(shard_file))
    domain = domains_by_name(root)[name]
    prop = etree.SubElement(domain.find("properties"), "property", name="autostart")
    prop.text = "True"
    store.write(str(shard_file), store.serialize(root), mode=0o600)


def test_suture_links_autostart_qubes_and_the_final_dissect_removes_every_trace(tmp_path,
                                                                                 traces):
    scene = split_scene(tmp_path / "dom0")
    set_autostart(scene.shard_dir("sflc_0_1") / SHARD_FILE, "secret-vpn")
    result = scene.suture(traces=traces)
    assert not result.errors
    assert os.readlink(traces.autostart_link("secret-vpn")) == UNIT_TEMPLATE
    assert os.listdir(Path(traces.systemd_dir, "multi-user.target.wants")) == [
        "qubes-vm@secret-vpn.service"]
    for name in ("secret-vpn", "deep-mail", "work"):  # started since: libvirt knows them
        defined(traces, name)
    result = scene.dissect(final=True, traces=traces)
    assert not result.errors, result.problems
    assert sorted(os.listdir(traces.libvirt_dir)) == ["work.xml"]  # a core qube stays
    assert os.listdir(Path(traces.systemd_dir, "multi-user.target.wants")) == []
    assert sorted(traces.libvirt.undefined) == ["deep-mail", "secret-vpn"]
    scene.suture(traces=traces)
    assert os.readlink(traces.autostart_link("secret-vpn")) == UNIT_TEMPLATE


def test_a_held_suture_merges_core_alone_and_dissect_leaves_the_shards_untouched(tmp_path,
                                                                                 traces):
    scene = split_scene(tmp_path / "dom0")
    set_autostart(scene.shard_dir("sflc_0_1") / SHARD_FILE, "secret-vpn")
    before = mtimes(scene.root)
    result = scene.suture(hold_shards="not on the volatile root", traces=traces)
    assert result.shards == []
    assert [(p.severity, p.kind, p.shard) for p in result.problems] == [
        ("error", "volatile", None), ("error", "refused", "sflc_0_1"),
        ("error", "refused", "sflc_0_2")]
    merged = domains_by_name(load(scene.merged))
    assert not (SHARD_QUBES["sflc_0_1"] | SHARD_QUBES["sflc_0_2"]) & merged.keys()
    assert not Path(traces.autostart_link("secret-vpn")).exists()
    assert not any((scene.qubes_dir / "appvms" / name).exists()
                   for name in SHARD_QUBES["sflc_0_1"])
    result = scene.dissect(final=True, traces=traces)
    assert not result.errors, result.problems
    assert mtimes(scene.root) == before
