/* SPDX-License-Identifier: MIT */
/*
 * vm-drain — empty a worker, live: move its sandboxes to other workers,
 * count again, and only then declare it drained.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "drain/drain.h"
#include "fleet.h"
#include "interrupt.h"
#include "host.h"
#include "migrate.h"
#include "parse.h"
#include "prog.h"
#include "schema.h"

static struct {
	const char *max_parallel, *timeout, *retries, *backoff, *timeout_per_gib, *progress_timeout;
	const char *max_bandwidth, *rate, *wait, *bundle_dir, *hibernate_timeout, *fallback_timeout;
	int terminate, cancel;
} opt;

static struct poptOption options[] = {
	{ "max-parallel", '\0', POPT_ARG_STRING, &opt.max_parallel, 0,
	  "moves out of the worker at once, 1..64 (default 2)", "N" },
	{ "timeout", '\0', POPT_ARG_STRING, &opt.timeout, 0, "whole-drain timeout (default 6h)", "DURATION" },
	{ "retries", '\0', POPT_ARG_STRING, &opt.retries, 0,
	  "attempts per sandbox before it is stuck, 1..20 (default 3)", "N" },
	{ "backoff", '\0', POPT_ARG_STRING, &opt.backoff, 0,
	  "wait before the second attempt, doubled after each (at most 1m; default 5s)", "DURATION" },
	{ "timeout-per-gib", '\0', POPT_ARG_STRING, &opt.timeout_per_gib, 0,
	  "a move's completion timeout per GiB of guest memory (default 150s)", "DURATION" },
	{ "progress-timeout", '\0', POPT_ARG_STRING, &opt.progress_timeout, 0,
	  "abort a move that makes no progress for this long (default 150s)", "DURATION" },
	{ "max-bandwidth", '\0', POPT_ARG_STRING, &opt.max_bandwidth, 0,
	  "bandwidth cap per move, e.g. 1G/s (default: none)", "SIZE/s" },
	{ "rate", '\0', POPT_ARG_STRING, &opt.rate, 0,
	  "expected rate per move, for the plan and the ETA (default 100M/s)", "SIZE/s" },
	{ "bundle-dir", '\0', POPT_ARG_STRING, &opt.bundle_dir, 0,
	  "hibernate what cannot move into DIR (absolute; default: no fallback)", "DIR" },
	{ "hibernate-timeout", '\0', POPT_ARG_STRING, &opt.hibernate_timeout, 0,
	  "budget of one sandbox's hibernate (default 2m)", "DURATION" },
	{ "fallback-timeout", '\0', POPT_ARG_STRING, &opt.fallback_timeout, 0,
	  "budget of all the hibernates of one run (default 30m)", "DURATION" },
	{ "terminate", '\0', POPT_ARG_NONE, &opt.terminate, 0, "declare the worker terminated, not drained", NULL },
	{ "cancel", '\0', POPT_ARG_NONE, &opt.cancel, 0,
	  "cancel the worker's drain: moves in flight finish or roll back, the worker is active again", NULL },
	{ "wait", '\0', POPT_ARG_STRING, &opt.wait, 0,
	  "--cancel: wait this long for the running vm-drain to stop (default 10m)", "DURATION" },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static void usage(void)
{
	printf("Usage:\n"
	       " %s [options] WORKER\n"
	       " %s [options] --cancel WORKER\n"
	       "\nEmpty a worker, live: mark it draining, move its sandboxes to other workers\n"
	       "(largest first, one inbound per target), hibernate into --bundle-dir what\n"
	       "cannot move, count again from the database and the worker's processes, and\n"
	       "only then declare it drained.  Rerun to continue.\n"
	       "\nOptions:\n", prog_name, prog_name);
	vmops_cli_print_options(stdout, options);
	printf("\nExit status: 0 drained (or cancelled, or the plan printed), 1 failure, 2 usage,\n"
	       "5 database unreachable, 6 schema, 8 timeout (--cancel), 10 refused (another\n"
	       "vm-drain runs it, or already drained), 11 not found, 12 interrupted (signal or\n"
	       "--cancel; rerun to continue), 15 partial (something remains: the worker stays\n"
	       "draining); see vm-drain(1) and vmops(7).\n");
}

#define WEEK_MS (7ULL * 24 * 3600 * 1000)

static bool tty, progress_shown;
static const char *drain_worker;

/*
 * What a second SIGINT/SIGTERM leaves (lib/interrupt): the drain, and the
 * moves and hibernates in flight, named.  on_sandbox runs on the main thread.
 */
