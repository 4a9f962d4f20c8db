"""What qubesd's classes accept: the schema half of the model in ``reliant.qubesd_load``.

Per class: which properties exist and the syntax each setter accepts (bool as qubes parses
it, ints and their ranges, uuids, enums, names, tags, features, kernels); the attributes of
volumes and of each pool driver; the global properties. Read from qubes-core-admin
``release4.2`` (4.2.39) and ``release4.3`` (4.3.50), files named by each rule (see
``reliant.qubesd_load`` for the list); no code of qubes-core-admin is copied here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Optional

from lxml import etree

RELEASES = ("4.2", "4.3")

#: qubes/config.py max_qid (both), used by qubes/vm/__init__.py _setter_qid.
MAX_QID = 10000

CLASSES = ("AdminVM", "AppVM", "TemplateVM", "DispVM", "StandaloneVM")
QUBES_VM_CLASSES = ("AppVM", "TemplateVM", "DispVM", "StandaloneVM")
#: Classes with DVMTemplateMixin (qubes/vm/appvm.py, standalonevm.py; both).
DVM_TEMPLATE_CLASSES = ("AppVM", "StandaloneVM")

INT = re.compile(r"-?[0-9]+")
DIGITS = re.compile(r"[0-9]+")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: qubes/vm/__init__.py Tags.add (both): ASCII letters, digits, "_" and "-".
TAG = re.compile(r"[A-Za-z0-9_-]+")
#: qubes/api/admin.py vm_feature_set (4.3): the feature names qubesd itself accepts.
FEATURE_NAME = re.compile(r"[a-zA-Z0-9_.-]+")
#: qubes/vm/mix/net.py _setter_mac (both), after lowering the case.
MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
#: qubes/vm/qubesvm.py _setter_default_user (both).
USER = re.compile(r"[A-Za-z0-9_+,.-]*")
#: qubes/vm/qubesvm.py _setter_kbd_layout (both): layout+variant+options.
KEYBOARD = re.compile(r"[A-Za-z]+\+[A-Za-z0-9_-]*\+[A-Za-z0-9_:,-]*")
#: qubes/vm/qubesvm.py _setter_denied_list (4.3).
DENIED = re.compile(r"([bump*][0-9a-f*]{6})*")
LABEL_ID = re.compile(r"label-([0-9]+)")
#: PCI port ids LocalVM.load_extras (4.3) accepts whatever the machine: a path from root
#: bus 0000:00 (qubes/utils.py is_pci_path), or one device that sbdf_to_path can parse.
PCI_PORT = re.compile(r"\*|(0000_)?00_[0-9a-f]{2}\.[0-9a-f](-[0-9a-f]{2}_[0-9a-f]{2}\.[0-9a-f])*"
                       r"|([0-9a-f]{4}_)?[0-9a-f]{2}_[0-9a-f]{2}\.[0-9a-f]")
#: qubes/vm/__init__.py validate_name: 4.2 allows no dot, 4.3 allows dots after the first
#: character.
NAME = {"4.2": re.compile(r"[a-zA-Z][a-zA-Z0-9_-]*"),
         "4.3": re.compile(r"[a-zA-Z][a-zA-Z0-9_.-]*")}
#: qubes/__init__.py property.bool (both): case-insensitive; None (an empty element) is False.
BOOL_WORDS = ("0", "no", "false", "off", "1", "yes", "true", "on")
TRUE_WORDS = ("1", "yes", "true", "on")

#: qubes/vm/qubesvm.py QubesVM.__init__: volume attributes "True"/"False" become bools
#: (4.3); 4.2 converts only "True" and keeps "False" as a (true) string.
VOLUME_BOOLS = ("rw", "save_on_stop", "snap_on_start", "ephemeral")
#: qubes/storage/__init__.py Volume.__init__ keyword arguments (both); any other attribute
#: reaches object.__init__ and raises TypeError.
VOLUME_ATTRIBUTES = ("name", "pool", "vid", "revisions_to_keep", "size", "source",
                      *VOLUME_BOOLS)
#: Default volume configurations (qubes/vm/appvm.py, templatevm.py, dispvm.py,
#: standalonevm.py; the same on both): name -> (snap_on_start, has a "source" key, rw).
DEFAULT_VOLUMES = {
    "AppVM": {"root": (True, True, True), "private": (False, False, True),
              "volatile": (False, False, True), "kernel": (False, False, False)},
    "TemplateVM": {"root": (False, True, True), "private": (False, True, True),
                   "volatile": (False, False, True), "kernel": (False, False, False)},
    "StandaloneVM": {"root": (False, True, True), "private": (False, True, True),
                     "volatile": (False, False, True), "kernel": (False, False, False)},
    "DispVM": {"root": (True, True, True), "private": (True, True, True),
               "volatile": (False, False, True), "kernel": (False, False, False)},
}

#: Pool drivers modelled (qubes/storage/file.py, reflink.py, lvm.py, kernels.py) ->
#: (required attributes, optional attributes) of their constructors. Other drivers of
#: setup.py (callback, zfs) are not modelled: a store using them is said not to load.
POOL_DRIVERS = {
    "file": (("name", "dir_path"), ("revisions_to_keep", "ephemeral_volatile")),
    "file-reflink": (("name", "dir_path"),
                     ("revisions_to_keep", "ephemeral_volatile", "setup_check")),
    "lvm_thin": (("name", "volume_group", "thin_pool"),
                 ("revisions_to_keep", "ephemeral_volatile")),
    "linux-kernel": (("name", "dir_path"), ()),
}
#: Pools whose ``volumes[vid]`` finds only volumes initialised before (file.py: the base
#: Pool lookup over ``_volumes``; reflink.py ``get_volume``): a snapshot source must be a
#: volume of the qube's template chain, initialised first by Storage.init_volume.
ORDERED_POOLS = ("file", "file-reflink")

#: Global properties (qubes/app.py Qubes, all load stage 3) naming a qube, with the class
#: the qube must have (None: any).
GLOBAL_QUBE_PROPERTIES = {
    "default_guivm": None, "default_audiovm": None, "default_netvm": None,
    "default_template": "TemplateVM", "updatevm": None, "clockvm": None,
    "default_dispvm": None, "management_dispvm": None,
}
GLOBAL_POOL_PROPERTIES = ("default_pool", "default_pool_private", "default_pool_root",
                           "default_pool_volatile", "default_pool_kernel")
GLOBAL_INT_PROPERTIES = ("default_qrexec_timeout", "default_shutdown_timeout",
                          "stats_interval")


def is_bool(value: Optional[str]) -> bool:
    return value is None or value.lower() in BOOL_WORDS


def as_bool(value: Optional[str]) -> bool:
    return value is not None and value.lower() in TRUE_WORDS


# --- per-qube rules ---------------------------------------------------------------------
#: A property's syntax: the value (None for an empty element) -> what is wrong, or None.
Rule = Callable[[Optional[str]], Optional[str]]


def int_rule(low: Optional[int], high: Optional[int] = None) -> Rule:
    def rule(value: Optional[str]) -> Optional[str]:
        if value is None or not INT.fullmatch(value):
            return "must be an integer"
        number = int(value)
        if low is not None and number < low:
            return f"must be at least {low}"
        if high is not None and number > high:
            return f"must be at most {high}"
        return None
    return rule


def pattern_rule(pattern: re.Pattern, words: str, empty: bool = False,
                  lower: bool = False) -> Rule:
    def rule(value: Optional[str]) -> Optional[str]:
        if value is None:
            return None if empty else f"must be {words}"
        text = value.lower() if lower else value
        return None if pattern.fullmatch(text) else f"must be {words}"
    return rule


def bool_rule(value: Optional[str]) -> Optional[str]:
    return None if is_bool(value) else "must be a boolean (0/1, no/yes, false/true, off/on)"


def any_rule(value: Optional[str]) -> Optional[str]:
    return None


def name_rule(value: Optional[str]) -> Optional[str]:
    # qubes/vm/__init__.py BaseVM.name: type str, no setter; an empty one would be "None"
    return None if value else "must not be empty"


def uuid_rule(value: Optional[str]) -> Optional[str]:
    return None if value and UUID.fullmatch(value) else "must be a UUID"


def address_rule(kind: Callable[[str], object]) -> Rule:
    def rule(value: Optional[str]) -> Optional[str]:
        try:
            kind(value or "")
        except ValueError:
            return f"must be an {kind.__name__}"
        return None
    return rule


def kernel_rule(value: Optional[str]) -> Optional[str]:
    # qubes/vm/qubesvm.py _setter_kernel (both)
    return "a kernel name cannot contain '/'" if value and "/" in value else None


def kernelopts_rule(value: Optional[str]) -> Optional[str]:
    # qubes/vm/qubesvm.py _setter_kernelopts (both)
    return "at most 512 characters" if value and len(value) > 512 else None


def virt_mode_rule(value: Optional[str]) -> Optional[str]:
    # qubes/vm/qubesvm.py _setter_virt_mode (both); PCI devices are loaded after it
    return None if str(value).lower() in ("hvm", "pv", "pvh") else "must be hvm, pv or pvh"


#: Settable properties of QubesVM (qubes/vm/qubesvm.py, mix/net.py, vm/__init__.py; both)
#: and the syntax their setters accept. Stateless properties (klass, icon, xid, ip
#: gateways, ...) have a forbidding setter and are left out, like unknown names.
QUBESVM_PROPERTIES: dict[str, Rule] = {
    "name": name_rule,
    "qid": int_rule(1, MAX_QID),  # _setter_qid: 0..max_qid; qid 0 is dom0's
    "uuid": uuid_rule,
    "label": any_rule,  # checked against the store's labels below
    "autostart": bool_rule, "debug": bool_rule, "include_in_backups": bool_rule,
    "installed_by_rpm": bool_rule, "provides_network": bool_rule,
    "backup_timestamp": int_rule(None),
    "default_user": pattern_rule(USER, "letters, digits and _-+,.", empty=True),
    "ip": address_rule(ipaddress.IPv4Address),
    "ip6": address_rule(ipaddress.IPv6Address),
    "mac": pattern_rule(MAC, "a MAC address", lower=True),
    "kernel": kernel_rule, "kernelopts": kernelopts_rule,
    "keyboard_layout": pattern_rule(KEYBOARD, "layout+variant+options"),
    "maxmem": int_rule(0),
    "memory": int_rule(1), "vcpus": int_rule(1), "qrexec_timeout": int_rule(1),
    "shutdown_timeout": int_rule(1), "stubdom_mem": int_rule(1),
    "virt_mode": virt_mode_rule,
    "netvm": any_rule, "guivm": any_rule, "audiovm": any_rule,
    "default_dispvm": any_rule, "management_dispvm": any_rule,
}
QUBESVM_PROPERTIES_43: dict[str, Rule] = {
    "bootmode": any_rule,
    "devices_denied": pattern_rule(DENIED, "interface codes (c + 6 hex digits or *)",
                                    empty=True),
}
#: Per class (and release) additions; AdminVM's name, qid and uuid are forbidden
#: (qubes/vm/adminvm.py).
CLASS_PROPERTIES: dict[str, dict[str, Rule]] = {
    "AppVM": {"template": any_rule, "template_for_dispvms": bool_rule},
    "StandaloneVM": {"template_for_dispvms": bool_rule},
    "TemplateVM": {},
    "DispVM": {"template": any_rule, "dispid": int_rule(None), "auto_cleanup": bool_rule},
}
ADMINVM_PROPERTIES: dict[str, Rule] = {
    "label": any_rule, "default_dispvm": any_rule, "include_in_backups": bool_rule,
    "keyboard_layout": QUBESVM_PROPERTIES["keyboard_layout"],
}
#: Stage-4 properties naming a qube (qubes/vm/qubesvm.py, mix/net.py, appvm.py, dispvm.py).
REFERENCES = ("template", "netvm", "default_dispvm", "management_dispvm", "guivm", "audiovm")


def allowed_properties(klass: str, release: str) -> dict[str, Rule]:
    if klass == "AdminVM":
        allowed = dict(ADMINVM_PROPERTIES)
        if release == "4.3":
            allowed["devices_denied"] = QUBESVM_PROPERTIES_43["devices_denied"]
        return allowed
    allowed = dict(QUBESVM_PROPERTIES)
    if release == "4.3":
        allowed.update(QUBESVM_PROPERTIES_43)
        if klass == "TemplateVM":
            allowed["appvm_default_bootmode"] = any_rule
    allowed.update(CLASS_PROPERTIES[klass])
    return allowed


@dataclass(frozen=True)
class LoadProblem:
    """One rule of qubesd's loader that a store breaks.

    ``qube`` names the qube (None: the store as a whole), ``item`` what breaks the rule
    (``property template``, ``tag 'a b'``, ``volume private``, ``pool shardpool``, ...),
    ``rule`` the rule in words. ``fatal`` False: qubesd loads it, but must not be given it.
    """

    qube: Optional[str]
    item: str
    rule: str
    fatal: bool = True

    def __str__(self) -> str:
        where = "store" if self.qube is None else f"qube {self.qube!r}"
        kind = "" if self.fatal else " (qubesd loads it, but it must not be written)"
        return f"{where}: {self.item}: {self.rule}{kind}"


def check_pool(pool: etree._Element) -> list[LoadProblem]:
    """qubes/app.py Qubes._get_pool and the pool constructors (qubes/storage/*.py)."""
    name = pool.get("name")
    item = f"pool {name}"
    found: list[LoadProblem] = []

    def problem(rule: str) -> None:
        found.append(LoadProblem(None, item, rule))

    if not name:  # qubes/app.py Qubes.load asserts the name
        return [LoadProblem(None, "pool", "a pool must have a name")]
    driver = pool.get("driver")
    if driver not in POOL_DRIVERS:
        problem(f"driver {driver!r} is not one this model knows "
                f"({', '.join(sorted(POOL_DRIVERS))})")
        return found
    required, optional = POOL_DRIVERS[driver]
    attributes = set(pool.attrib) - {"driver"}
    for missing in sorted(set(required) - attributes):
        problem(f"the {driver} driver requires the attribute {missing!r}")
    for extra in sorted(attributes - set(required) - set(optional)):
        problem(f"the {driver} driver takes no attribute {extra!r}")
    revisions = pool.get("revisions_to_keep")
    if revisions is not None:
        if not INT.fullmatch(revisions):
            problem("revisions_to_keep must be an integer")
        elif driver == "file" and not -1 <= int(revisions) <= 1:
            # qubes/storage/file.py FilePool.revisions_to_keep; FileVolume accepts -1..1
            problem("a file pool keeps at most 1 revision")
    # qubes/storage/__init__.py Pool.__init__ (4.3: qubes.utils.parse_bool),
    # reflink.py ReflinkPool (setup_check: property.bool)
    for flag in ("ephemeral_volatile", "setup_check"):
        if pool.get(flag) is not None and pool.get(flag) not in ("True", "False"):
            problem(f"{flag} must be True or False")
    return found
