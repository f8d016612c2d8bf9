/* SPDX-License-Identifier: MIT */
/*
 * vm-fleet — the inventory that the other vmops programs act on:
 * schema, workers, sandboxes and their VMMs.
 */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "fleet.h"
#include "interrupt.h"
#include "host.h"
#include "images.h"
#include "parse.h"
#include "proc.h"
#include "prog.h"
#include "schema.h"
#include "spec.h"
#include "transport/transport.h"
#include "vm.h"

static struct {
	const char *memory, *vcpus, *address, *transport, *run_dir, *ports;
	const char *sandbox, *org, *worker, *hypervisor, *status, *disk;
	const char *pid, *pid_start_time, *control_socket, *agent_socket, *spec;
	const char *wait, *accel, *timeout, *host_id, *image_dirs;
} opt;

static struct poptOption top_options[] = {
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption init_options[] = {
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption plain_options[] = {
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption worker_add_options[] = {
	{ "memory", '\0', POPT_ARG_STRING, &opt.memory, 0, "memory the worker offers to VMs (e.g. 64G)", "SIZE" },
	{ "vcpus", '\0', POPT_ARG_STRING, &opt.vcpus, 0, "vCPUs the worker offers to VMs", "N" },
	{ "address", '\0', POPT_ARG_STRING, &opt.address, 0, "address migration traffic goes to (default 127.0.0.1)", "ADDR" },
	{ "transport", '\0', POPT_ARG_STRING, &opt.transport, 0, "how vmops reaches the worker: local (this host) or ssh (--address is its ssh destination)", "KIND" },
	{ "run-dir", '\0', POPT_ARG_STRING, &opt.run_dir, 0, "directory for VMM sockets and logs on the worker", "DIR" },
	{ "ports", '\0', POPT_ARG_STRING, &opt.ports, 0, "migration port range (default 49152-49407)", "MIN-MAX" },
	{ "host-id", '\0', POPT_ARG_STRING, &opt.host_id, 0,
	  "identity of the worker's host (default: this host's, $VMOPS_HOST_ID or /etc/machine-id)", "ID" },
	{ "image-dirs", '\0', POPT_ARG_STRING, &opt.image_dirs, 0,
	  "directories launch specs' kernels, initrds and disks may come from (default: see vmops(7))", "DIR[:DIR...]" },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption set_images_options[] = {
	{ "image-dirs", '\0', POPT_ARG_STRING, &opt.image_dirs, 0,
	  "the directories to allow (default: back to the built-in list, see vmops(7))", "DIR[:DIR...]" },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption set_host_options[] = {
	{ "host-id", '\0', POPT_ARG_STRING, &opt.host_id, 0,
	  "the identity to record (default: this host's, $VMOPS_HOST_ID or /etc/machine-id)", "ID" },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption set_state_options[] = {
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption list_options[] = {
	{ "worker", '\0', POPT_ARG_STRING, &opt.worker, 0, "only sandboxes on this worker", "NAME" },
	{ "status", '\0', POPT_ARG_STRING, &opt.status, 0, "only sandboxes in this status", "STATUS" },
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption register_options[] = {
	{ "sandbox", '\0', POPT_ARG_STRING, &opt.sandbox, 0, "name of the new sandbox (required)", "NAME" },
	{ "org", '\0', POPT_ARG_STRING, &opt.org, 0, "organisation billed for it (required)", "ORG" },
	{ "worker", '\0', POPT_ARG_STRING, &opt.worker, 0, "worker the VMM runs on (required)", "NAME" },
	{ "hypervisor", '\0', POPT_ARG_STRING, &opt.hypervisor, 0, "qemu, cloud-hypervisor or firecracker (default qemu)", "KIND" },
	{ "memory", '\0', POPT_ARG_STRING, &opt.memory, 0, "guest memory (required, e.g. 2G)", "SIZE" },
	{ "vcpus", '\0', POPT_ARG_STRING, &opt.vcpus, 0, "guest vCPUs (required)", "N" },
	{ "disk", '\0', POPT_ARG_STRING, &opt.disk, 0, "guest disk size (default 0)", "SIZE" },
	{ "pid", '\0', POPT_ARG_STRING, &opt.pid, 0, "process id of the hypervisor", "PID" },
	{ "pid-start-time", '\0', POPT_ARG_STRING, &opt.pid_start_time, 0,
	  "its start time (/proc/PID/stat field 22; read from /proc when omitted)", "TICKS" },
	{ "control-socket", '\0', POPT_ARG_STRING, &opt.control_socket, 0, "QMP or API socket path", "PATH" },
	{ "agent-socket", '\0', POPT_ARG_STRING, &opt.agent_socket, 0, "guest-agent socket path", "PATH" },
	{ "spec", '\0', POPT_ARG_STRING, &opt.spec, 0, "launch spec (JSON file) that reproduces the VM", "FILE" },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption launch_options[] = {
	{ "sandbox", '\0', POPT_ARG_STRING, &opt.sandbox, 0, "name of the new sandbox (required)", "NAME" },
	{ "org", '\0', POPT_ARG_STRING, &opt.org, 0, "organisation billed for it (required)", "ORG" },
	{ "worker", '\0', POPT_ARG_STRING, &opt.worker, 0, "worker to run it on (required)", "NAME" },
	{ "spec", '\0', POPT_ARG_STRING, &opt.spec, 0, "launch spec, a JSON file (required)", "FILE" },
	{ "wait", '\0', POPT_ARG_STRING, &opt.wait, 0, "how long to wait for the control socket (default 30s)", "DURATION" },
	{ "accel", '\0', POPT_ARG_STRING, &opt.accel, 0,
	  "what a spec's \"accel\": \"auto\" means: tcg, kvm or auto (try kvm, else tcg; default)", "KIND" },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

static struct poptOption destroy_options[] = {
	{ "timeout", '\0', POPT_ARG_STRING, &opt.timeout, 0, "how long the VMM gets to stop (default 30s)", "DURATION" },
	VMOPS_DRY_RUN_OPTION,
	VMOPS_COMMON_OPTIONS,
	POPT_TABLEEND
};

struct command {
	const char *name;        /* "worker add" */
	const char *args;        /* synopsis after the name */
	const char *summary;
	struct poptOption *options;
	int nargs;               /* positional arguments after the command words */
	int (*run)(PGconn *c, const char **args);
	bool needs_schema;
};

static int cmd_init(PGconn *c, const char **args);
static int cmd_status(PGconn *c, const char **args);
static int cmd_worker_add(PGconn *c, const char **args);
static int cmd_worker_list(PGconn *c, const char **args);
static int cmd_worker_set_state(PGconn *c, const char **args);
static int cmd_worker_set_host(PGconn *c, const char **args);
static int cmd_worker_set_images(PGconn *c, const char **args);
static int cmd_list(PGconn *c, const char **args);
static int cmd_register(PGconn *c, const char **args);
static int cmd_launch(PGconn *c, const char **args);
static int cmd_destroy(PGconn *c, const char **args);
static int cmd_remote(PGconn *c, const char **args);

static const struct command commands[] = {
	{ "init", "", "create or upgrade the fleet schema (idempotent)", init_options, 0, cmd_init, false },
	{ "status", "", "schema version and counts of everything", plain_options, 0, cmd_status, false },
	{ "worker add", "NAME --memory SIZE --vcpus N", "add a worker", worker_add_options, 1, cmd_worker_add, true },
	{ "worker list", "", "list workers with reserved capacity", plain_options, 0, cmd_worker_list, true },
	{ "worker set-state", "NAME STATE", "set a worker active, draining, drained or terminated",
	  set_state_options, 2, cmd_worker_set_state, true },
	{ "worker set-host", "NAME", "record which host a worker is (ghost-reap checks it)",
	  set_host_options, 1, cmd_worker_set_host, true },
	{ "worker set-image-dirs", "NAME", "set where a worker's launch specs may take images from",
	  set_images_options, 1, cmd_worker_set_images, true },
	{ "list", "", "list sandboxes with their worker and VMM", list_options, 0, cmd_list, true },
	{ "register", "--sandbox NAME --org ORG --worker NAME --memory SIZE --vcpus N",
	  "record a VMM that another system launched", register_options, 0, cmd_register, true },
	{ "launch", "--sandbox NAME --org ORG --worker NAME --spec FILE",
	  "start a VM on a worker and record it", launch_options, 0, cmd_launch, true },
	{ "destroy", "SANDBOX", "stop a sandbox's VM and record it destroyed", destroy_options, 1,
	  cmd_destroy, true },
	{ "remote", "ACTION", "the entry point vmops runs over ssh on a worker's host (JSON on stdin)",
	  plain_options, 1, cmd_remote, false },
};

static void usage(void)
{
	printf("Usage:\n");
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		printf(" %s [options] %s%s%s\n", prog_name, commands[i].name,
		       commands[i].args[0] ? " " : "", commands[i].args);
	printf("\nThe inventory that the other vmops programs act on.\n\nCommands:\n");
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		printf("  %-18s%s\n", commands[i].name, commands[i].summary);
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
		const struct poptOption *o = commands[i].options;
		if (o[0].argInfo == POPT_ARG_INCLUDE_TABLE && o[0].arg == vmops_common_options)
			continue;
		if (o[0].argInfo == POPT_ARG_INCLUDE_TABLE && o[0].arg == vmops_dry_run_option &&
		    o[1].arg == vmops_common_options) {
			printf("\nOptions for %s:\n", commands[i].name);
			vmops_cli_print_options(stdout, vmops_dry_run_option);
			continue;
		}
		printf("\nOptions for %s:\n", commands[i].name);
		for (; o->longName || o->arg; o++) {
			struct poptOption one[2] = { *o, POPT_TABLEEND };
			if (o->arg == vmops_common_options)
				break;
			vmops_cli_print_options(stdout, one);
		}
	}
	vmops_cli_print_options(stdout, top_options);
	print_exit_status_hint();
	printf("\nFor more details see vm-fleet(1).\n");
}

static PGconn *connect_db(bool check_schema)
{
	struct vmops_error err = { 0 };
	PGconn *c = vmops_db_connect(vmops_cli.db, prog_name, &err);

	if (!c || (check_schema && vmops_schema_check(c, &err) < 0))
		die_err(&err);
	return c;
}

static int cmd_init(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "from_version", VMOPS_COL_INT, 0, 0 },
		{ "to_version", VMOPS_COL_INT, 0, 0 },
		{ "latest", VMOPS_COL_INT, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
	};
	struct vmops_error err = { 0 };
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *s;
	int from = 0, to = 0, latest = vmops_schema_latest();

	(void)args;
	if (vmops_cli.dry_run) {
		if (vmops_schema_version(c, &from, &err) < 0)
			die_err(&err);
		if (from > latest) {
			vmops_err(&err, VMOPS_EXIT_SCHEMA,
				  "schema version %d is newer than this vmops knows (%d): upgrade vmops", from, latest);
			die_err(&err);
		}
		to = latest;
	} else if (vmops_schema_apply(c, &from, &to, &err) < 0) {
		die_err(&err);
	}
	s = vmops_output_record(o, "schema", cols, ARRAY_SIZE(cols));
	vmops_set_int(s, 0, from);
	vmops_set_int(s, 1, to);
	vmops_set_int(s, 2, latest);
	vmops_set_bool(s, 3, vmops_cli.dry_run);
	if (vmops_cli.json)
		print_output(o);
	else if (!vmops_cli.quiet) {
		if (from == to)
			printf("schema is up to date (version %d)\n", to);
		else
			printf("%s schema from version %d to %d\n",
			       vmops_cli.dry_run ? "would upgrade" : "upgraded", from, to);
	}
	vmops_output_free(o);
	return VMOPS_EXIT_OK;
}

static int cmd_status(PGconn *c, const char **args)
{
	static const struct vmops_column scols[] = {
		{ "version", VMOPS_COL_INT, 0, 0 },
		{ "latest", VMOPS_COL_INT, 0, 0 },
		{ "database", VMOPS_COL_STRING, 0, 0 },
	};
	static const struct vmops_column ccols[] = {
		{ "kind", VMOPS_COL_STRING, 0, 0 },
		{ "state", VMOPS_COL_STRING, 0, 0 },
		{ "count", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
	};
	struct vmops_error err = { 0 };
	_cleanup_pgresult_ PGresult *r = NULL;
	struct vmops_output *o;
	struct vmops_section *s;
	char where[512];
	int v;

	(void)args;
	if (vmops_schema_version(c, &v, &err) < 0)
		die_err(&err);
	o = vmops_output_new();
	s = vmops_output_record(o, "schema", scols, ARRAY_SIZE(scols));
	vmops_set_int(s, 0, v);
	vmops_set_int(s, 1, vmops_schema_latest());
	vmops_set_str(s, 2, vmops_db_describe(c, where, sizeof(where)));
	if (vmops_schema_check(c, &err) < 0) {
		vmops_output_free(o);
		die_err(&err);
	}
	if (!(r = vmops_fleet_counts(c, &err)))
		die_err(&err);
	s = vmops_output_table(o, "counts", ccols, ARRAY_SIZE(ccols));
	for (int i = 0; i < PQntuples(r); i++) {
		vmops_section_add_row(s);
		for (int f = 0; f < 3; f++)
			vmops_set_text(s, (size_t)f, PQgetisnull(r, i, f) ? NULL : PQgetvalue(r, i, f));
	}
	print_output(o);
	vmops_output_free(o);
	return VMOPS_EXIT_OK;
}

static long long size_mb(const char *what, const char *v)
{
	struct vmops_error err = { 0 };
	uint64_t b;

	if (vmops_parse_size(v, &b, &err) < 0)
		usage_error("--%s: %s", what, err.msg);
	if (b % (1024 * 1024))
		usage_error("--%s: %s is not a whole number of MiB", what, v);
	return (long long)(b >> 20);
}

static long long number(const char *what, const char *v, long long min, long long max)
{
	struct vmops_error err = { 0 };
	long long n;

	if (vmops_parse_int(v, min, max, &n, &err) < 0)
		usage_error("--%s: %s", what, err.msg);
	return n;
}

static void need(const char *v, const char *what)
{
	if (!v)
		usage_error("option '--%s' is required", what);
}

static void print_result(const char *section, const struct vmops_column *cols, size_t n,
			 const long long *ints, const char *const *strs)
{
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *s = vmops_output_record(o, section, cols, n);

	for (size_t i = 0; i < n; i++) {
		if (cols[i].type == VMOPS_COL_STRING)
			vmops_set_str(s, i, strs[i]);
		else if (cols[i].type == VMOPS_COL_BOOL)
			vmops_set_bool(s, i, ints[i]);
		else if (ints[i] < 0)
			vmops_set_null(s, i);  /* e.g. ids of a dry run: nothing was created */
		else
			vmops_set_int(s, i, ints[i]);
	}
	if (!vmops_cli.quiet || vmops_cli.json)
		print_output(o);
	vmops_output_free(o);
}

static void parse_ports(const char *v, long long *lo_out, long long *hi_out)
{
	char lo[16] = "", hi[16] = "", extra;

	if (sscanf(v, "%15[0-9]-%15[0-9]%c", lo, hi, &extra) != 2)
		usage_error("--ports: invalid range '%s': expected MIN-MAX, e.g. 49152-49407", v);
	*lo_out = number("ports", lo, 1, 65535);
	*hi_out = number("ports", hi, 1, 65535);
	if (*lo_out > *hi_out)
		usage_error("--ports: invalid range '%s': MIN is above MAX", v);
}

static bool valid_status(const char *st)
{
	static const char *const statuses[] = { "pending", "running", "migrating", "hibernated",
						"stopped", "error", "destroyed" };

	for (size_t i = 0; i < ARRAY_SIZE(statuses); i++)
		if (strcmp(st, statuses[i]) == 0)
			return true;
	return false;
}

static int cmd_worker_add(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "id", VMOPS_COL_INT, 0, 0 },
		{ "name", VMOPS_COL_STRING, 0, 0 },
		{ "memory_mb", VMOPS_COL_INT, 0, 0 },
		{ "vcpus", VMOPS_COL_INT, 0, 0 },
		{ "host_id", VMOPS_COL_STRING, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
	};
	struct vmops_worker_spec w = { .name = args[0] };
	struct vmops_error err = { 0 };
	char here[VMOPS_HOST_ID_MAX];
	long long id = -1;

	w.memory_mb = size_mb("memory", opt.memory);
	w.vcpus = number("vcpus", opt.vcpus, 1, 1 << 20);
	w.address = opt.address;
	w.transport = opt.transport;
	w.run_dir = opt.run_dir;
	if (opt.ports)
		parse_ports(opt.ports, &w.port_min, &w.port_max);
	w.host_id = opt.host_id;
	w.image_dirs = opt.image_dirs;
	if (w.transport && !strcmp(w.transport, "ssh")) {
		/* The host must answer, and says who it is (checked against --host-id). */
		_cleanup_transport_ struct vmops_transport *t = vmops_transport_ssh(w.name, w.address, opt.host_id, &err);

		if (!t || vmops_transport_hello(t, here, 20000, &err) < 0)
			die_err(&err);
		w.host_id = here;
	} else if (!w.host_id) {
		/* transport local: the worker is this host */
		if (vmops_host_id(getenv(VMOPS_HOST_ID_ENV), here, sizeof(here), &err) == 0)
			w.host_id = here;
		else
			vmops_warn("%s; worker %s gets no host identity: run 'vm-fleet worker set-host %s' on its host",
				   err.msg, w.name, w.name);
		vmops_err_clear(&err);
	}
	if (vmops_fleet_worker_add(c, &w, vmops_cli.dry_run, &id, &err) < 0)
		die_err(&err);
	if (vmops_cli.dry_run)
		id = -1;
	print_result("worker", cols, ARRAY_SIZE(cols),
		     (long long[]){ id, 0, w.memory_mb, w.vcpus, 0, vmops_cli.dry_run },
		     (const char *[]){ NULL, w.name, NULL, NULL, w.host_id, NULL });
	return VMOPS_EXIT_OK;
}

static void print_result_table(const char *name, const struct vmops_column *cols, size_t n,
			       PGresult *r)
{
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *s = vmops_output_table(o, name, cols, n);

	for (int i = 0; i < PQntuples(r); i++) {
		vmops_section_add_row(s);
		for (size_t f = 0; f < n; f++)
			vmops_set_text(s, f, vmops_db_get(r, i, cols[f].name));
	}
	print_output(o);
	vmops_output_free(o);
}

static int cmd_worker_list(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "id", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "name", VMOPS_COL_STRING, 0, 0 },
		{ "state", VMOPS_COL_STRING, 0, 0 },
		{ "memory_mb", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "reserved_memory_mb", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "vcpus", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "reserved_vcpus", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "sandboxes", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "address", VMOPS_COL_STRING, 0, 0 },
		{ "transport", VMOPS_COL_STRING, 0, 0 },
		{ "host_id", VMOPS_COL_STRING, 0, 0 },
	};
	struct vmops_error err = { 0 };
	_cleanup_pgresult_ PGresult *r = vmops_fleet_worker_list(c, &err);

	(void)args;
	if (!r)
		die_err(&err);
	print_result_table("workers", cols, ARRAY_SIZE(cols), r);
	return VMOPS_EXIT_OK;
}

static int cmd_worker_set_state(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "name", VMOPS_COL_STRING, 0, 0 },
		{ "old_state", VMOPS_COL_STRING, 0, 0 },
		{ "state", VMOPS_COL_STRING, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
	};
	struct vmops_error err = { 0 };
	char old[16] = "";

	if (vmops_fleet_worker_set_state(c, args[0], args[1], vmops_cli.dry_run, old, &err) < 0)
		die_err(&err);
	print_result("worker", cols, ARRAY_SIZE(cols), (long long[]){ 0, 0, 0, vmops_cli.dry_run },
		     (const char *[]){ args[0], old, args[1], NULL });
	return VMOPS_EXIT_OK;
}

static int cmd_worker_set_host(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "name", VMOPS_COL_STRING, 0, 0 },
		{ "old_host_id", VMOPS_COL_STRING, 0, 0 },
		{ "host_id", VMOPS_COL_STRING, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
	};
	struct vmops_error err = { 0 };
	char here[VMOPS_HOST_ID_MAX], old[VMOPS_HOST_ID_MAX] = "";
	const char *id = opt.host_id;

	if (!id) {
		if (vmops_host_id(getenv(VMOPS_HOST_ID_ENV), here, sizeof(here), &err) < 0)
			die_err(&err);
		id = here;
	}
	if (vmops_fleet_worker_set_host(c, args[0], id, vmops_cli.dry_run, old, &err) < 0)
		die_err(&err);
	print_result("worker", cols, ARRAY_SIZE(cols), (long long[]){ 0, 0, 0, vmops_cli.dry_run },
		     (const char *[]){ args[0], old[0] ? old : NULL, id, NULL });
	return VMOPS_EXIT_OK;
}

static int cmd_worker_set_images(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "name", VMOPS_COL_STRING, 0, 0 },
		{ "old_image_dirs", VMOPS_COL_STRING, 0, 0 },
		{ "image_dirs", VMOPS_COL_STRING, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
	};
	struct vmops_error err = { 0 };
	char old[8192] = "";

	if (vmops_fleet_worker_set_image_dirs(c, args[0], opt.image_dirs, vmops_cli.dry_run, old, &err) < 0)
		die_err(&err);
	print_result("worker", cols, ARRAY_SIZE(cols), (long long[]){ 0, 0, 0, vmops_cli.dry_run },
		     (const char *[]){ args[0], old[0] ? old : NULL, opt.image_dirs, NULL });
	return VMOPS_EXIT_OK;
}

static int cmd_list(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "id", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "name", VMOPS_COL_STRING, 0, 0 },
		{ "org", VMOPS_COL_STRING, 0, 0 },
		{ "status", VMOPS_COL_STRING, 0, 0 },
		{ "worker", VMOPS_COL_STRING, 0, 0 },
		{ "memory_mb", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "vcpus", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "vmm", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
		{ "hypervisor", VMOPS_COL_STRING, 0, 0 },
		{ "vmm_state", VMOPS_COL_STRING, 0, 0 },
		{ "pid", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
	};
	struct vmops_error err = { 0 };
	_cleanup_pgresult_ PGresult *r = NULL;

	(void)args;
	if (!(r = vmops_fleet_sandbox_list(c, opt.worker, opt.status, &err)))
		die_err(&err);
	print_result_table("sandboxes", cols, ARRAY_SIZE(cols), r);
	return VMOPS_EXIT_OK;
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t len = 0, cap = 0, n;

	if (!f)
		usage_error("--spec %s: %s", path, strerror(errno));
	do {
		if (len + 4096 + 1 > cap) {
			cap = cap ? cap * 2 : 8192;
			if (!(buf = realloc(buf, cap)))
				exit(VMOPS_EXIT_FAILURE);
		}
		n = fread(buf + len, 1, cap - len - 1, f);
		len += n;
	} while (n > 0);
	fclose(f);
	buf[len] = '\0';
	return buf;
}

static long long proc_start_time(long long pid)
{
	struct vmops_proc_stat st;

	if (vmops_proc_read_stat(VMOPS_PROC_ROOT_DEFAULT, (pid_t)pid, &st, NULL) < 0)
		return -1;
	return (long long)st.starttime;
}

static int cmd_register(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },
		{ "sandbox_id", VMOPS_COL_INT, 0, 0 },
		{ "vmm_id", VMOPS_COL_INT, 0, 0 },
		{ "worker", VMOPS_COL_STRING, 0, 0 },
		{ "scale_event_id", VMOPS_COL_INT, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
	};
	struct vmops_register g = { 0 };
	struct vmops_register_result res;
	struct vmops_error err = { 0 };
	char *spec = NULL;

	(void)args;
	g.sandbox = opt.sandbox;
	g.org = opt.org;
	g.worker = opt.worker;
	g.hypervisor = opt.hypervisor ? opt.hypervisor : "qemu";
	g.memory_mb = size_mb("memory", opt.memory);
	g.vcpus = number("vcpus", opt.vcpus, 1, 1024);
	g.disk_mb = opt.disk ? size_mb("disk", opt.disk) : 0;
	g.pid = opt.pid ? number("pid", opt.pid, 1, 1 << 30) : -1;
	g.pid_start_time = opt.pid_start_time ? number("pid-start-time", opt.pid_start_time, 0, LLONG_MAX)
			   : (g.pid > 0 ? proc_start_time(g.pid) : -1);
	if (g.pid > 0 && g.pid_start_time < 0)
		usage_error("--pid %lld: no such process here; give --pid-start-time", g.pid);
	g.control_socket = opt.control_socket;
	g.agent_socket = opt.agent_socket;
	if (opt.spec)
		g.launch_spec = spec = read_file(opt.spec);
	if (vmops_fleet_register(c, &g, vmops_cli.dry_run, &res, &err) < 0) {
		free(spec);
		die_err(&err);
	}
	free(spec);
	if (vmops_cli.dry_run)
		res.sandbox_id = res.vmm_id = res.scale_event_id = -1;
	print_result("registered", cols, ARRAY_SIZE(cols),
		     (long long[]){ 0, res.sandbox_id, res.vmm_id, 0, res.scale_event_id, vmops_cli.dry_run },
		     (const char *[]){ g.sandbox, NULL, NULL, g.worker, NULL, NULL });
	return VMOPS_EXIT_OK;
}

#define DAY_MS (24ULL * 3600 * 1000)

static enum vmops_accel accel_opt(void)
{
	if (!opt.accel || strcmp(opt.accel, "auto") == 0)
		return VMOPS_ACCEL_AUTO;
	if (strcmp(opt.accel, "tcg") == 0)
		return VMOPS_ACCEL_TCG;
	if (strcmp(opt.accel, "kvm") == 0)
		return VMOPS_ACCEL_KVM;
	usage_error("--accel: unknown kind '%s': use tcg, kvm or auto", opt.accel);
}

static char *launch_spec_text;

/*
 * SIGINT, SIGTERM and SIGHUP stop a launch cleanly (lib/vm.c undoes it); a
 * second one leaves at once and names what it leaves (lib/interrupt).
 */
static void catch_launch_signals(void)
{
	vmops_interrupt_install(prog_name, VMOPS_INTERRUPT_HUP | VMOPS_INTERRUPT_RESTART);
	vmops_interrupt_note("the launch of sandbox %s on worker %s is left unfinished: its VMM stays starting"
			     " until 'ghost-reap --action kill' stops it (after --starting-timeout) and repairs it",
			     opt.sandbox ? opt.sandbox : "?", opt.worker ? opt.worker : "?");
}

/*
 * The progress line of a launch, on a terminal only (stderr): a thread that
 * rewrites it every second while vmops_vm_launch waits for the VMM.
 */
struct ticker {
	pthread_t thread;
	atomic_bool done;
	bool running, printed;
	char what[200];
};

static void *tick(void *arg)
{
	struct ticker *t = arg;
	struct timespec one = { 1, 0 };
	unsigned long s = 0;

	while (nanosleep(&one, NULL) == 0 || errno == EINTR) {
		if (atomic_load(&t->done))
			break;
		fprintf(stderr, "\r%s: %s: waiting for the VMM (%lus)", prog_name, t->what, ++s);
		t->printed = true;
	}
	return NULL;
}

static void ticker_start(struct ticker *t)
{
	atomic_init(&t->done, false);
	snprintf(t->what, sizeof(t->what), "launching %s on %s", opt.sandbox, opt.worker);
	t->running = isatty(STDERR_FILENO) && !vmops_cli.quiet && !vmops_cli.json && !vmops_cli.dry_run &&
		     pthread_create(&t->thread, NULL, tick, t) == 0;
}

static void ticker_stop(struct ticker *t)
{
	if (!t->running)
		return;
	atomic_store(&t->done, true);
	pthread_join(t->thread, NULL);
	if (t->printed)
		fputc('\n', stderr);
}

static int cmd_launch(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },
		{ "sandbox_id", VMOPS_COL_INT, 0, 0 },
		{ "vmm_id", VMOPS_COL_INT, 0, 0 },
		{ "worker", VMOPS_COL_STRING, 0, 0 },
		{ "pid", VMOPS_COL_INT, 0, 0 },
		{ "control_socket", VMOPS_COL_STRING, 0, 0 },
		{ "serial_log", VMOPS_COL_STRING, 0, 0 },
		{ "scale_event_id", VMOPS_COL_INT, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
	};
	struct vmops_launch_req q = { 0 };
	struct vmops_launch_res res;
	struct vmops_error err = { 0 };

	(void)args;
	q.sandbox = opt.sandbox;
	q.org = opt.org;
	q.worker = opt.worker;
	q.spec_json = launch_spec_text;
	q.ready_timeout_ms = (int)opt_duration("wait", opt.wait, 30000, 1, DAY_MS);
	q.auto_accel = accel_opt();
	q.dry_run = vmops_cli.dry_run;
	q.interrupted = &vmops_interrupted;
	{
		struct ticker t = { 0 };
		int rc;

		ticker_start(&t);
		rc = vmops_vm_launch(c, &q, &res, &err);
		ticker_stop(&t);
		if (rc < 0)
			die_err(&err);
	}
	print_result("launched", cols, ARRAY_SIZE(cols),
		     (long long[]){ 0, q.dry_run ? -1 : res.sandbox_id, q.dry_run ? -1 : res.vmm_id, 0,
				    q.dry_run ? -1 : res.info.pid, 0, 0,
				    q.dry_run ? -1 : res.scale_event_id, q.dry_run },
		     (const char *[]){ q.sandbox, NULL, NULL, q.worker, NULL,
				       q.dry_run ? NULL : res.info.control_socket,
				       q.dry_run ? NULL : res.info.serial_log, NULL, NULL });
	return VMOPS_EXIT_OK;
}

static int cmd_destroy(PGconn *c, const char **args)
{
	static const struct vmops_column cols[] = {
		{ "sandbox", VMOPS_COL_STRING, 0, 0 },
		{ "vmm_id", VMOPS_COL_INT, 0, 0 },
		{ "was_running", VMOPS_COL_BOOL, 0, 0 },
		{ "dry_run", VMOPS_COL_BOOL, 0, 0 },
	};
	struct vmops_destroy_res res;
	struct vmops_error err = { 0 };

	if (vmops_vm_destroy(c, args[0], (int)opt_duration("timeout", opt.timeout, 30000, 1, DAY_MS),
			     vmops_cli.dry_run, &res, &err) < 0)
		die_err(&err);
	print_result("destroyed", cols, ARRAY_SIZE(cols),
		     (long long[]){ 0, res.vmm_id, res.was_running, vmops_cli.dry_run },
		     (const char *[]){ args[0], NULL, NULL, NULL });
	return VMOPS_EXIT_OK;
}

/*
 * vm-fleet remote ACTION: run on a worker's host by the ssh transport of
 * another vmops program (lib/transport), its request as JSON on stdin.
 * The answer is one JSON object on stdout, also on failure ({"error",
 * "code"}); the exit code is the action's.
 */
static int cmd_remote(PGconn *c, const char **args)
{
	static char buf[1 << 20];
	size_t n = 0, k;
	cJSON *ans = NULL;
	char *text;
	int rc;

	(void)c;
	while (n < sizeof(buf) && (k = fread(buf + n, 1, sizeof(buf) - n, stdin)) > 0)
		n += k;
	if (n == sizeof(buf))
		usage_error("remote %s: request larger than %zu bytes", args[0], sizeof(buf) - 1);
	rc = vmops_remote_serve(args[0], buf, n, &ans);
	text = ans ? cJSON_PrintUnformatted(ans) : NULL;
	if (text)
		printf("%s\n", text);
	if (rc != VMOPS_EXIT_OK)
		fprintf(stderr, "%s: remote %s: %s\n", prog_name, args[0],
			ans && cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "error")) ?
			cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "error")) : "failed");
	free(text);
	cJSON_Delete(ans);
	return rc;
}

