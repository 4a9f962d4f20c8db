"""Reading stores in chunks (reliant.chunks and dissect's memo) changes nothing but time:
every file written is the one the whole-store path writes, odd stores fall back to it,
and the memo never keeps a qube the merged store has let go."""

import os
import re

import pytest
from reliant import chunks as chunking
from reliant import operations, store
from reliant.shards.files import identifiers, load_shard
from reliant.shards.records import QubeRecord, qube_name
from reliant.shards.stubs import Facts
from reliant.vocab import ShardError
from repo_paths import FIXTURES
from shards_helpers import SHARD_QUBES, domains_by_name, load, merged_scene, new_domain, set_prop


def memo_dir(scene):
    return scene.merged.parent / "dissect.memo"


def files(scene):
    """Every file of the scene but the memo, with the scene's path made neutral."""
    return {str(p.relative_to(scene.tmp)): p.read_bytes().replace(str(scene.tmp).encode(), b"@")
            for p in sorted(scene.tmp.rglob("*")) if p.is_file() and p.parent != memo_dir(scene)}


def outcome(result):
    return sorted((p.severity, p.kind, p.shard or "", p.qube or "") for p in result.problems)


def qubesd_saves(scene, change):
    """Change the merged store as qubesd would (lxml, pretty printed, as it writes)."""
    root = load(scene.merged)
    change(root)
    scene.merged.write_bytes(store.serialize(root))


def session(scene, policy):
    """One life of a dom0: first split, open, qubesd changes things (a shard qube and a
    core qube created, a qube removed, a label changed, a core qube pointed at a shard
    qube), close, open without a shard, reopen without its dependency."""
    def changes(root):
        domains = root.find("domains")
        domains.append(new_domain("fresh", 15, "sflc_0_1", "0000-fresh"))
        domains.append(new_domain("plain", 16, "vm-pool", "0000-plain"))
        domains.remove(domains_by_name(root)["deep-notes"])
        set_prop(domains_by_name(root)["work"], "label", "green")
        set_prop(domains_by_name(root)["personal"], "default_dispvm", "secret-dvm")

    yield scene.dissect(final=True)
    yield scene.suture(policy_dir=str(policy))
    qubesd_saves(scene, changes)
    yield scene.dissect()
    yield scene.dissect(final=True)
    yield scene.suture(policy_dir=str(policy), detached={"sflc_0_2"})
    yield scene.dissect(final=True)
    yield scene.suture(policy_dir=str(policy))
    yield scene.dissect(final=True)
    yield scene.suture(policy_dir=str(policy), detached={"sflc_0_1"})
    qubesd_saves(scene, lambda root: set_prop(domains_by_name(root)["deep-mail"], "memory",
                                              "800"))
    yield scene.dissect(final=True)


def whole(monkeypatch):
    """Make every store unfit for chunks: the whole-store path runs."""
    monkeypatch.setattr(chunking, "split", lambda data, root="qubes": None)


def test_chunked_and_whole_store_paths_write_the_same_files(tmp_path, monkeypatch):
    ranges = ((1000, 1499), (1500, 1999))  # the fixture's qubes are renumbered: materialized
    chunked = merged_scene(tmp_path / "chunked", ranges=ranges)
    plain = merged_scene(tmp_path / "plain", ranges=ranges)
    got_steps = session(chunked, tmp_path / "chunked" / "policy")
    expected_steps = session(plain, tmp_path / "plain" / "policy")
    for step, got in enumerate(got_steps):
        with monkeypatch.context() as patch:
            whole(patch)
            expected = next(expected_steps)
        assert outcome(got) == outcome(expected), step
        assert files(chunked) == files(plain), step
    assert step == 9
    assert os.listdir(memo_dir(chunked)) and not memo_dir(plain).exists()


def counted(monkeypatch):
    """Sizes of the byte strings given to store.parse, and the number of qubes
    read from elements (QubeRecord), from now on."""
    sizes, records = [], []
    real_parse, real_record = store.parse, QubeRecord.__init__

    def parse(data, source):
        sizes.append(len(data))
        return real_parse(data, source)

    def record(self, domain):
        records.append(domain)
        real_record(self, domain)
    monkeypatch.setattr(store, "parse", parse)
    monkeypatch.setattr(QubeRecord, "__init__", record)
    return sizes, records


def test_a_warm_dissect_reads_only_the_changed_qube_and_suture_none(tmp_path, monkeypatch):
    scene = merged_scene(tmp_path)
    scene.dissect(final=True)
    scene.suture()
    scene.dissect(final=True)  # the memo knows what suture wrote
    qubesd_saves(scene, lambda root: set_prop(domains_by_name(root)["secret"], "memory", "900"))
    sizes, records = counted(monkeypatch)
    scene.dissect()
    assert len(scene.merged.read_bytes()) not in sizes  # never the whole store
    read = list(records)  # (reading their names makes records too)
    assert [qube_name(d) for d in read] == ["secret"]
    shard_file = scene.shard_dir("sflc_0_1") / "domains.xml"
    assert b">900<" in shard_file.read_bytes()
    sizes.clear()
    records.clear()
    scene.suture()
    assert not {len(p.read_bytes()) for p in (scene.core, shard_file)} & set(sizes)
    assert records == []


