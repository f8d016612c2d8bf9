/* SPDX-License-Identifier: MIT */
/*
 * The fault matrix of vm-migrate on real QEMU and real PostgreSQL: for each
 * phase boundary x fault, stop vm-migrate there (VMOPS_FAULT=PHASE:stop),
 * inflict the fault, let it go on (or die), then vm-migrate --recover after
 * the lease expired, and vmm-reap.  Afterwards: exactly one QEMU runs the
 * guest and the database points at it, with the guest's memory intact (or
 * the sandbox is error with billing closed, only when no VM can run it); at
 * most one open scale event and exactly one if it runs; no reservation for
 * a dead VMM; usage-parity finds nothing.  The outcomes are printed as a
 * table at the end.
 *
 * The "PostgreSQL restart" column restarts the whole throwaway cluster,
 * which would cut every other suite's sessions: it is built from this file
 * into a suite of its own (test_pgrestart.c defines VMOPS_FAULTS_PG_RESTART),
 * which tests/run-all.sh runs alone and with --jobs 1, and whose cells also
 * serialise themselves on a lock in the cluster's directory.
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"
#include "qmp.h"
#include "exitcodes.h"
#include "interrupt.h"
#include "testlib.h"

enum fault { F_KILL_MIGRATE, F_KILL_TARGET, F_KILL_SOURCE, F_PG_RESTART, F_PG_TERMINATE, F_QMP_BUSY, F_N };
static const char *const fault_names[F_N] = { "kill vm-migrate", "kill target", "kill source",
					     "PG restart", "pg_terminate", "target QMP busy" };
static const char *const phases[] = { "receiver", "transfer", "switchover", "finish" };

static char ci[512];
static char rundir[256];

static void results_path(char *buf, size_t len, pid_t runner)
{
	snprintf(buf, len, "/tmp/vmops-faults.%d.tsv", (int)runner);
}

static void kill_test_vms(void)
{
	testlib_kill_vms_under(rundir);
}

static PGconn *fleet(void)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char sql[1024];

	snprintf(rundir, sizeof(rundir), "/tmp/vmops-ft.XXXXXX");
	cr_assert(mkdtemp(rundir));
	snprintf(sql, sizeof(sql), "INSERT INTO workers (name, memory_mb, vcpus, run_dir) VALUES"
		 " ('w1', 2048, 8, '%s/w1'), ('w2', 2048, 8, '%s/w2')", rundir, rundir);
	PQclear(testdb_exec(c, sql));
	return c;
}

static void launch(void)
{
	char spec[300];
	struct testrun r;
	FILE *f;

	snprintf(spec, sizeof(spec), "%s/sb1.json", rundir);
	f = fopen(spec, "w");
	cr_assert(f);
	fprintf(f, "{\"hypervisor\":\"qemu\",\"memory_mb\":128,\"vcpus\":1,\"kernel\":\"%s\",\"initrd\":\"%s\","
		   "\"cmdline\":\"console=ttyS0 no_timer_check vmops.dirty_mb=4\",\"accel\":\"tcg\"}\n",
		getenv("VMOPS_TEST_KERNEL"), getenv("VMOPS_TEST_INITRD"));
	fclose(f);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", "sb1", "--org", "acme",
		"--worker", "w1", "--spec", spec);
	cr_assert_eq(r.status, 0, "launch: %s", r.err);
	testrun_free(&r);
}

static void serial_of_active(PGconn *c, char *buf, size_t len)
{
	PGresult *r = testdb_exec(c, "SELECT v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id");

	cr_assert_eq(PQntuples(r), 1);
	snprintf(buf, len, "%s/serial.log", PQgetvalue(r, 0, 0));
	PQclear(r);
}

/* vm-migrate sb1 --to w2 with VMOPS_FAULT=fault, output in RUNDIR/mig.out. */
static pid_t spawn_migrate_fault_bw(const char *fault, const char *lease, const char *bw)
{
	char out[300];
	pid_t pid;

	snprintf(out, sizeof(out), "%s/mig.out", rundir);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		char path[512];
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 1);
		dup2(fd, 2);
		setenv("VMOPS_FAULT", fault, 1);
		snprintf(path, sizeof(path), "%s/vm-migrate", getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin");
		execl(path, "vm-migrate", "--db", ci, "-v", "sb1", "--to", "w2", "--lease", lease,
		      "--max-bandwidth", bw, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static pid_t spawn_migrate_fault(const char *fault, const char *lease)
{
	return spawn_migrate_fault_bw(fault, lease, "32G/s");
}

/* What the spawned vm-migrate printed (RUNDIR/mig.out), into buf. */
static __attribute__((unused)) void read_mig_out(char *buf, size_t len)
{
	char out[300];
	FILE *f;

	snprintf(out, sizeof(out), "%s/mig.out", rundir);
	f = fopen(out, "r");
	cr_assert(f, "%s: %s", out, strerror(errno));
	buf[fread(buf, 1, len - 1, f)] = '\0';
	fclose(f);
}

static pid_t spawn_migrate(const char *phase, const char *lease)
{
	char fault[64];

	snprintf(fault, sizeof(fault), "%s:stop", phase);
	return spawn_migrate_fault(fault, lease);
}

static char proc_state(pid_t pid)
{
	struct vmops_proc_stat st;

	if (vmops_proc_read_stat("/proc", pid, &st, NULL) < 0)
		return 0;
	return st.state;
}

static int wait_exit(pid_t pid)
{
	int st;

	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/*
 * The pid of the source's VMM (on w1, the first launched) or of the
 * receiver's (the newest on w2); 0 when there is none or no pid yet.  By
 * worker, not by id: a transaction retried under load takes an id from the
 * sequence and leaves a gap (fresh run Q: no VMM 2, the receiver was 3).
 */
#define SOURCE_VMM "(SELECT min(v.id) FROM vmms v JOIN workers w ON w.id = v.worker_id WHERE w.name = 'w1')"
#define TARGET_VMM "(SELECT max(v.id) FROM vmms v JOIN workers w ON w.id = v.worker_id WHERE w.name = 'w2')"
static long long vmm_pid(PGconn *c, const char *which)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT coalesce((SELECT pid FROM vmms WHERE id = %s), 0)", which);
	return testdb_ll(c, sql);
}

/* --recover until the facts are known (exit 14 means: run again later). */
static int recover(int *first)
{
	struct testrun r;
	int rc = -1;

	for (int i = 0; i < 4; i++) {
		TESTRUN(&r, "vm-migrate", "--db", ci, "-v", "--recover", "--lease", "3s");
		rc = r.status;
		if (first && *first < 0)
			*first = rc;
		cr_assert(rc == 0 || rc == VMOPS_EXIT_UNKNOWN, "--recover exit %d\n%s\n%s", rc, r.out, r.err);
		testrun_free(&r);
		if (rc == 0)
			break;
		sleep(1);
	}
	return rc;
}

static void wait_leases_expired(PGconn *c)
{
	for (int i = 0; i < 600; i++) {
		if (testdb_ll(c, "SELECT count(*) FROM migrations WHERE (state IN ('queued', 'preparing',"
				 " 'transferring', 'switching') OR phase = 'finish') AND lease_expires_at >= now()") == 0)
			return;
		usleep(100000);
	}
	cr_assert_fail("a lease did not expire within 60 s");
}

static int count_live_qemus(void);

static int count_cb(const struct vmops_proc_info *i, void *data)
{
	int *n = data;

	for (int k = 1; k < i->argc; k++)
		if (strstr(i->argv[k], rundir)) {
			(*n)++;
			break;
		}
	return 0;
}

static int count_live_qemus(void)
{
	int n = 0;

	(void)vmops_proc_scan("/proc", VMOPS_PROC_SCAN_HV_ONLY, count_cb, &n, NULL);
	return n;
}

/* The invariants after everything settled; returns the outcome for the table. */
static void check_end_state(PGconn *c, const struct testlib_guest *g0, char *outcome, size_t len)
{
	struct testrun r;
	char log[512];
	PGresult *res;

	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state IN ('queued', 'preparing',"
				  " 'transferring', 'switching') OR phase NOT IN ('done')"), 0, "an attempt is still open");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations r JOIN vmms v ON v.id = r.vmm_id"
				  " WHERE v.state IN ('destroyed', 'failed')"), 0, "a reservation outlived its VMM");
	res = testdb_exec(c, "SELECT s.status, w.name FROM sandboxes s LEFT JOIN workers w ON w.id = s.worker_id");
	if (strcmp(PQgetvalue(res, 0, 0), "running") == 0) {
		snprintf(outcome, len, "runs on %s", PQgetvalue(res, 0, 1));
		PQclear(res);
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 1);
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
					  " WHERE e.ended_at IS NULL AND e.vmm_id = s.active_vmm_id"), 1);
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE state IN ('running', 'starting', 'migrating')"), 1);
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 1);
		cr_assert_eq(count_live_qemus(), 1, "not exactly one QEMU runs");
		{
			long long pid = testdb_ll(c, "SELECT v.pid FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id");
			long long st = testdb_ll(c, "SELECT v.pid_start_time FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id");
			cr_assert_eq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)st, NULL, NULL), VMOPS_PROC_ALIVE,
				     "the database points at a QEMU that is not running");
		}
		serial_of_active(c, log, sizeof(log));
		/* every beat OK, static checksum as at boot, new dirtier passes verified */
		testlib_assert_guest_continues(log, g0->boot_sum, &g0->last, 60, NULL);
	} else {
		cr_assert_str_eq(PQgetvalue(res, 0, 0), "error", "sandbox is %s", PQgetvalue(res, 0, 0));
		snprintf(outcome, len, "lost (error)");
		PQclear(res);
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 0);
		cr_assert_eq(count_live_qemus(), 0, "sandbox in error but a QEMU still runs");
	}
	TESTRUN(&r, "usage-parity", "--db", ci, "-q", "--from", "now-2h", "--to", "now-1h");
	cr_assert_eq(r.status, 0, "usage-parity found drift:\n%s\n%s", r.err, r.out);
	testrun_free(&r);
}

