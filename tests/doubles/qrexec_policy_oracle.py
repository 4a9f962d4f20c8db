"""Test oracle standing in for qrexec's policy daemon: a strict policy-v5 parser and a
first-match evaluator. It is NOT qrexec; it is written independently of the formula's
library so that the tests do not check the library against itself.

Facts it reproduces (qubes-core-qrexec ``qrexec/policy/parser.py``, ``qrexec/__init__.py``):

- directories are read as qrexec R4.3 does: /run/qubes/policy.d then /etc/qubes/policy.d;
  only ``*.policy`` files not starting with a dot count; a file name with a character
  outside ``[0-9a-z_.-]`` makes qrexec refuse every call; a name seen in an earlier
  directory hides the same name in a later one; the files are read sorted by name and the
  first matching rule wins (no match: denied);
- a rule is ``service argument source target action [key=value ...]``; service ``*`` or a
  name of ``[A-Za-z0-9._-]``; argument ``*`` or ``+...``, not with service ``*``;
  actions ``allow``/``deny``/``ask`` with their parameters (deny: notify; allow: target,
  user, notify, autostart; ask: also default_target), booleans ``yes``/``no``, no
  parameter twice;
- source tokens: ``*``, a name, ``@adminvm``, ``@anyvm``, ``@type:T``, ``@tag:T``,
  ``@dispvm:NAME``, ``@dispvm:@tag:T``; targets also ``@default`` and ``@dispvm``;
- matching: ``@tag:T`` matches only an existing domain carrying T (never a ``@dispvm``
  target); ``@anyvm`` matches everything but dom0; ``@dispvm:NAME`` matches
  ``@dispvm:NAME`` and ``@dispvm`` when the caller's default_dispvm is NAME;
  ``@dispvm:@tag:T`` matches ``@dispvm:NAME`` and the caller's ``@dispvm`` when that
  template carries T and has template_for_dispvms; a ``@dispvm:`` token as source never
  matches (a caller is a plain domain name); a request for ``@dispvm:NAME`` whose NAME is
  no disposable template, or for ``@dispvm`` without default_dispvm under an allow, fails;
- the "ask" dialog (``collect_targets_for_ask``) walks the rules last to first, adding
  the targets of allow/ask rules and removing those of deny rules, and only then turns
  ``@dispvm`` into the caller's default disposable template: a deny rule on
  ``@dispvm:@tag:T`` does not keep that disposable out of the dialog.

Stricter than qrexec on purpose: qube names must look like qube names, and directives
(``!include`` ...) are refused, since generated files never use them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

FILE_NAME_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyz_.-")
SERVICE_RE = re.compile(r"\A[A-Za-z0-9._-]+\Z")
ARGUMENT_RE = re.compile(r"\A\+[A-Za-z0-9._+-]*\Z")
NAME_RE = re.compile(r"\A(?:[A-Za-z][A-Za-z0-9_.-]{0,30}|uuid:[0-9a-f-]{36})\Z")
TAG_VALUE_RE = re.compile(r"\A[A-Za-z0-9_-]+\Z")
TYPE_VALUE_RE = re.compile(r"\A[A-Za-z]+\Z")
ACTION_PARAMS = {
    "deny": {"notify"},
    "allow": {"target", "user", "notify", "autostart"},
    "ask": {"target", "default_target", "user", "notify", "autostart"},
}


class PolicySyntaxError(ValueError):
    """The policy would not load (qrexec then denies every call)."""


@dataclass(frozen=True)
class Rule:
    """One parsed policy line."""

    service: Optional[str]
    argument: Optional[str]
    source: str
    target: str
    action: str
    params: Mapping[str, str]
    where: str


@dataclass(frozen=True)
class Domain:
    """What qrexec's system_info holds about one domain."""

    name: str
    type: str
    tags: frozenset[str]
    template_for_dispvms: bool
    default_dispvm: Optional[str]


def _check_vm_token(token: str, *, target: bool, where: str) -> None:
    exact = {"*", "@adminvm", "@anyvm"} | ({"@default", "@dispvm"} if target else set())
    if token in exact:
        return
    for prefix, value_re in (("@dispvm:@tag:", TAG_VALUE_RE), ("@tag:", TAG_VALUE_RE),
                             ("@type:", TYPE_VALUE_RE), ("@dispvm:", NAME_RE)):
        if token.startswith(prefix):
            if not value_re.match(token[len(prefix):]):
                raise PolicySyntaxError(f"{where}: invalid {prefix} token {token!r}")
            return
    if token.startswith("@") or not NAME_RE.match(token):
        raise PolicySyntaxError(f"{where}: invalid {'target' if target else 'source'} "
                                f"token {token!r}")


