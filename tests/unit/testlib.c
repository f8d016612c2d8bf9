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
#include <sys/stat.h>
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
