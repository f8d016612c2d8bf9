#!/bin/sh
# `make demo`: the main job end to end on real parts — a throwaway
# PostgreSQL cluster, three workers on this machine, two real QEMU guests
# (a tiny Linux built from Debian packages, under TCG) on the first one,
# a live drain of that worker while the guests keep running (the worker
# drained after the count, the ledger moved, usage-parity clean), then a
# hibernate and a wake, with the database showing every step.
# Everything it starts is stopped and removed at the end.
# Slow machines (2 cores, TCG): one move at a time, generous waits.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ -z "${VMOPS_TEST_PGHOST:-}" ]; then
	exec tests/pgcluster.sh "$0" "$@"
fi
PATH="$top/bin:$PATH"
# vm-drain counts a worker's processes only on a host shown to be that
# worker: its identity is /etc/machine-id.  A machine without one (a bare
# chroot, some containers) gets a fixed identity for this run.
if [ -z "${VMOPS_HOST_ID:-}" ] && ! [ -s /etc/machine-id ] && ! [ -s /var/lib/dbus/machine-id ]; then
	VMOPS_HOST_ID=vmops-demo-host
	export VMOPS_HOST_ID
	echo "demo: this machine has no /etc/machine-id: VMOPS_HOST_ID=$VMOPS_HOST_ID for this run"
fi
run=$(mktemp -d /tmp/vmops-demo.XXXXXX)
bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { echo "\$ $*"; "$@"; }
cleanup() {
	for s in demo-1 demo-2; do vm-fleet -q destroy "$s" >/dev/null 2>&1 || true; done
	rm -rf "$run"
}
trap cleanup EXIT

bold "building the test guest (cached in build/guest)"
eval "$(tests/guest/build-guest.sh "$top/build/guest" | grep '^VMOPS_TEST_[A-Z]*=')"
cat >"$run/spec.json" <<SPEC
{"hypervisor": "qemu", "memory_mb": 256, "vcpus": 1, "accel": "tcg",
 "kernel": "$VMOPS_TEST_KERNEL", "initrd": "$VMOPS_TEST_INITRD",
 "cmdline": "console=ttyS0 no_timer_check vmops.dirty_mb=16"}
SPEC

bold "a throwaway PostgreSQL at $PGHOST; the fleet schema"
show vm-fleet init
bold "three workers on this machine"
show vm-fleet worker add worker-a --memory 1G --vcpus 2 --run-dir "$run/worker-a" --image-dirs "$top/build/guest"
show vm-fleet worker add worker-b --memory 1G --vcpus 2 --run-dir "$run/worker-b" --image-dirs "$top/build/guest"
show vm-fleet worker add worker-c --memory 1G --vcpus 2 --run-dir "$run/worker-c" --image-dirs "$top/build/guest"
bold "two real QEMU VMs on worker-a: capacity reserved, then launched, then billed"
show vm-fleet launch --sandbox demo-1 --org acme --worker worker-a --spec "$run/spec.json"
show vm-fleet launch --sandbox demo-2 --org acme --worker worker-a --spec "$run/spec.json"
bold "admission is the database's job: a third 768 MiB VM does not fit"
sed 's/"memory_mb": 256/"memory_mb": 768/' "$run/spec.json" >"$run/big.json"
show vm-fleet launch --sandbox demo-3 --org acme --worker worker-a --spec "$run/big.json" || echo "(refused, exit $?)"

# A sandbox's serial log, by what the database says runs it (not by file
# names or times: every guest writes its log every second).
serial_of() { echo "$(psql -XAtc "SELECT v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = '$1'")/serial.log"; }
# Wait until a guest beats (heartbeat number above $2); print its last beat.
wait_beat() {
	printf '\nwaiting for %s to boot and write its heartbeat' "$1"
	i=0
	until [ "$(grep -ao 'HEARTBEAT [0-9]* static=' "$(serial_of "$1")" 2>/dev/null |
		sed 's/HEARTBEAT \([0-9]*\).*/\1/' | tail -n1)" -gt "$2" ] 2>/dev/null; do
		i=$((i + 1)); [ $i -gt 300 ] && { echo " (no heartbeat after 300s)"; exit 1; }
		printf .; sleep 1
	done
	echo; grep -ao 'HEARTBEAT .*' "$(serial_of "$1")" | tr -d '\r' | tail -n1
}
# The static region's checksum at boot (markers may follow console junk).
boot_sum() { grep -ao 'VMOPS-GUEST-READY.* static=[0-9a-f]*' "$(serial_of "$1")" | head -n1 | sed 's/.* static=//'; }
last_beat() { grep -ao 'HEARTBEAT [0-9]*' "$(serial_of "$1")" | tail -n1 | sed 's/HEARTBEAT //'; }
# The guest goes on where it runs now: 3 new heartbeats after $2, every one
# reporting its memory checks OK with the boot checksum $3.
check_goes_on() {
	i=0
	until [ "$(last_beat "$1")" -ge $(($2 + 3)) ] 2>/dev/null; do
		i=$((i + 1)); [ $i -gt 120 ] && { echo "$1: no new heartbeats after 120s"; exit 1; }
		sleep 1
	done
	l=$(serial_of "$1")
	grep -ao 'HEARTBEAT .*' "$l" | tr -d '\r' | tail -n1 | sed "s/^/$1: /"
	if grep -aqE 'Oops|BUG:|panic|CHECKSUM-MISMATCH|VMOPS-GUEST-ERROR' "$l" ||
	   grep -ao 'HEARTBEAT .*' "$l" | tr -d '\r' |
		grep -qv "^HEARTBEAT [0-9]* static=$3 static_ok=1 pass=[0-9]* pass_ok=1 bad=0\$"; then
		echo "$1 is unhealthy on its new worker!"; exit 1
	fi
}
wait_beat demo-1 1
wait_beat demo-2 1
boot1=$(boot_sum demo-1)
boot2=$(boot_sum demo-2)
show vm-fleet list

