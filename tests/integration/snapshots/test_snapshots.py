"""Suite `snapshots`: reliant's create-snapshot installed, run, verified, and cleaned away.

The container has no qubes-core-dom0: the module fixture plants stand-ins (written
here, no Qubes file) for the stock /usr/lib/qubes/create-snapshot and for
qubes/storage/file.py, enables reliant.snapshots in pillar with their checksums
accepted, and runs the highstates. The kernel has no device-mapper: the
installed script runs with the dmsetup double (tests/doubles/dmsetup) first on
PATH. The tests run in file order; the last one runs reliant.snapshots.clean.
Every loop device made here is detached at the end (they are the host's).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
OURS = (ROOT / "salt/reliant/files/snapshots/create-snapshot").read_bytes()
SCRIPT = "/usr/lib/qubes/create-snapshot"
SITE = "/usr/lib/python3.11/site-packages"
FILE_PY = f"{SITE}/qubes/storage/file.py"
STOCK_STAND_IN = b"#!/bin/bash\n# kitchen stand-in for the stock create-snapshot (not Qubes code)\nexit 0\n"
FILE_PY_STAND_IN = b"# kitchen stand-in for qubes/storage/file.py (not Qubes code)\n"
PILLAR = "/srv/pillar/base/reliant/init.sls"
DOUBLES = "/usr/local/lib/reliant-test"
BACKUP = "/var/lib/reliant/snapshots"
WORK = "/srv/snaptest"
GIB = 1 << 30


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(host, path: str, data: bytes, mode: str) -> None:
    encoded = base64.b64encode(data).decode()
    host.run_expect([0], f"mkdir -p $(dirname {path}) && echo {encoded} | base64 -d > {path} "
                         f"&& chmod {mode} {path} && touch -d '2024-01-02 03:04:05' {path}")


def highstate(host, *args: str) -> dict:
    result = host.run("salt-call --local --retcode-passthrough --out json state.highstate "
                      + " ".join(args))
    assert result.rc == 0, result.stdout + result.stderr
    return json.loads(result.stdout)["local"]


def changed(states: dict) -> dict:
    return {ret["__id__"]: ret["changes"] for ret in states.values()
            if ret["changes"] or ret["result"] is None}


def checksums(host) -> str:
    """sha256, mode and mtime of the script, and what site-packages and the backup hold."""
    return host.check_output(
        f"stat -c '%n %a %Y' {SCRIPT} && sha256sum {SCRIPT} && "
        f"find {SITE} {BACKUP} -printf '%p %m\\n' 2>/dev/null | sort || true")


def loops(host) -> dict[str, dict]:
    listed = json.loads(host.check_output("losetup --list --json --output NAME,RO,BACK-FILE")
                        or '{"loopdevices": []}')["loopdevices"]
    return {loop["back-file"]: loop for loop in listed
            if str(loop["back-file"]).startswith(WORK)}


def qubesd_main_pid(host) -> str:
    return host.check_output("systemctl show --property MainPID --value qubesd.service")


def run_script(host, *args: str):
    return host.run(f"PATH={DOUBLES}:$PATH {SCRIPT} {' '.join(args)}")


@pytest.fixture(scope="module")
def installed(host):
    put(host, SCRIPT, STOCK_STAND_IN, "0755")
    put(host, FILE_PY, FILE_PY_STAND_IN, "0644")
    put(host, f"{DOUBLES}/dmsetup", (ROOT / "tests/doubles/dmsetup").read_bytes(), "0755")
    before = checksums(host)
    pillar = yaml.safe_load(host.file(PILLAR).content_string)
    pillar["reliant"]["snapshots"] = {
        "enabled": True, "extra_known_sha256": [sha(STOCK_STAND_IN), sha(FILE_PY_STAND_IN)]}
    host.run_expect([0], f"cat > {PILLAR} <<'EOF'\n{yaml.safe_dump(pillar)}EOF")
    qubesd_pid = qubesd_main_pid(host)
    first = highstate(host)
    yield {"before": before, "first": first, "qubesd_pid": qubesd_pid}
    for loop in loops(host).values():
        host.run(f"losetup --detach {loop['name']}")
    host.run(f"umount {WORK}/merged {WORK}/upper")
    assert not loops(host), "loop devices left attached"


def test_highstate_installs_and_converges(host, installed):
    assert set(changed(installed["first"])) == {"reliant-snapshots-installed",
                                                 "reliant-snapshots-extension",
                                                 "reliant-snapshots-qubesd-restart"}
    assert qubesd_main_pid(host) != installed["qubesd_pid"], "qubesd restarted: extension loaded"
    assert changed(highstate(host)) == {}, "a second highstate changes nothing"
    assert changed(highstate(host, "test=True")) == {}, "test=True predicts nothing"


def test_installed_files_are_ours_and_intact(host, installed):
    assert host.file(SCRIPT).sha256sum == sha(OURS)
    assert host.file(SCRIPT).mode == 0o755
    result = json.loads(host.check_output("salt-call --local --out json reliant_snapshot.verify"))
    assert result["local"] == []
    entry_points = host.file(f"{SITE}/reliant_snapshots_ext-0.1.0.dist-info/entry_points.txt")
    assert entry_points.content_string.startswith("[qubes.ext]\n")


def test_template_image_is_attached_read_only_without_copy_up(host, installed):
    """A 3 GiB sparse template image holding 96 MiB, on overlayfs over a 64 MiB tmpfs."""
    host.run_expect([0], f"""set -e
