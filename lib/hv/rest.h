/* SPDX-License-Identifier: MIT */
/*
 * What the REST-driven hypervisors (Cloud Hypervisor, Firecracker) share:
 * the run directory, starting the VMM process (fork/exec, no shell), the
 * API socket, calls with a timeout whose failures name the VMM (and, when
 * the process is gone, its last words), and the per-handle state.
 *
 * Run directory (one per VMM):
 *   vmops-vmm-<id>.sock   API socket (its name carries the fleet token that
 *                         ghost-reap reads from argv)
 *   vmm.log               the VMM's stdout and stderr, the guest's serial
 *                         console included (Cloud Hypervisor: serial mode
 *                         Tty; Firecracker's console is its stdout);
 *                         appended to, and kept under the cap by
 *                         vmops-logcap (lib/logcap.h) as QEMU's logs are
 *   vmm.log.1             its previous cap's worth
 *   events.json           Cloud Hypervisor's event monitor
 */
#ifndef VMOPS_HV_REST_H
#define VMOPS_HV_REST_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "hv.h"
#include "hv/http.h"

/* Default budget of one API call. */
#define VMOPS_HV_API_TIMEOUT_MS 10000
/* How long a starting VMM may take to create its API socket (the process is
 * watched meanwhile: one that exits fails at once). */
#define VMOPS_HV_SOCKET_TIMEOUT_MS 30000

/* A blocking call run in a detached thread; it owns a copy of what it needs,
 * so a handle may be freed while the call still waits. */
struct rest_async;

struct rest_priv {
	int timeout_ms;           /* per API call */
	int api_major;            /* Cloud Hypervisor: from vmm.ping (0: not asked yet) */
	char events[PATH_MAX + 16];        /* Cloud Hypervisor event monitor file */
	struct rest_async *recv;  /* CH receiver: vm.receive-migration */
	struct rest_async *send;  /* CH v52 source: vm.send-migration */
	bool sent;                /* CH: a send-migration was accepted */
	unsigned connections;
	uint64_t mem_bytes;
	/* Launched bare (incoming: for a restore or a migration): the disks a
	 * restored VM must use (the spec's, in order), not its snapshot's. */
	bool for_restore;
	size_t n_disks;
	char **disks;
};

extern const struct vmops_hv_driver vmops_hv_chv_driver;
extern const struct vmops_hv_driver vmops_hv_firecracker_driver;

/* Budget of each API call of handles made from now on (default
 * VMOPS_HV_API_TIMEOUT_MS; <= 0 restores it), process-wide. */
void vmops_hv_rest_set_default_timeout(int timeout_ms);
/* Budget of each API call of this handle (default: the above). */
void vmops_hv_rest_set_timeout(struct vmops_hv *h, int timeout_ms);

/* --- for lib/hv drivers --------------------------------------------------- */

struct rest_priv *rest_priv(struct vmops_hv *h, struct vmops_error *err);
int64_t rest_now_ms(void);
void rest_sleep_ms(int ms);
/* Name, mkdir and record the run directory's files in the handle; for a VMM
 * launched for restore (incoming), remember the spec's disk paths. */
int rest_prepare(struct vmops_hv *h, const struct vmops_hv_launch_opts *opts,
		 const struct vmops_spec *spec, bool incoming, struct vmops_error *err);
/* Not launched for restore: fail with a message naming `what`. */
int rest_need_restore(struct vmops_hv *h, const char *what, struct vmops_error *err);
/* Resolve `name` (PATH lookup without '/') and fork/exec argv with stdout and
 * stderr in the handle's stderr_log; the child is adopted (start time). */
int rest_spawn(struct vmops_hv *h, const char *name, char **argv, bool die_with_parent,
	       struct vmops_error *err);
/* Wait for the API socket to answer while the process lives (no pid
 * recorded: one try). */
int rest_wait_socket(struct vmops_hv *h, int timeout_ms, struct vmops_error *err);
/* One API call (see http.h); on no answer from a process that has gone,
 * the error says it exited, with its last stderr line. */
int rest_call(struct vmops_hv *h, const char *method, const char *path, const cJSON *body,
	      struct vmops_http_reply *reply, const char *what, struct vmops_error *err);
int rest_call_t(struct vmops_hv *h, const char *method, const char *path, const cJSON *body,
		int timeout_ms, struct vmops_http_reply *reply, const char *what,
		struct vmops_error *err);
/* Start a call in a thread (NULL on failure).  done: has it answered (then
 * *rc and, on failure, *err say how)?  drop: forget it (it ends by itself). */
struct rest_async *rest_async_start(struct vmops_hv *h, const char *method, const char *path,
				    const cJSON *body, int timeout_ms, const char *what,
				    struct vmops_error *err);
bool rest_async_done(struct rest_async *a, int *rc, struct vmops_error *err);
void rest_async_drop(struct rest_async **a);
/* The directory behind dirfd, as a path the VMM can open. */
int rest_dir_path(struct vmops_hv *h, int dirfd, char *out, size_t size, struct vmops_error *err);
int rest_exited_error(struct vmops_hv *h, struct vmops_error *err);
int rest_oom(struct vmops_hv *h, struct vmops_error *err);
void rest_release(struct vmops_hv *h);

#endif
