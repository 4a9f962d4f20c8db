# Kitchen suite `isolation`: shards + isolation, the other components off.
reliant:
  shards:
    enabled: true
  isolation:
    enabled: true
    notify: false
  snapshots:
    enabled: false
  volatile:
    enabled: false
  audit:
    enabled: false
