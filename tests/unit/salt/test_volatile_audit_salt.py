"""reliant_volatile / reliant_audit execution and state modules under Salt's loader mocks."""

from __future__ import annotations

import pytest
import salt_modules

audit_state = salt_modules.load("states", "reliant_audit")
audit_module = salt_modules.load("modules", "reliant_audit")
volatile_module = salt_modules.load("modules", "reliant_volatile")
volatile_state = salt_modules.load("states", "reliant_volatile")

REPORT = {"mode": "maintenance", "shards": 2, "findings": [], "summary": {}}


@pytest.fixture
def configure_loader_modules(tmp_path):
    opts = {"test": False, "reliant_dom0_marker": str(tmp_path / "qubes-release")}
    return {audit_state: {"__opts__": opts, "__salt__": {}},
            audit_module: {"__opts__": opts}, volatile_module: {"__opts__": opts},
            volatile_state: {"__opts__": opts}}


def run_clean(report=None, error=None):
    def fake_run(audit=None, shards=None, volatile=None):
        if error:
            raise error
        return report

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(audit_state.__salt__, "reliant_audit.run", fake_run)
        return audit_state.clean("reliant-audit-clean", audit={}, shards={}, volatile={})


def test_modules_refuse_to_load_off_dom0():
    for module in (audit_module, volatile_module, volatile_state):
        loaded = module.__virtual__()
        assert loaded[0] is False and "not a Qubes dom0" in loaded[1]


def test_clean_without_open_shards_has_nothing_to_look_for():
    ret = run_clean({**REPORT, "shards": 0})
    assert ret["result"] is True and ret["comment"] == "no shard is open: nothing to look for"


def test_clean_with_no_trace_succeeds():
    ret = run_clean(REPORT)
    assert ret == {"name": "reliant-audit-clean", "result": True, "changes": {},
                   "comment": "no trace of the 2 open shard(s) on dom0's disk"}


def test_clean_fails_on_disk_traces_and_only_counts_them():
    report = {**REPORT, "findings": [{"path": "/var/log/secret.log", "reason": "x",
                                      "storage": "disk", "location": "/var/log"}],
              "summary": {"disk": {"/var/log": 1}, "ram": {"/var/lib/qubes": 3}}}
    ret = run_clean(report)
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == (
        "1 trace(s) of open shards on dom0's disk (/var/log: 1); 3 in RAM only, gone at "
        "shutdown (/var/lib/qubes: 3). See them with `qubesctl reliant_audit.run` or "
        "`reliant-shard audit` (they name hidden qubes: not logged here)")
    assert "secret" not in ret["comment"]


def test_clean_with_ram_only_traces_succeeds():
    ret = run_clean({**REPORT, "summary": {"ram": {"/var/lib/qubes": 2}}})
    assert ret["result"] is True
    assert ret["comment"] == "2 in RAM only, gone at shutdown (/var/lib/qubes: 2)"


def test_clean_fails_when_the_audit_cannot_run():
    ret = run_clean(error=OSError("mount: permission denied"))
    assert ret["result"] is False
    assert ret["comment"] == "audit could not run: OSError: mount: permission denied"


def test_volatile_functions_read_pillar_when_not_given(tmp_path):
    (tmp_path / "qubes-release").write_text("Qubes release 4.3\n")
    pillar = {"reliant": {"volatile": {"enabled": True, "default_entry": "maintenance",
                                       "grub_script": "16_mine"}}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(volatile_module, "__pillar__", pillar, raising=False)
        resolved = volatile_module._settings(None)
    assert (resolved.default_entry, resolved.grub_script) == ("maintenance", "16_mine")
    assert resolved.grub_cfg == "/boot/grub2/grub.cfg"  # the default
    assert volatile_module._settings({}).default_entry == "volatile"
