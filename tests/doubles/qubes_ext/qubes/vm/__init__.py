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

    def create_on_disk(self, pool=None):
        """Put the data volumes into `pool`, then fire domain-create-on-disk (qubesvm.py)."""
        if pool is not None:
            for volume in self.volumes.values():
                if not (volume.snap_on_start and volume.source) and volume.rw:
                    volume.pool = pool
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
