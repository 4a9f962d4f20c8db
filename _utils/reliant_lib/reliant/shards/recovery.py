"""Recovery that loads: a shard qube whose template is gone gets the global default one.

qubes-core-admin gives an AppVM's and a DispVM's ``template`` no default (``qubes/vm/
appvm.py`` and ``dispvm.py``: the ``domain-load`` handler asserts it), so removing the
property leaves a store qubesd does not load. Instead, an AppVM gets the global
``default_template`` when that is a TemplateVM, and a DispVM the global
``default_dispvm`` when that has ``template_for_dispvms`` (``qubes/vm/dispvm.py``
``_setter_template``; AppVM or StandaloneVM, ``qubes/vm/mix/dvmtemplate.py``). Global
properties name core qubes only, so the new template is always a core qube.

Its volumes follow, as qubesd does when a template changes (``qubes/vm/appvm.py``
``template_changed_update_storage`` and ``qubes/storage/__init__.py``
``Storage._update_volume_config_source``, R4.2 and R4.3): each volume that is a snapshot
of the template's (``snap_on_start`` with a ``source``) takes the template's volume of
the same name, following the template chain while that volume is itself a snapshot, and
lives in that volume's pool with its size; its own vid is the one the pool driver gives a
qube's volume (``qubes/storage/lvm.py`` ``ThinPool.init_volume``: ``VG/vm-NAME-VOLUME``;
``file.py``/``reflink.py``: ``appvms/NAME/VOLUME``). The old values are returned so that
the caller records them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from lxml import etree

from reliant.shards.records import QubeRecord, properties, property_value

#: Classes whose template may be recovered, with the global default each gets.
DEFAULT_FOR_CLASS = {"AppVM": "default_template", "DispVM": "default_dispvm"}
#: Classes a disposable's template may have (qubes/vm/dispvm.py, mix/dvmtemplate.py).
DISPVM_TEMPLATE_CLASSES = ("AppVM", "StandaloneVM")
_TRUE = ("1", "yes", "true", "on")  # qubes/__init__.py property.bool


@dataclass(frozen=True)
class Replacement:
    """The template a qube gets, and why none when `template` is None."""

    prop: str  # the global property it comes from
    template: Optional[str]
    reason: str = ""


class CoreDefaults:
    """The core's global default template and disposable template, read from the core
    store (`domains`: its <domain> elements, `read`: how to get a full element, e.g.
    materializing a stub)."""

    def __init__(self, global_properties: etree._Element, domains: dict[str, etree._Element],
                 pools: etree._Element,
                 read: Callable[[etree._Element], etree._Element]) -> None:
        self._globals = {prop.get("name"): prop.text or "" for prop in global_properties}
        self._domains = domains
        self._pools = {pool.get("name"): pool for pool in pools}
        self._read = read

    def replacement(self, klass: Optional[str]) -> Replacement:
        """What a qube of class `klass` whose template is gone gets."""
        prop = DEFAULT_FOR_CLASS.get(klass or "")
        if prop is None:
            return Replacement("", None, f"a {klass} has no template to recover")
        name = self._globals.get(prop, "")
        domain = self._domains.get(name) if name else None
        if domain is None:
            return Replacement(prop, None, f"the global {prop} is not set" if not name
                               else f"the global {prop} {name!r} is no core qube")
        record = QubeRecord(self._read(domain))
        if prop == "default_template" and record.cls != "TemplateVM":
            return Replacement(prop, None, f"the global {prop} {name!r} is a {record.cls}, "
                               "not a TemplateVM")
        if prop == "default_dispvm" and not (
                record.cls in DISPVM_TEMPLATE_CLASSES
                and (property_value(self._read(domain), "template_for_dispvms") or "").lower()
                in _TRUE):
            return Replacement(prop, None, f"the global {prop} {name!r} is no disposable "
                               "template (template_for_dispvms)")
        return Replacement(prop, name)

    def retarget(self, domain: etree._Element, template: str, name: str
                 ) -> Optional[dict[str, str]]:
        """Point `domain` (named `name`) at `template` and make its snapshot volumes
        snapshots of the template's; returns what changed: ``"template"`` and
        ``"volume-NAME"`` -> the old value (``POOL:SOURCE`` for a volume). None, changing
        nothing, when a snapshot volume has no counterpart in the template (its source
        would stay what the shard says)."""
        origins = [(v, self._origin(template, v.get("name") or ""))
                   for v in domain.iterfind("volume-config/volume")
                   if v.get("snap_on_start") == "True" and v.get("source") is not None]
        if any(origin is None for _, origin in origins):
            return None
        old = {"template": property_value(domain, "template") or ""}
        prop = properties(domain).get("template")
        if prop is None:
            prop = etree.SubElement(domain.find("properties"), "property", name="template")
        prop.text = template
        for volume, origin in origins:
            old["volume-" + (volume.get("name") or "")] = \
                f"{volume.get('pool')}:{volume.get('source')}"
            pool = origin.get("pool") or ""
            volume.set("pool", pool)
            volume.set("source", origin.get("vid") or "")
            volume.set("vid", self._vid(pool, name, volume.get("name") or ""))
            if origin.get("size") is not None:
                volume.set("size", origin.get("size"))
            revisions = self._pools[pool].get("revisions_to_keep") if pool in self._pools \
                else None
            if revisions is not None:
                volume.set("revisions_to_keep", revisions)
            elif "revisions_to_keep" in volume.attrib:
                del volume.attrib["revisions_to_keep"]
        return old

    def follow(self, disposable: etree._Element, template: etree._Element, name: str) -> None:
        """Make the snapshot volumes of `disposable` (named `name`) snapshots of the
        volumes `template` (its disposable template, just retargeted) has now, as qubesd
        does for a disposable template's disposables (qubes/vm/appvm.py
        ``on_property_set_template``)."""
        by_name = {v.get("name"): v for v in template.iterfind("volume-config/volume")}
        for volume in disposable.iterfind("volume-config/volume"):
            origin = by_name.get(volume.get("name"))
            if volume.get("snap_on_start") != "True" or volume.get("source") is None \
                    or origin is None:
                continue
            pool = origin.get("pool") or ""
            volume.set("pool", pool)
            volume.set("source", origin.get("source") or origin.get("vid") or "")
            volume.set("vid", self._vid(pool, name, volume.get("name") or ""))

    def _origin(self, template: str, volume: str) -> Optional[etree._Element]:
        """The volume `volume` of `template`, followed up its template chain while it is
        a snapshot itself (Storage._update_volume_config_source)."""
        seen = set()
        current: Optional[str] = template
        while current and current not in seen and current in self._domains:
            seen.add(current)
            element = self._read(self._domains[current])
            found = next((v for v in element.iterfind("volume-config/volume")
                          if v.get("name") == volume), None)
            if found is None or found.get("source") is None:
                return found
            current = property_value(element, "template")
        return None

    def _vid(self, pool: str, qube: str, volume: str) -> str:
        element = self._pools.get(pool)
        if element is not None and element.get("driver") == "lvm_thin":
            return f"{element.get('volume_group')}/vm-{qube}-{volume}"
        return f"appvms/{qube}/{volume}"
