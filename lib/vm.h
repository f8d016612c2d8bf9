/* SPDX-License-Identifier: MIT */
/*
 * VM lifecycle against the database: launch a sandbox's VMM on a worker and
 * destroy it.  Capacity is reserved before the hypervisor allocates memory;
 * the VMM's identity (pid + start time + sockets), the sandbox's running
 * status and its open scale event are recorded in one transaction.
 */
#ifndef VMOPS_VM_H
#define VMOPS_VM_H

#include <libpq-fe.h>
#include <signal.h>
#include <stdbool.h>

#include "error.h"
#include "hv.h"
#include "spec.h"

struct vmops_launch_req {
	const char *sandbox;     /* new sandbox name */
	const char *org;
	const char *worker;      /* worker name */
	const char *spec_json;   /* the launch spec, JSON text */
	int ready_timeout_ms;    /* wait for the control socket */
	enum vmops_accel auto_accel;
	const char *binary;      /* NULL: the driver's default */
	bool dry_run;            /* validate and admit, launch nothing, write nothing */
	/* Set (nonzero) by the program's signal handler: the launch stops where
	 * it is, stops the hypervisor if it started, and removes what it wrote
	 * (VMOPS_EXIT_INTERRUPTED).  Once the running state is committed the
	 * launch is whole and the flag is ignored.  May be NULL. */
	volatile sig_atomic_t *interrupted;
};

/*
 * How long a VMM may stay `starting` before ghost-reap and usage-parity take
 * its launch for abandoned (--starting-timeout): far longer than a launch
 * takes to record it running or to remove it (launch waits 30 s by default).
 */
#define VMOPS_STARTING_TIMEOUT_DEFAULT_MS (10ull * 60 * 1000)

struct vmops_launch_res {
	long long sandbox_id, vmm_id, worker_id, scale_event_id;
	struct vmops_vmm_info info;
};

/*
 * Launch: reserve (sandbox pending, VMM starting, reservation) in one
 * transaction; start the hypervisor and record its pid and start time on
 * the starting VMM; wait for it; then VMM running, sandbox running and the
 * open scale event in one transaction.  Failure or interruption stops the
 * hypervisor first, then leaves the database as it was (what was reserved
 * is removed again; only an audit row, launch-failed or launch-interrupted,
 * says it was tried).  If the hypervisor cannot be stopped, its rows stay
 * (VMM starting with its pid, reservation held) for ghost-reap.  A missing
 * worker is NOTFOUND, no room is CONFLICT, the hypervisor failing to start
 * is HYPERVISOR, an interruption INTERRUPTED.
 */
int vmops_vm_launch(PGconn *c, const struct vmops_launch_req *req,
		    struct vmops_launch_res *res, struct vmops_error *e);

/*
 * A VMM has ended (its process is gone, and recorded so): remove its run
 * directory through vmops_rundir_remove (checked walk, only what a VMM
 * leaves).  What stays is logged ("what name" names it).  Returns 0 when
 * the directory is gone, 1 when there was none to remove or it was kept
 * (foreign files), -1 when it was refused or could not be removed.
 */
int vmops_vm_run_dir_gone(const char *run_dir, const char *what, const char *name);

/* The run directory of a worker: its run_dir, else a per-user default. */
int vmops_vm_worker_run_dir(const char *worker_run_dir, const char *worker, char *buf,
			    size_t len, struct vmops_error *e);

/* mkdir -p: parents 0755, the last component 0700 (run directories). */
int vmops_vm_mkdir_p(const char *path, struct vmops_error *e);

/* Load what the database records about a VMM into `info`. */
int vmops_vm_load_info(PGconn *c, long long vmm_id, struct vmops_vmm_info *info,
		       struct vmops_error *e);

/*
 * On the host the VMM runs on (this one): a port of lo..hi that `address`
 * can bind now, tried from lo + salt % span on; 0 if none (or no range).
 */
int vmops_vm_free_port(const char *address, long long lo, long long hi, long long salt);

/*
 * On the VMM's own host: stop its process by signal, through a pidfd and
 * only while pid and start time match (SIGTERM, grace, SIGKILL).  Without
 * a recorded pid, the process is found by its /proc marker (vmops-vmm-ID
 * and a path inside run_dir).  *killed (may be NULL) counts a signalled
 * process.  0 once it is gone (or was never there), -1 (TIMEOUT if it
 * outlived SIGKILL).
 */
int vmops_vm_stop_process(const struct vmops_vmm_info *info, const char *run_dir, int *killed,
			  struct vmops_error *e);

struct vmops_destroy_res {
	long long sandbox_id, vmm_id;
	bool was_running;        /* the process was alive and was stopped by us */
};

/*
 * Destroy a sandbox's active VMM: stop the process (only if pid and start
 * time still match), then in one transaction mark the VMM destroyed, free
 * its reservation, and set the sandbox destroyed (closing its billing).
 */
int vmops_vm_destroy(PGconn *c, const char *sandbox, int timeout_ms, bool dry_run,
		     struct vmops_destroy_res *res, struct vmops_error *e);

#endif
