/* SPDX-License-Identifier: MIT */
/*
 * vm-migrate --recover: take the lease of an attempt whose lease expired,
 * observe the facts, decide (the table below, also in vm-migrate(1)) and
 * drive the same phase functions vm-migrate runs.  A VMM whose process is
 * alive but whose QMP does not answer is UNKNOWN, never dead: QMP serves one
 * client at a time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attempt.h"
#include "db.h"
#include "exitcodes.h"
#include "log.h"
#include "proc.h"
#include "vm.h"

const char *vmops_migrate_recover_action_name(enum vmops_recover_action a)
{
	static const char *const n[] = { "rollback", "activate", "finish", "release", "lost", "unknown" };

	return (unsigned)a < sizeof(n) / sizeof(n[0]) ? n[a] : "?";
}

#define DECIDE(a, w) do { *why = (w); return (a); } while (0)

enum vmops_recover_action vmops_migrate_recover_decide(const struct vmops_recover_facts *f, const char **why)
{
	/* Without a phase (an older vm-migrate), the receiver ran the guest on its own: assume it may have. */
	bool may_have_run = !f->phase || !strcmp(f->phase, "switchover");
	bool tgt_alive = f->tgt == VMOPS_RP_ALIVE, src_alive = f->src == VMOPS_RP_ALIVE;
	/* A rollback was decided (and recorded) first: the source may already run again. */
	bool rolling_back = f->phase && !strcmp(f->phase, "rollback");

	if (f->unreachable)
		DECIDE(VMOPS_RA_UNKNOWN, "a worker's host does not answer over ssh: its VMM is unknown, not dead");
	if (f->phase && !strcmp(f->phase, "finish"))
		DECIDE(VMOPS_RA_RELEASE, "the sandbox had moved; the old source is stopped and released");
	if (tgt_alive && f->tgt_run == VMOPS_RR_RUNNING) {
		if (src_alive && f->src_run == VMOPS_RR_RUNNING)
			DECIDE(VMOPS_RA_UNKNOWN, "both the source and the target run the guest");
		DECIDE(VMOPS_RA_FINISH, "the target runs the guest");
	}
	if (!may_have_run) {
		/* The target never ran the guest: the source's state is the newest. */
		if (src_alive && f->src_run == VMOPS_RR_UNKNOWN)
			DECIDE(VMOPS_RA_UNKNOWN, "the source is alive but does not answer");
		if (tgt_alive && f->tgt_run == VMOPS_RR_PAUSED && (!src_alive || (f->src_completed && !rolling_back)))
			DECIDE(VMOPS_RA_ACTIVATE, "the target holds the whole guest and never ran: resume it");
		if (src_alive)
			DECIDE(VMOPS_RA_ROLLBACK, "the target never ran the guest; the source keeps it");
		if (tgt_alive && f->tgt_run == VMOPS_RR_UNKNOWN)
			DECIDE(VMOPS_RA_UNKNOWN, "the source is gone and the target does not answer");
		DECIDE(VMOPS_RA_LOST, "the source is gone and the target never received the whole guest");
	}
	/* The target may have run the guest: never resume the source back in time. */
	if (tgt_alive) {
		if (f->tgt_run == VMOPS_RR_PAUSED)
			DECIDE(VMOPS_RA_ACTIVATE, "the target holds the whole guest, paused: resume it");
		if (f->tgt_run == VMOPS_RR_UNKNOWN)
			DECIDE(VMOPS_RA_UNKNOWN, "the target is alive but does not answer");
		if (f->tgt_run == VMOPS_RR_INMIGRATE && !(src_alive && f->src_run == VMOPS_RR_RUNNING && !f->src_completed))
			DECIDE(VMOPS_RA_UNKNOWN, "the target is still loading the guest");
	}
	if (src_alive && f->src_run == VMOPS_RR_RUNNING && !f->src_completed)
		DECIDE(VMOPS_RA_ROLLBACK, "the source still runs the guest; the migration never completed");
	if (src_alive && f->src_run == VMOPS_RR_UNKNOWN)
		DECIDE(VMOPS_RA_UNKNOWN, "the target is gone and the source does not answer");
	DECIDE(VMOPS_RA_LOST, "the target may have run the guest and is gone; the source is not resumed back in time");
}

/* ---- facts ---------------------------------------------------------------- */

