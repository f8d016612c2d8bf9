/* SPDX-License-Identifier: MIT */
/*
 * snapshot-prep — get a VM into a state that is safe to snapshot, and back;
 * snapshot it into a bundle, and restore a bundle.
 *
 *   prepare   quiesce + pause a sandbox's VM and leave it so
 *   undo      resume + thaw it (also after a crashed run)
 *   snapshot  prepare, snapshot, resume + thaw, bundle (-o FILE or -o -)
 *   hibernate snapshot + bundle in --bundle-dir, then in the database: sandbox
 *             hibernated, billing closed, VMM destroyed; QEMU stopped
 *   wake      a hibernated sandbox on a worker with room, from its bundle
 *   restore   verify and extract a bundle (-i FILE or -i -), launch a VMM
 *             for it in --run-dir, load it, resume + thaw
 *   recover   finish what a crashed hibernate or wake left in flight
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bundle/bundle.h"
#include "db.h"
#include "fault.h"
#include "host.h"
#include "hv.h"
#include "interrupt.h"
#include "prog.h"
#include "schema.h"
#include "snapshot/snapshot.h"
#include "spec.h"
#include "vm.h"

static struct {
	const char *sandbox, *out, *in, *run_dir, *work_dir, *agent_timeout, *prepare_timeout,
		*timeout, *vmm_id, *bundle_dir, *worker, *hint_timeout;
	int no_quiesce, live;
} opt;

static struct poptOption options[] = {
	{ "sandbox", 's', POPT_ARG_STRING, &opt.sandbox, 0, "the sandbox (prepare, undo, snapshot)", "NAME" },
	{ "output", 'o', POPT_ARG_STRING, &opt.out, 0, "snapshot: write the bundle to FILE ('-': stdout)", "FILE" },
	{ "input", 'i', POPT_ARG_STRING, &opt.in, 0, "restore: read the bundle from FILE ('-': stdin)", "FILE" },
	{ "run-dir", '\0', POPT_ARG_STRING, &opt.run_dir, 0, "restore: directory for the new VMM and its files", "DIR" },
	{ "vmm-id", '\0', POPT_ARG_STRING, &opt.vmm_id, 0, "restore: id for the new VMM's name (default 0)", "N" },
	{ "bundle-dir", '\0', POPT_ARG_STRING, &opt.bundle_dir, 0, "hibernate: directory for the bundle", "DIR" },
	{ "worker", '\0', POPT_ARG_STRING, &opt.worker, 0, "wake: this worker (default: the active one with most room)", "NAME" },
	{ "work-dir", '\0', POPT_ARG_STRING, &opt.work_dir, 0, "snapshot: where the files are staged (default $TMPDIR)", "DIR" },
	{ "agent-timeout", '\0', POPT_ARG_STRING, &opt.agent_timeout, 0, "wait for the guest agent at most DUR (default 10s)", "DUR" },
	{ "prepare-timeout", '\0', POPT_ARG_STRING, &opt.prepare_timeout, 0, "the freeze itself at most DUR (default 30s)", "DUR" },
	{ "hint-timeout", '\0', POPT_ARG_STRING, &opt.hint_timeout, 0, "a running free-page hinting round may take at most DUR before it is stopped (default 10s)", "DUR" },
	{ "timeout", '\0', POPT_ARG_STRING, &opt.timeout, 0, "writing or loading the snapshot at most DUR (default 10m)", "DUR" },
	{ "no-quiesce", '\0', POPT_ARG_NONE, &opt.no_quiesce, 0, "do not freeze the guest's filesystems", NULL },
	{ "live", '\0', POPT_ARG_NONE, &opt.live, 0, "snapshot: keep the VM running while its state is written", NULL },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

/* strerror, lowercased (messages are lowercase). */
static const char *errtext(int e)
{
	static char buf[128];

	snprintf(buf, sizeof(buf), "%s", strerror(e));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

/* What a second SIGINT/SIGTERM leaves, and what cleans it up (lib/interrupt). */
static void note_interrupt(const char *mode)
{
	const char *sb = opt.sandbox;

	if (!strcmp(mode, "hibernate") || !strcmp(mode, "wake") || !strcmp(mode, "recover"))
		vmops_interrupt_note("the %s of sandbox %s is left under its lease: run 'snapshot-prep recover"
				     " --sandbox %s' once it has expired", mode, sb, sb);
	else if (!strcmp(mode, "restore"))
		vmops_interrupt_note("a VMM being restored in %s may be left paused: stop it, or run ghost-reap",
				     opt.run_dir ? opt.run_dir : "its run directory");
	else
		vmops_interrupt_note("sandbox %s may be left quiesced and paused: run 'snapshot-prep undo --sandbox %s'",
				     sb, sb);
}

static void usage(void)
{
	printf("Usage:\n %s prepare|undo --sandbox NAME [options]\n"
	       " %s snapshot --sandbox NAME -o FILE|- [options]\n"
	       " %s restore -i FILE|- --run-dir DIR [options]\n"
	       " %s hibernate --sandbox NAME --bundle-dir DIR [options]\n"
	       " %s wake --sandbox NAME [--worker NAME] [options]\n"
	       " %s recover --sandbox NAME [options]\n\n",
	       prog_name, prog_name, prog_name, prog_name, prog_name, prog_name);
	printf("Bring a VM into a state that is safe to snapshot (guest filesystems frozen\n"
	       "through the guest agent, a free-page hinting round finished or stopped,\n"
	       "vCPUs paused), and back.  Any failure, timeout or SIGINT/SIGTERM after the\n"
	       "first change undoes every step in reverse order: the VM is left running and\n"
	       "thawed, and no partial bundle is left.  QEMU, Cloud Hypervisor and\n"
	       "Firecracker.\n\n"
	       "Options:\n");
	vmops_cli_print_options(stdout, options);
	printf("\nExit status: 0 ok, 1 failure, 2 usage, 5 database unreachable, 6 schema,\n"
	       "7 hypervisor, 8 timeout, 10 conflict, 11 not found, 12 interrupted (undone),\n"
	       "13 wrong host, 16 integrity (a bundle refused, nothing launched);\n"
	       "see vmops(7).\n");
	printf("\nFor more details see snapshot-prep(1).\n");
}

struct target {
	long long sandbox_id, vmm_id;
	char worker[128];
	char *spec_json;
	struct vmops_vmm_info info;
};

/* The sandbox's active VMM, its worker and launch spec. */
static int load_target(PGconn *c, const char *sandbox, struct target *t, struct vmops_error *err)
{
	PGresult *r = vmops_db_q(c, err,
				 "SELECT s.id, s.active_vmm_id, w.name, s.launch_spec::text, s.status, w.transport"
				 " FROM sandboxes s JOIN workers w ON w.id = s.worker_id WHERE s.name = $1",
				 sandbox);

	if (!r)
		return -1;
	if (PQntuples(r) != 1) {
		PQclear(r);
		return vmops_err(err, VMOPS_EXIT_NOTFOUND, "sandbox %s: not found", sandbox);
	}
	if (PQgetisnull(r, 0, 1) || strcmp(PQgetvalue(r, 0, 4), "running")) {
		vmops_err(err, VMOPS_EXIT_CONFLICT, "sandbox %s: is %s, not running", sandbox,
			  PQgetvalue(r, 0, 4));
		PQclear(r);
		return -1;
	}
	if (strcmp(PQgetvalue(r, 0, 5), "local")) {
		vmops_err(err, VMOPS_EXIT_WRONG_HOST, VMOPS_SNAPSHOT_ELSEWHERE_FMT, sandbox, PQgetvalue(r, 0, 2));
		PQclear(r);
		return -1;
	}
	t->sandbox_id = atoll(PQgetvalue(r, 0, 0));
	t->vmm_id = atoll(PQgetvalue(r, 0, 1));
	snprintf(t->worker, sizeof(t->worker), "%s", PQgetvalue(r, 0, 2));
	t->spec_json = strdup(PQgetvalue(r, 0, 3));
	PQclear(r);
	if (!t->spec_json)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "out of memory");
	return vmops_vm_load_info(c, t->vmm_id, &t->info, err);
}

