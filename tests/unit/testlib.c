/* SPDX-License-Identifier: MIT */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"
#include "testlib.h"

PGconn *testdb_new(bool with_schema, char *conninfo, size_t len)
{
	static int counter;
	char name[64], sql[256];
	PGconn *admin, *c;
	PGresult *r;
	const char *host = getenv("PGHOST"), *port = getenv("PGPORT");

	cr_assert(host && port, "PGHOST/PGPORT not set: run the suite through tests/pgcluster.sh");
	struct timespec ts;

	/* Unique across processes and passes (pids are reused; random() unseeded is not random). */
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(name, sizeof(name), "t_%d_%d_%lld_%ld", (int)getpid(), counter++, (long long)ts.tv_sec,
		 ts.tv_nsec);
	admin = PQconnectdb("dbname=postgres");
	cr_assert(PQstatus(admin) == CONNECTION_OK, "admin connect: %s", PQerrorMessage(admin));
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s TEMPLATE %s", name,
		 with_schema ? "vmops_template" : "template0");
	/* CREATE DATABASE from a template fails if someone else is connected to it: retry. */
	for (int i = 0;; i++) {
		r = PQexec(admin, sql);
		if (PQresultStatus(r) == PGRES_COMMAND_OK)
			break;
		cr_assert(i < 50, "%s: %s", sql, PQerrorMessage(admin));
		PQclear(r);
		usleep(100000);
	}
	PQclear(r);
	PQfinish(admin);
	snprintf(conninfo, len, "host=%s port=%s dbname=%s", host, port, name);
	c = PQconnectdb(conninfo);
	cr_assert(PQstatus(c) == CONNECTION_OK, "connect %s: %s", conninfo, PQerrorMessage(c));
	PQsetNoticeProcessor(c, NULL, NULL);
	return c;
}

PGresult *testdb_exec(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);

	cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "SQL failed: %s\n%s",
		  PQerrorMessage(c), sql);
	return r;
}

long long testdb_ll(PGconn *c, const char *sql)
{
	PGresult *r = testdb_exec(c, sql);
	long long v;

	cr_assert(PQntuples(r) >= 1, "no rows: %s", sql);
	v = PQgetisnull(r, 0, 0) ? -1 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	PQclear(r);
	return v;
}

const char *testdb_fail(PGconn *c, const char *sql)
{
	static char state[6];
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);
	const char *s;

	cr_assert(st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK, "SQL unexpectedly succeeded: %s", sql);
	s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	snprintf(state, sizeof(state), "%s", s ? s : "");
	PQclear(r);
	return state;
}

static char *drain(int fd)
{
	size_t len = 0, cap = 4096;
	char *buf = malloc(cap);
	ssize_t n;

	cr_assert(buf);
	while ((n = read(fd, buf + len, cap - len - 1)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		len += (size_t)n;
		if (cap - len < 2) {
			cap *= 2;
			buf = realloc(buf, cap);
			cr_assert(buf);
		}
	}
	buf[len] = '\0';
	return buf;
}

void testrun_start(struct testproc *p, const char *const *argv)
{
	const char *dir = getenv("VMOPS_BIN_DIR");
	char path[4096], ofile[] = "/tmp/vmops-out.XXXXXX", efile[] = "/tmp/vmops-err.XXXXXX";

	p->ofd = mkstemp(ofile);
	p->efd = mkstemp(efile);
	cr_assert(p->ofd >= 0 && p->efd >= 0);
	unlink(ofile);
	unlink(efile);
	snprintf(path, sizeof(path), "%s/%s", dir ? dir : "bin", argv[0]);
	p->pid = fork();
	cr_assert(p->pid >= 0);
	if (p->pid == 0) {
		int nul = open("/dev/null", O_RDONLY);
		dup2(nul, 0);
		dup2(p->ofd, 1);
		dup2(p->efd, 2);
		execv(path, (char *const *)(uintptr_t)argv);
		fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}
}

void testrun_finish(struct testproc *p, struct testrun *r)
{
	int st;

	while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR)
		;
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	lseek(p->ofd, 0, SEEK_SET);
	lseek(p->efd, 0, SEEK_SET);
	r->out = drain(p->ofd);
	r->err = drain(p->efd);
	close(p->ofd);
	close(p->efd);
	p->pid = 0;
}

