"""Salt configured as qubes-mgmt-salt configures dom0 finds the formula only through the
formula's minion.d drop-in: real salt-call, `make install` into a temporary root, the
container's copy of qubes-mgmt-salt's f_defaults.conf and top files, and the topd double.

Every absolute path of those files is moved under the temporary root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOM0 = ROOT / "tests" / "kitchen" / "image" / "dom0"
SALT_CALL = Path(sys.executable).with_name("salt-call")
DROP_IN = "etc/salt/minion.d/formula-reliant.conf"
FORMULA_DIR = "srv/formulas/base/reliant-formula"
ROOTED_KEYS = ("file_roots", "pillar_roots", "topd_base_state", "topd_base_pillar")


def rooted(value, root: Path):
    """`value` with each absolute path in it moved under `root`."""
    if isinstance(value, dict):
        return {key: rooted(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [rooted(item, root) for item in value]
    return f"{root}{value}" if isinstance(value, str) and value.startswith("/") else value


def write_rooted(source: Path, target: Path, root: Path) -> None:
    """A minion.d file with the paths Salt serves files from moved under `root`."""
    config = yaml.safe_load(source.read_text())
    config.update({key: rooted(config[key], root) for key in ROOTED_KEYS if key in config})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config))


@pytest.fixture
def dom0(tmp_path: Path) -> Path:
    """A root with the formula installed by `make install` and Salt's config in etc/salt."""
    root = tmp_path / "dom0"
    subprocess.run(["make", "-s", "-C", str(ROOT), "install", f"DESTDIR={root}"], check=True)
    conf = root / "etc" / "salt"
    write_rooted(root / DROP_IN, root / DROP_IN, root)
    write_rooted(DOM0 / "etc/salt/minion.d/f_defaults.conf", conf / "minion.d/f_defaults.conf", root)
    for top in ("srv/salt/top.sls", "srv/pillar/top.sls"):
        (root / top).parent.mkdir(parents=True, exist_ok=True)
        (root / top).write_text((DOM0 / top).read_text())
    (conf / "minion").write_text(yaml.safe_dump({
        "id": "dom0",
        "root_dir": str(root),
        "module_dirs": [str(ROOT / "tests" / "doubles" / "topd")],
    }))
    return root


def salt(root: Path, *args: str) -> tuple[int, object]:
    """salt-call --local on the root's config: (exit status, the `local` return)."""
    proc = subprocess.run(
        [str(SALT_CALL), "--local", "--config-dir", str(root / "etc" / "salt"), "--out", "json",
         "--log-level", "quiet", *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    return proc.returncode, json.loads(proc.stdout)["local"]


def test_without_the_drop_in_no_top_and_no_state_is_found(dom0):
    (dom0 / DROP_IN).unlink()
    assert salt(dom0, "top.enable", "reliant") == (
        0, {"error": "No valid top names provided: ['reliant']"})
    assert not (dom0 / "srv/salt/_tops/base/reliant.top").exists()
    rc, states = salt(dom0, "state.highstate", "test=True")
    assert rc != 0
    assert [ret["comment"] for ret in states.values()] == [
        "No Top file or master_tops data matches found. Please see master log for details."]


def test_the_drop_in_lets_topd_enable_the_formula(dom0):
    _, roots = salt(dom0, "config.get", "file_roots")
    assert roots["base"] == [f"{dom0}/srv/salt", f"{dom0}/{FORMULA_DIR}"]
    assert salt(dom0, "top.enable", "reliant") == (0, {"reliant.top": {"status": "enabled"}})
    assert salt(dom0, "top.enable", "reliant", "pillar=true") == (
        0, {"reliant.top": {"status": "enabled"}})
    assert os.readlink(dom0 / "srv/salt/_tops/base/reliant.top") == f"{dom0}/{FORMULA_DIR}/reliant.top"
    assert os.readlink(dom0 / "srv/pillar/_tops/base/reliant.top") == f"{dom0}/srv/pillar/base/reliant.top"
    assert salt(dom0, "state.show_top") == (0, {"base": ["reliant"]})
