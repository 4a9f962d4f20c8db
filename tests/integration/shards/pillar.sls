# Kitchen suite `shards`: reliant.shards alone (the shard roots are the defaults:
# /run/shufflecake). test_shards.py opens two shards after converge.
reliant:
  shards:
    enabled: true
  isolation:
    enabled: false
  snapshots:
    enabled: false
  volatile:
    enabled: false
  audit:
    enabled: false
