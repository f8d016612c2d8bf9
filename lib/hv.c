/* SPDX-License-Identifier: MIT */
/* Hypervisor driver selection and driver-independent VMM handling (see hv.h). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "hv.h"
#include "log.h"

struct vmops_hv {
	const struct vmops_hv_driver *drv;
	struct vmops_vmm_info info;
	bool gone;          /* process known to have exited (and been reaped) */
	void *priv;
};

static const struct vmops_hv_driver *const drivers[] = {
	&vmops_hv_qemu_driver,
};

const struct vmops_hv_driver *vmops_hv_driver_find(const char *kind)
{
	size_t i;

	for (i = 0; kind && i < sizeof(drivers) / sizeof(drivers[0]); i++)
		if (!strcmp(drivers[i]->kind, kind))
			return drivers[i];
	return NULL;
}

bool vmops_migrate_status_is_final(const char *status)
{
	return status && (!strcmp(status, "completed") || !strcmp(status, "failed") ||
			  !strcmp(status, "cancelled"));
}

static struct vmops_hv *hv_new(const char *kind, struct vmops_error *err)
{
	const struct vmops_hv_driver *drv = vmops_hv_driver_find(kind);
	struct vmops_hv *h;

	if (!drv) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "hypervisor %s: not supported by this build",
			  kind ? kind : "(none)");
		return NULL;
	}
	h = calloc(1, sizeof(*h));
	if (!h) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "hypervisor %s: out of memory", kind);
		return NULL;
	}
	h->drv = drv;
	snprintf(h->info.kind, sizeof(h->info.kind), "%s", drv->kind);
	return h;
}

struct vmops_hv *vmops_hv_launch(const struct vmops_spec *spec,
				 const struct vmops_hv_launch_opts *opts, struct vmops_error *err)
{
	struct vmops_hv *h = hv_new(spec->hypervisor, err);

	if (!h)
		return NULL;
	if (h->drv->launch(h, spec, opts, false, err) < 0) {
		vmops_hv_free(h);
		return NULL;
	}
	return h;
}

struct vmops_hv *vmops_hv_prepare_incoming(const struct vmops_spec *spec,
					   const struct vmops_hv_launch_opts *opts,
					   const char *uri, const struct vmops_migrate_params *mp,
					   int timeout_ms, struct vmops_error *err)
{
	struct vmops_hv *h = hv_new(spec->hypervisor, err);
	struct vmops_error e2;

	if (!h)
		return NULL;
	if (h->drv->launch(h, spec, opts, true, err) < 0) {
		vmops_hv_free(h);
		return NULL;
	}
	if (h->drv->prepare_incoming(h, uri, mp, timeout_ms, err) < 0) {
		/* Release the receiver's memory; keep the first error. */
		if (h->drv->destroy(h, 5000, &e2) < 0)
			vmops_warn("%s", e2.msg);
		vmops_hv_free(h);
		return NULL;
	}
	return h;
}

struct vmops_hv *vmops_hv_attach(const struct vmops_vmm_info *info, int timeout_ms,
				 struct vmops_error *err)
{
	struct vmops_hv *h = hv_new(info->kind, err);

	if (!h)
		return NULL;
	h->info = *info;
	h->info.is_child = false;
	if (h->drv->attach(h, timeout_ms, err) < 0) {
		vmops_hv_free(h);
		return NULL;
	}
	return h;
}

int vmops_hv_wait_ready(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	return h->drv->wait_ready(h, timeout_ms, err);
}

int vmops_hv_send(struct vmops_hv *h, const char *uri, const struct vmops_migrate_params *mp,
		  struct vmops_error *err)
{
	return h->drv->send(h, uri, mp, err);
}

int vmops_hv_progress(struct vmops_hv *h, struct vmops_migrate_progress *p,
		      struct vmops_error *err)
{
	return h->drv->progress(h, p, err);
}

int vmops_hv_cancel(struct vmops_hv *h, struct vmops_error *err)
{
	return h->drv->cancel(h, err);
}

int vmops_hv_destroy(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	return h->drv->destroy(h, timeout_ms, err);
}

int vmops_hv_pause(struct vmops_hv *h, struct vmops_error *err)
{
	return h->drv->pause(h, err);
}

int vmops_hv_resume(struct vmops_hv *h, struct vmops_error *err)
{
	return h->drv->resume(h, err);
}

int vmops_hv_status(struct vmops_hv *h, struct vmops_vm_status *st, struct vmops_error *err)
{
	return h->drv->status(h, st, err);
}

int vmops_hv_supports_multifd(struct vmops_hv *h, struct vmops_error *err)
{
	return h->drv->supports_multifd(h, err);
}

