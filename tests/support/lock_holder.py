"""Another process holding an fcntl.lockf lock, for tests of code that must wait for it."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

HOLDER = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "sys.stdin.readline()\n"
)


def assert_waits_for_lockf(path: Path, target: Callable[..., object], *args: object) -> None:
    """Run `target(*args)` in a thread while another process holds lockf on `path`:
    it must still be waiting after 0.5 s, and finish once the lock is released."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        worker = threading.Thread(target=target, args=args)
        worker.start()
        worker.join(0.5)
        assert worker.is_alive(), f"{target} did not wait for the lock on {path}"
        holder.communicate("\n", timeout=10)
        worker.join(10)
        assert not worker.is_alive(), f"{target} still waits after the lock was released"
    finally:
        holder.kill()
        holder.wait()
