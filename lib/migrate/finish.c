/* SPDX-License-Identifier: MIT */
/*
 * The end of an attempt: switchover (resume the target, which the receiver
 * holds paused after the load), finish (the sandbox moves, one transaction),
 * release (the old source stops, then its VMM and reservation go), rollback
 * (the source keeps the guest) and lost (neither can run it).
 */
#include <stdio.h>
#include <string.h>

#include "attempt.h"
#include "db.h"
#include "exitcodes.h"
#include "fault.h"
#include "fleet.h"
#include "log.h"
#include "proc.h"
#include "vm.h"

/* The target's run state, asked a few times: QMP serves one client at a time.
 * A target whose host does not answer is not asked again (UNREACHABLE). */
static int target_status(struct attempt *at, struct vmops_vm_status *st, struct vmops_error *e)
{
	for (int i = 0; i < 3; i++) {
		if (vmops_hv_status(at->target, st, e) == 0)
			return 0;
		if (e->code == VMOPS_EXIT_UNREACHABLE || !vmops_hv_is_alive(at->target))
			return -1;
		vmops_mig_sleep_ms(200);
	}
	return -1;
}

/*
 * Wait until the receiver holds the whole guest (paused after the load),
 * renewing the lease.  The target has not run the guest yet: an interrupt
 * still rolls back (--recover has no flag: at->o is NULL there).
 */
static int wait_loaded(struct attempt *at, uint64_t wait_ms, struct vmops_error *e)
{
	uint64_t t0 = vmops_mig_now_ms(), last_renew = t0;
	struct vmops_vm_status st = { 0 };

	for (;;) {
		if (!vmops_hv_is_alive(at->target))
			return vmops_err(e, VMOPS_EXIT_HYPERVISOR, "the target died before it ran the guest");
		if (target_status(at, &st, e) == 0 &&
		    (strcmp(st.status, "paused") == 0 || st.running))
			return 0;
		/* Its host does not answer: the target is unknown, and it was never resumed. */
		if (e->code == VMOPS_EXIT_UNREACHABLE)
			return vmops_err_prefix(e, "before switchover");
		if (at->o && at->o->interrupted && *at->o->interrupted)
			return vmops_err(e, VMOPS_EXIT_INTERRUPTED, "interrupted while the target was loading the guest");
		if (vmops_mig_now_ms() - t0 > wait_ms)
			return vmops_err(e, VMOPS_EXIT_TIMEOUT, "the target was still %s %llus after the source completed",
					 st.status[0] ? st.status : "unreachable", (unsigned long long)(wait_ms / 1000));
		if (vmops_mig_now_ms() - last_renew >= at->lease_ms / 3) {
			if (vmops_mig_renew(at, e) < 0)
				return -1;
			last_renew = vmops_mig_now_ms();
		}
		vmops_mig_sleep_ms(50);
	}
}

int vmops_mig_phase_switchover(struct attempt *at, uint64_t wait_ms, bool *never_ran, struct vmops_error *e)
{
	uint64_t t0, last_renew;
	struct vmops_vm_status st = { 0 };

	*never_ran = !at->resumed_target;
	vmops_fault_point("switchover");
	if (wait_loaded(at, wait_ms, e) < 0)
		return -1;
	/* Recorded before the target may run: from here on the source is never resumed. */
	if (vmops_mig_record_phase(at, "switchover", "switching", 0, e) < 0)
		return -1;
	*never_ran = false;
	at->resumed_target = true;
	t0 = last_renew = vmops_mig_now_ms();
	for (;;) {
		if (target_status(at, &st, e) == 0) {
			if (st.running)
				return 0;
			if (strcmp(st.status, "paused") == 0)
				(void)vmops_hv_resume(at->target, e);
		} else if (e->code == VMOPS_EXIT_UNREACHABLE) {
			return vmops_err_prefix(e, "after the target was resumed");   /* unknown, not dead */
		} else if (!vmops_hv_is_alive(at->target)) {
			return vmops_err(e, VMOPS_EXIT_HYPERVISOR, "the target died after it was resumed");
		}
		if (vmops_mig_now_ms() - t0 > wait_ms)
			return vmops_err(e, VMOPS_EXIT_UNKNOWN, "the target is alive but its state is unknown (%s)",
					 st.status[0] ? st.status : e->msg);
		if (vmops_mig_now_ms() - last_renew >= at->lease_ms / 3) {
			if (vmops_mig_renew(at, e) < 0)
				return -1;
			last_renew = vmops_mig_now_ms();
		}
		vmops_mig_sleep_ms(50);
	}
}

