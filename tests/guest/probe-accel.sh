#!/bin/sh
# SPDX-License-Identifier: MIT
#
# probe-accel.sh [GUESTDIR] [DEADLINE_SECONDS]
#
# Print "kvm" only if a KVM boot of the test guest reaches its ready marker
# (VMOPS-GUEST-READY on the serial console) within the deadline; otherwise
# print "tcg".  /dev/kvm existing proves nothing: a paravirtualised KVM may
# open fine and still not boot a stock kernel usefully.
#
# GUESTDIR is a build-guest.sh output directory (built or refreshed here;
# default ${TMPDIR:-/tmp}/vmops-guest).  DEADLINE_SECONDS defaults to 20: a
# KVM boot of this guest takes a second or two, TCG about six.
# Diagnostics go to stderr; stdout carries only the answer.

set -u

here=$(cd "$(dirname "$0")" && pwd)
guestdir=${1:-${TMPDIR:-/tmp}/vmops-guest}
deadline=${2:-20}
qemu=${VMOPS_QEMU_BINARY:-qemu-system-x86_64}

answer() {
	echo "$1"
	exit 0
}

note() {
	echo "probe-accel: $*" >&2
}

case $deadline in '' | *[!0-9]*) note "bad deadline '$deadline'"; exit 2 ;; esac

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
	note "/dev/kvm not accessible"
	answer tcg
fi
command -v "$qemu" >/dev/null 2>&1 || { note "$qemu not found"; answer tcg; }
if ! sh "$here/build-guest.sh" "$guestdir" >/dev/null; then
	note "cannot build the test guest"
	answer tcg
fi

run=$(mktemp -d "${TMPDIR:-/tmp}/vmops-probe.XXXXXX") || answer tcg
pid=
# shellcheck disable=SC2317 # called from the trap
cleanup() {
	if [ -n "$pid" ]; then
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	fi
	rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

"$qemu" -nodefaults -no-user-config -nographic -display none \
	-accel kvm -m 256 -smp 1 \
	-kernel "$guestdir/vmlinuz" -initrd "$guestdir/initrd.img" \
	-append "console=ttyS0 no_timer_check vmops.dirty_mb=1" \
	-serial "file:$run/serial.log" -name vmops-probe \
	</dev/null >"$run/qemu.log" 2>&1 &
pid=$!

end=$(($(date +%s) + deadline))
while [ "$(date +%s)" -lt "$end" ]; do
	if grep -q VMOPS-GUEST-READY "$run/serial.log" 2>/dev/null; then
		note "kvm boot reached the ready marker"
		answer kvm
	fi
	if ! kill -0 "$pid" 2>/dev/null; then
		note "qemu -accel kvm exited: $(tail -n 1 "$run/qemu.log" 2>/dev/null)"
		answer tcg
	fi
	sleep 0.2
done
note "kvm boot did not reach the ready marker within ${deadline}s"
answer tcg