static struct {
	char sandbox[64], how[96];
} inflight[16];

static void note_inflight(const struct vmops_drain_sandbox_report *s)
{
	bool going = !strcmp(s->outcome, "moving") || !strcmp(s->outcome, "hibernating");
	char list[600] = "";
	size_t k = ARRAY_SIZE(inflight);

	for (size_t i = 0; i < ARRAY_SIZE(inflight); i++) {
		if (!strcmp(inflight[i].sandbox, s->sandbox))
			inflight[i].sandbox[0] = '\0';
		if (!inflight[i].sandbox[0] && k == ARRAY_SIZE(inflight))
			k = i;
	}
	if (going && k < ARRAY_SIZE(inflight)) {
		snprintf(inflight[k].sandbox, sizeof(inflight[k].sandbox), "%s", s->sandbox);
		snprintf(inflight[k].how, sizeof(inflight[k].how), "%s %.63s", !strcmp(s->outcome, "moving") ? "moving to" :
			 "hibernating into", !strcmp(s->outcome, "moving") ? s->target : "its bundle");
	}
	for (size_t i = 0; i < ARRAY_SIZE(inflight); i++)
		if (inflight[i].sandbox[0] && strlen(list) < sizeof(list) - 160)
			snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%.63s %.79s", list[0] ? ", " : "",
				 inflight[i].sandbox, inflight[i].how);
	vmops_interrupt_note("worker %s stays draining%s%s; run 'vm-drain %s' again once the leases have expired"
			     " (it recovers what is left), or 'vm-migrate --recover'", drain_worker,
			     list[0] ? ", with these left under their leases: " : "", list, drain_worker);
}

static bool chatty(void)
{
	return !vmops_cli.quiet && !vmops_cli.json;
}

static void clear_progress(void)
{
	if (progress_shown)
		fputs("\r\033[K", stderr);
	progress_shown = false;
}

static void on_sandbox(void *data, const struct vmops_drain_sandbox_report *s)
{
	(void)data;
	note_inflight(s);
	if (vmops_cli.quiet)
		return;   /* on stderr: also with --json */
	clear_progress();
	if (!strcmp(s->outcome, "moving"))
		fprintf(stderr, "%s: %s: moving to %s (attempt %d)\n", prog_name, s->sandbox, s->target, s->attempts);
	else if (!strcmp(s->outcome, "moved"))
		fprintf(stderr, "%s: %s: moved to %s in %.1fs (migration %lld)\n", prog_name, s->sandbox, s->target,
			(double)s->wall_ms / 1000.0, s->migration_id);
	else if (!strcmp(s->outcome, "pending"))
		fprintf(stderr, "%s: %s: attempt %d failed, will retry: %s\n", prog_name, s->sandbox, s->attempts, s->error);
	else if (!strcmp(s->outcome, "hibernating"))
		fprintf(stderr, "%s: %s: cannot move; hibernating into %s (budget %.0fs)\n", prog_name, s->sandbox,
			s->bundle, (double)s->wall_ms / 1000.0);
	else if (!strcmp(s->outcome, "hibernated"))
		fprintf(stderr, "%s: %s: hibernated in %.1fs (bundle %s)\n", prog_name, s->sandbox,
			(double)s->wall_ms / 1000.0, s->bundle);
	else if (!strcmp(s->outcome, "requeued"))
		fprintf(stderr, "%s: %s: not moved now (%s); planning again\n", prog_name, s->sandbox, s->error);
	else
		fprintf(stderr, "%s: %s: %s%s%s\n", prog_name, s->sandbox, s->outcome, s->error[0] ? ": " : "", s->error);
}

