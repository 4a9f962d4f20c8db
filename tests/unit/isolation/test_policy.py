"""reliant_policy: the generated qrexec policy, checked by an independent oracle that
parses it strictly and evaluates it the way qrexec does."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import isolation_helpers as helpers
import pytest
import qrexec_policy_oracle as oracle
import shards_helpers
from lxml import etree
from reliant import store
from reliant.isolation import policy

SHARD_TAGS = ("reliant-shard-sflc_0_1", "reliant-shard-sflc_0_2")
SERVICES = policy.DEFAULT_SERVICES


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(runtime dir, persistent dir) with the persistent file installed, as after converge."""
    run, etc = tmp_path / "run", tmp_path / "etc"
    run.mkdir()
    etc.mkdir()
    (etc / policy.POLICY_FILE_NAME).write_bytes(
        policy.render_persistent_policy(policy.PolicySettings()))
    return run, etc


def write_settings(tmp_path: Path, **values) -> str:
    path = tmp_path / "isolation.json"
    settings = policy.settings_from_mapping(values)
    path.write_bytes(policy.render_settings(settings))
    return str(path)


def groups_of(domains: dict[str, oracle.Domain]) -> dict[str, str]:
    """Group tag of each domain; dom0 is core whether suture tagged it or not."""
    return {name: next((t for t in d.tags if t.startswith("reliant-")), "reliant-core")
            for name, d in domains.items()}


def targets_of(source: str, domains: dict[str, oracle.Domain]) -> list[tuple[str, str]]:
    """Every target a call from `source` may name, with the group it reaches."""
    group = groups_of(domains)
    found = [(name, group[name]) for name in domains if name != source]
    dispvm = domains[source].default_dispvm
    if dispvm:
        found.append(("@dispvm", group[dispvm]))
    found += [(f"@dispvm:{name}", group[name]) for name, d in domains.items()
              if d.template_for_dispvms]
    return found


def sutured(tmp_path: Path, run: Path, monkeypatch) -> etree._Element:
    """The library's suture of the split fixture, writing the runtime policy into `run`."""
    monkeypatch.setattr(policy, "SETTINGS_PATH", str(tmp_path / "absent.json"))
    scene = shards_helpers.split_scene(tmp_path / "dom0")
    result = scene.suture(policy_dir=str(run))
    assert not [p for p in result.problems if p.severity == "error"], result.problems
    return shards_helpers.load(scene.merged)


def test_suture_tags_every_qube_with_the_group_of_its_pools(dirs, tmp_path, monkeypatch):
    root = sutured(tmp_path, dirs[0], monkeypatch)
    tags = {name: sorted(t for t in d.tags if t.startswith("reliant-"))
            for name, d in helpers.system_info(root).items()}
    wanted = helpers.expected_groups(helpers.load(helpers.MERGED))
    assert tags.pop("dom0") == [] and wanted.pop("dom0") == "reliant-core"
    assert tags == {name: [group] for name, group in wanted.items()}


def test_every_cross_group_call_is_denied_and_same_group_calls_fall_through(
        dirs, tmp_path, monkeypatch):
    run, etc = dirs
    root = sutured(tmp_path, run, monkeypatch)
    helpers.add_disposable(root, "disp4242", 4242, "secret-dvm")
    helpers.add_disposable(root, "disp4343", 4343, "default-dvm")
    rules = oracle.load_policy([run, etc])
    assert rules, "the runtime file holds rules"
    domains = helpers.system_info(root)
    groups = groups_of(domains)
    assert set(groups.values()) == {"reliant-core", *SHARD_TAGS}
    assert groups["disp4242"] == "reliant-shard-sflc_0_1"
    checked = {"deny": 0, "fall-through": 0}
    for service in policy.DEFAULT_SERVICES:
        for source in domains:
            if source == "dom0":
                continue  # qrexec does not ask policy for calls from dom0
            for target, target_group in targets_of(source, domains):
                rule = oracle.first_match(rules, service, "+", source, target, domains)
                if groups[source] != target_group:
                    assert rule is not None and rule.action == "deny", (service, source, target)
                    checked["deny"] += 1
                else:
                    assert rule is None, (service, source, target, rule)
                    checked["fall-through"] += 1
    assert checked["deny"] > 1000 and checked["fall-through"] > 500