static void record(const char *phase, enum fault f, const char *outcome)
{
	char path[128];
	FILE *fp;

	results_path(path, sizeof(path), getppid());
	fp = fopen(path, "a");
	if (fp) {
		fprintf(fp, "%s\t%d\t%s\n", phase, (int)f, outcome);
		fclose(fp);
	}
}

/*
 * Restart the cluster (tests/pg-restart.sh: fast shutdown, same options) and
 * reconnect `c`.  Returns how long the server was away, in ms.
 */
static long pg_restart(PGconn *c)
{
	const char *script = getenv("VMOPS_TEST_PG_RESTART");
	struct timespec t0, t1;
	pid_t pid;
	int rc;

	if (!script || !*script)
		testlib_missing("tests/pg-restart.sh (VMOPS_TEST_PG_RESTART, set by tests/pgcluster.sh)");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		execl(script, "pg-restart.sh", (char *)NULL);
		_exit(127);
	}
	rc = wait_exit(pid);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	cr_assert_eq(rc, 0, "tests/pg-restart.sh exited %d", rc);
	PQreset(c);
	cr_assert(PQstatus(c) == CONNECTION_OK, "reconnect after the restart: %s", PQerrorMessage(c));
	return (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
}

/* The restart cells have the cluster to themselves, even under --jobs N. */
static int cluster_lock(void)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/vmops-pgrestart.lock", getenv("PGHOST") ? getenv("PGHOST") : "/tmp");
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
	cr_assert(fd >= 0, "%s: %s", path, strerror(errno));
	while (flock(fd, LOCK_EX) < 0)
		cr_assert(errno == EINTR, "flock %s: %s", path, strerror(errno));
	return fd;
}

