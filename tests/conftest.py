"""Shared test setup: the package `reliant` (in _utils/reliant_lib/), the Salt glue in
_utils/, the doubles and tests/support are importable; reliant-shard's hosts play an R4.3
dom0."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "_utils" / "reliant_lib"
for path in (LIBRARY, ROOT / "_utils", ROOT / "tests" / "doubles", ROOT / "tests" / "support"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from qubes_platforms import R43  # noqa: E402
from reliant import commands  # noqa: E402


@pytest.fixture(autouse=True)
def r43_host(monkeypatch):
    """`commands.Host` (and every test double deriving from it) sees the Qubes platform of
    the R4.3 dom0 image, not this machine's; a double that plays another release defines
    its own `qubes_platform`."""
    monkeypatch.setattr(commands.Host, "qubes_platform", lambda self: R43)
