"""Kitchen suite `isolation` on R4.2 (dom0-r4.2: qubes-core-qrexec 4.2.25 reads no
/run/qubes/policy.d, qubes-core-dom0 4.2.39 has no prohibit-start): the isolation state
fails naming the missing directory and installs nothing; qubesd starts on core alone
while shards are open; `attach` is refused; without isolation a shard qube whose
reference is missing is skipped, not recovered, with a warning from suture, status and
the Salt state. The converge itself (run.py) required exactly the isolation states to fail.

The tests run in file order and share the container's state.
"""

from __future__ import annotations

import json
import os
import subprocess

import audit_plants
import pytest
from reliant import store
from reliant.shards.files import SHARD_FILE

pytestmark = pytest.mark.skipif(os.environ.get("KITCHEN_PLATFORM") != "dom0-r4.2",
                                reason="R4.2 only (R4.3: test_isolation.py)")

NAME = "20-reliant-isolation.policy"
SHARD_IDS = ("sflc_0_1", "sflc_0_2")
SHARD_QUBES = ("secret", "secret-dvm", "secret-vpn", "deep-mail", "deep-notes")
NO_RUNTIME_DIR = ("qubes-core-qrexec 4.2.25 has no runtime qrexec policy directory "
                  "/run/qubes/policy.d (it starts at qubes-core-qrexec 4.3.0)")
NO_PROHIBIT_START = ("missing_reference: recover acts as skip: qubes-core-dom0 4.2.39 has no "
                     "qube feature prohibit-start (it starts at qubes-core-dom0 4.3.19)")


def salt_states(host, *args: str) -> tuple[int, dict]:
    """Run salt-call with JSON output: its exit status and the states by id."""
    out = host.run("salt-call --local --out json " + " ".join(args))
    states = json.loads(out.stdout)["local"]
    return out.rc, {ret["__id__"]: ret for ret in states.values()}


def merged_names(host) -> set[str]:
    merged = store.parse(host.file("/run/reliant/qubes.xml").content, "merged")
    return {d.findtext("properties/property[@name='name']")
            for d in merged.iterfind("domains/domain")}


def test_the_isolation_state_fails_naming_the_runtime_policy_directory(host):
    rc, states = salt_states(host, "state.apply", "reliant.isolation")
    assert rc != 0
    policy = states["reliant-isolation-policy"]
    assert policy["result"] is False and policy["changes"] == {}
    assert policy["comment"].startswith(f"reliant:isolation: {NO_RUNTIME_DIR}: the deny rules "
                                        "between shards name them")
    assert "Use Qubes R4.3" in policy["comment"]
    for state in ("reliant-isolation-extension", "reliant-isolation-extension-paths",
                  "reliant-isolation-qubesd-restart"):
        assert states[state]["result"] is False
        assert "requisite" in states[state]["comment"].lower()
    site = host.check_output(
        "python3 -c \"import sysconfig; print(sysconfig.get_paths()['purelib'])\"")
    for path in (f"/etc/qubes/policy.d/{NAME}", "/etc/reliant/isolation.json",
                 f"{site}/reliant_isolation", "/run/qubes/policy.d"):
        assert not host.file(path).exists, path
    assert host.service("qubesd").is_running


@pytest.fixture(scope="module")
def shards_open(host, tmp_path_factory):
    """Two shards of the merged fixture opened under /run/shufflecake; in the first, the
    template of `secret` was removed while it was hidden (its root still names the
    template's volume, as qubesd left it)."""
    local = tmp_path_factory.mktemp("shufflecake")
    audit_plants.make_shards(local)
    path = local / "sflc_0_1" / SHARD_FILE
    root = store.load(str(path))
    for domain in root.iterfind(".//domain"):
        if domain.findtext("properties/property[@name='name']") == "secret":
            domain.find("properties/property[@name='template']").text = "gone-template"
            domain.find("volume-config/volume[@name='root']").set(
                "source", "qubes_dom0/vm-gone-template-root")
    path.write_bytes(store.serialize(root))
    host.check_output("mkdir -p /run/shufflecake")
    for sid in SHARD_IDS:
        (local / sid / "pool").mkdir(exist_ok=True)
        subprocess.run(["podman", "cp", str(local / sid),
                        f"{host.backend.name}:/run/shufflecake/"], check=True)
    return local


