/* SPDX-License-Identifier: MIT */
/*
 * vm-drain against real PostgreSQL and real QEMU under TCG (the test guest:
 * VMOPS_TEST_KERNEL/INITRD).  Small guests (128 MiB), generous timeouts:
 * the machine is shared and TCG is slow; nothing here decides by time.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdint.h>
#include <unistd.h>

#include "exitcodes.h"
#include "testlib.h"

#define HOST_ID "drain-test-host"
#define GUEST_MB 128

static char ci[512];
static char rundir[256];
/* The guest's dirtier: the guest's default pause (0.5 s); the slow-move cases pause longer so a capped
 * move converges, the case that must not converge runs it flat out. */
static const char *dirty = "vmops.dirty_mb=16";

/* Worker w1 (to drain) and targets w2, w3, all on this "host". */
static PGconn *fleet(void)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char sql[1024];

	snprintf(rundir, sizeof(rundir), "/tmp/vmops-dt.XXXXXX");
	cr_assert(mkdtemp(rundir));
	snprintf(sql, sizeof(sql),
		 "INSERT INTO workers (name, memory_mb, vcpus, run_dir, host_id) VALUES"
		 " ('w1', 4096, 8, '%s/w1', '" HOST_ID "'), ('w2', 4096, 8, '%s/w2', '" HOST_ID "'),"
		 " ('w3', 4096, 8, '%s/w3', '" HOST_ID "')", rundir, rundir, rundir);
	PQclear(testdb_exec(c, sql));
	setenv("VMOPS_HOST_ID", HOST_ID, 1);
	return c;
}

static void kill_test_vms(void)
{
	if (rundir[0])   /* a case skipped before fleet(): "" would match every VM */
		testlib_kill_vms_under(rundir);
}

static void launch(const char *sandbox)
{
	char spec[300];
	struct testrun r;
	FILE *f;

	snprintf(spec, sizeof(spec), "%s/%s.json", rundir, sandbox);
	f = fopen(spec, "w");
	cr_assert(f);
	fprintf(f, "{\"hypervisor\":\"qemu\",\"memory_mb\":%d,\"vcpus\":1,\"kernel\":\"%s\",\"initrd\":\"%s\","
		   "\"cmdline\":\"console=ttyS0 no_timer_check %s\",\"accel\":\"tcg\"}\n",
		GUEST_MB, getenv("VMOPS_TEST_KERNEL"), getenv("VMOPS_TEST_INITRD"), dirty);
	fclose(f);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", sandbox, "--org", "acme",
		"--worker", "w1", "--spec", spec);
	cr_assert_eq(r.status, 0, "launch %s: %s", sandbox, r.err);
	testrun_free(&r);
}

static void serial_of(PGconn *c, const char *sandbox, char *buf, size_t len)
{
	char sql[256];
	PGresult *r;

	snprintf(sql, sizeof(sql), "SELECT v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id"
		 " WHERE s.name = '%s'", sandbox);
	r = testdb_exec(c, sql);
	cr_assert_eq(PQntuples(r), 1);
	snprintf(buf, len, "%s/serial.log", PQgetvalue(r, 0, 0));
	PQclear(r);
}

/* Launch n guests on w1 and wait until each beats; g0[i] is each one's state before. */
static void guests(PGconn *c, const char *const *names, int n, struct testlib_guest *g0)
{
	char log[512];

	testlib_need_qemu();
	for (int i = 0; i < n; i++)
		launch(names[i]);
	for (int i = 0; i < n; i++) {
		serial_of(c, names[i], log, sizeof(log));
		testlib_wait_heartbeat(log, 1, 240, &g0[i]);
	}
}

/* Every guest goes on where it runs now, its memory checks passing. */
static void assert_guests_continue(PGconn *c, const char *const *names, int n, const struct testlib_guest *g0)
{
	char log[512];

	for (int i = 0; i < n; i++) {
		serial_of(c, names[i], log, sizeof(log));
		testlib_assert_guest_continues(log, g0[i].boot_sum, &g0[i].last, 180, NULL);
	}
}

