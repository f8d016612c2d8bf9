/* SPDX-License-Identifier: MIT */
/*
 * snapshot-prep on Cloud Hypervisor and Firecracker, end to end through the
 * programs (vm-fleet, snapshot-prep, vm-migrate) against the spec-exact
 * fakes in tests/fakes and the test database (tests/run-one.sh):
 *
 *   - hibernate on w1, then wake on w2, on each hypervisor: the bundle holds
 *     what the VMM wrote (CH config.json, state.json, memory-ranges; FC
 *     vmstate, memory) and the disk copy; the woken VMM loaded intact memory
 *     and its vCPUs run on the bundle's copy of the disk, not the original
 *     (CH: config.json repointed, so the original may be gone; FC: PATCH
 *     /drives between the load and the resume, the original needed at the
 *     load); a fault of the woken VMM's fake at each call leaves the sandbox
 *     hibernated with its bundle;
 *   - snapshot -o then restore -i (no database for the VM), prepare / undo;
 *   - the hinting lesson through snapshot-prep: a running round is stopped
 *     before PATCH /vm Paused (order from the fake's request log); a round
 *     that never stops spends its budget, and the VM is left running with
 *     nothing written;
 *   - a failure at each step (the fault hook's stop + SIGTERM; the fake's
 *     errors and hangs at the calls) unwinds: VM running, no bundle;
 *   - vm-migrate refuses Firecracker, naming the way that works, and that
 *     way works.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "exitcodes.h"
#include "fakelib.h"
#include "hv.h"
#include "interrupt.h"
#include "testlib.h"
#include "vm.h"

static char ci[512];
static char kernel[256], disk[256], bundles[256];

static void setup(void)
{
	fake_setup("snr", "fake-firecracker");
	snprintf(kernel, sizeof(kernel), "%s/vmlinux", fake_dir);
	snprintf(disk, sizeof(disk), "%s/data.img", fake_dir);
	snprintf(bundles, sizeof(bundles), "%s/bundles", fake_dir);
	fake_touch(kernel, 4096);
	fake_touch(disk, 1 << 20);
	cr_assert(mkdir(bundles, 0700) == 0);
	setenv("VMOPS_FAKE_HINT_MS", "200", 1);
	unsetenv("VMOPS_FAKE_HINT_STOP_MS");
	unsetenv("VMOPS_FAULT");
}

TestSuite(snapshot_rest, .init = setup, .fini = fake_teardown, .timeout = 180);

/* A database with w1, w2, both fakes on PATH, and sandbox sb1 of `hv`
 * ("cloud-hypervisor" or "firecracker") running on w1. */
static PGconn *fleet_with(const char *hv)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char json[4096];
	const char *specf;
	struct testrun r;

	fake_fleet(c, "firecracker", "fake-firecracker");
	fake_fleet(c, "cloud-hypervisor", "fake-chv");
	snprintf(json, sizeof(json),
		 "{\"hypervisor\":\"%s\",\"memory_mb\":16,\"vcpus\":1,\"kernel\":\"%s\","
		 "\"cmdline\":\"console=ttyS0\",\"disks\":[{\"path\":\"%s\",\"readonly\":false}],"
		 "\"balloon\":{\"free_page_hint\":%s}}\n", hv, kernel, disk,
		 strcmp(hv, "firecracker") ? "false" : "true");
	specf = fake_write_file("sb1.json", json);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", "sb1", "--org", "acme",
		"--worker", "w1", "--spec", specf);
	cr_assert_eq(r.status, 0, "launch: %s", r.err);
	testrun_free(&r);
	return c;
}

/* The sandbox's active VMM, attached (the test's own handle). */
static struct vmops_hv *attach_sb1(PGconn *c)
{
	struct vmops_vmm_info info;
	struct vmops_error e = { 0 };
	struct vmops_hv *h;
	long long id = fake_ll(c, "SELECT active_vmm_id FROM sandboxes WHERE name = 'sb1'");

	cr_assert(vmops_vm_load_info(c, id, &info, &e) == 0, "%s", e.msg);
	h = vmops_hv_attach(&info, 5000, &e);
	cr_assert(h, "attach: %s", e.msg);
	return h;
}

static void assert_running(PGconn *c, const char *why)
{
	struct vmops_hv *h = attach_sb1(c);

	cr_assert_str_eq(fake_vm_status(h), "running", "%s: vm not left running", why);
	vmops_hv_free(h);
}

