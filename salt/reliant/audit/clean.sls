{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.audit.clean: undoes reliant.audit.
reliant-audit-clean:
  test.nop:
    - name: reliant-audit-clean
