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
#include "hv/rest.h"
#include "log.h"
#include "proc.h"

struct vmops_hv {
	const struct vmops_hv_driver *drv;
	struct vmops_vmm_info info;
	bool gone;          /* process known to have exited (and been reaped) */
	volatile sig_atomic_t *interrupted;  /* from the launch options; may be NULL */
	void *priv;
};

static const struct vmops_hv_driver *const drivers[] = {
	&vmops_hv_qemu_driver, &vmops_hv_chv_driver, &vmops_hv_firecracker_driver,
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

struct vmops_hv *vmops_hv_new_driven(const struct vmops_hv_driver *drv, const char *kind,
				     volatile sig_atomic_t *interrupted, struct vmops_error *err)
{
	struct vmops_hv *h = calloc(1, sizeof(*h));

	if (!h) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "hypervisor %s: out of memory", kind);
		return NULL;
	}
	h->drv = drv;
	h->interrupted = interrupted;
	snprintf(h->info.kind, sizeof(h->info.kind), "%s", kind);
	return h;
}

struct vmops_hv *vmops_hv_launch(const struct vmops_spec *spec,
				 const struct vmops_hv_launch_opts *opts, struct vmops_error *err)
{
	struct vmops_hv *h = hv_new(spec->hypervisor, err);

	if (!h)
		return NULL;
	h->interrupted = opts->interrupted;
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
	h->interrupted = opts->interrupted;
	if (!h->drv->prepare_incoming) {
		vmops_err(err, VMOPS_EXIT_CONFLICT, "%s: live migration: not supported",
			  h->drv->kind);
		vmops_hv_free(h);
		return NULL;
	}
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

struct vmops_hv *vmops_hv_launch_for_restore(const struct vmops_spec *spec,
					     const struct vmops_hv_launch_opts *opts,
					     struct vmops_error *err)
{
	struct vmops_hv *h = hv_new(spec->hypervisor, err);
	struct vmops_hv_launch_opts lo;

	if (!h)
		return NULL;
	h->interrupted = opts->interrupted;
	if (!h->drv->restore) {
		vmops_err(err, VMOPS_EXIT_CONFLICT, "%s: snapshot restore: not supported",
			  h->drv->kind);
		vmops_hv_free(h);
		return NULL;
	}
	/* Whatever the snapshot's run state, the guest runs only after resume. */
	lo = *opts;
	lo.incoming_paused = true;
	if (h->drv->launch(h, spec, &lo, true, err) < 0) {
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

enum liveness { LIVE_DEAD, LIVE_ALIVE, LIVE_UNKNOWN };

static const char *kind_of(const struct vmops_hv *h)
{
	return h->info.kind;
}

/*
 * Is the VMM's process there?  Our own unreaped child cannot have its pid
 * reused, so waitpid() answers for it.  Anything else goes by pid and start
 * time through vmops_proc_check(); without a recorded start time a live pid
 * is unknown.  Only a certain death marks the handle gone.
 */
static enum liveness liveness(struct vmops_hv *h)
{
	struct vmops_error e = { 0 };
	int r;

	if (h->gone || h->info.pid <= 0)
		return LIVE_DEAD;
	if (h->drv->is_alive) {
		/* Another host's process: only its host can tell. */
		r = h->drv->is_alive(h);
		return r > 0 ? LIVE_ALIVE : r == 0 ? LIVE_DEAD : LIVE_UNKNOWN;
	}
	if (h->info.is_child) {
		int status;
		pid_t w = waitpid(h->info.pid, &status, WNOHANG);

		if (w == 0)
			return LIVE_ALIVE;
		if (w == h->info.pid)
			vmops_debug("%s vmm %llu: pid %d exited (status 0x%x)", kind_of(h),
				    (unsigned long long)h->info.vmm_id, (int)h->info.pid, status);
		if (w == h->info.pid || (w < 0 && errno == ECHILD)) {
			h->gone = true;
			return LIVE_DEAD;
		}
		/* waitpid failed otherwise: ask /proc */
	}
	r = vmops_proc_check(NULL, h->info.pid, h->info.start_time, NULL, &e);
	switch (r) {
	case VMOPS_PROC_ALIVE:
		return LIVE_ALIVE;
	case VMOPS_PROC_DEAD:
	case VMOPS_PROC_REUSED:
		/* gone, or a zombie nobody reaps, or the pid is another process now */
		if (!h->info.is_child)
			h->gone = true;
		return LIVE_DEAD;
	case VMOPS_PROC_UNKNOWN:
		return LIVE_UNKNOWN;
	default:
		vmops_debug("%s vmm %llu: %s", kind_of(h), (unsigned long long)h->info.vmm_id, e.msg);
		return LIVE_UNKNOWN;
	}
}

bool vmops_hv_is_alive(struct vmops_hv *h)
{
	return liveness(h) != LIVE_DEAD;
}

bool vmops_hv_interrupted(const struct vmops_hv *h)
{
	return h->interrupted && *h->interrupted;
}

int vmops_hv_adopt_child(struct vmops_hv *h, pid_t pid, struct vmops_error *err)
{
	struct vmops_proc_stat st;
	struct vmops_error e = { 0 }, ke = { 0 };
	int status;

	h->info.pid = pid;
	h->info.is_child = true;
	h->info.start_time = 0;
	if (vmops_proc_read_stat(NULL, pid, &st, &e) == 0 && st.starttime) {
		h->info.start_time = st.starttime;
		return 0;
	}
	if (vmops_proc_signal_child(pid, SIGKILL, &ke) == VMOPS_PROC_SIG_ERROR)
		vmops_warn("%s vmm %llu: pid %d: %s", kind_of(h), (unsigned long long)h->info.vmm_id,
			   (int)pid, ke.msg);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	h->gone = true;
	return vmops_err(err, VMOPS_EXIT_HYPERVISOR,
			 "%s vmm %llu: pid %d: cannot read its start time (%s): stopped it, since it could not be signalled safely later",
			 kind_of(h), (unsigned long long)h->info.vmm_id, (int)pid,
			 e.msg[0] ? e.msg : "start time 0");
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

/* Wait up to ms for the process to be certainly gone. */
static bool wait_gone(struct vmops_hv *h, int ms)
{
	int64_t deadline = mono_ms() + ms;

	for (;;) {
		if (liveness(h) == LIVE_DEAD)
			return true;
		if (mono_ms() >= deadline)
			return false;
		sleep_ms(20);
	}
}

int vmops_hv_stop_process(struct vmops_hv *h, bool already_asked, int timeout_ms,
			  struct vmops_error *err)
{
	struct vmops_proc_term_outcome out;
	struct vmops_error pe = { 0 };
	unsigned long long vid = (unsigned long long)h->info.vmm_id;
	int polite, r;

	if (timeout_ms <= 0)
		timeout_ms = 1;
	polite = already_asked ? timeout_ms / 2 : 0;
	if (wait_gone(h, polite))
		goto gone;
	if (liveness(h) == LIVE_UNKNOWN)
		return vmops_err(err, VMOPS_EXIT_CONFLICT,
				 "%s vmm %llu: pid %d is alive and no start time is recorded: cannot tell whether it is this vmm; not signalled",
				 kind_of(h), vid, (int)h->info.pid);
	vmops_debug("%s vmm %llu: terminating pid %d (start time %llu)", kind_of(h), vid,
		    (int)h->info.pid, h->info.start_time);
	r = vmops_proc_terminate(h->info.pid, h->info.start_time,
				 (unsigned)(timeout_ms - polite > 1 ? (timeout_ms - polite) / 2 : 1), &out, &pe);
	if (r == VMOPS_PROC_SIG_REFUSED) {
		/* the pid is another process's now: ours had exited; nothing sent */
		vmops_debug("%s vmm %llu: %s", kind_of(h), vid, pe.msg);
		h->gone = !h->info.is_child;
		goto gone;
	}
	if (r != VMOPS_PROC_SIG_SENT) {
		*err = pe;
		if (!err->code)
			err->code = VMOPS_EXIT_FAILURE;
		return vmops_err_prefix(err, "%s vmm %llu", kind_of(h), vid);
	}
	if (out.how == VMOPS_PROC_TERM_KILL)
		vmops_debug("%s vmm %llu: pid %d needed SIGKILL", kind_of(h), vid, (int)h->info.pid);
gone:
	/* A zombie child of ours: reap it now. */
	if (h->info.is_child && !h->gone) {
		int status;
		pid_t w;

		while ((w = waitpid(h->info.pid, &status, 0)) < 0 && errno == EINTR)
			;
		if (w == h->info.pid || errno == ECHILD)
			h->gone = true;
	}
	return 0;
}
