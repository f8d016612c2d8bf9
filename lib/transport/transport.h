/* SPDX-License-Identifier: MIT */
/*
 * Reaching a worker's host over ssh (workers.transport = 'ssh'), the way
 * Proxmox and Ganeti do: OpenSSH, the operator's own ssh configuration for
 * user, port and identity, no daemon of vmops's own.
 *
 * Every remote action runs one of vmops's own programs on that host with a
 * fixed argv, `vm-fleet remote ACTION`, ACTION a constant of this module,
 * and its parameters as JSON on stdin; the answer is JSON on stdout.  ssh
 * joins the remote argv into a shell command line on the far side, so no
 * word of it ever comes from the database or a user: only the destination
 * does (checked: letters, digits, '.', '_', ':', '-', never a leading '-',
 * and given after "--").
 *
 *   ssh [-F $VMOPS_SSH_CONFIG] -o BatchMode=yes -o ConnectTimeout=N
 *       -o ControlMaster=auto -o ControlPath=DIR/%C -o ControlPersist=60
 *       -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -T -x -a -e none
 *       -- DEST vm-fleet remote ACTION
 *
 * One shared ControlMaster connection per host; its socket lives in
 * vmops's safe run directory (lib/rundir: /run/vmops/ssh for root,
 * $XDG_RUNTIME_DIR/vmops/ssh otherwise, or $VMOPS_SSH_DIR).
 *
 * Errors: ssh itself failing (exit 255: refused, no answer within the
 * connect timeout, host key or authentication refused) is
 * VMOPS_EXIT_UNREACHABLE before the request was read by the host (see
 * vmops_transport_hello), and VMOPS_EXIT_UNKNOWN once an action may have
 * started there: whether it happened is then not known.  The remote side's
 * own failures come back with their own exit code and message.
 */
#ifndef VMOPS_TRANSPORT_H
#define VMOPS_TRANSPORT_H

#include <libpq-fe.h>
#include <stdbool.h>

#include <cjson/cJSON.h>

#include "error.h"
#include "hv.h"

#define VMOPS_SSH_CONFIG_ENV "VMOPS_SSH_CONFIG"
#define VMOPS_SSH_DIR_ENV "VMOPS_SSH_DIR"
#define VMOPS_SSH_CONNECT_TIMEOUT_ENV "VMOPS_SSH_CONNECT_TIMEOUT"
#define VMOPS_SSH_CONNECT_TIMEOUT_DEFAULT_S 10
/* The remote entry point: the only program vmops runs over ssh. */
#define VMOPS_REMOTE_PROGRAM "vm-fleet"

struct vmops_transport;

/* Is `s` usable as an ssh destination (see above)? */
bool vmops_transport_valid_destination(const char *s);

/* A transport to `worker`'s host at `destination`.  `host_id` (may be NULL)
 * is the identity recorded for that worker: every action checks it there. */
struct vmops_transport *vmops_transport_ssh(const char *worker, const char *destination,
					    const char *host_id, struct vmops_error *e);
void vmops_transport_free(struct vmops_transport *t);
void vmops_transport_freep(struct vmops_transport **t);
#define _cleanup_transport_ __attribute__((cleanup(vmops_transport_freep)))

/*
 * The transport of a worker (by name), or of the worker a VMM runs on, or
 * *out = NULL for a local worker.  NOTFOUND if it does not exist.
 */
int vmops_transport_for_worker(PGconn *c, const char *worker, struct vmops_transport **out,
			       struct vmops_error *e);
int vmops_transport_for_vmm(PGconn *c, long long vmm_id, struct vmops_transport **out,
			    struct vmops_error *e);

const char *vmops_transport_worker(const struct vmops_transport *t);
const char *vmops_transport_destination(const struct vmops_transport *t);
/* The host identity recorded for the worker ("" if none): every action is refused by another host. */
const char *vmops_transport_host_id(const struct vmops_transport *t);

/*
 * Is the host there and is it the worker's?  Sets up the shared connection.
 * Unreachable: VMOPS_EXIT_UNREACHABLE; another host: VMOPS_EXIT_WRONG_HOST.
 * `host_id` (VMOPS_HOST_ID_MAX bytes, may be NULL) receives its identity.
 */
