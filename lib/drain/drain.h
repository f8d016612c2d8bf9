/* SPDX-License-Identifier: MIT */
/*
 * vm-drain: empty a worker, live (vm-drain(1)).
 *
 * Two parts.  The plan is a pure function: sandboxes (the room each needs
 * on a target, the bytes to move), targets (free room, inbound rate, when
 * each is free again) -> a schedule, largest first, each to the eligible
 * target with the most free room at that moment, at most one inbound per
 * target, at most max_parallel outbound at once.  The run (run.c) keeps a
 * `drains` record (schema 007), marks the worker draining, recovers expired
 * attempts, then re-plans every tick from the database and starts the
 * moves the plan puts at time 0, each in a thread with its own database
 * connection, through vmops_migrate() with `to` set (audited as vm-drain).
 * A sandbox that cannot move after its retries is hibernated (fallback.c,
 * snapshot-prep's vmops_hibernate) into bundle_dir.  At the end it counts
 * again, from the database and from the worker's processes (the /proc
 * identification of ghost-reap, on the worker's own host: a worker reached
 * over ssh is counted from that host's /proc through the transport), before
 * it declares the worker drained.
 */
#ifndef VMOPS_DRAIN_H
#define VMOPS_DRAIN_H

#include <libpq-fe.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* ---- the plan (pure) ------------------------------------------------------- */

struct vmops_drain_item {
	const char *name;
	long long mem_mb;        /* room it needs on a target (its reservation) */
	long long vcpus;
	double move_mb;          /* memory to send (its current memory); <= 0: mem_mb */
};

struct vmops_drain_target {
	const char *name;
	long long free_mb, free_vcpus;
	double rate_mbps;        /* inbound rate, MiB/s (> 0) */
	double available_s;      /* busy (an inbound in flight) until then; 0: free now */
};

struct vmops_drain_params {
	unsigned max_parallel;   /* outbound at once (>= 1) */
	double setup_s;          /* fixed cost per move (receiver start, switchover) */
	/* Outbound slots already taken (moves in flight), free again at these times. */
	const double *busy_until;
	size_t nbusy;
	/* Look ahead: also try each of the `lookahead` next-largest items first and keep the shortest. */
	unsigned lookahead;
};

struct vmops_drain_step {
	size_t item;             /* index into the items */
	int target;              /* index into the targets; -1: fits no target (unplaceable) */
	double start_s, finish_s;
};

struct vmops_drain_plan {
	struct vmops_drain_step *steps;  /* in start order; unplaceable ones last */
	size_t n;
	size_t unplaced;
	double makespan_s;               /* latest finish */
};

/*
 * Plan.  The items and targets are only read.  Returns 0, or -1 (bad
 * arguments, out of memory) with `e` filled.  Free with
 * vmops_drain_plan_free().  Room is reserved on a target when its move
 * starts, as the database does; a target never receives two moves at once.
 */
int vmops_drain_plan(const struct vmops_drain_item *items, size_t nitems,
		     const struct vmops_drain_target *targets, size_t ntargets,
		     const struct vmops_drain_params *p, struct vmops_drain_plan *plan,
		     struct vmops_error *e);
void vmops_drain_plan_free(struct vmops_drain_plan *plan);

/* Lower bound on the makespan: max(total / (min(targets, parallel) x rate), largest / rate)
 * (with the fastest target's rate and setup_s per move).  Ignores room. */
double vmops_drain_lower_bound(const struct vmops_drain_item *items, size_t nitems,
			       const struct vmops_drain_target *targets, size_t ntargets,
			       const struct vmops_drain_params *p);

/*
 * How long the hibernate fallback waits for a sandbox's guest agent: a
 * quarter of the sandbox's budget, at least 10 s and at most 30 s (a
 * worker being drained is busy; snapshot-prep's bare 10 s is too short).
 */
int vmops_drain_agent_wait_ms(uint64_t budget_ms);

/* ---- the run ------------------------------------------------------------- */

#define VMOPS_DRAIN_DEFAULT_MAX_PARALLEL   2u
#define VMOPS_DRAIN_DEFAULT_TIMEOUT_MS     (6ull * 3600 * 1000)
#define VMOPS_DRAIN_DEFAULT_RETRIES        3u
#define VMOPS_DRAIN_DEFAULT_BACKOFF_MS     5000u
#define VMOPS_DRAIN_MAX_BACKOFF_MS         60000u
#define VMOPS_DRAIN_DEFAULT_RATE_MBPS      100.0
#define VMOPS_DRAIN_LEASE_MS               30000u
#define VMOPS_DRAIN_DEFAULT_HIBERNATE_MS   (2ull * 60 * 1000)    /* per sandbox */
#define VMOPS_DRAIN_DEFAULT_FALLBACK_MS    (30ull * 60 * 1000)   /* all hibernates of a run */

