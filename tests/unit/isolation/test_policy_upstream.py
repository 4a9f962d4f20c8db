"""Cross-check of the qrexec policy oracle against qrexec itself, when a checkout of
qubes-core-qrexec is given (`RELIANT_QREXEC_SRC=/path/to/qubes-core-qrexec`; nothing of
it is part of this project). Skipped otherwise.

Both load the generated files plus a user default policy and must pick the same rule
(file and line) for every call, and offer the same targets in the "ask" dialog.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from pathlib import Path

import isolation_helpers as helpers
import pytest
import qrexec_policy_oracle as oracle
from reliant.isolation import policy

SOURCE = os.environ.get("RELIANT_QREXEC_SRC", "")
pytestmark = pytest.mark.skipif(not (SOURCE and Path(SOURCE, "qrexec/policy/parser.py").exists()),
                                reason="RELIANT_QREXEC_SRC does not name a qubes-core-qrexec checkout")


@pytest.fixture(scope="module")
def qrexec():
    sys.path.insert(0, SOURCE)
    try:
        yield importlib.import_module("qrexec.policy.parser"), importlib.import_module("qrexec.exc")
    finally:
        sys.path.remove(SOURCE)


def test_oracle_agrees_with_qrexec(qrexec, tmp_path):
    parser, exc = qrexec
    run, etc = tmp_path / "run", tmp_path / "etc"
    run.mkdir()
    etc.mkdir()
    settings = policy.PolicySettings()
    (etc / settings.policy_file).write_bytes(policy.render_persistent_policy(settings))
    (etc / "90-default.policy").write_text("* * @anyvm @anyvm ask\n* * @anyvm @dispvm allow\n")
    root = helpers.merged_tagged()
    helpers.add_disposable(root, "disp4242", 4242, "secret-dvm")
    policy.write_runtime_policy(str(run), root, settings_path=str(tmp_path / "none"))
    domains = helpers.system_info(root)
    domains["deep-notes"] = dataclasses.replace(
        domains["deep-notes"], tags=domains["deep-notes"].tags | {"reliant-foreign-dispvm"})
    info = {"domains": {name: {"tags": sorted(d.tags), "type": d.type,
                               "template_for_dispvms": d.template_for_dispvms,
                               "default_dispvm": d.default_dispvm, "icon": "",
                               "power_state": "Halted",
                               "uuid": f"00000000-0000-0000-0000-{index + 1:012d}"}
                        for index, (name, d) in enumerate(domains.items())}}
    file_policy = parser.FilePolicy(policy_path=[run, etc])
    rules = oracle.load_policy([run, etc])
    templates = [f"@dispvm:{n}" for n, d in domains.items() if d.template_for_dispvms]
    for service in policy.DEFAULT_SERVICES:
        for source in domains:
            if source == "dom0":
                continue
            for target in [*domains, "@dispvm", "@default", *templates]:
                if target == source:
                    continue
                request = parser.Request(service, "+", source, target, system_info=info)
                try:
                    rule = file_policy.find_matching_rule(request)
                    real = (rule.filepath.name, rule.lineno)
                except exc.AccessDenied:
                    real = None
                mine = oracle.first_match(rules, service, "+", source, target, domains)
                assert real == (mine and (Path(mine.where.rsplit(":", 1)[0]).name,
                                          int(mine.where.rsplit(":", 1)[1]))), (source, target)
            request = parser.Request(service, "+", source, "@default", system_info=info)
            assert set(file_policy.collect_targets_for_ask(request)) == oracle.targets_for_ask(
                rules, service, "+", source, domains), source