/* The ledger: each sandbox running, exactly one open event, on its active VMM and worker. */
static void assert_ledger(PGconn *c, int n)
{
	struct testrun r;

	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running'"), n);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s WHERE (SELECT count(*) FROM scale_events e"
				  " WHERE e.sandbox_id = s.id AND e.ended_at IS NULL AND e.vmm_id = s.active_vmm_id"
				  " AND e.worker_id = s.worker_id) <> 1"
				  " OR (SELECT count(*) FROM scale_events e WHERE e.sandbox_id = s.id AND e.ended_at IS NULL) <> 1"),
		     0, "a sandbox without exactly one open scale event on its active VMM");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state IN ('queued', 'preparing',"
				  " 'transferring', 'switching')"), 0, "an attempt still in flight");
	TESTRUN(&r, "usage-parity", "--db", ci, "-q", "--from", "now-2h", "--to", "now-1h");
	cr_assert_eq(r.status, 0, "usage-parity found drift:\n%s\n%s", r.err, r.out);
	testrun_free(&r);
}

/* From the migrations table: no target ever had two inbound attempts at once
 * (transaction-start times; 100 ms for a claim that waited on the guard). */
static void assert_one_inbound_per_target(PGconn *c)
{
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations a JOIN migrations b ON a.id < b.id"
				  " AND a.target_worker_id = b.target_worker_id"
				  " AND tstzrange(a.time_started + interval '100 ms', a.time_finished)"
				  " && tstzrange(b.time_started + interval '100 ms', b.time_finished)"), 0,
		     "two migrations to one target were in flight at once");
}

static pid_t spawn(const char *out, const char *const *argv)
{
	pid_t pid = fork();

	cr_assert(pid >= 0);
	if (pid == 0) {
		char path[512];
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 1);
		dup2(fd, 2);
		snprintf(path, sizeof(path), "%s/%s", getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin", argv[0]);
		execv(path, (char *const *)(uintptr_t)argv);
		_exit(127);
	}
	return pid;
}

static int wait_exit(pid_t pid)
{
	int st;

	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void wait_sql(PGconn *c, const char *sql, long long want, int timeout_s)
{
	long long v = -2;

	for (int i = 0; i < timeout_s * 10; i++) {
		v = testdb_ll(c, sql);
		if (v >= want)
			return;
		usleep(100000);
	}
	cr_assert_fail("waited %ds for %lld from: %s (last %lld)", timeout_s, want, sql, v);
}

static const char *const four[] = { "sb1", "sb2", "sb3", "sb4" };

Test(drain, four_guests_two_targets_all_move_and_the_worker_is_drained, .timeout = 900, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	struct testlib_guest g0[4];
	struct testrun r;

	guests(c, four, 4, g0);
	TESTRUN(&r, "vm-drain", "--db", ci, "--json", "w1");
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"state\":\t\"done\""), "%s", r.out);
	cr_assert(strstr(r.out, "\"left_processes\":\t0"), "%s", r.out);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'drained'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
				  " WHERE w.name IN ('w2', 'w3') AND s.status = 'running'"), 4);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'moved'"), 4);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'done'"), 1);
	/* both targets were used (largest first, to the one with most room: they alternate) */
	cr_assert_eq(testdb_ll(c, "SELECT count(DISTINCT worker_id) FROM sandboxes"), 2);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'completed'"), 4);
	assert_one_inbound_per_target(c);
	assert_ledger(c, 4);
	assert_guests_continue(c, four, 4, g0);
	PQfinish(c);
}

