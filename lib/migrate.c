/* SPDX-License-Identifier: MIT */
/*
 * vm-migrate's engine: choosing a target and claiming it (the claim phase:
 * target VMM row + reservation (admission) + migration row (the in-flight
 * guard) + sandbox 'migrating', one transaction or nothing), then driving
 * the phases of lib/migrate/ in order.  Also the pure pieces: the ETA and
 * the low-water progress timer.
 */
#include <errno.h>
#include <netdb.h>
#include <sys/socket.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "exitcodes.h"
#include "fault.h"
#include "fleet.h"
#include "hv.h"
#include "images.h"
#include "log.h"
#include "migrate.h"
#include "migrate/attempt.h"
#include "proc.h"
#include "transport/transport.h"
#include "vm.h"

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

double vmops_migrate_eta_s(uint64_t remaining, unsigned connections, double link_rate_bps,
			   double rtt_s, uint64_t chunk, double cap_bps)
{
	double per_conn, rate;

	if (link_rate_bps <= 0 || connections == 0 || chunk == 0)
		return -1;
	per_conn = (double)chunk / ((double)chunk / link_rate_bps + (rtt_s > 0 ? rtt_s : 0));
	rate = per_conn * connections;
	if (cap_bps > 0 && rate > cap_bps)
		rate = cap_bps;
	return (double)remaining / rate;
}

void vmops_migrate_lowwater_init(struct vmops_migrate_lowwater *lw, uint64_t now)
{
	*lw = (struct vmops_migrate_lowwater){ .min_remaining = UINT64_MAX, .since_ms = now, .moved_ms = now };
}

static void lowwater_progress(struct vmops_migrate_lowwater *lw, uint64_t remaining, uint64_t now)
{
	lw->min_remaining = remaining;
	lw->since_ms = now;
	lw->passes = 0;
}

/*
 * A new pass began between the last sample and this one: it began with at
 * least `remaining` and at most `remaining + sent` bytes (sent: bytes moved
 * since the last sample).  It is progress only when even its upper bound is
 * below the smallest pass start so far, so that the sampling cannot make an
 * equal pass look smaller.
 */
static void lowwater_pass(struct vmops_migrate_lowwater *lw, uint64_t remaining, uint64_t sync, uint64_t sent,
			  uint64_t now)
{
	if (lw->sync <= 1 || remaining + sent < lw->min_remaining)
		lowwater_progress(lw, remaining, now);
	else
		lw->passes += sync - lw->sync;
	lw->sync = sync;
}

bool vmops_migrate_lowwater_stalled(struct vmops_migrate_lowwater *lw, uint64_t remaining, uint64_t sync,
				    uint64_t transferred, uint64_t now, uint64_t timeout_ms)
{
	uint64_t sent = transferred > lw->transferred ? transferred - lw->transferred : 0;

	if (!lw->seen) {
		*lw = (struct vmops_migrate_lowwater){ .min_remaining = remaining, .since_ms = now, .sync = sync,
						       .transferred = transferred, .moved_ms = now, .seen = true };
		return false;
	}
	if (sent) {
		lw->transferred = transferred;
		lw->moved_ms = now;
	}
	if (sync <= 1) {
		if (remaining < lw->min_remaining)
			lowwater_progress(lw, remaining, now);
	} else if (sync > lw->sync) {
		lowwater_pass(lw, remaining, sync, sent, now);
	}
	lw->stuck = now - lw->moved_ms > timeout_ms;
	if (lw->stuck)
		return true;
	return now - lw->since_ms > timeout_ms && (sync <= 1 || lw->passes > 0);
}

/* ---- the sandbox and its source ------------------------------------------ */

/* When a sandbox is found migrating: what to do if nobody is moving it. */
#define ALREADY_HINT " (if no vm-migrate is moving it, run 'vm-migrate --recover' once its lease has expired)"

struct source {
	long long sandbox_id, vmm_id, worker_id;
	char org[128];
	char worker[64];
	char status[16];
	long long memory_mb, vcpus;
	char *spec_json;
};

static int load_source(PGconn *c, const char *sandbox, struct source *s, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;

	r = vmops_db_q(c, e,
		       "SELECT s.id, s.status, s.org_id, s.memory_mb, s.vcpus, s.active_vmm_id,"
		       "  s.worker_id, w.name AS worker, s.launch_spec::text AS spec"
		       " FROM sandboxes s LEFT JOIN workers w ON w.id = s.worker_id WHERE s.name = $1",
		       sandbox);
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "sandbox %s does not exist", sandbox);
	s->sandbox_id = vmops_db_get_ll(r, 0, "id", -1);
	s->vmm_id = vmops_db_get_ll(r, 0, "active_vmm_id", -1);
	s->worker_id = vmops_db_get_ll(r, 0, "worker_id", -1);
	s->memory_mb = vmops_db_get_ll(r, 0, "memory_mb", 0);
	s->vcpus = vmops_db_get_ll(r, 0, "vcpus", 0);
	snprintf(s->status, sizeof(s->status), "%s", vmops_db_get(r, 0, "status"));
	snprintf(s->org, sizeof(s->org), "%s", vmops_db_get(r, 0, "org_id"));
	snprintf(s->worker, sizeof(s->worker), "%s",
		 vmops_db_get(r, 0, "worker") ? vmops_db_get(r, 0, "worker") : "");
	if (strcmp(s->status, "migrating") == 0)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s is already migrating%s", sandbox,
				 ALREADY_HINT);
	if (strcmp(s->status, "running") != 0)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s is %s, not running", sandbox, s->status);
	if (s->vmm_id < 0 || s->worker_id < 0)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s has no active VMM", sandbox);
	s->spec_json = strdup(vmops_db_get(r, 0, "spec"));
	if (!s->spec_json)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	return 0;
}

