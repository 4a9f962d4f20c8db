"""The library defaults of reliant_volatile / reliant_audit are those of defaults.yaml
(the CLI runs without Salt, so both exist; this keeps them one value)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from reliant import audit
from reliant.volatile.settings import Settings

DEFAULTS = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "salt/reliant/parameters/defaults.yaml").read_text()
)["reliant"]


def _library_defaults(settings_class) -> dict:
    values = {f.name: f.default for f in dataclasses.fields(settings_class)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def test_volatile_defaults_match_defaults_yaml():
    pillar = {k: v for k, v in DEFAULTS["volatile"].items() if k != "enabled"}
    assert pillar == _library_defaults(Settings)
    Settings.from_pillar(DEFAULTS["volatile"]).check()


def test_audit_defaults_match_defaults_yaml():
    pillar = {k: v for k, v in DEFAULTS["audit"].items() if k != "enabled"}
    assert pillar == _library_defaults(audit.Settings)
    assert audit.Settings.from_pillar(DEFAULTS["audit"]).limits == audit.Limits()