static void run_cell(const char *phase, enum fault f)
{
	PGconn *c = fleet();
	struct vmops_error err = { 0 };
	struct vmops_qmp *busy = NULL;
	char log1[512], outcome[256], res[200];
	struct testlib_guest g0;
	int rc, rec_first = -1, lock = -1;
	long away_ms = -1;
	pid_t mig;

	testlib_need_qemu();
	if (f == F_PG_RESTART)
		lock = cluster_lock();
	record(phase, f, "(incomplete)");
	launch();
	serial_of_active(c, log1, sizeof(log1));
	testlib_wait_heartbeat(log1, 2, 90, &g0);
	/* A restart is to be ridden out within the lease: give it one that outlasts the stop and the restart. */
	mig = spawn_migrate(phase, f == F_PG_RESTART ? "15s" : "3s");
	for (int i = 0; proc_state(mig) != 'T'; i++) {
		cr_assert(proc_state(mig) != 0 && proc_state(mig) != 'Z' && i < 1200,
			  "vm-migrate did not stop at %s (see %s/mig.out)", phase, rundir);
		usleep(100000);
	}
	switch (f) {
	case F_KILL_MIGRATE:
	case F_QMP_BUSY:
		kill(mig, SIGKILL);
		break;
	case F_KILL_TARGET:
		if (vmm_pid(c, TARGET_VMM) > 0)
			kill((pid_t)vmm_pid(c, TARGET_VMM), SIGKILL);
		break;
	case F_KILL_SOURCE:
		kill((pid_t)vmm_pid(c, SOURCE_VMM), SIGKILL);
		break;
	case F_PG_RESTART:
		away_ms = pg_restart(c);
		break;
	case F_PG_TERMINATE:
		/* this test's database only: the suite runs two cases at once, and another
		 * case's vm-migrate (--recover) is not this case's fault to inject */
		PQclear(testdb_exec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
				       " WHERE application_name = 'vm-migrate' AND datname = current_database()"));
		break;
	case F_N:
		break;
	}
	kill(mig, SIGCONT);
	rc = wait_exit(mig);
	if (f == F_QMP_BUSY && vmm_pid(c, TARGET_VMM) > 0) {
		char sock[512];
		PGresult *r = testdb_exec(c, "SELECT control_socket FROM vmms WHERE id = " TARGET_VMM);
		snprintf(sock, sizeof(sock), "%s", PQgetvalue(r, 0, 0));
		PQclear(r);
		busy = vmops_qmp_connect(sock, 5000, &err);
		cr_assert_not_null(busy, "hold the target's QMP: %s", err.msg);
	}
	wait_leases_expired(c);
	if (busy) {
		(void)recover(&rec_first);   /* may be 14 (unknown) while the QMP is held */
		if (rec_first == VMOPS_EXIT_UNKNOWN)
			cr_assert(count_live_qemus() >= 1);
		vmops_qmp_close(busy);
		wait_leases_expired(c);
	}
	cr_assert_eq(recover(rec_first < 0 ? &rec_first : NULL), 0);
	{
		struct testrun r;
		TESTRUN(&r, "vmm-reap", "--db", ci, "-q");
		cr_assert_eq(r.status, 0, "%s", r.err);
		testrun_free(&r);
	}
	check_end_state(c, &g0, res, sizeof(res));
	snprintf(outcome, sizeof(outcome), "%s (exit %d, recover %d%s)", res, rc, rec_first,
		 f == F_QMP_BUSY && rec_first == VMOPS_EXIT_UNKNOWN ? "->0" : "");
	if (away_ms >= 0)
		snprintf(outcome + strlen(outcome), sizeof(outcome) - strlen(outcome), " [restart took %ld ms]", away_ms);
	record(phase, f, outcome);
	cr_log_info("%s x %s: %s", phase, fault_names[f], outcome);
	if (f == F_PG_RESTART) {
		/* vm-migrate rides out a short restart: it reconnects within its lease and completes. */
		cr_assert_eq(rc, 0, "vm-migrate did not ride out the restart at %s: exit %d (see %s/mig.out)",
			     phase, rc, rundir);
		cr_assert(!strcmp(res, "runs on w2"), "after the restart at %s: %s", phase, res);
	}
	PQfinish(c);
	if (lock >= 0)
		close(lock);
}