/* Nothing under the bundle directory and no staging directory left. */
static void assert_nothing_written(const char *why)
{
	char cmd[PATH_MAX + 64];

	snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A '%s')\"", bundles);
	cr_assert_eq(system(cmd), 0, "%s: files left in %s", why, bundles);
}

static int prog(struct testrun *r, const char *const *argv)
{
	testrun(r, argv);
	cr_log_info("%s %s: exit %d: %s", argv[0], argv[3], r->status, r->err);
	return r->status;
}
#define PROG(r, ...) prog((r), (const char *const[]){ __VA_ARGS__, NULL })

static void hibernate_ok(PGconn *c)
{
	struct testrun r;

	cr_assert_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "hibernate", "--sandbox", "sb1",
			  "--bundle-dir", bundles), 0, "hibernate: %s", r.err);
	testrun_free(&r);
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'hibernated'"
			     " AND active_vmm_id IS NULL"), 1);
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 0,
		     "billing still open");
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM reservations"), 0);
	{
		char needle[PATH_MAX + 8];

		snprintf(needle, sizeof(needle), "%s/w1/", fake_dir);
		cr_assert(!fake_procs_naming(needle, false), "the hibernated vmm still runs");
	}
}

static void wake_ok(PGconn *c, const char *worker)
{
	struct testrun r;

	cr_assert_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "wake", "--sandbox", "sb1",
			  "--worker", worker), 0, "wake: %s", r.err);
	testrun_free(&r);
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
			     " JOIN vmms v ON v.id = s.active_vmm_id WHERE s.status = 'running'"
			     " AND w.name = '%s' AND v.state = 'running' AND v.pid > 0", worker), 1);
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 1);
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'restored'"), 1);
}

/* The bundle's members, as the manifest recorded them: "a,b,c" sorted. */
static char *members(PGconn *c)
{
	PGresult *res = testdb_exec(c, "SELECT string_agg(m->>'name', ',' ORDER BY m->>'name')"
				       " FROM snapshots, jsonb_array_elements(manifest->'members') m");
	char *s = strdup(PQgetvalue(res, 0, 0));

	PQclear(res);
	return s;
}

static cJSON *log_of_sb1(PGconn *c)
{
	PGresult *res = testdb_exec(c, "SELECT v.control_socket FROM sandboxes s"
				       " JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = 'sb1'");
	cJSON *log;

	cr_assert_eq(PQntuples(res), 1);
	log = fake_read_log_at(PQgetvalue(res, 0, 0));
	PQclear(res);
	return log;
}

/* The woken VMM's copy of the disk: <its run dir>/snapshot/disk0.img (static storage). */
static const char *bundle_disk(PGconn *c)
{
	static char path[PATH_MAX];
	PGresult *res = testdb_exec(c, "SELECT v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id"
				       " WHERE s.name = 'sb1'");

	cr_assert_eq(PQntuples(res), 1);
	snprintf(path, sizeof(path), "%s/snapshot/disk0.img", PQgetvalue(res, 0, 0));
	PQclear(res);
	return path;
}

/*
 * The disk the woken VM's vCPUs use, as its fake recorded when they first
 * ran: the copy from the bundle, never the original (the hibernated VM's,
 * maybe someone else's by now).
 */
static void assert_uses_bundle_disk(PGconn *c, const cJSON *log, const char *hv)
{
	const cJSON *ev = fake_find_event(log, "vm-running");
	const cJSON *used;

	cr_assert(ev, "the woken vm never ran");
	if (!strcmp(hv, "firecracker"))
		used = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ev, "drives"), "disk0");
	else
		used = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ev, "disks"), 0);
	cr_assert(cJSON_IsString(used), "no disk in the running vm");
	cr_expect_str_eq(used->valuestring, bundle_disk(c), "the woken vm runs on %s, not on the bundle's copy",
			 used->valuestring);
	cr_expect_str_neq(used->valuestring, disk);
}

/* ==================================================================================== */

