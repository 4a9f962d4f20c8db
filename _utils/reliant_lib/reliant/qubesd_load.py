"""What qubesd loads: a model of qubes-core-admin's store loader, for checking a store
before it is written.

qubesd loads its whole store at start; any exception while loading stops it, and dom0 then
has no qubes at all. This module says, for a ``<qubes>`` tree, which rules of the loader a
store breaks, and which qube (or which store-wide item: label, pool, global property)
breaks each, so that a writer can leave that qube out instead of writing a store that
takes dom0 down.

Read from qubes-core-admin (https://github.com/QubesOS/qubes-core-admin), branches
``release4.2`` (``version`` file: 4.2.39, commit 702cc3f9) and ``release4.3`` (``version``
file: 4.3.50, commit 68fc8b6b): ``qubes/__init__.py`` (property, its bool parsing,
PropertyHolder), ``qubes/app.py`` (``Qubes.load`` and its stages, global properties,
VMCollection, ``_get_pool``), ``qubes/vm/__init__.py`` (BaseVM, LocalVM, VMProperty, Tags,
the qid and label setters, ``load_extras``), ``qubes/vm/qubesvm.py``, ``appvm.py``,
``templatevm.py``, ``dispvm.py``, ``standalonevm.py``, ``adminvm.py``, ``qubes/vm/mix/net.py``
and ``dvmtemplate.py``, ``qubes/features.py``, ``qubes/storage/__init__.py`` (Storage,
Volume, Pool), ``file.py``, ``reflink.py``, ``lvm.py``, ``kernels.py``, and the
``domain-load`` handlers of ``qubes/ext/`` (``gui.py``, ``audio.py``, ``services.py``,
``block.py``, ``core_features.py``). Each rule below names the file it comes from; "(4.2)"
or "(4.3)" marks a rule of one branch only. No code of qubes-core-admin is copied here.

The model is conservative: where the loader's behaviour is not certain (order-dependent
lookups, drivers and classes not modelled, legacy properties it migrates), a store is said
not to load. A problem with ``fatal=False`` is one qubesd loads, but that no store written
by qubesd itself contains (an invalid name, a duplicate uuid, a device assignment qubesd
drops): a writer must not write those either.

Which release: the two branches read a volume attribute ``"False"`` differently
(``qubes/vm/qubesvm.py`` ``QubesVM.__init__``: 4.3 turns it into False, 4.2 keeps the
string, which is true), and 4.3 stores write ``"False"`` where 4.2 stores omit it, so a
store written by one release may not load on the other. Pass the release dom0 runs
(``"4.2"`` or ``"4.3"``, e.g. from ``/etc/qubes-release``), or None for "every release
here" (the strictest).

The tables of what each class accepts (properties, the syntax of their values, volume
and pool attributes) are in ``reliant.qubesd_schema``, read from the same sources.

API: ``problems(root, release)`` lists every problem; ``loads(root, release)`` says whether
qubesd starts on the store; ``StoreContext(root, release)`` with ``check_domain(domain,
context)`` checks one ``<domain>`` against the rest of the store, and ``check_store(context)``
the store-wide items. Problems of one qube may come from qubes it references (a missing
template): after leaving a qube out, check the remaining store again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Optional

from lxml import etree

from reliant import qubesd_schema as schema
from reliant.qubesd_schema import LoadProblem, check_pool


# --- reading a store --------------------------------------------------------------------
def _value(node: etree._Element) -> Optional[str]:
    """A property's value as PropertyHolder.load_properties reads it (qubes/__init__.py)
    from the written store, where an empty text reads as None."""
    return node.get("ref") or node.text or None


def _properties(element: etree._Element) -> list[etree._Element]:
    return [node for node in element.iterfind("properties/property")]


def _property_map(element: etree._Element) -> dict[str, Optional[str]]:
    """Property name -> value (the last one wins, as repeated setattr does)."""
    return {node.get("name"): _value(node) for node in _properties(element)
            if node.get("name") is not None}


@dataclass(frozen=True)
class _Qube:
    """What other qubes' rules need to know about one <domain>."""

    element: etree._Element
    klass: str
    name: str
    provides_network: bool
    template_for_dispvms: bool
    template: Optional[str]
    #: volume name -> (pool, vid attribute)
    volumes: dict[str, tuple[Optional[str], Optional[str]]]


