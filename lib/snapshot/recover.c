/* SPDX-License-Identifier: MIT */
/*
 * Recover a hibernate or a wake that a crashed or killed run left in flight
 * (see snapshot.h, vmops_snapshot_recover).  What is done follows from what
 * the database and the host show, never from the absence of an answer:
 *
 *   writing    the commit did not happen (it makes the row ready in the same
 *              transaction that hibernates the sandbox), so the sandbox still
 *              runs on its VMM: put that VM back (resume, thaw), delete the
 *              partial bundle and the staging files, mark the snapshot failed.
 *   restoring  the wake did not commit (it makes the row restored in the
 *              transaction that runs the sandbox), so the sandbox is still
 *              hibernated and its bundle ready: stop the half-started VMM
 *              (identified by pid and start time, or by its fleet token in
 *              /proc), free its reservation, snapshot ready again.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../db.h"
#include "../exitcodes.h"
#include "../fleet.h"
#include "../host.h"
#include "../macro.h"
#include "../proc.h"
#include "../rundir.h"
#include "../vm.h"
#include "snapshot.h"

struct rec {
	const struct vmops_snap_recover_opts *o;
	struct vmops_snap_recover_report *r;
	char owner[160];
	char location[PATH_MAX], staging[PATH_MAX], run_dir[PATH_MAX], host_id[VMOPS_HOST_ID_MAX];
	bool on_vmm;                 /* writing: the sandbox still runs on the snapshot's VMM */
};

static int take(PGconn *c, struct rec *x, PGresult *s, struct vmops_error *e)
{
	char id[24];

	x->r->snapshot_id = atoll(PQgetvalue(s, 0, 0));
	snprintf(x->r->state, sizeof(x->r->state), "%s", PQgetvalue(s, 0, 1));
	snprintf(x->r->previous_owner, sizeof(x->r->previous_owner), "%s", PQgetvalue(s, 0, 2));
	x->r->vmm_id = atoll(PQgetvalue(s, 0, 5));
	x->r->restore_vmm_id = PQgetisnull(s, 0, 6) ? 0 : atoll(PQgetvalue(s, 0, 6));
	snprintf(x->location, sizeof(x->location), "%s", PQgetvalue(s, 0, 7));
	snprintf(x->staging, sizeof(x->staging), "%s", PQgetvalue(s, 0, 8));
	x->on_vmm = !strcmp(PQgetvalue(s, 0, 9), "t");
	snprintf(x->run_dir, sizeof(x->run_dir), "%s", PQgetvalue(s, 0, 10));
	snprintf(x->host_id, sizeof(x->host_id), "%s", PQgetvalue(s, 0, 11));
	if (!strcmp(PQgetvalue(s, 0, 3), "t"))
		return vmops_err(e, VMOPS_EXIT_CONFLICT,
				 "sandbox %s: snapshot %lld is being %s by %s until %s: still in progress (recover once that lease has expired)",
				 x->o->sandbox, x->r->snapshot_id,
				 !strcmp(x->r->state, "writing") ? "written" : "restored", x->r->previous_owner,
				 PQgetvalue(s, 0, 4));
	if (x->o->dry_run)
		return 0;
	return vmops_db_x(c, e, "UPDATE snapshots SET lease_owner = $2,"
			     " lease_expires_at = now() + interval '10 minutes' WHERE id = $1",
			  vmops_db_ll(id, x->r->snapshot_id), x->owner);
}

