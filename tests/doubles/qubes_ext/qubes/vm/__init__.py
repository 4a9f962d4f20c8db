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
    """A pool: `driver` as the driver classes name themselves (qubes/storage/*.py), and
    the driver's own options (dir_path, volume_group, thin_pool...) as attributes."""

    def __init__(self, name, dir_path=None, driver="", volume_group=None, **options):
        self.name, self.driver = name, driver
        if dir_path is not None:
            self.dir_path = dir_path
        if volume_group is not None:
            self.volume_group = volume_group
        for key, value in options.items():
            setattr(self, key, value)

    def __str__(self):
        return self.name

    def new_vid(self, vm, volume):
        """The vid the driver gives a new volume (lvm.py, file.py, reflink.py init_volume;
        kernels.py: none)."""
        if self.driver == "linux-kernel":
            return ""
        if self.driver == "lvm_thin":
            return f"{self.volume_group}/vm-{vm.name}-{volume}"
        kind = "vm-templates" if type(vm).__name__ == "TemplateVM" else "appvms"
        return f"{kind}/{vm.name}/{volume}"


class Volume:
    """A volume; str() is its vid, as a volume's `source` is stored (storage/__init__.py)."""

    def __init__(self, name, pool, snap_on_start=False, source=None, rw=True, vid=""):
        self.name, self.pool, self.snap_on_start = name, pool, snap_on_start
        self.source, self.rw, self.vid = source, rw, vid

    def __str__(self):
        return self.vid


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
        """The storage: one volume per volume_config entry, in its pool; a volume without a
        vid gets the one its pool gives (the pools' init_volume)."""
        self.volumes = {}
        for name, config in self.volume_config.items():
            pool = self.app.pools[str(config["pool"])]
            self.volumes[name] = Volume(
                name, pool, _flag(config.get("snap_on_start")), config.get("source"),
                _flag(config.get("rw", True)),
                config["vid"] if "vid" in config else pool.new_vid(self, name))

    def create_on_disk(self, pool=None, pools=None):
        """Move the writable volumes that are no snapshots to `pool`, or those named in
        `pools` to theirs, in volume_config (without their vid: the new pool gives one),
        rebuild the storage, then fire domain-create-on-disk (qubes/vm/qubesvm.py
        create_on_disk, _patch_pool_config, _clean_volume_config)."""
        if pool is not None or pools:
            for name, config in self.volume_config.items():
                snapshot = _flag(config.get("snap_on_start"))
                if pool is not None and not snapshot and _flag(config.get("rw", True)):
                    config["pool"] = str(pool)
                elif pool is None and name in pools:
                    if snapshot:
                        raise qubes.exc.QubesException(
                            f"Snapshot volume {name} must be in the same pool as its origin")
                    config["pool"] = str(pools[name])
                config.pop("vid", None)
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