/* ---- choosing a target and taking the guard -------------------------------- */

struct claim {
	const struct vmops_migrate_opts *o;
	const struct source *src;
	const struct vmops_spec *spec;      /* the launch-spec policy checks it per target */
	const char *own_dir;                /* the source VMM's run directory */
	const char *owner;
	long long migration_id, target_vmm_id, target_worker_id;
	char target[64], address[256], run_dir[PATH_MAX];
	long long port_min, port_max;
	bool none;          /* no candidate now: wait */
	bool dry;
};

/*
 * Candidates with their free room, and what of their used room is only held
 * by VMMs that are destroyed but not reaped yet (vmm-reap frees it) or by
 * attempts whose lease expired (vm-migrate --recover frees it).
 */
static const char *candidates_sql =
	"SELECT w.id, w.name, w.state, w.migration_address, w.run_dir, w.port_min, w.port_max,"
	"  array_to_string(w.image_dirs, ':') AS image_dirs,"
	"  w.memory_mb - coalesce(r.mem, 0) AS free_mb, w.vcpus - coalesce(r.cpu, 0) AS free_cpu,"
	"  coalesce(r.dead_mem, 0) AS dead_mb, coalesce(r.dead_cpu, 0) AS dead_cpu, coalesce(r.dead_n, 0) AS dead_n,"
	"  coalesce(r.stale_mem, 0) AS stale_mb, coalesce(r.stale_cpu, 0) AS stale_cpu,"
	"  EXISTS (SELECT 1 FROM migrations m WHERE m.target_worker_id = w.id"
	"          AND m.state IN " ACTIVE_STATES ") AS busy,"
	"  NOT EXISTS (SELECT 1 FROM migrations m WHERE m.target_worker_id = w.id"
	"          AND m.state IN " ACTIVE_STATES " AND m.lease_expires_at >= now()) AS busy_only_stale"
	" FROM workers w"
	" LEFT JOIN (SELECT r.worker_id, sum(r.memory_mb) AS mem, sum(r.vcpus) AS cpu,"
	"            sum(r.memory_mb) FILTER (WHERE v.state IN ('destroyed', 'failed')) AS dead_mem,"
	"            sum(r.vcpus) FILTER (WHERE v.state IN ('destroyed', 'failed')) AS dead_cpu,"
	"            count(*) FILTER (WHERE v.state IN ('destroyed', 'failed')) AS dead_n,"
	"            sum(r.memory_mb) FILTER (WHERE x.stale) AS stale_mem,"
	"            sum(r.vcpus) FILTER (WHERE x.stale) AS stale_cpu"
	"            FROM reservations r JOIN vmms v ON v.id = r.vmm_id"
	"            CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM migrations m"
	"              WHERE (m.target_vmm_id = r.vmm_id AND m.state IN " ACTIVE_STATES ""
	"                     OR m.source_vmm_id = r.vmm_id AND m.phase = 'finish')"
	"                AND m.lease_expires_at < now()) AS stale) x"
	"            GROUP BY r.worker_id) r ON r.worker_id = w.id"
	" WHERE w.id <> $1 AND ($2::text IS NULL OR w.name = $2)"
	" ORDER BY free_mb DESC, free_cpu DESC, w.name";

/*
 * No target fits: is the room (or the target's one migration slot) only
 * held by leftovers?  Then say so first, and what frees it; "no worker can
 * take" only when nothing but real use explains it.
 */
