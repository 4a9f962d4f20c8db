"""reliant-formula's qubesd extension (installed by reliant.isolation).

Keeps each qube's group tag (``reliant-core`` or ``reliant-shard-<ID>``) current, marks
qubes whose own ``@dispvm`` is a disposable of another group (``reliant-foreign-dispvm``,
denied by the persistent policy), and refuses property changes that would make core (a
core qube or a global property) reference a shard qube, or a shard qube reference a shard
it does not depend on. The decisions are ``reliant.isolation.guard``'s and ``.policy``'s (the
formula's library, found in ``_paths.LIBDIR``); this module only turns qubesd objects into
facts and events into decisions.

Nothing here logs a qube's name: qubesd's log may reach persistent storage.
"""

import logging
import sys

import qubes.exc
import qubes.ext

from . import _paths

if _paths.LIBDIR not in sys.path:
    sys.path.insert(0, _paths.LIBDIR)

from reliant import vocab
from reliant.isolation import guard, policy

log = logging.getLogger("qubes.ext.reliant_isolation")

_REFERENCE_EVENTS = tuple("property-pre-set:" + p for p in vocab.DOMAIN_REFERENCES)
_GLOBAL_EVENTS = tuple("property-pre-set:" + p for p in vocab.GLOBAL_REFERENCES)
_GROUP_TAG_EVENTS = ("domain-tag-add:reliant-*", "domain-tag-delete:reliant-*")


def _name(value):
    """Name of a qube given as object, name or None ("" for None)."""
    return "" if value is None else str(getattr(value, "name", value))


def load_settings():
    """The isolation settings; their defaults (every direction denied) if the file is bad,
    so that a damaged file neither stops qubesd nor weakens isolation."""
    try:
        return policy.load_settings(_paths.SETTINGS)
    except policy.PolicyError:
        log.error("reliant isolation: the settings file is unreadable; using the defaults")
        return policy.PolicySettings()


def _data_pools(vm):
    """Pools of the qube's own data, from its volume configuration.

    Not from ``vm.volumes``: at ``domain-load`` qubesd fills them only after the handlers of
    extensions ran (those attach to LocalVM; ``QubesVM.on_domain_init_loaded``, which builds
    the storage, runs later: qubes/events.py calls handlers in reversed MRO order,
    qubes/vm/qubesvm.py). ``volume_config`` holds the <volume-config> read from the store,
    "True" as True, pools and sources by name until the storage replaces them by objects."""
    pools = set()
    for name, config in getattr(vm, "volume_config", {}).items():
        pool = config.get("pool")
        snap_on_start = config.get("snap_on_start") in (True, "True")
        if pool is not None and vocab.is_data_volume(name, snap_on_start, config.get("source")):
            pools.add(str(pool))
    return frozenset(pools)


def qube_facts(vm):
    """What the guard needs to know about a live qube."""
    references = {}
    for prop in vocab.DOMAIN_REFERENCES:
        target = _name(getattr(vm, prop, None))
        if target:
            references[prop] = target
    data_pools = _data_pools(vm)
    return guard.QubeFacts(
        name=vm.name,
        klass=type(vm).__name__,
        tags=frozenset(vm.tags),
        references=references,
        data_pools=data_pools,
        template_for_dispvms=bool(getattr(vm, "template_for_dispvms", False)),
    )