const struct vmops_vmm_info *vmops_hv_info(const struct vmops_hv *h)
{
	return &h->info;
}

const struct vmops_hv_driver *vmops_hv_get_driver(const struct vmops_hv *h)
{
	return h->drv;
}

struct vmops_vmm_info *vmops_hv_info_mut(struct vmops_hv *h)
{
	return &h->info;
}

void *vmops_hv_priv(const struct vmops_hv *h)
{
	return h->priv;
}

void vmops_hv_set_priv(struct vmops_hv *h, void *priv)
{
	h->priv = priv;
}

void vmops_hv_free(struct vmops_hv *h)
{
	if (!h)
		return;
	if (h->drv->release)
		h->drv->release(h);
	free(h);
}

void vmops_hv_freep(struct vmops_hv **h)
{
	vmops_hv_free(*h);
	*h = NULL;
}

/* --- processes ----------------------------------------------------------------- */

int vmops_hv_proc_stat(pid_t pid, char *state, unsigned long long *start_time)
{
	char path[64], buf[4096], *p, *f;
	ssize_t n;
	int fd, field;

	if (pid <= 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	/* comm (field 2) may contain anything, ')' included: parse after the last one. */
	p = strrchr(buf, ')');
	if (!p || p[1] != ' ')
		return -1;
	p += 2;
	if (state)
		*state = *p;
	/* p is field 3; field 22 is 19 fields further. */
	for (field = 3, f = p; field < 22; field++) {
		f = strchr(f, ' ');
		if (!f)
			return -1;
		f++;
	}
	if (start_time) {
		char *end;

		errno = 0;
		*start_time = strtoull(f, &end, 10);
		if (errno || end == f)
			return -1;
	}
	return 0;
}

bool vmops_hv_is_alive(struct vmops_hv *h)
{
	unsigned long long st;
	char state;

	if (h->gone || h->info.pid <= 0)
		return false;
	if (h->info.is_child) {
		int status;
		pid_t r = waitpid(h->info.pid, &status, WNOHANG);

		if (r == h->info.pid || (r < 0 && errno == ECHILD)) {
			if (r == h->info.pid)
				vmops_debug("%s vmm %llu: pid %d exited (status 0x%x)", h->info.kind,
					    (unsigned long long)h->info.vmm_id, (int)h->info.pid, status);
			h->gone = true;
			return false;
		}
	}
	if (vmops_hv_proc_stat(h->info.pid, &state, &st) < 0)
		goto gone;
	if (state == 'Z' || state == 'X')
		return false;   /* dead, though not reaped (yet) */
	if (h->info.start_time && st != h->info.start_time)
		goto gone;      /* the pid was reused */
	return true;
gone:
	h->gone = true;
	return false;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool wait_gone(struct vmops_hv *h, int ms)
{
	int64_t deadline = mono_ms() + ms;

	for (;;) {
		if (!vmops_hv_is_alive(h))
			return true;
		if (mono_ms() >= deadline)
			return false;
		sleep_ms(20);
	}
}

int vmops_hv_stop_process(struct vmops_hv *h, bool already_asked, int timeout_ms,
			  struct vmops_error *err)
{
	int polite, term;

	if (timeout_ms <= 0)
		timeout_ms = 1;
	polite = already_asked ? timeout_ms / 2 : 0;
	term = (timeout_ms - polite) / 2;
	if (wait_gone(h, polite))
		goto gone;
	/* vmops_hv_is_alive() just checked pid and start time. */
	vmops_debug("%s vmm %llu: sending SIGTERM to pid %d", h->info.kind,
		    (unsigned long long)h->info.vmm_id, (int)h->info.pid);
	kill(h->info.pid, SIGTERM);
	if (wait_gone(h, term))
		goto gone;
	vmops_debug("%s vmm %llu: sending SIGKILL to pid %d", h->info.kind,
		    (unsigned long long)h->info.vmm_id, (int)h->info.pid);
	kill(h->info.pid, SIGKILL);
	if (wait_gone(h, timeout_ms - polite - term > 1000 ? timeout_ms - polite - term : 1000))
		goto gone;
	return vmops_err(err, VMOPS_EXIT_TIMEOUT, "%s vmm %llu: pid %d still alive after SIGKILL",
			 h->info.kind, (unsigned long long)h->info.vmm_id, (int)h->info.pid);
gone:
	/* A zombie child of ours: reap it now. */
	if (h->info.is_child && !h->gone) {
		int status;

		if (waitpid(h->info.pid, &status, 0) == h->info.pid || errno == ECHILD)
			h->gone = true;
	}
	return 0;
}
