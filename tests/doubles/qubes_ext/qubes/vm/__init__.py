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
        """The vid the driver gives a new volume (lvm.py, file.py, reflink.py init_volume)."""
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


class BaseVM(qubes.PropertyHolder):
    name = qubes.property("name")

    def __init__(self, app, name, tags=(), **properties):
        super().__init__()
        self.app = app
        self.name = name
        self.tags = Tags(self, tags)
        self.volumes = {}
        for key, value in properties.items():
            setattr(self, key, value)

    def __str__(self):
        return self.name

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"


class LocalVM(BaseVM):
    pass


class AdminVM(LocalVM):
    def __init__(self, app, name="dom0", **kwargs):
        super().__init__(app, name, **kwargs)


class QubesVM(LocalVM):
    netvm = qubes.VMProperty("netvm", default=None)
    default_dispvm = qubes.VMProperty("default_dispvm",
                                      default=lambda self: self.app.default_dispvm)
    management_dispvm = qubes.VMProperty("management_dispvm", default=None)
    guivm = qubes.VMProperty("guivm", default=None)
    audiovm = qubes.VMProperty("audiovm", default=None)
    template_for_dispvms = qubes.property("template_for_dispvms", default=False)

    def create_on_disk(self, pool=None, pools=None):
        """Put the writable volumes that are no snapshots into `pool`, or those named in
        `pools` into theirs, with the vid the new pool gives them, then fire
        domain-create-on-disk (qubesvm.py create_on_disk, _patch_pool_config)."""
        for volume in self.volumes.values():
            target = pool if volume.rw else None
            if pools and volume.name in pools:
                if volume.snap_on_start:
                    raise qubes.exc.QubesException(
                        f"Snapshot volume {volume.name} must be in the same pool as its origin")
                target = pools[volume.name]
            if target is not None and not (volume.snap_on_start and volume.source):
                volume.pool, volume.vid = target, target.new_vid(self, volume.name)
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
