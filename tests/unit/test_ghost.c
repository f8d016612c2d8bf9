/* SPDX-License-Identifier: MIT */
/*
 * ghost-reap against real PostgreSQL, the recorded /proc tree
 * tests/fixtures/proc, fixture processes of this test (a zombie whose parent
 * does not reap it, a decoy that imitates QEMU, a live process whose pid a
 * VMM row records with another start time, a bare QEMU of "another fleet"),
 * and real QEMU VMs launched through vm-fleet (when the suite built the test
 * guest: VMOPS_TEST_KERNEL/VMOPS_TEST_INITRD; skipped otherwise).
 *
 * Every test that starts processes kills them in its .fini teardown, also
 * after a failed assertion.  Processes are told apart from those of other
 * suites running on the same host by this test's own run directory.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "ghost.h"
#include "host.h"
#include "proc.h"
#include "testlib.h"

TestSuite(ghost, .timeout = 60);

static char ci[512];
static char rundir[200];     /* this test's directory; the worker's run dir is rundir/w */
static char wrun[256];
static pid_t groups[8];      /* process groups this test started */
static int ngroups;

/* ---- helpers ---------------------------------------------------------------------------- */

static void fixtures(char *buf, size_t len)
{
	const char *env = getenv("VMOPS_TEST_FIXTURES");

	if (env && *env) {
		snprintf(buf, len, "%s/proc", env);
	} else {
		char dir[PATH_MAX];
		char *slash;

		snprintf(dir, sizeof(dir), "%s", __FILE__);
		slash = strrchr(dir, '/');
		if (slash)
			*slash = '\0';
		else
			snprintf(dir, sizeof(dir), ".");
		snprintf(buf, len, "%s/../fixtures/proc", dir);
	}
	cr_assert_eq(access(buf, R_OK), 0, "fixture %s: %s", buf, strerror(errno));
}

/* This "host", as far as ghost-reap and vm-fleet are told (VMOPS_HOST_ID). */
#define HOST_ID "ghost-test-host"

/* A database with worker gw whose run directory is this test's, on this host. */
static PGconn *fleet(void)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char sql[1024];

	setenv("VMOPS_HOST_ID", HOST_ID, 1);

	snprintf(rundir, sizeof(rundir), "/tmp/vmops-gr.XXXXXX");
	cr_assert(mkdtemp(rundir));
	snprintf(wrun, sizeof(wrun), "%s/w", rundir);
	cr_assert_eq(mkdir(wrun, 0700), 0);
	snprintf(sql, sizeof(sql),
		 "INSERT INTO workers (name, memory_mb, vcpus, run_dir, host_id) VALUES ('gw', 8192, 16, '%s', '" HOST_ID "')",
		 wrun);
	PQclear(testdb_exec(c, sql));
	return c;
}

/* Teardown, also after a failed assertion: nothing this test started outlives it. */
static void teardown(void)
{
	for (int i = 0; i < ngroups; i++) {
		kill(-groups[i], SIGCONT);
		kill(-groups[i], SIGKILL);
		while (waitpid(groups[i], NULL, 0) < 0 && errno == EINTR)
			;
	}
	ngroups = 0;
	if (rundir[0]) {
		char cmd[300];

		testlib_kill_vms_under(rundir);
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", rundir);
		if (system(cmd) != 0)
			fprintf(stderr, "teardown: %s failed\n", cmd);
	}
}

static unsigned long long start_of(pid_t pid)
{
	struct vmops_proc_stat st;
	struct vmops_error e = { 0 };

	cr_assert_eq(vmops_proc_read_stat("/proc", pid, &st, &e), 0, "pid %d: %s", (int)pid, e.msg);
	return st.starttime;
}

static char state_of(pid_t pid)
{
	struct vmops_proc_stat st;
	struct vmops_error e = { 0 };

	if (vmops_proc_read_stat("/proc", pid, &st, &e) < 0)
		return '\0';
	return st.state;
}

/* Start argv (argv[0] the file to run) in its own process group. */
static pid_t start_group(const char *file, const char *const *argv)
{
	pid_t pid = fork();

	cr_assert(pid >= 0);
	if (pid == 0) {
		int nul = open("/dev/null", O_RDWR);

		setpgid(0, 0);
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(nul, 2);
		execv(file, (char *const *)(uintptr_t)argv);
		_exit(127);
	}
	setpgid(pid, pid);
	cr_assert(ngroups < (int)(sizeof(groups) / sizeof(groups[0])));
	groups[ngroups++] = pid;
	return pid;
}

/* A UNIX socket file at path (the socket itself is closed again). */
static void make_socket(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	cr_assert(fd >= 0);
	cr_assert_lt(strlen(path), sizeof(a.sun_path));
	snprintf(a.sun_path, sizeof(a.sun_path), "%.107s", path);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind %s: %s", path, strerror(errno));
	close(fd);
}

static bool is_socket(const char *path)
{
	struct stat sb;

	return lstat(path, &sb) == 0 && S_ISSOCK(sb.st_mode);
}

static char *snapshot(PGconn *c)
{
	PGresult *r = testdb_exec(c,
		"SELECT (SELECT string_agg(id || ':' || state || ':' || (time_deleted IS NULL), ',' ORDER BY id) FROM vmms)"
		" || '/' || (SELECT string_agg(name || ':' || status, ',' ORDER BY name) FROM sandboxes)"
		" || '/' || (SELECT count(*) FROM scale_events WHERE ended_at IS NULL)"
		" || '/' || (SELECT count(*) FROM reservations)"
		" || '/' || (SELECT count(*) FROM audit_log)");
	char *s = strdup(PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));

	PQclear(r);
	return s;
}

/* The item of the report for (vmm, pid); pid 0: any pid.  NULL if none. */
static const cJSON *item(const cJSON *doc, long long vmm, long long pid)
{
	const cJSON *it;

	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(doc, "vmms")) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(it, "vmm");
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(it, "pid");

		if ((vmm < 0 || (cJSON_IsNumber(v) && (long long)v->valuedouble == vmm)) &&
		    (!pid || (cJSON_IsNumber(p) && (long long)p->valuedouble == pid)))
			return it;
	}
	return NULL;
}

static const char *str(const cJSON *it, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(it, key);

	return cJSON_IsString(v) ? v->valuestring : "(null)";
}

static long long num(const cJSON *it, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(it, key);

	return cJSON_IsNumber(v) ? (long long)v->valuedouble : -1;
}

static cJSON *parse(const char *out)
{
	cJSON *doc = cJSON_Parse(out);

	cr_assert(doc, "not JSON: %s", out);
	return doc;
}

/*
 * What a repaired phantom or zombie looks like in the database: VMM failed,
 * sandbox error, no open event of the sandbox or of the VMM, no reservation,
 * one audit row; all written by one transaction (same now() everywhere).
 */
static void assert_repaired(PGconn *c, long long vmm, const char *action)
{
	char sql[2048];
	PGresult *r;

	snprintf(sql, sizeof(sql),
		 "SELECT v.state || '|' || s.status"
		 " || '|' || (SELECT count(*) FROM scale_events e WHERE e.ended_at IS NULL"
		 "            AND (e.sandbox_id = s.id OR e.vmm_id = v.id))"
		 " || '|' || (SELECT count(*) FROM scale_events e WHERE e.vmm_id = v.id)"
		 " || '|' || (SELECT count(*) FROM reservations WHERE vmm_id = v.id)"
		 " || '|' || (SELECT count(*) FROM audit_log a WHERE a.object_type = 'vmm' AND a.object_id = v.id"
		 "            AND a.program = 'ghost-reap' AND a.action = '%s'"
		 "            AND a.after->>'vmm_state' = 'failed' AND a.after->>'sandbox_status' = 'error'"
		 "            AND a.before->>'vmm_state' = 'running')"
		 " || '|' || (SELECT count(*) FROM audit_log a WHERE a.object_type = 'vmm' AND a.object_id = v.id"
		 "            AND a.at = v.time_state_updated AND a.at = s.time_status_updated"
		 "            AND a.at = ALL (SELECT ended_at FROM scale_events e WHERE e.sandbox_id = s.id))"
		 " FROM vmms v JOIN sandboxes s ON s.id = v.sandbox_id WHERE v.id = %lld",
		 action, vmm);
	r = testdb_exec(c, sql);
	cr_assert_eq(PQntuples(r), 1, "vmm %lld", vmm);
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "failed|error|0|1|0|1|1", "vmm %lld: %s", vmm, PQgetvalue(r, 0, 0));
	PQclear(r);
}

static long long register_vmm(PGconn *c, const char *sandbox, pid_t pid, unsigned long long start)
{
	char p[24], s[24], sql[256];
	struct testrun r;

	snprintf(p, sizeof(p), "%d", (int)pid);
	snprintf(s, sizeof(s), "%llu", start);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "register", "--sandbox", sandbox, "--org", "acme",
		"--worker", "gw", "--memory", "128M", "--vcpus", "1", "--pid", p, "--pid-start-time", s);
	cr_assert_eq(r.status, 0, "register %s: %s", sandbox, r.err);
	testrun_free(&r);
	snprintf(sql, sizeof(sql), "SELECT active_vmm_id FROM sandboxes WHERE name = '%s'", sandbox);
	return testdb_ll(c, sql);
}

/* ---- the pure helpers ------------------------------------------------------------------- */