/* ---- finish: one transaction ------------------------------------------------- */

static int completed_tx(struct attempt *at, void *data, struct vmops_error *e)
{
	char sid[24], tvid[24], twid[24], dt[24], tot[24], tr[24], lease[24];
	_cleanup_pgresult_ PGresult *u = NULL;

	(void)data;
	if (mig_tx_fence(at, e,
			 "UPDATE migrations SET state = 'completed', phase = 'finish', time_phase_updated = now(),"
			 " time_finished = now(), time_switched = coalesce(time_switched, now()),"
			 " downtime_ms = nullif($4, '-1')::bigint, bytes_total = $5, bytes_transferred = $6,"
			 " lease_expires_at = now() + $7 * interval '1 millisecond'"
			 " WHERE id = $1 AND lease_owner = $2 AND generation = $3",
			 vmops_db_ll(dt, at->downtime_ms), vmops_db_ll(tot, (long long)at->total),
			 vmops_db_ll(tr, (long long)at->transferred), vmops_db_ll(lease, (long long)at->lease_ms)) < 0)
		return -1;
	vmops_db_ll(sid, at->sandbox_id);
	vmops_db_ll(tvid, at->target_vmm_id);
	vmops_db_ll(twid, at->target_worker_id);
	/* Only a sandbox still migrating by this attempt moves. */
	u = vmops_db_q(at->c, e, "UPDATE sandboxes SET status = 'running', worker_id = $2, active_vmm_id = $3,"
		       " target_vmm_id = NULL WHERE id = $1 AND status = 'migrating' AND target_vmm_id = $3"
		       " RETURNING id", sid, twid, tvid);
	if (!u)
		return -1;
	if (PQntuples(u) != 1)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s is no longer migrating by migration %lld",
				 at->sandbox, at->migration_id);
	if (vmops_db_x(at->c, e, "UPDATE vmms SET state = 'running' WHERE id = $1", tvid) < 0 ||
	    vmops_db_x(at->c, e, "UPDATE scale_events SET ended_at = greatest(now(), started_at)"
			       " WHERE sandbox_id = $1 AND ended_at IS NULL", sid) < 0 ||
	    vmops_db_x(at->c, e, "INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)"
			       " SELECT id, org_id, $2, $3, memory_mb, vcpus FROM sandboxes WHERE id = $1",
		       sid, twid, tvid) < 0)
		return -1;
	return vmops_audit(at->c, at->actor, "completed", "migration", at->migration_id, NULL, NULL, NULL, e);
}

/* Runs, as the target says; else dead (HYPERVISOR) or alive but silent (UNKNOWN). */
static bool target_runs(struct attempt *at, struct vmops_error *e)
{
	struct vmops_vm_status st = { 0 };

	if (!at->target)
		return vmops_err(e, VMOPS_EXIT_UNKNOWN, "the target is not attached"), false;
	if (target_status(at, &st, e) == 0 && st.running)
		return true;
	/* A killed process closes its sockets a moment before /proc says it is dead. */
	for (int i = 0; i < 30 && vmops_hv_is_alive(at->target); i++)
		vmops_mig_sleep_ms(100);
	if (!vmops_hv_is_alive(at->target))
		vmops_err(e, VMOPS_EXIT_HYPERVISOR, "the target died after it ran the guest");
	else
		vmops_err(e, VMOPS_EXIT_UNKNOWN, "the target is alive but %s", st.status[0] ? st.status : "does not answer");
	return false;
}

