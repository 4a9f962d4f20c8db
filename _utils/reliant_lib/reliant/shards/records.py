"""One <domain> of a qubesd store: `QubeRecord` (what the rules need, read in one pass)
and helpers that read or change a <domain> element in place.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Optional

from lxml import etree

from reliant.vocab import DOMAIN_REFERENCES, TAG_PREFIX, is_data_volume


def properties(element: etree._Element) -> dict[str, etree._Element]:
    props = element.find("properties")
    if props is None:
        return {}
    return {prop.get("name"): prop for prop in props}


def _named_text(element: etree._Element, section: str, name: str) -> Optional[str]:
    """Text of the child named `name` of `element`'s <section> ("" if empty), None if
    there is none."""
    children = element.find(section)
    if children is not None:
        for child in children:
            if child.get("name") == name:
                return child.text or ""
    return None


def property_value(element: etree._Element, name: str) -> Optional[str]:
    """The value of property `name` of a <domain> (or of a store's global properties)."""
    return _named_text(element, "properties", name)


class QubeRecord:
    """What the rules need to know about one <domain>, read in one pass (the hot loop of
    suture and dissect: plain local variables, one attribute read per item). Read-only
    for other modules: .cls .name .uuid .qid .label, .refs (as `references`), .pools,
    .data_pools (as `data_pools`), .volumes (name, pool or "", vid, source,
    snap_on_start), .group_tags (names of its ``reliant-`` tags), .dispvm_none
    (default_dispvm set to none), .dispvm_template (template_for_dispvms); .tags and
    .reliant_tags are elements (none in a record made `from_fields`)."""

    __slots__ = ("cls", "data_pools", "dispvm_none", "dispvm_template", "group_tags", "label",
                 "name", "pools", "qid", "refs", "reliant_tags", "tags", "uuid", "volumes")
    #: the plain data of a record, in the order of `fields`
    _FIELDS = ("cls", "name", "uuid", "label", "qid", "refs", "pools", "data_pools", "volumes",
               "group_tags", "dispvm_none", "dispvm_template")

    def __init__(self, domain: etree._Element) -> None:
        self.cls = domain.get("class")
        admin = self.cls == "AdminVM"
        name, uuid, label = ("dom0" if admin else ""), "", None
        qid: Optional[int] = 0 if admin else None
        refs: list[tuple[str, str]] = []
        devices: list[tuple[str, str]] = []
        pools: set[str] = set()
        own: set[str] = set()
        # name, pool ("" if none), vid, source, snap_on_start
        volumes: list[tuple[str, str, str, Optional[str], bool]] = []
        reliant_tags: list[etree._Element] = []
        tags: Optional[etree._Element] = None
        dispvm_none = dispvm_template = False
        for section in domain:
            kind = section.tag
            if kind == "properties":
                for prop in section:
                    key = prop.get("name")
                    if key in _REFERENCE_SET:
                        text = prop.text
                        if text:
                            refs.append((key, text))
                        elif key == "default_dispvm":
                            dispvm_none = True
                    elif key == "name":
                        if not admin:
                            name = prop.text or ""
                    elif key == "uuid":
                        uuid = prop.text or ""
                    elif key == "qid":
                        try:
                            qid = int(prop.text or "")
                        except ValueError:
                            qid = None
                    elif key == "label":
                        label = prop.text or ""
                    elif key == "template_for_dispvms":
                        dispvm_template = prop.text == "True"
            elif kind == "volume-config":
                for volume in section:
                    pool = volume.get("pool") or ""
                    volume_name, source = volume.get("name") or "", volume.get("source")
                    snapshot = volume.get("snap_on_start") == "True"
                    volumes.append((volume_name, pool, volume.get("vid") or "", source,
                                    snapshot))
                    if not pool:
                        continue
                    pools.add(pool)
                    if is_data_volume(volume_name, snapshot, source):
                        own.add(pool)
            elif kind == "devices":
                for device in section:
                    backend = device.get("backend-domain")
                    if backend:
                        devices.append((f"device {section.get('class')}:{device.get('id')}",
                                        backend))
            elif kind == "tags":
                tags = section
                for tag in section:
                    if (tag.get("name") or "").startswith(TAG_PREFIX):
                        reliant_tags.append(tag)
        self.name, self.uuid, self.label, self.qid = name, uuid, label, qid
        self.refs = refs + devices if devices else refs
        self.pools, self.data_pools, self.volumes = pools, own, volumes
        self.reliant_tags, self.tags = reliant_tags, tags
        self.group_tags = tuple(tag.get("name") for tag in reliant_tags)
        self.dispvm_none, self.dispvm_template = dispvm_none, dispvm_template

    def fields(self) -> tuple[Any, ...]:
        """The record as plain data (for dissect's memo), in the order of _FIELDS."""
        return _record_fields(self)

    @classmethod
    def from_fields(cls, fields: Sequence[Any]) -> QubeRecord:
        """The record of `fields` (see `fields`), without elements."""
        record = cls.__new__(cls)
        (record.cls, record.name, record.uuid, record.label, record.qid, record.refs,
         record.pools, record.data_pools, record.volumes, record.group_tags,
         record.dispvm_none, record.dispvm_template) = fields
        record.tags, record.reliant_tags = None, []
        return record


_REFERENCE_SET = frozenset(DOMAIN_REFERENCES)
GROUP_TAGS_FIELD = QubeRecord._FIELDS.index("group_tags")
_record_fields = operator.attrgetter(*QubeRecord._FIELDS)


def qube_name(domain: etree._Element) -> str:
    """The name of a <domain> ("dom0" for the AdminVM, "" if it has none)."""
    return QubeRecord(domain).name


def qube_uuid(domain: etree._Element) -> str:
    return QubeRecord(domain).uuid


def qube_qid(domain: etree._Element) -> Optional[int]:
    """The qid (0 for the AdminVM), None if missing or not a number."""
    return QubeRecord(domain).qid


def data_pools(domain: etree._Element) -> set[str]:
    """Pools of the qube's own data: private, volatile, and root unless it is a
    snapshot of a template's volume (snap_on_start with a source)."""
    return QubeRecord(domain).data_pools


def references(domain: etree._Element) -> list[tuple[str, str]]:
    """(what, qube name) for every reference of a <domain> to another qube: reference
    properties, then device assignments ("device CLASS:ID", backend)."""
    return QubeRecord(domain).refs


def set_qid(domain: etree._Element, qid: int) -> None:
    properties(domain)["qid"].text = str(qid)
    domain.set("id", f"domain-{qid}")


def strip_reliant_tags(domain: etree._Element) -> set[str]:
    """Remove every ``reliant-`` tag; return the names removed."""
    removed = set()
    tags = domain.find("tags")
    if tags is not None:
        for tag in list(tags):
            name = tag.get("name") or ""
            if name.startswith(TAG_PREFIX):
                removed.add(name)
                tags.remove(tag)
    return removed


def _features(domain: etree._Element) -> etree._Element:
    features = domain.find("features")
    if features is None:
        features = etree.Element("features")
        domain.insert(1, features)
    return features


def set_feature(domain: etree._Element, name: str, value: str) -> None:
    features = _features(domain)
    for feature in features:
        if feature.get("name") == name:
            feature.text = value
            return
    etree.SubElement(features, "feature", name=name).text = value


def feature_value(domain: etree._Element, name: str) -> Optional[str]:
    """The value of feature `name` of a <domain>, None if it is not set."""
    return _named_text(domain, "features", name)


def remove_device(domain: etree._Element, what: str) -> Optional[etree._Element]:
    for devices in domain.iterfind("devices"):
        for device in devices:
            if f"device {devices.get('class')}:{device.get('id')}" == what:
                devices.remove(device)
                return device
    return None


def dom0_subdir(qube: QubeRecord) -> str:
    """Where qubes-core-admin keeps the qube's dom0 directory under /var/lib/qubes."""
    return "vm-templates" if qube.cls == "TemplateVM" else "appvms"
