/* SPDX-License-Identifier: MIT */
/*
 * Workers on other hosts, reached over ssh: the test hosts are network
 * namespaces with their own sshd, PID namespace and /proc, made by
 * tests/hosts/with-hosts.sh around this suite (tests/run-all.sh and
 * tests/run-one.sh do that).  Cases run one at a time (--jobs 1): some stop
 * a host's sshd or take its link down.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exitcodes.h"
#include "hv.h"
#include "migrate.h"
#include "qmp.h"
#include "testlib.h"

static char ci[512];
static char rundir[256];

static void need_hosts(void)
{
	if (!getenv("VMOPS_TEST_HOSTS_DIR") || !getenv("VMOPS_TEST_HOSTCTL"))
		testlib_missing("no test hosts: run under tests/hosts/with-hosts.sh as root (network namespaces)");
}

static const char *addr(int i)
{
	static char name[40];

	snprintf(name, sizeof(name), "VMOPS_TEST_HOST%d_ADDR", i);
	cr_assert(getenv(name), "%s unset", name);
	return getenv(name);
}

static const char *host_id(int i)
{
	static char name[40];

	snprintf(name, sizeof(name), "VMOPS_TEST_HOST%d_ID", i);
	cr_assert(getenv(name), "%s unset", name);
	return getenv(name);
}

/* tests/hosts/hostctl.sh ACTION I [sh -c CMD]: its stdout, exit code in *rc. */
static char *hostctl(const char *action, int i, const char *cmd, int *rc)
{
	static char out[8192];
	char line[1024];
	size_t n = 0;
	FILE *p;
	int st;

	if (cmd)
		snprintf(line, sizeof(line), "'%s' %s %d sh -c '%s'", getenv("VMOPS_TEST_HOSTCTL"), action, i, cmd);
	else
		snprintf(line, sizeof(line), "'%s' %s %d", getenv("VMOPS_TEST_HOSTCTL"), action, i);
	p = popen(line, "r");
	cr_assert(p);
	out[0] = '\0';
	while (n + 1 < sizeof(out) && fgets(out + n, (int)(sizeof(out) - n), p))
		n = strlen(out);
	st = pclose(p);
	if (rc)
		*rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	else
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "hostctl %s %d failed: %s", action, i, out);
	return out;
}

static void fini(void)
{
	testlib_kill_vms_under(rundir);
	/* A case that stopped a host gives it back to the next. */
	if (getenv("VMOPS_TEST_HOSTCTL"))
		for (int i = 1; i <= 3; i++) {
			int rc;
			hostctl("link-up", i, NULL, &rc);
			hostctl("start-sshd", i, NULL, &rc);
		}
}

static PGconn *fleet(void)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	snprintf(rundir, sizeof(rundir), "/tmp/vmops-ht.XXXXXX");
	cr_assert(mkdtemp(rundir));
	return c;
}

/* vm-fleet worker add NAME over ssh to host I; must succeed. */
static void add_worker(const char *name, int i)
{
	struct testrun r;
	char rd[300];

	snprintf(rd, sizeof(rd), "%s/%s", rundir, name);
	TESTRUN(&r, "vm-fleet", "--db", ci, "worker", "add", name, "--memory", "1G", "--vcpus", "2",
		"--transport", "ssh", "--address", addr(i), "--run-dir", rd);
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
}

/* The test guest; `extra`: more kernel command-line words (tests/guest/build-guest.sh). */
static const char *spec_with(const char *name, const char *extra)
{
	static char path[300];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.json", rundir, name);
	f = fopen(path, "w");
	cr_assert(f);
	fprintf(f, "{\"hypervisor\":\"qemu\",\"memory_mb\":128,\"vcpus\":1,\"kernel\":\"%s\",\"initrd\":\"%s\","
		   "\"cmdline\":\"console=ttyS0 no_timer_check vmops.dirty_mb=8%s%s\",\"accel\":\"tcg\"}\n",
		getenv("VMOPS_TEST_KERNEL"), getenv("VMOPS_TEST_INITRD"), extra ? " " : "", extra ? extra : "");
	fclose(f);
	return path;
}

static const char *spec(const char *name)
{
	return spec_with(name, NULL);
}

static char *counts(PGconn *c)
{
	PGresult *r = testdb_exec(c,
		"SELECT (SELECT count(*) FROM sandboxes) || '/' || (SELECT count(*) FROM vmms) || '/' ||"
		" (SELECT count(*) FROM reservations) || '/' || (SELECT count(*) FROM scale_events) || '/' ||"
		" (SELECT count(*) FROM audit_log)");
	char *s = strdup(PQgetvalue(r, 0, 0));

	PQclear(r);
	return s;
}

/* QEMU processes on host I whose command line names our run directory. */
static int vms_on_host(int i)
{
	char cmd[512];

	/* comm, not the command line: this very shell's command line names rundir too. */
	snprintf(cmd, sizeof(cmd), "for p in /proc/[0-9]*; do grep -q \"^qemu\" $p/comm 2>/dev/null &&"
		 " tr \"\\\\0\" \" \" <$p/cmdline | grep -q \"vmops-vmm-.*%s\" &&"
		 " ! grep -q \"^State:.Z\" $p/status && echo $p; done | wc -l", rundir);
	return atoi(hostctl("run", i, cmd, NULL));
}

static void launch_spec(const char *sandbox, const char *worker, const char *spec_path, int want)
{
	struct testrun r;

	TESTRUN(&r, "vm-fleet", "--db", ci, "launch", "--sandbox", sandbox, "--org", "acme", "--worker", worker,
		"--spec", spec_path, "--wait", "60s");
	cr_assert_eq(r.status, want, "launch %s: exit %d: %s", sandbox, r.status, r.err);
	testrun_free(&r);
}

static void launch(PGconn *c, const char *sandbox, const char *worker, int want)
{
	struct testrun r;

	TESTRUN(&r, "vm-fleet", "--db", ci, "launch", "--sandbox", sandbox, "--org", "acme", "--worker", worker,
		"--spec", spec(sandbox), "--wait", "60s");
	cr_assert_eq(r.status, want, "launch %s: exit %d: %s", sandbox, r.status, r.err);
	if (want)
		cr_assert_eq(testlib_lines(r.err), 1, "one line: %s", r.err);
	testrun_free(&r);
	(void)c;
}

