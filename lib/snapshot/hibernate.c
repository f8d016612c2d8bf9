/* SPDX-License-Identifier: MIT */
/* Hibernate: a running sandbox into a bundle, in the database (see snapshot.h). */
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
#include "../log.h"
#include "../macro.h"
#include "../vm.h"
#include "snapshot.h"

struct hib {
	const struct vmops_hibernate_opts *o;
	struct vmops_hibernate_report *r;
	char owner[160];
	char worker[128];
	char staging[PATH_MAX];
	char *spec_json;
	struct vmops_vmm_info info;
	struct vmops_manifest m;
	const char *why;             /* failed_tx: error text */
};

static void hib_free(struct hib *h)
{
	free(h->spec_json);
	vmops_manifest_clear(&h->m);
}

/* Tx 1: the sandbox runs; its snapshot row (writing, leased) is the claim. */
static int claim_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct hib *h = data;
	char sid[24], vid[24], wid[24], ms[24], loc[PATH_MAX];
	_cleanup_pgresult_ PGresult *s = NULL, *i = NULL;

	s = vmops_db_q(c, e, "SELECT s.id, s.status, s.active_vmm_id, s.launch_spec::text, w.id AS wid, w.name,"
			     " w.transport FROM sandboxes s JOIN workers w ON w.id = s.worker_id WHERE s.name = $1"
			     " FOR UPDATE OF s", h->o->sandbox);
	if (!s)
		return -1;
	if (PQntuples(s) != 1)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "sandbox %s: not found", h->o->sandbox);
	if (strcmp(PQgetvalue(s, 0, 1), "running") || PQgetisnull(s, 0, 2))
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s: is %s, not running", h->o->sandbox,
				 PQgetvalue(s, 0, 1));
	if (strcmp(PQgetvalue(s, 0, 6), "local"))
		return vmops_err(e, VMOPS_EXIT_WRONG_HOST, VMOPS_SNAPSHOT_ELSEWHERE_FMT, h->o->sandbox,
				 PQgetvalue(s, 0, 5));
	h->r->sandbox_id = atoll(PQgetvalue(s, 0, 0));
	h->r->vmm_id = atoll(PQgetvalue(s, 0, 2));
	free(h->spec_json);
	h->spec_json = strdup(PQgetvalue(s, 0, 3));
	snprintf(h->worker, sizeof(h->worker), "%s", PQgetvalue(s, 0, 5));
	snprintf(wid, sizeof(wid), "%s", PQgetvalue(s, 0, 4));
	vmops_db_ll(sid, h->r->sandbox_id);
	vmops_db_ll(vid, h->r->vmm_id);
	vmops_db_ll(ms, (long long)(h->o->budget_ms / 1000 + 300));
	i = vmops_db_q(c, e, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, lease_owner,"
			     " lease_expires_at) VALUES ($1, $2, $3, '/pending', $4,"
			     " now() + make_interval(secs => $5::int)) RETURNING id",
		       sid, vid, wid, h->owner, ms);
	if (!i) {
		if (!strcmp(e->sqlstate, "23505"))
			return vmops_err(e, VMOPS_EXIT_CONFLICT,
					 "sandbox %s: a snapshot is already being written or restored", h->o->sandbox);
		return -1;
	}
	h->r->snapshot_id = atoll(PQgetvalue(i, 0, 0));
	snprintf(loc, sizeof(loc), "%s/%s-%lld.vmops", h->o->bundle_dir, h->o->sandbox, h->r->snapshot_id);
	snprintf(h->r->location, sizeof(h->r->location), "%s", loc);
	/* Recorded before it exists, for `snapshot-prep recover` after a crash. */
	snprintf(h->staging, sizeof(h->staging), "%s/.hibernate-%lld",
		 h->o->work_dir ? h->o->work_dir : h->o->bundle_dir, h->r->snapshot_id);
	return vmops_db_x(c, e, "UPDATE snapshots SET location = $2, staging = $3 WHERE id = $1",
			  vmops_db_ll(sid, h->r->snapshot_id), loc, h->staging);
}

