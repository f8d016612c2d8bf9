/* SPDX-License-Identifier: MIT */
/*
 * vm-drain's run: mark the worker draining (record.c), recover expired
 * attempts, then tick: renew the drain's lease (and learn of --cancel),
 * collect finished moves and record their outcome, re-plan from the
 * database (plan.c) and start the moves the plan puts at time 0, each in a
 * thread with its own database connection running vmops_migrate() with
 * `to` set.  When nothing is left to try: the hibernate fallback (one call
 * site, below), the honest count (count.c), and only then drained.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "drain/internal.h"
#include "exitcodes.h"
#include "hv.h"
#include "log.h"
#include "migrate.h"

#define TICK_MS 200u
#define NOROOM_RETRY_MS 2000u
#define RECOVER_EVERY_MS 15000u

struct mover {
	pthread_t th;
	bool busy;
	atomic_bool done;
	long long sandbox_id;
	int attempts;                  /* before this one */
	char sandbox[64], target[64];
	double est_s;                  /* planned duration */
	uint64_t started_ms;
	const char *conninfo;
	struct vmops_migrate_opts mo;
	struct vmops_migrate_report rep;
	struct vmops_error err;
	int rc;
};

struct run {
	PGconn *c;
	const char *conninfo;
	const struct vmops_drain_opts *o;
	struct drain_rec d;
	struct vmops_drain_report *rep;
	struct mover *mv;
	volatile sig_atomic_t abort_moves;   /* the movers' "interrupted" flag */
	const char *stop;                    /* why scheduling stopped: NULL, interrupted, cancelled, timeout, lease */
	bool need_recover;
	uint64_t start_ms, renewed_ms, recovered_ms;
	char state[16];                      /* the drain's state at the last renewal */
	double setup_sum_s;                  /* measured fixed cost of the moves done */
	unsigned moves_done;
	double eta_s;
	char fallback_note[200];             /* why stuck sandboxes were not hibernated */
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void *mover_main(void *arg)
{
	struct mover *m = arg;
	PGconn *c = vmops_db_connect(m->conninfo, "vm-drain", &m->err);

	if (!c) {
		m->rc = -1;
		snprintf(m->rep.state, sizeof(m->rep.state), "failed");
		snprintf(m->rep.error, sizeof(m->rep.error), "%s", m->err.msg);
	} else {
		m->rc = vmops_migrate(c, &m->mo, &m->rep, &m->err);
		PQfinish(c);
	}
	atomic_store(&m->done, true);
	return NULL;
}

static void tell(struct run *r, const char *sandbox, const char *outcome, const char *target, int attempts,
		 long long mig, uint64_t wall_ms, const char *error)
{
	struct vmops_drain_sandbox_report s = { 0 };

	if (!r->o->on_sandbox)
		return;
	snprintf(s.sandbox, sizeof(s.sandbox), "%s", sandbox);
	snprintf(s.outcome, sizeof(s.outcome), "%s", outcome);
	snprintf(s.target, sizeof(s.target), "%s", target ? target : "");
	snprintf(s.error, sizeof(s.error), "%s", error ? error : "");
	s.attempts = attempts;
	s.migration_id = mig;
	s.wall_ms = wall_ms;
	s.plan_start_s = s.plan_finish_s = -1;
	r->o->on_sandbox(r->o->data, &s);
}

/* ---- starting and collecting moves ------------------------------------------- */

static int start_move(struct run *r, struct mover *m, long long sid, const char *sandbox, int attempts,
		      const char *target, double est_s, struct vmops_error *e)
{
	if (vmops_drain_rec_outcome(r->c, &r->d, sid, "moving", 0, 0, NULL, -1, target, e) < 0)
		return -1;
	memset(&m->rep, 0, sizeof(m->rep));
	memset(&m->err, 0, sizeof(m->err));
	m->sandbox_id = sid;
	m->attempts = attempts;
	snprintf(m->sandbox, sizeof(m->sandbox), "%s", sandbox);
	snprintf(m->target, sizeof(m->target), "%s", target);
	m->est_s = est_s;
	m->started_ms = now_ms();
	m->conninfo = r->conninfo;
	m->mo = (struct vmops_migrate_opts){
		.sandbox = m->sandbox, .to = m->target, .connections = 1, .wait_target_ms = 0,
		.timeout_per_gib_ms = r->o->migrate_timeout_per_gib_ms, .progress_timeout_ms = r->o->progress_timeout_ms,
		.max_bandwidth = r->o->max_bandwidth, .lease_ms = VMOPS_MIGRATE_DEFAULT_LEASE_MS, .rtt_s = 0.001,
		.auto_accel = VMOPS_ACCEL_AUTO, .program = "vm-drain", .interrupted = &r->abort_moves,
	};
	atomic_store(&m->done, false);
	if (pthread_create(&m->th, NULL, mover_main, m) != 0) {
		struct vmops_error xe = { 0 };
		vmops_drain_rec_outcome(r->c, &r->d, sid, "pending", 0, NOROOM_RETRY_MS, "cannot start a thread", -1, NULL, &xe);
		return vmops_err(e, VMOPS_EXIT_FAILURE, "cannot start a thread for sandbox %s", sandbox);
	}
	m->busy = true;
	tell(r, sandbox, "moving", target, attempts + 1, -1, 0, NULL);
	return 0;
}

static uint64_t backoff_ms(const struct vmops_drain_opts *o, int attempts)
{
	uint64_t b = o->backoff_ms;

	for (int i = 1; i < attempts && b < VMOPS_DRAIN_MAX_BACKOFF_MS; i++)
		b *= 2;
	return b < VMOPS_DRAIN_MAX_BACKOFF_MS ? b : VMOPS_DRAIN_MAX_BACKOFF_MS;
}

/* Record what a finished move did: moved, back to pending (not an attempt, or a retry), stuck, failed. */
static int collect(struct run *r, struct mover *m, struct vmops_error *e)
{
	const char *outcome = "pending";
	int delta = 1, attempts;
	uint64_t retry = 0, wall = now_ms() - m->started_ms;

	pthread_join(m->th, NULL);
	m->busy = false;
	if (m->rc == 0) {
		double fixed = (double)wall / 1000.0 - (double)m->rep.memory_bytes / 1048576.0 / r->o->rate_mbps;
		outcome = "moved";
		r->setup_sum_s += fixed > 0 ? fixed : 0;
		r->moves_done++;
	}
	else if (m->err.code == VMOPS_EXIT_INTERRUPTED || !strcmp(m->rep.state, "cancelled"))
		delta = 0;                          /* stopped by us: not the sandbox's fault */
	else if (m->err.code == VMOPS_EXIT_NOCAPACITY) {
		delta = 0;                          /* the target got busy or full meanwhile: plan again */
		retry = NOROOM_RETRY_MS;
	} else if (!strcmp(m->rep.state, "lost"))
		outcome = "failed";
	else if (!strcmp(m->rep.state, "unknown") || m->err.code == VMOPS_EXIT_UNKNOWN) {
		r->need_recover = true;             /* left to vmops_migrate_recover once its lease expires */
		retry = VMOPS_MIGRATE_DEFAULT_LEASE_MS + 1000;
	}
	attempts = m->attempts + delta;
	if (!strcmp(outcome, "pending") && delta) {
		if ((unsigned)attempts >= r->o->retries)
			outcome = "stuck";
		else if (!retry)
			retry = backoff_ms(r->o, attempts);
	}
	if (vmops_drain_rec_outcome(r->c, &r->d, m->sandbox_id, outcome, delta, retry,
				    m->rc == 0 ? NULL : (m->rep.error[0] ? m->rep.error : m->err.msg),
				    m->rep.migration_id, m->rc == 0 ? m->target : NULL, e) < 0)
		return -1;
	tell(r, m->sandbox, delta || m->rc == 0 ? outcome : "requeued", m->target, attempts, m->rep.migration_id, wall,
	     m->rc == 0 ? NULL : (m->rep.error[0] ? m->rep.error : m->err.msg));
	return 0;
}

static int collect_done(struct run *r, bool wait, struct vmops_error *e)
{
	for (unsigned k = 0; k < r->o->max_parallel; k++) {
		struct mover *m = &r->mv[k];
		if (!m->busy || (!wait && !atomic_load(&m->done)))
			continue;
		if (collect(r, m, e) < 0)
			return -1;
	}
	return 0;
}

static unsigned busy_movers(const struct run *r)
{
	unsigned n = 0;

	for (unsigned k = 0; k < r->o->max_parallel; k++)
		n += r->mv[k].busy;
	return n;
}

/* ---- planning from the database -------------------------------------------- */

struct input {
	PGresult *ir, *tr;
	struct vmops_drain_item *items;
	struct vmops_drain_target *tg;
	size_t ni, nt;
};

static void input_free(struct input *in)
{
	PQclear(in->ir);
	PQclear(in->tr);
	free(in->items);
	free(in->tg);
	memset(in, 0, sizeof(*in));
}

/*
 * The items (drain_id > 0: the drain's pending sandboxes that are due and
 * running on the worker; else every sandbox the worker holds) and the
 * targets (active workers but this one, their free room, busy until their
 * inbound attempt's remaining bytes are sent).
 */
static int load_input(PGconn *c, long long worker_id, long long drain_id, double rate_mbps, struct input *in,
		      struct vmops_error *e)
{
	char wid[24], did[24];

