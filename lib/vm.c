/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "exitcodes.h"
#include "fault.h"
#include "fleet.h"
#include "ghost.h"
#include "images.h"
#include "log.h"
#include "proc.h"
#include "rundir.h"
#include "transport/transport.h"
#include "vm.h"

int vmops_vm_worker_run_dir(const char *worker_run_dir, const char *worker, char *buf,
			    size_t len, struct vmops_error *e)
{
	int n;

	if (!worker_run_dir || !*worker_run_dir)
		return vmops_rundir_default(worker, buf, len, e);
	n = snprintf(buf, len, "%s", worker_run_dir);
	if (n < 0 || (size_t)n >= len)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: run directory path too long", worker);
	return 0;
}

int vmops_vm_run_dir_gone(const char *run_dir, const char *what, const char *name)
{
	struct vmops_error re = { 0 };
	int kept = 0;

	if (!run_dir || !*run_dir)
		return 1;
	if (vmops_rundir_remove(run_dir, &kept, &re) < 0) {
		vmops_warn("%s %s: run directory %s not removed: %s", what, name, run_dir, re.msg);
		return -1;
	}
	if (kept) {
		vmops_info("%s %s: run directory %s kept: it holds files vmops did not put there", what, name,
			   run_dir);
		return 1;
	}
	vmops_debug("%s %s: run directory %s removed", what, name, run_dir);
	return 0;
}

int vmops_vm_mkdir_p(const char *path, struct vmops_error *e)
{
	int fd = vmops_rundir_open(path, e);

	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

struct reserve_ctx {
	const struct vmops_launch_req *req;
	const struct vmops_spec *spec;
	long long sandbox_id, vmm_id, worker_id;
	char run_dir[PATH_MAX];
	char worker_run_dir[PATH_MAX];
};

/* Tx 1: sandbox (pending), VMM (starting), reservation (admitted). */
static int reserve_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct reserve_ctx *a = data;
	const struct vmops_launch_req *q = a->req;
	char wid[24], sid[24], vid[24], mem[24], cpu[24];
	_cleanup_pgresult_ PGresult *w = NULL, *s = NULL, *v = NULL;

	w = vmops_db_q(c, e, "SELECT id, run_dir FROM workers WHERE name = $1", q->worker);
	if (!w)
		return -1;
	if (PQntuples(w) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", q->worker);
	a->worker_id = vmops_db_get_ll(w, 0, "id", -1);
	if (vmops_vm_worker_run_dir(vmops_db_get(w, 0, "run_dir"), q->worker, a->worker_run_dir,
				    sizeof(a->worker_run_dir), e) < 0)
		return -1;
	vmops_db_ll(wid, a->worker_id);
	vmops_db_ll(mem, a->spec->memory_mb);
	vmops_db_ll(cpu, a->spec->vcpus);
	s = vmops_db_q(c, e,
		       "INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus, launch_spec)"
		       " VALUES ($1, $2, 'pending', $3, $4, $5, $6::jsonb) RETURNING id",
		       q->sandbox, q->org, wid, mem, cpu, q->spec_json);
	if (!s) {
		if (strcmp(e->sqlstate, "23505") == 0)
			return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s already exists", q->sandbox);
		return vmops_err_prefix(e, "sandbox %s", q->sandbox);
	}
	a->sandbox_id = vmops_db_get_ll(s, 0, "id", -1);
	vmops_db_ll(sid, a->sandbox_id);
	v = vmops_db_q(c, e, "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state)"
			     " VALUES ($1, $2, $3, 'starting') RETURNING id", sid, wid, a->spec->hypervisor);
	if (!v)
		return vmops_err_prefix(e, "vmm for sandbox %s", q->sandbox);
	a->vmm_id = vmops_db_get_ll(v, 0, "id", -1);
	vmops_db_ll(vid, a->vmm_id);
	snprintf(a->run_dir, sizeof(a->run_dir), "%.4000s/vmm-%lld", a->worker_run_dir, a->vmm_id);
	if (vmops_db_x(c, e, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
			     " VALUES ($1, $2, $3, $4)", vid, wid, mem, cpu) < 0)
		return vmops_err_prefix(e, "reservation on worker %s", q->worker);
	if (vmops_db_x(c, e, "UPDATE vmms SET run_dir = $2 WHERE id = $1", vid, a->run_dir) < 0 ||
	    vmops_db_x(c, e, "UPDATE sandboxes SET target_vmm_id = $2 WHERE id = $1", sid, vid) < 0)
		return -1;
	if (q->dry_run)
		return vmops_err(e, VMOPS_EXIT_OK, "dry run");
	return 0;
}

struct pid_ctx {
	const struct reserve_ctx *r;
	const struct vmops_vmm_info *info;
};

/* Between fork and ready: the process is recorded on the starting VMM. */
static int record_pid_tx(PGconn *c, void *data, struct vmops_error *e)
{
	const struct pid_ctx *a = data;
	const struct reserve_ctx *r = a->r;
	const struct vmops_vmm_info *i = a->info;
	char vid[24], pid[24], st[24];
	_cleanup_pgresult_ PGresult *u = NULL;

	u = vmops_db_q(c, e, "UPDATE vmms SET pid = $2, pid_start_time = $3, control_socket = $4,"
			     " agent_socket = nullif($5, ''), run_dir = $6"
			     " WHERE id = $1 AND state = 'starting' AND time_deleted IS NULL RETURNING id",
		       vmops_db_ll(vid, r->vmm_id), vmops_db_ll(pid, i->pid),
		       vmops_db_ll(st, (long long)i->start_time), i->control_socket, i->agent_socket,
		       i->run_dir);
	if (!u)
		return -1;
	if (PQntuples(u) != 1)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "vmm %lld is no longer starting in the database", r->vmm_id);
	return 0;
}