struct vmops_drain_sandbox_report;

struct vmops_drain_opts {
	const char *worker;
	unsigned max_parallel;
	uint64_t timeout_ms;             /* whole drain */
	unsigned retries;                /* attempts per sandbox */
	uint64_t backoff_ms;             /* before the 2nd attempt; doubles, at most VMOPS_DRAIN_MAX_BACKOFF_MS */
	uint64_t migrate_timeout_per_gib_ms, progress_timeout_ms;
	uint64_t max_bandwidth;          /* bytes/s per move; 0: none */
	double rate_mbps;                /* planning rate */
	bool terminate;                  /* end as terminated, not drained */
	bool dry_run;                    /* plan only, change nothing */
	/* The hibernate fallback: bundles go to bundle_dir (absolute; NULL: no fallback, a sandbox
	 * that cannot move stays stuck and the drain ends partial). */
	const char *bundle_dir;
	uint64_t hibernate_timeout_ms;   /* per sandbox */
	uint64_t fallback_timeout_ms;    /* all hibernates of one run together */
	const char *host_id;             /* this host (host.h), for the process count of a worker on this host */
	const char *proc_root;           /* NULL: /proc (a worker on this host; another host's is read there) */
	volatile sig_atomic_t *interrupted;
	/* Called from the calling thread (never concurrently). */
	void (*on_sandbox)(void *data, const struct vmops_drain_sandbox_report *s);
	void (*on_progress)(void *data, int moved, int hibernated, int stuck, int failed, int remaining, double eta_s);
	void *data;
};

struct vmops_drain_sandbox_report {
	char sandbox[64];
	char outcome[16];                /* pending moving moved stuck failed hibernated (hibernating: told only) */
	char target[64];
	int attempts;
	long long migration_id;
	long long mem_mb;
	double plan_start_s, plan_finish_s;   /* --dry-run */
	uint64_t wall_ms;                /* last attempt (hibernating: its budget) */
	char bundle[PATH_MAX];           /* hibernated: its bundle (hibernating: the directory) */
	char error[VMOPS_ERRMSG_MAX];
};

struct vmops_drain_report {
	long long drain_id;
	char worker[64];
	char state[16];                  /* running cancelling done partial cancelled dry-run */
	char worker_state[16];           /* at the end */
	bool resumed;
	struct vmops_drain_sandbox_report *sandboxes;
	size_t n;
	int moved, stuck, failed, hibernated, remaining;
	long long left_sandboxes, left_vmms, left_processes;   /* the final count; -1 unknown */
	char count_detail[VMOPS_ERRMSG_MAX];
	double planned_s, elapsed_s;
	int recovered_found, recovered_unknown;   /* expired attempts found / left unknown first */
};

/*
 * Drain `o->worker` (`c`: the caller's connection; each move opens its
 * own from `conninfo`).  Returns an exit code: VMOPS_EXIT_OK (drained, or
 * terminated), VMOPS_EXIT_PARTIAL (something remains: the worker stays
 * draining), VMOPS_EXIT_INTERRUPTED (signal or --cancel: in-flight moves
 * cancelled or finished, recorded), or -1 with `e` filled (NOTFOUND,
 * CONFLICT: another vm-drain runs it, DB, ...).  `rep` is filled in all
 * cases; free with vmops_drain_report_free().
 */
int vmops_drain_run(PGconn *c, const char *conninfo, const struct vmops_drain_opts *o,
		    struct vmops_drain_report *rep, struct vmops_error *e);

/*
 * Cancel the active drain of `worker`: mark it cancelling; the vm-drain
 * running it stops scheduling, lets in-flight moves finish or roll back and
 * returns the worker to active.  If none runs it (its lease expired), do
 * that here: recover expired attempts, worker active, drain cancelled.
 * Waits up to wait_ms for the end, or until *interrupted (may be NULL)
 * becomes nonzero: the cancel stays recorded and the running vm-drain ends
 * the drain.  0, or -1 (NOTFOUND: no active drain, TIMEOUT, INTERRUPTED, DB).
 */
int vmops_drain_cancel(PGconn *c, const char *worker, uint64_t wait_ms, volatile sig_atomic_t *interrupted,
		       struct vmops_drain_report *rep,
		       struct vmops_error *e);

void vmops_drain_report_free(struct vmops_drain_report *rep);

#endif