Test(snapshot_rest, chv_hibernate_then_wake_on_the_other_worker)
{
	PGconn *c = fleet_with("cloud-hypervisor");
	cJSON *log;
	char *m;

	hibernate_ok(c);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'ready' AND size_bytes > 0"
			     " AND manifest->>'hypervisor' = 'cloud-hypervisor'"
			     " AND manifest->>'hypervisor_version' = '53.0'"), 1);
	m = members(c);
	cr_expect_str_eq(m, "config.json,disk0.img,memory-ranges,state.json");
	free(m);
	wake_ok(c, "w2");
	log = log_of_sb1(c);
	/* vm.restore checks memory-ranges against state.json; then resumed */
	cr_expect(fake_find_call(log, "vm.restore", "\"resume\":false", 0) >= 0);
	cr_expect(fake_find_event(log, "restored"));
	cr_expect(fake_find_call(log, "vm.resume", NULL, 0) > fake_find_call(log, "vm.restore", NULL, 0));
	assert_uses_bundle_disk(c, log, "cloud-hypervisor");
	fake_no_undeclared(log);
	cJSON_Delete(log);
	assert_running(c, "woken");
	PQfinish(c);
}

/* config.json is repointed before vm.restore: the original disk may be gone. */
Test(snapshot_rest, chv_wake_does_not_need_the_original_disk)
{
	PGconn *c = fleet_with("cloud-hypervisor");
	cJSON *log;

	hibernate_ok(c);
	cr_assert(unlink(disk) == 0);
	wake_ok(c, "w2");
	log = log_of_sb1(c);
	assert_uses_bundle_disk(c, log, "cloud-hypervisor");
	{
		const cJSON *ev = fake_find_event(log, "devices-opened");

		cr_expect(ev && !strcmp(fake_str(cJSON_GetObjectItemCaseSensitive(ev, "serial"), "mode"), "Tty"),
			  "the restored console is not the vmm's own log");
	}
	cJSON_Delete(log);
	assert_running(c, "woken");
	PQfinish(c);
}

Test(snapshot_rest, fc_hibernate_then_wake_on_the_other_worker)
{
	PGconn *c = fleet_with("firecracker");
	cJSON *log;
	char *m;

	hibernate_ok(c);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'ready' AND size_bytes > 0"
			     " AND manifest->>'hypervisor' = 'firecracker'"
			     " AND manifest->>'hypervisor_version' = '1.16.1'"), 1);
	m = members(c);
	cr_expect_str_eq(m, "disk0.img,memory,vmstate");
	free(m);
	wake_ok(c, "w2");
	log = log_of_sb1(c);
	cr_expect(fake_find_call(log, "PUT /snapshot/load", "\"backend_type\":\"File\"", 0) >= 0);
	cr_expect(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fake_find_event(log, "snapshot-loaded"),
								"memory_intact")), "woken with damaged memory");
	cr_expect(fake_find_call(log, "PATCH /vm", "\"Resumed\"", 0) >= 0);
	/* the drive swapped between the load and the resume */
	{
		int load = fake_find_call(log, "PUT /snapshot/load", NULL, 0);
		int patch = fake_find_call(log, "PATCH /drives/{drive_id}", "\"drive_id\":\"disk0\"", 0);
		int resume = fake_find_call(log, "PATCH /vm", "\"Resumed\"", 0);

		cr_expect(load >= 0 && load < patch && patch < resume, "load %d, patch %d, resume %d",
			  load, patch, resume);
		cr_expect_eq(fake_status_of(log, patch), 204);
	}
	assert_uses_bundle_disk(c, log, "firecracker");
	fake_no_undeclared(log);
	cJSON_Delete(log);
	assert_running(c, "woken");
	PQfinish(c);
}

/* What a failed wake must leave: the sandbox hibernated with its bundle, no new VMM. */
static void assert_still_hibernated(PGconn *c, const char *why)
{
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'hibernated'"
			     " AND active_vmm_id IS NULL AND target_vmm_id IS NULL"), 1, "%s", why);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'ready'"), 1, "%s", why);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM reservations"), 0, "%s", why);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 0, "%s", why);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM vmms WHERE state IN ('starting', 'running')"), 0, "%s", why);
	{
		char needle[PATH_MAX + 8];

		snprintf(needle, sizeof(needle), "%s/w2/", fake_dir);
		cr_expect(!fake_procs_naming(needle, false), "%s: the new vmm still runs", why);
	}
}