/* A hypervisor process of this worker that the database does not know blocks drained. */
Test(drain, unknown_hypervisor_process_blocks_drained, .timeout = 600, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	struct testlib_guest g0[1];
	struct testrun r;
	char dir[400], qmp[500];
	pid_t ghost;

	guests(c, four, 1, g0);
	snprintf(dir, sizeof(dir), "%s/w1/vmm-999", rundir);
	cr_assert_eq(mkdir(dir, 0700), 0);
	snprintf(qmp, sizeof(qmp), "unix:%s/qmp.sock,server=on,wait=off", dir);
	ghost = fork();
	cr_assert(ghost >= 0);
	if (ghost == 0) {
		int nul = open("/dev/null", O_RDWR);
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(nul, 2);
		execlp("qemu-system-x86_64", "qemu-system-x86_64", "-name", "vmops-vmm-999", "-machine", "none",
		       "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", qmp, (char *)NULL);
		_exit(127);
	}
	usleep(500000);
	TESTRUN(&r, "vm-drain", "--db", ci, "--json", "w1");
	cr_assert_eq(r.status, VMOPS_EXIT_PARTIAL, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"left_processes\":\t1"), "%s", r.out);
	cr_assert(strstr(r.out, "\"state\":\t\"partial\""), "%s", r.out);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'draining'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'moved'"), 1);

	/* Gone: a rerun continues the same drain and declares the worker drained. */
	kill(ghost, SIGKILL);
	cr_assert_eq(wait_exit(ghost), 128 + SIGKILL);
	TESTRUN(&r, "vm-drain", "--db", ci, "--json", "w1");
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"resumed\":\ttrue"), "%s", r.out);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'drained'"), 1);
	assert_ledger(c, 1);
	assert_guests_continue(c, four, 1, g0);
	PQfinish(c);
}

/* ---- the hibernate fallback ------------------------------------------------------ */

static void bundle_dir(char *buf, size_t len)
{
	snprintf(buf, len, "%s/bundles", rundir);
	cr_assert_eq(mkdir(buf, 0700), 0);
}

/* Files in `dir` other than `keep` (a failed hibernate leaves no bundle, no staging, no temporary). */
static int files_in(const char *dir, const char *keep)
{
	char cmd[1200];
	FILE *f;
	int n = -1;

	snprintf(cmd, sizeof(cmd), "ls -A '%s' | grep -v -x -F '%s' | wc -l", dir, keep ? keep : "//");
	f = popen(cmd, "r");
	cr_assert(f);
	cr_assert_eq(fscanf(f, "%d", &n), 1);
	pclose(f);
	return n;
}

/*
 * A guest dirtying flat out (vmops.dirty_mb=16, dirty_pause_us=0) cannot converge at
 * 2 MiB/s: the move makes no progress (remaining bytes never reach a new
 * low for 8 s) and is given up; with one attempt allowed, the sandbox is
 * stuck and the fallback hibernates it.  The worker is still drained after
 * the count, the migration's audit rows name vm-drain, and the sandbox
 * wakes on another worker with its memory intact.
 */
