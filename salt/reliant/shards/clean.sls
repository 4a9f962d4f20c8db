{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.shards.clean: undoes reliant.shards.
reliant-shards-clean:
  test.nop:
    - name: reliant-shards-clean
