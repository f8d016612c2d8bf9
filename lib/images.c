/* SPDX-License-Identifier: MIT */
/* The launch-spec policy (see images.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "exitcodes.h"
#include "images.h"
#include "macro.h"

static int refuse(struct vmops_error *e, const char *what, const char *path, const char *why)
{
	return vmops_err(e, VMOPS_EXIT_CONFLICT, "launch spec: %s %s: %s: refusing to launch", what, path, why);
}

/* Is the resolved `real` inside one of the ':'-separated directories (each resolved too)? */
static bool inside_one(const char *real, const char *list)
{
	char dir[PATH_MAX], rdir[PATH_MAX];
	const char *p = list;

	while (*p) {
		size_t n = strcspn(p, ":");

		if (n && n < sizeof(dir)) {
			memcpy(dir, p, n);
			dir[n] = '\0';
			if (dir[0] == '/' && realpath(dir, rdir)) {
				size_t l = strlen(rdir);
				if (l > 1 && !strncmp(real, rdir, l) && real[l] == '/')
					return true;
			}
		}
		p += n;
		if (*p == ':')
			p++;
	}
	return false;
}

static bool allowed(const char *real, const char *dirs, const char *own_dir)
{
	const char *env = getenv(VMOPS_IMAGE_DIRS_ENV);

	/* One directory (it may contain ':'): compared as a list of one. */
	if (own_dir && own_dir[0] == '/' && !strchr(own_dir, ':') && inside_one(real, own_dir))
		return true;
	if (dirs && *dirs)
		return inside_one(real, dirs);
	return inside_one(real, VMOPS_IMAGE_DIRS_DEFAULT) || (env && inside_one(real, env));
}

static int check_file(const char *what, const char *path, const char *dirs, const char *own_dir,
		      struct vmops_error *e)
{
	char link[64], real[PATH_MAX], why[160];
	struct stat st;
	ssize_t n;
	int fd;

	if (!path || path[0] != '/')
		return refuse(e, what, path ? path : "(none)", "not an absolute path");
	/* O_PATH: opening a device or FIFO must not touch it; O_NOFOLLOW: a last-component link is refused. */
	fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ELOOP)
			return refuse(e, what, path, "a symbolic link");
		if (errno == ENOENT)
			return refuse(e, what, path, "does not exist");
		snprintf(why, sizeof(why), "%s", strerror(errno));
		return refuse(e, what, path, why);
	}
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, real, sizeof(real) - 1);
	if (n < 0 || fstat(fd, &st) < 0) {
		snprintf(why, sizeof(why), "%s", strerror(errno));
		close(fd);
		return refuse(e, what, path, why);
	}
	close(fd);
	real[n] = '\0';
	if (S_ISLNK(st.st_mode))    /* O_PATH | O_NOFOLLOW opens the link itself */
		return refuse(e, what, path, "a symbolic link");
	if (!allowed(real, dirs, own_dir)) {
		snprintf(why, sizeof(why), "%s the worker's image directories%s", strcmp(real, path) ? "resolves outside" : "outside",
			 dirs && *dirs ? "" : " (default list; see vmops(7))");
		return refuse(e, what, path, why);
	}
	if (!S_ISREG(st.st_mode))
		return refuse(e, what, path, S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode) ? "a device node" :
					     "not a regular file");
	if (st.st_uid != 0 && st.st_uid != geteuid()) {
		snprintf(why, sizeof(why), "owned by uid %u, not by root or us (uid %u)", (unsigned)st.st_uid,
			 (unsigned)geteuid());
		return refuse(e, what, path, why);
	}
	if (st.st_mode & 022) {
		snprintf(why, sizeof(why), "mode %04o: writable by group or others", (unsigned)(st.st_mode & 07777));
		return refuse(e, what, path, why);
	}
	return 0;
}

int vmops_images_check_file(const char *what, const char *path, const char *dirs, struct vmops_error *e)
{
	return check_file(what, path, dirs, NULL, e);
}

int vmops_images_check_recorded(const struct vmops_spec *spec, const char *dirs, const char *own_dir,
				bool skip_writable, struct vmops_error *e)
{
	char what[32];

	if (check_file("kernel", spec->kernel, dirs, own_dir, e) < 0)
		return -1;
	if (spec->initrd && check_file("initrd", spec->initrd, dirs, own_dir, e) < 0)
		return -1;
	for (size_t i = 0; i < spec->n_disks; i++) {
		if (skip_writable && !spec->disks[i].readonly)
			continue;
		snprintf(what, sizeof(what), "disk %zu", i);
		if (check_file(what, spec->disks[i].path, dirs, own_dir, e) < 0)
			return -1;
	}
	return 0;
}

int vmops_images_check(const struct vmops_spec *spec, const char *dirs, struct vmops_error *e)
{
	return vmops_images_check_recorded(spec, dirs, NULL, false, e);
}

static bool dir_valid(const char *d, size_t n)
{
	static const char *const never[] = { "/dev", "/proc", "/sys" };

	if (n < 2 || n >= 1024 || d[0] != '/' || d[n - 1] == '/')
		return false;
	for (size_t i = 0; i < n; i++) {
		if (d[i] == '\n' || (d[i] == '/' && d[i + 1] == '/'))
			return false;
		if (d[i] == '/' && d[i + 1] == '.' &&
		    (i + 2 >= n || d[i + 2] == '/' || (d[i + 2] == '.' && (i + 3 >= n || d[i + 3] == '/'))))
			return false;
	}
	for (size_t i = 0; i < ARRAY_SIZE(never); i++) {
		size_t l = strlen(never[i]);
		if (n >= l && !strncmp(d, never[i], l) && (n == l || d[l] == '/'))
			return false;
	}
	return true;
}

bool vmops_images_dirs_valid(const char *dirs)
{
	const char *p = dirs;
	int count = 0;

	if (!dirs || !*dirs)
		return false;
	for (;;) {
		size_t n = strcspn(p, ":");

		if (!dir_valid(p, n) || ++count > 32)
			return false;
		p += n;
		if (!*p)
			return true;
		p++;
	}
}

int vmops_images_worker_dirs(PGconn *c, const char *worker, char *buf, size_t len, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	const char *v;

	buf[0] = '\0';
	r = vmops_db_q(c, e, "SELECT array_to_string(image_dirs, ':') AS d FROM workers WHERE name = $1", worker);
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", worker);
	v = vmops_db_get(r, 0, "d");
	if (v && (size_t)snprintf(buf, len, "%s", v) >= len)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: image directories too long", worker);
	return 0;
}