static void prepare_opts(struct vmops_prepare_opts *po)
{
	memset(po, 0, sizeof(*po));
	po->agent_ms = (int)opt_duration("agent-timeout", opt.agent_timeout, VMOPS_SNAP_AGENT_MS, 100, 3600000);
	po->prepare_ms = (int)opt_duration("prepare-timeout", opt.prepare_timeout, VMOPS_SNAP_PREPARE_MS,
					   100, 3600000);
	po->hint_ms = (int)opt_duration("hint-timeout", opt.hint_timeout, VMOPS_SNAP_HINT_MS, 1, 3600000);
	po->no_quiesce = opt.no_quiesce;
	po->live = opt.live;
	po->interrupted = &vmops_interrupted;
}

static void progress(uint64_t done, uint64_t total, void *arg)
{
	(void)arg;
	fprintf(stderr, "\r%s: bundle %3d%% (%" PRIu64 " of %" PRIu64 " MiB)", prog_name,
		total ? (int)(done * 100 / total) : 100, done >> 20, total >> 20);
	if (done == total)
		fputc('\n', stderr);
}

static void bundle_opts(struct vmops_bundle_opts *bo)
{
	memset(bo, 0, sizeof(*bo));
	bo->interrupted = &vmops_interrupted;
	if (isatty(STDERR_FILENO) && !vmops_cli.quiet && !vmops_cli.json)
		bo->progress = progress;
}

