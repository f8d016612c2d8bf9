/* SPDX-License-Identifier: MIT */
/*
 * proc: reading /proc (or a recorded tree of it), identifying hypervisor
 * processes, liveness, and PID-reuse-safe signalling through pidfds.
 *
 * The scan is on the hot path (ghost-reap reads every process on a worker),
 * so it reads files with openat/read into stack buffers relative to a
 * descriptor of the root, and reads nothing it does not need.  A read shorter than asked for is taken as the end of the file:
 * that holds for the kernel's /proc files (seq_file and cmdline fill the
 * whole buffer unless the data ends) and for regular files, and saves a
 * read per file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "log.h"
#include "macro.h"
#include "proc.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

#define STAT_BUF_SIZE 2048        /* a stat line is ~350 bytes, at most ~1.2 KiB */
#define STATUS_BUF_SIZE 4096      /* the Uid: line is among the first ten */
#define SMALL_BUF_SIZE 256        /* uptime */
#define CMDLINE_INITIAL 4096
#define CMDLINE_MAX (16u << 20)   /* longer command lines are truncated */
#define STATFILE_MAX (4u << 20)   /* ROOT/stat */

static inline void closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}
#define _cleanup_closedir_ _cleanup_(closedirp)

static const char *root_or_default(const char *root)
{
	return root && *root ? root : VMOPS_PROC_ROOT_DEFAULT;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_alnum(char c)
{
	return is_digit(c) || is_alpha(c);
}

/* errno == ENOENT/ESRCH: the process (or file) is not there (any more). */
static bool is_gone(int e)
{
	return e == ENOENT || e == ESRCH;
}

/* strerror, lowercased for messages ("no such file or directory"). */
static const char *errstr(int e, char *buf, size_t size)
{
	const char *s = strerror_r(e, buf, size);

	if (s != buf)
		snprintf(buf, size, "%s", s);
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

static int errno_err(struct vmops_error *err, int e, const char *what)
{
	char eb[128];

	return vmops_err(err, is_gone(e) ? VMOPS_EXIT_NOTFOUND : VMOPS_EXIT_FAILURE,
			 "%s: %s", what, errstr(e, eb, sizeof(eb)));
}

/* "ROOT/PID/NAME" (or "ROOT/NAME" when pid is 0) into buf. */
static int build_path(char *buf, size_t size, const char *root, pid_t pid, const char *name,
		      struct vmops_error *err)
{
	int n;

	if (pid > 0)
		n = snprintf(buf, size, "%s/%d/%s", root, (int)pid, name);
	else
		n = snprintf(buf, size, "%s/%s", root, name);
	if (n < 0 || (size_t)n >= size)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "%s: path too long", root);
	return 0;
}

/*
 * Read dfd/name into buf (at most size-1 bytes) and NUL-terminate it.
 * Returns the length or -errno.
 */
static ssize_t read_at(int dfd, const char *name, char *buf, size_t size)
{
	_cleanup_close_ int fd = -1;
	size_t n = 0;

	fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return -errno;
	while (n < size - 1) {
		size_t want = size - 1 - n;
		ssize_t r = read(fd, buf + n, want);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		n += (size_t)r;
		if ((size_t)r < want)
			break;
	}
	buf[n] = '\0';
	return (ssize_t)n;
}

struct growbuf {
	char *p;
	size_t cap;
};

static void growbuf_free(struct growbuf *gb)
{
	free(gb->p);
	gb->p = NULL;
	gb->cap = 0;
}

/*
 * Read all of dfd/name (up to max bytes; more is cut off) into gb, which is
 * grown as needed and reused between calls.  NUL-terminates.  Returns the
 * length or -errno.
 */
static ssize_t read_grow_at(int dfd, const char *name, struct growbuf *gb, size_t max)
{
	_cleanup_close_ int fd = -1;
	size_t n = 0;

	fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return -errno;
	for (;;) {
		size_t want;
		ssize_t r;

		if (gb->cap - n < 2) {
			size_t ncap = gb->cap ? gb->cap * 2 : CMDLINE_INITIAL;
			char *np;

			if (ncap > max + 1)
				ncap = max + 1;
			if (ncap <= gb->cap)
				break;  /* at max: truncate */
			np = realloc(gb->p, ncap);
			if (!np)
				return -ENOMEM;
			gb->p = np;
			gb->cap = ncap;
		}
		want = gb->cap - 1 - n;
		r = read(fd, gb->p + n, want);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		n += (size_t)r;
		if ((size_t)r < want)
			break;
	}
	if (!gb->p) {
		gb->p = malloc(1);
		if (!gb->p)
			return -ENOMEM;
		gb->cap = 1;
	}
	gb->p[n] = '\0';
	return (ssize_t)n;
}

/*
 * The executable path from dfd/name: a symlink's target, or the content of
 * a regular file (recorded trees).  Returns the length or -errno; an empty
 * regular file is -ENOENT.
 */
static ssize_t exe_at(int dfd, const char *name, char *buf, size_t size)
{
	ssize_t n = readlinkat(dfd, name, buf, size - 1);

	if (n >= 0) {
		if ((size_t)n >= size - 1)
			return -ENAMETOOLONG;
		buf[n] = '\0';
		return n;
	}
	if (errno != EINVAL)
		return -errno;
	/* not a symlink: a recorded tree's regular file holding the path */
	n = read_at(dfd, name, buf, size);
	if (n < 0)
		return n;
	if ((size_t)n >= size - 1)
		return -ENAMETOOLONG;
	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	if (n == 0)
		return -ENOENT;
	if (memchr(buf, '\0', (size_t)n) || memchr(buf, '\n', (size_t)n))
		return -EINVAL;
	return n;
}

/* ---- stat ---------------------------------------------------------------- */

/* Unsigned decimal at p (before end); NULL if none or on overflow. */
static const char *parse_ull(const char *p, const char *end, unsigned long long *v)
{
	const char *s = p;
	unsigned long long x = 0;

	while (p < end && is_digit(*p)) {
		unsigned d = (unsigned)(*p - '0');

		if (x > (ULLONG_MAX - d) / 10)
			return NULL;
		x = x * 10 + d;
		p++;
	}
	if (p == s)
		return NULL;
	*v = x;
	return p;
}

static int bad_stat(struct vmops_error *err, const char *why, int field)
{
	if (field)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "malformed stat: field %d: %s", field, why);
	return vmops_err(err, VMOPS_EXIT_FAILURE, "malformed stat: %s", why);
}

