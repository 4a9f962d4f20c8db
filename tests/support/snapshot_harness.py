"""Run reliant's create-snapshot against real loop devices and the dmsetup double.

Each scenario runs in a private mount namespace whose /dev/mapper is a fresh
tmpfs (the kernel here has no device-mapper: the dmsetup double makes the
mapped devices), with `losetup` behind a spy that logs its arguments before
running the real one. Loop devices are global: `detach_loops` frees every loop
device whose backing file is under the scenario's directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from repo_paths import ROOT

SCRIPT = ROOT / "salt" / "reliant" / "files" / "snapshots" / "create-snapshot"
DOUBLES = ROOT / "tests" / "doubles"
SPY = """#!/bin/sh
printf '%s\\n' "$*" >> {log}
exec {real} "$@"
"""


def loops_usable() -> str:
    """'' when this host can run the scenarios, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not (shutil.which("unshare") and shutil.which("losetup")):
        return "needs unshare and losetup"
    try:
        free = subprocess.run(["losetup", "--find"], capture_output=True, text=True, timeout=10)
    except OSError as exc:
        return f"losetup: {exc}"
    if free.returncode != 0 or not os.path.exists("/dev/loop-control"):
        return f"/dev/loop-control unusable: {free.stderr.strip()}"
    return ""


@dataclass
class Scenario:
    """A working directory, its logs and the output of the last run."""

    work: Path

    @property
    def dm_log(self) -> Path:
        return self.work / "dmsetup.log"

    @property
    def losetup_log(self) -> Path:
        return self.work / "losetup.log"

    def run(self, body: str) -> subprocess.CompletedProcess:
        """Run bash `body` in the namespace; $CS is the script, cwd the work dir."""
        spy_dir = self.work / "spy"
        spy_dir.mkdir(exist_ok=True)
        spy = spy_dir / "losetup"
        spy.write_text(SPY.format(log=self.losetup_log, real=shutil.which("losetup")))
        spy.chmod(0o755)
        prelude = (
            "set -u\nmkdir -p /dev/mapper\nmount -t tmpfs -o size=1m reliant-test /dev/mapper\n"
            f"export PATH={spy_dir}:{DOUBLES}:$PATH DMSETUP_DOUBLE_LOG={self.dm_log}\n"
            f"CS={SCRIPT}\ncd {self.work}\n")
        # Backing files under mounts of the namespace are only named right inside it.
        listing = f"{shutil.which('losetup')} --list --json --output NAME,RO,BACK-FILE"
        epilogue = f"trap '{listing} > {self.loops_file}' EXIT\n"
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c",
             prelude + epilogue + body],
            capture_output=True, text=True, timeout=300)

    def dm_calls(self) -> list[dict]:
        if not self.dm_log.exists():
            return []
        return [json.loads(line) for line in self.dm_log.read_text().splitlines()]

    def losetup_calls(self) -> list[str]:
        if not self.losetup_log.exists():
            return []
        return self.losetup_log.read_text().splitlines()

    @property
    def loops_file(self) -> Path:
        return self.work / "loops.json"

    def loops(self) -> dict[str, dict]:
        """Loop devices on files under the work dir when the last run ended, by file."""
        if not self.loops_file.exists():
            return {}
        text = self.loops_file.read_text()
        listed = json.loads(text)["loopdevices"] if text.strip() else []
        return {loop["back-file"]: loop for loop in listed
                if str(loop.get("back-file") or "").startswith(str(self.work))}

    def detach_loops(self) -> None:
        """Detach the loop devices of the last run, then check that none is left."""
        for loop in self.loops().values():
            subprocess.run(["losetup", "--detach", loop["name"]], check=False)
        self.run(":")
