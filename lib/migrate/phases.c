/* SPDX-License-Identifier: MIT */
/*
 * The phases of one attempt (see attempt.h).  Each records itself before
 * its physical step and stops as soon as a fenced write says the lease is
 * no longer ours.  vmops_migrate() and vmops_migrate_recover() both drive
 * these functions.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attempt.h"
#include "db.h"
#include "exitcodes.h"
#include "fault.h"
#include "fleet.h"
#include "log.h"
#include "transport/transport.h"
#include "vm.h"

/* ---- receiver --------------------------------------------------------------- */

/* The program was interrupted (never while recovering: --recover has no flag to give). */
static bool interrupted(const struct attempt *at)
{
	return at->o && at->o->interrupted && *at->o->interrupted;
}

static int record_receiver_tx(struct attempt *at, void *data, struct vmops_error *e)
{
	const struct vmops_vmm_info *i = vmops_hv_info(at->target);
	char vid[24], pid[24], st[24], cu[24], lease[24];

	(void)data;
	/* The receiver is up: back to the normal lease length. */
	if (mig_tx_fence(at, e, "UPDATE migrations SET connections_used = $4::int,"
			 " lease_expires_at = now() + $5 * interval '1 millisecond'"
			 " WHERE id = $1 AND lease_owner = $2 AND generation = $3",
			 vmops_db_ll(cu, at->mp.connections), vmops_db_ll(lease, (long long)at->lease_ms)) < 0)
		return -1;
	return vmops_db_x(at->c, e,
			  "UPDATE vmms SET state = 'migrating', pid = $2, pid_start_time = $3, control_socket = $4,"
			  " agent_socket = nullif($5, ''), run_dir = $6 WHERE id = $1",
			  vmops_db_ll(vid, at->target_vmm_id), vmops_db_ll(pid, i->pid),
			  vmops_db_ll(st, (long long)i->start_time), i->control_socket, i->agent_socket, i->run_dir);
}

int vmops_mig_phase_receiver(struct attempt *at, const struct vmops_spec *spec, const char *run_dir,
			     const char *address, long long port_min, long long port_max, struct vmops_error *e)
{
	struct vmops_hv_launch_opts lo = { 0 };
	struct vmops_remote_listen l = { address, port_min, port_max, at->migration_id };

	vmops_fault_point("receiver");
	if (interrupted(at))
		return vmops_err(e, VMOPS_EXIT_INTERRUPTED, "interrupted before the receiver on %s was started",
				 at->target_worker);
	/* The lease must outlast the receiver's start-up, which we wait for without renewing. */
	if (vmops_mig_record_phase(at, "receiver", "preparing", RECEIVER_TIMEOUT_MS, e) < 0)
		return -1;
	at->lease_until += RECEIVER_TIMEOUT_MS;
	lo.run_dir = at->target_run_dir;
	lo.vmm_id = (uint64_t)at->target_vmm_id;
	lo.auto_accel = at->o ? at->o->auto_accel : VMOPS_ACCEL_AUTO;
	lo.incoming_paused = true;
	/* Waits for the receiver give up when the program is interrupted (then rolled back). */
	lo.interrupted = at->o ? at->o->interrupted : NULL;
	for (int try = 0; !at->target && try < 3; try++) {
		/* The port was free when probed; another process may take it before the receiver binds. */
		if (try > 0) {
			if (!strstr(e->msg, "in use") || e->code == VMOPS_EXIT_INTERRUPTED)
				break;
			vmops_warn("sandbox %s: receiver on %s: %s; trying another port", at->sandbox,
				   at->target_worker, e->msg);
			if (vmops_mig_record_phase(at, "receiver", NULL, RECEIVER_TIMEOUT_MS, e) < 0)
				break;
			at->lease_until += RECEIVER_TIMEOUT_MS;
		}
		l.salt = at->migration_id + 7 * try;
		(void)vmops_mig_start_receiver(at, spec, &lo, run_dir, &l, e);
	}
	if (!at->target && e->code == VMOPS_EXIT_INTERRUPTED)
		return vmops_err_prefix(e, "receiver on %s", at->target_worker);
	if (!at->target && at->mp.connections > 1 && !at->receiver_unasked && e->code != VMOPS_EXIT_UNKNOWN) {
		vmops_warn("sandbox %s: receiver on %s with %u connections failed (%s); trying one connection",
			   at->sandbox, at->target_worker, at->mp.connections, e->msg);
		at->mp.connections = 1;
		if (vmops_mig_record_phase(at, "receiver", NULL, RECEIVER_TIMEOUT_MS, e) < 0)
			return -1;
		at->lease_until += RECEIVER_TIMEOUT_MS;
		(void)vmops_mig_start_receiver(at, spec, &lo, run_dir, &l, e);
	}
	if (!at->target) {
		if (e->code != VMOPS_EXIT_UNREACHABLE && e->code != VMOPS_EXIT_UNKNOWN)
			e->code = VMOPS_EXIT_HYPERVISOR;
		return vmops_err_prefix(e, "receiver on %s", at->target_worker);
	}
	at->r->connections_used = at->mp.connections;
	/* Idempotent: after an ambiguous COMMIT it is simply run again. */
	return vmops_mig_tx(at, record_receiver_tx, NULL, NULL, e);
}

