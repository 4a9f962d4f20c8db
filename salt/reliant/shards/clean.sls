{#- reliant.shards.clean: undoes reliant.shards. qubesd is stopped under the drop-in
    (its ExecStopPost dissects), the merged store is dissected once more and removed only
    if that succeeds (with the runtime files beside it), then the units, the CLI, its library and config are removed and
    qubesd, if it ran, is started again on the core store. Shards stay on their volumes.
    reliant.isolation, which needs all this, is cleaned first. -#}
{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
{%- set shards = reliant.shards %}

{#- isolation depends on shards (its qubesd extension imports the library removed here):
    it goes first. #}
include:
  - {{ tpldir.split("/")[0] }}.isolation.clean
{%- set units = "/etc/systemd/system" %}
{%- set dropin = units ~ "/qubesd.service.d/reliant-shards.conf" %}

reliant-shards-clean-qubesd-stop:
  cmd.run:
    - name: systemctl stop qubesd.service
    - onlyif:
      - test -e {{ dropin }}
      - systemctl is-active --quiet qubesd.service

reliant-shards-clean-dissect:
  cmd.run:
    - name: {{ shards.cli }} dissect --final
    - env:
      - RELIANT_CONFIG: {{ shards.config }}
    {#- Its messages name qubes; Salt keeps state results (sls.p) on disk. #}
    - hide_output: true
    {#- No CLI but a merged store: fail, and remove nothing, rather than lose changes. #}
    - onlyif: test -e {{ shards.merged }}
    - require:
      - cmd: reliant-shards-clean-qubesd-stop

{#- Everything beside the merged store (tmpfs) that knows shard qubes: log, runtime
    state, detached list, dissect's memo. #}
{%- set rundir = salt["file.dirname"](shards.merged) %}
{%- for path in [shards.merged, rundir ~ "/reliant-shard.log", rundir ~ "/shards.json",
                 rundir ~ "/detached.json", rundir ~ "/dissect.memo"] %}

reliant-shards-clean-run-{{ loop.index }}:
  file.absent:
    - name: {{ path }}
    - require:
      - cmd: reliant-shards-clean-dissect
{%- endfor %}

{%- for unit in [dropin, units ~ "/qubesd.service.wants/reliant-shard-dissect.path",
                 units ~ "/reliant-shard-dissect.path", units ~ "/reliant-shard-dissect.service"] %}

reliant-shards-clean-unit-{{ loop.index }}:
  file.absent:
    - name: {{ unit }}
    - require:
      - cmd: reliant-shards-clean-dissect
    - onchanges_in:
      - cmd: reliant-shards-clean-daemon-reload
{%- endfor %}

reliant-shards-clean-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload

reliant-shards-clean-qubesd-start:
  cmd.run:
    - name: systemctl start qubesd.service
    - onchanges:
      - cmd: reliant-shards-clean-qubesd-stop
    - require:
      - cmd: reliant-shards-clean-daemon-reload

{%- for path in [shards.cli, shards.config, shards.libdir] %}

reliant-shards-clean-file-{{ loop.index }}:
  file.absent:
    - name: {{ path }}
    - require:
      - cmd: reliant-shards-clean-dissect
{%- endfor %}