def test_a_comment_hiding_a_boundary_falls_back_to_the_whole_store(tmp_path, monkeypatch):
    scene, plain = merged_scene(tmp_path / "a"), merged_scene(tmp_path / "b")
    for each in (scene, plain):
        each.merged.write_bytes(each.merged.read_bytes().replace(
            b"<features>", b"<features><!--\n    <domain -->", 1))
    assert not scene.dissect(final=True).errors
    assert not (memo_dir(scene).exists() and os.listdir(memo_dir(scene)))
    with monkeypatch.context() as patch:
        whole(patch)
        plain.dissect(final=True)
    assert files(scene) == files(plain)
    assert SHARD_QUBES["sflc_0_1"] <= domains_by_name(
        load(scene.shard_dir("sflc_0_1") / "domains.xml")).keys()


def test_a_malformed_qube_is_named_and_nothing_is_written(tmp_path):
    scene = merged_scene(tmp_path)
    scene.dissect(final=True)
    scene.suture()
    before = files(scene)
    data = scene.merged.read_bytes()
    scene.merged.write_bytes(data.replace(b'<property name="label">', b'<property name=label>', 1))
    with pytest.raises(ShardError, match=re.escape(f"{scene.merged}: malformed")):
        scene.dissect(final=True)
    after = files(scene)
    assert {k: v for k, v in after.items() if "run/" not in k} == \
        {k: v for k, v in before.items() if "run/" not in k}


@pytest.mark.parametrize("content", [b"garbage", b"\x00" * 64, None])
def test_an_unreadable_or_foreign_memo_is_ignored(tmp_path, monkeypatch, content):
    scene, plain = merged_scene(tmp_path / "a"), merged_scene(tmp_path / "b")
    for each in (scene, plain):
        each.dissect(final=True)
        each.suture()
    for path in memo_dir(scene).iterdir():
        if content is None:  # written by another version of the code
            monkeypatch.setattr(operations, "memo_version", lambda: "another version")
        else:
            path.write_bytes(content)
    qubesd_saves(scene, lambda root: set_prop(domains_by_name(root)["secret"], "memory", "1"))
    qubesd_saves(plain, lambda root: set_prop(domains_by_name(root)["secret"], "memory", "1"))
    assert not scene.dissect(final=True).errors
    with monkeypatch.context() as patch:
        whole(patch)
        plain.dissect(final=True)
    assert files(scene) == files(plain)


def test_the_memo_forgets_a_shard_when_suture_leaves_it_out(tmp_path):
    scene = merged_scene(tmp_path)
    scene.dissect(final=True)
    scene.suture()
    scene.dissect(final=True)
    shard = load_shard(str(scene.shard_dir("sflc_0_2")))
    secrets = {s.encode() for s in identifiers(shard) if len(s) > 6}
    memo = b"".join(p.read_bytes() for p in memo_dir(scene).iterdir())
    assert any(secret in memo for secret in secrets)  # known while merged
    scene.suture(detached={"sflc_0_2"})
    memo = b"".join(p.read_bytes() for p in memo_dir(scene).iterdir())
    assert not [secret for secret in secrets if secret in memo]
    scene.dissect(final=True)
    memo = b"".join(p.read_bytes() for p in memo_dir(scene).iterdir())
    assert not [secret for secret in secrets if secret in memo]


def test_a_stub_is_never_written_with_tags_it_should_not_carry(tmp_path, monkeypatch):
    scene = merged_scene(tmp_path)
    scene.dissect(final=True)
    scene.suture()
    scene.dissect(final=True)
    before = files(scene)
    monkeypatch.setattr(Facts, "strip_tags", lambda self, domain: None)
    with pytest.raises(ShardError, match=r"internal error: qube .* tags"):
        scene.dissect(final=True)
    assert {k: v for k, v in files(scene).items() if "run/" not in k} == \
        {k: v for k, v in before.items() if "run/" not in k}


def test_split_cuts_qubesd_stores_and_nothing_else():
    for name in ("qubes-r4.3-core.xml", "qubes-r4.3-merged.xml"):
        data = (FIXTURES / name).read_bytes()
        head, chunks = chunking.split(data)
        assert chunking.join(head, chunks) == data
        assert len(chunks) == data.count(b"<domain ")
        assert all(c.startswith(b"    <domain ") and c.endswith(b"</domain>") for c in chunks)
    one_line = b"<qubes><labels/><pools/><properties/><domains><domain/></domains></qubes>"
    assert chunking.split(one_line) is None
    empty = b"<qubes>\n  <domains>\n  </domains>\n</qubes>\n"
    assert chunking.split(empty) is None


def test_a_record_survives_the_memo_whole():
    root = store.load(str(FIXTURES / "qubes-r4.3-merged.xml"))
    for domain in root.iterfind("domains/domain"):
        record = QubeRecord(domain)
        fields = record.fields()
        assert fields == tuple(getattr(record, name) for name in record._FIELDS)
        copy = QubeRecord.from_fields(fields)
        assert copy.fields() == fields


def test_a_known_shard_file_with_a_hostile_head_is_still_refused(tmp_path):
    scene = merged_scene(tmp_path)
    scene.dissect(final=True)
    scene.suture()
    scene.dissect(final=True)  # every qube of the shard files is in the memo
    path = scene.shard_dir("sflc_0_2") / "domains.xml"
    path.write_bytes(path.read_bytes().replace(
        b"<pools>", b'<labels><label id="label-1" color="0x000000">red</label></labels><pools>'))
    result = scene.suture()
    assert [(p.kind, p.shard) for p in result.errors] == [("refused", "sflc_0_2")]
    assert "may not hold <labels>" in result.errors[0].message
    assert not SHARD_QUBES["sflc_0_2"] & domains_by_name(load(scene.merged)).keys()
