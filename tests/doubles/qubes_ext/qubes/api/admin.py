"""Double of qubes/api/admin.py: the Admin API calls that place, fill or add storage,
in the order qubesd runs them (release4.3): checks, the permission event, the change.
The backup calls (admin.backup.Execute, admin.backup.Info; release4.2 and release4.3
alike) run up to the point where they read the profile: dom0 as destination, a profile name
without "/", the permission event; what a real call does next (read the profile, copy
`app.store` and the volumes, qubes/backup.py) is left out: `app.backups` records the
profiles that would be backed up or summarised.
Arguments come as Python values instead of a payload; `call` dispatches on the method."""

import qubes.api
import qubes.vm

#: a new qube's volume_config (qubes/vm/appvm.py, dispvm.py, templatevm.py,
#: standalonevm.py): snapshots of its template's volumes, in their pool (storage/__init__.py
#: _update_volume_config_source), or its own in core's default pool (a disposable's own in
#: its template's pool: dispvm.py DispVM.__init__); vids come from the pools
_OWN = {"AppVM": ("private", "volatile"), "DispVM": ("volatile",)}


def _volume_config(klass, template, default):
    config = {}
    for name in ("root", "private", "volatile"):
        own = name in _OWN.get(klass, ("root", "private", "volatile"))
        if own:
            pool = template.volumes[name].pool if klass == "DispVM" else default
            config[name] = {"name": name, "pool": str(pool), "rw": True,
                            "snap_on_start": False}
        else:
            origin = template.volumes[name]
            config[name] = {"name": name, "pool": str(origin.pool), "rw": True,
                            "snap_on_start": True, "source": str(origin.source or origin)}
    config["kernel"] = {"name": "kernel", "pool": "linux-kernel", "rw": False,
                        "snap_on_start": False}
    return config


class QubesAdminAPI(qubes.api.AbstractQubesAPI):
    def vm_create_in_pool(self, name, label, pool=None, pools=None):
        """admin.vm.CreateInPool.CLASS: the qube is added, then created on disk; if that
        fails it is removed from the app (its storage stays, as in qubesd)."""
        cls = getattr(qubes.vm, self.method.rsplit(".", 1)[1])
        kwargs = {"name": name, "label": label}
        if self.arg:
            kwargs["template"] = self.app.domains[self.arg]
        self.fire_event_for_permission(pool=pool, pools=pools or {}, **kwargs)
        vm = self.app.add_new_vm(cls, volume_config=_volume_config(
            cls.__name__, kwargs.get("template"), self.app.default_pool), **kwargs)
        vm.tags.add("created-by-" + str(self.src))
        try:
            vm.create_on_disk(pool=pool, pools=pools)
        except Exception:
            del self.app.domains[vm]
            raise
        return vm

    def vm_volume_clone_to(self, src_volume):
        """admin.vm.volume.CloneTo: volume `arg` of `dest` takes the data of `src_volume`."""
        dst_volume = self.dest.volumes[self.arg]
        self.fire_event_for_permission(src_volume=src_volume, dst_volume=dst_volume)
        dst_volume.cloned_from = src_volume

    def pool_add(self, name, **pool_config):
        """admin.pool.Add (`arg` the driver): the pool joins the app."""
        self.fire_event_for_permission(name=name, pool_config=pool_config)
        self.app.pools[name] = qubes.vm.Pool(name, driver=self.arg, **pool_config)

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


def call(app, method, arg="", src="dom0", dest="dom0", **params):
    """Run Admin API `method` as qubesd does for a call from `src`."""
    api = QubesAdminAPI(app, src, method, dest, arg)
    if method.startswith("admin.vm.CreateInPool."):
        return api.vm_create_in_pool(**params)
    handler = {"admin.vm.volume.CloneTo": api.vm_volume_clone_to,
               "admin.pool.Add": api.pool_add,
               "admin.backup.Execute": api.backup_execute,
               "admin.backup.Info": api.backup_info}[method]
    return handler(**params)
