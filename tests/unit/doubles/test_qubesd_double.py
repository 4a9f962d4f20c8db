"""The qubesd double behaves like qubesd where reliant-formula depends on it."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lock_holder import assert_waits_for_lockf
from qubesd import qubesd_double
from qubesd.qubesd_double import Refused, Store
from repo_paths import FIXTURES

DOUBLE = Path(qubesd_double.__file__)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "qubes.xml"
    shutil.copyfile(FIXTURES / "qubes-r4.3-core.xml", path)
    return path


@pytest.fixture
def store(store_path: Path, tmp_path: Path) -> Store:
    loaded = Store(str(store_path), str(tmp_path / "base"))
    loaded.load()
    return loaded


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# --- load refusals ------------------------------------------------------------------------
# Each kind of refusal once; tests/unit/qubesd_load checks the model the double uses against
# every verdict of the real loader.
@pytest.mark.parametrize(("old", "new", "message"), [
    ('<property name="name">vault</property>', '<property name="name">work</property>',
     "qube 'work': property name: another qube is already named 'work'"),
    ('<property name="qid">14</property>', '<property name="qid">2</property>',
     "property qid: another qube already has qid 2"),
    ('pool="vm-pool" vid="qubes_dom0/vm-vault-private"',
     'pool="sflc_0_1" vid="qubes_dom0/vm-vault-private"',
     "qube 'vault': volume private: pool 'sflc_0_1' is not defined"),
    ('<property name="template">whonix-workstation-18</property>',
     '<property name="template">gone</property>',
     "property template: names 'gone', which is no qube of the store"),
    ('<property name="clockvm">sys-net</property>', '<property name="clockvm">gone</property>',
     "store: global property clockvm: names 'gone', which is no qube of the store"),
    ("<domains>", "<domains", "qubes.xml"),
])
def test_load_refuses_what_qubesd_refuses(store_path: Path, old: str, new: str,
                                          message: str) -> None:
    _edit(store_path, old, new)
    with pytest.raises(Refused, match=re.escape(message)):
        Store(str(store_path)).load()


def test_load_refuses_entities(store_path: Path) -> None:
    text = store_path.read_text()
    store_path.write_text('<!DOCTYPE qubes [<!ENTITY x "sys-net">]>\n' + text)
    with pytest.raises(Refused, match="DOCTYPE"):
        Store(str(store_path)).load()


def test_load_refuses_missing_store(tmp_path: Path) -> None:
    with pytest.raises(Refused, match="is missing"):
        Store(str(tmp_path / "none.xml")).load()


def test_service_refuses_to_start_on_a_bad_store(store_path: Path, tmp_path: Path) -> None:
    _edit(store_path, '<property name="qid">14</property>', '<property name="qid">2</property>')
    result = subprocess.run([sys.executable, str(DOUBLE), "--socket", str(tmp_path / "s"),
                             "serve"], env={**os.environ, "QUBES_XML_PATH": str(store_path)},
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "refusing to start: qubesd does not load this store:" in result.stderr
    assert "already has qid 2" in result.stderr


# --- save -----------------------------------------------------------------------------------
def test_unchanged_store_is_rewritten_byte_for_byte(store: Store, store_path: Path) -> None:
    store.save()
    assert store_path.read_bytes() == (FIXTURES / "qubes-r4.3-core.xml").read_bytes()
    assert store_path.stat().st_mode & 0o777 == 0o660


def test_save_goes_through_a_fsynced_temp_file_renamed_over_the_store(
        store: Store, store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        calls.append(("rename", f"{src} -> {dst}"))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    store.save()
    temp = calls[0][1]
    assert os.path.dirname(temp) == str(store_path.parent)
    assert os.path.basename(temp).startswith("qubes.xml~")
    assert calls == [("fsync", temp), ("rename", f"{temp} -> {store_path}"),
                     ("fsync", str(store_path.parent))]


def test_failed_save_leaves_the_store_and_no_temp_file(
        store: Store, store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = store_path.read_bytes()
    store.add_domain("new", "StandaloneVM", "red", "vm-pool")

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        store.save()
    assert store_path.read_bytes() == before
    assert sorted(p.name for p in store_path.parent.iterdir()) == ["base", "qubes.xml"]


def test_save_refuses_when_the_file_changed_under_it(store: Store, store_path: Path) -> None:
    store.add_domain("new", "StandaloneVM", "red", "vm-pool")
    os.utime(store_path, ns=(0, 10**9))  # someone else wrote it
    before = store_path.read_bytes()
    with pytest.raises(Refused, match=r"Someone else modified qubes\.xml"):
        store.save()
    assert store_path.read_bytes() == before


def test_save_waits_for_the_lockf_lock(store: Store, store_path: Path) -> None:
    assert_waits_for_lockf(store_path, store.save)


def test_save_holds_lockf_while_writing(store: Store, store_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        probe = subprocess.run(
            [sys.executable, "-c",
             "import fcntl, sys; f = open(sys.argv[1], 'r+b')\n"
             "try:\n fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except OSError:\n sys.exit(3)", dst], check=False)
        seen.append(probe.returncode)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    store.save()
    assert seen == [3]
    with open(store_path, "r+b") as handle:  # released afterwards
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


# --- changes ----------------------------------------------------------------------------------
def test_new_qube_gets_the_lowest_unused_qid(store: Store, tmp_path: Path) -> None:
    assert store.add_domain("first", "AppVM", "red", "vm-pool", "debian-13-xfce") == 15
    store.remove_domain("anon-whonix")  # frees qid 14
    assert store.add_domain("second", "StandaloneVM", "blue", "varlibqubes") == 14
    assert store.add_domain("third", "TemplateVM", "black", "vm-pool") == 16
    store.save()
    reloaded = Store(store.path)
    reloaded.load()
    qids = {d["name"]: d["qid"] for d in reloaded.list_domains()}
    assert (qids["first"], qids["second"], qids["third"]) == (15, 14, 16)
    assert "anon-whonix" not in qids
    assert (tmp_path / "base/appvms/first").is_dir()
    assert (tmp_path / "base/vm-templates/third").is_dir()
    assert not (tmp_path / "base/appvms/anon-whonix").exists()


def test_firewall_goes_to_the_dom0_directory_not_the_store(store: Store, tmp_path: Path) -> None:
    store.add_domain("walled", "StandaloneVM", "red", "vm-pool")
    before = Path(store.path).read_bytes()
    store.set_firewall("walled", "drop")
    firewall = tmp_path / "base/appvms/walled/firewall.xml"
    assert firewall.read_text() == (
        '<firewall version="2">\n  <rules>\n    <rule>\n      <properties>\n'
        '        <property name="action">drop</property>\n      </properties>\n'
        "    </rule>\n  </rules>\n</firewall>\n")
    assert firewall.stat().st_mode & 0o777 == 0o664
    assert Path(store.path).read_bytes() == before


def test_appvm_volumes_follow_qubesd_layout(store: Store, tmp_path: Path) -> None:
    store.add_pool("sflc_0_1", "file-reflink", str(tmp_path / "sflc_0_1" / "pool"))
    assert (tmp_path / "sflc_0_1" / "pool").is_dir()
    with pytest.raises(Refused, match="already exists"):
        store.add_pool("sflc_0_1", "file", str(tmp_path))
    store.add_domain("hidden", "AppVM", "purple", "sflc_0_1", "debian-13-xfce")
    volumes = {v.get("name"): dict(v.attrib)
               for v in store.domain("hidden").iterfind("volume-config/volume")}
    assert volumes["root"]["pool"] == "vm-pool"
    assert volumes["root"]["source"] == "qubes_dom0/vm-debian-13-xfce-root"
    assert volumes["root"]["snap_on_start"] == "True"
    assert volumes["private"] == {
        "name": "private", "pool": "sflc_0_1", "vid": "appvms/hidden/private",
        "revisions_to_keep": "1", "rw": "True", "save_on_stop": "True",
        "snap_on_start": "False", "size": "2147483648"}
    assert volumes["volatile"]["pool"] == "sflc_0_1"
    assert volumes["kernel"]["pool"] == "linux-kernel"


def test_refusals_of_changes(store: Store) -> None:
    with pytest.raises(Refused, match="already exists"):
        store.add_domain("work", "AppVM", "red", "vm-pool", "debian-13-xfce")
    with pytest.raises(Refused, match="no such storage pool"):
        store.add_domain("x", "StandaloneVM", "red", "nowhere")
    with pytest.raises(Refused, match="in use by"):
        store.remove_domain("debian-13-xfce")
    with pytest.raises(Refused, match="no such domain"):
        store.set_property("work", "netvm", "gone")
    with pytest.raises(Refused, match="cannot be changed"):
        store.set_property("work", "qid", "99")


@pytest.mark.parametrize(("request_", "message"), [
    ({"op": "property", "name": "work", "key": "netvm", "value": "vault"},
     "qube 'work': property netvm: 'vault' does not provide network"),
    ({"op": "property", "name": "work", "key": "vcpus", "value": "0"},
     "qube 'work': property vcpus: '0' must be at least 1"),
    ({"op": "tag", "name": "work", "tag": "bad tag"}, "qube 'work': tag 'bad tag'"),
    ({"op": "feature", "name": "work", "key": "a/b", "value": "1"}, "qube 'work': feature 'a/b'"),
])
def test_a_change_after_which_qubesd_would_not_load_is_refused_and_undone(
        store: Store, store_path: Path, request_: dict, message: str) -> None:
    """qubesd's setters and the Admin API refuse such values when they are set."""
    before = store_path.read_bytes()
    with pytest.raises(Refused, match="qubesd refuses this change: " + re.escape(message)):
        qubesd_double.handle(store, request_)
    store.save()
    assert store_path.read_bytes() == before


