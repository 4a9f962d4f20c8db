"""The dom0 of a stock-Qubes user with qubes on hidden volumes, before Reliant: core is
the merged fixture (hidden qubes and their pools in qubes.xml), and an empty shard is made
with `reliant-shard init` over each pool's directory."""

from __future__ import annotations

from pathlib import Path

from reliant import cli, commands
from reliant.shards.records import qube_uuid
from shards_helpers import SHARD_QUBES, Scene, fixture_bytes, load, write_settings

#: qubes that have a dom0 directory (firewall rules) in the scene
WITH_DIRS = ("secret-vpn", "deep-notes", "work")


class OfflineHost(commands.Host):
    """Test double of systemctl: qubesd is stopped (or running, if asked)."""

    def __init__(self, active: bool = False) -> None:
        self.active = active

    def qubesd_active(self) -> bool:
        return self.active


def adopt_scene(tmp_path: Path, monkeypatch) -> Scene:
    """Core = the merged fixture; shards sflc_0_1 and sflc_0_2 (depending on the first)
    initialised by the CLI over the pools' directories; configuration in
    $RELIANT_CONFIG; a firewall.xml in the dom0 directory of each of WITH_DIRS."""
    scene = Scene(tmp_path, tmp_path / "qubes.xml", tmp_path / "run" / "qubes.xml",
                  tmp_path / "shufflecake", tmp_path / "varlibqubes")
    scene.root.mkdir(parents=True)
    scene.core.write_bytes(fixture_bytes("qubes-r4.3-merged.xml", scene.root))
    for name in WITH_DIRS:
        directory = scene.qubes_dir / "appvms" / name
        directory.mkdir(parents=True)
        (directory / "firewall.xml").write_text(f"<firewall qube='{name}'/>")
    write_settings(scene, monkeypatch, **etc_dirs(tmp_path))
    first = str(scene.shard_dir("sflc_0_1"))
    assert shard_cli("init", first) == 0
    assert shard_cli("init", str(scene.shard_dir("sflc_0_2")), "--depends-on", first) == 0
    for sid in SHARD_QUBES:
        (scene.shard_dir(sid) / "pool").mkdir()
    return scene


def etc_dirs(tmp_path: Path) -> dict[str, str]:
    """Where the scene's dom0 keeps autostart links and libvirt definitions."""
    return {"systemd_dir": str(tmp_path / "etc/systemd/system"),
            "libvirt_dir": str(tmp_path / "etc/libvirt/libxl")}


def shard_cli(*argv: str, host: commands.Host | None = None) -> int:
    return cli.main(list(argv), host=host or OfflineHost())


def scene_files(scene: Scene) -> dict[str, bytes]:
    """Every file of the scene (paths relative to it), but the lock file."""
    return {str(p.relative_to(scene.tmp)): p.read_bytes() for p in scene.tmp.rglob("*")
            if p.is_file() and p.name != "shards.lock"}


def disk_uuids(scene: Scene) -> set[str]:
    """uuids of every qube in the core file and the shard files (which must parse)."""
    paths = [scene.core] + [scene.shard_dir(s) / "domains.xml" for s in SHARD_QUBES]
    return {qube_uuid(d) for path in paths for d in load(path).iterfind(".//domains/domain")}