/* Tx 1: find the snapshot in flight; take its lease only if it expired. */
static int take_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct rec *x = data;
	_cleanup_pgresult_ PGresult *s = NULL;

	s = vmops_db_q(c, e, "SELECT n.id, n.state, n.lease_owner, n.lease_expires_at > now(),"
			     " to_char(n.lease_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
			     " n.vmm_id, n.restore_vmm_id, n.location, coalesce(n.staging, ''),"
			     " s.status = 'running' AND s.active_vmm_id = n.vmm_id,"
			     " coalesce(v.run_dir, ''), coalesce(w.host_id, '')"
			     " FROM sandboxes s JOIN snapshots n ON n.sandbox_id = s.id AND n.state IN ('writing', 'restoring')"
			     " LEFT JOIN vmms v ON v.id = coalesce(n.restore_vmm_id, n.vmm_id)"
			     " LEFT JOIN workers w ON w.id = v.worker_id"
			     " WHERE s.name = $1 FOR UPDATE OF n, s", x->o->sandbox);
	if (!s)
		return -1;
	if (PQntuples(s) == 1)
		return take(c, x, s, e);
	PQclear(s);
	s = vmops_db_q(c, e, "SELECT 1 FROM sandboxes WHERE name = $1", x->o->sandbox);
	if (!s)
		return -1;
	if (PQntuples(s) != 1)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "sandbox %s: not found", x->o->sandbox);
	snprintf(x->r->state, sizeof(x->r->state), "none");
	return 0;
}

/* The VMM's host must be this one before its /proc or its sockets are used. */
static int check_host(struct rec *x, struct vmops_error *e)
{
	char here[VMOPS_HOST_ID_MAX];

	if (!x->host_id[0])
		return 0;            /* no identity recorded: a local worker, as vm-fleet treats it */
	if (vmops_host_id(x->o->host_id_override, here, sizeof(here), e) < 0)
		return -1;
	if (strcmp(here, x->host_id))
		return vmops_err(e, VMOPS_EXIT_WRONG_HOST,
				 "sandbox %s: its vmm runs on host %.130s, not this one (%.130s): run recover there; nothing done",
				 x->o->sandbox, x->host_id, here);
	return 0;
}

/* writing: resume and thaw the VM the crashed hibernate prepared, if it is there. */
static int put_vm_back(PGconn *c, struct rec *x, struct vmops_error *e)
{
	struct vmops_prepare_opts po = { .agent_ms = x->o->agent_ms, .prepare_ms = x->o->prepare_ms };
	struct vmops_vmm_info info;
	_cleanup_hv_ struct vmops_hv *hv = NULL;
	int live;

	if (!x->on_vmm)
		return 0;            /* the sandbox left that VMM: nothing of ours runs there */
	if (vmops_vm_load_info(c, x->r->vmm_id, &info, e) < 0)
		return -1;
	live = info.pid > 0 ? vmops_proc_check("/proc", info.pid, info.start_time, NULL, e) : VMOPS_PROC_DEAD;
	if (live < 0)
		return -1;
	if (live == VMOPS_PROC_DEAD || live == VMOPS_PROC_REUSED)
		return 0;            /* its VMM is gone: there is no VM to put back */
	hv = vmops_hv_attach(&info, 10000, e);
	if (!hv || vmops_prep_recover(hv, &po, e) < 0) {
		vmops_err_prefix(e, "sandbox %s: its vm could not be put back (left as found; run recover again)",
				 x->o->sandbox);
		return -1;
	}
	x->r->vm_put_back = true;
	return 0;
}

/* Delete every regular file directly in `dir` whose name starts with `prefix`, then
 * (rmdir_too) the directory.  Never follows a link; never recurses. */
static void remove_files(const char *dir, const char *prefix, bool rmdir_too)
{
	_cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d;
	struct dirent *de;

	if (fd < 0)
		return;
	d = fdopendir(dup(fd));
	if (!d)
		return;
	while ((de = readdir(d))) {
		struct stat st;
		bool reg = de->d_type == DT_REG;

		/* Some filesystems leave the type to a stat (never following a link). */
		if (de->d_type == DT_UNKNOWN)
			reg = fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
		if (reg && !strncmp(de->d_name, prefix, strlen(prefix)))
			unlinkat(fd, de->d_name, 0);
	}
	closedir(d);
	if (rmdir_too)
		rmdir(dir);
}

/*
 * A path from the database names what we would delete, so it must look
 * like what vmops writes there (anyone who can write the database must not
 * be able to point a root-run recover at other files): the last component
 * is `want` exactly, or ends with it (suffix).
 */