static int no_target(struct claim *a, const PGresult *cand, struct vmops_error *e)
{
	const struct source *s = a->src;

	a->none = true;
	for (int i = 0; i < PQntuples(cand); i++) {
		long long dead_mb = vmops_db_get_ll(cand, i, "dead_mb", 0), stale_mb = vmops_db_get_ll(cand, i, "stale_mb", 0);
		long long dead_cpu = vmops_db_get_ll(cand, i, "dead_cpu", 0), stale_cpu = vmops_db_get_ll(cand, i, "stale_cpu", 0);
		bool busy = strcmp(vmops_db_get(cand, i, "busy"), "t") == 0;
		bool stale_busy = busy && strcmp(vmops_db_get(cand, i, "busy_only_stale"), "t") == 0;
		bool stale = stale_mb || stale_cpu || stale_busy, dead = dead_mb || dead_cpu;
		const char *w = vmops_db_get(cand, i, "name");

		if (strcmp(vmops_db_get(cand, i, "state"), "active") != 0 || (busy && !stale_busy) ||
		    vmops_db_get_ll(cand, i, "free_mb", 0) + dead_mb + stale_mb < s->memory_mb ||
		    vmops_db_get_ll(cand, i, "free_cpu", 0) + dead_cpu + stale_cpu < s->vcpus)
			continue;
		if (stale && !dead)
			return vmops_err(e, VMOPS_EXIT_NOCAPACITY,
					 "sandbox %s cannot move to %s: an earlier migration attempt whose lease expired"
					 " still holds %s; run vm-migrate --recover, then try again",
					 a->o->sandbox, w, stale_busy ? "it (one migration per target)" : "its room");
		return vmops_err(e, VMOPS_EXIT_NOCAPACITY,
				 "sandbox %s cannot move to %s: its room is held by %lld destroyed VMM(s) not yet reaped"
				 " (run vmm-reap)%s, then try again", a->o->sandbox, w, vmops_db_get_ll(cand, i, "dead_n", 0),
				 stale ? " and by an attempt whose lease expired (run vm-migrate --recover)" : "");
	}
	return vmops_err(e, VMOPS_EXIT_NOCAPACITY, "no worker can take sandbox %s (%lld MB, %lld vCPUs)%s%s",
			 a->o->sandbox, s->memory_mb, s->vcpus, a->o->to ? " on " : "", a->o->to ? a->o->to : "");
}

/*
 * The launch-spec policy on candidate i, before anything is reserved there:
 * the receiver will open the spec's files on that worker (images.h).  The
 * first refusal is kept in *refused (exit CONFLICT) for when none is left.
 */
static bool policy_refuses(const struct claim *a, const PGresult *cand, int i, struct vmops_error *refused)
{
	struct vmops_error pe = { 0 };

	if (vmops_images_check_recorded(a->spec, vmops_db_get(cand, i, "image_dirs"), a->own_dir, false, &pe) == 0)
		return false;
	if (!refused->code)
		vmops_err(refused, pe.code, "sandbox %s cannot move to %s: %s", a->o->sandbox,
			  vmops_db_get(cand, i, "name"), pe.msg);
	return true;
}

static int claim_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct claim *a = data;
	const struct source *s = a->src;
	char sid[24], wid[24], tvid[24], mem[24], cpu[24], lease[24], conns[24], srcw[24], svid[24];
	_cleanup_pgresult_ PGresult *cand = NULL, *v = NULL, *m = NULL;
	struct vmops_error refused = { 0 };
	int pick = -1;

	a->none = false;
	vmops_db_ll(srcw, s->worker_id);
	cand = vmops_db_q(c, e, candidates_sql, srcw, a->o->to);
	if (!cand)
		return -1;
	if (a->o->to) {
		if (strcmp(a->o->to, s->worker) == 0)
			return vmops_err(e, VMOPS_EXIT_CONFLICT,
					 "--to %s: that is the source worker of sandbox %s", a->o->to, a->o->sandbox);
		if (PQntuples(cand) == 0)
			return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", a->o->to);
		if (strcmp(vmops_db_get(cand, 0, "state"), "active") != 0)
			return vmops_err(e, VMOPS_EXIT_CONFLICT, "worker %s is %s, not accepting migrations",
					 a->o->to, vmops_db_get(cand, 0, "state"));
	}
	for (int i = 0; i < PQntuples(cand) && pick < 0; i++) {
		if (strcmp(vmops_db_get(cand, i, "state"), "active") != 0 ||
		    strcmp(vmops_db_get(cand, i, "busy"), "t") == 0 ||
		    vmops_db_get_ll(cand, i, "free_mb", 0) < s->memory_mb ||
		    vmops_db_get_ll(cand, i, "free_cpu", 0) < s->vcpus || policy_refuses(a, cand, i, &refused))
			continue;
		pick = i;
	}
	if (pick < 0 && refused.code)
		return *e = refused, -1;
	if (pick < 0)
		return no_target(a, cand, e);
	a->target_worker_id = vmops_db_get_ll(cand, pick, "id", -1);
	snprintf(a->target, sizeof(a->target), "%s", vmops_db_get(cand, pick, "name"));
	snprintf(a->address, sizeof(a->address), "%s", vmops_db_get(cand, pick, "migration_address"));
	a->port_min = vmops_db_get_ll(cand, pick, "port_min", 49152);
	a->port_max = vmops_db_get_ll(cand, pick, "port_max", 49407);
	if (vmops_vm_worker_run_dir(vmops_db_get(cand, pick, "run_dir"), a->target, a->run_dir,
				    sizeof(a->run_dir), e) < 0)
		return -1;
	if (a->o->dry_run) {
		a->dry = true;
		return 0;
	}
	vmops_db_ll(sid, s->sandbox_id);
	vmops_db_ll(wid, a->target_worker_id);
	vmops_db_ll(mem, s->memory_mb);
	vmops_db_ll(cpu, s->vcpus);
	vmops_db_ll(svid, s->vmm_id);
	/* The receiver's VMM and its reservation: admitted by the database. */
	v = vmops_db_q(c, e,
		       "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state)"
		       " SELECT $1, $2, hypervisor, 'starting' FROM vmms WHERE id = $3 RETURNING id",
		       sid, wid, svid);
	if (!v)
		return -1;
	a->target_vmm_id = vmops_db_get_ll(v, 0, "id", -1);
	vmops_db_ll(tvid, a->target_vmm_id);
	if (vmops_db_x(c, e, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
			     " VALUES ($1, $2, $3, $4)", tvid, wid, mem, cpu) < 0)
		return -1;
	/* The in-flight guard: partial unique indexes on sandbox and target. */
	m = vmops_db_q(c, e,
		       "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, source_vmm_id,"
		       " target_vmm_id, state, phase, generation, connections, lease_owner, lease_expires_at, time_started)"
		       " VALUES ($1, $2, $3, $4, $5, 'preparing', 'claim', 1, $6, $7, now() + $8 * interval '1 millisecond', now())"
		       " RETURNING id",
		       sid, srcw, wid, svid, tvid, vmops_db_ll(conns, a->o->connections), a->owner,
		       vmops_db_ll(lease, (long long)a->o->lease_ms));
	if (!m)
		return -1;
	a->migration_id = vmops_db_get_ll(m, 0, "id", -1);
	{
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%.4000s/vmm-%lld", a->run_dir, a->target_vmm_id);
		if (vmops_db_x(c, e, "UPDATE vmms SET run_dir = $2 WHERE id = $1", tvid, dir) < 0)
			return -1;
	}
	/* Only a running sandbox starts migrating (re-checked under the lock). */
	{
		_cleanup_pgresult_ PGresult *u = vmops_db_q(c, e,
			"UPDATE sandboxes SET status = 'migrating', target_vmm_id = $2"
			" WHERE id = $1 AND status = 'running' AND active_vmm_id = $3 RETURNING id", sid, tvid, svid);
		if (!u)
			return -1;
		if (PQntuples(u) != 1)
			return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s changed while choosing a target",
					 a->o->sandbox);
	}
	return vmops_audit(c, a->o->program ? a->o->program : "vm-migrate", "migration-start", "migration",
			   a->migration_id, NULL, NULL,
			   a->target, e);
}

