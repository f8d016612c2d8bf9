/* SPDX-License-Identifier: MIT */
/*
 * ghost: reconcile the hypervisor processes of one worker with the database.
 *
 * The processes side comes from a scan of /proc (or of a recorded tree, see
 * proc.h) for hypervisor executables whose command line carries the fleet
 * token vmops-vmm-<id>; the database side is every VMM row of the worker
 * that is not deleted and not destroyed or failed.  Each is classified:
 *
 *   healthy  a process that is the one a live VMM row records (same pid and
 *            start time), or a starting VMM whose pid is not recorded yet
 *            and whose process carries its id; a starting VMM only while it
 *            has been starting for less than starting_timeout_ms
 *   ghost    a process of this worker whose VMM the database does not know,
 *            knows as destroyed, failed or deleted, or records as another
 *            process; old enough (min_age_ms) to be acted on.  Also the
 *            process of a VMM that has been starting for starting_timeout_ms
 *            or more (not a migration's): its launch was abandoned
 *   young    a ghost younger than min_age_ms (it may be a launch in
 *            progress), or a starting VMM with no process that changed state
 *            less than min_age_ms ago: left alone, not a problem
 *   phantom  a running or starting VMM of this worker whose process is gone,
 *            dead (X) or replaced by another process (pid reused)
 *   zombie   a phantom whose process is a zombie (Z); the report names the
 *            parent that fails to reap it
 *   foreign  a token-carrying hypervisor process that is not this worker's
 *            (its command line names no path inside the worker's run
 *            directory nor the VMM's, or the VMM is live on another worker):
 *            another worker or another fleet on the same host.  Reported,
 *            never touched, not a problem.
 *   unknown  a live VMM whose process identity cannot be established: a live
 *            process holds its recorded pid but no start time is recorded
 *            (or /proc could not be read).  Unknown never triggers an
 *            action: reported, never signalled, never repaired; a problem.
 *
 * A process belongs to this worker when it is the recorded process of one of
 * the worker's VMMs, or when its command line carries vmops-vmm-<id> and
 * names a path inside the worker's run directory (workers.run_dir, or the
 * default vm-fleet uses, see vmops_vm_worker_run_dir) or inside the run
 * directory recorded for VMM <id> on this worker.  The token alone is not
 * enough: VMM ids are per database, and two fleets (or two workers of one
 * fleet, as in tests) can share a host.
 *
 * Before anything: on the live /proc, this host must be the worker's host:
 * opts->host_id (this host's identity, see host.h) must equal the worker's
 * recorded host_id, else VMOPS_EXIT_WRONG_HOST and nothing is done (a run
 * on the wrong host would take every VMM of the worker for a phantom).  A
 * recorded tree (!live) is not checked, and its phantoms and zombies are
 * only reported unless opts->repair_from_recording says to trust it.
 *
 * Actions.  Ghosts: VMOPS_GHOST_LOG reports them; VMOPS_GHOST_KILL re-reads
 * the VMM row (still a ghost?), then terminates the process through a pidfd
 * after re-checking its start time (SIGTERM, grace, SIGKILL; a reused pid is
 * never signalled), then removes its leftover control and agent sockets, but
 * only a path that lies inside the VMM's recorded run directory, or inside
 * <worker run dir>/vmm-<id>, or whose name carries the ghost's own token
 * vmops-vmm-<id>, and only if it is a socket.  Phantoms and zombies are
 * repaired, one transaction per VMM, only if the VMM row (locked FOR UPDATE)
 * is still as it was read and its sandbox is not migrating: the VMM becomes
 * failed, its reservation is deleted (a dead process holds no memory), its
 * sandbox becomes error if this VMM is the sandbox's active or target VMM
 * (the database then closes the sandbox's billing), any still open scale
 * event of this VMM is closed, and an audit row is written.  The process of
 * an abandoned start is terminated like a ghost (after its row is re-read:
 * still starting, same process, still too long), and its VMM is then
 * repaired like a phantom (audit action stale-start-repair); with
 * VMOPS_GHOST_LOG it is only reported: a VMM whose process runs keeps its
 * reservation.
 *
 * Nothing here prints or exits.
 */
#ifndef VMOPS_GHOST_H
#define VMOPS_GHOST_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"
#include "proc.h"

#define VMOPS_GHOST_MIN_AGE_DEFAULT_MS (5ull * 60 * 1000)
#define VMOPS_GHOST_GRACE_DEFAULT_MS 5000u

enum vmops_ghost_action {
	VMOPS_GHOST_LOG = 0,   /* report ghosts, touch nothing */
	VMOPS_GHOST_KILL,      /* terminate ghosts (live /proc only) */
};

enum vmops_ghost_class {
	VMOPS_GHOST_HEALTHY = 0,
	VMOPS_GHOST_GHOST,
	VMOPS_GHOST_YOUNG,
	VMOPS_GHOST_PHANTOM,
	VMOPS_GHOST_ZOMBIE,
	VMOPS_GHOST_FOREIGN,
	VMOPS_GHOST_UNKNOWN,
};