	memset(in, 0, sizeof(*in));
	vmops_db_ll(wid, worker_id);
	in->ir = drain_id > 0
		? vmops_db_q(c, e, "SELECT x.sandbox_id, s.name, s.memory_mb, s.vcpus, x.attempts, s.launch_spec->>'hypervisor' AS hv"
				   " FROM drain_sandboxes x JOIN sandboxes s ON s.id = x.sandbox_id"
				   " WHERE x.drain_id = $1 AND x.outcome = 'pending' AND s.status = 'running'"
				   "   AND s.worker_id = $2 AND coalesce(x.next_attempt_at <= now(), true)",
			     vmops_db_ll(did, drain_id), wid)
		: vmops_db_q(c, e, "SELECT s.id AS sandbox_id, s.name, s.memory_mb, s.vcpus, 0 AS attempts, s.launch_spec->>'hypervisor' AS hv"
				   " FROM sandboxes s WHERE s.worker_id = $1"
				   "   AND s.status IN ('pending', 'running', 'migrating')", wid);
	if (!in->ir)
		return -1;
	in->tr = vmops_db_q(c, e,
			    "SELECT w.name, w.memory_mb - w.reserved_memory_mb AS free_mb, w.vcpus - w.reserved_vcpus AS free_cpu,"
			    "  (SELECT max(greatest(coalesce(m.bytes_total - m.bytes_transferred, s.memory_mb * 1048576), 0))"
			    "     FROM migrations m JOIN sandboxes s ON s.id = m.sandbox_id WHERE m.target_worker_id = w.id"
			    "      AND m.state IN ('queued', 'preparing', 'transferring', 'switching')) AS busy_bytes"
			    " FROM workers w WHERE w.state = 'active' AND w.id <> $1 ORDER BY w.name", wid);
	if (!in->tr)
		return -1;
	in->ni = (size_t)PQntuples(in->ir);
	in->nt = (size_t)PQntuples(in->tr);
	in->items = calloc(in->ni + 1, sizeof(*in->items));
	in->tg = calloc(in->nt + 1, sizeof(*in->tg));
	if (!in->items || !in->tg)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	for (size_t i = 0; i < in->ni; i++)
		in->items[i] = (struct vmops_drain_item){ vmops_db_get(in->ir, (int)i, "name"),
							  vmops_db_get_ll(in->ir, (int)i, "memory_mb", 1),
							  vmops_db_get_ll(in->ir, (int)i, "vcpus", 1), 0 };
	for (size_t j = 0; j < in->nt; j++) {
		const char *busy = vmops_db_get(in->tr, (int)j, "busy_bytes");
		in->tg[j] = (struct vmops_drain_target){ vmops_db_get(in->tr, (int)j, "name"),
							 vmops_db_get_ll(in->tr, (int)j, "free_mb", 0),
							 vmops_db_get_ll(in->tr, (int)j, "free_cpu", 0), rate_mbps, 0 };
		if (busy)
			in->tg[j].available_s = 1.0 + (double)atoll(busy) / 1048576.0 / rate_mbps;
	}
	return 0;
}

#define SETUP_S 2.0   /* a move's fixed cost until the drain has measured its own */

static struct vmops_drain_params params(const struct vmops_drain_opts *o, double setup_s, const double *busy,
					size_t nbusy)
{
	return (struct vmops_drain_params){ o->max_parallel, setup_s, busy, nbusy, 0 };
}

/* The fixed cost of a move as measured so far: wall time minus what --rate says the transfer takes. */
static double setup_s(const struct run *r)
{
	return r->moves_done ? r->setup_sum_s / (double)r->moves_done : SETUP_S;
}

/* Unplaceable (fits no target even with nothing moving): stuck, when no move of ours could change that. */
static int mark_unplaceable(struct run *r, const struct input *in, const struct vmops_drain_step *s,
			    struct vmops_error *e)
{
	char why[200];
	size_t i = s->item;
	long long sid = vmops_db_get_ll(in->ir, (int)i, "sandbox_id", -1);

