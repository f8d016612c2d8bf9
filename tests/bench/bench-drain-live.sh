#!/bin/sh
# A real drain: ${VMOPS_BENCH_DRAIN_GUESTS:-6} test guests (128 MiB, TCG, the
# dirtier on) on worker w1, two targets, `vm-drain --max-parallel 2`;
# reports the plan's estimate (planned_s, at --rate) against the measured
# time (elapsed_s), per sandbox the move's wall time, and checks that the
# worker ended drained and every guest kept beating.  Needs QEMU and the
# test guest (tests/guest/build-guest.sh).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
[ -n "${VMOPS_TEST_PGHOST:-}" ] || exec tests/pgcluster.sh "$0" "$@"
n=${VMOPS_BENCH_DRAIN_GUESTS:-6}
rate=${VMOPS_BENCH_DRAIN_RATE:-100M/s}
db=drain_bench
tmp=$(mktemp -d /tmp/vmops-bench-drain.XXXXXX)
# Stop this bench's guests by the pids the database recorded for them.
cleanup() {
	set +e
	for p in $(psql -qAtX -d "$db" -c "SELECT pid FROM vmms WHERE pid IS NOT NULL" 2>/dev/null); do
		kill -9 "$p" 2>/dev/null
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
eval "$(tests/guest/build-guest.sh "$top/build/guest" 2>/dev/null | grep '^VMOPS_TEST_[A-Z]*=')"
export VMOPS_HOST_ID=bench-drain-host
psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
fleet() { bin/vm-fleet --db "dbname=$db" "$@"; }
fleet -q init
psql -qAtX -d "$db" -c "INSERT INTO workers (name, memory_mb, vcpus, run_dir, host_id) VALUES
  ('w1', 8192, 16, '$tmp/w1', 'bench-drain-host'), ('w2', 8192, 16, '$tmp/w2', 'bench-drain-host'),
  ('w3', 8192, 16, '$tmp/w3', 'bench-drain-host')" >/dev/null
cat >"$tmp/spec.json" <<JSON
{"hypervisor": "qemu", "memory_mb": 128, "vcpus": 1, "kernel": "$VMOPS_TEST_KERNEL",
 "initrd": "$VMOPS_TEST_INITRD", "cmdline": "console=ttyS0 no_timer_check vmops.dirty_mb=16", "accel": "tcg"}
JSON
i=1
while [ $i -le "$n" ]; do
	fleet -q launch --sandbox "sb$i" --org bench --worker w1 --spec "$tmp/spec.json"
	i=$((i + 1))
done
# every guest beats before the drain (its serial log has a heartbeat)
for log in "$tmp"/w1/vmm-*/serial.log; do
	t=0
	until grep -q 'HEARTBEAT ' "$log" 2>/dev/null; do
		t=$((t + 1)); [ $t -lt 600 ] || { echo "bench-drain-live: no heartbeat in $log"; exit 1; }
		sleep 0.5
	done
done
echo "== vm-drain of $n guests (128 MiB, TCG), 2 targets, --max-parallel 2, plan at $rate"
rc=0
bin/vm-drain --db "dbname=$db" --json --rate "$rate" w1 >"$tmp/drain.json" 2>"$tmp/drain.err" || rc=$?
python3 - "$tmp/drain.json" "$rc" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["drain"]
print("exit %s, state %s, worker %s, moved %d of %d" % (sys.argv[2], r["state"], r["worker_state"], r["moved"], len(d["sandboxes"])))
print("planned %.1f s, measured %.1f s (measured / planned %.2f)" % (r["planned_s"], r["elapsed_s"], r["elapsed_s"] / r["planned_s"]))
PY
[ -s "$tmp/drain.err" ] && { echo "vm-drain's messages:"; cat "$tmp/drain.err"; }
psql -qAtX -d "$db" -c "SELECT s.name || ': ' || tw.name || ', ' || m.state || ', ' ||
    round(extract(epoch FROM m.time_finished - m.time_started)::numeric, 1) || ' s, downtime ' ||
    coalesce(m.downtime_ms::text, '-') || ' ms' || coalesce(', ' || m.error, '')
  FROM migrations m JOIN sandboxes s ON s.id = m.sandbox_id JOIN workers tw ON tw.id = m.target_worker_id
  ORDER BY m.time_started"
bad=$(psql -qAtX -d "$db" -c "SELECT count(*) FROM migrations a JOIN migrations b ON a.id < b.id
  AND a.target_worker_id = b.target_worker_id
  AND tstzrange(a.time_started + interval '100 ms', a.time_finished) && tstzrange(b.time_started + interval '100 ms', b.time_finished)")
echo "targets with two inbound at once: $bad"
sleep 3
for log in "$tmp"/w2/vmm-*/serial.log "$tmp"/w3/vmm-*/serial.log; do
	if grep -qE 'CHECKSUM-MISMATCH|Oops|BUG:|panic' "$log"; then echo "guest trouble in $log"; rc=1; fi
done
[ "$rc" = 0 ] && [ "$bad" = 0 ]