/* Writing failed: the snapshot is failed; the sandbox was never touched. */
static int failed_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct hib *h = data;
	char id[24];

	return vmops_db_x(c, e, "UPDATE snapshots SET state = 'failed', error = $2, lease_owner = NULL,"
			     " lease_expires_at = NULL WHERE id = $1 AND state = 'writing'",
			  vmops_db_ll(id, h->r->snapshot_id), h->why);
}

/* Tx 2: snapshot ready, VMM destroyed, sandbox hibernated (billing closed). */
static int commit_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct hib *h = data;
	char id[24], vid[24], sid[24], size[24];
	_cleanup_free_ char *manifest = NULL;
	_cleanup_pgresult_ PGresult *u = NULL, *v = NULL, *s = NULL;
	cJSON *j = vmops_manifest_to_json(&h->m);

	manifest = j ? cJSON_PrintUnformatted(j) : NULL;
	cJSON_Delete(j);
	if (!manifest)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	vmops_db_ll(id, h->r->snapshot_id);
	vmops_db_ll(vid, h->r->vmm_id);
	vmops_db_ll(sid, h->r->sandbox_id);
	u = vmops_db_q(c, e, "UPDATE snapshots SET state = 'ready', size_bytes = $2, sha256 = $3,"
			     " manifest = $4::jsonb, time_ready = now(), lease_owner = NULL, lease_expires_at = NULL"
			     " WHERE id = $1 AND state = 'writing' AND lease_owner = $5 RETURNING id",
		       id, vmops_db_ll(size, (long long)h->r->size_bytes), h->r->sha256, manifest, h->owner);
	if (!u)
		return -1;
	if (PQntuples(u) != 1)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "snapshot %s: no longer ours (lease lost)", id);
	v = vmops_db_q(c, e, "UPDATE vmms SET state = 'destroyed' WHERE id = $1 AND state = 'running' RETURNING id", vid);
	s = vmops_db_q(c, e, "UPDATE sandboxes SET status = 'hibernated', active_vmm_id = NULL"
			     " WHERE id = $1 AND status = 'running' AND active_vmm_id = $2 RETURNING id", sid, vid);
	if (!v || !s)
		return -1;
	if (PQntuples(v) != 1 || PQntuples(s) != 1)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s changed while it was being hibernated",
				 h->o->sandbox);
	return vmops_audit(c, h->o->program, "hibernate", "sandbox", h->r->sandbox_id, NULL, NULL,
			   h->r->location, e);
}

static int fill_manifest(struct hib *h, struct vmops_hv *hv, struct vmops_error *e)
{
	snprintf(h->m.hypervisor, sizeof(h->m.hypervisor), "%s", h->info.kind);
	if (vmops_hv_version(hv, h->m.hypervisor_version, sizeof(h->m.hypervisor_version), e) < 0)
		return -1;
	h->m.spec = cJSON_Parse(h->spec_json);
	snprintf(h->m.sandbox, sizeof(h->m.sandbox), "%s", h->o->sandbox);
	h->m.vmm_id = (uint64_t)h->r->vmm_id;
	snprintf(h->m.worker, sizeof(h->m.worker), "%s", h->worker);
	return 0;
}

/* Prepare, snapshot into a staging dir, bundle to the location; the VM stays prepared. */
static int write_bundle(struct hib *h, struct vmops_hv *hv, struct vmops_prep *p,
			struct vmops_error *e)
{
	struct vmops_prepare_opts po = { .agent_ms = h->o->agent_ms, .prepare_ms = h->o->prepare_ms,
					 .hint_ms = h->o->hint_ms, .interrupted = h->o->interrupted };
	struct vmops_bundle_opts bo = { .interrupted = h->o->interrupted };
	const char *names[VMOPS_SNAP_UNDO_MAX];
	_cleanup_spec_ struct vmops_spec *spec = vmops_spec_parse(h->spec_json, (size_t)-1, e);
	const char *dir = h->staging;
	size_t n = 0;
	int dfd, rc;

