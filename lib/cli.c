/* SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "exitcodes.h"

struct vmops_cli vmops_cli;

/* poptGetNextOpt's value for -v (far from the programs' own option values). */
#define VMOPS_CLI_VERBOSE 0x76767

struct poptOption vmops_common_options[] = {
	{ "db", '\0', POPT_ARG_STRING, &vmops_cli.db, 0,
	  "connect with this libpq connection string or URI (default: libpq environment)", "CONNINFO" },
	{ "json", '\0', POPT_ARG_NONE, &vmops_cli.json, 0, "print JSON instead of text", NULL },
	{ "verbose", 'v', POPT_ARG_NONE, NULL, VMOPS_CLI_VERBOSE,
	  "say more about what happens (repeat for debug output)", NULL },
	{ "quiet", 'q', POPT_ARG_NONE, &vmops_cli.quiet, 0, "print only errors", NULL },
	{ "help", 'h', POPT_ARG_NONE, &vmops_cli.help, 0, "show this help and exit", NULL },
	{ "version", 'V', POPT_ARG_NONE, &vmops_cli.version, 0, "show the version and exit", NULL },
	POPT_TABLEEND
};

struct poptOption vmops_dry_run_option[] = {
	{ "dry-run", '\0', POPT_ARG_NONE, &vmops_cli.dry_run, 0,
	  "show what would change, change nothing", NULL },
	POPT_TABLEEND
};

int vmops_cli_parse(poptContext ctx, int (*on_opt)(int val, const char *arg, void *data,
						    struct vmops_error *e),
		    void *data, struct vmops_error *e)
{
	int rc;

	while ((rc = poptGetNextOpt(ctx)) > 0) {
		if (rc == VMOPS_CLI_VERBOSE) {  /* counted: -vv is debug output */
			vmops_cli.verbose++;
			continue;
		}
		if (!on_opt)
			continue;
		char *arg = poptGetOptArg(ctx);  /* malloc'd by popt: on_opt copies what it keeps */
		int r = on_opt(rc, arg, data, e);

		free(arg);
		if (r < 0) {
			if (!e->code)
				e->code = VMOPS_EXIT_USAGE;
			return -1;
		}
	}
	if (rc < -1) {
		const char *opt = poptBadOption(ctx, 0);
		switch (rc) {
		case POPT_ERROR_BADOPT:
			return vmops_err(e, VMOPS_EXIT_USAGE, "unrecognized option '%s'", opt);
		case POPT_ERROR_NOARG:
			return vmops_err(e, VMOPS_EXIT_USAGE, "option '%s' requires an argument", opt);
		default:
			return vmops_err(e, VMOPS_EXIT_USAGE, "%s: %s", opt, poptStrerror(rc));
		}
	}
	return 0;
}

static void print_opts(FILE *f, const struct poptOption *t)
{
	for (; t->longName || t->shortName || t->arg; t++) {
		char lhs[96];
		int n = 0;

		if ((t->argInfo & POPT_ARG_MASK) == POPT_ARG_INCLUDE_TABLE) {
			if (t->descrip)
				fprintf(f, "\n%s\n", t->descrip);
			print_opts(f, t->arg);
			continue;
		}
		if (t->argInfo & POPT_ARGFLAG_DOC_HIDDEN)
			continue;
		if (t->shortName)
			n = snprintf(lhs, sizeof(lhs), "  -%c%s", t->shortName, t->longName ? ", " : "");
		else
			n = snprintf(lhs, sizeof(lhs), "      ");
		if (t->longName)
			n += snprintf(lhs + n, sizeof(lhs) - (size_t)n, "--%s", t->longName);
		if (t->argDescrip)
			snprintf(lhs + n, sizeof(lhs) - (size_t)n, " %s", t->argDescrip);
		if (strlen(lhs) > 28)
			fprintf(f, "%s\n%30s%s\n", lhs, "", t->descrip ? t->descrip : "");
		else
			fprintf(f, "%-30s%s\n", lhs, t->descrip ? t->descrip : "");
	}
}

void vmops_cli_print_options(FILE *f, const struct poptOption *table)
{
	print_opts(f, table);
}