Test(drain, a_guest_that_cannot_converge_is_hibernated_and_the_worker_drained, .timeout = 900,
     .fini = kill_test_vms)
{
	PGconn *c = fleet();
	struct testlib_guest g0[1];
	struct testrun r;
	char bdir[400], log[512], w1dir[400];
	PGresult *m;

	dirty = "vmops.dirty_mb=16 vmops.dirty_pause_us=0";
	guests(c, four, 1, g0);
	bundle_dir(bdir, sizeof(bdir));
	TESTRUN(&r, "vm-drain", "--db", ci, "--json", "--max-bandwidth", "2M/s", "--progress-timeout", "8s",
		"--timeout-per-gib", "1h", "--retries", "1", "--bundle-dir", bdir, "w1");
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"state\":\t\"done\""), "%s", r.out);
	cr_assert(strstr(r.out, "\"hibernated\":\t1"), "%s", r.out);
	cr_assert(strstr(r.out, "\"outcome\":\t\"hibernated\""), "%s", r.out);
	cr_assert(strstr(r.out, "\"left_processes\":\t0"), "%s", r.out);
	cr_assert(strstr(r.out, "\"bundle\":\t\"/"), "%s", r.out);
	cr_assert(strstr(r.err, "sb1: cannot move; hibernating into"), "%s", r.err);
	cr_assert(strstr(r.err, "sb1: hibernated in "), "%s", r.err);
	testrun_free(&r);
	/* It did not converge (not a timeout, not a refusal): one attempt, given up for no progress,
	 * judged by QEMU's passes over memory (bytes kept moving) */
	m = testdb_exec(c, "SELECT string_agg(state || ': ' || coalesce(error, ''), '; ') FROM migrations");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'failed' AND error LIKE"
				  " 'no progress for 8s: % passes over memory since the smallest began, none smaller than %'"),
		     1, "%s", PQgetvalue(m, 0, 0));
	PQclear(m);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'hibernated' AND attempts = 1"
				  " AND last_error LIKE 'no progress for%'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'drained'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'done'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'hibernated' AND active_vmm_id IS NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'ready' AND size_bytes > 0"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 0);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 0, "billing still open");
	snprintf(w1dir, sizeof(w1dir), "%s/w1/", rundir);
	cr_assert_eq(testlib_count_vms_under(w1dir), 0, "a QEMU is left on the drained worker");
	cr_assert_eq(files_in(bdir, NULL), 1, "the bundle, and nothing else, in the bundle directory");
	/* The acting program of every row the drain wrote is vm-drain (not vm-migrate, not snapshot-prep). */
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE program = 'vm-drain'"
				  " AND action IN ('migration-start', 'failed', 'hibernate')"), 3);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE program <> 'vm-drain'"
				  " AND object_type IN ('migration', 'sandbox', 'drain', 'worker')"
				  " AND action NOT IN ('launch', 'worker-add')"), 0);
	TESTRUN(&r, "usage-parity", "--db", ci, "-q", "--from", "now-2h", "--to", "now-1h");
	cr_assert_eq(r.status, 0, "usage-parity found drift:\n%s\n%s", r.err, r.out);
	testrun_free(&r);

	/* Woken elsewhere (w1 is drained: not a candidate), it goes on, memory intact. */
	TESTRUN(&r, "snapshot-prep", "--db", ci, "-q", "wake", "--sandbox", "sb1");
	cr_assert_eq(r.status, 0, "wake: %s\n%s", r.err, r.out);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
				  " WHERE s.status = 'running' AND w.name IN ('w2', 'w3')"), 1);
	serial_of(c, "sb1", log, sizeof(log));
	testlib_assert_guest_continues(log, g0[0].boot_sum, &g0[0].last, 180, NULL);
	assert_ledger(c, 1);
	PQfinish(c);
}

/* Until the process stopped itself (the fault hook's `stop`: state T). */
static void wait_stopped(pid_t pid)
{
	char path[64], buf[512];

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	for (int k = 0; k < 3000; k++) {
		FILE *f = fopen(path, "r");
		bool st = false;

		if (f) {
			st = fgets(buf, sizeof(buf), f) && strstr(buf, ") T ");
			fclose(f);
		}
		if (st)
			return;
		usleep(100000);
	}
	cr_assert_fail("vm-drain never stopped at the fault point");
}

/*
 * No target will ever fit the guest (both too small): stuck at once, and its
 * hibernate fails.  VMOPS_FAULT=bundle:stop halts vm-drain after the state
 * was written, just before the bundle; a directory put where the bundle
 * goes then makes writing it fail for real.  The hibernate unwinds: the
 * worker stays draining, the drain ends partial (exit 15), the guest runs
 * on the source with its memory intact, nothing is lost or left behind.
 */