	snprintf(why, sizeof(why), "no active worker has room for it (%lld MB, %lld vCPUs)", in->items[i].mem_mb,
		 in->items[i].vcpus);
	if (vmops_drain_rec_outcome(r->c, &r->d, sid, "stuck", 0, 0, why, -1, NULL, e) < 0)
		return -1;
	tell(r, in->items[i].name, "stuck", NULL, (int)vmops_db_get_ll(in->ir, (int)i, "attempts", 0), -1, 0, why);
	return 0;
}

/* Does this kind of hypervisor migrate live (an unknown kind: let vm-migrate's engine say)? */
static bool migrates_live(const char *kind)
{
	const struct vmops_hv_driver *d = kind ? vmops_hv_driver_find(kind) : NULL;

	return !d || (d->prepare_incoming && d->send);
}

/* A sandbox whose hypervisor has no live migration (Firecracker) is stuck at once: no retries. */
static int mark_not_live(struct run *r, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *q = NULL;
	char id[24], wid[24], why[200];

	q = vmops_db_q(r->c, e, "SELECT x.sandbox_id, s.name, s.launch_spec->>'hypervisor' AS hv FROM drain_sandboxes x"
				" JOIN sandboxes s ON s.id = x.sandbox_id WHERE x.drain_id = $1 AND x.outcome = 'pending'"
				"   AND s.status = 'running' AND s.worker_id = $2",
		       vmops_db_ll(id, r->d.id), vmops_db_ll(wid, r->d.worker_id));
	if (!q)
		return -1;
	for (int i = 0; i < PQntuples(q); i++) {
		const char *hv = vmops_db_get(q, i, "hv");
		if (migrates_live(hv))
			continue;
		snprintf(why, sizeof(why), "its hypervisor (%s) has no live migration", hv);
		if (vmops_drain_rec_outcome(r->c, &r->d, vmops_db_get_ll(q, i, "sandbox_id", -1), "stuck", 0, 0, why, -1,
					    NULL, e) < 0)
			return -1;
		tell(r, vmops_db_get(q, i, "name"), "stuck", NULL, 0, -1, 0, why);
	}
	return 0;
}

/* Re-plan and start what the plan puts at time 0. */
static int schedule(struct run *r, struct vmops_error *e)
{
	struct input in;
	struct vmops_drain_plan plan = { 0 };
	double busy[64];
	size_t nbusy = 0;
	struct vmops_drain_params p;
	int rc = -1;

	for (unsigned k = 0; k < r->o->max_parallel && nbusy < 64; k++)
		if (r->mv[k].busy) {
			double left = r->mv[k].est_s - (double)(now_ms() - r->mv[k].started_ms) / 1000.0;
			busy[nbusy++] = left > 0.5 ? left : 0.5;
		}
	p = params(r->o, setup_s(r), busy, nbusy);
	if (mark_not_live(r, e) < 0)
		return -1;
	if (load_input(r->c, r->d.worker_id, r->d.id, r->o->rate_mbps, &in, e) < 0 ||
	    vmops_drain_plan(in.items, in.ni, in.tg, in.nt, &p, &plan, e) < 0)
		goto out;
	r->eta_s = plan.makespan_s;
	for (size_t q = 0; q < plan.n; q++) {
		const struct vmops_drain_step *s = &plan.steps[q];
		if (s->target < 0) {
			if (!nbusy && mark_unplaceable(r, &in, s, e) < 0)
				goto out;
			continue;
		}
		if (s->start_s > 1e-6)
			continue;
		for (unsigned k = 0; k < r->o->max_parallel; k++) {
			if (r->mv[k].busy)
				continue;
			if (start_move(r, &r->mv[k], vmops_db_get_ll(in.ir, (int)s->item, "sandbox_id", -1),
				       in.items[s->item].name, (int)vmops_db_get_ll(in.ir, (int)s->item, "attempts", 0),
				       in.tg[s->target].name, s->finish_s - s->start_s, e) < 0)
				goto out;
			break;
		}
	}
	rc = 0;
out:
	vmops_drain_plan_free(&plan);
	input_free(&in);
	return rc;
}

/* ---- the loop ------------------------------------------------------------------ */

static long long pending_rows(struct run *r, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *q = NULL;
	char id[24];

	q = vmops_db_q(r->c, e, "SELECT count(*) FROM drain_sandboxes WHERE drain_id = $1"
				" AND outcome IN ('pending', 'moving')", vmops_db_ll(id, r->d.id));
	return q ? vmops_db_get_ll(q, 0, "count", -1) : -1;
}

static int recover(struct run *r, struct vmops_error *e)
{
	struct vmops_recover_report rr;

	if (vmops_migrate_recover_until(r->c, false, VMOPS_MIGRATE_DEFAULT_LEASE_MS, r->o->interrupted, &rr, e) < 0)
		return -1;
	r->rep->recovered_found += rr.found;
	r->rep->recovered_unknown = rr.unknown;
	if (rr.found)
		vmops_info("recovered %d expired attempt(s): %d completed, %d failed, %d unknown", rr.found,
			   rr.completed + rr.released, rr.failed, rr.unknown);
	r->need_recover = false;
	r->recovered_ms = now_ms();
	return 0;
}

/* Stop scheduling?  A signal, --cancel (in the database), the deadline, a lost lease. */
static int check_stop(struct run *r, struct vmops_error *e)
{
	const char *state = r->state;

	/* The lease is 30 s: renewing it (and learning of --cancel) once a second is plenty. */
	if (!r->renewed_ms || now_ms() - r->renewed_ms >= 1000) {
		if (vmops_drain_rec_renew(r->c, &r->d, r->state, e) < 0)
			return -1;
		r->renewed_ms = now_ms();
	}
	if (r->o->interrupted && *r->o->interrupted && (!r->stop || strcmp(r->stop, "interrupted"))) {
		r->stop = "interrupted";
		r->abort_moves = 1;
	} else if (!state[0] && !r->stop) {
		r->stop = "lease";
	} else if (!strcmp(state, "cancelling") && !r->stop) {
		r->stop = "cancelled";
	} else if (now_ms() - r->start_ms > r->o->timeout_ms && !r->stop) {
		r->stop = "timeout";
		r->abort_moves = 1;
	}
	return 0;
}

static void progress(struct run *r, struct vmops_error *e)
{
	if (!r->o->on_progress || vmops_drain_rec_report(r->c, r->d.id, r->rep, e) < 0)
		return;
	r->o->on_progress(r->o->data, r->rep->moved, r->rep->hibernated, r->rep->stuck, r->rep->failed,
			  r->rep->remaining, r->eta_s);
}

static int loop(struct run *r, struct vmops_error *e)
{
	for (;;) {
		long long left;

		if (check_stop(r, e) < 0 || collect_done(r, false, e) < 0)
			return -1;
		/* Attempts left unknown, or of a dead vm-drain whose leases had not expired
		 * when this one started: only expired leases are touched (ours are renewed). */
		if ((r->need_recover || now_ms() - r->recovered_ms > RECOVER_EVERY_MS) && recover(r, e) < 0)
			return -1;
		if (vmops_drain_rec_sync(r->c, &r->d, false, e) < 0)
			return -1;
		if (!r->stop && schedule(r, e) < 0)
			return -1;
		progress(r, e);
		left = pending_rows(r, e);
		if (left < 0)
			return -1;
		if (!busy_movers(r) && (r->stop || left == 0))
			return 0;
		sleep_ms(TICK_MS);
	}
}

/* The fallback's tick: keep the lease, learn of a stop; 2: interrupt the hibernate in flight too. */
static int fallback_tick(void *arg, struct vmops_error *e)
{
	struct run *r = arg;

	if (check_stop(r, e) < 0)
		return -1;
	return !r->stop ? 0 : r->abort_moves ? 2 : 1;
}

/* The hibernate fallback (fallback.c): the sandboxes still stuck after their retries. */
static int hibernate_fallback(struct run *r, struct vmops_error *e)
{
	struct drain_fb_ctl ctl = { fallback_tick, r };
	int n = vmops_drain_fallback(r->c, r->conninfo, &r->d, r->o, &ctl, e);

	if (n > 0)
		snprintf(r->fallback_note, sizeof(r->fallback_note),
			 "%d sandbox(es) cannot move and no --bundle-dir was given to hibernate them", n);
	return n < 0 ? -1 : 0;
}

/* Scheduling stopped (signal, --cancel, timeout, lease): end the drain so. */
static int stopped(struct run *r, struct vmops_error *e)
{
	const char *stop = r->stop;

	if (!strcmp(stop, "lease"))
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "worker %s: drain %lld was taken over by another vm-drain",
				 r->d.worker, r->d.id);
	if (!strcmp(stop, "cancelled")) {
		if (vmops_drain_rec_end(r->c, &r->d, "cancelled", false, "cancelled by vm-drain --cancel", e) < 0)
			return -1;
		snprintf(r->rep->state, sizeof(r->rep->state), "cancelled");
		return VMOPS_EXIT_INTERRUPTED;
	}
	if (vmops_drain_rec_end(r->c, &r->d, "partial", false, stop, e) < 0)
		return -1;
	snprintf(r->rep->state, sizeof(r->rep->state), "partial");
	snprintf(r->rep->count_detail, sizeof(r->rep->count_detail), "%s", !strcmp(stop, "timeout")
		 ? "the whole-drain timeout passed" : "interrupted: run vm-drain again to continue");
	return !strcmp(stop, "timeout") ? VMOPS_EXIT_PARTIAL : VMOPS_EXIT_INTERRUPTED;
}