#define CELL(ph, fname, fl) \
	Test(faults, ph##_##fname, .timeout = 300, .fini = kill_test_vms) { run_cell(#ph, fl); }
#ifdef VMOPS_FAULTS_PG_RESTART
#define ROW(ph) CELL(ph, pg_restart, F_PG_RESTART)
#else
#define ROW(ph) \
	CELL(ph, kill_migrate, F_KILL_MIGRATE) CELL(ph, kill_target, F_KILL_TARGET) \
	CELL(ph, kill_source, F_KILL_SOURCE) CELL(ph, pg_terminate, F_PG_TERMINATE) \
	CELL(ph, qmp_busy, F_QMP_BUSY)
#endif

ROW(receiver)
ROW(transfer)
ROW(switchover)
ROW(finish)

#ifdef VMOPS_FAULTS_PG_RESTART
static const char matrix_part[] = ", PostgreSQL restart column (the other columns: test_faults)";
#else
static const char matrix_part[] = " (the PostgreSQL restart column: test_pgrestart)";
#endif

/* The matrix, printed once by the runner after all cells. */
ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
	char path[128], line[512], cell[4][F_N][400];
	FILE *fp;

	(void)stats;
	results_path(path, sizeof(path), getpid());
	fp = fopen(path, "r");
	if (!fp)
		return;
	memset(cell, 0, sizeof(cell));
	while (fgets(line, sizeof(line), fp)) {
		char ph[32], out[400];
		int f;
		if (sscanf(line, "%31[^\t]\t%d\t%399[^\n]", ph, &f, out) != 3 || f < 0 || f >= F_N)
			continue;
		for (int p = 0; p < 4; p++)
			if (!strcmp(ph, phases[p]))
				snprintf(cell[p][f], sizeof(cell[p][f]), "%s", out);
	}
	fclose(fp);
	unlink(path);
	printf("\nfault matrix%s (phase boundary x fault -> outcome; exit = vm-migrate's, recover = first --recover's)\n",
	       matrix_part);
	for (int p = 0; p < 4; p++)
		for (int f = 0; f < F_N; f++)
			if (cell[p][f][0])
				printf("  %-10s | %-16s | %s\n", phases[p], fault_names[f], cell[p][f]);
	fflush(stdout);
}