Test(hosts, worker_add_asks_the_host_who_it_is, .timeout = 120, .fini = fini)
{
	PGconn *c;
	struct testrun r;
	char *before;

	need_hosts();
	c = fleet();
	add_worker("w1", 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND transport = 'ssh'"), 1);
	{
		char sql[256];
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM workers WHERE name = 'w1' AND host_id = '%s'"
			 " AND migration_address = '%s'", host_id(1), addr(1));
		cr_assert_eq(testdb_ll(c, sql), 1, "the host's own identity is recorded");
	}
	before = counts(c);
	/* --host-id that is not the host's: refused there, nothing recorded. */
	TESTRUN(&r, "vm-fleet", "--db", ci, "worker", "add", "w2", "--memory", "1G", "--vcpus", "2",
		"--transport", "ssh", "--address", addr(2), "--host-id", host_id(3));
	cr_assert_eq(r.status, VMOPS_EXIT_WRONG_HOST, "%d %s", r.status, r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	/* An unreachable host: exit 17, nothing recorded. */
	hostctl("stop-sshd", 2, NULL, NULL);
	TESTRUN(&r, "vm-fleet", "--db", ci, "worker", "add", "w2", "--memory", "1G", "--vcpus", "2",
		"--transport", "ssh", "--address", addr(2));
	cr_assert_eq(r.status, VMOPS_EXIT_UNREACHABLE, "%d %s", r.status, r.err);
	cr_assert(strstr(r.err, "unreachable"), "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	cr_assert_str_eq(counts(c), before);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers"), 1);
	PQfinish(c);
}

Test(hosts, launch_runs_the_vm_on_that_host_and_destroy_stops_it_there, .timeout = 240, .fini = fini)
{
	PGconn *c;
	struct testrun r;
	long long pid, start;
	char cmd[128], serial[512], *stat;
	unsigned long long st = 0;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w1", 1);
	launch(c, "sb1", "w1", 0);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id"
				  " WHERE s.status = 'running' AND v.state = 'running'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 1);
	pid = testdb_ll(c, "SELECT pid FROM vmms");
	start = testdb_ll(c, "SELECT pid_start_time FROM vmms");
	/* The recorded pid and start time are the VMM's on host 1, in that host's own /proc. */
	cr_assert_eq(vms_on_host(1), 1);
	cr_assert_eq(vms_on_host(2), 0);
	snprintf(cmd, sizeof(cmd), "cat /proc/%lld/stat", pid);
	stat = hostctl("run", 1, cmd, NULL);
	stat = strrchr(stat, ')');
	cr_assert(stat);
	cr_assert_eq(sscanf(stat + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", &st), 1);
	cr_assert_eq((long long)st, start, "start time %llu on the host, %lld recorded", st, start);
	/* The guest runs (the namespaces share the filesystem: its serial log is here too). */
	snprintf(serial, sizeof(serial), "%s/w1/vmm-%lld/serial.log", rundir, testdb_ll(c, "SELECT id FROM vmms"));
	testlib_wait_heartbeat(serial, 1, 120, NULL);

	TESTRUN(&r, "vm-fleet", "--db", ci, "--json", "destroy", "sb1");
	cr_assert_eq(r.status, 0, "%s", r.err);
	/* Seen alive by its own host (this host's /proc knows nothing of that pid). */
	{
		const char *w = strstr(r.out, "\"was_running\":");
		cr_assert(w, "%s", r.out);
		w += strlen("\"was_running\":");
		w += strspn(w, " \t");
		cr_assert(!strncmp(w, "true", 4), "%s", r.out);
	}
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE state = 'destroyed'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 0);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 0);
	cr_assert_eq(vms_on_host(1), 0, "the VMM is gone from host 1");
	cr_assert(access(serial, F_OK) != 0, "its run directory was removed on the host");
	PQfinish(c);
}

Test(hosts, launch_on_an_unreachable_host_records_nothing, .timeout = 180, .fini = fini)
{
	PGconn *c;
	char *before;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w2", 2);
	before = counts(c);
	/* sshd stopped: refused at once. */
	hostctl("stop-sshd", 2, NULL, NULL);
	launch(c, "sb1", "w2", VMOPS_EXIT_UNREACHABLE);
	cr_assert_str_eq(counts(c), before, "nothing recorded, not even an audit row");
	/* The link down: no answer within the connect timeout. */
	hostctl("start-sshd", 2, NULL, NULL);
	hostctl("link-down", 2, NULL, NULL);
	setenv("VMOPS_SSH_CONNECT_TIMEOUT", "3", 1);
	launch(c, "sb1", "w2", VMOPS_EXIT_UNREACHABLE);
	unsetenv("VMOPS_SSH_CONNECT_TIMEOUT");
	cr_assert_str_eq(counts(c), before);
	hostctl("link-up", 2, NULL, NULL);
	cr_assert_eq(vms_on_host(2), 0);
	/* Back: the same launch works. */
	launch(c, "sb1", "w2", 0);
	cr_assert_eq(vms_on_host(2), 1);
	PQfinish(c);
}

Test(hosts, another_host_at_the_address_is_refused, .timeout = 120, .fini = fini)
{
	PGconn *c;
	char sql[256], *before;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w1", 1);
	/* The worker's address now leads to host 3, not the host recorded. */
	snprintf(sql, sizeof(sql), "UPDATE workers SET migration_address = '%s'", addr(3));
	PQclear(testdb_exec(c, sql));
	before = counts(c);
	launch(c, "sb1", "w1", VMOPS_EXIT_WRONG_HOST);
	cr_assert_str_eq(counts(c), before);
	cr_assert_eq(vms_on_host(3), 0);
	PQfinish(c);
}