mkdir -p {WORK}/lower {WORK}/upper {WORK}/merged
truncate -s 3G {WORK}/lower/root.img
for i in $(seq 0 23); do
  dd if=/dev/urandom of={WORK}/lower/root.img bs=4M count=1 seek=$((i * 20)) conv=notrunc status=none
done
mount -t tmpfs -o size=64m kitchen-upper {WORK}/upper
mkdir {WORK}/upper/data {WORK}/upper/work
mount -t overlay kitchen-ovl {WORK}/merged \
  -o lowerdir={WORK}/lower,upperdir={WORK}/upper/data,workdir={WORK}/upper/work
truncate -s 3G {WORK}/merged/root-cow.img {WORK}/merged/app-root-cow.img""")
    used = f"echo $(( $(stat -f -c '(%b-%f)*%S' {WORK}/upper) ))"
    before = int(host.check_output(used))
    merged = f"{WORK}/merged"
    done = run_script(host, "snapshot-app", f"{merged}/root.img", f"{merged}/root-cow.img",
                      f"{merged}/app-root-cow.img")
    assert done.rc == 0, done.stderr
    after = int(host.check_output(used))
    assert after == before, f"upper layer went from {before} to {after} bytes"
    assert not host.file(f"{WORK}/upper/data/root.img").exists
    attached = loops(host)
    assert attached[f"{merged}/root.img"]["ro"] is True
    for cow in ("root-cow.img", "app-root-cow.img"):
        assert attached[f"{merged}/{cow}"]["ro"] is False
    cow_loop = attached[f"{merged}/app-root-cow.img"]["name"]
    host.run_expect([0], f"dd if=/dev/zero of={cow_loop} bs=4096 count=1 oflag=direct "
                         "conv=notrunc status=none")
    host.run_expect([1], f"dd if=/dev/zero of={attached[f'{merged}/root.img']['name']} bs=4096 "
                         "count=1 oflag=direct conv=notrunc status=none")
    assert host.file("/dev/mapper/snapshot-app").is_symlink


def test_three_argument_form_still_attaches_read_write(host, installed):
    host.run_expect([0], f"mkdir -p {WORK}/plain && truncate -s 64M {WORK}/plain/private.img "
                         f"{WORK}/plain/private-cow.img")
    done = run_script(host, "origin-private", f"{WORK}/plain/private.img",
                      f"{WORK}/plain/private-cow.img")
    assert done.rc == 0, done.stderr
    attached = loops(host)
    assert attached[f"{WORK}/plain/private.img"]["ro"] is False
    assert attached[f"{WORK}/plain/private-cow.img"]["ro"] is False
    calls = [json.loads(line)["argv"] for line in
             host.file("/run/dmsetup-double/calls.log").content_string.splitlines()]
    assert calls[-1] == ["create", "origin-private", "--table",
                         f"0 {64 * 2048} snapshot-origin /dev/fd/3"]


QUBESD_START = """
import sys
from types import SimpleNamespace as NS
import qubes.ext, qubes.vm
loaded = qubes.ext.get_extensions()  # as qubesd: entry points of group qubes.ext
print(sorted(type(ext).__name__ for ext in loaded))
qube = qubes.vm.LocalVM(None, "template")
qube.events_enabled = True
qube.volumes = {"root": NS(path=sys.argv[1], rw=False, pool=NS(driver="file"),
                           save_on_stop=True, snap_on_start=False)}
