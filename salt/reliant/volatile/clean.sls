{%- from tpldir.split("/")[0] ~ "/map.jinja" import reliant with context %}
# reliant.volatile.clean: removes the volatile boot setup, restores GRUB_DEFAULT
# and regenerates grub.cfg and the initramfs without it.
reliant-volatile-clean:
  reliant_volatile.absent:
    - settings: {{ reliant.volatile | json }}
