/* SPDX-License-Identifier: MIT */
/*
 * Command-line plumbing shared by every program: the common popt options and
 * help text rendered from the option tables (the single source of truth for
 * --help, the man pages and the completions, checked by `make check`).
 */
#ifndef VMOPS_CLI_H
#define VMOPS_CLI_H

#include <popt.h>
#include <stdbool.h>
#include <stdio.h>

#include "error.h"

struct vmops_cli {
	const char *db;     /* --db CONNINFO; NULL: libpq environment */
	int json;           /* --json */
	int verbose;        /* -v, repeatable */
	int quiet;          /* -q */
	int dry_run;        /* --dry-run (programs that change things) */
	int help;           /* -h */
	int version;        /* -V */
};

/* The values of the common options (one program per process). */
extern struct vmops_cli vmops_cli;

/* Include with POPT_ARG_INCLUDE_TABLE. */
extern struct poptOption vmops_common_options[];  /* --db --json -v -q -h -V */
extern struct poptOption vmops_dry_run_option[];  /* --dry-run */

#define VMOPS_COMMON_OPTIONS \
	{ NULL, '\0', POPT_ARG_INCLUDE_TABLE, vmops_common_options, 0, "Common options:", NULL }
#define VMOPS_DRY_RUN_OPTION \
	{ NULL, '\0', POPT_ARG_INCLUDE_TABLE, vmops_dry_run_option, 0, NULL, NULL }

/*
 * Run popt over argv.  Options with a `val` are passed to on_opt (may be
 * NULL); returns 0, or -1 with e->code = VMOPS_EXIT_USAGE and a one-line
 * message ("unrecognized option '--x'", "option '--db' requires an argument").
 */
int vmops_cli_parse(poptContext ctx, int (*on_opt)(int val, const char *arg, void *data,
						    struct vmops_error *e),
		    void *data, struct vmops_error *e);

/* Render option help from a table (recursing into included tables). */
void vmops_cli_print_options(FILE *f, const struct poptOption *table);

#endif