/* What was done about one item. */
enum vmops_ghost_act {
	VMOPS_GHOST_ACT_NONE = 0,      /* healthy, young, foreign, unknown */
	VMOPS_GHOST_ACT_REPORTED,      /* ghost, --action log; phantom/zombie of a
	                                  recorded tree without repair_from_recording */
	VMOPS_GHOST_ACT_WOULD_KILL,    /* ghost, --action kill --dry-run */
	VMOPS_GHOST_ACT_KILLED,        /* ghost terminated (or found exited) */
	VMOPS_GHOST_ACT_WOULD_REPAIR,  /* phantom/zombie, --dry-run */
	VMOPS_GHOST_ACT_REPAIRED,      /* phantom/zombie repaired */
	VMOPS_GHOST_ACT_SKIPPED,       /* not acted on: changed, migrating, pid reused */
	VMOPS_GHOST_ACT_FAILED,        /* the action failed: see detail */
};

struct vmops_ghost_opts {
	const char *worker;            /* worker name (required) */
	const char *proc_root;         /* NULL or "": /proc */
	bool live;                     /* proc_root is this host's live /proc */
	const char *host_id;           /* this host's identity (host.h); required when live */
	bool repair_from_recording;    /* !live: repair phantoms and zombies anyway */
	uint64_t min_age_ms;
	uint64_t starting_timeout_ms;  /* a VMM starting this long was abandoned
	                                  (VMOPS_STARTING_TIMEOUT_DEFAULT_MS, vm.h) */
	enum vmops_ghost_action action;
	unsigned grace_ms;             /* SIGTERM to SIGKILL */
	bool dry_run;
	const char *program;           /* for audit rows; NULL: "ghost-reap" */
};

#define VMOPS_GHOST_DETAIL_MAX 512

struct vmops_ghost_item {
	enum vmops_ghost_class cls;
	enum vmops_ghost_act act;
	long long vmm_id;              /* -1: none */
	pid_t pid;                     /* 0: none (a starting VMM without a pid) */
	long long start_time;          /* /proc/PID/stat field 22; -1: unknown */
	double age_s;                  /* process age (or time in state); -1: unknown */
	char hypervisor[20];           /* qemu, cloud-hypervisor, firecracker */
	char state[16];                /* the VMM's state in the database; "" if unknown */
	char sandbox[64];              /* "" if unknown */
	pid_t parent;                  /* zombie: the parent that does not reap it; else 0 */
	char detail[VMOPS_GHOST_DETAIL_MAX];
};

struct vmops_ghost_report {
	struct vmops_ghost_item *items;  /* sorted by vmm_id (none last), then pid */
	size_t n;
	long long hypervisors;           /* hypervisor processes seen (by executable) */
	long long healthy, ghosts, young, phantoms, zombies, foreign, unknown;
	long long killed, repaired;
	long long problems;              /* ghosts + phantoms + zombies + unknown */
	long long unfixed;               /* problems not killed or repaired */
	long long errors;                /* actions that failed */
};

/*
 * Reconcile.  Returns 0 when the run completed (failed actions are counted
 * in rep->errors and described in their items), or -1 with `e` filled when
 * it could not (worker unknown: NOTFOUND; this host not the worker's:
 * WRONG_HOST, before anything is read or done; /proc unreadable; database).
 * VMOPS_GHOST_KILL without opts->live is a usage error.  `rep` is valid in
 * both cases; free it with vmops_ghost_report_free().
 */
int vmops_ghost_reap(PGconn *c, const struct vmops_ghost_opts *opts,
		     struct vmops_ghost_report *rep, struct vmops_error *e);
void vmops_ghost_report_free(struct vmops_ghost_report *rep);

const char *vmops_ghost_class_name(enum vmops_ghost_class cls);
const char *vmops_ghost_act_name(enum vmops_ghost_act act);

/* ---- exposed for tests ---------------------------------------------------- */

/* Is `path` an absolute path strictly inside directory `dir` (no "." or
 * ".." components, no empty components)?  A trailing '/' on dir is ignored. */
bool vmops_ghost_path_inside(const char *path, const char *dir);

/* Does argv[1..argc-1] name a path inside `dir`: "DIR/" at the start of an
 * argument or right after ':', '=' or ','? */
bool vmops_ghost_argv_names_dir(int argc, char *const argv[], const char *dir);

/* The control (API) socket on a hypervisor command line: QEMU "-qmp
 * unix:PATH[,...]", Cloud Hypervisor "--api-socket [path=]PATH[,...]",
 * Firecracker "--api-sock PATH"; and QEMU's "-chardev socket,...,path=PATH"
 * as the agent socket.  Empty strings when absent. */
void vmops_ghost_argv_sockets(enum vmops_hv_kind hv, int argc, char *const argv[],
			      char *control, size_t control_len, char *agent, size_t agent_len);

/* May the leftover socket `path` of ghost `vmm_id` be removed?  Only when it
 * lies inside the VMM's recorded run directory (NULL if none), inside
 * WORKER_RUN_DIR/vmm-<id>, or its name carries vmops-vmm-<vmm_id>. */
bool vmops_ghost_socket_removable(const char *path, long long vmm_id, const char *vmm_run_dir,
				  const char *worker_run_dir);

#endif
