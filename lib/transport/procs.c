/* SPDX-License-Identifier: MIT */
/*
 * Another host's /proc, as a recorded tree on this one (proc.h), so that a
 * count made here against the database (ghost-reap's identification) reads
 * the worker's own host: `vm-fleet remote procs` there answers with its
 * fleet-token hypervisor processes (stat, exe, cmdline), the stat of the
 * pids asked for and its uptime; every line is checked before it is
 * written.  The tree goes into a new private directory (mkdtemp, 0700).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exitcodes.h"
#include "macro.h"
#include "proc.h"
#include "transport/transport.h"

#define PROCS_TIMEOUT_MS 30000

static int put(int dfd, const char *name, const char *data, size_t len, struct vmops_error *e)
{
	_cleanup_close_ int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);

	if (fd < 0 || write(fd, data, len) != (ssize_t)len)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "process tree: %s: %s", name, strerror(errno ? errno : EIO));
	return 0;
}

/* PID/stat, checked as the kernel's; *pid receives its pid. 1: that pid's directory exists already. */
static int put_stat(int dfd, const cJSON *o, pid_t *pid, struct vmops_error *e)
{
	const char *stat = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "stat"));
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pid");
	struct vmops_proc_stat st;
	char name[48];

	if (!stat || !cJSON_IsNumber(p) || vmops_proc_parse_stat(stat, strlen(stat), &st, e) < 0 ||
	    st.pid != (pid_t)p->valuedouble || st.pid <= 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "the host's answer: a process entry is malformed");
	*pid = st.pid;
	snprintf(name, sizeof(name), "%d", (int)st.pid);
	if (mkdirat(dfd, name, 0700) < 0)
		return errno == EEXIST ? 1 : vmops_err(e, VMOPS_EXIT_FAILURE, "process tree: %s: %s", name, strerror(errno));
	snprintf(name, sizeof(name), "%d/stat", (int)st.pid);
	return put(dfd, name, stat, strlen(stat), e);
}

static int put_proc(int dfd, const cJSON *o, struct vmops_error *e)
{
	const char *exe = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "exe"));
	const cJSON *argv = cJSON_GetObjectItemCaseSensitive(o, "cmdline"), *a;
	_cleanup_free_ char *cmd = NULL;
	size_t n = 0, cap = 1;
	char name[48];
	pid_t pid;
	int r;

	if (!exe || exe[0] != '/' || strchr(exe, '\n') || !cJSON_IsArray(argv))
		return vmops_err(e, VMOPS_EXIT_FAILURE, "the host's answer: a process entry is malformed");
	cJSON_ArrayForEach(a, argv) {
		if (!cJSON_IsString(a))
			return vmops_err(e, VMOPS_EXIT_FAILURE, "the host's answer: a command line is malformed");
		cap += strlen(a->valuestring) + 1;
	}
	if (!(cmd = malloc(cap)))
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	cJSON_ArrayForEach(a, argv) {
		size_t k = strlen(a->valuestring) + 1;
		memcpy(cmd + n, a->valuestring, k);
		n += k;
	}
	if ((r = put_stat(dfd, o, &pid, e)) != 0)
		return r < 0 ? -1 : vmops_err(e, VMOPS_EXIT_FAILURE, "the host's answer: pid %d twice", (int)pid);
	snprintf(name, sizeof(name), "%d/cmdline", (int)pid);
	if (put(dfd, name, cmd, n, e) < 0)
		return -1;
	snprintf(name, sizeof(name), "%d/exe", (int)pid);
	return put(dfd, name, exe, strlen(exe), e);
}

static int write_tree(int dfd, const cJSON *ans, struct vmops_error *e)
{
	const char *up = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "uptime"));
	const cJSON *procs = cJSON_GetObjectItemCaseSensitive(ans, "procs");
	const cJSON *stats = cJSON_GetObjectItemCaseSensitive(ans, "stats"), *o;
	pid_t pid;

	if (!up || !cJSON_IsArray(procs) || !cJSON_IsArray(stats))
		return vmops_err(e, VMOPS_EXIT_FAILURE, "the host's answer is malformed");
	if (put(dfd, "uptime", up, strlen(up), e) < 0)
		return -1;
	cJSON_ArrayForEach(o, procs)
		if (put_proc(dfd, o, e) < 0)
			return -1;
	/* A pid asked for that is a hypervisor is there already: its stat is the same process's. */
	cJSON_ArrayForEach(o, stats)
		if (put_stat(dfd, o, &pid, e) < 0)
			return -1;
	return 0;
}

void vmops_remote_procs_remove(const char *dir)
{
	static const char *const files[] = { "stat", "cmdline", "exe" };
	_cleanup_close_ int dfd = -1;
	DIR *d;
	struct dirent *de;

	if (!dir || !*dir || (dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
		return;
	unlinkat(dfd, "uptime", 0);
	if (!(d = fdopendir(dup(dfd))))
		return;
	while ((de = readdir(d))) {
		char name[300];

		if (strspn(de->d_name, "0123456789") != strlen(de->d_name) || !de->d_name[0])
			continue;
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			snprintf(name, sizeof(name), "%s/%s", de->d_name, files[i]);
			unlinkat(dfd, name, 0);
		}
		unlinkat(dfd, de->d_name, AT_REMOVEDIR);
	}
	closedir(d);
	rmdir(dir);
}

int vmops_remote_procs(struct vmops_transport *t, const long long *pids, size_t npids, char *dir, size_t len,
		       struct vmops_error *e)
{
	const char *tmp = getenv("TMPDIR");
	cJSON *req = cJSON_CreateObject(), *list, *ans;
	_cleanup_close_ int dfd = -1;
	int r;

	dir[0] = '\0';
	if (!req || !(list = cJSON_AddArrayToObject(req, "pids"))) {
		cJSON_Delete(req);
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	}
	for (size_t i = 0; i < npids; i++)
		cJSON_AddItemToArray(list, cJSON_CreateNumber((double)pids[i]));
	ans = vmops_transport_call(t, "procs", req, PROCS_TIMEOUT_MS, e);
	cJSON_Delete(req);
	if (!ans) {
		struct vmops_error he = { 0 };
		/* Asking changes nothing: a host that does not answer a greeting either is unreachable. */
		if (e->code == VMOPS_EXIT_UNKNOWN && vmops_transport_hello(t, NULL, PROCS_TIMEOUT_MS, &he) < 0 &&
		    he.code == VMOPS_EXIT_UNREACHABLE)
			*e = he;
		return -1;
	}
	snprintf(dir, len, "%s/vmops-procs.XXXXXX", tmp && tmp[0] == '/' ? tmp : "/tmp");
	if (!mkdtemp(dir) || (dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
		r = vmops_err(e, VMOPS_EXIT_FAILURE, "process tree %s: %s", dir, strerror(errno));
		dir[0] = '\0';
		cJSON_Delete(ans);
		return r;
	}
	r = write_tree(dfd, ans, e);
	cJSON_Delete(ans);
	if (r < 0) {
		vmops_err_prefix(e, "worker %s: host %s", vmops_transport_worker(t), vmops_transport_destination(t));
		vmops_remote_procs_remove(dir);
		dir[0] = '\0';
	}
	return r;
}
