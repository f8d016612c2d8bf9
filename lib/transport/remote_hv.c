/* SPDX-License-Identifier: MIT */
/*
 * A VMM on another host: a hypervisor handle (lib/hv.h) whose every action
 * runs there through the ssh transport's remote entry point.  Its info is
 * the remote host's: pid and start time as that host's /proc sees them,
 * paths on that host.  Nothing here looks at this host's /proc: liveness
 * is asked of the VMM's own host, and a host that does not answer makes it
 * unknown (counted alive, never dead).
 *
 * Live migration runs over this handle as over a local one: each QMP
 * operation (send, progress, cancel, pause, resume, status) is one remote
 * action, answered by the VMM's own host.  A read-only question whose ssh
 * connection failed is followed by a greeting: if that is refused too, the
 * error is VMOPS_EXIT_UNREACHABLE (the host does not answer), else
 * VMOPS_EXIT_UNKNOWN.  An action that changes something stays UNKNOWN when
 * its connection failed: whether it happened there is not known.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "log.h"
#include "proc.h"
#include "transport/internal.h"
#include "transport/transport.h"

/* What an action may take beyond its own timeout: ssh's connection and round trips. */
#define SSH_MARGIN_MS 20000
#define LAUNCH_TIMEOUT_MS 60000

struct remote_priv {
	struct vmops_transport *t;
};

static struct vmops_transport *tr(struct vmops_hv *h)
{
	return ((struct remote_priv *)vmops_hv_priv(h))->t;
}

static const char *accel_word(enum vmops_accel a)
{
	return a == VMOPS_ACCEL_TCG ? "tcg" : a == VMOPS_ACCEL_KVM ? "kvm" : "auto";
}

/* The request of a launch: spec, identity, run directory, accel. */
static cJSON *launch_request(const struct vmops_spec *spec, const struct vmops_hv_launch_opts *opts)
{
	cJSON *req = cJSON_CreateObject();

	if (!req || !cJSON_AddItemToObject(req, "spec", vmops_spec_to_json(spec)) ||
	    !cJSON_AddNumberToObject(req, "vmm_id", (double)opts->vmm_id) ||
	    !cJSON_AddStringToObject(req, "run_dir", opts->run_dir ? opts->run_dir : "") ||
	    !cJSON_AddStringToObject(req, "accel", accel_word(opts->auto_accel))) {
		cJSON_Delete(req);
		return NULL;
	}
	return req;
}

static int remote_launch(struct vmops_hv *h, const struct vmops_spec *spec,
			 const struct vmops_hv_launch_opts *opts, bool incoming,
			 struct vmops_error *err)
{
	struct vmops_transport *t = tr(h);
	cJSON *req, *ans;
	int r;

	if (incoming)
		return vmops_err(err, VMOPS_EXIT_CONFLICT, "worker %s: a receiver over ssh starts through vmops_remote_hv_prepare_incoming",
				 vmops_transport_worker(t));
	if (vmops_transport_hello(t, NULL, SSH_MARGIN_MS, err) < 0)
		return -1;
	req = launch_request(spec, opts);
	if (!req)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "out of memory");
	ans = vmops_transport_call(t, "launch", req, LAUNCH_TIMEOUT_MS, err);
	cJSON_Delete(req);
	if (!ans)
		return -1;
	r = vmops_remote_info_from_json(cJSON_GetObjectItemCaseSensitive(ans, "vmm"),
					vmops_hv_info_mut(h), err);
	cJSON_Delete(ans);
	if (r < 0)
		/* It may have started: say so, so that the caller keeps its record. */
		return vmops_err(err, VMOPS_EXIT_UNKNOWN, "worker %s: launch answered without a usable vmm (%.200s)",
				 vmops_transport_worker(t), err->msg);
	vmops_hv_info_mut(h)->is_child = false;
	return 0;
}

/* Receivers start through vmops_remote_hv_prepare_incoming(): the port is chosen on their host. */
static int remote_prepare_incoming(struct vmops_hv *h, const char *uri, const struct vmops_migrate_params *mp,
				   int timeout_ms, struct vmops_error *err)
{
	(void)uri;
	(void)mp;
	(void)timeout_ms;
	return vmops_err(err, VMOPS_EXIT_CONFLICT, "worker %s: a receiver over ssh starts with its host's own port choice",
			 vmops_transport_worker(tr(h)));
}

