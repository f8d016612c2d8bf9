/* SPDX-License-Identifier: MIT */
/*
 * Firecracker driver against tests/fakes/fake-firecracker (a real process
 * serving the v1.16.1 API on a UNIX socket, with a request log): launch,
 * pause, resume, status, destroy, Full and Diff snapshots and their load,
 * balloon, no live migration, the hypervisor's fault_message, every fake
 * fault at every call, and the free-page hinting lesson: a round that
 * finishes in time is waited for; one that does not is stopped before the
 * pause (call order asserted from the fake's log) and the snapshot is
 * intact; a stop that fails aborts the snapshot and leaves the VM running.
 * No QEMU; one case (vm-migrate refusing a Firecracker sandbox) uses the
 * test database (tests/run-one.sh).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "exitcodes.h"
#include "hv.h"
#include "hv/firecracker.h"
#include "hv/hint.h"
#include "hv/rest.h"
#include "ghost.h"
#include "log.h"
#include "proc.h"
#include "spec.h"
#include "fakelib.h"
#include "testlib.h"

static char kernel[128];
static char disk[128];

static void setup(void)
{
	fake_setup("fc", "fake-firecracker");
	snprintf(kernel, sizeof(kernel), "%s/vmlinux", fake_dir);
	snprintf(disk, sizeof(disk), "%s/rootfs.ext4", fake_dir);
	fake_touch(kernel, 4096);
	fake_touch(disk, 1 << 20);
	setenv("VMOPS_FAKE_HINT_MS", "200", 1);
	unsetenv("VMOPS_FAKE_HINT_STOP_MS");
}

TestSuite(firecracker, .init = setup, .fini = fake_teardown, .timeout = 120);

static struct vmops_spec *spec16(void)
{
	char json[1024];
	struct vmops_spec *s;

	snprintf(json, sizeof(json),
		 "{\"hypervisor\":\"firecracker\",\"memory_mb\":16,\"vcpus\":1,\"kernel\":\"%s\","
		 "\"cmdline\":\"console=ttyS0 no_timer_check root=/dev/vda\","
		 "\"disks\":[{\"path\":\"%s\",\"readonly\":false}],"
		 "\"balloon\":{\"free_page_hint\":true}}", kernel, disk);
	s = vmops_spec_parse(json, (size_t)-1, NULL);
	cr_assert(s);
	return s;
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

/* sha256 of a file, through the fake's own helper (python3 is a test dep). */
static void sha256(const char *path, char out[65])
{
	char cmd[PATH_MAX * 2];
	FILE *p;

	snprintf(cmd, sizeof(cmd), "sha256sum '%s'", path);
	p = popen(cmd, "r");
	cr_assert(p && fscanf(p, "%64s", out) == 1, "sha256sum %s", path);
	pclose(p);
}

/* Does the snapshot's memory file hold what the guest had (the checksum the
 * state file recorded before the memory was written)? */
static bool snapshot_intact(const char *sub)
{
	char state[PATH_MAX], mem[PATH_MAX], sum[65], buf[8192];
	const char *want;
	cJSON *j;
	FILE *f;
	size_t n;
	bool ok;

	snprintf(state, sizeof(state), "%s/%s/vmstate", fake_dir, sub);
	snprintf(mem, sizeof(mem), "%s/%s/memory", fake_dir, sub);
	f = fopen(state, "r");
	cr_assert(f, "%s", state);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	j = cJSON_Parse(buf);
	want = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "memory_sha256"));
	cr_assert(want);
	sha256(mem, sum);
	ok = !strcmp(sum, want);
	cJSON_Delete(j);
	return ok;
}

/* ======================================================================= */

