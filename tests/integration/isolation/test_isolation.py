"""Kitchen suite `isolation` on R4.3: after converge, open two shards, suture them with the CLI
and through qubesd's start, and check the policy files the way qrexec reads them.

The tests run in file order and share the container's state: converge -> shards open
-> shards hidden.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import audit_plants
import pytest
import qrexec_policy_oracle as oracle
from reliant import store
from reliant.isolation import guard

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(os.environ.get("KITCHEN_PLATFORM") == "dom0-r4.2",
                                reason="R4.3 (R4.2: test_isolation_r42.py)")

NAME = "20-reliant-isolation.policy"
ETC, RUN = "/etc/qubes/policy.d", "/run/qubes/policy.d"
SHARD_IDS = ("sflc_0_1", "sflc_0_2")
SHARD_QUBES = ("secret", "secret-dvm", "secret-vpn", "deep-mail", "deep-notes")
SERVICES = ("qubes.Filecopy", "qubes.OpenInVM", "qubes.OpenURL", "qubes.ClipboardPaste",
            "qubes.VMShell", "qubes.VMExec", "qubes.StartApp")


def container(host) -> str:
    return host.backend.name


def read(host, path: str) -> str:
    return host.file(path).content_string


def local_policy_dirs(host, tmp: Path) -> list[Path]:
    """Copies of the container's /run and /etc policy directories (qrexec's read order)."""
    dirs = []
    for remote in (RUN, ETC):
        local = tmp / remote.strip("/").replace("/", "_")
        local.mkdir()
        for name in host.check_output(f"ls -1 {remote}").split():
            (local / name).write_text(read(host, f"{remote}/{name}"))
        dirs.append(local)
    return dirs


def secrets_in_etc(host) -> str:
    words = "|".join(SHARD_IDS + SHARD_QUBES + ("reliant-shard",))
    return host.run(f"grep -rlE '{words}' /etc/qubes /etc/reliant").stdout


def test_persistent_policy_and_settings_are_installed(host):
    policy = host.file(f"{ETC}/{NAME}")
    assert policy.exists and policy.mode == 0o644 and policy.user == "root"
    rules = oracle.parse_policy(policy.content_string, NAME)
    assert {(r.source, r.target, r.action) for r in rules} == {
        ("@tag:reliant-foreign-dispvm", "@dispvm", "deny")}
    assert [r.service for r in rules] == list(SERVICES)
    settings = json.loads(read(host, "/etc/reliant/isolation.json"))
    assert settings["notify"] is False and settings["services"] == list(SERVICES)
    assert settings["policy_file"] == NAME
    assert secrets_in_etc(host) == ""


def test_extension_is_registered_and_loads_over_the_installed_library(host):
    out = host.check_output(
        "python3 -c \"import importlib.metadata as m; "
        "print([e.value for e in m.entry_points(group='qubes.ext')])\"")
    assert out == "['reliant_isolation:ReliantIsolation']"
    subprocess.run(["podman", "cp", str(ROOT / "tests/doubles/qubes_ext"),
                    f"{container(host)}:/tmp/qubes_ext"], check=True)
    out = host.check_output("cd /tmp && PYTHONPATH=/tmp/qubes_ext python3 -c "
                            "\"import qubes.ext; print(sorted(type(e).__name__ "
                            "for e in qubes.ext.get_extensions()))\"")
    assert out == "['ReliantIsolation']"


@pytest.fixture(scope="module")
def shards_open(host, tmp_path_factory):
    """Two shards of the merged fixture opened under /run/shufflecake."""
    local = tmp_path_factory.mktemp("shufflecake")
    audit_plants.make_shards(local)
    host.check_output("mkdir -p /run/shufflecake")
    for sid in SHARD_IDS:
        (local / sid / "pool").mkdir(exist_ok=True)
        subprocess.run(["podman", "cp", str(local / sid), f"{container(host)}:/run/shufflecake/"],
                       check=True)
    return local


def check_runtime_policy(host, tmp: Path) -> None:
    """Every cross-group call of every service is denied, same-group calls match nothing."""
    run_dir, etc_dir = local_policy_dirs(host, tmp)
    assert oracle.policy_files([run_dir, etc_dir]) == [run_dir / NAME]
    rules = oracle.load_policy([run_dir, etc_dir])
    merged = store.parse(host.file("/run/reliant/qubes.xml").content, "merged")
    qubes, global_refs = guard.facts_from_store(merged)
    group = {name: guard.group_of(q) for name, q in qubes.items()}
    assert {group[n] for n in SHARD_QUBES} == {f"reliant-shard-{s}" for s in SHARD_IDS}
    domains = {name: oracle.Domain(name, q.klass, q.tags, q.template_for_dispvms,
                                   guard.effective_default_dispvm(
                                       q, global_refs.get("default_dispvm")))
               for name, q in qubes.items()}
    denied = 0
    for service in SERVICES:
        for source in qubes:
            if source == "dom0":
                continue
            targets = [(t, group[t]) for t in qubes if t != source]
            if domains[source].default_dispvm:
                targets.append(("@dispvm", group[domains[source].default_dispvm]))
            for target, target_group in targets:
                rule = oracle.first_match(rules, service, "+", source, target, domains)
                if target_group != group[source]:
                    assert rule and rule.action == "deny" and rule.params == {"notify": "no"}
                    denied += 1
                else:
                    assert rule is None, (service, source, target)
    assert denied > 500


def test_cli_suture_writes_the_runtime_policy(host, shards_open, tmp_path):
    host.check_output("systemctl stop qubesd")
    result = host.run("reliant-shard suture --policy-dir /run/qubes/policy.d")
    assert result.rc == 0, result.stderr
    policy = host.file(f"{RUN}/{NAME}")
    assert policy.exists and policy.mode == 0o644
    check_runtime_policy(host, tmp_path)


def test_qubesd_start_sutures_again_without_changing_the_policy(host, shards_open, tmp_path):
    before = host.file(f"{RUN}/{NAME}").content
    host.check_output("systemctl start qubesd")
    assert host.service("qubesd").is_running
    assert host.file(f"{RUN}/{NAME}").content == before
    check_runtime_policy(host, tmp_path)
    assert secrets_in_etc(host) == ""


def test_salt_reports_nothing_while_shards_are_open(host, shards_open):
    out = host.run("salt-call --local --out json state.apply reliant.isolation test=True")
    assert out.rc == 0, out.stderr
    states = json.loads(out.stdout)["local"]
    assert not [k for k, v in states.items() if v["changes"] or v["result"] is None]
    assert not any(word in out.stdout for word in SHARD_IDS + SHARD_QUBES)


def test_hidden_shards_leave_no_runtime_policy_and_nothing_in_etc(host, shards_open):
    host.check_output("systemctl stop qubesd")
    host.check_output("rm -rf /run/shufflecake/sflc_0_1 /run/shufflecake/sflc_0_2")
    host.check_output("systemctl start qubesd")
    assert not host.file(f"{RUN}/{NAME}").exists
    assert host.file(f"{ETC}/{NAME}").exists
    assert secrets_in_etc(host) == ""
    core = read(host, "/var/lib/qubes/qubes.xml")
    assert not any(word in core for word in SHARD_IDS + SHARD_QUBES + ("reliant-",))


def test_clean_removes_policy_settings_and_extension(host):
    site = host.check_output(
        "python3 -c \"import sysconfig; print(sysconfig.get_paths()['purelib'])\"")
    assert host.file(f"{site}/reliant_isolation/__init__.py").exists
    out = host.run("salt-call --local --out json state.apply reliant.isolation.clean")
    assert out.rc == 0, out.stdout + out.stderr
    for path in (f"{ETC}/{NAME}", f"{RUN}/{NAME}", "/etc/reliant/isolation.json",
                 f"{site}/reliant_isolation", f"{site}/reliant_isolation-0.1.0.dist-info"):
        assert not host.file(path).exists, path
    assert host.service("qubesd").is_running
    again = json.loads(host.check_output(
        "salt-call --local --out json state.apply reliant.isolation.clean"))["local"]
    assert not [k for k, v in again.items() if v["changes"]]
