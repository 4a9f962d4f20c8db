"""The states on each Qubes release, under Salt's loader mocks (the minion sees the dom0
image's release file and rpm's answers): on R4.2 the isolation state fails naming the
missing runtime policy directory and writes nothing, the shards state says that recover
acts as skip; the snapshots state names volumes that bypass create-snapshot."""

from __future__ import annotations

import json

import pytest
import qubes_platforms
import salt_modules
from repo_paths import FIXTURES

policy_state = salt_modules.load("states", "reliant_policy")
policy_module = salt_modules.load("modules", "reliant_policy")
shard_state = salt_modules.load("states", "reliant_shard")
shard_module = salt_modules.load("modules", "reliant_shard")
snapshot_state = salt_modules.load("states", "reliant_snapshot")
snapshot_module = salt_modules.load("modules", "reliant_snapshot")


@pytest.fixture(params=["4.2", "4.3"])
def release(request) -> str:
    return request.param


@pytest.fixture
def configure_loader_modules(tmp_path, release):
    opts = {"test": False, **qubes_platforms.minion_opts(tmp_path / "rpm-double", release)}
    return {policy_module: {"__opts__": opts},
            policy_state: {"__opts__": opts,
                           "__salt__": {"reliant_policy.settings": policy_module.settings}},
            shard_module: {"__opts__": opts},
            shard_state: {"__opts__": opts,
                          "__salt__": {"reliant_shard.settings": shard_module.settings}},
            snapshot_module: {"__opts__": opts},
            snapshot_state: {"__opts__": opts, "__salt__": {}}}


@pytest.mark.parametrize("test", [False, True])
def test_isolation_fails_on_r42_naming_the_runtime_policy_directory(tmp_path, release, test):
    policy_state.__opts__["test"] = test
    etc = tmp_path / "etc" / "qubes" / "policy.d"
    etc.mkdir(parents=True)
    settings = tmp_path / "isolation.json"
    ret = policy_state.installed(str(etc), settings_path=str(settings))
    if release == "4.3":
        assert ret["result"] is (None if test else True), ret
        return
    assert (ret["result"], ret["changes"]) == (False, {})
    assert ret["comment"].startswith(
        "reliant:isolation: qubes-core-qrexec 4.2.25 has no runtime qrexec policy directory "
        "/run/qubes/policy.d (it starts at qubes-core-qrexec 4.3.0): the deny rules between "
        "shards name them")
    assert not any(etc.iterdir()) and not settings.exists()


def test_shards_state_says_when_recover_acts_as_skip(tmp_path, release, monkeypatch):
    config = tmp_path / "reliant.json"
    config.write_text(json.dumps({"core": str(tmp_path / "qubes.xml"),
                                  "roots": [str(tmp_path / "shufflecake")]}))
    ret = shard_state.declared(str(tmp_path / "shufflecake"), config=str(config))
    assert ret["result"] is True
    warning = ("warning: missing_reference: recover acts as skip: qubes-core-dom0 4.2.39 has "
               "no qube feature prohibit-start (it starts at qubes-core-dom0 4.3.19)")
    if release == "4.2":
        assert ret["comment"].startswith(
            f"Every shard declared on the open volumes is as declared; {warning}")
    else:
        assert ret["comment"] == "Every shard declared on the open volumes is as declared"
    config.write_text(json.dumps({"missing_reference": "skip"}))
    assert "warning" not in shard_state.declared(str(tmp_path), config=str(config))["comment"]


def bypassing_store(tmp_path):
    """The core fixture with the root of template debian-13-xfce in the file pool, keeping
    revisions_to_keep=-1: qubesd skips create-snapshot for it from 4.3.30."""
    old = ('<volume name="root" pool="vm-pool" vid="qubes_dom0/vm-debian-13-xfce-root" '
           'revisions_to_keep="2"')
    text = (FIXTURES / "qubes-r4.3-core.xml").read_text()
    assert old in text
    path = tmp_path / "qubes.xml"
    path.write_text(text.replace(old, '<volume name="root" pool="varlibqubes" '
                                 'vid="vm-templates/debian-13-xfce/root" revisions_to_keep="-1"'))
    return path


def test_snapshots_name_the_volumes_that_bypass_create_snapshot(tmp_path, release):
    store = bypassing_store(tmp_path)
    found = snapshot_module.unprotected(str(store))
    if release == "4.2":
        assert found == []
    else:
        assert found == ["volume debian-13-xfce:root (file pool, revisions_to_keep=-1) not "
                         "protected: from qubes-core-dom0 4.3.30 a file-pool volume with "
                         "revisions_to_keep=-1 skips create-snapshot and its image goes to "
                         "libvirt as it is, never read-only; set revisions_to_keep to 0 or 1 "
                         "(qvm-volume config QUBE:VOLUME revisions_to_keep 1) to protect it"]
    assert snapshot_module.unprotected(str(tmp_path / "absent")) == []
    snapshot_state.__salt__.update({
        "reliant_snapshot.plan": lambda settings, remove=False: {"problems": [], "changes": {}},
        "reliant_snapshot.verify": lambda settings: [],
        "reliant_snapshot.unprotected": lambda: found})
    ret = snapshot_state.installed("/usr/lib/qubes/create-snapshot", {})
    assert ret["result"] is True
    assert ret["comment"] == "; ".join(
        ["reliant's create-snapshot: nothing to do", *(f"warning: {t}" for t in found)])
