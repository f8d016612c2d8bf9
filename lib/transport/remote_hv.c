/* SPDX-License-Identifier: MIT */
/*
 * A VMM on another host: a hypervisor handle (lib/hv.h) whose every action
 * runs there through the ssh transport's remote entry point.  Its info is
 * the remote host's: pid and start time as that host's /proc sees them,
 * paths on that host.  Nothing here looks at this host's /proc: liveness
 * is asked of the VMM's own host, and a host that does not answer makes it
 * unknown (counted alive, never dead).
 *
 * Live migration over this handle (QMP reached through the control
 * master's UNIX-socket forwarding) is not built yet: those operations say
 * so (VMOPS_EXIT_CONFLICT) rather than act on this host.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "log.h"
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

static int remote_launch(struct vmops_hv *h, const struct vmops_spec *spec,
			 const struct vmops_hv_launch_opts *opts, bool incoming,
			 struct vmops_error *err)
{
	struct vmops_transport *t = tr(h);
	cJSON *req, *ans;
	int r;

	if (incoming)
		return vmops_err(err, VMOPS_EXIT_CONFLICT, "worker %s: receiving a migration over ssh is not supported yet",
				 vmops_transport_worker(t));
	if (vmops_transport_hello(t, NULL, SSH_MARGIN_MS, err) < 0)
		return -1;
	req = cJSON_CreateObject();
	if (!req || !cJSON_AddItemToObject(req, "spec", vmops_spec_to_json(spec)) ||
	    !cJSON_AddNumberToObject(req, "vmm_id", (double)opts->vmm_id) ||
	    !cJSON_AddStringToObject(req, "run_dir", opts->run_dir ? opts->run_dir : "") ||
	    !cJSON_AddStringToObject(req, "accel", accel_word(opts->auto_accel))) {
		cJSON_Delete(req);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "out of memory");
	}
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

static int remote_attach(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	(void)h;
	(void)timeout_ms;
	(void)err;
	return 0;
}

/* Run ACTION on this handle's VMM: {"vmm": info, "timeout_ms"?} */
static cJSON *vmm_call(struct vmops_hv *h, const char *action, int timeout_ms,
		       struct vmops_error *err)
{
	cJSON *req = cJSON_CreateObject(), *ans;

	if (!req || !cJSON_AddItemToObject(req, "vmm", vmops_remote_info_to_json(vmops_hv_info(h))) ||
	    (timeout_ms > 0 && !cJSON_AddNumberToObject(req, "timeout_ms", timeout_ms))) {
		cJSON_Delete(req);
		vmops_err(err, VMOPS_EXIT_FAILURE, "out of memory");
		return NULL;
	}
	ans = vmops_transport_call(tr(h), action, req, (timeout_ms > 0 ? timeout_ms : 0) + SSH_MARGIN_MS, err);
	cJSON_Delete(req);
	return ans;
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

/* 1 alive, 0 gone (dead, or its pid is another process's), -1 unknown. */
static int remote_is_alive(struct vmops_hv *h)
{
	struct vmops_error e = { 0 };
	cJSON *ans;
	const char *p;
	int r = -1;

	if (vmops_hv_info(h)->pid <= 0)
		return 0;
	ans = vmm_call(h, "check", 0, &e);
	p = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "process"));
	if (p && !strcmp(p, "alive"))
		r = 1;
	else if (p && (!strcmp(p, "dead") || !strcmp(p, "reused")))
		r = 0;
	if (!ans)
		vmops_debug("%s", e.msg);
	cJSON_Delete(ans);
	return r;
}

static int not_yet(struct vmops_hv *h, const char *what, struct vmops_error *err)
{
	return vmops_err(err, VMOPS_EXIT_CONFLICT, "worker %s: %s of a vmm over ssh is not supported yet",
			 vmops_transport_worker(tr(h)), what);
}

static int remote_progress(struct vmops_hv *h, struct vmops_migrate_progress *p, struct vmops_error *err)
{
	(void)p;
	return not_yet(h, "migration progress", err);
}

static int remote_cancel(struct vmops_hv *h, struct vmops_error *err)
{
	return not_yet(h, "migration cancel", err);
}

static int remote_pause(struct vmops_hv *h, struct vmops_error *err)
{
	return not_yet(h, "pause", err);
}

static int remote_resume(struct vmops_hv *h, struct vmops_error *err)
{
	return not_yet(h, "resume", err);
}

static int remote_status(struct vmops_hv *h, struct vmops_vm_status *st, struct vmops_error *err)
{
	(void)st;
	return not_yet(h, "status", err);
}

static int remote_multifd(struct vmops_hv *h, struct vmops_error *err)
{
	return not_yet(h, "migration", err);
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