struct running_ctx {
	struct reserve_ctx *r;
	const struct vmops_vmm_info *info;
	long long event_id;
};

/* Tx 2: the VMM runs: identity recorded, sandbox running, billing opened. */
static int running_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct running_ctx *a = data;
	const struct vmops_vmm_info *i = a->info;
	char sid[24], vid[24], wid[24], pid[24], st[24], mem[24], cpu[24];
	_cleanup_pgresult_ PGresult *u = NULL, *ev = NULL;

	vmops_db_ll(sid, a->r->sandbox_id);
	vmops_db_ll(vid, a->r->vmm_id);
	vmops_db_ll(wid, a->r->worker_id);
	vmops_db_ll(mem, a->r->spec->memory_mb);
	vmops_db_ll(cpu, a->r->spec->vcpus);
	/* Still ours and still starting: ghost-reap may have judged it abandoned. */
	u = vmops_db_q(c, e, "UPDATE vmms SET state = 'running', pid = $2, pid_start_time = $3,"
			     " control_socket = $4, agent_socket = nullif($5, ''), run_dir = $6"
			     " WHERE id = $1 AND state = 'starting' AND time_deleted IS NULL RETURNING id",
		       vid, vmops_db_ll(pid, i->pid), vmops_db_ll(st, (long long)i->start_time),
		       i->control_socket, i->agent_socket, i->run_dir);
	if (!u)
		return -1;
	if (PQntuples(u) != 1)
		return vmops_err(e, VMOPS_EXIT_CONFLICT,
				 "vmm %lld is no longer starting in the database (ghost-reap judged the launch abandoned?)",
				 a->r->vmm_id);
	if (vmops_db_x(c, e, "UPDATE sandboxes SET status = 'running', active_vmm_id = $2, target_vmm_id = NULL"
			     " WHERE id = $1", sid, vid) < 0)
		return -1;
	ev = vmops_db_q(c, e,
			"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)"
			" SELECT id, org_id, $2, $3, $4, $5 FROM sandboxes WHERE id = $1 RETURNING id",
			sid, wid, vid, mem, cpu);
	if (!ev)
		return -1;
	a->event_id = vmops_db_get_ll(ev, 0, "id", -1);
	return vmops_audit(c, "vm-fleet", "launch", "vmm", a->r->vmm_id, NULL, NULL, a->r->req->sandbox, e);
}

struct failed_ctx {
	struct reserve_ctx *r;
	const char *why;
	bool interrupted;
};

/*
 * The launch failed: undo everything tx 1 wrote (a failed command changes
 * nothing; the name can be used again), keeping only the audit row.
 */
