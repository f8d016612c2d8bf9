/* SPDX-License-Identifier: MIT */
/*
 * vm-migrate's engine.  Every change the database sees is one transaction:
 *   claim     target VMM row + reservation (admission) + migration row (the
 *             in-flight guard) + sandbox 'migrating', or nothing;
 *   started   receiver identity (pid, start time, sockets), 'transferring';
 *   success   sandbox moves, source VMM destroyed, ledger closes the source
 *             event and opens the target event;
 *   failure   receiver destroyed + reservation freed, attempt failed,
 *             sandbox back to running on the source (billing untouched);
 *   lost      after switchover with the target gone: sandbox error, billing
 *             closed, both VMMs out.
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
#include "fleet.h"
#include "hv.h"
#include "log.h"
#include "migrate.h"
#include "proc.h"
#include "vm.h"

#define ACTIVE_STATES "('queued', 'preparing', 'transferring', 'switching')"

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

static const char *lease_owner(void)
{
	static char owner[300];

	if (!owner[0])
		snprintf(owner, sizeof(owner), "vm-migrate %s pid %d", vmops_db_actor(), (int)getpid());
	return owner;
}

/* ---- the sandbox and its source ------------------------------------------ */

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
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s is already migrating", sandbox);
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
	long long migration_id, target_vmm_id, target_worker_id;
	char target[64], address[256], run_dir[PATH_MAX];
	long long port_min, port_max;
	bool none;          /* no candidate now: wait */
	bool dry;
};

static const char *candidates_sql =
	"SELECT w.id, w.name, w.state, w.migration_address, w.run_dir, w.port_min, w.port_max,"
	"  w.memory_mb - coalesce(r.mem, 0) AS free_mb, w.vcpus - coalesce(r.cpu, 0) AS free_cpu,"
	"  EXISTS (SELECT 1 FROM migrations m WHERE m.target_worker_id = w.id"
	"          AND m.state IN " ACTIVE_STATES ") AS busy"
	" FROM workers w"
	" LEFT JOIN (SELECT worker_id, sum(memory_mb) AS mem, sum(vcpus) AS cpu FROM reservations"
	"            GROUP BY worker_id) r ON r.worker_id = w.id"
	" WHERE w.id <> $1 AND ($2::text IS NULL OR w.name = $2)"
	" ORDER BY free_mb DESC, free_cpu DESC, w.name";

