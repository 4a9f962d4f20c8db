"""Double of qubes/__init__.py and qubes/app.py: properties, the app, its domain collection."""

import collections

import qubes.events


class property:
    """A property that fires property-pre-set:NAME and property-set:NAME when set."""

    _NO_DEFAULT = object()

    def __init__(self, name, default=_NO_DEFAULT):
        self.__name__ = name
        self._default = default
        self._attr_name = "_qubesprop_" + name

    def __get__(self, instance, owner):
        if instance is None:
            return self
        try:
            return getattr(instance, self._attr_name)
        except AttributeError:
            if self._default is self._NO_DEFAULT:
                raise AttributeError(f"property {self.__name__!r} have no default") from None
            return self._default(instance) if callable(self._default) else self._default

    def convert(self, instance, value):
        return value

    def __set__(self, instance, value):
        try:
            oldvalue = getattr(instance, self.__name__) if instance.events_enabled else None
            has_oldvalue = instance.events_enabled
        except AttributeError:
            has_oldvalue = False
        value = self.convert(instance, value)
        kwargs = {"name": self.__name__, "newvalue": value}
        if has_oldvalue:
            kwargs["oldvalue"] = oldvalue
        instance.fire_event("property-pre-set:" + self.__name__, pre_event=True, **kwargs)
        setattr(instance, self._attr_name, value)
        instance.fire_event("property-set:" + self.__name__, **kwargs)


class VMProperty(property):
    """A property naming a qube: set by name, holds the qube object ("" means None)."""

    def convert(self, instance, value):
        if value is None or value == "":
            return None
        if isinstance(value, str):
            app = instance if isinstance(instance, Qubes) else instance.app
            return app.domains[value]
        return value


class PropertyHolder(qubes.events.Emitter):
    @classmethod
    def property_get_def(cls, prop):
        return getattr(cls, prop)


class VMCollection:
    def __init__(self, app):
        self.app = app
        self._dict = collections.OrderedDict()

    def add(self, vm, _enable_events=True):
        if vm.name in self:
            raise ValueError(f"A VM named {vm.name} already exists")
        self._dict[vm.name] = vm
        if _enable_events:
            vm.events_enabled = True
            self.app.fire_event("domain-add", vm=vm)
        return vm

    def __getitem__(self, name):
        return self._dict[name]

    def __delitem__(self, name):
        del self._dict[str(name)]

    def __contains__(self, item):
        return str(getattr(item, "name", item)) in self._dict

    def __iter__(self):
        return iter(list(self._dict.values()))


class Qubes(PropertyHolder):
    """The app: global properties, pools, domains. `load` plays qubesd's start."""

    default_template = VMProperty("default_template", default=None)
    default_netvm = VMProperty("default_netvm", default=None)
    default_dispvm = VMProperty("default_dispvm", default=None)
    management_dispvm = VMProperty("management_dispvm", default=None)
    updatevm = VMProperty("updatevm", default=None)
    clockvm = VMProperty("clockvm", default=None)
    default_guivm = VMProperty("default_guivm", default=None)
    default_audiovm = VMProperty("default_audiovm", default=None)

    def __init__(self):
        super().__init__()
        self.domains = VMCollection(self)
        self.pools = {}

    def load(self):
        """Enable events on every qube, then fire domain-load on each (qubes/app.py load)."""
        for vm in self.domains:
            vm.events_enabled = True
            vm.fire_event("domain-load")
        self.events_enabled = True

    def add_new_vm(self, cls, **kwargs):
        return self.domains.add(cls(self, **kwargs))


import qubes.exc  # noqa: E402 - the real package imports its submodules too
import qubes.ext  # noqa: E402
import qubes.vm  # noqa: E402
