#!/bin/sh
# SPDX-License-Identifier: MIT
#
# build-guest.sh OUTDIR — build a tiny test guest from Debian packages.
#
# OUTDIR/vmlinuz     the host's Debian kernel (linux-image-amd64), unpacked
#                    to its ELF image when it has a PVH entry
#                    (unpack-kernel.py): it boots seconds faster under TCG
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
# The cache key covers this whole script, so any change to the /init below
# (it is a here-document in this file) rebuilds cached guests.
#
# What the guest does: it fills a static region (/tmp/a, random) and
# re-measures its md5 on every heartbeat; a background dirtier rewrites
# dirty_mb of data in passes, pass p writing content that is a function of p
# (8 random seed blocks, rotated by p), and verifies every pass it wrote
# against md5s taken at boot.  Each heartbeat prints what was measured.
#
# Guest kernel command line (besides console=ttyS0):
#   vmops.static_mb=N       size of the static region (default 4, at least 1;
#                           md5 under TCG runs at about 60 MB/s)
#   vmops.dirty_mb=N        size of the dirtier's data, twice in memory: the
#                           seed and the rewritten copy (default 64; 0: no
#                           dirtier)
#   vmops.dirty_pause_us=N  pause between two dirtier passes (default 500000:
#                           a flat-out dirtier keeps a TCG vCPU, and so a
#                           host core, 100 % busy for the guest's whole life,
#                           which made a test run CPU-bound; tests that need
#                           a guest that cannot converge ask for 0)
#   vmops.corrupt_after=N   after N heartbeats, invert one byte of the static
#                           region and one of the dirtier's seed (simulated
#                           memory corruption; default 0: never)
#   vmops.qga=MODE          the guest agent: on (default), off (not started:
#                           "agent missing"), stopped (started, then SIGSTOP:
#                           "agent hangs"), slowfreeze (its fsfreeze hook
#                           sleeps vmops.freeze_delay_s seconds, default 20,
#                           before freezing: "prepare hangs")
#
# Data disk: when the first virtio-blk disk (/dev/vda) holds ext4 (the
# tests make it with mkfs.ext4), it is mounted on /data and a writer
# rewrites 64 slot files there for ever: record n goes to /data/w/<n % 64>
# as 2048 lines "vmops-data <n, 10 digits>" (45056 bytes), written to a
# temporary name and renamed; /data/last then holds n.  A record is
# consistent when every line is the same and names a number whose slot is
# the file's name; the guest checks the last 8 records every 8 records.
# The writer resumes from /data/last after a restore or a reboot.
# fsfreeze blocks it while the filesystem is frozen.
#
# Serial console lines printed by the guest (kernel output and terminal
# escapes may precede a marker on the same line: match anywhere in a line):
#   VMOPS-GUEST-READY static_mb=S dirty_mb=D corrupt_after=C static=<md5>
#       once set up; <md5> is the static region's boot checksum
#   HEARTBEAT <n> static=<md5> static_ok=<0|1> pass=<p> pass_ok=<0|1> bad=<k>
#       about every second, n = 1, 2, ...:
#       static     md5 of the static region, measured at this beat
#       static_ok  1 if it equals the boot checksum
#       pass       the dirtier's last verified pass (0: none yet, or no dirtier)
#       pass_ok    1 if that pass verified
#       bad        failed checks since boot (static beats + dirtier passes);
#                  a healthy guest says static_ok=1 pass_ok=1 bad=0 forever
#   CHECKSUM-MISMATCH static beat=<n> got=<md5> want=<md5>
#       on every beat whose static region does not match
#   CHECKSUM-MISMATCH dirty beat=<n> failed_passes=<k> pass=<p> block=<b> got=<md5> want=<md5>
#       at the first beat after more dirtier passes failed (details of the
#       newest failed pass's first bad block)
#   VMOPS-DATA n=<n> ok=<0|1> bad=<k>
#       after each heartbeat while the data disk is mounted: the writer's
#       last record n, whether its last check of all slots passed, failed
#       checks since boot (ok=1 bad=0 for a healthy disk)
#   VMOPS-GUEST-ERROR <what>
#       setting up failed (e.g. the regions do not fit in the guest's memory)
#   VMOPS-GUEST: ...
#       informational
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
here=$(cd "$(dirname "$0")" && pwd)

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
# the guest agent's virtio-serial port, and virtio-blk + ext4 for the data
# disk (ext4 needs crc16, mbcache, jbd2 and a crc32c implementation).
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_balloon virtio_console virtio_blk crc16 mbcache jbd2 crc32c_generic ext4"