static bool named_as(const char *path, const char *want, bool suffix)
{
	const char *base = strrchr(path, '/');
	size_t n, w = strlen(want);

	if (path[0] != '/' || !base || strstr(path, "/../") || strstr(path, "/./"))
		return false;
	base++;
	n = strlen(base);
	return suffix ? n > w && !strcmp(base + n - w, want) : !strcmp(base, want);
}

/* A directory of ours: not a link, owned by us, mode 0700. */
static bool our_dir(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid() &&
	       (st.st_mode & 07777) == 0700;
}

/* writing: the partial bundle, the bundle writer's temporary file, the staging files. */
static void remove_partial(struct rec *x)
{
	char copy[PATH_MAX], want[64], tmp[PATH_MAX + 16];

	snprintf(want, sizeof(want), "-%lld.vmops", x->r->snapshot_id);
	if (named_as(x->location, want, true)) {
		snprintf(copy, sizeof(copy), "%s", x->location);
		snprintf(tmp, sizeof(tmp), ".%s.tmp.", basename(copy));
		if (unlink(x->location) == 0)
			x->r->files_removed++;
		snprintf(copy, sizeof(copy), "%s", x->location);
		remove_files(dirname(copy), tmp, false);
	}
	snprintf(want, sizeof(want), ".hibernate-%lld", x->r->snapshot_id);
	if (x->staging[0] && named_as(x->staging, want, false) && our_dir(x->staging)) {
		remove_files(x->staging, "", true);
		x->r->files_removed++;
	}
}

static int writing_failed_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct rec *x = data;
	char id[24], why[400];
	_cleanup_pgresult_ PGresult *u = NULL;

	snprintf(why, sizeof(why), "recovered: the hibernate by %.200s did not finish", x->r->previous_owner);
	u = vmops_db_q(c, e, "UPDATE snapshots SET state = 'failed', error = $3, lease_owner = NULL,"
			     " lease_expires_at = NULL WHERE id = $1 AND state = 'writing' AND lease_owner = $2"
			     " RETURNING sandbox_id", vmops_db_ll(id, x->r->snapshot_id), x->owner, why);
	if (!u)
		return -1;
	if (PQntuples(u) != 1)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "snapshot %s: no longer ours (lease lost)", id);
	return vmops_audit(c, x->o->program, "hibernate-recovered", "sandbox", atoll(PQgetvalue(u, 0, 0)),
			   NULL, NULL, why, e);
}

static int recover_writing(PGconn *c, struct rec *x, struct vmops_error *e)
{
	if (check_host(x, e) < 0 || put_vm_back(c, x, e) < 0)
		return -1;
	remove_partial(x);
	return vmops_db_tx(c, VMOPS_READ_COMMITTED, writing_failed_tx, x, e);
}

struct find {
	long long vmm_id;
	pid_t pid;
	unsigned long long start;
};

static int find_vmm(const struct vmops_proc_info *pi, void *data)
{
	struct find *f = data;

	if (pi->vmm_id != f->vmm_id)
		return 0;
	f->pid = pi->stat.pid;
	f->start = pi->stat.starttime;
	return 1;
}

/* restoring: the half-started VMM is stopped (or shown gone) before its records go. */
static int stop_restore_vmm(PGconn *c, struct rec *x, struct vmops_error *e)
{
	struct vmops_vmm_info info;
	struct find f = { .vmm_id = x->r->restore_vmm_id };
	struct vmops_proc_term_outcome out;
	int rc;

	if (vmops_vm_load_info(c, x->r->restore_vmm_id, &info, e) < 0)
		return -1;
	if (info.pid > 0 && info.start_time) {
		f.pid = info.pid;
		f.start = info.start_time;
	} else if (vmops_proc_scan("/proc", VMOPS_PROC_SCAN_HV_ONLY, find_vmm, &f, e) < 0) {
		return -1;           /* no pid recorded: found by its fleet token, if it runs */
	}
	if (!f.pid)
		return 0;
	rc = vmops_proc_terminate(f.pid, f.start, 5000, &out, e);
	if (rc == -2)
		return 0;            /* that pid is another process now: ours is gone */
	if (rc < 0)
		return -1;
	x->r->vmm_stopped = true;
	return 0;
}

