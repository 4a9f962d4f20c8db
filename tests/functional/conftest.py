"""Functional tests: real `salt-call --local` over the formula on a temporary root.

The `salt_minion` fixture gives a masterless minion whose file_roots are the
repository (salt/ for the states, the root for _modules/_states/_utils) plus a
directory holding the enabled top file, as `qubesctl top.enable reliant` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import qubes_platforms
import yaml

ROOT = Path(__file__).resolve().parents[2]
SALT_CALL = Path(sys.executable).with_name("salt-call")


@dataclass
class SaltResult:
    """One salt-call run: its exit code, parsed `local` return and stderr."""

    returncode: int
    data: object
    stderr: str

    @property
    def states(self) -> dict:
        """The state returns of a state.* call, keyed by state id."""
        assert isinstance(self.data, dict), f"not a state run: {self.data!r}\n{self.stderr}"
        return self.data

    def changed(self) -> dict:
        """Only the states that reported (or, with test=True, predicted) changes."""
        return {
            key: ret for key, ret in self.states.items()
            if ret.get("changes") or ret.get("result") is None
        }


class SaltMinion:
    """A masterless minion with its own config, cache and pillar under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "conf"
        self.pillar_dir = root / "pillar"
        self.tops = root / "tops"
        self.marker = root / "qubes-release"
        for path in (self.conf, self.pillar_dir / "reliant", self.tops):
            path.mkdir(parents=True, exist_ok=True)
        self.marker.write_text("Qubes release 4.3 (test root)\n")
        (self.tops / "top.sls").write_text((ROOT / "salt" / "reliant.top").read_text())
        (self.pillar_dir / "top.sls").write_text((ROOT / "pillar" / "reliant.top").read_text())
        config = {
            "id": "dom0",
            "file_client": "local",
            "root_dir": str(root),
            "cachedir": str(root / "cache"),
            "extension_modules": str(root / "extmods"),
            "pki_dir": str(root / "pki"),
            "sock_dir": str(root / "sock"),
            "log_file": str(root / "minion.log"),
            "file_roots": {"base": [str(self.tops), str(ROOT / "salt"), str(ROOT)]},
            "pillar_roots": {"base": [str(self.pillar_dir)]},
            "state_verbose": True,
            # The repo's own modules, so that state.sls works on a fresh cache too.
            "module_dirs": [str(ROOT / "_modules")],
            "states_dirs": [str(ROOT / "_states")],
            "utils_dirs": [str(ROOT / "_utils")],
            "reliant_dom0_marker": str(self.marker),
            # rpm's answers in an R4.3 dom0 (the platform the formula's modules see)
            "reliant_rpm": str(qubes_platforms.rpm_double(root / "rpm-double", "4.3")),
        }
        (self.conf / "minion").write_text(yaml.safe_dump(config))
        self.set_pillar({})

    def set_pillar(self, reliant: dict | None) -> None:
        """Write pillar `reliant:` (None: no reliant key at all)."""
        body = {} if reliant is None else {"reliant": reliant}
        (self.pillar_dir / "reliant" / "init.sls").write_text(yaml.safe_dump(body))

    def run(self, *args: str, check: bool = False) -> SaltResult:
        """Run salt-call with `args`; JSON output parsed into `data`."""
        cmd = [str(SALT_CALL), "--local", "--config-dir", str(self.conf), "--out", "json",
               "--retcode-passthrough", "--log-level", "quiet", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        try:
            data = json.loads(proc.stdout)["local"] if proc.stdout.strip() else None
        except json.JSONDecodeError:
            data = proc.stdout
        result = SaltResult(proc.returncode, data, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"salt-call {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return result


@pytest.fixture
def salt_minion(tmp_path: Path) -> SaltMinion:
    """A fresh masterless minion rooted in a temporary directory."""
    return SaltMinion(tmp_path / "minion")
