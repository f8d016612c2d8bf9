/* SPDX-License-Identifier: MIT */
/*
 * snapshot: bring a VM into a state that is safe to snapshot, take the
 * snapshot, and bring the VM back — with every change undone on failure.
 *
 * Prepare, in this order, each step a fault point (VMOPS_FAULT=STEP:ACTION,
 * lib/fault.h) checked before it acts:
 *
 *   balloon   optional reclaim (balloon_bytes > 0): undo = back to the
 *             balloon size found
 *   quiesce   guest filesystems frozen through the guest agent (agent_ms to
 *             reach it, op_ms for the freeze; separate budgets): undo = thaw,
 *             registered BEFORE the freeze is asked for (a freeze that timed
 *             out may still happen in the guest).  Drivers with no guest
 *             agent channel (Cloud Hypervisor, Firecracker) skip it: their
 *             snapshots are crash-consistent.
 *   hint      drivers with free-page hinting (Firecracker): a round that
 *             runs is waited for within hint_ms; on timeout, error or the
 *             interrupted flag it is stopped and seen stopped within
 *             hint_stop_ms, right before the pause (pausing stops only the
 *             vCPUs: a round left running keeps the host discarding guest
 *             pages while the memory is written).  A stop that fails or is
 *             never confirmed fails the step.
 *   pause     vCPUs stopped: undo = resume (only if the VM was running)
 *
 * then `snapshot` (the VMM's own files written into the directory, which
 * must be empty: undo = delete everything in it) and `disks` (the spec's writable disk images copied sparse next to it,
 * taken while paused: undo = delete them).
 *
 * Undo runs in reverse order of registration; it ignores the interrupted
 * flag (unwinding must finish) and tries every action even after one failed
 * (the first error is kept).  Thaw is retried until unwind_ms has passed:
 * an agent still busy with a late freeze answers once that freeze is done.
 * A failure, a timeout or the interrupted flag (SIGINT/SIGTERM) during
 * prepare or snapshot unwinds everything: the VM is left running, thawed,
 * at its balloon size, and no snapshot file is left.
 */
#ifndef VMOPS_SNAPSHOT_H
#define VMOPS_SNAPSHOT_H

#include <libpq-fe.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "../error.h"
#include "../hv.h"
#include "../spec.h"

#define VMOPS_SNAP_UNDO_MAX 24
/*
 * A sandbox whose worker is on another host (transport ssh): its QMP socket
 * and its /proc are that host's, so snapshot and hibernate refuse it (exit
 * 13) before anything is recorded.  Arguments: sandbox, worker.
 */
#define VMOPS_SNAPSHOT_ELSEWHERE_FMT \
	"sandbox %s: its worker %s is on another host (transport ssh): run snapshot-prep on that host; nothing done"
#define VMOPS_SNAP_AGENT_MS 10000     /* default: reaching the guest agent */
#define VMOPS_SNAP_PREPARE_MS 30000   /* default: the freeze itself */
#define VMOPS_SNAP_HINT_MS 10000      /* default: a free-page hinting round */
#define VMOPS_SNAP_HINT_STOP_MS 2000  /* default: stopping one */
#define VMOPS_SNAP_UNWIND_MS 60000    /* default: retrying undo actions */

enum vmops_snap_undo_kind {
	VMOPS_UNDO_VM,     /* puts the VM back: thaw, resume, deflate */
	VMOPS_UNDO_FILE,   /* deletes something we wrote */
};

struct vmops_snap_undo {
	const char *what;                 /* "thaw", "resume", ... */
	enum vmops_snap_undo_kind kind;
	uint64_t arg;                     /* balloon size */
};

struct vmops_prepare_opts {
	int agent_ms;                     /* <= 0: VMOPS_SNAP_AGENT_MS */
	int prepare_ms;                   /* <= 0: VMOPS_SNAP_PREPARE_MS */
	int hint_ms;                      /* <= 0: VMOPS_SNAP_HINT_MS */
	int hint_stop_ms;                 /* <= 0: VMOPS_SNAP_HINT_STOP_MS */
	int unwind_ms;                    /* <= 0: VMOPS_SNAP_UNWIND_MS */
	bool no_quiesce;                  /* skip the freeze (no agent in the guest) */
	bool live;                        /* snapshot with the VM running (QEMU background-snapshot):
	                                     the hypervisor is asked first whether it accepts one
	                                     (step "live", before any change; refused: CONFLICT),
	                                     and there is no pause step */
	uint64_t balloon_bytes;           /* > 0: reclaim this much first */
	volatile sig_atomic_t *interrupted;  /* may be NULL */
};

