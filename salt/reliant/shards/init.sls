{#- reliant.shards: qubesd runs on a merged store (core + open shards) on tmpfs.
    Installs the reliant-shard CLI and its library, its config, a qubesd.service drop-in
    (QUBES_XML_PATH, suture before start, dissect after stop) and a path unit that
    dissects every save; then converges the shards declared on the open volumes.
    qubesd is stopped before its drop-in or the config changes (so that it dissects
    under the settings it was started with) and started again afterwards. -#}
{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
{%- set tplroot = tpldir.split("/")[0] %}
{%- set shards = reliant.shards %}
{%- set units = "/etc/systemd/system" %}
{#- reliant-shard's messages name hidden qubes: the units send them to tmpfs. #}
{%- set rundir = salt["file.dirname"](shards.merged) %}
{%- set log = rundir ~ "/reliant-shard.log" %}
{#- The CLI's settings. Without isolation, suture writes no runtime policy (""). The
    volatile entry's title names the boot entry when the interlock refuses shards. #}
{%- set isolation = reliant.isolation %}
{%- set config = {
      "core": shards.core, "merged": shards.merged, "roots": shards.roots,
      "max_depth": shards.max_depth, "missing_reference": shards.missing_reference,
      "real_loader_check": shards.real_loader_check,
      "dom0_dir_max_bytes": shards.dom0_dir_max_bytes, "libdir": shards.libdir,
      "policy_dir": isolation.policy_dir if isolation.enabled else "",
      "services": isolation.services if isolation.enabled else None,
      "require_volatile": shards.require_volatile,
      "volatile_title": reliant.volatile.volatile_title,
      "upper_warn_percent": reliant.volatile.upper_warn_percent} %}

{#- The merged store names the qubes of every open shard: it must live in RAM. #}
{%- if not shards.merged.startswith("/run/") %}

reliant-shards-merged-in-ram:
  test.fail_without_changes:
    - name: >-
        reliant:shards:merged: {{ shards.merged }} is not under /run/ (tmpfs); the merged
        store names the qubes of every open shard and must never reach a disk
    - failhard: true
{%- else %}

reliant-shards-library:
  file.recurse:
    - name: {{ shards.libdir }}
    - source: salt://_utils/reliant_lib
    - include_pat: 'E@^reliant/(\w+/)*\w+\.py$'
    - exclude_pat: 'E@__pycache__'
    - clean: true
    - user: root
    - group: root
    - dir_mode: '0755'
    - file_mode: '0644'

reliant-shards-cli:
  file.managed:
    - name: {{ shards.cli }}
    - source: salt://bin/reliant-shard
    - makedirs: true
    - user: root
    - group: root
    - mode: '0755'
    - require:
      - file: reliant-shards-library

{#- Stop qubesd (only if it runs) before its drop-in or the config it dissects with
    changes: its ExecStopPost then dissects under the settings it was started with. #}
reliant-shards-qubesd-stop:
  cmd.run:
    - name: systemctl stop qubesd.service
    - onlyif: systemctl is-active --quiet qubesd.service
    - prereq:
      - file: reliant-shards-config
      - file: reliant-shards-qubesd-dropin

reliant-shards-config:
  file.serialize:
    - name: {{ shards.config }}
    - serializer: json
    - dataset: {{ config | json }}
    - makedirs: true
    - user: root
    - group: root
    - mode: '0644'

reliant-shards-qubesd-dropin:
  file.managed:
    - name: {{ units }}/qubesd.service.d/reliant-shards.conf
    - source: salt://{{ tplroot }}/files/shards/qubesd-dropin.conf.jinja
    - template: jinja
    - context:
        shards: {{ shards | json }}
        rundir: {{ rundir }}
        log: {{ log }}
    - makedirs: true
    - mode: '0644'
    - require:
      - file: reliant-shards-cli

reliant-shards-dissect-service:
  file.managed:
    - name: {{ units }}/reliant-shard-dissect.service
    - source: salt://{{ tplroot }}/files/shards/reliant-shard-dissect.service.jinja
    - template: jinja
    - context:
        shards: {{ shards | json }}
        rundir: {{ rundir }}
        log: {{ log }}
    - mode: '0644'
    - require:
      - file: reliant-shards-cli
      - file: reliant-shards-config

reliant-shards-dissect-path:
  file.managed:
    - name: {{ units }}/reliant-shard-dissect.path
    - source: salt://{{ tplroot }}/files/shards/reliant-shard-dissect.path.jinja
    - template: jinja
    - context:
        shards: {{ shards | json }}
        rundir: {{ rundir }}
        log: {{ log }}
    - mode: '0644'

{#- What `systemctl enable` does for WantedBy=qubesd.service, as a file state so that
    test=True predicts it even before the unit exists. #}
reliant-shards-dissect-path-wanted:
  file.symlink:
    - name: {{ units }}/qubesd.service.wants/reliant-shard-dissect.path
    - target: {{ units }}/reliant-shard-dissect.path
    - makedirs: true
    - require:
      - file: reliant-shards-dissect-path

reliant-shards-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: reliant-shards-qubesd-dropin
      - file: reliant-shards-dissect-service
      - file: reliant-shards-dissect-path
      - file: reliant-shards-dissect-path-wanted

{#- A failed start on a merged store is followed by qubesd's own restart on core only
    (reliant.shards.startup): wait for it rather than fail. #}
reliant-shards-qubesd-start:
  cmd.run:
    - name: >-
        systemctl start qubesd.service || { for i in $(seq 60); do sleep 1;
        systemctl is-active --quiet qubesd.service && exit 0; done; exit 1; }
    - onchanges:
      - cmd: reliant-shards-qubesd-stop
    - require:
      - file: reliant-shards-cli
      - file: reliant-shards-config
      - cmd: reliant-shards-daemon-reload

{#- The shards declared on the open volumes themselves (a reliant-shard.json in each
    shard directory): discovered and converged at run time, so that nothing about
    them is in this state tree, in pillar or in Salt's compiled highstate cache. #}
reliant-shards-declared:
  reliant_shard.declared:
    - name: {{ shards.roots | join(",") }}
    - max_depth: {{ shards.max_depth }}
    - config: {{ shards.config }}
    - require:
      - cmd: reliant-shards-qubesd-start
{%- endif %}
