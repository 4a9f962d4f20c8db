{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.snapshots: reliant's create-snapshot (read-only loop devices for images
# that must not be written) and the qubesd extension that marks rw=False volumes.
# See README.md, Read-only loop snapshots.
reliant-snapshots-installed:
  reliant_snapshot.installed:
    - name: {{ reliant.snapshots.script | json }}
    - settings: {{ reliant.snapshots | json }}

# qubesd loads extensions when it starts: restart it, if it runs, after a change.
reliant-snapshots-qubesd-restart:
  cmd.run:
    - name: systemctl try-restart qubesd.service
    - onlyif: systemctl is-active --quiet qubesd.service
    - onchanges:
      - reliant_snapshot: reliant-snapshots-installed
