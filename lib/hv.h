/* SPDX-License-Identifier: MIT */
/*
 * Hypervisor drivers.  A driver is a table of operations selected by kind
 * ("qemu"; later "cloud-hypervisor", "firecracker"); a struct vmops_hv is
 * one VMM process driven through it: launched here, or attached to from
 * what the database recorded (pid, start time, sockets).
 *
 * Live migration between two handles:
 *
 *   1. target = vmops_hv_prepare_incoming(spec, &opts, "tcp:ADDR:0", &mp, ...)
 *      launches a receiver and listens; vmops_hv_info(target)->incoming_uri
 *      says where ("tcp:ADDR:PORT").
 *   2. vmops_hv_send(source, that uri, &mp, ...) starts the transfer.
 *   3. vmops_hv_progress(source, &p, ...) until
 *      vmops_migrate_status_is_final(p.status).  On "completed", the target
 *      runs a moment later (poll vmops_hv_status(target) for "running"),
 *      then vmops_hv_destroy(source).  Otherwise vmops_hv_cancel(source) if
 *      still going and vmops_hv_destroy(target): a QEMU receiver is
 *      single-use, every attempt needs a fresh one.
 *
 * Use the same connections on both ends; if vmops_hv_supports_multifd()
 * says 0 for either, use 1.  A failed or cancelled migration leaves the
 * source running.  Freeing a
 * handle (vmops_hv_free) closes connections but never stops the VMM; only
 * vmops_hv_destroy does.
 *
 * Signals go only through lib/proc's pidfd helpers: to the recorded pid
 * while its start time still matches (PID reuse), checked again once the
 * pidfd is open.  A VMM whose start time is not known (0) and whose pid
 * belongs to a live process is "unknown": it counts as alive (it is never
 * declared dead) and it is never signalled; destroying it works only
 * through its control socket, else fails with VMOPS_EXIT_CONFLICT.
 */
#ifndef VMOPS_HV_H
#define VMOPS_HV_H

#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include "error.h"
#include "spec.h"

#define VMOPS_HV_SOCKPATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path))

/* What the database records about a VMM (table vmms). */
struct vmops_vmm_info {
	char kind[32];                       /* "qemu" */
	uint64_t vmm_id;                     /* argv carries "vmops-vmm-<vmm_id>" */
	pid_t pid;
	unsigned long long start_time;       /* /proc/PID/stat field 22 (clock ticks since boot) */
	bool is_child;                       /* launched by this process: waitpid() it */
	bool incoming;                       /* launched as a migration receiver */
	char run_dir[PATH_MAX];
	char control_socket[VMOPS_HV_SOCKPATH_MAX]; /* QMP / API socket */
	char agent_socket[VMOPS_HV_SOCKPATH_MAX];   /* guest agent socket ("" if none) */
	char serial_log[PATH_MAX];
	char stderr_log[PATH_MAX];           /* the VMM's stdout and stderr */
	char incoming_uri[256];              /* receiver: where it listens, port resolved */
};

struct vmops_hv_launch_opts {
	const char *run_dir;        /* created (0700) if missing; one per VMM */
	uint64_t vmm_id;            /* identity marker, see vmops_vmm_info */
	const char *binary;         /* NULL: the driver's default, from PATH */
	/*
	 * What spec accel "auto" means here: VMOPS_ACCEL_TCG or _KVM as probed
	 * by the caller (tests/guest/probe-accel.sh), or VMOPS_ACCEL_AUTO to
	 * let the hypervisor try KVM and fall back to TCG.
	 */
	enum vmops_accel auto_accel;
	/* Kill the VMM when the launching thread exits (tests only). */
	bool die_with_parent;
	/* When it becomes nonzero (a signal handler sets it), waits for the
	 * VMM (wait_ready) give up with VMOPS_EXIT_INTERRUPTED.  May be NULL. */
	volatile sig_atomic_t *interrupted;
	/*
	 * Receivers: stay paused once the incoming migration has loaded
	 * (status "paused"), until vmops_hv_resume().  Then "did the target
	 * ever run the guest?" has an answer: only if it was resumed.
	 */
	bool incoming_paused;
};