bold "drain worker-a, live: the plan first (largest first, to the most free room, one inbound per target)"
show vm-drain --dry-run --max-parallel 1 worker-a
bold "now for real: worker-a is draining (no new placements); its guests keep running while they move"
before1=$(last_beat demo-1)
before2=$(last_beat demo-2)
show vm-drain --max-parallel 1 worker-a
bold "the guests went on on their new workers: heartbeats continue, memory checks pass"
echo "(static: the md5 of a region written at boot, measured at every beat; pass: the"
echo " last pass of rewritten data the guest verified; bad: failed checks since boot)"
check_goes_on demo-1 "$before1" "$boot1"
check_goes_on demo-2 "$before2" "$boot2"
echo "demo-1 (heartbeat $before1 before the drain) and demo-2 ($before2): heartbeats go on on the new workers,"
echo "static checksums as at boot, every heartbeat OK"
bold "worker-a is drained: counted empty in the database and in /proc first"
show vm-fleet worker list
show vm-fleet list
psql -X -P pager=off -c "SELECT d.id, w.name AS worker, d.state, d.runs, d.time_finished::time(0) AS finished FROM drains d JOIN workers w ON w.id = d.worker_id"
psql -X -P pager=off -c "SELECT s.name, x.outcome, x.attempts, t.name AS target, x.migration_id FROM drain_sandboxes x JOIN sandboxes s ON s.id = x.sandbox_id LEFT JOIN workers t ON t.id = x.target_worker_id ORDER BY s.name"
bold "the ledger moved with them: each source event closed on worker-a, one open event on the new worker"
psql -X -P pager=off -c "SELECT id, state, connections_used AS conns, downtime_ms, bytes_transferred, error FROM migrations"
psql -X -P pager=off -c "SELECT s.name, w.name AS worker, e.vmm_id, e.started_at::time(0), e.ended_at::time(0) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id JOIN workers w ON w.id = e.worker_id ORDER BY s.name, e.id"
psql -X -P pager=off -c "SELECT id, state, pid, time_deleted IS NOT NULL AS reaped FROM vmms ORDER BY id"
bold "usage-parity: no billing drift (the ledger's invariants now; usage over the last full hour)"
show usage-parity
if [ -x bin/vmm-reap ]; then
	bold "vmm-reap removes the destroyed source VMMs' rows (the moves freed their reservations)"
	show vmm-reap
fi
if [ -x bin/snapshot-prep ]; then
	bold "hibernate demo-2: quiesce, pause, snapshot, bundle; then sandbox hibernated, billing closed, QEMU stopped"
	mkdir -p "$run/bundles"
	before=$(last_beat demo-2)
	show snapshot-prep hibernate --sandbox demo-2 --bundle-dir "$run/bundles"
	show vm-fleet list
	psql -X -P pager=off -c "SELECT s.name, s.status, count(e.id) FILTER (WHERE e.ended_at IS NULL) AS open_events FROM sandboxes s LEFT JOIN scale_events e ON e.sandbox_id = s.id GROUP BY s.name, s.status ORDER BY s.name"
	psql -X -P pager=off -c "SELECT id, state, size_bytes, left(sha256, 16) AS sha256, location FROM snapshots"
	bold "wake demo-2 on the active worker with the most room: admitted there, restored from the bundle, billed again"
	show snapshot-prep wake --sandbox demo-2
	show vm-fleet list
	wlog=$(serial_of demo-2)
	i=0
	until [ "$(grep -ac 'HEARTBEAT [0-9]* static=' "$wlog" 2>/dev/null || :)" -ge 3 ] 2>/dev/null; do
		i=$((i + 1)); [ $i -gt 60 ] && { echo "no heartbeats after the wake after 60s"; exit 1; }
		sleep 1
	done
	grep -ao 'HEARTBEAT .*' "$wlog" | tr -d '\r' | tail -n2
	first=$(grep -ao 'HEARTBEAT [0-9]*' "$wlog" | head -n1 | sed 's/HEARTBEAT //')
	if [ "$first" -le "$before" ] || grep -aqE 'Oops|BUG:|panic|CHECKSUM-MISMATCH|VMOPS-GUEST-ERROR' "$wlog" ||
	   grep -ao 'HEARTBEAT .*' "$wlog" | tr -d '\r' |
		grep -qv "^HEARTBEAT [0-9]* static=$boot2 static_ok=1 pass=[0-9]* pass_ok=1 bad=0\$"; then
		echo "woken guest is unhealthy!"; exit 1
	fi
	echo "heartbeats go on from $before (before hibernating), static checksum as at boot ($boot2), every heartbeat OK"
	psql -X -P pager=off -c "SELECT s.name, e.worker_id, e.vmm_id, e.started_at::time(0), e.ended_at::time(0) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id WHERE s.name = 'demo-2' ORDER BY e.id"
fi
bold "destroy both VMs (billing closes with the status)"
show vm-fleet destroy demo-1
show vm-fleet destroy demo-2
show vm-fleet status
