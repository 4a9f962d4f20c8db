{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.volatile: see README.md. Filled in by its component.
reliant-volatile-settings:
  test.nop:
    - name: reliant-volatile
