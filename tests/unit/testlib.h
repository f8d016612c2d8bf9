/* SPDX-License-Identifier: MIT */
/*
 * Test helpers shared by the Criterion suites.
 *
 * The suite runs inside tests/pgcluster.sh (PGHOST points at a throwaway
 * cluster).  tests/run-all.sh creates the database `vmops_template` with the
 * schema applied; testdb_new() copies it (fast) or template0 (empty).
 */
#ifndef VMOPS_TESTLIB_H
#define VMOPS_TESTLIB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

/* A fresh database; `conninfo` receives "host=... port=... dbname=...". */
PGconn *testdb_new(bool with_schema, char *conninfo, size_t len);

/* Run SQL that must succeed (cr_assert on failure); returns the result. */
PGresult *testdb_exec(PGconn *c, const char *sql);
/* First column of the first row as a number. */
long long testdb_ll(PGconn *c, const char *sql);
/* Run SQL that must fail; returns its SQLSTATE (static buffer). */
const char *testdb_fail(PGconn *c, const char *sql);

struct testrun {
	int status;     /* exit code, or 128+signal */
	char *out;      /* stdout, NUL-terminated */
	char *err;      /* stderr */
};

/*
 * Run one of our programs: argv[0] is the program name ("vm-fleet"),
 * looked up in $VMOPS_BIN_DIR (default "bin").  NULL-terminated argv.
 * stdin is /dev/null.
 */
void testrun(struct testrun *r, const char *const *argv);
void testrun_free(struct testrun *r);
#define TESTRUN(r, ...) testrun((r), (const char *const[]){ __VA_ARGS__, NULL })

/* Real-QEMU cases: skip unless the suite built the test guest. */
void testlib_need_qemu(void);

/* SIGKILL every hypervisor process whose argv mentions `dir` (a test's own
 * run directory): a .fini teardown that also runs after a failed assertion. */
void testlib_kill_vms_under(const char *dir);

/* Last "HEARTBEAT n checksum" of a guest's serial log, complete lines only
 * (the guest may be writing the last one); n = -1 if none.  `sum`, if not
 * NULL, receives the 32-hex checksum. */
long testlib_last_heartbeat(const char *path, char sum[64]);
/* Wait until a heartbeat above `above` appears (cr_assert_fail on timeout). */
long testlib_wait_heartbeat(const char *path, long above, int timeout_s, char sum[64]);

/* Count of '\n' in s. */
size_t testlib_lines(const char *s);

/*
 * Race tests prove their lock, not a sleep.  Wait (polling, bounded) until
 * backend `pid` waits for a heavyweight lock: pg_stat_activity shows
 * wait_event_type 'Lock' and pg_locks an ungranted lock for it, and
 * `blocker` (a backend pid, PQbackendPID; 0: anyone) is among
 * pg_blocking_pids(pid).  cr_assert_fail if that is not seen within
 * timeout_ms, or if the backend is gone.  `observer` is a connection of its
 * own, outside any transaction (pg_stat_activity is a per-transaction
 * snapshot).
 */
void testdb_wait_blocked(PGconn *observer, int pid, int blocker, int timeout_ms);
/* The same for `waiter`, a connection of the test with a query in flight
 * (PQsendQuery): fails at once if that query completes without waiting. */
void testdb_wait_conn_blocked(PGconn *observer, PGconn *waiter, int blocker, int timeout_ms);
/* Wait until at least n backends wait for locks that backend `blocker` holds. */
void testdb_wait_n_blocked_by(PGconn *observer, int blocker, int n, int timeout_ms);

#endif
