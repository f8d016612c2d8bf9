/* SPDX-License-Identifier: MIT */
/* Wake: a hibernated sandbox back from its bundle, on a worker with room. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../bundle/bundle.h"
#include "../db.h"
#include "../exitcodes.h"
#include "../fault.h"
#include "../fleet.h"
#include "../images.h"
#include "../log.h"
#include "../macro.h"
#include "../vm.h"
#include "snapshot.h"

struct wake {
	const struct vmops_wake_opts *o;
	struct vmops_wake_report *r;
	char owner[160];
	char location[PATH_MAX], sha256[65], run_dir[PATH_MAX], hypervisor[32];
	long long memory_mb, vcpus;
	char *spec_json;             /* the spec restored with (disks repointed) */
	const struct vmops_vmm_info *info;
};

/* The wake's lease: its load timeout and a margin for extracting and launching. */
static long long lease_s(const struct wake *w)
{
	return (w->o->timeout_ms > 0 ? w->o->timeout_ms : 600000) / 1000 + 300;
}

/*
 * The first candidate (most room first) whose image directories hold the
 * spec's kernel, initrd and read-only disks (images.h; the writable disks
 * come from the bundle into the new VMM's own run directory).  Checked
 * before anything is reserved: when every candidate refuses, the first
 * refusal (CONFLICT) ends the claim.
 */
static int pick_worker(struct wake *w, const PGresult *k, const char *spec_json, struct vmops_error *e)
{
	_cleanup_spec_ struct vmops_spec *spec = vmops_spec_parse(spec_json, (size_t)-1, e);
	struct vmops_error first = { 0 };

	if (!spec) {
		e->code = VMOPS_EXIT_CONFLICT;
		return vmops_err_prefix(e, "sandbox %s: its launch spec", w->o->sandbox);
	}
	for (int i = 0; i < PQntuples(k); i++) {
		struct vmops_error pe = { 0 };

		if (vmops_images_check_recorded(spec, PQgetvalue(k, i, 3), NULL, true, &pe) == 0)
			return i;
		if (!first.code)
			vmops_err(&first, pe.code, "sandbox %s: cannot wake on %s: %s", w->o->sandbox, PQgetvalue(k, i, 1),
				  pe.msg);
	}
	*e = first;
	return -1;
}

/* Tx 1: hibernated sandbox, ready snapshot, a worker with room: VMM starting,
 * its reservation (admission), snapshot restoring under our lease. */
