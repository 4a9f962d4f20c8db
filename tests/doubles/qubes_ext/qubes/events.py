"""Double of qubes/events.py: handler registration and event dispatch."""

import collections
import fnmatch
import itertools


def handler(*events):
    """Class-bound handler decorator (core use, not extensions)."""

    def decorator(func):
        func.ha_events = events
        func.ha_bound = True
        return func

    return decorator


def ishandler(obj):
    return callable(obj) and hasattr(obj, "ha_events")


class EmitterMeta(type):
    def __init__(cls, name, bases, dict_):
        super().__init__(name, bases, dict_)
        cls.__handlers__ = collections.defaultdict(set)
        for attr in dict_.values():
            if ishandler(attr):
                for event in attr.ha_events:
                    cls.__handlers__[event].add(attr)


class Emitter(metaclass=EmitterMeta):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self, "events_enabled"):
            self.events_enabled = False
        self.__handlers__ = collections.defaultdict(set)

    def fire_event(self, event, pre_event=False, **kwargs):
        if not self.events_enabled:
            return []
        order = list(itertools.chain((self,), type(self).__mro__))
        if not pre_event:
            order.reverse()
        effects = []
        for holder in order:
            handlers_dict = getattr(holder, "__handlers__", None)
            if handlers_dict is None:
                continue
            handlers = [func for pattern, funcs in handlers_dict.items() for func in funcs
                        if fnmatch.fnmatch(event, pattern)]
            for func in sorted(handlers, key=lambda h: hasattr(h, "ha_bound"), reverse=True):
                effect = func(self, event, **kwargs)
                if effect is not None:
                    effects.extend(effect)
        return effects
