/* SPDX-License-Identifier: MIT */
/*
 * logcap: a VMM's logs kept under a cap for as long as it runs.
 *
 * The serial console and the VMM's own output are files the VMM appends to
 * (O_APPEND: QEMU's chardev `append=on`, and the stdout/stderr file vmops
 * opens for it), in its run directory, often on a tmpfs, for months.  A
 * small process started next to the VMM (named vmops-logcap, no daemon: it
 * ends when the VMM does, watched through a pidfd) looks at each log once a
 * second; one over the cap is copied to NAME.1 (its last `max` bytes,
 * replacing the previous NAME.1) and truncated to zero, so each log holds
 * at most about `max` bytes plus a second's output, and NAME.1 at most
 * `max`.  What the VMM writes between the size check and the truncation
 * is lost (at most a few bytes of a console).  The process uses only the run
 * directory's fd (never a path), never follows a link, and stops when the
 * directory is removed.
 */
#ifndef VMOPS_LOGCAP_H
#define VMOPS_LOGCAP_H

#include <stdint.h>
#include <sys/types.h>

#include "error.h"

#define VMOPS_LOG_MAX_DEFAULT (1024ULL * 1024)
#define VMOPS_LOG_MAX_MIN 4096ULL
#define VMOPS_LOG_MAX_ENV "VMOPS_LOG_MAX"

/* The cap: $VMOPS_LOG_MAX (bytes, suffix K, M or G; at least 4096), else the default. */
uint64_t vmops_logcap_max(void);

/*
 * Watch `names` (NULL-terminated, at most 4) in `dirfd` while process
 * `vmm` (a child of the caller, not yet reaped) runs.  -1 with e filled
 * when the watcher could not be started (the VMM is not affected).
 */
int vmops_logcap_start(int dirfd, pid_t vmm, const char *const *names, uint64_t max, struct vmops_error *e);

#endif
