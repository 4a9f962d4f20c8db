"""Shard declarations: reading them from the volumes, planning and applying them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from reliant import declare, operations
from reliant.shards.files import Shard, init_shard, load_shard, shard_bytes
from reliant.vocab import ShardError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ShardError = ShardError


@pytest.fixture
def scene(tmp_path: Path) -> dict:
    """A core store and a shard root with one shard (qids 1000-1499) holding no qube."""
    core = tmp_path / "qubes.xml"
    core.write_bytes((FIXTURES / "qubes-r4.3-core.xml").read_bytes())
    root = tmp_path / "shufflecake"
    init_shard(str(root / "sflc_0_1"), qid_range=(1000, 1499))
    return {"core": str(core), "root": root, "roots": [str(root)]}


@pytest.fixture
def sutured(tmp_path: Path) -> dict:
    """The merged fixture dissected into core and its two shards (qids 15-17, 18-19)."""
    root = tmp_path / "shufflecake"
    core, merged = tmp_path / "qubes.xml", tmp_path / "merged.xml"
    for path, name in ((core, "core"), (merged, "merged")):
        path.write_bytes((FIXTURES / f"qubes-r4.3-{name}.xml").read_bytes().replace(
            b"/run/shufflecake", str(root).encode()))
    first = init_shard(str(root / "sflc_0_1"), qid_range=(15, 17))
    init_shard(str(root / "sflc_0_2"), qid_range=(18, 19),
                              depends_on=[first.path])
    qubes_dir = tmp_path / "varlibqubes"
    qubes_dir.mkdir()
    result = operations.dissect(str(merged), str(core), [str(root)],
                                    qubes_dir=str(qubes_dir))
    assert not result.errors
    return {"core": str(core), "root": root, "roots": [str(root)]}


def write_declaration(directory: Path, **content) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / declare.DECLARATION_FILE).write_text(json.dumps(content))


def plan(scene: dict, wanted: declare.Declaration) -> declare.Plan:
    return declare.plan(wanted, scene["core"], scene["roots"], 3)


# --- reading -------------------------------------------------------------------------------
def test_find_declarations_reads_the_volumes(scene: dict) -> None:
    write_declaration(scene["root"] / "sflc_0_2" / "work", qid_range="1500-1999",
            depends_on=["../../sflc_0_1"], id="work")
    write_declaration(scene["root"] / "sflc_0_3", qid_range=[2000, 2499])
    problems: list[str] = []
    found = declare.find_declarations(scene["roots"], 3, problems)
    assert problems == []
    assert found == [
        declare.Declaration(str(scene["root"] / "sflc_0_2" / "work"), (1500, 1999),
                                    (str(scene["root"] / "sflc_0_1"),), "work"),
        declare.Declaration(str(scene["root"] / "sflc_0_3"), (2000, 2499)),
    ]


def test_find_declarations_respects_depth_and_symlinks(scene: dict, tmp_path: Path) -> None:
    write_declaration(scene["root"] / "a" / "b" / "c" / "d", qid_range="1500-1999")
    write_declaration(tmp_path / "outside", qid_range="1500-1999")
    (scene["root"] / "link").symlink_to(tmp_path / "outside")
    assert declare.find_declarations(scene["roots"], 3, []) == []


@pytest.mark.parametrize(("content", "message"), [
    ("[1, 2]", "must hold a JSON object"),
    ("{", "not JSON"),
    ('{"qid_range": "1500-1999", "pool": "x"}', "unknown key 'pool'"),
    ('{"depends_on": []}', "qid_range is required"),
    ('{"qid_range": "many"}', "is not of the form FIRST-LAST"),
    ('{"qid_range": 7}', 'qid_range must be "FIRST-LAST"'),
    ('{"qid_range": "1500-1999", "depends_on": "../x"}', "depends_on must be a list"),
    ('{"qid_range": "1500-1999", "depends_on": ["."]}', "cannot depend on itself"),
    ('{"qid_range": "1500-1999", "id": 3}', "id must be a string"),
    ('{"qid_range": "1500-10000"}', "last <= 9999"),
    ("{}" + " " * declare.MAX_DECLARATION_BYTES, "larger than"),
])
def test_bad_declarations_are_reported_by_file(scene: dict, content: str, message: str) -> None:
    directory = scene["root"] / "sflc_0_2"
    directory.mkdir()
    (directory / declare.DECLARATION_FILE).write_text(content)
    problems: list[str] = []
    assert declare.find_declarations(scene["roots"], 3, problems) == []
    assert len(problems) == 1
    assert problems[0].startswith(str(directory / declare.DECLARATION_FILE))
    assert message in problems[0]


def test_declaration_file_may_not_be_a_symlink(scene: dict, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.json").write_text('{"qid_range": "1500-1999"}')
    directory = scene["root"] / "sflc_0_2"
    directory.mkdir()
    (directory / declare.DECLARATION_FILE).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ShardError, match="cannot open"):
        declare.read_declaration(str(directory))


# --- planning -------------------------------------------------------------------------------
def test_plan_init_update_and_nothing(scene: dict) -> None:
    first = str(scene["root"] / "sflc_0_1")
    new = declare.declaration(str(scene["root"] / "sflc_0_2"), "1500-1999", [first])
    change = plan(scene, new)
    assert (change.action, change.old) == ("init", {})
    assert change.new == {"id": "sflc_0_2", "qid_range": "1500-1999", "depends_on": ["sflc_0_1"]}
    same = declare.declaration(first, "1000-1499")
    assert plan(scene, same).action is None
    wider = declare.declaration(first, "1000-1999")
    change = plan(scene, wider)
    assert (change.action, change.old, change.new) == (
        "update", {"qid_range": "1000-1499"}, {"qid_range": "1000-1999"})


@pytest.mark.parametrize(("directory", "qid_range", "depends", "shard_id", "message"), [
    ("sflc_0_2", "1200-1600", [], None, "overlaps 1000-1499 of shard sflc_0_1"),
    ("sflc_0_2", "10-20", [], None, r"holds qid \d+ of core qube"),
    ("sflc_0_2", "1500-1999", ["../nowhere"], None, "dependency .*nowhere is not a readable shard"),
    ("sflc_0_1", "1000-1499", [], "other", "it cannot become 'other'"),
    ("sflc_0_2", "1500-1999", [], "bad id!", "shard id 'bad id!'"),
    ("a/b/c/d", "1500-1999", [], None, "not within 3 levels under a shard root"),
    ("../elsewhere", "1500-1999", [], None, "not within 3 levels under a shard root"),
])
def test_plan_refusals(scene: dict, directory: str, qid_range: str, depends: list,
                       shard_id: str | None, message: str) -> None:
    wanted = declare.declaration(str(scene["root"] / directory), qid_range, depends,
                                         shard_id)
    with pytest.raises(ShardError, match=message.replace("(", r"\(")):
        plan(scene, wanted)


def test_plan_refuses_a_dependency_cycle(scene: dict) -> None:
    first, second = str(scene["root"] / "sflc_0_1"), str(scene["root"] / "sflc_0_2")
    init_shard(second, qid_range=(1500, 1999), depends_on=[first])
    with pytest.raises(ShardError, match="cycle"):
        plan(scene, declare.declaration(first, "1000-1499", [second]))


def test_plan_refuses_a_range_leaving_out_a_qube(sutured: dict) -> None:
    wanted = declare.declaration(str(sutured["root"] / "sflc_0_1"), "16-17")
    with pytest.raises(ShardError, match="leaves out qid 15 of its qube"):
        plan(sutured, wanted)


# --- applying -------------------------------------------------------------------------------
def test_apply_init_then_update_keeps_the_qubes(sutured: dict) -> None:
    shard = sutured["root"] / "sflc_0_2"
    before = load_shard(str(shard))
    assert before.domains
    wanted = declare.declaration(str(shard), "18-40", ["../sflc_0_1"])
    change = plan(sutured, wanted)
    declare.apply(change, sutured["roots"], 3)
    declare.verify(change)
    after = load_shard(str(shard))
    assert after.qid_range == (18, 40)
    assert after.data.split(b"<pools>")[1] == before.data.split(b"<pools>")[1]
    assert plan(sutured, wanted).action is None

    fresh = declare.declaration(str(sutured["root"] / "sflc_0_3"), "2000-2499",
                                        ["../sflc_0_2"], "third")
    change = plan(sutured, fresh)
    declare.apply(change, sutured["roots"], 3)
    declare.verify(change)
    made = load_shard(str(sutured["root"] / "sflc_0_3"))
    assert (made.id, made.qid_range, made.depends_on) == ("third", (2000, 2499), ("sflc_0_2",))


def test_apply_refuses_a_shard_changed_since_the_plan(scene: dict) -> None:
    first = str(scene["root"] / "sflc_0_1")
    change = plan(scene, declare.declaration(first, "1000-1999"))
    other = load_shard(first)
    shifted = Shard(other.path, other.id, (1000, 1200), other.depends_on)
    Path(first, "domains.xml").write_bytes(shard_bytes(shifted, (), ()))
    before = Path(first, "domains.xml").read_bytes()
    with pytest.raises(ShardError, match="changed while being converged"):
        declare.apply(change, scene["roots"], 3)
    assert Path(first, "domains.xml").read_bytes() == before
    assert sorted(os.listdir(first)) == ["domains.xml"]


def test_converge_creates_dependencies_first_and_dry_run_predicts_it(scene: dict) -> None:
    root = scene["root"]
    third = declare.declaration(str(root / "c"), "2500-2999", ["../b"])
    second = declare.declaration(str(root / "b"), "2000-2499", ["../sflc_0_1"])
    clash = declare.declaration(str(root / "d"), "2100-2200")
    args = (scene["core"], scene["roots"], 3)
    predicted = declare.converge([third, second, clash], *args, dry_run=True)
    assert [o.declaration.path for o in predicted] == [second.path, third.path, clash.path]
    assert [o.plan.action if o.plan else None for o in predicted] == ["init", "init", None]
    assert "overlaps 2000-2499 of shard b" in predicted[2].error
    assert [o.error for o in predicted[:2]] == [None, None]
    assert not (root / "b").exists()
    done = declare.converge([third, second, clash], *args, dry_run=False)
    assert [(o.plan.action if o.plan else None, o.error) for o in done] == [
        (p.plan.action if p.plan else None, p.error) for p in predicted]
    assert load_shard(str(root / "c")).depends_on == ("b",)
    again = declare.converge([third, second, clash], *args, dry_run=False)
    assert [o.plan.action if o.plan else None for o in again] == [None, None, None]


def test_converge_predicts_ranges_freed_earlier_in_the_run(scene: dict) -> None:
    narrowed = declare.declaration(str(scene["root"] / "sflc_0_1"), "1000-1199")
    moved_in = declare.declaration(str(scene["root"] / "sflc_0_2"), "1200-1499")
    args = (scene["core"], scene["roots"], 3)
    for dry_run in (True, False):
        outcomes = declare.converge([narrowed, moved_in], *args, dry_run=dry_run)
        assert [(o.plan.action, o.error) for o in outcomes] == [
            ("update", None), ("init", None)]
    assert load_shard(str(scene["root"] / "sflc_0_2")).qid_range == (1200, 1499)


def test_converge_reports_a_write_that_failed_verification(scene: dict, monkeypatch) -> None:
    def verify(change: declare.Plan) -> None:
        raise ShardError("read back something else")

    monkeypatch.setattr(declare, "verify", verify)
    new = declare.declaration(str(scene["root"] / "b"), "2000-2499")
    (outcome,) = declare.converge([new], scene["core"], scene["roots"], 3,
                                          dry_run=False)
    assert (outcome.applied, outcome.error, outcome.change) == (
        True, "read back something else", "init")


def test_apply_waits_for_suture_and_dissect(scene: dict, tmp_path: Path) -> None:
    """A dissect holds the operation lock while it reads and writes shard files."""
    state_path = str(tmp_path / "run" / "shards.json")
    first = str(scene["root"] / "sflc_0_1")
    change = plan(scene, declare.declaration(first, "1000-1999"))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1])\n"
         "from reliant.shards.runtime import operation_lock\n"
         "with operation_lock(sys.argv[2]):\n"
         "    print('locked', flush=True); sys.stdin.readline()",
         str(Path(declare.__file__).parents[1]), state_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        worker = threading.Thread(target=declare.apply,
                                  args=(change, scene["roots"], 3, state_path))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive()
        assert load_shard(first).qid_range == (1000, 1499)
        holder.stdin.write("\n")
        holder.stdin.flush()
        worker.join(10)
        assert not worker.is_alive()
    finally:
        holder.kill()
        holder.wait()
    assert load_shard(first).qid_range == (1000, 1999)
