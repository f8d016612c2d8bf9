/* SPDX-License-Identifier: MIT */
/*
 * The drains record (schema 007): begin or continue a drain, renew its
 * lease, write each sandbox's outcome, end it.  Every change is one
 * transaction; the database enforces the invariants (007_drains.sql).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "drain/internal.h"
#include "exitcodes.h"
#include "fleet.h"
#include "log.h"
#include "migrate.h"

struct begin_ctx {
	const struct vmops_drain_opts *o;
	struct drain_rec *d;
};

static int options_json(const struct vmops_drain_opts *o, char *buf, size_t len)
{
	return snprintf(buf, len, "{\"max_parallel\": %u, \"timeout_ms\": %llu, \"retries\": %u,"
			" \"terminate\": %s, \"max_bandwidth\": %llu}", o->max_parallel,
			(unsigned long long)o->timeout_ms, o->retries, o->terminate ? "true" : "false",
			(unsigned long long)o->max_bandwidth);
}

/* The open drain (running, cancelling, partial) of the worker, if any: take it over or refuse. */
static int take_over(PGconn *c, struct begin_ctx *b, const PGresult *r, const char *lease, const char *deadline,
		     struct vmops_error *e)
{
	const char *st = vmops_db_get(r, 0, "state");
	char id[24];

	b->d->id = vmops_db_get_ll(r, 0, "id", -1);
	if (strcmp(st, "partial") != 0 && strcmp(vmops_db_get(r, 0, "expired"), "t") != 0)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "worker %s: drain %lld is %s, run by %s", b->d->worker,
				 b->d->id, st, vmops_db_get(r, 0, "lease_owner") ? vmops_db_get(r, 0, "lease_owner") : "?");
	if (strcmp(st, "cancelling") == 0)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "worker %s: drain %lld is being cancelled: run vm-drain --cancel %s",
				 b->d->worker, b->d->id, b->d->worker);
	b->d->resumed = true;
	/* The operator runs it again: what was stuck gets its retries again. */
	if (vmops_db_x(c, e, "UPDATE drain_sandboxes SET outcome = 'pending', attempts = 0, next_attempt_at = NULL"
			     " WHERE drain_id = $1 AND outcome = 'stuck'", vmops_db_ll(id, b->d->id)) < 0)
		return -1;
	return vmops_db_x(c, e, "UPDATE drains SET state = 'running', lease_owner = $2, runs = runs + 1,"
			       " lease_expires_at = now() + $3 * interval '1 millisecond',"
			       " deadline = now() + $4 * interval '1 millisecond' WHERE id = $1",
			  vmops_db_ll(id, b->d->id), b->d->owner, lease, deadline);
}

static int begin_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct begin_ctx *b = data;
	_cleanup_pgresult_ PGresult *w = NULL, *r = NULL;
	char wid[24], lease[24], deadline[24], opts[512], id[24];
	const char *state;

	b->d->resumed = false;
	w = vmops_db_q(c, e, "SELECT id, state FROM workers WHERE name = $1 FOR UPDATE", b->o->worker);
	if (!w)
		return -1;
	if (PQntuples(w) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", b->o->worker);
	b->d->worker_id = vmops_db_get_ll(w, 0, "id", -1);
	state = vmops_db_get(w, 0, "state");
	if (strcmp(state, "drained") == 0 || strcmp(state, "terminated") == 0)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "worker %s is %s already", b->o->worker, state);
	vmops_db_ll(wid, b->d->worker_id);
	vmops_db_ll(lease, VMOPS_DRAIN_LEASE_MS);
	vmops_db_ll(deadline, (long long)b->o->timeout_ms);
	if (strcmp(state, "draining") != 0 &&
	    (vmops_db_x(c, e, "UPDATE workers SET state = 'draining' WHERE id = $1", wid) < 0 ||
	     vmops_audit(c, "vm-drain", "worker-set-state", "worker", b->d->worker_id, NULL, NULL,
			 "draining", e) < 0))
		return -1;
	r = vmops_db_q(c, e, "SELECT id, state, lease_owner, coalesce(lease_expires_at < now(), true) AS expired"
			     " FROM drains WHERE worker_id = $1 AND state IN ('running', 'cancelling', 'partial')"
			     " FOR UPDATE", wid);
	if (!r)
		return -1;
	if (PQntuples(r) == 1) {
		if (take_over(c, b, r, lease, deadline, e) < 0)
			return -1;
	} else {
		PQclear(r);
		options_json(b->o, opts, sizeof(opts));
		r = vmops_db_q(c, e, "INSERT INTO drains (worker_id, options, lease_owner, lease_expires_at, deadline)"
				     " VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond',"
				     " now() + $5 * interval '1 millisecond') RETURNING id", wid, opts, b->d->owner, lease,
			       deadline);
		if (!r)
			return -1;
		b->d->id = vmops_db_get_ll(r, 0, "id", -1);
	}
	if (vmops_db_x(c, e, "INSERT INTO drain_sandboxes (drain_id, sandbox_id)"
			     " SELECT $1, id FROM sandboxes WHERE worker_id = $2 AND status IN ('pending', 'running', 'migrating')"
			     " ON CONFLICT DO NOTHING", vmops_db_ll(id, b->d->id), wid) < 0)
		return -1;
	return vmops_audit(c, "vm-drain", b->d->resumed ? "drain-resume" : "drain-start", "drain", b->d->id, NULL,
			   NULL, b->o->worker, e);
}

