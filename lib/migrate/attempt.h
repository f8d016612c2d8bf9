/* SPDX-License-Identifier: MIT */
/*
 * Internal to lib/migrate: one migration attempt as a durable phase machine.
 *
 *   claim -> receiver -> transfer -> switchover -> finish -> done
 *              \____________\____________\-> rollback -> done
 *
 * The phase is written to the attempt's migrations row before the phase's
 * physical step, fenced by the lease: every write of the attempt carries
 * (lease_owner, generation) in its WHERE clause and checks the row count.
 * Zero rows means another process took the lease over (vm-migrate
 * --recover bumps the generation): then nothing physical is touched any
 * more.  vmops_migrate() runs the phases in order; vmops_migrate_recover()
 * takes the lease and runs the same phase functions from the recorded phase
 * and what it observes.
 */
#ifndef VMOPS_MIGRATE_ATTEMPT_H
#define VMOPS_MIGRATE_ATTEMPT_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "hv.h"
#include "migrate.h"

#define ACTIVE_STATES "('queued', 'preparing', 'transferring', 'switching')"
#define RECEIVER_TIMEOUT_MS 30000

struct vmops_transport;

struct attempt {
	PGconn *c;
	const struct vmops_migrate_opts *o;   /* NULL when recovering */
	struct vmops_migrate_report *r;
	const char *actor;                    /* program name for audit rows */
	char owner[300];                      /* lease_owner */
	long long generation;                 /* the fencing token we hold */
	uint64_t lease_ms;
	uint64_t lease_until;                 /* monotonic ms: our lease ends no earlier */
	bool lost_lease;                      /* fenced write hit zero rows, or no database for the lease */

	long long migration_id, sandbox_id, source_vmm_id, target_vmm_id;
	long long source_worker_id, target_worker_id;
	char sandbox[64], target_worker[64];
	char target_run_dir[4096];            /* the receiver's run directory (vmms.run_dir) */

	struct vmops_hv *source, *target;     /* handles; NULL when not attached */
	struct {                              /* hosts.c: [0] the source's, [1] the target's */
		long long vmm_id;
		bool known;
		struct vmops_transport *t;    /* NULL: this host */
	} hosts[2];
	bool receiver_unasked;                /* the target's host refused the greeting: no receiver there */
	bool unreachable;                     /* recovering: a host of the attempt did not answer */
	bool sent;                            /* the source was told to migrate */
	bool resumed_target;                  /* cont was sent to the target */
	int receivers_killed;
	bool moved;                           /* the finish transaction committed */
	struct vmops_migrate_params mp;
	int64_t downtime_ms;
	uint64_t total, transferred;
};

/* ---- lease.c: fencing, reconnecting, transactions ---- */

uint64_t vmops_mig_now_ms(void);
void vmops_mig_sleep_ms(uint64_t ms);
const char *vmops_mig_owner(char *buf, size_t len, const char *what);

/*
 * A fenced statement: `sql` uses $1 = id, $2 = lease_owner, $3 = generation
 * in its WHERE clause; `n` more parameters follow as $4....  Rides out a
 * lost connection by reconnecting while the lease lasts.  Returns 0, or -1:
 * lease lost (at->lost_lease, code CONFLICT), database gone (DB), other.
 */
int vmops_mig_fenced(struct attempt *at, struct vmops_error *e, const char *sql, int n,
		     const char *const *extra);
