/* SPDX-License-Identifier: MIT */
/*
 * ghost-reap — reconcile the hypervisor processes on a worker with the
 * database: ghosts (processes the database does not know or knows as
 * destroyed) are reported or killed, phantoms and zombies (VMMs the database
 * thinks run but whose process is dead) are repaired.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "fleet.h"
#include "ghost.h"
#include "host.h"
#include "parse.h"
#include "prog.h"
#include "schema.h"
#include "vm.h"

#define MIN_AGE_MAX_MS (365ull * 24 * 3600 * 1000)
#define GRACE_MAX_MS (10ull * 60 * 1000)

static struct {
	const char *worker, *min_age, *action, *grace, *proc_root, *starting_timeout;
	int repair_from_recording;
} opt;

static struct poptOption options[] = {
	{ "worker", '\0', POPT_ARG_STRING, &opt.worker, 0,
	  "the worker this host is (default $VMOPS_WORKER, else the host name)", "NAME" },
	{ "min-age", '\0', POPT_ARG_STRING, &opt.min_age, 0,
	  "leave ghosts younger than this alone (default 5m)", "DUR" },
	{ "action", '\0', POPT_ARG_STRING, &opt.action, 0,
	  "what to do with ghosts: log or kill (default log)", "ACTION" },
	{ "grace", '\0', POPT_ARG_STRING, &opt.grace, 0,
	  "kill: time between SIGTERM and SIGKILL (default 5s)", "DUR" },
	{ "starting-timeout", '\0', POPT_ARG_STRING, &opt.starting_timeout, 0,
	  "a VMM starting for longer was abandoned by its launch (default 10m)", "DUR" },
	{ "proc-root", '\0', POPT_ARG_STRING, &opt.proc_root, 0,
	  "read processes from this /proc tree (default $VMOPS_PROC_ROOT, else /proc)", "DIR" },
	{ "repair-from-recording", '\0', POPT_ARG_NONE, &opt.repair_from_recording, 0,
	  "with a recorded --proc-root: repair the phantoms it shows (default: report only)", NULL },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static void usage(void)
{
	printf("Usage:\n %s [options]\n\n", prog_name);
	printf("Reconcile the hypervisor processes on this worker with the database.\n"
	       "Ghosts: hypervisor processes of this worker that the database does not\n"
	       "know, or knows as destroyed, and those of VMMs starting for longer than\n"
	       "--starting-timeout; logged, or killed with --action kill (SIGTERM, grace,\n"
	       "SIGKILL, never a reused pid).  Phantoms and zombies: VMMs the database has\n"
	       "as running or starting whose process is gone, dead, a zombie or another\n"
	       "process; the VMM is marked failed and its sandbox error (billing closed),\n"
	       "one transaction per VMM.  Unknown: a VMM whose process cannot be told\n"
	       "from another (no start time recorded); never acted on.\n\n"
	       "Nothing is done unless this host is the worker's host (its identity,\n"
	       "$VMOPS_HOST_ID or /etc/machine-id, is the one 'vm-fleet worker set-host'\n"
	       "recorded); a recorded --proc-root is only reported on.\n\n"
	       "Options:\n");
	vmops_cli_print_options(stdout, options);
	printf("\nExit status: 0 nothing found; 3 problems found and not all fixed (also when\n"
	       "a kill or repair failed); 4 problems found and all fixed; 1 failure;\n"
	       "2 usage; 5 database unreachable; 6 schema; 11 unknown worker; 13 this host\n"
	       "is not the worker's; see vmops(7).\n");
	printf("\nFor more details see ghost-reap(1).\n");
}

/* strerror, lowercased for messages ("no such file or directory"). */
static const char *lower_strerror(int e)
{
	static char buf[128];

	snprintf(buf, sizeof(buf), "%s", strerror(e));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

/* Is dir this host's live /proc (and not a recorded tree)? */
static bool is_live_proc(const char *dir)
{
	char real[PATH_MAX];

	return realpath(dir, real) && strcmp(real, "/proc") == 0;
}

int main(int argc, const char **argv)
{
	static const struct vmops_column icols[] = {
		{ "vmm", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "class", VMOPS_COL_STRING, 0, 0 },
		{ "pid", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "start_time", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "age_s", VMOPS_COL_NUMBER, VMOPS_COL_RIGHT, 1 },
		{ "hypervisor", VMOPS_COL_STRING, 0, 0 },
		{ "state", VMOPS_COL_STRING, 0, 0 },
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },
		{ "parent", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "action", VMOPS_COL_STRING, 0, 0 },
		{ "detail", VMOPS_COL_STRING, 0, 0 },
	};
	static const struct vmops_column scols[] = {
		{ "worker", VMOPS_COL_STRING, 0, 0 },
		{ "action", VMOPS_COL_STRING, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
		{ "hypervisors", VMOPS_COL_INT, 0, 0 },
		{ "healthy", VMOPS_COL_INT, 0, 0 },
		{ "ghosts", VMOPS_COL_INT, 0, 0 },
		{ "young", VMOPS_COL_INT, 0, 0 },
		{ "phantoms", VMOPS_COL_INT, 0, 0 },
		{ "zombies", VMOPS_COL_INT, 0, 0 },
		{ "foreign", VMOPS_COL_INT, 0, 0 },
		{ "unknown", VMOPS_COL_INT, 0, 0 },
		{ "killed", VMOPS_COL_INT, 0, 0 },
		{ "repaired", VMOPS_COL_INT, 0, 0 },
		{ "unfixed", VMOPS_COL_INT, 0, 0 },
		{ "errors", VMOPS_COL_INT, 0, 0 },
		{ "status", VMOPS_COL_STRING, 0, 0 },
	};
	struct vmops_ghost_opts go = { .program = "ghost-reap" };
	struct vmops_ghost_report rep;
	struct vmops_error err = { 0 };
	struct vmops_output *o;
	struct vmops_section *s;
	char host[256], host_id[VMOPS_HOST_ID_MAX];
	const char **left, *root_from = "--proc-root";
	struct stat sb;
	poptContext ctx;
	PGconn *c;
	int rc;

	prog_init("ghost-reap");
	ctx = prog_parse(argc, argv, options, usage);
	left = poptGetArgs(ctx);
	if (left && left[0])
		usage_error("unexpected argument '%s'", left[0]);

	/* Validate everything before any database contact. */
	go.worker = opt.worker;
	if (!go.worker && getenv("VMOPS_WORKER") && *getenv("VMOPS_WORKER"))
		go.worker = getenv("VMOPS_WORKER");
	if (!go.worker) {
		if (gethostname(host, sizeof(host)) < 0)
			usage_error("no --worker given and the host name is unknown: %s", lower_strerror(errno));
		host[sizeof(host) - 1] = '\0';
		go.worker = host;
	}
	if (!vmops_fleet_valid_name(go.worker))
		usage_error("invalid worker name '%s': letters, digits, '.', '_', '-', at most 63", go.worker);
	if (!opt.action || strcmp(opt.action, "log") == 0)
		go.action = VMOPS_GHOST_LOG;
	else if (strcmp(opt.action, "kill") == 0)
		go.action = VMOPS_GHOST_KILL;
	else
		usage_error("--action: unknown action '%s': use log or kill", opt.action);
	go.min_age_ms = opt_duration("min-age", opt.min_age, VMOPS_GHOST_MIN_AGE_DEFAULT_MS, 0, MIN_AGE_MAX_MS);
	go.starting_timeout_ms = opt_duration("starting-timeout", opt.starting_timeout,
					      VMOPS_STARTING_TIMEOUT_DEFAULT_MS, 0, MIN_AGE_MAX_MS);
	go.grace_ms = (unsigned)opt_duration("grace", opt.grace, VMOPS_GHOST_GRACE_DEFAULT_MS, 0, GRACE_MAX_MS);
	go.proc_root = opt.proc_root;
	if (!go.proc_root && getenv("VMOPS_PROC_ROOT") && *getenv("VMOPS_PROC_ROOT")) {
		go.proc_root = getenv("VMOPS_PROC_ROOT");
		root_from = "VMOPS_PROC_ROOT";
	}
	if (!go.proc_root)
		go.proc_root = "/proc";
	if (stat(go.proc_root, &sb) < 0)
		usage_error("%s %s: %s", root_from, go.proc_root, lower_strerror(errno));
	if (!S_ISDIR(sb.st_mode))
		usage_error("%s %s: not a directory", root_from, go.proc_root);
	go.live = is_live_proc(go.proc_root);
	if (go.action == VMOPS_GHOST_KILL && !go.live)
		usage_error("--action kill: %s %s is a recorded tree, not this host's /proc: its processes cannot be signalled",
			    root_from, go.proc_root);
	if (opt.repair_from_recording && go.live)
		usage_error("--repair-from-recording: %s %s is this host's live /proc, not a recording", root_from,
			    go.proc_root);
	go.repair_from_recording = opt.repair_from_recording;
	go.dry_run = vmops_cli.dry_run;
	/* The live /proc is read as the worker's only if this host is it. */
	if (go.live) {
		if (vmops_host_id(getenv(VMOPS_HOST_ID_ENV), host_id, sizeof(host_id), &err) < 0) {
			vmops_err_prefix(&err, "worker %s", go.worker);
			die_err(&err);
		}
		go.host_id = host_id;
	}

	c = vmops_db_connect(vmops_cli.db, prog_name, &err);
	if (!c || vmops_schema_check(c, &err) < 0)
		die_err(&err);
	if (vmops_ghost_reap(c, &go, &rep, &err) < 0) {
		PQfinish(c);
		if (rep.killed || rep.repaired)
			fprintf(stderr, "%s: stopped after %lld ghost(s) killed and %lld vmm(s) repaired\n",
				prog_name, rep.killed, rep.repaired);
		vmops_ghost_report_free(&rep);
		die_err(&err);
	}
	PQfinish(c);

	o = vmops_output_new();
	s = vmops_output_table(o, "vmms", icols, ARRAY_SIZE(icols));
	for (size_t i = 0; i < rep.n; i++) {
		const struct vmops_ghost_item *it = &rep.items[i];

		vmops_section_add_row(s);
		if (it->vmm_id >= 0)
			vmops_set_int(s, 0, it->vmm_id);
		else
			vmops_set_null(s, 0);
		vmops_set_str(s, 1, vmops_ghost_class_name(it->cls));
		if (it->pid > 0)
			vmops_set_int(s, 2, it->pid);
		else
			vmops_set_null(s, 2);
		if (it->start_time >= 0)
			vmops_set_int(s, 3, it->start_time);
		else
			vmops_set_null(s, 3);
		if (it->age_s >= 0)
			vmops_set_num(s, 4, it->age_s);
		else
			vmops_set_null(s, 4);
		vmops_set_str(s, 5, it->hypervisor[0] ? it->hypervisor : NULL);
		vmops_set_str(s, 6, it->state[0] ? it->state : NULL);
		vmops_set_str(s, 7, it->sandbox[0] ? it->sandbox : NULL);
		if (it->parent > 0)
			vmops_set_int(s, 8, it->parent);
		else
			vmops_set_null(s, 8);
		vmops_set_str(s, 9, vmops_ghost_act_name(it->act));
		vmops_set_str(s, 10, it->detail);
	}
	s = vmops_output_record(o, "summary", scols, ARRAY_SIZE(scols));
	vmops_set_str(s, 0, go.worker);
	vmops_set_str(s, 1, go.action == VMOPS_GHOST_KILL ? "kill" : "log");
	vmops_set_bool(s, 2, go.dry_run);
	vmops_set_int(s, 3, rep.hypervisors);
	vmops_set_int(s, 4, rep.healthy);
	vmops_set_int(s, 5, rep.ghosts);
	vmops_set_int(s, 6, rep.young);
	vmops_set_int(s, 7, rep.phantoms);
	vmops_set_int(s, 8, rep.zombies);
	vmops_set_int(s, 9, rep.foreign);
	vmops_set_int(s, 10, rep.unknown);
	vmops_set_int(s, 11, rep.killed);
	vmops_set_int(s, 12, rep.repaired);
	vmops_set_int(s, 13, rep.unfixed);
	vmops_set_int(s, 14, rep.errors);
	/* The audit programs' convention (usage-parity's): 0 clean, 3 found and
	 * not all fixed (a failed kill or repair included), 4 all fixed. */
	if (rep.problems == 0)
		rc = VMOPS_EXIT_OK;
	else if (rep.unfixed == 0)
		rc = VMOPS_EXIT_FIXED;
	else
		rc = VMOPS_EXIT_FOUND;
	vmops_set_str(s, 15, rc == VMOPS_EXIT_OK ? "clean" : rc == VMOPS_EXIT_FIXED ? "fixed" : "found");
	if (!vmops_cli.quiet || vmops_cli.json)
		print_output(o);
	vmops_output_free(o);
	poptFreeContext(ctx);

	if (rep.errors)
		fprintf(stderr, "%s: %lld action(s) failed; see the detail column\n", prog_name, rep.errors);
	vmops_ghost_report_free(&rep);
	return rc;
}
