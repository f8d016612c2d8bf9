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
 * Live migration (the VMM's QMP or API socket, reached on this host):
 *   prepare-incoming {"spec", "vmm_id", "run_dir", "accel", "incoming_paused",
 *               "address", "port_min", "port_max", "salt", "mp", "timeout_ms"}
 *               -> the receiver's info; it listens on ADDRESS at a port of
 *               the worker's range that is free here ("incoming_uri")
 *   send        {"vmm", "uri", "mp"} -> {}
 *   progress    {"vmm"} -> {"progress"}
 *   cancel, pause, resume {"vmm"} -> {}
 *   status      {"vmm"} -> {"status", "running"}
 *   multifd     {"vmm"} -> {"supported"}
 *   stop        {"vmm", "run_dir", "stop", "remove_run_dir"} -> {"killed"}:
 *               by signal (pid and start time, or the /proc marker in
 *               run_dir when no pid was recorded; "stop": false: not at
 *               all, and refused while the pid runs); then the run
 *               directory, if asked
 *
 * The process count of a worker on this host (vm-drain's honest count, made
 * against the database by the caller, with ghost-reap's identification):
 *   procs       {"pids": [...]} -> {"uptime", "procs": [{"pid", "stat", "exe",
 *               "cmdline": [...]}], "stats": [{"pid", "stat"}]}: this host's
 *               /proc, as a recorded tree holds it (proc.h): every hypervisor
 *               process whose command line carries a fleet token, and the
 *               stat line of each pid asked for that exists
 *
 * Every request may carry "host_id", the identity the database records for
 * the worker: a host that is not that one refuses (VMOPS_EXIT_WRONG_HOST).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "exitcodes.h"
#include "host.h"
#include "log.h"
#include "macro.h"
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

/* What launch and prepare-incoming share: the VMM's identity, spec, run dir and accel. */
static int launch_req(const cJSON *req, struct vmops_hv_launch_opts *opts, struct vmops_spec **spec,
		      struct vmops_error *e)
{
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(req, "vmm_id");
	const char *run_dir = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "run_dir"));
	const char *accel = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "accel"));
	char parent[PATH_MAX];

	if (!cJSON_IsNumber(id) || id->valuedouble < 1 || id->valuedouble > 9007199254740991.0)
		return vmops_err(e, VMOPS_EXIT_USAGE, "vmm_id: missing or out of range");
	opts->vmm_id = (uint64_t)id->valuedouble;
	if (!(*spec = vmops_spec_from_json(cJSON_GetObjectItemCaseSensitive(req, "spec"), e))) {
		e->code = VMOPS_EXIT_USAGE;   /* a bad request */
		return vmops_err_prefix(e, "launch spec");
	}
	if (check_run_dir(run_dir, opts->vmm_id, parent, sizeof(parent), e) < 0)
		return -1;
	if (!accel || !strcmp(accel, "auto"))
		opts->auto_accel = VMOPS_ACCEL_AUTO;
	else if (!strcmp(accel, "tcg"))
		opts->auto_accel = VMOPS_ACCEL_TCG;
	else if (!strcmp(accel, "kvm"))
		opts->auto_accel = VMOPS_ACCEL_KVM;
	else
		return vmops_err(e, VMOPS_EXIT_USAGE, "accel: use tcg, kvm or auto");
	opts->run_dir = run_dir;
	return vmops_vm_mkdir_p(parent, e);
}

/* The VMM runs on; this process leaves it to the host's init. */
static int answer_vmm(struct vmops_hv *h, cJSON *ans, struct vmops_error *e)
{
	cJSON *info = vmops_remote_info_to_json(vmops_hv_info(h));

	vmops_hv_free(h);
	if (!info)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	cJSON_AddItemToObject(ans, "vmm", info);
	return 0;
}

static int do_launch(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	_cleanup_spec_ struct vmops_spec *spec = NULL;
	struct vmops_hv_launch_opts opts = { 0 };
	struct vmops_hv *h;

	if (launch_req(req, &opts, &spec, e) < 0 || !(h = vmops_hv_launch(spec, &opts, e)))
		return -1;
	return answer_vmm(h, ans, e);
}

static int range_of(const cJSON *req, const char *key, double lo, double hi, long long *out,
		    struct vmops_error *e)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, key);

	if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi)
		return vmops_err(e, VMOPS_EXIT_USAGE, "%s: missing or out of range", key);
	*out = (long long)v->valuedouble;
	return 0;
}

