#!/bin/sh
# Run a command against a throwaway PostgreSQL cluster:
#   tests/pgcluster.sh COMMAND [ARGS...]
# The cluster lives in a temp dir, listens on a UNIX socket only (no TCP),
# runs with fsync off, and is stopped and removed when COMMAND ends, also
# when it fails or is interrupted.  COMMAND sees PGHOST (the socket dir),
# PGPORT, PGUSER, PGDATABASE=postgres and VMOPS_TEST_PGHOST.
# PostgreSQL refuses to run as root: as root the server runs as the
# `postgres` user (or $VMOPS_PG_USER).  For tests that restart the server
# (tests/pg-restart.sh) COMMAND also sees VMOPS_TEST_PGBIN, the server's
# options (VMOPS_TEST_PGCTL_OPTS), the prefix that runs pg_ctl as the
# server's user (VMOPS_TEST_PGRUNAS, empty when not root) and
# VMOPS_TEST_PG_RESTART, the path of that script.
set -eu

PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
if [ ! -x "$PGBIN/initdb" ]; then
	echo "pgcluster: PostgreSQL server binaries not found (install the postgresql package)" >&2
	exit 1
fi

dir=$(mktemp -d /tmp/vmops-pg.XXXXXX)
chmod 755 "$dir"
runas=""
pguser=$(id -un)
if [ "$(id -u)" = 0 ]; then
	pguser=${VMOPS_PG_USER:-postgres}
	chown "$pguser" "$dir"
	runas="runuser -u $pguser --"
fi
port=$(( 20000 + $$ % 20000 ))

cleanup() {
	rc=$?
	trap - EXIT INT TERM
	$runas "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
	rm -rf "$dir"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

$runas "$PGBIN/initdb" -D "$dir/data" -A trust -U "$pguser" -E UTF8 --no-locale --no-sync \
	>"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
pgopts="-c listen_addresses='' -c unix_socket_directories='$dir' -p $port -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=256MB"
$runas "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -s -o "$pgopts" \
	start || { cat "$dir/server.log" >&2; exit 1; }

export PGHOST="$dir" PGPORT="$port" PGUSER="$pguser" PGDATABASE=postgres
export VMOPS_TEST_PGHOST="$dir"
export VMOPS_TEST_PGBIN="$PGBIN" VMOPS_TEST_PGCTL_OPTS="$pgopts" VMOPS_TEST_PGRUNAS="$runas"
VMOPS_TEST_PG_RESTART="$(cd "$(dirname "$0")" && pwd)/pg-restart.sh"
export VMOPS_TEST_PG_RESTART
unset PGSERVICE PGPASSWORD PGHOSTADDR 2>/dev/null || true
"$@"