int vmops_proc_parse_stat(const char *buf, size_t len, struct vmops_proc_stat *out,
			  struct vmops_error *err)
{
	struct vmops_proc_stat st;
	const char *p, *q, *end, *comm, *rparen;
	unsigned long long v;
	size_t clen;
	int field;

	if (!buf || !out)
		return bad_stat(err, "no data", 0);
	end = buf + len;
	if (end > buf && end[-1] == '\n')
		end--;
	if (end == buf)
		return bad_stat(err, "empty", 0);
	if (memchr(buf, '\0', (size_t)(end - buf)))
		return bad_stat(err, "contains a nul byte", 0);
	memset(&st, 0, sizeof(st));

	/* 1: pid */
	p = buf;
	q = parse_ull(p, end, &v);
	if (!q || v == 0 || v > INT_MAX)
		return bad_stat(err, "pid is not a positive number", 1);
	st.pid = (pid_t)v;
	p = q;

	/* 2: (comm), which may hold anything but NUL: it ends at the last ')' */
	if (end - p < 2 || p[0] != ' ' || p[1] != '(')
		return bad_stat(err, "no '(' before comm", 2);
	comm = p + 2;
	rparen = memrchr(comm, ')', (size_t)(end - comm));
	if (!rparen)
		return bad_stat(err, "no ')' after comm", 2);
	clen = (size_t)(rparen - comm);
	if (clen > sizeof(st.comm) - 1)
		clen = sizeof(st.comm) - 1;
	memcpy(st.comm, comm, clen);
	st.comm[clen] = '\0';
	p = rparen + 1;

	/* 3: state */
	if (end - p < 2 || p[0] != ' ' || !is_alpha(p[1]))
		return bad_stat(err, "state is not a letter", 3);
	st.state = p[1];
	p += 2;

	/* 4..22: numbers; keep ppid (4), flags (9), starttime (22); check the rest */
	for (field = 4; field <= 22; field++) {
		if (p >= end || *p != ' ')
			return bad_stat(err, "missing", field);
		p++;
		if (field == 4 || field == 22) {
			q = parse_ull(p, end, &v);
			if (!q)
				return bad_stat(err, "not a number", field);
			if (field == 4) {
				if (v > INT_MAX)
					return bad_stat(err, "ppid out of range", field);
				st.ppid = (pid_t)v;
			} else {
				st.starttime = v;
			}
		} else if (field == 9) {
			q = parse_ull(p, end, &v);
			if (!q || v > UINT_MAX)
				return bad_stat(err, "flags not a number", field);
			st.flags = (unsigned)v;
		} else {
			const char *s;

			q = p;
			if (q < end && *q == '-')
				q++;
			s = q;
			while (q < end && is_digit(*q))
				q++;
			if (q == s || q - s > 20)
				return bad_stat(err, "not a number", field);
		}
		if (q < end && *q != ' ')
			return bad_stat(err, "not a number", field);
		p = q;
	}
	*out = st;
	return 0;
}

/* 0: read; 1: the process is not there (err untouched); -1: error. */
static int stat_read(const char *root, pid_t pid, struct vmops_proc_stat *out,
		     struct vmops_error *err)
{
	char path[PATH_MAX], buf[STAT_BUF_SIZE];
	ssize_t n;

