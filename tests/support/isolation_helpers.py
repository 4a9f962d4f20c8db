"""Test helpers of the isolation tests: the merged fixture with its group tags, and
qrexec's view of its domains (built here, independently of reliant.isolation.guard)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Optional

import qrexec_policy_oracle as oracle
from lxml import etree
from reliant.isolation import guard
from repo_paths import FIXTURES

MERGED = FIXTURES / "qubes-r4.3-merged.xml"
CORE = FIXTURES / "qubes-r4.3-core.xml"
SHARD_ROOT = "/run/shufflecake/"
CORE_TAG = "reliant-core"


def load(path: Path) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    return etree.parse(str(path), parser).getroot()


def shard_of_pool(root: etree._Element) -> dict[str, str]:
    """Pool name -> shard id, for pools under /run/shufflecake/<id>/ (the fixture's layout)."""
    found = {}
    for pool in root.iterfind("pools/pool"):
        path = pool.get("dir_path") or ""
        if path.startswith(SHARD_ROOT):
            found[pool.get("name")] = path[len(SHARD_ROOT):].split("/")[0]
    return found


def expected_groups(root: etree._Element) -> dict[str, str]:
    """Qube name -> group tag, from the pools its volumes use (any shard pool wins)."""
    shards = shard_of_pool(root)
    groups = {}
    for domain in root.iterfind("domains/domain"):
        name = domain.findtext("properties/property[@name='name']") or "dom0"
        ids = {shards[v.get("pool")] for v in domain.iterfind("volume-config/volume")
               if v.get("pool") in shards}
        assert len(ids) <= 1, name
        groups[name] = f"reliant-shard-{ids.pop()}" if ids else CORE_TAG
    return groups


def tagged(root: etree._Element, groups: dict[str, str] | None = None) -> etree._Element:
    """A copy of `root` where each domain carries its group tag, as suture leaves it."""
    root = copy.deepcopy(root)
    groups = groups or expected_groups(root)
    for domain in root.iterfind("domains/domain"):
        name = domain.findtext("properties/property[@name='name']") or "dom0"
        tags = domain.find("tags")
        if tags is None:
            tags = etree.SubElement(domain, "tags")
        etree.SubElement(tags, "tag", name=groups[name])
    return root


def merged_tagged() -> etree._Element:
    return tagged(load(MERGED))


def system_info(root: etree._Element) -> dict[str, oracle.Domain]:
    """qrexec's system_info of a store: tags, type, template_for_dispvms, default_dispvm
    resolved like qubesd (own property, else a disposable's template, else global)."""
    global_dispvm = root.findtext("properties/property[@name='default_dispvm']") or None
    domains = {}
    for domain in root.iterfind("domains/domain"):
        props = {p.get("name"): p.text or "" for p in domain.iterfind("properties/property")}
        name = props.get("name", "dom0")
        if "default_dispvm" in props:
            dispvm = props["default_dispvm"] or None
        elif domain.get("class") == "DispVM":
            dispvm = props.get("template") or None
        else:
            dispvm = global_dispvm
        domains[name] = oracle.Domain(
            name=name, type=domain.get("class"),
            tags=frozenset(t.get("name") for t in domain.iterfind("tags/tag")),
            template_for_dispvms=props.get("template_for_dispvms") == "True",
            default_dispvm=dispvm)
    return domains


def add_disposable(root: etree._Element, name: str, qid: int, template: str) -> None:
    """Append a running-style DispVM domain based on `template` (tags copied, as qubesd does)."""
    domains = root.find("domains")
    source = next(d for d in domains
                  if d.findtext("properties/property[@name='name']") == template)
    domain = etree.SubElement(domains, "domain", id=f"domain-{qid}", **{"class": "DispVM"})
    props = etree.SubElement(domain, "properties")
    for key, value in (("name", name), ("qid", str(qid)), ("template", template)):
        etree.SubElement(props, "property", name=key).text = value
    etree.SubElement(domain, "features")
    domain.append(copy.deepcopy(source.find("tags")))


def reference_problems(merged_root: etree._Element,
                       dependencies: Mapping[str, Iterable[str]]) -> list[str]:
    """What the guard says of a whole merged store: every qube without exactly one group
    tag, and every reference that crosses groups the wrong way; `dependencies` maps a
    shard tag to the shard tags it may reference."""
    qubes, global_refs = guard.facts_from_store(merged_root)
    problems = []
    groups: dict[str, Optional[str]] = {}
    for name, qube in sorted(qubes.items()):
        try:
            groups[name] = guard.group_of(qube)
        except guard.GuardError as exc:
            problems.append(str(exc))
            groups[name] = None
            continue
        if groups[name] is None:
            problems.append(f"qube {name!r} carries no group tag")
    for prop, target in sorted(global_refs.items()):
        problem = guard.reference_problem(None, CORE_TAG, prop, target, groups.get(target),
                                          dependencies)
        if problem:
            problems.append(problem)
    for name, qube in sorted(qubes.items()):
        if groups[name] is None:
            continue
        for prop, target in sorted(qube.references.items()):
            if target in groups:
                problem = guard.reference_problem(name, groups[name], prop, target,
                                                  groups[target], dependencies)
                if problem:
                    problems.append(problem)
    return problems
