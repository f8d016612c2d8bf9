/* SPDX-License-Identifier: MIT */
/*
 * vmm-reap — clean up abandoned VMM records: free their reservations and
 * mark them deleted, in batches, safely from several hosts at once.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "db.h"
#include "host.h"
#include "parse.h"
#include "proc.h"
#include "prog.h"
#include "reap.h"
#include "schema.h"
#include "vm.h"

static struct {
	const char *batch, *limit, *older_than, *sessions;
} opt;

static struct poptOption options[] = {
	{ "batch", '\0', POPT_ARG_STRING, &opt.batch, 0,
	  "VMMs per transaction (default 1000, at most 100000)", "N" },
	{ "limit", '\0', POPT_ARG_STRING, &opt.limit, 0,
	  "reap at most N VMMs in this run (default: all)", "N" },
	{ "older-than", '\0', POPT_ARG_STRING, &opt.older_than, 0,
	  "only VMMs destroyed or failed at least DUR ago (default 0s)", "DUR" },
	{ "sessions", '\0', POPT_ARG_STRING, &opt.sessions, 0,
	  "database sessions reaping at once (default 2, at most 8)", "N" },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

struct after_batch {
	char host[VMOPS_HOST_ID_MAX];   /* "" when this host has no identity: no run dir is touched */
	bool tty;
	long long dirs_removed;
};

/*
 * The reaped VMMs of this host whose process is positively gone (dead, or
 * its pid taken by another process): their run directories go, through
 * lib/rundir's checked walk.  A VMM on another host, with no recorded
 * process, or whose process cannot be shown gone keeps its directory.
 */
static void remove_run_dirs(struct after_batch *a, const struct vmops_reap_local *l, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct vmops_error e = { 0 };
		char id[24];
		int live = vmops_proc_check(NULL, (pid_t)l[i].pid, l[i].pid_start_time, NULL, &e);

		snprintf(id, sizeof(id), "%lld", l[i].id);
		if (live != VMOPS_PROC_DEAD && live != VMOPS_PROC_REUSED) {
			vmops_info("vmm %s: its process may still run: run directory kept", id);
			continue;
		}
		if (vmops_vm_run_dir_gone(l[i].run_dir, "vmm", id) == 0)
			a->dirs_removed++;
	}
}

static void after_batch(void *arg, const struct vmops_reap_stats *st,
			const struct vmops_reap_local *local, size_t nlocal)
{
	struct after_batch *a = arg;

	remove_run_dirs(a, local, nlocal);
	/* The progress line: on a terminal only, on stderr, rewritten in place. */
	if (a->tty)
		fprintf(stderr, "\r%s: batch %lld: %lld vmms found, %lld deleted, %lld reservations deleted",
			prog_name, st->batches, st->found, st->vmms_deleted, st->reservations_deleted);
}

static void usage(void)
{
	printf("Usage:\n %s [options]\n\n", prog_name);
	printf("Clean up abandoned VMM records: VMMs that are destroyed or failed, not yet\n"
	       "deleted, and no longer any sandbox's active or target VMM.  Their reservations\n"
	       "are deleted and they are marked deleted, in batches, each in its own\n"
	       "transaction with one audit row.  Safe to run from several hosts at once.\n\n"
	       "Options:\n");
	vmops_cli_print_options(stdout, options);
	printf("\nExit status: 0 ok (also when nothing was abandoned), 1 some VMMs could not\n"
	       "be reaped, 2 usage, 5 database unreachable, 6 schema; see vmops(7).\n");
	printf("\nFor more details see vmm-reap(1).\n");
}