struct vmops_migrate_params {
	unsigned connections;       /* 1..VMOPS_MIGRATE_CONNECTIONS_MAX; >1 needs multifd */
	uint64_t max_bandwidth;     /* bytes/s; 0: VMOPS_MIGRATE_DEFAULT_BANDWIDTH */
	uint32_t downtime_limit_ms; /* 0: the hypervisor's default */
	bool auto_converge;
};

#define VMOPS_MIGRATE_CONNECTIONS_MAX 128
/* QEMU 7.2 defaults to 128 MiB/s, far below a local link. */
#define VMOPS_MIGRATE_DEFAULT_BANDWIDTH (32ull << 30)

struct vmops_migrate_progress {
	/* none setup active completed failed cancelling cancelled device
	 * pre-switchover postcopy-* wait-unplug colo */
	char status[32];
	uint64_t total_bytes;
	uint64_t transferred_bytes;
	uint64_t remaining_bytes;
	int64_t downtime_ms;            /* -1 until known (completed) */
	int64_t expected_downtime_ms;   /* -1 if unknown */
	int64_t setup_time_ms;          /* -1 if unknown */
	int64_t total_time_ms;          /* -1 if unknown */
	double mbps;
	uint64_t dirty_pages_rate;      /* pages per second */
	uint64_t dirty_sync_count;
	uint64_t page_size;
	uint64_t multifd_bytes;         /* sent over multifd channels (0: one stream) */
	int cpu_throttle_percent;       /* auto-converge throttling, 0 if none */
	char error_desc[512];           /* "failed": why */
};

/* completed, failed or cancelled: nothing more will happen. */
bool vmops_migrate_status_is_final(const char *status);

struct vmops_vm_status {
	char status[32];     /* running paused inmigrate postmigrate shutdown ... */
	bool running;
};

/*
 * Snapshots.  A driver writes a snapshot as regular files in a directory
 * it is given (dirfd), named as it likes (QEMU: one migration stream;
 * Cloud Hypervisor: config.json, state.json, memory-ranges; Firecracker: a
 * state file and a memory file), and restores from the same files.  The
 * directory is ours: the caller bundles its files (lib/bundle) and never
 * lets the VMM open a path it chose itself (QEMU gets an fd, not a path).
 */
struct vmops_snapshot_opts {
	bool live;               /* QEMU: background-snapshot (VM keeps running) */
	bool diff;               /* Firecracker: only memory dirtied since the last
				  * snapshot (others: not supported) */
	bool check_only;         /* with live: only ask whether the hypervisor accepts a live
	                            snapshot of this VM (dirfd unused; nothing written, nothing
	                            left changed); refused: VMOPS_EXIT_CONFLICT */
	int timeout_ms;          /* the whole write */
	volatile sig_atomic_t *interrupted;  /* give up (INTERRUPTED) when set; may be NULL.
	                            QEMU live: a write already started is let finish
	                            (bounded), never cancelled, then deleted */
};

/* Balloon free-page hinting round (Firecracker; others: not supported). */
struct vmops_hint_status {
	bool running;            /* a round is in progress */
	uint64_t hinted_pages;   /* pages reported by the guest in this round */
	uint64_t acked_pages;    /* pages the host acknowledged (discarded) */
};

struct vmops_hv;

/*
 * Operations a driver may leave NULL: the dispatcher (vmops_hv_*) then
 * fails with VMOPS_EXIT_CONFLICT and "not supported", and vmops_hv_can()
 * says so beforehand: quiesce, thaw, balloon_set, balloon_get, hint_start,
 * hint_status, hint_stop, snapshot, restore, prepare_incoming, send.
 */
