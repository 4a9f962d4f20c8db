"""qubesd extension of reliant-formula: tells create-snapshot which volumes are read-only.

Installed by the `reliant.snapshots` Salt state next to the `qubes` package, with an
entry point in group `qubes.ext`; qubesd loads it when it starts. Just before a
qube's volumes start, it leaves an empty file named DEV:INODE (hex device, decimal
inode, as `stat -L --printf=%D:%i` prints them) of the image of each save_on_stop
volume of a file pool with rw=False in MARKERS; reliant's create-snapshot
consumes it and attaches that image read-only. Marks of read-write volumes, and
marks left by a start that failed or by a qube that stopped, are removed.
"""

import contextlib
import os

import qubes.ext

MARKERS = "/run/reliant/read-only"


def marker(image):
    """The mark of `image`, named by its device and inode like create-snapshot names it."""
    info = os.stat(image)
    return os.path.join(MARKERS, f"{info.st_dev:x}:{info.st_ino:d}")


def origin_volumes(vm):
    """The volumes of `vm` that file.py starts with `create-snapshot NAME IMG COW`."""
    return [volume for volume in getattr(vm, "volumes", {}).values()
            if getattr(volume.pool, "driver", None) == "file"
            and volume.save_on_stop and not volume.snap_on_start]


def unmark(image):
    """Remove the mark of `image`, if any (a missing image has none either)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker(image))


class ReadOnlyVolumes(qubes.ext.Extension):
    """Marks the read-only save_on_stop volumes of a starting qube for create-snapshot."""

    @qubes.ext.handler("domain-pre-start")
    def on_domain_pre_start(self, vm, event, **kwargs):
        for volume in origin_volumes(vm):
            if volume.rw:
                unmark(volume.path)
                continue
            os.makedirs(MARKERS, mode=0o700, exist_ok=True)
            # A missing image has no mark: the storage check that follows reports it.
            with contextlib.suppress(FileNotFoundError), open(marker(volume.path), "wb"):
                pass

    @qubes.ext.handler("domain-start-failed", "domain-shutdown")
    def on_domain_stopped(self, vm, event, **kwargs):
        for volume in origin_volumes(vm):
            unmark(volume.path)
