#!/usr/bin/env bash
# Build the base image of the dom0 container: Debian bookworm (debootstrap minbase)
# with systemd as PID 1, python3 + lxml (as dom0 has) and salt installed from PyPI.
# No image registry is reachable here, so the root is made locally and imported.
# Usage: build-base.sh IMAGE_NAME SALT_VERSION
set -euo pipefail
image=${1:?image name}
salt_version=${2:?salt version}
work=$(mktemp -d /var/tmp/reliant-base.XXXXXX)
trap 'umount -R "$work/root/proc" 2>/dev/null || true; rm -rf "$work"' EXIT

# The host's own Debian mirror (its apt sources), so nothing here names a host.
mirror=$(grep -h -m1 -oE '^(URIs:|deb) +[a-z]+://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
         | head -1 | awk '{print $2}' || true)
[ -n "$mirror" ] || { echo "build-base: no Debian mirror in the host's apt sources" >&2; exit 1; }

echo "[image] debootstrap bookworm (minbase) from the host's mirror"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-venv,python3-lxml,util-linux,mount,procps,ca-certificates,kmod,file \
  bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

echo "[image] salt==$salt_version into /opt/salt (system site-packages, like dom0's system salt)"
mkdir -p "$work/root/tmp/wheels"
# Wheels are built/downloaded on the host (same CPython minor, same glibc family).
python3 -m pip wheel -q -w "$work/root/tmp/wheels" "salt==$salt_version"
chroot "$work/root" python3 -m venv --system-site-packages /opt/salt
chroot "$work/root" /opt/salt/bin/pip install -q --no-index --find-links /tmp/wheels "salt==$salt_version"
rm -rf "$work/root/tmp/wheels"
for tool in salt-call salt-minion; do ln -sf /opt/salt/bin/$tool "$work/root/usr/bin/$tool"; done

echo "[image] trimming and importing as $image"
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
# Units that make no sense in a container.
for unit in systemd-remount-fs.service systemd-modules-load.service getty@tty1.service \
            systemd-udevd.service systemd-udev-trigger.service; do
  ln -sf /dev/null "$work/root/etc/systemd/system/$unit"
done
tar -C "$work/root" -c . | podman import --change 'CMD ["/sbin/init"]' - "$image" >/dev/null
echo "[image] $image ready"
