/* SPDX-License-Identifier: MIT */
/*
 * The honest count before a worker is declared drained: from the database
 * (sandboxes not in a terminal status, live VMM rows, attempts in flight
 * from or to the worker) and from the worker's processes (ghost-reap's
 * /proc identification, report only: every hypervisor process of this
 * worker, known to the database or not, counts; another fleet's does not).
 * A count that cannot be made (another host, /proc unreadable) is unknown:
 * the worker is then not declared drained.
 */
#include <stdio.h>
#include <string.h>

#include "db.h"
#include "drain/internal.h"
#include "exitcodes.h"
#include "ghost.h"
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

/* Hypervisor processes of this worker on this host (ghost-reap, log only). */
static void count_procs(PGconn *c, const struct drain_rec *d, const struct vmops_drain_opts *o,
			struct vmops_drain_report *rep)
{
	struct vmops_ghost_opts go = { 0 };
	struct vmops_ghost_report gr = { 0 };
	struct vmops_error ge = { 0 };
	long long n = 0;

	go.worker = d->worker;
	go.proc_root = o->proc_root;
	go.live = !o->proc_root || !o->proc_root[0] || strcmp(o->proc_root, "/proc") == 0;
	go.host_id = o->host_id;
	go.min_age_ms = VMOPS_GHOST_MIN_AGE_DEFAULT_MS;
	go.starting_timeout_ms = VMOPS_STARTING_TIMEOUT_DEFAULT_MS;
	go.action = VMOPS_GHOST_LOG;
	go.grace_ms = VMOPS_GHOST_GRACE_DEFAULT_MS;
	go.dry_run = true;
	go.program = "vm-drain";
	if (vmops_ghost_reap(c, &go, &gr, &ge) < 0) {
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