struct vmops_hv_driver {
	const char *kind;
	/* Start the VMM (incoming: as a migration receiver, not running yet). */
	int (*launch)(struct vmops_hv *h, const struct vmops_spec *spec,
		      const struct vmops_hv_launch_opts *opts, bool incoming,
		      struct vmops_error *err);
	/* Connect to a VMM described by vmops_hv_info(h). */
	int (*attach)(struct vmops_hv *h, int timeout_ms, struct vmops_error *err);
	/* Control socket answers and the VM is up (or waiting for its state). */
	int (*wait_ready)(struct vmops_hv *h, int timeout_ms, struct vmops_error *err);
	/* On a launched receiver: listen on `uri` ("tcp:HOST:PORT", port may be 0). */
	int (*prepare_incoming)(struct vmops_hv *h, const char *uri,
				const struct vmops_migrate_params *mp, int timeout_ms,
				struct vmops_error *err);
	int (*send)(struct vmops_hv *h, const char *uri, const struct vmops_migrate_params *mp,
		    struct vmops_error *err);
	int (*progress)(struct vmops_hv *h, struct vmops_migrate_progress *p,
			struct vmops_error *err);
	int (*cancel)(struct vmops_hv *h, struct vmops_error *err);
	int (*destroy)(struct vmops_hv *h, int timeout_ms, struct vmops_error *err);
	int (*pause)(struct vmops_hv *h, struct vmops_error *err);
	int (*resume)(struct vmops_hv *h, struct vmops_error *err);
	int (*status)(struct vmops_hv *h, struct vmops_vm_status *st, struct vmops_error *err);
	/* 1 if multi-connection migration works with this VMM, 0 if not, -1. */
	int (*supports_multifd)(struct vmops_hv *h, struct vmops_error *err);
	/*
	 * Guest filesystems frozen / thawed through the guest agent.  Waiting
	 * for the agent (agent_ms) and the freeze or thaw itself (op_ms) have
	 * separate budgets; running out of one never eats the other's.
	 * Returns the number of filesystems frozen / thawed, or -1.
	 */
	int (*quiesce)(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err);
	int (*thaw)(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err);
	/* Balloon target (bytes of guest memory taken away) and its actual size. */
	int (*balloon_set)(struct vmops_hv *h, uint64_t bytes, struct vmops_error *err);
	int (*balloon_get)(struct vmops_hv *h, uint64_t *bytes, struct vmops_error *err);
	int (*hint_start)(struct vmops_hv *h, struct vmops_error *err);
	int (*hint_status)(struct vmops_hv *h, struct vmops_hint_status *st,
			   struct vmops_error *err);
	/* Stop a round and wait until the status shows none running (the guest
	 * has stopped reporting pages), all within timeout_ms: TIMEOUT if it
	 * still runs then. */
	int (*hint_stop)(struct vmops_hv *h, int timeout_ms, struct vmops_error *err);
	/* Write a snapshot into dirfd (see struct vmops_snapshot_opts).  The VM
	 * must be paused unless o->live; it is left in the state it was in. */
	int (*snapshot)(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
			struct vmops_error *err);
	/* On a VMM launched as a receiver: load the snapshot in dirfd and stay
	 * paused (resume with vmops_hv_resume). */
	int (*restore)(struct vmops_hv *h, int dirfd, int timeout_ms, struct vmops_error *err);
	/* Free driver state (not the VMM). */
	void (*release)(struct vmops_hv *h);
	/* The hypervisor's version ("7.2.19", "53.0", "1.16.1"), for bundle
	 * manifests.  Optional: vmops_hv_version() fails with CONFLICT. */
	int (*version)(struct vmops_hv *h, char *buf, size_t len, struct vmops_error *err);
	/*
	 * Optional: is the VMM's process alive, asked of the host it runs on
	 * (lib/transport: another host, where this host's /proc says nothing).
	 * 1 alive, 0 certainly gone, -1 unknown.  NULL: this host's /proc.
	 */
	int (*is_alive)(struct vmops_hv *h);
};

