"""reliant.store: hardened parse, qubesd-identical serialization, atomic locked writes."""

import os
import stat

import pytest
from lock_holder import assert_waits_for_lockf
from reliant import store
from repo_paths import FIXTURES


@pytest.mark.parametrize("name", ["qubes-r4.3-core.xml", "qubes-r4.3-merged.xml"])
def test_serialize_reproduces_qubesd_bytes(name):
    data = (FIXTURES / name).read_bytes()
    assert store.serialize(store.parse(data, name)) == data


@pytest.mark.parametrize(
    "data, words",
    [
        (b"<qubes><domains>", "malformed XML"),
        (b'<!DOCTYPE q [<!ENTITY a "aaaa">]><qubes>&a;</qubes>', "DTD or entity"),
        (b'<!DOCTYPE qubes SYSTEM "http://example.org/x.dtd"><qubes/>', "DTD or entity"),
        (b"<qubes><?php evil ?></qubes>", "ProcessingInstruction"),
        (b"<qubes>&undefined;</qubes>", "malformed XML"),
        # UTF-16 hides "<!" and "<?" from a byte search: the parsed tree is checked too
        ('<!DOCTYPE q [<!ENTITY a "aaaa">]><qubes/>'.encode("utf-16"), "DTD or entity"),
        ("<qubes><?php evil ?></qubes>".encode("utf-16"), "ProcessingInstruction"),
    ],
)
def test_parse_rejects_hostile_input_naming_the_source(data, words):
    with pytest.raises(store.StoreError, match=words) as info:
        store.parse(data, "/x/shard.xml")
    assert str(info.value).startswith("/x/shard.xml: ")


def test_read_enforces_the_size_limit(tmp_path):
    path = tmp_path / "big.xml"
    path.write_bytes(b"<qubes>" + b" " * 100 + b"</qubes>")
    with pytest.raises(store.StoreError, match="limit of 50"):
        store.read(str(path), max_bytes=50)


def test_read_missing_file_names_it(tmp_path):
    with pytest.raises(store.StoreError, match="no such file"):
        store.read(str(tmp_path / "absent.xml"))


def test_write_is_atomic_with_mode_and_skips_identical_content(tmp_path):
    path = tmp_path / "qubes.xml"
    assert store.write(str(path), b"<qubes/>\n", mode=0o660) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    os.utime(path, (1, 1))
    assert store.write(str(path), b"<qubes/>\n") is False
    assert path.stat().st_mtime == 1
    assert store.write(str(path), b"<qubes></qubes>\n") is True
    assert path.read_bytes() == b"<qubes></qubes>\n"
    assert sorted(os.listdir(tmp_path)) == ["qubes.xml"]


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "qubes.xml"
    path.write_bytes(b"<old/>\n")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(store.StoreError, match=r"qubes\.xml: cannot write: No space"):
        store.write(str(path), b"<new/>\n")
    assert path.read_bytes() == b"<old/>\n"
    assert os.listdir(tmp_path) == ["qubes.xml"]


def test_write_waits_for_lockf_held_by_another_process(tmp_path):
    path = tmp_path / "qubes.xml"
    path.write_bytes(b"<old/>\n")
    assert_waits_for_lockf(path, store.write, str(path), b"<new/>\n")
    assert path.read_bytes() == b"<new/>\n"


def test_a_symlinked_store_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"<secret/>\n")
    link = tmp_path / "qubes.xml"
    link.symlink_to(target)
    with pytest.raises(store.StoreError, match=r"qubes\.xml: cannot read"):
        store.read(str(link))
    with pytest.raises(store.StoreError, match=r"qubes\.xml: cannot write"):
        store.write(str(link), b"<new/>\n")
    assert target.read_bytes() == b"<secret/>\n"