Test(drain, a_hibernate_that_fails_leaves_the_worker_draining_and_the_guest_running, .timeout = 900,
     .fini = kill_test_vms)
{
	PGconn *c = fleet();
	struct testlib_guest g0[1];
	struct testproc p;
	struct testrun r;
	char bdir[400], loc[600], obstacle[700];
	PGresult *q;

	guests(c, four, 1, g0);
	bundle_dir(bdir, sizeof(bdir));
	PQclear(testdb_exec(c, "UPDATE workers SET memory_mb = 64 WHERE name IN ('w2', 'w3')"));
	setenv("VMOPS_FAULT", "bundle:stop", 1);
	TESTRUN_START(&p, "vm-drain", "--db", ci, "--json", "--bundle-dir", bdir, "w1");
	unsetenv("VMOPS_FAULT");
	wait_stopped(p.pid);
	q = testdb_exec(c, "SELECT location FROM snapshots WHERE state = 'writing'");
	cr_assert_eq(PQntuples(q), 1);
	snprintf(loc, sizeof(loc), "%s", PQgetvalue(q, 0, 0));
	PQclear(q);
	cr_assert_eq(mkdir(loc, 0700), 0, "%s: %s", loc, strerror(errno));
	snprintf(obstacle, sizeof(obstacle), "%s/keep", loc);
	cr_assert_eq(mkdir(obstacle, 0700), 0);
	kill(p.pid, SIGCONT);
	testrun_finish(&p, &r);
	cr_assert_eq(r.status, VMOPS_EXIT_PARTIAL, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"state\":\t\"partial\""), "%s", r.out);
	cr_assert(strstr(r.out, "\"worker_state\":\t\"draining\""), "%s", r.out);
	cr_assert(strstr(r.out, "\"hibernated\":\t0"), "%s", r.out);
	cr_assert(strstr(r.out, "\"stuck\":\t1"), "%s", r.out);
	cr_assert(strstr(r.out, "\"left_sandboxes\":\t1"), "%s", r.out);
	cr_assert(strstr(r.err, "sb1: stuck: hibernate failed: "), "%s", r.err);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'draining'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'partial'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'stuck'"
				  " AND last_error LIKE 'hibernate failed: %'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'failed'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations"), 0, "no target fits: nothing was tried");
	/* Still where it was, running, billed once; no bundle, staging or temporary left. */
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
				  " JOIN vmms v ON v.id = s.active_vmm_id WHERE w.name = 'w1' AND v.state = 'running'"), 1);
	cr_assert_eq(files_in(bdir, strrchr(loc, '/') + 1), 0, "something left in the bundle directory");
	assert_ledger(c, 1);
	assert_guests_continue(c, four, 1, g0);
	PQfinish(c);
}

/* Moves slow enough (bandwidth capped) to stop one halfway. */
static pid_t slow_drain(const char *out)
{
	const char *argv[] = { "vm-drain", "--db", ci, "--max-parallel", "1", "--max-bandwidth", "4M/s", "w1", NULL };

	return spawn(out, argv);
}

/*
 * The two halfway cases: each boots three guests and stops the drain while
 * a capped move is in flight.
 */
