{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.volatile: a GRUB entry that boots dom0 with its root as an overlay on
# tmpfs, a maintenance entry that writes to disk, the default from pillar, the
# initramfs and journald settings that needs (docs/volatile.md).
reliant-volatile-boot:
  reliant_volatile.configured:
    - settings: {{ reliant.volatile | json }}
