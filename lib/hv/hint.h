/* SPDX-License-Identifier: MIT */
/*
 * The free-page hinting lesson, for any driver with hinting (Firecracker).
 *
 * Pausing stops only the vCPUs: a hinting round left running keeps the host
 * discarding guest pages while the snapshot reads memory, and the snapshot
 * holds zeros where the guest had data.  So before the pause a running
 * round is waited for, up to a drain budget; on timeout, or when its status
 * cannot be read, it is stopped, with its own short timeout; a stop that
 * fails aborts the snapshot with the VM left running, untouched.
 */
#ifndef VMOPS_HV_HINT_H
#define VMOPS_HV_HINT_H

#include <signal.h>
#include <stdbool.h>

#include "hv.h"

enum vmops_hint_drain {
	VMOPS_HINT_NONE = 0,       /* no round ran (or no hinting in this driver) */
	VMOPS_HINT_FINISHED = 1,   /* a round ran and finished within the budget */
	VMOPS_HINT_STOPPED = 2,    /* it was stopped (budget spent, or status failed) */
};

/*
 * Make sure no hinting round runs.  drain_ms: how long a running round may
 * take to finish; stop_ms: the stop's own budget (the stop call, then the
 * status until the guest has stopped reporting).  `interrupted` (may be
 * NULL), when set, ends the wait early: the round is stopped.  Returns an
 * enum vmops_hint_drain, or -1 (the stop failed or was never confirmed: err
 * says why, keeping the stop's code: VMOPS_EXIT_TIMEOUT or
 * VMOPS_EXIT_HYPERVISOR).
 */
int vmops_hv_hint_drain(struct vmops_hv *h, int drain_ms, int stop_ms,
			volatile sig_atomic_t *interrupted, struct vmops_error *err);

/*
 * Drain (as above), pause, snapshot into dirfd, then resume unless
 * leave_paused.  A VM found paused is not paused again and stays paused.
 * Any failure after the pause resumes a VM that was running: the VM is left
 * as found.  Returns 0 or -1.
 */
int vmops_hv_snapshot_drained(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
			      int drain_ms, int stop_ms, bool leave_paused,
			      struct vmops_error *err);

#endif