static int claim_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct wake *w = data;
	char sid[24], wid[24], vid[24], mem[24], cpu[24], run[PATH_MAX];
	_cleanup_pgresult_ PGresult *s = NULL, *k = NULL, *v = NULL;
	int i;

	s = vmops_db_q(c, e, "SELECT s.id, s.status, s.memory_mb, s.vcpus, n.id AS snap, n.location, n.sha256,"
			     " v.hypervisor, s.launch_spec::text FROM sandboxes s LEFT JOIN snapshots n ON n.sandbox_id = s.id AND n.state = 'ready'"
			     " LEFT JOIN vmms v ON v.id = n.vmm_id WHERE s.name = $1 FOR UPDATE OF s", w->o->sandbox);
	if (!s)
		return -1;
	if (PQntuples(s) != 1)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "sandbox %s: not found", w->o->sandbox);
	if (strcmp(PQgetvalue(s, 0, 1), "hibernated") || PQgetisnull(s, 0, 4))
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s: is %s%s", w->o->sandbox, PQgetvalue(s, 0, 1),
				 PQgetisnull(s, 0, 4) ? ", with no ready snapshot" : ", not hibernated");
	w->r->sandbox_id = atoll(PQgetvalue(s, 0, 0));
	w->memory_mb = atoll(PQgetvalue(s, 0, 2));
	w->vcpus = atoll(PQgetvalue(s, 0, 3));
	w->r->snapshot_id = atoll(PQgetvalue(s, 0, 4));
	snprintf(w->location, sizeof(w->location), "%s", PQgetvalue(s, 0, 5));
	snprintf(w->sha256, sizeof(w->sha256), "%s", PQgetvalue(s, 0, 6));
	snprintf(w->hypervisor, sizeof(w->hypervisor), "%s", PQgetvalue(s, 0, 7));
	vmops_db_ll(mem, w->memory_mb);
	vmops_db_ll(cpu, w->vcpus);
	/* The active worker with the most free memory that fits (or the one named). */
	k = vmops_db_q(c, e, "SELECT w.id, w.name, w.run_dir, array_to_string(w.image_dirs, ':') FROM workers w"
			     " WHERE w.state = 'active' AND ($3::text IS NULL OR w.name = $3)"
			     " AND w.memory_mb - coalesce((SELECT sum(memory_mb) FROM reservations r WHERE r.worker_id = w.id), 0) >= $1"
			     " AND w.vcpus - coalesce((SELECT sum(vcpus) FROM reservations r WHERE r.worker_id = w.id), 0) >= $2"
			     " ORDER BY w.memory_mb - coalesce((SELECT sum(memory_mb) FROM reservations r WHERE r.worker_id = w.id), 0) DESC, w.id",
		       mem, cpu, w->o->worker);
	if (!k)
		return -1;
	if (PQntuples(k) == 0)
		return vmops_err(e, VMOPS_EXIT_NOCAPACITY, "sandbox %s: no active worker%s%s has room for %s MiB",
				 w->o->sandbox, w->o->worker ? " " : "", w->o->worker ? w->o->worker : "", mem);
	i = pick_worker(w, k, PQgetvalue(s, 0, 8), e);
	if (i < 0)
		return -1;
	w->r->worker_id = atoll(PQgetvalue(k, i, 0));
	snprintf(w->r->worker, sizeof(w->r->worker), "%s", PQgetvalue(k, i, 1));
	if (vmops_vm_worker_run_dir(PQgetisnull(k, i, 2) ? NULL : PQgetvalue(k, i, 2), w->r->worker, run,
				    sizeof(run), e) < 0)
		return -1;
	vmops_db_ll(sid, w->r->sandbox_id);
	vmops_db_ll(wid, w->r->worker_id);
	v = vmops_db_q(c, e, "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state)"
			     " VALUES ($1, $2, $3, 'starting') RETURNING id", sid, wid, w->hypervisor);
	if (!v)
		return -1;
	w->r->vmm_id = atoll(PQgetvalue(v, 0, 0));
	vmops_db_ll(vid, w->r->vmm_id);
	snprintf(w->run_dir, sizeof(w->run_dir), "%.3000s/vmm-%lld", run, w->r->vmm_id);
	if (vmops_db_x(c, e, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES ($1, $2, $3, $4)",
		       vid, wid, mem, cpu) < 0 ||
	    vmops_db_x(c, e, "UPDATE vmms SET run_dir = $2 WHERE id = $1", vid, w->run_dir) < 0 ||
	    vmops_db_x(c, e, "UPDATE sandboxes SET target_vmm_id = $2 WHERE id = $1", sid, vid) < 0 ||
	    vmops_db_x(c, e, "UPDATE snapshots SET state = 'restoring', restore_vmm_id = $2, lease_owner = $3,"
			     " lease_expires_at = now() + make_interval(secs => $4::int) WHERE id = $1",
		       vmops_db_ll(mem, w->r->snapshot_id), vid, w->owner, vmops_db_ll(cpu, lease_s(w))) < 0)
		return -1;
	return 0;
}

/* Between launch and ready: the process is recorded on the starting VMM. */
static int pid_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct wake *w = data;
	char vid[24], pid[24], st[24];

	return vmops_db_x(c, e, "UPDATE vmms SET pid = $2, pid_start_time = $3, control_socket = $4,"
			     " agent_socket = nullif($5, '') WHERE id = $1 AND state = 'starting'",
			  vmops_db_ll(vid, w->r->vmm_id), vmops_db_ll(pid, w->info->pid),
			  vmops_db_ll(st, (long long)w->info->start_time), w->info->control_socket,
			  w->info->agent_socket);
}

