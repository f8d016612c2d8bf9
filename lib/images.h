/* SPDX-License-Identifier: MIT */
/*
 * images: where a launch spec's files may come from (the launch-spec policy).
 *
 * A spec's kernel, initrd and disks are opened by a hypervisor that often
 * runs as root, and anyone who can write the database can write a spec.  So
 * before a launch reserves anything, every file is opened (O_NOFOLLOW), and
 * must be, once resolved through /proc/self/fd: inside one of the worker's
 * image directories (workers.image_dirs, else VMOPS_IMAGE_DIRS_DEFAULT plus
 * $VMOPS_IMAGE_DIRS), a regular file (never a device node, FIFO or socket),
 * owned by root or by the running user, and not writable by group or
 * others.  Anything else is refused with VMOPS_EXIT_CONFLICT naming the
 * file and why.
 */
#ifndef VMOPS_IMAGES_H
#define VMOPS_IMAGES_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "spec.h"

#define VMOPS_IMAGE_DIRS_DEFAULT "/var/lib/vmops/images:/boot"
#define VMOPS_IMAGE_DIRS_ENV "VMOPS_IMAGE_DIRS"

/*
 * Check every file of `spec` against `dirs`, a ':'-separated list; NULL or
 * "": the default (VMOPS_IMAGE_DIRS_DEFAULT, then $VMOPS_IMAGE_DIRS).
 */
int vmops_images_check(const struct vmops_spec *spec, const char *dirs, struct vmops_error *e);

/*
 * The same, for a VMM started again from a recorded spec on another worker
 * (a migration's receiver, a wake), before anything is reserved there:
 * `dirs` are that worker's.  Files inside `own_dir` (may be NULL: the
 * sandbox's current VMM's run directory, where a woken sandbox's writable
 * disks live) are allowed as well.  With skip_writable, writable disks are
 * not checked (a wake brings them from its bundle into its own run directory).
 */
int vmops_images_check_recorded(const struct vmops_spec *spec, const char *dirs, const char *own_dir,
				bool skip_writable, struct vmops_error *e);

/* One file (what = "kernel", "initrd", "disk 0", ...). */
int vmops_images_check_file(const char *what, const char *path, const char *dirs, struct vmops_error *e);

/*
 * Is "DIR[:DIR...]" a valid list for workers.image_dirs: 1 to 32 absolute,
 * normalised paths (no "." or ".." component, no "//", no trailing '/'),
 * never "/" and never under /dev, /proc or /sys (the schema checks the same).
 */
bool vmops_images_dirs_valid(const char *dirs);

/* The worker's list as stored (text[] -> "a:b"), into buf; "" when NULL. */
int vmops_images_worker_dirs(PGconn *c, const char *worker, char *buf, size_t len, struct vmops_error *e);

#endif
