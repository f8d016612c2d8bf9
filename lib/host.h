/* SPDX-License-Identifier: MIT */
/*
 * host: the identity of the machine a program runs on, as recorded for a
 * worker (workers.host_id).  ghost-reap acts on one worker's rows from one
 * host's /proc, so it first checks that this host is that worker's.
 *
 * The identity is, in order: an override (programs pass $VMOPS_HOST_ID, for
 * containers that share a machine id, or tests that play several hosts),
 * else the first line of /etc/machine-id, else of /var/lib/dbus/machine-id
 * (systemd's and D-Bus's stable per-installation id; machine-id(5)).  It
 * is 1 to 128 characters of letters, digits, '.', '_', ':', '-', starting
 * with a letter or digit (what the schema's CHECK accepts).
 */
#ifndef VMOPS_HOST_H
#define VMOPS_HOST_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

#define VMOPS_HOST_ID_MAX 129           /* 128 characters and the NUL */
#define VMOPS_HOST_ID_ENV "VMOPS_HOST_ID"

bool vmops_host_id_valid(const char *s);

/* The first line of `path` as a host identity (trailing whitespace
 * dropped).  -1 with err filled: unreadable, empty or not a valid id. */
int vmops_host_id_read(const char *path, char *buf, size_t len, struct vmops_error *err);

/* This host's identity (see above).  -1 with err filled (code
 * VMOPS_EXIT_WRONG_HOST) when the override is invalid or no file gives one. */
int vmops_host_id(const char *override, char *buf, size_t len, struct vmops_error *err);

#endif
