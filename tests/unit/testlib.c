/* SPDX-License-Identifier: MIT */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
	snprintf(name, sizeof(name), "t_%d_%d_%ld", (int)getpid(), counter++, (long)random() % 100000);
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

void testrun(struct testrun *r, const char *const *argv)
{
	const char *dir = getenv("VMOPS_BIN_DIR");
	char path[4096], ofile[] = "/tmp/vmops-out.XXXXXX", efile[] = "/tmp/vmops-err.XXXXXX";
	int ofd = mkstemp(ofile), efd = mkstemp(efile), st;
	pid_t pid;

	cr_assert(ofd >= 0 && efd >= 0);
	unlink(ofile);
	unlink(efile);
	snprintf(path, sizeof(path), "%s/%s", dir ? dir : "bin", argv[0]);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		int nul = open("/dev/null", O_RDONLY);
		dup2(nul, 0);
		dup2(ofd, 1);
		dup2(efd, 2);
		execv(path, (char *const *)(uintptr_t)argv);
		fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	lseek(ofd, 0, SEEK_SET);
	lseek(efd, 0, SEEK_SET);
	r->out = drain(ofd);
	r->err = drain(efd);
	close(ofd);
	close(efd);
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

void testlib_need_qemu(void)
{
	const char *k = getenv("VMOPS_TEST_KERNEL"), *i = getenv("VMOPS_TEST_INITRD");

	if (!k || !*k || !i || !*i)
		cr_skip_test("no test guest (VMOPS_TEST_KERNEL/VMOPS_TEST_INITRD unset)");
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

void testlib_kill_vms_under(const char *dir)
{
	if (dir && *dir)
		(void)vmops_proc_scan("/proc", VMOPS_PROC_SCAN_HV_ONLY, kill_if_under, (void *)(uintptr_t)dir, NULL);
}

long testlib_last_heartbeat(const char *path, char sum[64])
{
	FILE *f = fopen(path, "r");
	char line[512];
	long n = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		long k;
		char s[64];
		const char *p = strstr(line, "HEARTBEAT ");

		if (p && strchr(p, '\n') && sscanf(p, "HEARTBEAT %ld %63s", &k, s) == 2 && strlen(s) == 32) {
			n = k;
			if (sum)
				snprintf(sum, 64, "%s", s);
		}
	}
	fclose(f);
	return n;
}

long testlib_wait_heartbeat(const char *path, long above, int timeout_s, char sum[64])
{
	for (int i = 0; i < timeout_s * 10; i++) {
		long n = testlib_last_heartbeat(path, sum);

		if (n > above)
			return n;
		usleep(100000);
	}
	cr_assert_fail("no heartbeat above %ld in %s within %ds", above, path, timeout_s);
	return -1;
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
