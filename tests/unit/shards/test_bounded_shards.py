"""One hostile or broken shard never stops the others: a FIFO for domains.xml, a symlinked
saved directory, a planted ``.NAME.old`` symlink, a sparse file, a saved directory over
the size limit, a shard too big for the merged store, 1,000 shards. Each suture,
dissect and status ends within seconds, reports that shard and merges the others."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

import pytest
from reliant import operations, store
from reliant.shards import suture as suture_plan
from reliant.shards.files import SHARD_FILE
from reliant.shards.suture import MAX_MERGED_SHARDS
from shards_helpers import SHARD_QUBES, domains_by_name, load, split_scene

SECONDS = 20  # "within seconds" on a loaded two-core machine


class Overtime(Exception):
    """Raised into a body that runs too long (not an OSError: nothing may catch it)."""


@contextlib.contextmanager
def deadline(seconds: float = SECONDS):
    """Fail (Overtime) instead of hanging when the body takes longer than `seconds`."""
    def expire(signum, frame):
        raise Overtime(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def merged_names(scene) -> set[str]:
    return set(domains_by_name(load(scene.merged)))


def mentions(result, text: str) -> bool:
    return any(text in problem.message for problem in result.problems)


def all_shard_qubes() -> set[str]:
    return set().union(*SHARD_QUBES.values())


def test_a_fifo_for_domains_xml_hangs_nothing(tmp_path):
    scene = split_scene(tmp_path)
    fifo = scene.root / "fifo" / SHARD_FILE
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with deadline():
        result = scene.suture()
    assert mentions(result, f"{fifo}: cannot read: not a regular file")
    assert all_shard_qubes() <= merged_names(scene)
    with deadline():
        result = scene.dissect(final=True)
        report = operations.status(str(scene.core), str(scene.merged), scene.roots)
    assert mentions(result, str(fifo))
    assert [p for p in result.errors if str(fifo) not in p.message] == []
    assert any(str(fifo) in p["message"] for p in report["problems"])
    assert {s["id"] for s in report["shards"]} == set(SHARD_QUBES)


def test_store_write_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "qubes.xml")
    with deadline(5), pytest.raises(store.StoreError, match="not a regular file"):
        store.write(str(tmp_path / "qubes.xml"), b"<qubes/>\n")


def test_a_symlinked_saved_directory_is_reported_and_replaced(tmp_path):
    scene = split_scene(tmp_path)
    core_dir = scene.qubes_dir / "appvms" / "work"
    core_dir.mkdir(parents=True)
    (core_dir / "firewall.xml").write_text("<work/>")
    appvms = scene.shard_dir("sflc_0_1") / "dom0" / "appvms"
    appvms.mkdir(parents=True)
    (appvms / "secret").symlink_to(core_dir)
    with deadline():
        result = scene.suture()
    assert mentions(result, f"{appvms / 'secret'} is a symlink")
    assert all_shard_qubes() <= merged_names(scene)
    assert not (scene.qubes_dir / "appvms" / "secret").exists()  # the link is not used
    (scene.qubes_dir / "appvms" / "secret").mkdir()
    (scene.qubes_dir / "appvms" / "secret" / "firewall.xml").write_text("<secret/>")
    with deadline():
        result = scene.dissect(final=True)
    assert not result.errors, result.problems
    assert mentions(result, f"{appvms / 'secret'} is a symlink or not a directory; replaced")
    assert not (appvms / "secret").is_symlink()
    assert (appvms / "secret" / "firewall.xml").read_text() == "<secret/>"
    assert os.listdir(core_dir) == ["firewall.xml"]  # what the link named is untouched
    assert (core_dir / "firewall.xml").read_text() == "<work/>"


@pytest.mark.parametrize("name", ["secret", "secret-vpn"])  # saved beside it, or not
def test_a_planted_old_symlink_is_reported_and_removed(tmp_path, name):
    scene = split_scene(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "firewall.xml").write_text("<elsewhere/>")
    appvms = scene.shard_dir("sflc_0_1") / "dom0" / "appvms"
    (appvms / "secret").mkdir(parents=True)
    (appvms / "secret" / "firewall.xml").write_text("<saved/>")
    (appvms / f".{name}.old").symlink_to(target)
    with deadline():
        result = scene.suture()
    assert mentions(result, f"{appvms / f'.{name}.old'} is not a directory; removed")
    assert all_shard_qubes() <= merged_names(scene)
    assert (scene.qubes_dir / "appvms" / "secret" / "firewall.xml").read_text() == "<saved/>"
    assert not (scene.qubes_dir / "appvms" / "secret-vpn").exists()
    with deadline():
        result = scene.dissect(final=True)
    assert not result.errors, result.problems
    assert sorted(os.listdir(appvms)) == ["secret"]
    assert (target / "firewall.xml").read_text() == "<elsewhere/>"


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_a_sparse_file_keeps_its_holes(tmp_path):
    scene = split_scene(tmp_path)
    saved = scene.shard_dir("sflc_0_1") / "dom0" / "appvms" / "secret"
    saved.mkdir(parents=True)
    size = 64 << 30  # 64 GiB apparent, 8 KiB of data
    with open(saved / "notes.txt", "wb") as handle:
        handle.write(b"head" * 1024)
        handle.seek(size - 4096)
        handle.write(b"tail" * 1024)
    if allocated(saved / "notes.txt") > 1 << 20:
        pytest.skip("the temporary directory's filesystem keeps no holes")
    with deadline():
        result = scene.suture()
    assert not result.errors, result.problems
    copy = scene.qubes_dir / "appvms" / "secret" / "notes.txt"
    assert copy.stat().st_size == size
    assert allocated(copy) <= 1 << 20
    with open(copy, "rb") as handle:
        assert handle.read(4096) == b"head" * 1024
        handle.seek(size // 2)
        assert handle.read(4096) == bytes(4096)
        handle.seek(size - 4096)
        assert handle.read() == b"tail" * 1024
    with deadline():  # compared by its data only: nothing to write
        result = scene.dissect()
    assert not result.errors, result.problems
    assert result.written == []
    with open(copy, "r+b") as handle:  # qubesd changes it: saved back with its holes
        handle.write(b"HEAD")
    with deadline():
        result = scene.dissect(final=True)
    assert not result.errors, result.problems
    assert allocated(saved / "notes.txt") <= 1 << 20
    with open(saved / "notes.txt", "rb") as handle:
        assert handle.read(8) == b"HEADhead"
    assert not (scene.qubes_dir / "appvms" / "secret").exists()


def test_a_saved_directory_over_the_limit_leaves_its_qube_out(tmp_path):
    scene = split_scene(tmp_path)
    saved = scene.shard_dir("sflc_0_1") / "dom0" / "appvms" / "secret-vpn"
    saved.mkdir(parents=True)
    (saved / "firewall.xml").write_bytes(os.urandom(2 << 20))
    with deadline():
        result = scene.suture(dom0_dir_max_bytes=1 << 20)
    assert mentions(result, f"qube secret-vpn of shard sflc_0_1 not merged: its saved dom0 "
                            f"directory {saved} holds more than {1 << 20} bytes")
    assert merged_names(scene) & all_shard_qubes() == all_shard_qubes() - {"secret-vpn"}
    assert not (scene.qubes_dir / "appvms" / "secret-vpn").exists()
    with deadline():
        result = scene.dissect(final=True)
    assert not result.errors, result.problems
    assert "secret-vpn" in domains_by_name(load(scene.shard_dir("sflc_0_1") / SHARD_FILE))
    assert (saved / "firewall.xml").stat().st_size == 2 << 20


def big_shard(scene, size: int) -> Path:
    """A shard whose file is `size` bytes: one qube with many features."""
    directory = scene.root / "big"
    directory.mkdir()
    head = (f'<reliant-shard version="1" id="big"><qid-range first="3000" last="3099"/>'
            f'<depends-on/><pools/><domains><domain id="domain-3000" class="AppVM">'
            f'<properties><property name="label">red</property><property name="name">huge'
            f'</property><property name="qid">3000</property><property name="uuid">'
            f'{uuid.uuid4()}</property><property name="template">debian-13-xfce</property>'
            f'</properties><features>').encode()
    tail = b"</features></domain></domains></reliant-shard>\n"
    feature = b'<feature name="f%07d">' + b"x" * 4000 + b"</feature>"
    count, rest = divmod(size - len(head) - len(tail), len(feature % 0))
    features = b"".join(feature % i for i in range(count))
    (directory / SHARD_FILE).write_bytes(head + features + b" " * rest + tail)
    return directory


@pytest.mark.parametrize("estimate", [True, False])  # the estimate, or the exact size
def test_a_shard_too_big_for_the_merged_store_is_left_out(tmp_path, monkeypatch, estimate):
    scene = split_scene(tmp_path)
    big = big_shard(scene, store.MAX_BYTES - 4096)
    if not estimate:
        monkeypatch.setattr(suture_plan, "_merged_size", lambda shard: 0)
    with deadline():
        result = scene.suture()
    why = ("would make the merged store larger than" if estimate else
           "the merged store would be")
    assert mentions(result, f"shard big ({big}): ")
    assert mentions(result, why)
    assert [p.shard for p in result.errors] == ["big"]
    assert all_shard_qubes() <= merged_names(scene)
    assert "huge" not in merged_names(scene)
    assert scene.merged.stat().st_size <= store.MAX_BYTES
    with deadline():
        result = scene.dissect(final=True)
    assert not result.errors, result.problems
    assert (big / SHARD_FILE).stat().st_size == store.MAX_BYTES - 4096


def shard_file(index: int, directory: Path) -> bytes:
    """Shard `index` of many: 8 qids, its own pool, one qube on the core's template."""
    first = 1000 + 8 * index
    name = f"q{index:04d}"
    return (f'<reliant-shard version="1" id="s{index:04d}">\n'
            f'  <qid-range first="{first}" last="{first + 7}"/>\n  <depends-on/>\n'
            f'  <pools>\n    <pool name="p{index:04d}" dir_path="{directory}/pool" '
            'driver="file-reflink" revisions_to_keep="1" ephemeral_volatile="False"/>\n'
            f'  </pools>\n  <domains>\n    <domain id="domain-{first}" class="AppVM">\n'
            '      <properties>\n        <property name="label">purple</property>\n'
            f'        <property name="name">{name}</property>\n'
            f'        <property name="qid">{first}</property>\n'
            f'        <property name="uuid">{uuid.uuid5(uuid.NAMESPACE_DNS, name)}</property>\n'
            '        <property name="template">debian-13-xfce</property>\n'
            '      </properties>\n      <features/>\n      <tags/>\n      <volume-config>\n'
            f'        <volume name="root" pool="vm-pool" vid="qubes_dom0/vm-{name}-root" '
            'revisions_to_keep="2" rw="True" save_on_stop="False" snap_on_start="True" '
            'size="10737418240" source="qubes_dom0/vm-debian-13-xfce-root"/>\n'
            f'        <volume name="private" pool="p{index:04d}" vid="appvms/{name}/private" '
            'revisions_to_keep="1" rw="True" save_on_stop="True" snap_on_start="False" '
            'size="2147483648"/>\n'
            f'        <volume name="volatile" pool="p{index:04d}" vid="appvms/{name}/volatile" '
            'revisions_to_keep="1" rw="True" save_on_stop="False" snap_on_start="False" '
            'size="10737418240"/>\n'
            '        <volume name="kernel" pool="linux-kernel" vid="" revisions_to_keep="0" '
            'rw="False" save_on_stop="False" snap_on_start="False"/>\n'
            '      </volume-config>\n    </domain>\n  </domains>\n'
            '</reliant-shard>\n').encode()


