/* SPDX-License-Identifier: MIT */
/*
 * Firecracker driver: the firecracker binary started with --api-sock and
 * --id vmops-vmm-<id>, configured over its API (v1.16): machine-config,
 * boot-source, drives, balloon, then InstanceStart.
 *
 *   pause / resume   PATCH /vm {"state": "Paused" | "Resumed"}
 *   snapshot         PUT /snapshot/create into our directory: vmstate and
 *                    memory (Full; Diff through vmops_hv_fc_snapshot())
 *   restore          a fresh process (launched for restore), PUT
 *                    /snapshot/load with mem_backend File, left paused,
 *                    then PATCH /drives/{id} to the spec's disks
 *   balloon          PATCH /balloon, GET /balloon/statistics
 *   hinting          PATCH /balloon/hinting/start, GET .../status,
 *                    PATCH .../stop: PATCH, as the API parser requires
 *                    (the prose docs say POST, which the parser refuses)
 *
 * Firecracker has no live migration: prepare_incoming and send are NULL
 * and vmops_hv_can(h, VMOPS_HV_OP_MIGRATE) is false.  Move a Firecracker
 * VM by snapshot (hibernate) and restore (wake) instead.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "exitcodes.h"
#include "hv.h"
#include "hv/firecracker.h"
#include "hv/rest.h"
#include "log.h"
#include "macro.h"

#define FC_BINARY "firecracker"
#define VMM_FMT "firecracker vmm %" PRIu64
#define VMM_ARG(h) (vmops_hv_info(h)->vmm_id)
#define FC_STATE_FILE "vmstate"
#define FC_MEMORY_FILE "memory"

static struct rest_priv *priv(struct vmops_hv *h)
{
	return vmops_hv_priv(h);
}

static int call(struct vmops_hv *h, const char *method, const char *path, const cJSON *body,
		struct vmops_http_reply *reply, struct vmops_error *err)
{
	char what[80];

	snprintf(what, sizeof(what), "%s %s", method, path);
	return rest_call(h, method, path, body, reply, what, err) < 0 ? -1 : 0;
}

/* call() with body b, which it frees (NULL b: building it ran out of memory). */
static int call_body(struct vmops_hv *h, const char *method, const char *path, cJSON *b,
		     struct vmops_error *err)
{
	int r;

	if (!b)
		return rest_oom(h, err);
	r = call(h, method, path, b, NULL, err);
	cJSON_Delete(b);
	return r;
}

static int put_machine(struct vmops_hv *h, const struct vmops_spec *s, struct vmops_error *err)
{
	cJSON *b = cJSON_CreateObject();

	if (b && (!cJSON_AddNumberToObject(b, "vcpu_count", s->vcpus) ||
		  !cJSON_AddNumberToObject(b, "mem_size_mib", s->memory_mb) ||
		  !cJSON_AddBoolToObject(b, "track_dirty_pages", true))) {
		cJSON_Delete(b);
		b = NULL;
	}
	return call_body(h, "PUT", "/machine-config", b, err);
}

static int put_boot(struct vmops_hv *h, const struct vmops_spec *s, struct vmops_error *err)
{
	cJSON *b = cJSON_CreateObject();

	if (b && (!cJSON_AddStringToObject(b, "kernel_image_path", s->kernel) ||
		  (s->initrd && !cJSON_AddStringToObject(b, "initrd_path", s->initrd)) ||
		  (s->cmdline && !cJSON_AddStringToObject(b, "boot_args", s->cmdline)))) {
		cJSON_Delete(b);
		b = NULL;
	}
	return call_body(h, "PUT", "/boot-source", b, err);
}

static int put_drives(struct vmops_hv *h, const struct vmops_spec *s, struct vmops_error *err)
{
	for (size_t i = 0; i < s->n_disks; i++) {
		char id[32], path[64];
		cJSON *b = cJSON_CreateObject();

		snprintf(id, sizeof(id), "disk%zu", i);
		snprintf(path, sizeof(path), "/drives/%s", id);
		if (b && (!cJSON_AddStringToObject(b, "drive_id", id) ||
			  !cJSON_AddStringToObject(b, "path_on_host", s->disks[i].path) ||
			  !cJSON_AddBoolToObject(b, "is_root_device", false) ||
			  !cJSON_AddBoolToObject(b, "is_read_only", s->disks[i].readonly))) {
			cJSON_Delete(b);
			b = NULL;
		}
		if (call_body(h, "PUT", path, b, err) < 0)
			return -1;
	}
	return 0;
}