/* wake with the fakes it launches failing as `fault` says (VMOPS_FAKE_FAULT). */
static void wake_fails(PGconn *c, const char *fault, int code)
{
	struct testrun r;

	setenv("VMOPS_FAKE_FAULT", fault, 1);
	cr_expect_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "wake", "--sandbox", "sb1", "--worker", "w2",
			  "--timeout", "2s"), code, "%s: %s", fault, r.err);
	unsetenv("VMOPS_FAKE_FAULT");
	cr_expect_eq(testlib_lines(r.err), 1, "%s: %s", fault, r.err);
	testrun_free(&r);
	assert_still_hibernated(c, fault);
}

Test(snapshot_rest, fc_wake_faults_leave_the_sandbox_hibernated)
{
	PGconn *c = fleet_with("firecracker");

	hibernate_ok(c);
	wake_fails(c, "PUT /snapshot/load:error", VMOPS_EXIT_HYPERVISOR);
	wake_fails(c, "PUT /snapshot/load:hang", VMOPS_EXIT_TIMEOUT);
	wake_fails(c, "PATCH /drives/{drive_id}:error", VMOPS_EXIT_HYPERVISOR);
	wake_fails(c, "PATCH /drives/{drive_id}:drop", VMOPS_EXIT_HYPERVISOR);
	wake_fails(c, "PATCH /vm:error", VMOPS_EXIT_HYPERVISOR);
	wake_ok(c, "w2");
	PQfinish(c);
}

Test(snapshot_rest, chv_wake_faults_leave_the_sandbox_hibernated)
{
	PGconn *c = fleet_with("cloud-hypervisor");

	hibernate_ok(c);
	wake_fails(c, "vm.restore:error", VMOPS_EXIT_HYPERVISOR);
	wake_fails(c, "vm.restore:hang", VMOPS_EXIT_TIMEOUT);
	wake_fails(c, "vm.restore:drop", VMOPS_EXIT_HYPERVISOR);
	wake_fails(c, "vm.resume:error", VMOPS_EXIT_HYPERVISOR);
	wake_ok(c, "w2");
	PQfinish(c);
}

/*
 * Firecracker's load opens the drives its state file recorded before
 * PATCH /drives can swap them (v1.16 has no drive override): with the
 * original disk gone, the wake fails cleanly and says why; with it back,
 * the wake works (and still runs on the bundle's copy).
 */
Test(snapshot_rest, fc_wake_needs_the_recorded_disk_at_load)
{
	PGconn *c = fleet_with("firecracker");
	char moved[PATH_MAX];
	struct testrun r;
	cJSON *log;

	hibernate_ok(c);
	snprintf(moved, sizeof(moved), "%s.moved", disk);
	cr_assert(rename(disk, moved) == 0);
	cr_expect_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "wake", "--sandbox", "sb1", "--worker", "w2"),
		     VMOPS_EXIT_HYPERVISOR, "%s", r.err);
	cr_expect(strstr(r.err, disk), "%s", r.err);
	testrun_free(&r);
	assert_still_hibernated(c, "recorded disk gone");
	cr_assert(rename(moved, disk) == 0);
	wake_ok(c, "w2");
	log = log_of_sb1(c);
	assert_uses_bundle_disk(c, log, "firecracker");
	cJSON_Delete(log);
	PQfinish(c);
}

/* vm-migrate cannot move a Firecracker VM, says how, and that way works. */
Test(snapshot_rest, fc_vm_migrate_refuses_and_the_way_it_names_works)
{
	PGconn *c = fleet_with("firecracker");
	struct testrun r;

	cr_assert_eq(PROG(&r, "vm-migrate", "--db", ci, "--to", "w2", "sb1"), VMOPS_EXIT_CONFLICT);
	cr_expect(strstr(r.err, "snapshot-prep hibernate --sandbox sb1"), "%s", r.err);
	cr_expect(strstr(r.err, "snapshot-prep wake --sandbox sb1 --worker w2"), "%s", r.err);
	cr_expect_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	assert_running(c, "refused");
	hibernate_ok(c);
	wake_ok(c, "w2");
	assert_running(c, "moved");
	PQfinish(c);
}

