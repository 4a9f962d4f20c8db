"""The model of qubesd's loader (reliant.qubesd_load) against the real loader's verdicts
(tests/fixtures/qubesd-load) and against rules read from qubes-core-admin."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import pytest
from lxml import etree
from reliant import qubesd_load
from reliant.qubesd_load import LoadProblem, StoreContext, check_domain, check_store, loads

CORPUS = Path(__file__).resolve().parents[2] / "fixtures" / "qubesd-load"
VERDICTS = json.loads((CORPUS / "verdicts.json").read_text())
BASE = (CORPUS / "base_store.xml").read_text()
#: The corpus was judged by qubes-core-admin's R4.3 loader (its README).
CORPUS_RELEASE = "4.3"


def parse(text: str) -> etree._Element:
    return etree.fromstring(text.encode(), etree.XMLParser(resolve_entities=False,
                                                            no_network=True))


def corpus_root(case: str) -> etree._Element:
    return parse((CORPUS / f"{case}.xml").read_text())


def fatal(found: list[LoadProblem]) -> list[LoadProblem]:
    return [problem for problem in found if problem.fatal]


def domain_labels(root: etree._Element) -> dict[str, str]:
    """Serialised <domain> -> how problems name it, for comparing two stores."""
    context = StoreContext(root, CORPUS_RELEASE)
    return {etree.tostring(d).decode(): context.label(d) for d in context.domains}


# --- the real loader's verdicts -----------------------------------------------------------
@pytest.mark.parametrize("case", sorted(VERDICTS))
def test_the_model_gives_the_real_loaders_verdict(case: str) -> None:
    found = qubesd_load.problems(corpus_root(case), CORPUS_RELEASE)
    assert loads(corpus_root(case), CORPUS_RELEASE) is VERDICTS[case]["loads"], (
        VERDICTS[case].get("error"), [str(p) for p in found])
    assert bool(fatal(found)) is not VERDICTS[case]["loads"]


@pytest.mark.parametrize("case", sorted(c for c in VERDICTS if not VERDICTS[c]["loads"]))
def test_a_refused_store_is_blamed_on_what_differs_from_the_base_store(case: str) -> None:
    """Each case changes one thing of base_store: a refusal names a qube whose <domain>
    changed, or the store (None) when the change is store-wide."""
    base, root = domain_labels(parse(BASE)), domain_labels(corpus_root(case))
    changed = {label for text, label in root.items() if text not in base}
    culprits = {problem.qube for problem in fatal(qubesd_load.problems(corpus_root(case),
                                                                      CORPUS_RELEASE))}
    assert culprits
    assert culprits <= changed | {None}, (culprits, changed)


def test_the_corpus_has_a_verdict_for_every_store_and_a_store_for_every_verdict() -> None:
    assert {p.stem for p in CORPUS.glob("*.xml")} == set(VERDICTS)


# --- rules read from qubes-core-admin, each applied to the base store ----------------------
def edited(*edits: tuple[str, str]) -> etree._Element:
    text = BASE
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return parse(text)


WORK_UUID = '<property name="uuid">7d1fd4e9-0f5e-4c57-810f-a825dd54bcc6</property>'
WORK_PRIVATE = ('<volume name="private" pool="vm-pool" vid="qubes_dom0/vm-work-private" '
                'revisions_to_keep="2"')
FEDORA_ROOT = ('<volume name="root" pool="vm-pool" vid="qubes_dom0/vm-fedora-42-xfce-root" '
               'revisions_to_keep="2"')
PERSONAL_ROOT = ('<volume name="root" pool="vm-pool" vid="qubes_dom0/vm-personal-root" '
                 'revisions_to_keep="2" rw="True" save_on_stop="False" snap_on_start="True" '
                 'size="10737418240" source="qubes_dom0/vm-fedora-42-xfce-root"/>')
FILE_POOL_ROOTS = (
    (FEDORA_ROOT, '<volume name="root" pool="varlibqubes" '
                  'vid="vm-templates/fedora-42-xfce/root" revisions_to_keep="1"'),
    (PERSONAL_ROOT, '<volume name="root" pool="varlibqubes" vid="appvms/personal/root" '
                    'revisions_to_keep="0" rw="True" save_on_stop="False" snap_on_start="True" '
                    'size="10737418240" source="SOURCE"/>'),
)


def file_pool_roots(source: str) -> tuple[tuple[str, str], ...]:
    """fedora-42-xfce's root and personal's root (its snapshot) moved to the file pool."""
    (fedora, fedora_new), (personal, personal_new) = FILE_POOL_ROOTS
    return (fedora, fedora_new), (personal, personal_new.replace("SOURCE", source))


#: (id, release, edits, qubes refused (None: the store), whether the real loader loads it).
#: The real loader's answers were found by running qubes-core-admin's own loader on these
#: stores; where the model is stricter than the real loader on purpose, it is said.
SCENARIOS: list[tuple[str, str, tuple[tuple[str, str], ...], set[Optional[str]], bool]] = [
    ("a qube without uuid before others", "4.3",
     (('<property name="uuid">c95ee443-b79c-4680-9ee9-415d62f133df</property>', ""),),
     {"anon-whonix"}, False),
    ("a guivm whose name is no valid tag", "4.3",
     (("<property name=\"name\">sys-usb</property>", "<property name=\"name\">sys.usb</property>"),
      (WORK_UUID, WORK_UUID + '<property name="guivm">sys.usb</property>')),
     {"work"}, False),
    ("a volume attribute 'True' that is no flag", "4.3",
     ((WORK_PRIVATE, WORK_PRIVATE.replace('vid="qubes_dom0/vm-work-private"', 'vid="True"')),),
     {"work"}, False),
    ("netvm dom0", "4.3",
     ((WORK_UUID, WORK_UUID + '<property name="netvm">dom0</property>'),),
     {"work"}, False),
    ("a snapshot of its template's volume in a file pool", "4.3",
     file_pool_roots("vm-templates/fedora-42-xfce/root"), set(), True),
    ("a snapshot of a volume a file pool has not loaded", "4.3",
     file_pool_roots("vm-templates/gone/root"), {"personal"}, False),
    ("a manual device assignment", "4.3",
     (("<tag name=\"guivm-dom0\"/>\n      </tags>\n      <volume-config>\n        "
       "<volume name=\"root\" pool=\"vm-pool\" vid=\"qubes_dom0/vm-work-root\"",
       "<tag name=\"guivm-dom0\"/>\n      </tags>\n      <devices class=\"pci\"><device "
       "backend-domain=\"dom0\" id=\"00_14.0\" mode=\"manual\"/></devices>\n      "
       "<volume-config>\n        <volume name=\"root\" pool=\"vm-pool\" "
       "vid=\"qubes_dom0/vm-work-root\""),), {"work"}, False),
    ("a store written by R4.3 on R4.2 ('False' reads as true there)", "4.2", (),
     {"anon-whonix", "debian-13-xfce", "default-dvm", "disp4040", "fedora-42-xfce", "personal",
      "sys-firewall", "sys-net", "sys-usb", "sys-whonix", "untrusted", "vault",
      "whonix-gateway-18", "whonix-workstation-18", "work"}, False),
    ("a file pool keeping 2 revisions", "4.3",
     (('driver="file" revisions_to_keep="1"', 'driver="file" revisions_to_keep="2"'),),
     {None}, False),
    ("a label without a name", "4.3",
     (('<label id="label-5" color="0x555555">gray</label>',
       '<label id="label-5" color="0x555555"/>'),), {None}, False),
    ("a pool flag that is no boolean", "4.3",
     (('thin_pool="vm-pool" driver="lvm_thin" revisions_to_keep="2" ephemeral_volatile="False"',
       'thin_pool="vm-pool" driver="lvm_thin" revisions_to_keep="2" ephemeral_volatile="maybe"'),),
     {None}, False),
    ("private volume in a pool named by a mistyped flag", "4.3",
     ((WORK_PRIVATE, WORK_PRIVATE.replace('pool="vm-pool"', 'pool="False"')),), {"work"}, False),
]


@pytest.mark.parametrize(("release", "edits", "refused", "real_loads"),
                         [scenario[1:] for scenario in SCENARIOS],
                         ids=[scenario[0] for scenario in SCENARIOS])
def test_rules_read_from_the_loader(release: str, edits: tuple[tuple[str, str], ...],
                                    refused: set[Optional[str]], real_loads: bool) -> None:
    found = fatal(qubesd_load.problems(edited(*edits), release))
    assert {problem.qube for problem in found} == refused, [str(p) for p in found]
    assert (not found) is real_loads


def r42_format(root: etree._Element) -> etree._Element:
    """The store as R4.2 writes it: no 'False' volume or pool attribute
    (qubes/storage/__init__.py _sanitize_config)."""
    for element in root.iter("volume", "pool"):
        for key in [k for k, v in element.attrib.items() if v == "False"]:
            del element.attrib[key]
    return root


def test_a_store_written_by_r42_loads_on_both_releases() -> None:
    root = r42_format(parse(BASE))
    assert loads(root, "4.2") and loads(root, "4.3") and loads(root, None)
    assert not loads(parse(BASE), None)  # None: every release must load it


def test_names_qubesd_would_not_give_are_reported_but_do_not_stop_the_load() -> None:
    root = r42_format(edited(("<property name=\"name\">untrusted</property>",
                              "<property name=\"name\">un.trusted</property>")))
    assert loads(root, "4.2") and loads(root, "4.3")
    on_42 = qubesd_load.problems(root, "4.2")
    assert [(p.qube, p.item, p.fatal) for p in on_42] == [("un.trusted", "property name", False)]
    assert qubesd_load.problems(root, "4.3") == []  # 4.3 names may hold dots


def test_a_preload_list_naming_a_missing_qube_is_refused_although_qubesd_rewrites_it() -> None:
    """Conservative: mix/dvmtemplate.py (4.3) takes the name out and saves the store while
    loading; the model says the template does not load."""
    root = edited(('<feature name="appmenus-dispvm">1</feature>',
                   '<feature name="appmenus-dispvm">1</feature>'
                   '<feature name="preload-dispvm">disp4040 disp9</feature>'))
    assert {p.qube for p in fatal(qubesd_load.problems(root, "4.3"))} == {"default-dvm"}
    assert loads(r42_format(root), "4.2")  # R4.2 has no preloaded disposables


# --- the API: per-qube checks, the store, the problems ------------------------------------
def test_check_domain_blames_only_the_qube_it_checks() -> None:
    root = edited(('<property name="label">blue</property>',
                   '<property name="label">ultraviolet</property>'),
                  ("<tag name=\"guivm-dom0\"/>\n      </tags>\n      <volume-config>\n        "
                   "<volume name=\"root\" pool=\"vm-pool\" vid=\"qubes_dom0/vm-vault-root\"",
                   "<tag name=\"bad tag\"/>\n      </tags>\n      <volume-config>\n        "
                   "<volume name=\"root\" pool=\"vm-pool\" vid=\"qubes_dom0/vm-vault-root\""))
    context = StoreContext(root, "4.3")
    by_qube = {context.label(d): check_domain(d, context) for d in context.domains}
    assert {name for name, found in by_qube.items() if found} == {"work", "vault"}
    assert [(p.qube, p.item) for p in by_qube["vault"]] == [("vault", "tag 'bad tag'")]
    assert [(p.qube, p.item) for p in by_qube["work"]] == [("work", "property label")]
    assert check_store(context) == []


def test_of_two_qubes_with_one_name_the_later_one_is_refused() -> None:
    """qubes/app.py VMCollection.add refuses the qube added second, in document order."""
    root = edited(("<property name=\"name\">personal</property>",
                   "<property name=\"name\">vault</property>"))
    found = fatal(qubesd_load.problems(root, "4.3"))
    assert [(p.qube, p.item) for p in found] == [("vault", "property name")]
    personal = next(d for d in root.iterfind("domains/domain")
                    if d.get("id") == "domain-11")
    later = next(d for d in root.iterfind("domains/domain") if d.get("id") == "domain-13")
    context = StoreContext(root, "4.3")
    assert check_domain(personal, context) == []
    assert [p.rule for p in check_domain(later, context)] == [
        "another qube is already named 'vault'"]


def test_a_store_without_dom0_is_refused() -> None:
    """Conservative: qubes/app.py Qubes.load creates a dom0 then; not modelled."""
    root = parse(BASE)
    dom0 = root.find("domains/domain[@class='AdminVM']")
    dom0.getparent().remove(dom0)
    assert [(p.qube, p.item) for p in qubesd_load.problems(root, "4.3")] == [(None, "dom0")]


def test_problems_read_as_sentences() -> None:
    assert str(LoadProblem("work", "property label", "'x' is no label of the store")) == (
        "qube 'work': property label: 'x' is no label of the store")
    assert str(LoadProblem(None, "pool p", "a pool must have a name")) == (
        "store: pool p: a pool must have a name")
    assert re.search(r"must not be written\)$", str(LoadProblem("w", "p", "r", fatal=False)))


def test_an_unknown_release_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown Qubes release '4\.1'"):
        StoreContext(parse(BASE), "4.1")
