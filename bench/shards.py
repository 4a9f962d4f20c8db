"""Benchmark: suture and dissect of 2,000 qubes over 15 shards against a bare lxml
parse + serialize of the same merged bytes, measured in the same run.

    .venv/bin/python bench/shards.py [--qubes 2000] [--shards 15] [--repeat 15]

Core and shards are written on disk (a temporary directory), the merged store and
the runtime state on tmpfs (/dev/shm), as /run/reliant is in dom0. Each operation
includes its file I/O: reading, comparing, atomic writes with fsync.

Two cases. *After boot*: tmpfs is empty, so suture and the first dissect read every
store whole. *Steady*: what every later qubesd save (dissect) and restart (suture)
costs: dissect's memo on tmpfs knows the qubes that did not change, so only the
changed one is parsed. The baseline and the four runs go in turns (a round sees
about the same load from other processes), each timed by wall clock and process CPU
time; prints the best and the median of each with their ratios to the baseline, and
the spread of the steady ratio over the rounds. The last line (steady, best wall
clock of each) is ``suture+dissect/lxml: R``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_utils", "reliant_lib"))

from lxml import etree
from reliant import chunks, operations, store
from reliant.shards.files import FIRST_SHARD_QID, RANGE_SIZE, init_shard, shard_bytes
from reliant.shards.records import qube_name
from reliant.shards.runtime import default_state_path

LABELS = ("red", "orange", "yellow", "green", "gray", "blue", "purple", "black")


def domain(name: str, qid: int, pool: str, template: str | None, netvm: str | None,
           template_pool: str = "vm-pool") -> str:
    """One qube in qubesd's format (properties, features, tags, devices, volumes); an
    AppVM's root is a snapshot of its template's, in the template's pool."""
    ident = uuid.uuid5(uuid.NAMESPACE_DNS, name)
    root_vid = (f"qubes_dom0/vm-{name}-root" if template_pool == "vm-pool"
                else f"appvms/{name}/root")
    root_volume = (f'<volume name="root" pool="{template_pool}" vid="{root_vid}" '
                   'revisions_to_keep="2" rw="True" save_on_stop="False" snap_on_start="True" '
                   f'size="10737418240" source="vm-templates/{template}/root"/>' if template
                   else f'<volume name="root" pool="{pool}" vid="vm-templates/{name}/root" '
                   'revisions_to_keep="1" rw="True" save_on_stop="True" snap_on_start="False" '
                   'size="10737418240"/>')
    props = "".join(f'<property name="{k}">{v}</property>' for k, v in (
        ("label", LABELS[qid % len(LABELS)]), ("name", name), ("qid", qid), ("uuid", ident),
        ("template", template), ("netvm", netvm), ("memory", 400 + qid % 7 * 100),
        ("provides_network", "True" if name == "sys-net" else None))
        if v is not None)
    return (f'<domain id="domain-{qid}" class="{"AppVM" if template else "TemplateVM"}">'
            f'<properties>{props}</properties>'
            '<features><feature name="service.cups">1</feature>'
            f'<feature name="menu-items">{name}.desktop</feature></features>'
            '<tags><tag name="audiovm-dom0"/><tag name="guivm-dom0"/></tags>'
            '<devices class="pci"/>'
            f'<volume-config>{root_volume}'
            f'<volume name="private" pool="{pool}" vid="appvms/{name}/private" '
            'revisions_to_keep="1" rw="True" save_on_stop="True" snap_on_start="False" '
            'size="2147483648"/>'
            f'<volume name="volatile" pool="{pool}" vid="appvms/{name}/volatile" '
            'revisions_to_keep="1" rw="True" save_on_stop="False" snap_on_start="False" '
            'size="10737418240"/>'
            '<volume name="kernel" pool="linux-kernel" vid="" revisions_to_keep="0" '
            'rw="False" save_on_stop="False" snap_on_start="False"/>'
            '</volume-config></domain>')