static enum vmops_recover_run run_of(const struct vmops_vm_status *st, bool receiver)
{
	if (st->running)
		return VMOPS_RR_RUNNING;
	if (!strcmp(st->status, "inmigrate"))
		return VMOPS_RR_INMIGRATE;
	if (!strcmp(st->status, "paused"))
		return receiver ? VMOPS_RR_PAUSED : VMOPS_RR_STOPPED;
	if (!strcmp(st->status, "postmigrate") || !strcmp(st->status, "finish-migrate"))
		return VMOPS_RR_STOPPED;
	return VMOPS_RR_OTHER;
}

/* Process by pid + start time on its host; run state by QMP, asked three times. */
static void observe(struct attempt *at, long long vmm_id, bool receiver, enum vmops_recover_proc *proc,
		    enum vmops_recover_run *run, struct vmops_hv **h, bool *completed, bool *unreachable)
{
	struct vmops_vmm_info info;
	struct vmops_error e = { 0 };
	struct vmops_vm_status st;
	int p;

	*proc = VMOPS_RP_NONE;
	*run = VMOPS_RR_UNKNOWN;
	if (vmm_id <= 0 || vmops_vm_load_info(at->c, vmm_id, &info, &e) < 0)
		return;
	if (info.pid <= 0) {
		/* A receiver started but never recorded: alive if found by its marker in its run dir. */
		int n = 0;
		if (receiver && vmops_mig_stop_vmm(at, NULL, vmm_id, at->target_run_dir, &n, &e) == 0 && n > 0)
			at->receivers_killed += n;   /* it never ran (phase <= receiver): stopped at once */
		else if (receiver && e.code == VMOPS_EXIT_UNREACHABLE)
			*unreachable = true;
		return;
	}
	p = vmops_mig_process(at, vmm_id, &info, &e);
	/* Its host does not answer: alive as far as anyone knows, state unknown. */
	if (p < 0 && e.code == VMOPS_EXIT_UNREACHABLE)
		*unreachable = true;
	*proc = p == VMOPS_PROC_DEAD || p == VMOPS_PROC_REUSED ? VMOPS_RP_DEAD : VMOPS_RP_ALIVE;
	if (*proc != VMOPS_RP_ALIVE || *unreachable)
		return;
	for (int i = 0; i < 3 && !*h; i++) {
		*h = vmops_mig_attach(at, vmm_id, &info, 2000, &e);
		if (!*h)
			vmops_debug("vmm %lld: %s (attempt %d of 3)", vmm_id, e.msg, i + 1);
		if (!*h && e.code == VMOPS_EXIT_UNREACHABLE) {
			*unreachable = true;
			return;
		}
	}
	if (*h && vmops_hv_status(*h, &st, &e) == 0)
		*run = run_of(&st, receiver);
	if (*h && completed) {
		struct vmops_migrate_progress pr;
		if (vmops_hv_progress(*h, &pr, &e) == 0) {
			*completed = !strcmp(pr.status, "completed");
			at->sent = !vmops_migrate_status_is_final(pr.status) && strcmp(pr.status, "none") != 0;
		}
	}
}

static void observe_all(struct attempt *at, struct vmops_recover_facts *f)
{
	observe(at, at->source_vmm_id, false, &f->src, &f->src_run, &at->source, &f->src_completed, &f->unreachable);
	observe(at, at->target_vmm_id, true, &f->tgt, &f->tgt_run, &at->target, NULL, &f->unreachable);
}

/* ---- taking the lease ------------------------------------------------------- */

/* Only an expired lease is taken; the generation is bumped.  1 taken, 0 someone else has it. */
static int take_lease(struct attempt *at, long long id, const char **phase_out, char *phase_buf, size_t len,
		      struct vmops_error *e)
{
	char mid[24], lease[24];
	_cleanup_pgresult_ PGresult *r = vmops_db_q(at->c, e,
		"UPDATE migrations m SET lease_owner = $2, generation = generation + 1,"
		" lease_expires_at = now() + $3 * interval '1 millisecond'"
		" WHERE id = $1 AND (state IN " ACTIVE_STATES " OR phase = 'finish')"
		" AND (lease_expires_at IS NULL OR lease_expires_at < now())"
		" RETURNING generation, phase, sandbox_id, source_vmm_id, target_vmm_id, source_worker_id,"
		"  target_worker_id, coalesce(bytes_total, 0) AS bt, coalesce(bytes_transferred, 0) AS bx,"
		"  coalesce(downtime_ms, -1) AS dt,"
		"  (SELECT name FROM sandboxes WHERE id = m.sandbox_id) AS sandbox,"
		"  (SELECT name FROM workers WHERE id = m.target_worker_id) AS target,"
		"  (SELECT run_dir FROM vmms WHERE id = m.target_vmm_id) AS target_run_dir",
		vmops_db_ll(mid, id), at->owner, vmops_db_ll(lease, (long long)at->lease_ms));