enum vmops_hv_op {
	VMOPS_HV_OP_MIGRATE,     /* live migration: prepare_incoming + send */
	VMOPS_HV_OP_QUIESCE,     /* quiesce + thaw */
	VMOPS_HV_OP_BALLOON,     /* balloon_set + balloon_get */
	VMOPS_HV_OP_HINT,        /* hint_start + hint_status + hint_stop */
	VMOPS_HV_OP_SNAPSHOT,    /* snapshot + restore */
};

extern const struct vmops_hv_driver vmops_hv_qemu_driver;

/* The driver for `kind`, or NULL. */
const struct vmops_hv_driver *vmops_hv_driver_find(const char *kind);

/* --- for programs ---------------------------------------------------------- */

/* Launch a VM from its spec (driver chosen by spec->hypervisor). */
struct vmops_hv *vmops_hv_launch(const struct vmops_spec *spec,
				 const struct vmops_hv_launch_opts *opts,
				 struct vmops_error *err);
/*
 * Launch a receiver with the same spec, wait until its control socket
 * answers, and make it listen on `uri` (multifd set up when
 * mp->connections > 1).  The resolved address is in
 * vmops_hv_info(h)->incoming_uri.  On failure the receiver is destroyed.
 */
struct vmops_hv *vmops_hv_prepare_incoming(const struct vmops_spec *spec,
					   const struct vmops_hv_launch_opts *opts,
					   const char *uri,
					   const struct vmops_migrate_params *mp,
					   int timeout_ms, struct vmops_error *err);
/*
 * Launch a VMM that waits for a snapshot (QEMU: -incoming defer), for
 * vmops_hv_restore(); it runs the guest only after vmops_hv_resume().  The
 * restored VM uses `spec`'s disks (in order), not the paths the snapshot
 * recorded: QEMU opens the spec's from its command line, Cloud Hypervisor's
 * config.json is rewritten, Firecracker's drives are patched after the load.
 */
struct vmops_hv *vmops_hv_launch_for_restore(const struct vmops_spec *spec,
					     const struct vmops_hv_launch_opts *opts,
					     struct vmops_error *err);
/* Drive an existing VMM (info as recorded; is_child is ignored). */
struct vmops_hv *vmops_hv_attach(const struct vmops_vmm_info *info, int timeout_ms,
				 struct vmops_error *err);

int vmops_hv_wait_ready(struct vmops_hv *h, int timeout_ms, struct vmops_error *err);
int vmops_hv_send(struct vmops_hv *h, const char *uri, const struct vmops_migrate_params *mp,
		  struct vmops_error *err);
int vmops_hv_progress(struct vmops_hv *h, struct vmops_migrate_progress *p,
		      struct vmops_error *err);
int vmops_hv_cancel(struct vmops_hv *h, struct vmops_error *err);
/* Stop the VMM: polite quit, then SIGTERM, then SIGKILL, within timeout_ms. */
int vmops_hv_destroy(struct vmops_hv *h, int timeout_ms, struct vmops_error *err);
int vmops_hv_pause(struct vmops_hv *h, struct vmops_error *err);
int vmops_hv_resume(struct vmops_hv *h, struct vmops_error *err);
int vmops_hv_status(struct vmops_hv *h, struct vmops_vm_status *st, struct vmops_error *err);
int vmops_hv_supports_multifd(struct vmops_hv *h, struct vmops_error *err);
/* Does this handle's driver implement `op`? */
bool vmops_hv_can(const struct vmops_hv *h, enum vmops_hv_op op);
int vmops_hv_quiesce(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err);
int vmops_hv_thaw(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err);
int vmops_hv_balloon_set(struct vmops_hv *h, uint64_t bytes, struct vmops_error *err);
int vmops_hv_balloon_get(struct vmops_hv *h, uint64_t *bytes, struct vmops_error *err);
int vmops_hv_hint_start(struct vmops_hv *h, struct vmops_error *err);
int vmops_hv_hint_status(struct vmops_hv *h, struct vmops_hint_status *st,
			 struct vmops_error *err);
