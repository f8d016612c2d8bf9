/* SPDX-License-Identifier: MIT */
/* Internal to lib/drain: the drains record (record.c) and the final count (count.c). */
#ifndef VMOPS_DRAIN_INTERNAL_H
#define VMOPS_DRAIN_INTERNAL_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "drain/drain.h"
#include "error.h"

struct drain_rec {
	long long id, worker_id;
	char worker[64];
	char owner[300];
	bool resumed;
};

/* Worker draining; the drain record created or taken over (expired lease); its sandboxes listed. */
int vmops_drain_rec_begin(PGconn *c, const struct vmops_drain_opts *o, struct drain_rec *d,
			  struct vmops_error *e);
/* Renew the lease; *state receives the drain's state ("" when the lease is not ours any more). */
int vmops_drain_rec_renew(PGconn *c, const struct drain_rec *d, char state[16], struct vmops_error *e);
/* Set one sandbox's outcome (attempts_delta added; error/migration/target NULL: unchanged). */
int vmops_drain_rec_outcome(PGconn *c, const struct drain_rec *d, long long sandbox_id, const char *outcome,
			    int attempts_delta, uint64_t retry_in_ms, const char *error, long long migration_id,
			    const char *target, struct vmops_error *e);
/* Outcomes that the facts settled meanwhile (moved by someone else, gone); moving rows of a dead run back to pending. */
int vmops_drain_rec_sync(PGconn *c, const struct drain_rec *d, bool reset_moving, struct vmops_error *e);
/* End: partial (lease released), cancelled (worker active), or done (worker drained/terminated). */
int vmops_drain_rec_end(PGconn *c, const struct drain_rec *d, const char *state, bool terminate, const char *detail,
			struct vmops_error *e);
/* Every sandbox row of the drain, for the report. */
int vmops_drain_rec_report(PGconn *c, long long drain_id, struct vmops_drain_report *rep, struct vmops_error *e);

/* The honest count (count.c): fills rep->left_*; 0 when nothing is left. 1 something (or unknown). -1 db. */
int vmops_drain_count(PGconn *c, const struct drain_rec *d, const struct vmops_drain_opts *o,
		      struct vmops_drain_report *rep, struct vmops_error *e);

/* The hibernate fallback (fallback.c). */
struct drain_fb_ctl {
	/* Called about every 200 ms while a hibernate runs and before each: renew the drain's lease.
	 * 0 go on; 1 start no other hibernate (--cancel); 2 also interrupt the one running
	 * (signal, whole-drain timeout); -1 database error (`e` filled). */
	int (*tick)(void *arg, struct vmops_error *e);
	void *arg;
};

/* Hibernate the drain's stuck sandboxes still running on the worker (see fallback.c).  0 done
 * (each one hibernated or still stuck with the reason); > 0: that many stuck and no bundle
 * directory given (none tried); -1 db. */
int vmops_drain_fallback(PGconn *c, const char *conninfo, const struct drain_rec *d, const struct vmops_drain_opts *o,
			 const struct drain_fb_ctl *ctl, struct vmops_error *e);

#endif