static void on_progress(void *data, int moved, int hibernated, int stuck, int failed, int remaining, double eta_s)
{
	(void)data;
	if (!tty || !chatty())
		return;
	fprintf(stderr, "\r\033[Kmoved %d, hibernated %d, stuck %d, failed %d, remaining %d, ETA %.0fs", moved,
		hibernated, stuck, failed, remaining, eta_s);
	progress_shown = true;
}

static void print_report(const struct vmops_drain_report *r)
{
	static const struct vmops_column dcols[] = {
		{ "worker", VMOPS_COL_STRING, 0, 0 },       { "drain_id", VMOPS_COL_INT, 0, 0 },
		{ "state", VMOPS_COL_STRING, 0, 0 },        { "worker_state", VMOPS_COL_STRING, 0, 0 },
		{ "resumed", VMOPS_COL_BOOL, 0, 0 },        { "moved", VMOPS_COL_INT, 0, 0 },
		{ "hibernated", VMOPS_COL_INT, 0, 0 },      { "stuck", VMOPS_COL_INT, 0, 0 },
		{ "failed", VMOPS_COL_INT, 0, 0 },          { "remaining", VMOPS_COL_INT, 0, 0 },
		{ "left_sandboxes", VMOPS_COL_INT, 0, 0 },  { "left_vmms", VMOPS_COL_INT, 0, 0 },
		{ "left_processes", VMOPS_COL_INT, 0, 0 },  { "planned_s", VMOPS_COL_NUMBER, 0, 1 },
		{ "elapsed_s", VMOPS_COL_NUMBER, 0, 1 },    { "detail", VMOPS_COL_STRING, 0, 0 },
	};
	static const struct vmops_column scols[] = {
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },      { "outcome", VMOPS_COL_STRING, 0, 0 },
		{ "target", VMOPS_COL_STRING, 0, 0 },       { "memory_mb", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "attempts", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 }, { "migration_id", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "plan_start_s", VMOPS_COL_NUMBER, VMOPS_COL_RIGHT, 1 },
		{ "plan_finish_s", VMOPS_COL_NUMBER, VMOPS_COL_RIGHT, 1 },
		{ "error", VMOPS_COL_STRING, 0, 0 },       { "bundle", VMOPS_COL_STRING, 0, 0 },
	};
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *d = vmops_output_record(o, "drain", dcols, ARRAY_SIZE(dcols));
	struct vmops_section *s = vmops_output_table(o, "sandboxes", scols, ARRAY_SIZE(scols));
	const long long left[] = { r->left_sandboxes, r->left_vmms, r->left_processes };
	bool dry = !strcmp(r->state, "dry-run");

	vmops_set_str(d, 0, r->worker);
	if (r->drain_id > 0)
		vmops_set_int(d, 1, r->drain_id);
	vmops_set_str(d, 2, r->state[0] ? r->state : NULL);
	vmops_set_str(d, 3, r->worker_state[0] ? r->worker_state : NULL);
	vmops_set_bool(d, 4, r->resumed);
	vmops_set_int(d, 5, r->moved);
	vmops_set_int(d, 6, r->hibernated);
	vmops_set_int(d, 7, r->stuck);
	vmops_set_int(d, 8, r->failed);
	vmops_set_int(d, 9, r->remaining);
	for (int i = 0; i < 3; i++)
		if (left[i] >= 0)
			vmops_set_int(d, 10 + (size_t)i, left[i]);
	if (r->planned_s > 0)
		vmops_set_num(d, 13, r->planned_s);
	if (!dry && r->elapsed_s > 0)
		vmops_set_num(d, 14, r->elapsed_s);
	vmops_set_str(d, 15, r->count_detail[0] ? r->count_detail : NULL);
	for (size_t i = 0; i < r->n; i++) {
		const struct vmops_drain_sandbox_report *x = &r->sandboxes[i];
		vmops_section_add_row(s);
		vmops_set_str(s, 0, x->sandbox);
		vmops_set_str(s, 1, x->outcome);
		vmops_set_str(s, 2, x->target[0] ? x->target : NULL);
		vmops_set_int(s, 3, x->mem_mb);
		vmops_set_int(s, 4, x->attempts);
		if (x->migration_id > 0)
			vmops_set_int(s, 5, x->migration_id);
		if (x->plan_start_s >= 0) {
			vmops_set_num(s, 6, x->plan_start_s);
			vmops_set_num(s, 7, x->plan_finish_s);
		}
		vmops_set_str(s, 8, x->error[0] ? x->error : NULL);
		vmops_set_str(s, 9, x->bundle[0] ? x->bundle : NULL);
	}
	if (vmops_cli.json || !vmops_cli.quiet)
		print_output(o);
	vmops_output_free(o);
}