#ifndef VMOPS_FAULTS_PG_RESTART
/*
 * Fencing: a vm-migrate that stalls (SIGSTOP) past its lease while --recover
 * takes the attempt over writes nothing and touches nothing once it wakes:
 * its first fenced write finds the generation bumped.
 */
Test(faults, stalled_owner_is_fenced_off, .timeout = 300, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	char log1[512], outcome[200];
	struct testlib_guest g0;
	int rc, first = -1;
	pid_t mig;

	testlib_need_qemu();
	launch();
	serial_of_active(c, log1, sizeof(log1));
	testlib_wait_heartbeat(log1, 2, 90, &g0);
	mig = spawn_migrate("transfer", "3s");
	for (int i = 0; proc_state(mig) != 'T'; i++) {
		cr_assert(proc_state(mig) != 0 && proc_state(mig) != 'Z' && i < 1200, "vm-migrate did not stop");
		usleep(100000);
	}
	wait_leases_expired(c);
	/* The stalled owner still holds both QMP sockets: --recover takes the lease, learns nothing, does nothing. */
	{
		struct testrun r;
		TESTRUN(&r, "vm-migrate", "--db", ci, "--recover", "--lease", "3s", "--json");
		cr_assert_eq(r.status, VMOPS_EXIT_UNKNOWN, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
		cr_assert(strstr(r.out, "\"unknown\":\t1"), "%s", r.out);
		testrun_free(&r);
	}
	cr_assert_eq(testdb_ll(c, "SELECT generation FROM migrations"), 2);
	kill(mig, SIGCONT);
	rc = wait_exit(mig);
	cr_assert_eq(rc, 10, "the fenced-off vm-migrate exited %d", rc);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE phase = 'receiver' AND generation = 2"), 1,
		     "the fenced-off vm-migrate wrote to the attempt");
	wait_leases_expired(c);
	cr_assert_eq(recover(&first), 0);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'failed' AND phase = 'done'"
				  " AND generation = 3 AND lease_owner LIKE 'vm-migrate --recover%'"), 1);
	check_end_state(c, &g0, outcome, sizeof(outcome));
	cr_assert_str_eq(outcome, "runs on w1");
	PQfinish(c);
}
#endif

#ifndef VMOPS_FAULTS_PG_RESTART
/*
 * An ambiguous COMMIT: the connection is cut just before or just after the
 * COMMIT of the transaction that ends a phase.  vm-migrate reconnects,
 * reads the outcome back (it did not commit / it did), runs the
 * transaction again only if it had not committed, and completes.  Running
 * the finish transaction again after it had committed would be refused
 * (completion needs a sandbox still migrating), so a missing read-back
 * fails commit_cut_after_finish (tried).  The release at "done" is
 * idempotent; its case checks the read-back is reached.
 */
static void ambiguous_commit(const char *phase, const char *cut, const char *said)
{
	PGconn *c = fleet();
	char log1[512], outcome[200], fault[64];
	struct testlib_guest g0;
	int rc;

	testlib_need_qemu();
	launch();
	serial_of_active(c, log1, sizeof(log1));
	testlib_wait_heartbeat(log1, 2, 90, &g0);
	snprintf(fault, sizeof(fault), "%s:%s", phase, cut);
	rc = wait_exit(spawn_migrate_fault(fault, "10s"));
	{
		char buf[8192] = "";
		read_mig_out(buf, sizeof(buf));
		cr_assert_eq(rc, 0, "vm-migrate with %s exited %d:\n%s", fault, rc, buf);
		cr_assert(strstr(buf, said),
			  "vm-migrate with %s did not say it %s:\n%s", fault, said, buf);
	}
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'completed' AND phase = 'done'"), 1);
	check_end_state(c, &g0, outcome, sizeof(outcome));
	cr_assert_str_eq(outcome, "runs on w2");
	PQfinish(c);
}