/* Poll schedule while waiting for a target: every 5 s for the first minute, then every 15 s. */
static uint64_t poll_interval(uint64_t waited_ms)
{
	const char *scale = getenv("VMOPS_TEST_POLL_SCALE");  /* tests only: shrink the schedule */
	uint64_t ms = waited_ms < 60000 ? 5000 : 15000;

	if (scale && atoi(scale) > 0)
		ms /= (uint64_t)atoi(scale);
	return ms;
}

static bool interrupted(const struct vmops_migrate_opts *o)
{
	return o->interrupted && *o->interrupted;
}

/* VMOPS_FAULT=claim:cut-after-commit: the claim committed, its reply "lost". */
static int claim_commit_fault(PGconn *c, struct claim *a, struct vmops_error *e)
{
	if (a->dry || vmops_fault_commit("claim") != VMOPS_FAULT_COMMIT_CUT_AFTER)
		return 0;
	shutdown(PQsocket(c), SHUT_RDWR);
	return vmops_err(e, VMOPS_EXIT_DB, "database connection lost during COMMIT (VMOPS_FAULT)");
}

/* After a lost connection: is there a claim of ours for this sandbox?  Fill *a from it. */
static int claim_read_back(PGconn *c, struct claim *a, struct vmops_error *e)
{
	char sid[24];
	_cleanup_pgresult_ PGresult *r = vmops_db_q(c, e,
		"SELECT m.id, m.target_vmm_id, w.id AS wid, w.name, w.migration_address, w.port_min, w.port_max,"
		"  v.run_dir"
		" FROM migrations m JOIN workers w ON w.id = m.target_worker_id JOIN vmms v ON v.id = m.target_vmm_id"
		" WHERE m.sandbox_id = $1 AND m.lease_owner = $2 AND m.phase = 'claim' AND m.generation = 1",
		vmops_db_ll(sid, a->src->sandbox_id), a->owner);

	if (!r)
		return -1;
	if (PQntuples(r) != 1)
		return 0;
	a->migration_id = vmops_db_get_ll(r, 0, "id", -1);
	a->target_vmm_id = vmops_db_get_ll(r, 0, "target_vmm_id", -1);
	a->target_worker_id = vmops_db_get_ll(r, 0, "wid", -1);
	snprintf(a->target, sizeof(a->target), "%s", vmops_db_get(r, 0, "name"));
	snprintf(a->address, sizeof(a->address), "%s", vmops_db_get(r, 0, "migration_address"));
	a->port_min = vmops_db_get_ll(r, 0, "port_min", 49152);
	a->port_max = vmops_db_get_ll(r, 0, "port_max", 49407);
	/* The VMM's run dir is RUN_DIR/vmm-ID: the worker's part is its parent. */
	snprintf(a->run_dir, sizeof(a->run_dir), "%s", vmops_db_get(r, 0, "run_dir"));
	if (strrchr(a->run_dir, '/'))
		*strrchr(a->run_dir, '/') = '\0';
	return 1;
}

