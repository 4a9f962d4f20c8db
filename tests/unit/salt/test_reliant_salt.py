"""_utils/reliant_salt.py: refusals become Salt's error; a state's converge skeleton."""

from __future__ import annotations

import pytest
import reliant_salt
from salt.exceptions import CommandExecutionError


class Refused(Exception):
    pass


def test_a_refusal_becomes_a_command_execution_error_with_its_message():
    with pytest.raises(CommandExecutionError, match=r"^no shard$"), \
            reliant_salt.salt_errors(Refused):
        raise Refused("no shard")
    with pytest.raises(KeyError), reliant_salt.salt_errors(Refused):
        raise KeyError("a bug stays a bug")


class World:
    """A file that should hold "new": what the callbacks of converge see and change."""

    def __init__(self, content="old", sticks=True, fails=False):
        self.content, self.sticks, self.fails, self.applied = content, sticks, fails, 0

    def pending(self):
        return {} if self.content == "new" else {"file": f"{self.content} -> new"}

    def apply(self):
        self.applied += 1
        if self.fails:
            raise Refused("disk full")
        if self.sticks:
            self.content = "new"

    def converge(self, test=False, **kwargs):
        return reliant_salt.converge(
            "file", test, pending=self.pending, apply=self.apply,
            left=lambda: ["still old"] if self.pending() else [], errors=(Refused,),
            done="in place", would=lambda c: f"{len(c)} would change",
            changed=lambda c: f"{len(c)} changed", failed="failed: {}", **kwargs)


def test_nothing_to_do():
    world = World("new")
    assert world.converge() == {"name": "file", "result": True, "changes": {},
                                "comment": "in place"}
    assert world.applied == 0


def test_test_mode_predicts_the_changes_and_changes_nothing():
    world = World()
    ret = world.converge(test=True)
    assert (ret["result"], ret["changes"], ret["comment"]) == (
        None, {"file": "old -> new"}, "1 would change")
    assert world.applied == 0 and world.content == "old"
    assert world.converge()["changes"] == ret["changes"]


def test_applied_then_verified():
    world = World()
    ret = world.converge()
    assert (ret["result"], ret["comment"]) == (True, "1 changed")
    assert world.converge()["changes"] == {}


def test_a_change_that_does_not_stick_fails():
    ret = World(sticks=False).converge()
    assert (ret["result"], ret["comment"]) == (False, "still old")
    assert ret["changes"] == {"file": "old -> new"}


def test_a_failure_while_applying_is_reported():
    ret = World(fails=True).converge()
    assert (ret["result"], ret["changes"], ret["comment"]) == (False, {}, "failed: disk full")
    kept = World(fails=True).converge(changes_on_failure=True)
    assert kept["changes"] == {"file": "old -> new"}


def test_a_refused_difference_changes_nothing():
    world = World()
    ret = world.converge(refuse=lambda changes: f"not now: {sorted(changes)}")
    assert (ret["result"], ret["comment"]) == (False, "not now: ['file']")
    assert world.applied == 0


def test_an_alarm_fails_even_a_converged_state():
    ret = World("new").converge(alarm=lambda: ["the boot wrote to disk"])
    assert (ret["result"], ret["comment"]) == (False, "in place; the boot wrote to disk")
    predicted = World().converge(test=True, alarm=lambda: ["the boot wrote to disk"])
    assert predicted["result"] is False


def test_a_refusal_while_reading_the_difference_fails_without_acting():
    def pending():
        raise Refused("unreadable")

    ret = reliant_salt.converge("x", False, pending=pending, apply=pytest.fail, left=list,
                                errors=(Refused,), done="", would=str, changed=str)
    assert (ret["result"], ret["comment"]) == (False, "unreadable")