static int claim_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct claim *a = data;
	const struct source *s = a->src;
	char sid[24], wid[24], tvid[24], mem[24], cpu[24], lease[24], conns[24], srcw[24], svid[24];
	_cleanup_pgresult_ PGresult *cand = NULL, *v = NULL, *m = NULL;
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
		    vmops_db_get_ll(cand, i, "free_cpu", 0) < s->vcpus)
			continue;
		pick = i;
	}
	if (pick < 0) {
		a->none = true;
		return vmops_err(e, VMOPS_EXIT_NOCAPACITY, "no worker can take sandbox %s (%lld MB, %lld vCPUs)%s%s",
				 a->o->sandbox, s->memory_mb, s->vcpus, a->o->to ? " on " : "",
				 a->o->to ? a->o->to : "");
	}
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
		       " target_vmm_id, state, connections, lease_owner, lease_expires_at, time_started)"
		       " VALUES ($1, $2, $3, $4, $5, 'preparing', $6, $7, now() + $8 * interval '1 millisecond', now())"
		       " RETURNING id",
		       sid, srcw, wid, svid, tvid, vmops_db_ll(conns, a->o->connections), lease_owner(),
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
	return vmops_audit(c, "vm-migrate", "migration-start", "migration", a->migration_id, NULL, NULL,
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

static int claim_target(PGconn *c, struct claim *a, struct vmops_migrate_report *rep,
			struct vmops_error *e)
{
	uint64_t start = now_ms();

	for (;;) {
		struct vmops_error ce = { 0 };
		uint64_t waited, next;

		if (vmops_db_tx(c, VMOPS_READ_COMMITTED, claim_tx, a, &ce) == 0) {
			rep->wait_ms = now_ms() - start;
			return 0;
		}
		/* Lost a race for the guard or the room: choose again right away. */
		if (strcmp(ce.sqlstate, "23505") == 0 || strcmp(ce.sqlstate, "VO001") == 0 ||
		    strcmp(ce.sqlstate, "VO002") == 0 || strcmp(ce.sqlstate, "40P01") == 0 ||
		    strcmp(ce.sqlstate, "40001") == 0) {
			if (strstr(ce.msg, "migrations_active_sandbox_uq")) {
				*e = ce;
				return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s is already migrating",
						 a->o->sandbox);
			}
			vmops_debug("target claim lost a race (%s); choosing again", ce.msg);
			sleep_ms(50 + vmops_db_jitter_ms(200));
			continue;
		}
		if (!a->none) {
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

/* ---- finishing: one transaction each ----------------------------------------- */

struct finish {
	long long migration_id, sandbox_id, source_vmm_id, target_vmm_id, target_worker_id;
	const char *state;          /* completed | failed | cancelled */
	const char *error;
	bool lost;                  /* switchover happened but the target is gone */
	int64_t downtime_ms;
	uint64_t total, transferred;
	unsigned conns_used;
	const char *actor;          /* program name for the audit row */
};

static int finish_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct finish *f = data;
	char mid[24], sid[24], svid[24], tvid[24], twid[24], dt[24], tot[24], tr[24], cu[24];
	_cleanup_pgresult_ PGresult *m = NULL;

	vmops_db_ll(mid, f->migration_id);
	vmops_db_ll(sid, f->sandbox_id);
	vmops_db_ll(svid, f->source_vmm_id);
	vmops_db_ll(tvid, f->target_vmm_id);
	vmops_db_ll(twid, f->target_worker_id);
	/* Only an attempt that is still active is finished, and only once. */
	m = vmops_db_q(c, e, "SELECT state FROM migrations WHERE id = $1 FOR UPDATE", mid);
	if (!m)
		return -1;
	if (PQntuples(m) != 1 ||
	    !strstr(ACTIVE_STATES, vmops_db_get(m, 0, "state")))
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "migration %lld was already finished (%s)",
				 f->migration_id, PQntuples(m) ? vmops_db_get(m, 0, "state") : "gone");
	if (vmops_db_x(c, e,
		       "UPDATE migrations SET state = $2, error = $3, time_finished = now(),"
		       " time_switched = CASE WHEN $2 = 'completed' OR $7 THEN coalesce(time_switched, now()) END,"
		       " downtime_ms = nullif($4, '-1')::bigint, bytes_total = $5, bytes_transferred = $6,"
		       " connections_used = nullif($8, '0')::int, lease_expires_at = NULL WHERE id = $1",
		       mid, f->lost ? "failed" : f->state, f->error, vmops_db_ll(dt, f->downtime_ms),
		       vmops_db_ll(tot, (long long)f->total), vmops_db_ll(tr, (long long)f->transferred),
		       f->lost ? "true" : "false", vmops_db_ll(cu, f->conns_used)) < 0)
		return -1;
	if (strcmp(f->state, "completed") == 0 && !f->lost) {
		/* The sandbox moves; the ledger closes the source event and opens the target's. */
		if (vmops_db_x(c, e, "UPDATE vmms SET state = 'running' WHERE id = $1", tvid) < 0 ||
		    vmops_db_x(c, e, "UPDATE vmms SET state = 'destroyed' WHERE id = $1", svid) < 0 ||
		    vmops_db_x(c, e, "UPDATE sandboxes SET status = 'running', worker_id = $2, active_vmm_id = $3,"
				     " target_vmm_id = NULL WHERE id = $1", sid, twid, tvid) < 0 ||
		    vmops_db_x(c, e, "UPDATE scale_events SET ended_at = greatest(now(), started_at)"
				     " WHERE sandbox_id = $1 AND ended_at IS NULL", sid) < 0 ||
		    vmops_db_x(c, e, "INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)"
				     " SELECT id, org_id, $2, $3, memory_mb, vcpus FROM sandboxes WHERE id = $1",
			       sid, twid, tvid) < 0)
			return -1;
	} else if (f->lost) {
		/* After switchover with no target: the VM is gone; stop billing for it. */
		if (vmops_db_x(c, e, "UPDATE vmms SET state = 'failed' WHERE id = $1", tvid) < 0 ||
		    vmops_db_x(c, e, "DELETE FROM reservations WHERE vmm_id = $1", tvid) < 0 ||
		    vmops_db_x(c, e, "UPDATE vmms SET state = 'destroyed' WHERE id = $1", svid) < 0 ||
		    vmops_db_x(c, e, "UPDATE sandboxes SET status = 'error', target_vmm_id = NULL WHERE id = $1", sid) < 0)
			return -1;
	} else {
		/* Rolled back: the source keeps running and billing; the receiver is gone. */
		if (vmops_db_x(c, e, "UPDATE vmms SET state = 'destroyed' WHERE id = $1", tvid) < 0 ||
		    vmops_db_x(c, e, "DELETE FROM reservations WHERE vmm_id = $1", tvid) < 0 ||
		    vmops_db_x(c, e, "UPDATE sandboxes SET status = 'running', target_vmm_id = NULL"
				     " WHERE id = $1 AND status = 'migrating'", sid) < 0)
			return -1;
	}
	return vmops_audit(c, f->actor, f->lost ? "migration-lost" : f->state, "migration",
			   f->migration_id, NULL, NULL, f->error, e);
}

static int finish(PGconn *c, struct finish *f, struct vmops_error *e)
{
	/* The outcome must reach the database: retry a lost connection a few times. */
	for (int i = 0; i < 5; i++) {
		if (vmops_db_tx(c, VMOPS_READ_COMMITTED, finish_tx, f, e) == 0)
			return 0;
		if (e->code != VMOPS_EXIT_DB)
			return -1;
		vmops_warn("migration %lld: recording the outcome failed (%s); retrying", f->migration_id, e->msg);
		sleep_ms(1000);
		PQreset(c);
	}
	return -1;
}

static int kill_receiver(PGconn *c, long long vmm_id, struct vmops_recover_report *rr);

/*
 * A port of the worker's migration range that is free now, starting at an
 * offset derived from the attempt so concurrent receivers spread out; 0
 * (let the kernel choose) when the address cannot be probed or the range
 * is full.  The receiver binds it moments later; a lost race fails the
 * attempt cleanly, like any receiver failure.
 */
static int free_port(const char *address, long long lo, long long hi, long long salt)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
	long long span = hi - lo + 1;

	if (lo < 1 || hi > 65535 || span < 1)
		return 0;
	for (long long k = 0; k < span; k++) {
		int port = (int)(lo + (salt + k) % span), fd, ok;
		struct addrinfo *ai = NULL;
		char ps[8];

		snprintf(ps, sizeof(ps), "%d", port);
		if (getaddrinfo(address, ps, &hints, &ai) != 0 || !ai)
			return 0;
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		ok = fd >= 0 && bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		if (ok)
			return port;
	}
	return 0;
}

