/* SPDX-License-Identifier: MIT */
/*
 * ghost: reconcile a worker's hypervisor processes with the database (see
 * ghost.h for the classes and the rules).
 *
 * Order matters.  The scan runs first and the database is read after it:
 * vm-fleet and vm-migrate write a VMM row before they start its process, so
 * every process the scan saw already had its row when the rows are read, and
 * a launch in progress cannot look like an unknown ghost.  Every action
 * re-checks what it acts on: a ghost's row is read again and its start time
 * re-verified through a pidfd right before it is signalled; a phantom's row
 * is locked and compared with what was read before it is repaired.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "exitcodes.h"
#include "fleet.h"
#include "ghost.h"
#include "log.h"
#include "macro.h"
#include "vm.h"

/* ---- small helpers (exposed for tests) ------------------------------------ */

/* Length of dir without trailing slashes; 0 if it is not a clean absolute
 * path of at least one component. */
static size_t clean_dir_len(const char *dir);

/* path[0..len) is absolute with no empty, "." or ".." component. */
static bool clean_abs(const char *path, size_t len)
{
	size_t i = 0;

	if (len < 2 || path[0] != '/')
		return false;
	while (i < len) {
		size_t s, n;

		if (path[i] != '/')
			return false;
		s = ++i;
		while (i < len && path[i] != '/')
			i++;
		n = i - s;
		if (n == 0 || (n == 1 && path[s] == '.') || (n == 2 && path[s] == '.' && path[s + 1] == '.'))
			return false;
	}
	return true;
}

static size_t clean_dir_len(const char *dir)
{
	size_t n;

	if (!dir)
		return 0;
	n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		n--;
	if (n < 2 || !clean_abs(dir, n))
		return 0;
	return n;
}

bool vmops_ghost_path_inside(const char *path, const char *dir)
{
	size_t dl = clean_dir_len(dir), pl;

	if (!dl || !path)
		return false;
	pl = strlen(path);
	if (pl <= dl + 1 || memcmp(path, dir, dl) != 0 || path[dl] != '/')
		return false;
	return clean_abs(path, pl);
}

bool vmops_ghost_argv_names_dir(int argc, char *const argv[], const char *dir)
{
	size_t dl = clean_dir_len(dir);
	int i;

	if (!dl || !argv)
		return false;
	for (i = 1; i < argc && argv[i]; i++) {
		const char *a = argv[i], *p = a;
		size_t left = strlen(a);

		while (left > dl) {
			const char *q = memmem(p, left, dir, dl);

			if (!q)
				break;
			if (q[dl] == '/' && (q == a || q[-1] == ':' || q[-1] == '=' || q[-1] == ','))
				return true;
			left -= (size_t)(q + 1 - p);
			p = q + 1;
		}
	}
	return false;
}

/* Copy a QemuOpts value (",," is a literal ',', a single ',' ends it). */
static void copy_optval(const char *v, char *out, size_t len)
{
	size_t n = 0;

	if (!len)
		return;
	while (*v && n + 1 < len) {
		if (*v == ',') {
			if (v[1] != ',')
				break;
			v++;
		}
		out[n++] = *v++;
	}
	out[n] = '\0';
}

/* The value of option `key` ("path") in a QemuOpts-style "a,b=c,path=X". */
static bool find_opt(const char *s, const char *key, char *out, size_t len)
{
	size_t kl = strlen(key);
	const char *p = s;

	while (*p) {
		if (!strncmp(p, key, kl) && p[kl] == '=') {
			copy_optval(p + kl + 1, out, len);
			return true;
		}
		/* next option: after a single ',' */
		while (*p && !(*p == ',' && p[1] != ',')) {
			if (*p == ',')
				p++;  /* ",," */
			p++;
		}
		if (*p == ',')
			p++;
	}
	return false;
}

/* "--name VALUE", "-name VALUE" or "--name=VALUE" at argv[*i]. */
static const char *opt_value(int argc, char *const argv[], int *i, const char *name)
{
	const char *a = argv[*i];
	size_t nl = strlen(name);

	while (*a == '-')
		a++;
	if (a == argv[*i] || strncmp(a, name, nl) != 0)
		return NULL;
	if (a[nl] == '=')
		return a + nl + 1;
	if (a[nl] == '\0' && *i + 1 < argc && argv[*i + 1]) {
		(*i)++;
		return argv[*i];
	}
	return NULL;
}

void vmops_ghost_argv_sockets(enum vmops_hv_kind hv, int argc, char *const argv[],
			      char *control, size_t control_len, char *agent, size_t agent_len)
{
	int i;

	if (control_len)
		control[0] = '\0';
	if (agent_len)
		agent[0] = '\0';
	if (!argv)
		return;
	for (i = 1; i < argc && argv[i]; i++) {
		const char *v;

		switch (hv) {
		case VMOPS_HV_QEMU:
			if ((v = opt_value(argc, argv, &i, "qmp"))) {
				if (!control[0] && !strncmp(v, "unix:", 5))
					copy_optval(v + 5, control, control_len);
			} else if ((v = opt_value(argc, argv, &i, "chardev"))) {
				if (!agent[0] && !strncmp(v, "socket,", 7))
					find_opt(v + 7, "path", agent, agent_len);
			}
			break;
		case VMOPS_HV_CLOUD_HYPERVISOR:
			if ((v = opt_value(argc, argv, &i, "api-socket")) && !control[0]) {
				if (!find_opt(v, "path", control, control_len) && !strchr(v, '='))
					copy_optval(v, control, control_len);
			}
			break;
		case VMOPS_HV_FIRECRACKER:
			if ((v = opt_value(argc, argv, &i, "api-sock")) && !control[0])
				snprintf(control, control_len, "%s", v);
			break;
		case VMOPS_HV_NONE:
			return;
		}
	}
}

bool vmops_ghost_socket_removable(const char *path, long long vmm_id, const char *vmm_run_dir,
				  const char *worker_run_dir)
{
	char conv[PATH_MAX];
	size_t wl;

	if (!path || vmm_id < 0 || !clean_abs(path, strlen(path)))
		return false;
	if (vmm_run_dir && *vmm_run_dir && vmops_ghost_path_inside(path, vmm_run_dir))
		return true;
	wl = clean_dir_len(worker_run_dir);
	if (wl && (size_t)snprintf(conv, sizeof(conv), "%.*s/vmm-%lld", (int)wl, worker_run_dir,
				   vmm_id) < sizeof(conv) &&
	    vmops_ghost_path_inside(path, conv))
		return true;
	{
		char *const one[] = { (char *)"", (char *)(uintptr_t)path, NULL };

		return vmops_proc_vmm_id(2, one) == vmm_id;
	}
}

