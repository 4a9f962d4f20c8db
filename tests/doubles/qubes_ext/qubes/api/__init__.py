"""Double of qubes/api/__init__.py: the part of an Admin API call extensions see."""


class AbstractQubesAPI:
    """One call: `src` calls `method` on `dest` with `arg` (names resolved to qubes)."""

    def __init__(self, app, src, method, dest, arg=""):
        self.app, self.method, self.arg = app, method, arg
        self.src, self.dest = app.domains[src], app.domains[dest]

    def fire_event_for_permission(self, **kwargs):
        """`admin-permission:METHOD` on the calling qube, before anything changes: a handler
        refuses by raising (qubes/api/__init__.py)."""
        return self.src.fire_event("admin-permission:" + self.method, pre_event=True,
                                   dest=self.dest, arg=self.arg, **kwargs)
