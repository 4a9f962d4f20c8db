{#- reliant: applies every component that pillar enables. -#}
{%- from tpldir ~ "/map.jinja" import reliant with context %}
{%- set components = [".config"] %}
{%- for component in ["shards", "isolation", "snapshots", "volatile", "audit"] %}
{%-   if reliant[component].enabled %}
{%-     do components.append("." ~ component) %}
{%-   endif %}
{%- endfor %}
include: {{ components | json }}