int vmops_mig_phase_finish(struct attempt *at, struct vmops_error *e)
{
	vmops_fault_point("finish");
	/* The database points at the target only while it runs the guest. */
	if (!target_runs(at, e))
		return -1;
	if (vmops_mig_tx(at, completed_tx, NULL, "finish", e) < 0)
		return -1;
	at->moved = true;
	return vmops_mig_phase_release(at, e);
}

static int release_tx(struct attempt *at, void *data, struct vmops_error *e)
{
	char svid[24];

	(void)data;
	if (mig_tx_fence(at, e, "UPDATE migrations SET phase = 'done', time_phase_updated = now(),"
			 " lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2 AND generation = $3") < 0)
		return -1;
	vmops_db_ll(svid, at->source_vmm_id);
	return vmops_db_x(at->c, e, "UPDATE vmms SET state = 'destroyed' WHERE id = $1 AND state <> 'destroyed'", svid) < 0 ||
	       vmops_db_x(at->c, e, "DELETE FROM reservations WHERE vmm_id = $1", svid) < 0 ? -1 : 0;
}

int vmops_mig_phase_release(struct attempt *at, struct vmops_error *e)
{
	/* The old source is marked destroyed, and its room freed, only once its process is gone. */
	if (vmops_mig_stop_vmm(at, at->source, at->source_vmm_id, NULL, NULL, e) < 0)
		return vmops_err_prefix(e, "sandbox %s: the old source did not stop", at->sandbox);
	if (vmops_mig_tx(at, release_tx, NULL, "done", e) < 0)
		return -1;
	vmops_mig_run_dir_gone(at, at->source, at->source_vmm_id, NULL);
	return 0;
}

/* ---- rollback and lost --------------------------------------------------------- */

struct undo {
	const char *state;     /* failed | cancelled */
	const char *error;
	bool lost;
};

static int undo_tx(struct attempt *at, void *data, struct vmops_error *e)
{
	const struct undo *u = data;
	char sid[24], svid[24], tvid[24];

	if (mig_tx_fence(at, e, "UPDATE migrations SET state = $4, error = $5, phase = 'done', time_phase_updated = now(),"
			 " time_finished = now(), lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2 AND generation = $3",
			 u->state, u->error) < 0)
		return -1;
	vmops_db_ll(sid, at->sandbox_id);
	vmops_db_ll(svid, at->source_vmm_id);
	vmops_db_ll(tvid, at->target_vmm_id);
	if (vmops_db_x(at->c, e, "UPDATE vmms SET state = $2 WHERE id = $1", tvid, u->lost ? "failed" : "destroyed") < 0 ||
	    vmops_db_x(at->c, e, "DELETE FROM reservations WHERE vmm_id = $1", tvid) < 0)
		return -1;
	if (!u->lost)
		return vmops_db_x(at->c, e, "UPDATE sandboxes SET status = 'running', target_vmm_id = NULL"
				  " WHERE id = $1 AND status = 'migrating'", sid) < 0 ? -1 :
		       vmops_audit(at->c, at->actor, u->state, "migration", at->migration_id, NULL, NULL, u->error, e);
	/* Neither VM can run the guest: the sandbox is in error, which closes its billing. */
	if (vmops_db_x(at->c, e, "UPDATE vmms SET state = 'destroyed' WHERE id = $1", svid) < 0 ||
	    vmops_db_x(at->c, e, "DELETE FROM reservations WHERE vmm_id = $1", svid) < 0 ||
	    vmops_db_x(at->c, e, "UPDATE sandboxes SET status = 'error', target_vmm_id = NULL WHERE id = $1", sid) < 0)
		return -1;
	return vmops_audit(at->c, at->actor, "migration-lost", "migration", at->migration_id, NULL, NULL, u->error, e);
}

/*
 * Cancel the source's migration and see it end.  -1 (e filled) when the
 * source's host does not answer: the cancel is not known to have happened,
 * so the migration may still complete and the receiver hold the only guest.
 */
