# reliant.volatile: the body of the grub.d script that emits a volatile dom0 entry
# (root on an overlay over tmpfs) and a maintenance entry that writes to disk, for
# the newest Xen and kernel in $boot_dir. reliant.volatile.files.grub_script puts
# the settings above it: boot_dir, extra_xen, extra_linux, and for each entry its
# title, id and kernel options (volatile_*, maintenance_*).
set -e
. "${pkgdatadir:-/usr/share/grub}/grub-mkconfig_lib"

newest() { ls -1 "$@" 2>/dev/null | sort -V | tail -n 1; }
xen=$(newest "$boot_dir"/xen-*.gz)
kernel=""
for candidate in $(ls -1 "$boot_dir"/vmlinuz-* 2>/dev/null | sort -V -r); do
  version=${candidate#"$boot_dir"/vmlinuz-}
  case "$version" in *rescue*) continue ;; esac
  if [ -f "$boot_dir/initramfs-$version.img" ]; then kernel=$candidate; break; fi
done
if [ -z "$xen" ] || [ -z "$kernel" ]; then
  echo "reliant-formula: no Xen or no kernel with an initramfs in $boot_dir: no volatile entries" >&2
  exit 0
fi
version=${kernel#"$boot_dir"/vmlinuz-}
# root= as grub's own scripts choose it: the device on LVM or without a UUID
if [ -z "${GRUB_DEVICE_UUID}" ] || [ "${GRUB_DISABLE_LINUX_UUID}" = "true" ] \
    || ! [ -e "/dev/disk/by-uuid/${GRUB_DEVICE_UUID}" ] \
    || uses_abstraction "${GRUB_DEVICE}" lvm; then
  root_device="${GRUB_DEVICE}"
else
  root_device="UUID=${GRUB_DEVICE_UUID}"
fi
xen_path=$(make_system_path_relative_to_its_root "$xen")
kernel_path=$(make_system_path_relative_to_its_root "$kernel")
initrd_path=$(make_system_path_relative_to_its_root "$boot_dir/initramfs-$version.img")
access=$(prepare_grub_to_access_device "${GRUB_DEVICE_BOOT}" | sed "s/^/	/")
# word lists with single spaces (no globbing while splitting)
words() { set -f; set -- $*; set +f; echo "$*"; }
xen_args=$(words "${GRUB_CMDLINE_XEN} ${GRUB_CMDLINE_XEN_DEFAULT} ${extra_xen}")
linux_args="root=${root_device} ro ${GRUB_CMDLINE_LINUX} ${GRUB_CMDLINE_LINUX_DEFAULT} ${extra_linux}"

# Xen needs these on EFI, as in 20_linux_xen.
cat <<EOF
if [ "\$grub_platform" = "pc" -o "\$grub_platform" = "" ]; then
	reliant_xen_rm_opts=
else
	reliant_xen_rm_opts="no-real-mode edd=off"
fi
EOF

entry() {
  cat <<EOF
menuentry '$1' --class qubes --class xen --class gnu-linux --class os --id '$2' {
$access
	echo 'Loading Xen $xen_path ...'
	multiboot2 $xen_path placeholder $xen_args \${reliant_xen_rm_opts}
	echo 'Loading Linux $version ...'
	module2 $kernel_path placeholder $(words "$linux_args $3")
	echo 'Loading initial ramdisk ...'
	module2 --nounzip $initrd_path
}
EOF
}
entry "$volatile_title" "$volatile_id" "$volatile_options"
entry "$maintenance_title" "$maintenance_id" "$maintenance_options"
