"""Paths of the repository that tests share (import this, not `conftest`: two test
directories have a conftest.py, and `from conftest import` takes whichever came first)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