Test(ghost, path_rules)
{
	cr_assert(vmops_ghost_path_inside("/run/vmops/w/vmm-7/qmp.sock", "/run/vmops/w/vmm-7"));
	cr_assert(vmops_ghost_path_inside("/run/vmops/w/vmm-7/qmp.sock", "/run/vmops/w/vmm-7/"));
	cr_assert(!vmops_ghost_path_inside("/run/vmops/w/vmm-70/qmp.sock", "/run/vmops/w/vmm-7"));
	cr_assert(!vmops_ghost_path_inside("/run/vmops/w/vmm-7/../../../etc/passwd", "/run/vmops/w/vmm-7"));
	cr_assert(!vmops_ghost_path_inside("/run/vmops/w/vmm-7/./x", "/run/vmops/w/vmm-7"));
	cr_assert(!vmops_ghost_path_inside("/run/vmops/w/vmm-7//x", "/run/vmops/w/vmm-7"));
	cr_assert(!vmops_ghost_path_inside("/run/vmops/w/vmm-7", "/run/vmops/w/vmm-7"));
	cr_assert(!vmops_ghost_path_inside("/run/vmops/w/vmm-7/", "/run/vmops/w/vmm-7"));
	cr_assert(!vmops_ghost_path_inside("/etc/passwd", "/"));
	cr_assert(!vmops_ghost_path_inside("/etc/passwd", ""));
	cr_assert(!vmops_ghost_path_inside("/a/b", "a"));
	cr_assert(!vmops_ghost_path_inside("/x/../a/b", "/x/../a"));

	/* a ghost's socket: the VMM's run dir, WORKER/vmm-ID, or its own token */
	cr_assert(vmops_ghost_socket_removable("/r/w/vmm-7/qmp.sock", 7, "/r/w/vmm-7", "/r/w"));
	cr_assert(vmops_ghost_socket_removable("/r/w/vmm-7/qmp.sock", 7, NULL, "/r/w"));
	cr_assert(vmops_ghost_socket_removable("/run/vmops/vmops-vmm-7.qmp", 7, NULL, "/elsewhere"));
	cr_assert(!vmops_ghost_socket_removable("/run/vmops/vmops-vmm-70.qmp", 7, NULL, "/elsewhere"));
	cr_assert(!vmops_ghost_socket_removable("/run/vmops/vmops-vmm-8.qmp", 7, NULL, "/r/w"));
	cr_assert(!vmops_ghost_socket_removable("/r/w/vmm-8/qmp.sock", 7, NULL, "/r/w"));
	cr_assert(!vmops_ghost_socket_removable("/r/w/qmp.sock", 7, NULL, "/r/w"));
	cr_assert(!vmops_ghost_socket_removable("/var/lib/postgresql/.s.PGSQL.5432", 7, "/r/w/vmm-7", "/r/w"));
	cr_assert(!vmops_ghost_socket_removable("/r/w/vmm-7/../../../etc/shadow", 7, "/r/w/vmm-7", "/r/w"));
	cr_assert(!vmops_ghost_socket_removable("/tmp/vmops-vmm-7/../x.sock", 7, NULL, NULL));
	cr_assert(!vmops_ghost_socket_removable("relative/vmops-vmm-7.sock", 7, NULL, NULL));
	cr_assert(!vmops_ghost_socket_removable("", 7, NULL, "/r/w"));
	cr_assert(!vmops_ghost_socket_removable("/r/w/vmm-7/qmp.sock", -1, NULL, "/r/w"));
}

Test(ghost, command_line_rules)
{
	char *qemu[] = { "qemu-system-x86_64", "-name", "vmops-vmm-7", "-serial", "file:/r/w/vmm-7/serial.log",
			 "-qmp", "unix:/r/w/vmm-7/qmp.sock,server=on,wait=off",
			 "-chardev", "socket,id=qga0,path=/r/w/vmm-7/qga.sock,server=on,wait=off", NULL };
	char *ch[] = { "cloud-hypervisor", "--api-socket", "path=/run/vmops/vmops-vmm-10.sock,fd=-1", NULL };
	char *ch2[] = { "cloud-hypervisor", "--api-socket=/run/x/api.sock", NULL };
	char *fc[] = { "firecracker", "--api-sock", "/run/vmops/fc.sock", "--id", "vmops-vmm-8", NULL };
	char *comma[] = { "qemu", "-qmp", "unix:/r/a,,b/qmp.sock,server=on", NULL };
	char *other[] = { "qemu", "-drive", "file=/r/wx/disk.img", "-name", "/r/w", NULL };
	char ctl[PATH_MAX], agent[PATH_MAX];

	cr_assert(vmops_ghost_argv_names_dir(9, qemu, "/r/w"));
	cr_assert(vmops_ghost_argv_names_dir(9, qemu, "/r/w/vmm-7/"));
	cr_assert(vmops_ghost_argv_names_dir(9, qemu, "/r"));  /* a parent directory names it too */
	cr_assert(!vmops_ghost_argv_names_dir(9, qemu, "/r/w/vmm-7/qmp"));
	cr_assert(!vmops_ghost_argv_names_dir(9, qemu, "/w"));
	cr_assert(!vmops_ghost_argv_names_dir(9, qemu, "/r/w/vmm-70"));
	cr_assert(!vmops_ghost_argv_names_dir(5, other, "/r/w"));
	cr_assert(!vmops_ghost_argv_names_dir(1, qemu, "/r/w"));  /* argv[0] is not searched */
	cr_assert(vmops_ghost_argv_names_dir(3, ch, "/run/vmops"));
	cr_assert(vmops_ghost_argv_names_dir(3, fc, "/run/vmops"));

	vmops_ghost_argv_sockets(VMOPS_HV_QEMU, 9, qemu, ctl, sizeof(ctl), agent, sizeof(agent));
	cr_assert_str_eq(ctl, "/r/w/vmm-7/qmp.sock");
	cr_assert_str_eq(agent, "/r/w/vmm-7/qga.sock");
	vmops_ghost_argv_sockets(VMOPS_HV_CLOUD_HYPERVISOR, 3, ch, ctl, sizeof(ctl), agent, sizeof(agent));
	cr_assert_str_eq(ctl, "/run/vmops/vmops-vmm-10.sock");
	cr_assert_str_eq(agent, "");
	vmops_ghost_argv_sockets(VMOPS_HV_CLOUD_HYPERVISOR, 2, ch2, ctl, sizeof(ctl), agent, sizeof(agent));
	cr_assert_str_eq(ctl, "/run/x/api.sock");
	vmops_ghost_argv_sockets(VMOPS_HV_FIRECRACKER, 5, fc, ctl, sizeof(ctl), agent, sizeof(agent));
	cr_assert_str_eq(ctl, "/run/vmops/fc.sock");
	vmops_ghost_argv_sockets(VMOPS_HV_QEMU, 3, comma, ctl, sizeof(ctl), agent, sizeof(agent));
	cr_assert_str_eq(ctl, "/r/a,b/qmp.sock");
	vmops_ghost_argv_sockets(VMOPS_HV_FIRECRACKER, 9, qemu, ctl, sizeof(ctl), agent, sizeof(agent));
	cr_assert_str_eq(ctl, "");
}

/* ---- command line: refused before any database contact --------------------------------- */

Test(ghost, bad_input_is_a_usage_error_without_database)
{
	char fix[PATH_MAX + 32];
	static const char *const cases[][6] = {
		{ "--action", "nuke" },
		{ "--action", "" },
		{ "--min-age", "5" },
		{ "--min-age", "soon" },
		{ "--min-age", "-1s" },
		{ "--min-age", "400d" },
		{ "--grace", "1x" },
		{ "--grace", "11m" },
		{ "--worker", "bad name" },
		{ "--worker", "" },
		{ "--proc-root", "/nonexistent-vmops-proc" },
		{ "--proc-root", "/etc/hostname" },
		{ "--proc-root", "FIX", "--action", "kill" },
		{ "--repair-from-recording" },
		{ "--proc-root", "/proc", "--repair-from-recording" },
		{ "--starting-timeout", "soon" },
		{ "stray-argument" },
		{ "--no-such-option" },
		{ "--min-age" },
	};
	static const char *const msgs[] = {
		"--action: unknown action 'nuke': use log or kill", "--action: unknown action ''",
		"--min-age", "--min-age", "--min-age", "--min-age: 400d is out of range", "--grace",
		"--grace: 11m is out of range", "invalid worker name 'bad name'", "invalid worker name ''",
		"--proc-root /nonexistent-vmops-proc: no such file or directory",
		"--proc-root /etc/hostname: not a directory",
		"--action kill: --proc-root", "--repair-from-recording: --proc-root /proc is this host's live /proc",
		"--repair-from-recording: --proc-root /proc is this host's live /proc", "--starting-timeout",
		"unexpected argument 'stray-argument'", "--no-such-option",
		"--min-age",
	};
	struct testrun r;

	fixtures(fix, sizeof(fix));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		/* a database that cannot be reached: contacting it would be exit 5 */
		/* (no --worker here: popt leaks a string option given twice, and
		 * ASan would count that; the default worker is a valid name) */
		const char *argv[16] = { "ghost-reap", "--db", "host=/nonexistent-vmops port=1 dbname=x" };
		int n = 3;

		for (int k = 0; k < 6 && cases[i][k]; k++)
			argv[n++] = strcmp(cases[i][k], "FIX") == 0 ? fix : cases[i][k];
		testrun(&r, argv);
		cr_assert_eq(r.status, VMOPS_EXIT_USAGE, "case %zu (%s): exit %d: %s", i, cases[i][0], r.status, r.err);
		cr_assert(strstr(r.err, msgs[i]), "case %zu: %s", i, r.err);
		cr_assert(strstr(r.err, "Try 'ghost-reap --help' for more information."), "case %zu: %s", i, r.err);
		cr_assert_eq(testlib_lines(r.err), 2, "case %zu: %s", i, r.err);
		cr_assert_str_eq(r.out, "", "case %zu", i);
		testrun_free(&r);
	}

	/* VMOPS_PROC_ROOT is the default of --proc-root, with the same rule */
	setenv("VMOPS_PROC_ROOT", fix, 1);
	TESTRUN(&r, "ghost-reap", "--db", "host=/nonexistent-vmops port=1", "--worker", "w1", "--action", "kill");
	cr_assert_eq(r.status, VMOPS_EXIT_USAGE, "%s", r.err);
	cr_assert(strstr(r.err, "VMOPS_PROC_ROOT"), "%s", r.err);
	testrun_free(&r);
	/* ... and --proc-root /proc is the live tree: kill is allowed (then the database is contacted) */
	setenv("VMOPS_HOST_ID", HOST_ID, 1);
	TESTRUN(&r, "ghost-reap", "--db", "host=/nonexistent-vmops port=1", "--worker", "w1", "--action", "kill",
		"--proc-root", "/proc");
	cr_assert_eq(r.status, VMOPS_EXIT_DB, "%s", r.err);
	testrun_free(&r);
	unsetenv("VMOPS_PROC_ROOT");

	TESTRUN(&r, "ghost-reap", "--help");
	cr_assert_eq(r.status, 0);
	cr_assert(strstr(r.out, "--action ACTION"), "%s", r.out);
	cr_assert_str_eq(r.err, "");
	testrun_free(&r);
}