	if (!r)
		return -1;
	if (PQntuples(r) != 1)
		return 0;
	at->lease_until = vmops_mig_now_ms() + at->lease_ms;
	at->migration_id = id;
	at->generation = vmops_db_get_ll(r, 0, "generation", 0);
	at->sandbox_id = vmops_db_get_ll(r, 0, "sandbox_id", -1);
	at->source_vmm_id = vmops_db_get_ll(r, 0, "source_vmm_id", -1);
	at->target_vmm_id = vmops_db_get_ll(r, 0, "target_vmm_id", -1);
	at->source_worker_id = vmops_db_get_ll(r, 0, "source_worker_id", -1);
	at->target_worker_id = vmops_db_get_ll(r, 0, "target_worker_id", -1);
	at->total = (uint64_t)vmops_db_get_ll(r, 0, "bt", 0);
	at->transferred = (uint64_t)vmops_db_get_ll(r, 0, "bx", 0);
	at->downtime_ms = vmops_db_get_ll(r, 0, "dt", -1);
	snprintf(at->sandbox, sizeof(at->sandbox), "%s", vmops_db_get(r, 0, "sandbox") ? vmops_db_get(r, 0, "sandbox") : "?");
	snprintf(at->target_worker, sizeof(at->target_worker), "%s",
		 vmops_db_get(r, 0, "target") ? vmops_db_get(r, 0, "target") : "?");
	snprintf(at->target_run_dir, sizeof(at->target_run_dir), "%s",
		 vmops_db_get(r, 0, "target_run_dir") ? vmops_db_get(r, 0, "target_run_dir") : "");
	*phase_out = NULL;
	if (vmops_db_get(r, 0, "phase")) {
		snprintf(phase_buf, len, "%s", vmops_db_get(r, 0, "phase"));
		*phase_out = phase_buf;
	}
	return 1;
}

/* ---- acting ----------------------------------------------------------------- */

/* A step met a host that did not answer (or did not say what it did): unknown, not an error. */
static bool became_unknown(struct attempt *at, const struct vmops_error *e)
{
	if (at->lost_lease || (e->code != VMOPS_EXIT_UNREACHABLE && e->code != VMOPS_EXIT_UNKNOWN))
		return false;
	at->unreachable = at->unreachable || e->code == VMOPS_EXIT_UNREACHABLE;
	return true;
}

static int act(struct attempt *at, enum vmops_recover_action a, const char *why, struct vmops_recover_report *rr,
	       struct vmops_error *e)
{
	char msg[VMOPS_ERRMSG_MAX];
	bool never_ran = false;

	snprintf(msg, sizeof(msg), "lease expired: recovered by vm-migrate --recover: %s", why);
	switch (a) {
	case VMOPS_RA_RELEASE:
		if (vmops_mig_phase_release(at, e) < 0)
			return -1;
		rr->released++;
		return 0;
	case VMOPS_RA_ACTIVATE:
		if (vmops_mig_phase_switchover(at, at->lease_ms, &never_ran, e) < 0) {
			if (!never_ran)
				return -1;
			if (vmops_mig_phase_rollback(at, "failed", msg, e) == 0) {
				rr->failed++;
				return 0;
			}
			if (!became_unknown(at, e))
				return -1;
			why = e->msg;
			break;
		}
		/* fall through */
	case VMOPS_RA_FINISH:
		if (vmops_mig_phase_finish(at, e) < 0 && !at->moved) {
			if (e->code == VMOPS_EXIT_UNKNOWN) {
				why = e->msg;
				break;
			}
			if (at->lost_lease || (at->target && vmops_hv_is_alive(at->target)))
				return -1;
			/* It ran the guest and died meanwhile: no going back to the source. */
			if (vmops_mig_phase_lost(at, msg, e) < 0)
				return -1;
			rr->lost++;
			return 0;
		}
		rr->completed++;
		return 0;
	case VMOPS_RA_ROLLBACK:
		if (vmops_mig_phase_rollback(at, "failed", msg, e) < 0) {
			if (!became_unknown(at, e))
				return -1;
			why = e->msg;
			break;
		}
		rr->failed++;
		return 0;
	case VMOPS_RA_LOST:
		if (vmops_mig_phase_lost(at, msg, e) < 0)
			return -1;
		rr->lost++;
		return 0;
	case VMOPS_RA_UNKNOWN:
		break;
	}
	vmops_mig_release_lease(at);
	rr->unknown++;
	if (at->unreachable)
		rr->unreachable++;
	snprintf(rr->last_error, sizeof(rr->last_error),
		 "migration %lld (sandbox %s): %.700s: nothing irreversible was done; run --recover again later",
		 at->migration_id, at->sandbox, why);
	return 0;
}

