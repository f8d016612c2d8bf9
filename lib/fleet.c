/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "exitcodes.h"
#include "fleet.h"
#include "images.h"
#include "host.h"

bool vmops_fleet_valid_name(const char *s)
{
	size_t n;

	if (!s || !isalnum((unsigned char)s[0]))
		return false;
	for (n = 0; s[n]; n++)
		if (!isalnum((unsigned char)s[n]) && !strchr("._-", s[n]))
			return false;
	return n <= 63;
}

bool vmops_fleet_valid_worker_state(const char *s)
{
	static const char *const st[] = { "active", "draining", "drained", "terminated" };

	for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++)
		if (s && strcmp(s, st[i]) == 0)
			return true;
	return false;
}

int vmops_audit(PGconn *c, const char *program, const char *action, const char *object_type,
		long long object_id, const char *before_json, const char *after_json,
		const char *detail, struct vmops_error *e)
{
	char id[24];

	return vmops_db_x(c, e,
			  "INSERT INTO audit_log (actor, program, action, object_type, object_id, before, after, detail)"
			  " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8)",
			  vmops_db_actor(), program, action, object_type,
			  object_id >= 0 ? vmops_db_ll(id, object_id) : NULL,
			  before_json, after_json, detail);
}

struct worker_add_ctx {
	const struct vmops_worker_spec *w;
	bool dry_run;
	long long id;
};

static int worker_add_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct worker_add_ctx *a = data;
	const struct vmops_worker_spec *w = a->w;
	char mem[24], cpu[24], pmin[24], pmax[24];
	_cleanup_pgresult_ PGresult *r = NULL;

	if (w->host_id && !vmops_host_id_valid(w->host_id))
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid host identity '%.200s'", w->host_id);
	if (w->image_dirs && !vmops_images_dirs_valid(w->image_dirs))
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid image directories '%.200s'", w->image_dirs);
	r = vmops_db_q(c, e,
		       "INSERT INTO workers (name, memory_mb, vcpus, migration_address, transport, run_dir,"
		       " port_min, port_max, host_id, image_dirs)"
		       " VALUES ($1, $2, $3, coalesce($4, '127.0.0.1'), coalesce($5, 'local'), $6,"
		       " coalesce($7::int, 49152), coalesce($8::int, 49407), $9, string_to_array($10, ':'))"
		       " RETURNING id, row_to_json(workers)::text AS j",
		       w->name, vmops_db_ll(mem, w->memory_mb), vmops_db_ll(cpu, w->vcpus), w->address,
		       w->transport, w->run_dir, w->port_min ? vmops_db_ll(pmin, w->port_min) : NULL,
		       w->port_max ? vmops_db_ll(pmax, w->port_max) : NULL, w->host_id, w->image_dirs);
	if (!r) {
		if (strcmp(e->sqlstate, "23505") == 0)
			return vmops_err(e, VMOPS_EXIT_CONFLICT, "worker %s already exists", w->name);
		return vmops_err_prefix(e, "worker %s", w->name);
	}
	a->id = vmops_db_get_ll(r, 0, "id", -1);
	if (vmops_audit(c, "vm-fleet", "worker-add", "worker", a->id, NULL,
			vmops_db_get(r, 0, "j"), NULL, e) < 0)
		return -1;
	if (a->dry_run)
		return vmops_err(e, VMOPS_EXIT_OK, "dry run");
	return 0;
}

/*
 * Dry runs execute the real statements (so the database's own checks run)
 * and then roll back: fn returns -1 with code OK and the message "dry run".
 */
static int run_tx(PGconn *c, int (*fn)(PGconn *, void *, struct vmops_error *), void *data,
		  struct vmops_error *e)
{
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, fn, data, e) < 0) {
		if (e->code == VMOPS_EXIT_OK && strcmp(e->msg, "dry run") == 0) {
			vmops_err_clear(e);
			return 0;
		}
		return -1;
	}
	return 0;
}

int vmops_fleet_worker_add(PGconn *c, const struct vmops_worker_spec *w, bool dry_run,
			   long long *id, struct vmops_error *e)
{
	struct worker_add_ctx a = { w, dry_run, -1 };

	if (run_tx(c, worker_add_tx, &a, e) < 0)
		return -1;
	if (id)
		*id = a.id;
	return 0;
}