int vmops_drain_rec_begin(PGconn *c, const struct vmops_drain_opts *o, struct drain_rec *d,
			  struct vmops_error *e)
{
	struct begin_ctx b = { o, d };

	snprintf(d->worker, sizeof(d->worker), "%s", o->worker);
	snprintf(d->owner, sizeof(d->owner), "vm-drain %s pid %d", vmops_db_actor(), (int)getpid());
	return vmops_db_tx(c, VMOPS_READ_COMMITTED, begin_tx, &b, e);
}

int vmops_drain_rec_renew(PGconn *c, const struct drain_rec *d, char state[16], struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	char id[24], lease[24];

	r = vmops_db_q(c, e, "UPDATE drains SET lease_expires_at = now() + $3 * interval '1 millisecond'"
			     " WHERE id = $1 AND lease_owner = $2 AND state IN ('running', 'cancelling') RETURNING state",
		       vmops_db_ll(id, d->id), d->owner, vmops_db_ll(lease, VMOPS_DRAIN_LEASE_MS));
	if (!r)
		return -1;
	snprintf(state, 16, "%s", PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
	return 0;
}

int vmops_drain_rec_outcome(PGconn *c, const struct drain_rec *d, long long sandbox_id, const char *outcome,
			    int attempts_delta, uint64_t retry_in_ms, const char *error, long long migration_id,
			    const char *target, struct vmops_error *e)
{
	char id[24], sid[24], delta[24], retry[24], mig[24];

	return vmops_db_x(c, e,
			  "UPDATE drain_sandboxes SET outcome = $3, attempts = attempts + $4,"
			  " next_attempt_at = now() + $5 * interval '1 millisecond',"
			  " last_error = coalesce($6, last_error), migration_id = coalesce($7::bigint, migration_id),"
			  " target_worker_id = coalesce((SELECT id FROM workers WHERE name = $8), target_worker_id)"
			  " WHERE drain_id = $1 AND sandbox_id = $2",
			  vmops_db_ll(id, d->id), vmops_db_ll(sid, sandbox_id), outcome, vmops_db_ll(delta, attempts_delta),
			  vmops_db_ll(retry, (long long)retry_in_ms), error,
			  migration_id > 0 ? vmops_db_ll(mig, migration_id) : NULL, target);
}

int vmops_drain_rec_sync(PGconn *c, const struct drain_rec *d, bool reset_moving, struct vmops_error *e)
{
	char id[24], wid[24];

	vmops_db_ll(id, d->id);
	vmops_db_ll(wid, d->worker_id);
	if (reset_moving &&
	    vmops_db_x(c, e, "UPDATE drain_sandboxes SET outcome = 'pending' WHERE drain_id = $1 AND outcome = 'moving'",
		       id) < 0)
		return -1;
	/* Moved (by this drain's dead run, or by someone else), or gone by other means. */
	return vmops_db_x(c, e,
			  "UPDATE drain_sandboxes x SET"
			  " outcome = CASE WHEN s.status = 'hibernated' THEN 'hibernated'"
			  "                WHEN s.worker_id IS DISTINCT FROM $2 AND s.status IN ('running', 'migrating') THEN 'moved'"
			  "                ELSE 'failed' END,"
			  " last_error = CASE WHEN s.status IN ('running', 'migrating', 'hibernated') THEN x.last_error"
			  "                   ELSE 'sandbox became ' || s.status || ' outside the drain' END"
			  " FROM sandboxes s WHERE s.id = x.sandbox_id AND x.drain_id = $1"
			  "   AND x.outcome IN ('pending', 'stuck')"
			  "   AND (s.worker_id IS DISTINCT FROM $2 AND s.status IN ('running', 'migrating')"
			  "        OR s.status NOT IN ('pending', 'running', 'migrating'))",
			  id, wid);
}

struct end_ctx {
	const struct drain_rec *d;
	const char *state, *detail;
	bool terminate;
};

static int end_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct end_ctx *a = data;
	char id[24], wid[24];
	bool fin = strcmp(a->state, "done") == 0 || strcmp(a->state, "cancelled") == 0;

	vmops_db_ll(id, a->d->id);
	vmops_db_ll(wid, a->d->worker_id);
	if (strcmp(a->state, "done") == 0 &&
	    vmops_db_x(c, e, "UPDATE workers SET state = $2 WHERE id = $1", wid,
		       a->terminate ? "terminated" : "drained") < 0)
		return -1;
	if (vmops_db_x(c, e, "UPDATE drains SET state = $2, detail = $3, lease_expires_at = now(),"
			     " time_finished = CASE WHEN $4 THEN now() END WHERE id = $1",
		       id, a->state, a->detail, fin ? "true" : "false") < 0)
		return -1;
	if (strcmp(a->state, "cancelled") == 0 &&
	    vmops_db_x(c, e, "UPDATE workers SET state = 'active' WHERE id = $1 AND state = 'draining'", wid) < 0)
		return -1;
	return vmops_audit(c, "vm-drain", "drain-end", "drain", a->d->id, NULL, NULL, a->state, e);
}

