"""The topd double names, enables and disables tops as qubes-mgmt-salt-base-topd does."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def topd(tmp_path):
    """The double as Salt loads it, with opts like dom0's under tmp_path."""
    spec = importlib.util.spec_from_file_location("topd_double", ROOT / "tests/doubles/topd/topd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__opts__ = {
        "file_roots": {"base": [str(tmp_path / "srv/salt"), str(tmp_path / "formula")],
                       "user": [str(tmp_path / "srv/user_salt")]},
        "pillar_roots": {"base": [str(tmp_path / "srv/pillar"), str(tmp_path / "srv/pillar/base")]},
        "topd_base_state": str(tmp_path / "srv/salt"),
        "topd_base_pillar": str(tmp_path / "srv/pillar"),
    }
    for path in ("srv/salt", "formula/qvm/sys", "srv/pillar/base"):
        (tmp_path / path).mkdir(parents=True)
    for path in ("formula/reliant.top", "formula/qvm/sys/init.top", "srv/pillar/base/reliant.top"):
        (tmp_path / path).write_text("base: {}\n")
    return module


@pytest.mark.parametrize(("relpath", "name"), [
    ("reliant.top", "reliant"),
    ("qvm/sys/init.top", "qvm.sys"),
    ("base/reliant.top", "reliant"),
    ("_tops/base/qvm.sys.top", "qvm.sys"),
])
def test_a_top_is_named_by_its_path_under_its_root(topd, relpath, name):
    assert topd._top_name(relpath, ["base", "user"]) == name


def test_enable_links_the_formula_top_and_says_so_once(topd, tmp_path):
    assert topd.enable("reliant") == {"reliant.top": {"status": "enabled"}}
    link = tmp_path / "srv/salt/_tops/base/reliant.top"
    assert os.readlink(link) == str(tmp_path / "formula/reliant.top")
    assert topd.enable("reliant") == {"reliant.top": {"status": "unchanged"}}
    assert topd.enable("qvm.sys") == {"qvm.sys.top": {"status": "enabled"}}


def test_pillar_tops_are_found_in_pillar_roots_and_linked_under_srv_pillar(topd, tmp_path):
    assert topd.enable("reliant", pillar="true") == {"reliant.top": {"status": "enabled"}}
    assert os.readlink(tmp_path / "srv/pillar/_tops/base/reliant.top") == str(
        tmp_path / "srv/pillar/base/reliant.top")


def test_a_top_no_root_holds_is_an_error_in_the_return(topd, tmp_path):
    topd.__opts__["file_roots"]["base"].remove(str(tmp_path / "formula"))
    assert topd.enable("reliant") == {"error": "No valid top names provided: ['reliant']"}
    assert not (tmp_path / "srv/salt/_tops").exists()


def test_disable_removes_a_link_only_while_its_target_exists(topd, tmp_path):
    topd.enable("reliant", "qvm.sys")
    assert topd.disable("reliant") == {"disabled": ["reliant.top"]}
    assert not os.path.lexists(tmp_path / "srv/salt/_tops/base/reliant.top")
    (tmp_path / "formula/qvm/sys/init.top").unlink()
    assert topd.disable("qvm.sys") == {"unchanged": ["qvm.sys.top"]}
    assert os.path.islink(tmp_path / "srv/salt/_tops/base/qvm.sys.top")
