/* SPDX-License-Identifier: MIT */
/* Scaffolding for the suites that drive the hypervisor fakes (fakelib.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "exitcodes.h"
#include "fakelib.h"
#include "hv/rest.h"
#include "log.h"
#include "testlib.h"

char fake_dir[64];
char fake_bin[PATH_MAX];
static char tag_prefix[40];
static pid_t pids[64];
static int npids;
static char *old_path;       /* PATH before fake_fleet, restored at teardown */

static void log_to_stderr(void *data, int level, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void log_to_stderr(void *data, int level, const char *fmt, va_list ap)
{
	(void)data;
	fprintf(stderr, "vmops[%d]: ", level);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void fake_setup(const char *tag, const char *fake)
{
	const char *fd = getenv("VMOPS_FAKES_DIR");

	if (getenv("VMOPS_TEST_DEBUG"))
		vmops_set_log_fn(log_to_stderr, NULL);
	snprintf(tag_prefix, sizeof(tag_prefix), "/tmp/vmops-%s.", tag);
	snprintf(fake_dir, sizeof(fake_dir), "%sXXXXXX", tag_prefix);
	cr_assert(mkdtemp(fake_dir), "mkdtemp: %s", strerror(errno));
	cr_assert(realpath(fd ? fd : "tests/fakes", fake_bin), "tests/fakes not found (run from the top)");
	cr_assert(strlen(fake_bin) + strlen(fake) + 2 < sizeof(fake_bin));
	strcat(fake_bin, "/");
	strcat(fake_bin, fake);
	cr_assert(access(fake_bin, X_OK) == 0, "%s: not executable", fake_bin);
	vmops_hv_rest_set_default_timeout(3000);
	unsetenv("VMOPS_FAKE_FAULT");
	npids = 0;
}

void fake_teardown(void)
{
	char cmd[PATH_MAX + 16];

	for (int i = 0; i < npids; i++)
		kill(pids[i], SIGKILL);
	if (old_path) {
		setenv("PATH", old_path, 1);
		free(old_path);
		old_path = NULL;
	}
	if (fake_dir[0])
		fake_procs_naming(fake_dir, true);   /* VMMs that programs under test started */
	if (!getenv("VMOPS_TEST_KEEP") && tag_prefix[0] &&
	    !strncmp(fake_dir, tag_prefix, strlen(tag_prefix))) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fake_dir);
		if (system(cmd) != 0)
			fprintf(stderr, "cannot remove %s\n", fake_dir);
	}
}

struct vmops_hv_launch_opts fake_opts_for(int id, char *rd, size_t rdlen)
{
	struct vmops_hv_launch_opts o = { 0 };

	snprintf(rd, rdlen, "%s/vm-%d", fake_dir, id);
	o.run_dir = rd;
	o.vmm_id = (uint64_t)id;
	o.binary = fake_bin;
	o.die_with_parent = true;
	return o;
}

void fake_track(struct vmops_hv *h)
{
	if (h && vmops_hv_info(h)->pid > 0 && npids < 64)
		pids[npids++] = vmops_hv_info(h)->pid;
}

struct vmops_hv *fake_launch(const struct vmops_spec *s, int id, struct vmops_error *err)
{
	char rd[PATH_MAX];
	struct vmops_hv_launch_opts o = fake_opts_for(id, rd, sizeof(rd));
	struct vmops_hv *h = vmops_hv_launch(s, &o, err);

	fake_track(h);
	return h;
}

void fake_destroy(struct vmops_hv *h)
{
	struct vmops_error e = { 0 };

	cr_assert(vmops_hv_destroy(h, 5000, &e) == 0, "destroy: %s", e.msg);
	cr_assert(!vmops_hv_is_alive(h));
	vmops_hv_free(h);
}

const char *fake_vm_status(struct vmops_hv *h)
{
	static struct vmops_vm_status st;
	struct vmops_error e = { 0 };

	cr_assert(vmops_hv_status(h, &st, &e) == 0, "status: %s", e.msg);
	return st.status;
}

/* --- the request log ------------------------------------------------------------- */

cJSON *fake_read_log_at(const char *sock)
{
	char path[PATH_MAX + 8], line[65536];
	cJSON *arr = cJSON_CreateArray();
	FILE *f;

	snprintf(path, sizeof(path), "%s.log", sock);
	f = fopen(path, "r");
	cr_assert(f, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		cJSON *e = cJSON_Parse(line);

		cr_assert(e, "bad log line %s", line);
		cJSON_AddItemToArray(arr, e);
	}
	fclose(f);
	return arr;
}

cJSON *fake_read_log(struct vmops_hv *h)
{
	return fake_read_log_at(vmops_hv_info(h)->control_socket);
}