const char *vmops_ghost_class_name(enum vmops_ghost_class cls)
{
	switch (cls) {
	case VMOPS_GHOST_HEALTHY: return "healthy";
	case VMOPS_GHOST_GHOST: return "ghost";
	case VMOPS_GHOST_YOUNG: return "young";
	case VMOPS_GHOST_PHANTOM: return "phantom";
	case VMOPS_GHOST_ZOMBIE: return "zombie";
	case VMOPS_GHOST_FOREIGN: return "foreign";
	case VMOPS_GHOST_UNKNOWN: return "unknown";
	}
	return "?";
}

const char *vmops_ghost_act_name(enum vmops_ghost_act act)
{
	switch (act) {
	case VMOPS_GHOST_ACT_NONE: return "none";
	case VMOPS_GHOST_ACT_REPORTED: return "reported";
	case VMOPS_GHOST_ACT_WOULD_KILL: return "would-kill";
	case VMOPS_GHOST_ACT_KILLED: return "killed";
	case VMOPS_GHOST_ACT_WOULD_REPAIR: return "would-repair";
	case VMOPS_GHOST_ACT_REPAIRED: return "repaired";
	case VMOPS_GHOST_ACT_SKIPPED: return "skipped";
	case VMOPS_GHOST_ACT_FAILED: return "failed";
	}
	return "?";
}

/* ---- the two sides -------------------------------------------------------- */

/* A hypervisor process carrying a fleet token. */
struct proc_ent {
	pid_t pid;
	unsigned long long start;
	enum vmops_hv_kind hv;
	long long vmm_id;
	int argc;
	char **argv;        /* one allocation: pointers, then strings */
	double age;
};

/* A VMM row: this worker's live ones, and those the scan named by id. */
struct vmm_row {
	long long id, worker_id;
	char worker[64];
	char state[16];
	bool deleted;
	long long pid, start;           /* -1: NULL */
	char control_socket[PATH_MAX];
	char agent_socket[PATH_MAX];
	char run_dir[PATH_MAX];
	char hypervisor[20];
	char sandbox[64];
	double state_age;
	bool migrating;                 /* its sandbox is migrating, or a migration names it */
	bool matched;                   /* a scanned process is this row's process */
};

enum ghost_reason {
	REASON_NONE = 0,
	REASON_UNKNOWN,        /* no row */
	REASON_DEAD_ROW,       /* destroyed, failed or deleted */
	REASON_OTHER_PROCESS,  /* live row of this worker naming another process */
	REASON_STALE_START,    /* the process of a VMM starting for too long: its
	                          launch was abandoned */
};

struct work {
	struct vmops_ghost_item it;
	struct proc_ent *p;     /* ghosts, healthy/foreign processes */
	struct vmm_row *r;      /* the row (NULL: none) */
	enum ghost_reason reason;
};

struct ctx {
	const struct vmops_ghost_opts *o;
	PGconn *c;
	const char *root;
	long long worker_id;
	char worker_run_dir[PATH_MAX];
	bool may_repair;                /* live /proc, or told to trust the recording */
	double uptime;
	struct proc_ent *procs;
	size_t nprocs, capprocs;
	long long hypervisors;
	struct vmm_row *rows;
	size_t nrows;
	struct work *work;
	size_t nwork, capwork;
	struct vmops_error scan_err;
	bool scan_failed;
};

static double round2(double v)
{
	return round(v * 100.0) / 100.0;
}

static bool dead_state(const char *state)
{
	return !strcmp(state, "destroyed") || !strcmp(state, "failed");
}

static int scan_cb(const struct vmops_proc_info *info, void *data)
{
	struct ctx *x = data;
	struct proc_ent *p;
	size_t bytes = 0;
	char *s;
	int i;

	x->hypervisors++;
	if (info->vmm_id < 0)
		return 0;  /* a hypervisor, but not one vmops launched */
	if (x->nprocs == x->capprocs) {
		size_t ncap = x->capprocs ? x->capprocs * 2 : 16;
		struct proc_ent *np = realloc(x->procs, ncap * sizeof(*np));

		if (!np)
			goto oom;
		x->procs = np;
		x->capprocs = ncap;
	}
	p = &x->procs[x->nprocs];
	memset(p, 0, sizeof(*p));
	for (i = 0; i < info->argc; i++)
		bytes += strlen(info->argv[i]) + 1;
	p->argv = malloc(((size_t)info->argc + 1) * sizeof(char *) + bytes);
	if (!p->argv)
		goto oom;
	s = (char *)(p->argv + info->argc + 1);
	for (i = 0; i < info->argc; i++) {
		size_t n = strlen(info->argv[i]) + 1;

		memcpy(s, info->argv[i], n);
		p->argv[i] = s;
		s += n;
	}
	p->argv[info->argc] = NULL;
	p->argc = info->argc;
	p->pid = info->stat.pid;
	p->start = info->stat.starttime;
	p->hv = info->hv;
	p->vmm_id = info->vmm_id;
	x->nprocs++;
	return 0;
oom:
	x->scan_failed = true;
	vmops_err(&x->scan_err, VMOPS_EXIT_FAILURE, "scan %s: out of memory", x->root);
	return 2;
}

static struct work *add_work(struct ctx *x, enum vmops_ghost_class cls, struct proc_ent *p,
			     struct vmm_row *r, struct vmops_error *e)
{
	struct work *w;

