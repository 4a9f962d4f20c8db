"""qubesd that does not start on a merged store starts on core only, and `status`
says so and why (the qubesd unit played by a host double, qubesd by its double)."""

from __future__ import annotations

import json

import pytest
from admission_scene import SHARD_QUBES, domains, shard_scene
from qubesd.qubesd_double import Refused, Store
from reliant import cli, commands, store
from reliant.vocab import ShardError
from shards_helpers import write_settings


class UnitHost(commands.Host):
    """systemd with the qubesd unit and the formula's drop-in: ExecStartPre suture,
    qubesd (the double, which here also refuses any store holding a qube named in
    `refuse`: what no check before it foresaw), ExecStartPost started, ExecStopPost
    dissect --final, and Restart=on-failure (one restart is enough here)."""

    def __init__(self, merged, base):
        self.merged, self.base, self.active, self.refuse = merged, base, False, set()
        self.exits = []

    def volatile_status(self, settings):  # the volatile root: shards may be merged
        return {"mode": "volatile", "root_fstype": "overlay", "problems": []}

    def desktop(self):  # no desktop: no menus
        return None

    def qubesd_active(self):
        return self.active

    def wait_active(self, seconds=60):
        return self.active

    def _attempt(self):
        assert cli.main(["suture"], host=self) == 0
        try:
            Store(str(self.merged), str(self.base)).load()
            if self.refuse & set(domains(store.load(str(self.merged)))):
                raise Refused("a load failure no check foresaw")
        except Refused:
            self.exits.append("failed")
            assert cli.main(["dissect", "--final"], host=self) == 0
            return False
        self.active = True
        assert cli.main(["started"], host=self) == 0
        return True

    def qubesd(self, action):
        if action == "stop":
            self.active = False
            assert cli.main(["dissect", "--final"], host=self) == 0
            return
        if not self._attempt():
            self._attempt()  # Restart=on-failure
            raise ShardError("systemctl start qubesd failed: exit 1")


@pytest.fixture
def unit(tmp_path, monkeypatch):
    scene = shard_scene(tmp_path)
    write_settings(scene, monkeypatch, policy_dir="", real_loader_check=False)
    monkeypatch.setenv("SERVICE_RESULT", "exit-code")
    monkeypatch.setenv("EXIT_CODE", "exited")
    monkeypatch.setenv("EXIT_STATUS", "1")
    return scene, UnitHost(scene.merged, tmp_path / "base")


def merged_names(scene):
    return set(domains(store.load(str(scene.merged))))


def test_qubesd_falls_back_to_core_only_and_status_explains(unit, capsys):
    scene, host = unit
    host.refuse = {"deep-mail"}
    assert cli.main(["attach"], host=host) == 1
    assert host.active and host.exits == ["failed"]
    assert not merged_names(scene) & set().union(*SHARD_QUBES.values())
    err = capsys.readouterr().err
    assert "qubesd did not start on the merged store" in err and "sflc_0_2" in err
    assert "EXIT_STATUS=1" in err

    assert cli.main(["status"], host=host) == 0
    text = capsys.readouterr().out
    assert text.startswith("FALLBACK: qubesd did not start on the merged store")
    assert "shard sflc_0_1" in text and "detached" in text
    assert cli.main(["status", "--json"], host=host) == 0
    assert "every shard is detached" in json.loads(capsys.readouterr().out)["fallback"]

    host.qubesd("stop")  # a plain restart keeps core only: the shards stay detached
    host.qubesd("start")
    assert not merged_names(scene) & SHARD_QUBES["sflc_0_1"]

    host.refuse = set()  # fixed: attach merges the shards again
    assert cli.main(["attach"], host=host) == 0
    assert set().union(*SHARD_QUBES.values()) <= merged_names(scene)
    assert cli.main(["status", "--json"], host=host) == 0
    assert json.loads(capsys.readouterr().out)["fallback"] is None


def status_fallback(host, capsys):
    capsys.readouterr()
    assert cli.main(["status", "--json"], host=host) == 0
    return json.loads(capsys.readouterr().out)["fallback"]


def test_a_failure_on_core_only_blames_no_shard(unit, capsys):
    _, host = unit
    host.refuse = {"work"}  # a core qube: qubesd fails on core only too
    with pytest.raises(ShardError):
        host.qubesd("start")
    assert host.exits == ["failed", "failed"] and not host.active
    reason = status_fallback(host, capsys)
    assert "sflc_0_1" in reason
    with pytest.raises(ShardError):
        host.qubesd("start")
    assert status_fallback(host, capsys) == reason  # the core-only failure added nothing