def _check_redirect(token: str, where: str) -> None:
    if token in ("@adminvm", "@dispvm"):
        return
    if token.startswith("@dispvm:") and NAME_RE.match(token[len("@dispvm:"):]):
        return
    if token.startswith("@") or not NAME_RE.match(token):
        raise PolicySyntaxError(f"{where}: invalid redirect {token!r}")


def parse_rule(line: str, where: str) -> Rule:
    """One rule line, checked strictly."""
    fields = line.split()
    if len(fields) < 5:
        raise PolicySyntaxError(f"{where}: wrong number of fields")
    service, argument, source, target, action, *raw_params = fields
    if service != "*" and not SERVICE_RE.match(service):
        raise PolicySyntaxError(f"{where}: invalid service {service!r}")
    if argument != "*":
        if not ARGUMENT_RE.match(argument):
            raise PolicySyntaxError(f"{where}: invalid argument {argument!r}")
        if service == "*":
            raise PolicySyntaxError(f"{where}: only * argument allowed for * service")
    _check_vm_token(source, target=False, where=where)
    _check_vm_token(target, target=True, where=where)
    if action not in ACTION_PARAMS:
        raise PolicySyntaxError(f"{where}: invalid action {action!r}")
    params: dict[str, str] = {}
    for param in raw_params:
        key, sep, value = param.partition("=")
        if not sep:
            raise PolicySyntaxError(f"{where}: invalid action parameter {param!r}")
        if key in params:
            raise PolicySyntaxError(f"{where}: parameter given twice: {key!r}")
        if key not in ACTION_PARAMS[action]:
            raise PolicySyntaxError(f"{where}: invalid parameter {key!r} for {action}")
        if key in ("notify", "autostart") and value not in ("yes", "no"):
            raise PolicySyntaxError(f"{where}: {key} must be yes or no")
        if key in ("target", "default_target"):
            _check_redirect(value, where)
        params[key] = value
    if target == "@default" and action == "allow" and "target" not in params:
        raise PolicySyntaxError(f"{where}: allow for @default needs target=")
    return Rule(None if service == "*" else service, None if argument == "*" else argument,
                source, target, action, params, where)


def parse_policy(text: str, name: str) -> list[Rule]:
    """Every rule of one file; comments and blank lines skipped; directives refused."""
    rules = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise PolicySyntaxError(f"{name}:{lineno}: directive not expected here")
        rules.append(parse_rule(line, f"{name}:{lineno}"))
    return rules


def policy_files(directories: Sequence[Path]) -> list[Path]:
    """The files qrexec reads from `directories` (earlier directory wins a name), sorted."""
    chosen: dict[str, Path] = {}
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if not path.is_file() or path.suffix != ".policy" or path.name.startswith("."):
                continue
            if not set(path.name) <= FILE_NAME_CHARS:
                raise PolicySyntaxError(f"invalid file name: {path}")
            chosen.setdefault(path.name, path)
    return [chosen[name] for name in sorted(chosen)]


def load_policy(directories: Sequence[Path]) -> list[Rule]:
    """All rules in evaluation order."""
    rules: list[Rule] = []
    for path in policy_files(directories):
        rules.extend(parse_policy(path.read_text(encoding="utf-8"), str(path)))
    return rules


def _is_dom0(name: str) -> bool:
    return name in ("dom0", "@adminvm")


def _resolve_dispvm(source: str, domains: Mapping[str, Domain]) -> Optional[str]:
    domain = domains.get(source)
    return domain.default_dispvm if domain else None


def _source_matches(token: str, source: str, domains: Mapping[str, Domain]) -> bool:
    if token == "*":
        return True
    if token == "@adminvm":
        return _is_dom0(source)
    if token == "@anyvm":
        return not _is_dom0(source)
    if token.startswith("@dispvm:"):
        return False
    if token.startswith("@tag:"):
        return source in domains and token[5:] in domains[source].tags
    if token.startswith("@type:"):
        return source in domains and domains[source].type == token[6:]
    return token == source


