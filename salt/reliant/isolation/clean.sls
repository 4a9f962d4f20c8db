{#- reliant.isolation.clean: removes the policy files (persistent and runtime), the settings
    file and the qubesd extension; restarts qubesd if the extension was there. -#}
{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
{%- set isolation = reliant.isolation %}
{%- set site = isolation.site_packages or salt["reliant_policy.site_packages"]() %}

reliant-isolation-policy-absent:
  reliant_policy.absent:
    - name: {{ isolation.persistent_policy_dir | json }}
    - policy_dir: {{ isolation.policy_dir | json }}
    - policy_file: {{ isolation.policy_file | json }}

reliant-isolation-extension-absent:
  file.absent:
    - names:
      - {{ (site ~ "/reliant_isolation") | json }}
      - {{ (site ~ "/reliant_isolation-0.1.0.dist-info") | json }}

reliant-isolation-qubesd-restart-after-clean:
  cmd.run:
    - name: systemctl try-restart qubesd.service
    - onchanges:
      - file: reliant-isolation-extension-absent
