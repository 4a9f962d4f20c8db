"""Shared test setup: the package `reliant` (in _utils/reliant_lib/), the Salt glue in
_utils/, the doubles and tests/support are importable."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "_utils" / "reliant_lib"
for path in (LIBRARY, ROOT / "_utils", ROOT / "tests" / "doubles", ROOT / "tests" / "support"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