static int launch_failed_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct failed_ctx *a = data;
	char sid[24], vid[24];

	vmops_db_ll(sid, a->r->sandbox_id);
	vmops_db_ll(vid, a->r->vmm_id);
	if (vmops_db_x(c, e, "DELETE FROM reservations WHERE vmm_id = $1", vid) < 0 ||
	    vmops_db_x(c, e, "UPDATE sandboxes SET target_vmm_id = NULL, active_vmm_id = NULL WHERE id = $1", sid) < 0 ||
	    vmops_db_x(c, e, "DELETE FROM vmms WHERE id = $1", vid) < 0 ||
	    vmops_db_x(c, e, "DELETE FROM sandboxes WHERE id = $1", sid) < 0)
		return -1;
	return vmops_audit(c, "vm-fleet", a->interrupted ? "launch-interrupted" : "launch-failed", "sandbox", -1,
			   NULL, NULL, a->why, e);
}

static bool interrupted(const struct vmops_launch_req *req)
{
	return req->interrupted && *req->interrupted;
}

int vmops_vm_launch(PGconn *c, const struct vmops_launch_req *req,
		    struct vmops_launch_res *res, struct vmops_error *e)
{
	_cleanup_spec_ struct vmops_spec *spec = NULL;
	struct reserve_ctx r = { .req = req };
	struct vmops_hv_launch_opts opts = { 0 };
	struct vmops_error herr = { 0 }, ferr = { 0 };
	struct vmops_hv *h = NULL;
	_cleanup_transport_ struct vmops_transport *t = NULL;
	bool stopped = false;

	memset(res, 0, sizeof(*res));
	res->sandbox_id = res->vmm_id = res->scale_event_id = -1;
	spec = vmops_spec_parse(req->spec_json, (size_t)-1, e);
	if (!spec)
		return vmops_err_prefix(e, "launch spec");
	if (!vmops_hv_driver_find(spec->hypervisor))
		return vmops_err(e, VMOPS_EXIT_HYPERVISOR, "launch spec: hypervisor %s is not supported by this build",
				 spec->hypervisor);
	r.spec = spec;
	/* The launch-spec policy, before anything is reserved (images.h). */
	{
		char dirs[8192];

		if (vmops_images_worker_dirs(c, req->worker, dirs, sizeof(dirs), e) < 0 ||
		    vmops_images_check(spec, dirs, e) < 0)
			return vmops_err_prefix(e, "launch of sandbox %s on worker %s", req->sandbox, req->worker);
	}
	if (interrupted(req))
		return vmops_err(e, VMOPS_EXIT_INTERRUPTED, "launch of sandbox %s on worker %s: interrupted; nothing done",
				 req->sandbox, req->worker);
	/* Another host: it must answer (and be the worker's) before anything is written. */
	if (vmops_transport_for_worker(c, req->worker, &t, e) < 0 ||
	    (t && vmops_transport_hello(t, NULL, 20000, e) < 0))
		return vmops_err_prefix(e, "launch of sandbox %s", req->sandbox);
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, reserve_tx, &r, e) < 0) {
		if (req->dry_run && e->code == VMOPS_EXIT_OK) {
			vmops_err_clear(e);
			res->worker_id = r.worker_id;
			return 0;
		}
		return -1;
	}
	res->sandbox_id = r.sandbox_id;
	res->vmm_id = r.vmm_id;
	res->worker_id = r.worker_id;

	opts.run_dir = r.run_dir;
	opts.vmm_id = (uint64_t)r.vmm_id;
	opts.binary = req->binary;
	opts.auto_accel = req->auto_accel;
	opts.interrupted = req->interrupted;
	/* Every step checks the flag: an interruption undoes whatever was done. */
	if (interrupted(req)) {
		vmops_err(&herr, VMOPS_EXIT_INTERRUPTED, "interrupted before the hypervisor was started");
		goto undo;
	}
	if (!t && vmops_vm_mkdir_p(r.worker_run_dir, &herr) < 0)
		goto undo;
	h = t ? vmops_remote_hv_launch(t, spec, &opts, &herr) : vmops_hv_launch(spec, &opts, &herr);
	if (!h && herr.code == VMOPS_EXIT_UNKNOWN) {
		/* The host may have started it: keep the starting row and the
		 * reservation for ghost-reap on that host to settle. */
		*e = herr;
		return vmops_err_prefix(e, "launch of sandbox %s on worker %s: vmm %lld left as starting for ghost-reap",
					req->sandbox, req->worker, r.vmm_id);
	}
	if (!h)
		goto undo;
	{
		struct pid_ctx pc = { &r, vmops_hv_info(h) };

		if (vmops_db_tx(c, VMOPS_READ_COMMITTED, record_pid_tx, &pc, &herr) < 0)
			goto stop;
	}
	if (vmops_hv_wait_ready(h, req->ready_timeout_ms, &herr) < 0)
		goto stop;
	if (interrupted(req)) {
		vmops_err(&herr, VMOPS_EXIT_INTERRUPTED, "interrupted before it was recorded as running");
		goto stop;
	}
	{
		struct running_ctx rc = { &r, vmops_hv_info(h), -1 };

		res->info = *vmops_hv_info(h);
		/* The commit point: after it the launch is whole, interrupted or not. */
		if (vmops_db_tx(c, VMOPS_READ_COMMITTED, running_tx, &rc, &herr) == 0) {
			res->scale_event_id = rc.event_id;
			vmops_hv_free(h);
			return 0;
		}
	}