	if (pid <= 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "invalid pid %d", (int)pid);
	if (build_path(path, sizeof(path), root, pid, "stat", err) < 0)
		return -1;
	n = read_at(AT_FDCWD, path, buf, sizeof(buf));
	if (n < 0) {
		if (is_gone((int)-n))
			return 1;
		return errno_err(err, (int)-n, path);
	}
	if (vmops_proc_parse_stat(buf, (size_t)n, out, err) < 0)
		return vmops_err_prefix(err, "%s", path);
	if (out->pid != pid)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "%s: malformed stat: pid %d, expected %d",
				 path, (int)out->pid, (int)pid);
	return 0;
}

int vmops_proc_read_stat(const char *root, pid_t pid, struct vmops_proc_stat *out,
			 struct vmops_error *err)
{
	int r;

	root = root_or_default(root);
	r = stat_read(root, pid, out, err);
	if (r > 0)
		return vmops_err(err, VMOPS_EXIT_NOTFOUND, "%s/%d/stat: no such process",
				 root, (int)pid);
	return r;
}

/* ---- cmdline, exe, uid ---------------------------------------------------- */

static int count_args(const char *buf, size_t len)
{
	const char *p = buf, *end = buf + len, *z;
	int argc = 0;

	while (p < end) {
		z = memchr(p, '\0', (size_t)(end - p));
		argc++;
		if (!z || argc == INT_MAX)
			break;
		p = z + 1;
	}
	return argc;
}

/* Point argv[0..argc-1] at the arguments in buf (NUL-terminated at len). */
static void fill_args(char *buf, size_t len, char **argv, int argc)
{
	char *p = buf;
	int i;

	for (i = 0; i < argc; i++) {
		argv[i] = p;
		p += strnlen(p, len - (size_t)(p - buf)) + 1;
	}
	argv[argc] = NULL;
}

int vmops_proc_read_cmdline(const char *root, pid_t pid, char ***argv, int *argc,
			    struct vmops_error *err)
{
	char path[PATH_MAX];
	struct growbuf gb = { NULL, 0 };
	ssize_t n;
	size_t len;
	int count;
	char **v;

	if (!argv || !argc)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "read cmdline: no place for the result");
	*argv = NULL;
	*argc = 0;
	root = root_or_default(root);
	if (pid <= 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "invalid pid %d", (int)pid);
	if (build_path(path, sizeof(path), root, pid, "cmdline", err) < 0)
		return -1;
	n = read_grow_at(AT_FDCWD, path, &gb, CMDLINE_MAX);
	if (n < 0)
		return errno_err(err, (int)-n, path);
	len = (size_t)n;
	count = count_args(gb.p, len);
	v = malloc(((size_t)count + 1) * sizeof(char *) + len + 1);
	if (!v) {
		growbuf_free(&gb);
		return errno_err(err, ENOMEM, path);
	}
	memcpy((char *)(v + count + 1), gb.p, len + 1);
	growbuf_free(&gb);
	fill_args((char *)(v + count + 1), len, v, count);
	*argv = v;
	*argc = count;
	return 0;
}

ssize_t vmops_proc_read_exe(const char *root, pid_t pid, char *buf, size_t size,
			    struct vmops_error *err)
{
	char path[PATH_MAX];
	ssize_t n;

	root = root_or_default(root);
	if (!buf || size < 2)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "read exe: buffer too small");
	buf[0] = '\0';
	if (pid <= 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "invalid pid %d", (int)pid);
	if (build_path(path, sizeof(path), root, pid, "exe", err) < 0)
		return -1;
	n = exe_at(AT_FDCWD, path, buf, size);
	if (n < 0) {
		buf[0] = '\0';
		if (is_gone((int)-n))
			return vmops_err(err, VMOPS_EXIT_NOTFOUND,
					 "%s: no executable (kernel thread, zombie or exited)", path);
		return errno_err(err, (int)-n, path);
	}
	return n;
}

/* Real and effective uid from the text of a status file. */
static int parse_status_uid(const char *buf, uid_t *ruid, uid_t *euid)
{
	const char *p, *end;
	unsigned long long v[2];
	int i;

	if (!strncmp(buf, "Uid:", 4))
		p = buf;
	else if ((p = strstr(buf, "\nUid:")))
		p++;
	else
		return -1;
	p += 4;
	end = p + strcspn(p, "\n");
	for (i = 0; i < 2; i++) {
		while (p < end && (*p == '\t' || *p == ' '))
			p++;
		p = parse_ull(p, end, &v[i]);
		if (!p || v[i] >= (uid_t)-1 || (p < end && *p != '\t' && *p != ' '))
			return -1;
	}
	*ruid = (uid_t)v[0];
	*euid = (uid_t)v[1];
	return 0;
}

