"""reliant.snapshots and reliant.snapshots.clean through real salt-call on a temporary root.

The "Qubes" files are stand-ins planted by the test (no Qubes source here): a
stock create-snapshot stand-in and a qubes/storage/file.py stand-in, accepted
through `extra_known_sha256` as a user would accept a reviewed version.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = (ROOT / "salt/reliant/files/snapshots/create-snapshot").read_bytes()
STOCK = b"#!/bin/bash\n# test stand-in for the stock create-snapshot\nexit 0\n"
FILE_PY = b"# test stand-in for qubes/storage/file.py\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files(root: Path) -> dict[str, tuple]:
    return {str(path.relative_to(root)): (sha(path.read_bytes()), path.stat().st_mode,
                                          path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture
def dom0(tmp_path: Path, salt_minion):
    root = tmp_path / "dom0"
    script = root / "usr/lib/qubes/create-snapshot"
    script.parent.mkdir(parents=True)
    script.write_bytes(STOCK)
    script.chmod(0o755)
    os.utime(script, ns=(1_500_000_000_000_000_000,) * 2)
    site = root / "usr/lib/python3.13/site-packages"
    (site / "qubes/storage").mkdir(parents=True)
    (site / "qubes/storage/file.py").write_bytes(FILE_PY)
    settings = {"enabled": True, "script": str(script), "site_packages": str(site),
                "backup_dir": str(root / "var/lib/reliant/snapshots"),
                "extra_known_sha256": [sha(STOCK), sha(FILE_PY)]}
    salt_minion.set_pillar({"snapshots": settings})
    return root, script, settings


def by_id(states: dict) -> dict:
    return {ret["__id__"]: ret for ret in states.values()}


def test_apply_is_predicted_idempotent_and_clean_restores(salt_minion, dom0):
    root, script, settings = dom0
    site = Path(settings["site_packages"])
    before = files(root)
    dry = salt_minion.run("state.apply", "reliant.snapshots", "test=True")
    assert dry.returncode == 0, dry.data
    predicted = by_id(dry.changed())
    assert set(predicted) == {"reliant-snapshots-installed", "reliant-snapshots-extension"}
    assert files(root) == before, "test=True changes nothing"

    applied = salt_minion.run("state.apply", "reliant.snapshots")
    assert applied.returncode == 0, applied.data
    states = by_id(applied.changed())
    state = states["reliant-snapshots-installed"]
    assert state["result"] is True
    assert state["changes"] == predicted["reliant-snapshots-installed"]["changes"]
    assert script.read_bytes() == OURS
    extension = ROOT / "salt/reliant/files/snapshots/extension"
    assert {str(p.relative_to(extension)) for p in extension.rglob("*") if p.is_file()} <= {
        str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}

    for args in (("reliant.snapshots",), ("reliant.snapshots", "test=True")):
        again = salt_minion.run("state.apply", *args)
        assert again.returncode == 0 and again.changed() == {}, again.data

    clean = salt_minion.run("state.apply", "reliant.snapshots.clean")
    assert clean.returncode == 0, clean.data
    removal = by_id(clean.changed())
    assert removal["reliant-snapshots-removed"]["changes"][str(script)] == "original restored"
    assert "reliant-snapshots-extension-absent" in removal
    assert files(root) == before
    assert salt_minion.run("state.apply", "reliant.snapshots.clean").changed() == {}


def test_unknown_qubes_version_fails_and_changes_nothing(salt_minion, dom0):
    root, _, settings = dom0
    salt_minion.set_pillar({"snapshots": {**settings, "extra_known_sha256": [sha(STOCK)]}})
    before = files(root)
    result = salt_minion.run("state.apply", "reliant.snapshots")
    assert result.returncode != 0
    states = {ret["__id__"]: ret for ret in result.states.values()}
    state = states["reliant-snapshots-installed"]
    assert state["result"] is False
    assert states["reliant-snapshots-qubesd-restart"]["changes"] == {}
    assert "qubes/storage/file.py (sha256" in state["comment"]
    assert "nothing was changed" in state["comment"]
    assert files(root) == before


def test_verify_reports_a_changed_script(salt_minion, dom0):
    _, script, _ = dom0
    assert salt_minion.run("state.apply", "reliant.snapshots").returncode == 0
    assert salt_minion.run("reliant_snapshot.verify").data == []
    script.write_bytes(OURS + b"# edited\n")
    assert salt_minion.run("reliant_snapshot.verify").data == [
        f"{script} is not reliant's (sha256 {sha(OURS + b'# edited' + bytes([10]))})"]
    result = salt_minion.run("state.apply", "reliant.snapshots")
    assert result.returncode != 0
    assert "is neither reliant's nor a stock" in next(iter(result.states.values()))["comment"]


def test_clean_without_qubes_or_installation_changes_nothing(salt_minion, tmp_path):
    salt_minion.set_pillar({"snapshots": {"script": str(tmp_path / "absent/create-snapshot"),
                                          "backup_dir": str(tmp_path / "absent/backup")}})
    result = salt_minion.run("state.apply", "reliant.snapshots.clean")
    assert result.returncode == 0, result.data
    assert result.changed() == {}
    assert not (tmp_path / "absent").exists()