/* snapshot -o FILE, then restore -i FILE into a fresh VMM (no database). */
Test(snapshot_rest, chv_snapshot_to_file_then_restore)
{
	PGconn *c = fleet_with("cloud-hypervisor");
	char out[PATH_MAX], rd[PATH_MAX];
	struct testrun r;
	struct vmops_hv *h;
	cJSON *log;

	snprintf(out, sizeof(out), "%s/sb1.vmops", bundles);
	snprintf(rd, sizeof(rd), "%s/restored", fake_dir);
	cr_assert_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "snapshot", "--sandbox", "sb1", "-o", out,
			  "--work-dir", fake_dir), 0, "%s", r.err);
	testrun_free(&r);
	assert_running(c, "after snapshot");
	h = attach_sb1(c);
	log = fake_read_log(h);
	vmops_hv_free(h);
	cr_expect(fake_find_call(log, "vm.pause", NULL, 0) < fake_find_call(log, "vm.snapshot", NULL, 0));
	cr_expect(fake_find_call(log, "vm.snapshot", NULL, 0) < fake_last_call(log, "vm.resume"));
	cJSON_Delete(log);
	cr_assert_eq(PROG(&r, "snapshot-prep", "-q", "restore", "-i", out, "--run-dir", rd, "--vmm-id", "77"),
		     0, "%s", r.err);
	testrun_free(&r);
	cr_expect(fake_procs_naming("/restored/vmm/", false), "no restored vmm runs");
	PQfinish(c);
}

Test(snapshot_rest, fc_prepare_then_undo)
{
	PGconn *c = fleet_with("firecracker");
	struct testrun r;
	struct vmops_hv *h;

	cr_assert_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "prepare", "--sandbox", "sb1"), 0, "%s", r.err);
	testrun_free(&r);
	h = attach_sb1(c);
	cr_expect_str_eq(fake_vm_status(h), "paused");
	vmops_hv_free(h);
	cr_assert_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "undo", "--sandbox", "sb1"), 0, "%s", r.err);
	testrun_free(&r);
	assert_running(c, "undo");
	PQfinish(c);
}

/* --- the hinting lesson ------------------------------------------------------------------ */

static void start_round(PGconn *c)
{
	struct vmops_hv *h = attach_sb1(c);
	struct vmops_error e = { 0 };

	cr_assert(vmops_hv_hint_start(h, &e) == 0, "%s", e.msg);
	vmops_hv_free(h);
}

Test(snapshot_rest, fc_running_round_is_stopped_before_the_pause)
{
	PGconn *c;
	cJSON *log;
	int stop, pause, snap;

	setenv("VMOPS_FAKE_HINT_MS", "-1", 1);        /* the round never ends by itself */
	setenv("VMOPS_FAKE_HINT_STOP_MS", "1000", 1); /* the guest sees the stop late (budget 2 s) */
	c = fleet_with("firecracker");
	start_round(c);
	{
		struct testrun r;

		cr_assert_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "hibernate", "--sandbox", "sb1",
				  "--bundle-dir", bundles, "--hint-timeout", "300ms"), 0, "%s", r.err);
		testrun_free(&r);
	}
	/* the hibernated VMM's log is still on disk: read it by its socket */
	{
		PGresult *res = testdb_exec(c, "SELECT control_socket FROM vmms WHERE state = 'destroyed'");

		cr_assert_eq(PQntuples(res), 1);
		log = fake_read_log_at(PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	stop = fake_find_call(log, "PATCH /balloon/hinting/stop", NULL, 0);
	pause = fake_find_call(log, "PATCH /vm", "\"Paused\"", 0);
	snap = fake_find_call(log, "PUT /snapshot/create", NULL, 0);
	cr_assert(stop >= 0, "the running round was never stopped");
	cr_assert(pause >= 0 && snap >= 0);
	cr_expect(stop < pause, "stopped after the pause (stop %d, pause %d)", stop, pause);
	cr_expect(fake_find_event(log, "hinting-stopped"), "the guest never stopped reporting");
	{
		int seen = fake_find_call(log, "GET /balloon/hinting/status", NULL, stop);

		cr_expect(seen > stop && seen < pause, "the stop was not seen done before the pause");
	}
	cr_expect(pause < snap);
	cr_expect(!fake_find_event(log, "memory-damaged"), "hinting ran during the snapshot");
	cJSON_Delete(log);
	wake_ok(c, "w2");
	log = log_of_sb1(c);
	cr_expect(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fake_find_event(log, "snapshot-loaded"),
								"memory_intact")), "woken with damaged memory");
	cJSON_Delete(log);
	PQfinish(c);
}