int vmops_proc_read_uid(const char *root, pid_t pid, uid_t *ruid, uid_t *euid,
			struct vmops_error *err)
{
	char path[PATH_MAX], buf[STATUS_BUF_SIZE];
	uid_t r, e;
	ssize_t n;

	root = root_or_default(root);
	if (pid <= 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "invalid pid %d", (int)pid);
	if (build_path(path, sizeof(path), root, pid, "status", err) < 0)
		return -1;
	n = read_at(AT_FDCWD, path, buf, sizeof(buf));
	if (n < 0)
		return errno_err(err, (int)-n, path);
	if (parse_status_uid(buf, &r, &e) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "%s: no valid Uid line", path);
	if (ruid)
		*ruid = r;
	if (euid)
		*euid = e;
	return 0;
}

/* ---- identification ------------------------------------------------------ */

enum vmops_hv_kind vmops_proc_hv_kind(const char *exe_path)
{
	static const char deleted[] = " (deleted)";
	static const char qemu[] = "qemu-system-";
	const char *base, *slash;
	size_t len, blen, i;

	if (!exe_path)
		return VMOPS_HV_NONE;
	len = strlen(exe_path);
	if (len >= sizeof(deleted) - 1 &&
	    !memcmp(exe_path + len - (sizeof(deleted) - 1), deleted, sizeof(deleted) - 1))
		len -= sizeof(deleted) - 1;
	slash = memrchr(exe_path, '/', len);
	base = slash ? slash + 1 : exe_path;
	blen = len - (size_t)(base - exe_path);

	if (blen > sizeof(qemu) - 1 && !memcmp(base, qemu, sizeof(qemu) - 1)) {
		for (i = sizeof(qemu) - 1; i < blen; i++)
			if (!is_alnum(base[i]) && base[i] != '_' && base[i] != '-')
				return VMOPS_HV_NONE;
		return VMOPS_HV_QEMU;
	}
	if (blen == strlen("cloud-hypervisor") && !memcmp(base, "cloud-hypervisor", blen))
		return VMOPS_HV_CLOUD_HYPERVISOR;
	if (blen == strlen("firecracker") && !memcmp(base, "firecracker", blen))
		return VMOPS_HV_FIRECRACKER;
	return VMOPS_HV_NONE;
}

const char *vmops_proc_hv_name(enum vmops_hv_kind kind)
{
	switch (kind) {
	case VMOPS_HV_QEMU:
		return "qemu";
	case VMOPS_HV_CLOUD_HYPERVISOR:
		return "cloud-hypervisor";
	case VMOPS_HV_FIRECRACKER:
		return "firecracker";
	case VMOPS_HV_NONE:
		break;
	}
	return "none";
}

long long vmops_proc_vmm_id(int argc, char *const argv[])
{
	static const char tok[] = "vmops-vmm-";
	long long found = -1;
	int i;

	if (!argv)
		return -1;
	for (i = 1; i < argc && argv[i]; i++) {
		const char *a = argv[i], *p;

		for (p = strstr(a, tok); p; p = strstr(p + 1, tok)) {
			const char *q = p + sizeof(tok) - 1;
			long long id = 0;
			bool overflow = false;

			if (p > a && is_alnum(p[-1]))
				continue;
			if (!is_digit(*q) || *q == '0')
				continue;
			for (; is_digit(*q); q++) {
				int d = *q - '0';

				if (id > (LLONG_MAX - d) / 10)
					overflow = true;
				else
					id = id * 10 + d;
			}
			if (overflow || is_alnum(*q))
				continue;
			if (found >= 0 && found != id)
				return -1;  /* two identities: trust neither */
			found = id;
		}
	}
	return found;
}

/* ---- scan ---------------------------------------------------------------- */

struct scanstate {
	const char *root;
	unsigned flags;
	struct growbuf cmd;
	char **argv;
	size_t argv_cap;
	char exe[PATH_MAX];
};

#define PF_KTHREAD 0x00200000u  /* stat field 9: a kernel thread */

/* "ROOT/PID/FILE: strerror" for a read that failed during the scan. */
static int scan_errno(const struct scanstate *s, const char *path, int e,
		      struct vmops_error *err)
{
	char eb[128];

	return vmops_err(err, is_gone(e) ? VMOPS_EXIT_NOTFOUND : VMOPS_EXIT_FAILURE,
			 "%s/%s: %s", s->root, path, errstr(e, eb, sizeof(eb)));
}

/* Read and parse ROOT/PID/stat relative to rootfd.  0, 1 (gone), -1. */
static int scan_stat(int rootfd, const char *path, pid_t pid, struct scanstate *s,
		     struct vmops_proc_stat *st, struct vmops_error *err)
{
	char buf[STAT_BUF_SIZE];
	ssize_t n;

