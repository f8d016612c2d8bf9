#!/bin/sh
# Restart the throwaway PostgreSQL of tests/pgcluster.sh, as a fault:
#   tests/pg-restart.sh
# Fast shutdown (every session is cut, as in a failover or a restart by an
# operator), then a start with the same options; returns once the server
# accepts connections again.  Only for suites that have the cluster to
# themselves (tests/run-all.sh runs test_pgrestart alone, with --jobs 1).
set -eu
: "${VMOPS_TEST_PGHOST:?run inside tests/pgcluster.sh}"
: "${VMOPS_TEST_PGBIN:?run inside tests/pgcluster.sh}"
# VMOPS_TEST_PGRUNAS is a command prefix ("runuser -u postgres --" or empty): split on purpose.
# shellcheck disable=SC2086
exec ${VMOPS_TEST_PGRUNAS:-} "$VMOPS_TEST_PGBIN/pg_ctl" -D "$VMOPS_TEST_PGHOST/data" \
	-l "$VMOPS_TEST_PGHOST/server.log" -m fast -w -s -t 60 -o "$VMOPS_TEST_PGCTL_OPTS" restart
