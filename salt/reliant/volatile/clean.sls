{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.volatile.clean: undoes reliant.volatile.
reliant-volatile-clean:
  test.nop:
    - name: reliant-volatile-clean