/*
 * The connection was lost during the claim (nothing physical has happened
 * yet): reconnect for up to the lease length, then read back whether the
 * claim committed.  1: it had (*a filled), 0: it had not (claim again), -1.
 */
static int claim_reconnect(PGconn *c, struct claim *a, struct vmops_error *e)
{
	uint64_t until = now_ms() + a->o->lease_ms;
	int k;

	while (PQreset(c), PQstatus(c) != CONNECTION_OK) {
		if (now_ms() >= until || interrupted(a->o))
			return vmops_err(e, VMOPS_EXIT_DB, "database unreachable while claiming a target (%s)",
					 PQerrorMessage(c));
		sleep_ms(500);
	}
	k = claim_read_back(c, a, e);
	if (k >= 0)
		vmops_warn("sandbox %s: connection lost while claiming a target; the claim %s", a->o->sandbox,
			   k ? "had committed" : "had not committed: claiming again");
	return k;
}

static int claim_target(PGconn *c, struct claim *a, struct vmops_migrate_report *rep,
			struct vmops_error *e)
{
	uint64_t start = now_ms();
	int lost = 0;

	for (;;) {
		struct vmops_error ce = { 0 };
		uint64_t waited, next;

		if (vmops_db_tx(c, VMOPS_READ_COMMITTED, claim_tx, a, &ce) == 0 &&
		    claim_commit_fault(c, a, &ce) == 0) {
			rep->wait_ms = now_ms() - start;
			return 0;
		}
		if (ce.code == VMOPS_EXIT_DB && !a->dry) {
			int k;

			/* A server that keeps dropping us is not ridden out forever. */
			if (++lost > 5) {
				*e = ce;
				return vmops_err_prefix(e, "connection lost %d times while claiming a target",
							lost - 1);
			}
			k = claim_reconnect(c, a, &ce);
			if (k < 0) {
				*e = ce;
				return -1;
			}
			if (k > 0) {
				rep->wait_ms = now_ms() - start;
				return 0;
			}
			continue;
		}
		/* Lost a race for the guard or the room: choose again right away. */
		if (strcmp(ce.sqlstate, "23505") == 0 || strcmp(ce.sqlstate, "VO001") == 0 ||
		    strcmp(ce.sqlstate, "VO002") == 0 || strcmp(ce.sqlstate, "40P01") == 0 ||
		    strcmp(ce.sqlstate, "40001") == 0) {
			if (strstr(ce.msg, "migrations_active_sandbox_uq")) {
				*e = ce;
				return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s is already migrating" ALREADY_HINT,
						 a->o->sandbox);
			}
			vmops_debug("target claim lost a race (%s); choosing again", ce.msg);
			sleep_ms(50 + vmops_db_jitter_ms(200));
			continue;
		}
		if (!a->none || a->o->dry_run) {
			/* A dry run reports the situation now; it never waits for room. */
			*e = ce;
			return -1;
		}
		waited = now_ms() - start;
		if (waited >= a->o->wait_target_ms) {
			*e = ce;
			rep->wait_ms = waited;
			if (a->o->wait_target_ms)
				snprintf(e->msg + strlen(e->msg), sizeof(e->msg) - strlen(e->msg),
					 " after waiting %llus", (unsigned long long)(waited / 1000));
			return -1;
		}
		next = poll_interval(waited);
		if (waited + next > a->o->wait_target_ms)
			next = a->o->wait_target_ms - waited;
		vmops_log(VMOPS_LOG_NOTICE, "no free target for sandbox %s yet; checking again in %llus", a->o->sandbox,
			   (unsigned long long)((next + 999) / 1000));
		for (uint64_t slept = 0; slept < next; slept += 100) {
			if (interrupted(a->o))
				return vmops_err(e, VMOPS_EXIT_INTERRUPTED, "interrupted while waiting for a target");
			sleep_ms(100);
		}
	}
}


/* ---- the attempt, phase by phase ---------------------------------------------- */

/*
 * The source did not answer: was it taken from under us (another migration
 * claimed the sandbox, or moved it and stopped this VMM)?  Then that, not
 * the hypervisor, is the error: CONFLICT, and true.
 */
static bool source_changed(PGconn *c, const char *sandbox, const struct source *was,
			   struct vmops_error *e)
{
	struct vmops_error le = { 0 };
	struct source now = { 0 };
	bool changed;