Test(firecracker, lifecycle)
{
	struct vmops_hv *h = launch_ok(1);
	struct vmops_error e = { 0 };
	static const char *const order[] = {
		"GET /", "PUT /machine-config", "PUT /boot-source", "PUT /drives/{drive_id}",
		"PUT /balloon", "PUT /actions",
	};
	cJSON *log;
	int i = 0;

	cr_expect_str_eq(vmops_hv_info(h)->kind, "firecracker");
	cr_assert(vmops_hv_wait_ready(h, 5000, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "running");
	cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "paused");
	cr_assert(vmops_hv_resume(h, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "running");
	log = fake_read_log(h);
	for (size_t k = 0; k < sizeof(order) / sizeof(order[0]); k++) {
		i = fake_find_call(log, order[k], NULL, i);
		cr_assert(i >= 0, "%s missing or out of order", order[k]);
	}
	cr_expect(fake_find_call(log, "PUT /balloon", "\"free_page_hinting\":true", 0) >= 0);
	cr_expect(fake_find_call(log, "PUT /drives/{drive_id}", "\"drive_id\":\"disk0\"", 0) >= 0);
	cr_expect(fake_find_call(log, "PATCH /vm", "\"Paused\"", 0) >= 0);
	cr_expect(fake_find_call(log, "PATCH /vm", "\"Resumed\"", 0) >= 0);
	cJSON_Delete(log);
	fake_destroy(h);
}

Test(firecracker, no_live_migration)
{
	struct vmops_hv *h = launch_ok(2);
	struct vmops_spec *s = spec16();
	char rd[PATH_MAX];
	struct vmops_hv_launch_opts o = fake_opts_for(3, rd, sizeof(rd));
	struct vmops_migrate_params mp = { .connections = 1 };
	struct vmops_error e = { 0 };

	cr_expect(!vmops_hv_can(h, VMOPS_HV_OP_MIGRATE));
	cr_expect(vmops_hv_can(h, VMOPS_HV_OP_HINT));
	cr_expect(vmops_hv_can(h, VMOPS_HV_OP_SNAPSHOT));
	cr_expect(vmops_hv_can(h, VMOPS_HV_OP_BALLOON));
	cr_expect_eq(vmops_hv_supports_multifd(h, &e), 0);
	cr_expect(vmops_hv_send(h, "tcp:127.0.0.1:9", &mp, &e) < 0);
	cr_expect_eq(e.code, VMOPS_EXIT_CONFLICT);
	cr_expect(!vmops_hv_prepare_incoming(s, &o, "tcp:127.0.0.1:0", &mp, 1000, &e));
	cr_expect_eq(e.code, VMOPS_EXIT_CONFLICT);
	cr_expect(strstr(e.msg, "not supported"), "%s", e.msg);
	vmops_spec_free(s);
	fake_destroy(h);
}

Test(firecracker, fault_message_in_errors)
{
	struct vmops_hv *h = launch_ok(4);
	int fd = fake_open_dir("snap");
	struct vmops_snapshot_opts so = { .timeout_ms = 5000 };
	struct vmops_error e = { 0 };

	/* a running VM cannot be snapshotted: Firecracker says so, and it runs on */
	cr_assert(vmops_hv_snapshot(h, fd, &so, &e) < 0);
	cr_expect_eq(e.code, VMOPS_EXIT_HYPERVISOR);
	cr_expect(strstr(e.msg, "HTTP 400"), "%s", e.msg);
	cr_expect(strstr(e.msg, "must be paused"), "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "running");
	close(fd);
	fake_destroy(h);
}

Test(firecracker, balloon)
{
	struct vmops_hv *h = launch_ok(5);
	struct vmops_error e = { 0 };
	uint64_t b = 1;

	cr_assert(vmops_hv_balloon_get(h, &b, &e) == 0, "%s", e.msg);
	cr_expect_eq(b, 0);
	cr_assert(vmops_hv_balloon_set(h, 4u << 20, &e) == 0, "%s", e.msg);
	cr_assert(vmops_hv_balloon_get(h, &b, &e) == 0, "%s", e.msg);
	cr_expect_eq(b, 4u << 20);
	cr_expect(vmops_hv_balloon_set(h, 64u << 20, &e) < 0, "more than the guest has");
	cr_expect(strstr(e.msg, "too large"), "%s", e.msg);
	fake_destroy(h);
}

Test(firecracker, snapshot_full_diff_and_restore)
{
	struct vmops_hv *h = launch_ok(6), *r;
	struct vmops_snapshot_opts so = { .timeout_ms = 5000 };
	struct vmops_error e = { 0 };
	struct vmops_spec *s = spec16();
	char rd[PATH_MAX];
	struct vmops_hv_launch_opts o = fake_opts_for(7, rd, sizeof(rd));
	int full = fake_open_dir("full"), diff = fake_open_dir("diff");
	char copy[PATH_MAX];
	cJSON *log;

	cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
	cr_assert(vmops_hv_snapshot(h, full, &so, &e) == 0, "%s", e.msg);
	cr_assert(vmops_hv_fc_snapshot(h, diff, true, 5000, &e) == 0, "%s", e.msg);
	cr_expect_eq(fake_file_size("full", "memory"), 16 << 20);
	cr_expect(fake_file_size("full", "vmstate") > 0);
	cr_expect_eq(fake_file_size("diff", "memory"), 16 << 20);
	cr_expect(snapshot_intact("full"));
	log = fake_read_log(h);
	cr_expect(fake_find_call(log, "PUT /snapshot/create", "\"snapshot_type\":\"Full\"", 0) >= 0);
	cr_expect(fake_find_call(log, "PUT /snapshot/create", "\"snapshot_type\":\"Diff\"", 0) >= 0);
	cJSON_Delete(log);
	fake_destroy(h);

	/* restored onto a copy of the disk: the drive is swapped before the vCPUs run */
	snprintf(copy, sizeof(copy), "%s/rootfs-copy.ext4", fake_dir);
	fake_touch(copy, 1 << 20);
	free(s->disks[0].path);
	s->disks[0].path = strdup(copy);
	r = vmops_hv_launch_for_restore(s, &o, &e);
	fake_track(r);
	cr_assert(r, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(r), "inmigrate");
	cr_assert(vmops_hv_restore(r, full, 5000, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(r), "paused");
	cr_assert(vmops_hv_resume(r, &e) == 0, "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(r), "running");
	log = fake_read_log(r);
	cr_expect(fake_find_call(log, "PUT /snapshot/load", "\"backend_type\":\"File\"", 0) >= 0);
	cr_expect(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fake_find_event(log, "snapshot-loaded"),
								"memory_intact")));
	cr_expect_str_eq(fake_str(cJSON_GetObjectItemCaseSensitive(fake_find_event(log, "vm-running"), "drives"),
				  "disk0"), copy, "the restored vm runs on the snapshotted vm's disk");
	cJSON_Delete(log);
	fake_destroy(r);
	vmops_spec_free(s);
	close(full);
	close(diff);
}

/* The VMM's log (the guest's console: Firecracker's stdout) stays under VMOPS_LOG_MAX. */
Test(firecracker, vmm_log_is_capped)
{
	struct vmops_hv *h;

	setenv("VMOPS_LOG_MAX", "4K", 1);
	setenv("VMOPS_FAKE_CONSOLE_BPS", "65536", 1);
	h = launch_ok(8);
	unsetenv("VMOPS_FAKE_CONSOLE_BPS");
	unsetenv("VMOPS_LOG_MAX");
	fake_assert_log_capped(h);
	fake_destroy(h);
}

/* --- the hinting lesson ------------------------------------------------------------ */

/* hint round started, then the drained snapshot; returns its result */
static int hinted_snapshot(struct vmops_hv *h, const char *sub, int drain_ms, int stop_ms,
			   struct vmops_error *e)
{
	struct vmops_snapshot_opts so = { .timeout_ms = 5000 };
	int fd = fake_open_dir(sub), r;

	cr_assert(vmops_hv_hint_start(h, e) == 0, "%s", e->msg);
	r = vmops_hv_snapshot_drained(h, fd, &so, drain_ms, stop_ms, false, e);
	close(fd);
	return r;
}

Test(firecracker, hinting_finishes_in_time)
{
	struct vmops_hv *h = launch_ok(10);
	struct vmops_error e = { 0 };
	cJSON *log;
	int pause;

	setenv("VMOPS_FAKE_HINT_MS", "200", 1);   /* read by the fake at start: already 200 */
	cr_assert(hinted_snapshot(h, "s", 5000, 1000, &e) == 0, "%s", e.msg);
	cr_expect(snapshot_intact("s"), "snapshot damaged");
	cr_expect_str_eq(fake_vm_status(h), "running");
	log = fake_read_log(h);
	pause = fake_find_call(log, "PATCH /vm", "\"Paused\"", 0);
	cr_assert(pause >= 0);
	cr_expect(fake_find_call(log, "PATCH /balloon/hinting/start", NULL, 0) < pause);
	cr_expect(fake_last_call(log, "GET /balloon/hinting/status") < pause);
	cr_expect_eq(fake_find_call(log, "PATCH /balloon/hinting/stop", NULL, 0), -1,
		     "a finished round was stopped");
	cr_expect(fake_find_event(log, "hinting-finished"));
	cr_expect(!fake_find_event(log, "memory-damaged"));
	cr_expect(fake_find_call(log, "PUT /snapshot/create", NULL, pause) > pause);
	cr_expect(fake_find_call(log, "PATCH /vm", "\"Resumed\"", pause) > pause);
	cJSON_Delete(log);
	fake_destroy(h);
}

Test(firecracker, hinting_hangs_and_is_stopped_before_the_pause)
{
	struct vmops_hv *h;
	struct vmops_error e = { 0 };
	cJSON *log;
	int stop, pause, snap;

	setenv("VMOPS_FAKE_HINT_MS", "-1", 1);    /* the round never ends by itself */
	h = launch_ok(11);
	cr_assert(hinted_snapshot(h, "s", 300, 1000, &e) == 0, "%s", e.msg);
	log = fake_read_log(h);
	stop = fake_find_call(log, "PATCH /balloon/hinting/stop", NULL, 0);
	pause = fake_find_call(log, "PATCH /vm", "\"Paused\"", 0);
	snap = fake_find_call(log, "PUT /snapshot/create", NULL, 0);
	cr_assert(stop >= 0, "the running round was never stopped");
	cr_assert(pause >= 0 && snap >= 0);
	cr_expect(stop < pause, "stopped after the pause (stop %d, pause %d)", stop, pause);
	cr_expect(pause < snap);
	cr_expect(!fake_find_event(log, "memory-damaged"), "hinting ran during the snapshot");
	cr_expect(snapshot_intact("s"), "snapshot damaged");
	cr_expect_str_eq(fake_vm_status(h), "running");
	cJSON_Delete(log);
	fake_destroy(h);
}

Test(firecracker, hinting_left_running_damages_the_snapshot)
{
	/* the fake's side of the lesson: without the stop, the memory is lost */
	struct vmops_hv *h;
	struct vmops_snapshot_opts so = { .timeout_ms = 5000 };
	struct vmops_error e = { 0 };
	int fd;
	cJSON *log;

	setenv("VMOPS_FAKE_HINT_MS", "-1", 1);
	h = launch_ok(12);
	fd = fake_open_dir("s");
	cr_assert(vmops_hv_hint_start(h, &e) == 0, "%s", e.msg);
	cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
	cr_assert(vmops_hv_snapshot(h, fd, &so, &e) == 0, "%s", e.msg);
	cr_expect(!snapshot_intact("s"));
	log = fake_read_log(h);
	cr_expect(fake_find_event(log, "memory-damaged"));
	cJSON_Delete(log);
	close(fd);
	fake_destroy(h);
}

Test(firecracker, hinting_stop_fails_aborts_and_leaves_running)
{
	static const char *const modes[] = { "error", "hang", "drop" };
	static const int codes[] = { VMOPS_EXIT_HYPERVISOR, VMOPS_EXIT_TIMEOUT, VMOPS_EXIT_HYPERVISOR };

	setenv("VMOPS_FAKE_HINT_MS", "-1", 1);
	for (int m = 0; m < 3; m++) {
		char f[96], sub[16];
		struct vmops_error e = { 0 };
		struct vmops_hv *h;
		cJSON *log;

		snprintf(f, sizeof(f), "PATCH /balloon/hinting/stop:%s", modes[m]);
		setenv("VMOPS_FAKE_FAULT", f, 1);
		h = launch_ok(20 + m);
		snprintf(sub, sizeof(sub), "s%d", m);
		cr_assert(hinted_snapshot(h, sub, 200, 500, &e) < 0, "%s: snapshot went on", modes[m]);
		cr_expect_eq(e.code, codes[m], "%s: code %d: %s", modes[m], e.code, e.msg);
		cr_expect(strstr(e.msg, "could not be stopped"), "%s", e.msg);
		cr_expect_str_eq(fake_vm_status(h), "running", "%s", modes[m]);
		log = fake_read_log(h);
		cr_expect(fake_find_call(log, "PATCH /balloon/hinting/stop", NULL, 0) >= 0);
		cr_expect_eq(fake_find_call(log, "PATCH /vm", NULL, 0), -1, "%s: paused anyway", modes[m]);
		cr_expect_eq(fake_find_call(log, "PUT /snapshot/create", NULL, 0), -1, "%s: snapshot anyway",
			     modes[m]);
		cJSON_Delete(log);
		fake_destroy(h);
	}
	unsetenv("VMOPS_FAKE_FAULT");
}

Test(firecracker, hinting_status_fails_round_is_stopped)
{
	struct vmops_hv *h;
	struct vmops_error e = { 0 };
	cJSON *log;
	int stop, pause;

	setenv("VMOPS_FAKE_HINT_MS", "-1", 1);
	/* the first status fails: the round is stopped, and seen stopped */
	setenv("VMOPS_FAKE_FAULT", "GET /balloon/hinting/status:error:1", 1);
	h = launch_ok(25);
	cr_assert(hinted_snapshot(h, "s", 5000, 1000, &e) == 0, "%s", e.msg);
	log = fake_read_log(h);
	stop = fake_find_call(log, "PATCH /balloon/hinting/stop", NULL, 0);
	pause = fake_find_call(log, "PATCH /vm", "\"Paused\"", 0);
	cr_expect(stop >= 0 && stop < pause, "stop %d pause %d", stop, pause);
	cr_expect(snapshot_intact("s"));
	cJSON_Delete(log);
	fake_destroy(h);
	unsetenv("VMOPS_FAKE_FAULT");
}

/* A stop is not done until the guest has stopped reporting: the driver reads
 * the status after the PATCH, and one that never stops fails the stop. */
Test(firecracker, hinting_stop_waits_until_the_guest_stopped)
{
	struct vmops_hv *h;
	struct vmops_error e = { 0 };
	cJSON *log;
	int stop, pause;

	setenv("VMOPS_FAKE_HINT_MS", "-1", 1);
	setenv("VMOPS_FAKE_HINT_STOP_MS", "1000", 1);  /* the guest sees the stop late */
	h = launch_ok(26);
	cr_assert(hinted_snapshot(h, "s", 100, 3000, &e) == 0, "%s", e.msg);
	log = fake_read_log(h);
	stop = fake_find_call(log, "PATCH /balloon/hinting/stop", NULL, 0);
	pause = fake_find_call(log, "PATCH /vm", "\"Paused\"", 0);
	cr_assert(stop >= 0 && pause > stop, "stop %d pause %d", stop, pause);
	{
		int seen = fake_find_call(log, "GET /balloon/hinting/status", NULL, stop);

		cr_expect(seen > stop && seen < pause, "no status read between the stop and the pause");
	}
	cr_expect(!fake_find_event(log, "memory-damaged"), "paused while the guest still reported");
	cr_expect(snapshot_intact("s"));
	cJSON_Delete(log);
	fake_destroy(h);
	unsetenv("VMOPS_FAKE_HINT_STOP_MS");
}

Test(firecracker, hinting_never_stops_aborts_and_leaves_running)
{
	struct vmops_hv *h;
	struct vmops_error e = { 0 };
	cJSON *log;

	setenv("VMOPS_FAKE_HINT_MS", "-1", 1);
	setenv("VMOPS_FAKE_HINT_STOP_MS", "-1", 1);    /* the guest never sees the stop */
	h = launch_ok(27);
	cr_assert(hinted_snapshot(h, "s", 100, 400, &e) < 0, "snapshot went on");
	cr_expect_eq(e.code, VMOPS_EXIT_TIMEOUT, "code %d: %s", e.code, e.msg);
	cr_expect(strstr(e.msg, "still running"), "%s", e.msg);
	cr_expect_str_eq(fake_vm_status(h), "running");
	log = fake_read_log(h);
	cr_expect(fake_find_call(log, "PATCH /balloon/hinting/stop", NULL, 0) >= 0);
	cr_expect_eq(fake_find_call(log, "PATCH /vm", NULL, 0), -1, "paused anyway");
	cr_expect_eq(fake_find_call(log, "PUT /snapshot/create", NULL, 0), -1, "snapshot anyway");
	cJSON_Delete(log);
	cr_expect_eq(fake_file_size("s", "memory"), -1, "memory file written");
	fake_destroy(h);
	unsetenv("VMOPS_FAKE_HINT_STOP_MS");
}

/* Without hinting on the balloon (or without a balloon) there is no round:
 * the status call fails, which is no reason to stop anything. */
Test(firecracker, no_hinting_configured_is_no_round)
{
	char json[1024];
	struct vmops_spec *s;
	struct vmops_hv *h;
	struct vmops_error e = { 0 };
	cJSON *log;

	snprintf(json, sizeof(json), "{\"hypervisor\":\"firecracker\",\"memory_mb\":16,\"vcpus\":1,"
		 "\"kernel\":\"%s\"}", kernel);
	s = vmops_spec_parse(json, (size_t)-1, NULL);
	cr_assert(s);
	h = fake_launch(s, 28, &e);
	vmops_spec_free(s);
	cr_assert(h, "%s", e.msg);
	cr_assert(vmops_hv_hint_drain(h, 100, 400, NULL, &e) == VMOPS_HINT_NONE, "%s", e.msg);
	log = fake_read_log(h);
	cr_expect_eq(fake_find_call(log, "PATCH /balloon/hinting/stop", NULL, 0), -1);
	cJSON_Delete(log);
	fake_destroy(h);
}

/* --- faults at every call ------------------------------------------------------------ */

static const char *const modes[] = { "error", "hang", "drop", "slow" };

static int expected_code(const char *mode)
{
	return !strcmp(mode, "hang") ? VMOPS_EXIT_TIMEOUT
	       : !strcmp(mode, "slow") ? 0 : VMOPS_EXIT_HYPERVISOR;
}

Test(firecracker, faults_at_launch)
{
	static const char *const calls[] = {
		"GET /", "PUT /machine-config", "PUT /boot-source", "PUT /drives/{drive_id}",
		"PUT /balloon", "PUT /actions",
	};
	int id = 40;

	setenv("VMOPS_FAKE_SLOW_MS", "300", 1);
	for (size_t c = 0; c < sizeof(calls) / sizeof(calls[0]); c++)
		for (size_t m = 0; m < 4; m++) {
			char f[96];
			struct vmops_error e = { 0 };
			struct vmops_hv *h;

			snprintf(f, sizeof(f), "%s:%s", calls[c], modes[m]);
			setenv("VMOPS_FAKE_FAULT", f, 1);
			h = launch(id++, &e);
			if (!expected_code(modes[m])) {
				cr_expect(h, "%s: %s", f, e.msg);
				if (h)
					fake_destroy(h);
				continue;
			}
			cr_expect(!h, "%s: launch succeeded", f);
			cr_expect_eq(e.code, expected_code(modes[m]), "%s: code %d: %s", f, e.code, e.msg);
			cr_expect(!fake_runs_under(id - 1), "%s: the vmm still runs", f);
			vmops_hv_free(h);
		}
	unsetenv("VMOPS_FAKE_FAULT");
}

typedef int (*op_fn)(struct vmops_hv *h, struct vmops_error *err);

static int snap_fd = -1;

static int op_pause(struct vmops_hv *h, struct vmops_error *e) { return vmops_hv_pause(h, e); }
static int op_resume(struct vmops_hv *h, struct vmops_error *e) { return vmops_hv_resume(h, e); }

static int op_status(struct vmops_hv *h, struct vmops_error *e)
{
	struct vmops_vm_status st;

	return vmops_hv_status(h, &st, e);
}

static int op_snapshot(struct vmops_hv *h, struct vmops_error *e)
{
	struct vmops_snapshot_opts so = { .timeout_ms = 0 };

	return vmops_hv_snapshot(h, snap_fd, &so, e);
}

static int op_balloon(struct vmops_hv *h, struct vmops_error *e)
{
	return vmops_hv_balloon_set(h, 2u << 20, e);
}

static int op_hint_start(struct vmops_hv *h, struct vmops_error *e)
{
	return vmops_hv_hint_start(h, e);
}

Test(firecracker, faults_at_each_call)
{
	static const struct {
		const char *call;
		op_fn op;
		bool paused_first;
		const char *found;
	} cases[] = {
		{ "PATCH /vm", op_pause, false, "running" },
		{ "PATCH /vm", op_resume, true, "paused" },
		{ "PUT /snapshot/create", op_snapshot, true, "paused" },
		{ "GET /", op_status, false, "running" },
		{ "PATCH /balloon", op_balloon, false, "running" },
		{ "PATCH /balloon/hinting/start", op_hint_start, false, "running" },
	};
	int id = 80;

	setenv("VMOPS_FAKE_SLOW_MS", "300", 1);
	snap_fd = fake_open_dir("faultsnap");
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
		for (size_t m = 0; m < 4; m++) {
			struct vmops_error e = { 0 };
			struct vmops_hv *h = launch_ok(id++);
			char f[96];
			int r;

			if (cases[c].paused_first)
				cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
			/* armed after launch: the fault is the next such call, once */
			snprintf(f, sizeof(f), "%s:%s:1", cases[c].call, modes[m]);
			cr_assert(fake_fault_arm(h, f));
			r = cases[c].op(h, &e);
			if (!expected_code(modes[m])) {
				cr_expect(r >= 0, "%s: %s", f, e.msg);
			} else {
				cr_expect(r < 0, "%s: succeeded", f);
				cr_expect_eq(e.code, expected_code(modes[m]), "%s: code %d: %s", f,
					     e.code, e.msg);
				cr_expect_str_eq(fake_vm_status(h), cases[c].found, "%s: not left as found", f);
			}
			fake_destroy(h);
		}
	close(snap_fd);
}

/*
 * The restore's calls (the load, then the drive swap) fail: the code, and
 * the VM never resumed (the caller destroys the VMM).  "slow" restores.
 */
Test(firecracker, faults_at_the_restore_calls)
{
	static const char *const calls[] = { "PUT /snapshot/load", "PATCH /drives/{drive_id}" };
	struct vmops_hv *h = launch_ok(90);
	struct vmops_snapshot_opts so = { .timeout_ms = 5000 };
	struct vmops_error e = { 0 };
	struct vmops_spec *s = spec16();
	int fd = fake_open_dir("rsnap"), id = 91;

	cr_assert(vmops_hv_pause(h, &e) == 0, "%s", e.msg);
	cr_assert(vmops_hv_snapshot(h, fd, &so, &e) == 0, "%s", e.msg);
	fake_destroy(h);
	setenv("VMOPS_FAKE_SLOW_MS", "300", 1);
	for (size_t c = 0; c < sizeof(calls) / sizeof(calls[0]); c++)
		for (size_t m = 0; m < 4; m++) {
			char f[96], rd[PATH_MAX];
			struct vmops_hv_launch_opts o = fake_opts_for(id++, rd, sizeof(rd));
			struct vmops_hv *r;
			int rc;

			snprintf(f, sizeof(f), "%s:%s:1", calls[c], modes[m]);
			setenv("VMOPS_FAKE_FAULT", f, 1);
			r = vmops_hv_launch_for_restore(s, &o, &e);
			unsetenv("VMOPS_FAKE_FAULT");
			cr_assert(r, "%s", e.msg);
			fake_track(r);
			rc = vmops_hv_restore(r, fd, 2000, &e);
			if (!expected_code(modes[m])) {
				cr_expect(rc == 0, "%s: %s", f, e.msg);
			} else {
				cr_expect(rc < 0, "%s: restored", f);
				cr_expect_eq(e.code, expected_code(modes[m]), "%s: code %d: %s", f, e.code, e.msg);
				cr_expect_str_neq(fake_vm_status(r), "running", "%s: the vm runs", f);
			}
			fake_destroy(r);
		}
	vmops_spec_free(s);
	close(fd);
}

/* --- vm-migrate (database: run through tests/run-one.sh) ------------------------------- */

static char *db_state(PGconn *c)
{
	PGresult *r = testdb_exec(c,
		"SELECT (SELECT count(*) FROM migrations) || '/' || (SELECT count(*) FROM vmms) || '/' ||"
		" (SELECT count(*) FROM reservations) || '/' ||"
		" (SELECT string_agg(name || ':' || status, ',' ORDER BY name) FROM sandboxes) || '/' ||"
		" (SELECT count(*) FROM scale_events WHERE ended_at IS NULL)");
	char *s = strdup(PQgetvalue(r, 0, 0));

	PQclear(r);
	return s;
}

Test(firecracker, vm_migrate_refuses_and_says_how)
{
	char ci[512], sql[1024];
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	struct testrun r;
	char *before, *after;

	snprintf(sql, sizeof(sql),
		 "INSERT INTO workers (name, memory_mb, vcpus, run_dir, state) VALUES"
		 " ('w1', 4096, 8, '%s/w1', 'active'), ('w2', 4096, 8, '%s/w2', 'active')", fake_dir, fake_dir);
	PQclear(testdb_exec(c, sql));
	/* the socket does not exist: a refusal must come before any attach */
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "register", "--sandbox", "fc1", "--org", "acme",
		"--worker", "w1", "--memory", "256M", "--vcpus", "1", "--hypervisor", "firecracker",
		"--control-socket", "/nonexistent-vmops/fc.sock");
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
	PQclear(testdb_exec(c, "UPDATE sandboxes SET launch_spec = '{\"hypervisor\":\"firecracker\","
				"\"memory_mb\":256,\"vcpus\":1,\"kernel\":\"/boot/vmlinux\"}'"));
	before = db_state(c);
	TESTRUN(&r, "vm-migrate", "--db", ci, "fc1");
	cr_expect_eq(r.status, VMOPS_EXIT_CONFLICT, "exit %d: %s", r.status, r.err);
	cr_expect(strstr(r.err, "firecracker has no live migration"), "%s", r.err);
	cr_expect(strstr(r.err, "snapshot-prep hibernate"), "%s", r.err);
	cr_expect_eq(testlib_lines(r.err), 1, "%s", r.err);
	cr_expect_str_eq(r.out, "");
	testrun_free(&r);
	after = db_state(c);
	cr_expect_str_eq(after, before, "the refusal changed the database");
	free(before);
	free(after);
	PQfinish(c);
}

/* ghost-reap finds this VMM by its command line: the fleet token names its
 * id and the API socket option names its socket. */
Test(firecracker, command_line_identifies_the_vmm)
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
	vmops_ghost_argv_sockets(VMOPS_HV_FIRECRACKER, argc - 1, argv + 1, ctl, sizeof(ctl), agent, sizeof(agent));
	cr_expect_str_eq(ctl, info->control_socket);
	free(argv);
	fake_destroy(h);
}

