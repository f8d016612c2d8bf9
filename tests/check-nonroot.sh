#!/bin/sh
# Every program, run as an unprivileged user against the test cluster: the
# run directories are $XDG_RUNTIME_DIR/vmops/..., other users' /proc
# entries are unreadable, files are not ours.  As root (CI on a fresh
# machine) the programs run as `nobody` through setpriv; as anyone else
# they run as that user.  Never skipped.  Ends with "nonroot: N passed, N failed".
#   tests/check-nonroot.sh        (inside tests/pgcluster.sh, like run-all.sh)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ -z "${VMOPS_TEST_PGHOST:-}" ]; then
	exec tests/pgcluster.sh "$0" "$@"
fi
passed=0
failed=0
work=$(mktemp -d /tmp/vmops-nonroot.XXXXXX)
chmod 755 "$work"
db=nonroot_$$
psql -qAtX -c "CREATE DATABASE $db" >/dev/null || exit 1
# Binaries and the test guest where the unprivileged user can read them (the
# tree may be under /root); copies owned by root, 0755/0644: the launch-spec
# policy accepts root's files.
mkdir -p "$work/bin" "$work/images"
cp bin/* "$work/bin/" && chmod 755 "$work/bin" "$work/bin"/* "$work/images"
if [ -z "${VMOPS_SKIP_QEMU:-}" ] && [ -f build/guest/vmlinuz ]; then
	cp build/guest/vmlinuz build/guest/initrd.img "$work/images/" && chmod 644 "$work/images"/*
fi
if [ "$(id -u)" = 0 ]; then
	uid=65534
	gid=$(getent group nogroup >/dev/null && echo 65534 || id -g nobody)
	as() { setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"; }
else
	uid=$(id -u)
	as() { "$@"; }
fi
# Its own runtime directory, as pam_systemd would make it (/run/user/UID):
# every level above root's or its own, none writable by others unless sticky.
xdg=$(mktemp -d /tmp/vmops-xdg.XXXXXX)
chown "$uid" "$xdg" && chmod 700 "$xdg"
export VMOPS_HOST_ID=nonroot-host
DBC="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db"

# check NAME WANT-EXIT COMMAND...: run COMMAND as the unprivileged user.
check() {
	name=$1 want=$2
	shift 2
	out=$(as env -i PATH="$work/bin:/usr/bin:/bin" HOME=/nonexistent XDG_RUNTIME_DIR="$xdg" \
		VMOPS_HOST_ID="$VMOPS_HOST_ID" VMOPS_IMAGE_DIRS="$work/images" "$@" 2>&1)
	rc=$?
	if [ "$rc" -eq "$want" ]; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		echo "FAIL $name: exit $rc, wanted $want"
		echo "$out" | sed 's/^/  /' | head -20
	fi
}
# fact NAME TEST...: a condition on what the runs left behind.
fact() {
	name=$1
	shift
	if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $name"; fi
}

for p in vm-fleet vm-migrate vm-drain vmm-reap usage-parity ghost-reap snapshot-prep; do
	check "$p --help" 0 "$p" --help
	check "$p --version" 0 "$p" --version
done
check "vm-fleet init" 0 vm-fleet --db "$DBC" -q init
check "vm-fleet worker add" 0 vm-fleet --db "$DBC" -q worker add w1 --memory 1G --vcpus 2
check "vm-fleet worker add" 0 vm-fleet --db "$DBC" -q worker add w2 --memory 1G --vcpus 2
check "vm-fleet status" 0 vm-fleet --db "$DBC" status
check "vm-fleet register" 0 vm-fleet --db "$DBC" -q register --sandbox reg1 --org o --worker w2 --memory 128M --vcpus 1 --pid 1
# (a registered sandbox has no launch spec: refused, 10, after reading the database)
check "vm-migrate --dry-run" 10 vm-migrate --db "$DBC" reg1 --dry-run
check "vm-migrate --recover" 0 vm-migrate --db "$DBC" --recover
check "vm-drain --dry-run" 0 vm-drain --db "$DBC" w1 --dry-run
check "vmm-reap" 0 vmm-reap --db "$DBC"
check "usage-parity" 0 usage-parity --db "$DBC"
check "ghost-reap (other users' processes unreadable)" 0 ghost-reap --db "$DBC" --worker w1
check "snapshot-prep (no such sandbox)" 11 snapshot-prep --db "$DBC" prepare --sandbox nope
# A real VM as that user: run directory below $XDG_RUNTIME_DIR/vmops, private, gone after destroy.
if [ -f "$work/images/vmlinuz" ]; then
	cat >"$work/spec.json" <<SPEC
{"hypervisor": "qemu", "memory_mb": 128, "vcpus": 1, "accel": "tcg",
 "kernel": "$work/images/vmlinuz", "initrd": "$work/images/initrd.img", "cmdline": "console=ttyS0"}
SPEC
	chmod 644 "$work/spec.json"
	check "vm-fleet launch" 0 vm-fleet --db "$DBC" -q launch --sandbox vm1 --org o --worker w1 --spec "$work/spec.json"
	rd=$(psql -qAtX -d "$db" -c "SELECT run_dir FROM vmms v JOIN sandboxes s ON s.active_vmm_id = v.id WHERE s.name = 'vm1'")
	fact "run dir below \$XDG_RUNTIME_DIR/vmops ($rd)" [ "${rd#"$xdg/vmops/w1/vmm-"}" != "$rd" ]
	fact "run dir private to the user" [ "$(stat -c '%u %a' "$rd" 2>/dev/null)" = "$uid 700" ]
	fact "serial log written" [ -f "$rd/serial.log" ]
	check "vm-fleet destroy" 0 vm-fleet --db "$DBC" -q destroy vm1
	fact "run dir removed with its VMM" [ ! -e "$rd" ]
	check "vmm-reap" 0 vmm-reap --db "$DBC" -q
elif [ -z "${VMOPS_SKIP_QEMU:-}" ]; then
	failed=$((failed + 1))
	echo "FAIL no test guest in build/guest (set VMOPS_SKIP_QEMU=1 to leave the VM out)"
fi
# An unprivileged user cannot launch from images another user may write.
if [ -f "$work/images/vmlinuz" ]; then
	chmod 666 "$work/images/initrd.img"
	check "launch from a world-writable initrd is refused" 10 \
		vm-fleet --db "$DBC" launch --sandbox vm2 --org o --worker w1 --spec "$work/spec.json"
fi
psql -qAtX -c "DROP DATABASE $db" >/dev/null 2>&1
rm -rf --one-file-system "$work" "$xdg"
echo "nonroot: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
