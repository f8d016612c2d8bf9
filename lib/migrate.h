/* SPDX-License-Identifier: MIT */
/*
 * Live migration of one sandbox's VM to another worker, guarded by the
 * database (vm-migrate(1)).  The in-flight guard (one active migration per
 * target worker and per sandbox) and the receiver's reservation are taken in
 * one transaction; a lease renewed while the attempt runs lets
 * vmops_migrate_recover() clean up after a crashed vm-migrate.
 */
#ifndef VMOPS_MIGRATE_H
#define VMOPS_MIGRATE_H

#include <libpq-fe.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "spec.h"

#define VMOPS_MIGRATE_DEFAULT_TIMEOUT_PER_GIB_MS  150000u
#define VMOPS_MIGRATE_DEFAULT_PROGRESS_TIMEOUT_MS 150000u
#define VMOPS_MIGRATE_DEFAULT_WAIT_TARGET_MS      300000u
#define VMOPS_MIGRATE_DEFAULT_LEASE_MS            30000u
/* QEMU multifd sends pages in packets of 128 x 4 KiB. */
#define VMOPS_MIGRATE_CHUNK_BYTES                 (512u << 10)

struct vmops_migrate_report;

struct vmops_migrate_opts {
	const char *sandbox;
	const char *to;                   /* target worker name; NULL: choose by capacity */
	unsigned connections;             /* 1..128 */
	uint64_t wait_target_ms;          /* how long to wait for a free target */
	uint64_t timeout_per_gib_ms;      /* completion timeout per GiB of guest memory */
	uint64_t progress_timeout_ms;     /* abort after this long without progress (see below) */
	uint32_t downtime_limit_ms;       /* 0: hypervisor default */
	uint64_t max_bandwidth;           /* bytes/s; 0: unlimited (driver default) */
	bool auto_converge;
	uint64_t lease_ms;                /* lease length; renewed every third of it */
	double rtt_s;                     /* round-trip time to the target for the ETA */
	bool dry_run;                     /* choose a target and report; change nothing */
	enum vmops_accel auto_accel;
	const char *program;              /* acting program for audit rows and the lease owner; NULL: "vm-migrate" */
	/* The program's signal handler sets this; the attempt is then cancelled. */
	volatile sig_atomic_t *interrupted;
	/* Called once the attempt is claimed: migration id and both workers known (may be NULL). */
	void (*on_claim)(void *data, const struct vmops_migrate_report *r);
	/* Called about every 500 ms while transferring (may be NULL). */
	void (*on_progress)(void *data, const struct vmops_migrate_report *r);
	void *data;
};

struct vmops_migrate_report {
	long long migration_id, sandbox_id, source_vmm_id, target_vmm_id;
	char sandbox[64], source_worker[64], target_worker[64];
	char state[16];                   /* completed failed cancelled lost unknown unrecorded dry-run */
	char hv_status[32];               /* the hypervisor's own migration status */
	unsigned connections_requested, connections_used;
	uint64_t memory_bytes;
	uint64_t total_bytes, transferred_bytes, remaining_bytes;
	double rate_bps;                  /* observed, recent */
	double eta_s;                     /* -1 unknown */
	int64_t downtime_ms, total_time_ms, setup_time_ms;
	uint64_t wait_ms;                 /* spent waiting for a free target */
	uint64_t wall_ms;                 /* whole attempt */
	char error[VMOPS_ERRMSG_MAX];
};

/*
 * Migrate: the phases claim, receiver, transfer, switchover, finish (see
 * lib/migrate/attempt.h).  Returns 0 when the sandbox runs on the target.
 * On failure the report says what happened and `e` carries the exit code:
 * NOTFOUND, CONFLICT (not running, already migrating, --to the source or a
 * worker not accepting, or the lease was taken over), NOCAPACITY (no target
 * within wait_target_ms), HYPERVISOR, TIMEOUT, INTERRUPTED, DB, UNKNOWN (the
 * target was resumed but its state cannot be learned: left to --recover).
 */
int vmops_migrate(PGconn *c, const struct vmops_migrate_opts *o, struct vmops_migrate_report *r,
		  struct vmops_error *e);

struct vmops_recover_report {
	int found;          /* attempts whose lease had expired */
	int completed;      /* finished: the target had (or was given) the guest */
	int released;       /* finished earlier; the old source was stopped and released now */
	int failed;         /* rolled back: the source keeps the guest, receiver destroyed */
	int lost;           /* neither could run the guest: sandbox error, billing closed */
	int unknown;        /* facts unknown (a live VMM did not answer): nothing irreversible done */
	int unreachable;    /* of those: a worker's host did not answer over ssh */
	int receivers_killed;   /* receivers stopped by signal (pidfd, recorded or found in /proc) */
	int errors;
	bool interrupted;   /* stopped early by the interrupted flag: run --recover again */
	char last_error[VMOPS_ERRMSG_MAX];
};