Test(snapshot_rest, fc_round_that_never_stops_leaves_the_vm_running)
{
	PGconn *c;
	struct testrun r;
	struct vmops_hv *h;
	cJSON *log;

	setenv("VMOPS_FAKE_HINT_MS", "-1", 1);
	setenv("VMOPS_FAKE_HINT_STOP_MS", "-1", 1);   /* the guest never sees the stop */
	c = fleet_with("firecracker");
	start_round(c);
	cr_assert_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "hibernate", "--sandbox", "sb1",
			  "--bundle-dir", bundles, "--hint-timeout", "300ms"), VMOPS_EXIT_TIMEOUT, "%s", r.err);
	cr_expect(strstr(r.err, "still running"), "%s", r.err);
	cr_expect_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	h = attach_sb1(c);
	cr_expect_str_eq(fake_vm_status(h), "running");
	log = fake_read_log(h);
	vmops_hv_free(h);
	cr_expect(fake_find_call(log, "PATCH /balloon/hinting/stop", NULL, 0) >= 0);
	cr_expect_eq(fake_find_call(log, "PATCH /vm", NULL, 0), -1, "paused anyway");
	cr_expect_eq(fake_find_call(log, "PUT /snapshot/create", NULL, 0), -1, "snapshot anyway");
	cJSON_Delete(log);
	assert_nothing_written("never stops");
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running'"), 1);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'failed'"), 1);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 1);
	PQfinish(c);
}

/* --- failures at each step unwind --------------------------------------------------------- */

/* snapshot-prep snapshot stopped at `step` by the fault hook, then SIGTERM. */
static void sigterm_at(PGconn *c, const char *step)
{
	char env[64], out[PATH_MAX];
	struct testproc p;
	struct testrun r;

	snprintf(out, sizeof(out), "%s/b.vmops", bundles);
	snprintf(env, sizeof(env), "%s:stop", step);
	setenv("VMOPS_FAULT", env, 1);
	TESTRUN_START(&p, "snapshot-prep", "--db", ci, "-q", "snapshot", "--sandbox", "sb1", "-o", out,
		      "--work-dir", bundles);
	unsetenv("VMOPS_FAULT");
	fake_wait_stopped(p.pid);
	kill(p.pid, SIGTERM);
	kill(p.pid, SIGCONT);
	testrun_finish(&p, &r);
	cr_expect_eq(r.status, VMOPS_EXIT_INTERRUPTED, "%s: exit %d: %s", step, r.status, r.err);
	testrun_free(&r);
	assert_running(c, step);
	assert_nothing_written(step);
}

static void sigterm_each_step(const char *hv, const char *const *steps, size_t n)
{
	PGconn *c = fleet_with(hv);

	for (size_t i = 0; i < n; i++)
		sigterm_at(c, steps[i]);
	PQfinish(c);
}

Test(snapshot_rest, fc_sigterm_at_each_step_unwinds)
{
	static const char *const steps[] = { "hint", "pause", "snapshot", "disks", "bundle" };

	sigterm_each_step("firecracker", steps, sizeof(steps) / sizeof(steps[0]));
}

Test(snapshot_rest, chv_sigterm_at_each_step_unwinds)
{
	static const char *const steps[] = { "pause", "snapshot", "disks", "bundle" };

	sigterm_each_step("cloud-hypervisor", steps, sizeof(steps) / sizeof(steps[0]));
}

/*
 * A second SIGTERM while the first one's unwind hangs (the resume after the
 * pause never answers): snapshot-prep leaves at once, says what it leaves
 * and how to clean it up, and that way works: `recover`, refused while the
 * lease runs, then resumes the VM and fails the snapshot.
 */
