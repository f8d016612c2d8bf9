#!/bin/sh
# SPDX-License-Identifier: MIT
#
# build-guest.sh OUTDIR — build a tiny test guest from Debian packages.
#
# OUTDIR/vmlinuz     the host's Debian kernel (linux-image-amd64)
# OUTDIR/initrd.img  busybox-static initramfs: virtio + balloon + console
#                    modules, an /init that dirties memory and prints
#                    heartbeats on the serial console, and qemu-ga if it
#                    can be packed
#
# The result is cached: when OUTDIR/stamp matches a hash of this script, the
# kernel version and the packed binaries, nothing is rebuilt.  On success the
# last two lines of stdout are
#   VMOPS_TEST_KERNEL=OUTDIR/vmlinuz
#   VMOPS_TEST_INITRD=OUTDIR/initrd.img
# so a harness can `eval "$(build-guest.sh DIR | tail -n 2)"`.
#
# Guest kernel command line (besides console=ttyS0):
#   vmops.dirty_mb=N        size of the random file and of the rewrite loop
#                           (default 64; 0 disables dirtying)
#   vmops.dirty_pause_us=N  pause between two rewrites (default 0)
#   vmops.check_every=N     verify the random file every N heartbeats (default 5)
#
# Serial console lines printed by the guest:
#   VMOPS-GUEST-READY dirty_mb=N checksum=C   once set up
#   HEARTBEAT <n> <checksum>                  every second
#   CHECKSUM-MISMATCH <n> <now> <expected>    if the random file changed
#
# Environment: VMOPS_GUEST_KERNEL_VERSION picks a kernel other than the
# newest one in /boot.

set -eu

usage() {
	echo "usage: $0 OUTDIR" >&2
	exit 2
}

