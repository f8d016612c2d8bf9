/* SPDX-License-Identifier: MIT */
/*
 * Firecracker-only operations (the driver itself is reached through hv.h,
 * kind "firecracker").
 */
#ifndef VMOPS_HV_FIRECRACKER_H
#define VMOPS_HV_FIRECRACKER_H

#include <stdbool.h>

#include "hv.h"

/*
 * Snapshot of a paused Firecracker VM into dirfd: files "vmstate" and
 * "memory".  diff: only the memory dirtied since the previous snapshot (the
 * driver launches with dirty page tracking on); the memory file is then
 * sparse and belongs on top of the previous one.  VMOPS_EXIT_CONFLICT if h
 * is not a Firecracker VMM.
 */
int vmops_hv_fc_snapshot(struct vmops_hv *h, int dirfd, bool diff, int timeout_ms,
			 struct vmops_error *err);

#endif
