/* SPDX-License-Identifier: MIT */
/*
 * The program template: what every vmops program does the same way
 * (util-linux Documentation/boilerplate.c).  Programs, unlike the library,
 * print and exit; they do it through these helpers.
 *
 *   main():
 *     prog_init("vm-x", argc, argv);
 *     ctx = prog_parse(argc, argv, options, usage);   (usage errors, -h, -V)
 *     validate values -> usage_error(...)           (no database contact before this)
 *     connect, check schema -> die_err(&err)
 *     act, fill a struct vmops_output, print_output(out)
 *     return an enum vmops_exit code
 */
#ifndef VMOPS_PROG_H
#define VMOPS_PROG_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "error.h"
#include "exitcodes.h"
#include "log.h"
#include "macro.h"
#include "output.h"
#include "parse.h"

#ifndef VMOPS_VERSION
#define VMOPS_VERSION "0.0.0"
#endif

static const char *prog_name = "vmops";

/* util-linux close_stdout: a late write error on stdout is an error. */
static void prog_close_stdout(void)
{
	int e = 0;

	if (fflush(stdout) != 0 || ferror(stdout))
		e = errno ? errno : EIO;
	if (fclose(stdout) != 0 && !e)
		e = errno;
	if (e && e != EBADF) {
		fprintf(stderr, "%s: write error: %s\n", prog_name, strerror(e));
		_exit(VMOPS_EXIT_FAILURE);
	}
}

__attribute__((format(printf, 3, 0)))
static void prog_log(void *data, int level, const char *fmt, va_list ap)
{
	(void)data;
	if (vmops_cli.quiet && level > VMOPS_LOG_ERR)
		return;
	if (level >= VMOPS_LOG_INFO && vmops_cli.verbose < (level == VMOPS_LOG_DEBUG ? 2 : 1))
		return;
	fprintf(stderr, "%s: %s", prog_name, level == VMOPS_LOG_WARNING ? "warning: " : "");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static inline void prog_init(const char *name)
{
	prog_name = name;
	atexit(prog_close_stdout);
	vmops_set_log_fn(prog_log, NULL);
}

__attribute__((noreturn, format(printf, 1, 2)))
static inline void usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry '%s --help' for more information.\n", prog_name);
	exit(VMOPS_EXIT_USAGE);
}

/* Print the error context and exit with its code. */
__attribute__((noreturn))
static inline void die_err(const struct vmops_error *e)
{
	if (e->code == VMOPS_EXIT_USAGE)
		usage_error("%s", e->msg);
	fprintf(stderr, "%s: %s\n", prog_name, e->msg[0] ? e->msg : "unknown error");
	exit(e->code ? e->code : VMOPS_EXIT_FAILURE);
}

__attribute__((noreturn))
static inline void print_version(void)
{
	printf("%s (vmops) %s\n", prog_name, VMOPS_VERSION);
	exit(VMOPS_EXIT_OK);
}

static inline void print_output(const struct vmops_output *o)
{
	if (vmops_output_print(o, stdout, vmops_cli.json) < 0) {
		fprintf(stderr, "%s: write error: %s\n", prog_name, strerror(errno ? errno : EIO));
		exit(VMOPS_EXIT_FAILURE);
	}
}

/*
 * Parse the command line with popt the same way in every program:
 * a bad option is a usage error, -h prints usage() and exits 0, -V prints
 * the version.  Returns the context (free it with poptFreeContext).
 */
static inline poptContext prog_parse(int argc, const char **argv,
				     const struct poptOption *options, void (*usage)(void))
{
	struct vmops_error err = { 0 };
	poptContext ctx = poptGetContext(prog_name, argc, argv, options, 0);

	if (vmops_cli_parse(ctx, NULL, NULL, &err) < 0)
		usage_error("%s", err.msg);
	if (vmops_cli.help) {
		usage();
		poptFreeContext(ctx);
		exit(VMOPS_EXIT_OK);
	}
	if (vmops_cli.version) {
		poptFreeContext(ctx);
		print_version();
	}
	return ctx;
}

/*
 * A duration option ("90s", "1h30m") in milliseconds, in [min_ms, max_ms];
 * dflt when not given.  Anything else is a usage error naming the option.
 */
static inline uint64_t opt_duration(const char *name, const char *v, uint64_t dflt,
				    uint64_t min_ms, uint64_t max_ms)
{
	struct vmops_error err = { 0 };
	char lo[32], hi[32];
	uint64_t ms;

	if (!v)
		return dflt;
	if (vmops_parse_duration(v, &ms, &err) < 0)
		usage_error("--%s: %s", name, err.msg);
	if (ms < min_ms || ms > max_ms)
		usage_error("--%s: %s is out of range (%s to %s)", name, v,
			    vmops_format_duration(min_ms, lo, sizeof(lo)),
			    vmops_format_duration(max_ms, hi, sizeof(hi)));
	return ms;
}

/* The EXIT STATUS text shared by every --help. */
static inline void print_exit_status_hint(void)
{
	printf("\nExit status: 0 ok, 1 failure, 2 usage, 5 database unreachable, 6 schema;\n"
	       "see vmops(7) for the full list.\n");
}

#endif