stop:
	/* Do not leave an unrecorded VM running: stop it before the rows go. */
	vmops_fault_point("launch-stop");
	{
		struct vmops_error derr = { 0 };

		if (vmops_hv_destroy(h, 10000, &derr) < 0) {
			/* It may still hold its memory: keep its reservation and its
			 * starting row (pid recorded) for ghost-reap to finish. */
			vmops_hv_free(h);
			*e = herr;
			if (!e->code)
				e->code = VMOPS_EXIT_HYPERVISOR;
			return vmops_err_prefix(e, "launch of sandbox %s on worker %s: vmm %lld could not be stopped (%.300s),"
						" left as starting for ghost-reap",
						req->sandbox, req->worker, r.vmm_id, derr.msg);
		}
		vmops_hv_free(h);
		stopped = true;
	}
undo:
	{
		struct failed_ctx fc = { &r, herr.msg, herr.code == VMOPS_EXIT_INTERRUPTED };

		if (vmops_db_tx(c, VMOPS_READ_COMMITTED, launch_failed_tx, &fc, &ferr) < 0)
			vmops_warn("vmm %lld: could not record the failed launch: %s", r.vmm_id, ferr.msg);
	}
	*e = herr;
	if (!e->code)
		e->code = VMOPS_EXIT_HYPERVISOR;
	if (e->code == VMOPS_EXIT_INTERRUPTED && !ferr.msg[0]) {
		char m[VMOPS_ERRMSG_MAX];

		snprintf(m, sizeof(m), "%s", e->msg);
		vmops_err(e, VMOPS_EXIT_INTERRUPTED, "%.700s; %s", m,
			  stopped ? "the hypervisor was stopped and nothing is recorded" : "nothing is recorded");
	}
	return vmops_err_prefix(e, "launch of sandbox %s on worker %s", req->sandbox, req->worker);
}

int vmops_vm_load_info(PGconn *c, long long vmm_id, struct vmops_vmm_info *info,
		       struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	char vid[24];

	r = vmops_db_q(c, e, "SELECT hypervisor, pid, pid_start_time, control_socket, agent_socket, run_dir"
			     " FROM vmms WHERE id = $1", vmops_db_ll(vid, vmm_id));
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "vmm %lld does not exist", vmm_id);
	memset(info, 0, sizeof(*info));
	snprintf(info->kind, sizeof(info->kind), "%s", vmops_db_get(r, 0, "hypervisor"));
	info->vmm_id = (uint64_t)vmm_id;
	info->pid = (pid_t)vmops_db_get_ll(r, 0, "pid", 0);
	info->start_time = (unsigned long long)vmops_db_get_ll(r, 0, "pid_start_time", 0);
#define COPY(f, col) snprintf(info->f, sizeof(info->f), "%s", vmops_db_get(r, 0, col) ? vmops_db_get(r, 0, col) : "")
	COPY(control_socket, "control_socket");
	COPY(agent_socket, "agent_socket");
	COPY(run_dir, "run_dir");
#undef COPY
	if (info->run_dir[0] && !strcmp(info->kind, "qemu")) {
		snprintf(info->serial_log, sizeof(info->serial_log), "%.4000s/serial.log", info->run_dir);
		snprintf(info->stderr_log, sizeof(info->stderr_log), "%.4000s/qemu.log", info->run_dir);
	} else if (info->run_dir[0]) {
		/* Cloud Hypervisor, Firecracker: console and VMM output in one log (lib/hv/rest.h) */
		snprintf(info->serial_log, sizeof(info->serial_log), "%.4000s/vmm.log", info->run_dir);
		snprintf(info->stderr_log, sizeof(info->stderr_log), "%.4000s/vmm.log", info->run_dir);
	}
	return 0;
}

struct destroy_ctx {
	long long sandbox_id, vmm_id;
	const char *sandbox;
};

