"""tests/unit/shards: the shard helpers of tests/unit are importable here too."""

import sys
from pathlib import Path

UNIT = str(Path(__file__).resolve().parents[1])
if UNIT not in sys.path:
    sys.path.append(UNIT)
