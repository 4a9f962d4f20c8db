"""Isolation between groups (core and each shard): `guard` decides which group a qube
belongs to and which references cross groups; `policy` renders the qrexec rules that deny
data-moving calls between groups. The qubesd extension (reliant_isolation) imports only
this package, `reliant.vocab`, `reliant.store`, `reliant.shards.records` and
`reliant.shards.confine`.
"""
