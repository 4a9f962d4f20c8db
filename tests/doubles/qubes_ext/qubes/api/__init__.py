"""Double of qubes/api/__init__.py: how an Admin API call asks the extensions.

`AbstractQubesAPI.fire_event_for_permission` fires ``admin-permission:METHOD`` on the
calling qube (`src`) as a pre-event, before anything changes, with `dest`, `arg` and the
method's keywords; a handler refuses by raising (qubes-core-admin qubes/api/__init__.py,
release4.2 and release4.3). `enforce` raises PermissionDenied (qubes.api in R4.2,
qubes.exc in R4.3). No protocol, no qrexec, no method table.
"""

from qubes.exc import PermissionDenied  # qubes.api re-exports it (R4.3 imports it so)


class AbstractQubesAPI:
    """One Admin API call: `src` calls `method` on `dest` with `arg` (qube names)."""

    def __init__(self, app, src, method, dest, arg=""):
        self.app, self.method, self.arg = app, method, arg
        self.src, self.dest = app.domains[src], app.domains[dest]

    def fire_event_for_permission(self, **kwargs):
        return self.src.fire_event("admin-permission:" + self.method, pre_event=True,
                                   dest=self.dest, arg=self.arg, **kwargs)

    @staticmethod
    def enforce(predicate):
        if not predicate:
            raise PermissionDenied()