[ $# -eq 1 ] || usage
outdir=$1

die() {
	echo "build-guest: $*" >&2
	exit 1
}

# --- pick the kernel -------------------------------------------------------

if [ -n "${VMOPS_GUEST_KERNEL_VERSION:-}" ]; then
	kver=$VMOPS_GUEST_KERNEL_VERSION
else
	kver=$(for k in /boot/vmlinuz-*; do [ -e "$k" ] && echo "${k#/boot/vmlinuz-}"; done |
		sort -V | tail -n 1)
fi
[ -n "$kver" ] || die "no /boot/vmlinuz-* (install linux-image-amd64)"
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$kernel" ] || die "$kernel: not readable"
[ -d "$moddir" ] || die "$moddir: no such directory"

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found (install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
	die "$busybox is dynamically linked (install busybox-static)"
fi
qga=/usr/sbin/qemu-ga
[ -x "$qga" ] || qga=

# Modules in load order (see docs/TESTBED.md), plus the console driver for
# the guest agent's virtio-serial port.
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_balloon virtio_console"

# --- cache check -------------------------------------------------------------

key=$( {
	cat "$0"
	echo "kernel=$kver"
	sha256sum "$kernel" "$busybox" ${qga:+"$qga"}
} | sha256sum | cut -d' ' -f1)

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
if [ -f "$outdir/stamp" ] && [ "$(cat "$outdir/stamp")" = "$key" ] &&
   [ -s "$outdir/vmlinuz" ] && [ -s "$outdir/initrd.img" ]; then
	echo "build-guest: $outdir is up to date" >&2
	echo "VMOPS_TEST_KERNEL=$outdir/vmlinuz"
	echo "VMOPS_TEST_INITRD=$outdir/initrd.img"
	exit 0
fi

work=$(mktemp -d "$outdir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
mkdir -p "$root"
cd "$root"
mkdir -p bin sbin usr/bin usr/sbin dev proc sys tmp run etc lib/modules lib64 root

# --- busybox: one symlink per applet -------------------------------------------

cp "$busybox" bin/busybox
chmod 755 bin/busybox
"$busybox" --list-full | while read -r applet; do
	[ "$applet" = bin/busybox ] && continue
	case $applet in
	bin/*) ln -sf busybox "$applet" ;;
	sbin/*) ln -sf ../bin/busybox "$applet" ;;
	usr/bin/* | usr/sbin/*) ln -sf ../../bin/busybox "$applet" ;;
	*) ;;
	esac
done
[ -e bin/sh ] || ln -sf busybox bin/sh

# --- device nodes ----------------------------------------------------------------

if ! mknod -m 600 dev/console c 5 1 2>/dev/null; then
	# Not root: the kernel's built-in initramfs provides /dev/console.
	echo "build-guest: cannot mknod dev/console (not root?), relying on the kernel's" >&2
fi
mknod -m 666 dev/null c 1 3 2>/dev/null || true

# --- kernel modules ---------------------------------------------------------------

for m in $modules; do
	f=$(find "$moddir/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n 1)
	[ -n "$f" ] || die "module $m not found under $moddir"
	case $f in
	*.ko) cp "$f" lib/modules/ ;;
	*.ko.xz) xz -dc "$f" >"lib/modules/$m.ko" ;;
	*.ko.zst) zstd -qdc "$f" >"lib/modules/$m.ko" ;;
	esac
done
echo "$modules" >lib/modules/order

# --- qemu guest agent (optional) -------------------------------------------------------

have_qga=0
if [ -n "$qga" ]; then
	if libs=$(ldd "$qga" 2>/dev/null); then
		ok=1
		cp "$qga" usr/sbin/qemu-ga
		for lib in $(echo "$libs" | awk '/=>/ { print $3 } !/=>/ && $1 ~ /^\// { print $1 }'); do
			[ -f "$lib" ] || { ok=0; break; }
			mkdir -p ".$(dirname "$lib")"
			cp -L "$lib" ".$lib"
		done
		if [ $ok = 1 ]; then
			have_qga=1
		else
			echo "build-guest: cannot pack qemu-ga libraries, guest runs without agent" >&2
			rm -f usr/sbin/qemu-ga
		fi
	fi
fi

# --- /init ---------------------------------------------------------------------------

cat >init <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run

dirty_mb=64
dirty_pause_us=0
check_every=5
for arg in $(cat /proc/cmdline); do
	case $arg in
	vmops.dirty_mb=*) dirty_mb=${arg#vmops.dirty_mb=} ;;
	vmops.dirty_pause_us=*) dirty_pause_us=${arg#vmops.dirty_pause_us=} ;;
	vmops.check_every=*) check_every=${arg#vmops.check_every=} ;;
	esac
done
case $dirty_mb in '' | *[!0-9]*) dirty_mb=64 ;; esac
case $dirty_pause_us in '' | *[!0-9]*) dirty_pause_us=0 ;; esac
case $check_every in '' | 0 | *[!0-9]*) check_every=5 ;; esac

for m in $(cat /lib/modules/order); do
	insmod /lib/modules/$m.ko 2>/dev/null || echo "VMOPS-GUEST: insmod $m failed"
done

if [ "$dirty_mb" -gt 0 ]; then
	dd if=/dev/urandom of=/tmp/a bs=1M count=$dirty_mb 2>/dev/null
else
	: >/tmp/a
fi
sum=$(md5sum /tmp/a | cut -d' ' -f1)

if [ "$dirty_mb" -gt 0 ]; then
	(
		while :; do
			cat /tmp/a >/tmp/b
			[ "$dirty_pause_us" -gt 0 ] && usleep "$dirty_pause_us"
		done
	) </dev/null >/dev/null 2>&1 &
fi

if [ -x /usr/sbin/qemu-ga ]; then
	mkdir -p /dev/virtio-ports /run/qga
	i=0
	while [ $i -lt 50 ]; do
		for p in /sys/class/virtio-ports/*; do
			[ -e "$p/name" ] || continue
			n=$(cat "$p/name")
			[ -n "$n" ] && ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$n"
		done
		[ -e /dev/virtio-ports/org.qemu.guest_agent.0 ] && break
		i=$((i + 1))
		usleep 100000
	done
	if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
		/usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 \
			-t /run/qga -f /run/qga/qemu-ga.pid -l /run/qga/qemu-ga.log \
			</dev/null >/dev/null 2>&1 &
		echo "VMOPS-GUEST: qemu-ga started"
	fi
fi

echo "VMOPS-GUEST-READY dirty_mb=$dirty_mb checksum=$sum"

n=0
while :; do
	n=$((n + 1))
	if [ $((n % check_every)) -eq 0 ]; then
		now=$(md5sum /tmp/a | cut -d' ' -f1)
		[ "$now" = "$sum" ] || echo "CHECKSUM-MISMATCH $n $now $sum"
	fi
	echo "HEARTBEAT $n $sum"
	sleep 1
done
EOF
chmod 755 init

# --- pack ------------------------------------------------------------------------------

find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -0 -H newc -R 0:0 | gzip -1 >"$work/initrd.img"
cp "$kernel" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$outdir/vmlinuz"
mv -f "$work/initrd.img" "$outdir/initrd.img"
echo "$key" >"$outdir/stamp"
echo "build-guest: built $outdir (kernel $kver, qemu-ga: $([ $have_qga = 1 ] && echo yes || echo no), initrd $(wc -c <"$outdir/initrd.img") bytes)" >&2
echo "VMOPS_TEST_KERNEL=$outdir/vmlinuz"
echo "VMOPS_TEST_INITRD=$outdir/initrd.img"