static int put_balloon(struct vmops_hv *h, const struct vmops_spec *s, struct vmops_error *err)
{
	cJSON *b;

	if (!s->balloon)
		return 0;
	b = cJSON_CreateObject();
	if (b && (!cJSON_AddNumberToObject(b, "amount_mib", 0) ||
		  !cJSON_AddBoolToObject(b, "deflate_on_oom", true) ||
		  !cJSON_AddNumberToObject(b, "stats_polling_interval_s", 1) ||
		  !cJSON_AddBoolToObject(b, "free_page_hinting", s->balloon_free_page_hint))) {
		cJSON_Delete(b);
		b = NULL;
	}
	return call_body(h, "PUT", "/balloon", b, err);
}

static int start(struct vmops_hv *h, struct vmops_error *err)
{
	cJSON *b = cJSON_CreateObject();

	if (b && !cJSON_AddStringToObject(b, "action_type", "InstanceStart")) {
		cJSON_Delete(b);
		b = NULL;
	}
	return call_body(h, "PUT", "/actions", b, err);
}

static int fc_launch(struct vmops_hv *h, const struct vmops_spec *spec,
		     const struct vmops_hv_launch_opts *opts, bool incoming,
		     struct vmops_error *err)
{
	char sock[VMOPS_HV_SOCKPATH_MAX], id[40];
	char *argv[] = { NULL, "--api-sock", sock, "--id", id, NULL };
	struct vmops_error e2;

	if (rest_prepare(h, opts, spec, incoming, err) < 0)
		return -1;
	snprintf(sock, sizeof(sock), "%s", vmops_hv_info(h)->control_socket);
	snprintf(id, sizeof(id), "vmops-vmm-%" PRIu64, opts->vmm_id);
	if (rest_spawn(h, opts->binary ? opts->binary : FC_BINARY, argv, opts->die_with_parent,
		       err) < 0)
		return -1;
	if (rest_wait_socket(h, VMOPS_HV_SOCKET_TIMEOUT_MS, err) < 0 ||
	    call(h, "GET", "/", NULL, NULL, err) < 0 ||
	    (!incoming && (put_machine(h, spec, err) < 0 || put_boot(h, spec, err) < 0 ||
			   put_drives(h, spec, err) < 0 || put_balloon(h, spec, err) < 0 ||
			   start(h, err) < 0))) {
		if (vmops_hv_stop_process(h, false, 5000, &e2) < 0)
			vmops_warn("%s", e2.msg);
		return -1;
	}
	return 0;
}

static int fc_attach(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	if (!rest_priv(h, err))
		return -1;
	if (vmops_hv_info(h)->pid > 0 && !vmops_hv_is_alive(h))
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": pid %d is not running",
				 VMM_ARG(h), (int)vmops_hv_info(h)->pid);
	if (rest_wait_socket(h, timeout_ms > 0 ? timeout_ms : priv(h)->timeout_ms, err) < 0)
		return -1;
	return call(h, "GET", "/", NULL, NULL, err);
}

static int fc_status(struct vmops_hv *h, struct vmops_vm_status *st, struct vmops_error *err)
{
	struct vmops_http_reply r = { 0 };
	const char *s;
	int rc;

	memset(st, 0, sizeof(*st));
	rc = call(h, "GET", "/", NULL, &r, err);
	if (rc == 0) {
		s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r.body, "state"));
		if (s && !strcmp(s, "Running"))
			snprintf(st->status, sizeof(st->status), "running");
		else if (s && !strcmp(s, "Paused"))
			snprintf(st->status, sizeof(st->status), "paused");
		else if (s && !strcmp(s, "Not started"))
			snprintf(st->status, sizeof(st->status), "%s",
				 vmops_hv_info(h)->incoming ? "inmigrate" : "prelaunch");
		else
			snprintf(st->status, sizeof(st->status), "unknown");
		st->running = !strcmp(st->status, "running");
	}
	vmops_http_reply_free(&r);
	return rc;
}