const char *fake_str(const cJSON *o, const char *k)
{
	const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));

	return s ? s : "";
}

int fake_find_call(const cJSON *log, const char *call, const char *body, int from)
{
	for (int i = from; i < cJSON_GetArraySize(log); i++) {
		const cJSON *e = cJSON_GetArrayItem(log, i);

		if (!strcmp(fake_str(e, "call"), call) && (!body || strstr(fake_str(e, "body"), body)))
			return i;
	}
	return -1;
}

int fake_last_call(const cJSON *log, const char *call)
{
	int last = -1;

	for (int i = 0; (i = fake_find_call(log, call, NULL, i)) >= 0; i++)
		last = i;
	return last;
}

const cJSON *fake_find_event(const cJSON *log, const char *event)
{
	const cJSON *e;

	cJSON_ArrayForEach(e, log)
		if (!strcmp(fake_str(e, "event"), event))
			return e;
	return NULL;
}

const cJSON *fake_wait_event_at(const char *sock, const char *event, cJSON **log)
{
	const cJSON *ev = NULL;

	*log = NULL;
	for (int i = 0; i < 2000 && !ev; i++) {
		if (i)
			usleep(10000);
		cJSON_Delete(*log);
		*log = fake_read_log_at(sock);
		ev = fake_find_event(*log, event);
	}
	return ev;
}

int fake_status_of(const cJSON *log, int i)
{
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(log, i), "status");

	return cJSON_IsNumber(s) ? s->valueint : -1;
}

void fake_no_undeclared(const cJSON *log)
{
	const cJSON *e;

	cJSON_ArrayForEach(e, log)
		cr_expect(!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "undeclared")),
			  "fake answered %s with an undeclared status", fake_str(e, "call"));
}

bool fake_fault_arm(struct vmops_hv *h, const char *rule)
{
	char path[PATH_MAX + 8];
	FILE *f;

	snprintf(path, sizeof(path), "%s.fault", vmops_hv_info(h)->control_socket);
	f = fopen(path, "w");
	if (!f)
		return false;
	fprintf(f, "%s\n", rule);
	return fclose(f) == 0;
}

/* --- processes ----------------------------------------------------------------------- */

pid_t fake_procs_naming(const char *needle, bool kill_them)
{
	char path[300], buf[8192];
	DIR *d = opendir("/proc");
	struct dirent *de;
	pid_t found = 0;

	if (!d)
		return 0;
	while ((kill_them || !found) && (de = readdir(d))) {
		ssize_t n;
		int fd;

		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/cmdline", de->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		for (ssize_t i = 0; i < n; i++)
			if (!buf[i])
				buf[i] = ' ';
		buf[n > 0 ? n : 0] = '\0';
		if (strstr(buf, needle) && atoi(de->d_name) != getpid()) {
			found = atoi(de->d_name);
			if (kill_them)
				kill(found, SIGKILL);
		}
	}
	closedir(d);
	return found;
}

bool fake_runs_under(int id)
{
	char needle[PATH_MAX];

	snprintf(needle, sizeof(needle), "%s/vm-%d/", fake_dir, id);
	return fake_procs_naming(needle, false) != 0;
}

bool fake_runs_under_dir(void)
{
	char needle[PATH_MAX];

	snprintf(needle, sizeof(needle), "%s/", fake_dir);
	return fake_procs_naming(needle, false) != 0;
}

/* --- files ------------------------------------------------------------------------------ */

int fake_open_dir(const char *name)
{
	char p[PATH_MAX];
	int fd;

	snprintf(p, sizeof(p), "%s/%s", fake_dir, name);
	cr_assert(mkdir(p, 0700) == 0, "mkdir %s: %s", p, strerror(errno));
	fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert(fd >= 0);
	return fd;
}

off_t fake_file_size(const char *sub, const char *name)
{
	char p[PATH_MAX];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s/%s", fake_dir, sub, name);
	return stat(p, &st) == 0 ? st.st_size : -1;
}

void fake_touch(const char *path, off_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	cr_assert(fd >= 0 && ftruncate(fd, size) == 0, "%s: %s", path, strerror(errno));
	close(fd);
}

/* --- the fleet -------------------------------------------------------------------------- */

/* A copy of the fakes' interpreter named `name`, in DIR/exe: the process it
 * runs has that executable, as a real hypervisor has its own. */
