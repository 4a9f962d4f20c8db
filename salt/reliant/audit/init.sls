{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.audit: see README.md. Filled in by its component.
reliant-audit-settings:
  test.nop:
    - name: reliant-audit