/* Tx 2: VMM running, sandbox running on its new worker, billing open, snapshot restored. */
static int running_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct wake *w = data;
	char sid[24], vid[24], wid[24], nid[24];
	_cleanup_pgresult_ PGresult *u = NULL, *ev = NULL;

	vmops_db_ll(sid, w->r->sandbox_id);
	vmops_db_ll(vid, w->r->vmm_id);
	vmops_db_ll(wid, w->r->worker_id);
	vmops_db_ll(nid, w->r->snapshot_id);
	u = vmops_db_q(c, e, "UPDATE vmms SET state = 'running' WHERE id = $1 AND state = 'starting'"
			     " AND time_deleted IS NULL RETURNING id", vid);
	if (!u)
		return -1;
	if (PQntuples(u) != 1)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "vmm %s is no longer starting in the database", vid);
	if (vmops_db_x(c, e, "UPDATE snapshots SET state = 'restored', time_restored = now(), lease_owner = NULL,"
			     " lease_expires_at = NULL WHERE id = $1 AND state = 'restoring' AND lease_owner = $2",
		       nid, w->owner) < 0 ||
	    vmops_db_x(c, e, "UPDATE sandboxes SET status = 'running', worker_id = $2, active_vmm_id = $3,"
			     " target_vmm_id = NULL, launch_spec = $4::jsonb WHERE id = $1 AND status = 'hibernated'",
		       sid, wid, vid, w->spec_json) < 0)
		return -1;
	ev = vmops_db_q(c, e, "INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)"
			      " SELECT id, org_id, $2, $3, memory_mb, vcpus FROM sandboxes WHERE id = $1"
			      " AND status = 'running' RETURNING id", sid, wid, vid);
	if (!ev)
		return -1;
	if (PQntuples(ev) != 1)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s changed while it was being woken", w->o->sandbox);
	w->r->scale_event_id = atoll(PQgetvalue(ev, 0, 0));
	return vmops_audit(c, w->o->program, "wake", "sandbox", w->r->sandbox_id, NULL, NULL, w->r->worker, e);
}

/* The wake failed: new VMM gone, reservation freed, sandbox hibernated with its bundle. */
static int failed_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct wake *w = data;
	char sid[24], vid[24], nid[24];

	vmops_db_ll(sid, w->r->sandbox_id);
	vmops_db_ll(vid, w->r->vmm_id);
	vmops_db_ll(nid, w->r->snapshot_id);
	return vmops_db_x(c, e, "UPDATE snapshots SET state = 'ready', restore_vmm_id = NULL, lease_owner = NULL,"
			     " lease_expires_at = NULL WHERE id = $1 AND state = 'restoring'", nid) < 0 ||
	       vmops_db_x(c, e, "UPDATE sandboxes SET target_vmm_id = NULL WHERE id = $1 AND target_vmm_id = $2",
			  sid, vid) < 0 ||
	       vmops_db_x(c, e, "UPDATE vmms SET state = 'failed' WHERE id = $1", vid) < 0 ||
	       vmops_db_x(c, e, "DELETE FROM reservations WHERE vmm_id = $1", vid) < 0 ? -1 : 0;
}

/* Extract and verify (the whole file's SHA-256 as recorded first); the spec points at the copies. */
static struct vmops_spec *extract(struct wake *w, int dfd, const char *sdir, struct vmops_error *e)
{
	struct vmops_bundle_opts bo = { .interrupted = w->o->interrupted };
	struct vmops_manifest m = { 0 };
	_cleanup_close_ int in = -1;
	struct vmops_spec *spec;
	char sha[65];

	if (vmops_file_sha256(w->location, sha, NULL, e) < 0)
		return NULL;
	if (strcmp(sha, w->sha256)) {
		vmops_err(e, VMOPS_EXIT_INTEGRITY, "bundle %s: sha256 %s, recorded %s", w->location, sha, w->sha256);
		return NULL;
	}
	in = open(w->location, O_RDONLY | O_CLOEXEC);
	if (in < 0 || vmops_bundle_extract_fd(in, dfd, &m, &bo, e) < 0) {
		if (in < 0)
			vmops_err(e, VMOPS_EXIT_FAILURE, "bundle %s: %s", w->location, strerror(errno));
		return NULL;
	}
	spec = vmops_spec_from_json(m.spec, e);
	vmops_manifest_clear(&m);
	for (size_t i = 0; spec && i < spec->n_disks; i++) {
		if (spec->disks[i].readonly)
			continue;
		free(spec->disks[i].path);
		if (asprintf(&spec->disks[i].path, "%s/disk%zu.img", sdir, i) < 0)
			spec->disks[i].path = NULL;
	}
	free(w->spec_json);
	w->spec_json = spec ? vmops_spec_to_string(spec) : NULL;
	return spec;
}

