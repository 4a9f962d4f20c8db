"""Execution module `reliant_policy`: the qrexec policy and qubesd extension of
reliant.isolation (docs/isolation.md). Thin wrappers over the library's ``reliant.isolation.policy``.

Nothing here reads a shard: the deny rules between shards are written by
``reliant-shard suture`` into /run/qubes/policy.d, never by Salt.
"""

from __future__ import annotations

import reliant_lib_path  # noqa: F401 - puts _utils/reliant_lib on sys.path
import reliant_salt

# isort: split
import reliant.config
import reliant.isolation.policy

__virtualname__ = "reliant_policy"


def __virtual__():
    return reliant.config.virtual(__virtualname__, __opts__)


def persistent_policy(services: list | None = None, notify: bool = True) -> str:
    """Text of the persistent policy file (names no shard).

    CLI Example: ``qubesctl reliant_policy.persistent_policy``
    """
    values = settings(services=services, notify=notify)
    return reliant.isolation.policy.render_persistent_policy(
        reliant.isolation.policy.settings_from_mapping(values)).decode()


def settings(services: list | None = None, directions: list | None = None, notify: bool = True,
             policy_file: str = reliant.isolation.policy.POLICY_FILE_NAME,
             shard_roots: list | None = None) -> dict:
    """Validated isolation settings as the settings file holds them.

    CLI Example: ``qubesctl reliant_policy.settings services='[qubes.Filecopy]'``
    """
    values = {"notify": notify, "policy_file": policy_file}
    for key, value in (("services", services), ("directions", directions),
                       ("shard_roots", shard_roots)):
        if value is not None:
            values[key] = value
    with reliant_salt.salt_errors(reliant.isolation.policy.PolicyError):
        checked = reliant.isolation.policy.settings_from_mapping(values)
        return reliant.isolation.policy.settings_to_mapping(checked)


def site_packages(python: str = "/usr/bin/python3") -> str:
    """Where the qubesd extension goes: the purelib directory of `python`.

    CLI Example: ``qubesctl reliant_policy.site_packages``
    """
    with reliant_salt.salt_errors(reliant.isolation.policy.PolicyError):
        return reliant.isolation.policy.python_purelib(python)


def extension_paths(libdir: str) -> str:
    """Text of the extension's ``_paths.py`` (library directory, settings file).

    CLI Example: ``qubesctl reliant_policy.extension_paths /usr/lib/reliant``
    """
    with reliant_salt.salt_errors(reliant.isolation.policy.PolicyError):
        return reliant.isolation.policy.render_extension_paths(libdir)
