"""Double of qubes/vm: tags that fire events, the qube classes, volumes and pools."""

import qubes


class Tags(set):
    def __init__(self, vm, seq=()):
        super().__init__()
        self.vm = vm
        self.update(seq)

    def add(self, elem):
        if elem in self:
            return
        super().add(elem)
        self.vm.fire_event("domain-tag-add:" + elem, tag=elem)

    def remove(self, elem):
        super().remove(elem)
        self.vm.fire_event("domain-tag-delete:" + elem, tag=elem)

    def discard(self, elem):
        if elem in self:
            self.remove(elem)

    def update(self, *others):
        for other in others:
            for elem in other:
                self.add(elem)


class Pool:
    def __init__(self, name, dir_path=None):
        self.name = name
        if dir_path is not None:
            self.dir_path = dir_path

    def __str__(self):
        return self.name


class Volume:
    def __init__(self, name, pool, snap_on_start=False, source=None, rw=True):
        self.name, self.pool, self.snap_on_start = name, pool, snap_on_start
        self.source, self.rw = source, rw


def _flag(value):
    """A volume-config value as qubes/vm/qubesvm.py QubesVM.__init__ reads it (4.3)."""
    return value is True or value == "True"


class BaseVM(qubes.PropertyHolder):
    name = qubes.property("name")

    def __init__(self, app, name, tags=(), **properties):
        super().__init__()
        self.app = app
        self.name = name
        self.tags = Tags(self, tags)
        for key, value in properties.items():
            setattr(self, key, value)

    def __str__(self):
        return self.name

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"


class LocalVM(BaseVM):
    def __init__(self, app, name, **kwargs):
        super().__init__(app, name, **kwargs)
        self.volumes = {}  # filled by QubesVM's storage, never at LocalVM level


class AdminVM(LocalVM):
    def __init__(self, app, name="dom0", **kwargs):
        super().__init__(app, name, **kwargs)


class QubesVM(LocalVM):
    """A qube with storage. Created new (``loading`` False), it enables its events and
    fires ``domain-init``; loaded from the store, ``Qubes.load`` fires ``domain-load``
    later. Either event builds ``volumes`` from ``volume_config`` in this class-bound
    handler, which runs after handlers attached to LocalVM, as in qubes/vm/qubesvm.py
    (``on_domain_init_loaded``) and qubes/events.py (reversed MRO)."""

    netvm = qubes.VMProperty("netvm", default=None)
    default_dispvm = qubes.VMProperty("default_dispvm",
                                      default=lambda self: self.app.default_dispvm)
    management_dispvm = qubes.VMProperty("management_dispvm", default=None)
    guivm = qubes.VMProperty("guivm", default=None)
    audiovm = qubes.VMProperty("audiovm", default=None)
    template_for_dispvms = qubes.property("template_for_dispvms", default=False)

    def __init__(self, app, name, volume_config=None, loading=False, **kwargs):
        #: volume name -> {attribute: value}, as read from <volume-config> (pools by name)
        self.volume_config = {name: dict(config) for name, config in (volume_config or {}).items()}
        super().__init__(app, name, **kwargs)
        if not loading:
            self.events_enabled = True
            self.fire_event("domain-init")

    @qubes.events.handler("domain-init", "domain-load")
    def on_domain_init_loaded(self, event):
        """The storage: one volume per volume_config entry, in its pool."""
        self.volumes = {
            name: Volume(name, self.app.pools[str(config["pool"])],
                         _flag(config.get("snap_on_start")), config.get("source"),
                         _flag(config.get("rw", True)))
            for name, config in self.volume_config.items()}

    def create_on_disk(self, pool=None):
        """Move the data volumes to `pool` in volume_config, rebuild the storage, then fire
        domain-create-on-disk (qubes/vm/qubesvm.py create_on_disk, _patch_pool_config)."""
        if pool is not None:
            for config in self.volume_config.values():
                if not _flag(config.get("snap_on_start")) and _flag(config.get("rw", True)):
                    config["pool"] = str(pool)
            self.on_domain_init_loaded("domain-create-on-disk")
        self.fire_event("domain-create-on-disk")


class AppVM(QubesVM):
    template = qubes.VMProperty("template")


class TemplateVM(QubesVM):
    pass


class StandaloneVM(QubesVM):
    pass


class DispVM(QubesVM):
    template = qubes.VMProperty("template")
    default_dispvm = qubes.VMProperty("default_dispvm", default=lambda self: self.template)

    def __init__(self, app, name, template, **kwargs):
        super().__init__(app, name, template=template, **kwargs)
        self.tags.update(self.template.tags)