class ReliantIsolation(qubes.ext.Extension):
    """Group tags and the reference guard (see the module docstring)."""

    # --- decisions over the whole app -------------------------------------------------

    @staticmethod
    def _others(vm):
        return [qube_facts(other) for other in vm.app.domains if other is not vm]

    def expected_group(self, vm):
        """The group tag `vm` must carry; GuardError when it cannot be decided."""
        facts = qube_facts(vm)
        others = self._others(vm)
        known = guard.pool_groups(others)
        paths = {name: getattr(pool, "dir_path", "") for name, pool in vm.app.pools.items()}
        roots = load_settings().shard_roots
        unknown = guard.unknown_shard_pools(facts.data_pools, known, paths, roots)
        if unknown:
            raise guard.GuardError(
                "a new qube keeps data in a pool below a shard root that no qube of a shard "
                "uses yet: its shard cannot be decided; create it with `reliant-shard`")
        template_group = None
        if facts.klass == "DispVM":
            template_group = guard.group_of(qube_facts(vm.template))
        return guard.expected_group(facts, known, template_group)

    def set_group_tag(self, vm):
        """Give `vm` exactly its group tag (no event fires when it already has it)."""
        want = self.expected_group(vm)
        for tag in sorted(vm.tags):
            if tag != want and guard.is_group_tag(tag):
                vm.tags.discard(tag)
        vm.tags.add(want)

    @staticmethod
    def _group(vm):
        try:
            return guard.group_of(guard.QubeFacts(
                name=vm.name, klass=type(vm).__name__, tags=frozenset(vm.tags)))
        except guard.GuardError:
            return None

    def set_foreign_dispvm_tag(self, vm, settings=None):
        """Mark `vm` when its own `@dispvm` starts a disposable of a group calls to which
        are denied; unmark it otherwise."""
        settings = settings or load_settings()
        dispvm = getattr(vm, "default_dispvm", None) if type(vm).__name__ != "AdminVM" else None
        foreign = dispvm is not None and policy.denied_between(
            settings, self._group(vm), self._group(dispvm))
        if foreign:
            vm.tags.add(vocab.FOREIGN_DISPVM_TAG)
        else:
            vm.tags.discard(vocab.FOREIGN_DISPVM_TAG)

    def set_all_foreign_dispvm_tags(self, app):
        settings = load_settings()
        for vm in app.domains:
            self.set_foreign_dispvm_tag(vm, settings)

    def reference_problem(self, holder, prop, target):
        """Why `holder` (a qube, or None for the app) may not name `target`; None if it may."""
        if target is None:
            return None
        apps_qubes = list((holder.app if holder is not None else target.app).domains)
        facts = [qube_facts(qube) for qube in apps_qubes]
        deps = guard.dependencies_from_references(facts)
        holder_group = (vocab.CORE_TAG if holder is None
                        else guard.group_of(qube_facts(holder)))
        return guard.reference_problem(
            None if holder is None else holder.name, holder_group, prop, target.name,
            guard.group_of(qube_facts(target)), deps)

    def _refuse(self, holder, prop, value, problem):
        raise qubes.exc.QubesPropertyValueError(
            holder, holder.property_get_def(prop), value, "reliant isolation: " + problem)

    # --- events -----------------------------------------------------------------------

    @qubes.ext.handler("domain-load")
    def on_domain_load(self, vm, event, **kwargs):
        """At qubesd start: a qube that suture left without a group tag gets one.

        Never raises (that would stop qubesd); an undecidable qube stays untagged and
        ``reliant-shard check`` reports it."""
        try:
            if not any(guard.is_group_tag(tag) for tag in vm.tags):
                self.set_group_tag(vm)
        except guard.GuardError:
            log.error("reliant isolation: a qube's group cannot be decided at load; "
                      "run `reliant-shard check`")
        self.set_foreign_dispvm_tag(vm)

    @qubes.ext.handler("domain-add", system=True)
    def on_domain_add(self, app, event, vm, **kwargs):
        """A new qube: tag it now (a disposable takes its template's group). Its volumes
        may still be in the default pools; domain-create-on-disk decides again."""
        try:
            self.set_group_tag(vm)
        except guard.GuardError:
            log.error("reliant isolation: a new qube's group is not known yet")
        self.set_foreign_dispvm_tag(vm)

    @qubes.ext.handler("domain-create-on-disk", "domain-clone-files")
    def on_volumes_created(self, vm, event, **kwargs):
        """The volumes now sit in their final pools: tag, and check every reference the
        qube was created with (set before events were enabled). Raising here makes the
        Admin API remove the new qube."""
        try:
            self.set_group_tag(vm)
        except guard.GuardError as exc:
            raise qubes.exc.QubesException("reliant isolation: " + str(exc)) from None
        self.set_foreign_dispvm_tag(vm)
        for prop in vocab.DOMAIN_REFERENCES:
            target = getattr(vm, prop, None)
            problem = self.reference_problem(vm, prop, target)
            if problem:
                raise qubes.exc.QubesException("reliant isolation: " + problem)

    @qubes.ext.handler("property-set:template", *_GROUP_TAG_EVENTS)
    def on_group_may_change(self, vm, event, tag=None, **kwargs):
        """A new template (a disposable's group follows it), or someone changed a group
        tag by hand: put the right tag back; the disposables of every qube may now be of
        another group."""
        if tag is not None and not guard.is_group_tag(tag):
            return
        try:
            self.set_group_tag(vm)
        except guard.GuardError:
            log.error("reliant isolation: a qube's group cannot be decided after %s",
                      event.split(":")[0])
        self.set_all_foreign_dispvm_tags(vm.app)

    @qubes.ext.handler("property-set:default_dispvm", "property-reset:default_dispvm")
    def on_default_dispvm_changed(self, vm, event, **kwargs):
        self.set_foreign_dispvm_tag(vm)

    @qubes.ext.handler("property-set:default_dispvm", "property-reset:default_dispvm",
                       system=True)
    def on_global_default_dispvm_changed(self, app, event, **kwargs):
        """Qubes that inherit the global default_dispvm follow it."""
        self.set_all_foreign_dispvm_tags(app)

    @qubes.ext.handler(*_REFERENCE_EVENTS)
    def on_reference_pre_set(self, vm, event, name, newvalue, oldvalue=None):
        """Refuse a qube property naming a qube of a group it may not reference."""
        problem = self.reference_problem(vm, name, newvalue)
        if problem:
            self._refuse(vm, name, newvalue, problem)

    @qubes.ext.handler(*_GLOBAL_EVENTS, system=True)
    def on_global_reference_pre_set(self, app, event, name, newvalue, oldvalue=None):
        """Refuse a global property naming a shard qube."""
        problem = self.reference_problem(None, name, newvalue)
        if problem:
            self._refuse(app, name, newvalue, problem)
