{#- reliant.isolation: the persistent qrexec policy file (names no shard), the settings
    file the runtime deny rules follow, and the qubesd extension that keeps group tags and
    refuses references from core to shard qubes. The deny rules themselves are written by
    `reliant-shard suture` into the runtime policy directory. See README.md, Isolation. -#}
{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
{%- set tplroot = tpldir.split("/")[0] %}
{%- set isolation = reliant.isolation %}
{%- if not reliant.shards.enabled %}

reliant-isolation-needs-shards:
  test.fail_without_changes:
    - name: "reliant:isolation needs reliant:shards:enabled: the group tags come from suture"
{%- else %}

include:
  - {{ tplroot }}.shards

reliant-isolation-policy:
  reliant_policy.installed:
    - name: {{ isolation.persistent_policy_dir | json }}
    - services: {{ isolation.services | json }}
    - directions: {{ isolation.directions | json }}
    - notify: {{ isolation.notify | json }}
    - policy_file: {{ isolation.policy_file | json }}
    - shard_roots: {{ reliant.shards.roots | json }}
{%-   if isolation.extension %}
{%-     set site = isolation.site_packages or salt["reliant_policy.site_packages"]() %}

reliant-isolation-extension:
  file.recurse:
    - name: {{ site | json }}
    - source: salt://{{ tplroot }}/files/isolation/extension
    - exclude_pat: 'E@(__pycache__|\.pyc$)'
    - makedirs: true
    - user: root
    - group: root
    - dir_mode: '0755'
    - file_mode: '0644'

reliant-isolation-extension-paths:
  file.managed:
    - name: {{ (site ~ "/reliant_isolation/_paths.py") | json }}
    - contents: {{ salt["reliant_policy.extension_paths"](reliant.shards.libdir) | json }}
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - file: reliant-isolation-extension

{#- qubesd loads extensions at start only: restart it (if it runs) when the extension changed,
    once the library it imports and the settings it reads are in place. #}
reliant-isolation-qubesd-restart:
  cmd.run:
    - name: systemctl try-restart qubesd.service
    - onchanges:
      - file: reliant-isolation-extension
      - file: reliant-isolation-extension-paths
    - require:
      - file: reliant-shards-library
      - reliant_policy: reliant-isolation-policy
{%-   endif %}
{%- endif %}
