"""reliant_config: pillar checked against the defaults' types."""

from pathlib import Path

import pytest
import yaml
from reliant import config

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((ROOT / "salt/reliant/parameters/defaults.yaml").read_text())["reliant"]


def test_pillar_example_has_every_default_and_nothing_else():
    example = yaml.safe_load((ROOT / "pillar.example").read_text())["reliant"]
    assert config.problems(example, DEFAULTS) == []
    assert example == DEFAULTS  # pillar.example documents each key with its default


def test_empty_pillar_is_fine():
    assert config.problems({}, DEFAULTS) == []


@pytest.mark.parametrize(
    ("pillar", "problem"),
    [
        ({"shards": {"roots": "/run/shufflecake"}},
         "reliant:shards:roots: expected a list, got str '/run/shufflecake'"),
        ({"shards": {"enabled": "yes"}}, "reliant:shards:enabled: expected a boolean, got str 'yes'"),
        ({"shards": {"max_depth": True}}, "reliant:shards:max_depth: expected an integer, got bool True"),
        ({"shards": {"roots": ["/a", 3]}}, "reliant:shards:roots:1: expected a string, got int 3"),
        ({"shards": None}, "reliant:shards: expected a mapping, got NoneType None"),
        ({"shard": {}}, "reliant:shard: unknown key (known: audit, isolation, shards, snapshots, volatile)"),
    ],
)
def test_each_problem_names_the_key(pillar, problem):
    assert config.problems(pillar, DEFAULTS) == [problem]


def test_all_problems_are_reported_at_once():
    pillar = {"shards": {"enabled": 1, "core": 2}, "audit": []}
    assert [p.split(": ")[0] for p in config.problems(pillar, DEFAULTS)] == [
        "reliant:shards:enabled", "reliant:shards:core", "reliant:audit",
    ]


def test_an_empty_default_mapping_accepts_any_keys():
    assert config.problems({"x": {"anything": 1}}, {"x": {}}) == []


def test_an_integer_is_accepted_for_a_number():
    assert config.problems(3, 0.5) == []


def test_is_dom0_follows_the_marker(tmp_path):
    marker = tmp_path / "qubes-release"
    assert not config.is_dom0(str(marker))
    marker.write_text("Qubes release 4.3\n")
    assert config.is_dom0(str(marker))


def test_virtual_names_the_module_on_dom0_only(tmp_path):
    marker = tmp_path / "qubes-release"
    opts = {"reliant_dom0_marker": str(marker)}
    assert config.virtual("reliant_x", opts) == (
        False, f"reliant_x: not a Qubes dom0 (no {marker})")
    marker.write_text("Qubes release 4.3\n")
    assert config.virtual("reliant_x", opts) == "reliant_x"