/*
 * Reclaim attempts whose lease expired (their vm-migrate died or stalled).
 * For each: take the lease (only an expired one; the generation, the
 * fencing token, is bumped so the old owner can write nothing more), observe
 * the facts, decide with vmops_migrate_recover_decide() and drive the same
 * phase functions vm-migrate uses.  With dry_run, only count the expired
 * attempts (found) and touch nothing.  Returns 0 (see the report; unknown
 * > 0 means "run again later"), -1 when the database failed.
 */
int vmops_migrate_recover(PGconn *c, bool dry_run, uint64_t lease_ms, struct vmops_recover_report *r,
			  struct vmops_error *e);
/*
 * The same, leaving early once *interrupted (may be NULL) is nonzero: no
 * further attempt is taken, and a target still loading is no longer waited
 * for (that attempt is left unknown, its lease given up: nothing
 * irreversible); r->interrupted says so.
 */
int vmops_migrate_recover_until(PGconn *c, bool dry_run, uint64_t lease_ms, volatile sig_atomic_t *interrupted,
				struct vmops_recover_report *r, struct vmops_error *e);

/* ---- the decision table of --recover (pure; vm-migrate(1) lists it) ---- */

enum vmops_recover_proc { VMOPS_RP_NONE, VMOPS_RP_DEAD, VMOPS_RP_ALIVE };
enum vmops_recover_run {
	VMOPS_RR_UNKNOWN,      /* alive but QMP did not answer (busy or slow): not dead */
	VMOPS_RR_RUNNING,
	VMOPS_RR_PAUSED,       /* a receiver that loaded the whole guest and waits for cont */
	VMOPS_RR_INMIGRATE,    /* a receiver still loading */
	VMOPS_RR_STOPPED,      /* postmigrate, finish-migrate, paused (a source) */
	VMOPS_RR_OTHER,        /* shutdown, internal-error, guest-panicked ... */
};
struct vmops_recover_facts {
	const char *phase;                 /* recorded phase; NULL: written by an older vm-migrate */
	enum vmops_recover_proc src, tgt;
	enum vmops_recover_run src_run, tgt_run;
	bool src_completed;                /* the source's query-migrate says completed */
	bool unreachable;                  /* a VMM's host did not answer over ssh: its facts are unknown */
};
enum vmops_recover_action {
	VMOPS_RA_ROLLBACK,     /* cancel on the source, stop the receiver, resume the source: failed */
	VMOPS_RA_ACTIVATE,     /* resume the loaded target (switchover), then finish */
	VMOPS_RA_FINISH,       /* the target runs the guest: record it, stop and release the source */
	VMOPS_RA_RELEASE,      /* already finished: stop and release the old source */
	VMOPS_RA_LOST,         /* neither can run the guest: sandbox error, billing closed */
	VMOPS_RA_UNKNOWN,      /* do nothing irreversible; say why; run again later */
};
enum vmops_recover_action vmops_migrate_recover_decide(const struct vmops_recover_facts *f, const char **why);
const char *vmops_migrate_recover_action_name(enum vmops_recover_action a);

/*
 * No-progress timeout.  Bytes always move while dirty pages are resent, so
 * moving bytes is not progress; and a plain low-water mark of the remaining
 * bytes is not either, because remaining falls to nearly nothing at the end
 * of every pass over memory and only jumps back up when the next pass
 * begins: after the first pass it would take a migration that converges
 * slowly for a stalled one (Nova deprecated its progress timeout for this).
 * So progress is, in the first pass (or when the hypervisor reports no
 * passes, sync_count 0), remaining falling below its lowest value; after
 * it, a pass that begins certainly smaller than any pass before.  A stall
 * needs the timeout to pass without progress and at least one pass to have
 * begun in that time (a long pass that keeps sending is not a stall), or
 * the transferred bytes not to grow at all for the timeout.
 */
struct vmops_migrate_lowwater {
	uint64_t min_remaining; /* lowest remaining (first pass) or smallest pass start */
	uint64_t since_ms;      /* when progress was last made */
	uint64_t sync;          /* the pass count last seen */
	uint64_t passes;        /* passes begun since progress was last made */
	uint64_t transferred;   /* transferred bytes last seen */
	uint64_t moved_ms;      /* when they last grew */
	bool seen;
	bool stuck;             /* the stall reported: no bytes moved */
};
void vmops_migrate_lowwater_init(struct vmops_migrate_lowwater *lw, uint64_t now_ms);
/* Feed one sample; true when the migration made no progress for more than timeout_ms (above). */
bool vmops_migrate_lowwater_stalled(struct vmops_migrate_lowwater *lw, uint64_t remaining, uint64_t sync_count,
				    uint64_t transferred, uint64_t now_ms, uint64_t timeout_ms);

/*
 * ETA from the per-connection throughput bound:
 *   per_conn = chunk / (chunk / link_rate + rtt)
 *   rate     = min(connections * per_conn, cap)   (cap 0: none)
 * Returns seconds for `remaining` bytes, or -1 when link_rate <= 0.
 */
double vmops_migrate_eta_s(uint64_t remaining, unsigned connections, double link_rate_bps,
			   double rtt_s, uint64_t chunk, double cap_bps);

#endif
