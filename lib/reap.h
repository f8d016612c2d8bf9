/* SPDX-License-Identifier: MIT */
/*
 * vmm-reap: clean up abandoned VMM records.
 *
 * A VMM is abandoned when its state is destroyed or failed, time_deleted is
 * NULL, and no sandbox names it as its active or target VMM.  Reaping one
 * deletes its reservation (the memory and vCPUs it still held on its worker)
 * and sets time_deleted, only where time_deleted is still NULL, with an
 * audit row, all in the same transaction.
 *
 * Work is done in bounded batches, each its own short transaction; rows are
 * claimed with FOR UPDATE SKIP LOCKED, so any number of reapers on any
 * number of hosts can run at once: none waits for another and each VMM is
 * counted as deleted by exactly one of them.  One run reaps in several
 * database sessions at once (opts.sessions; the extra ones in threads, on
 * connections made like the caller's): they take their claims in turn,
 * each after the last, and reap in parallel.
 */
#ifndef VMOPS_REAP_H
#define VMOPS_REAP_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define VMOPS_REAP_BATCH_DEFAULT 1000
#define VMOPS_REAP_BATCH_MAX 100000
#define VMOPS_REAP_SESSIONS_DEFAULT 2
#define VMOPS_REAP_SESSIONS_MAX 8

struct vmops_reap_stats;

/* A VMM a batch deleted that runs on the host opts.host_id names, with a recorded process. */
struct vmops_reap_local {
	long long id;
	const char *run_dir;              /* never NULL */
	long long pid;
	unsigned long long pid_start_time;  /* 0: not recorded */
};

struct vmops_reap_opts {
	long long batch;         /* VMMs per transaction; 0: VMOPS_REAP_BATCH_DEFAULT */
	long long limit;         /* at most this many VMMs this run; 0: no limit */
	int sessions;            /* database sessions reaping at once; 0: VMOPS_REAP_SESSIONS_DEFAULT */
	uint64_t older_than_ms;  /* only VMMs destroyed/failed at least this long ago */
	bool dry_run;            /* count what would be reaped, change nothing */
	const char *program;     /* for audit rows; NULL: "vmm-reap" */
	const char *host_id;     /* this host's identity (on_batch's `local`); NULL: none */
	/*
	 * Called after each committed batch (not in a dry run) with the totals
	 * so far and the VMMs the batch deleted that run on host_id's host
	 * with a recorded process and run directory, in id order (valid until
	 * the callback returns).  A batch that failed and was reaped one VMM
	 * at a time calls it for each VMM that committed.  Never called twice
	 * at once (sessions other than the caller's run in threads of their
	 * own).  NULL: none.
	 */
	void (*on_batch)(void *arg, const struct vmops_reap_stats *st,
			 const struct vmops_reap_local *local, size_t nlocal);
	void *arg;
};

struct vmops_reap_stats {
	long long found;                 /* abandoned VMMs this run claimed (dry run: would claim) */
	long long vmms_deleted;          /* time_deleted set by this run */
	long long vmms_already_deleted;  /* claimed, but time_deleted was already set by another run */
	long long reservations_deleted;  /* reservations this run deleted */
	long long errors;                /* VMMs that could not be reaped */
	long long batches;               /* transactions committed */
	int sessions;                    /* database sessions that reaped: fewer than asked
	                                    when more connections could not be made; 1 in a dry run */
	char last_error[VMOPS_ERRMSG_MAX];  /* "" when errors == 0 */
};

/*
 * Reap.  Returns 0 when the run completed (per-VMM failures are counted in
 * st->errors, with the last message in st->last_error), or -1 with `e`
 * filled when it could not go on (connection lost, schema missing, the
 * candidate query itself failing).  `st` is valid in both cases.  The
 * batch statement stays prepared on `c` (as "vmops_reap_batch"): a second
 * run on the same connection uses it again.
 */
int vmops_reap(PGconn *c, const struct vmops_reap_opts *o, struct vmops_reap_stats *st,
	       struct vmops_error *e);

#endif