Test(ghost, unknown_worker_schema_and_database_errors)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	PGconn *e;
	char ci_empty[512], host[256];
	struct testrun r;

	setenv("VMOPS_HOST_ID", HOST_ID, 1);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "w-none");
	cr_assert_eq(r.status, VMOPS_EXIT_NOTFOUND, "%s", r.err);
	cr_assert(strstr(r.err, "ghost-reap: worker w-none does not exist"), "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	cr_assert_str_eq(r.out, "");
	testrun_free(&r);

	/* default worker: $VMOPS_WORKER, else the host name */
	PQclear(testdb_exec(c, "INSERT INTO workers (name, memory_mb, vcpus, run_dir, host_id)"
			       " VALUES ('w-env', 1024, 1, '/nonexistent-vmops-run', '" HOST_ID "')"));
	setenv("VMOPS_WORKER", "w-env", 1);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--json");
	/* nothing runs under its run dir and nothing is recorded: clean, whatever else runs here */
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"worker\":\t\"w-env\""), "%s", r.out);
	testrun_free(&r);
	unsetenv("VMOPS_WORKER");
	cr_assert_eq(gethostname(host, sizeof(host)), 0);
	TESTRUN(&r, "ghost-reap", "--db", ci);
	cr_assert_eq(r.status, VMOPS_EXIT_NOTFOUND, "%s", r.err);
	cr_assert(strstr(r.err, host), "%s", r.err);
	testrun_free(&r);

	e = testdb_new(false, ci_empty, sizeof(ci_empty));
	TESTRUN(&r, "ghost-reap", "--db", ci_empty, "--worker", "w1");
	cr_assert_eq(r.status, VMOPS_EXIT_SCHEMA, "%s", r.err);
	testrun_free(&r);
	TESTRUN(&r, "ghost-reap", "--db", "host=/nonexistent-vmops port=1 dbname=x", "--worker", "w1");
	cr_assert_eq(r.status, VMOPS_EXIT_DB, "%s", r.err);
	testrun_free(&r);
	PQfinish(e);
	PQfinish(c);
}

/* ---- the recorded /proc tree ------------------------------------------------------------ */

/*
 * tests/fixtures/proc (see its README) against this database, worker fx with
 * run directory /run/vmops (uptime 86400.5 s, USER_HZ 100):
 *   700  qemu vmops-vmm-7, vmm 7 running with that pid and start   healthy
 *   800  firecracker vmops-vmm-8 (/run/vmops/fc.sock), vmm 8 destroyed,
 *        age 5400.5 s >= --min-age 90m                              ghost
 *   850  cloud-hypervisor vmops-vmm-10, no row, age 4400.5 s         young
 *   1200 qemu "(deleted)" vmops-vmm-11, no path in /run/vmops        foreign
 *   1100 the decoy (exe /usr/bin/sleep) and vmm 9 destroyed naming it: not listed
 *   1300 firecracker without a fleet token: counted, not listed
 *   vmm 12 pid 900 (Z, parent 1000)                                  zombie
 *   vmm 13 pid 901 (X)                                               phantom
 *   vmm 14 pid 1001 recorded with start time 12345 (it is 8400100)   phantom
 *   vmm 15 pid 4242 (absent)                                         phantom
 *   vmm 18 pid 4343 (absent), sandbox migrating                      phantom, skipped
 */
static const char fixture_sql[] =
	"INSERT INTO workers (name, memory_mb, vcpus, run_dir) VALUES"
	" ('fx', 65536, 64, '/run/vmops'), ('fy', 65536, 64, '/run/other');"
	"INSERT INTO sandboxes (id, name, org_id, status, worker_id, memory_mb, vcpus) OVERRIDING SYSTEM VALUE VALUES"
	" (7, 'sb-7', 'acme', 'running', 1, 512, 1), (8, 'sb-8', 'acme', 'destroyed', 1, 512, 1),"
	" (9, 'sb-9', 'acme', 'destroyed', 1, 512, 1), (12, 'sb-12', 'acme', 'running', 1, 512, 1),"
	" (13, 'sb-13', 'acme', 'running', 1, 512, 1), (14, 'sb-14', 'acme', 'running', 1, 512, 1),"
	" (15, 'sb-15', 'acme', 'running', 1, 512, 1), (18, 'sb-18', 'acme', 'running', 1, 512, 1);"
	"INSERT INTO vmms (id, sandbox_id, worker_id, hypervisor, state, pid, pid_start_time, control_socket)"
	" OVERRIDING SYSTEM VALUE VALUES"
	" (7, 7, 1, 'qemu', 'running', 700, 8000000, '/run/vmops/vmops-vmm-7.qmp'),"
	" (8, 8, 1, 'firecracker', 'destroyed', 800, 8100000, '/run/vmops/fc.sock'),"
	" (9, 9, 1, 'qemu', 'destroyed', 1100, 8500000, NULL),"
	" (12, 12, 1, 'qemu', 'running', 900, 8300000, NULL),"
	" (13, 13, 1, 'qemu', 'running', 901, 8350000, NULL),"
	" (14, 14, 1, 'qemu', 'running', 1001, 12345, NULL),"
	" (15, 15, 1, 'qemu', 'running', 4242, 100, NULL),"
	" (18, 18, 1, 'qemu', 'running', 4343, 100, NULL);"
	"UPDATE sandboxes SET active_vmm_id = id;"
	"UPDATE sandboxes SET status = 'migrating' WHERE id = 18;"
	"INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
	" SELECT id, 1, 512, 1 FROM vmms WHERE state = 'running';"
	"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)"
	" SELECT id, 'acme', 1, id, 512, 1 FROM sandboxes WHERE status IN ('running', 'migrating');";

#define ITEM(vmm, cls, pid, st, age, hv, state, sb, parent, act, detail) \
	"{\"vmm\":" vmm ",\"class\":\"" cls "\",\"pid\":" pid ",\"start_time\":" st ",\"age_s\":" age \
	",\"hypervisor\":\"" hv "\",\"state\":" state ",\"sandbox\":" sb ",\"parent\":" parent \
	",\"action\":\"" act "\",\"detail\":\"" detail "\"}"
#define SUMMARY(dry, healthy, ghosts, young, phantoms, zombies, foreign, repaired, unfixed, status) \
	"\"summary\":{\"worker\":\"fx\",\"action\":\"log\",\"dry_run\":" dry ",\"hypervisors\":5," \
	"\"healthy\":" healthy ",\"ghosts\":" ghosts ",\"young\":" young ",\"phantoms\":" phantoms \
	",\"zombies\":" zombies ",\"foreign\":" foreign ",\"unknown\":0,\"killed\":0,\"repaired\":" repaired \
	",\"unfixed\":" unfixed ",\"errors\":0,\"status\":\"" status "\"}"

#define FX_STABLE \
	ITEM("7", "healthy", "700", "8000000", "6400.5", "qemu", "\"running\"", "\"sb-7\"", "null", "none", "") "," \
	ITEM("8", "ghost", "800", "8100000", "5400.5", "firecracker", "\"destroyed\"", "\"sb-8\"", "null", "reported", \
	     "vmm 8 is destroyed in the database") "," \
	ITEM("10", "young", "850", "8200000", "4400.5", "cloud-hypervisor", "null", "null", "null", "none", \
	     "vmm 10 is not in the database; younger than --min-age") "," \
	ITEM("11", "foreign", "1200", "7000000", "16400.5", "qemu", "null", "null", "null", "none", \
	     "not this worker's: its command line names no path in /run/vmops")
#define FX_MIGRATING(act, more) \
	ITEM("18", "phantom", "4343", "100", "null", "qemu", "\"running\"", "\"sb-18\"", "null", act, "process gone" more)

static const char fixture_dry[] = "{\"vmms\":[" FX_STABLE ","
	ITEM("12", "zombie", "900", "8300000", "3400.5", "qemu", "\"running\"", "\"sb-12\"", "1000", "would-repair",
	     "zombie: exited, parent pid 1000 has not reaped it") ","
	ITEM("13", "phantom", "901", "8350000", "2900.5", "qemu", "\"running\"", "\"sb-13\"", "null", "would-repair",
	     "process dead (state X)") ","
	ITEM("14", "phantom", "1001", "12345", "null", "qemu", "\"running\"", "\"sb-14\"", "null", "would-repair",
	     "pid 1001 is another process now (start time 8400100, recorded 12345); not signalled") ","
	ITEM("15", "phantom", "4242", "100", "null", "qemu", "\"running\"", "\"sb-15\"", "null", "would-repair",
	     "process gone") ","
	FX_MIGRATING("would-repair", "") "],"
	SUMMARY("true", "1", "1", "1", "4", "1", "1", "0", "6", "found") "}";