# --- cache check -------------------------------------------------------------

key=$( {
	cat "$0" "$here/unpack-kernel.py"
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
# The test guest's /init: see the header of tests/guest/build-guest.sh.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# /tmp holds the static region and the dirtier's data (the default, half
# of RAM, is too small for dirty_mb=64 in a 256 MiB guest).
mount -t tmpfs -o mode=1777,size=90% tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run

static_mb=4
dirty_mb=64
dirty_pause_us=500000
corrupt_after=0
qga_mode=on
freeze_delay_s=20
for arg in $(cat /proc/cmdline); do
	case $arg in
	vmops.static_mb=*) static_mb=${arg#*=} ;;
	vmops.dirty_mb=*) dirty_mb=${arg#*=} ;;
	vmops.dirty_pause_us=*) dirty_pause_us=${arg#*=} ;;
	vmops.corrupt_after=*) corrupt_after=${arg#*=} ;;
	vmops.qga=*) qga_mode=${arg#*=} ;;
	vmops.freeze_delay_s=*) freeze_delay_s=${arg#*=} ;;
	esac
done
case $static_mb in '' | 0 | *[!0-9]*) static_mb=4 ;; esac
case $dirty_mb in '' | *[!0-9]*) dirty_mb=64 ;; esac
case $dirty_pause_us in '' | *[!0-9]*) dirty_pause_us=500000 ;; esac
case $corrupt_after in '' | *[!0-9]*) corrupt_after=0 ;; esac
case $freeze_delay_s in '' | *[!0-9]*) freeze_delay_s=20 ;; esac

for m in $(cat /lib/modules/order); do
	insmod /lib/modules/$m.ko 2>/dev/null || echo "VMOPS-GUEST: insmod $m failed"
done

# The static region: written once, its md5 re-measured on every heartbeat.
dd if=/dev/urandom of=/tmp/a bs=1M count=$static_mb 2>/dev/null ||
	echo "VMOPS-GUEST-ERROR cannot write the static region ($static_mb MiB)"
set -- $(md5sum /tmp/a)
boot=$1

# The dirtier's seed: 8 random blocks of dirty_mb/8 MiB, and their md5s.
# Pass p writes block (j + p) % 8 of the seed as block j of /tmp/b, so what
# a pass writes is a function of its number (and stale pages from an earlier
# pass do not verify), then checks every block it wrote against the seed's
# boot-time md5s.  Its state, "<pass> <ok> <failed passes> [detail]", is in
# /run/pass for the heartbeat loop, the only writer to the console.
blocks=8
bfiles="/tmp/b/0 /tmp/b/1 /tmp/b/2 /tmp/b/3 /tmp/b/4 /tmp/b/5 /tmp/b/6 /tmp/b/7"
if [ "$dirty_mb" -gt 0 ]; then
	mkdir -p /tmp/seed /tmp/b
	i=0
	while [ $i -lt $blocks ]; do
		dd if=/dev/urandom of=/tmp/seed/$i bs=128k count=$dirty_mb 2>/dev/null ||
			echo "VMOPS-GUEST-ERROR cannot write the dirtier's seed ($dirty_mb MiB)"
		i=$((i + 1))
	done
	set -- $(cd /tmp/seed && md5sum 0 1 2 3 4 5 6 7)
	i=0
	while [ $i -lt $blocks ]; do
		eval "want$i=\$1"
		shift 2
		i=$((i + 1))
	done
