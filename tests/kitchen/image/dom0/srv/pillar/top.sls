{#- Double of qubes-mgmt-salt's /srv/pillar/top.sls: the top is the union of the enabled tops,
    the links topd makes in <topd_base_pillar>/_tops/base (`qubesctl top.enable NAME pillar=true`). #}
{%- set links = salt["config.get"]("topd_base_pillar", "/srv/pillar") ~ "/_tops/base" %}
{%- set merged = {} %}
{%- for path in salt["file.find"](links, name="*.top") | sort %}
{%-   for target, states in (salt["slsutil.renderer"](path).get("base") or {}).items() %}
{%-     do merged.setdefault(target, []).extend(states) %}
{%-   endfor %}
{%- endfor %}
base: {{ merged | json }}