void testrun(struct testrun *r, const char *const *argv)
{
	struct testproc p;

	testrun_start(&p, argv);
	testrun_finish(&p, r);
}

const char *testlib_qemu_hiding_qmp(const char *dir)
{
	static char path[4096];
	char real[4096] = "";
	const char *env = getenv("PATH");
	FILE *f;

	/* the real QEMU: the first on PATH that is not a wrapper of ours */
	for (const char *p = env; p && *p;) {
		const char *e = strchr(p, ':');
		size_t n = e ? (size_t)(e - p) : strlen(p);

		snprintf(real, sizeof(real), "%.*s/qemu-system-x86_64", (int)n, p);
		if (access(real, X_OK) == 0 && !strstr(real, "vmops-qemu-wrap"))
			break;
		real[0] = '\0';
		p = e ? e + 1 : p + n;
	}
	cr_assert(real[0], "qemu-system-x86_64 is not on PATH");
	snprintf(path, sizeof(path), "%s/vmops-qemu-wrap", dir);
	cr_assert(mkdir(path, 0700) == 0 || errno == EEXIST);
	snprintf(path, sizeof(path), "%s/vmops-qemu-wrap/qemu-system-x86_64", dir);
	f = fopen(path, "w");
	cr_assert(f);
	fprintf(f, "#!/bin/sh\n"
		   "# vmops test wrapper: the real QEMU with its QMP socket renamed, so that\n"
		   "# whoever launched it waits for a control socket that never appears.\n"
		   "n=$#\n"
		   "for a do\n"
		   "\tcase $a in unix:*/qmp.sock,*) a=$(printf '%%s' \"$a\" | sed 's#/qmp\\.sock,#/qmp-hidden.sock,#');; esac\n"
		   "\tset -- \"$@\" \"$a\"\n"
		   "done\n"
		   "shift $n\n"
		   "exec %s \"$@\"\n", real);
	cr_assert(fclose(f) == 0);
	cr_assert(chmod(path, 0755) == 0);
	snprintf(path, sizeof(path), "%s/vmops-qemu-wrap", dir);
	return path;
}

void testrun_free(struct testrun *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
}

size_t testlib_lines(const char *s)
{
	size_t n = 0;

	for (; s && *s; s++)
		n += *s == '\n';
	return n;
}

/*
 * A missing real part is a failure, not a silent skip: make check must not
 * report "all passed" for tests that never ran.  The operator may opt out
 * explicitly (VMOPS_SKIP_QEMU=1: real-QEMU and guest-agent cases skip, and
 * the closing line of tests/run-all.sh says so).  A pass that leaves these
 * cases to another pass on purpose (valgrind; the fault matrix under ASan)
 * sets VMOPS_QEMU_CASES=elsewhere:PASS, and run-all counts them apart from
 * skips: a skip whose message starts with "elsewhere: " names the pass that
 * runs it.
 */
static void skip_if_elsewhere(void)
{
	const char *v = getenv("VMOPS_QEMU_CASES");

	if (v && !strncmp(v, "elsewhere", 9))
		cr_skip_test("elsewhere: real-QEMU case, runs in the %s pass", v[9] == ':' && v[10] ? v + 10 : "other");
}

void testlib_missing(const char *what)
{
	const char *opt = getenv("VMOPS_SKIP_QEMU");

	skip_if_elsewhere();
	if (opt && *opt && strcmp(opt, "0"))
		cr_skip_test("VMOPS_SKIP_QEMU=%s: %s", opt, what);
	cr_assert_fail("%s (set VMOPS_SKIP_QEMU=1 to skip real-QEMU cases explicitly)", what);
}

