"""Kitchen suite `deniability`: the container's root is an overlay without
/run/systemd/volatile-root, i.e. not a volatile dom0. `attach` is refused there, naming
the boot entry; with reliant:shards:require_volatile false it merges and `status` warns.
Then a shard qube with autostart, started once (libvirt defines it), is detached: no
file under /etc or /var names it and the audit is clean; attached again, its autostart
link is back.

The tests run in file order and share the container's state.
"""

from __future__ import annotations

import json
import shlex
import time

from reliant import store
from reliant.shards.files import Shard, identifiers, read_metadata
from reliant.shards.records import qube_name

SHARD_DIR = "/run/shufflecake/sflc_0_1"
QUBE, POOL = "hidden-auto", "hiddenpool"
TITLE = "Qubes, volatile dom0 (forgets every change at shutdown)"
LINK = f"/etc/systemd/system/multi-user.target.wants/qubes-vm@{QUBE}.service"
UNIT_TEMPLATE = "/usr/lib/systemd/system/qubes-vm@.service"
DEFINITION = f"/etc/libvirt/libxl/{QUBE}.xml"


def run(host, command: str, rc: int = 0):
    result = host.run(command)
    assert result.rc == rc, f"{command}: exit {result.rc}\n{result.stdout}\n{result.stderr}"
    return result


def ctl(host, *args: str) -> str:
    return run(host, "qubesd-double ctl " + " ".join(shlex.quote(a) for a in args)).stdout


def shard(host) -> Shard:
    data = host.file(f"{SHARD_DIR}/domains.xml").content
    sid, qids, deps = read_metadata(data, SHARD_DIR)
    return Shard(SHARD_DIR, sid, qids, deps, data=data)


def merged_names(host) -> set[str]:
    root = store.parse(host.file("/run/reliant/qubes.xml").content, "merged")
    return {qube_name(d) for d in root.iterfind("domains/domain")}


def test_attach_is_refused_off_the_volatile_root(host):
    config = json.loads(host.file("/etc/reliant/reliant.json").content_string)
    assert (config["require_volatile"], config["volatile_title"]) == (True, TITLE)
    assert not host.file("/run/systemd/volatile-root").exists
    run(host, f"reliant-shard init {SHARD_DIR} --qid-range 1000-1499 --id deniable")
    refused = run(host, "reliant-shard attach", rc=1)
    assert refused.stderr.startswith("reliant-shard: refused: dom0 does not run on the "
                                     "volatile root (/ is ")
    assert f"Reboot and choose the boot entry '{TITLE}'" in refused.stderr
    assert "reliant:shards:require_volatile: false" in refused.stderr
    # qubesd (re)starts all the same, on core alone
    run(host, "systemctl restart qubesd")
    assert host.service("qubesd").is_running
    report = json.loads(run(host, "reliant-shard status --json").stdout)
    assert [s["merged"] for s in report["shards"]] == [False]
    assert any(p["message"].startswith("shards are not merged: dom0 does not run on the "
                                       "volatile root") for p in report["problems"])


def test_require_volatile_false_merges_and_status_warns(host):
    pillar = json.dumps({"reliant": {"shards": {"require_volatile": False}}})
    run(host, "salt-call --local --retcode-passthrough --out json state.apply "
              f"reliant.shards pillar={shlex.quote(pillar)}")
    assert json.loads(host.file("/etc/reliant/reliant.json").content_string)[
        "require_volatile"] is False
    attached = run(host, "reliant-shard attach")
    assert "reliant-shard: warning: dom0 does not run on the volatile root" in attached.stderr
    assert "reliant:shards:require_volatile is false" in attached.stderr
    status = run(host, "reliant-shard status").stdout
    assert "shard deniable at /run/shufflecake/sflc_0_1: merged" in status
    assert "warning: dom0 does not run on the volatile root" in status
    assert f"boot the entry '{TITLE}' to keep them in RAM" in status


def test_a_shard_qube_with_autostart_leaves_nothing_in_etc_or_var(host):
    ctl(host, "pool", POOL, "--dir-path", f"{SHARD_DIR}/pool")
    # a StandaloneVM: all its volumes in the shard's pool (no root snapshot in core)
    ctl(host, "add", QUBE, "--class", "StandaloneVM", "--pool", POOL, "--label", "black")
    ctl(host, "prop", QUBE, "autostart", "True")
    # what qubesd's autostart setter runs (qubes/vm/qubesvm.py), and what libvirtd writes
    # when qubesd starts the qube (defineXML): the qubesd double does neither
    run(host, f"ln -sf {UNIT_TEMPLATE} {LINK}")
    run(host, f"mkdir -p /etc/libvirt/libxl && echo \"<domain><name>{QUBE}</name>"
              f"</domain>\" > {DEFINITION}")
    deadline = time.monotonic() + 30
    while QUBE not in {qube_name(d) for d in shard(host).domains}:
        assert time.monotonic() < deadline, "the new qube was not dissected into its shard"
        time.sleep(0.5)
    # xl double: no qube runs (detach asks xl list)
    run(host, "cat > /usr/local/bin/xl <<'EOF'\n#!/bin/sh\n"
              "echo 'Name ID Mem VCPUs State Time(s)'\necho 'Domain-0 0 4096 4 r----- 1.0'\n"
              "EOF\nchmod 0755 /usr/local/bin/xl")
    run(host, "reliant-shard detach")
    assert not host.file(LINK).exists and not host.file(DEFINITION).exists
    secrets = identifiers(shard(host)) | {QUBE}
    patterns = "\n".join(sorted(secrets)) + "\n"
    run(host, f"printf %s {shlex.quote(patterns)} > /run/deniability-patterns")
    contents = host.run("grep -rlsF -f /run/deniability-patterns /etc /var")
    assert contents.rc == 1, f"files naming the shard:\n{contents.stdout}"
    paths = host.run("find /etc /var -xdev | grep -F -f /run/deniability-patterns")
    assert paths.rc == 1, f"paths naming the shard:\n{paths.stdout}"
    audit = run(host, "reliant-shard audit")
    assert audit.stdout.strip().endswith("0 finding(s) for 1 visible shard(s)")
    assert "warning: dom0 does not run on the volatile root" in audit.stderr


def test_attach_again_brings_the_autostart_link_back(host):
    run(host, "reliant-shard attach")
    assert run(host, f"readlink {LINK}").stdout.strip() == UNIT_TEMPLATE
    assert QUBE in merged_names(host)
    assert host.file(f"/var/lib/qubes/appvms/{QUBE}").is_directory
    assert not host.file(DEFINITION).exists  # qubesd defines it again when it starts it