/* ---- the transfer -------------------------------------------------------------- */

static int renew_lease(PGconn *c, const struct claim *a, const struct vmops_migrate_report *r,
		       const char *state, struct vmops_error *e)
{
	char mid[24], lease[24], tr[24], tot[24];

	return vmops_db_x(c, e,
			  "UPDATE migrations SET lease_expires_at = now() + $2 * interval '1 millisecond',"
			  " state = CASE WHEN state IN " ACTIVE_STATES " THEN $3 ELSE state END,"
			  " bytes_transferred = $4, bytes_total = $5 WHERE id = $1",
			  vmops_db_ll(mid, a->migration_id), vmops_db_ll(lease, (long long)a->o->lease_ms), state,
			  vmops_db_ll(tr, (long long)r->transferred_bytes), vmops_db_ll(tot, (long long)r->total_bytes));
}

static int record_receiver(PGconn *c, long long vmm_id, const struct vmops_vmm_info *i,
			   struct vmops_error *e)
{
	char vid[24], pid[24], st[24];

	return vmops_db_x(c, e,
			  "UPDATE vmms SET state = 'migrating', pid = $2, pid_start_time = $3, control_socket = $4,"
			  " agent_socket = nullif($5, ''), run_dir = $6 WHERE id = $1",
			  vmops_db_ll(vid, vmm_id), vmops_db_ll(pid, i->pid), vmops_db_ll(st, (long long)i->start_time),
			  i->control_socket, i->agent_socket, i->run_dir);
}