	if (load_source(c, sandbox, &now, &le) < 0) {
		changed = le.code == VMOPS_EXIT_CONFLICT || le.code == VMOPS_EXIT_NOTFOUND;
		if (changed)
			vmops_err(e, le.code, "%s (changed while vm-migrate was preparing)", le.msg);
	} else {
		changed = now.vmm_id != was->vmm_id;
		if (changed)
			vmops_err(e, VMOPS_EXIT_CONFLICT,
				  "sandbox %s changed while vm-migrate was preparing: it now runs on VMM %lld (%s)",
				  sandbox, now.vmm_id, now.worker);
	}
	free(now.spec_json);
	return changed;
}

/* Everything up to the claim: the sandbox, its spec, a --to that can work, a source that answers. */
/* Does this kind of hypervisor migrate live (an unknown kind: let the attach say)? */
static bool hv_migrates(const char *kind)
{
	const struct vmops_hv_driver *d = vmops_hv_driver_find(kind);

	return !d || (d->prepare_incoming && d->send);
}

static int prepare(struct attempt *at, const struct vmops_migrate_opts *o, struct source *src, struct vmops_spec **spec,
		   struct vmops_vmm_info *sinfo, struct vmops_migrate_report *r, struct vmops_error *e)
{
	PGconn *c = at->c;
	struct vmops_hv *h;

	if (load_source(c, o->sandbox, src, e) < 0)
		return -1;
	r->sandbox_id = src->sandbox_id;
	r->source_vmm_id = src->vmm_id;
	r->memory_bytes = (uint64_t)src->memory_mb << 20;
	snprintf(r->source_worker, sizeof(r->source_worker), "%s", src->worker);
	*spec = vmops_spec_parse(src->spec_json, (size_t)-1, e);
	if (!*spec) {
		vmops_err_prefix(e, "sandbox %s: its launch spec cannot recreate the VM", o->sandbox);
		e->code = VMOPS_EXIT_CONFLICT;
		return -1;
	}
	if (!hv_migrates((*spec)->hypervisor))
		return vmops_err(e, VMOPS_EXIT_CONFLICT,
				 "sandbox %s: %s has no live migration; move it with snapshot-prep hibernate --sandbox %s --bundle-dir DIR, then snapshot-prep wake --sandbox %s --worker %s",
				 o->sandbox, (*spec)->hypervisor, o->sandbox, o->sandbox,
				 o->to ? o->to : "OTHER");
	if (o->to) {
		_cleanup_pgresult_ PGresult *w = vmops_db_q(c, e, "SELECT state FROM workers WHERE name = $1", o->to);
		if (!w)
			return -1;
		if (strcmp(o->to, src->worker) == 0)
			return vmops_err(e, VMOPS_EXIT_CONFLICT, "--to %s: that is the source worker of sandbox %s",
					 o->to, o->sandbox);
		if (PQntuples(w) == 0)
			return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", o->to);
		if (strcmp(vmops_db_get(w, 0, "state"), "active") != 0)
			return vmops_err(e, VMOPS_EXIT_CONFLICT, "worker %s is %s, not accepting migrations", o->to,
					 vmops_db_get(w, 0, "state"));
	}
	/* The source must answer before anything is claimed; waiting for a target
	 * may take minutes, so do not hold its control connection meanwhile. */
	if (vmops_vm_load_info(c, src->vmm_id, sinfo, e) < 0)
		return -1;
	vmops_fault_point("prepare");
	at->source_vmm_id = src->vmm_id;
	h = vmops_mig_attach(at, src->vmm_id, sinfo, 5000, e);
	if (!h) {
		if (e->code == VMOPS_EXIT_UNREACHABLE)   /* its host: nothing was claimed */
			return vmops_err_prefix(e, "sandbox %s: source vmm %lld", o->sandbox, src->vmm_id);
		if (source_changed(c, o->sandbox, src, e))
			return -1;
		e->code = VMOPS_EXIT_HYPERVISOR;
		return vmops_err_prefix(e, "sandbox %s: source vmm %lld", o->sandbox, src->vmm_id);
	}
	vmops_hv_free(h);
	return 0;
}

static void attempt_from_claim(struct attempt *at, const struct claim *cl, const struct source *src)
{
	at->migration_id = cl->migration_id;
	at->generation = 1;
	at->lease_until = now_ms() + at->lease_ms;
	at->sandbox_id = src->sandbox_id;
	at->source_vmm_id = src->vmm_id;
	at->source_worker_id = src->worker_id;
	at->target_vmm_id = cl->target_vmm_id;
	at->target_worker_id = cl->target_worker_id;
	at->downtime_ms = -1;
	snprintf(at->target_worker, sizeof(at->target_worker), "%s", cl->target);
	snprintf(at->target_run_dir, sizeof(at->target_run_dir), "%.4000s/vmm-%lld", cl->run_dir, cl->target_vmm_id);
}

