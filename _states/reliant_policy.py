"""States of reliant.isolation: the persistent qrexec policy file and the settings file
(`installed`), and their removal with the runtime policy (`absent`).

Both compute the difference first, return early when there is none, predict it exactly
with test=True, act, then verify. They never read a shard: the deny rules between shards
are written at suture by ``reliant-shard``.
"""

from __future__ import annotations

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path
import reliant_salt

# isort: split
import reliant.isolation.policy
import reliant.store
from salt.exceptions import CommandExecutionError

__virtualname__ = "reliant_policy"


def __virtual__():
    if "reliant_policy.settings" not in __salt__:
        return (False, "reliant_policy: the execution module is not available (not dom0?)")
    return __virtualname__


def _converge(name: str, plan: dict, done: str) -> dict:
    policy = reliant.isolation.policy

    def left() -> list:
        still = policy.pending_changes(plan)
        return ["still different after writing: " + ", ".join(sorted(still))] if still else []

    return reliant_salt.converge(
        name, __opts__["test"], pending=lambda: policy.pending_changes(plan),
        apply=lambda: policy.apply_plan(plan), left=left,
        errors=(OSError, policy.PolicyError, reliant.store.StoreError), done=done,
        would=lambda changes: f"{len(changes)} file(s) would change",
        changed=lambda changes: f"{len(changes)} file(s) changed", failed="failed: {}")


def installed(name: str, services: list | None = None, directions: list | None = None,
              notify: bool = True, policy_file: str = reliant.isolation.policy.POLICY_FILE_NAME,
              shard_roots: list | None = None,
              settings_path: str = reliant.isolation.policy.SETTINGS_PATH) -> dict:
    """The persistent policy file in directory `name` and the settings file are in place."""
    try:
        values = __salt__["reliant_policy.settings"](
            services=services, directions=directions, notify=notify,
            policy_file=policy_file, shard_roots=shard_roots)
        settings = reliant.isolation.policy.settings_from_mapping(values)
        plan = reliant.isolation.policy.install_plan(name, settings, settings_path)
    except (CommandExecutionError, reliant.isolation.policy.PolicyError) as exc:
        return {"name": name, "result": False, "changes": {},
                "comment": f"reliant:isolation: {exc}"}
    return _converge(name, plan, "policy and settings files are in place")


def absent(name: str, policy_dir: str = reliant.isolation.policy.RUNTIME_DIR,
           policy_file: str = reliant.isolation.policy.POLICY_FILE_NAME,
           settings_path: str = reliant.isolation.policy.SETTINGS_PATH) -> dict:
    """No policy file of reliant.isolation in `name` (persistent) or `policy_dir` (runtime),
    and no settings file."""
    plan = reliant.isolation.policy.removal_plan(name, policy_dir, policy_file, settings_path)
    return _converge(name, plan, "no policy or settings file of reliant.isolation")