void testlib_need_qemu(void)
{
	const char *k = getenv("VMOPS_TEST_KERNEL"), *i = getenv("VMOPS_TEST_INITRD");

	skip_if_elsewhere();
	if (!k || !*k || !i || !*i)
		testlib_missing("no test guest (VMOPS_TEST_KERNEL/VMOPS_TEST_INITRD unset)");
	if (access(k, R_OK) || access(i, R_OK))
		testlib_missing("test guest kernel or initrd not readable");
}

static int kill_if_under(const struct vmops_proc_info *i, void *data)
{
	for (int k = 0; k < i->argc; k++)
		if (strstr(i->argv[k], (const char *)data)) {
			kill(i->stat.pid, SIGKILL);
			break;
		}
	return 0;
}

struct count_under {
	const char *dir;
	int n;
};

static int count_if_under(const struct vmops_proc_info *i, void *data)
{
	struct count_under *cu = data;

	for (int k = 0; k < i->argc; k++)
		if (strstr(i->argv[k], cu->dir) && i->stat.state != 'Z' && i->stat.state != 'X') {
			cu->n++;
			break;
		}
	return 0;
}

int testlib_count_vms_under(const char *dir)
{
	struct count_under cu = { dir, 0 };

	cr_assert(dir && *dir);
	cr_assert_eq(vmops_proc_scan("/proc", VMOPS_PROC_SCAN_HV_ONLY, count_if_under, &cu, NULL), 0);
	return cu.n;
}

void testlib_kill_vms_under(const char *dir)
{
	if (dir && *dir)
		(void)vmops_proc_scan("/proc", VMOPS_PROC_SCAN_HV_ONLY, kill_if_under, (void *)(uintptr_t)dir, NULL);
}

bool testlib_parse_heartbeat(const char *line, struct testlib_beat *b)
{
	bool found = false;

	for (const char *p = line; (p = strstr(p, "HEARTBEAT ")); p++) {
		struct testlib_beat t = { 0 };
		int sok, pok, used = 0;

		if (sscanf(p, "HEARTBEAT %ld static=%32[0-9a-f] static_ok=%d pass=%ld pass_ok=%d bad=%ld%n",
			   &t.n, t.static_sum, &sok, &t.pass, &pok, &t.bad, &used) != 6 || !used)
			continue;
		if (p[used] && !strchr(" \t\r\n", p[used]))
			continue;
		if (t.n < 1 || strlen(t.static_sum) != 32 || (sok != 0 && sok != 1) || t.pass < 0 ||
		    (pok != 0 && pok != 1) || t.bad < 0)
			continue;
		t.static_ok = sok;
		t.pass_ok = pok;
		*b = t;
		found = true;
	}
	return found;
}

void testlib_guest_read(const char *path, struct testlib_guest *g)
{
	FILE *f;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;

	memset(g, 0, sizeof(*g));
	g->first.n = g->last.n = -1;
	g->first_static_failed = g->first_pass_failed = -1;
	f = fopen(path, "re");
	if (!f)
		return;
	while ((len = getline(&line, &cap, f)) > 0 && line[len - 1] == '\n') {
		struct testlib_beat b;
		const char *r;

		line[strcspn(line, "\r\n")] = '\0';
		if ((r = strstr(line, "VMOPS-GUEST-READY"))) {
			const char *s = strstr(r, " static=");

			g->ready = true;
			if (s && sscanf(s + 8, "%32[0-9a-f]", g->boot_sum) != 1)
				g->boot_sum[0] = '\0';
		}
		if (testlib_parse_heartbeat(line, &b)) {
			const char *ref;

			if (!g->beats++)
				g->first = b;
			g->last = b;
			ref = g->boot_sum[0] ? g->boot_sum : g->first.static_sum;
			g->static_changed += strcmp(b.static_sum, ref) != 0;
			g->failed_beats += !b.static_ok || !b.pass_ok || b.bad > 0;
			if (!b.static_ok && g->first_static_failed < 0)
				g->first_static_failed = b.n;
			if (!b.pass_ok && g->first_pass_failed < 0)
				g->first_pass_failed = b.n;
		}
		if (strstr(line, "CHECKSUM-MISMATCH") && !g->mismatches++)
			snprintf(g->mismatch, sizeof(g->mismatch), "%s", line);
		if (!g->trouble[0] && (strstr(line, "Oops") || strstr(line, "BUG:") || strstr(line, "panic") ||
				       strstr(line, "VMOPS-GUEST-ERROR")))
			snprintf(g->trouble, sizeof(g->trouble), "%s", line);
	}
	free(line);
	fclose(f);
}