class StoreContext:
    """The store-wide facts that the rules for one qube need, for one release or all."""

    def __init__(self, root: etree._Element, release: Optional[str] = None) -> None:
        if release is not None and release not in schema.RELEASES:
            raise ValueError(f"unknown Qubes release {release!r}; known: {', '.join(schema.RELEASES)}")
        self.root = root
        self.releases: tuple[str, ...] = schema.RELEASES if release is None else (release,)
        self.domains = list(root.iterfind("domains/domain"))
        self.labels = self._labels()
        #: pool name -> driver, for the pools qubesd creates (qubes/app.py load, stage 1)
        self.pools = {pool.get("name"): pool.get("driver") for pool in root.iterfind("pools/pool")
                      if pool.get("name") and pool.get("driver") in schema.POOL_DRIVERS}
        self.globals = _property_map(root)
        self.qubes: dict[str, _Qube] = {}
        self.first_qid: dict[int, etree._Element] = {}
        self.uuids: dict[str, etree._Element] = {}
        self.admin_vms = [d for d in self.domains if d.get("class") == "AdminVM"]
        for domain in self.domains:
            self._index(domain)

    def _labels(self) -> dict[str, int]:
        labels: dict[str, int] = {}
        for node in self.root.iterfind("labels/label"):
            match = schema.LABEL_ID.fullmatch(node.get("id") or "")
            if match and node.text:
                labels.setdefault(node.text, int(match.group(1)))
        return labels

    def _index(self, domain: etree._Element) -> None:
        props = _property_map(domain)
        klass = domain.get("class") or ""
        name = "dom0" if klass == "AdminVM" else props.get("name")
        if name and name not in self.qubes:
            volumes = {v.get("name"): (v.get("pool"), v.get("vid"))
                       for v in domain.iterfind("volume-config/volume") if v.get("name")}
            self.qubes[name] = _Qube(
                element=domain, klass=klass, name=name,
                provides_network=schema.as_bool(props.get("provides_network")),
                template_for_dispvms=schema.as_bool(props.get("template_for_dispvms")),
                template=props.get("template") or None, volumes=volumes)
        qid = 0 if klass == "AdminVM" else props.get("qid")
        if isinstance(qid, str) and schema.INT.fullmatch(qid):
            qid = int(qid)
        if isinstance(qid, int):
            self.first_qid.setdefault(qid, domain)
        uuid = props.get("uuid")
        if uuid and schema.UUID.fullmatch(uuid):
            self.uuids.setdefault(uuid.lower(), domain)

    def label(self, domain: etree._Element) -> str:
        """How problems name a <domain> (LoadProblem.qube): its name; dom0 for the first
        AdminVM; ``<domain ID>`` (its id attribute) for a qube without a name or another
        AdminVM."""
        if domain.get("class") == "AdminVM":
            if self.admin_vms and self.admin_vms[0] is domain:
                return "dom0"
        else:
            name = _property_map(domain).get("name")
            if name:
                return name
        return f"<domain {domain.get('id') or '?'}>"

    def qube(self, name: Optional[str]) -> Optional[_Qube]:
        return self.qubes.get(name) if name else None

    def label_exists(self, value: Optional[str]) -> bool:
        """qubes/vm/__init__.py setter_label and qubes/app.py get_label (both): a label's
        name, ``label-N`` or ``N`` for an existing index."""
        if not value:
            return False
        indices = set(self.labels.values())
        if value.startswith("label-"):  # looked up by index only, int() of the rest
            match = schema.LABEL_ID.fullmatch(value)
            return bool(match) and int(match.group(1)) in indices
        return value in self.labels or (bool(schema.DIGITS.fullmatch(value)) and int(value) in indices)

    def template_chain(self, qube: _Qube) -> Iterator[_Qube]:
        """The qube's template, its template's template, ... (qubes/storage/__init__.py
        Storage.init_volume initialises them first)."""
        seen = {qube.name}
        current = self.qube(qube.template) if qube.klass in ("AppVM", "DispVM") else None
        while current is not None and current.name not in seen:
            seen.add(current.name)
            yield current
            current = (self.qube(current.template)
                       if current.klass in ("AppVM", "DispVM") else None)