int vmops_drain_rec_end(PGconn *c, const struct drain_rec *d, const char *state, bool terminate, const char *detail,
			struct vmops_error *e)
{
	struct end_ctx a = { d, state, detail, terminate };

	return vmops_db_tx(c, VMOPS_READ_COMMITTED, end_tx, &a, e);
}

int vmops_drain_rec_report(PGconn *c, long long drain_id, struct vmops_drain_report *rep, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	char id[24];
	int n;

	r = vmops_db_q(c, e, "SELECT s.name, x.outcome, x.attempts, x.last_error, x.migration_id, w.name AS target,"
			     " s.memory_mb, CASE WHEN x.outcome = 'hibernated' THEN (SELECT b.location FROM snapshots b"
			     "   WHERE b.sandbox_id = s.id AND b.state = 'ready' ORDER BY b.id DESC LIMIT 1) END AS bundle"
			     " FROM drain_sandboxes x JOIN sandboxes s ON s.id = x.sandbox_id"
			     " LEFT JOIN workers w ON w.id = x.target_worker_id WHERE x.drain_id = $1"
			     " ORDER BY s.memory_mb DESC, s.name", vmops_db_ll(id, drain_id));
	if (!r)
		return -1;
	n = PQntuples(r);
	free(rep->sandboxes);
	rep->sandboxes = calloc((size_t)n + 1, sizeof(*rep->sandboxes));
	if (!rep->sandboxes)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	rep->n = (size_t)n;
	rep->moved = rep->stuck = rep->failed = rep->hibernated = rep->remaining = 0;
	for (int i = 0; i < n; i++) {
		struct vmops_drain_sandbox_report *s = &rep->sandboxes[i];
		const char *o = vmops_db_get(r, i, "outcome");
		snprintf(s->sandbox, sizeof(s->sandbox), "%s", vmops_db_get(r, i, "name"));
		snprintf(s->outcome, sizeof(s->outcome), "%s", o);
		snprintf(s->target, sizeof(s->target), "%s", vmops_db_get(r, i, "target") ? vmops_db_get(r, i, "target") : "");
		snprintf(s->error, sizeof(s->error), "%s", vmops_db_get(r, i, "last_error") ? vmops_db_get(r, i, "last_error") : "");
		snprintf(s->bundle, sizeof(s->bundle), "%s", vmops_db_get(r, i, "bundle") ? vmops_db_get(r, i, "bundle") : "");
		s->attempts = (int)vmops_db_get_ll(r, i, "attempts", 0);
		s->migration_id = vmops_db_get_ll(r, i, "migration_id", -1);
		s->mem_mb = vmops_db_get_ll(r, i, "memory_mb", 0);
		s->plan_start_s = s->plan_finish_s = -1;
		rep->moved += !strcmp(o, "moved");
		rep->stuck += !strcmp(o, "stuck");
		rep->failed += !strcmp(o, "failed");
		rep->hibernated += !strcmp(o, "hibernated");
		rep->remaining += !strcmp(o, "pending") || !strcmp(o, "moving");
	}
	return 0;
}

/* ---- --cancel ----------------------------------------------------------------- */

struct cancel_ctx {
	const char *worker;
	struct drain_rec d;
	char state[16];
	bool expired;
	bool local;          /* finish it here: nobody runs it */
};