/* One prepared VM: the handle (not owned) and what to undo. */
struct vmops_prep {
	struct vmops_hv *h;
	struct vmops_prepare_opts o;
	int dirfd;                        /* snapshot directory (not owned), -1: none */
	size_t n_undo;
	struct vmops_snap_undo undo[VMOPS_SNAP_UNDO_MAX];
	char files[VMOPS_SNAP_UNDO_MAX][64];  /* names of the files written into dirfd */
	size_t n_files;
	int frozen;                       /* filesystems the guest froze, -1: unknown */
	bool was_running;
	uint64_t balloon_found;
	int64_t paused_at_ms, resumed_at_ms;  /* CLOCK_MONOTONIC; downtime = difference */
	const char *failed_step;          /* step that failed, NULL if none */
};

/*
 * Prepare `h` (see the top).  On failure everything done is undone before
 * returning -1.  On success the VM is quiesced and paused; the caller
 * either snapshots, or undoes with vmops_prep_undo (prepare-only mode).
 */
int vmops_prepare(struct vmops_prep *p, struct vmops_hv *h, const struct vmops_prepare_opts *o,
		  struct vmops_error *err);

/*
 * Take the snapshot into dirfd (empty; ours) while prepared: the VMM's
 * files, then a sparse copy of each writable disk of `spec` (named
 * disk<i>.img).  On
 * failure everything is unwound (files deleted, VM resumed and thawed).
 * `names`, if not NULL, receives the file names (static storage of p).
 */
int vmops_prep_snapshot(struct vmops_prep *p, int dirfd, const struct vmops_spec *spec,
			int timeout_ms, const char *names[VMOPS_SNAP_UNDO_MAX], size_t *n_names,
			struct vmops_error *err);

/* Put the VM back (resume, thaw, deflate, ...) and keep the files. */
int vmops_prep_release(struct vmops_prep *p, struct vmops_error *err);
/* Undo everything, files included. */
int vmops_prep_undo(struct vmops_prep *p, struct vmops_error *err);

/*
 * Put back a VM that a crashed run left prepared, from what it observes:
 * resume it if paused (not after a completed snapshot migration:
 * "postmigrate" is resumed too, the source of a snapshot is still the
 * VM), then thaw the guest's filesystems.  Returns 0 or -1.
 */
int vmops_prep_recover(struct vmops_hv *h, const struct vmops_prepare_opts *o,
		       struct vmops_error *err);

/* Copy regular file `src` to `name` in dirfd, holes kept (SEEK_DATA/SEEK_HOLE). */
int vmops_copy_sparse(const char *src, int dirfd, const char *name,
		      volatile sig_atomic_t *interrupted, struct vmops_error *err);


/* --- hibernate and wake (the fleet database) ------------------------------- */

#define VMOPS_HIBERNATE_BUDGET_MS (2u * 60 * 1000)

struct vmops_hibernate_opts {
	const char *sandbox;
	const char *bundle_dir;      /* absolute; bundle = <dir>/<sandbox>-<snapshot id>.vmops */
	const char *work_dir;        /* staging (NULL: bundle_dir) */
	uint64_t budget_ms;          /* the state write (0: VMOPS_HIBERNATE_BUDGET_MS) */
	int agent_ms, prepare_ms;    /* see struct vmops_prepare_opts */
	int hint_ms;                 /* see struct vmops_prepare_opts */
	const char *program;         /* for the lease owner and audit rows */
	volatile sig_atomic_t *interrupted;
};

struct vmops_hibernate_report {
	long long sandbox_id, vmm_id, snapshot_id;
	char location[PATH_MAX];
	uint64_t size_bytes;
	char sha256[65];
	bool committed;              /* the sandbox is hibernated in the database */
	bool vmm_stopped;            /* and its QEMU is gone, reservation freed */
};

