{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.isolation.clean: undoes reliant.isolation.
reliant-isolation-clean:
  test.nop:
    - name: reliant-isolation-clean