long testlib_wait_heartbeat(const char *path, long above, int timeout_s, struct testlib_guest *out)
{
	struct testlib_guest g;

	/* Returns as soon as the beat is there: a loaded 2-core TCG host may need minutes. */
	if (timeout_s < 300)
		timeout_s = 300;
	for (int i = 0; i < timeout_s * 10; i++) {
		testlib_guest_read(path, &g);
		cr_assert(!g.trouble[0], "%s: the guest says: %s", path, g.trouble);
		if (g.last.n > above) {
			if (out)
				*out = g;
			return g.last.n;
		}
		usleep(100000);
	}
	cr_assert_fail("no heartbeat above %ld in %s within %ds", above, path, timeout_s);
	return -1;
}

__attribute__((format(printf, 3, 4)))
static int check_failed(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	return -1;
}

int testlib_guest_check(const struct testlib_guest *g, const char *boot_sum,
			const struct testlib_beat *before, long min_beats, char *why, size_t len)
{
	long since;

	if (g->trouble[0])
		return check_failed(why, len, "the guest says: %s", g->trouble);
	if (g->mismatches)
		return check_failed(why, len, "%ld CHECKSUM-MISMATCH line(s), the first: %s", g->mismatches,
				    g->mismatch);
	if (g->failed_beats)
		return check_failed(why, len, "%ld heartbeat(s) report a failed check (first static failure at "
				    "beat %ld, first pass failure at beat %ld; last: HEARTBEAT %ld static_ok=%d "
				    "pass=%ld pass_ok=%d bad=%ld)", g->failed_beats, g->first_static_failed,
				    g->first_pass_failed, g->last.n, g->last.static_ok, g->last.pass,
				    g->last.pass_ok, g->last.bad);
	if (g->ready && strcmp(g->boot_sum, boot_sum))
		return check_failed(why, len, "the guest booted (again?) with static checksum %s, expected %s",
				    g->boot_sum, boot_sum);
	if (!g->beats)
		return 0;
	if (strcmp(g->first.static_sum, boot_sum) || g->static_changed)
		return check_failed(why, len, "static checksum %s at beat %ld, %s at beat %ld (%ld beat(s) "
				    "differ); the guest booted with %s", g->first.static_sum, g->first.n,
				    g->last.static_sum, g->last.n, g->static_changed, boot_sum);
	if (!g->ready && g->first.n <= before->n)
		return check_failed(why, len, "heartbeats start again at %ld (the guest was at %ld)",
				    g->first.n, before->n);
	since = g->last.n - before->n;
	if (since > g->beats)
		since = g->beats;
	if (since < min_beats)
		return 0;
	if (before->pass > 0 && g->last.pass <= before->pass)
		return 0;
	return 1;
}

void testlib_assert_guest_continues(const char *path, const char *boot_sum,
				    const struct testlib_beat *before, int timeout_s,
				    struct testlib_guest *out)
{
	struct testlib_guest g;
	char why[1024];