	n = read_at(rootfd, path, buf, sizeof(buf));
	if (n < 0) {
		if (is_gone((int)-n))
			return 1;
		if (-n == EACCES || -n == EPERM) {
			vmops_debug("%s/%s: permission denied: skipped", s->root, path);
			return 1;
		}
		return scan_errno(s, path, (int)-n, err);
	}
	if (vmops_proc_parse_stat(buf, (size_t)n, st, err) < 0)
		return vmops_err_prefix(err, "%s/%s", s->root, path);
	if (st->pid != pid)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "%s/%s: malformed stat: pid %d",
				 s->root, path, (int)st->pid);
	return 0;
}

/*
 * One process.  0: info filled; 1: skip it (gone, or not wanted); -1: error.
 *
 * Files are opened by path relative to the root: opening each process's
 * directory first would pin the process but costs as much as reading its
 * stat.  Instead the reads of a hypervisor process are bracketed by two
 * reads of its stat: the pid cannot change hands while its process lives,
 * so if the start time is the same after exe, cmdline and status were read,
 * they were that process's.  Other processes are only listed, never acted
 * on, and are not re-checked.
 */
static int scan_one(int rootfd, const char *name, pid_t pid, struct scanstate *s,
		    struct vmops_proc_info *info, struct vmops_error *err)
{
	char path[64];
	size_t nl = strlen(name);
	ssize_t n;
	int argc, r;

	if (nl > sizeof(path) - 16)
		return 1;
	memcpy(path, name, nl);
	path[nl] = '/';
#define SUBPATH(leaf) (memcpy(path + nl + 1, leaf, sizeof(leaf)), path)

	if (s->flags & VMOPS_PROC_SCAN_HV_ONLY) {
		/* cheap filter first: one readlink per process */
		n = exe_at(rootfd, SUBPATH("exe"), s->exe, sizeof(s->exe));
		if (n < 0) {
			char eb[128];

			if (!is_gone((int)-n))
				vmops_debug("%s/%s: %s: skipped", s->root, path,
					    errstr((int)-n, eb, sizeof(eb)));
			return 1;
		}
		if (vmops_proc_hv_kind(s->exe) == VMOPS_HV_NONE)
			return 1;
	}

	r = scan_stat(rootfd, SUBPATH("stat"), pid, s, &info->stat, err);
	if (r)
		return r;

	info->exe = s->exe;
	info->hv = VMOPS_HV_NONE;
	info->argc = 0;
	info->vmm_id = -1;
	info->uid = info->euid = (uid_t)-1;
	s->exe[0] = '\0';
	if (!s->argv_cap) {
		s->argv = malloc(64 * sizeof(char *));
		if (!s->argv)
			return errno_err(err, ENOMEM, "scan");
		s->argv_cap = 64;
	}
	s->argv[0] = NULL;
	info->argv = s->argv;

	/* kernel threads and exited processes have no exe and no cmdline */
	if (!(info->stat.flags & PF_KTHREAD) && info->stat.state != 'Z' &&
	    info->stat.state != 'X' && info->stat.state != 'x') {
		n = exe_at(rootfd, SUBPATH("exe"), s->exe, sizeof(s->exe));
		if (n < 0) {
			int e = (int)-n;

			s->exe[0] = '\0';
			if (!is_gone(e) && e != EACCES && e != EPERM) {
				return scan_errno(s, path, e, err);
			}
		}
		info->hv = vmops_proc_hv_kind(s->exe);

		n = read_grow_at(rootfd, SUBPATH("cmdline"), &s->cmd, CMDLINE_MAX);
		if (n < 0) {
			if (is_gone((int)-n))
				return 1;
			return scan_errno(s, path, (int)-n, err);
		}
		argc = count_args(s->cmd.p, (size_t)n);
		if ((size_t)argc + 1 > s->argv_cap) {
			size_t ncap = s->argv_cap;
			char **nv;

			while (ncap < (size_t)argc + 1)
				ncap *= 2;
			nv = realloc(s->argv, ncap * sizeof(char *));
			if (!nv)
				return errno_err(err, ENOMEM, "scan");
			s->argv = nv;
			s->argv_cap = ncap;
		}
		fill_args(s->cmd.p, (size_t)n, s->argv, argc);
		info->argc = argc;
		info->argv = s->argv;
	}
	if ((s->flags & VMOPS_PROC_SCAN_HV_ONLY) && info->hv == VMOPS_HV_NONE)
		return 1;  /* exec'd, exited or reused since the filter */

	if (s->flags & VMOPS_PROC_SCAN_UID) {
		char sbuf[STATUS_BUF_SIZE];

		/* a missing status (not recorded, or just exited) leaves -1 */
		n = read_at(rootfd, SUBPATH("status"), sbuf, sizeof(sbuf));
		if (n >= 0 && parse_status_uid(sbuf, &info->uid, &info->euid) < 0)
			return vmops_err(err, VMOPS_EXIT_FAILURE, "%s/%s: no valid Uid line",
					 s->root, path);
		if (n < 0 && !is_gone((int)-n) && -n != EACCES && -n != EPERM) {
			return scan_errno(s, path, (int)-n, err);
		}
	}