/* Without --repair-from-recording a recorded tree is only reported on. */
#define NOT_REPAIRED "; read from a recorded tree: not repaired (--repair-from-recording)"
static const char fixture_report[] = "{\"vmms\":[" FX_STABLE ","
	ITEM("12", "zombie", "900", "8300000", "3400.5", "qemu", "\"running\"", "\"sb-12\"", "1000", "reported",
	     "zombie: exited, parent pid 1000 has not reaped it" NOT_REPAIRED) ","
	ITEM("13", "phantom", "901", "8350000", "2900.5", "qemu", "\"running\"", "\"sb-13\"", "null", "reported",
	     "process dead (state X)" NOT_REPAIRED) ","
	ITEM("14", "phantom", "1001", "12345", "null", "qemu", "\"running\"", "\"sb-14\"", "null", "reported",
	     "pid 1001 is another process now (start time 8400100, recorded 12345); not signalled" NOT_REPAIRED) ","
	ITEM("15", "phantom", "4242", "100", "null", "qemu", "\"running\"", "\"sb-15\"", "null", "reported",
	     "process gone" NOT_REPAIRED) ","
	FX_MIGRATING("reported", NOT_REPAIRED) "],"
	SUMMARY("false", "1", "1", "1", "4", "1", "1", "0", "6", "found") "}";

#define REPAIRED "; vmm failed, sandbox error, 1 scale event(s) closed, reservation deleted"
static const char fixture_run[] = "{\"vmms\":[" FX_STABLE ","
	ITEM("12", "zombie", "900", "8300000", "3400.5", "qemu", "\"failed\"", "\"sb-12\"", "1000", "repaired",
	     "zombie: exited, parent pid 1000 has not reaped it" REPAIRED) ","
	ITEM("13", "phantom", "901", "8350000", "2900.5", "qemu", "\"failed\"", "\"sb-13\"", "null", "repaired",
	     "process dead (state X)" REPAIRED) ","
	ITEM("14", "phantom", "1001", "12345", "null", "qemu", "\"failed\"", "\"sb-14\"", "null", "repaired",
	     "pid 1001 is another process now (start time 8400100, recorded 12345); not signalled" REPAIRED) ","
	ITEM("15", "phantom", "4242", "100", "null", "qemu", "\"failed\"", "\"sb-15\"", "null", "repaired",
	     "process gone" REPAIRED) ","
	FX_MIGRATING("skipped", "; sandbox sb-18 is migrating: left to vm-migrate") "],"
	SUMMARY("false", "1", "1", "1", "4", "1", "1", "4", "2", "found") "}";

static const char fixture_again[] = "{\"vmms\":[" FX_STABLE ","
	FX_MIGRATING("skipped", "; sandbox sb-18 is migrating: left to vm-migrate") "],"
	SUMMARY("false", "1", "1", "1", "1", "0", "1", "0", "2", "found") "}";

/* stdout must be exactly what lib/output prints for this document. */
static void assert_json_exact(const char *out, const char *compact)
{
	cJSON *doc = cJSON_Parse(compact);
	char *want;

	cr_assert(doc, "expected JSON does not parse: %s", compact);
	want = cJSON_Print(doc);
	cr_assert(want);
	cr_assert_eq(strlen(out), strlen(want) + 1, "got:\n%s\nwant:\n%s", out, want);
	cr_assert(strncmp(out, want, strlen(want)) == 0 && out[strlen(want)] == '\n', "got:\n%s\nwant:\n%s", out, want);
	cJSON_free(want);
	cJSON_Delete(doc);
}

Test(ghost, recorded_tree_parsed_exactly)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char fix[PATH_MAX + 32], *before, *after;
	struct testrun r;

	fixtures(fix, sizeof(fix));
	PQclear(testdb_exec(c, fixture_sql));

	/* a recording may be stale, or another host's: reported, never repaired
	 * unless told (and no host identity is needed: nothing is judged live) */
	before = snapshot(c);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "fx", "--proc-root", fix, "--min-age", "90m", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s", r.err);
	cr_assert_str_eq(r.err, "");
	assert_json_exact(r.out, fixture_report);
	testrun_free(&r);
	after = snapshot(c);
	cr_assert_str_eq(after, before, "a recorded tree was repaired from without --repair-from-recording");
	free(after);
	free(before);

	before = snapshot(c);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "fx", "--proc-root", fix, "--min-age", "90m",
		"--repair-from-recording", "--dry-run", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s", r.err);
	cr_assert_str_eq(r.err, "");
	assert_json_exact(r.out, fixture_dry);
	testrun_free(&r);
	after = snapshot(c);
	cr_assert_str_eq(after, before, "--dry-run changed the database");
	free(after);
	free(before);

	/* VMOPS_PROC_ROOT is the default of --proc-root */
	setenv("VMOPS_PROC_ROOT", fix, 1);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "fx", "--min-age", "90m", "--repair-from-recording",
		"--json");
	unsetenv("VMOPS_PROC_ROOT");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s", r.err);
	cr_assert_str_eq(r.err, "");
	assert_json_exact(r.out, fixture_run);
	testrun_free(&r);
	assert_repaired(c, 12, "zombie-repair");
	assert_repaired(c, 13, "phantom-repair");
	assert_repaired(c, 14, "phantom-repair");
	assert_repaired(c, 15, "phantom-repair");
	/* one transaction each: four distinct commit times */
	cr_assert_eq(testdb_ll(c, "SELECT count(DISTINCT at) FROM audit_log WHERE program = 'ghost-reap'"), 4);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM audit_log a JOIN vmms v ON v.id = a.object_id"
				  " WHERE a.object_id = 12 AND a.before->>'pid' = '900'"
				  " AND a.detail LIKE '%parent pid 1000%'"), 1);
	/* left alone: the healthy one, the ghost (logged), the migrating one, the decoy's row */
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE (id, state) IN"
				  " ((7, 'running'), (8, 'destroyed'), (9, 'destroyed'), (18, 'running'))"), 4);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE (id, status) IN"
				  " ((7, 'running'), (18, 'migrating'))"), 2);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 2);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations WHERE vmm_id IN (7, 18)"), 2);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 2);

	/* a second run repairs nothing more */
	before = snapshot(c);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "fx", "--proc-root", fix, "--min-age", "90m",
		"--repair-from-recording", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s", r.err);
	assert_json_exact(r.out, fixture_again);
	testrun_free(&r);
	after = snapshot(c);
	cr_assert_str_eq(after, before);
	free(after);
	free(before);

	/* text output: one line per item and the summary */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "fx", "--proc-root", fix, "--min-age", "90m");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s", r.err);
	cr_assert(strstr(r.out, "VMM  CLASS"), "%s", r.out);
	cr_assert(strstr(r.out, "  8  ghost     800     8100000   5400.5  firecracker"), "%s", r.out);
	cr_assert(strstr(r.out, "\nunfixed:     2\n"), "%s", r.out);
	testrun_free(&r);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "fx", "--proc-root", fix, "--min-age", "90m", "-q");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s", r.err);
	cr_assert_str_eq(r.out, "");
	testrun_free(&r);

	/* --min-age 2h: the ghost is young too; nothing unfixed but the migrating phantom */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "fx", "--proc-root", fix, "--min-age", "2h", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s", r.err);
	cr_assert(strstr(r.out, "\"young\":\t2"), "%s", r.out);
	cr_assert(strstr(r.out, "\"unfixed\":\t1"), "%s", r.out);
	testrun_free(&r);
	/* the migration ends: the phantom is repaired, everything is fixed: exit 4 */
	PQclear(testdb_exec(c, "UPDATE sandboxes SET status = 'running' WHERE id = 18"));
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "fx", "--proc-root", fix, "--min-age", "2h",
		"--repair-from-recording", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FIXED, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"status\":\t\"fixed\""), "%s", r.out);
	cr_assert(strstr(r.out, "\"repaired\":\t1"), "%s", r.out);
	testrun_free(&r);
	assert_repaired(c, 18, "phantom-repair");
	PQfinish(c);
}

/* ---- fixture processes: zombie, decoy, pid reuse, another fleet's QEMU ------------------- */

/* A helper that forks a child and never waits for it: the child becomes a zombie. */
static pid_t start_zombie(pid_t *helper, long long token)
{
	int fds[2];
	pid_t h, z = 0;

	cr_assert_eq(pipe(fds), 0);
	h = fork();
	cr_assert(h >= 0);
	if (h == 0) {
		char tok[40];
		pid_t c;

		setpgid(0, 0);
		signal(SIGCHLD, SIG_DFL);  /* not SIG_IGN: that would reap it */
		snprintf(tok, sizeof(tok), "vmops-vmm-%lld", token);
		c = fork();
		if (c == 0) {
			execl("/bin/sh", "qemu-system-x86_64", "-c", "exit 0", "-name", tok, (char *)NULL);
			_exit(0);
		}
		if (write(fds[1], &c, sizeof(c)) != (ssize_t)sizeof(c))
			_exit(1);
		for (;;)
			pause();
	}
	setpgid(h, h);
	groups[ngroups++] = h;
	close(fds[1]);
	cr_assert_eq(read(fds[0], &z, sizeof(z)), (ssize_t)sizeof(z));
	close(fds[0]);
	for (int i = 0; i < 100 && state_of(z) != 'Z'; i++)
		usleep(20000);
	cr_assert_eq(state_of(z), 'Z', "pid %d did not become a zombie", (int)z);
	*helper = h;
	return z;
}