static int remote_attach(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	(void)h;
	(void)timeout_ms;
	(void)err;
	return 0;
}

/* Run ACTION on this handle's VMM: {"vmm": info, "timeout_ms"?} plus `extra`'s
 * members (taken over).  `readonly`: see the top of this file. */
static cJSON *vmm_call_with(struct vmops_hv *h, const char *action, cJSON *extra, int timeout_ms, bool readonly,
			    struct vmops_error *err)
{
	cJSON *req = extra ? extra : cJSON_CreateObject(), *ans;
	struct vmops_error he = { 0 };

	if (!req || !cJSON_AddItemToObject(req, "vmm", vmops_remote_info_to_json(vmops_hv_info(h))) ||
	    (timeout_ms > 0 && !cJSON_AddNumberToObject(req, "timeout_ms", timeout_ms))) {
		cJSON_Delete(req);
		vmops_err(err, VMOPS_EXIT_FAILURE, "out of memory");
		return NULL;
	}
	ans = vmops_transport_call(tr(h), action, req, (timeout_ms > 0 ? timeout_ms : 0) + SSH_MARGIN_MS, err);
	cJSON_Delete(req);
	if (!ans && readonly && err->code == VMOPS_EXIT_UNKNOWN &&
	    vmops_transport_hello(tr(h), NULL, SSH_MARGIN_MS, &he) < 0 && he.code == VMOPS_EXIT_UNREACHABLE)
		*err = he;
	return ans;
}

static cJSON *vmm_call(struct vmops_hv *h, const char *action, int timeout_ms, struct vmops_error *err)
{
	return vmm_call_with(h, action, NULL, timeout_ms, false, err);
}

static int vmm_do(struct vmops_hv *h, const char *action, bool readonly, struct vmops_error *err)
{
	cJSON *ans = vmm_call_with(h, action, NULL, 0, readonly, err);

	cJSON_Delete(ans);
	return ans ? 0 : -1;
}

static int remote_wait_ready(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	cJSON *ans = vmm_call(h, "wait-ready", timeout_ms > 0 ? timeout_ms : 30000, err);

	cJSON_Delete(ans);
	return ans ? 0 : -1;
}

static int remote_destroy(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	cJSON *ans = vmm_call(h, "destroy", timeout_ms > 0 ? timeout_ms : 1, err);

	cJSON_Delete(ans);
	return ans ? 0 : -1;
}

int vmops_remote_check(struct vmops_transport *t, const struct vmops_vmm_info *info, struct vmops_error *e)
{
	static const char *const names[] = { [VMOPS_PROC_ALIVE] = "alive", [VMOPS_PROC_DEAD] = "dead",
					     [VMOPS_PROC_REUSED] = "reused", [VMOPS_PROC_UNKNOWN] = "unknown" };
	cJSON *req = cJSON_CreateObject(), *ans;
	const char *p;
	int r = VMOPS_PROC_UNKNOWN;

	if (!req || !cJSON_AddItemToObject(req, "vmm", vmops_remote_info_to_json(info))) {
		cJSON_Delete(req);
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	}
	ans = vmops_transport_call(t, "check", req, SSH_MARGIN_MS, e);
	cJSON_Delete(req);
	if (!ans) {
		struct vmops_error he = { 0 };

		if (e->code == VMOPS_EXIT_UNKNOWN && vmops_transport_hello(t, NULL, SSH_MARGIN_MS, &he) < 0 &&
		    he.code == VMOPS_EXIT_UNREACHABLE)
			*e = he;
		return -1;
	}
	p = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "process"));
	for (size_t i = 0; p && i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i] && !strcmp(names[i], p))
			r = (int)i;
	cJSON_Delete(ans);
	return r;
}

/* 1 alive, 0 gone (dead, or its pid is another process's), -1 unknown. */
static int remote_is_alive(struct vmops_hv *h)
{
	struct vmops_error e = { 0 };
	int r;

	if (vmops_hv_info(h)->pid <= 0)
		return 0;
	r = vmops_remote_check(tr(h), vmops_hv_info(h), &e);
	if (r < 0)
		vmops_debug("%s", e.msg);
	return r == VMOPS_PROC_ALIVE ? 1 : r == VMOPS_PROC_DEAD || r == VMOPS_PROC_REUSED ? 0 : -1;
}

