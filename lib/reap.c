/* SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "exitcodes.h"
#include "log.h"
#include "macro.h"
#include "reap.h"

/*
 * The abandoned predicate, shared by the claim and the dry run.  NOT EXISTS,
 * never NOT IN: `id NOT IN (SELECT active_vmm_id FROM sandboxes)` is NULL,
 * not true, as soon as one sandbox has no active VMM, and would reap nothing.
 * $1: only VMMs whose state changed at least $1 milliseconds ago.
 */
#define ABANDONED_WHERE(ref) \
	" v.state IN ('destroyed', 'failed') AND v.time_deleted IS NULL" \
	" AND v.time_state_updated <= now() - $1::bigint * interval '1 millisecond'" \
	" AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.active_vmm_id = v.id" ref("s.active_vmm_id") ")" \
	" AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.target_vmm_id = v.id" ref("s.target_vmm_id") ")"
#define NO_BOUND(col) ""
#define ABANDONED ABANDONED_WHERE(NO_BOUND)
/*
 * The claim's keyset bound repeated on the sandboxes side.  Implied by
 * `x = v.id AND v.id > $2`, but the planner does not derive it: without it
 * the anti joins merge-scan sandboxes_active_vmm_idx from its first entry at
 * every batch, which makes a run quadratic in its number of batches.
 */
#define AFTER_BOUND(col) " AND " col " > $2"
#define AT_BOUND(col) " AND " col " = $2"

/*
 * Claim the next batch: the lowest ids above the keyset position that no
 * other transaction holds.  Another reaper's rows are skipped, not waited
 * for; a row deleted by another reaper since our snapshot is re-checked
 * under the lock (READ COMMITTED) and drops out.
 */
static const char claim_sql[] =
	"WITH c AS ("
	" SELECT v.id, v.ctid AS tid FROM vmms v"
	"  WHERE" ABANDONED_WHERE(AFTER_BOUND) " AND v.id > $2"
	"  ORDER BY v.id LIMIT $3"
	"  FOR NO KEY UPDATE OF v SKIP LOCKED)"
	" SELECT count(*), coalesce(max(id), $2), coalesce(array_agg(id ORDER BY id)::text, '{}'),"
	"  coalesce(array_agg(tid)::text, '{}') FROM c";

/* Claim one VMM (the fallback after a failed batch). */
static const char claim_one_sql[] =
	"WITH c AS ("
	" SELECT v.id, v.ctid AS tid FROM vmms v"
	"  WHERE" ABANDONED_WHERE(AT_BOUND) " AND v.id = $2"
	"  LIMIT $3"
	"  FOR NO KEY UPDATE OF v SKIP LOCKED)"
	" SELECT count(*), coalesce(max(id), $2), coalesce(array_agg(id ORDER BY id)::text, '{}'),"
	"  coalesce(array_agg(tid)::text, '{}') FROM c";

/*
 * Reap the claimed VMMs: delete their reservations, set time_deleted only
 * where it is still NULL (RETURNING tells us which rows this run deleted),
 * and write the batch's audit row, in one statement of the batch's
 * transaction.  $4 are the claimed rows' ctids: we hold their row locks,
 * so they cannot move, and a TID scan goes straight to them (an index scan
 * bounded by the claimed id range fetched the same 1,000 scattered heap
 * pages a second time).  Should a row have moved anyway, READ COMMITTED
 * follows it to its latest version and rechecks the conditions, which
 * repeat the claim's.
 *
 * The audit is one row per batch (action 'reap-batch', schema version 8),
 * not one per VMM: it names every VMM and every reservation, in columns of
 * equal length in id order (the view vmm_reaps gives one row per VMM).
 * Each set's columns are aggregated in one pass over one sort of it, so
 * they line up by construction (eight sorts, one per column, were an
 * eighth of the reap's time).
 *
 * The result has one row, or one per VMM the batch deleted that runs on
 * host $5 with a recorded process and run directory (those VMMs' columns;
 * NULL in the one row when there are none): the run directories the
 * caller may remove once the batch committed.
 */
