"""The kitchen runner fails a suite whose state fails, and always removes its container."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

ROOT = run.ROOT
PLATFORM = "dom0-r4.3"
INSTANCE = run.instance_name("runner-check", PLATFORM)


def kitchen_file(tmp_path: Path, pillar: dict, verifier: str) -> Path:
    config = yaml.safe_load((ROOT / "kitchen.yml").read_text())
    pillar_file = tmp_path / "pillar.sls"
    pillar_file.write_text(yaml.safe_dump({"reliant": pillar}))
    config["provisioner"]["pillars_from_files"] = {"reliant.sls": str(pillar_file)}
    config["verifier"]["command"] = verifier
    config["suites"] = [{"name": "runner-check", "includes": [PLATFORM]}]
    path = tmp_path / "kitchen.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def container_exists(name: str) -> bool:
    return subprocess.run(["podman", "container", "exists", name]).returncode == 0


@pytest.mark.parametrize(
    ("pillar", "verifier"),
    [
        ({"shards": {"roots": "/run/shufflecake"}}, "true"),  # a state fails at converge
        ({}, "false"),  # converge passes, the verifier fails
    ],
    ids=["failing-state", "failing-verifier"],
)
def test_a_failure_fails_the_run_and_removes_the_container(tmp_path, capsys, pillar, verifier):
    assert run.main(["--kitchen", str(kitchen_file(tmp_path, pillar, verifier))]) == 1
    assert "kitchen: 0 passed, 1 failed" in capsys.readouterr().out
    assert not container_exists(INSTANCE)


def test_a_passing_suite_passes(tmp_path, capsys):
    assert run.main(["--kitchen", str(kitchen_file(tmp_path, {}, "true"))]) == 0
    assert "kitchen: 1 passed, 0 failed" in capsys.readouterr().out
    assert not container_exists(INSTANCE)


# --- states a platform must fail (`reliant_failing_states`) -----------------------------

def state(name: str, result: bool) -> dict:
    return {f"cmd_|-{name}_|-x_|-run": {"__id__": name, "result": result, "comment": name}}


@pytest.mark.parametrize(("returncode", "states", "failing", "ok"), [
    (0, {**state("a", True), **state("b", True)}, frozenset(), True),
    (2, {**state("a", False), **state("b", True)}, frozenset(), False),
    (2, {**state("a", False), **state("b", True)}, frozenset({"a"}), True),
    (0, {**state("a", True), **state("b", True)}, frozenset({"a"}), False),  # did not fail
    (2, {**state("a", False), **state("b", False)}, frozenset({"a"}), False),  # one more
    (0, {**state("a", False)}, frozenset({"a"}), False),  # salt-call said all is well
    (1, None, frozenset(), False),
])
def test_exactly_the_expected_states_fail(returncode, states, failing, ok):
    assert (run.unexpected_failures(returncode, states, failing) == "") is ok


def test_expected_failures_are_per_platform():
    config = yaml.safe_load((ROOT / "kitchen.yml").read_text())
    (isolation,) = [s for s in config["suites"] if s["name"] == "isolation"]
    provisioner = run.merged(config["provisioner"], isolation["provisioner"])
    platforms = {p["name"]: p for p in run.suite_platforms(config, isolation)}
    assert set(platforms) == {"dom0-r4.2", "dom0-r4.3"}
    assert "reliant-isolation-policy" in run.expected_failures(provisioner,
                                                                platforms["dom0-r4.2"])
    assert run.expected_failures(provisioner, platforms["dom0-r4.3"]) == frozenset()


@pytest.mark.parametrize(("suite", "names"), [
    ({"name": "s"}, ["dom0-r4.2", "dom0-r4.3"]),
    ({"name": "s", "includes": ["dom0-r4.3"]}, ["dom0-r4.3"]),
    ({"name": "s", "excludes": ["dom0-r4.3"]}, ["dom0-r4.2"]),
    ({"name": "s", "includes": ["dom0-r4.2"], "excludes": ["dom0-r4.2"]}, []),
])
def test_suites_run_on_the_platforms_they_include_and_do_not_exclude(suite, names):
    config = yaml.safe_load((ROOT / "kitchen.yml").read_text())
    assert [p["name"] for p in run.suite_platforms(config, suite)] == names
