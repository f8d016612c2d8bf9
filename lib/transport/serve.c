/* SPDX-License-Identifier: MIT */
/*
 * The remote side of the ssh transport: `vm-fleet remote ACTION` on the
 * worker's host, its request as JSON on stdin.  Every action acts on this
 * host only (its /proc, its processes, its files) and never on the
 * database: the caller records what happened.
 *
 *   hello       {} -> {"host_id", "version"}
 *   launch      {"spec", "vmm_id", "run_dir", "accel"} -> the VMM's info
 *               (pid and start time as this host's /proc sees them)
 *   wait-ready  {"vmm", "timeout_ms"} -> {}
 *   check       {"vmm"} -> {"process": "alive" | "dead" | "reused" | "unknown"}
 *   destroy     {"vmm", "timeout_ms"} -> {"was_running"}; the run directory
 *               goes too once the VMM is gone (only the files a VMM leaves)
 *
 * Every request may carry "host_id", the identity the database records for
 * the worker: a host that is not that one refuses (VMOPS_EXIT_WRONG_HOST).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "host.h"
#include "log.h"
#include "proc.h"
#include "rundir.h"
#include "spec.h"
#include "transport/internal.h"
#include "transport/transport.h"
#include "vm.h"

#ifndef VMOPS_VERSION
#define VMOPS_VERSION "0.0.0"
#endif

typedef int (*action_fn)(const cJSON *req, cJSON *ans, struct vmops_error *e);

static int timeout_of(const cJSON *req, struct vmops_error *e)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(req, "timeout_ms");

	if (!cJSON_IsNumber(t) || t->valuedouble < 1 || t->valuedouble > 86400000.0)
		return vmops_err(e, VMOPS_EXIT_USAGE, "timeout_ms: missing or out of range");
	return (int)t->valuedouble;
}

static int do_hello(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	char id[VMOPS_HOST_ID_MAX];

	(void)req;
	if (vmops_host_id(getenv(VMOPS_HOST_ID_ENV), id, sizeof(id), e) < 0)
		return -1;
	cJSON_AddStringToObject(ans, "host_id", id);
	cJSON_AddStringToObject(ans, "version", VMOPS_VERSION);
	return 0;
}

/* run_dir must be DIR/vmm-ID for this VMM: the parent is made, then the VMM's. */
static int check_run_dir(const char *run_dir, uint64_t vmm_id, char *parent, size_t len,
			 struct vmops_error *e)
{
	char want[40];
	const char *slash = run_dir ? strrchr(run_dir, '/') : NULL;

	snprintf(want, sizeof(want), "vmm-%llu", (unsigned long long)vmm_id);
	if (!run_dir || run_dir[0] != '/' || !slash || slash == run_dir || strcmp(slash + 1, want) != 0 ||
	    (size_t)(slash - run_dir) >= len)
		return vmops_err(e, VMOPS_EXIT_USAGE, "run_dir: must be an absolute path ending in /%s", want);
	memcpy(parent, run_dir, (size_t)(slash - run_dir));
	parent[slash - run_dir] = '\0';
	return 0;
}

static int do_launch(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(req, "vmm_id");
	const char *run_dir = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "run_dir"));
	const char *accel = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "accel"));
	_cleanup_spec_ struct vmops_spec *spec = NULL;
	struct vmops_hv_launch_opts opts = { 0 };
	char parent[PATH_MAX];
	struct vmops_hv *h;
	cJSON *info;

	if (!cJSON_IsNumber(id) || id->valuedouble < 1 || id->valuedouble > 9007199254740991.0)
		return vmops_err(e, VMOPS_EXIT_USAGE, "vmm_id: missing or out of range");
	opts.vmm_id = (uint64_t)id->valuedouble;
	if (!(spec = vmops_spec_from_json(cJSON_GetObjectItemCaseSensitive(req, "spec"), e))) {
		e->code = VMOPS_EXIT_USAGE;   /* a bad request */
		return vmops_err_prefix(e, "launch spec");
	}
	if (check_run_dir(run_dir, opts.vmm_id, parent, sizeof(parent), e) < 0)
		return -1;
	if (!accel || !strcmp(accel, "auto"))
		opts.auto_accel = VMOPS_ACCEL_AUTO;
	else if (!strcmp(accel, "tcg"))
		opts.auto_accel = VMOPS_ACCEL_TCG;
	else if (!strcmp(accel, "kvm"))
		opts.auto_accel = VMOPS_ACCEL_KVM;
	else
		return vmops_err(e, VMOPS_EXIT_USAGE, "accel: use tcg, kvm or auto");
	opts.run_dir = run_dir;
	if (vmops_vm_mkdir_p(parent, e) < 0 || !(h = vmops_hv_launch(spec, &opts, e)))
		return -1;
	info = vmops_remote_info_to_json(vmops_hv_info(h));
	vmops_hv_free(h);  /* the VMM runs on; this process leaves it to the host's init */
	if (!info)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	cJSON_AddItemToObject(ans, "vmm", info);
	return 0;
}

static int vmm_of(const cJSON *req, struct vmops_vmm_info *info, struct vmops_error *e)
{
	return vmops_remote_info_from_json(cJSON_GetObjectItemCaseSensitive(req, "vmm"), info, e);
}

static int do_wait_ready(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	struct vmops_vmm_info info;
	struct vmops_hv *h;
	int t, r;

	(void)ans;
	if (vmm_of(req, &info, e) < 0 || (t = timeout_of(req, e)) < 0)
		return -1;
	if (!(h = vmops_hv_attach(&info, t, e)))
		return -1;
	r = vmops_hv_wait_ready(h, t, e);
	vmops_hv_free(h);
	return r;
}

