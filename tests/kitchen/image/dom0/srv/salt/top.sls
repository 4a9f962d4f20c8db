{#- Double of qubes-mgmt-salt's topd: the top is the union of the enabled tops
    (links in /srv/salt/_tops/base made by `qubesctl top.enable NAME`). #}
{%- set merged = {} %}
{%- for path in salt["file.find"]("/srv/salt/_tops/base", name="*.top") | sort %}
{%-   for target, states in (salt["slsutil.renderer"](path).get("base") or {}).items() %}
{%-     do merged.setdefault(target, []).extend(states) %}
{%-   endfor %}
{%- endfor %}
base: {{ merged | json }}