/* Validate the command's values before any database contact. */
static void validate(const struct command *cmd, const char **args)
{
	static const char *const hvs[] = { "qemu", "cloud-hypervisor", "firecracker" };

	if (cmd->run == cmd_worker_add) {
		if (!vmops_fleet_valid_name(args[0]))
			usage_error("invalid worker name '%s': letters, digits, '.', '_', '-', at most 63", args[0]);
		need(opt.memory, "memory");
		need(opt.vcpus, "vcpus");
		size_mb("memory", opt.memory);
		number("vcpus", opt.vcpus, 1, 1 << 20);
		if (opt.transport && strcmp(opt.transport, "local") != 0 && strcmp(opt.transport, "ssh") != 0)
			usage_error("--transport: unknown kind '%s': use local or ssh", opt.transport);
		if (opt.transport && !strcmp(opt.transport, "ssh") && !opt.address)
			usage_error("--transport ssh needs --address (the host's ssh destination)");
		if (opt.address && opt.transport && !strcmp(opt.transport, "ssh") &&
		    !vmops_transport_valid_destination(opt.address))
			usage_error("--address: '%s' is not a host name or address", opt.address);
		if (opt.ports) {
			long long lo, hi;
			parse_ports(opt.ports, &lo, &hi);
		}
		if (opt.host_id && !vmops_host_id_valid(opt.host_id))
			usage_error("--host-id: invalid host identity '%s': 1 to 128 of letters, digits, '.', '_', ':', '-'",
				    opt.host_id);
		if (opt.image_dirs && !vmops_images_dirs_valid(opt.image_dirs))
			usage_error("--image-dirs: invalid list '%s': absolute, normalised directories separated by ':',"
				    " never / and never under /dev, /proc or /sys", opt.image_dirs);
	} else if (cmd->run == cmd_worker_set_images) {
		if (!vmops_fleet_valid_name(args[0]))
			usage_error("invalid worker name '%s': letters, digits, '.', '_', '-', at most 63", args[0]);
		if (opt.image_dirs && !vmops_images_dirs_valid(opt.image_dirs))
			usage_error("--image-dirs: invalid list '%s': absolute, normalised directories separated by ':',"
				    " never / and never under /dev, /proc or /sys", opt.image_dirs);
	} else if (cmd->run == cmd_worker_set_host) {
		if (!vmops_fleet_valid_name(args[0]))
			usage_error("invalid worker name '%s': letters, digits, '.', '_', '-', at most 63", args[0]);
		if (opt.host_id && !vmops_host_id_valid(opt.host_id))
			usage_error("--host-id: invalid host identity '%s': 1 to 128 of letters, digits, '.', '_', ':', '-'",
				    opt.host_id);
	} else if (cmd->run == cmd_list) {
		if (opt.status && !valid_status(opt.status))
			usage_error("--status: invalid status '%s': use pending, running, migrating, hibernated, stopped, error or destroyed",
				    opt.status);
	} else if (cmd->run == cmd_worker_set_state) {
		if (!vmops_fleet_valid_worker_state(args[1]))
			usage_error("invalid worker state '%s': use active, draining, drained or terminated", args[1]);
	} else if (cmd->run == cmd_register) {
		bool ok = !opt.hypervisor;
		need(opt.sandbox, "sandbox");
		need(opt.org, "org");
		need(opt.worker, "worker");
		need(opt.memory, "memory");
		need(opt.vcpus, "vcpus");
		if (!vmops_fleet_valid_name(opt.sandbox))
			usage_error("invalid sandbox name '%s': letters, digits, '.', '_', '-', at most 63", opt.sandbox);
		for (size_t i = 0; i < ARRAY_SIZE(hvs) && !ok; i++)
			ok = strcmp(opt.hypervisor, hvs[i]) == 0;
		if (!ok)
			usage_error("--hypervisor: unknown kind '%s': use qemu, cloud-hypervisor or firecracker",
				    opt.hypervisor);
		size_mb("memory", opt.memory);
		number("vcpus", opt.vcpus, 1, 1024);
		if (opt.disk)
			size_mb("disk", opt.disk);
		if (opt.pid)
			number("pid", opt.pid, 1, 1 << 30);
		if (opt.pid_start_time)
			number("pid-start-time", opt.pid_start_time, 0, LLONG_MAX);
	} else if (cmd->run == cmd_launch) {
		struct vmops_error err = { 0 };
		struct vmops_spec *spec;
		need(opt.sandbox, "sandbox");
		need(opt.org, "org");
		need(opt.worker, "worker");
		need(opt.spec, "spec");
		if (!vmops_fleet_valid_name(opt.sandbox))
			usage_error("invalid sandbox name '%s': letters, digits, '.', '_', '-', at most 63", opt.sandbox);
		opt_duration("wait", opt.wait, 30000, 1, DAY_MS);
		accel_opt();
		launch_spec_text = read_file(opt.spec);
		if (!(spec = vmops_spec_parse(launch_spec_text, (size_t)-1, &err)))
			usage_error("--spec %s: %s", opt.spec, err.msg);
		vmops_spec_free(spec);
	} else if (cmd->run == cmd_destroy) {
		opt_duration("timeout", opt.timeout, 30000, 1, DAY_MS);
	} else if (cmd->run == cmd_remote) {
		if (!vmops_remote_action_valid(args[0]))
			usage_error("remote: unknown action '%s'", args[0]);
	}
}