	if (x->nwork == x->capwork) {
		size_t ncap = x->capwork ? x->capwork * 2 : 16;
		struct work *nw = realloc(x->work, ncap * sizeof(*nw));

		if (!nw) {
			vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
			return NULL;
		}
		x->work = nw;
		x->capwork = ncap;
	}
	w = &x->work[x->nwork++];
	memset(w, 0, sizeof(*w));
	w->p = p;
	w->r = r;
	w->it.cls = cls;
	w->it.act = VMOPS_GHOST_ACT_NONE;
	w->it.vmm_id = r ? r->id : (p ? p->vmm_id : -1);
	w->it.pid = p ? p->pid : 0;
	w->it.start_time = p ? (long long)p->start : -1;
	w->it.age_s = p ? p->age : -1;
	if (p)
		snprintf(w->it.hypervisor, sizeof(w->it.hypervisor), "%s", vmops_proc_hv_name(p->hv));
	else if (r)
		snprintf(w->it.hypervisor, sizeof(w->it.hypervisor), "%s", r->hypervisor);
	if (r) {
		snprintf(w->it.state, sizeof(w->it.state), "%s", r->deleted ? "deleted" : r->state);
		snprintf(w->it.sandbox, sizeof(w->it.sandbox), "%s", r->sandbox);
	}
	return w;
}

/* The rows: this worker's live VMMs, and every VMM the scan named. */
static int load_rows(struct ctx *x, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	_cleanup_free_ char *ids = NULL;
	char wid[24];
	size_t cap = 3 + x->nprocs * 21, n = 0;
	int i;

	ids = malloc(cap);
	if (!ids)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	ids[n++] = '{';
	for (size_t k = 0; k < x->nprocs; k++)
		n += (size_t)snprintf(ids + n, cap - n, "%s%lld", k ? "," : "", x->procs[k].vmm_id);
	ids[n++] = '}';
	ids[n] = '\0';
	r = vmops_db_q(x->c, e,
		       "SELECT v.id, v.worker_id, w.name AS worker, v.state, v.time_deleted IS NOT NULL AS deleted,"
		       " v.pid, v.pid_start_time, v.control_socket, v.agent_socket, v.run_dir, v.hypervisor,"
		       " s.name AS sandbox,"
		       " extract(epoch FROM now() - v.time_state_updated)::float8 AS state_age,"
		       " (s.status = 'migrating' OR EXISTS (SELECT 1 FROM migrations m"
		       "   WHERE (m.source_vmm_id = v.id OR m.target_vmm_id = v.id)"
		       "   AND m.state IN ('queued', 'preparing', 'transferring', 'switching'))) AS migrating"
		       " FROM vmms v JOIN workers w ON w.id = v.worker_id JOIN sandboxes s ON s.id = v.sandbox_id"
		       " WHERE (v.worker_id = $1 AND v.time_deleted IS NULL"
		       "        AND v.state IN ('starting', 'running', 'migrating'))"
		       "    OR v.id = ANY ($2::bigint[])"
		       " ORDER BY v.id",
		       vmops_db_ll(wid, x->worker_id), ids);
	if (!r)
		return vmops_err_prefix(e, "worker %s: vmms", x->o->worker);
	x->nrows = (size_t)PQntuples(r);
	if (x->nrows) {
		x->rows = calloc(x->nrows, sizeof(*x->rows));
		if (!x->rows)
			return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	}
	for (i = 0; i < PQntuples(r); i++) {
		struct vmm_row *w = &x->rows[i];
		const char *v;

		w->id = vmops_db_get_ll(r, i, "id", -1);
		w->worker_id = vmops_db_get_ll(r, i, "worker_id", -1);
		snprintf(w->worker, sizeof(w->worker), "%s", vmops_db_get(r, i, "worker"));
		snprintf(w->state, sizeof(w->state), "%s", vmops_db_get(r, i, "state"));
		w->deleted = !strcmp(vmops_db_get(r, i, "deleted"), "t");
		w->pid = vmops_db_get_ll(r, i, "pid", -1);
		w->start = vmops_db_get_ll(r, i, "pid_start_time", -1);
#define COPY(f) snprintf(w->f, sizeof(w->f), "%s", (v = vmops_db_get(r, i, #f)) ? v : "")
		COPY(control_socket);
		COPY(agent_socket);
		COPY(run_dir);
		COPY(hypervisor);
		COPY(sandbox);
#undef COPY
		v = vmops_db_get(r, i, "state_age");
		w->state_age = v ? strtod(v, NULL) : 0;
		w->migrating = !strcmp(vmops_db_get(r, i, "migrating"), "t");
	}
	return 0;
}

static struct vmm_row *row_by_id(struct ctx *x, long long id)
{
	size_t lo = 0, hi = x->nrows;