static int destroy_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct destroy_ctx *a = data;
	_cleanup_pgresult_ PGresult *r = NULL;
	char sid[24], vid[24];

	vmops_db_ll(sid, a->sandbox_id);
	vmops_db_ll(vid, a->vmm_id);
	/* Re-checked under the row lock: a migration that began since the first
	 * look owns the sandbox now (its own failure path will see the source
	 * gone), so this destroy writes nothing. */
	r = vmops_db_q(c, e, "SELECT status, active_vmm_id FROM sandboxes WHERE id = $1 FOR UPDATE", sid);
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "sandbox %s no longer exists", a->sandbox);
	if (!strcmp(vmops_db_get(r, 0, "status"), "migrating") ||
	    vmops_db_get_ll(r, 0, "active_vmm_id", -1) != a->vmm_id)
		return vmops_err(e, VMOPS_EXIT_CONFLICT,
				 "sandbox %s started migrating while it was being destroyed: nothing recorded; "
				 "run vm-migrate --recover, then destroy it again", a->sandbox);
	if (vmops_db_x(c, e, "UPDATE vmms SET state = 'destroyed' WHERE id = $1 AND state <> 'destroyed'", vid) < 0 ||
	    vmops_db_x(c, e, "DELETE FROM reservations WHERE vmm_id = $1", vid) < 0 ||
	    vmops_db_x(c, e, "UPDATE sandboxes SET status = 'destroyed' WHERE id = $1", sid) < 0)
		return -1;
	return vmops_audit(c, "vm-fleet", "destroy", "vmm", a->vmm_id, NULL, NULL, a->sandbox, e);
}

/* A VMM on another host: stopped there (its run directory goes too); an
 * unreachable host is UNREACHABLE and nothing was done. */
static int remote_destroy(struct vmops_transport *t, const struct vmops_vmm_info *info,
			  int timeout_ms, bool *was_running, struct vmops_error *e)
{
	struct vmops_hv *h;
	int r;

	if (info->pid <= 0)
		return 0;
	if (vmops_transport_hello(t, NULL, 20000, e) < 0 || !(h = vmops_remote_hv_attach(t, info, e)))
		return -1;
	*was_running = vmops_hv_is_alive(h);
	r = vmops_hv_destroy(h, timeout_ms, e);
	vmops_hv_free(h);
	return r;
}

int vmops_vm_destroy(PGconn *c, const char *sandbox, int timeout_ms, bool dry_run,
		     struct vmops_destroy_res *res, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	struct vmops_vmm_info info = { 0 };
	struct destroy_ctx d = { .sandbox = sandbox };
	_cleanup_transport_ struct vmops_transport *t = NULL;
	struct vmops_hv *h;

	memset(res, 0, sizeof(*res));
	r = vmops_db_q(c, e, "SELECT id, active_vmm_id, status FROM sandboxes WHERE name = $1", sandbox);
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "sandbox %s does not exist", sandbox);
	d.sandbox_id = res->sandbox_id = vmops_db_get_ll(r, 0, "id", -1);
	d.vmm_id = res->vmm_id = vmops_db_get_ll(r, 0, "active_vmm_id", -1);
	if (strcmp(vmops_db_get(r, 0, "status"), "destroyed") == 0)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s is already destroyed", sandbox);
	if (strcmp(vmops_db_get(r, 0, "status"), "migrating") == 0)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s is migrating: try again when it is done", sandbox);
	if (dry_run)
		return 0;
	if (d.vmm_id > 0) {
		if (vmops_vm_load_info(c, d.vmm_id, &info, e) < 0 ||
		    vmops_transport_for_vmm(c, d.vmm_id, &t, e) < 0)
			return -1;
		if (t) {
			if (remote_destroy(t, &info, timeout_ms, &res->was_running, e) < 0)
				return vmops_err_prefix(e, "sandbox %s: vmm %lld", sandbox, d.vmm_id);
		} else if (info.pid > 0 && vmops_hv_driver_find(info.kind)) {
			h = vmops_hv_attach(&info, 2000, NULL);
			if (h) {
				res->was_running = vmops_hv_is_alive(h);
				if (res->was_running && vmops_hv_destroy(h, timeout_ms, e) < 0) {
					vmops_hv_free(h);
					return vmops_err_prefix(e, "sandbox %s: vmm %lld", sandbox, d.vmm_id);
				}
				vmops_hv_free(h);
			} else {
				struct vmops_error ce = { 0 };
				int live;

				vmops_debug("vmm %lld: control socket does not answer; checking the process", d.vmm_id);
				live = vmops_proc_check(NULL, info.pid, info.start_time, NULL, &ce);
				if (live == VMOPS_PROC_ALIVE)
					return vmops_err(e, VMOPS_EXIT_HYPERVISOR,
							 "sandbox %s: vmm %lld (pid %d) runs but its control socket %s does not answer; not destroying it blind",
							 sandbox, d.vmm_id, (int)info.pid, info.control_socket);
				if (live == VMOPS_PROC_UNKNOWN)
					return vmops_err(e, VMOPS_EXIT_CONFLICT,
							 "sandbox %s: vmm %lld: pid %d is alive, no start time is recorded and the control socket %s does not answer: cannot tell whether it is this vmm; nothing done",
							 sandbox, d.vmm_id, (int)info.pid, info.control_socket);
				if (live < 0)
					return vmops_err(e, VMOPS_EXIT_FAILURE, "sandbox %s: vmm %lld: %s; nothing done",
							 sandbox, d.vmm_id, ce.msg);
			}
		}
	}
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, destroy_tx, &d, e) < 0)
		return -1;
	if (d.vmm_id > 0 && !t)
		vmops_vm_run_dir_gone(info.run_dir, "sandbox", sandbox);   /* the VMM is gone and recorded so */
	return 0;
}