int main(int argc, const char **argv)
{
	struct vmops_error err = { 0 };
	const struct command *cmd = NULL;
	const char **rest, *words[2] = { NULL, NULL };
	const char *cargs[4] = { NULL };
	poptContext top, sub;
	int nrest = 0, used = 0, ncargs = 0, rc;
	PGconn *c;

	prog_init("vm-fleet");
	/* Common options may come before the command; stop at the first word. */
	top = poptGetContext(prog_name, argc, argv, top_options, POPT_CONTEXT_POSIXMEHARDER);
	if (vmops_cli_parse(top, NULL, NULL, &err) < 0)
		usage_error("%s", err.msg);
	if (vmops_cli.help) {
		usage();
		poptFreeContext(top);
		return VMOPS_EXIT_OK;
	}
	if (vmops_cli.version)
		print_version();
	rest = poptGetArgs(top);
	while (rest && rest[nrest])
		nrest++;
	if (nrest == 0)
		usage_error("no command given");
	words[0] = rest[0];
	words[1] = nrest > 1 ? rest[1] : NULL;
	for (size_t i = 0; i < ARRAY_SIZE(commands) && !cmd; i++) {
		char one[64];
		snprintf(one, sizeof(one), "%s", commands[i].name);
		char *sp = strchr(one, ' ');
		if (sp) {
			*sp = '\0';
			if (strcmp(one, words[0]) == 0 && words[1] && strcmp(sp + 1, words[1]) == 0) {
				cmd = &commands[i];
				used = 2;
			}
		} else if (strcmp(one, words[0]) == 0) {
			cmd = &commands[i];
			used = 1;
		}
	}
	if (!cmd) {
		if (strcmp(words[0], "worker") == 0)
			usage_error(words[1] ? "unknown worker command '%s'" : "worker: missing command%s",
				    words[1] ? words[1] : "");
		usage_error("unknown command '%s'", words[0]);
	}
	/* Parse the command's own options from what follows the command words. */
	{
		int sargc = nrest - used + 1;
		const char **sargv = calloc((size_t)sargc + 1, sizeof(char *));
		const char **left;

		if (!sargv)
			return VMOPS_EXIT_FAILURE;
		sargv[0] = prog_name;
		for (int i = used; i < nrest; i++)
			sargv[i - used + 1] = rest[i];
		sub = poptGetContext(prog_name, sargc, sargv, cmd->options, 0);
		if (vmops_cli_parse(sub, NULL, NULL, &err) < 0)
			usage_error("%s", err.msg);
		if (vmops_cli.help) {
			usage();
			poptFreeContext(sub);
			poptFreeContext(top);
			free(sargv);
			return VMOPS_EXIT_OK;
		}
		if (vmops_cli.version)
			print_version();
		left = poptGetArgs(sub);
		while (left && left[ncargs]) {
			if (ncargs >= cmd->nargs)
				usage_error("%s: unexpected argument '%s'", cmd->name, left[ncargs]);
			cargs[ncargs] = left[ncargs];
			ncargs++;
		}
		if (ncargs < cmd->nargs)
			usage_error("%s: expected %s", cmd->name, cmd->args);
		validate(cmd, cargs);
		if (cmd->run == cmd_launch)
			catch_launch_signals();
		/* The remote entry point acts on its host only, never on the database. */
		c = cmd->run == cmd_remote ? NULL : connect_db(cmd->needs_schema);
		rc = cmd->run(c, cargs);
		if (c)
			PQfinish(c);
		poptFreeContext(sub);
		free(sargv);
	}
	poptFreeContext(top);
	return rc;
}
