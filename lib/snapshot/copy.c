/* SPDX-License-Identifier: MIT */
/* Sparse copy of a disk image into the snapshot directory (see snapshot.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../exitcodes.h"
#include "../macro.h"
#include "snapshot.h"

#define COPY_CHUNK (1u << 20)

static int io_err(const char *what, const char *name, struct vmops_error *err)
{
	return vmops_err(err, VMOPS_EXIT_FAILURE, "copy %s: %s: %s", name, what, strerror(errno));
}

/* Copy [off, end) of data. */
static int copy_range(int in, int out, off_t off, off_t end, char *buf, const char *name,
		      volatile sig_atomic_t *interrupted, struct vmops_error *err)
{
	while (off < end) {
		size_t want = end - off > COPY_CHUNK ? COPY_CHUNK : (size_t)(end - off);
		ssize_t n = pread(in, buf, want, off), w;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? io_err("read", name, err)
				     : vmops_err(err, VMOPS_EXIT_FAILURE, "copy %s: shrank while copying", name);
		if (interrupted && *interrupted)
			return vmops_err(err, VMOPS_EXIT_INTERRUPTED, "copy %s: interrupted", name);
		for (ssize_t done = 0; done < n; done += w) {
			w = pwrite(out, buf + done, (size_t)(n - done), off + done);
			if (w < 0 && errno == EINTR)
				w = 0;
			else if (w < 0)
				return io_err("write", name, err);
		}
		off += n;
	}
	return 0;
}

int vmops_copy_sparse(const char *src, int dirfd, const char *name,
		      volatile sig_atomic_t *interrupted, struct vmops_error *err)
{
	_cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC);
	_cleanup_close_ int out = -1;
	_cleanup_free_ char *buf = NULL;
	struct stat st;
	off_t data, hole = 0;

	if (in < 0 || fstat(in, &st) < 0)
		return io_err("open", src, err);
	if (!S_ISREG(st.st_mode))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "copy %s: not a regular file", src);
	out = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	buf = malloc(COPY_CHUNK);
	if (out < 0 || !buf)
		return io_err("create", name, err);
	while (hole < st.st_size) {
		data = lseek(in, hole, SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			break;  /* only a hole is left */
		if (data < 0)
			return io_err("seek", src, err);
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			return io_err("seek", src, err);
		if (copy_range(in, out, data, hole, buf, name, interrupted, err) < 0)
			return -1;
	}
	if (ftruncate(out, st.st_size) < 0 || fsync(out) < 0)
		return io_err("sync", name, err);
	return 0;
}
