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
#include <sys/types.h>

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

/* The same in two halves, for signalling the program while it runs. */
struct testproc {
	pid_t pid;
	int ofd, efd;
};
void testrun_start(struct testproc *p, const char *const *argv);
void testrun_finish(struct testproc *p, struct testrun *r);
#define TESTRUN_START(p, ...) testrun_start((p), (const char *const[]){ __VA_ARGS__, NULL })

/* Write DIR/vmops-qemu-wrap/qemu-system-x86_64: the real QEMU with its QMP
 * socket renamed (qmp-hidden.sock), so a launcher waits for a control socket
 * that never appears while the guest boots.  Returns that directory, to put
 * first on PATH (static buffer). */
const char *testlib_qemu_hiding_qmp(const char *dir);

/* Real-QEMU cases: fail without the test guest, unless VMOPS_SKIP_QEMU=1
 * (then skip) or VMOPS_QEMU_CASES=elsewhere (a pass that leaves them to the
 * plain pass).  testlib_missing() is the same decision for any real part. */
void testlib_need_qemu(void);
void testlib_missing(const char *what);

/* SIGKILL every hypervisor process whose argv mentions `dir` (a test's own
 * run directory): a .fini teardown that also runs after a failed assertion. */
void testlib_kill_vms_under(const char *dir);
/* Hypervisor processes (not zombies) with `dir` in their command line. */
int testlib_count_vms_under(const char *dir);

/*
 * The test guest's serial log (tests/guest/build-guest.sh documents the
 * lines).  Markers may appear anywhere in a line: kernel output and
 * terminal escapes share the serial console.
 */
struct testlib_beat {
	long n;                /* heartbeat number; -1: none */
	char static_sum[33];   /* md5 of the static region, measured at this beat */
	bool static_ok;        /* the guest found it equal to its boot checksum */
	long pass;             /* the dirtier's last verified pass; 0: none */
	bool pass_ok;          /* that pass verified */
	long bad;              /* failed checks since boot */
};

/* A heartbeat anywhere in `line` (all fields, well formed): true and *b. */
bool testlib_parse_heartbeat(const char *line, struct testlib_beat *b);

struct testlib_guest {
	bool ready;                       /* VMOPS-GUEST-READY seen */
	char boot_sum[33];                /* its static=: the boot checksum, "" if not seen */
	long beats;                       /* heartbeat lines */
	struct testlib_beat first, last;  /* n = -1: none */
	long failed_beats;                /* beats with static_ok=0, pass_ok=0 or bad>0 */
	long first_static_failed;         /* n of the first beat with static_ok=0, -1: none */
	long first_pass_failed;           /* n of the first beat with pass_ok=0, -1: none */
	long static_changed;              /* beats whose static= differs from boot_sum
					     (from the first beat's if no READY line) */
	long mismatches;                  /* CHECKSUM-MISMATCH lines */
	char mismatch[256];               /* the first of them */
	char trouble[256];                /* first Oops, BUG:, panic or VMOPS-GUEST-ERROR line */
};

/* Read a serial log, complete lines only (the guest may be writing the
 * last one); a missing file reads as an empty log. */
void testlib_guest_read(const char *path, struct testlib_guest *g);

/* Wait until a heartbeat above `above` appears (cr_assert_fail on timeout);
 * returns its number.  `g`, if not NULL, receives the log's state. */
long testlib_wait_heartbeat(const char *path, long above, int timeout_s, struct testlib_guest *g);

/*
 * Is `g` (a log read after a migration, or the source's own log after a
 * failed one) a healthy continuation of the guest that booted with static
 * checksum `boot_sum` and was last seen at heartbeat `before`?  Returns
 * -1 with the reason in `why` if something is wrong: a CHECKSUM-MISMATCH,
 * Oops, BUG:, panic or VMOPS-GUEST-ERROR line, a heartbeat reporting a
 * failed check, a static checksum other than `boot_sum`.  Otherwise 1 once
 * it went on far enough (`min_beats` heartbeats after `before`, and a
 * dirtier pass after before->pass if that was not 0), else 0.
 */
int testlib_guest_check(const struct testlib_guest *g, const char *boot_sum,
			const struct testlib_beat *before, long min_beats, char *why, size_t len);

/*
 * The assertion after a migration: the guest whose log is `path` goes on
 * (three heartbeats after `before` within `timeout_s`, the dirtier
 * verifying new passes), its static checksum equals `boot_sum` (NULL: the
 * READY line of this same log) and every heartbeat in the log reports OK,
 * with no CHECKSUM-MISMATCH, Oops, BUG: or panic.  `g`, if not NULL,
 * receives the log's state (g->last: the `before` of a next migration).
 */
void testlib_assert_guest_continues(const char *path, const char *boot_sum,
				    const struct testlib_beat *before, int timeout_s,
				    struct testlib_guest *g);

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