/* A receiver listening on ADDRESS at a port of the worker's range free on this host. */
static int do_prepare_incoming(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	const char *address = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "address"));
	_cleanup_spec_ struct vmops_spec *spec = NULL;
	struct vmops_hv_launch_opts opts = { 0 };
	struct vmops_migrate_params mp;
	long long lo = 0, hi = 0, salt = 0;
	struct vmops_hv *h;
	char uri[320];
	int t;

	if (!address || !vmops_transport_valid_destination(address))
		return vmops_err(e, VMOPS_EXIT_USAGE, "address: missing or not an address");
	if (range_of(req, "port_min", 1, 65535, &lo, e) < 0 || range_of(req, "port_max", 1, 65535, &hi, e) < 0 ||
	    range_of(req, "salt", 0, 9007199254740991.0, &salt, e) < 0 || (t = timeout_of(req, e)) < 0 ||
	    vmops_remote_mp_from_json(cJSON_GetObjectItemCaseSensitive(req, "mp"), &mp, e) < 0 ||
	    launch_req(req, &opts, &spec, e) < 0)
		return -1;
	opts.incoming_paused = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "incoming_paused"));
	snprintf(uri, sizeof(uri), strchr(address, ':') ? "tcp:[%s]:%d" : "tcp:%s:%d", address,
		 vmops_vm_free_port(address, lo, hi, salt));
	if (!(h = vmops_hv_prepare_incoming(spec, &opts, uri, &mp, t, e)))
		return -1;
	return answer_vmm(h, ans, e);
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

/* Attach to the VMM of the request on this host. */
static struct vmops_hv *attached(const cJSON *req, struct vmops_error *e)
{
	struct vmops_vmm_info info;

	if (vmm_of(req, &info, e) < 0)
		return NULL;
	if (info.pid <= 0) {
		vmops_err(e, VMOPS_EXIT_USAGE, "vmm: no pid");
		return NULL;
	}
	return vmops_hv_attach(&info, 5000, e);
}

static int do_send(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	const char *uri = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "uri"));
	struct vmops_migrate_params mp;
	struct vmops_hv *h;
	int r;

	(void)ans;
	/* Only a tcp: address: exec: would run a shell command. */
	if (!uri || strncmp(uri, "tcp:", 4) != 0 || strlen(uri) > 300)
		return vmops_err(e, VMOPS_EXIT_USAGE, "uri: missing or not tcp:HOST:PORT");
	if (vmops_remote_mp_from_json(cJSON_GetObjectItemCaseSensitive(req, "mp"), &mp, e) < 0 ||
	    !(h = attached(req, e)))
		return -1;
	r = vmops_hv_send(h, uri, &mp, e);
	vmops_hv_free(h);
	return r;
}

static int do_progress(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	struct vmops_migrate_progress p;
	struct vmops_hv *h = attached(req, e);
	int r;

	if (!h)
		return -1;
	r = vmops_hv_progress(h, &p, e);
	vmops_hv_free(h);
	if (r == 0)
		cJSON_AddItemToObject(ans, "progress", vmops_remote_progress_to_json(&p));
	return r;
}

static int do_status(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	struct vmops_vm_status st;
	struct vmops_hv *h = attached(req, e);
	int r;

	if (!h)
		return -1;
	r = vmops_hv_status(h, &st, e);
	vmops_hv_free(h);
	if (r == 0) {
		cJSON_AddStringToObject(ans, "status", st.status);
		cJSON_AddBoolToObject(ans, "running", st.running);
	}
	return r;
}

static int do_multifd(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	struct vmops_hv *h = attached(req, e);
	int r;

	if (!h)
		return -1;
	r = vmops_hv_supports_multifd(h, e);
	vmops_hv_free(h);
	if (r >= 0)
		cJSON_AddBoolToObject(ans, "supported", r == 1);
	return r < 0 ? -1 : 0;
}

/* cancel, pause, resume: one call on the VMM. */
static int on_vmm(const cJSON *req, int (*fn)(struct vmops_hv *, struct vmops_error *), struct vmops_error *e)
{
	struct vmops_hv *h = attached(req, e);
	int r;

	if (!h)
		return -1;
	r = fn(h, e);
	vmops_hv_free(h);
	return r;
}

static int do_cancel(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	(void)ans;
	return on_vmm(req, vmops_hv_cancel, e);
}

static int do_pause(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	(void)ans;
	return on_vmm(req, vmops_hv_pause, e);
}

static int do_resume(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	(void)ans;
	return on_vmm(req, vmops_hv_resume, e);
}

/* By signal, as vm-migrate stops a VMM on its own host (lib/vm.h); or only its run directory. */
static int do_stop(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	const char *run_dir = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "run_dir"));
	bool signal_it = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(req, "stop"));
	struct vmops_vmm_info info;
	struct vmops_error re = { 0 };
	int killed = 0, kept = 0;

	if (vmm_of(req, &info, e) < 0)
		return -1;
	if (run_dir && *run_dir && run_dir[0] != '/')
		return vmops_err(e, VMOPS_EXIT_USAGE, "run_dir: not an absolute path");
	if (signal_it && vmops_vm_stop_process(&info, run_dir, &killed, e) < 0)
		return -1;
	if (!signal_it && info.pid > 0 &&
	    vmops_proc_check(NULL, info.pid, info.start_time, NULL, &re) == VMOPS_PROC_ALIVE)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "vmm %llu (pid %d) still runs: its run directory stays",
				 (unsigned long long)info.vmm_id, (int)info.pid);
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "remove_run_dir")) && run_dir && *run_dir &&
	    vmops_rundir_remove(run_dir, &kept, &re) < 0)
		vmops_warn("%s", re.msg);
	cJSON_AddNumberToObject(ans, "killed", killed);
	return 0;
}

