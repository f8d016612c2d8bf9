/* SPDX-License-Identifier: MIT */
/*
 * The concurrency soak behind `make check-long` (not `make check`:
 * tests/run-all.sh skips this suite unless VMOPS_CHECK_LONG=1).
 *
 * 16 vm-migrate processes over 3 workers and 6 small guests (128 MiB, the
 * test guest's dirtier at 4 MiB), for a bounded time: each process migrates
 * sandbox after sandbox without --to, so they contend for the sandboxes
 * ("already migrating") and for the targets (one in-flight receiver per
 * target worker, enforced by the database).  Afterwards, from the
 * migrations table and the hosts' processes:
 *   - never two active attempts on one target (or one sandbox) at
 *     overlapping times;
 *   - no attempt left open, no VM lost: every sandbox runs, on exactly one
 *     live QEMU, the one the database points at, with its memory intact
 *     (testlib_assert_guest_continues) and exactly one open scale event for
 *     that VMM;
 *   - after vmm-reap no reservation of a dead VMM; usage-parity clean.
 * A summary (attempts, completed, failed and why, waits) is printed.
 *
 * Tunables (environment): VMOPS_SOAK_PROCS (16), VMOPS_SOAK_SANDBOXES (6),
 * VMOPS_SOAK_SECONDS (120: no new vm-migrate starts after that).
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"
#include "exitcodes.h"
#include "testlib.h"

#define MAX_SB 32
#define MAX_PROCS 64
#define N_WORKERS 3

static char ci[512];
static char rundir[256];

static void kill_test_vms(void)
{
	testlib_kill_vms_under(rundir);
}

static int env_int(const char *name, int def, int lo, int hi)
{
	const char *v = getenv(name);
	int n = v && *v ? atoi(v) : def;

	return n < lo ? lo : n > hi ? hi : n;
}

static double mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

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

static void launch(int i, const char *worker)
{
	char spec[300], name[32];
	struct testrun r;
	FILE *f;

	snprintf(spec, sizeof(spec), "%s/sb%d.json", rundir, i);
	snprintf(name, sizeof(name), "sb%d", i);
	f = fopen(spec, "w");
	cr_assert(f);
	fprintf(f, "{\"hypervisor\":\"qemu\",\"memory_mb\":128,\"vcpus\":1,\"kernel\":\"%s\",\"initrd\":\"%s\","
		   "\"cmdline\":\"console=ttyS0 no_timer_check vmops.dirty_mb=4\",\"accel\":\"tcg\"}\n",
		getenv("VMOPS_TEST_KERNEL"), getenv("VMOPS_TEST_INITRD"));
	fclose(f);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", name, "--org", "acme",
		"--worker", worker, "--spec", spec);
	cr_assert_eq(r.status, 0, "launch %s: %s", name, r.err);
	testrun_free(&r);
}

static void serial_of(PGconn *c, int i, char *buf, size_t len)
{
	char sql[256];
	PGresult *r;

	snprintf(sql, sizeof(sql), "SELECT v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id"
		 " WHERE s.name = 'sb%d'", i);
	r = testdb_exec(c, sql);
	cr_assert_eq(PQntuples(r), 1, "sb%d has no active VMM", i);
	snprintf(buf, len, "%s/serial.log", PQgetvalue(r, 0, 0));
	PQclear(r);
}

/* ---- the vm-migrate processes (forked children: no cr_assert in here) ---- */

static const cJSON *find_key(const cJSON *j, const char *key)
{
	for (const cJSON *c = j ? j->child : NULL; c; c = c->next) {
		const cJSON *f;
		if (c->string && !strcmp(c->string, key))
			return c;
		if ((f = find_key(c, key)))
			return f;
	}
	return NULL;
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
	if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)
		buf[0] = '\0';
	fclose(f);
	return buf;
}

