"""Kitchen suite `shards`, after test_shards.py (which ends with reliant.shards.clean): the
formula converges again, then qubesd (the double) refuses a merged store, and qubesd runs
on core only, `reliant-shard status` says why, and the highstate still converges.

Every check before qubesd (the model in suture) admits only what the double loads, so the
refusal comes from a test harness: a drop-in whose ExecStartPre, after suture's, gives a
qube of shard hidden-beta a tag with a space (it stands for a failure no check foresaw).
The tag starts with ``reliant-``, which dissect strips: the shard files stay as they are.
"""

from __future__ import annotations

import json

from test_shards import CORE, CORE_QUBES, SHARDS, ctl, highstate, put, run

HARNESS = "/etc/systemd/system/qubesd.service.d/zz-loadcheck-harness.conf"
SCRIPT = "/usr/local/sbin/loadcheck-harness"
DAMAGE = "/run/loadcheck-damage"
BETA_TAG = '<tag name="reliant-shard-hidden-beta"/>'
SHARD_QUBES = set().union(*(qubes for _, _, qubes in SHARDS.values()))


def listed(host) -> set[str]:
    return {q["name"] for q in json.loads(ctl(host, "list"))}


def test_the_formula_converges_again(host):
    states = highstate(host)
    assert all(ret["result"] for ret in states.values()), [
        ret["__id__"] for ret in states.values() if not ret["result"]]
    run(host, "reliant-shard attach")
    assert listed(host) >= SHARD_QUBES


def test_a_merge_qubesd_refuses_falls_back_to_core_only(host):
    before = {d: host.file(f"{d}/domains.xml").content for d in SHARDS}
    core = host.file(CORE).content
    put(host, SCRIPT, (
        "#!/bin/sh\n"
        f"[ -e {DAMAGE} ] || exit 0\n"
        f"exec sed -i 's|{BETA_TAG}|&<tag name=\"reliant-bad tag\"/>|' /run/reliant/qubes.xml\n"
    ).encode())
    put(host, HARNESS, f"[Service]\nExecStartPre={SCRIPT}\n".encode())
    run(host, f"chmod 0755 {SCRIPT}")
    run(host, f"systemctl daemon-reload && touch {DAMAGE}")
    attach = host.run("reliant-shard attach")
    assert attach.rc == 1, attach.stdout + attach.stderr
    assert "qubesd did not start on the merged store" in attach.stderr
    assert host.service("qubesd").is_running
    assert not listed(host) & SHARD_QUBES and listed(host) >= CORE_QUBES
    status = run(host, "reliant-shard status")
    assert status.startswith("FALLBACK: qubesd did not start on the merged store")
    assert "hidden-alpha" in status and "hidden-beta" in status
    states = highstate(host)
    assert all(ret["result"] for ret in states.values())
    assert host.service("qubesd").is_running and not listed(host) & SHARD_QUBES
    assert {d: host.file(f"{d}/domains.xml").content for d in SHARDS} == before
    assert host.file(CORE).content == core


def test_attach_merges_the_shards_again_once_qubesd_loads_them(host):
    run(host, f"rm -f {DAMAGE}")
    run(host, "reliant-shard attach")
    assert listed(host) >= SHARD_QUBES
    assert "FALLBACK" not in run(host, "reliant-shard status")
    run(host, f"rm -f {HARNESS} {SCRIPT} && systemctl daemon-reload")
