/* SPDX-License-Identifier: MIT */
/*
 * The attempt's lease: fenced writes, renewals, and riding out the database.
 * A connection lost mid-attempt is re-established (PQreset) as long as our
 * lease lasts; past that, another process may own the attempt, so we stop
 * touching anything physical.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "attempt.h"
#include "db.h"
#include "exitcodes.h"
#include "fault.h"
#include "log.h"

/* Keep this much of the lease in hand: never act on the last moments of it. */
#define LEASE_MARGIN_MS 1000

uint64_t vmops_mig_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void vmops_mig_sleep_ms(uint64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

const char *vmops_mig_owner(char *buf, size_t len, const char *what)
{
	snprintf(buf, len, "%s %s pid %d", what, vmops_db_actor(), (int)getpid());
	return buf;
}

static int lose(struct attempt *at, struct vmops_error *e)
{
	at->lost_lease = true;
	return vmops_err(e, VMOPS_EXIT_CONFLICT,
			 "migration %lld: lost the lease (generation %lld is no longer ours): touching nothing more",
			 at->migration_id, at->generation);
}

/* Reconnect within the lease.  0 when connected again. */
static int reconnect(struct attempt *at, struct vmops_error *e)
{
	char why[VMOPS_ERRMSG_MAX];

	snprintf(why, sizeof(why), "%s", e->msg);
	while (vmops_mig_now_ms() + LEASE_MARGIN_MS < at->lease_until) {
		vmops_warn("migration %lld: %s; reconnecting", at->migration_id, why);
		vmops_mig_sleep_ms(500);
		PQreset(at->c);
		if (PQstatus(at->c) == CONNECTION_OK)
			return 0;
	}
	at->lost_lease = true;
	return vmops_err(e, VMOPS_EXIT_DB, "migration %lld: database unreachable for the rest of the lease (%s)",
			 at->migration_id, why);
}

static int fenced_once(struct attempt *at, PGconn *c, struct vmops_error *e, const char *sql, int n,
		       const char *const *extra, bool *ok)
{
	const char *p[16];
	char mid[24], gen[24];
	_cleanup_pgresult_ PGresult *r = NULL;

	if (n > 13)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "internal: too many parameters");
	p[0] = vmops_db_ll(mid, at->migration_id);
	p[1] = at->owner;
	p[2] = vmops_db_ll(gen, at->generation);
	for (int i = 0; i < n; i++)
		p[3 + i] = extra[i];
	r = vmops_db_query(c, e, sql, 3 + n, p);
	if (!r)
		return -1;
	*ok = atoi(PQcmdTuples(r)) > 0 || PQntuples(r) > 0;
	return 0;
}

int vmops_mig_fenced(struct attempt *at, struct vmops_error *e, const char *sql, int n,
		     const char *const *extra)
{
	for (;;) {
		uint64_t t0 = vmops_mig_now_ms();
		bool ok = false;

		if (at->lost_lease)
			return lose(at, e);
		if (fenced_once(at, at->c, e, sql, n, extra, &ok) == 0) {
			if (!ok)
				return lose(at, e);
			/* A statement that renews says so with lease_expires_at; harmless otherwise. */
			if (strstr(sql, "lease_expires_at = now()"))
				at->lease_until = t0 + at->lease_ms;
			return 0;
		}
		if (e->code != VMOPS_EXIT_DB || reconnect(at, e) < 0)
			return -1;
	}
}

int vmops_mig_tx_fence(struct attempt *at, struct vmops_error *e, const char *sql, int n,
		       const char *const *extra)
{
	bool ok = false;

	if (fenced_once(at, at->c, e, sql, n, extra, &ok) < 0)
		return -1;
	return ok ? 0 : lose(at, e);
}

int vmops_mig_record_phase(struct attempt *at, const char *phase, const char *state, uint64_t extra_ms,
			   struct vmops_error *e)
{
	char lease[24];

	vmops_debug("migration %lld: phase %s", at->migration_id, phase);
	return mig_fenced(at, e,
			  "UPDATE migrations SET phase = $4, state = coalesce($5, state), time_phase_updated = now(),"
			  " time_switched = CASE WHEN $4 = 'switchover' THEN coalesce(time_switched, now())"
			  "                 ELSE time_switched END,"
			  " lease_expires_at = now() + $6 * interval '1 millisecond'"
			  " WHERE id = $1 AND lease_owner = $2 AND generation = $3",
			  phase, state, vmops_db_ll(lease, (long long)(at->lease_ms + extra_ms)));
}

