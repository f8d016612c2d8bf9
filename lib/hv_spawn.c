/* SPDX-License-Identifier: MIT */
/* Starting a VMM process, shared by every driver (see hv.h, "for drivers"). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exitcodes.h"
#include "hv.h"
#include "macro.h"

#define VMM_FMT "%s vmm %" PRIu64
#define VMM_ARG(h) vmops_hv_info(h)->kind, vmops_hv_info(h)->vmm_id

static const char *errstr(int e, char *buf, size_t size)
{
	snprintf(buf, size, "%s", strerror(e));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

char *vmops_hv_find_binary(const char *name)
{
	_cleanup_free_ char *path = NULL;
	const char *env = getenv("PATH");
	char *dir, *save = NULL;

	if (strchr(name, '/'))
		return access(name, X_OK) == 0 ? strdup(name) : NULL;
	path = strdup(env && *env ? env : "/usr/local/bin:/usr/bin:/bin");
	if (!path)
		return NULL;
	for (dir = strtok_r(path, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
		char *full;

		if (asprintf(&full, "%s/%s", *dir ? dir : ".", name) < 0)
			return NULL;
		if (access(full, X_OK) == 0)
			return full;
		free(full);
	}
	return NULL;
}

/* In the child: only async-signal-safe calls.  An exec that fails says why on pipefd. */
static _Noreturn void child(const char *binary, char *const *argv, int nullfd, int logfd,
			    int pipefd, bool die_with_parent)
{
	sigset_t all;
	int e;

	if (die_with_parent)
		prctl(PR_SET_PDEATHSIG, SIGKILL);
	setsid();
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	signal(SIGPIPE, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	if (dup2(nullfd, STDIN_FILENO) >= 0 && dup2(logfd, STDOUT_FILENO) >= 0 &&
	    dup2(logfd, STDERR_FILENO) >= 0) {
		/* nothing else of ours leaks into the VMM */
		if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
			for (int fd = 3; fd < 4096; fd++)
				if (fd != pipefd)
					fcntl(fd, F_SETFD, FD_CLOEXEC);
		execv(binary, argv);
	}
	e = errno;
	if (write(pipefd, &e, sizeof(e)) < 0) {
		/* nothing to do */
	}
	_exit(127);
}

int vmops_hv_spawn(struct vmops_hv *h, const char *binary, char *const *argv, bool die_with_parent,
		   int logfd, int nullfd, struct vmops_error *err)
{
	int pipefd[2], child_errno = 0, status;
	char eb[128];
	ssize_t n;
	pid_t pid;

	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": pipe: %s", VMM_ARG(h),
				 errstr(errno, eb, sizeof(eb)));
	pid = fork();
	if (pid < 0) {
		close(pipefd[0]);
		close(pipefd[1]);
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": fork: %s", VMM_ARG(h),
				 errstr(errno, eb, sizeof(eb)));
	}
	if (pid == 0)
		child(binary, argv, nullfd, logfd, pipefd[1], die_with_parent);
	close(pipefd[1]);
	do
		n = read(pipefd[0], &child_errno, sizeof(child_errno));
	while (n < 0 && errno == EINTR);
	close(pipefd[0]);
	if (n == (ssize_t)sizeof(child_errno)) {
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		vmops_hv_info_mut(h)->pid = 0;
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": exec %s: %s", VMM_ARG(h),
				 binary, errstr(child_errno, eb, sizeof(eb)));
	}
	/* its start time, or it is stopped: signalling it later needs it */
	if (vmops_hv_adopt_child(h, pid, err) < 0) {
		vmops_hv_info_mut(h)->pid = 0;
		return -1;
	}
	return 0;
}

void vmops_hv_log_tail(const struct vmops_hv *h, char *out, size_t size)
{
	char buf[1024], *end, *start;
	ssize_t n;
	off_t sz;
	int fd;

	out[0] = '\0';
	fd = open(vmops_hv_info(h)->stderr_log, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	sz = lseek(fd, 0, SEEK_END);
	lseek(fd, sz > (off_t)sizeof(buf) - 1 ? sz - (off_t)sizeof(buf) + 1 : 0, SEEK_SET);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	end = buf + n;
	while (end > buf && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
		*--end = '\0';
	start = strrchr(buf, '\n');
	snprintf(out, size, "%.*s", (int)size - 1, start ? start + 1 : buf);
}