/* Multiple connections need multifd on both ends: fall back to one, never hang. */
static void choose_params(struct attempt *at, const struct vmops_migrate_opts *o)
{
	struct vmops_error xe = { 0 };

	at->mp.connections = o->connections;
	at->mp.max_bandwidth = o->max_bandwidth;
	at->mp.downtime_limit_ms = o->downtime_limit_ms;
	at->mp.auto_converge = o->auto_converge;
	if (at->mp.connections > 1) {
		int s = vmops_hv_supports_multifd(at->source, &xe);
		if (s != 1) {
			vmops_warn("sandbox %s: the source cannot do multiple connections%s%s; using one",
				   o->sandbox, s < 0 ? ": " : "", s < 0 ? xe.msg : "");
			at->mp.connections = 1;
		}
	}
}

/*
 * The source does not answer: is its process gone (a SIGKILLed process closes
 * its sockets before it is a zombie)?  Asked of its own host: 1 gone, 0 not
 * gone, -1 its host does not answer (unknown: nothing may be undone).
 */
static int source_gone(struct attempt *at, const struct vmops_vmm_info *si)
{
	struct vmops_vm_status st;
	struct vmops_error e = { 0 };

	if (at->source && vmops_hv_status(at->source, &st, &e) == 0)
		return 0;
	for (int i = 0; i < 30; i++) {
		int p = vmops_mig_process(at, at->source_vmm_id, si, &e);

		if (p == VMOPS_PROC_DEAD || p == VMOPS_PROC_REUSED)
			return 1;
		if (p < 0)
			return e.code == VMOPS_EXIT_UNREACHABLE ? -1 : 0;
		sleep_ms(100);
	}
	return 0;
}

/* After the target may have run: nothing goes back to the source. */
static int after_switchover_failed(struct attempt *at, struct vmops_migrate_report *r, struct vmops_error *e)
{
	struct vmops_error xe = *e, le = { 0 };

	if (at->lost_lease || e->code == VMOPS_EXIT_UNKNOWN || e->code == VMOPS_EXIT_UNREACHABLE ||
	    vmops_hv_is_alive(at->target)) {
		/* Alive but not answering is unknown, not dead: leave it to --recover. */
		snprintf(r->state, sizeof(r->state), "unknown");
		vmops_mig_release_lease(at);
		e->code = at->lost_lease || xe.code == VMOPS_EXIT_UNREACHABLE ? xe.code : VMOPS_EXIT_UNKNOWN;
		return vmops_err_prefix(e, "sandbox %s: migration %lld: nothing more was done; run vm-migrate --recover",
					at->sandbox, at->migration_id);
	}
	snprintf(r->state, sizeof(r->state), "lost");
	snprintf(r->error, sizeof(r->error), "target lost after switchover: %.900s", xe.msg);
	if (vmops_mig_phase_lost(at, r->error, &le) < 0)
		vmops_warn("migration %lld: %s", at->migration_id, le.msg);
	return vmops_err(e, VMOPS_EXIT_HYPERVISOR, "sandbox %s: %s; sandbox marked error, billing closed",
			 at->sandbox, r->error);
}

static int run_phases(struct attempt *at, const struct vmops_spec *spec, const struct claim *cl,
		      struct vmops_migrate_report *r, struct vmops_error *e)
{
	bool never_ran = true;

	if (vmops_mig_phase_receiver(at, spec, cl->run_dir, cl->address, cl->port_min, cl->port_max, e) < 0 ||
	    vmops_mig_phase_transfer(at, e) < 0)
		return 1;
	if (vmops_mig_phase_switchover(at, at->o->progress_timeout_ms, &never_ran, e) < 0)
		return never_ran ? 1 : after_switchover_failed(at, r, e);
	if (vmops_mig_phase_finish(at, e) < 0) {
		if (at->moved) {
			/* The sandbox runs on the target; only the old source is left over. */
			vmops_warn("sandbox %s: %s; vm-migrate --recover will retry", at->sandbox, e->msg);
			snprintf(r->state, sizeof(r->state), "completed");
			return 0;
		}
		if (!at->lost_lease && (e->code == VMOPS_EXIT_UNKNOWN || e->code == VMOPS_EXIT_HYPERVISOR))
			return after_switchover_failed(at, r, e);
		snprintf(r->state, sizeof(r->state), "unrecorded");
		return vmops_err_prefix(e, "migration %lld: the target runs the guest but the end could not be "
					"recorded; run vm-migrate --recover", at->migration_id);
	}
	snprintf(r->state, sizeof(r->state), "completed");
	return 0;
}

/* A failure before the target ever ran: the source keeps the guest, or, if it is gone, the VM is lost. */
static void undo_before_switchover(struct attempt *at, const struct vmops_vmm_info *sinfo,
				   struct vmops_migrate_report *r, struct vmops_error *e)
{
	struct vmops_error xe = *e, fe = { 0 };
	int gone;

