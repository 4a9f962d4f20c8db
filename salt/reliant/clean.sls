{#- reliant.clean: undoes every component, enabled or not. -#}
include:
  - .audit.clean
  - .volatile.clean
  - .snapshots.clean
  - .isolation.clean
  - .shards.clean