#define COLS4(a, b, c, d) \
	"jsonb_build_object('" a "', coalesce(to_jsonb(array_agg(" a ")), '[]'), '" b "', coalesce(to_jsonb(array_agg(" b ")), '[]')," \
	" '" c "', coalesce(to_jsonb(array_agg(" c ")), '[]'), '" d "', coalesce(to_jsonb(array_agg(" d ")), '[]'))"
static const char reap_sql[] =
	"WITH res AS ("
	"  DELETE FROM reservations r WHERE r.vmm_id = ANY ($1::bigint[])"
	"  RETURNING r.vmm_id, r.worker_id, r.memory_mb, r.vcpus),"
	" upd AS ("
	"  UPDATE vmms v SET time_deleted = now()"
	"   WHERE v.ctid = ANY ($4::tid[])"
	"     AND v.state IN ('destroyed', 'failed') AND v.time_deleted IS NULL"
	"  RETURNING v.id, v.state, v.sandbox_id, v.worker_id, v.run_dir, v.pid, v.pid_start_time),"
	" n AS (SELECT (SELECT count(*) FROM upd) AS vmms, (SELECT count(*) FROM res) AS res),"
	" aud AS ("
	"  INSERT INTO audit_log (actor, program, action, object_type, object_id, before, after, detail)"
	"  SELECT $2, $3, 'reap-batch', 'vmm', NULL,"
	"   jsonb_build_object('vmms', u.j, 'reservations', r.j),"
	"   jsonb_build_object('time_deleted', now(), 'reservations', NULL),"
	"   format('%s vmms deleted, %s reservations deleted', n.vmms, n.res)"
	"  FROM n,"
	"   (SELECT " COLS4("id", "state", "sandbox_id", "worker_id") " AS j"
	"     FROM (SELECT id, state, sandbox_id, worker_id FROM upd ORDER BY id) x) u,"
	"   (SELECT " COLS4("vmm_id", "worker_id", "memory_mb", "vcpus") " AS j"
	"     FROM (SELECT vmm_id, worker_id, memory_mb, vcpus FROM res ORDER BY vmm_id) x) r"
	"  WHERE n.vmms > 0 OR n.res > 0"
	"  RETURNING 1)"
	" SELECT n.vmms, n.res, (SELECT count(*) FROM aud), l.id, l.run_dir, l.pid, l.pid_start_time"
	"  FROM n LEFT JOIN (SELECT u.id, u.run_dir, u.pid, u.pid_start_time"
	"   FROM upd u JOIN workers w ON w.id = u.worker_id"
	"   WHERE w.host_id = $5 AND u.run_dir IS NOT NULL AND u.pid IS NOT NULL) l ON true"
	"  ORDER BY l.id";
/* reap_sql's name on each session's connection: planned once per session, not once per batch */
#define REAP_STMT "vmops_reap_batch"

/*
 * What the sessions of one run share.  Claims are taken one at a time,
 * under `mu`, each after the highest id claimed so far: sessions never scan
 * over each other's rows, and the slow part of a batch (the reap statement)
 * runs in parallel.
 */
struct run {
	pthread_mutex_t mu;              /* everything below, each claim, and o->on_batch */
	const struct vmops_reap_opts *o;
	long long batch;
	long long after;                 /* keyset position: every id up to it was claimed, or skipped */
	long long claimed;               /* VMMs claimed so far (against o->limit) */
	struct vmops_reap_stats st;
	bool stop;                       /* a session failed for good: the others end after their batch */
	struct vmops_error err;          /* that failure */
};