/* Remove the staged files and their directory. */
static void unstage(int dfd, const char *dir, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		unlinkat(dfd, names[i], 0);
	if (dfd >= 0)
		close(dfd);
	rmdir(dir);
}

/*
 * How long the vCPUs were stopped, in ms (-1: unknown).  Paused: from our
 * pause to our resume.  Live: QEMU's own downtime of the background
 * snapshot (query-migrate), the short stop in which it saves the devices.
 */
static int64_t paused_ms(struct vmops_hv *h, const struct vmops_prep *p, bool live)
{
	struct vmops_migrate_progress mp;
	struct vmops_error e2;

	if (live)
		return vmops_hv_progress(h, &mp, &e2) == 0 && !strcmp(mp.status, "completed") ?
			       mp.downtime_ms : -1;
	if (!p->was_running)
		return 0;
	return p->resumed_at_ms >= p->paused_at_ms ? p->resumed_at_ms - p->paused_at_ms : -1;
}

static int do_snapshot(struct vmops_hv *h, const struct target *t, uint64_t timeout_ms,
		       struct vmops_manifest *m, int64_t *paused, struct vmops_error *err)
{
	const char *names[VMOPS_SNAP_UNDO_MAX];
	struct vmops_prepare_opts po;
	struct vmops_bundle_opts bo;
	_cleanup_spec_ struct vmops_spec *spec = NULL;
	struct vmops_prep p;
	char dir[PATH_MAX];
	size_t n = 0;
	int dfd, r;

	spec = vmops_spec_parse(t->spec_json, (size_t)-1, err);
	if (!spec)
		return -1;
	snprintf(dir, sizeof(dir), "%s/snapshot-prep.XXXXXX",
		 opt.work_dir ? opt.work_dir : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(dir) || (dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "work dir %s: %s", dir, errtext(errno));
	prepare_opts(&po);
	if (vmops_prepare(&p, h, &po, err) < 0 ||
	    vmops_prep_snapshot(&p, dfd, spec, (int)timeout_ms, names, &n, err) < 0) {
		unstage(dfd, dir, NULL, 0);
		return -1;
	}
	/* Downtime ends here: the bundle is written while the VM runs. */
	if (vmops_prep_release(&p, err) < 0) {
		vmops_prep_undo(&p, NULL);
		unstage(dfd, dir, NULL, 0);
		return -1;
	}
	*paused = paused_ms(h, &p, opt.live);
	snprintf(m->hypervisor, sizeof(m->hypervisor), "%s", t->info.kind);
	if (vmops_hv_version(h, m->hypervisor_version, sizeof(m->hypervisor_version), err) < 0) {
		unstage(dfd, dir, names, n);
		return -1;
	}
	m->spec = cJSON_Parse(t->spec_json);
	m->memory_bytes = (uint64_t)spec->memory_mb << 20;
	snprintf(m->sandbox, sizeof(m->sandbox), "%s", opt.sandbox);
	m->vmm_id = (uint64_t)t->vmm_id;
	snprintf(m->worker, sizeof(m->worker), "%s", t->worker);
	snprintf(m->vmops_version, sizeof(m->vmops_version), "%s", VMOPS_VERSION);
	bundle_opts(&bo);
	vmops_fault_point("bundle");
	if (!strcmp(opt.out, "-"))
		r = vmops_bundle_write_fd(STDOUT_FILENO, dfd, names, n, m, &bo, err);
	else
		r = vmops_bundle_write_path(opt.out, dfd, names, n, m, &bo, err);
	unstage(dfd, dir, names, n);
	return r;
}

/* Point the spec's writable disks at the extracted copies (disk<i>.img). */
static int respec_disks(struct vmops_spec *spec, const char *dir, struct vmops_error *err)
{
	for (size_t i = 0; i < spec->n_disks; i++) {
		char *path;

		if (spec->disks[i].readonly)
			continue;
		if (asprintf(&path, "%s/disk%zu.img", dir, i) < 0)
			return vmops_err(err, VMOPS_EXIT_FAILURE, "out of memory");
		free(spec->disks[i].path);
		spec->disks[i].path = path;
	}
	return 0;
}

static struct vmops_hv *do_restore(struct vmops_manifest *m, struct vmops_error *err)
{
	struct vmops_hv_launch_opts lo = { 0 };
	struct vmops_prepare_opts po;
	struct vmops_bundle_opts bo;
	_cleanup_spec_ struct vmops_spec *spec = NULL;
	char sdir[PATH_MAX], vdir[PATH_MAX];
	_cleanup_close_ int in = -1, dfd = -1;
	struct vmops_hv *h;
	long long id = 0;

