# Kitchen suite `isolation`: shards + isolation, the other components off.
reliant:
  shards:
    enabled: true
    # the container's root is no volatile dom0: merge shards anyway (the interlock is
    # the deniability suite's)
    require_volatile: false
  isolation:
    enabled: true
    notify: false
  snapshots:
    enabled: false
  volatile:
    enabled: false
  audit:
    enabled: false
