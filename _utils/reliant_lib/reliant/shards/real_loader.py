"""qubes-core-admin's own loader, run offline on a private copy of a store: in dom0 it
has the last word on whether qubesd will load what suture is about to write.

What loading does besides reading (qubes-core-admin ``release4.2`` 4.2.39 and
``release4.3`` 4.3.50, read for this module; none of its code is used here):

- ``qubes/app.py`` ``Qubes.__init__`` with ``offline_mode=True``: ``VMMConnection``
  never connects to libvirt or Xen (every VMM access raises "VMM operations disabled in
  offline mode"); ``qubes.ext.get_extensions()`` instantiates every ``qubes.ext`` entry
  point (core-admin's own ``qubes/ext/*.py`` and third parties', ours included);
  ``load`` opens the store ``O_RDWR`` and holds ``fcntl.lockf`` on it while loading
  (``_acquire_lock``), parses it, builds pools (``_get_pool``: importing the
  ``lvm_thin`` driver runs ``lvs`` once, read-only, ``qubes/storage/lvm.py``
  ``init_cache``), qubes, global properties, then fires ``domain-load`` on each qube.
  ``load`` itself never saves.
- ``domain-load`` handlers: ``qubes/ext/gui.py``, ``audio.py``, ``relay.py`` (4.3) and our
  ``reliant_isolation`` add tags in memory; ``ext/block.py`` only resets a cache in
  offline mode; ``ext/core_features.py`` (4.2) and ``vm/appvm.py``, ``dispvm.py``,
  ``mix/net.py`` check or set properties in memory. Two write: ``ext/services.py``
  creates or removes files in ``system_path["dom0_services_dir"]``
  (``/var/run/qubes-service``) for dom0's ``service.*`` features, and
  ``vm/mix/dvmtemplate.py`` (4.3) *saves the store* when ``preload-dispvm`` names absent
  qubes.
- Logging: ``logging.getLogger("app")`` and ``"vm.NAME"`` (``qubes/log.py``), no handler
  unless ``qubes.log.enable()`` is called: warnings reach the process's stderr only.

So the check runs in a child process (its state and any task it leaves die with it),
on a copy of the store in a private directory (0700, beside the merged store, on tmpfs:
the copy names hidden qubes), with ``dom0_services_dir`` pointed into that directory,
``HOME``, ``TMPDIR`` and the working directory there, no byte-code written, and its
output captured (it names hidden qubes: it never reaches the journal). The directory is
removed afterwards. What a third-party extension does at ``domain-load`` is not known
here; each one installed in dom0 runs as it does when qubesd starts.

After loading, the child reads each qube's ``template``, ``netvm`` and
``default_dispvm``, as qubesd does at start (tests/fixtures/qubesd-load/README.md).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from reliant import platform
from reliant.qubesd_schema import RELEASES

RELEASE_FILE = platform.RELEASE_FILE

#: The child: exit 0 loads, 1 refused (last line: the exception), 3 no qubes package.
_CHILD = r"""
import os, sys, traceback
store, workdir = sys.argv[1], sys.argv[2]
try:
    import qubes, qubes.config
except ImportError as exc:
    print(f"qubes-core-admin is not importable: {exc}")
    sys.exit(3)
qubes.config.system_path["dom0_services_dir"] = os.path.join(workdir, "qubes-service")
try:
    app = qubes.Qubes(store, offline_mode=True)
    for vm in app.domains:
        for name in ("template", "netvm", "default_dispvm"):
            if isinstance(getattr(type(vm), name, None), qubes.property):
                getattr(vm, name)
except Exception as exc:
    print(traceback.format_exception_only(type(exc), exc)[-1].strip())
    sys.exit(1)
print("loads")
"""


def dom0_release(path: str = RELEASE_FILE) -> str:
    """The Qubes release dom0 runs, from /etc/qubes-release ("Qubes release 4.2.4
    (R4.2)", read by `reliant.platform`); the newest release the model knows when the
    file is absent or names another one."""
    release, _ = platform.read_release(path)
    text = ".".join(map(str, release)) if release else None
    return text if text in RELEASES else RELEASES[-1]


@dataclass(frozen=True)
class Verdict:
    """`loads`: True, False, or None when the check could not tell (`message` says why)."""

    loads: Optional[bool]
    message: str


class RealLoader:
    """qubes-core-admin's offline loader in a child process (see the module docstring).

    `python`: the interpreter that has qubes-core-admin (dom0's python3: the CLI's own);
    `pythonpath`: directories put first on its path (none in dom0)."""

    def __init__(self, python: str = sys.executable, pythonpath: Sequence[str] = (),
                 timeout: float = 600) -> None:
        self.python = python
        self.pythonpath = [os.path.abspath(path) for path in pythonpath]  # the child runs elsewhere
        self.timeout = timeout
        self._available: Optional[bool] = None

    def load(self, data: bytes, scratch: str) -> Verdict:
        """Load the store `data` from a private directory made under `scratch`."""
        if self._available is None and not self.pythonpath \
                and importlib.util.find_spec("qubes") is None:
            self._available = False  # the child would have the same path: no need to ask
        if self._available is False:
            return Verdict(None, "qubes-core-admin is not importable")
        workdir = tempfile.mkdtemp(prefix="reliant-loadcheck-", dir=scratch)
        try:
            path = os.path.join(workdir, "qubes.xml")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                out.write(data)
            env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                   "LC_ALL": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
                   "QUBES_XML_PATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
            if self.pythonpath:
                env["PYTHONPATH"] = os.pathsep.join(self.pythonpath)
            try:
                child = subprocess.run([self.python, "-c", _CHILD, path, workdir], cwd=workdir,
                                       env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                       timeout=self.timeout, check=False)
            except subprocess.TimeoutExpired:
                return Verdict(None, f"qubes-core-admin did not finish loading within "
                               f"{self.timeout:g} s")
            except OSError as exc:
                return Verdict(None, f"{self.python}: {exc.strerror}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        lines = child.stdout.decode("utf-8", "replace").strip().splitlines()
        last = lines[-1] if lines else child.stderr.decode("utf-8", "replace").strip()[-500:]
        if child.returncode == 3:
            self._available = False
            return Verdict(None, last)
        self._available = True
        if child.returncode in (0, 1):
            return Verdict(child.returncode == 0, last)
        return Verdict(None, f"the loader exited with status {child.returncode}: {last}")