/* ---- transfer ---------------------------------------------------------------- */

static void account(struct attempt *at, const struct vmops_migrate_progress *p, uint64_t t,
		    uint64_t *rate_t0, uint64_t *rate_b0)
{
	struct vmops_migrate_report *r = at->r;

	snprintf(r->hv_status, sizeof(r->hv_status), "%s", p->status);
	r->total_bytes = at->total = p->total_bytes;
	r->transferred_bytes = at->transferred = p->transferred_bytes;
	r->remaining_bytes = p->remaining_bytes;
	r->total_time_ms = p->total_time_ms;
	r->setup_time_ms = p->setup_time_ms;
	if (t - *rate_t0 >= 1000) {
		r->rate_bps = (double)(p->transferred_bytes - *rate_b0) * 1000.0 / (double)(t - *rate_t0);
		*rate_t0 = t;
		*rate_b0 = p->transferred_bytes;
	} else if (r->rate_bps == 0 && p->mbps > 0) {
		r->rate_bps = p->mbps * 1e6 / 8;
	}
	r->eta_s = vmops_migrate_eta_s(p->remaining_bytes, r->connections_used,
				       r->rate_bps / (r->connections_used ? r->connections_used : 1),
				       at->o->rtt_s, VMOPS_MIGRATE_CHUNK_BYTES, (double)at->o->max_bandwidth);
}

/* Whether the transfer stalled (above); e filled with why when it did. */
static bool stalled(struct vmops_migrate_lowwater *lw, const struct vmops_migrate_progress *p, uint64_t t,
		    uint64_t timeout_ms, struct vmops_error *e)
{
	unsigned long long s = (unsigned long long)(timeout_ms / 1000);

	if (!vmops_migrate_lowwater_stalled(lw, p->remaining_bytes, p->dirty_sync_count, p->transferred_bytes, t,
					    timeout_ms))
		return false;
	if (lw->stuck)
		vmops_err(e, VMOPS_EXIT_TIMEOUT, "no progress for %llus: no bytes sent", s);
	else if (lw->passes)
		vmops_err(e, VMOPS_EXIT_TIMEOUT,
			  "no progress for %llus: %llu passes over memory since the smallest began, none smaller "
			  "than %llu bytes (the guest dirties memory as fast as it is sent)",
			  s, (unsigned long long)lw->passes, (unsigned long long)lw->min_remaining);
	else
		vmops_err(e, VMOPS_EXIT_TIMEOUT, "no progress for %llus: remaining bytes never fell below %llu", s,
			  (unsigned long long)lw->min_remaining);
	return true;
}

