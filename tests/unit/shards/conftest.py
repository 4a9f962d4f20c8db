"""Tests of the shard engine: the helpers shared with tests/unit (shards_helpers) are
importable from here too."""

import sys
from pathlib import Path

UNIT = str(Path(__file__).resolve().parent.parent)
if UNIT not in sys.path:
    sys.path.insert(0, UNIT)