static int restore(PGconn *c, struct wake *w, struct vmops_hv **out, struct vmops_error *e)
{
	struct vmops_prepare_opts po = { .agent_ms = w->o->agent_ms, .prepare_ms = w->o->prepare_ms };
	struct vmops_hv_launch_opts lo = { .vmm_id = (uint64_t)w->r->vmm_id, .auto_accel = w->o->auto_accel,
					   .interrupted = w->o->interrupted };
	_cleanup_spec_ struct vmops_spec *spec = NULL;
	_cleanup_close_ int dfd = -1;
	char sdir[PATH_MAX + 16];
	int tmo = w->o->timeout_ms > 0 ? w->o->timeout_ms : 600000;

	snprintf(sdir, sizeof(sdir), "%s/snapshot", w->run_dir);
	if (vmops_vm_mkdir_p(sdir, e) < 0)
		return -1;
	dfd = open(sdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "%s: %s", sdir, strerror(errno));
	vmops_fault_point("extract");
	spec = extract(w, dfd, sdir, e);
	if (!spec || !w->spec_json)
		return -1;
	/* The bundle's own spec, as launched, passes the policy too (the claim checked the recorded one). */
	{
		char dirs[8192];
		if (vmops_images_worker_dirs(c, w->r->worker, dirs, sizeof(dirs), e) < 0 ||
		    vmops_images_check_recorded(spec, dirs, NULL, true, e) < 0)
			return vmops_err_prefix(e, "sandbox %s: its bundle", w->o->sandbox);
	}
	lo.run_dir = w->run_dir;
	vmops_fault_point("launch");
	*out = vmops_hv_launch_for_restore(spec, &lo, e);
	if (!*out)
		return -1;
	w->info = vmops_hv_info(*out);
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, pid_tx, w, e) < 0)
		return -1;
	return vmops_hv_restore(*out, dfd, tmo, e) < 0 ? -1 : vmops_prep_recover(*out, &po, e);
}

int vmops_wake(PGconn *c, const struct vmops_wake_opts *o, struct vmops_wake_report *r,
	       struct vmops_error *e)
{
	struct vmops_wake_opts oo = *o;
	struct wake w = { .o = &oo, .r = r };
	struct vmops_hv *hv = NULL;
	struct vmops_error e2 = { 0 };
	char host[64] = "";

	memset(r, 0, sizeof(*r));
	if (!oo.program)
		oo.program = "snapshot-prep";
	gethostname(host, sizeof(host) - 1);
	snprintf(w.owner, sizeof(w.owner), "%s pid %d on %s", oo.program, (int)getpid(), host);
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, claim_tx, &w, e) < 0)
		return -1;
	if (restore(c, &w, &hv, e) == 0 &&
	    (vmops_fault_point("commit"), vmops_db_tx(c, VMOPS_READ_COMMITTED, running_tx, &w, e)) == 0) {
		vmops_hv_free(hv);
		free(w.spec_json);
		return 0;
	}
	/* The new VMM goes first, then its records: never a reservation freed under a live process. */
	if (hv && vmops_hv_destroy(hv, 10000, &e2) < 0) {
		vmops_warn("sandbox %s: new vmm %lld did not stop: %s (its reservation stays)", oo.sandbox,
			   r->vmm_id, e2.msg);
	} else if (vmops_db_tx(c, VMOPS_READ_COMMITTED, failed_tx, &w, &e2) < 0) {
		vmops_warn("sandbox %s: recording the failed wake: %s", oo.sandbox, e2.msg);
	} else if (w.run_dir[0] && vmops_snap_remove_run_dir(w.run_dir, &e2) < 0) {
		vmops_warn("sandbox %s: removing %s: %s", oo.sandbox, w.run_dir, e2.msg);
	}
	vmops_hv_free(hv);
	free(w.spec_json);
	return -1;
}
