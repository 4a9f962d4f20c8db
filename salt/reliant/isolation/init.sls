{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.isolation: see README.md. Filled in by its component.
reliant-isolation-settings:
  test.nop:
    - name: reliant-isolation