Test(hosts, destroy_on_an_unreachable_host_changes_nothing, .timeout = 240, .fini = fini)
{
	PGconn *c;
	struct testrun r;
	char *before;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w3", 3);
	launch(c, "sb1", "w3", 0);
	before = counts(c);
	hostctl("stop-sshd", 3, NULL, NULL);
	TESTRUN(&r, "vm-fleet", "--db", ci, "destroy", "sb1");
	cr_assert_eq(r.status, VMOPS_EXIT_UNREACHABLE, "%d %s", r.status, r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	cr_assert_str_eq(counts(c), before);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running'"), 1);
	/* The host is only unreachable, not dead: its VM runs on. */
	hostctl("start-sshd", 3, NULL, NULL);
	cr_assert_eq(vms_on_host(3), 1);
	TESTRUN(&r, "vm-fleet", "--db", ci, "destroy", "sb1");
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
	cr_assert_eq(vms_on_host(3), 0);
	PQfinish(c);
}

/*
 * --recover across hosts (pure, vm-migrate(1)'s table): a host that does
 * not answer makes every attempt unknown, whatever else was seen; and a
 * rollback, once recorded, never resumes a loaded receiver while the source
 * lives (the source may already run the guest again).
 */
Test(hosts, recover_decides_unknown_for_an_unreachable_host_and_finishes_rollbacks)
{
	enum { A = VMOPS_RP_ALIVE, D = VMOPS_RP_DEAD };
	enum { U = VMOPS_RR_UNKNOWN, R = VMOPS_RR_RUNNING, P = VMOPS_RR_PAUSED, S = VMOPS_RR_STOPPED };
	static const struct {
		const char *phase;
		int src, src_run, completed, tgt, tgt_run, unreachable;
		enum vmops_recover_action want;
	} rows[] = {
		{ "rollback", A, R, 1, A, U, 1, VMOPS_RA_UNKNOWN },
		{ "finish", A, S, 1, A, R, 1, VMOPS_RA_UNKNOWN },
		{ "transfer", A, R, 0, A, P, 1, VMOPS_RA_UNKNOWN },
		{ "switchover", D, U, 0, A, P, 1, VMOPS_RA_UNKNOWN },
		{ "rollback", A, R, 1, A, P, 0, VMOPS_RA_ROLLBACK },   /* the source was resumed */
		{ "rollback", A, S, 1, A, P, 0, VMOPS_RA_ROLLBACK },   /* finish the rollback that was decided */
		{ "rollback", D, U, 0, A, P, 0, VMOPS_RA_ACTIVATE },   /* source gone: the receiver holds the guest */
		{ "transfer", A, S, 1, A, P, 0, VMOPS_RA_ACTIVATE },   /* unchanged without a rollback */
	};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct vmops_recover_facts f = {
			.phase = rows[i].phase, .src = rows[i].src, .tgt = rows[i].tgt, .src_run = rows[i].src_run,
			.tgt_run = rows[i].tgt_run, .src_completed = rows[i].completed, .unreachable = rows[i].unreachable,
		};
		const char *why = NULL;
		enum vmops_recover_action act = vmops_migrate_recover_decide(&f, &why);

		cr_assert_eq(act, rows[i].want, "row %zu: %s, want %s (%s)", i, vmops_migrate_recover_action_name(act),
			     vmops_migrate_recover_action_name(rows[i].want), why);
		cr_assert(why && *why);
	}
}

/* ---- live migration across hosts ------------------------------------------------------ */

/* A worker on this host whose migration address is this host's end of the test bridge. */
static void add_local_worker(PGconn *c, const char *name)
{
	char sql[700], bridge[64], *dot;

	snprintf(bridge, sizeof(bridge), "%s", addr(1));
	dot = strrchr(bridge, '.');
	cr_assert(dot);
	snprintf(dot, sizeof(bridge) - (size_t)(dot - bridge), ".1");
	snprintf(sql, sizeof(sql), "INSERT INTO workers (name, memory_mb, vcpus, run_dir, migration_address)"
		 " VALUES ('%s', 1024, 2, '%s/%s', '%s')", name, rundir, name, bridge);
	PQclear(testdb_exec(c, sql));
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

/* Runs on `worker`, billed there once; the old VMM destroyed with its room freed and its run dir gone. */
static void assert_moved(PGconn *c, const char *sandbox, const char *worker, long long old_vmm)
{
	char sql[600];

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
		 " JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = '%s' AND w.name = '%s'"
		 " AND s.status = 'running' AND v.state = 'running' AND v.worker_id = w.id"
		 " AND s.target_vmm_id IS NULL", sandbox, worker);
	cr_assert_eq(testdb_ll(c, sql), 1, "sandbox %s not running on %s", sandbox, worker);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
		 " WHERE s.name = '%s' AND e.ended_at IS NULL AND e.vmm_id = s.active_vmm_id"
		 " AND e.worker_id = s.worker_id", sandbox);
	cr_assert_eq(testdb_ll(c, sql), 1, "sandbox %s: not exactly one open event, on the target", sandbox);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM scale_events WHERE ended_at IS NULL");
	cr_assert_eq(testdb_ll(c, sql), 1);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM scale_events WHERE vmm_id = %lld AND ended_at IS NOT NULL", old_vmm);
	cr_assert_eq(testdb_ll(c, sql), 1, "the source's event is closed");
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM vmms WHERE id = %lld AND state = 'destroyed'", old_vmm);
	cr_assert_eq(testdb_ll(c, sql), 1);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM reservations WHERE vmm_id = %lld", old_vmm);
	cr_assert_eq(testdb_ll(c, sql), 0, "the source's room is freed");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 1);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM migrations WHERE source_vmm_id = %lld AND state = 'completed'"
		 " AND phase = 'done'", old_vmm);
	cr_assert_eq(testdb_ll(c, sql), 1);
}

static long long active_vmm(PGconn *c)
{
	return testdb_ll(c, "SELECT active_vmm_id FROM sandboxes WHERE name = 'sb1'");
}

static void migrate_ok(const char *to, const char *connections)
{
	struct testrun r;

	if (to)
		TESTRUN(&r, "vm-migrate", "--db", ci, "--json", "sb1", "--to", to, "--connections", connections);
	else
		TESTRUN(&r, "vm-migrate", "--db", ci, "--json", "sb1", "--connections", connections);
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	testrun_free(&r);
}

/*
 * ssh -> ssh (--to, two connections), then ssh -> this host and this host
 * -> ssh chosen by capacity: the receiver starts on the target's host and
 * listens on its address, the stream goes host to host, the guest's memory
 * check passes on every target, and the ledger follows the sandbox.
 */
