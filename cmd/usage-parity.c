/* SPDX-License-Identifier: MIT */
/*
 * usage-parity — find and repair billing drift: the ledger against the
 * fleet's state and against the independent usage record.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "parity.h"
#include "parse.h"
#include "prog.h"
#include "schema.h"
#include "vm.h"

static struct {
	const char *from, *to, *grace, *tolerance, *starting_timeout;
	int fix;
} opt;

static struct poptOption options[] = {
	{ "from", '\0', POPT_ARG_STRING, &opt.from, 0,
	  "start of the window (default: the last full hour)", "TIME" },
	{ "to", '\0', POPT_ARG_STRING, &opt.to, 0,
	  "end of the window (default: the last full hour)", "TIME" },
	{ "grace", '\0', POPT_ARG_STRING, &opt.grace, 0,
	  "the default window ends at least DUR ago (default 5m)", "DUR" },
	{ "tolerance", '\0', POPT_ARG_STRING, &opt.tolerance, 0,
	  "per-org usage difference allowed, in percent (default 2)", "PCT" },
	{ "starting-timeout", '\0', POPT_ARG_STRING, &opt.starting_timeout, 0,
	  "a pending sandbox's VMM starting for longer was abandoned (default 10m)", "DUR" },
	{ "fix", '\0', POPT_ARG_NONE, &opt.fix, 0,
	  "repair what is safe, each repair in its own transaction", NULL },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static void usage(void)
{
	printf("Usage:\n %s [options]\n\n", prog_name);
	printf("Find billing drift: open scale events for sandboxes that are stopped, on\n"
	       "terminated workers or whose VMM is dead; events at the wrong size; running\n"
	       "sandboxes without an open event; pending sandboxes whose VMM runs, or has\n"
	       "been starting for longer than --starting-timeout (reported, for ghost-reap);\n"
	       "overlapping events; and per-org GB\xc2\xb7s in a window that differs from the\n"
	       "usage samples.  With --fix, repair what is safe.\n\n"
	       "TIME is now, now-DUR, @EPOCH or YYYY-MM-DD[THH:MM[:SS]][Z|+HH:MM] (UTC unless\n"
	       "an offset is given).\n\n"
	       "Options:\n");
	vmops_cli_print_options(stdout, options);
	printf("\nExit status: 0 no drift, 3 drift found (not all fixed), 4 drift found and all\n"
	       "fixed, 1 failure, 2 usage, 5 database unreachable, 6 schema; see vmops(7).\n");
	printf("\nFor more details see usage-parity(1).\n");
}

static const char *iso(time_t t, char *buf, size_t len)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return buf;
}

static void set_num_or_null(struct vmops_section *s, size_t col, double v)
{
	if (isnan(v))
		vmops_set_null(s, col);
	else
		vmops_set_num(s, col, v);
}

static void set_id_or_null(struct vmops_section *s, size_t col, long long v)
{
	if (v < 0)
		vmops_set_null(s, col);
	else
		vmops_set_int(s, col, v);
}

static int print_report(const struct vmops_parity_report *rep, const struct vmops_parity_opts *po)
{
	static const struct vmops_column fcols[] = {
		{ "category", VMOPS_COL_STRING, 0, 0 },
		{ "org", VMOPS_COL_STRING, 0, 0 },
		{ "sandbox_id", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },
		{ "event_id", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "other_event_id", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "drift_gbs", VMOPS_COL_NUMBER, VMOPS_COL_RIGHT, 1 },
		{ "ledger_gbs", VMOPS_COL_NUMBER, VMOPS_COL_RIGHT, 1 },
		{ "usage_gbs", VMOPS_COL_NUMBER, VMOPS_COL_RIGHT, 1 },
		{ "drift_pct", VMOPS_COL_NUMBER, VMOPS_COL_RIGHT, 2 },
		{ "action", VMOPS_COL_STRING, 0, 0 },
		{ "fixed", VMOPS_COL_BOOL, 0, 0 },
		{ "error", VMOPS_COL_STRING, 0, 0 },
		{ "detail", VMOPS_COL_STRING, 0, 0 },
	};
	static const struct vmops_column tcols[] = {
		{ "category", VMOPS_COL_STRING, 0, 0 },
		{ "count", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "fixed", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "drift_gbs", VMOPS_COL_NUMBER, VMOPS_COL_RIGHT, 1 },
	};
	static const struct vmops_column scols[] = {
		{ "from", VMOPS_COL_STRING, 0, 0 },
		{ "to", VMOPS_COL_STRING, 0, 0 },
		{ "tolerance_pct", VMOPS_COL_NUMBER, 0, 2 },
		{ "findings", VMOPS_COL_INT, 0, 0 },
		{ "fixed", VMOPS_COL_INT, 0, 0 },
		{ "remaining", VMOPS_COL_INT, 0, 0 },
		{ "fix_errors", VMOPS_COL_INT, 0, 0 },
		{ "last_error", VMOPS_COL_STRING, 0, 0 },
		{ "fix", VMOPS_COL_BOOL, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
		{ "status", VMOPS_COL_STRING, 0, 0 },
	};
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *s;
	long long fixed = 0;
	char buf[40];
	int rc;

	s = vmops_output_table(o, "findings", fcols, ARRAY_SIZE(fcols));
	for (size_t i = 0; i < rep->n; i++) {
		const struct vmops_parity_finding *f = &rep->findings[i];

		vmops_section_add_row(s);
		vmops_set_str(s, 0, vmops_parity_category_name(f->category));
		vmops_set_str(s, 1, f->org);
		set_id_or_null(s, 2, f->sandbox_id);
		vmops_set_str(s, 3, f->sandbox);
		set_id_or_null(s, 4, f->event_id);
		set_id_or_null(s, 5, f->other_event_id);
		set_num_or_null(s, 6, f->drift_gbs);
		set_num_or_null(s, 7, f->ledger_gbs);
		set_num_or_null(s, 8, f->usage_gbs);
		set_num_or_null(s, 9, f->drift_pct);
		vmops_set_str(s, 10, f->action);
		if (rep->remaining >= 0)
			vmops_set_bool(s, 11, f->fixed);
		vmops_set_str(s, 12, f->error);
		vmops_set_str(s, 13, f->detail);
		fixed += f->fixed;
	}
	s = vmops_output_table(o, "totals", tcols, ARRAY_SIZE(tcols));
	for (int c = 0; c < VMOPS_PARITY_NCATEGORIES; c++) {
		vmops_section_add_row(s);
		vmops_set_str(s, 0, vmops_parity_category_name(c));
		vmops_set_int(s, 1, rep->totals[c].count);
		vmops_set_int(s, 2, rep->totals[c].fixed);
		vmops_set_num(s, 3, rep->totals[c].drift_gbs);
	}
	s = vmops_output_record(o, "summary", scols, ARRAY_SIZE(scols));
	vmops_set_str(s, 0, iso(po->from, buf, sizeof(buf)));
	vmops_set_str(s, 1, iso(po->to, buf, sizeof(buf)));
	vmops_set_num(s, 2, po->tolerance_pct);
	vmops_set_int(s, 3, (long long)rep->n);
	if (rep->remaining >= 0) {
		vmops_set_int(s, 4, fixed);
		vmops_set_int(s, 5, rep->remaining);
	}
	vmops_set_int(s, 6, rep->fix_errors);
	vmops_set_str(s, 7, rep->fix_errors ? rep->last_error : NULL);
	vmops_set_bool(s, 8, po->fix);
	vmops_set_bool(s, 9, po->dry_run);
	if (rep->n == 0)
		rc = VMOPS_EXIT_OK;
	else if (po->fix && !po->dry_run && rep->remaining == 0)
		rc = VMOPS_EXIT_FIXED;
	else
		rc = VMOPS_EXIT_FOUND;
	vmops_set_str(s, 10, rc == VMOPS_EXIT_OK ? "clean" : rc == VMOPS_EXIT_FIXED ? "fixed" : "drift");
	if (!vmops_cli.quiet || vmops_cli.json)
		print_output(o);
	vmops_output_free(o);
	return rc;
}

int main(int argc, const char **argv)
{
	struct vmops_parity_opts po = { .tolerance_pct = VMOPS_PARITY_TOLERANCE_DEFAULT,
					.program = "usage-parity" };
	struct vmops_parity_report *rep;
	struct vmops_error err = { 0 };
	uint64_t grace = VMOPS_PARITY_GRACE_DEFAULT_MS;
	time_t now = time(NULL), dfrom, dto;
	poptContext ctx;
	const char **left;
	PGconn *c;
	int rc;

	prog_init("usage-parity");
	ctx = prog_parse(argc, argv, options, usage);
	left = poptGetArgs(ctx);
	if (left && left[0])
		usage_error("unexpected argument '%s'", left[0]);

	/* Validate everything before any database contact. */
	grace = opt_duration("grace", opt.grace, grace, 0, 7ULL * 24 * 3600 * 1000);
	if (opt.tolerance) {
		char t[64];
		size_t n = strlen(opt.tolerance);

		snprintf(t, sizeof(t), "%s", opt.tolerance);
		if (n && n < sizeof(t) && t[n - 1] == '%')
			t[n - 1] = '\0';
		if (vmops_parse_double(t, 0, 100, &po.tolerance_pct, &err) < 0)
			usage_error("--tolerance: %s", err.msg);
	}
	vmops_parity_default_window(now, grace, &dfrom, &dto);
	po.from = dfrom;
	po.to = dto;
	if (opt.to && vmops_parity_parse_time(opt.to, now, &po.to, &err) < 0)
		usage_error("--to: %s", err.msg);
	if (opt.from && vmops_parity_parse_time(opt.from, now, &po.from, &err) < 0)
		usage_error("--from: %s", err.msg);
	if (opt.from && !opt.to)
		po.to = now;
	else if (opt.to && !opt.from)
		po.from = po.to - 3600;
	if (po.from >= po.to) {
		char a[40], b[40];
		usage_error("--from %s is not before --to %s", iso(po.from, a, sizeof(a)), iso(po.to, b, sizeof(b)));
	}
	po.starting_timeout_ms = opt_duration("starting-timeout", opt.starting_timeout,
					      VMOPS_STARTING_TIMEOUT_DEFAULT_MS, 0, 365ULL * 24 * 3600 * 1000);
	po.fix = opt.fix;
	po.dry_run = vmops_cli.dry_run;

	c = vmops_db_connect(vmops_cli.db, prog_name, &err);
	if (!c || vmops_schema_check(c, &err) < 0)
		die_err(&err);
	rep = vmops_parity_run(c, &po, &err);
	PQfinish(c);
	if (!rep)
		die_err(&err);
	rc = print_report(rep, &po);
	if (rep->fix_errors)
		fprintf(stderr, "%s: %lld repair(s) failed; last error: %s\n", prog_name, rep->fix_errors,
			rep->last_error);
	vmops_parity_report_free(rep);
	poptFreeContext(ctx);
	return rc;
}