/* One vm-migrate run; appends "proc sandbox exit wall_ms wait_ms state error" to soak.tsv. */
static int one_migrate(int proc, int sb, int tsv)
{
	char out[300], err[300], name[32], line[1400], why[1024] = "", state[32] = "?";
	double t0 = mono_s();
	long long wait_ms = -1;
	int st, rc;
	pid_t pid;

	snprintf(out, sizeof(out), "%s/p%d.out", rundir, proc);
	snprintf(err, sizeof(err), "%s/p%d.err", rundir, proc);
	snprintf(name, sizeof(name), "sb%d", sb);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		char path[512];
		int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(o, 1);
		dup2(e, 2);
		/* tests only: look for a free target every second instead of every 5 s */
		setenv("VMOPS_TEST_POLL_SCALE", "5", 1);
		snprintf(path, sizeof(path), "%s/vm-migrate", getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin");
		execl(path, "vm-migrate", "--db", ci, "--json", name, "--wait-target", "30s", "--lease", "10s",
		      (char *)NULL);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	{
		char *txt = slurp(out);
		cJSON *doc = txt ? cJSON_Parse(txt) : NULL;
		const cJSON *j;

		if ((j = find_key(doc, "state")) && cJSON_IsString(j))
			snprintf(state, sizeof(state), "%s", j->valuestring);
		if ((j = find_key(doc, "wait_ms")) && cJSON_IsNumber(j))
			wait_ms = (long long)j->valuedouble;
		if ((j = find_key(doc, "error")) && cJSON_IsString(j))
			snprintf(why, sizeof(why), "%s", j->valuestring);
		cJSON_Delete(doc);
		free(txt);
	}
	if (!why[0] && rc != 0) {
		/* no JSON (usage error, crash): the last line of stderr */
		char *txt = slurp(err);
		if (txt) {
			char *nl;
			while ((nl = strrchr(txt, '\n')) && nl[1] == '\0')
				*nl = '\0';
			snprintf(why, sizeof(why), "%s", (nl = strrchr(txt, '\n')) ? nl + 1 : txt);
			free(txt);
		}
	}
	for (char *p = why; *p; p++)
		if (*p == '\t' || *p == '\n')
			*p = ' ';
	snprintf(line, sizeof(line), "%d\t%d\t%d\t%lld\t%lld\t%s\t%s\n", proc, sb, rc,
		 (long long)((mono_s() - t0) * 1000), wait_ms, state, why);
	if (write(tsv, line, strlen(line)) < 0)
		return -1;
	return rc;
}

static void migrator(int proc, int n_sb, double deadline)
{
	char path[300];
	int tsv;

	snprintf(path, sizeof(path), "%s/soak.tsv", rundir);
	tsv = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (tsv < 0)
		_exit(2);
	srandom((unsigned)getpid());
	for (int k = 0; mono_s() < deadline; k++) {
		int rc = one_migrate(proc, 1 + (proc + k) % n_sb, tsv);

		if (rc < 0)
			_exit(3);
		/* A refusal comes back at once: do not spin on it. */
		if (rc != 0)
			usleep(200000 + (useconds_t)(random() % 800000));
	}
	close(tsv);
	_exit(0);
}

/* ---- the summary ---- */

struct reason {
	int rc;
	char why[160];
	int n;
};

/* "migration 17: ..." and "sb3" differ only in numbers: count them as one reason. */
static void normalise(char *dst, size_t len, const char *src)
{
	size_t k = 0;

	for (const char *p = src; *p && k + 1 < len; p++) {
		if (*p >= '0' && *p <= '9') {
			if (k == 0 || dst[k - 1] != '#')
				dst[k++] = '#';
			continue;
		}
		dst[k++] = *p;
	}
	dst[k] = '\0';
}

static void summarise(int n_procs, int n_sb, double soak_s, long long *completed_out)
{
	char path[300], line[1400];
	struct reason reasons[64];
	int n_reasons = 0;
	long long runs = 0, completed = 0, max_wait = -1, max_wall = -1, sum_wall_ok = 0, per_sb[MAX_SB + 1] = { 0 };
	FILE *f;

	memset(reasons, 0, sizeof(reasons));
	snprintf(path, sizeof(path), "%s/soak.tsv", rundir);
	f = fopen(path, "r");
	cr_assert(f, "no results from the vm-migrate processes");
	while (fgets(line, sizeof(line), f)) {
		int proc, sb, rc, i;
		long long wall, wait;
		char state[32], why[1024] = "", norm[160];

		if (sscanf(line, "%d\t%d\t%d\t%lld\t%lld\t%31[^\t]\t%1023[^\n]", &proc, &sb, &rc, &wall, &wait, state, why) < 6)
			continue;
		runs++;
		if (wait > max_wait)
			max_wait = wait;
		if (wall > max_wall)
			max_wall = wall;
		if (rc == 0) {
			completed++;
			sum_wall_ok += wall;
			if (sb >= 1 && sb <= MAX_SB)
				per_sb[sb]++;
			continue;
		}
		normalise(norm, sizeof(norm), why);
		for (i = 0; i < n_reasons; i++)
			if (reasons[i].rc == rc && !strcmp(reasons[i].why, norm))
				break;
		if (i == n_reasons && n_reasons < 64) {
			reasons[i].rc = rc;
			snprintf(reasons[i].why, sizeof(reasons[i].why), "%s", norm);
			n_reasons++;
		}
		if (i < 64)
			reasons[i].n++;
	}
	fclose(f);
	printf("\nsoak: %d vm-migrate processes, %d workers, %d sandboxes of 128 MiB, %.0f s\n", n_procs, N_WORKERS,
	       n_sb, soak_s);
	printf("soak: %lld vm-migrate runs, %lld completed (mean %.1f s each), %lld refused or failed\n", runs, completed,
	       completed ? (double)sum_wall_ok / 1000.0 / (double)completed : 0.0, runs - completed);
	printf("soak: completed per sandbox:");
	for (int i = 1; i <= n_sb; i++)
		printf(" sb%d=%lld", i, per_sb[i]);
	printf("\nsoak: longest wait for a target %.1f s, longest run %.1f s\n", (double)max_wait / 1000.0,
	       (double)max_wall / 1000.0);
	for (int i = 0; i < n_reasons; i++)
		printf("soak:   %5d x exit %d: %s\n", reasons[i].n, reasons[i].rc, reasons[i].why);
	fflush(stdout);
	*completed_out = completed;
	for (int i = 1; i <= n_sb; i++)
		cr_expect(per_sb[i] > 0, "sb%d was never migrated: the soak did not exercise it", i);
	/* Racing migrations refuse each other (10) or find no room (9); none blames the hypervisor. */
	for (int i = 0; i < n_reasons; i++)
		cr_expect(reasons[i].rc != VMOPS_EXIT_HYPERVISOR, "%d runs exited %d: %s", reasons[i].n,
			  reasons[i].rc, reasons[i].why);
}

static void print_attempts(PGconn *c)
{
	PGresult *r = testdb_exec(c, "SELECT state, phase, count(*), coalesce(max(error), '')"
				     " FROM migrations GROUP BY 1, 2 ORDER BY 1, 2");

	for (int i = 0; i < PQntuples(r); i++)
		printf("soak: attempts %-10s phase %-8s %5s%s%s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
		       PQgetvalue(r, i, 2), *PQgetvalue(r, i, 3) ? "  e.g. " : "", PQgetvalue(r, i, 3));
	PQclear(r);
	r = testdb_exec(c, "SELECT w.name, count(*), round(max(extract(epoch FROM m.time_finished - m.time_started))::numeric, 1)"
			   " FROM migrations m JOIN workers w ON w.id = m.target_worker_id GROUP BY 1 ORDER BY 1");
	for (int i = 0; i < PQntuples(r); i++)
		printf("soak: target %s: %s attempts, longest %s s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
		       PQgetvalue(r, i, 2));
	PQclear(r);
	fflush(stdout);
}

/*
 * Two attempts overlap when each started before the other ended.  The
 * timestamps are their transactions' start times (now()), so an attempt
 * claimed right after another finished may appear to start a few
 * milliseconds before that one's finishing transaction began: overlaps up to
 * OVERLAP_SLACK are that, not two receivers at once (which would overlap by
 * the length of a transfer, seconds).
 */
#define OVERLAP_SLACK "0.1"

static void assert_no_overlap(PGconn *c, const char *col, const char *what)
{
	char sql[1400];
	PGresult *r;

	snprintf(sql, sizeof(sql),
		 "SELECT a.id, b.id, round(1000 * extract(epoch FROM least(coalesce(a.time_finished, now()),"
		 "   coalesce(b.time_finished, now())) - greatest(a.time_started, b.time_started)))::bigint AS ms"
		 " FROM migrations a JOIN migrations b ON a.%s = b.%s AND a.id < b.id"
		 " WHERE a.time_started < coalesce(b.time_finished, now()) AND b.time_started < coalesce(a.time_finished, now())"
		 " ORDER BY ms DESC", col, col);
	r = testdb_exec(c, sql);
	if (PQntuples(r) > 0)
		printf("soak: %d pair(s) of attempts on one %s touch in time, the widest by %s ms (slack %s s)\n",
		       PQntuples(r), what, PQgetvalue(r, 0, 2), OVERLAP_SLACK);
	for (int i = 0; i < PQntuples(r); i++)
		cr_expect(atoll(PQgetvalue(r, i, 2)) <= (long long)(atof(OVERLAP_SLACK) * 1000),
			  "attempts %s and %s were active on one %s at once, for %s ms", PQgetvalue(r, i, 0),
			  PQgetvalue(r, i, 1), what, PQgetvalue(r, i, 2));
	PQclear(r);
}

Test(soak, concurrent_migrations, .timeout = 1200, .fini = kill_test_vms)
{
	int n_procs = env_int("VMOPS_SOAK_PROCS", 16, 1, MAX_PROCS);
	int n_sb = env_int("VMOPS_SOAK_SANDBOXES", 6, 1, MAX_SB);
	int soak_s = env_int("VMOPS_SOAK_SECONDS", 120, 5, 3600);
	struct testlib_guest g0[MAX_SB + 1];
	pid_t kids[MAX_PROCS];
	long long completed = 0;
	char sql[1024], log[512];
	double t0, deadline;
	struct testrun r;
	PGconn *c;

	testlib_need_qemu();
	c = testdb_new(true, ci, sizeof(ci));
	snprintf(rundir, sizeof(rundir), "/tmp/vmops-soak.XXXXXX");
	cr_assert(mkdtemp(rundir));
	snprintf(sql, sizeof(sql), "INSERT INTO workers (name, memory_mb, vcpus, run_dir) VALUES"
		 " ('w1', 2048, 16, '%s/w1'), ('w2', 2048, 16, '%s/w2'), ('w3', 2048, 16, '%s/w3')",
		 rundir, rundir, rundir);
	PQclear(testdb_exec(c, sql));
	for (int i = 1; i <= n_sb; i++) {
		char w[8];
		snprintf(w, sizeof(w), "w%d", 1 + (i - 1) % N_WORKERS);
		launch(i, w);
	}
	for (int i = 1; i <= n_sb; i++) {
		serial_of(c, i, log, sizeof(log));
		testlib_wait_heartbeat(log, 2, 180, &g0[i]);
	}

	t0 = mono_s();
	deadline = t0 + soak_s;
	for (int p = 0; p < n_procs; p++) {
		kids[p] = fork();
		cr_assert(kids[p] >= 0);
		if (kids[p] == 0)
			migrator(p, n_sb, deadline);
	}
	for (int p = 0; p < n_procs; p++) {
		int st;
		while (waitpid(kids[p], &st, 0) < 0 && errno == EINTR)
			;
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "migrator %d ended with status %#x", p, st);
	}
	summarise(n_procs, n_sb, mono_s() - t0, &completed);
	print_attempts(c);

	/* The database: never two at once, nothing left open. */
	assert_no_overlap(c, "target_worker_id", "target worker");
	assert_no_overlap(c, "sandbox_id", "sandbox");
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state IN ('queued', 'preparing',"
				  " 'transferring', 'switching') OR phase <> 'done'"), 0,
		     "attempts left open after every vm-migrate exited");
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'completed'"), completed,
		     "completed attempts in the table differ from vm-migrate runs that exited 0");

	/* No VM lost: each runs once, where the database says, with its memory intact. */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running'"), n_sb,
		     "not every sandbox runs");
	cr_expect_eq(count_live_qemus(), n_sb, "not exactly one QEMU per sandbox");
	{
		PGresult *res = testdb_exec(c, "SELECT s.name, v.pid, v.pid_start_time FROM sandboxes s"
					       " JOIN vmms v ON v.id = s.active_vmm_id ORDER BY s.name");
		cr_expect_eq(PQntuples(res), n_sb);
		for (int i = 0; i < PQntuples(res); i++)
			cr_expect_eq(vmops_proc_check("/proc", (pid_t)atoll(PQgetvalue(res, i, 1)),
						      strtoull(PQgetvalue(res, i, 2), NULL, 10), NULL, NULL),
				     VMOPS_PROC_ALIVE, "%s: the database points at a QEMU that is not running",
				     PQgetvalue(res, i, 0));
		PQclear(res);
	}
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE state IN ('running', 'starting', 'migrating')"), n_sb);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s WHERE (SELECT count(*) FROM scale_events e"
				  " WHERE e.sandbox_id = s.id AND e.ended_at IS NULL AND e.vmm_id = s.active_vmm_id) <> 1"
				  " OR (SELECT count(*) FROM scale_events e WHERE e.sandbox_id = s.id AND e.ended_at IS NULL) <> 1"),
		     0, "a sandbox without exactly one open scale event on its active VMM");
	/* usage-parity's overlap check covers a past window (the test has no usage samples to compare
	 * the soak's hour with): the ledger of the soak itself, no event billed twice. */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events a JOIN scale_events b ON a.sandbox_id = b.sandbox_id"
				  " AND a.id < b.id WHERE a.started_at < coalesce(b.ended_at, 'infinity')"
				  " AND b.started_at < coalesce(a.ended_at, 'infinity')"),
		     0, "two scale events of one sandbox overlap: billed twice");
	for (int i = 1; i <= n_sb; i++) {
		serial_of(c, i, log, sizeof(log));
		testlib_assert_guest_continues(log, g0[i].boot_sum, &g0[i].last, 120, NULL);
	}

	TESTRUN(&r, "vmm-reap", "--db", ci, "-q");
	cr_expect_eq(r.status, 0, "vmm-reap: %s", r.err);
	testrun_free(&r);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM reservations r JOIN vmms v ON v.id = r.vmm_id"
				  " WHERE v.state IN ('destroyed', 'failed')"), 0, "a reservation outlived its VMM");
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), n_sb);
	TESTRUN(&r, "usage-parity", "--db", ci, "-q", "--from", "now-2h", "--to", "now-1h");
	cr_expect_eq(r.status, 0, "usage-parity found drift:\n%s\n%s", r.err, r.out);
	testrun_free(&r);
	PQfinish(c);
}
