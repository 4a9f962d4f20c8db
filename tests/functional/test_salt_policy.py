"""reliant_policy execution and state modules, and the isolation sls, through real
salt-call on a temporary root (no file outside it is touched)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import qrexec_policy_oracle as oracle

NAME = "20-reliant-isolation.policy"


@pytest.fixture
def dom0(tmp_path: Path) -> dict[str, Path]:
    paths = {"etc": tmp_path / "etc/qubes/policy.d", "run": tmp_path / "run/qubes/policy.d",
             "settings": tmp_path / "etc/reliant/isolation.json"}
    paths["etc"].mkdir(parents=True)
    paths["run"].mkdir(parents=True)
    return paths


def installed(salt_minion, dom0, *extra: str, test: bool = False):
    args = ["state.single", "reliant_policy.installed", f"name={dom0['etc']}",
            f"settings_path={dom0['settings']}", *extra]
    if test:
        args.append("test=True")
    return salt_minion.run(*args)


def only_state(result) -> dict:
    (state,) = result.states.values()
    return state


def snapshot(*dirs: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def test_installed_is_predicted_applied_verified_and_idempotent(salt_minion, dom0):
    trees = (dom0["etc"].parents[1], dom0["run"].parents[1])
    dry = only_state(installed(salt_minion, dom0, test=True))
    assert dry["result"] is None
    assert snapshot(*trees) == {}, "test=True changes nothing"
    applied = only_state(installed(salt_minion, dom0))
    assert applied["result"] is True, applied
    assert applied["changes"] == dry["changes"] == {
        str(dom0["etc"] / NAME): "created", str(dom0["settings"]): "created"}
    assert (dom0["etc"] / NAME).stat().st_mode & 0o777 == 0o644
    rules = oracle.parse_policy((dom0["etc"] / NAME).read_text(), NAME)
    assert {r.source for r in rules} == {"@tag:reliant-foreign-dispvm"} and len(rules) == 7
    assert json.loads(dom0["settings"].read_text())["services"][0] == "qubes.Filecopy"
    again = only_state(installed(salt_minion, dom0))
    assert again["result"] is True and again["changes"] == {}
    assert only_state(installed(salt_minion, dom0, test=True))["changes"] == {}


def test_pillar_changes_update_settings_and_rename_the_persistent_file(salt_minion, dom0):
    installed(salt_minion, dom0)
    (dom0["run"] / NAME).write_text("# runtime file written at suture\n")
    new = "10-reliant-isolation.policy"
    extra = (f"policy_file={new}", "notify=False", 'services=["qubes.Filecopy"]')
    dry = only_state(installed(salt_minion, dom0, *extra, test=True))
    applied = only_state(installed(salt_minion, dom0, *extra))
    assert applied["changes"] == dry["changes"] == {
        str(dom0["etc"] / NAME): "removed", str(dom0["etc"] / new): "created",
        str(dom0["settings"]): "updated"}
    settings = json.loads(dom0["settings"].read_text())
    assert settings["notify"] is False and settings["services"] == ["qubes.Filecopy"]
    assert (dom0["run"] / NAME).exists(), "the runtime rules keep denying until the next suture"


@pytest.mark.parametrize(("arg", "message"), [
    ('services=["bad service"]', "not a qrexec service name"),
    ("policy_file=99-late.policy", "sorts after 30-user.policy"),
    ('directions=["up"]', "direction 'up'"),
])
def test_bad_pillar_fails_naming_the_value_and_writes_nothing(salt_minion, dom0, arg, message):
    state = only_state(installed(salt_minion, dom0, arg))
    assert state["result"] is False and message in state["comment"]
    assert not dom0["settings"].exists() and not any(dom0["etc"].iterdir())


def test_absent_removes_persistent_runtime_and_settings(salt_minion, dom0):
    installed(salt_minion, dom0)
    (dom0["run"] / NAME).write_text("# runtime\n")
    (dom0["etc"] / "90-default.policy").write_text("# not ours\n")
    args = ["state.single", "reliant_policy.absent", f"name={dom0['etc']}",
            f"policy_dir={dom0['run']}", f"settings_path={dom0['settings']}"]
    dry = only_state(salt_minion.run(*args, "test=True"))
    assert dry["result"] is None and (dom0["run"] / NAME).exists()
    done = only_state(salt_minion.run(*args))
    assert done["changes"] == dry["changes"] == {
        str(dom0["etc"] / NAME): "removed", str(dom0["run"] / NAME): "removed",
        str(dom0["settings"]): "removed"}
    assert sorted(p.name for p in dom0["etc"].iterdir()) == ["90-default.policy"]
    assert only_state(salt_minion.run(*args))["changes"] == {}


def test_module_functions(salt_minion):
    text = salt_minion.run("reliant_policy.persistent_policy", 'services=["a.B"]',
                           check=True).data
    assert "reliant-shard" not in text
    assert [r.service for r in oracle.parse_policy(text, NAME)] == ["a.B"]
    settings = salt_minion.run("reliant_policy.settings", 'services=["qubes.Filecopy"]',
                               check=True).data
    assert settings["services"] == ["qubes.Filecopy"] and settings["notify"] is True
    site = salt_minion.run("reliant_policy.site_packages", check=True).data
    assert Path(site).is_absolute()
    paths = salt_minion.run("reliant_policy.extension_paths", "/usr/lib/reliant", check=True).data
    assert "LIBDIR = '/usr/lib/reliant'" in paths
    bad = salt_minion.run("reliant_policy.settings", "policy_file=x")
    assert bad.returncode != 0 and "must end in .policy" in str(bad.data) + bad.stderr


def test_module_is_unavailable_off_dom0(salt_minion):
    salt_minion.marker.unlink()
    result = salt_minion.run("reliant_policy.persistent_policy")
    assert result.returncode != 0
    assert "not a Qubes dom0" in str(result.data) + result.stderr


def test_isolation_sls_renders_the_policy_the_extension_and_the_restart(salt_minion, tmp_path):
    site = tmp_path / "site"
    salt_minion.set_pillar({"isolation": {"site_packages": str(site)}})
    shown = salt_minion.run("state.show_sls", "reliant.isolation", check=True).data
    policy = shown["reliant-isolation-policy"]
    assert policy["__sls__"] == "reliant.isolation"
    args = {k: v for item in policy["reliant_policy"] if isinstance(item, dict)
            for k, v in item.items()}
    assert args["name"] == "/etc/qubes/policy.d" and args["shard_roots"] == ["/run/shufflecake"]
    assert "reliant-shards-library" in shown, "isolation pulls in the shards library"
    restart = shown["reliant-isolation-qubesd-restart"]["cmd"]
    assert {"name": "systemctl try-restart qubesd.service"} in restart
    assert any("onchanges" in item for item in restart if isinstance(item, dict))
    salt_minion.set_pillar({"shards": {"enabled": False}})
    shown = salt_minion.run("state.show_sls", "reliant.isolation", check=True).data
    assert list(shown) == ["reliant-isolation-needs-shards"]
