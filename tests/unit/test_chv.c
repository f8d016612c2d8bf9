/* SPDX-License-Identifier: MIT */
/*
 * Cloud Hypervisor driver against tests/fakes/fake-chv (a real process that
 * serves the v53 API on a UNIX socket, moves real bytes between two fakes
 * for migration and keeps a request log): launch, pause, resume, status,
 * destroy, snapshot and restore, live migration over 1, 4 and 128 TCP
 * connections (counted by the receiving fake), 0 and 129 refused, more
 * than one over a UNIX socket refused by the API and handled, v52's
 * synchronous send-migration, the hypervisor's error text, and every fault
 * of the fake at every call the driver makes; then vm-fleet launch and
 * vm-migrate --connections 4 end to end on two fakes.  No QEMU; the last
 * case uses the test database (tests/run-one.sh).
 *
 * VMOPS_TEST_DEBUG=1: library logs on stderr; VMOPS_TEST_KEEP=1: keep the
 * run directories.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "exitcodes.h"
#include "hv.h"
#include "hv/http.h"
#include "hv/rest.h"
#include "ghost.h"
#include "log.h"
#include "proc.h"
#include "spec.h"
#include "fakelib.h"
#include "testlib.h"

static void setup(void)
{
	fake_setup("chv", "fake-chv");
	unsetenv("VMOPS_FAKE_CH_API");
}

TestSuite(chv, .init = setup, .fini = fake_teardown, .timeout = 120);

static struct vmops_spec *spec16(void)
{
	struct vmops_spec *s = vmops_spec_parse(
		"{\"hypervisor\":\"cloud-hypervisor\",\"memory_mb\":16,\"vcpus\":2,"
		"\"kernel\":\"/boot/vmlinuz\",\"cmdline\":\"console=ttyS0\","
		"\"balloon\":{\"free_page_hint\":false}}", (size_t)-1, NULL);

	cr_assert(s);
	return s;
}

static void add_disk(struct vmops_spec *s, const char *path)
{
	struct vmops_spec_disk *d = realloc(s->disks, (s->n_disks + 1) * sizeof(*d));

	cr_assert(d);
	s->disks = d;
	memset(&d[s->n_disks], 0, sizeof(*d));
	d[s->n_disks++].path = strdup(path);
}

static struct vmops_hv *launch(int id, struct vmops_error *err)
{
	struct vmops_spec *s = spec16();
	struct vmops_hv *h = fake_launch(s, id, err);

	vmops_spec_free(s);
	return h;
}

static struct vmops_hv *launch_ok(int id)
{
	struct vmops_error e = { 0 };
	struct vmops_hv *h = launch(id, &e);

	cr_assert(h, "launch: %s", e.msg);
	return h;
}

/* --- the fake's request log ------------------------------------------------------ */

/* ======================================================================= */

Test(chv, http_error_text)
{
	char out[256];

	vmops_http_error_text("[\"Error from API\",\"The VM could not be paused\",\"x\"]", out, sizeof(out));
	cr_expect_str_eq(out, "Error from API: The VM could not be paused: x");
	vmops_http_error_text("{\"fault_message\":\"The microVM must be paused.\"}", out, sizeof(out));
	cr_expect_str_eq(out, "The microVM must be paused");
	vmops_http_error_text("plain\ntext", out, sizeof(out));
	cr_expect_str_eq(out, "plain text");
}