static int fc_wait_ready(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	struct vmops_vm_status st;

	if (rest_wait_socket(h, timeout_ms > 0 ? timeout_ms : priv(h)->timeout_ms, err) < 0 ||
	    fc_status(h, &st, err) < 0)
		return -1;
	if (vmops_hv_interrupted(h))
		return vmops_err(err, VMOPS_EXIT_INTERRUPTED, VMM_FMT ": interrupted while waiting for it",
				 VMM_ARG(h));
	return 0;
}

static int vm_state(struct vmops_hv *h, const char *state, struct vmops_error *err)
{
	cJSON *b = cJSON_CreateObject();

	if (b && !cJSON_AddStringToObject(b, "state", state)) {
		cJSON_Delete(b);
		b = NULL;
	}
	return call_body(h, "PATCH", "/vm", b, err);
}

static int fc_pause(struct vmops_hv *h, struct vmops_error *err)
{
	return vm_state(h, "Paused", err);
}

static int fc_resume(struct vmops_hv *h, struct vmops_error *err)
{
	return vm_state(h, "Resumed", err);
}

static int fc_supports_multifd(struct vmops_hv *h, struct vmops_error *err)
{
	return 0;
}

static int fc_no_migration(struct vmops_hv *h, struct vmops_migrate_progress *p,
			   struct vmops_error *err)
{
	memset(p, 0, sizeof(*p));
	p->downtime_ms = p->expected_downtime_ms = p->setup_time_ms = p->total_time_ms = -1;
	snprintf(p->status, sizeof(p->status), "none");
	return 0;
}

static int fc_cancel(struct vmops_hv *h, struct vmops_error *err)
{
	return vmops_err(err, VMOPS_EXIT_CONFLICT, VMM_FMT ": live migration: not supported",
			 VMM_ARG(h));
}

static int fc_destroy(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	int r;

	if (info->pid <= 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": no process to destroy", VMM_ARG(h));
	/* No shutdown call in the API (SendCtrlAltDel asks the guest): SIGTERM. */
	r = vmops_hv_stop_process(h, false, timeout_ms > 0 ? timeout_ms : 10000, err);
	if (r == 0)
		unlink(info->control_socket);
	return r;
}

/* --- balloon and hinting ------------------------------------------------------ */

static int fc_balloon_set(struct vmops_hv *h, uint64_t bytes, struct vmops_error *err)
{
	cJSON *b = cJSON_CreateObject();

	if (b && !cJSON_AddNumberToObject(b, "amount_mib", (double)(bytes >> 20))) {
		cJSON_Delete(b);
		b = NULL;
	}
	return call_body(h, "PATCH", "/balloon", b, err);
}

static int fc_balloon_get(struct vmops_hv *h, uint64_t *bytes, struct vmops_error *err)
{
	struct vmops_http_reply r = { 0 };
	const cJSON *v;
	int rc = call(h, "GET", "/balloon/statistics", NULL, &r, err);

	if (rc == 0) {
		v = cJSON_GetObjectItemCaseSensitive(r.body, "actual_mib");
		if (!cJSON_IsNumber(v) || v->valuedouble < 0)
			rc = vmops_err(err, VMOPS_EXIT_HYPERVISOR,
				       VMM_FMT ": GET /balloon/statistics: no actual_mib", VMM_ARG(h));
		else
			*bytes = (uint64_t)v->valuedouble << 20;
	}
	vmops_http_reply_free(&r);
	return rc;
}

static int fc_hint_start(struct vmops_hv *h, struct vmops_error *err)
{
	cJSON *b = cJSON_CreateObject();

	if (b && !cJSON_AddBoolToObject(b, "acknowledge_on_stop", true)) {
		cJSON_Delete(b);
		b = NULL;
	}
	return call_body(h, "PATCH", "/balloon/hinting/start", b, err);
}

/*
 * Is free-page hinting configured on this VM's balloon?  1 yes, 0 no (no
 * balloon, or hinting off), -1 unknown (err says why).
 */
static int hinting_enabled(struct vmops_hv *h, struct vmops_error *err)
{
	struct vmops_http_reply r = { 0 };
	int rc = rest_call(h, "GET", "/balloon", NULL, &r, "GET /balloon", err);

	if (rc < 0 && r.status == 400)
		rc = 0;                          /* "Balloon device not configured." */
	else if (rc >= 0)
		rc = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r.body, "free_page_hinting"));
	vmops_http_reply_free(&r);
	return rc;
}