# --- store-wide rules -------------------------------------------------------------------
def check_store(context: StoreContext) -> list[LoadProblem]:
    """Problems of the store as a whole: labels, pools, global properties, dom0 (the same
    on both releases)."""
    found: list[LoadProblem] = []

    def problem(item: str, rule: str) -> None:
        found.append(LoadProblem(None, item, rule))

    if context.root.tag != "qubes":
        problem("root", f"the root element is <{context.root.tag}>, not <qubes>")
    # qubes/__init__.py Label.fromxml (both): id "label-N", a name; the icon is built from it.
    seen_ids: set[str] = set()
    seen_names: set[str] = set()
    for node in context.root.iterfind("labels/label"):
        label_id, name = node.get("id") or "", node.text
        if not schema.LABEL_ID.fullmatch(label_id):
            problem(f"label {label_id!r}", "a label's id must be 'label-N'")
        if not name:
            problem(f"label {label_id!r}", "a label must have a name")
        if label_id in seen_ids or (name and name in seen_names):
            problem(f"label {label_id!r}", "labels must not repeat an id or a name")
        seen_ids.add(label_id)
        seen_names.add(name or "")
    seen_pools: set[str] = set()
    for pool in context.root.iterfind("pools/pool"):
        found += check_pool(pool)
        name = pool.get("name") or ""
        if name in seen_pools:
            problem(f"pool {name}", "pool names must be unique")
        seen_pools.add(name)
    # qubes/app.py Qubes.load (both): a store without an AdminVM gets one created; not
    # modelled. Two AdminVMs share qid 0 and the name dom0.
    if len(context.admin_vms) != 1:
        problem("dom0", f"the store must hold exactly one AdminVM, not {len(context.admin_vms)}")
    found += _check_globals(context)
    return found


def _check_globals(context: StoreContext) -> list[LoadProblem]:
    """qubes/app.py Qubes properties, loaded at stage 3 (both); other names are ignored."""
    found: list[LoadProblem] = []
    for node in _properties(context.root):
        name, value = node.get("name"), _value(node)
        item = f"global property {name}"
        rule = None
        if name in schema.GLOBAL_QUBE_PROPERTIES:
            # qubes/vm/__init__.py VMProperty.__set__: "" is None, else an existing qube
            target = context.qube(value)
            wanted = schema.GLOBAL_QUBE_PROPERTIES[name]
            if value and target is None:
                rule = f"names {value!r}, which is no qube of the store"
            elif target is not None and wanted and target.klass != wanted:
                rule = f"must name {_a(wanted)}, {value!r} is {_a(target.klass)}"
        elif name in schema.GLOBAL_POOL_PROPERTIES:
            if value not in context.pools:  # qubes/app.py _setter_pool
                rule = f"names {value!r}, which is no pool of the store"
        elif name in schema.GLOBAL_INT_PROPERTIES:
            if value is None or not schema.INT.fullmatch(value):
                rule = "must be an integer"
        elif name == "check_updates_vm":
            if not schema.is_bool(value):
                rule = "must be a boolean"
        elif name == "default_fw_netvm":
            rule = "a legacy property qubesd migrates at load; not modelled"
        if rule:
            found.append(LoadProblem(None, item, rule))
    return found


def check_domain(domain: etree._Element, context: StoreContext) -> list[LoadProblem]:
    """Problems of one ``<domain>`` of ``context``'s store, every one naming this qube."""
    found: list[LoadProblem] = []
    for release in context.releases:
        found += _Domain(domain, context, release).check()
    return _unique(found)