Test(hosts, live_migration_between_hosts_over_ssh, .timeout = 420, .fini = fini)
{
	PGconn *c;
	char log[512], old_log[512];
	struct testlib_guest g0, g;
	long long v;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w1", 1);
	add_worker("w2", 2);
	launch(c, "sb1", "w1", 0);
	serial_of(c, "sb1", log, sizeof(log));
	testlib_wait_heartbeat(log, 2, 120, &g0);
	cr_assert_eq(vms_on_host(1), 1);

	/* h1 -> h2 */
	v = active_vmm(c);
	migrate_ok("w2", "2");
	assert_moved(c, "sb1", "w2", v);
	cr_assert_eq(testdb_ll(c, "SELECT connections_used FROM migrations ORDER BY id DESC LIMIT 1"), 2);
	cr_assert_eq(vms_on_host(1), 0, "the source stopped on host 1");
	cr_assert_eq(vms_on_host(2), 1, "the guest runs on host 2");
	snprintf(old_log, sizeof(old_log), "%s", log);
	cr_assert(access(old_log, F_OK) != 0, "the source's run directory was removed on host 1");
	serial_of(c, "sb1", log, sizeof(log));
	cr_assert(strstr(log, "/w2/"), "%s", log);
	testlib_assert_guest_continues(log, g0.boot_sum, &g0.last, 120, &g);

	/* h2 -> this host, chosen by capacity (w1 does not take any) */
	add_local_worker(c, "local1");
	PQclear(testdb_exec(c, "UPDATE workers SET state = 'draining' WHERE name = 'w1'"));
	v = active_vmm(c);
	migrate_ok(NULL, "1");
	assert_moved(c, "sb1", "local1", v);
	cr_assert_eq(vms_on_host(2), 0);
	serial_of(c, "sb1", log, sizeof(log));
	testlib_assert_guest_continues(log, g0.boot_sum, &g.last, 120, &g);

	/* this host -> h1, chosen by capacity */
	PQclear(testdb_exec(c, "UPDATE workers SET state = CASE name WHEN 'w1' THEN 'active' ELSE 'draining' END"
			       " WHERE name IN ('w1', 'w2')"));
	v = active_vmm(c);
	migrate_ok(NULL, "1");
	assert_moved(c, "sb1", "w1", v);
	cr_assert_eq(testlib_count_vms_under(rundir) - vms_on_host(1), 0, "nothing left on this host");
	cr_assert_eq(vms_on_host(1), 1);
	serial_of(c, "sb1", log, sizeof(log));
	testlib_assert_guest_continues(log, g0.boot_sum, &g.last, 120, NULL);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'completed'"), 3);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE state = 'destroyed'"), 3);
	PQfinish(c);
}

static void wait_sql(PGconn *c, const char *sql, long long want, int timeout_s)
{
	long long got = -1;

	for (int i = 0; i < timeout_s * 10; i++) {
		got = testdb_ll(c, sql);
		if (got == want)
			return;
		usleep(100000);
	}
	cr_assert_fail("%s: %lld, not %lld after %d s", sql, got, want, timeout_s);
}

static char *recover(int want, const char *err_has)
{
	static char out[4096];
	struct testrun r;

	TESTRUN(&r, "vm-migrate", "--db", ci, "--json", "--recover");
	cr_assert_eq(r.status, want, "--recover: exit %d, not %d\n%s\n%s", r.status, want, r.out, r.err);
	if (err_has)
		cr_assert(strstr(r.err, err_has), "%s", r.err);
	snprintf(out, sizeof(out), "%s", r.out);
	testrun_free(&r);
	return out;
}

/* A JSON report's integer member (lib/output writes "key":\tvalue). */
static long long json_int(const char *out, const char *key)
{
	char k[64];
	const char *p;

	snprintf(k, sizeof(k), "\"%s\":", key);
	p = strstr(out, k);
	cr_assert(p, "no %s in %s", key, out);
	return atoll(p + strlen(k) + strspn(p + strlen(k), " \t"));
}

/*
 * The target's host stops answering (its sshd killed) while the guest is
 * being sent: the stream still arrives there, but the target cannot be
 * asked or resumed.  The guest goes on on the source, the attempt fails
 * with exit 17 and leaves the receiver (unknown, not dead) to --recover,
 * which refuses to act while the host is away and reclaims it once the
 * host is back.
 */
Test(hosts, target_host_unreachable_mid_transfer, .timeout = 420, .fini = fini)
{
	PGconn *c;
	struct testproc p;
	struct testrun r;
	char log[512], target_dir[512], *before, *out;
	struct testlib_guest g0, g;
	long long tv;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w1", 1);
	add_worker("w2", 2);
	/* A dirtier that pauses 10 s between passes: a 4 MiB/s transfer converges, slowly. */
	launch_spec("sb1", "w1", spec_with("sb1", "vmops.dirty_pause_us=10000000"), 0);
	serial_of(c, "sb1", log, sizeof(log));
	testlib_wait_heartbeat(log, 2, 120, &g0);
	TESTRUN_START(&p, "vm-migrate", "--db", ci, "sb1", "--to", "w2", "--max-bandwidth", "4M/s");
	wait_sql(c, "SELECT count(*) FROM migrations m JOIN vmms v ON v.id = m.target_vmm_id"
		    " WHERE m.phase = 'transfer' AND v.pid IS NOT NULL", 1, 120);
	tv = testdb_ll(c, "SELECT target_vmm_id FROM migrations");
	hostctl("stop-sshd", 2, NULL, NULL);
	testrun_finish(&p, &r);
	cr_assert_eq(r.status, VMOPS_EXIT_UNREACHABLE, "exit %d: %s", r.status, r.err);
	cr_assert(strstr(r.err, "left to vm-migrate --recover"), "%s", r.err);
	testrun_free(&r);

	/* The guest goes on on the source; the receiver is left alone on its host. */
	testlib_wait_heartbeat(log, g0.last.n + 3, 60, NULL);
	testlib_assert_guest_continues(log, g0.boot_sum, &g0.last, 60, &g);
	cr_assert_eq(vms_on_host(1), 1);
	cr_assert_eq(vms_on_host(2), 1, "the receiver is unknown, never killed blind");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'migrating'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE phase = 'rollback'"
				  " AND state IN ('preparing', 'transferring', 'switching')"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL AND worker_id ="
				  " (SELECT id FROM workers WHERE name = 'w1')"), 1, "billed once, on the source");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events"), 1);

	/* While the host is away: nothing is done, exit 17. */
	before = counts(c);
	out = recover(VMOPS_EXIT_UNREACHABLE, NULL);
	cr_assert_eq(json_int(out, "unknown"), 1, "%s", out);
	cr_assert(strstr(out, "does not answer"), "%s", out);
	cr_assert_str_eq(counts(c), before);
	cr_assert_eq(vms_on_host(2), 1);

	/* Back: the receiver is reclaimed there, the sandbox stays on the source. */
	hostctl("start-sshd", 2, NULL, NULL);
	snprintf(target_dir, sizeof(target_dir), "%s/w2/vmm-%lld", rundir, tv);
	cr_assert(access(target_dir, F_OK) == 0, "%s", target_dir);
	out = recover(0, NULL);
	cr_assert_eq(json_int(out, "failed"), 1, "%s", out);
	cr_assert_eq(json_int(out, "receivers_killed"), 1, "%s", out);
	cr_assert_eq(vms_on_host(2), 0, "the receiver is gone from host 2");
	cr_assert(access(target_dir, F_OK) != 0, "its run directory was removed on host 2");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'failed' AND phase = 'done'"), 1);
	{
		char sql[200];
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM vmms WHERE id = %lld AND state = 'destroyed'", tv);
		cr_assert_eq(testdb_ll(c, sql), 1);
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM reservations WHERE vmm_id = %lld", tv);
		cr_assert_eq(testdb_ll(c, sql), 0, "the receiver's room is freed");
	}
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
				  " WHERE s.status = 'running' AND w.name = 'w1' AND s.target_vmm_id IS NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 1);
	testlib_assert_guest_continues(log, g0.boot_sum, &g.last, 60, NULL);
	PQfinish(c);
}