Test(drain_halfway, sigterm_halfway_then_a_rerun_completes, .timeout = 900, .fini = kill_test_vms)
{
	PGconn *c;
	struct testlib_guest g0[3];
	struct testrun r;
	char out[300];
	pid_t pid;

	c = fleet();
	dirty = "vmops.dirty_mb=8 vmops.dirty_pause_us=4000000";
	guests(c, four, 3, g0);
	snprintf(out, sizeof(out), "%s/drain1.out", rundir);
	pid = slow_drain(out);
	wait_sql(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'moved'", 1, 300);
	wait_sql(c, "SELECT count(*) FROM migrations WHERE state = 'transferring'", 1, 120);
	kill(pid, SIGTERM);
	cr_assert_eq(wait_exit(pid), VMOPS_EXIT_INTERRUPTED, "see %s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'partial'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'draining'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'cancelled'"), 1,
		     "the move in flight was cancelled");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'moving'"), 0);
	cr_assert_lt(testdb_ll(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'moved'"), 3);
	assert_ledger(c, 3);

	TESTRUN(&r, "vm-drain", "--db", ci, "-q", "w1");
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains"), 1, "the rerun continued the same drain");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'done' AND runs = 2"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'drained'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'moved'"), 3);
	assert_one_inbound_per_target(c);
	assert_ledger(c, 3);
	assert_guests_continue(c, four, 3, g0);
	PQfinish(c);
}

/*
 * SIGTERM halfway, then a second signal while the move in flight is being
 * rolled back (the fault hook at the rollback boundary, before anything of
 * the rollback is done: the source may still be sending): vm-drain leaves
 * at once, exit 12, and its line names the worker, the move it leaves under
 * its lease and the way out.  Once the leases have expired, that way out
 * (vm-drain again) settles the move from the facts and drains the worker.
 */
Test(drain_halfway, second_signal_during_the_rollback_then_a_rerun_completes, .timeout = 900, .fini = kill_test_vms)
{
	PGconn *c;
	struct testlib_guest g0[1];
	struct testrun r;
	char out[300], buf[8192] = "";
	pid_t pid;
	FILE *f;

	c = fleet();
	dirty = "vmops.dirty_mb=8 vmops.dirty_pause_us=4000000";
	guests(c, four, 1, g0);
	snprintf(out, sizeof(out), "%s/drain1.out", rundir);
	setenv("VMOPS_FAULT", "rollback:sigint", 1);
	pid = slow_drain(out);
	unsetenv("VMOPS_FAULT");
	wait_sql(c, "SELECT count(*) FROM migrations WHERE state = 'transferring'", 1, 120);
	kill(pid, SIGTERM);
	cr_assert_eq(wait_exit(pid), VMOPS_EXIT_INTERRUPTED, "see %s", out);
	f = fopen(out, "r");
	cr_assert(f);
	buf[fread(buf, 1, sizeof(buf) - 1, f)] = '\0';
	fclose(f);
	cr_assert(strstr(buf, "vm-drain: second interrupt: leaving at once, without cleaning up; worker w1 stays"
			      " draining, with these left under their leases: sb1 moving to w") &&
		  strstr(buf, "run 'vm-drain w1' again once the leases have expired"), "%s", buf);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE phase <> 'done'"), 1, "the move was settled");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'draining'"), 1);
	wait_sql(c, "SELECT count(*) FROM migrations m, drains d WHERE m.lease_expires_at < now()"
		    " AND d.lease_expires_at < now()", 1, 60);

	TESTRUN(&r, "vm-drain", "--db", ci, "-q", "w1");
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'done' AND runs = 2"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'drained'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'moved'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE phase <> 'done'"), 0);
	assert_ledger(c, 1);
	assert_guests_continue(c, four, 1, g0);
	PQfinish(c);
}

Test(drain_halfway, cancel_halfway_returns_the_worker_to_active, .timeout = 900, .fini = kill_test_vms)
{
	PGconn *c;
	struct testlib_guest g0[3];
	struct testrun r;
	char out[300];
	pid_t pid;

	c = fleet();
	dirty = "vmops.dirty_mb=8 vmops.dirty_pause_us=4000000";
	guests(c, four, 3, g0);
	snprintf(out, sizeof(out), "%s/drain1.out", rundir);
	pid = slow_drain(out);
	wait_sql(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'moved'", 1, 300);
	wait_sql(c, "SELECT count(*) FROM migrations WHERE state = 'transferring'", 1, 120);
	TESTRUN(&r, "vm-drain", "--db", ci, "--json", "--cancel", "w1");
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"state\":\t\"cancelled\""), "%s", r.out);
	cr_assert(strstr(r.out, "\"worker_state\":\t\"active\""), "%s", r.out);
	testrun_free(&r);
	cr_assert_eq(wait_exit(pid), VMOPS_EXIT_INTERRUPTED, "see %s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'active'"), 1);
	/* the move in flight finished (cancel does not abort it), nothing else started */
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'completed'"), 2);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations"), 2);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'pending'"), 1);
	assert_one_inbound_per_target(c);
	assert_ledger(c, 3);
	assert_guests_continue(c, four, 3, g0);
	PQfinish(c);
}