static int cancel_on_source(struct attempt *at, struct vmops_error *e)
{
	struct vmops_error se = { 0 };

	if (!at->source || !at->sent)
		return 0;
	if (vmops_hv_cancel(at->source, &se) < 0)
		vmops_warn("sandbox %s: migrate_cancel on the source: %s", at->sandbox, se.msg);
	for (int i = 0; i < 50; i++) {
		struct vmops_migrate_progress p;
		if (vmops_hv_progress(at->source, &p, &se) < 0) {
			if (se.code == VMOPS_EXIT_UNREACHABLE || se.code == VMOPS_EXIT_UNKNOWN)
				return *e = se, vmops_err_prefix(e, "cancelling on the source");
			break;
		}
		if (vmops_migrate_status_is_final(p.status))
			break;
		vmops_mig_sleep_ms(100);
	}
	at->sent = false;
	return 0;
}

/* QEMU resumes a cancelled source by itself; a completed one (postmigrate) needs cont. */
static void resume_source(struct attempt *at)
{
	struct vmops_error se = { 0 };
	struct vmops_vm_status st = { 0 };

	if (at->source && vmops_hv_status(at->source, &st, &se) == 0 && !st.running &&
	    (strcmp(st.status, "paused") == 0 || strcmp(st.status, "postmigrate") == 0 ||
	     strcmp(st.status, "finish-migrate") == 0))
		(void)vmops_hv_resume(at->source, &se);
}

/*
 * The source's host does not answer while its migration may still run: the
 * receiver may come to hold the only copy of the guest, so it is not
 * stopped and the source is not resumed.  The rollback is recorded (the
 * receiver is never resumed while the source lives); the rest is left to
 * --recover.
 */
static int source_unknown(struct attempt *at, struct vmops_error *e)
{
	vmops_mig_release_lease(at);
	return vmops_err_prefix(e, "the source's migration may still complete; the receiver on %s is left to "
				"vm-migrate --recover", at->target_worker);
}

/*
 * The receiver could not be stopped because its host does not answer (or
 * did not say): it is unknown, not dead.  It never ran the guest and is
 * never resumed now (recorded phase rollback: --recover does not activate
 * it while the source lives), so the source gets the guest back; the
 * receiver, its reservation and the attempt are left to --recover.
 */
static int receiver_unknown(struct attempt *at, struct vmops_error *e)
{
	resume_source(at);
	vmops_mig_release_lease(at);
	return vmops_err_prefix(e, "the source runs the guest; the receiver on %s is left to vm-migrate --recover",
				at->target_worker);
}

/* Only while the target never ran the guest: the source keeps (or gets back) the guest. */
int vmops_mig_phase_rollback(struct attempt *at, const char *state, const char *why, struct vmops_error *e)
{
	struct undo u = { state, why, false };

	vmops_fault_point("rollback");
	if (vmops_mig_record_phase(at, "rollback", NULL, 0, e) < 0)
		return -1;
	if (cancel_on_source(at, e) < 0)
		return source_unknown(at, e);
	if (at->target_vmm_id > 0 &&
	    vmops_mig_stop_vmm(at, at->target, at->target_vmm_id, at->target_run_dir, &at->receivers_killed, e) < 0) {
		if (e->code == VMOPS_EXIT_UNREACHABLE || e->code == VMOPS_EXIT_UNKNOWN)
			return receiver_unknown(at, e);
		return vmops_err_prefix(e, "sandbox %s: the receiver did not stop", at->sandbox);
	}
	resume_source(at);
	if (vmops_mig_tx(at, undo_tx, &u, "done", e) < 0)
		return -1;
	vmops_mig_run_dir_gone(at, at->target, at->target_vmm_id, at->target_run_dir);
	return 0;
}

int vmops_mig_phase_lost(struct attempt *at, const char *why, struct vmops_error *e)
{
	struct undo u = { "failed", why, true };

	if (vmops_mig_record_phase(at, "rollback", NULL, 0, e) < 0)
		return -1;
	if (vmops_mig_stop_vmm(at, at->target, at->target_vmm_id, at->target_run_dir, NULL, e) < 0 ||
	    vmops_mig_stop_vmm(at, at->source, at->source_vmm_id, NULL, NULL, e) < 0)
		return -1;
	/* Both run directories stay: their logs are the evidence of an error sandbox. */
	return vmops_mig_tx(at, undo_tx, &u, "done", e);
}
