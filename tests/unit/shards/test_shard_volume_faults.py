"""A shard volume that cannot be written (read-only bind mount, full tmpfs) costs only
that shard: `reliant-shard dissect` writes core, reports the shard, exits 1, and the
shard's changes stay in the merged store; once the volume is writable again, the next
dissect writes them. A shard file whose bytes do not change is never opened for writing.
Runs as root (mount); skipped where mounting is not permitted."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from host_double import HostDouble
from reliant import cli, store
from reliant.shards.files import SHARD_FILE
from shards_helpers import domains_by_name, load, split_scene, write_settings

pytestmark = pytest.mark.root


def mount(*argv: str) -> None:
    result = subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)
    if result.returncode:
        raise OSError(f"mount {' '.join(argv)}: {result.stderr.strip()}")


@contextlib.contextmanager
def mounted(*argv: str, target: Path):
    """`mount ARGV... TARGET` for the body; skips the test where mounting is refused."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting needs root and mount(8)")
    try:
        mount(*argv, str(target))
    except OSError as exc:
        pytest.skip(f"mounting is not permitted here: {exc}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True)


@contextlib.contextmanager
def read_only(directory: Path):
    """`directory` as a read-only bind mount of itself."""
    with mounted("--bind", str(directory), target=directory):
        mount("-o", "remount,bind,ro", str(directory))
        yield


@pytest.fixture
def scene(tmp_path, monkeypatch):
    scene = split_scene(tmp_path)
    write_settings(scene, monkeypatch, policy_dir="")
    assert cli.main(["suture"], host=HostDouble()) == 0
    return scene


def set_label(path: Path, labels: dict[str, str]) -> None:
    """Change qube labels in the store at `path`, as qubesd would."""
    root = load(path)
    for name, domain in domains_by_name(root).items():
        if name in labels:
            domain.find("properties/property[@name='label']").text = labels[name]
    path.write_bytes(store.serialize(root))


def label(path: Path, name: str) -> str:
    return domains_by_name(load(path))[name].find("properties/property[@name='label']").text


def dissect(capsys) -> tuple[int, str]:
    code = cli.main(["dissect", "--final"], host=HostDouble())
    return code, capsys.readouterr().err


def test_an_unchanged_shard_on_a_read_only_volume_is_no_error(scene, capsys):
    set_label(scene.merged, {"work": "green"})
    with read_only(scene.shard_dir("sflc_0_1")):
        code, err = dissect(capsys)
    assert (code, err) == (0, "")
    assert label(scene.core, "work") == "green"


def test_a_read_only_shard_volume_costs_only_that_shard(scene, capsys):
    set_label(scene.merged, {"work": "green", "secret": "orange", "deep-mail": "yellow"})
    (scene.qubes_dir / "appvms" / "secret").mkdir(parents=True)
    (scene.qubes_dir / "appvms" / "secret" / "firewall.xml").write_text("<secret/>")
    first = scene.shard_dir("sflc_0_1")
    before = (first / SHARD_FILE).read_bytes()
    with read_only(first):
        code, err = dissect(capsys)
    assert code == 1
    assert "shard sflc_0_1" in err and "Read-only file system" in err and str(first) in err
    assert label(scene.core, "work") == "green"  # core written
    assert label(scene.shard_dir("sflc_0_2") / SHARD_FILE, "deep-mail") == "yellow"
    assert (first / SHARD_FILE).read_bytes() == before
    assert label(scene.merged, "secret") == "orange"  # the change waits in the merged store
    assert b"secret" not in scene.core.read_bytes()
    assert (scene.qubes_dir / "appvms" / "secret" / "firewall.xml").exists()  # not removed
    code, err = dissect(capsys)  # writable again
    assert (code, err) == (0, "")
    assert label(first / SHARD_FILE, "secret") == "orange"
    assert (first / "dom0" / "appvms" / "secret" / "firewall.xml").read_text() == "<secret/>"
    assert not (scene.qubes_dir / "appvms" / "secret").exists()


def test_a_full_shard_volume_costs_only_that_shard(scene, capsys, tmp_path):
    first = scene.shard_dir("sflc_0_1")
    saved = tmp_path / "saved"
    shutil.copytree(first, saved)
    with mounted("-t", "tmpfs", "-o", "size=256k", "tmpfs", target=first):
        shutil.copytree(saved, first, dirs_exist_ok=True)  # the shard on a small volume
        set_label(scene.merged, {"work": "green", "secret": "orange"})
        filler = first / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(4096))
        os.close(fd)
        code, err = dissect(capsys)
        assert code == 1 and "shard sflc_0_1" in err and "No space left on device" in err
        assert label(scene.core, "work") == "green"
        assert label(scene.merged, "secret") == "orange"
        assert set(os.listdir(first)) == {*os.listdir(saved), "filler"}  # no temp file left
        filler.unlink()
        code, err = dissect(capsys)
        assert (code, err) == (0, "")
        assert label(first / SHARD_FILE, "secret") == "orange"
