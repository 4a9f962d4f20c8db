"""reliant_policy execution and state modules under Salt's loader mocks: failures half-way
and verification (the real salt-call runs are in tests/functional/test_salt_policy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import salt_modules
from reliant import store
from reliant.isolation import policy

module = salt_modules.load("modules", "reliant_policy")
state = salt_modules.load("states", "reliant_policy")
NAME = policy.POLICY_FILE_NAME


@pytest.fixture
def configure_loader_modules(tmp_path):
    marker = tmp_path / "qubes-release"
    marker.write_text("Qubes release 4.3\n")
    opts = {"test": False, "reliant_dom0_marker": str(marker)}
    salt = {"reliant_policy.settings": module.settings}
    return {module: {"__opts__": opts}, state: {"__opts__": opts, "__salt__": salt}}


@pytest.fixture
def etc(tmp_path) -> tuple[Path, Path]:
    policy_dir = tmp_path / "etc" / "qubes" / "policy.d"
    policy_dir.mkdir(parents=True)
    return policy_dir, tmp_path / "etc" / "reliant" / "isolation.json"


def installed(etc, **kwargs) -> dict:
    return state.installed(str(etc[0]), settings_path=str(etc[1]), **kwargs)


def test_virtual(tmp_path):
    assert module.__virtual__() == "reliant_policy"
    assert state.__virtual__() == "reliant_policy"
    module.__opts__["reliant_dom0_marker"] = str(tmp_path / "absent")
    assert module.__virtual__() == (False, f"reliant_policy: not a Qubes dom0 (no {tmp_path}/absent)")


def test_a_failed_write_fails_the_state_and_keeps_the_previous_settings(etc, monkeypatch):
    assert installed(etc)["result"] is True
    before = etc[1].read_bytes()
    real_write = store.write

    def failing_write(path, data, mode=0o600):
        if path == str(etc[1]):
            raise store.StoreError(f"{path}: cannot write: No space left on device")
        return real_write(path, data, mode)

    monkeypatch.setattr(store, "write", failing_write)
    ret = installed(etc, services=["qubes.Filecopy"])
    assert ret["result"] is False and "No space left" in ret["comment"]
    assert etc[1].read_bytes() == before
    monkeypatch.setattr(store, "write", real_write)
    ret = installed(etc, services=["qubes.Filecopy"])
    # the policy file (written before the failure) is already right: only settings change
    assert ret["result"] is True and ret["changes"] == {str(etc[1]): "updated"}
    assert json.loads(etc[1].read_text())["services"] == ["qubes.Filecopy"]


def test_a_write_that_does_not_stick_is_reported(etc, monkeypatch):
    monkeypatch.setattr(policy, "apply_plan", lambda plan: None)
    ret = installed(etc)
    assert ret["result"] is False and ret["comment"].startswith("still different after writing")


def test_a_wrong_mode_is_fixed(etc):
    installed(etc)
    (etc[0] / NAME).chmod(0o600)
    ret = installed(etc)
    assert ret["changes"] == {str(etc[0] / NAME): "mode"} and ret["result"] is True
    assert (etc[0] / NAME).stat().st_mode & 0o777 == 0o644


def test_test_mode_predicts_and_changes_nothing(etc):
    state.__opts__["test"] = True
    ret = installed(etc)
    assert ret["result"] is None and len(ret["changes"]) == 2
    assert not etc[1].exists() and not any(etc[0].iterdir())
