"""reliant.volatile and reliant.audit through real salt-call on a temporary root.

GRUB and dracut are the doubles of tests/doubles/dom0-boot installed in the root.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import volatile_root

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture
def boot(tmp_path: Path, monkeypatch) -> dict:
    root, logs = tmp_path / "root", tmp_path / "logs"
    for name, value in volatile_root.install(root, logs).items():
        monkeypatch.setenv(name, value)
    return {"enabled": True, **volatile_root.settings(root)}


def runs(boot: dict, tool: str) -> int:
    log = Path(boot["state_file"]).parents[3].parent / "logs" / f"{tool}.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def only_state(result, state_id: str) -> dict:
    return next(ret for ret in result.states.values() if ret["__id__"] == state_id)


def test_volatile_converges_once_and_switches_only_the_default(salt_minion, boot):
    salt_minion.set_pillar({"volatile": boot})
    predicted = only_state(salt_minion.run("state.apply", "reliant.volatile", "test=True"),
                           "reliant-volatile-boot")
    assert predicted["result"] is None
    first = only_state(salt_minion.run("state.apply", "reliant.volatile", check=True),
                       "reliant-volatile-boot")
    assert first["result"] is True and first["changes"] == predicted["changes"]
    assert set(first["changes"]) == {"written", "edited", "journal", "systemd", "initramfs",
                                     "grub.cfg"}
    assert (runs(boot, "dracut"), runs(boot, "grub2-mkconfig")) == (1, 1)

    for extra in ((), ("test=True",)):
        again = only_state(salt_minion.run("state.apply", "reliant.volatile", *extra, check=True),
                           "reliant-volatile-boot")
        assert again["result"] is True and again["changes"] == {}
    assert (runs(boot, "dracut"), runs(boot, "grub2-mkconfig")) == (1, 1)

    salt_minion.set_pillar({"volatile": {**boot, "default_entry": "maintenance"}})
    switched = only_state(salt_minion.run("state.apply", "reliant.volatile", check=True),
                          "reliant-volatile-boot")
    assert switched["changes"] == {"edited": boot["default_grub"],
                                   "grub.cfg": f"{boot['mkconfig']} -o {boot['grub_cfg']}"}
    assert (runs(boot, "dracut"), runs(boot, "grub2-mkconfig")) == (1, 2)
    assert 'set default="reliant-maintenance"' in Path(boot["grub_cfg"]).read_text()


def test_volatile_refuses_to_change_boot_setup_from_a_volatile_dom0(salt_minion, boot):
    Path(boot["cmdline"]).write_text("ro systemd.volatile=overlay\n")
    Path(boot["mountinfo"]).write_text("30 1 0:31 / / rw - overlay overlay rw,lowerdir=/sysroot\n")
    Path(boot["volatile_root"]).parent.mkdir(parents=True, exist_ok=True)
    Path(boot["volatile_root"]).symlink_to("/dev/dm-0")
    salt_minion.set_pillar({"volatile": boot})
    result = salt_minion.run("state.apply", "reliant.volatile")
    ret = only_state(result, "reliant-volatile-boot")
    assert result.returncode != 0 and ret["result"] is False
    assert ret["comment"].startswith("dom0 runs in volatile mode: a change to the boot setup "
                                     "would be lost at shutdown")
    assert not Path(boot["grub_d"], "15_reliant_volatile").exists()


def test_a_boot_that_asked_for_volatile_but_writes_to_disk_fails(salt_minion, boot):
    salt_minion.set_pillar({"volatile": boot})
    salt_minion.run("state.apply", "reliant.volatile", check=True)
    Path(boot["cmdline"]).write_text("ro systemd.volatile=overlay systemd.swap=0\n")
    result = salt_minion.run("state.apply", "reliant.volatile")
    ret = only_state(result, "reliant-volatile-boot")
    assert result.returncode != 0 and ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == (
        "volatile boot setup in place (default entry: volatile); systemd.volatile=overlay is "
        "on the kernel command line but / is ext4: every write of this boot reaches the disk "
        "(the initramfs lacks systemd-volatile-root or the overlay driver)")


def test_volatile_clean_restores_grub_default(salt_minion, boot):
    original = Path(boot["default_grub"]).read_text()
    salt_minion.set_pillar({"volatile": boot})
    salt_minion.run("state.apply", "reliant.volatile", check=True)
    cleaned = only_state(salt_minion.run("state.apply", "reliant.volatile.clean", check=True),
                         "reliant-volatile-clean")
    assert cleaned["result"] is True and "removed" in cleaned["changes"]
    assert Path(boot["default_grub"]).read_text() == original
    again = only_state(salt_minion.run("state.apply", "reliant.volatile.clean", check=True),
                       "reliant-volatile-clean")
    assert again["changes"] == {}


def test_volatile_status_reports_the_mode(salt_minion, boot):
    salt_minion.set_pillar({"volatile": boot})
    result = salt_minion.run("reliant_volatile.status", f"settings={{'cmdline': '{boot['cmdline']}', "
                             f"'mountinfo': '{boot['mountinfo']}'}}", check=True)
    assert result.data["mode"] == "maintenance"


def test_audit_state_fails_on_a_trace_without_naming_it(salt_minion, tmp_path):
    run = tmp_path / "run/shufflecake"
    core = tmp_path / "qubes.xml"
    core.write_text((FIXTURES / "qubes-r4.3-core.xml").read_text())
    logs = tmp_path / "log"
    logs.mkdir()
    shard = run / "s1"
    shard.mkdir(parents=True)
    (shard / "domains.xml").write_text(
        '<reliant-shard version="1" id="s1"><qid-range first="1000" last="1499"/>'
        '<depends-on/><pools/><domains><domain id="domain-1000" class="AppVM"><properties>'
        '<property name="name">hidden-mail</property><property name="qid">1000</property>'
        '<property name="label">red</property></properties><features/><tags/></domain>'
        "</domains></reliant-shard>\n")
    pillar = {"shards": {"core": str(core), "roots": [str(run)]},
              "audit": {"paths": [str(logs)]}}
    salt_minion.set_pillar(pillar)
    clean = only_state(salt_minion.run("state.apply", "reliant.audit", check=True),
                       "reliant-audit-clean")
    assert clean["result"] is True
    assert clean["comment"] == "no trace of the 1 open shard(s) on dom0's disk"

    (logs / "messages").write_text("qrexec: hidden-mail started\n")
    result = salt_minion.run("state.apply", "reliant.audit")
    failed = only_state(result, "reliant-audit-clean")
    assert result.returncode != 0 and failed["result"] is False
    assert failed["comment"].startswith(f"1 trace(s) of open shards on dom0's disk ({logs}: 1)")
    assert "hidden-mail" not in result.stderr + str(result.data)

    listed = salt_minion.run("reliant_audit.run", check=True).data
    assert [(f["path"], f["reason"]) for f in listed["findings"]] == [
        (str(logs / "messages"), "content names qube name 'hidden-mail' of shard s1")]
