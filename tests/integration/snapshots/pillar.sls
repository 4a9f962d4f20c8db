# Suite `snapshots`. The container has no qubes-core-dom0, and reliant.snapshots
# rightly refuses to install without it; there is no pre-converge step, so the
# first converge runs with every component off. test_snapshots.py then plants
# stand-ins for the stock create-snapshot and qubes/storage/file.py, enables
# reliant.snapshots in this pillar (accepting the stand-ins' checksums) and runs
# the highstates itself.
reliant:
  shards:
    enabled: false
  isolation:
    enabled: false
  snapshots:
    enabled: false
  volatile:
    enabled: false
  audit:
    enabled: false