static void interpreter_named(const char *name, char *out, size_t outlen)
{
	char py[PATH_MAX], exe[PATH_MAX];
	struct stat st;
	int in, fd;

	cr_assert(realpath("/usr/bin/python3", py), "python3: %s", strerror(errno));
	snprintf(exe, sizeof(exe), "%s/exe", fake_dir);
	cr_assert(mkdir(exe, 0700) == 0 || errno == EEXIST, "%s: %s", exe, strerror(errno));
	snprintf(out, outlen, "%s/exe/%s", fake_dir, name);
	in = open(py, O_RDONLY | O_CLOEXEC);
	fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
	cr_assert(in >= 0 && fd >= 0 && fstat(in, &st) == 0, "%s: %s", out, strerror(errno));
	/* read/write, not copy_file_range: /tmp may be another file system */
	for (off_t left = st.st_size; left > 0;) {
		char buf[65536];
		ssize_t n = read(in, buf, sizeof(buf));

		cr_assert(n > 0 && write(fd, buf, (size_t)n) == n, "copy %s: %s", py, strerror(errno));
		left -= n;
	}
	close(in);
	cr_assert(close(fd) == 0);
}

/* bin/BINARY: runs the fake under an interpreter named BINARY. */
static void fake_binary(const char *bin, const char *binary, const char *fake)
{
	char target[PATH_MAX], interp[PATH_MAX], path[PATH_MAX + 64];
	FILE *f;

	snprintf(target, sizeof(target), "%s", fake_bin);
	*strrchr(target, '/') = '\0';
	cr_assert(strlen(target) + strlen(fake) + 2 < sizeof(target));
	strcat(target, "/");
	strcat(target, fake);
	interpreter_named(binary, interp, sizeof(interp));
	snprintf(path, sizeof(path), "%s/%s", bin, binary);
	f = fopen(path, "wx");
	cr_assert(f, "%s: %s", path, strerror(errno));
	fprintf(f, "#!/bin/sh\nexec '%s' '%s' \"$@\"\n", interp, target);
	cr_assert(fclose(f) == 0 && chmod(path, 0700) == 0);
}

void fake_fleet(PGconn *c, const char *binary, const char *fake)
{
	char sql[1024], bin[PATH_MAX], path[8192];
	const char *cur = getenv("PATH");

	snprintf(bin, sizeof(bin), "%s/bin", fake_dir);
	if (mkdir(bin, 0700) == 0) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO workers (name, memory_mb, vcpus, run_dir, state) VALUES"
			 " ('w1', 4096, 8, '%s/w1', 'active'), ('w2', 4096, 8, '%s/w2', 'active')",
			 fake_dir, fake_dir);
		PQclear(testdb_exec(c, sql));
		old_path = strdup(cur ? cur : "/usr/bin:/bin");
		snprintf(path, sizeof(path), "%s:%s", bin, old_path);
		setenv("PATH", path, 1);
	}
	fake_binary(bin, binary, fake);
}