static int restoring_ready_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct rec *x = data;
	char id[24], vid[24], why[400];
	_cleanup_pgresult_ PGresult *u = NULL;

	snprintf(why, sizeof(why), "recovered: the wake by %.200s did not finish", x->r->previous_owner);
	vmops_db_ll(vid, x->r->restore_vmm_id);
	u = vmops_db_q(c, e, "UPDATE snapshots SET state = 'ready', restore_vmm_id = NULL, lease_owner = NULL,"
			     " lease_expires_at = NULL WHERE id = $1 AND state = 'restoring' AND lease_owner = $2"
			     " RETURNING sandbox_id", vmops_db_ll(id, x->r->snapshot_id), x->owner);
	if (!u)
		return -1;
	if (PQntuples(u) != 1)
		return vmops_err(e, VMOPS_EXIT_CONFLICT, "snapshot %s: no longer ours (lease lost)", id);
	if (vmops_db_x(c, e, "UPDATE sandboxes SET target_vmm_id = NULL WHERE id = $1 AND target_vmm_id = $2",
		       PQgetvalue(u, 0, 0), vid) < 0 ||
	    vmops_db_x(c, e, "UPDATE vmms SET state = 'failed' WHERE id = $1 AND state = 'starting'", vid) < 0 ||
	    vmops_db_x(c, e, "DELETE FROM reservations WHERE vmm_id = $1", vid) < 0)
		return -1;
	return vmops_audit(c, x->o->program, "wake-recovered", "sandbox", atoll(PQgetvalue(u, 0, 0)), NULL,
			   NULL, why, e);
}

static int recover_restoring(PGconn *c, struct rec *x, struct vmops_error *e)
{
	char sdir[64];
	struct vmops_error e2 = { 0 };

	if (check_host(x, e) < 0 || stop_restore_vmm(c, x, e) < 0 ||
	    vmops_db_tx(c, VMOPS_READ_COMMITTED, restoring_ready_tx, x, e) < 0)
		return -1;
	snprintf(sdir, sizeof(sdir), "vmm-%lld", x->r->restore_vmm_id);
	if (!x->run_dir[0] || !named_as(x->run_dir, sdir, false) || !our_dir(x->run_dir))
		return 0;
	if (vmops_snap_remove_run_dir(x->run_dir, &e2) == 1)
		x->r->files_removed++;
	return 0;
}

int vmops_snap_remove_run_dir(const char *run_dir, struct vmops_error *e)
{
	char sdir[PATH_MAX + 16];
	int kept = 0;

	/* The extracted bundle first (only its regular files), then the run directory. */
	snprintf(sdir, sizeof(sdir), "%s/snapshot", run_dir);
	if (our_dir(sdir))
		remove_files(sdir, "", true);
	if (vmops_rundir_remove(run_dir, &kept, e) < 0)
		return -1;
	return kept ? 0 : 1;
}

int vmops_snapshot_recover(PGconn *c, const struct vmops_snap_recover_opts *o,
			   struct vmops_snap_recover_report *r, struct vmops_error *e)
{
	struct vmops_snap_recover_opts oo = *o;
	struct rec x = { .o = &oo, .r = r };
	char host[64] = "";

	memset(r, 0, sizeof(*r));
	if (!oo.program)
		oo.program = "snapshot-prep";
	gethostname(host, sizeof(host) - 1);
	snprintf(x.owner, sizeof(x.owner), "%s recover pid %d on %s", oo.program, (int)getpid(), host);
	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, take_tx, &x, e) < 0)
		return -1;
	if (oo.dry_run || !strcmp(r->state, "none"))
		return 0;
	if (!strcmp(r->state, "writing"))
		return recover_writing(c, &x, e);
	return recover_restoring(c, &x, e);
}
