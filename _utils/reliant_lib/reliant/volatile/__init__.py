"""Volatile dom0: boot entries, initramfs and journald settings, and the running mode.

A volatile dom0 boots with ``systemd.volatile=overlay``: in the initramfs,
systemd-volatile-root mounts a tmpfs and lays an overlay over the real root, so
every write after boot lands in RAM and is gone at shutdown. This package renders
everything that needs, as files and checked edits that a state applies:

- a grub.d script that, each time ``grub2-mkconfig`` runs, emits two Xen
  multiboot2 entries (as Qubes' own 20_linux_xen does) for the newest Xen and
  kernel in /boot: a volatile one and a clearly named maintenance one that
  persists changes;
- ``GRUB_DEFAULT`` in /etc/default/grub, naming one of them by its entry id;
- a dracut drop-in with what the overlay root needs in the initramfs;
- a journald drop-in with ``Storage=volatile``.

Regeneration of grub.cfg and of the initramfs is decided by hashing their
inputs (stamps kept in a small JSON state file), so that a run whose inputs did
not change regenerates nothing, and a run interrupted before regenerating does
it the next time. Nothing here imports Salt.

Parts: `settings` (pillar reliant:volatile, validated), `files` (the files it
installs), `boot` (edits of /etc/default/grub, the plan and how it is applied),
`running` (the mode dom0 runs in).
"""
