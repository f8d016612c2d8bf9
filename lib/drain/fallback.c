/* SPDX-License-Identifier: MIT */
/*
 * The hibernate fallback: a sandbox that still cannot move once its retries
 * are spent (outcome 'stuck': it does not converge, its hypervisor has no
 * live migration, or no target will ever fit it) is hibernated through
 * snapshot-prep's vmops_hibernate() into the drain's bundle directory.
 *
 * Smallest first (the most sandboxes within the total budget), one at a
 * time, each in a thread with its own database connection while this
 * thread keeps the drain's lease (ctl->tick) and enforces the budgets: a
 * hibernate still running when its per-sandbox budget (or what is left of
 * the total) has passed, or on a signal or the whole-drain timeout, is
 * interrupted, and vmops_hibernate() then puts the VM back running where it
 * was.  --cancel lets the hibernate in flight finish and starts no other.
 * A hibernated sandbox's outcome becomes 'hibernated' (the database checks
 * it is); one that failed stays 'stuck' with the reason.  The caller counts
 * again afterwards.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <time.h>

#include "db.h"
#include "drain/internal.h"
#include "exitcodes.h"
#include "log.h"
#include "snapshot/snapshot.h"

#define FB_TICK_MS 200u
#define FB_MIN_BUDGET_MS 1000u
#define FB_SPACE_MARGIN_MB 64ll
#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif
#ifndef RAMFS_MAGIC
#define RAMFS_MAGIC 0x858458f6
#endif

struct hib_job {
	pthread_t th;
	atomic_bool done;
	const char *conninfo;
	volatile sig_atomic_t abort;
	struct vmops_hibernate_opts ho;
	struct vmops_hibernate_report hr;
	struct vmops_error err;
	int rc;
};

struct fb {
	PGconn *c;
	const char *conninfo;
	const struct drain_rec *d;
	const struct vmops_drain_opts *o;
	const struct drain_fb_ctl *ctl;
	uint64_t deadline_ms;        /* the total fallback budget ends */
	bool stop_new;               /* --cancel, a signal, the timeout: start no other hibernate */
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void nap_ms(uint64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void say(const struct fb *f, const char *sandbox, const char *outcome, uint64_t wall_ms, const char *bundle,
		const char *error)
{
	struct vmops_drain_sandbox_report s = { 0 };

	if (!f->o->on_sandbox)
		return;
	snprintf(s.sandbox, sizeof(s.sandbox), "%s", sandbox);
	snprintf(s.outcome, sizeof(s.outcome), "%s", outcome);
	snprintf(s.bundle, sizeof(s.bundle), "%s", bundle ? bundle : "");
	snprintf(s.error, sizeof(s.error), "%s", error ? error : "");
	s.migration_id = -1;
	s.wall_ms = wall_ms;
	s.plan_start_s = s.plan_finish_s = -1;
	f->o->on_sandbox(f->o->data, &s);
}

static void *hib_main(void *arg)
{
	struct hib_job *j = arg;
	PGconn *c = vmops_db_connect(j->conninfo, "vm-drain", &j->err);

	if (!c) {
		j->rc = -1;
	} else {
		j->rc = vmops_hibernate(c, &j->ho, &j->hr, &j->err);
		PQfinish(c);
	}
	atomic_store(&j->done, true);
	return NULL;
}

/* Room in the bundle directory for one more bundle (at most its memory, plus a margin). */
static int check_space(const char *dir, long long mem_mb, char *why, size_t len)
{
	struct statvfs v;
	unsigned long long free_mb;

	if (statvfs(dir, &v) < 0) {
		snprintf(why, len, "bundle directory %s: %s", dir, strerror(errno));
		return -1;
	}
	free_mb = (unsigned long long)v.f_bavail * v.f_frsize >> 20;
	if (free_mb < (unsigned long long)(mem_mb + FB_SPACE_MARGIN_MB)) {
		snprintf(why, len, "not hibernated: bundle directory %s has %llu MiB free, its bundle may need %lld MiB",
			 dir, free_mb, mem_mb + FB_SPACE_MARGIN_MB);
		return -1;
	}
	return 0;
}

/* Run one hibernate in its thread; keep the lease meanwhile and enforce the budget. */
static int watch(struct fb *f, struct hib_job *j, uint64_t budget_ms, bool *timed_out, struct vmops_error *e)
{
	uint64_t start = mono_ms();
	int rc = 0;

	atomic_store(&j->done, false);
	if (pthread_create(&j->th, NULL, hib_main, j) != 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "cannot start a thread for the hibernate of %s", j->ho.sandbox);
	while (!atomic_load(&j->done)) {
		int t;

		nap_ms(FB_TICK_MS);
		t = rc < 0 ? 2 : f->ctl->tick(f->ctl->arg, e);
		if (t < 0)
			rc = -1;
		if (t != 0)
			f->stop_new = true;
		if (t < 0 || t == 2)
			j->abort = 1;
		if (!j->abort && mono_ms() - start > budget_ms) {
			*timed_out = true;
			j->abort = 1;
		}
	}
	pthread_join(j->th, NULL);
	return rc;
}

static int record(struct fb *f, long long sid, const char *sandbox, struct hib_job *j, bool timed_out,
		  uint64_t budget_ms, uint64_t wall, struct vmops_error *e)
{
	char why[VMOPS_ERRMSG_MAX + 128];

	if (j->rc == 0) {
		if (vmops_drain_rec_outcome(f->c, f->d, sid, "hibernated", 0, 0, NULL, -1, NULL, e) < 0)
			return -1;
		vmops_info("sandbox %s hibernated into %s", sandbox, j->hr.location);
		say(f, sandbox, "hibernated", wall, j->hr.location, NULL);
		return 0;
	}
	if (timed_out)
		snprintf(why, sizeof(why), "hibernate did not finish within its budget (%" PRIu64 "s): %.900s",
			 budget_ms / 1000, j->err.msg);
	else
		snprintf(why, sizeof(why), "hibernate failed: %.900s", j->err.msg);
	if (vmops_drain_rec_outcome(f->c, f->d, sid, "stuck", 0, 0, why, -1, NULL, e) < 0)
		return -1;
	say(f, sandbox, "stuck", wall, NULL, why);
	return 0;
}

int vmops_drain_agent_wait_ms(uint64_t budget_ms)
{
	uint64_t q = budget_ms / 4;

	return (int)(q < 10000 ? 10000 : q > 30000 ? 30000 : q);
}

static int hibernate_one(struct fb *f, long long sid, const char *sandbox, long long mem_mb, struct vmops_error *e)
{
	struct hib_job j = { .conninfo = f->conninfo };
	uint64_t now = mono_ms(), left = f->deadline_ms > now ? f->deadline_ms - now : 0;
	uint64_t budget = f->o->hibernate_timeout_ms < left ? f->o->hibernate_timeout_ms : left;
	char why[VMOPS_ERRMSG_MAX];
	bool timed_out = false;

	if (budget < FB_MIN_BUDGET_MS) {
		snprintf(why, sizeof(why), "not hibernated: the fallback budget (%" PRIu64 "s) ran out before its turn",
			 f->o->fallback_timeout_ms / 1000);
		say(f, sandbox, "stuck", 0, NULL, why);
		return vmops_drain_rec_outcome(f->c, f->d, sid, "stuck", 0, 0, why, -1, NULL, e);
	}
	if (check_space(f->o->bundle_dir, mem_mb, why, sizeof(why)) < 0) {
		say(f, sandbox, "stuck", 0, NULL, why);
		return vmops_drain_rec_outcome(f->c, f->d, sid, "stuck", 0, 0, why, -1, NULL, e);
	}
	j.ho = (struct vmops_hibernate_opts){ .sandbox = sandbox, .bundle_dir = f->o->bundle_dir,
					      .budget_ms = budget, .program = "vm-drain", .interrupted = &j.abort,
					      .agent_ms = vmops_drain_agent_wait_ms(budget) };
	say(f, sandbox, "hibernating", budget, f->o->bundle_dir, NULL);
	if (watch(f, &j, budget, &timed_out, e) < 0)
		return -1;
	return record(f, sid, sandbox, &j, timed_out, budget, mono_ms() - now, e);
}

static void warn_tmpfs(const char *dir)
{
	struct statfs s;

	if (statfs(dir, &s) == 0 && ((unsigned long)s.f_type == TMPFS_MAGIC || (unsigned long)s.f_type == RAMFS_MAGIC))
		vmops_warn("bundle directory %s is in memory (tmpfs): hibernated sandboxes' bundles take RAM there", dir);
}

/* Is the worker on another host (ssh)?  1 yes, 0 no, -1 db. */
static int is_remote(PGconn *c, const struct drain_rec *d, struct vmops_error *e)
{
	char wid[24];
	_cleanup_pgresult_ PGresult *r = vmops_db_q(c, e, "SELECT transport FROM workers WHERE id = $1",
						    vmops_db_ll(wid, d->worker_id));

	if (!r)
		return -1;
	return PQntuples(r) == 1 && strcmp(vmops_db_get(r, 0, "transport"), "local") != 0;
}

/*
 * A worker on another host: its VMs' QMP sockets and /proc are that host's,
 * and the bundle would be written here; vmops_hibernate() works on this
 * host's VMs only.  Nothing is tried: each stays stuck with the reason.
 */
static int not_here(struct fb *f, PGresult *q, struct vmops_error *e)
{
	char why[VMOPS_ERRMSG_MAX];

	snprintf(why, sizeof(why), "not hibernated: worker %.63s is on another host (ssh) and the fallback hibernates"
		 " only on this host; run snapshot-prep hibernate on its host", f->d->worker);
	for (int i = 0; i < PQntuples(q); i++) {
		say(f, vmops_db_get(q, i, "name"), "stuck", 0, NULL, why);
		if (vmops_drain_rec_outcome(f->c, f->d, vmops_db_get_ll(q, i, "sandbox_id", -1), "stuck", 0, 0, why, -1,
					    NULL, e) < 0)
			return -1;
	}
	return 0;
}

int vmops_drain_fallback(PGconn *c, const char *conninfo, const struct drain_rec *d, const struct vmops_drain_opts *o,
			 const struct drain_fb_ctl *ctl, struct vmops_error *e)
{
	struct fb f = { c, conninfo, d, o, ctl, mono_ms() + o->fallback_timeout_ms, false };
	_cleanup_pgresult_ PGresult *q = NULL;
	char id[24], wid[24];
	int n, remote;

	q = vmops_db_q(c, e, "SELECT x.sandbox_id, s.name, s.memory_mb FROM drain_sandboxes x"
			     " JOIN sandboxes s ON s.id = x.sandbox_id WHERE x.drain_id = $1 AND x.outcome = 'stuck'"
			     "   AND s.status = 'running' AND s.worker_id = $2 ORDER BY s.memory_mb, s.name",
		       vmops_db_ll(id, d->id), vmops_db_ll(wid, d->worker_id));
	if (!q)
		return -1;
	n = PQntuples(q);
	if (n == 0 || !o->bundle_dir)
		return n;
	if ((remote = is_remote(c, d, e)) != 0)
		return remote < 0 ? -1 : not_here(&f, q, e);
	warn_tmpfs(o->bundle_dir);
	for (int i = 0; i < n && !f.stop_new; i++) {
		int t = ctl->tick(ctl->arg, e);
		if (t < 0)
			return -1;
		if (t != 0)
			break;
		if (hibernate_one(&f, vmops_db_get_ll(q, i, "sandbox_id", -1), vmops_db_get(q, i, "name"),
				  vmops_db_get_ll(q, i, "memory_mb", 0), e) < 0)
			return -1;
	}
	return 0;
}