Test(faults, commit_cut_before_finish, .timeout = 300, .fini = kill_test_vms)
{
	ambiguous_commit("finish", "cut-before-commit",
			 "connection lost during COMMIT; it had not committed: running it again");
}

Test(faults, commit_cut_after_finish, .timeout = 300, .fini = kill_test_vms)
{
	ambiguous_commit("finish", "cut-after-commit", "connection lost during COMMIT; it had committed");
}

Test(faults, commit_cut_after_done, .timeout = 300, .fini = kill_test_vms)
{
	ambiguous_commit("done", "cut-after-commit", "connection lost during COMMIT; it had committed");
}

/* The claim: it committed, the reply was lost; vm-migrate adopts its own claim. */
Test(faults, commit_cut_after_claim, .timeout = 300, .fini = kill_test_vms)
{
	ambiguous_commit("claim", "cut-after-commit", "connection lost while claiming a target; the claim had committed");
}
#endif

#ifndef VMOPS_FAULTS_PG_RESTART
/*
 * A vm-migrate whose source was moved away by another migration while it
 * prepared (stopped at "prepare", after reading the sandbox and before
 * asking the source) says the sandbox changed (exit 10), not that the
 * hypervisor failed (7, as the soak once saw).
 */
Test(faults, source_moved_while_preparing, .timeout = 300, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	char log1[512], outcome[200], buf[8192] = "";
	struct testlib_guest g0;
	struct testrun r;
	pid_t a;
	int rc;

	testlib_need_qemu();
	launch();
	serial_of_active(c, log1, sizeof(log1));
	testlib_wait_heartbeat(log1, 2, 90, &g0);
	a = spawn_migrate("prepare", "10s");
	for (int i = 0; proc_state(a) != 'T'; i++) {
		cr_assert(proc_state(a) != 0 && proc_state(a) != 'Z' && i < 1200, "vm-migrate did not stop");
		usleep(100000);
	}
	TESTRUN(&r, "vm-migrate", "--db", ci, "-q", "sb1", "--to", "w2");
	cr_assert_eq(r.status, 0, "the other migration: %s", r.err);
	testrun_free(&r);
	kill(a, SIGCONT);
	rc = wait_exit(a);
	read_mig_out(buf, sizeof(buf));
	cr_assert_eq(rc, VMOPS_EXIT_CONFLICT, "exit %d:\n%s", rc, buf);
	cr_assert(strstr(buf, "changed while vm-migrate was preparing"), "%s", buf);
	check_end_state(c, &g0, outcome, sizeof(outcome));
	cr_assert_str_eq(outcome, "runs on w2");
	PQfinish(c);
}
#endif

#ifndef VMOPS_FAULTS_PG_RESTART
/*
 * Ctrl-C, then Ctrl-C again while the first is being cleaned up (held at
 * the rollback boundary): vm-migrate leaves at once with exit 12 and says
 * the attempt is left to its lease; --recover then finishes it.
 */