/* fc1 launched on w1 by vm-fleet, with "firecracker" on PATH the fake. */
static void fleet_launch_fc1(PGconn *c, const char *ci)
{
	char json[1024];
	const char *specf;
	struct testrun r;

	fake_fleet(c, "firecracker", "fake-firecracker");
	snprintf(json, sizeof(json), "{\"hypervisor\":\"firecracker\",\"memory_mb\":16,\"vcpus\":1,"
		 "\"kernel\":\"%s\",\"disks\":[{\"path\":\"%s\",\"readonly\":false}],"
		 "\"balloon\":{\"free_page_hint\":true}}\n", kernel, disk);
	specf = fake_write_file("fc1.json", json);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", "fc1", "--org", "acme",
		"--worker", "w1", "--spec", specf);
	cr_assert_eq(r.status, 0, "launch: %s", r.err);
	testrun_free(&r);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms v JOIN sandboxes s ON s.active_vmm_id = v.id"
			       " WHERE s.name = 'fc1' AND s.status = 'running' AND v.hypervisor = 'firecracker'"
			       " AND v.state = 'running' AND v.pid > 0 AND v.pid_start_time > 0"
			       " AND v.control_socket LIKE '%/vmops-vmm-%.sock'"), 1,
		     "launch did not record the vmm");
}

/* ghost-reap tells a Firecracker process by its executable, as QEMU's. */
Test(firecracker, ghost_reap_finds_it_by_its_executable)
{
	char ci[512];
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	fleet_launch_fc1(c, ci);
	fake_ghost_reap_finds(c, ci, "fc1", "firecracker");
	PQfinish(c);
}

Test(firecracker, vm_fleet_launch_records_and_destroys)
{
	char ci[512];
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	struct testrun r;

	fleet_launch_fc1(c, ci);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
			       " WHERE s.name = 'fc1' AND e.ended_at IS NULL"), 1);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "destroy", "fc1");
	cr_expect_eq(r.status, 0, "destroy: %s", r.err);
	testrun_free(&r);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
			       " WHERE s.name = 'fc1' AND e.ended_at IS NULL"), 0);
	cr_expect(!fake_runs_under_dir(), "a vmm outlived destroy");
	PQfinish(c);
}