Test(chv, lifecycle)
{
	struct vmops_hv *h = launch_ok(1);
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	struct vmops_error e = { 0 };
	cJSON *log;
	int i;

	cr_expect_str_eq(info->kind, "cloud-hypervisor");
	cr_expect(strstr(info->control_socket, "vmops-vmm-1.sock"));
	cr_assert(vmops_hv_wait_ready(h, 5000, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "running");
	cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "paused");
	cr_assert(vmops_hv_resume(h, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "running");
	cr_expect_eq(vmops_hv_supports_multifd(h, &e), 1);
	cr_expect(vmops_hv_can(h, VMOPS_HV_OP_MIGRATE));
	cr_expect(vmops_hv_can(h, VMOPS_HV_OP_SNAPSHOT));
	cr_expect(!vmops_hv_can(h, VMOPS_HV_OP_HINT));
	log = fake_read_log(h);
	fake_destroy(h);
	/* the calls, in order */
	i = fake_find_call(log, "vmm.ping", NULL, 0);
	cr_assert(i >= 0);
	i = fake_find_call(log, "vm.create", NULL, i);
	cr_assert(i >= 0 && fake_status_of(log, i) == 204);
	i = fake_find_call(log, "vm.boot", NULL, i);
	cr_assert(i >= 0 && fake_status_of(log, i) == 204);
	i = fake_find_call(log, "vm.pause", NULL, i);
	cr_assert(i >= 0 && fake_status_of(log, i) == 204);
	i = fake_find_call(log, "vm.resume", NULL, i);
	cr_assert(i >= 0 && fake_status_of(log, i) == 204);
	fake_no_undeclared(log);
	cJSON_Delete(log);
}

Test(chv, destroy_asks_the_vmm_first)
{
	struct vmops_hv *h = launch_ok(2);
	char sock[VMOPS_HV_SOCKPATH_MAX + 8];
	char path[PATH_MAX];
	FILE *f;
	char line[4096];
	bool seen = false;

	snprintf(sock, sizeof(sock), "%s", vmops_hv_info(h)->control_socket);
	fake_destroy(h);
	snprintf(path, sizeof(path), "%s.log", sock);
	f = fopen(path, "r");
	cr_assert(f);
	while (fgets(line, sizeof(line), f))
		seen |= strstr(line, "\"call\": \"vmm.shutdown\"") && strstr(line, "\"status\": 204");
	fclose(f);
	cr_expect(seen, "no vmm.shutdown answered 204 before the process was stopped");
	cr_expect(access(sock, F_OK) < 0, "socket left behind");
}

Test(chv, error_carries_the_hypervisors_message)
{
	struct vmops_hv *h = launch_ok(3);
	struct vmops_error e = { 0 };

	cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
	cr_assert(vmops_hv_pause(h, &e) < 0);
	cr_expect_eq(e.code, VMOPS_EXIT_HYPERVISOR);
	cr_expect(strstr(e.msg, "cloud-hypervisor vmm 3"), "%s", e.msg);
	cr_expect(strstr(e.msg, "The VM could not be paused"), "%s", e.msg);
	cr_expect(strstr(e.msg, "HTTP 500"), "%s", e.msg);
	fake_destroy(h);
}

/* The VMM's log (the guest's console, serial mode Tty) stays under VMOPS_LOG_MAX. */
Test(chv, vmm_log_is_capped)
{
	struct vmops_hv *h;

	setenv("VMOPS_LOG_MAX", "4K", 1);
	setenv("VMOPS_FAKE_CONSOLE_BPS", "65536", 1);
	h = launch_ok(6);
	unsetenv("VMOPS_FAKE_CONSOLE_BPS");
	unsetenv("VMOPS_LOG_MAX");
	fake_assert_log_capped(h);
	fake_destroy(h);
}

Test(chv, snapshot_and_restore)
{
	struct vmops_hv *h = launch_ok(4), *r;
	struct vmops_snapshot_opts so = { .timeout_ms = 5000 };
	struct vmops_error e = { 0 };
	struct vmops_spec *s = spec16();
	char rd[PATH_MAX];
	struct vmops_hv_launch_opts o = fake_opts_for(5, rd, sizeof(rd));
	int fd = fake_open_dir("snap");

	/* a running VM is refused by the VMM, and stays running */
	cr_assert(vmops_hv_snapshot(h, fd, &so, &e) < 0);
	cr_expect(strstr(e.msg, "VM is not paused"), "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "running");
	cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
	cr_assert(vmops_hv_snapshot(h, fd, &so, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "paused");
	cr_expect(fake_file_size("snap", "config.json") > 0);
	cr_expect(fake_file_size("snap", "state.json") > 0);
	cr_expect_eq(fake_file_size("snap", "memory-ranges"), 16 << 20);
	fake_destroy(h);

	/* a spec whose disks are not the snapshot's: refused, nothing restored */
	add_disk(s, "/nonexistent/disk.img");
	r = vmops_hv_launch_for_restore(s, &o, &e);
	fake_track(r);
	cr_assert(r, "%s", e.msg);
	cr_assert(vmops_hv_restore(r, fd, 5000, &e) < 0);
	cr_expect_eq(e.code, VMOPS_EXIT_INTEGRITY, "%d: %s", e.code, e.msg);
	cr_expect(strstr(e.msg, "config.json has 0 disks, the spec 1"), "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(r), "inmigrate");
	fake_destroy(r);
	vmops_spec_free(s);
	s = spec16();

	r = vmops_hv_launch_for_restore(s, &o, &e);
	fake_track(r);
	cr_assert(r, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(r), "inmigrate");
	cr_assert(vmops_hv_restore(r, fd, 5000, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(r), "paused");
	cr_assert(vmops_hv_resume(r, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(r), "running");
	fake_destroy(r);
	vmops_spec_free(s);
	close(fd);
}

/* --- migration ------------------------------------------------------------------------ */

static struct vmops_hv *receiver(int id, const char *uri, unsigned n)
{
	struct vmops_spec *s = spec16();
	char rd[PATH_MAX];
	struct vmops_hv_launch_opts o = fake_opts_for(id, rd, sizeof(rd));
	struct vmops_migrate_params mp = { .connections = n };
	struct vmops_error e = { 0 };
	struct vmops_hv *t = vmops_hv_prepare_incoming(s, &o, uri, &mp, 10000, &e);

	vmops_spec_free(s);
	fake_track(t);
	cr_assert(t, "prepare_incoming: %s", e.msg);
	return t;
}

static void wait_final(struct vmops_hv *src, struct vmops_migrate_progress *p)
{
	struct vmops_error e = { 0 };

	for (int i = 0; i < 3000; i++) {
		cr_assert(vmops_hv_progress(src, p, &e) == 0, "progress: %s", e.msg);
		if (vmops_migrate_status_is_final(p->status))
			return;
		usleep(20000);
	}
	cr_assert_fail("migration did not end: %s", p->status);
}

static char last_src[VMOPS_HV_SOCKPATH_MAX];

/* Migrate a fresh source to a fresh target over n connections. */
static void migrate(int id, unsigned n, const char *uri_in, unsigned expect_conns)
{
	struct vmops_hv *src = launch_ok(id), *t = receiver(id + 1, uri_in, n);
	struct vmops_migrate_params mp = { .connections = n };
	struct vmops_migrate_progress p;
	struct vmops_error e = { 0 };
	const cJSON *ev, *c, *b;
	uint64_t sum = 0;
	cJSON *log;

	snprintf(last_src, sizeof(last_src), "%s", vmops_hv_info(src)->control_socket);
	cr_assert(vmops_hv_info(t)->incoming_uri[0]);
	cr_assert(vmops_hv_send(src, vmops_hv_info(t)->incoming_uri, &mp, &e) == 0, "send: %s", e.msg);
	wait_final(src, &p);
	cr_assert_str_eq(p.status, "completed", "%s", p.error_desc);
	cr_expect_eq(p.total_bytes, 16u << 20);
	if (!getenv("VMOPS_FAKE_CH_API")) {
		for (int i = 0; i < 500 && vmops_hv_is_alive(src); i++)
			usleep(10000);
		cr_expect(!vmops_hv_is_alive(src), "v53 source vmm still there after a migration");
	}
	/* the target runs a moment after the source says completed */
	for (int i = 0; i < 500 && strcmp(fake_vm_status(t), "running"); i++)
		usleep(10000);
	cr_expect_str_eq(fake_vm_status(t), "running");
	/* the fake logs the migration just after the target runs: wait for the line */
	ev = fake_wait_event_at(vmops_hv_info(t)->control_socket, "migration-received", &log);
	cr_assert(ev, "the receiver logged no migration");
	c = cJSON_GetObjectItemCaseSensitive(ev, "connections");
	cr_expect_eq(c->valueint, (int)expect_conns, "connections %d, expected %u", c->valueint,
		     expect_conns);
	cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(ev, "bytes_per_connection"))
		sum += (uint64_t)b->valuedouble;
	cr_expect_eq(sum, 16u << 20, "moved %llu bytes", (unsigned long long)sum);
	fake_no_undeclared(log);
	cJSON_Delete(log);
	if (vmops_hv_is_alive(src))
		fake_destroy(src);
	else
		vmops_hv_free(src);
	fake_destroy(t);
}

Test(chv, migrate_1_connection)
{
	migrate(10, 1, "tcp:127.0.0.1:0", 1);
}

Test(chv, migrate_4_connections)
{
	migrate(12, 4, "tcp:127.0.0.1:0", 4);
}

Test(chv, migrate_128_connections)
{
	migrate(14, 128, "tcp:127.0.0.1:0", 128);
}

Test(chv, connections_0_and_129_refused)
{
	struct vmops_hv *src = launch_ok(16);
	struct vmops_error e = { 0 };
	unsigned bad[] = { 0, VMOPS_MIGRATE_CONNECTIONS_MAX + 1 };
	cJSON *log;

	for (size_t i = 0; i < 2; i++) {
		struct vmops_migrate_params mp = { .connections = bad[i] };

		cr_assert(vmops_hv_send(src, "tcp:127.0.0.1:9", &mp, &e) < 0);
		cr_expect_eq(e.code, VMOPS_EXIT_USAGE, "%u: code %d: %s", bad[i], e.code, e.msg);
		cr_expect(strstr(e.msg, "connections must be 1..128"), "%s", e.msg);
	}
	log = fake_read_log(src);
	cr_expect_eq(fake_find_call(log, "vm.send-migration", NULL, 0), -1, "refused values reached the VMM");
	cJSON_Delete(log);
	cr_expect_str_eq(fake_vm_status(src), "running");
	fake_destroy(src);
}

Test(chv, several_connections_over_a_unix_socket)
{
	char uri[PATH_MAX + 8];
	cJSON *log;
	int i;

	snprintf(uri, sizeof(uri), "unix:%s/mig.sock", fake_dir);
	/* the API refuses 4 over a UNIX socket; the driver sends over one */
	migrate(20, 4, uri, 1);
	/* the refusal came from the VMM, and was answered by a retry with 1 */
	log = fake_read_log_at(last_src);
	i = fake_find_call(log, "vm.send-migration", NULL, 0);
	cr_assert(i >= 0);
	cr_expect_eq(fake_status_of(log, i), 500);
	cr_expect(strstr(fake_str(cJSON_GetArrayItem(log, i), "body"), "\"connections\":4"));
	i = fake_find_call(log, "vm.send-migration", NULL, i + 1);
	cr_assert(i >= 0, "no second send-migration");
	cr_expect_eq(fake_status_of(log, i), 204);
	cr_expect(strstr(fake_str(cJSON_GetArrayItem(log, i), "body"), "\"connections\":1"));
	cJSON_Delete(log);
}

Test(chv, v52_send_migration_is_synchronous)
{
	setenv("VMOPS_FAKE_CH_API", "52", 1);
	migrate(30, 4, "tcp:127.0.0.1:0", 4);
}

Test(chv, migration_to_nobody_fails_and_source_runs)
{
	struct vmops_hv *src = launch_ok(32);
	struct vmops_migrate_params mp = { .connections = 2 };
	struct vmops_migrate_progress p;
	struct vmops_error e = { 0 };

	/* nothing listens on the discard port of loopback */
	cr_assert(vmops_hv_send(src, "tcp:127.0.0.1:9", &mp, &e) == 0, "%s", e.msg);
	wait_final(src, &p);
	cr_expect_str_eq(p.status, "failed");
	cr_expect(p.error_desc[0]);
	cr_expect_str_eq(fake_vm_status(src), "running");
	fake_destroy(src);
}

/* --- faults ---------------------------------------------------------------------------- */

static const char *const modes[] = { "error", "hang", "drop", "slow" };

static int expected_code(const char *mode)
{
	return !strcmp(mode, "hang") ? VMOPS_EXIT_TIMEOUT
	       : !strcmp(mode, "slow") ? 0 : VMOPS_EXIT_HYPERVISOR;
}

static void set_fault(const char *call, const char *mode)
{
	char f[128];

	snprintf(f, sizeof(f), "%s:%s", call, mode);
	setenv("VMOPS_FAKE_FAULT", f, 1);
	setenv("VMOPS_FAKE_SLOW_MS", "300", 1);
}

Test(chv, faults_at_launch)
{
	static const char *const calls[] = { "vmm.ping", "vm.create", "vm.boot" };
	int id = 40;

	for (size_t c = 0; c < sizeof(calls) / sizeof(calls[0]); c++)
		for (size_t m = 0; m < 4; m++) {
			struct vmops_error e = { 0 };
			struct vmops_hv *h;

			set_fault(calls[c], modes[m]);
			h = launch(id++, &e);
			if (!expected_code(modes[m])) {
				cr_expect(h, "%s:%s: %s", calls[c], modes[m], e.msg);
				if (h)
					fake_destroy(h);
				continue;
			}
			cr_expect(!h, "%s:%s: launch succeeded", calls[c], modes[m]);
			cr_expect_eq(e.code, expected_code(modes[m]), "%s:%s: code %d: %s", calls[c],
				     modes[m], e.code, e.msg);
			/* nothing half-started left behind */
			cr_expect(!fake_runs_under(id - 1), "%s:%s: the vmm still runs", calls[c], modes[m]);
			vmops_hv_free(h);
		}
	unsetenv("VMOPS_FAKE_FAULT");
}

typedef int (*op_fn)(struct vmops_hv *h, struct vmops_error *err);

static int op_pause(struct vmops_hv *h, struct vmops_error *e) { return vmops_hv_pause(h, e); }
static int op_resume(struct vmops_hv *h, struct vmops_error *e) { return vmops_hv_resume(h, e); }

static int op_status(struct vmops_hv *h, struct vmops_error *e)
{
	struct vmops_vm_status st;

	return vmops_hv_status(h, &st, e);
}

static int snap_fd = -1;

static int op_snapshot(struct vmops_hv *h, struct vmops_error *e)
{
	struct vmops_snapshot_opts so = { .timeout_ms = 0 };

	return vmops_hv_snapshot(h, snap_fd, &so, e);
}

/* One fault at one call on a fresh VM: the code, and the VM as found. */
static void fault_case(int id, const char *call, const char *mode, op_fn op, bool paused_first,
		       const char *found)
{
	struct vmops_hv *h = launch_ok(id);
	struct vmops_error e = { 0 };
	int r;

	if (paused_first)
		cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
	r = op(h, &e);
	if (!expected_code(mode)) {
		cr_expect(r >= 0, "%s:%s: %s", call, mode, e.msg);
	} else {
		cr_expect(r < 0, "%s:%s: succeeded", call, mode);
		cr_expect_eq(e.code, expected_code(mode), "%s:%s: code %d: %s", call, mode, e.code, e.msg);
		cr_expect_str_eq(fake_vm_status(h), found, "%s:%s: vm not left as found", call, mode);
	}
	fake_destroy(h);
}

Test(chv, faults_at_each_call)
{
	static const struct {
		const char *call;
		op_fn op;
		bool paused_first;
		const char *found;
	} cases[] = {
		{ "vm.pause", op_pause, false, "running" },
		{ "vm.resume", op_resume, true, "paused" },
		{ "vm.snapshot", op_snapshot, true, "paused" },
		{ "vm.info", op_status, false, NULL },
	};
	int id = 60;

	snap_fd = fake_open_dir("faultsnap");
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
		for (size_t m = 0; m < 4; m++) {
			/* only the first call faults, so the check of the state afterwards answers */
			char f[128];

			snprintf(f, sizeof(f), "%s:%s:1", cases[c].call, modes[m]);
			setenv("VMOPS_FAKE_FAULT", f, 1);
			setenv("VMOPS_FAKE_SLOW_MS", "300", 1);
			if (cases[c].found)
				fault_case(id++, cases[c].call, modes[m], cases[c].op,
					   cases[c].paused_first, cases[c].found);
			else
				fault_case(id++, cases[c].call, modes[m], cases[c].op, false, "running");
		}
	close(snap_fd);
	unsetenv("VMOPS_FAKE_FAULT");
}

/* vm.restore fails: the code, and the receiver still without a VM.  "slow" restores. */
Test(chv, faults_at_the_restore_call)
{
	struct vmops_hv *h = launch_ok(70);
	struct vmops_snapshot_opts so = { .timeout_ms = 5000 };
	struct vmops_error e = { 0 };
	struct vmops_spec *s = spec16();
	int fd = fake_open_dir("rsnap"), id = 71;

	cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
	cr_assert(vmops_hv_snapshot(h, fd, &so, &e) == 0, "%s", e.msg);
	fake_destroy(h);
	setenv("VMOPS_FAKE_SLOW_MS", "300", 1);
	for (size_t m = 0; m < 4; m++) {
		char f[96], rd[PATH_MAX];
		struct vmops_hv_launch_opts o = fake_opts_for(id++, rd, sizeof(rd));
		struct vmops_hv *r;
		int rc;

		snprintf(f, sizeof(f), "vm.restore:%s:1", modes[m]);
		setenv("VMOPS_FAKE_FAULT", f, 1);
		r = vmops_hv_launch_for_restore(s, &o, &e);
		unsetenv("VMOPS_FAKE_FAULT");
		cr_assert(r, "%s", e.msg);
		fake_track(r);
		rc = vmops_hv_restore(r, fd, 2000, &e);
		if (!expected_code(modes[m])) {
			cr_expect(rc == 0, "%s: %s", f, e.msg);
			cr_expect_str_eq(fake_vm_status(r), "paused", "%s", f);
		} else {
			cr_expect(rc < 0, "%s: restored", f);
			cr_expect_eq(e.code, expected_code(modes[m]), "%s: code %d: %s", f, e.code, e.msg);
			cr_expect_str_eq(fake_vm_status(r), "inmigrate", "%s: not left as found", f);
		}
		fake_destroy(r);
	}
	vmops_spec_free(s);
	close(fd);
}

/* --- vm-fleet and vm-migrate (database: run through tests/run-one.sh) ------------------ */

/* ch1 launched on w1 by vm-fleet, with "cloud-hypervisor" on PATH the fake. */
static void fleet_launch_ch1(PGconn *c, const char *ci)
{
	const char *specf;
	struct testrun r;

	fake_fleet(c, "cloud-hypervisor", "fake-chv");
	{
		/* The launch-spec policy checks the kernel file: a real one, in an allowed directory. */
		char spec[1024];
		const char *kernel = fake_write_file("vmlinuz", "not a kernel: the fake boots nothing\n");

		chmod(kernel, 0644);
		snprintf(spec, sizeof(spec), "{\"hypervisor\":\"cloud-hypervisor\",\"memory_mb\":16,"
			 "\"vcpus\":1,\"kernel\":\"%s\"}\n", kernel);
		specf = fake_write_file("ch1.json", spec);
	}

	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", "ch1", "--org", "acme",
		"--worker", "w1", "--spec", specf);
	cr_assert_eq(r.status, 0, "launch: %s", r.err);
	testrun_free(&r);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM vmms v JOIN sandboxes s ON s.active_vmm_id = v.id"
			  " WHERE s.name = '%s' AND v.hypervisor = 'cloud-hypervisor' AND v.state = 'running'"
			  " AND v.pid > 0 AND v.pid_start_time > 0 AND v.control_socket LIKE '%%/vmops-vmm-%%.sock'",
			  "ch1"), 1, "launch did not record pid, start time and socket");
}

Test(chv, vm_fleet_launch_then_vm_migrate_over_4_connections)
{
	char ci[512];
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	struct testrun r;
	PGresult *res;
	cJSON *log;
	const cJSON *ev;

	fleet_launch_ch1(c, ci);

	/* the receiver started now sends slowly when it is the source, below */
	setenv("VMOPS_FAKE_MIGRATE_MS", "2500", 1);
	TESTRUN(&r, "vm-migrate", "--db", ci, "--connections", "4", "ch1");
	cr_expect_eq(r.status, 0, "vm-migrate: exit %d: %s", r.status, r.err);
	testrun_free(&r);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
			  " JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = '%s' AND w.name = 'w2'"
			  " AND s.status = 'running' AND v.state = 'running'", "ch1"), 1, "not moved to w2");
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM migrations m JOIN sandboxes s ON s.id = m.sandbox_id"
			  " WHERE s.name = '%s' AND m.state = 'completed' AND m.connections_used = 4", "ch1"), 1);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
			  " WHERE s.name = '%s' AND e.ended_at IS NULL AND e.vmm_id = s.active_vmm_id", "ch1"), 1);
	res = testdb_exec(c, "SELECT v.control_socket FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id"
			     " WHERE s.name = 'ch1'");
	cr_assert_eq(PQntuples(res), 1);
	ev = fake_wait_event_at(PQgetvalue(res, 0, 0), "migration-received", &log);
	PQclear(res);
	cr_assert(ev, "the target fake received no migration");
	cr_expect_eq(cJSON_GetObjectItemCaseSensitive(ev, "connections")->valueint, 4);
	cJSON_Delete(log);

	/* and back, slowly: the API reports no byte counts, which must not
	 * read as "no progress" */
	TESTRUN(&r, "vm-migrate", "--db", ci, "--progress-timeout", "1s", "--to", "w1", "ch1");
	cr_expect_eq(r.status, 0, "vm-migrate back: exit %d: %s", r.status, r.err);
	testrun_free(&r);
	unsetenv("VMOPS_FAKE_MIGRATE_MS");
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
			  " WHERE s.name = '%s' AND w.name = 'w1' AND s.status = 'running'", "ch1"), 1,
		     "not moved back to w1");

	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "destroy", "ch1");
	cr_expect_eq(r.status, 0, "destroy: %s", r.err);
	testrun_free(&r);
	cr_expect(!fake_procs_naming(fake_dir, false), "a vmm outlived destroy");
	PQfinish(c);
}

