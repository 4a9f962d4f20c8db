{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.audit: fails while dom0's disk holds a trace of a shard that is open now
# (names, uuids, pools, tags in files, names and LVM metadata). The comment counts
# traces per location; `qubesctl reliant_audit.run` lists them (docs/audit.md).
reliant-audit-clean:
  reliant_audit.clean:
    - audit: {{ reliant.audit | json }}
    - shards: {{ reliant.shards | json }}
    - volatile: {{ reliant.volatile | json }}