/* ---- procs: this host's /proc for a count made elsewhere ---------------------------- */

#define PROCS_PIDS_MAX 4096

/* The stat line of pid as the kernel writes it, if its start time is `want` (0: any). */
static bool raw_stat(pid_t pid, unsigned long long want, char *buf, size_t len)
{
	struct vmops_proc_stat st;
	struct vmops_error pe = { 0 };
	char path[64];
	_cleanup_close_ int fd = -1;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || (n = read(fd, buf, len - 1)) <= 0)
		return false;
	buf[n] = '\0';
	if (vmops_proc_parse_stat(buf, (size_t)n, &st, &pe) < 0 || st.pid != pid)
		return false;
	return !want || st.starttime == want;
}

static int procs_cb(const struct vmops_proc_info *info, void *data)
{
	cJSON *list = data, *o, *argv;
	char stat[1024];

	if (info->vmm_id < 0 || !raw_stat(info->stat.pid, info->stat.starttime, stat, sizeof(stat)))
		return 0;   /* not a fleet's, or gone meanwhile */
	if (!(o = cJSON_CreateObject()) || !cJSON_AddItemToArray(list, o) ||
	    !cJSON_AddNumberToObject(o, "pid", info->stat.pid) || !cJSON_AddStringToObject(o, "stat", stat) ||
	    !cJSON_AddStringToObject(o, "exe", info->exe) || !(argv = cJSON_AddArrayToObject(o, "cmdline")))
		return 2;
	for (int i = 0; i < info->argc; i++)
		if (!cJSON_AddItemToArray(argv, cJSON_CreateString(info->argv[i])))
			return 2;
	return 0;
}

/* The stat line of each pid asked for (checked: process ids) that exists here. */
static int procs_stats(const cJSON *pids, cJSON *ans, struct vmops_error *e)
{
	cJSON *stats = cJSON_AddArrayToObject(ans, "stats");
	const cJSON *p;
	char stat[1024];

	if (!stats)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	cJSON_ArrayForEach(p, pids) {
		cJSON *o;

		if (!raw_stat((pid_t)p->valuedouble, 0, stat, sizeof(stat)))
			continue;   /* no such process here */
		if (!(o = cJSON_CreateObject()) || !cJSON_AddItemToArray(stats, o) ||
		    !cJSON_AddNumberToObject(o, "pid", p->valuedouble) || !cJSON_AddStringToObject(o, "stat", stat))
			return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	}
	return 0;
}

static int do_procs(const cJSON *req, cJSON *ans, struct vmops_error *e)
{
	const cJSON *pids = cJSON_GetObjectItemCaseSensitive(req, "pids"), *p;
	char up[128];
	_cleanup_close_ int fd = -1;
	cJSON *list;
	ssize_t n;
	int r;

	if (!cJSON_IsArray(pids) || cJSON_GetArraySize(pids) > PROCS_PIDS_MAX)
		return vmops_err(e, VMOPS_EXIT_USAGE, "pids: missing, not a list or more than %d", PROCS_PIDS_MAX);
	cJSON_ArrayForEach(p, pids)
		if (!cJSON_IsNumber(p) || p->valuedouble < 1 || p->valuedouble > 4194304 ||
		    p->valuedouble != (double)(int)p->valuedouble)
			return vmops_err(e, VMOPS_EXIT_USAGE, "pids: not a list of process ids");
	fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || (n = read(fd, up, sizeof(up) - 1)) <= 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "/proc/uptime: %s", fd < 0 ? strerror(errno) : "unreadable");
	up[n] = '\0';
	if (!cJSON_AddStringToObject(ans, "uptime", up) || !(list = cJSON_AddArrayToObject(ans, "procs")))
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	r = vmops_proc_scan(NULL, VMOPS_PROC_SCAN_HV_ONLY, procs_cb, list, e);
	if (r == 2)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	if (r != 0)
		return -1;
	return procs_stats(pids, ans, e);
}

static const struct {
	const char *name;
	action_fn fn;
} actions[] = {
	{ "hello", do_hello },         { "launch", do_launch }, { "wait-ready", do_wait_ready },
	{ "check", do_check },         { "destroy", do_destroy },
	{ "prepare-incoming", do_prepare_incoming }, { "send", do_send }, { "progress", do_progress },
	{ "status", do_status },       { "multifd", do_multifd }, { "cancel", do_cancel },
	{ "pause", do_pause },         { "resume", do_resume }, { "stop", do_stop },
	{ "procs", do_procs },
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