qube.fire_event("domain-pre-start", pre_event=True, start_guid=True, mem_required=None)
"""


def test_installed_extension_makes_the_installed_script_attach_read_only(host, installed):
    """The installed pair: qubesd (its qubes.ext double) loads the extension by its entry
    point, the extension marks an rw=False volume, the script attaches it read-only."""
    doubles = ROOT / "tests/doubles/qubes_ext"
    with tarfile.open(fileobj=(buffer := io.BytesIO()), mode="w:gz") as tar:
        tar.add(doubles / "qubes", arcname="qubes",
                filter=lambda info: None if "__pycache__" in info.name else info)
    put(host, f"{DOUBLES}/qubes_ext.tar.gz", buffer.getvalue(), "0644")
    put(host, f"{DOUBLES}/qubesd_start.py", QUBESD_START.encode(), "0644")
    plain = f"{WORK}/ro"
    host.run_expect([0], f"mkdir -p {DOUBLES}/qubes_ext {plain} && "
                         f"tar -xzf {DOUBLES}/qubes_ext.tar.gz -C {DOUBLES}/qubes_ext && "
                         f"truncate -s 64M {plain}/root.img {plain}/root-cow.img")
    started = host.run(f"PYTHONPATH={DOUBLES}/qubes_ext:{SITE} python3 "
                       f"{DOUBLES}/qubesd_start.py {plain}/root.img")
    assert started.rc == 0, started.stderr
    assert started.stdout.strip() == "['ReadOnlyVolumes']"
    marks = host.check_output("ls /run/reliant/read-only").split()
    assert marks == [host.check_output(f"stat -L --printf=%D:%i {plain}/root.img")]
    done = run_script(host, "origin-template", f"{plain}/root.img", f"{plain}/root-cow.img")
    assert done.rc == 0, done.stderr
    attached = loops(host)
    assert attached[f"{plain}/root.img"]["ro"] is True
    assert attached[f"{plain}/root-cow.img"]["ro"] is False
    assert host.check_output("ls -A /run/reliant/read-only") == "", "the mark is consumed"
    calls = [json.loads(line)["argv"] for line in
             host.file("/run/dmsetup-double/calls.log").content_string.splitlines()]
    assert calls[-1] == ["create", "origin-template", "--readonly", "--table",
                         f"0 {64 * 2048} snapshot-origin /dev/fd/3"]


def test_clean_restores_the_dom0_files_exactly(host, installed):
    result = host.run("salt-call --local --retcode-passthrough --out json state.apply "
                      "reliant.snapshots.clean")
    assert result.rc == 0, result.stdout + result.stderr
    states = {ret["__id__"]: ret for ret in json.loads(result.stdout)["local"].values()}
    assert states["reliant-snapshots-removed"]["changes"][SCRIPT] == "original restored"
    assert states["reliant-snapshots-clean-qubesd-restart"]["changes"], "extension unloaded"
    assert checksums(host) == installed["before"]
    again = host.run("salt-call --local --retcode-passthrough --out json state.apply "
                     "reliant.snapshots.clean")
    assert changed(json.loads(again.stdout)["local"]) == {}