	for (int i = 0;; i++) {
		int rc;

		testlib_guest_read(path, &g);
		cr_assert(boot_sum || g.ready, "%s: no VMOPS-GUEST-READY line and no boot checksum given", path);
		rc = testlib_guest_check(&g, boot_sum ? boot_sum : g.boot_sum, before, 3, why, sizeof(why));
		cr_assert_geq(rc, 0, "%s: %s", path, why);
		if (rc > 0)
			break;
		cr_assert_lt(i, timeout_s * 10, "%s: the guest did not go on within %d s: last heartbeat %ld "
			     "(dirtier pass %ld), before %ld (pass %ld)", path, timeout_s, g.last.n, g.last.pass,
			     before->n, before->pass);
		usleep(100000);
	}
	if (out)
		*out = g;
}

/* ---- lock waits: a race test proves its lock, not a sleep --------------- */

/*
 * One look at backend `pid` through `observer`: 1 if it waits for a
 * heavyweight lock (pg_stat_activity.wait_event_type 'Lock' and an ungranted
 * row in pg_locks) that `blocker` holds (pg_blocking_pids; 0: anyone);
 * 0 if not (yet); -1 if there is no such backend.  `seen` gets what was
 * seen, for the failure message.
 */
static int lock_wait_seen(PGconn *observer, int pid, int blocker, char *seen, size_t len)
{
	char p[16], b[16];
	const char *params[2] = { p, b };
	PGresult *r;
	int ret;

	snprintf(p, sizeof(p), "%d", pid);
	snprintf(b, sizeof(b), "%d", blocker);
	r = PQexecParams(observer,
			 "SELECT coalesce(a.state, '?'), coalesce(a.wait_event_type, '-'),"
			 "       coalesce(a.wait_event, '-'),"
			 "       (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted),"
			 "       pg_blocking_pids(a.pid)::text,"
			 "       a.wait_event_type IS NOT DISTINCT FROM 'Lock'"
			 "       AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted)"
			 "       AND cardinality(pg_blocking_pids(a.pid)) > 0"
			 "       AND ($2::int = 0 OR $2::int = ANY (pg_blocking_pids(a.pid))),"
			 "       left(coalesce(a.query, ''), 160)"
			 "  FROM pg_stat_activity a WHERE a.pid = $1::int",
			 2, NULL, params, NULL, NULL, 0);
	cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK, "observing backend %d: %s", pid,
		  PQerrorMessage(observer));
	if (PQntuples(r) == 0) {
		snprintf(seen, len, "no backend with pid %d", pid);
		PQclear(r);
		return -1;
	}
	snprintf(seen, len, "state %s, wait_event %s/%s, %s ungranted lock(s), blocked by %s, query: %s",
		 PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3),
		 PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 6));
	ret = strcmp(PQgetvalue(r, 0, 5), "t") == 0;
	PQclear(r);
	return ret;
}

static long long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* `waiter`, if not NULL, is the connection of backend `pid`, its query in flight. */
static void wait_blocked(PGconn *observer, int pid, PGconn *waiter, int blocker, int timeout_ms)
{
	long long end = mono_ms() + timeout_ms;
	char seen[512] = "";

	cr_assert(PQstatus(observer) == CONNECTION_OK && PQtransactionStatus(observer) == PQTRANS_IDLE,
		  "the observer must be a connection of its own, outside any transaction");
	cr_assert_gt(pid, 0);
	for (;;) {
		int r = lock_wait_seen(observer, pid, blocker, seen, sizeof(seen));

		if (r > 0)
			return;
		cr_assert(r == 0, "backend %d never waited for a lock: %s", pid, seen);
		if (waiter) {
			cr_assert(PQconsumeInput(waiter), "backend %d: %s", pid, PQerrorMessage(waiter));
			cr_assert(PQisBusy(waiter),
				  "backend %d finished its query without ever waiting for a lock%s%d"
				  " (last seen: %s)", pid, blocker ? " held by backend " : "",
				  blocker, seen);
		}
		cr_assert(mono_ms() < end, "backend %d not waiting for a lock%s%d after %d ms (last seen: %s)",
			  pid, blocker ? " held by backend " : "", blocker, timeout_ms, seen);
		usleep(5000);
	}
}