static int remote_send(struct vmops_hv *h, const char *uri, const struct vmops_migrate_params *mp,
		       struct vmops_error *err)
{
	cJSON *req = cJSON_CreateObject(), *ans;

	if (!req || !cJSON_AddStringToObject(req, "uri", uri ? uri : "") ||
	    !cJSON_AddItemToObject(req, "mp", vmops_remote_mp_to_json(mp))) {
		cJSON_Delete(req);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "out of memory");
	}
	ans = vmm_call_with(h, "send", req, 0, false, err);
	cJSON_Delete(ans);
	return ans ? 0 : -1;
}

static int remote_progress(struct vmops_hv *h, struct vmops_migrate_progress *p, struct vmops_error *err)
{
	cJSON *ans = vmm_call_with(h, "progress", NULL, 0, true, err);

	if (!ans)
		return -1;
	vmops_remote_progress_from_json(cJSON_GetObjectItemCaseSensitive(ans, "progress"), p);
	cJSON_Delete(ans);
	return 0;
}

static int remote_cancel(struct vmops_hv *h, struct vmops_error *err)
{
	return vmm_do(h, "cancel", false, err);
}

static int remote_pause(struct vmops_hv *h, struct vmops_error *err)
{
	return vmm_do(h, "pause", false, err);
}

static int remote_resume(struct vmops_hv *h, struct vmops_error *err)
{
	return vmm_do(h, "resume", false, err);
}

static int remote_status(struct vmops_hv *h, struct vmops_vm_status *st, struct vmops_error *err)
{
	cJSON *ans = vmm_call_with(h, "status", NULL, 0, true, err);
	const char *s;

	memset(st, 0, sizeof(*st));
	if (!ans)
		return -1;
	s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "status"));
	snprintf(st->status, sizeof(st->status), "%s", s ? s : "unknown");
	st->running = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ans, "running"));
	cJSON_Delete(ans);
	return 0;
}

static int remote_multifd(struct vmops_hv *h, struct vmops_error *err)
{
	cJSON *ans = vmm_call_with(h, "multifd", NULL, 0, true, err);
	int r;

	if (!ans)
		return -1;
	r = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ans, "supported")) ? 1 : 0;
	cJSON_Delete(ans);
	return r;
}

static void remote_release(struct vmops_hv *h)
{
	free(vmops_hv_priv(h));
	vmops_hv_set_priv(h, NULL);
}

static const struct vmops_hv_driver remote_driver = {
	.kind = "remote",
	.launch = remote_launch,
	.attach = remote_attach,
	.wait_ready = remote_wait_ready,
	.prepare_incoming = remote_prepare_incoming,
	.send = remote_send,
	.progress = remote_progress,
	.cancel = remote_cancel,
	.destroy = remote_destroy,
	.pause = remote_pause,
	.resume = remote_resume,
	.status = remote_status,
	.supports_multifd = remote_multifd,
	.is_alive = remote_is_alive,
	.release = remote_release,
};

static struct vmops_hv *remote_new(struct vmops_transport *t, const char *kind,
				   volatile sig_atomic_t *interrupted, struct vmops_error *e)
{
	struct vmops_hv *h = vmops_hv_new_driven(&remote_driver, kind, interrupted, e);
	struct remote_priv *p;

	if (!h)
		return NULL;
	p = calloc(1, sizeof(*p));
	if (!p) {
		vmops_hv_free(h);
		vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
		return NULL;
	}
	p->t = t;
	vmops_hv_set_priv(h, p);
	return h;
}

struct vmops_hv *vmops_remote_hv_launch(struct vmops_transport *t, const struct vmops_spec *spec,
					const struct vmops_hv_launch_opts *opts,
					struct vmops_error *e)
{
	struct vmops_hv *h;

	if (!vmops_hv_driver_find(spec->hypervisor)) {
		vmops_err(e, VMOPS_EXIT_HYPERVISOR, "hypervisor %s: not supported by this build", spec->hypervisor);
		return NULL;
	}
	h = remote_new(t, spec->hypervisor, opts->interrupted, e);
	if (!h)
		return NULL;
	vmops_hv_info_mut(h)->vmm_id = opts->vmm_id;
	if (remote_launch(h, spec, opts, false, e) < 0) {
		vmops_hv_free(h);
		return NULL;
	}
	return h;
}

