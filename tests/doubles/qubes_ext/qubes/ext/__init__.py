"""Double of qubes/ext/__init__.py: Extension base, handler decorator, entry points."""

import importlib.metadata

import qubes.events


class Extension:
    def __new__(cls):
        if "_instance" not in cls.__dict__:
            cls._instance = super().__new__(cls)
            for name in cls.__dict__:
                attr = getattr(cls._instance, name)
                if not qubes.events.ishandler(attr):
                    continue
                if attr.ha_vm is not None:
                    for event in attr.ha_events:
                        attr.ha_vm.__handlers__[event].add(attr)
                else:
                    for event in attr.ha_events:
                        qubes.Qubes.__handlers__[event].add(attr)
        return cls._instance


def get_extensions():
    return {ext.load()() for ext in importlib.metadata.entry_points(group="qubes.ext")}


def handler(*events, **kwargs):
    def decorator(func):
        func.ha_events = events
        if kwargs.get("system", False):
            func.ha_vm = None
        elif "vm" in kwargs:
            func.ha_vm = kwargs["vm"]
        else:
            func.ha_vm = qubes.vm.LocalVM
        return func

    return decorator
