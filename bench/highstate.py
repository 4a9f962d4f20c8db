#!/usr/bin/env python3
"""Benchmark: the formula's no-op highstate against an empty highstate, in one dom0 container.

Converges pillar.example once, then times REPEAT runs of each: `state.highstate` with
nothing to change (the formula's cost when all is converged) and `state.apply` of an
sls holding one `test.nop` (salt-call's own start-up and rendering floor). Prints the ratio.

    bench/highstate.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "kitchen"))
import run  # noqa: E402


def timed(instance: run.Instance, *command: str, repeat: int) -> float:
    """Median wall time of `command` run `repeat` times in the container."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        instance.exec(*command)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    run.use_runc_config()
    config = run.load_config(ROOT / "kitchen.yml")
    platform = config["platforms"][-1]
    image = platform["driver"]["image"]
    run.ensure_images(image, str(config["provisioner"]["salt_version"]), run.qubes_release(platform))
    instance = run.Instance("bench", platform["name"], image, privileged=True)
    try:
        instance.create()
        instance.install(ROOT / "pillar.example")
        instance.highstate()
        # the floor: one state that does nothing (salt-call refuses an sls with no state)
        instance.exec("sh", "-c", "mkdir -p /srv/salt/empty && "
                      "echo 'nothing: {test.nop: []}' > /srv/salt/empty/init.sls")
        salt = ("salt-call", "--local", "--out", "json")
        noop = timed(instance, *salt, "state.highstate", repeat=args.repeat)
        empty = timed(instance, *salt, "state.apply", "empty", repeat=args.repeat)
    finally:
        instance.destroy()
    print(f"no-op highstate: {noop:.2f} s (median of {args.repeat})")
    print(f"empty state.apply: {empty:.2f} s (median of {args.repeat})")
    print(f"noop-highstate/empty: {noop / empty:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