def test_the_ask_dialog_offers_no_target_of_another_group(dirs, tmp_path, monkeypatch):
    run, etc = dirs
    (etc / "90-default.policy").write_text("* * @anyvm @anyvm ask\n")
    root = sutured(tmp_path, run, monkeypatch)
    rules = oracle.load_policy([run, etc])
    domains = helpers.system_info(root)
    group = groups_of(domains)
    offered = 0
    for service in policy.DEFAULT_SERVICES:
        for source in domains:
            if source == "dom0":
                continue
            for target in oracle.targets_for_ask(rules, service, "+", source, domains):
                assert group[target.removeprefix("@dispvm:")] == group[source], (source, target)
                offered += 1
    assert offered > 100
    # without the per-caller rules, qrexec would offer the core disposable to shard qubes
    settings = policy.PolicySettings()
    plain = policy.render_runtime_policy(policy.groups_of_store(root), settings)
    plain_rules = (oracle.parse_policy(plain.decode(), "plain")
                   + oracle.parse_policy("* * @anyvm @anyvm ask\n", "90-default"))
    assert "@dispvm:default-dvm" in oracle.targets_for_ask(plain_rules, "qubes.Filecopy", "+",
                                                           "deep-mail", domains)


def test_generated_rules_come_before_the_users_rules(dirs, tmp_path):
    run, etc = dirs
    (etc / "30-user.policy").write_text("qubes.Filecopy * @anyvm @anyvm allow\n")
    (etc / "90-default.policy").write_text("qubes.Filecopy * @anyvm @anyvm ask\n"
                                           "qubes.OpenInVM * @anyvm @dispvm allow\n")
    policy.write_runtime_policy(str(run), helpers.merged_tagged(),
                                        settings_path=str(tmp_path / "absent.json"))
    rules = oracle.load_policy([run, etc])
    domains = helpers.system_info(helpers.merged_tagged())
    assert oracle.first_match(rules, "qubes.Filecopy", "+", "secret", "work",
                              domains).action == "deny"
    assert oracle.first_match(rules, "qubes.Filecopy", "+", "secret", "secret-vpn",
                              domains).where.startswith(str(etc / "30-user.policy"))
    # secret's @dispvm is secret-dvm (same shard): the user's rule applies
    assert oracle.first_match(rules, "qubes.OpenInVM", "+", "secret", "@dispvm",
                              domains).action == "allow"
    # deep-mail's @dispvm is the global default-dvm (core): denied
    assert oracle.first_match(rules, "qubes.OpenInVM", "+", "deep-mail", "@dispvm",
                              domains).action == "deny"


def test_runtime_file_replaces_the_persistent_file_of_the_same_name(dirs, tmp_path):
    run, etc = dirs
    (etc / policy.POLICY_FILE_NAME).write_text("qubes.Filecopy * @anyvm @anyvm allow\n")
    policy.write_runtime_policy(str(run), helpers.merged_tagged(),
                                        settings_path=str(tmp_path / "absent.json"))
    files = oracle.policy_files([run, etc])
    assert files == [run / policy.POLICY_FILE_NAME]
    rules = oracle.load_policy([run, etc])
    assert all(rule.action == "deny" for rule in rules)
    persistent = policy.render_persistent_rules(policy.PolicySettings())
    runtime = (run / policy.POLICY_FILE_NAME).read_text().splitlines()
    assert set(persistent) <= set(runtime), "the runtime file keeps the persistent rules"


def test_every_generated_file_is_strict_policy_v5(dirs, tmp_path):
    run, etc = dirs
    settings = write_settings(tmp_path, notify=False, services=["*", "my.Service"],
                              directions=["shard-to-core"])
    policy.write_runtime_policy(str(run), helpers.merged_tagged(), settings_path=settings)
    for path in (run / policy.POLICY_FILE_NAME, etc / policy.POLICY_FILE_NAME):
        assert set(path.name) <= oracle.FILE_NAME_CHARS
        oracle.parse_policy(path.read_text(), path.name)
    rules = oracle.load_policy([run])
    assert {rule.params.get("notify") for rule in rules} == {"no"}
    assert {rule.service for rule in rules} == {None, "my.Service"}
    assert all(rule.target.endswith("reliant-core") or rule.target == "@adminvm"
               or rule.target == "@dispvm" for rule in rules)


#: Shard qubes of the fixture whose @dispvm is the global default-dvm (core).
CORE_DISPVM_CALLERS = {"deep-mail", "deep-notes", "secret-dvm", "secret-vpn"}