/* One look at the transfer: 1 completed, 0 go on, -1 stop (e filled). */
static int transfer_step(struct attempt *at, const struct vmops_migrate_progress *p,
			 struct vmops_migrate_lowwater *lw, uint64_t t, uint64_t deadline, uint64_t start,
			 struct vmops_error *e)
{
	const struct vmops_migrate_opts *o = at->o;

	if (strcmp(p->status, "completed") == 0) {
		at->r->downtime_ms = at->downtime_ms = p->downtime_ms;
		return 1;
	}
	if (strcmp(p->status, "failed") == 0 || strcmp(p->status, "cancelled") == 0) {
		at->sent = false;  /* nothing left to cancel */
		return vmops_err(e, VMOPS_EXIT_HYPERVISOR, "migration %s: %s", p->status,
				 p->error_desc[0] ? p->error_desc : "no reason given by the hypervisor");
	}
	if (interrupted(at))
		return vmops_err(e, VMOPS_EXIT_INTERRUPTED, "interrupted: migration cancelled");
	if (t > deadline)
		return vmops_err(e, VMOPS_EXIT_TIMEOUT, "not completed within %llus (%llus per GiB of guest memory)",
				 (unsigned long long)((deadline - start) / 1000),
				 (unsigned long long)(o->timeout_per_gib_ms / 1000));
	/* A hypervisor that reports no byte counts (Cloud Hypervisor) gives no
	 * stall signal: only the completion timeout applies to it. */
	if (strcmp(p->status, "active") == 0 && (p->remaining_bytes || p->transferred_bytes) &&
	    stalled(lw, p, t, o->progress_timeout_ms, e))
		return -1;
	return 0;
}

int vmops_mig_phase_transfer(struct attempt *at, struct vmops_error *e)
{
	const struct vmops_migrate_opts *o = at->o;
	struct vmops_migrate_lowwater lw;
	uint64_t start = vmops_mig_now_ms(), gib = (at->r->memory_bytes + (1ULL << 30) - 1) >> 30;
	uint64_t deadline = start + (gib ? gib : 1) * o->timeout_per_gib_ms;
	uint64_t last_renew = start, last_report = 0, rate_t0 = start, rate_b0 = 0;

	vmops_fault_point("transfer");
	if (vmops_mig_record_phase(at, "transfer", "transferring", 0, e) < 0)
		return -1;
	if (vmops_hv_send(at->source, vmops_hv_info(at->target)->incoming_uri, &at->mp, e) < 0) {
		/* Over ssh the source may have been told after all: cancel it then. */
		at->sent = e->code == VMOPS_EXIT_UNKNOWN;
		if (!at->sent)
			e->code = VMOPS_EXIT_HYPERVISOR;
		return vmops_err_prefix(e, "send to %s", at->target_worker);
	}
	at->sent = true;
	vmops_migrate_lowwater_init(&lw, start);
	for (;;) {
		struct vmops_migrate_progress p;
		uint64_t t;
		int k;

		if (vmops_hv_progress(at->source, &p, e) < 0) {
			if (e->code != VMOPS_EXIT_UNREACHABLE)
				e->code = VMOPS_EXIT_HYPERVISOR;
			return vmops_err_prefix(e, "progress");
		}
		t = vmops_mig_now_ms();
		account(at, &p, t, &rate_t0, &rate_b0);
		k = transfer_step(at, &p, &lw, t, deadline, start, e);
		if (k != 0)
			return k > 0 ? 0 : -1;
		if (t - last_renew >= at->lease_ms / 3) {
			if (vmops_mig_renew(at, e) < 0)
				return -1;
			last_renew = t;
		}
		if (o->on_progress && t - last_report >= 500) {
			o->on_progress(o->data, at->r);
			last_report = t;
		}
		/* Near the end, look more often: the target is resumed only once we see "completed". */
		vmops_mig_sleep_ms(p.remaining_bytes < (64ull << 20) ? 20 : 100);
	}
}