int vmops_migrate(PGconn *c, const struct vmops_migrate_opts *o, struct vmops_migrate_report *r,
		  struct vmops_error *e)
{
	struct source src = { 0 };
	struct claim cl = { .o = o, .src = &src };
	struct vmops_vmm_info sinfo;
	struct vmops_hv *source = NULL, *target = NULL;
	struct vmops_spec *spec = NULL;
	struct vmops_migrate_params mp = { 0 };
	struct vmops_hv_launch_opts lo = { 0 };
	struct finish f = { 0 };
	struct vmops_error xe = { 0 };
	uint64_t start = now_ms(), deadline, last_move, last_renew, last_report = 0;
	uint64_t last_transferred = 0, last_remaining = UINT64_MAX, rate_t0;
	uint64_t rate_b0 = 0;
	bool sent = false;
	char uri[300], rdir[PATH_MAX];
	int rc = -1;

	memset(r, 0, sizeof(*r));
	r->eta_s = -1;
	r->downtime_ms = r->total_time_ms = r->setup_time_ms = -1;
	r->connections_requested = o->connections;
	snprintf(r->sandbox, sizeof(r->sandbox), "%s", o->sandbox);
	snprintf(r->state, sizeof(r->state), "failed");

	if (load_source(c, o->sandbox, &src, e) < 0)
		goto out;
	r->sandbox_id = src.sandbox_id;
	r->source_vmm_id = src.vmm_id;
	r->memory_bytes = (uint64_t)src.memory_mb << 20;
	snprintf(r->source_worker, sizeof(r->source_worker), "%s", src.worker);
	spec = vmops_spec_parse(src.spec_json, (size_t)-1, e);
	if (!spec) {
		vmops_err_prefix(e, "sandbox %s: its launch spec cannot recreate the VM", o->sandbox);
		e->code = VMOPS_EXIT_CONFLICT;
		goto out;
	}
	/* A --to that can never work is refused before any hypervisor is touched. */
	if (o->to) {
		_cleanup_pgresult_ PGresult *w = vmops_db_q(c, e, "SELECT state FROM workers WHERE name = $1", o->to);
		if (!w)
			goto out;
		if (strcmp(o->to, src.worker) == 0) {
			vmops_err(e, VMOPS_EXIT_CONFLICT, "--to %s: that is the source worker of sandbox %s",
				  o->to, o->sandbox);
			goto out;
		}
		if (PQntuples(w) == 0) {
			vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", o->to);
			goto out;
		}
		if (strcmp(vmops_db_get(w, 0, "state"), "active") != 0) {
			vmops_err(e, VMOPS_EXIT_CONFLICT, "worker %s is %s, not accepting migrations", o->to,
				  vmops_db_get(w, 0, "state"));
			goto out;
		}
	}
	/* The source must answer before anything is claimed. */
	if (vmops_vm_load_info(c, src.vmm_id, &sinfo, e) < 0)
		goto out;
	source = vmops_hv_attach(&sinfo, 5000, e);
	if (!source) {
		e->code = VMOPS_EXIT_HYPERVISOR;
		vmops_err_prefix(e, "sandbox %s: source vmm %lld", o->sandbox, src.vmm_id);
		goto out;
	}

	/* Waiting for a target may take minutes: do not hold the source's
	 * control connection idle meanwhile; attach again once claimed. */
	vmops_hv_free(source);
	source = NULL;
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
	source = vmops_hv_attach(&sinfo, 5000, e);
	f.migration_id = cl.migration_id;
	f.sandbox_id = src.sandbox_id;
	f.source_vmm_id = src.vmm_id;
	f.target_vmm_id = cl.target_vmm_id;
	f.target_worker_id = cl.target_worker_id;
	f.downtime_ms = -1;
	f.actor = "vm-migrate";
	if (!source) {
		e->code = VMOPS_EXIT_HYPERVISOR;
		vmops_err_prefix(e, "sandbox %s: source vmm %lld", o->sandbox, src.vmm_id);
		goto fail;
	}
	vmops_info("migration %lld: sandbox %s from %s to %s", cl.migration_id, o->sandbox, src.worker, cl.target);

