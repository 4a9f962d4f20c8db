{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.snapshots.clean: the original create-snapshot back exactly, the qubesd
# extension and the read-only marks removed.
reliant-snapshots-removed:
  reliant_snapshot.removed:
    - name: {{ reliant.snapshots.script | json }}
    - settings: {{ reliant.snapshots | json }}

{%- set site = salt["reliant_snapshot.site_packages"](reliant.snapshots, missing_ok=True) %}
{%- if site %}

reliant-snapshots-extension-absent:
  file.absent:
    - names:
      - {{ (site ~ "/reliant_snapshots_ext") | json }}
      - {{ (site ~ "/reliant_snapshots_ext-0.1.0.dist-info") | json }}
{%- endif %}

# Unload the extension from a running qubesd.
reliant-snapshots-clean-qubesd-restart:
  cmd.run:
    - name: systemctl try-restart qubesd.service
    - onlyif: systemctl is-active --quiet qubesd.service
    - onchanges:
      - reliant_snapshot: reliant-snapshots-removed
{%- if site %}
      - file: reliant-snapshots-extension-absent
{%- endif %}
