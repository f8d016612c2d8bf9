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

/*
 * A missing real part is a failure, not a silent skip: make check must not
 * report "all passed" for tests that never ran.  The operator may opt out
 * explicitly (VMOPS_SKIP_QEMU=1: real-QEMU and guest-agent cases skip, and
 * the closing line of tests/run-all.sh says so).  A pass that leaves these
 * cases to another pass on purpose (valgrind) sets VMOPS_QEMU_CASES=elsewhere
 * and run-all counts them apart from skips.
 */
void testlib_missing(const char *what)
{
	const char *opt = getenv("VMOPS_SKIP_QEMU");
	const char *elsewhere = getenv("VMOPS_QEMU_CASES");

	if (elsewhere && !strcmp(elsewhere, "elsewhere"))
		cr_skip_test("elsewhere: real-QEMU case, runs in the plain pass");
	if (opt && *opt && strcmp(opt, "0"))
		cr_skip_test("VMOPS_SKIP_QEMU=%s: %s", opt, what);
	cr_assert_fail("%s (set VMOPS_SKIP_QEMU=1 to skip real-QEMU cases explicitly)", what);
}

void testlib_need_qemu(void)
{
	const char *k = getenv("VMOPS_TEST_KERNEL"), *i = getenv("VMOPS_TEST_INITRD");

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