/*
 * host_cmd is the command the host last gave: 0 stop, 1 done (the round is
 * over: acknowledged when the guest finished, or stopped), >= 2 the id of a
 * round that runs.  guest_cmd is what the guest last reported: the id of
 * the round while it still reports pages (the host discards them), 0 once
 * it has stopped.  So a round runs while either says a round id: after a
 * stop (host_cmd 1) the guest may go on reporting until it sees the stop.
 * A VM without hinting configured has no round (the status call fails).
 */
static int fc_hint_status(struct vmops_hv *h, struct vmops_hint_status *st,
			  struct vmops_error *err)
{
	struct vmops_http_reply r = { 0 };
	const cJSON *host, *guest;
	struct vmops_error e2 = { 0 };
	int rc = call(h, "GET", "/balloon/hinting/status", NULL, &r, err);

	memset(st, 0, sizeof(*st));
	if (rc == 0) {
		host = cJSON_GetObjectItemCaseSensitive(r.body, "host_cmd");
		guest = cJSON_GetObjectItemCaseSensitive(r.body, "guest_cmd");
		if (!cJSON_IsNumber(host))
			rc = vmops_err(err, VMOPS_EXIT_HYPERVISOR,
				       VMM_FMT ": GET /balloon/hinting/status: no host_cmd", VMM_ARG(h));
		else
			st->running = host->valuedouble >= 2 ||
				      (cJSON_IsNumber(guest) && guest->valuedouble >= 2);
	} else if (r.status == 400 && hinting_enabled(h, &e2) == 0) {
		rc = 0;                          /* no hinting here: nothing runs */
	}
	vmops_http_reply_free(&r);
	return rc;
}

/* PATCH stop, then the status until the guest has stopped reporting. */
static int fc_hint_stop(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	int t = timeout_ms > 0 ? timeout_ms : priv(h)->timeout_ms;
	int64_t deadline = rest_now_ms() + t;
	struct vmops_hint_status st;

	if (rest_call_t(h, "PATCH", "/balloon/hinting/stop", NULL, t, NULL,
			"PATCH /balloon/hinting/stop", err) < 0)
		return -1;
	for (;;) {
		if (fc_hint_status(h, &st, err) < 0)
			return -1;
		if (!st.running)
			return 0;
		if (rest_now_ms() >= deadline)
			return vmops_err(err, VMOPS_EXIT_TIMEOUT,
					 VMM_FMT ": free-page hinting still running %d ms after the stop",
					 VMM_ARG(h), t);
		rest_sleep_ms(20);
	}
}

/* GET / says vmm_version. */
static int fc_version(struct vmops_hv *h, char *buf, size_t len, struct vmops_error *err)
{
	struct vmops_http_reply r = { 0 };
	const char *v;
	int rc = call(h, "GET", "/", NULL, &r, err);

	if (rc == 0) {
		v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r.body, "vmm_version"));
		if (!v || !v[0])
			rc = vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": GET /: no vmm_version",
				       VMM_ARG(h));
		else
			snprintf(buf, len, "%s", v);
	}
	vmops_http_reply_free(&r);
	return rc;
}

/* --- snapshots --------------------------------------------------------------------- */

int vmops_hv_fc_snapshot(struct vmops_hv *h, int dirfd, bool diff, int timeout_ms,
			 struct vmops_error *err)
{
	char dir[PATH_MAX], state[PATH_MAX + 16], mem[PATH_MAX + 16];
	cJSON *b;
	int r;

	if (vmops_hv_get_driver(h) != &vmops_hv_firecracker_driver)
		return vmops_err(err, VMOPS_EXIT_CONFLICT, "%s: firecracker snapshot: not a firecracker vmm",
				 vmops_hv_info(h)->kind);
	if (rest_dir_path(h, dirfd, dir, sizeof(dir), err) < 0)
		return -1;
	snprintf(state, sizeof(state), "%s/" FC_STATE_FILE, dir);
	snprintf(mem, sizeof(mem), "%s/" FC_MEMORY_FILE, dir);
	b = cJSON_CreateObject();
	if (!b || !cJSON_AddStringToObject(b, "snapshot_type", diff ? "Diff" : "Full") ||
	    !cJSON_AddStringToObject(b, "snapshot_path", state) ||
	    !cJSON_AddStringToObject(b, "mem_file_path", mem)) {
		cJSON_Delete(b);
		return rest_oom(h, err);
	}
	r = rest_call_t(h, "PUT", "/snapshot/create", b, timeout_ms > 0 ? timeout_ms : priv(h)->timeout_ms,
			NULL, "PUT /snapshot/create", err);
	cJSON_Delete(b);
	return r < 0 ? -1 : 0;
}

