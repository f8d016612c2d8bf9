/* SPDX-License-Identifier: MIT */
/* The inventory: workers, sandboxes, VMMs, registration. */
#ifndef VMOPS_FLEET_H
#define VMOPS_FLEET_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "error.h"

struct vmops_worker_spec {
	const char *name;
	long long memory_mb;
	long long vcpus;
	const char *address;    /* migration traffic goes here; NULL: 127.0.0.1 */
	const char *transport;  /* "local" (NULL) or "ssh" */
	const char *run_dir;    /* may be NULL */
	long long port_min, port_max;  /* 0: defaults */
	const char *host_id;    /* the worker's host identity (host.h); NULL: none recorded */
	const char *image_dirs; /* where launch specs' files may come from, "DIR[:DIR...]"; NULL: default (images.h) */
};

/* Is `s` a valid worker/sandbox name (what the schema's CHECK accepts)? */
bool vmops_fleet_valid_name(const char *s);
bool vmops_fleet_valid_worker_state(const char *s);

/* Insert a worker (+ audit row) in one transaction; dry_run rolls back. */
int vmops_fleet_worker_add(PGconn *c, const struct vmops_worker_spec *w, bool dry_run,
			   long long *id, struct vmops_error *e);

/* Workers with their reserved capacity. Columns: id name state memory_mb
 * vcpus reserved_memory_mb reserved_vcpus sandboxes address transport
 * host_id. */
PGresult *vmops_fleet_worker_list(PGconn *c, struct vmops_error *e);

/* Change a worker's state (+ audit row); the database refuses drained or
 * terminated while sandboxes remain.  `old_state` receives the previous one. */
int vmops_fleet_worker_set_state(PGconn *c, const char *name, const char *state,
				 bool dry_run, char old_state[16], struct vmops_error *e);

/* Record (or replace, or with NULL clear) the identity of a worker's host
 * (+ audit row when it changes).  `old_host_id` (VMOPS_HOST_ID_MAX bytes,
 * may be NULL) receives the previous one, "" if none.  Unknown worker:
 * NOTFOUND; an invalid identity: USAGE. */
int vmops_fleet_worker_set_host(PGconn *c, const char *name, const char *host_id, bool dry_run,
				char *old_host_id, struct vmops_error *e);

/* Set (or with NULL reset to the default) a worker's image directories,
 * "DIR[:DIR...]" (+ audit row when they change).  `old` (at least 8192
 * bytes, may be NULL) receives the previous list, "" for the default. */
int vmops_fleet_worker_set_image_dirs(PGconn *c, const char *name, const char *dirs, bool dry_run,
				      char *old, struct vmops_error *e);

/* Sandboxes with their worker and active VMM.  Filters may be NULL. */
PGresult *vmops_fleet_sandbox_list(PGconn *c, const char *worker, const char *status,
				   struct vmops_error *e);

/* Counts for `vm-fleet status`: one row per (kind, state, count). */
PGresult *vmops_fleet_counts(PGconn *c, struct vmops_error *e);

struct vmops_register {
	const char *sandbox;     /* new sandbox name */
	const char *org;
	const char *worker;      /* worker name */
	const char *hypervisor;  /* qemu | cloud-hypervisor | firecracker */
	long long memory_mb, vcpus, disk_mb;
	long long pid, pid_start_time;   /* -1: unknown */
	const char *control_socket, *agent_socket, *run_dir;
	const char *launch_spec;         /* JSON text or NULL */
};

struct vmops_register_result {
	long long sandbox_id, vmm_id, scale_event_id, worker_id;
};

/*
 * Record a VMM that another system launched: sandbox (running), VMM
 * (running), reservation (admitted against capacity) and the open scale
 * event, in one transaction.  A missing worker is NOTFOUND; capacity or a
 * non-active worker is refused by the database (CONFLICT); nothing written.
 */
int vmops_fleet_register(PGconn *c, const struct vmops_register *r, bool dry_run,
			 struct vmops_register_result *out, struct vmops_error *e);

/* Append an audit row inside the caller's transaction. */
int vmops_audit(PGconn *c, const char *program, const char *action, const char *object_type,
		long long object_id, const char *before_json, const char *after_json,
		const char *detail, struct vmops_error *e);

#endif
