#!/bin/sh
# Make sure the benchmark fleet exists: database ${VMOPS_BENCH_DB:-vmops_bench}
# with the vmops schema and tests/bench/gen-fleet.sql's data at
# ${VMOPS_BENCH_SANDBOXES:-100000} sandboxes.  Does nothing when it exists.
# Runs inside tests/pgcluster.sh (it starts one when PGHOST is not set up).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
[ -n "${VMOPS_TEST_PGHOST:-}" ] || exec tests/pgcluster.sh "$0" "$@"

db=${VMOPS_BENCH_DB:-vmops_bench}
n=${VMOPS_BENCH_SANDBOXES:-100000}

if [ "$(psql -qAtX -d postgres -c "SELECT count(*) FROM pg_database WHERE datname = '$db'")" = 1 ] &&
   [ "$(psql -qAtX -d "$db" -c "SELECT to_regclass('bench_meta') IS NOT NULL")" = t ]; then
	exit 0
fi
# Bulk load settings for the throwaway cluster.
psql -qAtX -d postgres -c "ALTER SYSTEM SET max_wal_size = '16GB'" \
	-c "ALTER SYSTEM SET checkpoint_timeout = '30min'" -c "SELECT pg_reload_conf()" >/dev/null
PGOPTIONS=-cclient_min_messages=warning psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
bin/vm-fleet --db "dbname=$db" -q init
echo "gen-fleet: generating $n sandboxes into $db"
t0=$(date +%s)
psql -qX -v ON_ERROR_STOP=1 -v sandboxes="$n" -d "$db" -f tests/bench/gen-fleet.sql >"${TMPDIR:-/tmp}/gen-fleet.$$.log" 2>&1 || {
	cat "${TMPDIR:-/tmp}/gen-fleet.$$.log" >&2
	rm -f "${TMPDIR:-/tmp}/gen-fleet.$$.log"
	exit 1
}
tail -n 4 "${TMPDIR:-/tmp}/gen-fleet.$$.log" | head -n 3
rm -f "${TMPDIR:-/tmp}/gen-fleet.$$.log"
echo "gen-fleet: done in $(( $(date +%s) - t0 )) s"