/* A VMM's QMP, asked directly (the test hosts share the filesystem): its run
 * state into st, and with mig, its query-migrate status instead.  0 answered. */
static int qmp_ask(PGconn *c, long long vmm, bool mig, char *st, size_t len)
{
	struct vmops_error e = { 0 };
	_cleanup_qmp_ struct vmops_qmp *q = NULL;
	cJSON *ret = NULL;
	const cJSON *s;
	char sql[160];
	PGresult *r;

	snprintf(sql, sizeof(sql), "SELECT control_socket FROM vmms WHERE id = %lld", vmm);
	r = testdb_exec(c, sql);
	cr_assert_eq(PQntuples(r), 1);
	q = vmops_qmp_connect(PQgetvalue(r, 0, 0), 5000, &e);
	PQclear(r);
	if (!q || vmops_qmp_cmd(q, mig ? "query-migrate" : "query-status", NULL, &ret, 5000, &e) < 0)
		return snprintf(st, len, "(%.200s)", e.msg), -1;
	s = cJSON_GetObjectItemCaseSensitive(ret, "status");
	snprintf(st, len, "%s", cJSON_IsString(s) ? s->valuestring : "none");
	cJSON_Delete(ret);
	return 0;
}

/* How many of the two VMMs run the guest, as their own QMP says (never two). */
static int guests_running(PGconn *c, long long a, long long b, char *why, size_t len)
{
	char sa[128], sb[128];
	int n = 0;

	n += qmp_ask(c, a, false, sa, sizeof(sa)) == 0 && !strcmp(sa, "running");
	n += qmp_ask(c, b, false, sb, sizeof(sb)) == 0 && !strcmp(sb, "running");
	snprintf(why, len, "vmm %lld: %s, vmm %lld: %s", a, sa, b, sb);
	cr_assert_leq(n, 1, "the guest runs twice: %s", why);
	return n;
}

/*
 * The source's host stops answering (its sshd killed) while the guest is
 * being sent: both QEMUs run on, only vmops's control path to host 1 is
 * gone.  vm-migrate cannot tell whether the source has sent everything, so
 * it undoes nothing: it does not declare the guest lost, does not cancel,
 * kill or resume anything, and exits 17 with the attempt left (in phase
 * transfer) to --recover, which also does nothing while host 1 is away.
 * QEMU's own migration completes meanwhile (the source stops, the receiver
 * holds the guest paused: never two running).  Once host 1 answers,
 * --recover sees the completed source and resumes the target: the guest
 * runs on host 2 alone, billed there once, its memory check intact.
 */
Test(hosts, source_host_unreachable_mid_transfer, .timeout = 480, .fini = fini)
{
	PGconn *c;
	struct testproc p;
	struct testrun r;
	char log[512], st[256], why[512], *before, *out;
	struct testlib_guest g0;
	long long sv, tv;
	int i;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w1", 1);
	add_worker("w2", 2);
	launch_spec("sb1", "w1", spec_with("sb1", "vmops.dirty_pause_us=10000000"), 0);
	serial_of(c, "sb1", log, sizeof(log));
	testlib_wait_heartbeat(log, 2, 120, &g0);
	sv = active_vmm(c);
	TESTRUN_START(&p, "vm-migrate", "--db", ci, "sb1", "--to", "w2", "--max-bandwidth", "4M/s");
	wait_sql(c, "SELECT count(*) FROM migrations m JOIN vmms v ON v.id = m.target_vmm_id"
		    " WHERE m.phase = 'transfer' AND v.pid IS NOT NULL AND m.bytes_transferred > 0", 1, 120);
	tv = testdb_ll(c, "SELECT target_vmm_id FROM migrations");
	hostctl("stop-sshd", 1, NULL, NULL);
	testrun_finish(&p, &r);
	cr_assert_eq(r.status, VMOPS_EXIT_UNREACHABLE, "exit %d: %s", r.status, r.err);
	cr_assert(strstr(r.err, "source's host does not answer"), "%s", r.err);
	cr_assert(strstr(r.err, "left to vm-migrate --recover"), "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);

	/* Nothing undone, nothing decided: both QEMUs live on their hosts, the attempt in transfer. */
	cr_assert_eq(vms_on_host(1), 1, "the source is unknown, never killed blind");
	cr_assert_eq(vms_on_host(2), 1, "the receiver may hold the only whole guest: not killed");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'migrating'"), 1, "not lost");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE phase = 'transfer'"
				  " AND state = 'transferring' AND lease_expires_at <= now()"), 1);
	cr_assert_eq(active_vmm(c), sv, "recorded on the source until the facts are known");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL AND worker_id ="
				  " (SELECT id FROM workers WHERE name = 'w1')"), 1, "billed once, on the source");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 2);
	cr_assert_eq(qmp_ask(c, tv, false, st, sizeof(st)), 0, "%s", st);
	cr_assert(!strcmp(st, "inmigrate") || !strcmp(st, "paused"), "the receiver was not resumed: %s", st);
	(void)guests_running(c, sv, tv, why, sizeof(why));

	/* While host 1 is away: --recover does nothing, exit 17. */
	before = counts(c);
	out = recover(VMOPS_EXIT_UNREACHABLE, NULL);
	cr_assert_eq(json_int(out, "unknown"), 1, "%s", out);
	cr_assert(strstr(out, "does not answer"), "%s", out);
	cr_assert_str_eq(counts(c), before);
	cr_assert_eq(vms_on_host(1), 1);
	cr_assert_eq(vms_on_host(2), 1);

	/* QEMU's own migration goes on without vmops and completes: the guest is
	 * held, paused, by the receiver; the source stopped; never both running. */
	for (i = 0; i < 1800; i++) {
		cr_assert_eq(qmp_ask(c, sv, true, st, sizeof(st)), 0, "%s", st);
		(void)guests_running(c, sv, tv, why, sizeof(why));
		if (!strcmp(st, "completed") || vmops_migrate_status_is_final(st))
			break;
		usleep(100000);
	}
	cr_assert_str_eq(st, "completed", "the source's own migration: %s (%s)", st, why);
	cr_assert_eq(guests_running(c, sv, tv, why, sizeof(why)), 0, "%s", why);
	cr_assert(strstr(why, "postmigrate") && strstr(why, "paused"), "%s", why);
	cr_assert_str_eq(counts(c), before, "nothing recorded meanwhile");

	/* Host 1 back: the facts are known; the target is resumed, the old source released. */
	hostctl("start-sshd", 1, NULL, NULL);
	out = recover(0, NULL);
	cr_assert_eq(json_int(out, "completed"), 1, "%s", out);
	cr_assert_eq(json_int(out, "unknown"), 0, "%s", out);
	assert_moved(c, "sb1", "w2", sv);
	cr_assert_eq(active_vmm(c), tv);
	cr_assert_eq(vms_on_host(1), 0, "the old source is stopped on host 1");
	cr_assert_eq(vms_on_host(2), 1);
	cr_assert_eq(qmp_ask(c, tv, false, st, sizeof(st)), 0, "%s", st);
	cr_assert_str_eq(st, "running");
	serial_of(c, "sb1", log, sizeof(log));
	cr_assert(strstr(log, "/w2/"), "%s", log);
	testlib_assert_guest_continues(log, g0.boot_sum, &g0.last, 120, NULL);
	/* Nothing is left for a later --recover. */
	out = recover(0, NULL);
	cr_assert_eq(json_int(out, "found"), 0, "%s", out);
	PQfinish(c);
}

