/* SPDX-License-Identifier: MIT */
/* A VMM's logs under a cap (see logcap.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exitcodes.h"
#include "logcap.h"

#define MAX_LOGS 4

uint64_t vmops_logcap_max(void)
{
	const char *v = getenv(VMOPS_LOG_MAX_ENV);
	unsigned long long n;
	char *end;

	if (!v || !*v)
		return VMOPS_LOG_MAX_DEFAULT;
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno || end == v)
		return VMOPS_LOG_MAX_DEFAULT;
	switch (*end) {
	case 'K': case 'k': n <<= 10; end++; break;
	case 'M': case 'm': n <<= 20; end++; break;
	case 'G': case 'g': n <<= 30; end++; break;
	default: break;
	}
	if (*end || n < VMOPS_LOG_MAX_MIN)
		return VMOPS_LOG_MAX_DEFAULT;
	return n;
}

/*
 * Copy the last `max` bytes of the first `size` bytes of fd into NAME.1,
 * then truncate fd.  Only up to `size`: the VMM goes on appending while we
 * copy, and reading on to the end made NAME.1 larger than the cap (seen
 * under ASan on a loaded machine).  Syscalls only (after fork).
 */
static void rotate(int dirfd, int fd, const char *old, off_t size, uint64_t max)
{
	char buf[16384];
	off_t from = size > (off_t)max ? size - (off_t)max : 0;
	int out = openat(dirfd, old, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);

	if (out >= 0) {
		while (from < size) {
			size_t want = size - from < (off_t)sizeof(buf) ? (size_t)(size - from) : sizeof(buf);
			ssize_t n = pread(fd, buf, want, from);

			if (n <= 0 || write(out, buf, (size_t)n) != n)
				break;
			from += n;
		}
		close(out);
	}
	if (ftruncate(fd, 0) < 0) {
		/* nothing to do: tried again in a second */
	}
}

static void check_logs(int dirfd, const char *const *names, char old[][NAME_MAX + 1], uint64_t max)
{
	for (int i = 0; names[i]; i++) {
		int fd = openat(dirfd, names[i], O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		struct stat st;

		if (fd < 0)
			continue;
		if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > max)
			rotate(dirfd, fd, old[i], st.st_size, max);
		close(fd);
	}
}

static _Noreturn void watch(int dirfd, int pidfd, const char *const *names, char old[][NAME_MAX + 1],
			    uint64_t max)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };

	for (;;) {
		struct stat st;
		int r = poll(&p, 1, 1000);

		if (fstat(dirfd, &st) < 0 || st.st_nlink == 0)
			_exit(0);               /* the run directory is gone */
		check_logs(dirfd, names, old, max);
		if (r > 0 || (r < 0 && errno != EINTR))
			_exit(0);               /* the VMM has ended */
	}
}

/* In the grandchild: nothing of the caller's but the two fds it needs. */
static void detach(int dirfd, int pidfd, int nullfd)
{
	setsid();
	prctl(PR_SET_NAME, "vmops-logcap");
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	dup2(nullfd, 0);
	dup2(nullfd, 1);
	dup2(nullfd, 2);
	for (int fd = 3; fd < 65536; fd++)
		if (fd != dirfd && fd != pidfd)
			close(fd);
}

int vmops_logcap_start(int dirfd, pid_t vmm, const char *const *names, uint64_t max, struct vmops_error *e)
{
	char old[MAX_LOGS][NAME_MAX + 1];
	int pidfd, nullfd, n = 0, st;
	pid_t mid;

	for (; names[n]; n++)
		if (n >= MAX_LOGS || snprintf(old[n], sizeof(old[n]), "%s.1", names[n]) >= (int)sizeof(old[n]))
			return vmops_err(e, VMOPS_EXIT_FAILURE, "log cap: too many or too long names");
	pidfd = (int)syscall(SYS_pidfd_open, vmm, 0);
	if (pidfd < 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "log cap: pidfd_open %d: %s", (int)vmm, strerror(errno));
	nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	mid = nullfd < 0 ? -1 : fork();
	if (mid == 0) {
		/* The watcher is a grandchild: the caller has no zombie to reap, ever. */
		if (fork() == 0) {
			detach(dirfd, pidfd, nullfd);
			watch(dirfd, pidfd, names, old, max);
		}
		_exit(0);
	}
	if (nullfd >= 0)
		close(nullfd);
	close(pidfd);
	if (mid < 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "log cap: fork: %s", strerror(errno));
	while (waitpid(mid, &st, 0) < 0 && errno == EINTR)
		;
	return 0;
}
