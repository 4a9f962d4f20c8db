"""Execution module reliant_config under Salt's loader mocks."""


import pytest
import salt_modules
import yaml
from repo_paths import ROOT

reliant_config = salt_modules.load("modules", "reliant_config")


@pytest.fixture
def configure_loader_modules():
    return {reliant_config: {"__opts__": {}}}


def test_problems_are_the_library_s():
    defaults = yaml.safe_load((ROOT / "salt/reliant/parameters/defaults.yaml").read_text())
    assert reliant_config.problems({"audit": {"enabled": "no"}}, defaults["reliant"]) == [
        "reliant:audit:enabled: expected a boolean, got str 'no'"
    ]


def test_loads_everywhere_as_map_jinja_needs_it():
    assert reliant_config.__virtual__() == "reliant_config"