/* Wait until process pid is stopped (a VMOPS_FAULT=PHASE:stop window). */
static void wait_stopped(pid_t pid)
{
	char path[64], buf[512], *rp;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	for (int i = 0; i < 1200; i++) {
		f = fopen(path, "r");
		cr_assert(f, "process %d is gone", (int)pid);
		buf[fread(buf, 1, sizeof(buf) - 1, f)] = '\0';
		fclose(f);
		rp = strrchr(buf, ')');
		if (rp && rp[1] == ' ' && rp[2] == 'T')
			return;
		usleep(100000);
	}
	cr_assert_fail("process %d never stopped", (int)pid);
}

/*
 * The source's host stops answering again while --recover rolls the attempt
 * back (it answered when --recover looked: the source still sending, the
 * receiver loading).  Its migration cannot be cancelled, so it may still
 * complete: the receiver may then hold the only copy of the guest that can
 * run, and it is not killed.  --recover exits 17 with the rollback recorded
 * and nothing else done; once the host answers, the rollback finishes: the
 * receiver goes, the source runs the guest, its memory check intact.
 */
Test(hosts, source_host_unreachable_during_recover_rollback, .timeout = 480, .fini = fini)
{
	PGconn *c;
	struct testproc p;
	struct testrun r;
	char log[512], st[256], *before, *out;
	struct testlib_guest g0;
	long long sv, tv;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w1", 1);
	add_worker("w2", 2);
	launch_spec("sb1", "w1", spec_with("sb1", "vmops.dirty_pause_us=10000000"), 0);
	serial_of(c, "sb1", log, sizeof(log));
	testlib_wait_heartbeat(log, 2, 120, &g0);
	sv = active_vmm(c);
	/* 1 MiB/s: the transfer still goes on when --recover looks. */
	TESTRUN_START(&p, "vm-migrate", "--db", ci, "sb1", "--to", "w2", "--max-bandwidth", "1M/s");
	wait_sql(c, "SELECT count(*) FROM migrations m JOIN vmms v ON v.id = m.target_vmm_id"
		    " WHERE m.phase = 'transfer' AND v.pid IS NOT NULL AND m.bytes_transferred > 0", 1, 120);
	tv = testdb_ll(c, "SELECT target_vmm_id FROM migrations");
	hostctl("stop-sshd", 1, NULL, NULL);
	testrun_finish(&p, &r);
	cr_assert_eq(r.status, VMOPS_EXIT_UNREACHABLE, "exit %d: %s", r.status, r.err);
	testrun_free(&r);

	/* Host 1 answers: --recover sees the source sending and decides to roll back ... */
	hostctl("start-sshd", 1, NULL, NULL);
	cr_assert_eq(qmp_ask(c, sv, true, st, sizeof(st)), 0, "%s", st);
	cr_assert_str_eq(st, "active", "the source's own migration should still be going on, not %s", st);
	setenv("VMOPS_FAULT", "rollback:stop", 1);
	TESTRUN_START(&p, "vm-migrate", "--db", ci, "--json", "--recover");
	unsetenv("VMOPS_FAULT");
	wait_stopped(p.pid);
	/* ... and host 1 stops answering before the source was told to cancel. */
	hostctl("stop-sshd", 1, NULL, NULL);
	before = counts(c);
	kill(p.pid, SIGCONT);
	testrun_finish(&p, &r);
	cr_assert_eq(r.status, VMOPS_EXIT_UNREACHABLE, "exit %d\n%s\n%s", r.status, r.out, r.err);
	cr_assert_eq(json_int(r.out, "unknown"), 1, "%s", r.out);
	cr_assert_eq(json_int(r.out, "receivers_killed"), 0, "%s", r.out);
	testrun_free(&r);
	cr_assert_eq(vms_on_host(2), 1, "the receiver may hold the guest: not killed while the source is unknown");
	cr_assert_eq(vms_on_host(1), 1);
	cr_assert_str_eq(counts(c), before, "nothing recorded but the phase");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'migrating'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE phase = 'rollback'"
				  " AND state IN ('preparing', 'transferring', 'switching')"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 2);

	/* Back: the rollback is finished; the guest runs on the source alone. */
	hostctl("start-sshd", 1, NULL, NULL);
	out = recover(0, NULL);
	cr_assert_eq(json_int(out, "failed"), 1, "%s", out);
	/* Stopped, or gone by itself once the source cancelled (QEMU 7.2's receivers do). */
	cr_assert_eq(vms_on_host(2), 0, "the receiver is gone from host 2");
	cr_assert_eq(vms_on_host(1), 1);
	cr_assert_eq(qmp_ask(c, sv, false, st, sizeof(st)), 0, "%s", st);
	cr_assert_str_eq(st, "running");
	cr_assert_eq(active_vmm(c), sv);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
				  " WHERE s.status = 'running' AND w.name = 'w1' AND s.target_vmm_id IS NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'failed' AND phase = 'done'"), 1);
	{
		char sql[200];
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM vmms WHERE id = %lld AND state = 'destroyed'", tv);
		cr_assert_eq(testdb_ll(c, sql), 1);
	}
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 1, "the receiver's room is freed");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL AND worker_id ="
				  " (SELECT id FROM workers WHERE name = 'w1')"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events"), 1);
	testlib_assert_guest_continues(log, g0.boot_sum, &g0.last, 60, NULL);
	PQfinish(c);
}