@pytest.mark.parametrize(("directions", "pairs", "callers"), [
    (["core-to-shard"], {("reliant-core", s) for s in SHARD_TAGS}, set()),
    (["shard-to-core"], {(s, "reliant-core") for s in SHARD_TAGS}, CORE_DISPVM_CALLERS),
    (["shard-to-shard"], set(itertools.permutations(SHARD_TAGS, 2)), set()),
])
def test_directions_select_the_pairs(dirs, tmp_path, directions, pairs, callers):
    run, _ = dirs
    settings = write_settings(tmp_path, directions=directions)
    policy.write_runtime_policy(str(run), helpers.merged_tagged(), settings_path=settings)
    rules = oracle.load_policy([run])
    by_caller = [r for r in rules if r.target == "@dispvm" and not r.source.startswith("@")]
    by_tag = [r for r in rules if r.source == "@tag:reliant-foreign-dispvm"]
    assert {r.source for r in by_caller} == callers
    assert {r.target for r in by_tag} == {"@dispvm"} and len(by_tag) == len(SERVICES)
    pair_rules = [r for r in rules if r.target != "@dispvm"]
    assert len(rules) == len(pair_rules) + len(by_caller) + len(by_tag)
    found = {(r.source.removeprefix("@tag:"), r.target.split("@tag:")[-1].replace(
        "@adminvm", "reliant-core")) for r in pair_rules}
    assert found == pairs
    per_pair = {pair: 3 if pair[1] == "reliant-core" else 2 for pair in pairs}
    services = len(policy.DEFAULT_SERVICES)
    assert len(pair_rules) == sum(per_pair.values()) * services
    assert len(by_caller) == len(callers) * services


def test_services_argument_replaces_the_settings(dirs, tmp_path):
    run, _ = dirs
    policy.write_runtime_policy(str(run), helpers.merged_tagged(), ["qubes.Filecopy"],
                                        settings_path=str(tmp_path / "absent.json"))
    assert {rule.service for rule in oracle.load_policy([run])} == {"qubes.Filecopy"}


def test_unchanged_content_is_not_rewritten_and_no_shard_removes_the_file(dirs, tmp_path):
    run, _ = dirs
    absent = str(tmp_path / "absent.json")
    path = run / policy.POLICY_FILE_NAME
    assert policy.write_runtime_policy(str(run), helpers.merged_tagged(),
                                               settings_path=absent)
    inode = path.stat().st_ino
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not policy.write_runtime_policy(str(run), helpers.merged_tagged(),
                                                   settings_path=absent)
    assert path.stat().st_ino == inode
    core_only = helpers.tagged(helpers.load(helpers.CORE))
    assert policy.write_runtime_policy(str(run), core_only, settings_path=absent)
    assert not path.exists()
    assert not policy.write_runtime_policy(str(run), core_only, settings_path=absent)


def test_missing_policy_dir_is_created(tmp_path):
    run = tmp_path / "run" / "qubes" / "policy.d"
    assert policy.write_runtime_policy(str(run), helpers.merged_tagged(),
                                               settings_path=str(tmp_path / "absent.json"))
    assert oracle.load_policy([run])


def test_a_failed_write_keeps_the_previous_file(dirs, tmp_path, monkeypatch):
    run, _ = dirs
    absent = str(tmp_path / "absent.json")
    policy.write_runtime_policy(str(run), helpers.merged_tagged(), settings_path=absent)
    before = (run / policy.POLICY_FILE_NAME).read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(store.StoreError, match="No space left"):
        policy.write_runtime_policy(str(run), helpers.merged_tagged(), ["qubes.Filecopy"],
                                            settings_path=absent)
    assert (run / policy.POLICY_FILE_NAME).read_bytes() == before
    assert sorted(os.listdir(run)) == [policy.POLICY_FILE_NAME]


def test_an_untagged_qube_is_refused_by_name(dirs, tmp_path):
    run, _ = dirs
    root = helpers.merged_tagged()
    root.find("domains/domain[@id='domain-17']/tags").clear()
    with pytest.raises(policy.PolicyError, match="'secret' carries no group tag"):
        policy.write_runtime_policy(str(run), root,
                                            settings_path=str(tmp_path / "absent.json"))
    assert not (run / policy.POLICY_FILE_NAME).exists()


