/* SPDX-License-Identifier: MIT */
/*
 * vm-migrate — move one running VM to another worker, live, with the
 * database as the guard (one in-flight migration per target worker).
 */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "fleet.h"
#include "interrupt.h"
#include "migrate.h"
#include "parse.h"
#include "prog.h"
#include "schema.h"

static struct {
	const char *to, *connections, *wait_target, *timeout_per_gib, *progress_timeout;
	const char *downtime_limit, *max_bandwidth, *lease, *rtt, *accel;
	int auto_converge, recover;
} opt;

static struct poptOption options[] = {
	{ "to", '\0', POPT_ARG_STRING, &opt.to, 0, "target worker (default: the one with most free capacity)", "WORKER" },
	{ "connections", '\0', POPT_ARG_STRING, &opt.connections, 0,
	  "parallel transfer connections, 1..128 (default 1)", "N" },
	{ "wait-target", '\0', POPT_ARG_STRING, &opt.wait_target, 0,
	  "wait this long for a free target (default 5m; 0s: do not wait)", "DURATION" },
	{ "timeout-per-gib", '\0', POPT_ARG_STRING, &opt.timeout_per_gib, 0,
	  "completion timeout per GiB of guest memory (default 150s)", "DURATION" },
	{ "progress-timeout", '\0', POPT_ARG_STRING, &opt.progress_timeout, 0,
	  "abort when the transfer makes no progress for this long (default 150s)", "DURATION" },
	{ "downtime-limit", '\0', POPT_ARG_STRING, &opt.downtime_limit, 0,
	  "longest pause allowed at switchover, in milliseconds (default: hypervisor's, 300)", "MS" },
	{ "max-bandwidth", '\0', POPT_ARG_STRING, &opt.max_bandwidth, 0,
	  "bandwidth cap, e.g. 1G/s (default: none)", "SIZE/s" },
	{ "auto-converge", '\0', POPT_ARG_NONE, &opt.auto_converge, 0,
	  "throttle the guest's vCPUs when it dirties memory faster than it can be sent", NULL },
	{ "lease", '\0', POPT_ARG_STRING, &opt.lease, 0,
	  "lease on the attempt, renewed while it runs (default 30s)", "DURATION" },
	{ "rtt", '\0', POPT_ARG_STRING, &opt.rtt, 0,
	  "round-trip time to the target, for the ETA (default 1ms)", "DURATION" },
	{ "accel", '\0', POPT_ARG_STRING, &opt.accel, 0,
	  "what a spec's \"accel\": \"auto\" means for the receiver: tcg, kvm or auto", "KIND" },
	{ "recover", '\0', POPT_ARG_NONE, &opt.recover, 0,
	  "clean up attempts whose vm-migrate died (expired leases) and exit", NULL },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static void usage(void)
{
	printf("Usage:\n"
	       " %s [options] SANDBOX\n"
	       " %s [options] --recover\n"
	       "\nMove one running VM to another worker, live.  One migration at a time per\n"
	       "target worker, enforced by the database; on failure the VM keeps running\n"
	       "where it was.\n\nOptions:\n", prog_name, prog_name);
	vmops_cli_print_options(stdout, options);
	printf("\nExit status: 0 migrated, 1 failure, 2 usage, 5 database unreachable, 6 schema,\n"
	       "7 hypervisor, 8 timeout, 9 no target, 10 refused, 11 not found, 12 interrupted,\n"
	       "14 unknown (a live VMM did not answer: nothing irreversible done; run --recover later),\n"
	       "17 a worker's host did not answer over ssh (nothing irreversible done there);\n"
	       "see vm-migrate(1) and vmops(7).\n");
}

#define WEEK_MS (7ULL * 24 * 3600 * 1000)

/*
 * The first SIGINT/SIGTERM asks the attempt to stop and roll back (every
 * wait polls the flag); a second one leaves at once and names what it
 * leaves for --recover (lib/interrupt).
 */
static void on_claim(void *data, const struct vmops_migrate_report *r)
{
	(void)data;
	vmops_interrupt_note("sandbox %s, migration %lld (%s -> %s), is left as it was, under its lease:"
			     " run 'vm-migrate --recover' once the lease has expired", r->sandbox,
			     r->migration_id, r->source_worker, r->target_worker);
}

static bool tty;

static void human(double b, char *buf, size_t len)
{
	const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int i = 0;

	while (b >= 1024 && i < 4) {
		b /= 1024;
		i++;
	}
	snprintf(buf, len, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void progress(void *data, const struct vmops_migrate_report *r)
{
	char done[32], total[32], rate[32], rem[32];

	(void)data;
	if (!tty || vmops_cli.quiet || vmops_cli.json)
		return;
	human((double)r->transferred_bytes, done, sizeof(done));
	human((double)r->total_bytes, total, sizeof(total));
	human(r->rate_bps, rate, sizeof(rate));
	human((double)r->remaining_bytes, rem, sizeof(rem));
	fprintf(stderr, "\r%s -> %s: %s of %s, %s/s, %s left, ETA %s%.0fs   ", r->source_worker,
		r->target_worker, done, total, rate, rem, r->eta_s < 0 ? "~" : "",
		r->eta_s < 0 ? 0.0 : r->eta_s);
}

static void report(const struct vmops_migrate_report *r)
{
	static const struct vmops_column cols[] = {
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },
		{ "state", VMOPS_COL_STRING, 0, 0 },
		{ "migration_id", VMOPS_COL_INT, 0, 0 },
		{ "source_worker", VMOPS_COL_STRING, 0, 0 },
		{ "target_worker", VMOPS_COL_STRING, 0, 0 },
		{ "source_vmm_id", VMOPS_COL_INT, 0, 0 },
		{ "target_vmm_id", VMOPS_COL_INT, 0, 0 },
		{ "connections_requested", VMOPS_COL_INT, 0, 0 },
		{ "connections_used", VMOPS_COL_INT, 0, 0 },
		{ "memory_bytes", VMOPS_COL_INT, 0, 0 },
		{ "transferred_bytes", VMOPS_COL_INT, 0, 0 },
		{ "downtime_ms", VMOPS_COL_INT, 0, 0 },
		{ "total_time_ms", VMOPS_COL_INT, 0, 0 },
		{ "wait_ms", VMOPS_COL_INT, 0, 0 },
		{ "wall_ms", VMOPS_COL_INT, 0, 0 },
		{ "throughput_bps", VMOPS_COL_NUMBER, 0, 0 },
		{ "error", VMOPS_COL_STRING, 0, 0 },
	};
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *s = vmops_output_record(o, "migration", cols, ARRAY_SIZE(cols));
	bool real = r->migration_id > 0;

	vmops_set_str(s, 0, r->sandbox);
	vmops_set_str(s, 1, r->state);
	if (real)
		vmops_set_int(s, 2, r->migration_id);
	vmops_set_str(s, 3, r->source_worker[0] ? r->source_worker : NULL);
	vmops_set_str(s, 4, r->target_worker[0] ? r->target_worker : NULL);
	if (r->source_vmm_id > 0)
		vmops_set_int(s, 5, r->source_vmm_id);
	if (r->target_vmm_id > 0)
		vmops_set_int(s, 6, r->target_vmm_id);
	vmops_set_int(s, 7, r->connections_requested);
	if (r->connections_used)
		vmops_set_int(s, 8, r->connections_used);
	if (r->memory_bytes)
		vmops_set_int(s, 9, (long long)r->memory_bytes);
	if (real)
		vmops_set_int(s, 10, (long long)r->transferred_bytes);
	if (r->downtime_ms >= 0)
		vmops_set_int(s, 11, r->downtime_ms);
	if (r->total_time_ms >= 0)
		vmops_set_int(s, 12, r->total_time_ms);
	vmops_set_int(s, 13, (long long)r->wait_ms);
	vmops_set_int(s, 14, (long long)r->wall_ms);
	if (r->total_time_ms > 0)
		vmops_set_num(s, 15, (double)r->transferred_bytes * 1000.0 / (double)r->total_time_ms);
	vmops_set_str(s, 16, r->error[0] ? r->error : NULL);
	if (vmops_cli.json || !vmops_cli.quiet)
		print_output(o);
	vmops_output_free(o);
}

static int recover(PGconn *c, uint64_t lease_ms)
{
	static const struct vmops_column cols[] = {
		{ "found", VMOPS_COL_INT, 0, 0 },
		{ "completed", VMOPS_COL_INT, 0, 0 },
		{ "released", VMOPS_COL_INT, 0, 0 },
		{ "failed", VMOPS_COL_INT, 0, 0 },
		{ "lost", VMOPS_COL_INT, 0, 0 },
		{ "unknown", VMOPS_COL_INT, 0, 0 },
		{ "receivers_killed", VMOPS_COL_INT, 0, 0 },
		{ "errors", VMOPS_COL_INT, 0, 0 },
		{ "last_error", VMOPS_COL_STRING, 0, 0 },
	};
	struct vmops_recover_report rr;
	struct vmops_error err = { 0 };
	struct vmops_output *o;
	struct vmops_section *s;

	if (vmops_migrate_recover_until(c, vmops_cli.dry_run, lease_ms, &vmops_interrupted, &rr, &err) < 0)
		die_err(&err);
	o = vmops_output_new();
	s = vmops_output_record(o, "recover", cols, ARRAY_SIZE(cols));
	vmops_set_int(s, 0, rr.found);
	vmops_set_int(s, 1, rr.completed);
	vmops_set_int(s, 2, rr.released);
	vmops_set_int(s, 3, rr.failed);
	vmops_set_int(s, 4, rr.lost);
	vmops_set_int(s, 5, rr.unknown);
	vmops_set_int(s, 6, rr.receivers_killed);
	vmops_set_int(s, 7, rr.errors);
	vmops_set_str(s, 8, rr.last_error[0] ? rr.last_error : NULL);
	if (vmops_cli.json || !vmops_cli.quiet)
		print_output(o);
	vmops_output_free(o);
	if (rr.unknown && !vmops_cli.json)
		fprintf(stderr, "%s: %s\n", prog_name, rr.last_error);
	if (rr.interrupted) {
		fprintf(stderr, "%s: interrupted: attempts not recovered yet are left as they were; run --recover again\n",
			prog_name);
		return VMOPS_EXIT_INTERRUPTED;
	}
	return rr.errors ? VMOPS_EXIT_FAILURE : rr.unreachable ? VMOPS_EXIT_UNREACHABLE :
	       rr.unknown ? VMOPS_EXIT_UNKNOWN : VMOPS_EXIT_OK;
}

int main(int argc, const char **argv)
{
	struct vmops_migrate_opts mo = { 0 };
	struct vmops_migrate_report rep;
	struct vmops_error err = { 0 };
	const char **args;
	const char *sandbox = NULL;
	poptContext ctx;
	PGconn *c;
	long long n;
	int rc;

	prog_init("vm-migrate");
	ctx = prog_parse(argc, argv, options, usage);
	args = poptGetArgs(ctx);
	if (args && args[0]) {
		sandbox = args[0];
		if (args[1])
			usage_error("unexpected argument '%s'", args[1]);
	}
	if (opt.recover && sandbox)
		usage_error("--recover takes no SANDBOX");
	if (!opt.recover && !sandbox)
		usage_error("no sandbox given");
	if (sandbox && !vmops_fleet_valid_name(sandbox))
		usage_error("invalid sandbox name '%s': letters, digits, '.', '_', '-', at most 63", sandbox);
	if (opt.to && !vmops_fleet_valid_name(opt.to))
		usage_error("invalid worker name '%s': letters, digits, '.', '_', '-', at most 63", opt.to);

	/* Validate everything before touching the database. */
	mo.sandbox = sandbox;
	mo.to = opt.to;
	mo.connections = 1;
	if (opt.connections) {
		if (vmops_parse_int(opt.connections, 1, 128, &n, &err) < 0)
			usage_error("--connections: %s", err.msg);
		mo.connections = (unsigned)n;
	}
	mo.wait_target_ms = opt_duration("wait-target", opt.wait_target, VMOPS_MIGRATE_DEFAULT_WAIT_TARGET_MS, 0, WEEK_MS);
	mo.timeout_per_gib_ms = opt_duration("timeout-per-gib", opt.timeout_per_gib,
					     VMOPS_MIGRATE_DEFAULT_TIMEOUT_PER_GIB_MS, 1, WEEK_MS);
	mo.progress_timeout_ms = opt_duration("progress-timeout", opt.progress_timeout,
					      VMOPS_MIGRATE_DEFAULT_PROGRESS_TIMEOUT_MS, 1, WEEK_MS);
	mo.lease_ms = opt_duration("lease", opt.lease, VMOPS_MIGRATE_DEFAULT_LEASE_MS, 3000, WEEK_MS);
	mo.rtt_s = (double)opt_duration("rtt", opt.rtt, 1, 0, 60000) / 1000.0;
	if (opt.downtime_limit) {
		if (vmops_parse_int(opt.downtime_limit, 1, 2000000, &n, &err) < 0)
			usage_error("--downtime-limit: %s", err.msg);
		mo.downtime_limit_ms = (uint32_t)n;
	}
	if (opt.max_bandwidth) {
		char buf[64];
		size_t l = strlen(opt.max_bandwidth);
		uint64_t b;
		snprintf(buf, sizeof(buf), "%s", opt.max_bandwidth);
		if (l > 2 && strcmp(buf + l - 2, "/s") == 0)
			buf[l - 2] = '\0';
		if (vmops_parse_size(buf, &b, &err) < 0)
			usage_error("--max-bandwidth: %s", err.msg);
		if (b == 0)
			usage_error("--max-bandwidth: must be more than 0");
		mo.max_bandwidth = b;
	}
	mo.auto_converge = opt.auto_converge;
	mo.auto_accel = VMOPS_ACCEL_AUTO;
	if (opt.accel) {
		if (strcmp(opt.accel, "tcg") == 0)
			mo.auto_accel = VMOPS_ACCEL_TCG;
		else if (strcmp(opt.accel, "kvm") == 0)
			mo.auto_accel = VMOPS_ACCEL_KVM;
		else if (strcmp(opt.accel, "auto") != 0)
			usage_error("--accel: unknown kind '%s': use tcg, kvm or auto", opt.accel);
	}
	mo.dry_run = vmops_cli.dry_run;
	mo.interrupted = &vmops_interrupted;
	mo.on_claim = on_claim;
	mo.on_progress = progress;
	tty = isatty(STDERR_FILENO);

	vmops_interrupt_install(prog_name, 0);
	if (sandbox)
		vmops_interrupt_note("sandbox %s: if an attempt was already claimed, it is left under its lease: run"
				     " 'vm-migrate --recover' once it has expired", sandbox);
	else
		vmops_interrupt_note("attempts being recovered are left under a new lease: run"
				     " 'vm-migrate --recover' again once it has expired");
	signal(SIGPIPE, SIG_IGN);

	c = vmops_db_connect(vmops_cli.db, prog_name, &err);
	if (!c || vmops_schema_check(c, &err) < 0)
		die_err(&err);
	if (opt.recover) {
		rc = recover(c, mo.lease_ms);
		PQfinish(c);
		poptFreeContext(ctx);
		return rc;
	}
	rc = vmops_migrate(c, &mo, &rep, &err);
	if (tty && !vmops_cli.quiet && !vmops_cli.json && rep.migration_id > 0)
		fputc('\n', stderr);
	PQfinish(c);
	poptFreeContext(ctx);
	if (rc < 0) {
		/* Failures that got as far as an attempt still report it (JSON for scripts). */
		if (vmops_cli.json && rep.migration_id > 0)
			report(&rep);
		die_err(&err);
	}
	report(&rep);
	return VMOPS_EXIT_OK;
}
