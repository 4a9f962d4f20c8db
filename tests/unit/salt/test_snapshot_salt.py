"""_states/snapshot.py under a mocked loader: every branch of the ret dict."""

from __future__ import annotations

import importlib.util

import pytest
from reliant import snapshot
from repo_paths import ROOT

CHANGES = {"/usr/lib/qubes/create-snapshot": "installed"}


class FakeSalt(dict):
    """__salt__ with a scripted plan sequence; records the calls."""

    def __init__(self, plans: list[dict], verify: list | None = None, fail: Exception | None = None):
        super().__init__()
        self.plans, self.verified, self.calls = list(plans), verify or [], []
        self["reliant_snapshot.plan"] = self.plan
        self["reliant_snapshot.verify"] = self.verify
        self["reliant_snapshot.install"] = self.act("install", fail)
        self["reliant_snapshot.remove"] = self.act("remove", fail)

    def plan(self, settings, remove=False):
        self.calls.append(("plan", remove))
        return self.plans.pop(0)

    def verify(self, settings):
        self.calls.append(("verify",))
        return self.verified

    def act(self, name, fail):
        def run(settings):
            self.calls.append((name,))
            if fail:
                raise fail
            return dict(CHANGES)
        return run


@pytest.fixture
def state():
    spec = importlib.util.spec_from_file_location("reliant_snapshot_state",
                                                  ROOT / "_states" / "reliant_snapshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(function: str, salt: FakeSalt, test: bool = False) -> dict:
        module.__salt__ = salt
        module.__opts__ = {"test": test}
        return getattr(module, function)("/usr/lib/qubes/create-snapshot", {})

    return run


def test_problems_fail_without_acting(state):
    salt = FakeSalt([{"problems": ["file.py (sha256 x) unknown"], "changes": CHANGES}])
    ret = state("installed", salt)
    assert ret["result"] is False and ret["comment"] == "file.py (sha256 x) unknown"
    assert salt.calls == [("plan", False)]


def test_nothing_to_do_is_verified(state):
    assert state("installed", FakeSalt([{"problems": [], "changes": {}}]))["result"] is True
    broken = state("installed", FakeSalt([{"problems": [], "changes": {}}], verify=["x missing"]))
    assert broken["result"] is False and broken["comment"] == "x missing"


def test_test_mode_predicts_without_acting(state):
    salt = FakeSalt([{"problems": [], "changes": CHANGES}])
    ret = state("installed", salt, test=True)
    assert ret["result"] is None and ret["changes"] == CHANGES
    assert salt.calls == [("plan", False)]


def test_apply_then_verify(state):
    salt = FakeSalt([{"problems": [], "changes": CHANGES}, {"problems": [], "changes": {}}])
    ret = state("installed", salt)
    assert ret["result"] is True and ret["changes"] == CHANGES
    assert salt.calls == [("plan", False), ("install",), ("plan", False), ("verify",)]
    assert ret["comment"] == "reliant's create-snapshot: done"


def test_difference_left_after_acting_fails(state):
    salt = FakeSalt([{"problems": [], "changes": CHANGES}, {"problems": [], "changes": CHANGES}])
    ret = state("removed", salt)
    assert ret["result"] is False
    assert ret["comment"] == "/usr/lib/qubes/create-snapshot still to be installed"
    assert ("verify",) not in salt.calls


def test_failure_half_way_is_reported(state):
    salt = FakeSalt([{"problems": [], "changes": CHANGES}],
                    fail=snapshot.SnapshotError("create-snapshot changed while installing"))
    ret = state("installed", salt)
    assert ret["result"] is False
    assert ret["comment"].endswith("create-snapshot changed while installing")
    assert ret["changes"] == {}