	while (lo < hi) {  /* rows are ordered by id */
		size_t mid = lo + (hi - lo) / 2;

		if (x->rows[mid].id == id)
			return &x->rows[mid];
		if (x->rows[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static bool row_live_here(const struct ctx *x, const struct vmm_row *r)
{
	return r->worker_id == x->worker_id && !r->deleted && !dead_state(r->state);
}

/* The live row of this worker whose recorded process is p, if any. */
static struct vmm_row *row_by_process(struct ctx *x, const struct proc_ent *p)
{
	for (size_t i = 0; i < x->nrows; i++) {
		struct vmm_row *r = &x->rows[i];

		if (row_live_here(x, r) && r->pid == p->pid && r->start >= 0 &&
		    (unsigned long long)r->start == p->start)
			return r;
	}
	return NULL;
}

/* ---- classification ------------------------------------------------------- */

/* A VMM starting for longer than the bound: whoever launched it is gone
 * (a launch records running, or removes it, well within that time).  Not a
 * migration's: those are vm-migrate's to judge. */
static bool stale_start(const struct ctx *x, const struct vmm_row *r)
{
	return !strcmp(r->state, "starting") && !r->migrating &&
	       r->state_age * 1000.0 >= (double)x->o->starting_timeout_ms;
}

/* The process p is the (recorded or token-named) process of starting VMM r
 * that has been starting too long: a ghost, to stop before r is repaired. */
static int add_stale(struct ctx *x, struct proc_ent *p, struct vmm_row *r, struct vmops_error *e)
{
	struct work *w;

	r->matched = true;
	if (!(w = add_work(x, VMOPS_GHOST_GHOST, p, r, e)))
		return -1;
	w->reason = REASON_STALE_START;
	if (!p) {
		w->it.pid = (pid_t)r->pid;
		w->it.start_time = r->start;
		w->it.age_s = round2(r->state_age > 0 ? r->state_age : 0);
	}
	snprintf(w->it.detail, sizeof(w->it.detail),
		 "vmm %lld has been starting for %.0f s (more than --starting-timeout): its launch was abandoned",
		 r->id, r->state_age);
	return 0;
}

static int classify_process(struct ctx *x, struct proc_ent *p, struct vmops_error *e)
{
	struct vmm_row *r = row_by_process(x, p);
	struct work *w;
	bool mine;

	if (r) {
		if (stale_start(x, r))
			return add_stale(x, p, r, e);
		r->matched = true;
		if (!(w = add_work(x, VMOPS_GHOST_HEALTHY, p, r, e)))
			return -1;
		if (p->vmm_id != r->id)
			snprintf(w->it.detail, sizeof(w->it.detail), "command line names vmm %lld", p->vmm_id);
		return 0;
	}
	r = row_by_id(x, p->vmm_id);
	mine = vmops_ghost_argv_names_dir(p->argc, p->argv, x->worker_run_dir) ||
	       (r && r->worker_id == x->worker_id && r->run_dir[0] &&
		vmops_ghost_argv_names_dir(p->argc, p->argv, r->run_dir));
	if (!mine || (r && !r->deleted && !dead_state(r->state) && r->worker_id != x->worker_id)) {
		if (!(w = add_work(x, VMOPS_GHOST_FOREIGN, p, NULL, e)))
			return -1;
		if (r && !r->deleted && !dead_state(r->state) && r->worker_id != x->worker_id)
			snprintf(w->it.detail, sizeof(w->it.detail), "vmm %lld is %s on worker %s",
				 r->id, r->state, r->worker);
		else
			snprintf(w->it.detail, sizeof(w->it.detail),
				 "not this worker's: its command line names no path in %.400s", x->worker_run_dir);
		return 0;
	}
	if (r && !r->deleted && !dead_state(r->state) && r->pid < 0) {
		/* a starting VMM whose pid is not recorded yet */
		if (stale_start(x, r))
			return add_stale(x, p, r, e);
		r->matched = true;
		if (!(w = add_work(x, VMOPS_GHOST_HEALTHY, p, r, e)))
			return -1;
		snprintf(w->it.detail, sizeof(w->it.detail), "pid not recorded yet");
		return 0;
	}
	if (r && !r->deleted && !dead_state(r->state) && r->pid == p->pid && r->start <= 0) {
		/* its pid, but no start time to prove it is its process */
		r->matched = true;
		if (!(w = add_work(x, VMOPS_GHOST_UNKNOWN, p, r, e)))
			return -1;
		snprintf(w->it.detail, sizeof(w->it.detail),
			 "vmm %lld records pid %d without a start time: cannot tell whether this is its process; nothing done",
			 r->id, (int)p->pid);
		return 0;
	}
	if (!(w = add_work(x, VMOPS_GHOST_GHOST, p, r, e)))
		return -1;
	if (!r) {
		w->reason = REASON_UNKNOWN;
		snprintf(w->it.detail, sizeof(w->it.detail), "vmm %lld is not in the database", p->vmm_id);
	} else if (r->deleted || dead_state(r->state)) {
		w->reason = REASON_DEAD_ROW;
		snprintf(w->it.detail, sizeof(w->it.detail), "vmm %lld is %s in the database", r->id,
			 r->deleted ? "deleted" : r->state);
	} else {
		w->reason = REASON_OTHER_PROCESS;
		snprintf(w->it.detail, sizeof(w->it.detail), "vmm %lld is recorded as pid %lld (start time %lld)",
			 r->id, r->pid, r->start);
	}
	if (p->age * 1000.0 < (double)x->o->min_age_ms) {
		size_t n = strlen(w->it.detail);

		w->it.cls = VMOPS_GHOST_YOUNG;
		snprintf(w->it.detail + n, sizeof(w->it.detail) - n, "; younger than --min-age");
	}
	return 0;
}

static int classify_row(struct ctx *x, struct vmm_row *r, struct vmops_error *e)
{
	struct vmops_proc_stat st;
	struct vmops_error ce = { 0 };
	struct work *w;
	int live;

	if (r->matched || !row_live_here(x, r))
		return 0;
	if (r->pid < 0) {
		/* No pid recorded and no process carries its id. */
		bool young = r->state_age * 1000.0 < (double)x->o->min_age_ms;

		if (!(w = add_work(x, young ? VMOPS_GHOST_YOUNG : VMOPS_GHOST_PHANTOM, NULL, r, e)))
			return -1;
		w->it.age_s = round2(r->state_age > 0 ? r->state_age : 0);
		snprintf(w->it.detail, sizeof(w->it.detail), "%s, no pid recorded and no process carries vmops-vmm-%lld%s",
			 r->state, r->id, young ? "; changed state less than --min-age ago" : "");
		return 0;
	}
	/* a NULL start time is as unknown as 0 */
	live = vmops_proc_check(x->root, (pid_t)r->pid, r->start > 0 ? (unsigned long long)r->start : 0, &st, &ce);
	if (live == VMOPS_PROC_ALIVE && stale_start(x, r))
		return add_stale(x, NULL, r, e);
	if (!(w = add_work(x, VMOPS_GHOST_HEALTHY, NULL, r, e)))
		return -1;
	w->it.pid = (pid_t)r->pid;
	w->it.start_time = r->start;
	switch (live) {
	case VMOPS_PROC_ALIVE:
		w->it.age_s = round2(vmops_proc_age_at(x->uptime, st.starttime));
		break;
	case VMOPS_PROC_UNKNOWN:
		w->it.cls = VMOPS_GHOST_UNKNOWN;
		w->it.age_s = round2(vmops_proc_age_at(x->uptime, st.starttime));
		snprintf(w->it.detail, sizeof(w->it.detail),
			 "pid %lld is alive and no start time is recorded: cannot tell whether it is this vmm; nothing done",
			 r->pid);
		break;
	case VMOPS_PROC_DEAD:
		if (st.state == 'Z') {
			w->it.cls = VMOPS_GHOST_ZOMBIE;
			w->it.parent = st.ppid;
			w->it.age_s = round2(vmops_proc_age_at(x->uptime, st.starttime));
			snprintf(w->it.detail, sizeof(w->it.detail),
				 "zombie: exited, parent pid %d has not reaped it", (int)st.ppid);
		} else if (st.state) {
			w->it.cls = VMOPS_GHOST_PHANTOM;
			w->it.age_s = round2(vmops_proc_age_at(x->uptime, st.starttime));
			snprintf(w->it.detail, sizeof(w->it.detail), "process dead (state %c)", st.state);
		} else {
			w->it.cls = VMOPS_GHOST_PHANTOM;
			snprintf(w->it.detail, sizeof(w->it.detail), "process gone");
		}
		break;
	case VMOPS_PROC_REUSED:
		w->it.cls = VMOPS_GHOST_PHANTOM;
		snprintf(w->it.detail, sizeof(w->it.detail),
			 "pid %lld is another process now (start time %llu, recorded %lld); not signalled",
			 r->pid, st.starttime, r->start);
		break;
	default:
		/* cannot tell: report it, act on nothing */
		w->it.cls = VMOPS_GHOST_UNKNOWN;
		snprintf(w->it.detail, sizeof(w->it.detail), "cannot check pid %lld: %.400s; nothing done", r->pid,
			 ce.msg);
		break;
	}
	return 0;
}

/* ---- acting on ghosts ----------------------------------------------------- */

/* A stale starting VMM still as it was read, still starting too long? */
static int stale_recheck(struct ctx *x, struct work *w, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	const struct vmm_row *row = w->r;
	char vid[24];

	r = vmops_db_q(x->c, e,
		       "SELECT v.state, v.pid, v.pid_start_time, v.worker_id, v.time_deleted IS NULL AS live,"
		       " extract(epoch FROM now() - v.time_state_updated)::float8 * 1000 AS age_ms,"
		       " (s.status = 'migrating' OR EXISTS (SELECT 1 FROM migrations m"
		       "   WHERE (m.source_vmm_id = v.id OR m.target_vmm_id = v.id)"
		       "   AND m.state IN ('queued', 'preparing', 'transferring', 'switching'))) AS migrating"
		       " FROM vmms v JOIN sandboxes s ON s.id = v.sandbox_id WHERE v.id = $1",
		       vmops_db_ll(vid, row->id));
	if (!r)
		return -1;
	if (PQntuples(r) == 1 && !strcmp(vmops_db_get(r, 0, "state"), "starting") &&
	    !strcmp(vmops_db_get(r, 0, "live"), "t") && !strcmp(vmops_db_get(r, 0, "migrating"), "f") &&
	    vmops_db_get_ll(r, 0, "worker_id", -1) == row->worker_id &&
	    vmops_db_get_ll(r, 0, "pid", -1) == row->pid &&
	    vmops_db_get_ll(r, 0, "pid_start_time", -1) == row->start &&
	    strtod(vmops_db_get(r, 0, "age_ms"), NULL) >= (double)x->o->starting_timeout_ms)
		return 0;
	snprintf(w->it.detail, sizeof(w->it.detail), "vmm %lld changed since it was read (now %s); not signalled",
		 row->id, PQntuples(r) == 1 ? vmops_db_get(r, 0, "state") : "gone");
	return 1;
}

/* Is the ghost still a ghost in the database?  0 yes, 1 no (detail set), -1. */
static int ghost_recheck(struct ctx *x, struct work *w, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	char vid[24];
	const struct proc_ent *p = w->p;
	const char *state;
	long long pid;
	bool deleted;

	if (w->reason == REASON_STALE_START)
		return stale_recheck(x, w, e);
	r = vmops_db_q(x->c, e, "SELECT state, time_deleted IS NOT NULL AS deleted, worker_id, pid, pid_start_time"
				" FROM vmms WHERE id = $1", vmops_db_ll(vid, p->vmm_id));
	if (!r)
		return -1;
	if (PQntuples(r) == 0) {
		if (w->reason == REASON_UNKNOWN)
			return 0;
		snprintf(w->it.detail, sizeof(w->it.detail), "vmm %lld vanished from the database; not signalled",
			 p->vmm_id);
		return 1;
	}
	state = vmops_db_get(r, 0, "state");
	deleted = !strcmp(vmops_db_get(r, 0, "deleted"), "t");
	pid = vmops_db_get_ll(r, 0, "pid", -1);
	if (deleted || dead_state(state))
		return 0;
	/* live: still a ghost only if it names another pid, as it did (the same
	 * pid with another or no start time is not proof enough) */
	if (w->reason == REASON_OTHER_PROCESS && pid >= 0 && vmops_db_get_ll(r, 0, "worker_id", -1) == x->worker_id &&
	    pid != p->pid)
		return 0;
	snprintf(w->it.detail, sizeof(w->it.detail), "vmm %lld is %s in the database now; not signalled",
		 p->vmm_id, state);
	return 1;
}

static void append(struct work *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void append(struct work *w, const char *fmt, ...)
{
	size_t n = strlen(w->it.detail);
	va_list ap;

	if (n + 1 >= sizeof(w->it.detail))
		return;
	va_start(ap, fmt);
	vsnprintf(w->it.detail + n, sizeof(w->it.detail) - n, fmt, ap);
	va_end(ap);
}

/* Remove a killed ghost's leftover socket, if the rules allow. */
static void remove_socket(struct ctx *x, struct work *w, const char *path)
{
	struct stat sb;

	if (!path[0])
		return;
	if (!vmops_ghost_socket_removable(path, w->it.vmm_id, w->r ? w->r->run_dir : NULL,
					  x->worker_run_dir)) {
		append(w, "; kept %s (not in the vmm's run directory)", path);
		return;
	}
	if (lstat(path, &sb) < 0) {
		if (errno != ENOENT)
			append(w, "; %s: %s", path, strerror(errno));
		return;  /* the hypervisor removed it itself */
	}
	if (!S_ISSOCK(sb.st_mode)) {
		append(w, "; kept %s (not a socket)", path);
		return;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		append(w, "; remove %s: %s", path, strerror(errno));
		return;
	}
	append(w, "; removed %s", path);
}

static int repair_phantom(struct ctx *x, struct work *w, struct vmops_error *e);

/*
 * A killed ghost's run directory: the one recorded for its VMM, else the
 * worker's vmm-ID.  lib/rundir refuses one that is not ours and keeps one
 * with files a VMM does not leave.
 */
static void remove_run_dir(struct ctx *x, struct work *w)
{
	char dir[PATH_MAX], name[24];

	if (w->r && w->r->run_dir[0])
		snprintf(dir, sizeof(dir), "%s", w->r->run_dir);
	else if (w->it.vmm_id > 0 && x->worker_run_dir[0] &&
		 (size_t)snprintf(dir, sizeof(dir), "%s/vmm-%lld", x->worker_run_dir, w->it.vmm_id) < sizeof(dir))
		;
	else
		return;
	if (vmops_vm_run_dir_gone(dir, "vmm", vmops_db_ll(name, w->it.vmm_id)) == 0)
		append(w, "; removed its run directory");
}

static int kill_ghost(struct ctx *x, struct work *w, struct vmops_error *e)
{
	struct vmops_proc_term_outcome out;
	struct vmops_error ke = { 0 };
	char control[PATH_MAX] = "", agent[PATH_MAX] = "";
	pid_t pid = w->p ? w->p->pid : w->it.pid;
	unsigned long long start = w->p ? w->p->start : 0;
	int r;

	if (!w->p) {
		/* the recorded process of an abandoned start that the scan did not
		 * find as a hypervisor (executable unreadable, or not one): only
		 * hypervisor processes of this fleet are ever signalled */
		w->it.act = VMOPS_GHOST_ACT_SKIPPED;
		append(w, "; pid %d is not a hypervisor process this run could identify: not signalled", (int)pid);
		return 0;
	}
	r = ghost_recheck(x, w, e);
	if (r < 0)
		return -1;
	if (r > 0) {
		w->it.act = VMOPS_GHOST_ACT_SKIPPED;
		return 0;
	}
	/* pidfd, start time checked once it is open: a reused pid (or one
	 * without a start time) is refused, never signalled */
	r = vmops_proc_terminate(pid, start, x->o->grace_ms, &out, &ke);
	if (r == VMOPS_PROC_SIG_REFUSED) {
		w->it.act = VMOPS_GHOST_ACT_SKIPPED;
		snprintf(w->it.detail, sizeof(w->it.detail), "%.500s", ke.msg);
		return 0;
	}
	if (r != VMOPS_PROC_SIG_SENT) {
		w->it.act = VMOPS_GHOST_ACT_FAILED;
		append(w, "; kill: %s", ke.msg);
		vmops_warn("ghost pid %d (vmm %lld): %s", (int)pid, w->it.vmm_id, ke.msg);
		return 0;
	}
	w->it.act = VMOPS_GHOST_ACT_KILLED;
	switch (out.how) {
	case VMOPS_PROC_TERM_GONE:
		append(w, "; had exited already");
		break;
	case VMOPS_PROC_TERM_ZOMBIE:
		append(w, "; had exited already, parent pid %d has not reaped it", (int)out.ppid);
		break;
	case VMOPS_PROC_TERM_TERM:
		append(w, "; exited %u ms after SIGTERM", out.elapsed_ms);
		break;
	case VMOPS_PROC_TERM_KILL:
		append(w, "; SIGKILL after %u ms grace", x->o->grace_ms);
		break;
	}
	vmops_info("killed ghost pid %d (vmm %lld)", (int)pid, w->it.vmm_id);
	if (w->p)
		vmops_ghost_argv_sockets(w->p->hv, w->p->argc, w->p->argv, control, sizeof(control), agent,
					 sizeof(agent));
	if (w->r && w->r->control_socket[0])
		snprintf(control, sizeof(control), "%s", w->r->control_socket);
	if (w->r && w->r->agent_socket[0])
		snprintf(agent, sizeof(agent), "%s", w->r->agent_socket);
	remove_socket(x, w, control);
	if (strcmp(agent, control) != 0)
		remove_socket(x, w, agent);
	/* A stale start becomes a failed VMM below: its logs stay as evidence until vmm-reap. */
	if (w->reason != REASON_STALE_START && out.how != VMOPS_PROC_TERM_ZOMBIE)
		remove_run_dir(x, w);
	if (w->reason == REASON_STALE_START) {
		/* its process is gone now: the abandoned VMM is a phantom to repair */
		if (repair_phantom(x, w, e) < 0)
			return -1;
		if (w->it.act == VMOPS_GHOST_ACT_REPAIRED)
			w->it.act = VMOPS_GHOST_ACT_KILLED;
	}
	return 0;
}

/* ---- repairing phantoms --------------------------------------------------- */

struct repair {
	struct ctx *x;
	struct work *w;
	bool skipped;
	char why[256];
	long long events_closed;
	bool sandbox_error, reservation_deleted;
};

static bool same_ll(const char *v, long long want)
{
	return v ? want >= 0 && strtoll(v, NULL, 10) == want : want < 0;
}

static int skip(struct repair *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int skip(struct repair *a, const char *fmt, ...)
{
	va_list ap;

	a->skipped = true;
	va_start(ap, fmt);
	vsnprintf(a->why, sizeof(a->why), fmt, ap);
	va_end(ap);
	return 0;  /* commits nothing */
}

static int repair_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct repair *a = data;
	const struct vmm_row *r = a->w->r;
	_cleanup_pgresult_ PGresult *v = NULL, *s = NULL, *m = NULL, *ev = NULL, *res = NULL;
	char vid[24], sid[24], before[512], after[256], n1[24], n2[24];
	const char *status;
	bool touch_sandbox;

	a->skipped = false;
	a->why[0] = '\0';
	a->events_closed = 0;
	a->sandbox_error = a->reservation_deleted = false;
	vmops_db_ll(vid, r->id);
	v = vmops_db_q(c, e, "SELECT state, pid, pid_start_time, time_deleted IS NULL AS live, worker_id, sandbox_id"
			     " FROM vmms WHERE id = $1 FOR UPDATE", vid);
	if (!v)
		return -1;
	if (PQntuples(v) == 0)
		return skip(a, "vmm %lld vanished from the database", r->id);
	if (strcmp(vmops_db_get(v, 0, "state"), r->state) != 0 ||
	    strcmp(vmops_db_get(v, 0, "live"), "t") != 0 ||
	    vmops_db_get_ll(v, 0, "worker_id", -1) != r->worker_id ||
	    !same_ll(vmops_db_get(v, 0, "pid"), r->pid) ||
	    !same_ll(vmops_db_get(v, 0, "pid_start_time"), r->start))
		return skip(a, "vmm %lld changed since it was read (now %s)", r->id, vmops_db_get(v, 0, "state"));
	if (strcmp(r->state, "running") != 0 && strcmp(r->state, "starting") != 0)
		return skip(a, "vmm %lld is %s: left to vm-migrate", r->id, r->state);
	vmops_db_ll(sid, vmops_db_get_ll(v, 0, "sandbox_id", -1));
	s = vmops_db_q(c, e, "SELECT status, coalesce(active_vmm_id = $2 OR target_vmm_id = $2, false) AS mine"
			     " FROM sandboxes WHERE id = $1 FOR UPDATE", sid, vid);
	if (!s)
		return -1;
	if (PQntuples(s) == 0)
		return skip(a, "sandbox of vmm %lld vanished", r->id);
	status = vmops_db_get(s, 0, "status");
	if (!strcmp(status, "migrating"))
		return skip(a, "sandbox %s is migrating: left to vm-migrate", r->sandbox);
	m = vmops_db_q(c, e, "SELECT id FROM migrations WHERE (source_vmm_id = $1 OR target_vmm_id = $1)"
			     " AND state IN ('queued', 'preparing', 'transferring', 'switching') LIMIT 1", vid);
	if (!m)
		return -1;
	if (PQntuples(m) > 0)
		return skip(a, "migration %s of vmm %lld is in progress: left to vm-migrate",
			    vmops_db_get(m, 0, "id"), r->id);
	touch_sandbox = !strcmp(vmops_db_get(s, 0, "mine"), "t") &&
			(!strcmp(status, "pending") || !strcmp(status, "running"));

	ev = vmops_db_q(c, e, "SELECT count(*) AS n FROM scale_events WHERE ended_at IS NULL"
			      " AND (vmm_id = $1 OR (sandbox_id = $2 AND $3::bool))",
			vid, sid, touch_sandbox ? "true" : "false");
	if (!ev)
		return -1;
	a->events_closed = vmops_db_get_ll(ev, 0, "n", 0);
	if (vmops_db_x(c, e, "UPDATE vmms SET state = 'failed' WHERE id = $1", vid) < 0)
		return -1;
	res = vmops_db_q(c, e, "DELETE FROM reservations WHERE vmm_id = $1 RETURNING vmm_id", vid);
	if (!res)
		return -1;
	a->reservation_deleted = PQntuples(res) > 0;
	if (touch_sandbox) {
		/* The database closes the sandbox's open scale events (invariant 2). */
		if (vmops_db_x(c, e, "UPDATE sandboxes SET status = 'error' WHERE id = $1", sid) < 0)
			return -1;
		a->sandbox_error = true;
	}
	/* An event of this VMM that is still open (e.g. on a sandbox this VMM no
	 * longer serves) is closed too. */
	if (vmops_db_x(c, e, "UPDATE scale_events SET ended_at = greatest(now(), started_at)"
			     " WHERE vmm_id = $1 AND ended_at IS NULL", vid) < 0)
		return -1;
	snprintf(before, sizeof(before),
		 "{\"vmm_state\": \"%s\", \"pid\": %s, \"pid_start_time\": %s, \"sandbox_status\": \"%s\"}",
		 r->state, r->pid >= 0 ? vmops_db_ll(n1, r->pid) : "null",
		 r->start >= 0 ? vmops_db_ll(n2, r->start) : "null", status);
	snprintf(after, sizeof(after),
		 "{\"vmm_state\": \"failed\", \"sandbox_status\": \"%s\", \"events_closed\": %lld,"
		 " \"reservation_deleted\": %s}",
		 a->sandbox_error ? "error" : status, a->events_closed,
		 a->reservation_deleted ? "true" : "false");
	return vmops_audit(c, a->x->o->program ? a->x->o->program : "ghost-reap",
			   a->w->reason == REASON_STALE_START ? "stale-start-repair" :
			   a->w->it.cls == VMOPS_GHOST_ZOMBIE ? "zombie-repair" : "phantom-repair",
			   "vmm", r->id, before, after, a->w->it.detail, e);
}

static int repair_phantom(struct ctx *x, struct work *w, struct vmops_error *e)
{
	struct repair a = { .x = x, .w = w };
	struct vmops_error te = { 0 };

	if (vmops_db_tx(x->c, VMOPS_READ_COMMITTED, repair_tx, &a, &te) < 0) {
		if (te.code == VMOPS_EXIT_DB || PQstatus(x->c) != CONNECTION_OK) {
			*e = te;
			return vmops_err_prefix(e, "vmm %lld", w->r->id);
		}
		w->it.act = VMOPS_GHOST_ACT_FAILED;
		append(w, "; repair: %s", te.msg);
		vmops_warn("vmm %lld: repair failed: %s", w->r->id, te.msg);
		return 0;
	}
	if (a.skipped) {
		w->it.act = VMOPS_GHOST_ACT_SKIPPED;
		append(w, "; %s", a.why);
		return 0;
	}
	w->it.act = VMOPS_GHOST_ACT_REPAIRED;
	snprintf(w->it.state, sizeof(w->it.state), "failed");
	append(w, "; vmm failed%s, %lld scale event(s) closed%s", a.sandbox_error ? ", sandbox error" : "",
	       a.events_closed, a.reservation_deleted ? ", reservation deleted" : "");
	vmops_info("repaired vmm %lld (%s)", w->r->id, vmops_ghost_class_name(w->it.cls));
	return 0;
}

/* ---- the run -------------------------------------------------------------- */

static int cmp_work(const void *a, const void *b)
{
	const struct vmops_ghost_item *x = &((const struct work *)a)->it;
	const struct vmops_ghost_item *y = &((const struct work *)b)->it;
	unsigned long long ix = (unsigned long long)x->vmm_id, iy = (unsigned long long)y->vmm_id;

	/* -1 sorts last as the largest unsigned value */
	if (ix != iy)
		return ix < iy ? -1 : 1;
	return (x->pid > y->pid) - (x->pid < y->pid);
}

static int lookup_worker(struct ctx *x, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;
	const char *recorded;

	r = vmops_db_q(x->c, e, "SELECT id, run_dir, host_id FROM workers WHERE name = $1", x->o->worker);
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "worker %s does not exist", x->o->worker);
	/* This /proc must be the worker's before anything is judged from it. */
	recorded = vmops_db_get(r, 0, "host_id");
	if (x->o->live) {
		if (!x->o->host_id || !*x->o->host_id)
			return vmops_err(e, VMOPS_EXIT_WRONG_HOST,
					 "worker %s: this host's identity is unknown, so it cannot be shown to be that worker; nothing done",
					 x->o->worker);
		if (!recorded)
			return vmops_err(e, VMOPS_EXIT_WRONG_HOST,
					 "worker %s has no host identity recorded: run 'vm-fleet worker set-host %s' on its host; nothing done",
					 x->o->worker, x->o->worker);
		if (strcmp(recorded, x->o->host_id) != 0)
			return vmops_err(e, VMOPS_EXIT_WRONG_HOST,
					 "this host (%.130s) is not worker %s (host %.130s); nothing done",
					 x->o->host_id, x->o->worker, recorded);
	}
	x->worker_id = vmops_db_get_ll(r, 0, "id", -1);
	return vmops_vm_worker_run_dir(vmops_db_get(r, 0, "run_dir"), x->o->worker, x->worker_run_dir,
				       sizeof(x->worker_run_dir), e);
}

static void count(struct vmops_ghost_report *rep, const struct vmops_ghost_item *it)
{
	switch (it->cls) {
	case VMOPS_GHOST_HEALTHY: rep->healthy++; break;
	case VMOPS_GHOST_GHOST: rep->ghosts++; break;
	case VMOPS_GHOST_YOUNG: rep->young++; break;
	case VMOPS_GHOST_PHANTOM: rep->phantoms++; break;
	case VMOPS_GHOST_ZOMBIE: rep->zombies++; break;
	case VMOPS_GHOST_FOREIGN: rep->foreign++; break;
	case VMOPS_GHOST_UNKNOWN: rep->unknown++; break;
	}
	switch (it->act) {
	case VMOPS_GHOST_ACT_KILLED: rep->killed++; break;
	case VMOPS_GHOST_ACT_REPAIRED: rep->repaired++; break;
	case VMOPS_GHOST_ACT_FAILED: rep->errors++; break;
	default: break;
	}
	if (it->cls == VMOPS_GHOST_GHOST || it->cls == VMOPS_GHOST_PHANTOM || it->cls == VMOPS_GHOST_ZOMBIE ||
	    it->cls == VMOPS_GHOST_UNKNOWN) {
		rep->problems++;
		if (it->act != VMOPS_GHOST_ACT_KILLED && it->act != VMOPS_GHOST_ACT_REPAIRED)
			rep->unfixed++;
	}
}

static void ctx_free(struct ctx *x)
{
	for (size_t i = 0; i < x->nprocs; i++)
		free(x->procs[i].argv);
	free(x->procs);
	free(x->rows);
	free(x->work);
}

int vmops_ghost_reap(PGconn *c, const struct vmops_ghost_opts *o, struct vmops_ghost_report *rep,
		     struct vmops_error *e)
{
	struct ctx x = { .o = o, .c = c };
	int r = -1;

	memset(rep, 0, sizeof(*rep));
	x.root = o->proc_root && *o->proc_root ? o->proc_root : VMOPS_PROC_ROOT_DEFAULT;
	if (!o->worker || !*o->worker)
		return vmops_err(e, VMOPS_EXIT_USAGE, "no worker given");
	if (o->action == VMOPS_GHOST_KILL && !o->live)
		return vmops_err(e, VMOPS_EXIT_USAGE,
				 "--action kill needs the live /proc: %s is a recorded tree", x.root);
	x.may_repair = o->live || o->repair_from_recording;
	if (lookup_worker(&x, e) < 0)
		goto out;

	/* 1. the processes (before the rows: see the top of this file) */
	r = vmops_proc_scan(x.root, VMOPS_PROC_SCAN_HV_ONLY, scan_cb, &x, e);
	if (r != 0) {
		if (x.scan_failed)
			*e = x.scan_err;
		r = -1;
		goto out;
	}
	r = -1;
	if (vmops_proc_uptime(x.root, &x.uptime, e) < 0)
		goto out;
	for (size_t i = 0; i < x.nprocs; i++)
		x.procs[i].age = round2(vmops_proc_age_at(x.uptime, x.procs[i].start));
	rep->hypervisors = x.hypervisors;

	/* 2. the rows, 3. both sides classified */
	if (load_rows(&x, e) < 0)
		goto out;
	for (size_t i = 0; i < x.nprocs; i++)
		if (classify_process(&x, &x.procs[i], e) < 0)
			goto out;
	for (size_t i = 0; i < x.nrows; i++)
		if (classify_row(&x, &x.rows[i], e) < 0)
			goto out;

	/* 4. act, one item at a time */
	for (size_t i = 0; i < x.nwork; i++) {
		struct work *w = &x.work[i];

		if (w->it.act == VMOPS_GHOST_ACT_FAILED)
			continue;
		if (w->it.cls == VMOPS_GHOST_GHOST) {
			if (o->action == VMOPS_GHOST_LOG)
				w->it.act = VMOPS_GHOST_ACT_REPORTED;
			else if (o->dry_run)
				w->it.act = VMOPS_GHOST_ACT_WOULD_KILL;
			else if (kill_ghost(&x, w, e) < 0)
				goto out;
		} else if (w->it.cls == VMOPS_GHOST_PHANTOM || w->it.cls == VMOPS_GHOST_ZOMBIE) {
			if (!x.may_repair) {
				/* a recording may be stale or another host's */
				w->it.act = VMOPS_GHOST_ACT_REPORTED;
				append(w, "; read from a recorded tree: not repaired (--repair-from-recording)");
			} else if (o->dry_run) {
				w->it.act = VMOPS_GHOST_ACT_WOULD_REPAIR;
			} else if (repair_phantom(&x, w, e) < 0) {
				goto out;
			}
		}
	}
	r = 0;
out:
	if (x.nwork) {
		qsort(x.work, x.nwork, sizeof(*x.work), cmp_work);
		rep->items = calloc(x.nwork, sizeof(*rep->items));
		if (rep->items) {
			for (size_t i = 0; i < x.nwork; i++) {
				rep->items[i] = x.work[i].it;
				count(rep, &rep->items[i]);
			}
			rep->n = x.nwork;
		} else if (r == 0) {
			r = vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
		}
	}
	ctx_free(&x);
	return r;
}

void vmops_ghost_report_free(struct vmops_ghost_report *rep)
{
	if (!rep)
		return;
	free(rep->items);
	rep->items = NULL;
	rep->n = 0;
}