fi

dirtier() {
	p=0 bad=0 last=
	while :; do
		p=$((p + 1))
		j=0
		while [ $j -lt $blocks ]; do
			cp /tmp/seed/$(((j + p) % blocks)) /tmp/b/$j
			j=$((j + 1))
		done
		set -- $(md5sum $bfiles)
		ok=1 j=0
		while [ $j -lt $blocks ]; do
			eval "want=\$want$(((j + p) % blocks))"
			if [ "${1:-}" != "$want" ]; then
				[ $ok = 0 ] || last="pass=$p block=$j got=${1:-none} want=$want"
				ok=0
			fi
			[ $# -ge 2 ] && shift 2
			j=$((j + 1))
		done
		[ $ok = 1 ] || bad=$((bad + 1))
		echo "$p $ok $bad $last" >/run/pass.new
		mv -f /run/pass.new /run/pass
		[ "$dirty_pause_us" -gt 0 ] && usleep "$dirty_pause_us"
	done
}
[ "$dirty_mb" -gt 0 ] && dirtier </dev/null >/dev/null 2>&1 &

# The data disk (see the header): mounted only if it is ext4.
data=0
if [ -b /dev/vda ] && mkdir -p /data && mount -t ext4 /dev/vda /data 2>/dev/null; then
	data=1
	mkdir -p /data/w
	echo "VMOPS-GUEST: data disk mounted"
fi
# Record n: 2048 identical fixed-width lines.
record() {
	yes "$(printf 'vmops-data %010d' "$1")" | head -n 2048
}
# The 8 records up to n (slots (n-7..n) % 64) consistent: echo 1, else 0.
# (Bounded work: the host checks every slot through debugfs.)
check_slots() {
	k=$(($1 - 7))
	[ $k -lt 1 ] && k=1
	while [ $k -le "$1" ]; do
		f=/data/w/$((k % 64))
		set -- "$1" $(uniq "$f" | wc -l) $(wc -c <"$f") $(head -n 1 "$f")
		[ "$2" = 1 ] && [ "$3" = 45056 ] && [ "$4" = vmops-data ] || { echo 0; return; }
		[ $((1$5 % 10000000000)) = $k ] || { echo 0; return; }
		k=$((k + 1))
	done
	echo 1
}
datawriter() {
	n=0 bad=0
	[ -f /data/last ] && read -r n </data/last
	case $n in '' | *[!0-9]*) n=0 ;; esac
	while :; do
		n=$((n + 1))
		s=$((n % 64))
		record $n >/data/w/$s.new
		mv -f /data/w/$s.new /data/w/$s
		echo $n >/data/last.new
		mv -f /data/last.new /data/last
		ok=1
		if [ $((n % 8)) = 0 ]; then
			ok=$(check_slots $n)
			[ "$ok" = 1 ] || bad=$((bad + 1))
			echo "$n $ok $bad" >/run/data.new
			mv -f /run/data.new /run/data
		fi
		usleep 200000
	done
}
[ $data = 1 ] && datawriter </dev/null >/dev/null 2>&1 &

if [ -x /usr/sbin/qemu-ga ] && [ "$qga_mode" != off ]; then
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
		hook=
		if [ "$qga_mode" = slowfreeze ]; then
			printf '#!/bin/sh\n[ "$1" = freeze ] && sleep %s\nexit 0\n' "$freeze_delay_s" >/run/qga/hook
			chmod 755 /run/qga/hook
			hook=/run/qga/hook
		fi
		/usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 \
			-t /run/qga -f /run/qga/qemu-ga.pid -l /run/qga/qemu-ga.log \
			${hook:+-F"$hook"} </dev/null >/dev/null 2>&1 &
		qpid=$!
		# The dirtier and the data writer fork flat out on one vCPU that a
		# busy host (TCG, make check's two lanes) may give little time: the
		# agent goes first, as a real guest's would against batch work.
		renice -n -10 -p $qpid >/dev/null 2>&1
		echo "VMOPS-GUEST: qemu-ga started ($qga_mode)"
		if [ "$qga_mode" = stopped ]; then
			sleep 1
			kill -STOP $qpid
			echo "VMOPS-GUEST: qemu-ga stopped"
		fi
	fi