	if (info->hv != VMOPS_HV_NONE) {
		struct vmops_proc_stat again;

		r = scan_stat(rootfd, SUBPATH("stat"), pid, s, &again, err);
		if (r)
			return r;
		if (again.starttime != info->stat.starttime)
			return 1;  /* the pid changed hands while we read */
		info->stat = again;
		info->vmm_id = vmops_proc_vmm_id(info->argc, info->argv);
	}
#undef SUBPATH
	return 0;
}

/* pid from a directory name of digits only, no leading zero; else 0. */
static pid_t pid_from_name(const char *name)
{
	long long v = 0;
	const char *p;

	if (!is_digit(name[0]) || name[0] == '0')
		return 0;
	for (p = name; *p; p++) {
		if (!is_digit(*p))
			return 0;
		v = v * 10 + (*p - '0');
		if (v > INT_MAX)
			return 0;
	}
	return (pid_t)v;
}

int vmops_proc_scan(const char *root, unsigned flags, vmops_proc_scan_fn fn, void *data,
		    struct vmops_error *err)
{
	_cleanup_closedir_ DIR *d = NULL;
	struct scanstate *s;
	struct dirent *de;
	int rootfd, r = 0;

	root = root_or_default(root);
	if (!fn)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "scan %s: no callback", root);
	d = opendir(root);
	if (!d)
		return errno_err(err, errno, root);
	rootfd = dirfd(d);
	s = calloc(1, sizeof(*s));
	if (!s)
		return errno_err(err, ENOMEM, root);
	s->root = root;
	s->flags = flags;

	for (;;) {
		struct vmops_proc_info info;
		pid_t pid;

		errno = 0;
		de = readdir(d);
		if (!de) {
			if (errno)
				r = errno_err(err, errno, root);
			break;
		}
		if (de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
			continue;
		pid = pid_from_name(de->d_name);
		if (!pid)
			continue;
		memset(&info, 0, sizeof(info));
		r = scan_one(rootfd, de->d_name, pid, s, &info, err);
		if (r < 0)
			break;
		if (r > 0) {
			r = 0;
			continue;
		}
		r = fn(&info, data);
		if (r)
			break;
	}
	growbuf_free(&s->cmd);
	free(s->argv);
	free(s);
	return r;
}

/* ---- liveness and signals ------------------------------------------------ */

int vmops_proc_check(const char *root, pid_t pid, unsigned long long expected_starttime,
		     struct vmops_proc_stat *st, struct vmops_error *err)
{
	struct vmops_proc_stat s;
	int r;

	memset(&s, 0, sizeof(s));
	if (st)
		memset(st, 0, sizeof(*st));
	r = stat_read(root_or_default(root), pid, &s, err);
	if (r < 0)
		return -1;
	if (r > 0)
		return VMOPS_PROC_DEAD;
	if (st)
		*st = s;
	if (!expected_starttime) {
		/* nothing to compare: whoever holds the pid, a dead one means the
		 * process meant has exited; a live one may or may not be it */
		if (s.state == 'Z' || s.state == 'X' || s.state == 'x')
			return VMOPS_PROC_DEAD;
		return VMOPS_PROC_UNKNOWN;
	}
	if (s.starttime != expected_starttime)
		return VMOPS_PROC_REUSED;
	if (s.state == 'Z' || s.state == 'X' || s.state == 'x')
		return VMOPS_PROC_DEAD;
	return VMOPS_PROC_ALIVE;
}