	if (!spec)
		return -1;
	h->m.memory_bytes = (uint64_t)spec->memory_mb << 20;
	/* Named by the snapshot id (unique): one that exists already is not ours. */
	if (mkdir(dir, 0700) < 0 || (dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "staging %s: %s", dir, strerror(errno));
	rc = vmops_prepare(p, hv, &po, e);
	if (rc == 0)
		rc = vmops_prep_snapshot(p, dfd, spec, (int)h->o->budget_ms, names, &n, e);
	if (rc == 0) {
		vmops_fault_point("bundle");
		rc = fill_manifest(h, hv, e);
	}
	if (rc == 0)
		rc = vmops_bundle_write_path(h->r->location, dfd, names, n, &h->m, &bo, e);
	if (rc == 0)
		rc = vmops_file_sha256(h->r->location, h->r->sha256, &h->r->size_bytes, e);
	for (size_t i = 0; i < n; i++)
		unlinkat(dfd, names[i], 0);
	close(dfd);
	p->dirfd = -1;
	rmdir(dir);
	return rc;
}

/* After the commit: stop the QEMU; free its reservation once it is gone. */
static void stop_after_commit(PGconn *c, struct hib *h, struct vmops_hv *hv)
{
	struct vmops_error e2 = { 0 };
	char vid[24];

	vmops_fault_point("stop");
	if (vmops_hv_destroy(hv, 10000, &e2) < 0) {
		vmops_warn("sandbox %s is hibernated, but its vmm %lld did not stop: %s (ghost-reap will)",
			   h->o->sandbox, h->r->vmm_id, e2.msg);
		return;
	}
	if (vmops_db_x(c, &e2, "DELETE FROM reservations WHERE vmm_id = $1",
		       vmops_db_ll(vid, h->r->vmm_id)) < 0)
		vmops_warn("vmm %lld: reservation left for vmm-reap: %s", h->r->vmm_id, e2.msg);
	else
		h->r->vmm_stopped = true;
}

static int give_up(PGconn *c, struct hib *h, struct vmops_prep *p, struct vmops_error *e)
{
	struct vmops_error e2 = { 0 };

	if (p->h && vmops_prep_undo(p, &e2) < 0)
		vmops_warn("sandbox %s: putting its vm back: %s", h->o->sandbox, e2.msg);
	unlink(h->r->location);
	h->why = e->msg;
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, failed_tx, h, &e2) < 0)
		vmops_warn("snapshot %lld: recording the failure: %s", h->r->snapshot_id, e2.msg);
	return -1;
}

int vmops_hibernate(PGconn *c, const struct vmops_hibernate_opts *o,
		    struct vmops_hibernate_report *r, struct vmops_error *e)
{
	struct vmops_hibernate_opts oo = *o;
	struct hib h = { .o = &oo, .r = r };
	struct vmops_prep p = { 0 };
	_cleanup_hv_ struct vmops_hv *hv = NULL;
	char host[64] = "";

	memset(r, 0, sizeof(*r));
	if (!oo.budget_ms)
		oo.budget_ms = VMOPS_HIBERNATE_BUDGET_MS;
	if (!oo.program)
		oo.program = "snapshot-prep";
	if (!oo.bundle_dir || oo.bundle_dir[0] != '/')
		return vmops_err(e, VMOPS_EXIT_USAGE, "bundle directory must be an absolute path");
	gethostname(host, sizeof(host) - 1);
	snprintf(h.owner, sizeof(h.owner), "%s pid %d on %s", oo.program, (int)getpid(), host);
	vmops_fault_point("claim");
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, claim_tx, &h, e) < 0)
		goto out;
	if (vmops_vm_load_info(c, r->vmm_id, &h.info, e) < 0 ||
	    !(hv = vmops_hv_attach(&h.info, 10000, e)) || write_bundle(&h, hv, &p, e) < 0) {
		give_up(c, &h, &p, e);
		goto out;
	}
	vmops_fault_point("commit");
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, commit_tx, &h, e) < 0) {
		if (e->code == VMOPS_EXIT_DB) {
			/* Did it commit?  Unknown: the VM stays paused, nothing is undone. */
			vmops_err_prefix(e, "sandbox %s: commit outcome unknown, its vm stays paused",
					 oo.sandbox);
			e->code = VMOPS_EXIT_UNKNOWN;
			goto out;
		}
		give_up(c, &h, &p, e);
		goto out;
	}
	r->committed = true;
	stop_after_commit(c, &h, hv);
	hib_free(&h);
	return 0;
out:
	hib_free(&h);
	return -1;
}