struct batch {
	const struct vmops_reap_opts *o;
	struct run *run;        /* claim_sql from the run's position; NULL: claim_one_sql at `after` */
	const char *claim;      /* claim_sql or claim_one_sql */
	long long after;        /* keyset position (claim_sql) or the one id (claim_one_sql) */
	long long want;         /* batch size */
	const char *lock_timeout;
	bool positioned;        /* `after` was taken from the run: a retry claims from there again */
	long long counted;      /* what this batch added to run->claimed (taken back on a retry) */
	/* results, reset at every (re)try */
	bool claimed_ok;
	long long claimed, max_id, deleted, reservations;
	char *ids;              /* "{1,2,3}" */
	char *tids;             /* their ctids, "{\"(0,1)\",...}" */
	PGresult *reaped;       /* reap_sql's result */
};

static int claim_query(PGconn *c, struct batch *b, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	char older[24], after[24], want[24];

	b->max_id = b->after;
	if (b->want <= 0)
		return 0;
	r = vmops_db_q(c, e, b->claim, vmops_db_ll(older, (long long)b->o->older_than_ms),
		       vmops_db_ll(after, b->after), vmops_db_ll(want, b->want));
	if (!r)
		return vmops_err_prefix(e, "claiming abandoned vmms");
	b->claimed = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	b->max_id = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
	if (!(b->ids = strdup(PQgetvalue(r, 0, 2))) || !(b->tids = strdup(PQgetvalue(r, 0, 3))))
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	return 0;
}

/* The run's next claim: from its position, within its limit; moves the position on. */
static int claim(PGconn *c, struct batch *b, struct vmops_error *e)
{
	struct run *run = b->run;
	int rc;

	if (!run)
		return claim_query(c, b, e);
	pthread_mutex_lock(&run->mu);
	if (!b->positioned)
		b->after = run->after;
	b->positioned = true;
	run->claimed -= b->counted;
	b->counted = 0;
	b->want = run->batch;
	if (run->o->limit > 0 && run->o->limit - run->claimed < b->want)
		b->want = run->o->limit - run->claimed;
	rc = claim_query(c, b, e);
	if (rc == 0) {
		if (b->max_id > run->after)
			run->after = b->max_id;
		run->claimed += b->claimed;
		b->counted = b->claimed;
	}
	pthread_mutex_unlock(&run->mu);
	return rc;
}

static void batch_reset(struct batch *b)
{
	free(b->ids);
	b->ids = NULL;
	free(b->tids);
	b->tids = NULL;
	PQclear(b->reaped);
	b->reaped = NULL;
}

static int batch_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct batch *b = data;
	PGresult *r;

	b->claimed_ok = false;
	b->claimed = b->deleted = b->reservations = 0;
	batch_reset(b);

	if (vmops_db_x(c, e, "SELECT set_config('lock_timeout', $1, true)", b->lock_timeout) < 0)
		return -1;
	if (claim(c, b, e) < 0)
		return -1;
	b->claimed_ok = true;
	if (b->claimed == 0)
		return 0;
	r = vmops_db_qp(c, e, REAP_STMT, b->ids, vmops_db_actor(),
		       b->o->program ? b->o->program : "vmm-reap",
		       b->tids, b->o->host_id);
	if (!r)
		return -1;
	b->reaped = r;
	b->deleted = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	b->reservations = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
	return 0;
}

static void account(struct vmops_reap_stats *st, const struct batch *b)
{
	st->found += b->claimed;
	st->vmms_deleted += b->deleted;
	st->vmms_already_deleted += b->claimed - b->deleted;
	st->reservations_deleted += b->reservations;
	if (b->claimed)
		st->batches++;
}

static bool fatal(const struct vmops_error *e)
{
	return e->code == VMOPS_EXIT_DB || e->code == VMOPS_EXIT_SCHEMA;
}

/* The VMMs of reap_sql's result on o->host_id's host; *n = 0 when none (or out of memory). */
static struct vmops_reap_local *locals(const PGresult *r, size_t *n)
{
	struct vmops_reap_local *l = calloc((size_t)PQntuples(r), sizeof(*l));