int vmops_transport_hello(struct vmops_transport *t, char *host_id, int timeout_ms,
			  struct vmops_error *e);

/*
 * Run ACTION there with `req` (a JSON object; "host_id" is added) and
 * return its JSON answer.  The ssh client is killed after timeout_ms.
 */
cJSON *vmops_transport_call(struct vmops_transport *t, const char *action, const cJSON *req,
			    int timeout_ms, struct vmops_error *e);

/* --- VMMs on a remote host (a hypervisor handle whose every action runs there) */

/* Launch a VMM on the transport's host (see vmops_hv_launch).  t must
 * outlive the handle.  A failed connection after the request went out is
 * VMOPS_EXIT_UNKNOWN: a VMM may run there. */
struct vmops_hv *vmops_remote_hv_launch(struct vmops_transport *t, const struct vmops_spec *spec,
					const struct vmops_hv_launch_opts *opts,
					struct vmops_error *e);
/*
 * A migration receiver on the transport's host (see
 * vmops_hv_prepare_incoming): it listens on `address` at a port of
 * port_min..port_max free there (tried from port_min + salt on).  The
 * resolved address is in vmops_hv_info(h)->incoming_uri.  Unreachable
 * host: UNREACHABLE, nothing started; UNKNOWN: a receiver may run there.
 */
struct vmops_remote_listen {
	const char *address;
	long long port_min, port_max, salt;
};
struct vmops_hv *vmops_remote_hv_prepare_incoming(struct vmops_transport *t, const struct vmops_spec *spec,
						  const struct vmops_hv_launch_opts *opts,
						  const struct vmops_remote_listen *l,
						  const struct vmops_migrate_params *mp, int timeout_ms,
						  struct vmops_error *e);
/*
 * On the transport's host: with VMOPS_REMOTE_STOP_PROCESS, stop a VMM by
 * signal (vmops_vm_stop_process there: pid and start time, or its marker
 * in run_dir); with VMOPS_REMOTE_STOP_RUN_DIR, then remove run_dir (without
 * the first flag: only once the recorded pid no longer runs).  *killed (may
 * be NULL) is increased by the processes signalled.  Unreachable host:
 * UNREACHABLE, nothing done.
 */
#define VMOPS_REMOTE_STOP_PROCESS 1u
#define VMOPS_REMOTE_STOP_RUN_DIR 2u
int vmops_remote_stop(struct vmops_transport *t, const struct vmops_vmm_info *info, const char *run_dir,
		      unsigned flags, int *killed, struct vmops_error *e);
/*
 * Is the VMM's process alive on the transport's host (pid and start time,
 * as that host's /proc says): VMOPS_PROC_ALIVE, _DEAD, _REUSED, _UNKNOWN;
 * -1 if not asked (UNREACHABLE: the host does not answer; else UNKNOWN).
 */
int vmops_remote_check(struct vmops_transport *t, const struct vmops_vmm_info *info, struct vmops_error *e);
/* A handle on a VMM recorded on the transport's host (nothing is sent). */
struct vmops_hv *vmops_remote_hv_attach(struct vmops_transport *t,
					const struct vmops_vmm_info *info, struct vmops_error *e);

/*
 * The transport's host's /proc as a recorded tree (proc.h) in a new private
 * directory (under $TMPDIR or /tmp; its path into dir): its hypervisor
 * processes whose command line carries a fleet token, and the stat of each
 * of `pids` that exists there, with its uptime.  For a count made on this
 * host against the database, with that host's facts.  Unreachable host:
 * UNREACHABLE; an answer that does not come: UNKNOWN; nothing is left in
 * dir on failure.  Remove the tree with vmops_remote_procs_remove().
 */
int vmops_remote_procs(struct vmops_transport *t, const long long *pids, size_t npids, char *dir, size_t len,
		       struct vmops_error *e);
void vmops_remote_procs_remove(const char *dir);

/* --- the remote side (vm-fleet remote ACTION) ----------------------------- */

/*
 * Serve one request read from stdin on this host.  Returns the exit code;
 * *answer receives the JSON answer (also on failure: {"error", "code"}).
 */
int vmops_remote_serve(const char *action, const char *request, size_t len, cJSON **answer);
/* Is `action` one the remote side serves? */
bool vmops_remote_action_valid(const char *action);

#endif