/* Nothing left to try: the fallback, then the honest count, and only then drained. */
static int finish(struct run *r, struct vmops_error *e)
{
	int left;

	if (!r->stop && hibernate_fallback(r, e) < 0)
		return -1;
	if (r->stop)
		return stopped(r, e);
	left = vmops_drain_count(r->c, &r->d, r->o, r->rep, e);
	if (left < 0)
		return -1;
	if (left == 0) {
		struct vmops_error de = { 0 };
		if (vmops_drain_rec_end(r->c, &r->d, "done", r->o->terminate, NULL, &de) == 0) {
			snprintf(r->rep->state, sizeof(r->rep->state), "done");
			return VMOPS_EXIT_OK;
		}
		/* Refused by the database (something arrived meanwhile): not drained. */
		snprintf(r->rep->count_detail, sizeof(r->rep->count_detail), "%.1000s", de.msg);
	}
	if (r->fallback_note[0]) {
		char count[VMOPS_ERRMSG_MAX];
		snprintf(count, sizeof(count), "%s", r->rep->count_detail);
		snprintf(r->rep->count_detail, sizeof(r->rep->count_detail), "%s%s%.800s", r->fallback_note,
			 count[0] ? "; " : "", count);
	}
	if (vmops_drain_rec_end(r->c, &r->d, "partial", false, r->rep->count_detail, e) < 0)
		return -1;
	snprintf(r->rep->state, sizeof(r->rep->state), "partial");
	return VMOPS_EXIT_PARTIAL;
}