Test(snapshot_rest, fc_second_signal_in_the_unwind_leaves_at_once_and_recover_puts_it_back)
{
	PGconn *c = fleet_with("firecracker");
	struct vmops_hv *h = attach_sb1(c);
	struct testproc p;
	struct testrun r;
	cJSON *log = NULL;

	setenv("VMOPS_FAULT", "snapshot:stop", 1);
	TESTRUN_START(&p, "snapshot-prep", "--db", ci, "-q", "hibernate", "--sandbox", "sb1", "--bundle-dir", bundles);
	unsetenv("VMOPS_FAULT");
	fake_wait_stopped(p.pid);
	cr_assert_str_eq(fake_vm_status(h), "paused");
	cr_assert(fake_fault_arm(h, "PATCH /vm:hang:1"));    /* the unwind's resume */
	kill(p.pid, SIGTERM);
	kill(p.pid, SIGCONT);
	for (int k = 0; k < 400 && fake_find_call(log, "PATCH /vm", "Resumed", 0) < 0; k++) {
		cJSON_Delete(log);
		usleep(50000);
		log = fake_read_log(h);
	}
	cr_assert(fake_find_call(log, "PATCH /vm", "Resumed", 0) >= 0, "the unwind never asked to resume");
	cJSON_Delete(log);
	usleep((VMOPS_INTERRUPT_REPEAT_MS + 300) * 1000);   /* a second request, not the first twice */
	kill(p.pid, SIGTERM);
	testrun_finish(&p, &r);
	cr_assert_eq(r.status, VMOPS_EXIT_INTERRUPTED, "exit %d: %s", r.status, r.err);
	cr_assert(strstr(r.err, "snapshot-prep: second interrupt: leaving at once, without cleaning up; the hibernate"
			 " of sandbox sb1 is left under its lease: run 'snapshot-prep recover --sandbox sb1' once it"
			 " has expired"), "%s", r.err);
	testrun_free(&r);
	cr_assert_str_eq(fake_vm_status(h), "paused", "not left as the line says");
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'writing'"), 1);

	cr_assert_eq(PROG(&r, "snapshot-prep", "--db", ci, "recover", "--sandbox", "sb1"), VMOPS_EXIT_CONFLICT,
		     "recover under the lease: %s", r.err);
	testrun_free(&r);
	PQclear(testdb_exec(c, "UPDATE snapshots SET lease_expires_at = now() - interval '1 second'"
			       " WHERE lease_owner IS NOT NULL"));
	cr_assert_eq(PROG(&r, "snapshot-prep", "--db", ci, "recover", "--sandbox", "sb1"), 0, "recover: %s", r.err);
	testrun_free(&r);
	cr_assert_str_eq(fake_vm_status(h), "running");
	vmops_hv_free(h);
	assert_nothing_written("recover");
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'failed' AND lease_owner IS NULL"), 1);
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running'"), 1);
	cr_assert_eq(fake_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 1, "billing not open once");
	PQfinish(c);
}

/* The fake fails (error) or hangs at one call of the hibernation: the
 * documented exit code, the VM running, nothing written, the sandbox running. */
static void api_fault(PGconn *c, const char *rule, int code)
{
	struct vmops_hv *h = attach_sb1(c);
	struct testrun r;

	cr_assert(fake_fault_arm(h, rule));
	vmops_hv_free(h);
	cr_expect_eq(PROG(&r, "snapshot-prep", "--db", ci, "-q", "hibernate", "--sandbox", "sb1",
			  "--bundle-dir", bundles, "--timeout", "2s"), code, "%s: %s", rule, r.err);
	cr_expect_eq(testlib_lines(r.err), 1, "%s: %s", rule, r.err);
	testrun_free(&r);
	assert_running(c, rule);
	assert_nothing_written(rule);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running'"), 1, "%s", rule);
	cr_expect_eq(fake_ll(c, "SELECT count(*) FROM snapshots WHERE state NOT IN ('failed')"), 0, "%s", rule);
}

Test(snapshot_rest, fc_fake_faults_at_each_call_unwind)
{
	PGconn *c = fleet_with("firecracker");

	/* the status fails, and again after the stop: the stop is never seen done */
	api_fault(c, "GET /balloon/hinting/status:error:2", VMOPS_EXIT_HYPERVISOR);
	api_fault(c, "PATCH /vm:error:1", VMOPS_EXIT_HYPERVISOR);
	api_fault(c, "PUT /snapshot/create:error:1", VMOPS_EXIT_HYPERVISOR);
	api_fault(c, "PUT /snapshot/create:hang:1", VMOPS_EXIT_TIMEOUT);
	PQfinish(c);
}

Test(snapshot_rest, chv_fake_faults_at_each_call_unwind)
{
	PGconn *c = fleet_with("cloud-hypervisor");

	api_fault(c, "vm.pause:error:1", VMOPS_EXIT_HYPERVISOR);
	api_fault(c, "vm.snapshot:error:1", VMOPS_EXIT_HYPERVISOR);
	api_fault(c, "vm.snapshot:hang:1", VMOPS_EXIT_TIMEOUT);
	PQfinish(c);
}
