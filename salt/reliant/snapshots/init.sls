{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
{%- set tplroot = tpldir.split("/")[0] %}
# reliant.snapshots: reliant's create-snapshot (read-only loop devices for images
# that must not be written) and the qubesd extension that marks rw=False volumes,
# installed as reliant.isolation installs its own: a package and its .dist-info from
# files/<component>/extension into site-packages. See docs/snapshots.md.
reliant-snapshots-installed:
  reliant_snapshot.installed:
    - name: {{ reliant.snapshots.script | json }}
    - settings: {{ reliant.snapshots | json }}

{#- The extension only once the script is in place (a Qubes version the formula knows). #}
{%- set site = salt["reliant_snapshot.site_packages"](reliant.snapshots, missing_ok=True) %}
{%- if site %}

reliant-snapshots-extension:
  file.recurse:
    - name: {{ site | json }}
    - source: salt://{{ tplroot }}/files/snapshots/extension
    - exclude_pat: 'E@(__pycache__|\.pyc$)'
    - user: root
    - group: root
    - dir_mode: '0755'
    - file_mode: '0644'
    - require:
      - reliant_snapshot: reliant-snapshots-installed
{%- endif %}

# qubesd loads extensions when it starts: restart it, if it runs, after a change.
reliant-snapshots-qubesd-restart:
  cmd.run:
    - name: systemctl try-restart qubesd.service
    - onlyif: systemctl is-active --quiet qubesd.service
    - onchanges:
      - reliant_snapshot: reliant-snapshots-installed
{%- if site %}
      - file: reliant-snapshots-extension
{%- endif %}