void testdb_wait_blocked(PGconn *observer, int pid, int blocker, int timeout_ms)
{
	wait_blocked(observer, pid, NULL, blocker, timeout_ms);
}

void testdb_wait_conn_blocked(PGconn *observer, PGconn *waiter, int blocker, int timeout_ms)
{
	cr_assert(PQisBusy(waiter), "no query in flight on the waiting connection");
	wait_blocked(observer, PQbackendPID(waiter), waiter, blocker, timeout_ms);
}

void testdb_wait_n_blocked_by(PGconn *observer, int blocker, int n, int timeout_ms)
{
	long long end = mono_ms() + timeout_ms;
	char b[16];
	const char *params[1] = { b };

	cr_assert(PQstatus(observer) == CONNECTION_OK && PQtransactionStatus(observer) == PQTRANS_IDLE,
		  "the observer must be a connection of its own, outside any transaction");
	snprintf(b, sizeof(b), "%d", blocker);
	for (;;) {
		PGresult *r = PQexecParams(observer,
					   "SELECT count(*) FROM pg_stat_activity a"
					   " WHERE a.wait_event_type = 'Lock'"
					   "   AND $1::int = ANY (pg_blocking_pids(a.pid))"
					   "   AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted)",
					   1, NULL, params, NULL, NULL, 0);
		long long k;

		cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK, "observing: %s", PQerrorMessage(observer));
		k = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
		PQclear(r);
		if (k >= n)
			return;
		cr_assert(mono_ms() < end, "%lld of %d backends waiting for locks held by backend %d after %d ms",
			  k, n, blocker, timeout_ms);
		usleep(5000);
	}
}

/*
 * VMs that outlive their test.  A test that Criterion kills on its timeout
 * runs no .fini, and the VMMs that the programs under test started (they
 * detach on purpose) would run on for hours.  The runner marks its
 * environment, which every test worker, program and VMM inherits, and at
 * its exit kills the hypervisor processes that carry its mark: only those
 * this runner's tests started, never another run's.
 */
#define RUNNER_ENV "VMOPS_TEST_RUNNER"

static pid_t runner_pid;

static bool marked(pid_t pid, const char *mark, size_t len)
{
	char path[64], buf[65536];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	for (ssize_t k = 0; n > 0 && k < n; k += (ssize_t)strnlen(buf + k, (size_t)(n - k)) + 1)
		if ((size_t)(n - k) > len && !memcmp(buf + k, mark, len + 1))
			return true;
	return false;
}

static int kill_if_marked(const struct vmops_proc_info *i, void *data)
{
	const char *mark = data;

	if (i->stat.state != 'Z' && marked(i->stat.pid, mark, strlen(mark)))
		(void)vmops_proc_signal(i->stat.pid, i->stat.starttime, SIGKILL, NULL);
	return 0;
}

static void sweep_marked_vms(void)
{
	char mark[64];

	if (getpid() != runner_pid)
		return;            /* a forked test worker: its runner sweeps */
	snprintf(mark, sizeof(mark), RUNNER_ENV "=%d", (int)runner_pid);
	(void)vmops_proc_scan("/proc", VMOPS_PROC_SCAN_HV_ONLY, kill_if_marked, mark, NULL);
}

__attribute__((constructor)) static void mark_runner(void)
{
	char v[24];

	if (getenv(RUNNER_ENV))
		return;            /* a test worker, or a runner under another runner */
	runner_pid = getpid();
	snprintf(v, sizeof(v), "%d", (int)runner_pid);
	setenv(RUNNER_ENV, v, 1);
	atexit(sweep_marked_vms);
}
