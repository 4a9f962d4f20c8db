{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.snapshots.clean: the original create-snapshot back exactly, the qubesd
# extension and the read-only marks removed.
reliant-snapshots-removed:
  reliant_snapshot.removed:
    - name: {{ reliant.snapshots.script | json }}
    - settings: {{ reliant.snapshots | json }}

# Unload the extension from a running qubesd.
reliant-snapshots-clean-qubesd-restart:
  cmd.run:
    - name: systemctl try-restart qubesd.service
    - onlyif: systemctl is-active --quiet qubesd.service
    - onchanges:
      - reliant_snapshot: reliant-snapshots-removed