int vmops_hv_hint_stop(struct vmops_hv *h, int timeout_ms, struct vmops_error *err);
int vmops_hv_snapshot(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
		      struct vmops_error *err);
int vmops_hv_restore(struct vmops_hv *h, int dirfd, int timeout_ms, struct vmops_error *err);
int vmops_hv_version(struct vmops_hv *h, char *buf, size_t len, struct vmops_error *err);
/* Is the VMM process alive: exists, not a zombie, same start time.  Reaps it
 * if our child.  A live process at a pid recorded without a start time is
 * unknown, and counts as alive here (see the top of this file). */
bool vmops_hv_is_alive(struct vmops_hv *h);
/* Has the launch options' interrupted flag been raised? */
bool vmops_hv_interrupted(const struct vmops_hv *h);
const struct vmops_vmm_info *vmops_hv_info(const struct vmops_hv *h);
const struct vmops_hv_driver *vmops_hv_get_driver(const struct vmops_hv *h);
/* Close connections and free the handle; the VMM keeps running. */
void vmops_hv_free(struct vmops_hv *h);
void vmops_hv_freep(struct vmops_hv **h);
#define _cleanup_hv_ __attribute__((cleanup(vmops_hv_freep)))

/* QEMU only: the handle's QMP connection (NULL if not connected or not QEMU). */
struct vmops_qmp *vmops_hv_qmp(struct vmops_hv *h);

/* --- for drivers ---------------------------------------------------------------- */

struct vmops_vmm_info *vmops_hv_info_mut(struct vmops_hv *h);
/* A handle driven by `drv` whose VMM is of `kind` ("qemu"; for messages and
 * records), for drivers that wrap another (lib/transport).  No VMM yet. */
struct vmops_hv *vmops_hv_new_driven(const struct vmops_hv_driver *drv, const char *kind,
				     volatile sig_atomic_t *interrupted, struct vmops_error *err);
void *vmops_hv_priv(const struct vmops_hv *h);
void vmops_hv_set_priv(struct vmops_hv *h, void *priv);

/* `name` resolved on PATH (or checked, if it has a '/'): malloc'd, NULL if not executable. */
char *vmops_hv_find_binary(const char *name);
/*
 * Start the VMM: fork, exec binary with argv (no shell), stdin from nullfd,
 * stdout and stderr to logfd, in its own session, no other fd of ours; an
 * exec that fails is reported (HYPERVISOR, its errno) after the child is
 * reaped.  The child is then adopted (vmops_hv_adopt_child): pid, start
 * time and is_child in the handle.
 */
int vmops_hv_spawn(struct vmops_hv *h, const char *binary, char *const *argv, bool die_with_parent,
		   int logfd, int nullfd, struct vmops_error *err);
/* Last non-empty line of the VMM's stderr_log ("" if none), for error messages. */
void vmops_hv_log_tail(const struct vmops_hv *h, char *out, size_t size);
/*
 * After fork: record the child's start time (/proc/PID/stat field 22) in the
 * handle.  If it cannot be read the child is killed (through a pidfd; an
 * unreaped child's pid cannot be reused) and reaped, and -1 returned: a VMM
 * is never recorded without the start time that makes signalling it safe.
 */
int vmops_hv_adopt_child(struct vmops_hv *h, pid_t pid, struct vmops_error *err);
/*
 * Wait for the VMM process to go away, escalating: wait a share of
 * timeout_ms if `already_asked` (a polite request, QMP quit, was sent), then
 * vmops_proc_terminate() (SIGTERM through a pidfd after the start time is
 * checked, grace, SIGKILL).  Returns 0 once gone (or once its pid is another
 * process's: then the VMM had gone), -1 with TIMEOUT if it outlived SIGKILL,
 * -1 with CONFLICT if its identity is unknown (no start time) and it did not
 * go by itself: it was not signalled.
 */
int vmops_hv_stop_process(struct vmops_hv *h, bool already_asked, int timeout_ms,
			  struct vmops_error *err);

#endif