Test(ghost, zombie_decoy_pid_reuse_and_another_fleet, .fini = teardown)
{
	PGconn *c = fleet();
	char link[300], sock[320], dir[300], tok[40], qmp[400], other[300];
	pid_t helper, zombie, decoy, sleeper, foreign = 0;
	unsigned long long zstart, sstart, dstart, fstart = 0;
	long long vz, vs;
	struct testrun r;
	cJSON *doc;
	const cJSON *it;

	/* the zombie: its VMM row names its pid and start time */
	zombie = start_zombie(&helper, 4001);
	zstart = start_of(zombie);
	vz = register_vmm(c, "sb-zombie", zombie, zstart);

	/* pid reuse: a live process, recorded with another start time */
	{
		const char *argv[] = { "sleep", "300", NULL };
		sleeper = start_group("/bin/sleep", argv);
	}
	for (int i = 0; i < 100 && state_of(sleeper) != 'S'; i++)
		usleep(20000);
	sstart = start_of(sleeper);
	vs = register_vmm(c, "sb-reused", sleeper, sstart - 1);

	/* the decoy: named like QEMU (comm, argv[0]), with a fleet token and a
	 * socket in this worker's run directory, but its executable is a shell */
	snprintf(dir, sizeof(dir), "%s/vmm-77", wrun);
	cr_assert_eq(mkdir(dir, 0700), 0);
	snprintf(sock, sizeof(sock), "%s/qmp.sock", dir);
	make_socket(sock);
	snprintf(link, sizeof(link), "%s/qemu-system-x86_64", rundir);
	cr_assert_eq(symlink("/bin/sh", link), 0);
	snprintf(qmp, sizeof(qmp), "unix:%s,server=on,wait=off", sock);
	{
		const char *argv[] = { "qemu-system-x86_64", "-c", "sleep 300; :", "-name", "vmops-vmm-77",
				       "-qmp", qmp, NULL };
		decoy = start_group(link, argv);
	}
	for (int i = 0; i < 100 && state_of(decoy) != 'S'; i++)
		usleep(20000);
	dstart = start_of(decoy);
	{
		char comm[64] = "", path[64];
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%d/comm", (int)decoy);
		f = fopen(path, "r");
		cr_assert(f);
		cr_assert(fgets(comm, sizeof(comm), f));
		fclose(f);
		cr_assert_str_eq(comm, "qemu-system-x86\n", "the decoy does not look like QEMU");
	}
	/* ... and the database even knows vmm 77's row as destroyed, naming the decoy */
	{
		char sql[1200];

		snprintf(sql, sizeof(sql),
			 "INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
			 " VALUES ('sb-decoy', 'acme', 'destroyed', 1, 128, 1);"
			 "INSERT INTO vmms (id, sandbox_id, worker_id, hypervisor, state, pid, pid_start_time, control_socket, run_dir)"
			 " OVERRIDING SYSTEM VALUE SELECT 77, id, 1, 'qemu', 'destroyed', %d, %llu, '%s', '%s'"
			 " FROM sandboxes WHERE name = 'sb-decoy'",
			 (int)decoy, dstart, sock, dir);
		PQclear(testdb_exec(c, sql));
	}

	/* another fleet's real QEMU on this host, carrying the zombie's vmm id:
	 * the token alone must not make it this worker's */
	if (access("/usr/bin/qemu-system-x86_64", X_OK) != 0)
		testlib_missing("/usr/bin/qemu-system-x86_64 not installed (the other fleet's QEMU)");
	{
		snprintf(other, sizeof(other), "%s/other-fleet", rundir);
		cr_assert_eq(mkdir(other, 0700), 0);
		snprintf(qmp, sizeof(qmp), "unix:%s/qmp.sock,server=on,wait=off", other);
		snprintf(tok, sizeof(tok), "vmops-vmm-%lld", vz);
		{
			const char *argv[] = { "qemu-system-x86_64", "-name", tok, "-machine", "none", "-nodefaults",
					       "-no-user-config", "-display", "none", "-S", "-qmp", qmp, NULL };
			foreign = start_group("/usr/bin/qemu-system-x86_64", argv);
		}
		for (int i = 0; i < 200; i++) {
			char p[400];
			snprintf(p, sizeof(p), "%s/qmp.sock", other);
			if (is_socket(p))
				break;
			usleep(50000);
		}
		fstart = start_of(foreign);
	}

	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s",
		"--grace", "1s", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FIXED, "exit %d\n%s\n%s", r.status, r.out, r.err);
	doc = parse(r.out);

	it = item(doc, vz, zombie);
	cr_assert(it, "no zombie in %s", r.out);
	cr_assert_str_eq(str(it, "class"), "zombie");
	cr_assert_eq(num(it, "parent"), helper, "%s", r.out);
	cr_assert_str_eq(str(it, "action"), "repaired");
	cr_assert_eq(num(it, "start_time"), (long long)zstart);

	it = item(doc, vs, sleeper);
	cr_assert(it, "no pid-reuse phantom in %s", r.out);
	cr_assert_str_eq(str(it, "class"), "phantom");
	cr_assert_str_eq(str(it, "action"), "repaired");
	cr_assert(strstr(str(it, "detail"), "is another process now"), "%s", r.out);

	cr_assert_null(item(doc, -1, decoy), "the decoy was listed: %s", r.out);
	/* nor its row; another fleet's process carrying vmops-vmm-77 (a test
	 * running beside this one) may be listed, as foreign, left alone */
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(doc, "vmms"))
		cr_assert(num(it, "vmm") != 77 || (!strcmp(str(it, "class"), "foreign") &&
						    !strcmp(str(it, "action"), "none")),
			  "the decoy's row was listed: %s", r.out);
	if (foreign) {
		it = item(doc, vz, foreign);
		cr_assert(it, "no foreign QEMU in %s", r.out);
		cr_assert_str_eq(str(it, "class"), "foreign");
		cr_assert_str_eq(str(it, "action"), "none");
	}
	cJSON_Delete(doc);
	testrun_free(&r);

	assert_repaired(c, vz, "zombie-repair");
	assert_repaired(c, vs, "phantom-repair");
	cr_assert_eq(testdb_ll(c, "SELECT count(DISTINCT at) FROM audit_log WHERE program = 'ghost-reap'"), 2);

	/* never signalled: the decoy, the process that reused a recorded pid, the other fleet's QEMU */
	cr_assert_eq(state_of(decoy), 'S');
	cr_assert_eq(start_of(decoy), dstart);
	cr_assert(is_socket(sock), "the decoy's socket was removed");
	cr_assert_eq(state_of(sleeper), 'S');
	cr_assert_eq(start_of(sleeper), sstart);
	if (foreign) {
		char st = state_of(foreign);
		cr_assert(st == 'S' || st == 'R', "the other fleet's QEMU is %c", st);
		cr_assert_eq(start_of(foreign), fstart);
	}
	cr_assert_eq(state_of(zombie), 'Z', "the zombie's parent is ours to kill, not ghost-reap's");

	/* a second run finds nothing of this worker's */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s", "--json");
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"repaired\":\t0"), "%s", r.out);
	cr_assert(strstr(r.out, "\"killed\":\t0"), "%s", r.out);
	testrun_free(&r);
	cr_assert_eq(state_of(decoy), 'S');
	PQfinish(c);
}

/* vm-fleet launch, in the background: returns the vm-fleet pid. */
static pid_t launch_bg(const char *sandbox)
{
	char spec[300], path[512];
	FILE *f;
	pid_t pid;

	snprintf(spec, sizeof(spec), "%s/%s.json", rundir, sandbox);
	f = fopen(spec, "w");
	cr_assert(f);
	fprintf(f, "{\"hypervisor\":\"qemu\",\"memory_mb\":160,\"vcpus\":1,\"kernel\":\"%s\",\"initrd\":\"%s\","
		   "\"cmdline\":\"console=ttyS0 no_timer_check vmops.dirty_mb=16\",\"accel\":\"tcg\"}\n",
		getenv("VMOPS_TEST_KERNEL"), getenv("VMOPS_TEST_INITRD"));
	fclose(f);
	snprintf(path, sizeof(path), "%s/vm-fleet", getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin");
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		char log[300];
		int fd;

		snprintf(log, sizeof(log), "%s/%s.launch.log", rundir, sandbox);
		fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 1);
		dup2(fd, 2);
		execl(path, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", sandbox, "--org", "acme",
		      "--worker", "gw", "--spec", spec, "--wait", "120s", (char *)NULL);
		_exit(127);
	}
	return pid;
}

static void wait_launch(pid_t pid, const char *sandbox)
{
	char log[300], text[2048] = "";
	FILE *f;
	int st, rc;

	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	snprintf(log, sizeof(log), "%s/%s.launch.log", rundir, sandbox);
	if ((f = fopen(log, "r"))) {
		text[fread(text, 1, sizeof(text) - 1, f)] = '\0';
		fclose(f);
	}
	/* Concurrent launches on one worker must all succeed (no retry here:
	 * a deadlock in admission would be a bug, and this test would hide it). */
	cr_assert_eq(rc, 0, "launch %s: exit %d: %s", sandbox, rc, text);
}

struct vm {
	const char *sandbox;
	long long vmm, pid, start;
	char run_dir[300];
};

static void vm_load(PGconn *c, struct vm *v)
{
	char sql[256];
	PGresult *r;

	snprintf(sql, sizeof(sql), "SELECT v.id, v.pid, v.pid_start_time, v.run_dir FROM sandboxes s"
		 " JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = '%s'", v->sandbox);
	r = testdb_exec(c, sql);
	cr_assert_eq(PQntuples(r), 1);
	v->vmm = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	v->pid = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
	v->start = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
	snprintf(v->run_dir, sizeof(v->run_dir), "%s", PQgetvalue(r, 0, 3));
	PQclear(r);
}

static bool alive(const struct vm *v)
{
	return vmops_proc_check("/proc", (pid_t)v->pid, (unsigned long long)v->start, NULL, NULL) == VMOPS_PROC_ALIVE;
}

