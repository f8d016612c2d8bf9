/* SPDX-License-Identifier: MIT */
/* Run directories (see rundir.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exitcodes.h"
#include "rundir.h"

/* What a VMM leaves in its run directory (all drivers). */
static const char *const vmm_files[] = {
	"qmp.sock", "qga.sock", "serial.log", "serial.log.1", "qemu.log", "qemu.log.1", "api.sock",
	"vmm.log", "vmm.log.1", "vsock.sock", "events.json", NULL,
};

static int refuse(struct vmops_error *e, const char *path, size_t upto, const char *why)
{
	return vmops_err(e, VMOPS_EXIT_CONFLICT, "run directory %.*s: %s: refusing to use it",
			 (int)upto, path, why);
}

/*
 * Check an open directory component.  `last`: the run directory itself.
 * *open_to_others is set when others may write into it (then the next
 * component must be ours).
 */
static int check_component(int fd, const char *path, size_t upto, bool last, bool parent_open,
			   bool *open_to_others, struct vmops_error *e)
{
	struct stat st;
	uid_t me = geteuid();
	char why[96];

	if (fstat(fd, &st) < 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "run directory %.*s: %s", (int)upto, path,
				 strerror(errno));
	if (st.st_uid != me && (st.st_uid != 0 || last || parent_open)) {
		snprintf(why, sizeof(why), "owned by uid %u, not by us (uid %u)%s", (unsigned)st.st_uid,
			 (unsigned)me, parent_open ? " in a directory others can write to" : "");
		return refuse(e, path, upto, why);
	}
	if (last && (st.st_mode & 077)) {
		snprintf(why, sizeof(why), "mode %04o, expected 0700", (unsigned)(st.st_mode & 07777));
		return refuse(e, path, upto, why);
	}
	*open_to_others = (st.st_mode & 022) != 0;
	if (*open_to_others && !(st.st_mode & S_ISVTX))
		return refuse(e, path, upto, "writable by others and not sticky");
	return 0;
}

/*
 * Open one component below dirfd, never through a link; create it (0700)
 * when missing and `create`, else a missing one gives -2 (e untouched).
 */
static int open_component(int dirfd, const char *name, const char *path, size_t upto, bool create,
			  struct vmops_error *e)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0 && errno == ENOENT) {
		if (!create)
			return -2;
		if (mkdirat(dirfd, name, 0700) < 0 && errno != EEXIST)
			return vmops_err(e, VMOPS_EXIT_FAILURE, "run directory %.*s: mkdir: %s", (int)upto,
					 path, strerror(errno));
		fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	}
	if (fd >= 0)
		return fd;
	if (errno == ELOOP || errno == ENOTDIR) {
		struct stat st;
		bool link = fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
		return refuse(e, path, upto, link ? "a symbolic link" : "not a directory");
	}
	return vmops_err(e, VMOPS_EXIT_FAILURE, "run directory %.*s: %s", (int)upto, path, strerror(errno));
}

/*
 * The walk from "/": returns the run directory's fd (and, when `parent` is
 * not NULL, its parent's fd and the last component's name), or -1.  With
 * !create a missing component gives -1 with *missing set and e untouched.
 */
static int walk(const char *path, bool create, int *parent, char *last, bool *missing,
		struct vmops_error *e)
{
	char comp[NAME_MAX + 1];
	bool open_prev = false, open_now = false;
	const char *p = path;
	int fd, up = -1;

	if (missing)
		*missing = false;
	if (!path || path[0] != '/')
		return vmops_err(e, VMOPS_EXIT_FAILURE, "run directory %s: not an absolute path",
				 path ? path : "(none)");
	fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "open /: %s", strerror(errno));
	for (;;) {
		size_t n;
		int next;

		while (*p == '/')
			p++;
		if (!*p)
			break;
		n = strcspn(p, "/");
		if (n > NAME_MAX || (n == 2 && !strncmp(p, "..", 2)) || (n == 1 && *p == '.')) {
			close(fd);
			if (up >= 0)
				close(up);
			return refuse(e, path, (size_t)(p - path + (ptrdiff_t)n), "'.', '..' or a too long name");
		}
		memcpy(comp, p, n);
		comp[n] = '\0';
		p += n;
		next = open_component(fd, comp, path, (size_t)(p - path), create, e);
		if (up >= 0)
			close(up);
		up = fd;
		if (next < 0) {
			if (missing && next == -2)
				*missing = true;
			close(up);
			return -1;
		}
		fd = next;
		while (*p == '/')
			p++;
		if (check_component(fd, path, strlen(path) - strlen(p), !*p, open_prev, &open_now, e) < 0) {
			close(fd);
			close(up);
			return -1;
		}
		open_prev = open_now;
		if (last)
			snprintf(last, NAME_MAX + 1, "%s", comp);
	}
	if (parent && up >= 0)
		*parent = up;
	else if (up >= 0)
		close(up);
	if (parent && up < 0) {
		close(fd);
		return vmops_err(e, VMOPS_EXIT_FAILURE, "run directory %s: no parent", path);
	}
	return fd;
}

int vmops_rundir_open(const char *path, struct vmops_error *e)
{
	return walk(path, true, NULL, NULL, NULL, e);
}

int vmops_rundir_default(const char *worker, char *buf, size_t len, struct vmops_error *e)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	int n;

	if (geteuid() == 0)
		n = snprintf(buf, len, "/run/vmops/%s", worker);
	else if (xdg && xdg[0] == '/')
		n = snprintf(buf, len, "%s/vmops/%s", xdg, worker);
	else
		return vmops_err(e, VMOPS_EXIT_FAILURE,
				 "worker %s has no run directory and XDG_RUNTIME_DIR is not set:"
				 " give the worker one (vm-fleet worker add --run-dir) or set XDG_RUNTIME_DIR",
				 worker);
	if (n < 0 || (size_t)n >= len)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: run directory path too long", worker);
	return 0;
}

/* The API socket of a Cloud Hypervisor or Firecracker VMM: vmm-ID/vmops-vmm-ID.sock */
static void unlink_api_socket(int fd, const char *name)
{
	char sock[NAME_MAX + 1];

	if (!strncmp(name, "vmm-", 4) && name[4] && strspn(name + 4, "0123456789") == strlen(name + 4) &&
	    snprintf(sock, sizeof(sock), "vmops-%s.sock", name) < (int)sizeof(sock))
		(void)unlinkat(fd, sock, 0);
}

int vmops_rundir_remove(const char *path, int *kept, struct vmops_error *e)
{
	char name[NAME_MAX + 1] = "";
	bool missing = false;
	int parent = -1, fd;

	*kept = 0;
	/* The same checked walk as for making it: a directory that is not ours is refused, not emptied. */
	fd = walk(path, false, &parent, name, &missing, e);
	if (fd < 0)
		return missing ? 0 : -1;
	for (int i = 0; vmm_files[i]; i++)
		(void)unlinkat(fd, vmm_files[i], 0);   /* what is not there, or is not a file, stays */
	unlink_api_socket(fd, name);
	close(fd);
	if (unlinkat(parent, name, AT_REMOVEDIR) < 0) {
		int err = errno;
		close(parent);
		if (err == ENOTEMPTY || err == EEXIST) {
			*kept = 1;
			return 0;
		}
		return err == ENOENT ? 0 : vmops_err(e, VMOPS_EXIT_FAILURE, "rmdir %s: %s", path, strerror(err));
	}
	close(parent);
	return 0;
}