	if (opt.vmm_id && vmops_parse_int(opt.vmm_id, 0, LLONG_MAX, &id, err) < 0)
		return NULL;
	snprintf(sdir, sizeof(sdir), "%s/snapshot", opt.run_dir);
	snprintf(vdir, sizeof(vdir), "%s/vmm", opt.run_dir);
	if (vmops_vm_mkdir_p(sdir, err) < 0)
		return NULL;
	in = strcmp(opt.in, "-") ? open(opt.in, O_RDONLY | O_CLOEXEC) : dup(STDIN_FILENO);
	dfd = open(sdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (in < 0 || dfd < 0) {
		vmops_err(err, VMOPS_EXIT_NOTFOUND, "%s: %s", in < 0 ? opt.in : sdir, errtext(errno));
		return NULL;
	}
	bundle_opts(&bo);
	if (vmops_bundle_extract_fd(in, dfd, m, &bo, err) < 0)
		return NULL;
	spec = vmops_spec_from_json(m->spec, err);
	if (!spec || respec_disks(spec, sdir, err) < 0)
		return NULL;
	lo.run_dir = vdir;
	lo.vmm_id = (uint64_t)id;
	lo.auto_accel = VMOPS_ACCEL_AUTO;
	lo.interrupted = &vmops_interrupted;
	h = vmops_hv_launch_for_restore(spec, &lo, err);
	if (!h)
		return NULL;
	prepare_opts(&po);
	if (vmops_hv_restore(h, dfd, (int)opt_duration("timeout", opt.timeout, 600000, 1000, 86400000), err) < 0 ||
	    vmops_prep_recover(h, &po, err) < 0) {
		struct vmops_error e2;

		if (vmops_hv_destroy(h, 10000, &e2) < 0)
			vmops_warn("%s", e2.msg);
		vmops_hv_free(h);
		return NULL;
	}
	return h;
}

/* restore --dry-run: verify the whole bundle, extract and launch nothing. */
static int verify_only(struct vmops_manifest *m, struct vmops_error *err)
{
	struct vmops_bundle_opts bo;
	_cleanup_close_ int in = strcmp(opt.in, "-") ? open(opt.in, O_RDONLY | O_CLOEXEC)
						     : dup(STDIN_FILENO);

	if (in < 0)
		return vmops_err(err, VMOPS_EXIT_NOTFOUND, "%s: %s", opt.in, errtext(errno));
	bundle_opts(&bo);
	return vmops_bundle_verify_fd(in, m, &bo, err);
}

static void print_result(const char *mode, const struct vmops_hv *h, const char *sandbox,
			 const char *file, int frozen, int64_t paused)
{
	static const struct vmops_column cols[] = {
		{ "mode", VMOPS_COL_STRING, 0, 0 },
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },
		{ "vmm_id", VMOPS_COL_INT, 0, 0 },
		{ "pid", VMOPS_COL_INT, 0, 0 },
		{ "file", VMOPS_COL_STRING, 0, 0 },
		{ "frozen", VMOPS_COL_INT, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
		{ "live", VMOPS_COL_BOOL, 0, 0 },
		{ "paused_ms", VMOPS_COL_INT, 0, 0 },
	};
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *s = vmops_output_record(o, "snapshot", cols, ARRAY_SIZE(cols));

	vmops_set_str(s, 0, mode);
	vmops_set_str(s, 1, sandbox);
	if (h) {
		vmops_set_int(s, 2, (long long)vmops_hv_info(h)->vmm_id);
		vmops_set_int(s, 3, vmops_hv_info(h)->pid);
	}
	vmops_set_str(s, 4, file);
	if (frozen >= 0)
		vmops_set_int(s, 5, frozen);
	vmops_set_bool(s, 6, vmops_cli.dry_run);
	vmops_set_bool(s, 7, opt.live);
	if (paused >= 0)
		vmops_set_int(s, 8, (long long)paused);
	if (!vmops_cli.quiet || vmops_cli.json)
		print_output(o);
	vmops_output_free(o);
}

static void check_args(const char *mode)
{
	bool needs_sandbox = strcmp(mode, "restore") != 0;

	if (strcmp(mode, "prepare") && strcmp(mode, "undo") && strcmp(mode, "snapshot") &&
	    strcmp(mode, "restore") && strcmp(mode, "hibernate") && strcmp(mode, "wake") &&
	    strcmp(mode, "recover"))
		usage_error("unknown mode '%s' (prepare, undo, snapshot, restore, hibernate, wake, recover)", mode);
	if (!strcmp(mode, "hibernate") && (!opt.bundle_dir || opt.bundle_dir[0] != '/'))
		usage_error("hibernate: an absolute --bundle-dir is required");
	if (strcmp(mode, "hibernate") && opt.bundle_dir)
		usage_error("%s: --bundle-dir is for hibernate only", mode);
	if (strcmp(mode, "wake") && opt.worker)
		usage_error("%s: --worker is for wake only", mode);
	/* A hibernated VM stops at the snapshot point: running on while the
	 * state is written would only do work that is then thrown away. */
	if (strcmp(mode, "snapshot") && opt.live)
		usage_error("%s: --live is for snapshot only", mode);
	if (needs_sandbox && (!opt.sandbox || !*opt.sandbox))
		usage_error("%s: --sandbox is required", mode);
	if (!strcmp(mode, "snapshot") && (!opt.out || !*opt.out))
		usage_error("snapshot: -o FILE (or -o -) is required");
	if (!strcmp(mode, "restore") && ((!opt.in || !*opt.in) || !opt.run_dir || opt.run_dir[0] != '/'))
		usage_error("restore: -i FILE (or -i -) and an absolute --run-dir are required");
	if (strcmp(mode, "snapshot") && opt.out)
		usage_error("%s: -o is for snapshot only", mode);
	if (strcmp(mode, "restore") && (opt.in || opt.run_dir || opt.vmm_id))
		usage_error("%s: -i, --run-dir and --vmm-id are for restore only", mode);
	if (!strcmp(mode, "snapshot") && !strcmp(opt.out, "-") && isatty(STDOUT_FILENO))
		usage_error("snapshot: refusing to write a bundle to a terminal");
}

static int run_on_sandbox(const char *mode, uint64_t timeout_ms, struct vmops_error *err)
{
	struct target t = { 0 };
	struct vmops_prepare_opts po;
	struct vmops_manifest m = { 0 };
	struct vmops_hv *h = NULL;
	struct vmops_prep p;
	int64_t paused = -1;
	int r = -1, frozen = -1;
	PGconn *c = vmops_db_connect(vmops_cli.db, prog_name, err);

	if (!c || vmops_schema_check(c, err) < 0 || load_target(c, opt.sandbox, &t, err) < 0)
		goto out;
	PQfinish(c);
	c = NULL;
	if (vmops_cli.dry_run) {
		print_result(mode, NULL, opt.sandbox, opt.out, -1, -1);
		r = 0;
		goto out;
	}
	h = vmops_hv_attach(&t.info, 10000, err);
	if (!h)
		goto out;
	prepare_opts(&po);
	if (!strcmp(mode, "prepare")) {
		r = vmops_prepare(&p, h, &po, err);
		frozen = p.frozen;
	} else if (!strcmp(mode, "undo")) {
		r = vmops_prep_recover(h, &po, err);
	} else {
		r = do_snapshot(h, &t, timeout_ms, &m, &paused, err);
	}
	if (r == 0)
		print_result(mode, h, opt.sandbox, opt.out && strcmp(opt.out, "-") ? opt.out : NULL, frozen,
			     paused);
out:
	vmops_manifest_clear(&m);
	vmops_hv_free(h);
	free(t.spec_json);
	if (c)
		PQfinish(c);
	return r;
}

static void print_db_result(const char *mode, long long snapshot_id, long long vmm_id,
			    const char *worker, const char *location, const char *sha256)
{
	static const struct vmops_column cols[] = {
		{ "mode", VMOPS_COL_STRING, 0, 0 },
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },
		{ "snapshot_id", VMOPS_COL_INT, 0, 0 },
		{ "vmm_id", VMOPS_COL_INT, 0, 0 },
		{ "worker", VMOPS_COL_STRING, 0, 0 },
		{ "location", VMOPS_COL_STRING, 0, 0 },
		{ "sha256", VMOPS_COL_STRING, 0, 0 },
	};
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *s = vmops_output_record(o, mode, cols, ARRAY_SIZE(cols));