Test(ghost, real_qemu_healthy_ghost_and_phantom, .timeout = 240, .fini = teardown)
{
	PGconn *c;
	struct vm keep = { .sandbox = "keep" }, ghost = { .sandbox = "ghost" }, phantom = { .sandbox = "phantom" };
	char serial[400], qmp[400], qga[400], *before, *after;
	const char *gone_class = "phantom";
	long long bogus;
	pid_t l1, l2, l3;
	struct testrun r;
	cJSON *doc;
	const cJSON *it;
	struct testlib_guest g;

	testlib_need_qemu();
	c = fleet();
	l1 = launch_bg("keep");
	l2 = launch_bg("ghost");
	l3 = launch_bg("phantom");
	wait_launch(l1, "keep");
	wait_launch(l2, "ghost");
	wait_launch(l3, "phantom");
	vm_load(c, &keep);
	vm_load(c, &ghost);
	vm_load(c, &phantom);
	snprintf(serial, sizeof(serial), "%s/serial.log", keep.run_dir);
	snprintf(qmp, sizeof(qmp), "%s/qmp.sock", ghost.run_dir);
	snprintf(qga, sizeof(qga), "%s/qga.sock", ghost.run_dir);

	/* healthy: nothing to do */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s", "--json");
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	doc = parse(r.out);
	cr_assert_str_eq(str(item(doc, keep.vmm, keep.pid), "class"), "healthy");
	cr_assert_str_eq(str(item(doc, ghost.vmm, ghost.pid), "class"), "healthy");
	cr_assert_str_eq(str(item(doc, phantom.vmm, phantom.pid), "class"), "healthy");
	cJSON_Delete(doc);
	testrun_free(&r);

	/* the ghost: recorded destroyed, but its process still runs */
	{
		char sql[512];

		snprintf(sql, sizeof(sql), "UPDATE vmms SET state = 'destroyed' WHERE id = %lld;"
			 "DELETE FROM reservations WHERE vmm_id = %lld;"
			 "UPDATE sandboxes SET status = 'destroyed' WHERE name = 'ghost'", ghost.vmm, ghost.vmm);
		PQclear(testdb_exec(c, sql));
	}
	/* the phantom: killed behind the database's back */
	cr_assert_eq(kill((pid_t)phantom.pid, SIGKILL), 0);
	for (int i = 0; i < 100 && state_of((pid_t)phantom.pid) == 'S'; i++)
		usleep(20000);
	for (int i = 0; i < 100 && state_of((pid_t)phantom.pid) != '\0'; i++)
		usleep(100000);  /* orphans are reaped by init, eventually */
	if (state_of((pid_t)phantom.pid) == 'Z')
		gone_class = "zombie";
	/* pid reuse: a VMM row recording keep's pid with another start time */
	bogus = register_vmm(c, "sb-bogus", (pid_t)keep.pid, (unsigned long long)keep.start + 1);

	/* 1. --dry-run: would kill, would repair; nothing changes */
	before = snapshot(c);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s",
		"--dry-run", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	doc = parse(r.out);
	it = item(doc, ghost.vmm, ghost.pid);
	cr_assert_str_eq(str(it, "class"), "ghost", "%s", r.out);
	cr_assert_str_eq(str(it, "action"), "would-kill");
	cr_assert_str_eq(str(item(doc, phantom.vmm, phantom.pid), "action"), "would-repair");
	cr_assert_str_eq(str(item(doc, bogus, keep.pid), "action"), "would-repair");
	cJSON_Delete(doc);
	testrun_free(&r);
	after = snapshot(c);
	cr_assert_str_eq(after, before);
	free(after);
	free(before);
	cr_assert(alive(&ghost));

	/* 2. --min-age longer than the ghost's age: left alone; the phantoms are repaired */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "1h", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FIXED, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	doc = parse(r.out);
	it = item(doc, ghost.vmm, ghost.pid);
	cr_assert_str_eq(str(it, "class"), "young", "%s", r.out);
	cr_assert_str_eq(str(it, "action"), "none");
	it = item(doc, phantom.vmm, phantom.pid);
	cr_assert_str_eq(str(it, "class"), gone_class, "%s", r.out);
	cr_assert_str_eq(str(it, "action"), "repaired");
	it = item(doc, bogus, keep.pid);
	cr_assert_str_eq(str(it, "class"), "phantom", "%s", r.out);
	cr_assert_str_eq(str(it, "action"), "repaired");
	cr_assert_str_eq(str(item(doc, keep.vmm, keep.pid), "class"), "healthy");
	cJSON_Delete(doc);
	testrun_free(&r);
	cr_assert(alive(&ghost), "a young ghost was killed");
	cr_assert(is_socket(qmp));
	assert_repaired(c, phantom.vmm, strcmp(gone_class, "zombie") ? "phantom-repair" : "zombie-repair");
	assert_repaired(c, bogus, "phantom-repair");

	/* 3. --action log: reported, found and not fixed */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--min-age", "0s", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	doc = parse(r.out);
	cr_assert_str_eq(str(item(doc, ghost.vmm, ghost.pid), "action"), "reported", "%s", r.out);
	cJSON_Delete(doc);
	testrun_free(&r);
	cr_assert(alive(&ghost));

	/* 4. --action kill: stopped, it cannot act on SIGTERM (nor remove its own
	 * sockets): SIGKILL after the grace, then ghost-reap removes them */
	cr_assert_eq(kill((pid_t)ghost.pid, SIGSTOP), 0);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s",
		"--grace", "1s", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FIXED, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	doc = parse(r.out);
	it = item(doc, ghost.vmm, ghost.pid);
	cr_assert_str_eq(str(it, "class"), "ghost", "%s", r.out);
	cr_assert_str_eq(str(it, "action"), "killed");
	cr_assert(strstr(str(it, "detail"), "SIGKILL after 1000 ms grace"), "%s", r.out);
	cr_assert(strstr(str(it, "detail"), "removed"), "%s", r.out);
	cr_assert(strstr(str(it, "detail"), "removed its run directory"), "%s", r.out);
	cr_assert_str_eq(str(item(doc, keep.vmm, keep.pid), "class"), "healthy");
	cJSON_Delete(doc);
	testrun_free(&r);
	cr_assert(!alive(&ghost), "the ghost still runs");
	cr_assert(!is_socket(qmp), "%s was not removed", qmp);
	cr_assert(!is_socket(qga), "%s was not removed", qga);
	/* and its run directory, logs included (the ghost's record is gone: nothing else would) */
	{
		struct stat st;
		cr_assert(lstat(ghost.run_dir, &st) < 0 && errno == ENOENT, "%s is still there", ghost.run_dir);
	}

	/* 5. nothing left to do, and the healthy VM ran on throughout */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s", "--json");
	cr_assert_eq(r.status, 0, "stderr:\n%s\nstdout:\n%s", r.err, r.out);
	cr_assert(strstr(r.out, "\"killed\":\t0"), "%s", r.out);
	cr_assert(strstr(r.out, "\"repaired\":\t0"), "%s", r.out);
	testrun_free(&r);
	cr_assert(alive(&keep));
	testlib_wait_heartbeat(serial, 0, 120, &g);
	testlib_assert_guest_continues(serial, NULL, &g.last, 30, NULL);
	cr_assert(alive(&keep));
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE name = 'keep' AND status = 'running'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
				  " WHERE s.name = 'keep' AND e.ended_at IS NULL"), 1);
	PQfinish(c);
}

/* ---- this host must be the worker's ------------------------------------------------------ */

/* A running VMM of gw whose process cannot exist (pid above any pid_max). */
static long long add_phantom(PGconn *c, const char *sandbox)
{
	char sql[1024];

	snprintf(sql, sizeof(sql),
		 "WITH s AS (INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
		 "  VALUES ('%s', 'acme', 'pending', 1, 128, 1) RETURNING id),"
		 " v AS (INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state, pid, pid_start_time)"
		 "  SELECT id, 1, 'qemu', 'running', 99999999, 4242 FROM s RETURNING id, sandbox_id)"
		 " SELECT id FROM v", sandbox);
	{
		long long vmm = testdb_ll(c, sql);

		snprintf(sql, sizeof(sql),
			 "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (%lld, 1, 128, 1);"
			 "UPDATE sandboxes SET status = 'running', active_vmm_id = %lld WHERE name = '%s';"
			 "INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)"
			 " SELECT id, 'acme', 1, %lld, 128, 1 FROM sandboxes WHERE name = '%s'",
			 vmm, vmm, sandbox, vmm, sandbox);
		PQclear(testdb_exec(c, sql));
		return vmm;
	}
}

Test(ghost, wrong_host_changes_nothing)
{
	PGconn *c = fleet();
	long long vmm = add_phantom(c, "sb-far");
	char *before = snapshot(c), *after;
	struct testrun r;
	static const char *const runs[][3] = {
		{ "other-host", "this host (other-host) is not worker gw (host " HOST_ID "); nothing done", NULL },
		{ "bad id!", "VMOPS_HOST_ID 'bad id!': not a valid host identity", NULL },
	};

	/* another host, or one whose identity is not valid: one line, exit 13,
	 * nothing read, nothing changed; --dry-run and --action log alike */
	for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		setenv("VMOPS_HOST_ID", runs[i][0], 1);
		TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s");
		cr_assert_eq(r.status, VMOPS_EXIT_WRONG_HOST, "%s: exit %d: %s%s", runs[i][0], r.status, r.out, r.err);
		cr_assert(strstr(r.err, runs[i][1]), "%s", r.err);
		cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
		cr_assert_str_eq(r.out, "");
		testrun_free(&r);
		TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--dry-run", "--json");
		cr_assert_eq(r.status, VMOPS_EXIT_WRONG_HOST, "%s", r.err);
		cr_assert_str_eq(r.out, "");
		testrun_free(&r);
	}
	after = snapshot(c);
	cr_assert_str_eq(after, before, "a run on the wrong host changed the database");
	free(after);

	/* a worker with no host identity recorded (made before there were any) */
	setenv("VMOPS_HOST_ID", HOST_ID, 1);
	PQclear(testdb_exec(c, "UPDATE workers SET host_id = NULL"));
	free(before);
	before = snapshot(c);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s");
	cr_assert_eq(r.status, VMOPS_EXIT_WRONG_HOST, "%s", r.err);
	cr_assert(strstr(r.err, "worker gw has no host identity recorded: run 'vm-fleet worker set-host gw' on its host"),
		  "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	after = snapshot(c);
	cr_assert_str_eq(after, before);
	free(after);
	free(before);

	/* recorded on this host: now the phantom is repaired, all fixed: 4 */
	TESTRUN(&r, "vm-fleet", "--db", ci, "--json", "worker", "set-host", "gw");
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert(strstr(r.out, "\"host_id\":\t\"" HOST_ID "\""), "%s", r.out);
	cr_assert(strstr(r.out, "\"old_host_id\":\tnull"), "%s", r.out);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'worker-set-host'"
				  " AND before->>'host_id' IS NULL AND after->>'host_id' = '" HOST_ID "'"), 1);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s");
	cr_assert_eq(r.status, VMOPS_EXIT_FIXED, "%s%s", r.out, r.err);
	testrun_free(&r);
	{
		char sql[128];

		snprintf(sql, sizeof(sql), "SELECT count(*) FROM vmms WHERE id = %lld AND state = 'failed'", vmm);
		cr_assert_eq(testdb_ll(c, sql), 1);
	}
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s");
	cr_assert_eq(r.status, VMOPS_EXIT_OK, "%s%s", r.out, r.err);
	testrun_free(&r);
	PQfinish(c);
}