	*n = 0;
	for (int i = 0; l && i < PQntuples(r); i++) {
		if (PQgetisnull(r, i, 3))
			continue;
		l[*n].id = strtoll(PQgetvalue(r, i, 3), NULL, 10);
		l[*n].run_dir = PQgetvalue(r, i, 4);
		l[*n].pid = strtoll(PQgetvalue(r, i, 5), NULL, 10);
		l[*n].pid_start_time = strtoull(PQgetvalue(r, i, 6), NULL, 10);
		(*n)++;
	}
	return l;
}

/* After a batch (or one VMM of a failed batch) committed: the totals, then the caller's callback. */
static void batch_done(struct run *run, int session, const struct batch *b, bool one_by_one)
{
	struct vmops_reap_local *l = NULL;
	size_t n = 0;

	if (run->o->on_batch && b->reaped)
		l = locals(b->reaped, &n);
	pthread_mutex_lock(&run->mu);
	account(&run->st, b);
	if (!one_by_one)
		vmops_info("batch %lld (session %d): %lld vmms claimed, %lld deleted, %lld reservations deleted",
			   run->st.batches, session, b->claimed, b->deleted, b->reservations);
	if (run->o->on_batch)
		run->o->on_batch(run->o->arg, &run->st, l, n);
	pthread_mutex_unlock(&run->mu);
	free(l);
}

static void one_failed(struct run *run, long long id, const struct vmops_error *err)
{
	pthread_mutex_lock(&run->mu);
	run->st.found++;
	run->st.errors++;
	snprintf(run->st.last_error, sizeof(run->st.last_error), "vmm %lld: %.990s", id, err->msg);
	pthread_mutex_unlock(&run->mu);
	vmops_warn("vmm %lld: %.990s", id, err->msg);
}

/*
 * A batch failed and was rolled back: reap its VMMs one per transaction,
 * so that one bad row costs one error, not a thousand.
 */
static int reap_one_by_one(PGconn *c, struct run *run, int session, const char *ids, struct vmops_error *e)
{
	const char *p = ids;

	while (*p) {
		struct batch one = { .o = run->o, .claim = claim_one_sql, .want = 1, .lock_timeout = "1s" };
		struct vmops_error err = { 0 };
		char *end;
		long long id;

		while (*p && (*p < '0' || *p > '9'))
			p++;
		if (!*p)
			break;
		id = strtoll(p, &end, 10);
		p = end;
		one.after = id;
		if (vmops_db_tx(c, VMOPS_READ_COMMITTED, batch_tx, &one, &err) < 0) {
			batch_reset(&one);
			if (fatal(&err)) {
				*e = err;
				return -1;
			}
			one_failed(run, id, &err);
			continue;
		}
		if (one.claimed)
			batch_done(run, session, &one, true);
		batch_reset(&one);
	}
	return 0;
}

static int reap_dry_run(PGconn *c, const struct vmops_reap_opts *o, struct vmops_reap_stats *st,
			struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	char older[24], limit[24];

	r = vmops_db_q(c, e,
		       "SELECT count(*) FROM (SELECT 1 FROM vmms v WHERE" ABANDONED
		       " LIMIT CASE WHEN $2::bigint > 0 THEN $2::bigint END) x",
		       vmops_db_ll(older, (long long)o->older_than_ms), vmops_db_ll(limit, o->limit));
	if (!r)
		return vmops_err_prefix(e, "counting abandoned vmms");
	st->found = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	return 0;
}

static bool stopped(struct run *run)
{
	bool stop;

	pthread_mutex_lock(&run->mu);
	stop = run->stop;
	pthread_mutex_unlock(&run->mu);
	return stop;
}

static void fail(struct run *run, const struct vmops_error *err)
{
	pthread_mutex_lock(&run->mu);
	if (!run->stop)
		run->err = *err;
	run->stop = true;
	pthread_mutex_unlock(&run->mu);
}

