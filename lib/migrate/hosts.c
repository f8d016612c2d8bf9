/* SPDX-License-Identifier: MIT */
/*
 * Where each VMM of an attempt runs: on this host, or on a worker's host
 * reached over ssh (lib/transport).  This file is the only place in
 * lib/migrate that tells the two apart; the phases use its handles and
 * helpers and stay one code path.  On a remote host every action runs
 * there: its QMP through the remote handle, its /proc for liveness, its
 * signals and run directory through the remote entry point.  A host that
 * does not answer makes a question UNREACHABLE, never "dead".
 */
#include <stdio.h>
#include <string.h>

#include "attempt.h"
#include "exitcodes.h"
#include "log.h"
#include "proc.h"
#include "transport/transport.h"
#include "vm.h"

typedef __typeof__(((struct attempt *)0)->hosts[0]) mig_host;

static mig_host *slot(struct attempt *at, long long vmm_id)
{
	return vmm_id == at->target_vmm_id ? &at->hosts[1] : &at->hosts[0];
}

int vmops_mig_transport(struct attempt *at, long long vmm_id, struct vmops_transport **t, struct vmops_error *e)
{
	mig_host *s = slot(at, vmm_id);

	if (!s->known || s->vmm_id != vmm_id) {
		vmops_transport_free(s->t);
		s->t = NULL;
		s->known = false;
		if (vmops_transport_for_vmm(at->c, vmm_id, &s->t, e) < 0)
			return -1;
		s->vmm_id = vmm_id;
		s->known = true;
	}
	*t = s->t;
	return 0;
}

void vmops_mig_hosts_free(struct attempt *at)
{
	for (size_t i = 0; i < sizeof(at->hosts) / sizeof(at->hosts[0]); i++) {
		vmops_transport_free(at->hosts[i].t);
		memset(&at->hosts[i], 0, sizeof(at->hosts[i]));
	}
}

struct vmops_hv *vmops_mig_attach(struct attempt *at, long long vmm_id, const struct vmops_vmm_info *info,
				  int timeout_ms, struct vmops_error *e)
{
	struct vmops_transport *t;
	struct vmops_vm_status st;
	struct vmops_hv *h;

	if (vmops_mig_transport(at, vmm_id, &t, e) < 0)
		return NULL;
	if (!t)
		return vmops_hv_attach(info, timeout_ms, e);
	/* Attached once its host answers and the VMM answers there. */
	if (vmops_transport_hello(t, NULL, timeout_ms + 10000, e) < 0 || !(h = vmops_remote_hv_attach(t, info, e)))
		return NULL;
	if (vmops_hv_status(h, &st, e) < 0) {
		vmops_hv_free(h);
		return NULL;
	}
	return h;
}

int vmops_mig_process(struct attempt *at, long long vmm_id, const struct vmops_vmm_info *info, struct vmops_error *e)
{
	struct vmops_transport *t;

	if (vmops_mig_transport(at, vmm_id, &t, e) < 0)
		return -1;
	if (info->pid <= 0)
		return VMOPS_PROC_DEAD;
	return t ? vmops_remote_check(t, info, e)
		 : vmops_proc_check(VMOPS_PROC_ROOT_DEFAULT, info->pid, info->start_time, NULL, e);
}

int vmops_mig_start_receiver(struct attempt *at, const struct vmops_spec *spec, const struct vmops_hv_launch_opts *lo,
			     const char *run_dir, const struct vmops_remote_listen *l, struct vmops_error *e)
{
	struct vmops_transport *t;
	char uri[300];

	if (vmops_mig_transport(at, at->target_vmm_id, &t, e) < 0)
		return -1;
	if (t) {
		at->target = vmops_remote_hv_prepare_incoming(t, spec, lo, l, &at->mp, RECEIVER_TIMEOUT_MS, e);
		/* Not asked at all (its host did not answer the greeting): no receiver there. */
		at->receiver_unasked = !at->target && e->code == VMOPS_EXIT_UNREACHABLE;
		return at->target ? 0 : -1;
	}
	if (vmops_vm_mkdir_p(run_dir, e) < 0)
		return -1;
	snprintf(uri, sizeof(uri), strchr(l->address, ':') ? "tcp:[%s]:%d" : "tcp:%s:%d", l->address,
		 vmops_vm_free_port(l->address, l->port_min, l->port_max, l->salt));
	at->target = vmops_hv_prepare_incoming(spec, lo, uri, &at->mp, RECEIVER_TIMEOUT_MS, e);
	return at->target ? 0 : -1;
}

int vmops_mig_stop_vmm(struct attempt *at, struct vmops_hv *h, long long vmm_id, const char *run_dir,
		       int *killed, struct vmops_error *e)
{
	struct vmops_transport *t;
	struct vmops_vmm_info info;
	int rc;

	if (h)
		info = *vmops_hv_info(h);
	else if (vmops_vm_load_info(at->c, vmm_id, &info, e) < 0)
		return -1;
	if (vmops_mig_transport(at, vmm_id, &t, e) < 0)
		return -1;
	if (t) {
		if (info.pid <= 0 && vmm_id == at->target_vmm_id && at->receiver_unasked)
			return 0;
		return vmops_remote_stop(t, &info, run_dir, VMOPS_REMOTE_STOP_PROCESS, killed, e);
	}
	rc = vmops_vm_stop_process(&info, run_dir, killed, e);
	if (h)
		(void)vmops_hv_is_alive(h);     /* reap it if it is our child */
	return rc;
}

void vmops_mig_run_dir_gone(struct attempt *at, struct vmops_hv *h, long long vmm_id, const char *known)
{
	struct vmops_vmm_info info = { 0 };
	struct vmops_error le = { 0 };
	struct vmops_transport *t;
	const char *dir = known;
	char name[24];

	if (vmm_id <= 0)
		return;
	if (h)
		info = *vmops_hv_info(h);
	else if (vmops_vm_load_info(at->c, vmm_id, &info, &le) < 0)
		memset(&info, 0, sizeof(info));
	if (!dir || !*dir)
		dir = info.run_dir;
	if (vmops_mig_transport(at, vmm_id, &t, &le) < 0) {
		vmops_warn("vmm %lld: run directory %s not removed: %s", vmm_id, dir, le.msg);
		return;
	}
	if (!t) {
		snprintf(name, sizeof(name), "%lld", vmm_id);
		vmops_vm_run_dir_gone(dir, "vmm", name);
		return;
	}
	/* Its host removes it (the process is gone: nothing is signalled). */
	info.vmm_id = (uint64_t)vmm_id;
	if (dir && *dir && vmops_remote_stop(t, &info, dir, VMOPS_REMOTE_STOP_RUN_DIR, NULL, &le) < 0)
		vmops_warn("vmm %lld: run directory %s on worker %s not removed: %s", vmm_id, dir,
			   vmops_transport_worker(t), le.msg);
}