static int sys_pidfd_open(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int sys_pidfd_send_signal(int pidfd, int sig)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/*
 * Open a pidfd for pid and make sure it is the process that started at
 * starttime.  The pid cannot be reused while the pidfd's process is not
 * reaped, so: open, read stat, then check through the pidfd that the
 * process still exists - if it does, the stat read was of that process.
 * Returns SIG_SENT with *pidfd open and *st filled, SIG_GONE, SIG_REFUSED
 * or SIG_ERROR.
 */
static int open_verified(pid_t pid, unsigned long long starttime, int *pidfd,
			 struct vmops_proc_stat *st, struct vmops_error *err)
{
	_cleanup_close_ int fd = -1;
	char what[64];
	int r;

	*pidfd = -1;
	if (pid <= 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "invalid pid %d", (int)pid);
	if (!starttime) {
		vmops_err(err, VMOPS_EXIT_CONFLICT,
			  "pid %d: no start time recorded: cannot tell whether it is the process meant; not signalled",
			  (int)pid);
		return VMOPS_PROC_SIG_REFUSED;
	}
	snprintf(what, sizeof(what), "pid %d: pidfd_open", (int)pid);
	fd = sys_pidfd_open(pid);
	if (fd < 0) {
		if (errno == ESRCH)
			return VMOPS_PROC_SIG_GONE;
		return errno_err(err, errno, what);
	}
	r = stat_read(VMOPS_PROC_ROOT_DEFAULT, pid, st, err);
	if (r < 0)
		return VMOPS_PROC_SIG_ERROR;
	if (r > 0)
		return VMOPS_PROC_SIG_GONE;
	if (sys_pidfd_send_signal(fd, 0) < 0) {
		if (errno == ESRCH)
			return VMOPS_PROC_SIG_GONE;
		snprintf(what, sizeof(what), "pid %d: pidfd_send_signal", (int)pid);
		return errno_err(err, errno, what);
	}
	if (st->starttime != starttime) {
		vmops_err(err, VMOPS_EXIT_CONFLICT,
			  "pid %d: start time %llu, expected %llu: pid reused, not signalled",
			  (int)pid, st->starttime, starttime);
		return VMOPS_PROC_SIG_REFUSED;
	}
	*pidfd = fd;
	fd = -1;
	return VMOPS_PROC_SIG_SENT;
}

static int send_sig(int pidfd, pid_t pid, int sig, struct vmops_error *err)
{
	char what[64];

	if (sys_pidfd_send_signal(pidfd, sig) == 0)
		return VMOPS_PROC_SIG_SENT;
	if (errno == ESRCH)
		return VMOPS_PROC_SIG_GONE;
	snprintf(what, sizeof(what), "pid %d: signal %d", (int)pid, sig);
	return errno_err(err, errno, what);
}

int vmops_proc_signal(pid_t pid, unsigned long long expected_starttime, int sig,
		      struct vmops_error *err)
{
	struct vmops_proc_stat st;
	_cleanup_close_ int fd = -1;
	int r;

	r = open_verified(pid, expected_starttime, &fd, &st, err);
	if (r != VMOPS_PROC_SIG_SENT)
		return r;
	return send_sig(fd, pid, sig, err);
}

int vmops_proc_signal_child(pid_t pid, int sig, struct vmops_error *err)
{
	_cleanup_close_ int fd = -1;
	char what[64];

	if (pid <= 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "invalid pid %d", (int)pid);
	fd = sys_pidfd_open(pid);
	if (fd < 0) {
		if (errno == ESRCH)
			return VMOPS_PROC_SIG_GONE;
		snprintf(what, sizeof(what), "pid %d: pidfd_open", (int)pid);
		return errno_err(err, errno, what);
	}
	return send_sig(fd, pid, sig, err);
}

static unsigned long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}

/* 1: the pidfd's process has exited; 0: not within timeout_ms; -1: error. */
static int wait_exit(int pidfd, pid_t pid, unsigned timeout_ms, struct vmops_error *err)
{
	unsigned long long deadline = now_ms() + timeout_ms;

	for (;;) {
		struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
		unsigned long long now = now_ms();
		int left = now >= deadline ? 0 :
			   (deadline - now > INT_MAX ? INT_MAX : (int)(deadline - now));
		int r = poll(&pfd, 1, left);

		if (r < 0) {
			char what[64];

			if (errno == EINTR)
				continue;
			snprintf(what, sizeof(what), "pid %d: poll pidfd", (int)pid);
			return errno_err(err, errno, what);
		}
		if (r > 0 && (pfd.revents & (POLLIN | POLLHUP)))
			return 1;
		if (r > 0)
			return vmops_err(err, VMOPS_EXIT_FAILURE, "pid %d: poll pidfd: revents %#x",
					 (int)pid, (unsigned)pfd.revents);
		if (!left)
			return 0;
	}
}

int vmops_proc_terminate(pid_t pid, unsigned long long starttime, unsigned grace_ms,
			 struct vmops_proc_term_outcome *out, struct vmops_error *err)
{
	struct vmops_proc_term_outcome o = { VMOPS_PROC_TERM_GONE, 0, 0 };
	struct vmops_proc_stat st;
	_cleanup_close_ int fd = -1;
	unsigned long long t0;
	int r;

	if (out)
		*out = o;
	r = open_verified(pid, starttime, &fd, &st, err);
	if (r == VMOPS_PROC_SIG_GONE)
		return VMOPS_PROC_SIG_SENT;
	if (r != VMOPS_PROC_SIG_SENT)
		return r;
	o.ppid = st.ppid;
	if (st.state == 'X' || st.state == 'x')
		goto done;
	if (st.state == 'Z') {
		/* A leader that is Z while other threads run is not dead yet:
		 * the pidfd is readable only once the whole process has exited. */
		r = wait_exit(fd, pid, 0, err);
		if (r < 0)
			return VMOPS_PROC_SIG_ERROR;
		if (r > 0) {
			o.how = VMOPS_PROC_TERM_ZOMBIE;
			goto done;
		}
	}

