#!/bin/sh
# usage-parity on the benchmark fleet (tests/bench/gen-fleet.sql: 10,000,000
# scale events over 100,000 sandboxes and 1,000 orgs, with planted drift):
# the hour that ends at the fleet's t_end (goal: under 2 s), then the whole
# table, each checked against bench_plants (every planted drift found,
# nothing else), the EXPLAIN ANALYZE plans of the whole-table run (via
# auto_explain) into build/bench/parity-plans.txt, and --fix on a copy.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
[ -n "${VMOPS_TEST_PGHOST:-}" ] || exec tests/pgcluster.sh "$0" "$@"

src=${VMOPS_BENCH_DB:-vmops_bench}
tests/bench/gen-fleet.sh
tmp=$(mktemp -d /tmp/vmops-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p build/bench
ms() { echo $(( $(date +%s%N) / 1000000 )); }
iso() { psql -qAtX -d "$src" -c "SELECT to_char(($1) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM bench_meta"; }
to=$(iso t_end)
from=$(iso "t_end - interval '1 hour'")
fail=false

# Compare the findings in $1 (JSON) with bench_plants; prints one line.
check() { # file label
	{
		printf '\\set j `cat %s`\n' "$1"
		cat <<'SQL'
WITH f AS (SELECT x->>'category' AS category, (x->>'sandbox_id')::bigint AS sandbox_id, x->>'org' AS org
             FROM json_array_elements((:'j')::json->'findings') x),
     hit AS (SELECT f.*, EXISTS (SELECT 1 FROM bench_plants p WHERE p.category = f.category
                AND (p.sandbox_id = f.sandbox_id OR (p.sandbox_id IS NULL AND p.org_id = f.org))) AS planted FROM f)
SELECT (SELECT count(*) FROM hit) || ' found, ' ||
       (SELECT count(*) FROM hit WHERE planted) || ' of ' || (SELECT count(*) FROM bench_plants) || ' planted, ' ||
       (SELECT count(*) FROM hit WHERE NOT planted) || ' not planted'
SQL
	} | psql -qAtX -d "$src"
}
expect() { # "F found, P of N planted, X not planted": all N found, nothing else
	set -- $1
	[ "$1" = "$5" ] && [ "$3" = "$5" ] && [ "$7" = 0 ] || fail=true
}

echo "bench-parity: window $from to $to"
for i in 1 2 3; do
	t0=$(ms)
	rc=0; bin/usage-parity --db "dbname=$src" --json --from "$from" --to "$to" >"$tmp/hour.json" || rc=$?
	t=$(( $(ms) - t0 )); printf '%s ' "$t" >>"$tmp/times"
	echo "bench-parity: one hour, run $i: $t ms, exit $rc"
done
line=$(check "$tmp/hour.json"); expect "$line"
best=$(tr ' ' '\n' <"$tmp/times" | sort -n | head -n1)
if [ "$best" -lt 2000 ]; then echo "bench-parity: one hour: best $best ms, goal met (under 2 s)"
else echo "bench-parity: one hour: best $best ms, GOAL NOT MET (under 2 s)"; fi
echo "bench-parity: one hour: $line"
sed -n '/"totals"/,/"summary"/p' "$tmp/hour.json" | tr -d ' \t\n' | sed 's/},{/}\n{/g; s/"totals":\[//; s/\],"summary":.*//' |
	sed 's/^/bench-parity:   /'; echo

t0=$(ms)
rc=0; bin/usage-parity --db "dbname=$src" --json --from @0 --to "$to" >"$tmp/all.json" || rc=$?
echo "bench-parity: whole table: $(( $(ms) - t0 )) ms, exit $rc"
line=$(check "$tmp/all.json"); expect "$line"
echo "bench-parity: whole table: $line"

# The plans, from auto_explain, sent to usage-parity's stderr as notices.
PGOPTIONS="-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0
	-c auto_explain.log_analyze=on -c auto_explain.log_buffers=on -c auto_explain.log_level=notice" \
	bin/usage-parity --db "dbname=$src" --from @0 --to "$to" -q 2>build/bench/parity-plans.txt || true
PGOPTIONS="-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0
	-c auto_explain.log_analyze=on -c auto_explain.log_buffers=on -c auto_explain.log_level=notice" \
	bin/usage-parity --db "dbname=$src" --from "$from" --to "$to" -q 2>build/bench/parity-plans-hour.txt || true
echo "bench-parity: plans in build/bench/parity-plans.txt (whole table) and parity-plans-hour.txt"

# --fix on a copy: everything but org_usage is repairable.
PGOPTIONS=-cclient_min_messages=warning psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS parity_fix" -c "CREATE DATABASE parity_fix TEMPLATE $src" >/dev/null
t0=$(ms)
rc=0; bin/usage-parity --db dbname=parity_fix --json --from "$from" --to "$to" --fix >"$tmp/fix.json" || rc=$?
t_fix=$(( $(ms) - t0 ))
fixed=$(sed -n '/"summary"/,$p' "$tmp/fix.json" | sed -n 's/.*"fixed":[[:space:]]*\([0-9]*\).*/\1/p')
remaining=$(sed -n 's/.*"remaining":[[:space:]]*\([0-9]*\).*/\1/p' "$tmp/fix.json")
audit=$(psql -qAtX -d parity_fix -c "SELECT count(*) FROM audit_log")
echo "bench-parity: --fix: $t_fix ms, exit $rc, fixed $fixed, remaining $remaining (the org_usage plants), audit rows $audit"
[ "$rc" = 3 ] && [ "$remaining" = 200 ] && [ "$fixed" = 1490 ] && [ "$audit" = 1490 ] || fail=true
rc=0; bin/usage-parity --db dbname=parity_fix --json --from "$from" --to "$to" >"$tmp/after.json" || rc=$?
echo "bench-parity: after --fix: exit $rc, $(grep -c '"category":[[:space:]]*"org_usage"' "$tmp/after.json") org_usage rows (200 findings + 1 totals row expected)"
psql -qAtX -d postgres -c "DROP DATABASE parity_fix" >/dev/null

if $fail; then echo "bench-parity: FAIL"; exit 1; fi
echo "bench-parity: ok"
