/* SPDX-License-Identifier: MIT */
/*
 * snapshot: bring a VM into a state that is safe to snapshot, take the
 * snapshot, and bring the VM back — with every change undone on failure.
 *
 * Prepare, in this order, each step a fault point (VMOPS_FAULT=STEP:ACTION,
 * lib/fault.h) checked before it acts:
 *
 *   hint      free-page hinting round (drivers that have one): started and
 *             waited for within hint_ms; on timeout or error it is stopped
 *             (its own short budget) before anything else happens
 *   balloon   optional reclaim (balloon_bytes > 0): undo = back to the
 *             balloon size found
 *   quiesce   guest filesystems frozen through the guest agent (agent_ms to
 *             reach it, op_ms for the freeze; separate budgets): undo = thaw,
 *             registered BEFORE the freeze is asked for (a freeze that timed
 *             out may still happen in the guest)
 *   pause     vCPUs stopped: undo = resume (only if the VM was running)
 *
 * then `snapshot` (vmstate written into the directory: undo = delete it)
 * and `disks` (the spec's writable disk images copied sparse next to it,
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

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "../error.h"
#include "../hv.h"
#include "../spec.h"

#define VMOPS_SNAP_UNDO_MAX 24
#define VMOPS_SNAP_AGENT_MS 10000     /* default: reaching the guest agent */
#define VMOPS_SNAP_PREPARE_MS 30000   /* default: the freeze itself */
#define VMOPS_SNAP_HINT_MS 10000      /* default: a free-page hinting round */
#define VMOPS_SNAP_UNWIND_MS 60000    /* default: retrying undo actions */

enum vmops_snap_undo_kind {
	VMOPS_UNDO_VM,     /* puts the VM back: thaw, resume, deflate, hint stop */
	VMOPS_UNDO_FILE,   /* deletes something we wrote */
};

struct vmops_snap_undo {
	const char *what;                 /* "thaw", "resume", ... */
	enum vmops_snap_undo_kind kind;
	uint64_t arg;                     /* balloon size; file index */
};

struct vmops_prepare_opts {
	int agent_ms;                     /* <= 0: VMOPS_SNAP_AGENT_MS */
	int prepare_ms;                   /* <= 0: VMOPS_SNAP_PREPARE_MS */
	int hint_ms;                      /* <= 0: VMOPS_SNAP_HINT_MS */
	int unwind_ms;                    /* <= 0: VMOPS_SNAP_UNWIND_MS */
	bool no_quiesce;                  /* skip the freeze (no agent in the guest) */
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
	char files[VMOPS_SNAP_UNDO_MAX][64];  /* names of files written into dirfd */
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
 * Take the snapshot into dirfd while prepared: the VMM's files, then a
 * sparse copy of each writable disk of `spec` (named disk<i>.img).  On
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

#endif
