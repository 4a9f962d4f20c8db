{#- reliant.config: the pillar check every component includes. A wrong pillar
    fails here first and, with failhard, stops the run before any change. -#}
{%- from tpldir ~ "/map.jinja" import problems with context %}
{%- if problems %}
reliant-pillar:
  test.fail_without_changes:
    - name: "reliant pillar: {{ problems | join('; ') }}"
    - order: 1
    - failhard: true
{%- else %}
reliant-pillar:
  test.succeed_without_changes:
    - name: pillar reliant is well-formed
    - order: 1
{%- endif %}