int main(int argc, const char **argv)
{
	static const struct vmops_column cols[] = {
		{ "found", VMOPS_COL_INT, 0, 0 },
		{ "vmms_deleted", VMOPS_COL_INT, 0, 0 },
		{ "vmms_already_deleted", VMOPS_COL_INT, 0, 0 },
		{ "reservations_deleted", VMOPS_COL_INT, 0, 0 },
		{ "errors", VMOPS_COL_INT, 0, 0 },
		{ "last_error", VMOPS_COL_STRING, 0, 0 },
		{ "batches", VMOPS_COL_INT, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
		{ "sessions", VMOPS_COL_INT, 0, 0 },
	};
	struct vmops_reap_opts ro = { .program = "vmm-reap" };
	struct after_batch ab = { 0 };
	struct vmops_reap_stats st;
	struct vmops_error err = { 0 };
	struct vmops_output *o;
	struct vmops_section *s;
	poptContext ctx;
	const char **left;
	long long n = 0;
	PGconn *c;

	prog_init("vmm-reap");
	ctx = prog_parse(argc, argv, options, usage);
	left = poptGetArgs(ctx);
	if (left && left[0])
		usage_error("unexpected argument '%s'", left[0]);

	/* Validate everything before any database contact. */
	ro.batch = VMOPS_REAP_BATCH_DEFAULT;
	if (opt.batch && vmops_parse_int(opt.batch, 1, VMOPS_REAP_BATCH_MAX, &ro.batch, &err) < 0)
		usage_error("--batch: %s", err.msg);
	if (opt.limit && vmops_parse_int(opt.limit, 1, LLONG_MAX, &ro.limit, &err) < 0)
		usage_error("--limit: %s", err.msg);
	ro.sessions = VMOPS_REAP_SESSIONS_DEFAULT;
	if (opt.sessions && vmops_parse_int(opt.sessions, 1, VMOPS_REAP_SESSIONS_MAX, &n, &err) < 0)
		usage_error("--sessions: %s", err.msg);
	if (opt.sessions)
		ro.sessions = (int)n;
	ro.older_than_ms = opt_duration("older-than", opt.older_than, ro.older_than_ms, 0,
					 3650ULL * 24 * 3600 * 1000);
	ro.dry_run = vmops_cli.dry_run;

	c = vmops_db_connect(vmops_cli.db, prog_name, &err);
	if (!c || vmops_schema_check(c, &err) < 0)
		die_err(&err);
	ab.tty = isatty(STDERR_FILENO) && !vmops_cli.quiet && !vmops_cli.json;
	if (vmops_host_id(getenv(VMOPS_HOST_ID_ENV), ab.host, sizeof(ab.host), &err) < 0) {
		vmops_debug("no host identity (%s): run directories are left alone", err.msg);
		ab.host[0] = '\0';
		vmops_err_clear(&err);
	}
	ro.host_id = ab.host[0] ? ab.host : NULL;
	ro.on_batch = after_batch;
	ro.arg = &ab;
	if (vmops_reap(c, &ro, &st, &err) < 0) {
		if (ab.tty && st.batches)
			fputc('\n', stderr);
		PQfinish(c);
		if (st.found)
			fprintf(stderr, "%s: stopped after %lld vmms found, %lld deleted, %lld reservations deleted\n",
				prog_name, st.found, st.vmms_deleted, st.reservations_deleted);
		die_err(&err);
	}
	PQfinish(c);
	if (ab.tty && st.batches)
		fputc('\n', stderr);

	o = vmops_output_new();
	s = vmops_output_record(o, "reap", cols, ARRAY_SIZE(cols));
	vmops_set_int(s, 0, st.found);
	vmops_set_int(s, 1, st.vmms_deleted);
	vmops_set_int(s, 2, st.vmms_already_deleted);
	vmops_set_int(s, 3, st.reservations_deleted);
	vmops_set_int(s, 4, st.errors);
	vmops_set_str(s, 5, st.errors ? st.last_error : NULL);
	vmops_set_int(s, 6, st.batches);
	vmops_set_bool(s, 7, ro.dry_run);
	vmops_set_int(s, 8, st.sessions);
	if (!vmops_cli.quiet || vmops_cli.json)
		print_output(o);
	vmops_output_free(o);
	poptFreeContext(ctx);
	if (st.errors) {
		fprintf(stderr, "%s: %lld vmm(s) could not be reaped; last error: %s\n", prog_name,
			st.errors, st.last_error);
		return VMOPS_EXIT_FAILURE;
	}
	return VMOPS_EXIT_OK;
}
