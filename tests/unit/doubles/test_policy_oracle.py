"""The qrexec policy oracle itself: grammar and matching facts read from qubes-core-qrexec
(qrexec/policy/parser.py), so that the policy tests rest on a checked oracle."""

from __future__ import annotations

import pytest
import qrexec_policy_oracle as oracle

DOMAINS = {
    "dom0": oracle.Domain("dom0", "AdminVM", frozenset({"t-core"}), False, None),
    "work": oracle.Domain("work", "AppVM", frozenset({"t-core"}), False, "dvm-core"),
    "dvm-core": oracle.Domain("dvm-core", "AppVM", frozenset({"t-core"}), True, None),
    "secret": oracle.Domain("secret", "AppVM", frozenset({"t-s"}), False, "dvm-core"),
    "dvm-s": oracle.Domain("dvm-s", "AppVM", frozenset({"t-s"}), True, None),
    "plain-s": oracle.Domain("plain-s", "AppVM", frozenset({"t-s"}), False, None),
}


def match(line: str, source: str, target: str, service: str = "qubes.Filecopy") -> bool:
    rules = oracle.parse_policy(line, "test")
    return oracle.first_match(rules, service, "+", source, target, DOMAINS) is not None


@pytest.mark.parametrize("line", [
    "qubes.Filecopy * @tag:a @tag:b deny",
    "qubes.Filecopy * @tag:a @dispvm:@tag:b deny notify=no",
    "* * @anyvm @dispvm allow target=@dispvm:dvm-core",
    "qubes.Filecopy +arg work @default ask default_target=secret",
    "qubes.Filecopy\t*\t@type:AppVM\t@adminvm\tallow user=root autostart=no",
    "* * @dispvm:dvm-core @anyvm deny",
    "   # comment",
])
def test_valid_lines_parse(line):
    oracle.parse_policy(line, "test")


@pytest.mark.parametrize(("line", "message"), [
    ("qubes.Filecopy * @tag:a @tag:b", "wrong number of fields"),
    ("qubes.Filecopy * @tag:a @tag:b refuse", "invalid action"),
    ("qubes.Filecopy * @tag:a @tag:b deny notify=maybe", "yes or no"),
    ("qubes.Filecopy * @tag:a @tag:b deny notify=no notify=no", "given twice"),
    ("qubes.Filecopy * @tag:a @tag:b deny target=work", "invalid parameter"),
    ("qubes.Filecopy * @tag:a @tag:b deny notify", "invalid action parameter"),
    ("qubes.Filecopy arg @tag:a @tag:b deny", "invalid argument"),
    ("* +arg @tag:a @tag:b deny", "only \\* argument"),
    ("qubes.File+copy * @tag:a @tag:b deny", "invalid service"),
    ("qubes.Filecopy * @tag: @tag:b deny", "invalid @tag: token"),
    ("qubes.Filecopy * @tag:a b@c deny", "invalid target token"),
    ("qubes.Filecopy * @dispvm @tag:b deny", "invalid source token"),
    ("qubes.Filecopy * @default @tag:b deny", "invalid source token"),
    ("qubes.Filecopy * @tag:a @dispvm:@tag: deny", "invalid @dispvm:@tag: token"),
    ("qubes.Filecopy * @tag:a @dispvm:@anyvm deny", "invalid @dispvm: token"),
    ("qubes.Filecopy * @anyvm @default allow", "needs target="),
    ("qubes.Filecopy * @anyvm @anyvm allow target=@anyvm", "invalid redirect"),
    ("!include-dir /run/x", "directive"),
])
def test_invalid_lines_are_refused(line, message):
    with pytest.raises(oracle.PolicySyntaxError, match=message):
        oracle.parse_policy(line, "test")


def test_tag_never_matches_a_dispvm_target():
    assert match("* * @anyvm @tag:t-core deny", "secret", "work")
    assert not match("* * @anyvm @tag:t-core deny", "secret", "@dispvm")
    assert not match("* * @anyvm @tag:t-core deny", "secret", "@dispvm:dvm-core")


def test_dispvm_tag_resolves_the_callers_default_dispvm():
    assert match("* * @anyvm @dispvm:@tag:t-core deny", "secret", "@dispvm")
    assert match("* * @anyvm @dispvm:@tag:t-core deny", "secret", "@dispvm:dvm-core")
    assert not match("* * @anyvm @dispvm:@tag:t-core deny", "secret", "@dispvm:dvm-s")
    assert not match("* * @anyvm @dispvm:@tag:t-core deny", "plain-s", "@dispvm")
    assert match("* * @anyvm @dispvm:dvm-core deny", "work", "@dispvm")
    assert not match("* * @anyvm @dispvm:dvm-core deny", "work", "@dispvm:dvm-s")


def test_anyvm_matches_disposables_but_not_dom0_and_dispvm_sources_never_match():
    assert match("* * @anyvm @anyvm deny", "work", "@dispvm")
    assert not match("* * @anyvm @anyvm deny", "work", "dom0")
    assert not match("* * @dispvm:dvm-core @anyvm deny", "dvm-core", "work")


def test_requests_qrexec_refuses_before_evaluation():
    with pytest.raises(ValueError, match="not a template for dispvm"):
        oracle.first_match([], "x", "+", "work", "@dispvm:secret", DOMAINS)
    assert oracle.intended_target("no-such-qube", DOMAINS) == "@default"


def test_file_order_and_runtime_override(tmp_path):
    run, etc = tmp_path / "run", tmp_path / "etc"
    run.mkdir()
    etc.mkdir()
    (etc / "10-a.policy").write_text("* * @anyvm @anyvm allow\n")
    (run / "10-a.policy").write_text("* * @anyvm @anyvm deny\n")
    (etc / "05-b.policy").write_text("* * work @anyvm ask\n")
    (etc / ".hidden.policy").write_text("garbage\n")
    (etc / "notes.txt").write_text("garbage\n")
    assert oracle.policy_files([run, etc]) == [etc / "05-b.policy", run / "10-a.policy"]
    rules = oracle.load_policy([run, etc])
    assert oracle.first_match(rules, "x", "+", "work", "secret", DOMAINS).action == "ask"
    assert oracle.first_match(rules, "x", "+", "secret", "work", DOMAINS).action == "deny"
    (etc / "Bad.policy").write_text("")
    with pytest.raises(oracle.PolicySyntaxError, match="invalid file name"):
        oracle.policy_files([run, etc])


def test_ask_dialog_adds_the_callers_dispvm_after_the_deny_rules():
    rules = oracle.parse_policy("* * @anyvm @dispvm:@tag:t-core deny\n"
                                "* * @anyvm @tag:t-core deny\n"
                                "* * @anyvm @anyvm ask\n", "test")
    offered = oracle.targets_for_ask(rules, "x", "+", "secret", DOMAINS)
    assert offered == {"plain-s", "dvm-s", "@dispvm:dvm-s", "@dispvm:dvm-core"}
    rules = oracle.parse_policy("* * secret @dispvm deny\n", "test") + rules
    offered = oracle.targets_for_ask(rules, "x", "+", "secret", DOMAINS)
    assert offered == {"plain-s", "dvm-s", "@dispvm:dvm-s"}


def test_ask_dialog_uses_redirects_and_turns_adminvm_into_dom0():
    rules = oracle.parse_policy("* * work @anyvm ask target=@dispvm:dvm-s\n"
                                "* * work @adminvm allow\n", "test")
    assert oracle.targets_for_ask(rules, "x", "+", "work", DOMAINS) == {"@dispvm:dvm-s", "dom0"}
