/* SPDX-License-Identifier: MIT */
/*
 * usage-parity: find and repair billing drift between the ledger
 * (scale_events), the fleet's state, and the independent usage record
 * (usage_samples).
 *
 * Categories (in this order, each open event is reported under the first
 * that applies):
 *   open_terminal           open event for a sandbox in a terminal status
 *   open_worker_terminated  open event on a terminated worker
 *   open_vmm_dead           open event whose VMM is destroyed or failed
 *   size_mismatch           open event whose memory or vCPUs differ from the sandbox
 *   missing_event           running (or migrating) sandbox without an open event
 *   pending_live_vmm        pending sandbox without an open event whose VMM is
 *                           running or migrating, or has been starting for
 *                           longer than starting_timeout_ms: a launch that
 *                           never finished, maybe running unbilled.  Not
 *                           fixable here: whether its process runs is known
 *                           only on its worker (ghost-reap stops or repairs it)
 *   overlap                 two events of one sandbox that overlap in time
 *                           (events that intersect the window)
 *   org_usage               per-org GB·s in the window, ledger against usage
 *                           samples, differing by more than the tolerance
 *
 * GB·s: memory in GiB times seconds.  Drift is signed: ledger minus truth,
 * positive when the ledger bills more than ran.
 */
#ifndef VMOPS_PARITY_H
#define VMOPS_PARITY_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "error.h"

enum vmops_parity_category {
	VMOPS_PARITY_OPEN_TERMINAL,
	VMOPS_PARITY_OPEN_WORKER_TERMINATED,
	VMOPS_PARITY_OPEN_VMM_DEAD,
	VMOPS_PARITY_SIZE_MISMATCH,
	VMOPS_PARITY_MISSING_EVENT,
	VMOPS_PARITY_PENDING_LIVE_VMM,
	VMOPS_PARITY_OVERLAP,
	VMOPS_PARITY_ORG_USAGE,
	VMOPS_PARITY_NCATEGORIES,
};

/* "open_terminal", ...; NULL for an unknown category. */
const char *vmops_parity_category_name(int category);

#define VMOPS_PARITY_TOLERANCE_DEFAULT 2.0      /* percent */
#define VMOPS_PARITY_GRACE_DEFAULT_MS 300000u   /* 5 min */

/*
 * A point in time as operators type it, in seconds since the epoch:
 *   now | now-DUR | @EPOCH | YYYY-MM-DD | YYYY-MM-DD[T ]HH:MM[:SS][Z|+HH[:MM]|-HH[:MM]]
 * Without an offset the time is UTC.  A usage error otherwise.
 */
int vmops_parity_parse_time(const char *s, time_t now, time_t *out, struct vmops_error *e);

/* The default window: the last full hour that ended at least `grace_ms` before now. */
void vmops_parity_default_window(time_t now, uint64_t grace_ms, time_t *from, time_t *to);

struct vmops_parity_opts {
	time_t from, to;          /* the window [from, to) */
	double tolerance_pct;     /* org_usage: flag when |ledger - usage| > pct% of the larger */
	uint64_t starting_timeout_ms; /* pending_live_vmm: a VMM starting this long was abandoned */
	bool fix;                 /* repair what is safe, each repair in its own transaction */
	bool dry_run;             /* with fix: run each repair, then roll it back */
	const char *program;      /* for audit rows; NULL: "usage-parity" */
};

struct vmops_parity_finding {
	int category;
	long long sandbox_id;     /* -1 for org_usage */
	char *sandbox;            /* NULL for org_usage */
	char *org;
	long long event_id;       /* the event at fault; -1 when none (missing_event, org_usage) */
	long long other_event_id; /* overlap: the later event; else -1 */
	double drift_gbs;         /* signed: ledger minus truth */
	double ledger_gbs, usage_gbs, drift_pct;  /* org_usage only; else NAN */
	char *detail;             /* one line for people */
	bool fixable;             /* --fix knows a safe repair */
	const char *action;       /* the repair done (or, dry run, tried): "closed", ...; NULL: none */
	bool fixed;               /* gone when re-checked after the repairs */
	char *error;              /* the repair failed: why; else NULL */
};

struct vmops_parity_total {
	long long count, fixed;
	double drift_gbs;
};

struct vmops_parity_report {
	struct vmops_parity_finding *findings;
	size_t n;
	struct vmops_parity_total totals[VMOPS_PARITY_NCATEGORIES];
	long long remaining;      /* after --fix (not dry run): findings left at re-check; else -1 */
	long long fix_errors;
	char last_error[VMOPS_ERRMSG_MAX];
};

/*
 * Detect (in one REPEATABLE READ snapshot) and, with opts->fix, repair, then
 * detect again to see what is left.  Returns the report, or NULL with `e`
 * filled.  A failed repair is not a failure of the run: it is counted in
 * fix_errors and its finding keeps its error.
 */
struct vmops_parity_report *vmops_parity_run(PGconn *c, const struct vmops_parity_opts *o,
					     struct vmops_error *e);
void vmops_parity_report_free(struct vmops_parity_report *r);

#endif