def test_properties_features_tags(store: Store) -> None:
    store.set_property("work", "netvm", "")
    store.set_property(None, "default_netvm", "sys-net")
    store.set_feature("work", "service.cups", "1")
    store.set_tag("work", "project-x", True)
    store.set_tag("work", "guivm-dom0", False)
    store.save()
    text = Path(store.path).read_text()
    assert '<property name="default_netvm">sys-net</property>' in text
    work = store.domain("work")
    assert work.find("properties/property[@name='netvm']").text == ""
    assert work.find("features/feature[@name='service.cups']").text == "1"
    assert [t.get("name") for t in work.iterfind("tags/tag")] == ["audiovm-dom0", "project-x"]
    store.set_feature("work", "service.cups", None)
    assert work.find("features/feature") is None


# --- the service and its client ---------------------------------------------------------------
def start_service(store_path: Path, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """The double serving `store_path`, and its socket once it is listening."""
    sock = str(tmp_path / "qubesd.sock")
    env = {**os.environ, "QUBES_XML_PATH": str(store_path),
           "QUBESD_DOUBLE_BASE_DIR": str(tmp_path / "base")}
    service = subprocess.Popen([sys.executable, str(DOUBLE), "--socket", sock, "serve"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    return service, sock


def test_service_answers_requests_and_saves_on_sigterm(store_path: Path, tmp_path: Path) -> None:
    service, sock = start_service(store_path, tmp_path)
    try:
        def ctl(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, str(DOUBLE), "--socket", sock, "ctl", *args],
                                  capture_output=True, text=True, timeout=30, check=False)

        assert ctl("add", "fresh", "--template", "debian-13-xfce", "--pool", "vm-pool",
                   "--label", "green").stdout.strip() == "15"
        saved = store_path.read_text()  # each change is saved at once
        assert '<property name="name">fresh</property>' in saved
        refused = ctl("remove", "debian-13-xfce")
        assert refused.returncode == 1
        assert "in use by" in refused.stderr
        assert ctl("feature", "fresh", "menu-items", "x.desktop").returncode == 0
        # Someone edits the store under the running double: its next save must refuse.
        os.utime(store_path, ns=(0, 10**9))
        assert "Someone else modified" in ctl("tag", "fresh", "t").stderr
    finally:
        service.send_signal(signal.SIGTERM)
        _, err = service.communicate(timeout=30)
    assert service.returncode == 1
    assert "save at exit failed: Someone else modified" in err
    assert not os.path.exists(sock)


def test_sigterm_saves(store_path: Path, tmp_path: Path) -> None:
    service, _ = start_service(store_path, tmp_path)
    mtime = store_path.stat().st_mtime_ns
    service.send_signal(signal.SIGTERM)
    out, err = service.communicate(timeout=30)
    assert service.returncode == 0, err
    assert "saved" in out
    assert store_path.stat().st_mtime_ns != mtime
    assert store_path.read_bytes() == (FIXTURES / "qubes-r4.3-core.xml").read_bytes()