fi

# FILE OFFSET: invert one byte in place (vmops.corrupt_after).
flip() {
	set -- "$1" "$2" $(dd if="$1" bs=1 skip="$2" count=1 2>/dev/null | od -An -tu1)
	printf "\\$(printf %o $(($3 ^ 255)))" | dd of="$1" bs=1 seek="$2" count=1 conv=notrunc 2>/dev/null
}
corrupt() {
	flip /tmp/a $((static_mb * 524288 + 7))
	[ "$dirty_mb" -gt 0 ] && flip /tmp/seed/3 $((dirty_mb * 65536 + 7))
	echo "VMOPS-GUEST: corrupted one byte of the static region and of the dirtier's seed"
}
# Uptime in centiseconds, into $now (no fork).
now_cs() {
	read -r up _ </proc/uptime
	now=$((${up%.*} * 100 + 1${up#*.} - 100))
}

echo "VMOPS-GUEST-READY static_mb=$static_mb dirty_mb=$dirty_mb corrupt_after=$corrupt_after static=$boot"

n=0 sbad=0 seen=0
while :; do
	now_cs
	t0=$now
	n=$((n + 1))
	[ "$corrupt_after" -gt 0 ] && [ $n -eq $((corrupt_after + 1)) ] && corrupt
	set -- $(md5sum /tmp/a)
	sum=${1:-none} sok=1
	if [ "$sum" != "$boot" ]; then
		sok=0 sbad=$((sbad + 1))
		echo "CHECKSUM-MISMATCH static beat=$n got=$sum want=$boot"
	fi
	pass=0 pok=1 pbad=0 detail=
	[ -f /run/pass ] && read -r pass pok pbad detail </run/pass
	if [ "${pbad:-0}" -gt $seen ]; then
		echo "CHECKSUM-MISMATCH dirty beat=$n failed_passes=$pbad $detail"
		seen=$pbad
	fi
	echo "HEARTBEAT $n static=$sum static_ok=$sok pass=${pass:-0} pass_ok=${pok:-0} bad=$((sbad + ${pbad:-0}))"
	if [ $data = 1 ] && [ -f /run/data ]; then
		read -r dn dok dbad </run/data
		echo "VMOPS-DATA n=$dn ok=$dok bad=$dbad"
	fi
	now_cs
	left=$((100 - (now - t0)))
	[ $left -gt 0 ] && usleep $((left * 10000))
done
EOF
chmod 755 init

# --- pack ------------------------------------------------------------------------------

find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -0 -H newc -R 0:0 | gzip -1 >"$work/initrd.img"
# The kernel's ELF image when it has a PVH entry: QEMU starts it directly,
# without firmware boot code or the kernel's decompressor, which under TCG
# take 5-10 s of every boot.  Otherwise the bzImage as it is.
if "$here/unpack-kernel.py" "$kernel" "$work/vmlinuz"; then
	kform="ELF image, PVH entry"
else
	cp "$kernel" "$work/vmlinuz"
	kform="bzImage"
fi
mv -f "$work/vmlinuz" "$outdir/vmlinuz"
mv -f "$work/initrd.img" "$outdir/initrd.img"
echo "$key" >"$outdir/stamp"
echo "build-guest: built $outdir (kernel $kver as $kform, qemu-ga: $([ $have_qga = 1 ] && echo yes || echo no), initrd $(wc -c <"$outdir/initrd.img") bytes)" >&2
echo "VMOPS_TEST_KERNEL=$outdir/vmlinuz"
echo "VMOPS_TEST_INITRD=$outdir/initrd.img"