	vmops_set_str(s, 0, mode);
	vmops_set_str(s, 1, opt.sandbox);
	vmops_set_int(s, 2, snapshot_id);
	vmops_set_int(s, 3, vmm_id);
	vmops_set_str(s, 4, worker);
	vmops_set_str(s, 5, location);
	vmops_set_str(s, 6, sha256);
	if (!vmops_cli.quiet || vmops_cli.json)
		print_output(o);
	vmops_output_free(o);
}

/* hibernate and wake: the library does the work and the database writes. */
static int run_db_mode(const char *mode, uint64_t timeout_ms, struct vmops_error *err)
{
	struct vmops_prepare_opts po;
	PGconn *c = vmops_db_connect(vmops_cli.db, prog_name, err);
	int r = -1;

	if (!c || vmops_schema_check(c, err) < 0)
		goto out;
	if (vmops_cli.dry_run) {
		struct target t = { 0 };

		r = strcmp(mode, "hibernate") ? 0 : load_target(c, opt.sandbox, &t, err);
		free(t.spec_json);
		if (r == 0)
			print_db_result(mode, 0, t.vmm_id, NULL, NULL, NULL);
		goto out;
	}
	prepare_opts(&po);
	if (!strcmp(mode, "hibernate")) {
		struct vmops_hibernate_opts ho = { .sandbox = opt.sandbox, .bundle_dir = opt.bundle_dir,
						   .work_dir = opt.work_dir, .budget_ms = timeout_ms,
						   .agent_ms = po.agent_ms, .prepare_ms = po.prepare_ms,
						   .hint_ms = po.hint_ms, .program = prog_name, .interrupted = &vmops_interrupted };
		struct vmops_hibernate_report hr;

		r = vmops_hibernate(c, &ho, &hr, err);
		if (r == 0)
			print_db_result(mode, hr.snapshot_id, hr.vmm_id, NULL, hr.location, hr.sha256);
	} else {
		struct vmops_wake_opts wo = { .sandbox = opt.sandbox, .worker = opt.worker,
					      .timeout_ms = (int)timeout_ms, .agent_ms = po.agent_ms,
					      .prepare_ms = po.prepare_ms, .auto_accel = VMOPS_ACCEL_AUTO,
					      .program = prog_name, .interrupted = &vmops_interrupted };
		struct vmops_wake_report wr;

		r = vmops_wake(c, &wo, &wr, err);
		if (r == 0)
			print_db_result(mode, wr.snapshot_id, wr.vmm_id, wr.worker, NULL, NULL);
	}
out:
	if (c)
		PQfinish(c);
	return r;
}

static const char *recover_action(const struct vmops_snap_recover_report *rr)
{
	if (!strcmp(rr->state, "none"))
		return "nothing in flight";
	if (vmops_cli.dry_run)
		return "would recover";
	if (!strcmp(rr->state, "writing"))
		return rr->vm_put_back ? "vm resumed and thawed; partial bundle removed; snapshot failed"
				       : "no vm to put back; partial bundle removed; snapshot failed";
	return rr->vmm_stopped ? "new vmm stopped; reservation freed; snapshot ready again"
			       : "new vmm gone already; reservation freed; snapshot ready again";
}

static void print_recover(const struct vmops_snap_recover_report *rr)
{
	static const struct vmops_column cols[] = {
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },
		{ "in_flight", VMOPS_COL_STRING, 0, 0 },
		{ "snapshot_id", VMOPS_COL_INT, 0, 0 },
		{ "left_by", VMOPS_COL_STRING, 0, 0 },
		{ "action", VMOPS_COL_STRING, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
	};
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *s = vmops_output_record(o, "recover", cols, ARRAY_SIZE(cols));
	bool none = !strcmp(rr->state, "none");

	vmops_set_str(s, 0, opt.sandbox);
	vmops_set_str(s, 1, rr->state);
	if (!none) {
		vmops_set_int(s, 2, rr->snapshot_id);
		vmops_set_str(s, 3, rr->previous_owner);
	}
	vmops_set_str(s, 4, recover_action(rr));
	vmops_set_bool(s, 5, vmops_cli.dry_run);
	if (!vmops_cli.quiet || vmops_cli.json)
		print_output(o);
	vmops_output_free(o);
}

/* recover: a crashed hibernate or wake, from the database's record of it. */
static int run_recover(struct vmops_error *err)
{
	struct vmops_prepare_opts po;
	struct vmops_snap_recover_report rr;
	struct vmops_snap_recover_opts ro = { .sandbox = opt.sandbox, .dry_run = vmops_cli.dry_run,
					      .host_id_override = getenv(VMOPS_HOST_ID_ENV),
					      .program = prog_name };
	PGconn *c = vmops_db_connect(vmops_cli.db, prog_name, err);
	int r = -1;

	prepare_opts(&po);
	ro.agent_ms = po.agent_ms;
	ro.prepare_ms = po.prepare_ms;
	if (c && vmops_schema_check(c, err) == 0) {
		r = vmops_snapshot_recover(c, &ro, &rr, err);
		if (r == 0)
			print_recover(&rr);
	}
	if (c)
		PQfinish(c);
	return r;
}

int main(int argc, const char **argv)
{
	struct vmops_error err = { 0 };
	struct vmops_manifest m = { 0 };
	const char **left, *mode;
	uint64_t timeout_ms;
	poptContext ctx;
	int r;

	prog_init("snapshot-prep");
	ctx = prog_parse(argc, argv, options, usage);
	left = poptGetArgs(ctx);
	if (!left || !left[0])
		usage_error("a mode is required (prepare, undo, snapshot, restore, hibernate, wake, recover)");
	if (left[1])
		usage_error("unexpected argument '%s'", left[1]);
	mode = left[0];
	check_args(mode);
	timeout_ms = opt_duration("timeout", opt.timeout, 600000, 1000, 86400000);
	prepare_opts(&(struct vmops_prepare_opts){ 0 });  /* validates the durations */
	vmops_interrupt_install(prog_name, 0);
	note_interrupt(mode);

	if (!strcmp(mode, "recover")) {
		r = run_recover(&err);
	} else if (!strcmp(mode, "hibernate") || !strcmp(mode, "wake")) {
		r = run_db_mode(mode, timeout_ms, &err);
	} else if (strcmp(mode, "restore")) {
		r = run_on_sandbox(mode, timeout_ms, &err);
	} else if (vmops_cli.dry_run) {
		r = verify_only(&m, &err);
		if (r == 0)
			print_result(mode, NULL, m.sandbox[0] ? m.sandbox : NULL, opt.in, -1, -1);
		vmops_manifest_clear(&m);
	} else {
		struct vmops_hv *h = do_restore(&m, &err);

		r = h ? 0 : -1;
		if (h)
			print_result(mode, h, m.sandbox[0] ? m.sandbox : NULL, NULL, -1, -1);
		vmops_hv_free(h);   /* the VMM keeps running */
		vmops_manifest_clear(&m);
	}
	poptFreeContext(ctx);
	if (r < 0)
		die_err(&err);
	return VMOPS_EXIT_OK;
}