/* One batch, and the fallback if it failed; 1: nothing left to claim, -1: the run must stop. */
static int one_batch(PGconn *c, struct run *run, int session)
{
	struct batch b = { .o = run->o, .run = run, .claim = claim_sql, .lock_timeout = "10s" };
	struct vmops_error err = { 0 };
	int rc = 0;

	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, batch_tx, &b, &err) < 0) {
		if (fatal(&err) || !b.claimed_ok) {
			fail(run, &err);
			rc = -1;
		} else {
			vmops_info("batch after vmm %lld failed (%s): reaping its %lld vmms one by one",
				   b.after, err.msg, b.claimed);
			/* each VMM that commits counts as a batch of its own (account) */
			if (reap_one_by_one(c, run, session, b.ids, &err) < 0) {
				fail(run, &err);
				rc = -1;
			}
		}
	} else if (b.claimed) {
		batch_done(run, session, &b, false);
	} else {
		rc = 1;
	}
	batch_reset(&b);
	return rc;
}

struct session {
	struct run *run;
	PGconn *c;
	int index;              /* 1..n, in -v's lines */
	pthread_t thread;
	bool started;
};

static void *session_main(void *arg)
{
	struct session *s = arg;

	while (!stopped(s->run) && one_batch(s->c, s->run, s->index) == 0)
		;
	return NULL;
}

/* Sessions 1..n-1: their own connections and threads; fewer if a connection fails. */
static int start_sessions(PGconn *c, struct session *ss, int n)
{
	int started = 1;

	for (int i = 1; i < n; i++) {
		struct vmops_error err = { 0 };

		ss[i].c = vmops_db_connect_again(c, &err);
		if (ss[i].c && vmops_db_prepare(ss[i].c, &err, REAP_STMT, reap_sql) < 0) {
			PQfinish(ss[i].c);
			ss[i].c = NULL;
		}
		if (!ss[i].c) {
			vmops_info("reaping in %d session(s): another connection failed: %s", started, err.msg);
			break;
		}
		if (pthread_create(&ss[i].thread, NULL, session_main, &ss[i]) != 0) {
			PQfinish(ss[i].c);
			ss[i].c = NULL;
			break;
		}
		ss[i].started = true;
		started++;
	}
	return started;
}

int vmops_reap(PGconn *c, const struct vmops_reap_opts *o, struct vmops_reap_stats *st,
	       struct vmops_error *e)
{
	struct session ss[VMOPS_REAP_SESSIONS_MAX] = { 0 };
	struct run run = { .o = o, .batch = o->batch > 0 ? o->batch : VMOPS_REAP_BATCH_DEFAULT };
	int n = o->sessions > 0 ? o->sessions : VMOPS_REAP_SESSIONS_DEFAULT;

	memset(st, 0, sizeof(*st));
	if (run.batch > VMOPS_REAP_BATCH_MAX)
		run.batch = VMOPS_REAP_BATCH_MAX;
	if (n > VMOPS_REAP_SESSIONS_MAX)
		n = VMOPS_REAP_SESSIONS_MAX;
	if (o->dry_run) {
		int rc = reap_dry_run(c, o, st, e);

		st->sessions = 1;
		return rc;
	}
	if (vmops_db_prepare(c, e, REAP_STMT, reap_sql) < 0)
		return vmops_err_prefix(e, "preparing the reap");
	pthread_mutex_init(&run.mu, NULL);
	for (int i = 0; i < n; i++) {
		ss[i].run = &run;
		ss[i].index = i + 1;
	}
	ss[0].c = c;
	run.st.sessions = start_sessions(c, ss, n);
	session_main(&ss[0]);
	for (int i = 1; i < n; i++) {
		if (!ss[i].started)
			continue;
		pthread_join(ss[i].thread, NULL);
		PQfinish(ss[i].c);
	}
	pthread_mutex_destroy(&run.mu);
	*st = run.st;
	if (run.stop) {
		*e = run.err;
		return -1;
	}
	return 0;
}