PGresult *vmops_fleet_worker_list(PGconn *c, struct vmops_error *e)
{
	return vmops_db_q(c, e,
		"SELECT w.id, w.name, w.state, w.memory_mb, w.vcpus,"
		"  coalesce(r.mem, 0) AS reserved_memory_mb, coalesce(r.cpu, 0) AS reserved_vcpus,"
		"  (SELECT count(*) FROM sandboxes s WHERE s.worker_id = w.id"
		"     AND s.status IN ('pending', 'running', 'migrating')) AS sandboxes,"
		"  w.migration_address AS address, w.transport, w.host_id"
		" FROM workers w"
		" LEFT JOIN (SELECT worker_id, sum(memory_mb) AS mem, sum(vcpus) AS cpu"
		"            FROM reservations GROUP BY worker_id) r ON r.worker_id = w.id"
		" ORDER BY w.name");
}

struct set_state_ctx {
	const char *name, *state;
	bool dry_run;
	char old[16];
};

static int set_state_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct set_state_ctx *a = data;
	_cleanup_pgresult_ PGresult *r = NULL, *u = NULL;
	long long id;

	r = vmops_db_q(c, e, "SELECT id, state, row_to_json(workers)::text AS j FROM workers"
			     " WHERE name = $1 FOR UPDATE", a->name);
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", a->name);
	id = vmops_db_get_ll(r, 0, "id", -1);
	snprintf(a->old, sizeof(a->old), "%s", vmops_db_get(r, 0, "state"));
	u = vmops_db_q(c, e, "UPDATE workers SET state = $2 WHERE name = $1"
			     " RETURNING row_to_json(workers)::text AS j", a->name, a->state);
	if (!u)
		return -1;  /* the database's refusal names the worker */
	if (strcmp(a->old, a->state) != 0 &&
	    vmops_audit(c, "vm-fleet", "worker-set-state", "worker", id, vmops_db_get(r, 0, "j"),
			vmops_db_get(u, 0, "j"), NULL, e) < 0)
		return -1;
	if (a->dry_run)
		return vmops_err(e, VMOPS_EXIT_OK, "dry run");
	return 0;
}

int vmops_fleet_worker_set_state(PGconn *c, const char *name, const char *state,
				 bool dry_run, char old_state[16], struct vmops_error *e)
{
	struct set_state_ctx a = { name, state, dry_run, "" };

	if (!vmops_fleet_valid_worker_state(state))
		return vmops_err(e, VMOPS_EXIT_USAGE,
				 "invalid worker state '%s': use active, draining, drained or terminated", state);
	if (run_tx(c, set_state_tx, &a, e) < 0)
		return -1;
	if (old_state)
		memcpy(old_state, a.old, sizeof(a.old));
	return 0;
}

struct set_host_ctx {
	const char *name, *host_id;
	bool dry_run;
	char old[VMOPS_HOST_ID_MAX];
};

static int set_host_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct set_host_ctx *a = data;
	_cleanup_pgresult_ PGresult *r = NULL, *u = NULL;
	const char *old;
	long long id;

	r = vmops_db_q(c, e, "SELECT id, host_id, row_to_json(workers)::text AS j FROM workers"
			     " WHERE name = $1 FOR UPDATE", a->name);
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", a->name);
	id = vmops_db_get_ll(r, 0, "id", -1);
	old = vmops_db_get(r, 0, "host_id");
	snprintf(a->old, sizeof(a->old), "%s", old ? old : "");
	u = vmops_db_q(c, e, "UPDATE workers SET host_id = $2 WHERE id = $1"
			     " RETURNING row_to_json(workers)::text AS j", vmops_db_get(r, 0, "id"), a->host_id);
	if (!u)
		return vmops_err_prefix(e, "worker %s", a->name);
	if (strcmp(a->old, a->host_id ? a->host_id : "") != 0 &&
	    vmops_audit(c, "vm-fleet", "worker-set-host", "worker", id, vmops_db_get(r, 0, "j"),
			vmops_db_get(u, 0, "j"), NULL, e) < 0)
		return -1;
	if (a->dry_run)
		return vmops_err(e, VMOPS_EXIT_OK, "dry run");
	return 0;
}