static int cancel_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct cancel_ctx *a = data;
	_cleanup_pgresult_ PGresult *r = NULL;
	char id[24];

	r = vmops_db_q(c, e, "SELECT d.id, d.worker_id, d.state, coalesce(d.lease_expires_at < now(), true) AS expired"
			     " FROM drains d JOIN workers w ON w.id = d.worker_id WHERE w.name = $1"
			     "   AND d.state IN ('running', 'cancelling', 'partial') FOR UPDATE OF d", a->worker);
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s has no drain to cancel", a->worker);
	a->d.id = vmops_db_get_ll(r, 0, "id", -1);
	a->d.worker_id = vmops_db_get_ll(r, 0, "worker_id", -1);
	snprintf(a->d.worker, sizeof(a->d.worker), "%s", a->worker);
	snprintf(a->state, sizeof(a->state), "%s", vmops_db_get(r, 0, "state"));
	a->expired = strcmp(vmops_db_get(r, 0, "expired"), "t") == 0;
	a->local = strcmp(a->state, "partial") == 0 || a->expired;
	if (a->local || strcmp(a->state, "cancelling") == 0)
		return 0;
	return vmops_db_x(c, e, "UPDATE drains SET state = 'cancelling' WHERE id = $1", vmops_db_ll(id, a->d.id)) < 0 ||
	       vmops_audit(c, "vm-drain", "drain-cancel", "drain", a->d.id, NULL, NULL, a->worker, e) < 0 ? -1 : 0;
}

static int cancel_here(PGconn *c, struct cancel_ctx *a, struct vmops_error *e)
{
	struct vmops_recover_report rr;

	if (strcmp(a->state, "partial") != 0 &&
	    vmops_migrate_recover(c, false, VMOPS_MIGRATE_DEFAULT_LEASE_MS, &rr, e) < 0)
		return -1;
	if (strcmp(a->state, "partial") != 0 && vmops_drain_rec_sync(c, &a->d, true, e) < 0)
		return -1;
	return vmops_drain_rec_end(c, &a->d, "cancelled", false, "cancelled by vm-drain --cancel", e);
}

int vmops_drain_cancel(PGconn *c, const char *worker, uint64_t wait_ms, volatile sig_atomic_t *interrupted,
		       struct vmops_drain_report *rep, struct vmops_error *e)
{
	struct cancel_ctx a = { .worker = worker };
	uint64_t waited = 0;

	memset(rep, 0, sizeof(*rep));
	rep->left_sandboxes = rep->left_vmms = rep->left_processes = -1;
	snprintf(rep->worker, sizeof(rep->worker), "%s", worker);
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, cancel_tx, &a, e) < 0)
		return -1;
	rep->drain_id = a.d.id;
	/* A running vm-drain stops scheduling, lets its moves end, and ends the drain. */
	while (!a.local) {
		_cleanup_pgresult_ PGresult *r = NULL;
		char id[24];
		if (waited >= wait_ms)
			return vmops_err(e, VMOPS_EXIT_TIMEOUT, "worker %s: drain %lld still cancelling after %llus (its moves "
					 "are finishing); run vm-drain --cancel again to wait more", worker, a.d.id,
					 (unsigned long long)(waited / 1000));
		if (interrupted && *interrupted)
			return vmops_err(e, VMOPS_EXIT_INTERRUPTED, "worker %s: interrupted while drain %lld was cancelling;"
					 " the cancel stays recorded and its vm-drain ends the drain", worker, a.d.id);
		usleep(200000);
		waited += 200;
		r = vmops_db_q(c, e, "SELECT state, coalesce(lease_expires_at < now(), true) AS expired FROM drains"
				     " WHERE id = $1", vmops_db_ll(id, a.d.id));
		if (!r)
			return -1;
		if (strcmp(vmops_db_get(r, 0, "state"), "cancelling") != 0)
			break;
		a.local = strcmp(vmops_db_get(r, 0, "expired"), "t") == 0;   /* its vm-drain died */
	}
	if (a.local && cancel_here(c, &a, e) < 0)
		return -1;
	{
		_cleanup_pgresult_ PGresult *r = NULL;
		char id[24];
		r = vmops_db_q(c, e, "SELECT d.state, w.state AS worker_state FROM drains d JOIN workers w ON w.id = d.worker_id"
				     " WHERE d.id = $1", vmops_db_ll(id, a.d.id));
		if (!r)
			return -1;
		snprintf(rep->state, sizeof(rep->state), "%s", vmops_db_get(r, 0, "state"));
		snprintf(rep->worker_state, sizeof(rep->worker_state), "%s", vmops_db_get(r, 0, "worker_state"));
	}
	if (vmops_drain_rec_report(c, a.d.id, rep, e) < 0)
		return -1;
	if (strcmp(rep->state, "cancelled") != 0)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "worker %s: drain %lld ended %s, not cancelled", worker, a.d.id,
				 rep->state);
	return 0;
}
