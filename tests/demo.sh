#!/bin/sh
# `make demo`: the main job end to end on real parts — a throwaway
# PostgreSQL cluster, two workers on this machine, two real QEMU guests
# (a tiny Linux built from Debian packages, under TCG), and a live
# migration of one of them with the database showing every step.
# Everything it starts is stopped and removed at the end.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ -z "${VMOPS_TEST_PGHOST:-}" ]; then
	exec tests/pgcluster.sh "$0" "$@"
fi
PATH="$top/bin:$PATH"
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
 "cmdline": "console=ttyS0 vmops.dirty_mb=32"}
SPEC

bold "a throwaway PostgreSQL at $PGHOST; the fleet schema"
show vm-fleet init
bold "two workers on this machine"
show vm-fleet worker add worker-a --memory 1G --vcpus 2 --run-dir "$run/worker-a" --image-dirs "$top/build/guest"
show vm-fleet worker add worker-b --memory 1G --vcpus 2 --run-dir "$run/worker-b" --image-dirs "$top/build/guest"
bold "two real QEMU VMs on worker-a: capacity reserved, then launched, then billed"
show vm-fleet launch --sandbox demo-1 --org acme --worker worker-a --spec "$run/spec.json"
show vm-fleet launch --sandbox demo-2 --org acme --worker worker-a --spec "$run/spec.json"
bold "admission is the database's job: a third 768 MiB VM does not fit"
sed 's/"memory_mb": 256/"memory_mb": 768/' "$run/spec.json" >"$run/big.json"
show vm-fleet launch --sandbox demo-3 --org acme --worker worker-a --spec "$run/big.json" || echo "(refused, exit $?)"

# A sandbox's serial log, by what the database says runs it (not by file
# names or times: every guest writes its log every second).
serial_of() { echo "$(psql -XAtc "SELECT v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = '$1'")/serial.log"; }
log=$(serial_of demo-1)
printf '\nwaiting for demo-1 to boot and write its heartbeat'
i=0
until grep -q 'HEARTBEAT 2 ' "$log" 2>/dev/null; do
	i=$((i + 1)); [ $i -gt 120 ] && { echo " (no heartbeat after 120s)"; exit 1; }
	printf .; sleep 1
done
echo; grep -ao 'HEARTBEAT .*' "$log" | tr -d '\r' | tail -n1
# The static region's checksum at boot (markers may follow console junk).
boot=$(grep -ao 'VMOPS-GUEST-READY.* static=[0-9a-f]*' "$log" | head -n1 | sed 's/.* static=//')
show vm-fleet list

bold "live-migrate demo-1: worker-b is the only target with room"
show vm-migrate demo-1 --connections 2
bold "the guest goes on on worker-b: same heartbeat sequence, its memory checks pass"
echo "(static: the md5 of a region written at boot, measured at every beat; pass: the"
echo " last pass of rewritten data the guest verified; bad: failed checks since boot)"
tlog=$(serial_of demo-1)
i=0
until [ "$(grep -ac 'HEARTBEAT [0-9]* static=' "$tlog" 2>/dev/null || :)" -ge 3 ] 2>/dev/null; do
	i=$((i + 1)); [ $i -gt 60 ] && { echo "no heartbeats on worker-b after 60s"; exit 1; }
	sleep 1
done
grep -ao 'HEARTBEAT .*' "$tlog" | tr -d '\r' | tail -n2
if grep -aqE 'Oops|BUG:|panic|CHECKSUM-MISMATCH|VMOPS-GUEST-ERROR' "$tlog" ||
   grep -ao 'HEARTBEAT .*' "$tlog" | tr -d '\r' |
	grep -qv "^HEARTBEAT [0-9]* static=$boot static_ok=1 pass=[0-9]* pass_ok=1 bad=0\$"; then
	echo "guest on worker-b is unhealthy!"; exit 1
fi
echo "static checksum as at boot ($boot), every heartbeat OK"
show vm-fleet list
show vm-fleet worker list
bold "the database: the attempt, the ledger (source event closed, target event open)"
psql -X -P pager=off -c "SELECT id, state, connections_used AS conns, downtime_ms, bytes_transferred, error FROM migrations"
psql -X -P pager=off -c "SELECT s.name, e.worker_id, e.vmm_id, e.started_at::time(0), e.ended_at::time(0) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id ORDER BY e.id"
psql -X -P pager=off -c "SELECT id, state, pid, time_deleted IS NOT NULL AS reaped FROM vmms ORDER BY id"
if [ -x bin/vmm-reap ]; then
	bold "vmm-reap cleans the abandoned source VMM's reservation"
	show vmm-reap
fi
if [ -x bin/snapshot-prep ]; then
	bold "hibernate demo-2: quiesce, pause, snapshot, bundle; then sandbox hibernated, billing closed, QEMU stopped"
	mkdir -p "$run/bundles"
	log2=$(serial_of demo-2)
	boot2=$(grep -ao 'VMOPS-GUEST-READY.* static=[0-9a-f]*' "$log2" | head -n1 | sed 's/.* static=//')
	before=$(grep -ao 'HEARTBEAT [0-9]*' "$log2" | tail -n1 | sed 's/HEARTBEAT //')
	show snapshot-prep hibernate --sandbox demo-2 --bundle-dir "$run/bundles"
	show vm-fleet list
	psql -X -P pager=off -c "SELECT s.name, s.status, count(e.id) FILTER (WHERE e.ended_at IS NULL) AS open_events FROM sandboxes s LEFT JOIN scale_events e ON e.sandbox_id = s.id GROUP BY s.name, s.status ORDER BY s.name"
	psql -X -P pager=off -c "SELECT id, state, size_bytes, left(sha256, 16) AS sha256, location FROM snapshots"
	bold "wake demo-2 on worker-b: admitted there, restored from the bundle, billed again"
	show snapshot-prep wake --sandbox demo-2 --worker worker-b
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