int vmops_fleet_worker_set_host(PGconn *c, const char *name, const char *host_id, bool dry_run,
				char *old_host_id, struct vmops_error *e)
{
	struct set_host_ctx a = { name, host_id, dry_run, "" };

	if (host_id && !vmops_host_id_valid(host_id))
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid host identity '%.200s'", host_id);
	if (run_tx(c, set_host_tx, &a, e) < 0)
		return -1;
	if (old_host_id)
		memcpy(old_host_id, a.old, sizeof(a.old));
	return 0;
}

struct set_images_ctx {
	const char *name, *dirs;
	bool dry_run;
	char old[8192];
};

static int set_images_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct set_images_ctx *a = data;
	_cleanup_pgresult_ PGresult *r = NULL, *u = NULL;
	const char *old;

	r = vmops_db_q(c, e, "SELECT id, array_to_string(image_dirs, ':') AS d, row_to_json(workers)::text AS j"
			     " FROM workers WHERE name = $1 FOR UPDATE", a->name);
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", a->name);
	old = vmops_db_get(r, 0, "d");
	snprintf(a->old, sizeof(a->old), "%s", old ? old : "");
	u = vmops_db_q(c, e, "UPDATE workers SET image_dirs = string_to_array($2, ':') WHERE id = $1"
			     " RETURNING row_to_json(workers)::text AS j", vmops_db_get(r, 0, "id"), a->dirs);
	if (!u)
		return vmops_err_prefix(e, "worker %s", a->name);
	if (strcmp(a->old, a->dirs ? a->dirs : "") != 0 &&
	    vmops_audit(c, "vm-fleet", "worker-set-image-dirs", "worker", vmops_db_get_ll(r, 0, "id", -1),
			vmops_db_get(r, 0, "j"), vmops_db_get(u, 0, "j"), NULL, e) < 0)
		return -1;
	if (a->dry_run)
		return vmops_err(e, VMOPS_EXIT_OK, "dry run");
	return 0;
}

int vmops_fleet_worker_set_image_dirs(PGconn *c, const char *name, const char *dirs, bool dry_run,
				      char *old, struct vmops_error *e)
{
	struct set_images_ctx a = { .name = name, .dirs = dirs, .dry_run = dry_run };
	if (dirs && !vmops_images_dirs_valid(dirs))
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid image directories '%.200s'", dirs);
	if (run_tx(c, set_images_tx, &a, e) < 0)
		return -1;
	if (old)
		memcpy(old, a.old, sizeof(a.old));
	return 0;
}

PGresult *vmops_fleet_sandbox_list(PGconn *c, const char *worker, const char *status,
				   struct vmops_error *e)
{
	return vmops_db_q(c, e,
		"SELECT s.id, s.name, s.org_id AS org, s.status, w.name AS worker,"
		"  s.memory_mb, s.vcpus, s.active_vmm_id AS vmm, v.hypervisor, v.state AS vmm_state, v.pid"
		" FROM sandboxes s"
		" LEFT JOIN workers w ON w.id = s.worker_id"
		" LEFT JOIN vmms v ON v.id = s.active_vmm_id"
		" WHERE ($1::text IS NULL OR w.name = $1) AND ($2::text IS NULL OR s.status = $2)"
		" ORDER BY s.name", worker, status);
}

PGresult *vmops_fleet_counts(PGconn *c, struct vmops_error *e)
{
	return vmops_db_q(c, e,
		"SELECT 'workers' AS kind, state, count(*) AS count FROM workers GROUP BY state"
		" UNION ALL SELECT 'sandboxes', status, count(*) FROM sandboxes GROUP BY status"
		" UNION ALL SELECT 'vmms', state, count(*) FROM vmms WHERE time_deleted IS NULL GROUP BY state"
		" UNION ALL SELECT 'migrations', state, count(*) FROM migrations"
		"   WHERE state IN ('queued', 'preparing', 'transferring', 'switching') GROUP BY state"
		" UNION ALL SELECT 'scale_events', 'open', count(*) FROM scale_events WHERE ended_at IS NULL"
		" ORDER BY 1, 2");
}

