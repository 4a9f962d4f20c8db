"""qubes/config.py: the one path the loader's child changes."""

system_path = {"dom0_services_dir": "/var/run/qubes-service"}
