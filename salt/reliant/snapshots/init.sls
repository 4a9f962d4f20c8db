{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.snapshots: see README.md. Filled in by its component.
reliant-snapshots-settings:
  test.nop:
    - name: reliant-snapshots
