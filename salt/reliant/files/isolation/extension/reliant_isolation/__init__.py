"""reliant-formula's qubesd extension (installed by reliant.isolation).

Keeps each qube's group tag (``reliant-core`` or ``reliant-shard-<ID>``) current, marks
qubes whose own ``@dispvm`` is a disposable of another group (``reliant-foreign-dispvm``,
denied by the persistent policy), and refuses property changes that would make core (a
core qube or a global property) reference a shard qube, or a shard qube reference a shard
it does not depend on. It keeps a shard qube's volumes confined as suture does
(``reliant.shards.confine``) where the Admin API places or fills volumes
(qubes-core-admin release4.3 ``qubes/api/admin.py``, ``qubes/api/__init__.py``
fire_event_for_permission: ``admin-permission:METHOD`` fires on the calling qube, before
the change, with ``dest``, ``arg`` and the method's keywords):

- ``admin.vm.CreateInPool.CLASS`` (``pool``, ``pools``): a qube of a shard keeps its own data
  in its shard's pools, refused before any volume exists; ``domain-create-on-disk`` /
  ``domain-clone-files`` (qubes/vm/qubesvm.py, after the volumes are placed; an exception
  makes ``_vm_create`` drop the qube) check the volumes as they are;
- ``admin.vm.volume.CloneTo`` (``src_volume``, ``dst_volume``): a volume takes the data of
  another only from a group its qube may reference (never shard data into core);
- ``admin.pool.Add`` (``arg`` the driver, ``name``, ``pool_config``): a pool below a shard
  root is a file or file-reflink pool that stays below it once resolved.

The other volume calls (Resize, Revert, Clear, Set.rw, Set.revisions_to_keep,
Set.ephemeral, Import) change neither where a volume lives nor whose data it holds;
``domain-add`` fires before the volumes are placed (qubes/app.py VMCollection.add); a new
``template`` (``property-pre-set:template``, checked by the reference guard) brings
sources that are its own volumes.

The decisions are ``reliant.isolation.guard``'s and ``.policy``'s (the formula's library,
found in ``_paths.LIBDIR``); this module only turns qubesd objects into facts and events
into decisions.
While any shard is merged it refuses backups through the Admin API: a backup holds
qubesd's store, which names every merged qube.

Nothing here logs a qube's name, nor that a shard is merged: qubesd's log may reach
persistent storage.
"""

import logging
import os
import sys

import qubes.exc
import qubes.ext
import qubes.vm

from . import _paths

if _paths.LIBDIR not in sys.path:
    sys.path.insert(0, _paths.LIBDIR)

from reliant import vocab
from reliant.isolation import guard, policy
from reliant.shards import confine

log = logging.getLogger("qubes.ext.reliant_isolation")

_REFERENCE_EVENTS = tuple("property-pre-set:" + p for p in vocab.DOMAIN_REFERENCES)
_GLOBAL_EVENTS = tuple("property-pre-set:" + p for p in vocab.GLOBAL_REFERENCES)
_GROUP_TAG_EVENTS = ("domain-tag-add:reliant-*", "domain-tag-delete:reliant-*")
# The Admin API calls that would hand qubesd's store to someone: admin.backup.Execute
# copies `app.store` into the archive (qubes/backup.py), admin.backup.Info lists every
# qube it would back up. Both fire admin-permission:METHOD on the calling qube before
# they read the profile (qubes/api/admin.py, fire_event_for_permission in
# qubes/api/__init__.py; release4.2 and release4.3).
_BACKUP_EVENTS = ("admin-permission:admin.backup.Execute",
                  "admin-permission:admin.backup.Info")
BACKUP_REFUSED = (
    "reliant: backups are refused while shards are merged: the backup would hold "
    "qubesd's store, which names every qube of the open shards. Run `reliant-shard "
    "detach`, back up, then `reliant-shard attach`; a shard is backed up with its volume "
    "(see reliant-formula's docs/shards.md)")


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
        if pool is not None and vocab.is_data_volume(name, snap_on_start,
                                                             config.get("source")):
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


def pool_facts(pool):
    """What the confinement rules read of a qubesd pool (class attribute ``driver``)."""
    return confine.PoolFacts(str(pool), getattr(pool, "driver", "") or "",
                             getattr(pool, "dir_path", "") or "",
                             getattr(pool, "volume_group", "") or "")