def _target_matches(token: str, target: str, source: str,
                    domains: Mapping[str, Domain]) -> bool:
    if token == "*":
        return True
    if token == "@adminvm":
        return _is_dom0(target)
    if token == "@anyvm":
        return not _is_dom0(target)
    if token.startswith("@dispvm:@tag:"):
        template = _resolve_dispvm(source, domains) if target == "@dispvm" else (
            target[8:] if target.startswith("@dispvm:") else None)
        domain = domains.get(template or "")
        return bool(domain and domain.template_for_dispvms and token[13:] in domain.tags)
    if token.startswith("@dispvm:"):
        if target == "@dispvm":
            return token[8:] == _resolve_dispvm(source, domains)
        return target.startswith("@dispvm:") and token[8:] == target[8:]
    if token.startswith("@tag:"):
        return target in domains and token[5:] in domains[target].tags
    if token.startswith("@type:"):
        return target in domains and domains[target].type == token[6:]
    return token == target


def intended_target(target: str, domains: Mapping[str, Domain]) -> str:
    """The target as qrexec's Request verifies it; ValueError when qrexec refuses it."""
    if target in ("", "@default"):
        return "@default"
    if target in ("@dispvm", "@adminvm") or _is_dom0(target):
        return target
    if target.startswith("@dispvm:"):
        domain = domains.get(target[8:])
        if not (domain and domain.template_for_dispvms):
            raise ValueError(f"not a template for dispvm: {target[8:]}")
        return target
    return target if target in domains else "@default"


def _matches_but_target(rule: Rule, service: str, argument: str, source: str,
                        domains: Mapping[str, Domain]) -> bool:
    return ((rule.service is None or rule.service == service)
            and (rule.argument is None or rule.argument == argument)
            and _source_matches(rule.source, source, domains))


def first_match(rules: Iterable[Rule], service: str, argument: str, source: str,
                target: str, domains: Mapping[str, Domain]) -> Optional[Rule]:
    """The rule qrexec applies to the call, None when none matches (qrexec denies)."""
    target = intended_target(target, domains)
    for rule in rules:
        if (_matches_but_target(rule, service, argument, source, domains)
                and _target_matches(rule.target, target, source, domains)):
            return rule
    return None


def _expand(token: str, domains: Mapping[str, Domain]) -> set[str]:
    """The targets a token stands for in the "ask" dialog (qrexec's ``expand``)."""
    templates = {f"@dispvm:{n}" for n, d in domains.items() if d.template_for_dispvms}
    if token == "*":
        return set(domains) | templates | {"@dispvm"}
    if token == "@anyvm":
        return {n for n in domains if not _is_dom0(n)} | templates | {"@dispvm"}
    if token in ("@adminvm", "@dispvm"):
        return {token}
    if token == "@default":
        return set()
    if token.startswith("@dispvm:@tag:"):
        return {f"@dispvm:{n}" for n, d in domains.items()
                if d.template_for_dispvms and token[13:] in d.tags}
    if token.startswith("@dispvm:"):
        return {token} & templates
    if token.startswith("@tag:"):
        return {n for n, d in domains.items() if token[5:] in d.tags}
    if token.startswith("@type:"):
        return {n for n, d in domains.items() if d.type == token[6:]}
    return {token} & set(domains)


def targets_for_ask(rules: Sequence[Rule], service: str, argument: str, source: str,
                    domains: Mapping[str, Domain]) -> set[str]:
    """What the "ask" dialog offers (qrexec ``collect_targets_for_ask``): rules read last
    to first, allow/ask add their (redirect) target, deny removes; then ``@dispvm`` becomes
    the caller's default disposable template and ``@adminvm`` dom0; the caller is left out.
    """
    targets: set[str] = set()
    for rule in reversed(rules):
        if not _matches_but_target(rule, service, argument, source, domains):
            continue
        token = rule.target if rule.action == "deny" else rule.params.get("target", rule.target)
        expansion = _expand(token, domains)
        if rule.action == "deny":
            targets -= expansion
        else:
            targets |= expansion
    if "@dispvm" in targets:
        targets.remove("@dispvm")
        dispvm = _resolve_dispvm(source, domains)
        if dispvm:
            targets.add(f"@dispvm:{dispvm}")
    if "@adminvm" in targets:
        targets.remove("@adminvm")
        targets.add("dom0")
    targets.discard(source)
    return targets
