{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.shards: see README.md. Filled in by its component.
reliant-shards-settings:
  test.nop:
    - name: reliant-shards