/* ghost-reap runs on each host for its own workers: inside host 1 it sees
 * host 1's processes under the pids the database recorded for them. */
Test(hosts, ghost_reap_on_the_workers_own_host, .timeout = 240, .fini = fini)
{
	PGconn *c;
	char cmd[1024], *out;
	long long pid;
	int rc;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w1", 1);
	launch(c, "sb1", "w1", 0);
	pid = testdb_ll(c, "SELECT pid FROM vmms");
	snprintf(cmd, sizeof(cmd), "VMOPS_HOST_ID=%s \"%s/ghost-reap\" --db \"%s\" --worker w1 --min-age 0s; echo rc=$?",
		 host_id(1), getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin", ci);
	out = hostctl("run", 1, cmd, NULL);
	cr_assert(strstr(out, "rc=0"), "nothing to find there: %s", out);
	/* The VM dies on its host: ghost-reap there finds the phantom. */
	snprintf(cmd, sizeof(cmd), "kill -KILL %lld", pid);
	hostctl("run", 1, cmd, NULL);
	snprintf(cmd, sizeof(cmd), "VMOPS_HOST_ID=%s \"%s/ghost-reap\" --db \"%s\" --worker w1 --min-age 0s --action kill"
		 " >/dev/null 2>&1; echo rc=$?", host_id(1), getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin", ci);
	for (int i = 0; i < 50; i++) {
		out = hostctl("run", 1, cmd, &rc);
		if (strstr(out, "rc=4"))
			break;
		usleep(200000);
	}
	cr_assert(strstr(out, "rc=4"), "found and fixed: %s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'error'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 0);
	PQfinish(c);
}

/* ---- vm-drain across hosts ----------------------------------------------------------- */

/* A JSON report's member, just past "key": and blanks (lib/output writes "key":\tvalue). */
static const char *json_at(const char *out, const char *key)
{
	char k[64];
	const char *p;

	snprintf(k, sizeof(k), "\"%s\":", key);
	p = strstr(out, k);
	cr_assert(p, "no %s in %s", key, out);
	return p + strlen(k) + strspn(p + strlen(k), " \t");
}

/* vm-drain --json WORKER: its exit code, stdout into out (and stderr appended). */
static int drain(const char *worker, char *out, size_t len)
{
	struct testrun r;
	int st;

	TESTRUN(&r, "vm-drain", "--db", ci, "--json", "--max-parallel", "1", "--retries", "2", "--backoff", "1s",
		worker);
	snprintf(out, len, "%s\n--- stderr\n%s", r.out, r.err);
	st = r.status;
	testrun_free(&r);
	return st;
}

/*
 * An idle QEMU whose command line carries a fleet token and names a path in
 * worker w1's run directory, so that ghost-reap's identification takes it
 * for one of w1's processes: on host I (inside it), or on this host (i = 0).
 * Its pidfile (that host's pid) is PIDFILE.
 */
static void stray_qemu(int i, long long id, char *pidfile, size_t len)
{
	char dir[400], cmd[1024];

	snprintf(dir, sizeof(dir), "%s/w1/vmm-%lld", rundir, id);
	cr_assert(mkdir(dir, 0700) == 0 || errno == EEXIST, "%s", dir);
	snprintf(pidfile, len, "%s/qemu.pid", dir);
	snprintf(cmd, sizeof(cmd), "setsid qemu-system-x86_64 -machine none -nodefaults -display none -S"
		 " -name vmops-vmm-%lld -pidfile %s </dev/null >/dev/null 2>&1 &", id, pidfile);
	if (i)
		hostctl("run", i, cmd, NULL);
	else
		cr_assert_eq(system(cmd), 0);
	for (int k = 0; k < 100 && access(pidfile, R_OK) != 0; k++)
		usleep(100000);
	cr_assert(access(pidfile, R_OK) == 0, "the stray QEMU did not start: %s", cmd);
}

/*
 * vm-drain of a worker on host 1: its guest moves live to the worker on
 * host 2 (receiver started there over ssh, the stream host to host, the
 * guest's memory check intact), and the honest count reads host 1's /proc
 * through the transport, never this host's: a stray QEMU of w1 on host 1
 * keeps the worker draining (exit 15, one process left), one on this host
 * naming the same run directory is not w1's and never counted; once host
 * 1's is gone the worker is drained (exit 0, no process left).
 */
Test(hosts, drain_moves_the_guest_to_another_host_and_counts_on_the_workers_host, .timeout = 480, .fini = fini)
{
	PGconn *c;
	char log[512], out[16384], ghost[512], decoy[512], cmd[700];
	struct testlib_guest g0, g;
	long long v;
	int rc;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w1", 1);
	add_worker("w2", 2);
	launch(c, "sb1", "w1", 0);
	serial_of(c, "sb1", log, sizeof(log));
	testlib_wait_heartbeat(log, 2, 120, &g0);
	v = active_vmm(c);
	stray_qemu(1, 999999, ghost, sizeof(ghost));
	stray_qemu(0, 999998, decoy, sizeof(decoy));
	cr_assert_eq(vms_on_host(1), 2, "the guest and the stray QEMU on host 1");

	rc = drain("w1", out, sizeof(out));
	cr_assert_eq(rc, VMOPS_EXIT_PARTIAL, "exit %d\n%s", rc, out);
	assert_moved(c, "sb1", "w2", v);
	cr_assert_eq(vms_on_host(2), 1, "the guest runs on host 2");
	cr_assert_eq(vms_on_host(1), 1, "only the stray QEMU is left on host 1");
	serial_of(c, "sb1", log, sizeof(log));
	cr_assert(strstr(log, "/w2/"), "%s", log);
	testlib_assert_guest_continues(log, g0.boot_sum, &g0.last, 120, &g);
	cr_assert_eq(json_int(out, "moved"), 1, "%s", out);
	cr_assert_eq(json_int(out, "left_sandboxes"), 0, "%s", out);
	cr_assert_eq(json_int(out, "left_vmms"), 0, "%s", out);
	cr_assert_eq(json_int(out, "left_processes"), 1, "host 1's stray QEMU, and not this host's: %s", out);
	cr_assert(!strncmp(json_at(out, "worker_state"), "\"draining\"", 10), "%s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'partial'"), 1);

	/* The stray QEMU of host 1 is stopped there: nothing of w1 is left on its host. */
	snprintf(cmd, sizeof(cmd), "kill $(cat %s)", ghost);
	hostctl("run", 1, cmd, NULL);
	for (int k = 0; k < 100 && vms_on_host(1); k++)
		usleep(100000);
	cr_assert_eq(vms_on_host(1), 0);
	cr_assert_eq(testlib_count_vms_under(rundir) - vms_on_host(2), 1, "this host's stray QEMU still runs");
	rc = drain("w1", out, sizeof(out));
	cr_assert_eq(rc, 0, "exit %d\n%s", rc, out);
	cr_assert_eq(json_int(out, "left_sandboxes"), 0, "%s", out);
	cr_assert_eq(json_int(out, "left_vmms"), 0, "%s", out);
	cr_assert_eq(json_int(out, "left_processes"), 0, "counted on host 1: %s", out);
	cr_assert(!strncmp(json_at(out, "worker_state"), "\"drained\"", 9), "%s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'drained'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'done'"), 1);
	assert_moved(c, "sb1", "w2", v);
	/* Still going on host 2, every check intact in its whole log. */
	testlib_wait_heartbeat(log, g.last.n + 2, 120, NULL);
	testlib_assert_guest_continues(log, g0.boot_sum, &g0.last, 120, NULL);
	PQfinish(c);
}

/*
 * The worker's host does not answer when its processes are to be counted
 * (its sshd stopped): the count is unknown, not zero, and the worker is not
 * declared drained (exit 15, partial, still draining); this host's /proc,
 * where none of w1's processes run, is not asked instead.  Back: drained.
 */
Test(hosts, drain_count_on_an_unreachable_host_is_unknown, .timeout = 240, .fini = fini)
{
	PGconn *c;
	char out[16384];
	int rc;

	need_hosts();
	c = fleet();
	add_worker("w1", 1);
	add_worker("w2", 2);
	hostctl("stop-sshd", 1, NULL, NULL);
	setenv("VMOPS_SSH_CONNECT_TIMEOUT", "3", 1);
	rc = drain("w1", out, sizeof(out));
	unsetenv("VMOPS_SSH_CONNECT_TIMEOUT");
	cr_assert_eq(rc, VMOPS_EXIT_PARTIAL, "exit %d\n%s", rc, out);
	cr_assert(!strncmp(json_at(out, "left_processes"), "null", 4), "unknown, not 0: %s", out);
	cr_assert_eq(json_int(out, "left_sandboxes"), 0, "%s", out);
	cr_assert(strstr(json_at(out, "detail"), "cannot be counted") && strstr(out, "unreachable"), "%s", out);
	cr_assert(!strncmp(json_at(out, "worker_state"), "\"draining\"", 10), "%s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'draining'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'partial'"), 1);

	hostctl("start-sshd", 1, NULL, NULL);
	rc = drain("w1", out, sizeof(out));
	cr_assert_eq(rc, 0, "exit %d\n%s", rc, out);
	cr_assert_eq(json_int(out, "left_processes"), 0, "%s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE name = 'w1' AND state = 'drained'"), 1);
	PQfinish(c);
}

