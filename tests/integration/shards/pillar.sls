# Kitchen suite `shards`: reliant.shards alone (the shard roots are the defaults:
# /run/shufflecake). test_shards.py opens two shards after converge.
reliant:
  shards:
    enabled: true
    # the container's root is no volatile dom0: merge shards anyway (the interlock is
    # the deniability suite's)
    require_volatile: false
  isolation:
    enabled: false
  snapshots:
    enabled: false
  volatile:
    enabled: false
  audit:
    enabled: false
