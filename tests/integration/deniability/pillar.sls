# Kitchen suite `deniability`: reliant.shards with its defaults, in a container whose
# root is not a volatile dom0 (no /run/systemd/volatile-root): the interlock refuses
# shards until test_deniability.py sets reliant:shards:require_volatile to false.
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