long long fake_ll(PGconn *c, const char *fmt, ...)
{
	char sql[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(sql, sizeof(sql), fmt, ap);
	va_end(ap);
	return testdb_ll(c, sql);
}

const char *fake_write_file(const char *name, const char *json)
{
	static char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", fake_dir, name);
	f = fopen(path, "w");
	cr_assert(f, "%s: %s", path, strerror(errno));
	fputs(json, f);
	cr_assert(fclose(f) == 0);
	return path;
}

bool fake_is_zombie(pid_t pid)
{
	char path[64], buf[512];
	bool z = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (f) {
		z = fgets(buf, sizeof(buf), f) && strstr(buf, ") Z ");
		fclose(f);
	}
	return z;
}

void fake_wait_stopped(pid_t pid)
{
	char path[64], buf[512];

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	for (int k = 0; k < 1200; k++) {
		FILE *f = fopen(path, "r");
		bool stopped = false;

		if (f) {
			stopped = fgets(buf, sizeof(buf), f) && strstr(buf, ") T ");
			fclose(f);
		}
		if (stopped)
			return;
		usleep(50000);
	}
	cr_assert_fail("pid %d never stopped itself", (int)pid);
}

static long long size_at(const char *dir, const char *name)
{
	char path[PATH_MAX + 32];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

void fake_assert_log_capped(struct vmops_hv *h)
{
	const char *dir = vmops_hv_info(h)->run_dir;
	char path[PATH_MAX + 32], buf[8192];
	long long old = -1, cur;
	size_t n;
	FILE *f;

	cr_assert_str_eq(vmops_hv_info(h)->serial_log, vmops_hv_info(h)->stderr_log,
			 "the console is not in the vmm's log");
	for (int i = 0; i < 300 && (old = size_at(dir, "vmm.log.1")) < 0; i++)
		usleep(100000);
	cr_assert_geq(old, 0, "no vmm.log.1 after 30 s: vmm.log is %lld bytes, not capped",
		      size_at(dir, "vmm.log"));
	cr_expect_leq(old, 4096, "vmm.log.1 is %lld bytes, over the cap", old);
	usleep(1500000);
	cur = size_at(dir, "vmm.log");
	/* emptied each second: the cap plus about a second's output (64 KiB/s) */
	cr_expect_leq(cur, 4096 + 2 * 65536, "vmm.log is %lld bytes", cur);
	snprintf(path, sizeof(path), "%s/vmm.log", dir);
	f = fopen(path, "r");
	cr_assert(f);
	n = fread(buf, 1, 1, f);
	fclose(f);
	cr_expect(cur == 0 || (n == 1 && buf[0] != '\0'), "vmm.log starts with a hole: the vmm does not append");
	snprintf(path, sizeof(path), "%s/vmm.log.1", dir);
	f = fopen(path, "r");
	cr_assert(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	cr_expect(strstr(buf, "console line"), "vmm.log.1 holds no console output (%zu bytes)", n);
}

/* --- ghost-reap ------------------------------------------------------------------------- */

/* ghost-reap on w1 (JSON); the item of VMM vmm and process pid, or NULL. */
static const cJSON *ghost_reap_item(const char *ci, const char *action, int want, long long vmm, pid_t pid,
			      cJSON **doc)
{
	struct testrun r;
	const cJSON *it;

	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "w1", "--action", action, "--min-age", "0s",
		"--grace", "1s", "--json");
	cr_assert_eq(r.status, want, "ghost-reap --action %s: exit %d\n%s\n%s", action, r.status, r.out, r.err);
	*doc = cJSON_Parse(r.out);
	cr_assert(*doc, "not JSON: %s", r.out);
	testrun_free(&r);
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(*doc, "vmms")) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(it, "vmm");
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(it, "pid");

		if (cJSON_IsNumber(v) && (long long)v->valuedouble == vmm && cJSON_IsNumber(p) &&
		    (pid_t)p->valuedouble == pid)
			return it;
	}
	return NULL;
}

static void expect_item(const cJSON *it, const char *hv, const char *class, const char *action)
{
	cr_assert(it, "ghost-reap did not find the %s process", hv);
	cr_expect_str_eq(fake_str(it, "hypervisor"), hv);
	cr_expect_str_eq(fake_str(it, "class"), class);
	cr_expect_str_eq(fake_str(it, "action"), action);
}

void fake_ghost_reap_finds(PGconn *c, const char *ci, const char *sandbox, const char *hv)
{
	long long vmm = fake_ll(c, "SELECT active_vmm_id FROM sandboxes WHERE name = '%s'", sandbox);
	pid_t pid = (pid_t)fake_ll(c, "SELECT pid FROM vmms WHERE id = %lld", vmm);
	char exe[PATH_MAX + 32], target[PATH_MAX];
	ssize_t n;
	cJSON *doc;

	snprintf(exe, sizeof(exe), "/proc/%d/exe", (int)pid);
	n = readlink(exe, target, sizeof(target) - 1);
	cr_assert(n > 0, "%s: %s", exe, strerror(errno));
	target[n] = '\0';
	cr_assert(!strcmp(strrchr(target, '/') + 1, hv), "the fake runs as %s, not as %s", target, hv);
	setenv("VMOPS_HOST_ID", "fake-test-host", 1);
	PQclear(testdb_exec(c, "UPDATE workers SET host_id = 'fake-test-host' WHERE name = 'w1'"));

	expect_item(ghost_reap_item(ci, "kill", 0, vmm, pid, &doc), hv, "healthy", "none");
	cJSON_Delete(doc);
	cr_assert_eq(kill(pid, 0), 0, "a healthy %s was stopped", hv);

	fake_ll(c, "WITH v AS (UPDATE vmms SET state = 'destroyed' WHERE id = %lld RETURNING id),"
		   " r AS (DELETE FROM reservations WHERE vmm_id = %lld RETURNING vmm_id),"
		   " s AS (UPDATE sandboxes SET status = 'destroyed' WHERE name = '%s' RETURNING id)"
		   " SELECT count(*) FROM v", vmm, vmm, sandbox);
	expect_item(ghost_reap_item(ci, "kill", VMOPS_EXIT_FIXED, vmm, pid, &doc), hv, "ghost", "killed");
	cJSON_Delete(doc);
	for (int k = 0; k < 200 && kill(pid, 0) == 0 && !fake_is_zombie(pid); k++)
		usleep(50000);   /* a zombie until init reaps it */
	cr_expect(kill(pid, 0) < 0 || fake_is_zombie(pid), "the %s ghost still runs", hv);
	unsetenv("VMOPS_HOST_ID");
}
