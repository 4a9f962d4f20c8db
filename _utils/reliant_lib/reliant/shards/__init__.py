"""The shard engine: qubes that live in a directory on a hidden volume, merged into
qubesd's store while their volume is open.

- `records`: one <domain> read in one pass (`QubeRecord`) and element helpers;
- `files`: `Shard`, its metadata, discovery under the roots, `init_shard`;
- `runtime`: suture's state, the detached shards and the operation lock on tmpfs;
- `stubs`: stores read in chunks, and `Facts` (the records of a plan's domains);
- `confine`: where a shard qube's volumes may live (suture and the isolation extension);
- `suture`: the plan that merges core and shards; `dissect`: the plan that splits them;
- `dom0dirs`: the dom0 directories of shard qubes.

The operations that read and write the files are in `reliant.operations`. Rules, the
QID mechanism and reading in chunks are described in README.md (Shards: library).
"""