	/* Multiple connections need multifd on both ends: fall back to one, never hang. */
	mp.connections = o->connections;
	mp.max_bandwidth = o->max_bandwidth;
	mp.downtime_limit_ms = o->downtime_limit_ms;
	mp.auto_converge = o->auto_converge;
	if (mp.connections > 1) {
		int s = vmops_hv_supports_multifd(source, &xe);
		if (s != 1) {
			vmops_warn("sandbox %s: the source cannot do multiple connections%s%s; using one",
				   o->sandbox, s < 0 ? ": " : "", s < 0 ? xe.msg : "");
			mp.connections = 1;
		}
	}

	/* The receiver: same spec, -incoming, listening on the target's migration address. */
	snprintf(rdir, sizeof(rdir), "%.4000s/vmm-%lld", cl.run_dir, cl.target_vmm_id);
	if (vmops_vm_mkdir_p(cl.run_dir, e) < 0)
		goto fail;
	lo.run_dir = rdir;
	lo.vmm_id = (uint64_t)cl.target_vmm_id;
	lo.auto_accel = o->auto_accel;
	snprintf(uri, sizeof(uri), strchr(cl.address, ':') ? "tcp:[%s]:%d" : "tcp:%s:%d", cl.address,
		 free_port(cl.address, cl.port_min, cl.port_max, cl.migration_id));
	target = vmops_hv_prepare_incoming(spec, &lo, uri, &mp, 30000, e);
	if (!target && mp.connections > 1) {
		vmops_warn("sandbox %s: receiver on %s with %u connections failed (%s); trying one connection",
			   o->sandbox, cl.target, mp.connections, e->msg);
		mp.connections = 1;
		target = vmops_hv_prepare_incoming(spec, &lo, uri, &mp, 30000, e);
	}
	if (!target) {
		e->code = VMOPS_EXIT_HYPERVISOR;
		vmops_err_prefix(e, "receiver on %s", cl.target);
		goto fail;
	}
	r->connections_used = mp.connections;
	f.conns_used = mp.connections;
	if (record_receiver(c, cl.target_vmm_id, vmops_hv_info(target), e) < 0)
		goto fail;

	if (vmops_hv_send(source, vmops_hv_info(target)->incoming_uri, &mp, e) < 0) {
		e->code = VMOPS_EXIT_HYPERVISOR;
		vmops_err_prefix(e, "send to %s", cl.target);
		goto fail;
	}
	sent = true;
	{
		uint64_t gib = (r->memory_bytes + (1ULL << 30) - 1) >> 30;
		deadline = now_ms() + (gib ? gib : 1) * o->timeout_per_gib_ms;
	}
	last_move = last_renew = rate_t0 = now_ms();
	snprintf(r->state, sizeof(r->state), "transferring");
	if (renew_lease(c, &cl, r, "transferring", e) < 0)
		goto fail;