Test(faults, second_interrupt_leaves_at_once, .timeout = 300, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	char log1[512], outcome[200], buf[8192] = "";
	struct testlib_guest g0;
	int rc, first = -1;
	pid_t mig;

	testlib_need_qemu();
	launch();
	serial_of_active(c, log1, sizeof(log1));
	testlib_wait_heartbeat(log1, 2, 90, &g0);
	/* 1 MiB/s: the transfer of a 128 MiB guest outlasts the test's steps */
	mig = spawn_migrate_fault_bw("rollback:stop", "5s", "1M/s");
	for (int i = 0; testdb_ll(c, "SELECT count(*) FROM migrations WHERE phase = 'transfer'") == 0; i++) {
		cr_assert(proc_state(mig) != 0 && proc_state(mig) != 'Z' && i < 1200, "no transfer began");
		usleep(100000);
	}
	kill(mig, SIGINT);
	for (int i = 0; proc_state(mig) != 'T'; i++) {
		cr_assert(proc_state(mig) != 0 && proc_state(mig) != 'Z' && i < 1200,
			  "vm-migrate did not reach the rollback after the first SIGINT");
		usleep(100000);
	}
	/* an operator's second Ctrl-C, not a repeat of the first (lib/interrupt.h) */
	usleep((VMOPS_INTERRUPT_REPEAT_MS + 200) * 1000);
	kill(mig, SIGINT);
	kill(mig, SIGCONT);
	rc = wait_exit(mig);
	read_mig_out(buf, sizeof(buf));
	cr_assert_eq(rc, VMOPS_EXIT_INTERRUPTED, "exit %d:\n%s", rc, buf);
	cr_assert(strstr(buf, "second interrupt: leaving at once") && strstr(buf, "vm-migrate --recover"), "%s", buf);
	{
		/* The line names what it left: the sandbox and the attempt. */
		char what[128];
		snprintf(what, sizeof(what), "sandbox sb1, migration %lld (w1 -> w2)",
			 testdb_ll(c, "SELECT max(id) FROM migrations"));
		cr_assert(strstr(buf, what), "no '%s' in:\n%s", what, buf);
	}
	wait_leases_expired(c);
	cr_assert_eq(recover(&first), 0);
	check_end_state(c, &g0, outcome, sizeof(outcome));
	cr_assert_str_eq(outcome, "runs on w1");
	PQfinish(c);
}

/*
 * A receiver slow to start (as on a loaded host): QEMU found first in PATH
 * is a script that stops itself and, once continued, runs the real QEMU
 * with the same pid and start time.  Its control socket does not exist
 * while it is stopped, so vm-migrate waits for it.
 */
static void slow_receiver_path(char *bin, size_t len)
{
	char script[400], real[300] = "";
	FILE *f, *w = popen("command -v qemu-system-x86_64", "r");

	cr_assert(w && fgets(real, sizeof(real), w), "no qemu-system-x86_64 in PATH");
	pclose(w);
	real[strcspn(real, "\n")] = '\0';
	snprintf(bin, len, "%s/slowbin", rundir);
	cr_assert(mkdir(bin, 0755) == 0 || errno == EEXIST);
	snprintf(script, sizeof(script), "%s/qemu-system-x86_64", bin);
	f = fopen(script, "w");
	cr_assert(f);
	fprintf(f, "#!/bin/sh\nkill -STOP $$\nexec %s \"$@\"\n", real);
	fclose(f);
	cr_assert(chmod(script, 0755) == 0);
}

