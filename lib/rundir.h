/* SPDX-License-Identifier: MIT */
/*
 * Run directories, made and checked safely on a host other users share.
 *
 * A VMM's run directory holds its control socket, agent socket and logs;
 * whoever can plant a symlink or a socket there can redirect a root-run
 * hypervisor.  So the path is walked from "/" one component at a time with
 * openat(O_DIRECTORY | O_NOFOLLOW) — never resolved as a string — and each
 * existing component must be a real directory (not a symlink) owned by
 * root or by us; one that others may write to must be sticky (like /tmp),
 * and then what follows it must be ours.  Directories created here are
 * 0700.  The last component must be ours with no group or other access.
 * Anything else is refused with VMOPS_EXIT_CONFLICT and a message naming
 * the component and why.
 *
 * Default bases: /run/vmops for root; $XDG_RUNTIME_DIR/vmops otherwise
 * (never a predictable path under a shared /tmp).
 */
#ifndef VMOPS_RUNDIR_H
#define VMOPS_RUNDIR_H

#include <stddef.h>

#include "error.h"

/* Make (or verify) `path`; returns an O_DIRECTORY fd of it, or -1. */
int vmops_rundir_open(const char *path, struct vmops_error *e);

/* The default run directory of `worker` on this host, into buf. */
int vmops_rundir_default(const char *worker, char *buf, size_t len, struct vmops_error *e);

/*
 * Remove a VMM's run directory once its VMM is gone: only the files a VMM
 * leaves (see VMOPS_RUNDIR_FILES) and then the directory itself, never
 * anything else; a directory with other contents stays (0 returned, *kept
 * set).  A missing directory is fine.
 */
int vmops_rundir_remove(const char *path, int *kept, struct vmops_error *e);

#endif