def test_a_thousand_shards_end_within_seconds(tmp_path):
    scene = split_scene(tmp_path)
    for index in range(1000):
        directory = scene.root / "zmany" / f"s{index:04d}"  # found after sflc_0_*
        (directory / "pool").mkdir(parents=True)
        (directory / SHARD_FILE).write_bytes(shard_file(index, directory))
    policy_dir = tmp_path / "policy.d"
    with deadline():
        result = operations.suture(str(scene.core), scene.roots, str(scene.merged),
                                   qubes_dir=str(scene.qubes_dir), policy_dir=str(policy_dir))
    refused = {p.shard for p in result.errors if "the most at once" in p.message}
    merged = {s.id for s in result.shards}
    assert len(merged) == MAX_MERGED_SHARDS and len(refused) == 1002 - MAX_MERGED_SHARDS
    assert merged | refused == {f"s{i:04d}" for i in range(1000)} | set(SHARD_QUBES)
    assert all_shard_qubes() <= merged_names(scene)
    many = {name for name in merged_names(scene) if name.startswith("q")}
    assert len(many) == MAX_MERGED_SHARDS - len(SHARD_QUBES)
    policy = (policy_dir / "20-reliant-isolation.policy").stat().st_size
    print(f"runtime policy for {MAX_MERGED_SHARDS} shards (+ core), 7 services: "
          f"{policy} bytes")
    assert policy < 8 << 20
    files = {p: p.read_bytes() for p in scene.root.rglob(SHARD_FILE)}
    with deadline():
        result = operations.dissect(str(scene.merged), str(scene.core), scene.roots,
                                    qubes_dir=str(scene.qubes_dir), final=True)
        report = operations.status(str(scene.core), str(scene.merged), scene.roots)
    assert not result.errors, result.problems[:3]
    assert {p: p.read_bytes() for p in files} == files  # nothing changed, nothing written
    assert sum(entry["merged"] for entry in report["shards"]) == MAX_MERGED_SHARDS
