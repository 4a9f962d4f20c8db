"""Double of qubes/api/__init__.py: how an Admin API call asks the extensions.

`AbstractQubesAPI.fire_event_for_permission` fires ``admin-permission:METHOD`` on the
calling qube (`src`) as a pre-event, with `dest` and `arg` (qubes-core-admin
qubes/api/__init__.py, release4.2 and release4.3); `enforce` raises PermissionDenied
(qubes.api in R4.2, qubes.exc in R4.3). No protocol, no qrexec, no method table.
"""

from qubes.exc import PermissionDenied  # qubes.api re-exports it (R4.3 imports it so)


class AbstractQubesAPI:
    """One Admin API call: `src` calls `method` on `dest` with `arg` (qube names)."""

    def __init__(self, app, src, method, dest, arg):
        self.app = app
        self.src = app.domains[src]
        self.dest = app.domains[dest]
        self.method = method
        self.arg = arg

    def fire_event_for_permission(self, **kwargs):
        return self.src.fire_event("admin-permission:" + self.method, pre_event=True,
                                   dest=self.dest, arg=self.arg, **kwargs)

    @staticmethod
    def enforce(predicate):
        if not predicate:
            raise PermissionDenied()