/*
 * The hibernate fallback works on this host's VMs only: a sandbox of a
 * worker on host 1 that cannot move (no other worker) is not hibernated
 * from here, though its run directory is reachable on the shared test
 * filesystem: it stays stuck with the reason, its guest runs on where it
 * was, no bundle is written, and the drain ends partial (exit 15).
 */
Test(hosts, drain_does_not_hibernate_a_remote_workers_sandbox_from_here, .timeout = 300, .fini = fini)
{
	PGconn *c;
	char log[512], out[16384], bundles[400];
	struct testlib_guest g0;
	struct testrun r;
	DIR *d;
	struct dirent *de;
	int n = 0;

	need_hosts();
	testlib_need_qemu();
	c = fleet();
	add_worker("w1", 1);
	launch(c, "sb1", "w1", 0);
	serial_of(c, "sb1", log, sizeof(log));
	testlib_wait_heartbeat(log, 2, 120, &g0);
	snprintf(bundles, sizeof(bundles), "%s/bundles", rundir);
	cr_assert_eq(mkdir(bundles, 0700), 0);
	TESTRUN(&r, "vm-drain", "--db", ci, "--json", "--retries", "1", "--bundle-dir", bundles, "w1");
	snprintf(out, sizeof(out), "%s\n--- stderr\n%s", r.out, r.err);
	cr_assert_eq(r.status, VMOPS_EXIT_PARTIAL, "exit %d\n%s", r.status, out);
	testrun_free(&r);
	cr_assert_eq(json_int(out, "stuck"), 1, "%s", out);
	cr_assert_eq(json_int(out, "hibernated"), 0, "%s", out);
	cr_assert(strstr(out, "is on another host (ssh)"), "%s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM snapshots"), 0, "no hibernate was tried");
	cr_assert(d = opendir(bundles));
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	cr_assert_eq(n, 0, "no bundle written");
	cr_assert_eq(vms_on_host(1), 1);
	testlib_wait_heartbeat(log, g0.last.n + 2, 60, NULL);
	testlib_assert_guest_continues(log, g0.boot_sum, &g0.last, 60, NULL);
	PQfinish(c);
}
