"""Load the formula's execution and state modules for loader-mocked unit tests.

`_modules/reliant_x.py` and `_states/reliant_x.py` share a name, so each is imported under
another (`salt_modules_reliant_x`, `salt_states_reliant_x`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load(kind: str, name: str) -> ModuleType:
    """Import `_modules/<name>.py` (kind "modules") or `_states/<name>.py` (kind "states")."""
    alias = f"salt_{kind}_{name}"
    if alias in sys.modules:
        return sys.modules[alias]
    spec = importlib.util.spec_from_file_location(alias, ROOT / f"_{kind}" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module