/* ghost-reap finds this VMM by its command line: the fleet token names its
 * id and the API socket option names its socket. */
Test(chv, command_line_identifies_the_vmm)
{
	struct vmops_hv *h = launch_ok(99);
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	struct vmops_error e = { 0 };
	char ctl[VMOPS_HV_SOCKPATH_MAX], agent[VMOPS_HV_SOCKPATH_MAX];
	char **argv = NULL;
	int argc = 0;

	cr_assert(vmops_proc_read_cmdline(NULL, info->pid, &argv, &argc, &e) == 0, "%s", e.msg);
	/* the fake runs under python3: skip argv[0] the way a real VMM has none extra */
	cr_assert(argc > 2);
	cr_expect_eq(vmops_proc_vmm_id(argc - 1, argv + 1), 99);
	vmops_ghost_argv_sockets(VMOPS_HV_CLOUD_HYPERVISOR, argc - 1, argv + 1, ctl, sizeof(ctl), agent, sizeof(agent));
	cr_expect_str_eq(ctl, info->control_socket);
	free(argv);
	fake_destroy(h);
}

/* ghost-reap tells a Cloud Hypervisor process by its executable, as QEMU's. */
Test(chv, ghost_reap_finds_it_by_its_executable)
{
	char ci[512];
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	fleet_launch_ch1(c, ci);
	fake_ghost_reap_finds(c, ci, "ch1", "cloud-hypervisor");
	PQfinish(c);
}