def volume_facts(vm):
    """What the confinement rules read of a qube's volumes (a source is a Volume whose
    str() is its vid, qubes/storage/__init__.py)."""
    return [confine.VolumeFacts(name, str(volume.pool), str(getattr(volume, "vid", "") or ""),
                                None if volume.source is None else str(volume.source),
                                bool(volume.snap_on_start))
            for name, volume in getattr(vm, "volumes", {}).items()]


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

    def confinement_problem(self, vm):
        """Why the volumes of `vm` (a shard qube) break confinement; None if they do not."""
        others = self._others(vm)
        template = getattr(vm, "template", None)
        return guard.confinement_problem(
            vm.name, type(vm).__name__, self._group(vm), volume_facts(vm),
            {name: pool_facts(pool) for name, pool in vm.app.pools.items()},
            guard.pool_groups(others), guard.dependencies_from_references(others),
            load_settings().shard_roots, "" if template is None else template.name,
            None if template is None else volume_facts(template))

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
            problem = self.confinement_problem(vm)
        except guard.GuardError as exc:
            raise qubes.exc.QubesException("reliant isolation: " + str(exc)) from None
        if problem:
            raise qubes.exc.QubesException("reliant isolation: " + problem)
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

    @qubes.ext.handler(*_BACKUP_EVENTS, vm=qubes.vm.BaseVM)
    def on_backup_permission(self, vm, event, **kwargs):
        """Refuse a backup (or its summary) while any qube carries a shard's tag.

        Hooked on BaseVM: the caller may be dom0 (an AdminVM, not a LocalVM in R4.2) or
        any qube allowed the call. A QubesException's message reaches the caller (the API
        sends it back; PermissionDenied would only close the connection)."""
        prefix = vocab.shard_tag("")
        if any(tag.startswith(prefix) for qube in vm.app.domains for tag in qube.tags):
            raise qubes.exc.QubesException(BACKUP_REFUSED)

    @qubes.ext.handler(*_GLOBAL_EVENTS, system=True)
    def on_global_reference_pre_set(self, app, event, name, newvalue, oldvalue=None):
        """Refuse a global property naming a shard qube."""
        problem = self.reference_problem(None, name, newvalue)
        if problem:
            self._refuse(app, name, newvalue, problem)

    @qubes.ext.handler("admin-permission:admin.vm.CreateInPool.*")
    def on_create_in_pool(self, vm, event, dest=None, arg=None, pool=None, pools=None,
                          **kwargs):
        """Refuse a new qube of a shard whose own data would go to another group's pool,
        before qubesd creates any volume (a file left in core would betray it)."""
        app = dest.app
        try:
            groups = guard.pool_groups(qube_facts(qube) for qube in app.domains)
        except guard.GuardError as exc:
            raise qubes.exc.PermissionDenied("reliant isolation: " + str(exc)) from None
        problem = guard.placement_problem(
            event.rsplit(".", 1)[1], None if pool is None else str(pool),
            {volume: str(where) for volume, where in (pools or {}).items()},
            {name: pool_facts(item) for name, item in app.pools.items()}, groups,
            load_settings().shard_roots)
        if problem:
            raise qubes.exc.PermissionDenied("reliant isolation: " + problem)

    @qubes.ext.handler("admin-permission:admin.vm.volume.CloneTo")
    def on_volume_clone_to(self, vm, event, dest=None, arg=None, src_volume=None, **kwargs):
        """Refuse filling a volume with the data of a group its qube may not reference."""
        source = (str(src_volume.pool), str(src_volume.vid))
        holders = [qube for qube in dest.app.domains
                   if source in {(v.pool, v.vid) for v in volume_facts(qube)}]
        facts = [qube_facts(qube) for qube in dest.app.domains]
        try:
            source_group = (self._group(holders[0]) if holders
                            else guard.pool_groups(facts).get(source[0], vocab.CORE_TAG))
            problem = guard.clone_problem(dest.name, self._group(dest), source_group,
                                          guard.dependencies_from_references(facts))
        except guard.GuardError as exc:
            problem = str(exc)
        if problem:
            raise qubes.exc.PermissionDenied("reliant isolation: " + problem)

    @qubes.ext.handler("admin-permission:admin.pool.Add")
    def on_pool_add(self, vm, event, dest=None, arg=None, name=None, pool_config=None,
                    **kwargs):
        """A pool below a shard root (as written or once resolved) must be fit to hold a
        shard's data."""
        roots = load_settings().shard_roots
        dir_path = (pool_config or {}).get("dir_path") or ""
        written = os.path.normpath(dir_path)
        if not dir_path or not any(
                written.startswith(os.path.normpath(root).rstrip("/") + "/")
                or confine.within(dir_path, root) for root in roots):
            return
        problem = confine.shard_pool_problem(
            confine.PoolFacts(str(name), str(arg), dir_path), roots)
        if problem:
            raise qubes.exc.PermissionDenied("reliant isolation: " + problem)
