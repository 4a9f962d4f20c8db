"""Put the reliant library (the package `reliant` in `reliant_lib/`, beside this file)
on sys.path.

The formula's execution and state modules import this first: while Salt loads them,
its utils directories (the synced `_utils/`) are on sys.path; then they import
`reliant.<module>`.
"""

import os
import sys

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reliant_lib")
if LIBRARY not in sys.path:
    sys.path.insert(0, LIBRARY)