static uint64_t opt_rate(const char *name, const char *v, uint64_t dflt)
{
	struct vmops_error err = { 0 };
	char buf[64];
	size_t l;
	uint64_t b;

	if (!v)
		return dflt;
	snprintf(buf, sizeof(buf), "%s", v);
	l = strlen(buf);
	if (l > 2 && strcmp(buf + l - 2, "/s") == 0)
		buf[l - 2] = '\0';
	if (vmops_parse_size(buf, &b, &err) < 0)
		usage_error("--%s: %s", name, err.msg);
	if (b == 0)
		usage_error("--%s: must be more than 0", name);
	return b;
}

static unsigned opt_int(const char *name, const char *v, unsigned dflt, long long lo, long long hi)
{
	struct vmops_error err = { 0 };
	long long n;

	if (!v)
		return dflt;
	if (vmops_parse_int(v, lo, hi, &n, &err) < 0)
		usage_error("--%s: %s", name, err.msg);
	return (unsigned)n;
}

/* Where bundles go: explicit, absolute, an existing directory we may write to. */
static const char *opt_bundle_dir(const char *v)
{
	struct stat st;

	if (!v)
		return NULL;
	if (v[0] != '/')
		usage_error("--bundle-dir: '%s' is not an absolute path", v);
	errno = 0;
	if (stat(v, &st) < 0 || !S_ISDIR(st.st_mode))
		usage_error("--bundle-dir: %s: %s", v, errno ? strerror(errno) : "not a directory");
	if (access(v, W_OK | X_OK) < 0)
		usage_error("--bundle-dir: %s: %s", v, strerror(errno));
	return v;
}

static void parse_opts(struct vmops_drain_opts *o, const char *worker, uint64_t *wait_ms)
{
	if (!opt.cancel && opt.wait)
		usage_error("--wait goes with --cancel");
	if (opt.cancel && (opt.max_parallel || opt.timeout || opt.retries || opt.backoff || opt.timeout_per_gib ||
			   opt.progress_timeout || opt.max_bandwidth || opt.rate || opt.terminate || vmops_cli.dry_run ||
			   opt.bundle_dir || opt.hibernate_timeout || opt.fallback_timeout))
		usage_error("--cancel takes only --wait and the common options");
	o->worker = worker;
	o->max_parallel = opt_int("max-parallel", opt.max_parallel, VMOPS_DRAIN_DEFAULT_MAX_PARALLEL, 1, 64);
	o->timeout_ms = opt_duration("timeout", opt.timeout, VMOPS_DRAIN_DEFAULT_TIMEOUT_MS, 1000, WEEK_MS);
	o->retries = opt_int("retries", opt.retries, VMOPS_DRAIN_DEFAULT_RETRIES, 1, 20);
	o->backoff_ms = opt_duration("backoff", opt.backoff, VMOPS_DRAIN_DEFAULT_BACKOFF_MS, 0, 3600000);
	o->migrate_timeout_per_gib_ms = opt_duration("timeout-per-gib", opt.timeout_per_gib,
						     VMOPS_MIGRATE_DEFAULT_TIMEOUT_PER_GIB_MS, 1, WEEK_MS);
	o->progress_timeout_ms = opt_duration("progress-timeout", opt.progress_timeout,
					      VMOPS_MIGRATE_DEFAULT_PROGRESS_TIMEOUT_MS, 1, WEEK_MS);
	o->max_bandwidth = opt_rate("max-bandwidth", opt.max_bandwidth, 0);
	o->rate_mbps = (double)opt_rate("rate", opt.rate, 100ull << 20) / 1048576.0;
	o->bundle_dir = opt_bundle_dir(opt.bundle_dir);
	o->hibernate_timeout_ms = opt_duration("hibernate-timeout", opt.hibernate_timeout,
					       VMOPS_DRAIN_DEFAULT_HIBERNATE_MS, 1000, WEEK_MS);
	o->fallback_timeout_ms = opt_duration("fallback-timeout", opt.fallback_timeout,
					      VMOPS_DRAIN_DEFAULT_FALLBACK_MS, 1000, WEEK_MS);
	if (!opt.bundle_dir && (opt.hibernate_timeout || opt.fallback_timeout))
		usage_error("--hibernate-timeout and --fallback-timeout go with --bundle-dir");
	o->terminate = opt.terminate;
	o->dry_run = vmops_cli.dry_run;
	*wait_ms = opt_duration("wait", opt.wait, 600000, 0, WEEK_MS);
}