	t0 = now_ms();
	r = send_sig(fd, pid, SIGTERM, err);
	if (r == VMOPS_PROC_SIG_GONE)
		goto done;
	if (r < 0)
		return r;
	r = wait_exit(fd, pid, grace_ms, err);
	if (r < 0)
		return VMOPS_PROC_SIG_ERROR;
	if (r > 0) {
		o.how = VMOPS_PROC_TERM_TERM;
		o.elapsed_ms = (unsigned)(now_ms() - t0);
		goto done;
	}

	r = send_sig(fd, pid, SIGKILL, err);
	if (r == VMOPS_PROC_SIG_GONE) {
		o.how = VMOPS_PROC_TERM_TERM;  /* exited just after the grace */
		o.elapsed_ms = (unsigned)(now_ms() - t0);
		goto done;
	}
	if (r < 0)
		return r;
	r = wait_exit(fd, pid, VMOPS_PROC_KILL_WAIT_MS, err);
	if (r < 0)
		return VMOPS_PROC_SIG_ERROR;
	o.how = VMOPS_PROC_TERM_KILL;
	o.elapsed_ms = (unsigned)(now_ms() - t0);
	if (out)
		*out = o;
	if (r == 0)
		return vmops_err(err, VMOPS_EXIT_TIMEOUT,
				 "pid %d: still running %u ms after SIGKILL (uninterruptible sleep?)",
				 (int)pid, VMOPS_PROC_KILL_WAIT_MS);
done:
	if (out)
		*out = o;
	return VMOPS_PROC_SIG_SENT;
}

/* ---- time ---------------------------------------------------------------- */

long vmops_proc_clk_tck(void)
{
	static long tck;

	if (!tck) {
		long t = sysconf(_SC_CLK_TCK);

		tck = t > 0 ? t : 100;
	}
	return tck;
}

/* "123.45" (digits, optional fraction) at *pp; locale-independent. */
static int parse_seconds(const char **pp, const char *end, double *out)
{
	const char *p = *pp;
	unsigned long long whole;
	double frac = 0, scale = 0.1;

	p = parse_ull(p, end, &whole);
	if (!p)
		return -1;
	if (p < end && *p == '.') {
		p++;
		if (p >= end || !is_digit(*p))
			return -1;
		for (; p < end && is_digit(*p); p++) {
			frac += (*p - '0') * scale;
			scale /= 10;
		}
	}
	*out = (double)whole + frac;
	*pp = p;
	return 0;
}

int vmops_proc_uptime(const char *root, double *seconds, struct vmops_error *err)
{
	char path[PATH_MAX], buf[SMALL_BUF_SIZE];
	const char *p, *end;
	double up;
	ssize_t n;

	root = root_or_default(root);
	if (build_path(path, sizeof(path), root, 0, "uptime", err) < 0)
		return -1;
	n = read_at(AT_FDCWD, path, buf, sizeof(buf));
	if (n < 0)
		return errno_err(err, (int)-n, path);
	p = buf;
	end = buf + n;
	if (parse_seconds(&p, end, &up) < 0 || (p < end && *p != ' ' && *p != '\n'))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "%s: malformed uptime", path);
	if (seconds)
		*seconds = up;
	return 0;
}

int vmops_proc_boot_time(const char *root, time_t *btime, struct vmops_error *err)
{
	char path[PATH_MAX];
	struct growbuf gb = { NULL, 0 };
	unsigned long long v;
	const char *p, *q;
	ssize_t n;
	int r = 0;

	root = root_or_default(root);
	if (build_path(path, sizeof(path), root, 0, "stat", err) < 0)
		return -1;
	n = read_grow_at(AT_FDCWD, path, &gb, STATFILE_MAX);
	if (n < 0)
		return errno_err(err, (int)-n, path);
	if (!strncmp(gb.p, "btime ", 6))
		p = gb.p;
	else
		p = strstr(gb.p, "\nbtime ");
	if (p && *p == '\n')
		p++;
	if (!p || !(q = parse_ull(p + 6, gb.p + n, &v)) || (*q && *q != '\n') ||
	    v > (unsigned long long)INT64_MAX)
		r = vmops_err(err, VMOPS_EXIT_FAILURE, "%s: no valid btime line", path);
	else if (btime)
		*btime = (time_t)v;
	growbuf_free(&gb);
	return r;
}

double vmops_proc_age_at(double uptime, unsigned long long starttime)
{
	double age = uptime - (double)starttime / (double)vmops_proc_clk_tck();

	return age > 0 ? age : 0;
}

int vmops_proc_age(const char *root, unsigned long long starttime, double *age,
		   struct vmops_error *err)
{
	double up;

	if (vmops_proc_uptime(root, &up, err) < 0)
		return -1;
	if (age)
		*age = vmops_proc_age_at(up, starttime);
	return 0;
}