def generate(base: str, qubes: int, shards: int) -> tuple[str, list[str]]:
    """A core store and `shards` shard directories holding `qubes` qubes in all."""
    per_shard = qubes * 9 // 10 // shards
    core_count = qubes - per_shard * shards
    core_domains = ['<domain id="domain-0" class="AdminVM"><properties><property '
                    'name="label">black</property></properties><features/><tags/></domain>']
    core_domains.append(domain("tmpl-core", 1, "vm-pool", None, None))
    core_domains.append(domain("sys-net", 2, "vm-pool", "tmpl-core", ""))
    for qid in range(3, core_count + 1):
        core_domains.append(domain(f"core-{qid}", qid, "vm-pool", "tmpl-core", "sys-net"))
    labels = "".join(f'<label id="label-{i}" color="0x000000">{n}</label>'
                     for i, n in enumerate(LABELS, 1))
    core = (f"<qubes><labels>{labels}</labels><pools>"
            '<pool name="vm-pool" volume_group="qubes_dom0" thin_pool="vm-pool" '
            'driver="lvm_thin"/><pool name="linux-kernel" dir_path="/var/lib/qubes/vm-kernels" '
            'driver="linux-kernel"/></pools><properties>'
            '<property name="default_netvm">sys-net</property>'
            '<property name="default_template">tmpl-core</property></properties>'
            f'<domains>{"".join(core_domains)}</domains></qubes>')
    core_path = os.path.join(base, "qubes.xml")
    root = os.path.join(base, "shufflecake")
    with open(core_path, "wb") as handle:
        handle.write(store.serialize(store.parse(core.encode(), core_path)))
    for index in range(shards):
        sid = f"sflc_0_{index + 1}"
        path = os.path.join(root, sid)
        first = FIRST_SHARD_QID + index * RANGE_SIZE
        shard = init_shard(path, qid_range=(first, first + per_shard + 99))
        pool = (f'<pool name="{sid}" dir_path="{path}/pool" driver="file-reflink" '
                'revisions_to_keep="1" ephemeral_volatile="False"/>')
        items = [domain(f"{sid}-tmpl", first, sid, None, None)]
        items += [domain(f"{sid}-q{i}", first + i, sid, f"{sid}-tmpl" if i % 2 else "tmpl-core",
                         "sys-net", sid if i % 2 else "vm-pool") for i in range(1, per_shard)]
        pools = [etree.fromstring(pool)]
        domains = sorted((etree.fromstring(item) for item in items),
                         key=qube_name)  # in the order dissect writes
        store.write(shard.file, shard_bytes(shard, pools, domains))
    return core_path, [root]


def timings(steps, repeat: int) -> list[dict[str, list[float]]]:
    """Wall clock and process CPU time of each run of each (setup, function) step (the
    setup is not timed); the steps run in turns so that load from other processes hits
    all of them alike."""
    found: list[dict[str, list[float]]] = [{"wall": [], "cpu": []} for _ in steps]
    for _ in range(repeat):
        for index, (setup, func) in enumerate(steps):
            setup()
            wall, cpu = time.perf_counter(), time.process_time()
            func()
            found[index]["cpu"].append(time.process_time() - cpu)
            found[index]["wall"].append(time.perf_counter() - wall)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubes", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="reliant-bench-") as base, \
            tempfile.TemporaryDirectory(prefix="reliant-bench-", dir=tmpfs) as run:
        core, roots = generate(base, args.qubes, args.shards)
        # as in dom0: core and shards on disk, the merged store and state on tmpfs (/run)
        merged = os.path.join(run, "qubes.xml")
        qubes_dir = os.path.join(base, "varlibqubes")
        result = operations.suture(core, roots, merged, qubes_dir=qubes_dir)
        assert not result.problems, result.problems
        with open(merged, "rb") as handle:
            data = handle.read()
        count = data.count(b"<domain ")

        memo = chunks.memo_dir(default_state_path(merged))

        def nothing() -> None:
            pass

        def bare() -> None:
            etree.tostring(etree.fromstring(data), encoding="utf-8", pretty_print=True)

        def boot() -> None:  # tmpfs is empty at boot: no merged store, no memo
            os.unlink(merged)
            chunks.clear(memo)

        def restart() -> None:  # qubesd stopped and started again: the memo is there
            os.unlink(merged)

        def suture() -> None:
            operations.suture(core, roots, merged, qubes_dir=qubes_dir)

        def qubesd_saves_a_change() -> None:  # one shard file must be rewritten
            with open(merged, "wb") as handle:
                handle.write(data.replace(b"sflc_0_3-q7.desktop", os.urandom(4).hex().encode()))

        def dissect() -> None:
            result = operations.dissect(merged, core, roots, qubes_dir=qubes_dir)
            assert len(result.written) == 1, result.written

        runs = timings(((nothing, bare), (boot, suture), (qubesd_saves_a_change, dissect),
                        (restart, suture), (qubesd_saves_a_change, dissect)), args.repeat)
    print(f"qubes: {count - 1} (core and {args.shards} shards); merged store {len(data)} bytes"
          f" (on {tmpfs or 'disk'}); {args.repeat} runs each, in turns")
    ratios = {}
    for clock in ("wall", "cpu"):
        for name, pick in (("best", min), ("median", statistics.median)):
            baseline, *times = (pick(run[clock]) for run in runs)
            print(f"{clock} {name}: lxml parse+serialize {baseline * 1000:.1f} ms")
            for label, (t_suture, t_dissect) in (("after boot", times[:2]),
                                                  ("steady", times[2:])):
                ratios[clock, name, label] = (t_suture + t_dissect) / baseline
                print(f"  {label:10}: suture {t_suture * 1000:6.1f} ms = "
                      f"{t_suture / baseline:.2f} x; dissect {t_dissect * 1000:6.1f} ms = "
                      f"{t_dissect / baseline:.2f} x; suture+dissect "
                      f"{ratios[clock, name, label]:.2f} x")
        rounds = sorted((suture_run + dissect_run) / bare_run for bare_run, *_, suture_run,
                        dissect_run in zip(*(run[clock] for run in runs)))
        print(f"{clock} steady, per round (suture+dissect)/lxml: min {rounds[0]:.2f}, median "
              f"{statistics.median(rounds):.2f}, max {rounds[-1]:.2f}")
    print(f"suture+dissect/lxml: {ratios['wall', 'best', 'steady']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
