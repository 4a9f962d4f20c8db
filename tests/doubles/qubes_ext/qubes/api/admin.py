"""Double of qubes/api/admin.py: the backup calls up to the point where they read the
profile (release4.2 and release4.3 alike): dom0 as destination, a profile name without
"/", the permission event. What a real call does next (read the profile, copy
`app.store` and the volumes, qubes/backup.py) is left out: `backups` records the
profiles that would be backed up or summarised."""

import qubes.api


class QubesAdminAPI(qubes.api.AbstractQubesAPI):
    """admin.backup.Execute and admin.backup.Info."""

    def backup_execute(self):
        return self._backup("execute")

    def backup_info(self):
        return self._backup("info")

    def _backup(self, what):
        self.enforce(self.dest.name == "dom0")
        self.enforce(self.arg)
        self.enforce("/" not in self.arg)
        self.fire_event_for_permission()
        self.app.backups = [*getattr(self.app, "backups", []), (what, self.arg)]
        return what


def call(app, src, method, dest, arg):
    """Run `method` ("admin.backup.Execute" or "admin.backup.Info") as qubesd does."""
    api = QubesAdminAPI(app, src, method, dest, arg)
    return {"admin.backup.Execute": api.backup_execute,
            "admin.backup.Info": api.backup_info}[method]()