static void recover_one(PGconn *c, long long id, uint64_t lease_ms, volatile sig_atomic_t *intr,
			struct vmops_recover_report *rr)
{
	struct attempt at = { .c = c, .actor = "vm-migrate --recover", .lease_ms = lease_ms };
	struct vmops_migrate_report scratch = { 0 };
	struct vmops_recover_facts f = { 0 };
	struct vmops_error e = { 0 };
	enum vmops_recover_action a;
	const char *why = "";
	char phase[16];
	int k;

	at.r = &scratch;
	vmops_mig_owner(at.owner, sizeof(at.owner), "vm-migrate --recover");
	k = take_lease(&at, id, &f.phase, phase, sizeof(phase), &e);
	if (k <= 0)
		goto done;
	rr->found++;
	/* A target that may have been resumed before is never followed by resuming the source. */
	at.resumed_target = !f.phase || !strcmp(f.phase, "switchover");
	observe_all(&at, &f);
	a = vmops_migrate_recover_decide(&f, &why);
	at.unreachable = f.unreachable;
	/* A target still loading gets time: wait (renewing) for it to settle. */
	for (int i = 0; a == VMOPS_RA_UNKNOWN && f.tgt_run == VMOPS_RR_INMIGRATE && i < 20 && !(intr && *intr); i++) {
		vmops_mig_sleep_ms(1000);
		if (vmops_mig_renew(&at, &e) < 0)
			goto done;
		vmops_hv_free(at.target);
		at.target = NULL;
		observe(&at, at.target_vmm_id, true, &f.tgt, &f.tgt_run, &at.target, NULL, &f.unreachable);
		a = vmops_migrate_recover_decide(&f, &why);
	}
	vmops_info("migration %lld (sandbox %s, phase %s): %s: %s", id, at.sandbox, f.phase ? f.phase : "(none)",
		   vmops_migrate_recover_action_name(a), why);
	k = act(&at, a, why, rr, &e);
	rr->receivers_killed += at.receivers_killed;
done:
	if (k < 0) {
		rr->errors++;
		snprintf(rr->last_error, sizeof(rr->last_error), "migration %lld: %.900s", id, e.msg);
	}
	vmops_hv_free(at.target);
	vmops_hv_free(at.source);
	vmops_mig_hosts_free(&at);
}

int vmops_migrate_recover(PGconn *c, bool dry_run, uint64_t lease_ms, struct vmops_recover_report *rr,
			  struct vmops_error *e)
{
	return vmops_migrate_recover_until(c, dry_run, lease_ms, NULL, rr, e);
}

int vmops_migrate_recover_until(PGconn *c, bool dry_run, uint64_t lease_ms, volatile sig_atomic_t *interrupted,
				struct vmops_recover_report *rr, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;

	memset(rr, 0, sizeof(*rr));
	r = vmops_db_q(c, e, "SELECT id FROM migrations WHERE (state IN " ACTIVE_STATES " OR phase = 'finish')"
		       " AND (lease_expires_at IS NULL OR lease_expires_at < now()) ORDER BY id");
	if (!r)
		return -1;
	for (int i = 0; i < PQntuples(r); i++) {
		if (dry_run) {
			rr->found++;
			continue;
		}
		if (interrupted && *interrupted) {
			rr->interrupted = true;
			break;
		}
		recover_one(c, vmops_db_get_ll(r, i, "id", -1), lease_ms ? lease_ms : VMOPS_MIGRATE_DEFAULT_LEASE_MS,
			    interrupted, rr);
	}
	if (interrupted && *interrupted && !dry_run)
		rr->interrupted = true;
	return 0;
}
