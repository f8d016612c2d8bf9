/* SPDX-License-Identifier: MIT */
/*
 * The honest count before a worker is declared drained: from the database
 * (sandboxes not in a terminal status, live VMM rows, attempts in flight
 * from or to the worker) and from the worker's processes (ghost-reap's
 * /proc identification, report only: every hypervisor process of this
 * worker, known to the database or not, counts; another fleet's does not).
 * The processes are read on the worker's own host: this host's /proc for a
 * local worker, that host's /proc through the ssh transport for a remote
 * one (lib/transport/procs.c; never this host's /proc).  A count that
 * cannot be made (a host that does not answer or is not the worker's,
 * /proc unreadable) is unknown: the worker is then not declared drained.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "drain/internal.h"
#include "exitcodes.h"
#include "ghost.h"
#include "macro.h"
#include "transport/transport.h"
#include "vm.h"

static int count_db(PGconn *c, const struct drain_rec *d, struct vmops_drain_report *rep, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	char wid[24];

	r = vmops_db_q(c, e,
		       "SELECT (SELECT count(*) FROM sandboxes WHERE worker_id = $1"
		       "          AND status IN ('pending', 'running', 'migrating')) AS sandboxes,"
		       "       (SELECT count(*) FROM vmms WHERE worker_id = $1 AND time_deleted IS NULL"
		       "          AND state NOT IN ('destroyed', 'failed')) AS vmms,"
		       "       (SELECT count(*) FROM migrations WHERE (source_worker_id = $1 OR target_worker_id = $1)"
		       "          AND state IN ('queued', 'preparing', 'transferring', 'switching')) AS attempts",
		       vmops_db_ll(wid, d->worker_id));
	if (!r)
		return -1;
	rep->left_sandboxes = vmops_db_get_ll(r, 0, "sandboxes", -1);
	rep->left_vmms = vmops_db_get_ll(r, 0, "vmms", -1) + vmops_db_get_ll(r, 0, "attempts", 0);
	return 0;
}

/*
 * The pids the database records for the worker's live VMMs: their stat is
 * read on its host too.  At most the transport's PROCS_PIDS_MAX: a worker
 * with more live VMM rows than that is not drained whatever its processes
 * say (count_db counts those rows), so the ones left out cannot make a
 * count of 0.
 */
static int recorded_pids(PGconn *c, const struct drain_rec *d, long long **pids, size_t *n, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	char wid[24];

	*pids = NULL;
	*n = 0;
	r = vmops_db_q(c, e, "SELECT DISTINCT pid FROM vmms WHERE worker_id = $1 AND time_deleted IS NULL"
			     " AND state IN ('starting', 'running', 'migrating') AND pid > 0 LIMIT 4096",
		       vmops_db_ll(wid, d->worker_id));
	if (!r)
		return -1;
	if (PQntuples(r) && !(*pids = calloc((size_t)PQntuples(r), sizeof(**pids))))
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	for (int i = 0; i < PQntuples(r); i++)
		(*pids)[(*n)++] = vmops_db_get_ll(r, i, "pid", -1);
	return 0;
}

/*
 * Where the worker's processes are read.  A worker on this host: this
 * host's /proc (or o->proc_root), which ghost-reap checks is the worker's
 * host.  A worker on another host (transport ssh): that host's /proc,
 * recorded into `tree` through the transport (the host checks its recorded
 * identity); this host's /proc is never read for it.  -1: cannot be read.
 */
static int proc_source(PGconn *c, const struct drain_rec *d, const struct vmops_drain_opts *o,
		       struct vmops_ghost_opts *go, char *tree, size_t len, struct vmops_error *e)
{
	_cleanup_transport_ struct vmops_transport *t = NULL;
	_cleanup_free_ long long *pids = NULL;
	size_t n;

	tree[0] = '\0';
	if (vmops_transport_for_worker(c, d->worker, &t, e) < 0)
		return -1;
	if (!t) {
		go->proc_root = o->proc_root;
		go->live = !o->proc_root || !o->proc_root[0] || strcmp(o->proc_root, "/proc") == 0;
		go->host_id = o->host_id;
		return 0;
	}
	if (!vmops_transport_host_id(t)[0])
		return vmops_err(e, VMOPS_EXIT_WRONG_HOST, "worker %s has no host identity recorded, so its host cannot be"
				 " shown to be the one that answers", d->worker);
	if (recorded_pids(c, d, &pids, &n, e) < 0 || vmops_remote_procs(t, pids, n, tree, len, e) < 0)
		return -1;
	go->proc_root = tree;
	go->live = false;   /* a recording of the worker's host: counted, never acted on */
	return 0;
}

/* Hypervisor processes of this worker, on its own host (ghost-reap, log only). */
static void count_procs(PGconn *c, const struct drain_rec *d, const struct vmops_drain_opts *o,
			struct vmops_drain_report *rep)
{
	struct vmops_ghost_opts go = { 0 };
	struct vmops_ghost_report gr = { 0 };
	struct vmops_error ge = { 0 };
	char tree[PATH_MAX];
	long long n = 0;
	int r;

	go.worker = d->worker;
	go.min_age_ms = VMOPS_GHOST_MIN_AGE_DEFAULT_MS;
	go.starting_timeout_ms = VMOPS_STARTING_TIMEOUT_DEFAULT_MS;
	go.action = VMOPS_GHOST_LOG;
	go.grace_ms = VMOPS_GHOST_GRACE_DEFAULT_MS;
	go.dry_run = true;
	go.program = "vm-drain";
	r = proc_source(c, d, o, &go, tree, sizeof(tree), &ge);
	if (r == 0)
		r = vmops_ghost_reap(c, &go, &gr, &ge);
	vmops_remote_procs_remove(tree);
	if (r < 0) {
		rep->left_processes = -1;
		snprintf(rep->count_detail, sizeof(rep->count_detail), "the worker's processes cannot be counted: %.900s",
			 ge.msg);
		vmops_ghost_report_free(&gr);
		return;
	}
	for (size_t i = 0; i < gr.n; i++) {
		const struct vmops_ghost_item *it = &gr.items[i];
		if (it->cls == VMOPS_GHOST_FOREIGN || it->pid <= 0)
			continue;
		if (!n)
			snprintf(rep->count_detail, sizeof(rep->count_detail), "%s process %d (%s%s%s) left on the worker",
				 it->hypervisor[0] ? it->hypervisor : "hypervisor", (int)it->pid,
				 vmops_ghost_class_name(it->cls), it->vmm_id > 0 ? ", vmm " : "",
				 it->vmm_id > 0 ? "known" : "");
		n++;
	}
	rep->left_processes = n;
	vmops_ghost_report_free(&gr);
}

int vmops_drain_count(PGconn *c, const struct drain_rec *d, const struct vmops_drain_opts *o,
		      struct vmops_drain_report *rep, struct vmops_error *e)
{
	rep->count_detail[0] = '\0';
	if (count_db(c, d, rep, e) < 0)
		return -1;
	count_procs(c, d, o, rep);
	if (rep->left_sandboxes > 0 || rep->left_vmms > 0) {
		char procs[VMOPS_ERRMSG_MAX];
		snprintf(procs, sizeof(procs), "%s", rep->count_detail);
		snprintf(rep->count_detail, sizeof(rep->count_detail),
			 "the database still holds %lld sandbox(es) and %lld live VMM(s) or attempt(s) on the worker%s%.800s",
			 rep->left_sandboxes, rep->left_vmms, procs[0] ? "; " : "", procs);
	}
	return rep->left_sandboxes == 0 && rep->left_vmms == 0 && rep->left_processes == 0 ? 0 : 1;
}