int main(int argc, const char **argv)
{
	struct vmops_drain_opts o = { 0 };
	struct vmops_drain_report rep;
	struct vmops_error err = { 0 };
	char host[VMOPS_HOST_ID_MAX];
	const char **args;
	const char *worker = NULL;
	uint64_t wait_ms;
	poptContext ctx;
	PGconn *c;
	int rc;

	prog_init("vm-drain");
	ctx = prog_parse(argc, argv, options, usage);
	args = poptGetArgs(ctx);
	if (args && args[0]) {
		worker = args[0];
		if (args[1])
			usage_error("unexpected argument '%s'", args[1]);
	}
	if (!worker)
		usage_error("no worker given");
	if (!vmops_fleet_valid_name(worker))
		usage_error("invalid worker name '%s': letters, digits, '.', '_', '-', at most 63", worker);
	parse_opts(&o, worker, &wait_ms);
	/* The process count needs this host's identity; without one the worker is not declared drained. */
	o.host_id = vmops_host_id(getenv(VMOPS_HOST_ID_ENV), host, sizeof(host), &err) == 0 ? host : NULL;
	o.proc_root = getenv("VMOPS_PROC_ROOT");
	o.interrupted = &vmops_interrupted;
	o.on_sandbox = on_sandbox;
	o.on_progress = on_progress;
	tty = isatty(STDERR_FILENO);

	drain_worker = worker;
	vmops_interrupt_install(prog_name, 0);
	if (opt.cancel)
		vmops_interrupt_note("the cancel of the drain of worker %s is recorded; the running vm-drain ends it",
				     worker);
	else
		vmops_interrupt_note("worker %s stays draining; run 'vm-drain %s' again once its lease has expired"
				     " (it recovers what is left), or 'vm-migrate --recover'", worker, worker);
	signal(SIGPIPE, SIG_IGN);

	c = vmops_db_connect(vmops_cli.db, prog_name, &err);
	if (!c || vmops_schema_check(c, &err) < 0)
		die_err(&err);
	if (opt.cancel)
		rc = vmops_drain_cancel(c, worker, wait_ms, &vmops_interrupted, &rep, &err) < 0 ? -1 : VMOPS_EXIT_OK;
	else
		rc = vmops_drain_run(c, vmops_cli.db, &o, &rep, &err);
	clear_progress();
	PQfinish(c);
	poptFreeContext(ctx);
	if (rc < 0) {
		if (vmops_cli.json && rep.drain_id > 0)
			print_report(&rep);
		vmops_drain_report_free(&rep);
		die_err(&err);
	}
	print_report(&rep);
	if (rc != VMOPS_EXIT_OK && !vmops_cli.json)
		fprintf(stderr, "%s: worker %s stays %s: %s\n", prog_name, rep.worker,
			rep.worker_state[0] ? rep.worker_state : "draining",
			rep.count_detail[0] ? rep.count_detail : rep.state);
	vmops_drain_report_free(&rep);
	return rc;
}