/* vm-migrate sb1 --to w2 whose receivers start slowly (VMOPS_FAULT = fault, may be NULL). */
static pid_t spawn_migrate_slow_receiver(const char *fault)
{
	char bin[300], path[4096];
	pid_t pid;

	slow_receiver_path(bin, sizeof(bin));
	snprintf(path, sizeof(path), "%s:%s", bin, getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin");
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		char out[300], exe[512];
		int fd;

		snprintf(out, sizeof(out), "%s/mig.out", rundir);
		fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 1);
		dup2(fd, 2);
		setenv("PATH", path, 1);
		if (fault)
			setenv("VMOPS_FAULT", fault, 1);
		snprintf(exe, sizeof(exe), "%s/vm-migrate", getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin");
		execl(exe, "vm-migrate", "--db", ci, "-v", "sb1", "--to", "w2", "--lease", "5s", (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Any process (hypervisor or not) whose command line names the test's directory. */
struct under {
	char state;
	pid_t pid;
	bool kill;
};

static int under_cb(const struct vmops_proc_info *i, void *data)
{
	struct under *u = data;

	for (int k = 1; k < i->argc; k++)
		if (strstr(i->argv[k], rundir) && strstr(i->argv[k], "/w2/")) {
			if (u->kill)
				kill(i->stat.pid, SIGKILL);
			u->state = i->stat.state;
			u->pid = i->stat.pid;
			return 0;
		}
	return 0;
}

static struct under receiver_process(void)
{
	struct under u = { 0 };

	(void)vmops_proc_scan("/proc", 0, under_cb, &u, NULL);
	return u;
}

static void kill_test_vms_and_receivers(void)
{
	struct under u = { .kill = true };

	if (rundir[0])
		(void)vmops_proc_scan("/proc", 0, under_cb, &u, NULL);
	kill_test_vms();
}

/* Until the slow receiver is there, stopped: vm-migrate now waits for its control socket. */
static void wait_receiver_stopped(pid_t mig)
{
	for (int i = 0; receiver_process().state != 'T'; i++) {
		cr_assert(proc_state(mig) != 0 && proc_state(mig) != 'Z' && i < 3000, "no receiver was started");
		usleep(20000);
	}
}

/* The receiver's traces are gone: no process, no reservation, no run directory. */
static void assert_receiver_gone(PGconn *c)
{
	char dir[400];
	struct stat st;
	long long tv = testdb_ll(c, "SELECT max(target_vmm_id) FROM migrations");

	cr_assert_eq(receiver_process().pid, 0, "the receiver's process is still there");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations r JOIN vmms v ON v.id = r.vmm_id"
				  " WHERE v.state <> 'running'"), 0, "a reservation outlived the receiver");
	snprintf(dir, sizeof(dir), "%s/w2/vmm-%lld", rundir, tv);
	cr_assert(lstat(dir, &st) < 0 && errno == ENOENT, "%s is still there", dir);
}

/*
 * Ctrl-C while vm-migrate waits for its receiver to come up: it stops
 * waiting, rolls back (exit 12, attempt cancelled), the VM runs on where
 * it was, and nothing of the receiver is left; --recover finds nothing.
 * (Before: the wait ignored the flag, ran into its 30 s timeout: exit 7.)
 */
Test(faults, interrupt_during_receiver_setup, .timeout = 300, .fini = kill_test_vms_and_receivers)
{
	PGconn *c = fleet();
	char log1[512], outcome[200], buf[8192] = "";
	struct testlib_guest g0;
	int rc, first = -1;
	pid_t mig;

	testlib_need_qemu();
	launch();
	serial_of_active(c, log1, sizeof(log1));
	testlib_wait_heartbeat(log1, 2, 90, &g0);
	mig = spawn_migrate_slow_receiver(NULL);
	wait_receiver_stopped(mig);
	kill(mig, SIGINT);
	rc = wait_exit(mig);
	read_mig_out(buf, sizeof(buf));
	cr_assert_eq(rc, VMOPS_EXIT_INTERRUPTED, "exit %d:\n%s", rc, buf);
	cr_assert(strstr(buf, "interrupted while waiting"), "%s", buf);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'cancelled' AND phase = 'done'"), 1);
	assert_receiver_gone(c);
	cr_assert_eq(recover(&first), 0);
	cr_assert_eq(first, 0);
	check_end_state(c, &g0, outcome, sizeof(outcome));
	cr_assert_str_eq(outcome, "runs on w1");
	assert_receiver_gone(c);
	PQfinish(c);
}

/*
 * Ctrl-C while the receiver starts, and a second one during the unwind
 * (delivered by the fault hook at the rollback boundary): vm-migrate leaves
 * at once, exit 12, naming the sandbox, the attempt and --recover; the
 * attempt stays open in the database, and --recover then rolls it back.
 */
Test(faults, second_interrupt_during_receiver_unwind, .timeout = 300, .fini = kill_test_vms_and_receivers)
{
	PGconn *c = fleet();
	char log1[512], outcome[200], buf[8192] = "", what[128];
	struct testlib_guest g0;
	int rc, first = -1;
	pid_t mig;

	testlib_need_qemu();
	launch();
	serial_of_active(c, log1, sizeof(log1));
	testlib_wait_heartbeat(log1, 2, 90, &g0);
	mig = spawn_migrate_slow_receiver("rollback:sigint");
	wait_receiver_stopped(mig);
	kill(mig, SIGINT);
	rc = wait_exit(mig);
	read_mig_out(buf, sizeof(buf));
	cr_assert_eq(rc, VMOPS_EXIT_INTERRUPTED, "exit %d:\n%s", rc, buf);
	snprintf(what, sizeof(what), "sandbox sb1, migration %lld (w1 -> w2)", testdb_ll(c, "SELECT max(id) FROM migrations"));
	cr_assert(strstr(buf, "second interrupt: leaving at once") && strstr(buf, what) &&
		  strstr(buf, "vm-migrate --recover"), "no '%s' in:\n%s", what, buf);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE phase <> 'done'"), 1, "the attempt was finished");
	wait_leases_expired(c);
	cr_assert_eq(recover(&first), 0);
	check_end_state(c, &g0, outcome, sizeof(outcome));
	cr_assert_str_eq(outcome, "runs on w1");
	assert_receiver_gone(c);
	PQfinish(c);
}
#endif
