# Suite `volatile`: the volatile boot setup (GRUB and dracut are the doubles of
# tests/doubles/dom0-boot, baked into the dom0 image) and the audit. The other
# components have their own suites.
reliant:
  shards:
    enabled: false
  isolation:
    enabled: false
  snapshots:
    enabled: false
  volatile:
    enabled: true
    default_entry: volatile
  audit:
    enabled: true