class _Domain:
    """The rules for one <domain>, for one release."""

    def __init__(self, domain: etree._Element, context: StoreContext, release: str) -> None:
        self.domain = domain
        self.context = context
        self.release = release
        self.klass = domain.get("class") or ""
        self.label = context.label(domain)
        self.props = _property_map(domain)
        self.found: list[LoadProblem] = []

    def problem(self, item: str, rule: str, fatal: bool = True) -> None:
        self.found.append(LoadProblem(self.label, item, rule, fatal))

    def check(self) -> list[LoadProblem]:
        if self.klass not in schema.CLASSES:
            # qubes/app.py get_vm_class; RemoteVM (4.3) is not modelled
            self.problem("class", f"no such qube class: {self.klass!r}")
            return self.found
        self._properties()
        self._identity()
        self._references()
        if self.klass != "AdminVM":
            self._volumes()
        self._features()
        self._tags()
        self._devices()
        return self.found

    # -- properties ---------------------------------------------------------------------
    def _properties(self) -> None:
        """qubes/__init__.py PropertyHolder.__init__: a property the class does not take is
        a TypeError; a forbidden setter (stateless properties, AdminVM's name, qid, uuid)
        raises; each setter checks its value."""
        allowed = schema.allowed_properties(self.klass, self.release)
        seen: set[Optional[str]] = set()
        for node in _properties(self.domain):
            name = node.get("name")
            item = f"property {name}"
            if name in seen:  # name, qid, uuid are write-once; keep the rest simple
                self.problem(item, "set twice")
            seen.add(name)
            if len(node):
                self.problem(item, "a property holds text only")
            if name not in allowed:
                self.problem(item, f"not a property {_a(self.klass)} takes")
                continue
            rule = allowed[name](_value(node))
            if rule:
                self.problem(item, f"{_value(node)!r} {rule}" if rule.startswith("must")
                             else rule)
        if not self.context.label_exists(self.props.get("label")):
            # qubes/vm/__init__.py setter_label; a qube without a label is not modelled
            self.problem("property label",
                         f"{self.props.get('label')!r} is no label of the store")
        required = ["name", "qid"] if self.klass != "AdminVM" else []
        required += {"AppVM": ["template"], "DispVM": ["template", "dispid"]}.get(self.klass, [])
        for name in required:
            # qubes/app.py VMCollection.add reads qid and name; appvm.py and dispvm.py
            # assert the template at domain-load; dispid has no default (dispvm.py)
            if name not in self.props:
                self.problem(f"property {name}", "required, and it has no default")

    def _identity(self) -> None:
        context = self.context
        name = "dom0" if self.klass == "AdminVM" else self.props.get("name")
        if name and context.qubes.get(name) and context.qubes[name].element is not self.domain:
            # qubes/app.py VMCollection.add: the later of two qubes is refused
            self.problem("property name", f"another qube is already named {name!r}")
        qid = 0 if self.klass == "AdminVM" else self.props.get("qid")
        if isinstance(qid, str) and schema.INT.fullmatch(qid):
            qid = int(qid)
        if isinstance(qid, int) and context.first_qid.get(qid) is not self.domain:
            self.problem("property qid", f"another qube already has qid {qid}")
        if self.klass == "AdminVM":
            return
        if name and not _valid_name(name, self.release):
            self.problem("property name", "not a qube name qubesd accepts "
                         "(qubes/vm/__init__.py validate_name)", fatal=False)
        uuid = self.props.get("uuid")
        if uuid is None:
            # qubes/app.py VMCollection.__contains__ reads the uuid of every qube already
            # added; only the last qube may lack one (BaseVM gives it a new one at load)
            last = context.domains[-1] is self.domain
            self.problem("property uuid", "missing (qubesd makes a new one each start)"
                         if last else "missing, and a later qube makes qubesd read it",
                         fatal=not last)
        elif schema.UUID.fullmatch(uuid) and context.uuids.get(uuid.lower()) is not self.domain:
            self.problem("property uuid", "another qube has the same uuid", fatal=False)

    # -- references ---------------------------------------------------------------------
    def _references(self) -> None:
        """VMProperty.__set__ (qubes/vm/__init__.py): "" is None, otherwise an existing
        qube of the right class; then each property's setter."""
        for prop in schema.REFERENCES:
            if prop not in self.props:
                continue
            value = self.props[prop]
            item = f"property {prop}"
            if not value:
                if prop == "template":  # not allow_none (appvm.py, dispvm.py)
                    self.problem(item, "cannot be empty")
                continue
            target = self.context.qube(value)
            if target is None:
                self.problem(item, f"names {value!r}, which is no qube of the store")
            elif prop == "template" and self.klass == "AppVM" and target.klass != "TemplateVM":
                self.problem(item, f"must name a TemplateVM, {value!r} is {_a(target.klass)}")
            elif prop == "template" and self.klass == "DispVM" and not (
                    target.klass in schema.DVM_TEMPLATE_CLASSES and target.template_for_dispvms):
                # dispvm.py _setter_template
                self.problem(item, f"{value!r} must have template_for_dispvms=True")
            elif prop == "netvm" and not (target.klass in schema.QUBES_VM_CLASSES
                                          and target.provides_network):
                # mix/net.py _setter_netvm; a loop is no error: the setter checks loops
                # only with events enabled, and on_domain_load_netvm_loop_check breaks it
                self.problem(item, f"{value!r} does not provide network")
        if self.klass == "AdminVM":
            return
        for prop, tag in (("guivm", "guivm-"), ("audiovm", "audiovm-")):
            # ext/gui.py, ext/audio.py at domain-load: tag the qube with its (default)
            # guivm's and audiovm's name; Tags.add refuses other characters
            target = self._effective(prop)
            if target and not schema.TAG.fullmatch(target):
                self.problem(f"property {prop}",
                             f"the tag {tag + target!r} qubesd adds at load is invalid")

    def _effective(self, prop: str) -> Optional[str]:
        """Name of the guivm/audiovm the qube uses: its own, else the global default, else
        dom0 (qubes/vm/qubesvm.py, qubes/app.py)."""
        if prop in self.props:
            return self.props[prop] or None
        default = self.context.globals.get("default_" + prop, "dom0")
        return default or None

    # -- volumes ------------------------------------------------------------------------
    def _volumes(self) -> None:
        """QubesVM.__init__ reads <volume-config>; at domain-load Storage.init_volume
        builds each volume in its pool (qubes/vm/qubesvm.py, qubes/storage/*.py)."""
        defaults = schema.DEFAULT_VOLUMES[self.klass]
        volumes: dict[str, etree._Element] = {}
        for node in self.domain.iterfind("volume-config/volume"):
            name = node.get("name")
            if not name:  # QubesVM.__init__ asserts it
                self.problem("volume", "a volume must have a name")
                continue
            if name in volumes:
                self.problem(f"volume {name}", "given twice")
            volumes[name] = node
        for name in defaults:
            if name not in volumes:
                # Storage.init_volume would fall back to the global default pools
                self.problem(f"volume {name}", "missing (the default pools are not modelled)")
        for name, node in volumes.items():
            self._volume(name, node, defaults.get(name))

    def _volume(self, name: str, node: etree._Element,
                default: Optional[tuple[bool, bool, bool]]) -> None:
        item = f"volume {name}"
        attributes = dict(node.attrib)
        for extra in sorted(set(attributes) - set(schema.VOLUME_ATTRIBUTES)):
            self.problem(item, f"no attribute {extra!r} (Volume takes no such argument)")
        for key, value in attributes.items():
            if key not in schema.VOLUME_BOOLS and value in ("True", "False"):
                # QubesVM.__init__ turns these values of any attribute into bools
                self.problem(item, f"{key} cannot be {value!r}")
        flags: dict[str, bool] = {}
        for flag in schema.VOLUME_BOOLS:
            value = attributes.get(flag)
            if value is None:
                continue
            if value == "True" or (value == "False" and self.release == "4.3"):
                flags[flag] = value == "True"
            elif value == "False":
                self.problem(item, f"{flag}='False' reads as true on R4.2")
            else:
                self.problem(item, f"{flag} must be True or False")
        for number in ("revisions_to_keep", "size"):
            if attributes.get(number) is not None and not schema.INT.fullmatch(attributes[number]):
                self.problem(item, f"{number} must be an integer")
        pool = attributes.get("pool")
        driver = self.context.pools.get(pool) if pool else None
        if driver is None:
            self.problem(item, f"pool {pool!r} is not defined" if pool else "no pool")
            return
        snap = flags.get("snap_on_start", default[0] if default else False)
        save = flags.get("save_on_stop", False)
        rw = flags.get("rw", default[2] if default else None)
        source = attributes.get("source")
        # Storage.init_volume: a "source" key (a default one, or the attribute) makes it
        # a snapshot of the template chain's volume, or of the named volume of its pool
        has_source = source is not None or bool(default and default[1]
                                                and self.klass in ("AppVM", "DispVM"))
        if snap != has_source:  # Volume.__init__ (qubes/storage/__init__.py)
            self.problem(item, "snap_on_start must be set exactly when the volume has a "
                         "source (the template's volume)")
        if source is not None and driver in schema.ORDERED_POOLS and not self._chain_has(pool, source):
            self.problem(item, f"source {source!r} is no volume of its template in pool "
                         f"{pool!r}, which finds only volumes loaded before")
        if source is not None and driver == "linux-kernel":
            self.problem(item, "a linux-kernel pool volume takes no source")
        if driver == "file" and snap and save:  # file.py FilePool.init_volume
            self.problem(item, "a file pool volume cannot have both snap_on_start and "
                         "save_on_stop")
        if driver == "file" and save and attributes.get("revisions_to_keep") is not None \
                and schema.INT.fullmatch(attributes["revisions_to_keep"]) \
                and not -1 <= int(attributes["revisions_to_keep"]) <= 1:
            self.problem(item, "a file pool volume keeps at most 1 revision")  # FileVolume
        if driver == "linux-kernel":  # kernels.py LinuxKernel.init_volume, LinuxModules
            if rw is not False:
                self.problem(item, "a linux-kernel pool volume must have rw False")
            if save:
                self.problem(item, "a linux-kernel pool volume cannot have save_on_stop")
            if attributes.get("revisions_to_keep") not in (None, "0"):
                self.problem(item, "a linux-kernel pool volume keeps 0 revisions")

    def _chain_has(self, pool: str, vid: str) -> bool:
        qube = self.context.qube("dom0" if self.klass == "AdminVM" else self.props.get("name"))
        if qube is None or qube.element is not self.domain:
            return False
        return any(volume == (pool, vid) for template in self.context.template_chain(qube)
                   for volume in template.volumes.values())

    # -- features, tags, devices ----------------------------------------------------------
    def _features(self) -> None:
        """BaseVM.load_extras (qubes/vm/__init__.py): features[name] = text; a missing name
        is a TypeError in qubes/features.py; names are those the Admin API accepts (dom0's
        service.* features become file names in ext/services.py)."""
        features: dict[str, Optional[str]] = {}
        for node in self.domain.iterfind("features/feature"):
            name = node.get("name")
            if name is None or not schema.FEATURE_NAME.fullmatch(name):
                self.problem(f"feature {name!r}", "feature names are letters, digits and _.-")
                continue
            features[name] = node.text
        preload = features.get("preload-dispvm")
        if (self.release == "4.3" and preload and self.klass in schema.DVM_TEMPLATE_CLASSES
                and schema.as_bool(self.props.get("template_for_dispvms"))):
            # mix/dvmtemplate.py on_domain_loaded (4.3): names that are no qube are taken
            # out and the store saved while loading, which raises if a name is repeated
            missing = [name for name in preload.split(" ") if self.context.qube(name) is None]
            if missing:
                self.problem("feature preload-dispvm", f"lists {missing[0]!r}, which is no "
                             "qube of the store (qubesd would rewrite it while loading)")

    def _tags(self) -> None:
        # qubes/vm/__init__.py Tags.add (both)
        for node in self.domain.iterfind("tags/tag"):
            name = node.get("name")
            if name is None or not schema.TAG.fullmatch(name):
                self.problem(f"tag {name!r}", "tags are letters, digits, _ and - only")

    def _devices(self) -> None:
        """LocalVM.load_extras (qubes/vm/__init__.py; 4.2: BaseVM.load_extras): an unknown
        backend is logged and the assignment dropped; 4.3 parses the mode, and a manual
        assignment fails an assertion in DeviceCollection.load_assignment."""
        for devices in self.domain.iterfind("devices"):
            devclass = devices.get("class")
            for node in devices.iterfind("device"):
                item = f"device {devclass}:{node.get('id')}"
                if self.klass == "AdminVM" or not devclass:
                    self.problem(item, "device assignments of dom0, or without a class, "
                                 "are not modelled")
                    continue
                if self.release == "4.3":
                    if node.get("required") is not None:
                        self.problem(item, "the legacy 'required' attribute is not modelled")
                    if node.get("mode", "required") not in ("required", "ask-to-attach",
                                                            "auto-attach"):
                        self.problem(item, f"mode {node.get('mode')!r} is not loaded")
                    if devclass == "pci" and not schema.PCI_PORT.fullmatch(node.get("id", "*")):
                        self.problem(item, "not a PCI port id qubesd parses")
                backend = node.get("backend-domain")
                if self.context.qube(backend) is None:
                    self.problem(item, f"backend {backend!r} is no qube of the store: qubesd "
                                 "drops the assignment", fatal=False)


def _a(klass: str) -> str:
    """The class name with its article."""
    return ("an " if klass[:1] in "AEIOU" else "a ") + klass


def _valid_name(name: str, release: str) -> bool:
    """qubes/vm/__init__.py validate_name."""
    return (len(name) <= 31 and bool(schema.NAME[release].fullmatch(name))
            and name not in ("Domain-0", "none", "default") and not name.endswith("-dm"))


def _unique(problems: Iterable[LoadProblem]) -> list[LoadProblem]:
    return list(dict.fromkeys(problems))


# --- the whole store --------------------------------------------------------------------
def problems(root: etree._Element, release: Optional[str] = None) -> list[LoadProblem]:
    """Every problem of the store: store-wide ones first, then each qube's in order."""
    context = StoreContext(root, release)
    found = check_store(context)
    for domain in context.domains:
        found += check_domain(domain, context)
    return found


def loads(root: etree._Element, release: Optional[str] = None) -> bool:
    """True when qubesd would load the store (no fatal problem)."""
    return not any(problem.fatal for problem in problems(root, release))