	for (;;) {
		struct vmops_migrate_progress p;
		uint64_t t;

		if (vmops_hv_progress(source, &p, e) < 0) {
			e->code = VMOPS_EXIT_HYPERVISOR;
			vmops_err_prefix(e, "progress");
			goto fail;
		}
		t = now_ms();
		snprintf(r->hv_status, sizeof(r->hv_status), "%s", p.status);
		r->total_bytes = p.total_bytes;
		r->transferred_bytes = p.transferred_bytes;
		r->remaining_bytes = p.remaining_bytes;
		r->total_time_ms = p.total_time_ms;
		r->setup_time_ms = p.setup_time_ms;
		if (t - rate_t0 >= 1000) {
			r->rate_bps = (double)(p.transferred_bytes - rate_b0) * 1000.0 / (double)(t - rate_t0);
			rate_t0 = t;
			rate_b0 = p.transferred_bytes;
		} else if (r->rate_bps == 0 && p.mbps > 0) {
			r->rate_bps = p.mbps * 1e6 / 8;
		}
		r->eta_s = vmops_migrate_eta_s(p.remaining_bytes, r->connections_used,
					       r->rate_bps / (r->connections_used ? r->connections_used : 1),
					       o->rtt_s, VMOPS_MIGRATE_CHUNK_BYTES, (double)o->max_bandwidth);
		if (p.transferred_bytes > last_transferred || p.remaining_bytes < last_remaining) {
			last_move = t;
			last_transferred = p.transferred_bytes;
			last_remaining = p.remaining_bytes;
		}
		if (strcmp(p.status, "completed") == 0) {
			r->downtime_ms = p.downtime_ms;
			f.downtime_ms = p.downtime_ms;
			break;
		}
		if (strcmp(p.status, "failed") == 0 || strcmp(p.status, "cancelled") == 0) {
			vmops_err(e, VMOPS_EXIT_HYPERVISOR, "migration %s: %s", p.status,
				  p.error_desc[0] ? p.error_desc : "no reason given by the hypervisor");
			sent = false;  /* nothing left to cancel */
			goto fail;
		}
		if (interrupted(o)) {
			vmops_err(e, VMOPS_EXIT_INTERRUPTED, "interrupted: migration cancelled");
			goto fail;
		}
		if (t > deadline) {
			vmops_err(e, VMOPS_EXIT_TIMEOUT, "not completed within %llus (%llus per GiB of guest memory)",
				  (unsigned long long)((deadline - start) / 1000),
				  (unsigned long long)(o->timeout_per_gib_ms / 1000));
			goto fail;
		}
		if (t - last_move > o->progress_timeout_ms) {
			vmops_err(e, VMOPS_EXIT_TIMEOUT, "no progress for %llus",
				  (unsigned long long)(o->progress_timeout_ms / 1000));
			goto fail;
		}
		if (t - last_renew >= o->lease_ms / 3) {
			if (renew_lease(c, &cl, r, "transferring", e) < 0)
				goto fail;
			last_renew = t;
		}
		if (o->on_progress && t - last_report >= 500) {
			r->wall_ms = t - start;
			o->on_progress(o->data, r);
			last_report = t;
		}
		sleep_ms(100);
	}