struct register_ctx {
	const struct vmops_register *r;
	bool dry_run;
	struct vmops_register_result out;
};

static int register_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct register_ctx *a = data;
	const struct vmops_register *g = a->r;
	char wid[24], sid[24], vid[24], mem[24], cpu[24], disk[24], pid[24], pst[24];
	_cleanup_pgresult_ PGresult *w = NULL, *s = NULL, *v = NULL, *ev = NULL;

	w = vmops_db_q(c, e, "SELECT id FROM workers WHERE name = $1", g->worker);
	if (!w)
		return -1;
	if (PQntuples(w) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", g->worker);
	a->out.worker_id = vmops_db_get_ll(w, 0, "id", -1);
	vmops_db_ll(wid, a->out.worker_id);
	vmops_db_ll(mem, g->memory_mb);
	vmops_db_ll(cpu, g->vcpus);

	s = vmops_db_q(c, e,
		       "INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus, disk_mb, launch_spec)"
		       " VALUES ($1, $2, 'running', $3, $4, $5, $6, coalesce($7::jsonb, '{}'::jsonb)) RETURNING id",
		       g->sandbox, g->org, wid, mem, cpu, vmops_db_ll(disk, g->disk_mb), g->launch_spec);
	if (!s) {
		if (strcmp(e->sqlstate, "23505") == 0)
			return vmops_err(e, VMOPS_EXIT_CONFLICT, "sandbox %s already exists", g->sandbox);
		return vmops_err_prefix(e, "sandbox %s", g->sandbox);
	}
	a->out.sandbox_id = vmops_db_get_ll(s, 0, "id", -1);
	vmops_db_ll(sid, a->out.sandbox_id);

	v = vmops_db_q(c, e,
		       "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state, pid, pid_start_time,"
		       " control_socket, agent_socket, run_dir)"
		       " VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8) RETURNING id",
		       sid, wid, g->hypervisor, g->pid > 0 ? vmops_db_ll(pid, g->pid) : NULL,
		       g->pid_start_time >= 0 ? vmops_db_ll(pst, g->pid_start_time) : NULL,
		       g->control_socket, g->agent_socket, g->run_dir);
	if (!v)
		return vmops_err_prefix(e, "vmm for sandbox %s", g->sandbox);
	a->out.vmm_id = vmops_db_get_ll(v, 0, "id", -1);
	vmops_db_ll(vid, a->out.vmm_id);

	/* Admission: the reservation trigger locks the worker and checks capacity. */
	if (vmops_db_x(c, e, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
			     " VALUES ($1, $2, $3, $4)", vid, wid, mem, cpu) < 0)
		return vmops_err_prefix(e, "reservation on worker %s", g->worker);
	if (vmops_db_x(c, e, "UPDATE sandboxes SET active_vmm_id = $2 WHERE id = $1", sid, vid) < 0)
		return -1;
	ev = vmops_db_q(c, e,
			"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)"
			" VALUES ($1, $2, $3, $4, $5, $6) RETURNING id", sid, g->org, wid, vid, mem, cpu);
	if (!ev)
		return vmops_err_prefix(e, "scale event for sandbox %s", g->sandbox);
	a->out.scale_event_id = vmops_db_get_ll(ev, 0, "id", -1);
	if (vmops_audit(c, "vm-fleet", "register", "vmm", a->out.vmm_id, NULL, NULL, g->sandbox, e) < 0)
		return -1;
	if (a->dry_run)
		return vmops_err(e, VMOPS_EXIT_OK, "dry run");
	return 0;
}

int vmops_fleet_register(PGconn *c, const struct vmops_register *r, bool dry_run,
			 struct vmops_register_result *out, struct vmops_error *e)
{
	struct register_ctx a = { r, dry_run, { -1, -1, -1, -1 } };

	if (run_tx(c, register_tx, &a, e) < 0)
		return -1;
	if (out)
		*out = a.out;
	return 0;
}
