"""Scenarios for the shard tests: the real qubesd stores of tests/fixtures, relocated."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree
from reliant import operations, store
from reliant.shards.files import init_shard
from reliant.shards.records import qube_name
from repo_paths import FIXTURES

SHARD_QUBES = {"sflc_0_1": {"secret", "secret-dvm", "secret-vpn"},
               "sflc_0_2": {"deep-mail", "deep-notes"}}


@dataclass
class Scene:
    """A dom0 in a temporary directory: core store, merged store, shard root, qubes dir."""

    tmp: Path
    core: Path
    merged: Path
    root: Path
    qubes_dir: Path

    @property
    def roots(self) -> list[str]:
        return [str(self.root)]

    def shard_dir(self, sid: str) -> Path:
        return self.root / sid

    def shard_file(self, sid: str) -> Path:
        return self.root / sid / "domains.xml"

    def edit_shard(self, sid: str, change: Callable[[etree._Element], None]) -> bytes:
        """Apply `change(root)` to a shard file; returns its new bytes."""
        path = self.shard_file(sid)
        root = store.load(str(path))
        change(root)
        path.write_bytes(store.serialize(root))
        return path.read_bytes()

    def dissect(self, **kwargs) -> operations.Result:
        return operations.dissect(str(self.merged), str(self.core), self.roots,
                                      qubes_dir=str(self.qubes_dir), **kwargs)

    def suture(self, **kwargs) -> operations.Result:
        return operations.suture(str(self.core), self.roots, str(self.merged),
                                     qubes_dir=str(self.qubes_dir), **kwargs)


def fixture_bytes(name: str, root: Path) -> bytes:
    """A fixture store with its shard pools moved under `root`."""
    data = (FIXTURES / name).read_bytes()
    return data.replace(b"/run/shufflecake", str(root).encode())


def merged_scene(tmp_path: Path, ranges=((15, 17), (18, 19))) -> Scene:
    """The merged fixture as qubesd's running store, the core fixture on disk, and two
    empty shards initialised for its two shard pools (the second depends on the first)."""
    scene = Scene(tmp_path, tmp_path / "qubes.xml", tmp_path / "run" / "qubes.xml",
                  tmp_path / "shufflecake", tmp_path / "varlibqubes")
    scene.merged.parent.mkdir(parents=True)
    scene.qubes_dir.mkdir()
    scene.core.write_bytes(fixture_bytes("qubes-r4.3-core.xml", scene.root))
    scene.merged.write_bytes(fixture_bytes("qubes-r4.3-merged.xml", scene.root))
    first = init_shard(str(scene.shard_dir("sflc_0_1")), qid_range=ranges[0])
    init_shard(str(scene.shard_dir("sflc_0_2")), qid_range=ranges[1],
                              depends_on=[first.path])
    for sid in SHARD_QUBES:
        (scene.shard_dir(sid) / "pool").mkdir()
    return scene


def split_scene(tmp_path: Path, **kwargs) -> Scene:
    """`merged_scene` after a first dissect: core and both shards hold their qubes."""
    scene = merged_scene(tmp_path, **kwargs)
    result = scene.dissect(final=True)
    assert not result.errors, result.problems
    return scene


def write_settings(scene: Scene, monkeypatch, **changes) -> Path:
    """reliant-shard's settings file for `scene`, named by $RELIANT_CONFIG: its stores,
    roots and qubes dir, no runtime policy, autostart links and libvirt definitions under
    the scene's directory; `changes` replace or add keys."""
    config = scene.tmp / "reliant.json"
    config.write_text(json.dumps({
        "core": str(scene.core), "merged": str(scene.merged), "roots": scene.roots,
        "qubes_dir": str(scene.qubes_dir), "policy_dir": None,
        "systemd_dir": str(scene.tmp / "systemd"), "libvirt_dir": str(scene.tmp / "libxl"),
        **changes}))
    monkeypatch.setenv("RELIANT_CONFIG", str(config))
    return config


def domains_by_name(root: etree._Element) -> dict[str, etree._Element]:
    return {qube_name(d): d for d in root.iterfind(".//domains/domain")}


def load(path: Path) -> etree._Element:
    return store.load(str(path))


def canonical(domain: etree._Element, drop_qid: bool = False) -> bytes:
    """A domain without reliant tags (and optionally without its qid), as bytes."""
    copy = etree.fromstring(etree.tostring(domain))
    for tag in copy.iterfind("tags/tag"):
        if tag.get("name").startswith("reliant-"):
            tag.getparent().remove(tag)
    if drop_qid:
        del copy.attrib["id"]
        for prop in copy.iterfind("properties/property[@name='qid']"):
            prop.getparent().remove(prop)
    return etree.tostring(copy)


def mtimes(*paths: Path) -> dict[str, int]:
    found = {}
    for base in paths:
        for path in [base, *base.rglob("*")] if base.is_dir() else [base]:
            found[str(path)] = path.stat().st_mtime_ns
    return found


def dispvms_in_own_group(scene: Scene) -> None:
    """Point the default_dispvm of the fixture's shard qubes (default-dvm, in core) at a
    disposable template of their own shard (sflc_0_1 has one, sflc_0_2 none)."""
    wanted = {"secret-dvm": "secret-dvm", "secret-vpn": "secret-dvm", "deep-mail": "",
              "deep-notes": ""}
    for sid in SHARD_QUBES:
        path = scene.shard_dir(sid) / "domains.xml"
        root = load(path)
        for name, domain in domains_by_name(root).items():
            if name in wanted:
                props = domain.find("properties")
                prop = props.find("property[@name='default_dispvm']")
                if prop is None:
                    prop = etree.SubElement(props, "property", name="default_dispvm")
                prop.text = wanted[name]
        path.write_bytes(store.serialize(root))


def set_prop(domain: etree._Element, name: str, value: str) -> None:
    """Set property `name` of `domain` (added if missing)."""
    props = domain.find("properties")
    for prop in props:
        if prop.get("name") == name:
            prop.text = value
            return
    etree.SubElement(props, "property", name=name).text = value


def new_domain(name: str, qid: int, pool: str, uuid: str) -> etree._Element:
    """A <domain> of an AppVM keeping its private volume in `pool`."""
    domain = etree.fromstring(
        f'<domain id="domain-{qid}" class="AppVM"><properties>'
        f'<property name="label">red</property><property name="name">{name}</property>'
        f'<property name="qid">{qid}</property><property name="uuid">{uuid}</property>'
        '<property name="template">debian-13-xfce</property></properties><features/><tags/>'
        f'<volume-config><volume name="private" pool="{pool}" vid="appvms/{name}/private" '
        'rw="True" save_on_stop="True" snap_on_start="False" size="2147483648"/>'
        '</volume-config></domain>')
    return domain
