{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.snapshots.clean: undoes reliant.snapshots.
reliant-snapshots-clean:
  test.nop:
    - name: reliant-snapshots-clean