int vmops_mig_renew(struct attempt *at, struct vmops_error *e)
{
	char lease[24], tr[24], tot[24];

	return mig_fenced(at, e,
			  "UPDATE migrations SET lease_expires_at = now() + $4 * interval '1 millisecond',"
			  " bytes_transferred = $5, bytes_total = $6"
			  " WHERE id = $1 AND lease_owner = $2 AND generation = $3",
			  vmops_db_ll(lease, (long long)at->lease_ms), vmops_db_ll(tr, (long long)at->transferred),
			  vmops_db_ll(tot, (long long)at->total));
}

void vmops_mig_release_lease(struct attempt *at)
{
	struct vmops_error e = { 0 };

	if (!at->lost_lease)
		(void)mig_fenced(at, &e, "UPDATE migrations SET lease_expires_at = now()"
				 " WHERE id = $1 AND lease_owner = $2 AND generation = $3");
}

/* COMMIT, with the fault hook's connection cuts around it (see fault.h). */
static int commit(struct attempt *at, const char *phase_after, struct vmops_error *e)
{
	enum vmops_fault_commit f = phase_after ? vmops_fault_commit(phase_after) : VMOPS_FAULT_COMMIT_NONE;

	if (f == VMOPS_FAULT_COMMIT_CUT_BEFORE)
		shutdown(PQsocket(at->c), SHUT_RDWR);
	if (vmops_db_x(at->c, e, "COMMIT") < 0)
		return -1;
	if (f == VMOPS_FAULT_COMMIT_CUT_AFTER) {
		shutdown(PQsocket(at->c), SHUT_RDWR);
		return vmops_err(e, VMOPS_EXIT_DB, "database connection lost during COMMIT (VMOPS_FAULT)");
	}
	return 0;
}

/* After a COMMIT whose outcome we did not hear: is the row where the transaction would have put it? */
static int committed(struct attempt *at, const char *phase_after, struct vmops_error *e)
{
	char mid[24], gen[24];
	_cleanup_pgresult_ PGresult *r = vmops_db_q(at->c, e,
		"SELECT 1 FROM migrations WHERE id = $1 AND lease_owner = $2 AND generation = $3 AND phase = $4",
		vmops_db_ll(mid, at->migration_id), at->owner, vmops_db_ll(gen, at->generation), phase_after);

	if (!r)
		return -1;
	return PQntuples(r) == 1;
}

int vmops_mig_tx(struct attempt *at, vmops_mig_tx_fn fn, void *data, const char *phase_after,
		 struct vmops_error *e)
{
	for (int tries = 0;; tries++) {
		struct vmops_error le = { 0 };
		bool at_commit = false;
		int rc;

		if (at->lost_lease)
			return lose(at, e);
		rc = vmops_db_x(at->c, &le, "BEGIN ISOLATION LEVEL READ COMMITTED");
		if (rc == 0)
			rc = fn(at, data, &le);
		if (rc == 0) {
			at_commit = true;
			rc = commit(at, phase_after, &le);
		}
		if (rc == 0)
			return 0;
		if (le.code == VMOPS_EXIT_DB) {
			*e = le;
			if (reconnect(at, e) < 0)
				return -1;
			if (at_commit && phase_after) {
				/* Ambiguous: read the outcome back instead of guessing. */
				int k = committed(at, phase_after, e);
				if (k < 0)
					return -1;
				vmops_warn("migration %lld: connection lost during COMMIT; it %s", at->migration_id,
					   k ? "had committed" : "had not committed: running it again");
				if (k)
					return 0;
			}
			continue;
		}
		PQclear(PQexec(at->c, "ROLLBACK"));
		if ((strcmp(le.sqlstate, "40001") == 0 || strcmp(le.sqlstate, "40P01") == 0) && tries < 5) {
			vmops_mig_sleep_ms(20 + vmops_db_jitter_ms(80));
			continue;
		}
		*e = le;
		return -1;
	}
}