/* ---- unknown: a pid recorded without a start time ---------------------------------------- */

Test(ghost, unknown_identity_is_never_acted_on, .fini = teardown)
{
	PGconn *c = fleet();
	const char *argv[] = { "sleep", "300", NULL };
	pid_t a = start_group("/bin/sleep", argv), b = start_group("/bin/sleep", argv);
	unsigned long long sa, sb;
	long long va, vb;
	char sql[256], *before, *after;
	struct testrun r;
	cJSON *doc;

	for (int i = 0; i < 100 && (state_of(a) != 'S' || state_of(b) != 'S'); i++)
		usleep(20000);
	sa = start_of(a);
	sb = start_of(b);
	va = register_vmm(c, "sb-null", a, sa);
	vb = register_vmm(c, "sb-zero", b, sb);
	/* as another system recorded them: no start time (NULL), or 0 */
	snprintf(sql, sizeof(sql), "UPDATE vmms SET pid_start_time = NULL WHERE id = %lld;"
		 "UPDATE vmms SET pid_start_time = 0 WHERE id = %lld", va, vb);
	PQclear(testdb_exec(c, sql));

	before = snapshot(c);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s%s", r.out, r.err);
	doc = parse(r.out);
	cr_assert_str_eq(str(item(doc, va, a), "class"), "unknown", "%s", r.out);
	cr_assert_str_eq(str(item(doc, va, a), "action"), "none", "%s", r.out);
	cr_assert_str_eq(str(item(doc, vb, b), "class"), "unknown", "%s", r.out);
	cr_assert(strstr(str(item(doc, vb, b), "detail"), "no start time"), "%s", r.out);
	cr_assert(strstr(r.out, "\"unknown\":\t2"), "%s", r.out);
	cr_assert(strstr(r.out, "\"unfixed\":\t2"), "%s", r.out);
	cJSON_Delete(doc);
	testrun_free(&r);
	after = snapshot(c);
	cr_assert_str_eq(after, before, "an unknown identity was acted on");
	cr_assert_eq(state_of(a), 'S');
	cr_assert_eq(state_of(b), 'S');
	free(before);
	free(after);
	PQfinish(c);
}

/* ---- exit status: the audit programs' convention ------------------------------------------ */

Test(ghost, failed_repair_is_found_not_fixed)
{
	PGconn *c = fleet();
	struct testrun r;

	add_phantom(c, "sb-stuck");
	PQclear(testdb_exec(c,
		"CREATE FUNCTION t_refuse() RETURNS trigger LANGUAGE plpgsql AS"
		" $$BEGIN RAISE EXCEPTION 'refused by the test'; END$$;"
		"CREATE TRIGGER t_refuse BEFORE UPDATE OF state ON vmms FOR EACH ROW"
		" WHEN (NEW.state = 'failed') EXECUTE FUNCTION t_refuse()"));
	/* the run completed, one repair failed: found and not all fixed (3), as
	 * usage-parity exits when a fix fails; 1 is for a run that failed */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--min-age", "0s", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "exit %d: %s%s", r.status, r.out, r.err);
	cr_assert(strstr(r.out, "\"errors\":\t1"), "%s", r.out);
	cr_assert(strstr(r.out, "\"status\":\t\"found\""), "%s", r.out);
	cr_assert(strstr(r.err, "1 action(s) failed"), "%s", r.err);
	testrun_free(&r);
	PQfinish(c);
}

/* ---- abandoned launches: a VMM starting for too long ------------------------------------- */

/* Wait until the launch of `sandbox` has recorded a pid; returns the VMM id. */
static long long wait_starting(PGconn *c, const char *sandbox, pid_t launcher)
{
	char sql[300];

	snprintf(sql, sizeof(sql), "SELECT coalesce((SELECT v.id FROM vmms v JOIN sandboxes s ON s.id = v.sandbox_id"
		 " WHERE s.name = '%s' AND v.state = 'starting' AND v.pid IS NOT NULL), -1)", sandbox);
	for (int i = 0; i < 600; i++) {
		long long id = testdb_ll(c, sql);
		int st;

		if (id > 0)
			return id;
		cr_assert_eq(waitpid(launcher, &st, WNOHANG), 0, "vm-fleet launch ended early (0x%x)", st);
		usleep(100000);
	}
	cr_assert_fail("no pid recorded for %s within 60 s", sandbox);
	return -1;
}

/* vm-fleet launch on gw, killed with SIGKILL once the QEMU is recorded:
 * nothing can clean up, the VMM stays starting.  QMP is hidden, so the
 * launch could never have finished anyway. */
static long long abandoned_launch(PGconn *c, const char *sandbox, struct vm *v)
{
	char spec[300];
	struct testproc p;
	struct testrun r;
	long long vmm;
	FILE *f;

	snprintf(spec, sizeof(spec), "%s/%s.json", rundir, sandbox);
	f = fopen(spec, "w");
	cr_assert(f);
	fprintf(f, "{\"hypervisor\":\"qemu\",\"memory_mb\":160,\"vcpus\":1,\"kernel\":\"%s\",\"initrd\":\"%s\","
		   "\"cmdline\":\"console=ttyS0\",\"accel\":\"tcg\"}\n",
		getenv("VMOPS_TEST_KERNEL"), getenv("VMOPS_TEST_INITRD"));
	fclose(f);
	TESTRUN_START(&p, "vm-fleet", "--db", ci, "launch", "--sandbox", sandbox, "--org", "acme", "--worker", "gw",
		      "--spec", spec, "--wait", "10m");
	vmm = wait_starting(c, sandbox, p.pid);
	cr_assert_eq(kill(p.pid, SIGKILL), 0);
	testrun_finish(&p, &r);
	cr_assert_eq(r.status, 128 + SIGKILL);
	testrun_free(&r);
	{
		char sql[256];
		PGresult *q;

		snprintf(sql, sizeof(sql), "SELECT pid, pid_start_time, run_dir FROM vmms WHERE id = %lld", vmm);
		q = testdb_exec(c, sql);
		v->sandbox = sandbox;
		v->vmm = vmm;
		v->pid = strtoll(PQgetvalue(q, 0, 0), NULL, 10);
		v->start = strtoll(PQgetvalue(q, 0, 1), NULL, 10);
		snprintf(v->run_dir, sizeof(v->run_dir), "%s", PQgetvalue(q, 0, 2));
		PQclear(q);
	}
	cr_assert(alive(v), "the abandoned QEMU is not running");
	return vmm;
}

static void assert_stale_repaired(PGconn *c, const struct vm *v)
{
	char sql[1024];
	PGresult *r;

	snprintf(sql, sizeof(sql),
		 "SELECT v.state || '|' || s.status || '|' || (SELECT count(*) FROM reservations WHERE vmm_id = v.id)"
		 " || '|' || (SELECT count(*) FROM scale_events WHERE sandbox_id = s.id)"
		 " || '|' || (SELECT count(*) FROM audit_log a WHERE a.object_id = v.id AND a.program = 'ghost-reap'"
		 "            AND a.action = 'stale-start-repair' AND a.before->>'vmm_state' = 'starting')"
		 " FROM vmms v JOIN sandboxes s ON s.id = v.sandbox_id WHERE v.id = %lld", v->vmm);
	r = testdb_exec(c, sql);
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "failed|error|0|0|1", "vmm %lld: %s", v->vmm, PQgetvalue(r, 0, 0));
	PQclear(r);
}

