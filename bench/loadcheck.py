"""Benchmark: the cost of the real-loader check (qubes-core-admin's own offline loader on
a private copy of the merged store, `reliant.shards.real_loader`) at 20, 200 and 2,000
qubes, beside the cost of the suture it is part of, measured in the same run.

    .venv/bin/python bench/loadcheck.py [--repeat 3] [--pythonpath DIR ...]

Where qubes-core-admin is not importable (anywhere but dom0) it says so and skips.
`--pythonpath` puts directories first on the loader's path, e.g. the double of
tests/doubles/qubes_loader with _utils/reliant_lib, to try the benchmark itself (the
times are then the double's, not qubes-core-admin's).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "_utils", "reliant_lib"))
sys.path.insert(0, HERE)

from reliant import operations  # noqa: E402
from reliant.shards.real_loader import RealLoader  # noqa: E402
from shards import generate  # noqa: E402 - the stores of bench/shards.py

SIZES = (20, 200, 2000)


def best(func, repeat: int) -> float:
    """Best wall-clock time of `func` over `repeat` runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(qubes: int, loader: RealLoader, scratch: str, repeat: int) -> str:
    """One line: the suture and the real-loader check of a store of `qubes` qubes."""
    with tempfile.TemporaryDirectory(prefix="reliant-bench-") as base:
        core, roots = generate(base, qubes, max(1, min(15, qubes // 20)))
        merged = os.path.join(scratch, f"qubes-{qubes}.xml")

        def suture() -> None:
            result = operations.suture(core, roots, merged,
                                       qubes_dir=os.path.join(base, "varlibqubes"),
                                       state_path=os.path.join(scratch, "shards.json"))
            assert not result.errors, result.problems

        suture()
        with open(merged, "rb") as handle:
            data = handle.read()
        verdict = loader.load(data, scratch)
        if verdict.loads is not True:
            return f"{qubes:5} qubes: the loader refuses the store: {verdict.message}"
        plain = best(suture, repeat)
        check = best(lambda: loader.load(data, scratch), repeat)
    return (f"{qubes:5} qubes: suture {plain * 1000:8.1f} ms; real-loader check "
            f"{check * 1000:8.1f} ms = {check / plain:.2f} x the suture")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pythonpath", action="append", default=[])
    args = parser.parse_args()
    loader = RealLoader(pythonpath=args.pythonpath)
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="reliant-bench-", dir=tmpfs) as scratch:
        probe = loader.load(b"<qubes/>", scratch)
        if probe.loads is None:
            print(f"real-loader check: skipped ({probe.message})")
            return 0
        who = "qubes-core-admin" if not args.pythonpath else "the loader on " + ":".join(
            args.pythonpath)
        print(f"real-loader check with {who}; best of {args.repeat} runs each")
        for qubes in SIZES:
            print(measure(qubes, loader, scratch, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