	/* Switchover happened: the source is stopped.  Is the target really running? */
	{
		struct vmops_vm_status st = { 0 };
		struct vmops_error te = { 0 };
		bool alive = false;

		(void)renew_lease(c, &cl, r, "switching", &te);
		for (int i = 0; i < 50 && !alive; i++) {
			if (vmops_hv_status(target, &st, &te) == 0 && st.running)
				alive = true;
			else if (!vmops_hv_is_alive(target))
				break;
			else
				sleep_ms(100);
		}
		if (!alive) {
			f.lost = true;
			f.state = "failed";
			snprintf(r->error, sizeof(r->error), "target lost after switchover: %.900s",
				 te.msg[0] ? te.msg : (st.status[0] ? st.status : "not running"));
			f.error = r->error;
			vmops_err(e, VMOPS_EXIT_HYPERVISOR, "sandbox %s: %s; sandbox marked error, billing closed",
				  o->sandbox, r->error);
			snprintf(r->state, sizeof(r->state), "lost");
			xe = *e;
			if (finish(c, &f, &te) < 0)
				vmops_warn("migration %lld: %s", cl.migration_id, te.msg);
			(void)vmops_hv_destroy(source, 10000, &te);
			(void)vmops_hv_destroy(target, 10000, &te);
			*e = xe;
			goto out;
		}
	}
	f.state = "completed";
	f.total = r->total_bytes;
	f.transferred = r->transferred_bytes;
	if (finish(c, &f, e) < 0) {
		/* Leave the lease to expire: --recover finishes a switched attempt. */
		vmops_err_prefix(e, "migration %lld completed but could not be recorded; run vm-migrate --recover",
				 cl.migration_id);
		snprintf(r->state, sizeof(r->state), "unrecorded");
		goto out;
	}
	snprintf(r->state, sizeof(r->state), "completed");
	{
		struct vmops_error de = { 0 };
		if (vmops_hv_destroy(source, 15000, &de) < 0)
			vmops_warn("sandbox %s: the old source vmm %lld did not stop (%s); ghost-reap will find it",
				   o->sandbox, src.vmm_id, de.msg);
	}
	rc = 0;
	goto out;

fail:
	/* Cancel on the source (the VM keeps running there), destroy the receiver. */
	snprintf(r->error, sizeof(r->error), "%s", e->msg);
	xe = *e;
	if (sent) {
		struct vmops_error ce = { 0 };
		if (vmops_hv_cancel(source, &ce) < 0)
			vmops_warn("sandbox %s: migrate_cancel on the source: %s", o->sandbox, ce.msg);
		for (int i = 0; i < 50; i++) {
			struct vmops_migrate_progress p;
			if (vmops_hv_progress(source, &p, &ce) < 0 || vmops_migrate_status_is_final(p.status))
				break;
			sleep_ms(100);
		}
	}
	if (target) {
		struct vmops_error de = { 0 };
		if (vmops_hv_destroy(target, 10000, &de) < 0)
			vmops_warn("sandbox %s: receiver vmm %lld did not stop: %s", o->sandbox, cl.target_vmm_id, de.msg);
	} else if (cl.target_vmm_id > 0) {
		/* A receiver that never answered may still have started: find it by its marker. */
		struct vmops_recover_report rr = { 0 };
		if (kill_receiver(c, cl.target_vmm_id, &rr) < 0)
			vmops_warn("sandbox %s: %s", o->sandbox, rr.last_error);
	}
	if (source) {
		struct vmops_error se = { 0 };
		struct vmops_vm_status st = { 0 };
		/* QEMU resumes a cancelled source by itself; make sure. */
		if (vmops_hv_status(source, &st, &se) == 0 && !st.running &&
		    (strcmp(st.status, "paused") == 0 || strcmp(st.status, "postmigrate") == 0 ||
		     strcmp(st.status, "finish-migrate") == 0))
			(void)vmops_hv_resume(source, &se);
	}
	f.state = xe.code == VMOPS_EXIT_INTERRUPTED ? "cancelled" : "failed";
	f.error = r->error;
	f.total = r->total_bytes;
	f.transferred = r->transferred_bytes;
	snprintf(r->state, sizeof(r->state), "%s", f.state);
	{
		struct vmops_error fe = { 0 };
		if (finish(c, &f, &fe) < 0)
			vmops_warn("migration %lld: recording the failure: %s", cl.migration_id, fe.msg);
	}
	*e = xe;

out:
	r->wall_ms = now_ms() - start;
	if (rc < 0 && !r->error[0])
		snprintf(r->error, sizeof(r->error), "%s", e->msg);
	if (target)
		vmops_hv_free(target);
	if (source)
		vmops_hv_free(source);
	vmops_spec_free(spec);
	free(src.spec_json);
	return rc;
}

/* ---- recovery ---------------------------------------------------------------------- */

struct marker_ctx {
	long long vmm_id;
	pid_t pid;
	unsigned long long start;
};

static int find_marker(const struct vmops_proc_info *i, void *data)
{
	struct marker_ctx *m = data;

	if (i->vmm_id == m->vmm_id && i->stat.state != 'Z' && i->stat.state != 'X') {
		m->pid = i->stat.pid;
		m->start = i->stat.starttime;
		return 1;
	}
	return 0;
}

/* Stop the receiver of vmm_id wherever it is: recorded pid, else /proc marker. */
static int kill_receiver(PGconn *c, long long vmm_id, struct vmops_recover_report *rr)
{
	struct vmops_vmm_info info;
	struct marker_ctx m = { vmm_id, 0, 0 };
	struct vmops_error e = { 0 };
	struct vmops_proc_term_outcome out;

	if (vmops_vm_load_info(c, vmm_id, &info, &e) < 0)
		return -1;
	if (info.pid > 0) {
		m.pid = info.pid;
		m.start = info.start_time;
	} else {
		(void)vmops_proc_scan(VMOPS_PROC_ROOT_DEFAULT, VMOPS_PROC_SCAN_HV_ONLY, find_marker, &m, &e);
	}
	if (m.pid <= 0)
		return 0;
	if (vmops_proc_check(VMOPS_PROC_ROOT_DEFAULT, m.pid, m.start, NULL, &e) != VMOPS_PROC_ALIVE)
		return 0;
	if (vmops_proc_terminate(m.pid, m.start, 5000, &out, &e) == 0) {
		rr->receivers_killed++;
		return 0;
	}
	snprintf(rr->last_error, sizeof(rr->last_error), "receiver vmm %lld: %.900s", vmm_id, e.msg);
	return -1;
}

