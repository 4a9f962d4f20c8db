"""Default suite: pillar.example converged in the dom0 container."""

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def test_show_top_lists_reliant_for_dom0(host):
    out = host.check_output("salt-call --local --out json state.show_top")
    assert json.loads(out)["local"] == {"base": ["reliant"]}


def test_pillar_is_the_example(host):
    # salt-call masks pillar values in its output: read them through a render instead
    template = "{{ pillar.reliant | json }}"
    out = host.check_output(
        f"salt-call --local --out json slsutil.renderer string='{template}' default_renderer=jinja"
    )
    example = yaml.safe_load((ROOT / "pillar.example").read_text())
    assert json.loads(json.loads(out)["local"]) == example["reliant"]


def test_formula_modules_are_synced(host):
    out = host.check_output("salt-call --local --out json sys.list_modules")
    assert "reliant_config" in json.loads(out)["local"]