/* ---- on the VMM's own host: a free port, stopping a VMM by signal ---------- */

int vmops_vm_free_port(const char *address, long long lo, long long hi, long long salt)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
	long long span = hi - lo + 1;

	if (!address || lo < 1 || hi > 65535 || span < 1)
		return 0;
	if (salt < 0)
		salt = -salt;
	for (long long k = 0; k < span; k++) {
		int port = (int)(lo + (salt + k) % span), fd, ok;
		struct addrinfo *ai = NULL;
		char ps[8];

		snprintf(ps, sizeof(ps), "%d", port);
		if (getaddrinfo(address, ps, &hints, &ai) != 0 || !ai)
			return 0;
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		ok = fd >= 0 && bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		if (ok)
			return port;
	}
	return 0;
}

struct marker_ctx {
	long long vmm_id;
	const char *run_dir;
	pid_t pid;
	unsigned long long start;
};

/* The token alone is no proof (ghost.h): the command line must name a path in the VMM's run dir. */
static int find_marker(const struct vmops_proc_info *i, void *data)
{
	struct marker_ctx *m = data;

	if (i->vmm_id == m->vmm_id && i->stat.state != 'Z' && i->stat.state != 'X' &&
	    vmops_ghost_argv_names_dir(i->argc, i->argv, m->run_dir)) {
		m->pid = i->stat.pid;
		m->start = i->stat.starttime;
		return 1;
	}
	return 0;
}

int vmops_vm_stop_process(const struct vmops_vmm_info *info, const char *run_dir, int *killed,
			  struct vmops_error *e)
{
	struct marker_ctx m = { (long long)info->vmm_id, run_dir, 0, 0 };
	struct vmops_proc_term_outcome out;
	int rc;

	if (info->pid > 0) {
		m.pid = info->pid;
		m.start = info->start_time;
	} else if (run_dir && *run_dir) {
		(void)vmops_proc_scan(VMOPS_PROC_ROOT_DEFAULT, VMOPS_PROC_SCAN_HV_ONLY, find_marker, &m, e);
	}
	if (m.pid <= 0)
		return 0;
	rc = vmops_proc_terminate(m.pid, m.start, 3000, &out, e);
	if (rc == VMOPS_PROC_SIG_REFUSED)
		return 0;                       /* the pid is another process now: ours is gone */
	if (rc < 0)
		return vmops_err_prefix(e, "vmm %llu (pid %d)", (unsigned long long)info->vmm_id, (int)m.pid);
	if (out.how != VMOPS_PROC_TERM_GONE && killed)
		(*killed)++;
	if (vmops_proc_check(VMOPS_PROC_ROOT_DEFAULT, m.pid, m.start, NULL, e) == VMOPS_PROC_ALIVE)
		return vmops_err(e, VMOPS_EXIT_TIMEOUT, "vmm %llu (pid %d) is still alive",
				 (unsigned long long)info->vmm_id, (int)m.pid);
	if (info->control_socket[0] && vmops_ghost_path_inside(info->control_socket, info->run_dir))
		unlink(info->control_socket);
	return 0;
}
