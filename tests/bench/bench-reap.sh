#!/bin/sh
# vmm-reap throughput against a per-row loop, side by side on two copies of
# the same fleet (tests/bench/gen-fleet.sql: 1,000,000 VMMs, 100,000
# abandoned).  The loop does what a typical background task does: list the
# abandoned VMMs, then one DELETE of the reservation and one UPDATE of the
# VMM per VMM, each statement its own transaction and round trip (psql over
# the UNIX socket: the cheapest round trip there is).  vmm-reap does the same
# work plus one audit row per VMM.  Then four vmm-reaps at once on a third
# copy.  Prints the figures; fails when the counts do not add up, and says
# whether vmm-reap reached the goal of 20 times the loop's throughput.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
[ -n "${VMOPS_TEST_PGHOST:-}" ] || exec tests/pgcluster.sh "$0" "$@"

src=${VMOPS_BENCH_DB:-vmops_bench}
tests/bench/gen-fleet.sh
tmp=$(mktemp -d /tmp/vmops-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
ms() { echo $(( $(date +%s%N) / 1000000 )); }
abandoned="v.state IN ('destroyed', 'failed') AND v.time_deleted IS NULL
	AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.active_vmm_id = v.id)
	AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.target_vmm_id = v.id)"
count() { psql -qAtX -d "$1" -c "SELECT count(*) FROM vmms v WHERE $abandoned"; }

for d in reap_loop reap_set reap_four; do
	PGOPTIONS=-cclient_min_messages=warning psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $d" -c "CREATE DATABASE $d TEMPLATE $src" >/dev/null
done
n=$(count reap_set)
echo "bench-reap: $n abandoned VMMs of $(psql -qAtX -d reap_set -c 'SELECT count(*) FROM vmms')"

# The per-row loop: list, then two statements per VMM.
t0=$(ms)
psql -qAtX -d reap_loop -c "SELECT format('DELETE FROM reservations WHERE vmm_id = %s;' || chr(10) ||
	'UPDATE vmms SET time_deleted = now() WHERE id = %s AND time_deleted IS NULL;', v.id, v.id)
	FROM vmms v WHERE $abandoned ORDER BY v.id" >"$tmp/loop.sql"
psql -qX -v ON_ERROR_STOP=1 -d reap_loop -f "$tmp/loop.sql" >/dev/null
t_loop=$(( $(ms) - t0 ))

# vmm-reap, default batch.
t0=$(ms)
bin/vmm-reap --db dbname=reap_set --json >"$tmp/set.json"
t_set=$(( $(ms) - t0 ))
deleted=$(sed -n 's/.*"vmms_deleted":[[:space:]]*\([0-9]*\).*/\1/p' "$tmp/set.json")

# Four vmm-reaps at once.
t0=$(ms)
for i in 1 2 3 4; do
	bin/vmm-reap --db dbname=reap_four --json >"$tmp/four.$i.json" &
done
wait
t_four=$(( $(ms) - t0 ))
sum=0
errs=0
for i in 1 2 3 4; do
	d=$(sed -n 's/.*"vmms_deleted":[[:space:]]*\([0-9]*\).*/\1/p' "$tmp/four.$i.json")
	e=$(sed -n 's/.*"errors":[[:space:]]*\([0-9]*\).*/\1/p' "$tmp/four.$i.json")
	echo "bench-reap: concurrent reaper $i deleted $d, errors $e"
	sum=$((sum + d))
	errs=$((errs + e))
done

left_loop=$(count reap_loop)
left_set=$(count reap_set)
left_four=$(count reap_four)
twice=$(psql -qAtX -d reap_four -c "SELECT count(*) FROM (SELECT object_id FROM audit_log WHERE action = 'reap'
	GROUP BY object_id HAVING count(*) > 1) x")
rate() { echo "$1 $2" | awk '{ printf "%.0f", $1 * 1000 / ($2 > 0 ? $2 : 1) }'; }
ratio=$(echo "$t_loop $t_set" | awk '{ printf "%.1f", $1 / ($2 > 0 ? $2 : 1) }')
echo "bench-reap: per-row loop  $n VMMs in $t_loop ms: $(rate "$n" "$t_loop") VMMs/s (left: $left_loop)"
echo "bench-reap: vmm-reap      $deleted VMMs in $t_set ms: $(rate "$deleted" "$t_set") VMMs/s (left: $left_set)"
echo "bench-reap: 4 x vmm-reap  $sum VMMs in $t_four ms: $(rate "$sum" "$t_four") VMMs/s (left: $left_four, errors: $errs, deleted twice: $twice)"
echo "bench-reap: vmm-reap is ${ratio}x the per-row loop (goal: at least 20x)"

for d in reap_loop reap_set reap_four; do
	psql -qAtX -d postgres -c "DROP DATABASE $d" >/dev/null
done
ok=true
[ "$deleted" = "$n" ] && [ "$sum" = "$n" ] && [ "$errs" = 0 ] && [ "$twice" = 0 ] &&
	[ "$left_loop" = 0 ] && [ "$left_set" = 0 ] && [ "$left_four" = 0 ] || ok=false
if ! $ok; then echo "bench-reap: FAIL: counts do not add up"; exit 1; fi
# Timing goals depend on the machine and its load: reported, not gated.
if echo "$ratio" | awk '{ exit !($1 >= 20) }'; then echo "bench-reap: goal met (20x)"
else echo "bench-reap: GOAL NOT MET: ${ratio}x, under 20x"; fi
echo "bench-reap: ok (counts)"
