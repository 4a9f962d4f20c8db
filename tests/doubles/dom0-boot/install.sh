#!/bin/sh
# Installs the boot doubles (GRUB and dracut, which the dom0 container lacks) into
# ROOT, laid out as on a Qubes R4.3 dom0: /usr/sbin/grub2-mkconfig, /usr/bin/dracut,
# /usr/share/grub/grub-mkconfig_lib, /etc/grub.d/{00_header,20_linux_xen},
# /etc/default/grub, /etc/dracut.conf.d, /boot with one Xen, one kernel and its
# initramfs, and /boot/grub2/grub.cfg generated once. Usage: install.sh ROOT
set -eu
root=${1:?usage: install.sh ROOT}
here=$(cd "$(dirname "$0")" && pwd)
install -d "$root/usr/sbin" "$root/usr/bin" "$root/usr/share/grub" "$root/etc/grub.d" \
  "$root/etc/default" "$root/etc/dracut.conf.d" "$root/boot/grub2"
install -m 0755 "$here/grub2-mkconfig" "$root/usr/sbin/grub2-mkconfig"
install -m 0755 "$here/dracut" "$root/usr/bin/dracut"
install -m 0644 "$here/grub-mkconfig_lib" "$root/usr/share/grub/grub-mkconfig_lib"
install -m 0755 "$here/00_header" "$here/20_linux_xen" "$root/etc/grub.d/"
install -m 0644 "$here/default-grub" "$root/etc/default/grub"
version=6.12.40-1.qubes.fc41.x86_64
printf 'xen double\n' > "$root/boot/xen-4.19.3.gz"
printf 'kernel double\n' > "$root/boot/vmlinuz-$version"
printf 'initramfs double\n' > "$root/boot/initramfs-$version.img"
GRUB_DOUBLE_SYSCONFDIR="$root/etc" GRUB_DOUBLE_PKGDATADIR="$root/usr/share/grub" \
  GRUB_DOUBLE_BOOT="$root/boot" GRUB_DOUBLE_LOG="$root/run/reliant-doubles/install.log" \
  "$root/usr/sbin/grub2-mkconfig" -o "$root/boot/grub2/grub.cfg"
rm -rf "$root/run/reliant-doubles/install.log"