def test_a_qube_with_two_group_tags_is_refused_by_name(dirs, tmp_path):
    run, _ = dirs
    root = helpers.merged_tagged()
    tags = root.find("domains/domain[@id='domain-10']/tags")
    tags.append(tags[0].makeelement("tag", name="reliant-shard-sflc_0_1"))
    with pytest.raises(policy.PolicyError, match="'work' carries more than one"):
        policy.write_runtime_policy(str(run), root,
                                            settings_path=str(tmp_path / "absent.json"))


def test_persistent_file_names_no_shard():
    text = policy.render_persistent_policy(policy.PolicySettings()).decode()
    root = helpers.load(helpers.MERGED)
    secrets = set(helpers.shard_of_pool(root)) | set(helpers.shard_of_pool(root).values())
    secrets |= {n for n, g in helpers.expected_groups(root).items() if g != "reliant-core"}
    assert secrets and not any(secret in text for secret in secrets)
    assert "reliant-shard" not in text
    rules = oracle.parse_policy(text, "persistent")
    assert [(r.service, r.source, r.target, r.action) for r in rules] == [
        (service, "@tag:reliant-foreign-dispvm", "@dispvm", "deny") for service in SERVICES]


@pytest.mark.parametrize(("values", "message"), [
    ({"services": []}, "list is empty"),
    ({"services": ["qubes.Filecopy+arg"]}, "not a qrexec service name"),
    ({"services": ["bad service"]}, "not a qrexec service name"),
    ({"services": "qubes.Filecopy"}, "must be a list"),
    ({"directions": ["sideways"]}, "direction 'sideways'"),
    ({"policy_file": "20-Reliant.policy"}, "refuses the characters"),
    ({"policy_file": "20-reliant"}, "must end in .policy"),
    ({"policy_file": ".20-reliant.policy"}, "leading dot"),
    ({"policy_file": "95-reliant.policy"}, "sorts after 30-user.policy"),
    ({"notify": "yes"}, "notify must be true or false"),
    ({"shard_roots": ["relative/dir"]}, "expected an absolute path"),
    ({"colour": "red"}, "unknown keys colour"),
])
def test_bad_settings_are_refused_with_the_culprit(values, message):
    with pytest.raises(policy.PolicyError, match=message):
        policy.settings_from_mapping(values)


def test_settings_round_trip_and_bad_file(tmp_path):
    path = write_settings(tmp_path, services=["qubes.Filecopy"], notify=False)
    settings = policy.load_settings(path)
    assert settings.services == ("qubes.Filecopy",) and settings.notify is False
    assert json.loads(Path(path).read_text())["directions"] == list(policy.DIRECTIONS)
    defaults = policy.PolicySettings()
    assert policy.load_settings(str(tmp_path / "absent.json")) == defaults
    Path(path).write_text("{not json")
    with pytest.raises(policy.PolicyError, match=r"isolation\.json"):
        policy.load_settings(path)


def test_extension_paths_and_purelib(tmp_path):
    text = policy.render_extension_paths("/usr/lib/reliant")
    namespace: dict = {}
    exec(compile(text, "_paths.py", "exec"), namespace)
    assert namespace["LIBDIR"] == "/usr/lib/reliant"
    assert namespace["SETTINGS"] == policy.SETTINGS_PATH
    with pytest.raises(policy.PolicyError, match="expected an absolute path"):
        policy.render_extension_paths("usr/lib/reliant")
    assert os.path.isabs(policy.python_purelib(sys.executable))
    with pytest.raises(policy.PolicyError, match="cannot ask for its site-packages"):
        policy.python_purelib(str(tmp_path / "no-python"))


def test_nothing_installed_under_etc_names_a_shard(tmp_path):
    root = helpers.load(helpers.MERGED)
    pools = helpers.shard_of_pool(root)
    secrets = set(pools) | set(pools.values())
    secrets |= {n for n, g in helpers.expected_groups(root).items() if g != "reliant-core"}
    settings = policy.settings_from_mapping({"services": ["*"], "notify": False})
    plan = policy.install_plan("/etc/qubes/policy.d", settings,
                                       str(tmp_path / "isolation.json"))
    assert len(plan) == 2 and all(data for data in plan.values())
    for path, data in plan.items():
        assert not [s for s in secrets | {"reliant-shard"} if s.encode() in data], path