struct vmops_hv *vmops_remote_hv_attach(struct vmops_transport *t,
					const struct vmops_vmm_info *info, struct vmops_error *e)
{
	struct vmops_hv *h = remote_new(t, info->kind, NULL, e);

	if (!h)
		return NULL;
	*vmops_hv_info_mut(h) = *info;
	vmops_hv_info_mut(h)->is_child = false;
	return h;
}

struct vmops_hv *vmops_remote_hv_prepare_incoming(struct vmops_transport *t, const struct vmops_spec *spec,
						  const struct vmops_hv_launch_opts *opts,
						  const struct vmops_remote_listen *l,
						  const struct vmops_migrate_params *mp, int timeout_ms,
						  struct vmops_error *e)
{
	struct vmops_hv *h;
	cJSON *req, *ans;
	int r;

	if (vmops_transport_hello(t, NULL, SSH_MARGIN_MS, e) < 0)
		return NULL;
	if (!(h = remote_new(t, spec->hypervisor, opts->interrupted, e)))
		return NULL;
	vmops_hv_info_mut(h)->vmm_id = opts->vmm_id;
	req = launch_request(spec, opts);
	if (!req || !cJSON_AddStringToObject(req, "address", l->address) ||
	    !cJSON_AddNumberToObject(req, "port_min", (double)l->port_min) ||
	    !cJSON_AddNumberToObject(req, "port_max", (double)l->port_max) ||
	    !cJSON_AddNumberToObject(req, "salt", (double)(l->salt < 0 ? -l->salt : l->salt)) ||
	    !cJSON_AddBoolToObject(req, "incoming_paused", opts->incoming_paused) ||
	    !cJSON_AddNumberToObject(req, "timeout_ms", timeout_ms) ||
	    !cJSON_AddItemToObject(req, "mp", vmops_remote_mp_to_json(mp))) {
		cJSON_Delete(req);
		vmops_hv_free(h);
		vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
		return NULL;
	}
	ans = vmops_transport_call(t, "prepare-incoming", req, LAUNCH_TIMEOUT_MS + timeout_ms, e);
	cJSON_Delete(req);
	r = ans ? vmops_remote_info_from_json(cJSON_GetObjectItemCaseSensitive(ans, "vmm"), vmops_hv_info_mut(h), e) : -1;
	cJSON_Delete(ans);
	if (r < 0) {
		vmops_hv_free(h);
		if (ans)   /* it may run there: the caller keeps its record */
			e->code = VMOPS_EXIT_UNKNOWN;
		return NULL;
	}
	vmops_hv_info_mut(h)->is_child = false;
	return h;
}

int vmops_remote_stop(struct vmops_transport *t, const struct vmops_vmm_info *info, const char *run_dir,
		      unsigned flags, int *killed, struct vmops_error *e)
{
	cJSON *req = cJSON_CreateObject(), *ans;
	const cJSON *k;

	if (vmops_transport_hello(t, NULL, SSH_MARGIN_MS, e) < 0) {
		cJSON_Delete(req);
		return -1;
	}
	if (!req || !cJSON_AddItemToObject(req, "vmm", vmops_remote_info_to_json(info)) ||
	    !cJSON_AddStringToObject(req, "run_dir", run_dir ? run_dir : "") ||
	    !cJSON_AddBoolToObject(req, "stop", (flags & VMOPS_REMOTE_STOP_PROCESS) != 0) ||
	    !cJSON_AddBoolToObject(req, "remove_run_dir", (flags & VMOPS_REMOTE_STOP_RUN_DIR) != 0)) {
		cJSON_Delete(req);
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	}
	ans = vmops_transport_call(t, "stop", req, SSH_MARGIN_MS + 10000, e);
	cJSON_Delete(req);
	if (!ans)
		return -1;
	k = cJSON_GetObjectItemCaseSensitive(ans, "killed");
	if (killed && cJSON_IsNumber(k) && k->valuedouble > 0)
		*killed += (int)k->valuedouble;
	cJSON_Delete(ans);
	return 0;
}
