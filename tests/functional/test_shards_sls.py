"""reliant.shards under Salt's real loaders and state system (salt-call --local).

Paths of the pillar point into the test's root; the systemd files (fixed paths under
/etc/systemd/system) are only ever predicted here (test=True): the kitchen suite
`shards` converges them in a dom0 container.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliant.shards.files import discover, identifiers, init_shard, load_shard
from reliant.volatile.settings import Settings as VolatileSettings

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DECLARATION = "reliant-shard.json"


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A directory under /run, where reliant.shards accepts the merged store."""
    path = Path(tempfile.mkdtemp(prefix="reliant-test-", dir="/run"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dom0(salt_minion, tmp_path: Path, run_dir: Path) -> dict:
    """A core store, a shard root with one shard holding no qube, and pillar for them."""
    core = tmp_path / "qubes.xml"
    core.write_bytes((FIXTURES / "qubes-r4.3-core.xml").read_bytes())
    root = tmp_path / "shufflecake"
    init_shard(str(root / "sflc_0_1"), qid_range=(1000, 1499))
    shards = {"core": str(core), "merged": str(run_dir / "qubes.xml"),
              "roots": [str(root)], "cli": str(tmp_path / "bin" / "reliant-shard"),
              "libdir": str(tmp_path / "lib"), "config": str(tmp_path / "etc" / "reliant.json")}
    salt_minion.set_pillar({"shards": shards, "isolation": {"enabled": False}})
    config = {key: shards[key] for key in ("core", "merged", "roots")}
    Path(shards["config"]).parent.mkdir()
    Path(shards["config"]).write_text(json.dumps(config))
    return {"root": root, "shards": shards, "config": shards["config"]}


def declare(directory: Path, **content) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DECLARATION).write_text(json.dumps(content))


def declared(salt_minion, dom0: dict, *extra: str):
    return salt_minion.run("state.single", "reliant_shard.declared", str(dom0["root"]),
                           f"config={dom0['config']}", *extra)


def only(result) -> dict:
    (ret,) = result.states.values()
    return ret


def test_declared_creates_and_updates_then_reports_nothing(salt_minion, dom0: dict) -> None:
    declare(dom0["root"] / "sflc_0_3", qid_range="2000-2499", depends_on=["../sflc_0_2"])
    declare(dom0["root"] / "sflc_0_2", qid_range="1500-1999", depends_on=["../sflc_0_1"])
    declare(dom0["root"] / "sflc_0_1", qid_range="1000-1299")

    predicted = only(declared(salt_minion, dom0, "test=True"))
    assert predicted["result"] is None
    assert predicted["changes"] == {"shards": {"created": 2, "updated": 1}}
    assert not (dom0["root"] / "sflc_0_2" / "domains.xml").exists()

    applied = declared(salt_minion, dom0)
    assert applied.returncode == 0, applied.data
    assert only(applied)["changes"] == predicted["changes"]
    second = load_shard(str(dom0["root"] / "sflc_0_2"))
    assert (second.qid_range, second.depends_on) == ((1500, 1999), ("sflc_0_1",))
    assert load_shard(str(dom0["root"] / "sflc_0_1")).qid_range == (1000, 1299)
    assert load_shard(str(dom0["root"] / "sflc_0_3")).depends_on == ("sflc_0_2",)

    for extra in ((), ("test=True",)):
        again = only(declared(salt_minion, dom0, *extra))
        assert (again["result"], again["changes"]) == (True, {})


def test_declared_result_names_no_shard(salt_minion, dom0: dict) -> None:
    declare(dom0["root"] / "sflc_0_2", qid_range="1200-1999")  # overlaps sflc_0_1: refused
    declare(dom0["root"] / "sflc_0_3", qid_range="2000-2499", id="deep")
    result = declared(salt_minion, dom0)
    ret = only(result)
    assert result.returncode != 0
    assert ret["result"] is False
    assert ret["changes"] == {"shards": {"created": 1}}
    text = json.dumps(ret)
    for secret in ("sflc_0_1", "sflc_0_2", "sflc_0_3", "deep", "1200", "2000"):
        assert secret not in text
    details = salt_minion.run("reliant_shard.declarations", f"config={dom0['config']}").data
    refused = [entry for entry in details if "error" in entry]
    assert len(refused) == 1 and "overlaps 1000-1499 of shard sflc_0_1" in refused[0]["error"]


def test_present_names_its_shard(salt_minion, dom0: dict) -> None:
    directory = str(dom0["root"] / "sflc_0_2")
    args = ("state.single", "reliant_shard.present", directory, "qid_range=1500-1999",
            "depends_on=[\"../sflc_0_1\"]", f"config={dom0['config']}")
    predicted = only(salt_minion.run(*args, "test=True"))
    assert predicted["result"] is None
    assert predicted["changes"] == {"old": {}, "new": {
        "id": "sflc_0_2", "qid_range": "1500-1999", "depends_on": ["sflc_0_1"]}}
    assert only(salt_minion.run(*args))["changes"] == predicted["changes"]
    assert only(salt_minion.run(*args))["changes"] == {}
    refused = only(salt_minion.run("state.single", "reliant_shard.present", directory,
                                   "qid_range=1000-1999", f"config={dom0['config']}"))
    assert refused["result"] is False
    assert "overlaps 1000-1499 of shard sflc_0_1" in refused["comment"]


def test_execution_module(salt_minion, dom0: dict) -> None:
    config = f"config={dom0['config']}"
    made = salt_minion.run("reliant_shard.init", str(dom0["root"] / "sflc_0_2"),
                           "qid_range=1500-1999", config, check=True).data
    assert made["id"] == "sflc_0_2" and made["qid_range"] == "1500-1999"
    status = salt_minion.run("reliant_shard.status", config, check=True).data
    assert [shard["id"] for shard in status["shards"]] == ["sflc_0_1", "sflc_0_2"]
    assert salt_minion.run("reliant_shard.check", config, check=True).data["ok"] is True
    refused = salt_minion.run("reliant_shard.init", str(dom0["root"] / "sflc_0_2"), config)
    assert refused.returncode != 0
    assert "already exists" in json.dumps(refused.data) + refused.stderr


def test_sls_predicts_the_runtime_pieces(salt_minion, dom0: dict) -> None:
    result = salt_minion.run("state.sls", "reliant.shards", "test=True")
    assert result.returncode == 0, result.data
    states = {ret["__id__"]: ret for ret in result.states.values()}
    for state in ("reliant-shards-library", "reliant-shards-cli", "reliant-shards-config",
                  "reliant-shards-qubesd-dropin", "reliant-shards-dissect-path"):
        assert states[state]["result"] is None, states[state]
    assert not Path(dom0["shards"]["libdir"]).exists()
    assert not Path(dom0["shards"]["cli"]).exists()


def test_sls_installs_library_and_cli(salt_minion, dom0: dict) -> None:
    """The CLI and its library applied for real (sls_id: the CLI requires the library),
    then idempotent. The systemd pieces need systemd: see the kitchen suite."""

    def apply() -> list[dict]:
        run = salt_minion.run("state.sls_id", "reliant-shards-cli", "reliant.shards")
        assert run.returncode == 0, [ret["comment"] for ret in run.states.values()]
        return [ret for ret in run.states.values() if ret["changes"]]

    assert len(apply()) == 2
    libdir = Path(dom0["shards"]["libdir"])
    installed = sorted(str(p.relative_to(libdir)) for p in libdir.rglob("*") if p.is_file())
    shipped = sorted(str(p.relative_to(ROOT / "_utils" / "reliant_lib"))
                     for p in (ROOT / "_utils" / "reliant_lib" / "reliant").rglob("*.py"))
    assert installed == shipped
    assert {"reliant/cli.py", "reliant/operations.py", "reliant/store.py"} <= set(installed)
    cli = Path(dom0["shards"]["cli"])
    assert cli.read_bytes() == (ROOT / "bin" / "reliant-shard").read_bytes()
    assert cli.stat().st_mode & 0o777 == 0o755
    assert apply() == []


def test_sls_config_for_the_cli(salt_minion, dom0: dict) -> None:
    shown = salt_minion.run("state.show_sls", "reliant.shards", check=True).states
    serialize = shown["reliant-shards-config"]["file"]
    dataset = next(arg["dataset"] for arg in serialize if isinstance(arg, dict)
                   and "dataset" in arg)
    shards = dom0["shards"]
    assert dataset == {"core": shards["core"], "merged": shards["merged"],
                       "roots": shards["roots"], "max_depth": 3,
                       "missing_reference": "recover", "real_loader_check": True,
                       "libdir": shards["libdir"],
                       "policy_dir": "", "services": None, "require_volatile": True,
                       "volatile_title": VolatileSettings.volatile_title,
                       "upper_warn_percent": 90,
                       "dom0_dir_max_bytes": 16777216}
    dropin = shown["reliant-shards-qubesd-dropin"]["file"]
    assert {"name": "/etc/systemd/system/qubesd.service.d/reliant-shards.conf"} in dropin


def test_nothing_of_a_shard_lands_in_salt_cache_or_log(salt_minion, dom0: dict) -> None:
    declare(dom0["root"] / "sflc_0_2", qid_range="1500-1999", id="hidden-two")
    declare(dom0["root"] / "sflc_0_1", qid_range="1000-1299")
    seen: set[str] = set()

    def scan() -> None:
        secrets = {"sflc_0_1", "sflc_0_2", "hidden-two"}
        for shard in discover([str(dom0["root"])]):
            secrets |= identifiers(shard) - {str(dom0["root"])}
        for path in salt_minion.root.rglob("*"):
            if path.is_file() and "pillar" not in path.parts and path.name != "minion":
                seen.add(path.name)
                leaked = sorted(secret for secret in secrets if secret.encode() in
                                path.read_bytes())
                assert not leaked, f"{path} holds {leaked}"

    # state.sls writes the compiled states (highstate.cache.p) and the results (sls.p):
    # first a prediction of changes, then a real run of the declared shards, then none.
    assert salt_minion.run("state.sls", "reliant.shards", "test=True").returncode == 0
    scan()
    assert declared(salt_minion, dom0).returncode == 0
    scan()
    assert salt_minion.run("state.sls", "reliant.shards", "test=True").returncode == 0
    scan()
    assert {"highstate.cache.p", "sls.p", "minion.log"} <= seen


def test_clean_predicts_only_what_is_there(salt_minion, dom0: dict) -> None:
    """Nothing installed but the settings file the fixture wrote: only that would go."""
    result = salt_minion.run("state.sls", "reliant.shards.clean", "test=True")
    assert result.returncode == 0, result.data
    ids = {ret["__id__"] for ret in result.states.values()}
    assert {"reliant-shards-clean-dissect", "reliant-isolation-policy-absent"} <= ids
    assert [ret["name"] for ret in result.changed().values()] == [dom0["config"]]
    assert Path(dom0["config"]).exists()


def test_a_merged_store_outside_run_fails_naming_the_key(salt_minion, dom0: dict) -> None:
    salt_minion.set_pillar({"shards": {**dom0["shards"], "merged": "/var/lib/qubes/m.xml"},
                            "isolation": {"enabled": False}})
    result = salt_minion.run("state.sls", "reliant.shards", "test=True")
    assert result.returncode != 0
    failed = [ret for ret in result.states.values() if ret["result"] is False]
    assert failed[0]["__id__"] == "reliant-shards-merged-in-ram"
    assert failed[0]["name"].startswith("reliant:shards:merged: /var/lib/qubes/m.xml is not")
