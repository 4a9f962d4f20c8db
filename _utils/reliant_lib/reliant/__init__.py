"""reliant: the formula's library (pure Python and lxml; no Salt import).

Imports point one way, from the vocabulary up to the commands:

    vocab            shared names: group tags, reference properties, data volumes,
                     which groups may reference which, qube names, Problem, ShardError
    platform         the Qubes release, package versions and what depends on them
    config           the `reliant` pillar checked against the defaults; dom0 detection
    qubesd_load      the model of qubesd's loader (qubesd_schema: what classes accept)
    store, chunks    qubesd stores read and written safely; a store cut at its domains
    snapshot         read-only loop snapshots (create-snapshot and its extension)
    volatile/        volatile dom0: settings, files, boot plan, running mode, interlock
    shards/          the shard engine: records, files, runtime, confine (where volumes
                     may live), suture, dissect, stubs (reading in chunks), dom0dirs,
                     recovery, admission and real_loader (only what qubesd loads is
                     merged), startup (the core-only fallback), traces (libvirt, autostart)
    isolation/       guard (groups and references) and policy (qrexec rules); the
                     qubesd extension imports only these
    operations       suture, dissect, check, status, rename, review on the files
    adopt_plan       what adopt and release move between core and a shard, and refuse
    adopt            adopt and release: the moves written (offline)
    menus            application menus of shard qubes (attach makes, detach removes)
    declare          shard declarations converged by Salt
    audit            traces of open shards in dom0's storage
    commands         the runtime commands over the settings (CLI and Salt share them)
    cli              the reliant-shard command line

The execution and state modules (`_modules/`, `_states/`) and `bin/reliant-shard` sit on
top; nothing here imports them.
"""