int vmops_migrate_recover(PGconn *c, bool dry_run, struct vmops_recover_report *rr,
			  struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;

	memset(rr, 0, sizeof(*rr));
	r = vmops_db_q(c, e,
		       "SELECT id, sandbox_id, source_vmm_id, target_vmm_id, target_worker_id, state"
		       " FROM migrations WHERE state IN " ACTIVE_STATES
		       " AND (lease_expires_at IS NULL OR lease_expires_at < now()) ORDER BY id");
	if (!r)
		return -1;
	for (int i = 0; i < PQntuples(r); i++) {
		struct finish f = { 0 };
		struct vmops_error fe = { 0 };
		struct vmops_vmm_info ti, si;
		struct vmops_hv *th = NULL, *sh = NULL;
		bool target_runs = false;

		rr->found++;
		if (dry_run)
			continue;
		f.migration_id = vmops_db_get_ll(r, i, "id", -1);
		f.sandbox_id = vmops_db_get_ll(r, i, "sandbox_id", -1);
		f.source_vmm_id = vmops_db_get_ll(r, i, "source_vmm_id", -1);
		f.target_vmm_id = vmops_db_get_ll(r, i, "target_vmm_id", -1);
		f.target_worker_id = vmops_db_get_ll(r, i, "target_worker_id", -1);
		f.downtime_ms = -1;
		f.actor = "vm-migrate --recover";
		/* Did the switchover happen?  Then the target runs and the source is done. */
		if (f.target_vmm_id > 0 && vmops_vm_load_info(c, f.target_vmm_id, &ti, &fe) == 0 && ti.pid > 0 &&
		    (th = vmops_hv_attach(&ti, 2000, &fe))) {
			struct vmops_vm_status st = { 0 };
			if (vmops_hv_is_alive(th) && vmops_hv_status(th, &st, &fe) == 0 && st.running)
				target_runs = true;
		}
		if (f.source_vmm_id > 0 && vmops_vm_load_info(c, f.source_vmm_id, &si, &fe) == 0 && si.pid > 0)
			sh = vmops_hv_attach(&si, 2000, &fe);
		if (target_runs) {
			f.state = "completed";
			f.error = "finished by vm-migrate --recover: the target had taken over";
			if (finish(c, &f, &fe) == 0) {
				rr->completed++;
				if (sh)
					(void)vmops_hv_destroy(sh, 10000, &fe);
			} else {
				rr->errors++;
				snprintf(rr->last_error, sizeof(rr->last_error), "%s", fe.msg);
			}
		} else {
			if (sh) {
				struct vmops_vm_status st = { 0 };
				(void)vmops_hv_cancel(sh, &fe);
				if (vmops_hv_status(sh, &st, &fe) == 0 && !st.running)
					(void)vmops_hv_resume(sh, &fe);
			}
			if (th)
				(void)vmops_hv_destroy(th, 10000, &fe);
			else if (f.target_vmm_id > 0 && kill_receiver(c, f.target_vmm_id, rr) < 0)
				rr->errors++;
			f.state = "failed";
			f.error = "lease expired: vm-migrate stopped mid-attempt (recovered)";
			if (finish(c, &f, &fe) == 0) {
				rr->failed++;
			} else {
				rr->errors++;
				snprintf(rr->last_error, sizeof(rr->last_error), "%s", fe.msg);
			}
		}
		if (th)
			vmops_hv_free(th);
		if (sh)
			vmops_hv_free(sh);
	}
	return 0;
}