	snprintf(r->error, sizeof(r->error), "%s", e->msg);
	snprintf(r->state, sizeof(r->state), "%s", xe.code == VMOPS_EXIT_INTERRUPTED ? "cancelled" : "failed");
	if (at->lost_lease) {
		/* Someone else owns the attempt now: touch nothing. */
		snprintf(r->state, sizeof(r->state), "unknown");
	} else if ((gone = source_gone(at, sinfo)) < 0) {
		/* The source's host does not answer: it may have sent everything; undo nothing. */
		snprintf(r->state, sizeof(r->state), "unknown");
		vmops_mig_release_lease(at);
		xe.code = VMOPS_EXIT_UNREACHABLE;
		vmops_err_prefix(&xe, "sandbox %s: the source's host does not answer: nothing undone, the attempt is "
				 "left to vm-migrate --recover", at->sandbox);
	} else if (gone) {
		snprintf(r->state, sizeof(r->state), "lost");
		if (vmops_mig_phase_lost(at, r->error, &fe) < 0)
			vmops_warn("migration %lld: %s", at->migration_id, fe.msg);
		xe.code = VMOPS_EXIT_HYPERVISOR;
		vmops_err_prefix(&xe, "sandbox %s: the source is gone; sandbox marked error, billing closed",
				 at->sandbox);
	} else if (vmops_mig_phase_rollback(at, r->state, r->error, &fe) < 0) {
		if (!at->lost_lease && (fe.code == VMOPS_EXIT_UNREACHABLE || fe.code == VMOPS_EXIT_UNKNOWN)) {
			/* The receiver's host did not answer: it is left to --recover (exit 17 or 14). */
			snprintf(r->state, sizeof(r->state), "unknown");
			vmops_err(&xe, fe.code, "sandbox %s: %.300s; %.600s", at->sandbox, r->error, fe.msg);
		} else {
			vmops_warn("migration %lld: rolling back: %s", at->migration_id, fe.msg);
		}
		if (at->lost_lease)
			snprintf(r->state, sizeof(r->state), "unknown");
	}
	*e = xe;
}

int vmops_migrate(PGconn *c, const struct vmops_migrate_opts *o, struct vmops_migrate_report *r,
		  struct vmops_error *e)
{
	struct source src = { 0 };
	struct claim cl = { .o = o, .src = &src };
	const char *program = o->program ? o->program : "vm-migrate";
	struct attempt at = { .c = c, .o = o, .r = r, .actor = program, .lease_ms = o->lease_ms };
	struct vmops_vmm_info sinfo;
	struct vmops_spec *spec = NULL;
	uint64_t start = now_ms();
	int rc = -1, k;

	memset(r, 0, sizeof(*r));
	r->eta_s = -1;
	r->downtime_ms = r->total_time_ms = r->setup_time_ms = -1;
	r->connections_requested = o->connections;
	snprintf(r->sandbox, sizeof(r->sandbox), "%s", o->sandbox);
	snprintf(r->state, sizeof(r->state), "failed");
	snprintf(at.sandbox, sizeof(at.sandbox), "%s", o->sandbox);
	cl.owner = vmops_mig_owner(at.owner, sizeof(at.owner), program);

	vmops_fault_point("claim");
	if (prepare(&at, o, &src, &spec, &sinfo, r, e) < 0)
		goto out;
	cl.spec = spec;
	cl.own_dir = sinfo.run_dir[0] ? sinfo.run_dir : NULL;
	if (claim_target(c, &cl, r, e) < 0)
		goto out;
	snprintf(r->target_worker, sizeof(r->target_worker), "%s", cl.target);
	if (cl.dry) {
		snprintf(r->state, sizeof(r->state), "dry-run");
		rc = 0;
		goto out;
	}
	r->migration_id = cl.migration_id;
	r->target_vmm_id = cl.target_vmm_id;
	if (o->on_claim)
		o->on_claim(o->data, r);
	attempt_from_claim(&at, &cl, &src);
	vmops_info("migration %lld: sandbox %s from %s to %s", cl.migration_id, o->sandbox, src.worker, cl.target);
	at.source = vmops_mig_attach(&at, src.vmm_id, &sinfo, 5000, e);
	if (!at.source) {
		if (e->code != VMOPS_EXIT_UNREACHABLE && e->code != VMOPS_EXIT_UNKNOWN)
			e->code = VMOPS_EXIT_HYPERVISOR;
		vmops_err_prefix(e, "sandbox %s: source vmm %lld", o->sandbox, src.vmm_id);
		k = 1;
	} else {
		choose_params(&at, o);
		k = run_phases(&at, spec, &cl, r, e);
	}
	if (k == 0)
		rc = 0;
	if (k == 1)
		undo_before_switchover(&at, &sinfo, r, e);
out:
	r->wall_ms = now_ms() - start;
	if (rc < 0 && !r->error[0])
		snprintf(r->error, sizeof(r->error), "%s", e->msg);
	if (at.target)
		vmops_hv_free(at.target);
	if (at.source)
		vmops_hv_free(at.source);
	vmops_mig_hosts_free(&at);
	vmops_spec_free(spec);
	free(src.spec_json);
	return rc;
}