def test_qubesd_starts_on_core_alone_while_shards_are_open(host, shards_open):
    host.check_output("systemctl restart qubesd")
    assert host.service("qubesd").is_running
    names = merged_names(host)
    assert "work" in names and not names & set(SHARD_QUBES)
    log = host.file("/run/reliant/reliant-shard.log").content_string
    assert f"reliant-shard: error: {NO_RUNTIME_DIR}" in log
    assert "is not merged (isolation: see above)" in log
    assert not host.file("/run/qubes/policy.d").exists
    status = host.run("reliant-shard status")
    assert status.rc == 0, status.stderr
    assert "platform: Qubes R4.2 (qubes-core-dom0 4.2.39, qubes-core-qrexec 4.2.25)" \
        in status.stdout
    assert f"warning: shards are not merged: {NO_RUNTIME_DIR}" in status.stdout


def test_attach_is_refused_while_isolation_is_enabled(host, shards_open):
    before = host.file("/run/reliant/qubes.xml").content
    result = host.run("reliant-shard attach")
    assert result.rc == 1
    assert result.stderr.startswith(f"reliant-shard: refused: {NO_RUNTIME_DIR}")
    assert host.service("qubesd").is_running
    assert host.file("/run/reliant/qubes.xml").content == before


def test_without_isolation_recover_acts_as_skip_and_says_so(host, shards_open):
    host.check_output("systemctl stop qubesd")
    result = host.run("reliant-shard suture --policy-dir ''")
    assert result.rc == 0, result.stderr
    assert f"reliant-shard: warning: {NO_PROHIBIT_START}" in result.stderr
    assert ("qube secret of shard sflc_0_1 not merged: template 'gone-template' is not "
            "visible") in result.stderr
    # (the image's stores were written by R4.3: the R4.2 load model leaves out other shard
    # qubes too, for values R4.2 reads otherwise; `secret` is left out for its template)
    assert "secret" not in merged_names(host)
    assert "prohibit-start" not in host.file("/run/reliant/qubes.xml").content_string
    assert f"warning: {NO_PROHIBIT_START}" in host.check_output("reliant-shard status")
    rc, states = salt_states(host, "state.apply", "reliant.shards")
    assert rc == 0
    declared = states["reliant-shards-declared"]
    assert f"warning: {NO_PROHIBIT_START}" in declared["comment"]
    assert not any(word in json.dumps(states) for word in SHARD_QUBES)
    host.check_output("reliant-shard dissect --final")
    shard = store.parse(host.file(f"/run/shufflecake/sflc_0_1/{SHARD_FILE}").content, "shard")
    (secret,) = [d for d in shard.iterfind(".//domain")
                 if d.findtext("properties/property[@name='name']") == "secret"]
    assert secret.findtext("properties/property[@name='template']") == "gone-template", \
        "the skipped qube stays intact in its shard"


def test_hidden_shards_and_clean(host, shards_open):
    host.check_output("rm -rf /run/shufflecake/sflc_0_1 /run/shufflecake/sflc_0_2")
    host.check_output("systemctl start qubesd")
    assert not merged_names(host) & set(SHARD_QUBES)
    core = host.file("/var/lib/qubes/qubes.xml").content_string
    assert not any(word in core for word in SHARD_IDS + SHARD_QUBES + ("reliant-",))
    rc, states = salt_states(host, "state.apply", "reliant.isolation.clean")
    assert rc == 0, states
    assert not [k for k, v in states.items() if v["changes"]]
