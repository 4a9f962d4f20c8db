"""parameters/defaults.yaml is the one source of every default: the few the library
keeps for runs without Salt (the CLI without its configuration file, settings objects
built from partial pillar) are those of defaults.yaml."""

from __future__ import annotations

import dataclasses

import yaml
from reliant import audit, commands
from reliant.isolation import policy
from reliant.volatile.settings import Settings
from repo_paths import ROOT

DEFAULTS = yaml.safe_load(
    (ROOT / "salt/reliant/parameters/defaults.yaml").read_text())["reliant"]


def _library_defaults(settings_class) -> dict:
    values = {f.name: f.default for f in dataclasses.fields(settings_class)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _without_enabled(section: str) -> dict:
    return {k: v for k, v in DEFAULTS[section].items() if k != "enabled"}


def test_volatile_defaults_match_defaults_yaml():
    assert _without_enabled("volatile") == _library_defaults(Settings)
    Settings.from_pillar(DEFAULTS["volatile"]).check()


def test_audit_defaults_match_defaults_yaml():
    assert _without_enabled("audit") == _library_defaults(audit.Settings)
    assert audit.Settings.from_pillar(DEFAULTS["audit"]).limits == audit.Limits()


def test_cli_defaults_match_defaults_yaml():
    """reliant-shard without /etc/reliant/reliant.json behaves as the formula's defaults."""
    shards, isolation = DEFAULTS["shards"], DEFAULTS["isolation"]
    expected = {key: shards[key] for key in ("core", "merged", "roots", "max_depth",
                                             "missing_reference", "libdir",
                                             "dom0_dir_max_bytes")}
    expected["policy_dir"] = isolation["policy_dir"]
    expected["require_volatile"] = shards["require_volatile"]
    expected.update({key: DEFAULTS["volatile"][key]
                     for key in ("volatile_title", "upper_warn_percent")})
    assert {key: commands.DEFAULTS[key] for key in expected} == expected
    assert shards["config"] == commands.CONFIG_PATH
    # services None: the policy's default services
    assert commands.DEFAULTS["services"] is None


def test_isolation_defaults_match_defaults_yaml():
    isolation = DEFAULTS["isolation"]
    settings = policy.PolicySettings()
    assert policy.settings_to_mapping(settings) == {
        "services": isolation["services"], "directions": isolation["directions"],
        "notify": isolation["notify"], "policy_file": isolation["policy_file"],
        "shard_roots": DEFAULTS["shards"]["roots"]}
    assert isolation["policy_dir"] == policy.RUNTIME_DIR
