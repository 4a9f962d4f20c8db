"""Fault injection for the writing tests: make the n-th write, copy, fsync or rename of an
operation fail, as a full disk or a crash half-way would."""

import errno
import os

from reliant import store

# os.pwrite is how the files of dom0 directories are copied (with their holes)
INJECTED = ("write", "pwrite", "fsync", "replace", "rename")


class Faults:
    """Make the n-th call to any of os.write/pwrite/fsync/replace/rename fail with
    ENOSPC."""

    def __init__(self, monkeypatch, n, names=INJECTED):
        self.calls, self.n = 0, n
        for name in names:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name, real):
        def wrapper(*args, **kwargs):
            self.calls += 1
            if self.calls == self.n:
                raise OSError(errno.ENOSPC, f"injected fault at call {self.n} (os.{name})")
            return real(*args, **kwargs)
        return wrapper


def fails_at(monkeypatch, n: int, operation, names=INJECTED) -> bool:
    """Run `operation` with a fault at its n-th write, fsync or rename (or other call of
    `names`); True if one was hit (it raised, or it went on: a fault in dissect's memo
    only costs the next dissect time)."""
    with monkeypatch.context() as patch:
        faults = Faults(patch, n, names)
        try:
            operation()
        except (OSError, store.StoreError) as exc:
            assert "injected fault" in str(exc)
            return True
    return faults.calls >= n