Test(ghost, abandoned_launch_is_stopped_after_starting_timeout, .timeout = 300, .fini = teardown)
{
	PGconn *c;
	struct vm a = { 0 }, b = { 0 }, u = { 0 };
	char path[8192], sql[256], *before, *after;
	struct testrun r;
	cJSON *doc;
	const cJSON *it;

	testlib_need_qemu();
	c = fleet();
	snprintf(path, sizeof(path), "%s:%s", testlib_qemu_hiding_qmp(rundir), getenv("PATH"));
	setenv("PATH", path, 1);
	abandoned_launch(c, "abandoned", &a);
	abandoned_launch(c, "no-pid", &b);
	abandoned_launch(c, "no-start", &u);
	/* as an older vm-fleet left it: pid not recorded yet (found by its token) */
	snprintf(sql, sizeof(sql), "UPDATE vmms SET pid = NULL, pid_start_time = NULL WHERE id = %lld", b.vmm);
	PQclear(testdb_exec(c, sql));
	/* pid recorded, start time not: identity unknown */
	snprintf(sql, sizeof(sql), "UPDATE vmms SET pid_start_time = 0 WHERE id = %lld", u.vmm);
	PQclear(testdb_exec(c, sql));

	/* within --starting-timeout (default 10m): a launch in progress, healthy */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s%s", r.out, r.err);  /* only the unknown one */
	doc = parse(r.out);
	cr_assert_str_eq(str(item(doc, a.vmm, a.pid), "class"), "healthy", "%s", r.out);
	cr_assert_str_eq(str(item(doc, b.vmm, b.pid), "class"), "healthy", "%s", r.out);
	cr_assert_str_eq(str(item(doc, u.vmm, u.pid), "class"), "unknown", "%s", r.out);
	cJSON_Delete(doc);
	testrun_free(&r);

	/* past it, --action log: reported as ghosts, nothing stopped, nothing changed
	 * (a VMM whose process runs keeps its reservation) */
	sleep(2);
	before = snapshot(c);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--min-age", "0s", "--starting-timeout", "1s", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s%s", r.out, r.err);
	doc = parse(r.out);
	it = item(doc, a.vmm, a.pid);
	cr_assert_str_eq(str(it, "class"), "ghost", "%s", r.out);
	cr_assert_str_eq(str(it, "action"), "reported");
	cr_assert(strstr(str(it, "detail"), "has been starting for"), "%s", r.out);
	cr_assert_str_eq(str(item(doc, b.vmm, b.pid), "class"), "ghost", "%s", r.out);
	cr_assert_str_eq(str(item(doc, u.vmm, u.pid), "class"), "unknown", "%s", r.out);
	cJSON_Delete(doc);
	testrun_free(&r);
	after = snapshot(c);
	cr_assert_str_eq(after, before);
	free(before);
	free(after);
	cr_assert(alive(&a) && alive(&b) && alive(&u));
	/* usage-parity sees them too: pending, a live VMM, nothing billed */
	TESTRUN(&r, "usage-parity", "--db", ci, "--from", "2001-01-01", "--to", "2001-01-02", "--starting-timeout", "1s",
		"--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s%s", r.out, r.err);
	doc = parse(r.out);
	{
		const cJSON *f;
		int n = 0;

		cJSON_ArrayForEach(f, cJSON_GetObjectItemCaseSensitive(doc, "findings")) {
			cr_assert_str_eq(str(f, "category"), "pending_live_vmm", "%s", r.out);
			cr_assert(strstr(str(f, "detail"), "run ghost-reap on gw"), "%s", r.out);
			n++;
		}
		cr_assert_eq(n, 3, "%s", r.out);
	}
	cJSON_Delete(doc);
	testrun_free(&r);

	/* --action kill: stopped (pidfd, start time checked), then repaired:
	 * VMM failed, sandbox error, reservation gone; the unknown one untouched */
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s",
		"--starting-timeout", "1s", "--grace", "2s", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s%s", r.out, r.err);
	doc = parse(r.out);
	it = item(doc, a.vmm, a.pid);
	cr_assert_str_eq(str(it, "action"), "killed", "%s", r.out);
	cr_assert(strstr(str(it, "detail"), "vmm failed, sandbox error"), "%s", r.out);
	cr_assert_str_eq(str(item(doc, b.vmm, b.pid), "action"), "killed", "%s", r.out);
	cr_assert_str_eq(str(item(doc, u.vmm, u.pid), "action"), "none", "%s", r.out);
	cJSON_Delete(doc);
	testrun_free(&r);
	cr_assert(!alive(&a), "the abandoned QEMU still runs");
	cr_assert(!alive(&b), "the abandoned QEMU without a recorded pid still runs");
	cr_assert(alive(&u), "a QEMU of unknown identity was signalled");
	assert_stale_repaired(c, &a);
	assert_stale_repaired(c, &b);

	/* its start time recorded after all: stopped too, and now all fixed: 4 */
	snprintf(sql, sizeof(sql), "UPDATE vmms SET pid_start_time = %lld WHERE id = %lld", u.start, u.vmm);
	PQclear(testdb_exec(c, sql));
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s",
		"--starting-timeout", "1s", "--grace", "2s");
	cr_assert_eq(r.status, VMOPS_EXIT_FIXED, "%s%s", r.out, r.err);
	testrun_free(&r);
	cr_assert(!alive(&u));
	assert_stale_repaired(c, &u);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s",
		"--starting-timeout", "1s");
	cr_assert_eq(r.status, VMOPS_EXIT_OK, "%s%s", r.out, r.err);
	testrun_free(&r);
	TESTRUN(&r, "usage-parity", "--db", ci, "--from", "2001-01-01", "--to", "2001-01-02", "--starting-timeout", "1s");
	cr_assert_eq(r.status, VMOPS_EXIT_OK, "%s%s", r.out, r.err);
	testrun_free(&r);
	PQfinish(c);
}

/* ---- host identity (lib/host) -------------------------------------------------------------- */

Test(ghost, host_identity_rules)
{
	char dir[] = "/tmp/vmops-hostid.XXXXXX", path[300], buf[VMOPS_HOST_ID_MAX];
	struct vmops_error e = { 0 };
	FILE *f;

	cr_assert(vmops_host_id_valid("0123456789abcdef0123456789abcdef"));
	cr_assert(vmops_host_id_valid("w-17.rack2:a_b"));
	cr_assert_not(vmops_host_id_valid(""));
	cr_assert_not(vmops_host_id_valid("-x"));
	cr_assert_not(vmops_host_id_valid("a b"));
	cr_assert_not(vmops_host_id_valid(NULL));
	{
		char big[200];

		memset(big, 'a', 129);
		big[129] = '\0';
		cr_assert_not(vmops_host_id_valid(big));  /* 129 characters */
		big[128] = '\0';
		cr_assert(vmops_host_id_valid(big));      /* 128 */
	}

	cr_assert(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/machine-id", dir);
	f = fopen(path, "w");
	fputs("4b2d9a31c0e8f7a6b5c4d3e2f1a0b9c8 \n", f);
	fclose(f);
	cr_assert_eq(vmops_host_id_read(path, buf, sizeof(buf), &e), 0, "%s", e.msg);
	cr_assert_str_eq(buf, "4b2d9a31c0e8f7a6b5c4d3e2f1a0b9c8");
	f = fopen(path, "w");
	fputs("\n", f);
	fclose(f);
	cr_assert_eq(vmops_host_id_read(path, buf, sizeof(buf), &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_WRONG_HOST);
	cr_assert(strstr(e.msg, "empty"), "%s", e.msg);
	unlink(path);
	cr_assert_eq(vmops_host_id_read(path, buf, sizeof(buf), &e), -1);
	cr_assert(strstr(e.msg, "no such file or directory"), "%s", e.msg);
	rmdir(dir);

	/* the override wins, and must itself be valid */
	cr_assert_eq(vmops_host_id("h-1", buf, sizeof(buf), &e), 0);
	cr_assert_str_eq(buf, "h-1");
	cr_assert_eq(vmops_host_id("no way", buf, sizeof(buf), &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_WRONG_HOST);
	if (access("/etc/machine-id", R_OK) == 0) {
		cr_assert_eq(vmops_host_id(NULL, buf, sizeof(buf), &e), 0, "%s", e.msg);
		cr_assert(vmops_host_id_valid(buf));
	}
}

/* An abandoned start whose recorded process is not a hypervisor (here a
 * "qemu-system-x86_64" that is a shell script running sleep): reported,
 * never signalled, whatever --action says. */
Test(ghost, abandoned_start_of_a_non_hypervisor_is_not_signalled, .timeout = 60, .fini = teardown)
{
	PGconn *c = fleet();
	char dir[300], path[8192], spec[300];
	struct testproc p;
	struct testrun r;
	long long vmm, pid;
	cJSON *doc;
	const cJSON *it;
	FILE *f;

	snprintf(dir, sizeof(dir), "%s/fakebin", rundir);
	cr_assert_eq(mkdir(dir, 0700), 0);
	snprintf(path, sizeof(path), "%s/qemu-system-x86_64", dir);
	f = fopen(path, "w");
	cr_assert(f);
	fputs("#!/bin/sh\nexec sleep 60\n", f);  /* bounded: teardown does not know it */
	fclose(f);
	cr_assert_eq(chmod(path, 0755), 0);
	snprintf(path, sizeof(path), "%s:%s", dir, getenv("PATH"));
	setenv("PATH", path, 1);
	/* a kernel the launch-spec policy lets through (run-one/run-all allow /tmp); the fake never reads it */
	snprintf(spec, sizeof(spec), "%s/vmlinuz", rundir);
	f = fopen(spec, "w");
	cr_assert(f);
	fclose(f);
	cr_assert_eq(chmod(spec, 0644), 0);
	snprintf(path, sizeof(path), "{\"hypervisor\":\"qemu\",\"memory_mb\":128,\"vcpus\":1,\"kernel\":\"%s\"}\n", spec);
	snprintf(spec, sizeof(spec), "%s/fake.json", rundir);
	f = fopen(spec, "w");
	fputs(path, f);
	fclose(f);
	TESTRUN_START(&p, "vm-fleet", "--db", ci, "launch", "--sandbox", "fake", "--org", "acme", "--worker", "gw",
		      "--spec", spec, "--wait", "10m");
	vmm = wait_starting(c, "fake", p.pid);
	kill(p.pid, SIGKILL);
	testrun_finish(&p, &r);
	testrun_free(&r);
	{
		char sql[128];

		snprintf(sql, sizeof(sql), "SELECT pid FROM vmms WHERE id = %lld", vmm);
		pid = testdb_ll(c, sql);
	}
	/* right after the fork it may still be running /bin/sh: wait for sleep(1) */
	for (int i = 0; state_of((pid_t)pid) != 'S'; i++) {
		cr_assert_lt(i, 100, "the fake hypervisor never went to sleep (state %c)", state_of((pid_t)pid));
		usleep(50000);
	}
	sleep(2);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "gw", "--action", "kill", "--min-age", "0s",
		"--starting-timeout", "1s", "--json");
	cr_assert_eq(r.status, VMOPS_EXIT_FOUND, "%s%s", r.out, r.err);
	doc = parse(r.out);
	it = item(doc, vmm, pid);
	cr_assert_str_eq(str(it, "class"), "ghost", "%s", r.out);
	cr_assert_str_eq(str(it, "action"), "skipped", "%s", r.out);
	cr_assert(strstr(str(it, "detail"), "not a hypervisor process"), "%s", r.out);
	cJSON_Delete(doc);
	testrun_free(&r);
	cr_assert_eq(state_of((pid_t)pid), 'S', "a process that is not a hypervisor was signalled");
	kill((pid_t)pid, SIGKILL);
	PQfinish(c);
}