#define mig_fenced(at, e, sql, ...) \
	vmops_mig_fenced((at), (e), (sql), \
			 (int)(sizeof((const char *[]){ NULL, ##__VA_ARGS__ }) / sizeof(const char *)) - 1, \
			 ((const char *const[]){ NULL, ##__VA_ARGS__ }) + 1)

/* Write the phase (and state) before the phase's physical step; renews the lease by extra_ms more. */
int vmops_mig_record_phase(struct attempt *at, const char *phase, const char *state, uint64_t extra_ms,
			   struct vmops_error *e);
/* Renew the lease (and progress figures). */
int vmops_mig_renew(struct attempt *at, struct vmops_error *e);
/* Give the lease up now (recover found facts unknown): the next --recover may act at once. */
void vmops_mig_release_lease(struct attempt *at);

/*
 * Run fn in a transaction whose first statement must be fenced (use
 * vmops_mig_tx_fence).  A lost connection is ridden out within the lease; an
 * ambiguous COMMIT (connection lost during it) is resolved by reading back
 * whether the row is at `phase_after` (a phase the transaction moves to)
 * with our token; phase_after NULL: fn is idempotent and simply runs again.
 */
typedef int (*vmops_mig_tx_fn)(struct attempt *at, void *data, struct vmops_error *e);
int vmops_mig_tx(struct attempt *at, vmops_mig_tx_fn fn, void *data, const char *phase_after,
		 struct vmops_error *e);
/* Inside a vmops_mig_tx fn: the fenced first statement ($1..$3 as above). */
int vmops_mig_tx_fence(struct attempt *at, struct vmops_error *e, const char *sql, int n,
		       const char *const *extra);
#define mig_tx_fence(at, e, sql, ...) \
	vmops_mig_tx_fence((at), (e), (sql), \
			   (int)(sizeof((const char *[]){ NULL, ##__VA_ARGS__ }) / sizeof(const char *)) - 1, \
			   ((const char *const[]){ NULL, ##__VA_ARGS__ }) + 1)

/* ---- phases.c ---- */

enum mig_outcome {
	MIG_COMPLETED = 0,
	MIG_FAILED,          /* rolled back: the source runs the guest */
	MIG_CANCELLED,
	MIG_LOST,            /* neither can run the guest: sandbox error, billing closed */
	MIG_UNKNOWN,         /* facts unknown: nothing irreversible done */
};

struct vmops_spec;
int vmops_mig_phase_receiver(struct attempt *at, const struct vmops_spec *spec, const char *run_dir,
			     const char *address, long long port_min, long long port_max, struct vmops_error *e);
int vmops_mig_phase_transfer(struct attempt *at, struct vmops_error *e);
/* 0 the target runs; -1 with *never_ran telling whether rolling back is safe. */
int vmops_mig_phase_switchover(struct attempt *at, uint64_t wait_ms, bool *never_ran, struct vmops_error *e);
int vmops_mig_phase_finish(struct attempt *at, struct vmops_error *e);
/* Release the old source: stop its process, then free it in the database. */
int vmops_mig_phase_release(struct attempt *at, struct vmops_error *e);
int vmops_mig_phase_rollback(struct attempt *at, const char *state, const char *why, struct vmops_error *e);
int vmops_mig_phase_lost(struct attempt *at, const char *why, struct vmops_error *e);

/* ---- hosts.c: where each VMM of the attempt runs (this host, or over ssh) ---- */

/* The transport of the worker a VMM of the attempt runs on (*t NULL: this host); cached. */
int vmops_mig_transport(struct attempt *at, long long vmm_id, struct vmops_transport **t, struct vmops_error *e);
void vmops_mig_hosts_free(struct attempt *at);
/* A handle on a VMM of the attempt on its host, once it answers there (its host
 * not answering: UNREACHABLE). */
struct vmops_hv *vmops_mig_attach(struct attempt *at, long long vmm_id, const struct vmops_vmm_info *info,
				  int timeout_ms, struct vmops_error *e);
/* Its process as its host sees it: VMOPS_PROC_ALIVE, _DEAD, _REUSED, _UNKNOWN; -1
 * when not known (UNREACHABLE: its host does not answer). */
int vmops_mig_process(struct attempt *at, long long vmm_id, const struct vmops_vmm_info *info, struct vmops_error *e);
/* Start the receiver (at->target) on the target's host, listening there on
 * l->address at a port of its range free on that host. */
struct vmops_remote_listen;
int vmops_mig_start_receiver(struct attempt *at, const struct vmops_spec *spec, const struct vmops_hv_launch_opts *lo,
			     const char *run_dir, const struct vmops_remote_listen *l, struct vmops_error *e);
/* Stop a VMM process on its host (pidfd + start time); the receiver also by its /proc marker inside its run dir. */
int vmops_mig_stop_vmm(struct attempt *at, struct vmops_hv *h, long long vmm_id, const char *run_dir,
		       int *killed, struct vmops_error *e);
/* A VMM seen gone and recorded so: its run directory goes too, on its host. */
void vmops_mig_run_dir_gone(struct attempt *at, struct vmops_hv *h, long long vmm_id, const char *known);

#endif