Test(chv, faults_at_the_migration_calls)
{
	int id = 120;

	setenv("VMOPS_FAKE_SLOW_MS", "300", 1);
	for (size_t m = 0; m < 4; m++) {
		char f[96], rd[PATH_MAX];
		struct vmops_error e = { 0 };
		struct vmops_spec *s = spec16();
		struct vmops_migrate_params mp = { .connections = 2 };
		struct vmops_hv_launch_opts o;
		struct vmops_hv *src, *t;

		/* the receiver's vm.receive-migration */
		snprintf(f, sizeof(f), "vm.receive-migration:%s", modes[m]);
		setenv("VMOPS_FAKE_FAULT", f, 1);
		o = fake_opts_for(id, rd, sizeof(rd));
		t = vmops_hv_prepare_incoming(s, &o, "tcp:127.0.0.1:0", &mp, 2000, &e);
		fake_track(t);
		if (!expected_code(modes[m])) {
			cr_expect(t, "%s: %s", f, e.msg);
			if (t)
				fake_destroy(t);
		} else {
			cr_expect(!t, "%s: receiver ready", f);
			cr_expect_eq(e.code, expected_code(modes[m]), "%s: code %d: %s", f, e.code, e.msg);
			cr_expect(!fake_runs_under(id), "%s: the receiver was left running", f);
		}
		id++;
		vmops_spec_free(s);

		/* the source's vm.send-migration: refused, the VM runs on */
		snprintf(f, sizeof(f), "vm.send-migration:%s", modes[m]);
		setenv("VMOPS_FAKE_FAULT", f, 1);
		src = launch_ok(id++);
		if (!expected_code(modes[m])) {
			cr_expect(vmops_hv_send(src, "tcp:127.0.0.1:9", &mp, &e) == 0, "%s: %s", f, e.msg);
		} else {
			cr_expect(vmops_hv_send(src, "tcp:127.0.0.1:9", &mp, &e) < 0, "%s: sent", f);
			cr_expect_eq(e.code, expected_code(modes[m]), "%s: code %d: %s", f, e.code, e.msg);
			cr_expect_str_eq(fake_vm_status(src), "running", "%s", f);
		}
		fake_destroy(src);
	}
	unsetenv("VMOPS_FAKE_FAULT");
}