static int do_check(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	static const char *const names[] = { [VMOPS_PROC_ALIVE] = "alive", [VMOPS_PROC_DEAD] = "dead",
					     [VMOPS_PROC_REUSED] = "reused", [VMOPS_PROC_UNKNOWN] = "unknown" };
	struct vmops_vmm_info info;
	int r;

	if (vmm_of(req, &info, e) < 0)
		return -1;
	if (info.pid <= 0)
		return vmops_err(e, VMOPS_EXIT_USAGE, "vmm: no pid");
	r = vmops_proc_check(NULL, info.pid, info.start_time, NULL, e);
	if (r < 0 || (size_t)r >= sizeof(names) / sizeof(names[0]) || !names[r])
		return vmops_err(e, e->code ? e->code : VMOPS_EXIT_FAILURE, "vmm %llu: %s",
				 (unsigned long long)info.vmm_id, e->msg[0] ? e->msg : "cannot check its process");
	cJSON_AddStringToObject(ans, "process", names[r]);
	return 0;
}

/* As vmops_vm_destroy does it on the local host (lib/vm.c). */
static int do_destroy(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	struct vmops_error ce = { 0 }, re = { 0 };
	struct vmops_vmm_info info;
	bool was_running = false;
	struct vmops_hv *h;
	int t, kept = 0;

	if (vmm_of(req, &info, e) < 0 || (t = timeout_of(req, e)) < 0)
		return -1;
	if (info.pid > 0 && (h = vmops_hv_attach(&info, 2000, NULL))) {
		was_running = vmops_hv_is_alive(h);
		if (was_running && vmops_hv_destroy(h, t, e) < 0) {
			vmops_hv_free(h);
			return -1;
		}
		vmops_hv_free(h);
	} else if (info.pid > 0) {
		int live = vmops_proc_check(NULL, info.pid, info.start_time, NULL, &ce);

		if (live == VMOPS_PROC_ALIVE)
			return vmops_err(e, VMOPS_EXIT_HYPERVISOR,
					 "vmm %llu (pid %d) runs but its control socket %s does not answer; not destroying it blind",
					 (unsigned long long)info.vmm_id, (int)info.pid, info.control_socket);
		if (live == VMOPS_PROC_UNKNOWN)
			return vmops_err(e, VMOPS_EXIT_CONFLICT,
					 "vmm %llu: pid %d is alive, no start time is recorded and the control socket does not answer; nothing done",
					 (unsigned long long)info.vmm_id, (int)info.pid);
		if (live < 0)
			return vmops_err(e, VMOPS_EXIT_FAILURE, "vmm %llu: %s; nothing done",
					 (unsigned long long)info.vmm_id, ce.msg);
	}
	if (info.run_dir[0] && vmops_rundir_remove(info.run_dir, &kept, &re) < 0)
		vmops_warn("%s", re.msg);
	cJSON_AddBoolToObject(ans, "was_running", was_running);
	return 0;
}

static const struct {
	const char *name;
	action_fn fn;
} actions[] = {
	{ "hello", do_hello },         { "launch", do_launch }, { "wait-ready", do_wait_ready },
	{ "check", do_check },         { "destroy", do_destroy },
};

bool vmops_remote_action_valid(const char *action)
{
	for (size_t i = 0; action && i < sizeof(actions) / sizeof(actions[0]); i++)
		if (!strcmp(actions[i].name, action))
			return true;
	return false;
}

static int check_host(const cJSON *req, struct vmops_error *e)
{
	const cJSON *want = cJSON_GetObjectItemCaseSensitive(req, "host_id");
	char here[VMOPS_HOST_ID_MAX];

	if (!want)
		return 0;
	if (!cJSON_IsString(want) || !vmops_host_id_valid(want->valuestring))
		return vmops_err(e, VMOPS_EXIT_USAGE, "host_id: not a valid host identity");
	if (vmops_host_id(getenv(VMOPS_HOST_ID_ENV), here, sizeof(here), e) < 0)
		return -1;
	if (strcmp(here, want->valuestring) != 0)
		return vmops_err(e, VMOPS_EXIT_WRONG_HOST, "this host is %s, not %s as recorded for the worker",
				 here, want->valuestring);
	return 0;
}

int vmops_remote_serve(const char *action, const char *request, size_t len, cJSON **answer)
{
	struct vmops_error e = { 0 };
	cJSON *req = cJSON_ParseWithLength(request, len);
	cJSON *ans = cJSON_CreateObject();
	int rc = -1;

	*answer = ans;
	if (!ans) {
		cJSON_Delete(req);
		return VMOPS_EXIT_FAILURE;
	}
	if (!cJSON_IsObject(req))
		vmops_err(&e, VMOPS_EXIT_USAGE, "the request is not a JSON object");
	else if (check_host(req, &e) == 0)
		for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
			if (!strcmp(actions[i].name, action))
				rc = actions[i].fn(req, ans, &e);
	if (rc < 0 && !e.code && !e.msg[0])
		vmops_err(&e, VMOPS_EXIT_USAGE, "unknown action '%s'", action);
	cJSON_Delete(req);
	if (rc == 0)
		return VMOPS_EXIT_OK;
	if (!e.code)
		e.code = VMOPS_EXIT_FAILURE;
	cJSON_AddStringToObject(ans, "error", e.msg);
	cJSON_AddNumberToObject(ans, "code", e.code);
	return e.code;
}
