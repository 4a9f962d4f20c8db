"""Kitchen suite `shards`: after converge, two shards are declared on "open volumes"
under /run/shufflecake, highstate creates them, qubes are created and changed through
the running qubesd (double) on the merged store, qubesd stops, and the files on disk
hold exactly what they must: core its qubes, each shard its own, and nothing of a
shard is anywhere outside it.

The tests run in file order and share the container's state.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from reliant import store
from reliant.shards.files import Shard, read_metadata
from reliant.shards.files import identifiers as shard_identifiers
from reliant.shards.records import qube_name, qube_qid
from reliant.vocab import CORE_TAG, shard_tag

ROOT = Path(__file__).resolve().parents[3]

CORE, MERGED = "/var/lib/qubes/qubes.xml", "/run/reliant/qubes.xml"
SHARDS = {  # directory -> (declaration, pool, qubes created in it)
    "/run/shufflecake/sflc_0_1": ({"qid_range": "1000-1499", "id": "hidden-alpha"},
                                  "alphapool", {"alpha-vpn", "alpha-work"}),
    "/run/shufflecake/sflc_0_2": ({"qid_range": "1500-1999", "id": "hidden-beta",
                                   "depends_on": ["../sflc_0_1"]},
                                  "betapool", {"beta-notes", "beta-mail"}),
}
CORE_QUBES = {"dom0", "anon-whonix", "debian-13-xfce", "default-dvm", "fedora-42-xfce",
              "sys-firewall", "sys-net", "sys-usb", "sys-whonix", "untrusted", "vault",
              "whonix-gateway-18", "whonix-workstation-18", "work", "personal"}
PERSISTENT = ("/etc", "/var", "/srv", "/usr", "/opt", "/root", "/home", "/tmp", "/boot")


def run(host, command: str) -> str:
    result = host.run(command)
    assert result.rc == 0, f"{command}: exit {result.rc}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def ctl(host, *args: str) -> str:
    return run(host, "qubesd-double ctl " + " ".join(shlex.quote(a) for a in args))


def put(host, path: str, data: bytes) -> None:
    with tempfile.NamedTemporaryFile() as tmp:
        tmp.write(data)
        tmp.flush()
        subprocess.run(["podman", "cp", tmp.name, f"{host.backend.name}:{path}"], check=True)


def names(root) -> set[str]:
    return {qube_name(d) for d in root.iterfind("domains/domain")}


def shard(host, directory: str) -> Shard:
    data = host.file(f"{directory}/domains.xml").content
    sid, qids, deps = read_metadata(data, directory)
    return Shard(directory, sid, qids, deps, data=data)


def highstate(host) -> dict:
    out = run(host, "salt-call --local --retcode-passthrough --out json state.highstate")
    return json.loads(out)["local"]


def test_converge_put_qubesd_on_the_merged_store(host):
    assert host.file("/usr/bin/reliant-shard").mode == 0o755
    assert host.file("/usr/lib/reliant/reliant/operations.py").exists
    config = json.loads(host.file("/etc/reliant/reliant.json").content_string)
    assert (config["merged"], config["roots"], config["policy_dir"]) == (
        MERGED, ["/run/shufflecake"], "")
    assert host.service("qubesd").is_running
    assert "QUBES_XML_PATH=/run/reliant/qubes.xml" in run(
        host, "systemctl show -p Environment qubesd")
    assert run(host, "systemctl is-active reliant-shard-dissect.path").strip() == "active"
    assert run(host, "systemd-analyze verify qubesd.service reliant-shard-dissect.service "
                     "reliant-shard-dissect.path 2>&1") == ""
    merged = store.parse(host.file(MERGED).content, MERGED)
    assert names(merged) == CORE_QUBES
    listed = json.loads(ctl(host, "list"))
    assert {q["name"] for q in listed} == CORE_QUBES
    assert all(CORE_TAG in q["tags"] for q in listed if q["name"] != "dom0")


def test_highstate_creates_the_shards_declared_on_the_volumes(host):
    for directory, (declaration, _, _) in SHARDS.items():
        run(host, f"mkdir -p {directory}")
        put(host, f"{directory}/reliant-shard.json", json.dumps(declaration).encode())
    states = highstate(host)
    (declared,) = [ret for ret in states.values() if ret["__id__"] == "reliant-shards-declared"]
    assert declared["changes"] == {"shards": {"created": 2}}
    assert "hidden" not in json.dumps(declared) and "sflc" not in json.dumps(declared)
    assert [ret["__id__"] for ret in highstate(host).values() if ret["changes"]] == []
    for directory, (declaration, _, _) in SHARDS.items():
        made = shard(host, directory)
        assert (made.id, "{}-{}".format(*made.qid_range)) == (
            declaration["id"], declaration["qid_range"])
    assert shard(host, "/run/shufflecake/sflc_0_2").depends_on == ("hidden-alpha",)


def test_qubes_made_through_qubesd_land_in_their_shards(host):
    run(host, "reliant-shard attach")  # restart qubesd: the new shards are sutured
    for directory, (_, pool, _) in SHARDS.items():
        ctl(host, "pool", pool, "--dir-path", f"{directory}/pool")
    ctl(host, "add", "alpha-vpn", "--template", "debian-13-xfce", "--pool", "alphapool",
        "--label", "purple")
    ctl(host, "prop", "alpha-vpn", "provides_network", "True")  # qubesd refuses it as netvm else
    ctl(host, "add", "alpha-work", "--template", "debian-13-xfce", "--pool", "alphapool",
        "--label", "purple")
    ctl(host, "prop", "alpha-vpn", "provides_network", "True")  # qubesd refuses a netvm without
    ctl(host, "prop", "alpha-work", "netvm", "alpha-vpn")
    ctl(host, "feature", "alpha-work", "service.cups", "1")
    ctl(host, "tag", "alpha-work", "project-x")
    ctl(host, "firewall", "alpha-work", "drop")
    ctl(host, "add", "beta-notes", "--class", "StandaloneVM", "--pool", "betapool",
        "--label", "black")
    ctl(host, "add", "beta-mail", "--template", "debian-13-xfce", "--pool", "betapool",
        "--label", "black")
    ctl(host, "prop", "beta-mail", "netvm", "alpha-vpn")  # a declared dependency
    ctl(host, "add", "core-new", "--template", "debian-13-xfce", "--pool", "vm-pool",
        "--label", "green")
    ctl(host, "prop", "work", "label", "blue")
    # Every save is dissected by the path unit while qubesd runs.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(names(shard(host, d).root) == qubes for d, (_, _, qubes) in SHARDS.items()):
            break
        time.sleep(0.5)
    assert {d: names(shard(host, d).root) for d in SHARDS} == {
        d: qubes for d, (_, _, qubes) in SHARDS.items()}


def test_a_save_reaches_its_shard_within_seconds(host):
    """What power loss could take: the time from a qubesd save to the shard file."""
    file = "/run/shufflecake/sflc_0_1/domains.xml"
    for label in ("orange", "yellow", "purple"):
        started = time.monotonic()
        ctl(host, "prop", "alpha-work", "label", label)
        while f'<property name="label">{label}</property>' not in host.file(
                file).content_string:
            assert time.monotonic() - started < 5, f"label {label} not dissected in 5 s"
            time.sleep(0.05)
        print(f"save -> shard file: {time.monotonic() - started:.2f} s")


def test_qubesd_stops(host):
    run(host, "systemctl stop qubesd")


def test_core_holds_exactly_the_core_qubes(host):
    core = store.parse(host.file(CORE).content, CORE)
    assert names(core) == CORE_QUBES | {"core-new"}
    assert {p.get("name") for p in core.iterfind("pools/pool")} == {
        "varlibqubes", "linux-kernel", "vm-pool"}
    work = [d for d in core.iterfind("domains/domain") if qube_name(d) == "work"]
    assert work[0].find("properties/property[@name='label']").text == "blue"
    assert b"reliant-" not in host.file(CORE).content


def test_each_shard_holds_exactly_its_own(host):
    for directory, (_, pool, qubes) in SHARDS.items():
        found = shard(host, directory)
        assert names(found.root) == qubes
        assert found.pools == [pool]
        first, last = found.qid_range
        assert all(first <= qube_qid(d) <= last for d in found.domains)
        assert b"reliant-shard-" not in found.data and b"reliant-core" not in found.data
        for name in qubes:
            assert host.file(f"{directory}/dom0/appvms/{name}").is_directory
            assert not host.file(f"/var/lib/qubes/appvms/{name}").exists
    work = next(d for d in shard(host, "/run/shufflecake/sflc_0_1").domains
                if qube_name(d) == "alpha-work")
    assert work.find("properties/property[@name='netvm']").text == "alpha-vpn"
    assert work.find("features/feature[@name='service.cups']").text == "1"
    assert "project-x" in {t.get("name") for t in work.iterfind("tags/tag")}
    firewall = "/run/shufflecake/sflc_0_1/dom0/appvms/alpha-work/firewall.xml"
    assert b'<property name="action">drop</property>' in host.file(firewall).content


def identifiers(host) -> set[str]:
    found: set[str] = set()
    for directory in SHARDS:
        found |= shard_identifiers(shard(host, directory))
    return found | {"sflc_0_1", "sflc_0_2"}


def assert_no_trace_outside_the_shards(host) -> None:
    secrets = identifiers(host)
    put(host, "/run/reliant-test-patterns", "\n".join(sorted(secrets)).encode() + b"\n")
    dirs = " ".join(PERSISTENT)
    contents = host.run(f"grep -rlsF -f /run/reliant-test-patterns $(ls -d {dirs} "
                        "2>/dev/null)")
    assert contents.rc == 1, f"files holding a shard identifier:\n{contents.stdout}"
    paths = host.run(f"find $(ls -d {dirs} 2>/dev/null) -xdev 2>/dev/null "
                     "| grep -F -f /run/reliant-test-patterns")
    assert paths.rc == 1, f"paths naming a shard identifier:\n{paths.stdout}"


def test_nothing_of_a_shard_is_outside_it(host):
    assert_no_trace_outside_the_shards(host)


def test_restart_sutures_them_back_and_changes_nothing(host):
    before = {d: host.file(f"{d}/domains.xml").content for d in SHARDS}
    core = host.file(CORE).content
    run(host, "systemctl start qubesd")
    listed = {q["name"]: q for q in json.loads(ctl(host, "list"))}
    for declaration, _, qubes in SHARDS.values():
        tag = shard_tag(declaration["id"])
        assert {name for name, q in listed.items() if tag in q["tags"]} == qubes
        assert all(host.file(f"/var/lib/qubes/appvms/{name}").is_directory for name in qubes)
    assert b"drop" in host.file("/var/lib/qubes/appvms/alpha-work/firewall.xml").content
    run(host, "systemctl stop qubesd")
    assert {d: host.file(f"{d}/domains.xml").content for d in SHARDS} == before
    assert host.file(CORE).content == core
    assert_no_trace_outside_the_shards(host)


@pytest.mark.parametrize("run_number", [1, 2])
def test_clean_removes_the_runtime_pieces_and_keeps_the_shards(host, run_number):
    run(host, "systemctl start qubesd")
    memo = Path(MERGED).parent / "dissect.memo"
    assert host.file(str(memo)).is_directory == (run_number == 1)  # dissect read in chunks
    out = json.loads(run(host, "salt-call --local --retcode-passthrough --out json "
                               "state.apply reliant.shards.clean"))["local"]
    changed = [ret["__id__"] for ret in out.values() if ret["changes"]]
    assert bool(changed) == (run_number == 1), changed
    for path in ("/etc/systemd/system/qubesd.service.d/reliant-shards.conf",
                 "/etc/systemd/system/reliant-shard-dissect.path", "/usr/bin/reliant-shard",
                 "/usr/lib/reliant", "/etc/reliant/reliant.json", MERGED):
        assert not host.file(path).exists, path
    assert host.service("qubesd").is_running
    assert "QUBES_XML_PATH" not in run(host, "systemctl show -p Environment qubesd")
    assert {q["name"] for q in json.loads(ctl(host, "list"))} == CORE_QUBES | {"core-new"}
    for directory, (_, _, qubes) in SHARDS.items():
        assert names(shard(host, directory).root) == qubes
    assert_no_trace_outside_the_shards(host)
    rundir = Path(MERGED).parent  # nothing left in RAM that knows a shard qube
    left = run(host, f"find {rundir} -xdev -maxdepth 2 -type f -print0 | xargs -0r grep -lsF "
                     "-f /run/reliant-test-patterns || true")
    assert not left, f"runtime files holding a shard identifier:\n{left}"