/*
 * Hibernate a running sandbox: record the snapshot (state writing, with a
 * lease), prepare its VM, snapshot, write the bundle durably, then in ONE
 * transaction: snapshot ready, VMM destroyed, sandbox hibernated (the
 * trigger closes its billing).  The VMM is stopped after the commit and its
 * reservation freed only once the process is gone.  Any failure before the
 * commit unwinds the VM (running, thawed), removes the bundle and marks the
 * snapshot failed: the sandbox is running where it was.  A lost database
 * connection at the commit leaves the VM paused (UNKNOWN): resuming a
 * sandbox that may be hibernated could run it twice.
 */
int vmops_hibernate(PGconn *c, const struct vmops_hibernate_opts *o,
		    struct vmops_hibernate_report *r, struct vmops_error *e);

struct vmops_wake_opts {
	const char *sandbox;
	const char *worker;          /* NULL: the active worker with the most room */
	int timeout_ms;              /* loading the state (0: 10 min) */
	int agent_ms, prepare_ms;
	enum vmops_accel auto_accel;
	const char *program;
	volatile sig_atomic_t *interrupted;
};

struct vmops_wake_report {
	long long sandbox_id, snapshot_id, vmm_id, worker_id, scale_event_id;
	char worker[128];
};

/*
 * Wake a hibernated sandbox: admit a new VMM on a worker with room (its
 * reservation in the same transaction), verify the bundle (SHA-256 as
 * recorded, then every member), restore, resume, thaw; then in ONE
 * transaction: VMM running, sandbox running on its new worker, one open
 * scale event, snapshot restored.  Any failure destroys the new VMM, frees
 * its reservation and leaves the sandbox hibernated with its bundle.
 */
int vmops_wake(PGconn *c, const struct vmops_wake_opts *o, struct vmops_wake_report *r,
	       struct vmops_error *e);

struct vmops_snap_recover_opts {
	const char *sandbox;
	bool dry_run;                /* say what is in flight; change nothing */
	int agent_ms, prepare_ms;    /* thawing the guest (see struct vmops_prepare_opts) */
	const char *host_id_override;  /* $VMOPS_HOST_ID, see host.h */
	const char *program;
};

struct vmops_snap_recover_report {
	char state[16];              /* what was in flight: "writing", "restoring" or "none" */
	long long snapshot_id, vmm_id, restore_vmm_id;
	char previous_owner[160];    /* the run that left it */
	bool vm_put_back;            /* writing: the VM was resumed and thawed */
	bool vmm_stopped;            /* restoring: the half-started VMM was stopped by us */
	int files_removed;           /* partial bundle, staging, extracted run directory */
};

/*
 * Recover what a crashed or killed hibernate or wake of the sandbox left in
 * flight (its snapshot 'writing' or 'restoring'), once that run's lease has
 * expired (before that: CONFLICT, nothing done).  A hibernate that did not
 * commit: its VM is put back (resumed, thawed) if its VMM still runs, the
 * partial bundle and the staging files are deleted, the snapshot is failed;
 * the sandbox runs where it was.  A wake that did not commit: its new VMM is
 * stopped (identified by pid and start time, or by its fleet token), its
 * reservation freed, the snapshot ready again; the sandbox stays hibernated
 * and can be woken.  Nothing in flight: state "none", 0.  The VMM must run
 * on this host (WRONG_HOST otherwise).  An unreachable VM stays as found
 * (HYPERVISOR), the snapshot in flight: run it again.
 */
int vmops_snapshot_recover(PGconn *c, const struct vmops_snap_recover_opts *o,
			   struct vmops_snap_recover_report *r, struct vmops_error *e);

/*
 * Remove the run directory of a VMM that restored a bundle and is gone: the
 * extracted files in its snapshot/ (regular files only), then what
 * vmops_rundir_remove removes.  1 removed, 0 kept (other contents), -1 error.
 */
int vmops_snap_remove_run_dir(const char *run_dir, struct vmops_error *e);

/* SHA-256 (lowercase hex) and size of a whole file. */
int vmops_file_sha256(const char *path, char hex[65], uint64_t *size, struct vmops_error *e);

#endif