/* ---- entry points ---------------------------------------------------------------- */

/* One step of the plan as --dry-run shows it: stuck when no target fits or it cannot migrate live. */
static void dry_step(const struct vmops_drain_opts *o, const struct input *in, const struct vmops_drain_step *st,
		     struct vmops_drain_sandbox_report *s)
{
	const char *hv = vmops_db_get(in->ir, (int)st->item, "hv");
	bool live = migrates_live(hv);
	const char *then = o->bundle_dir ? "; it would be hibernated" : "";

	snprintf(s->outcome, sizeof(s->outcome), "%s", st->target < 0 || !live ? "stuck" : "pending");
	snprintf(s->target, sizeof(s->target), "%s", st->target < 0 || !live ? "" : in->tg[st->target].name);
	if (!live)
		snprintf(s->error, sizeof(s->error), "its hypervisor (%s) has no live migration%s", hv, then);
	else if (st->target < 0)
		snprintf(s->error, sizeof(s->error), "no active worker has room for it%s", then);
}

static int dry_run(PGconn *c, const struct vmops_drain_opts *o, struct vmops_drain_report *rep, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *w = NULL;
	struct input in;
	struct vmops_drain_plan plan = { 0 };
	struct vmops_drain_params p = params(o, SETUP_S, NULL, 0);
	int rc = -1;

	w = vmops_db_q(c, e, "SELECT id, state FROM workers WHERE name = $1", o->worker);
	if (!w)
		return -1;
	if (PQntuples(w) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", o->worker);
	snprintf(rep->worker_state, sizeof(rep->worker_state), "%s", vmops_db_get(w, 0, "state"));
	if (load_input(c, vmops_db_get_ll(w, 0, "id", -1), -1, o->rate_mbps, &in, e) < 0 ||
	    vmops_drain_plan(in.items, in.ni, in.tg, in.nt, &p, &plan, e) < 0)
		goto out;
	rep->sandboxes = calloc(plan.n + 1, sizeof(*rep->sandboxes));
	if (!rep->sandboxes) {
		vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
		goto out;
	}
	for (size_t q = 0; q < plan.n; q++) {
		struct vmops_drain_sandbox_report *s = &rep->sandboxes[q];
		const struct vmops_drain_step *st = &plan.steps[q];
		snprintf(s->sandbox, sizeof(s->sandbox), "%s", in.items[st->item].name);
		dry_step(o, &in, st, s);
		s->mem_mb = in.items[st->item].mem_mb;
		s->migration_id = -1;
		s->plan_start_s = !strcmp(s->outcome, "stuck") ? -1 : st->start_s;
		s->plan_finish_s = !strcmp(s->outcome, "stuck") ? -1 : st->finish_s;
		rep->stuck += !strcmp(s->outcome, "stuck");
		rep->remaining += strcmp(s->outcome, "stuck") != 0;
	}
	rep->n = plan.n;
	rep->planned_s = plan.makespan_s;
	snprintf(rep->state, sizeof(rep->state), "dry-run");
	rc = 0;
out:
	vmops_drain_plan_free(&plan);
	input_free(&in);
	return rc;
}

static int run_drain(struct run *r, struct vmops_error *e)
{
	if (vmops_drain_rec_begin(r->c, r->o, &r->d, e) < 0)
		return -1;
	r->rep->drain_id = r->d.id;
	r->rep->resumed = r->d.resumed;
	vmops_info("drain %lld of worker %s %s", r->d.id, r->d.worker, r->d.resumed ? "resumed" : "started");
	/* Attempts of a crashed run first: their leases expire, then they are recovered. */
	if (recover(r, e) < 0 || vmops_drain_rec_sync(r->c, &r->d, true, e) < 0)
		return -1;
	{
		struct input in;
		struct vmops_drain_plan plan = { 0 };
		struct vmops_drain_params p = params(r->o, SETUP_S, NULL, 0);
		if (load_input(r->c, r->d.worker_id, r->d.id, r->o->rate_mbps, &in, e) == 0 &&
		    vmops_drain_plan(in.items, in.ni, in.tg, in.nt, &p, &plan, e) == 0)
			r->rep->planned_s = plan.makespan_s;
		vmops_drain_plan_free(&plan);
		input_free(&in);
	}
	if (loop(r, e) < 0) {
		struct vmops_error xe = { 0 };
		r->abort_moves = 1;
		collect_done(r, true, &xe);
		return -1;
	}
	return finish(r, e);
}

int vmops_drain_run(PGconn *c, const char *conninfo, const struct vmops_drain_opts *o,
		    struct vmops_drain_report *rep, struct vmops_error *e)
{
	struct run r = { .c = c, .conninfo = conninfo, .o = o, .rep = rep };
	struct vmops_error xe = { 0 };
	int rc;

	memset(rep, 0, sizeof(*rep));
	rep->left_sandboxes = rep->left_vmms = rep->left_processes = -1;
	snprintf(rep->worker, sizeof(rep->worker), "%s", o->worker);
	if (o->max_parallel == 0 || !(o->rate_mbps > 0) || o->retries == 0)
		return vmops_err(e, VMOPS_EXIT_USAGE, "drain: bad options");
	if (o->dry_run)
		return dry_run(c, o, rep, e) < 0 ? -1 : VMOPS_EXIT_OK;
	r.start_ms = now_ms();
	r.mv = calloc(o->max_parallel, sizeof(*r.mv));
	if (!r.mv)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	(void)vmops_db_actor();   /* initialised here, before the threads */
	rc = run_drain(&r, e);
	if (r.d.id > 0 && vmops_drain_rec_report(c, r.d.id, rep, &xe) < 0 && rc >= 0)
		vmops_warn("drain %lld: %s", r.d.id, xe.msg);
	rep->elapsed_s = (double)(now_ms() - r.start_ms) / 1000.0;
	{
		_cleanup_pgresult_ PGresult *w = vmops_db_q(c, &xe, "SELECT state FROM workers WHERE name = $1", o->worker);
		if (w && PQntuples(w))
			snprintf(rep->worker_state, sizeof(rep->worker_state), "%s", PQgetvalue(w, 0, 0));
	}
	free(r.mv);
	return rc;
}

void vmops_drain_report_free(struct vmops_drain_report *rep)
{
	free(rep->sandboxes);
	rep->sandboxes = NULL;
	rep->n = 0;
}