static int fc_snapshot(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
		       struct vmops_error *err)
{
	if (o && o->live)
		return vmops_err(err, VMOPS_EXIT_CONFLICT,
				 VMM_FMT ": live snapshot: not supported (pause the VM first)", VMM_ARG(h));
	return vmops_hv_fc_snapshot(h, dirfd, o && o->diff, o ? o->timeout_ms : 0, err);
}

/*
 * After the load, before the resume: each drive to this VM's disk (the
 * spec's, in order, drive ids disk<i> as launched).  The state file names
 * the disks of the VM that was snapshotted, and the load API has no drive
 * override (v1.16.1 and main: network_overrides and vsock_override only);
 * PATCH /drives/{id} (post-boot, which a loaded VM is) swaps the backing
 * file while the vCPUs have not run.  The load itself opens the recorded
 * paths, so they must still exist then (see vmops(7)).
 */
static int repoint_drives(struct vmops_hv *h, struct vmops_error *err)
{
	const struct rest_priv *p = priv(h);

	for (size_t i = 0; i < p->n_disks; i++) {
		char id[32], path[64];
		cJSON *b = cJSON_CreateObject();

		snprintf(id, sizeof(id), "disk%zu", i);
		snprintf(path, sizeof(path), "/drives/%s", id);
		if (b && (!cJSON_AddStringToObject(b, "drive_id", id) ||
			  !cJSON_AddStringToObject(b, "path_on_host", p->disks[i]))) {
			cJSON_Delete(b);
			b = NULL;
		}
		if (call_body(h, "PATCH", path, b, err) < 0)
			return -1;
	}
	return 0;
}

static int fc_restore(struct vmops_hv *h, int dirfd, int timeout_ms, struct vmops_error *err)
{
	char dir[PATH_MAX], state[PATH_MAX + 16], mem[PATH_MAX + 16];
	cJSON *b, *be;
	int r;

	if (rest_need_restore(h, "restore", err) < 0 || rest_dir_path(h, dirfd, dir, sizeof(dir), err) < 0)
		return -1;
	snprintf(state, sizeof(state), "%s/" FC_STATE_FILE, dir);
	snprintf(mem, sizeof(mem), "%s/" FC_MEMORY_FILE, dir);
	b = cJSON_CreateObject();
	if (!b || !cJSON_AddStringToObject(b, "snapshot_path", state) ||
	    !(be = cJSON_AddObjectToObject(b, "mem_backend")) ||
	    !cJSON_AddStringToObject(be, "backend_type", "File") ||
	    !cJSON_AddStringToObject(be, "backend_path", mem) ||
	    !cJSON_AddBoolToObject(b, "resume_vm", false)) {
		cJSON_Delete(b);
		return rest_oom(h, err);
	}
	r = rest_call_t(h, "PUT", "/snapshot/load", b, timeout_ms > 0 ? timeout_ms : priv(h)->timeout_ms,
			NULL, "PUT /snapshot/load", err);
	cJSON_Delete(b);
	return r < 0 || repoint_drives(h, err) < 0 ? -1 : 0;
}

const struct vmops_hv_driver vmops_hv_firecracker_driver = {
	.kind = "firecracker",
	.launch = fc_launch,
	.attach = fc_attach,
	.wait_ready = fc_wait_ready,
	.progress = fc_no_migration,
	.cancel = fc_cancel,
	.destroy = fc_destroy,
	.pause = fc_pause,
	.resume = fc_resume,
	.status = fc_status,
	.supports_multifd = fc_supports_multifd,
	.balloon_set = fc_balloon_set,
	.balloon_get = fc_balloon_get,
	.hint_start = fc_hint_start,
	.hint_status = fc_hint_status,
	.hint_stop = fc_hint_stop,
	.snapshot = fc_snapshot,
	.restore = fc_restore,
	.release = rest_release,
	.version = fc_version,
};
