/* SPDX-License-Identifier: MIT */
/* vm-fleet launch / destroy on real QEMU, and what the database records. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exitcodes.h"
#include "proc.h"
#include "testlib.h"

static char ci[512];
static char rundir[256];

static void kill_test_vms(void)
{
	testlib_kill_vms_under(rundir);
}

static PGconn *fleet(void)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char sql[512];

	snprintf(rundir, sizeof(rundir), "/tmp/vmops-ft.XXXXXX");
	cr_assert(mkdtemp(rundir));
	snprintf(sql, sizeof(sql), "INSERT INTO workers (name, memory_mb, vcpus, run_dir)"
		 " VALUES ('w1', 512, 2, '%s/w1')", rundir);
	PQclear(testdb_exec(c, sql));
	return c;
}

static const char *spec(const char *name, const char *hv, const char *kernel, int mem)
{
	static char path[300];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.json", rundir, name);
	f = fopen(path, "w");
	cr_assert(f);
	fprintf(f, "{\"hypervisor\":\"%s\",\"memory_mb\":%d,\"vcpus\":1,\"kernel\":\"%s\",\"initrd\":\"%s\","
		   "\"cmdline\":\"console=ttyS0 no_timer_check vmops.dirty_mb=8\",\"accel\":\"tcg\"}\n",
		hv, mem, kernel, getenv("VMOPS_TEST_INITRD"));
	fclose(f);
	return path;
}

static char *snapshot(PGconn *c)
{
	PGresult *r = testdb_exec(c,
		"SELECT (SELECT count(*) FROM sandboxes) || '/' || (SELECT count(*) FROM vmms) || '/' ||"
		" (SELECT count(*) FROM reservations) || '/' || (SELECT count(*) FROM scale_events)");
	char *s = strdup(PQgetvalue(r, 0, 0));

	PQclear(r);
	return s;
}

Test(fleet, launch_records_identity_reservation_and_billing, .timeout = 120, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	struct testrun r;
	long long pid, start;

	testlib_need_qemu();
	TESTRUN(&r, "vm-fleet", "--db", ci, "--json", "launch", "--sandbox", "sb1", "--org", "acme",
		"--worker", "w1", "--spec", spec("sb1", "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert(strstr(r.out, "\"launched\""), "%s", r.out);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id"
				  " WHERE s.status = 'running' AND v.state = 'running' AND s.target_vmm_id IS NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations r JOIN vmms v ON v.id = r.vmm_id"
				  " WHERE r.memory_mb = 192 AND r.worker_id = v.worker_id"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
				  " WHERE e.ended_at IS NULL AND e.vmm_id = s.active_vmm_id AND e.org_id = 'acme'"), 1);
	/* the recorded identity is the live process, and its argv carries the VMM id */
	pid = testdb_ll(c, "SELECT pid FROM vmms");
	start = testdb_ll(c, "SELECT pid_start_time FROM vmms");
	cr_assert_eq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL), VMOPS_PROC_ALIVE);
	{
		char **argv = NULL;
		int argc = 0;
		cr_assert_eq(vmops_proc_read_cmdline("/proc", (pid_t)pid, &argv, &argc, NULL), 0);
		cr_assert_eq(vmops_proc_vmm_id(argc, argv), testdb_ll(c, "SELECT id FROM vmms"));
		free(argv);
	}

	TESTRUN(&r, "vm-fleet", "--db", ci, "destroy", "sb1");
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_assert(strstr(r.out, "was_running: yes"), "%s", r.out);
	testrun_free(&r);
	cr_assert_neq(start, 0);
	{
		int st = vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL);
		cr_assert(st == VMOPS_PROC_DEAD || st == VMOPS_PROC_REUSED, "QEMU %lld after destroy: %d", pid, st);
	}
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'destroyed'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE state = 'destroyed'"), 1);
	{
		PGresult *rd = testdb_exec(c, "SELECT run_dir FROM vmms");
		cr_assert_neq(access(PQgetvalue(rd, 0, 0), F_OK), 0, "run directory %s left behind", PQgetvalue(rd, 0, 0));
		PQclear(rd);
	}
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 0);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 0);
	TESTRUN(&r, "vm-fleet", "--db", ci, "destroy", "sb1");
	cr_assert_eq(r.status, VMOPS_EXIT_CONFLICT, "%s", r.err);
	testrun_free(&r);
	PQfinish(c);
}

Test(fleet, failed_launches_change_nothing, .timeout = 120, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	struct testrun r;
	char *before, *after;

	testlib_need_qemu();
	before = snapshot(c);
	/* the kernel does not exist: refused by the launch-spec policy, nothing reserved */
	TESTRUN(&r, "vm-fleet", "--db", ci, "launch", "--sandbox", "sb1", "--org", "acme", "--worker", "w1",
		"--spec", spec("bad", "qemu", "/nonexistent-vmops/vmlinuz", 192));
	cr_assert_eq(r.status, VMOPS_EXIT_CONFLICT, "%s", r.err);
	cr_assert(strstr(r.err, "kernel /nonexistent-vmops/vmlinuz: does not exist"), "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	/* a hypervisor whose binary is not installed (no firecracker on PATH here) */
	{
		char *saved = strdup(getenv("PATH"));
		setenv("PATH", "/nonexistent-vmops", 1);
		TESTRUN(&r, "vm-fleet", "--db", ci, "launch", "--sandbox", "sb1", "--org", "acme",
			"--worker", "w1", "--spec", spec("fc", "firecracker", getenv("VMOPS_TEST_KERNEL"), 192));
		setenv("PATH", saved, 1);
		free(saved);
	}
	cr_assert_eq(r.status, VMOPS_EXIT_HYPERVISOR, "%s", r.err);
	cr_assert(strstr(r.err, "firecracker"), "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	/* too big for the worker */
	TESTRUN(&r, "vm-fleet", "--db", ci, "launch", "--sandbox", "sb1", "--org", "acme", "--worker", "w1",
		"--spec", spec("big", "qemu", getenv("VMOPS_TEST_KERNEL"), 1024));
	cr_assert_eq(r.status, VMOPS_EXIT_CONFLICT, "%s", r.err);
	cr_assert(strstr(r.err, "capacity exceeded"), "%s", r.err);
	testrun_free(&r);
	/* unknown worker */
	TESTRUN(&r, "vm-fleet", "--db", ci, "launch", "--sandbox", "sb1", "--org", "acme", "--worker", "w9",
		"--spec", spec("ok", "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
	cr_assert_eq(r.status, VMOPS_EXIT_NOTFOUND, "%s", r.err);
	testrun_free(&r);
	/* a malformed spec is a usage error before any database contact */
	{
		char bad[300];
		FILE *f;
		snprintf(bad, sizeof(bad), "%s/badspec.json", rundir);
		f = fopen(bad, "w");
		cr_assert(f);
		fputs("{\"hypervisor\":\"qemu\",\"memory_mb\":\"lots\"}", f);
		fclose(f);
		TESTRUN(&r, "vm-fleet", "--db", "host=/nonexistent-vmops", "launch", "--sandbox", "sb1", "--org",
			"acme", "--worker", "w1", "--spec", bad);
	}
	cr_assert_eq(r.status, VMOPS_EXIT_USAGE, "%s", r.err);
	testrun_free(&r);
	cr_assert_eq(testlib_count_vms_under(rundir), 0, "a failed launch left a QEMU running");
	after = snapshot(c);
	cr_assert_str_eq(after, before, "a failed launch left rows behind");
	/* the one launch that reached the hypervisor (missing binary) */
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'launch-failed'"), 1);
	/* the name is free again */
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", "sb1", "--org", "acme", "--worker", "w1",
		"--spec", spec("ok", "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
	cr_assert_eq(testlib_count_vms_under(rundir), 1, "the counter of leftover QEMUs does not see this one");
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "destroy", "sb1");
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
	free(before);
	free(after);
	PQfinish(c);
}

/* What is live: sandboxes not destroyed / VMMs not destroyed or failed /
 * reservations / open scale events. */
static char *live_snapshot(PGconn *c)
{
	PGresult *r = testdb_exec(c,
		"SELECT (SELECT count(*) FROM sandboxes WHERE status <> 'destroyed') || '/' ||"
		" (SELECT count(*) FROM vmms WHERE state NOT IN ('destroyed', 'failed')) || '/' ||"
		" (SELECT count(*) FROM reservations) || '/' ||"
		" (SELECT count(*) FROM scale_events WHERE ended_at IS NULL)");
	char *s = strdup(PQgetvalue(r, 0, 0));

	PQclear(r);
	return s;
}

/* Hypervisor processes (not zombies) whose command line names `dir`. */
static int count_hv(const struct vmops_proc_info *i, void *data)
{
	void **a = data;

	if (i->stat.state == 'Z' || i->stat.state == 'X')
		return 0;
	for (int k = 0; k < i->argc; k++)
		if (strstr(i->argv[k], (const char *)a[0])) {
			++*(int *)a[1];
			break;
		}
	return 0;
}

static int live_vms_under(const char *dir)
{
	int n = 0;
	void *a[2] = { (void *)(uintptr_t)dir, &n };

	cr_assert_eq(vmops_proc_scan("/proc", VMOPS_PROC_SCAN_HV_ONLY, count_hv, a, NULL), 0);
	return n;
}

/* Wait until the launch has recorded its process on the starting VMM. */
static long long wait_pid_recorded(PGconn *c, const char *sandbox, pid_t launcher)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT coalesce((SELECT v.pid FROM vmms v JOIN sandboxes s ON s.id = v.sandbox_id"
		 " WHERE s.name = '%s' AND v.state = 'starting' AND v.pid IS NOT NULL), -1)", sandbox);
	for (int i = 0; i < 600; i++) {
		long long pid = testdb_ll(c, sql);
		int st;

		if (pid > 0)
			return pid;
		cr_assert_eq(waitpid(launcher, &st, WNOHANG), 0, "vm-fleet launch ended early (status 0x%x)", st);
		usleep(100000);
	}
	cr_assert_fail("vm-fleet launch did not record a pid for %s within 60 s", sandbox);
	return -1;
}

static void use_qemu_hiding_qmp(void)
{
	char path[8192];

	snprintf(path, sizeof(path), "%s:%s", testlib_qemu_hiding_qmp(rundir), getenv("PATH"));
	setenv("PATH", path, 1);
}

/*
 * SIGINT, SIGTERM or SIGHUP while `vm-fleet launch` waits for a QEMU whose
 * guest runs but whose control socket never appears: the program stops the
 * QEMU, removes the sandbox, VMM and reservation it wrote (nothing billed,
 * nothing half-done; an audit row says so) and exits 12.
 */
Test(fleet, interrupted_launch_stops_qemu_and_records_nothing, .timeout = 400, .fini = kill_test_vms)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
	PGconn *c = fleet();

	testlib_need_qemu();
	use_qemu_hiding_qmp();
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		struct testproc p;
		struct testrun r;
		char name[32], *snap;
		long long pid, start;

		snprintf(name, sizeof(name), "int%zu", i);
		TESTRUN_START(&p, "vm-fleet", "--db", ci, "launch", "--sandbox", name, "--org", "acme", "--worker", "w1",
			      "--wait", "10m", "--spec", spec(name, "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
		pid = wait_pid_recorded(c, name, p.pid);
		start = testdb_ll(c, "SELECT pid_start_time FROM vmms WHERE pid IS NOT NULL");
		cr_assert_eq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL),
			     VMOPS_PROC_ALIVE);
		if (sigs[i] == SIGINT) {
			/* the guest itself is up: a real VM is being thrown away */
			PGresult *q = testdb_exec(c, "SELECT run_dir || '/serial.log' FROM vmms");
			testlib_wait_heartbeat(PQgetvalue(q, 0, 0), 0, 180, NULL);
			PQclear(q);
		}
		cr_assert_eq(kill(p.pid, sigs[i]), 0);
		testrun_finish(&p, &r);
		cr_assert_eq(r.status, VMOPS_EXIT_INTERRUPTED, "signal %d: exit %d: %s", sigs[i], r.status, r.err);
		cr_expect_eq(testlib_lines(r.err), 1, "%s", r.err);
		cr_expect(strstr(r.err, "interrupted") && strstr(r.err, "nothing is recorded"), "%s", r.err);
		testrun_free(&r);
		cr_assert_neq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL),
			      VMOPS_PROC_ALIVE, "signal %d: the QEMU survived", sigs[i]);
		cr_assert_eq(live_vms_under(rundir), 0, "signal %d: a QEMU survived", sigs[i]);
		snap = snapshot(c);
		cr_assert_str_eq(snap, "0/0/0/0", "signal %d: rows left behind (sandboxes/vmms/reservations/events)",
				 sigs[i]);
		free(snap);
	}
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'launch-interrupted'"), 3);
	PQfinish(c);
}

/*
 * A second Ctrl-C while an interrupted launch unwinds (the fault hook sends
 * it just before the QEMU is stopped): vm-fleet leaves at once, exit 12,
 * and its line names the launch and the way out; what it leaves is what the
 * line says (VMM starting with its pid, reservation held, QEMU running),
 * and that way out works: ghost-reap --action kill stops the QEMU and
 * repairs the rows.
 */
Test(fleet, second_interrupt_during_the_unwind_leaves_what_its_line_names, .timeout = 300, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	struct testproc p;
	struct testrun r;
	long long pid, start;

	testlib_need_qemu();
	use_qemu_hiding_qmp();
	setenv("VMOPS_HOST_ID", "fleet-test-host", 1);
	PQclear(testdb_exec(c, "UPDATE workers SET host_id = 'fleet-test-host'"));
	setenv("VMOPS_FAULT", "launch-stop:sigint", 1);
	TESTRUN_START(&p, "vm-fleet", "--db", ci, "launch", "--sandbox", "twice", "--org", "acme", "--worker", "w1",
		      "--wait", "10m", "--spec", spec("twice", "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
	unsetenv("VMOPS_FAULT");
	pid = wait_pid_recorded(c, "twice", p.pid);
	start = testdb_ll(c, "SELECT pid_start_time FROM vmms WHERE pid IS NOT NULL");
	cr_assert_eq(kill(p.pid, SIGINT), 0);
	testrun_finish(&p, &r);
	cr_assert_eq(r.status, VMOPS_EXIT_INTERRUPTED, "exit %d: %s", r.status, r.err);
	cr_assert(strstr(r.err, "vm-fleet: second interrupt: leaving at once, without cleaning up; the launch of"
				" sandbox twice on worker w1 is left unfinished") && strstr(r.err, "ghost-reap --action kill"),
		  "%s", r.err);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE state = 'starting' AND pid IS NOT NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 1);
	cr_assert_eq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL), VMOPS_PROC_ALIVE,
		     "the QEMU was stopped after all");
	/* what ghost-reap's --starting-timeout 1s reads: starting for longer than that */
	for (int i = 0; i < 100 && testdb_ll(c, "SELECT count(*) FROM vmms WHERE state = 'starting'"
					   " AND time_state_updated < now() - interval '1 second'") == 0; i++)
		usleep(100000);
	TESTRUN(&r, "ghost-reap", "--db", ci, "--worker", "w1", "--action", "kill", "--min-age", "0s",
		"--starting-timeout", "1s", "--grace", "2s");
	cr_assert_eq(r.status, VMOPS_EXIT_FIXED, "exit %d:\nstderr:\n%s\nstdout:\n%s", r.status, r.err, r.out);
	testrun_free(&r);
	cr_assert_neq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL), VMOPS_PROC_ALIVE,
		      "ghost-reap left the QEMU running");
	cr_assert_eq(live_vms_under(rundir), 0);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE state = 'failed'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 0);
	unsetenv("VMOPS_HOST_ID");
	PQfinish(c);
}

/*
 * A signal at any moment of a real launch: all or nothing.  Either the
 * launch completed (exit 0: the QEMU runs and is recorded, reserved and
 * billed), or nothing runs and nothing is recorded.
 */
Test(fleet, signal_at_any_moment_of_a_launch_is_all_or_nothing, .timeout = 400, .fini = kill_test_vms)
{
	static const int delays_ms[] = { 0, 20, 60, 120, 250, 400, 700, 1200, 2500 };
	PGconn *c = fleet();
	int completed = 0, undone = 0;

	testlib_need_qemu();
	for (size_t i = 0; i < sizeof(delays_ms) / sizeof(delays_ms[0]); i++) {
		struct testproc p;
		struct testrun r;
		char name[32], *snap;

		snprintf(name, sizeof(name), "any%zu", i);
		TESTRUN_START(&p, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", name, "--org", "acme",
			      "--worker", "w1", "--spec", spec(name, "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
		usleep((useconds_t)delays_ms[i] * 1000);
		kill(p.pid, i % 2 ? SIGINT : SIGTERM);
		testrun_finish(&p, &r);
		snap = live_snapshot(c);
		if (r.status == 0) {
			completed++;
			cr_assert_str_eq(snap, "1/1/1/1", "after %d ms: %s", delays_ms[i], r.err);
			cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id"
						  " JOIN scale_events e ON e.vmm_id = v.id AND e.ended_at IS NULL"
						  " WHERE s.status = 'running' AND v.state = 'running'"), 1);
			cr_assert_eq(live_vms_under(rundir), 1);
			testrun_free(&r);
			TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "destroy", name);
			cr_assert_eq(r.status, 0, "%s", r.err);
		} else {
			undone++;
			/* 12 once the handlers are set; killed by the signal before that */
			cr_assert(r.status == VMOPS_EXIT_INTERRUPTED || r.status == 128 + SIGTERM ||
				  r.status == 128 + SIGINT, "after %d ms: exit %d: %s", delays_ms[i], r.status, r.err);
			cr_assert_str_eq(snap, "0/0/0/0", "after %d ms: exit %d: rows left live", delays_ms[i], r.status);
			cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status <> 'destroyed'"), 0);
			cr_assert_eq(live_vms_under(rundir), 0, "after %d ms: exit %d: a QEMU survived", delays_ms[i],
				     r.status);
		}
		free(snap);
		testrun_free(&r);
	}
	cr_log_info("signal during launch: %d completed, %d undone", completed, undone);
	cr_expect_gt(undone, 0);
	PQfinish(c);
}

/* vm-fleet destroy never stops (or forgets) a VMM whose identity is unknown. */
Test(fleet, destroy_refuses_a_vmm_without_start_time, .timeout = 120, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	struct testrun r;
	long long pid, start;
	char *before, *after;

	testlib_need_qemu();
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", "sb1", "--org", "acme",
		"--worker", "w1", "--spec", spec("sb1", "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
	pid = testdb_ll(c, "SELECT pid FROM vmms");
	start = testdb_ll(c, "SELECT pid_start_time FROM vmms");
	/* as recorded by a system that could not read the start time, with a
	 * control socket that does not answer */
	PQclear(testdb_exec(c, "UPDATE vmms SET pid_start_time = 0, control_socket = '/nonexistent-vmops/qmp.sock'"));
	before = snapshot(c);
	TESTRUN(&r, "vm-fleet", "--db", ci, "destroy", "sb1");
	cr_assert_eq(r.status, VMOPS_EXIT_CONFLICT, "exit %d: %s", r.status, r.err);
	cr_expect(strstr(r.err, "no start time"), "%s", r.err);
	testrun_free(&r);
	cr_assert_eq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL), VMOPS_PROC_ALIVE,
		     "the VMM was stopped blind");
	after = snapshot(c);
	cr_assert_str_eq(after, before);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running'"), 1);
	free(before);
	free(after);
	PQfinish(c);
}

/* A spec with these files (disk may be NULL). */
static const char *spec_files(const char *name, const char *kernel, const char *initrd, const char *disk)
{
	static char path[300];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.json", rundir, name);
	f = fopen(path, "w");
	cr_assert(f);
	fprintf(f, "{\"hypervisor\":\"qemu\",\"memory_mb\":128,\"vcpus\":1,\"kernel\":\"%s\"", kernel);
	if (initrd)
		fprintf(f, ",\"initrd\":\"%s\"", initrd);
	if (disk)
		fprintf(f, ",\"disks\":[{\"path\":\"%s\",\"readonly\":true}]", disk);
	fputs("}\n", f);
	fclose(f);
	return path;
}

static void make_file(const char *path, mode_t mode)
{
	FILE *f = fopen(path, "w");

	cr_assert(f, "%s", path);
	fputs("not really a kernel\n", f);
	fclose(f);
	cr_assert_eq(chmod(path, mode), 0);
}

/* Refused with exit 10, one line naming `why`, nothing written (not even an audit row). */
static void assert_policy_refuses(PGconn *c, const char *specfile, const char *why)
{
	struct testrun r;
	char *before = snapshot(c);
	long long audits = testdb_ll(c, "SELECT count(*) FROM audit_log");
	char *after;

	TESTRUN(&r, "vm-fleet", "--db", ci, "launch", "--sandbox", "sbp", "--org", "acme", "--worker", "w1",
		"--spec", specfile);
	cr_assert_eq(r.status, VMOPS_EXIT_CONFLICT, "%s: exit %d: %s", why, r.status, r.err);
	cr_assert(strstr(r.err, why), "expected '%s' in: %s", why, r.err);
	cr_assert(strstr(r.err, "refusing to launch"), "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	after = snapshot(c);
	cr_assert_str_eq(after, before, "%s: a refused launch wrote rows", why);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), audits, "%s: audited", why);
	free(before);
	free(after);
	cr_assert_eq(testlib_count_vms_under(rundir), 0);
}

/*
 * The launch-spec policy: files come only from the worker's image
 * directories, are regular files owned by root or us and not writable by
 * others; a device node, a link, anything outside is refused before
 * anything is reserved.  Decided before any hypervisor starts: no QEMU needed.
 */
Test(fleet, launch_spec_policy_refuses_before_reserving, .timeout = 60, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	char img[300], k[400], k2[400], dev[400], lnk[400], sub[400], sql[600];

	snprintf(img, sizeof(img), "%s/images", rundir);
	cr_assert_eq(mkdir(img, 0755), 0);
	snprintf(k, sizeof(k), "%s/vmlinuz", img);
	make_file(k, 0644);
	snprintf(sql, sizeof(sql), "UPDATE workers SET image_dirs = ARRAY['%s']", img);
	PQclear(testdb_exec(c, sql));

	/* outside the worker's directories: a real root-owned file, and a device */
	assert_policy_refuses(c, spec_files("p1", "/etc/hostname", NULL, NULL), "outside the worker's image directories");
	assert_policy_refuses(c, spec_files("p2", k, NULL, "/dev/null"), "disk 0 /dev/null: outside");
	/* a link inside that leads outside, and a linked directory */
	snprintf(lnk, sizeof(lnk), "%s/link", img);
	cr_assert_eq(symlink("/etc/hostname", lnk), 0);
	assert_policy_refuses(c, spec_files("p3", lnk, NULL, NULL), "a symbolic link");
	snprintf(sub, sizeof(sub), "%s/etc", img);
	cr_assert_eq(symlink("/etc", sub), 0);
	snprintf(sub, sizeof(sub), "%s/etc/hostname", img);
	assert_policy_refuses(c, spec_files("p4", sub, NULL, NULL), "resolves outside");
	/* writable by others */
	snprintf(k2, sizeof(k2), "%s/loose", img);
	make_file(k2, 0666);
	assert_policy_refuses(c, spec_files("p5", k, k2, NULL), "initrd");
	assert_policy_refuses(c, spec_files("p6", k, k2, NULL), "writable by group or others");
	/* missing */
	snprintf(k2, sizeof(k2), "%s/missing", img);
	assert_policy_refuses(c, spec_files("p7", k2, NULL, NULL), "does not exist");
	if (geteuid() == 0) {
		/* a device node inside the directory, and another user's file */
		snprintf(dev, sizeof(dev), "%s/sda", img);
		cr_assert_eq(mknod(dev, S_IFBLK | 0600, makedev(7, 0)), 0, "mknod: %s", strerror(errno));
		assert_policy_refuses(c, spec_files("p8", k, NULL, dev), "a device node");
		snprintf(k2, sizeof(k2), "%s/theirs", img);
		make_file(k2, 0644);
		cr_assert_eq(chown(k2, 65534, 65534), 0);
		assert_policy_refuses(c, spec_files("p9", k2, NULL, NULL), "owned by uid 65534");
	}
	/* the default list (NULL) does not hold the test's directory unless $VMOPS_IMAGE_DIRS does */
	PQclear(testdb_exec(c, "UPDATE workers SET image_dirs = NULL"));
	setenv("VMOPS_IMAGE_DIRS", "/nonexistent-vmops", 1);
	assert_policy_refuses(c, spec_files("p10", k, NULL, NULL), "(default list; see vmops(7))");
	/* the schema refuses a list with / or /dev in it */
	cr_assert_str_eq(testdb_fail(c, "UPDATE workers SET image_dirs = ARRAY['/']"), "23514");
	cr_assert_str_eq(testdb_fail(c, "UPDATE workers SET image_dirs = ARRAY['/dev/disk']"), "23514");
	cr_assert_str_eq(testdb_fail(c, "UPDATE workers SET image_dirs = ARRAY['/srv/../dev']"), "23514");
	PQfinish(c);
}

static long long size_of(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/*
 * The serial log (and QEMU's own log) stay under the cap while the guest
 * runs: over it, the log is copied to serial.log.1 and emptied, and the
 * guest's heartbeat lines go on in serial.log.  On today's main the log
 * only grows and there is no serial.log.1.
 */
Test(fleet, serial_log_is_capped_while_the_guest_runs, .timeout = 240, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	struct testlib_guest g;
	struct testrun r;
	char dir[512], log[600], old[600];
	PGresult *res;
	long long s1 = -1;

	testlib_need_qemu();
	setenv("VMOPS_LOG_MAX", "4K", 1);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", "sb1", "--org", "acme", "--worker", "w1",
		"--spec", spec("sb1", "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
	res = testdb_exec(c, "SELECT run_dir FROM vmms WHERE id = 1");
	snprintf(dir, sizeof(dir), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	snprintf(log, sizeof(log), "%s/serial.log", dir);
	snprintf(old, sizeof(old), "%s/serial.log.1", dir);
	/* the kernel's boot messages alone are more than 4 KiB: rotated within seconds of the boot */
	for (int i = 0; i < 1200 && (s1 = size_of(old)) < 0; i++)
		usleep(100000);
	cr_assert_geq(s1, 0, "no serial.log.1 after 120 s: the log is not capped (serial.log is %lld bytes)",
		      size_of(log));
	cr_assert_leq(s1, 4096, "serial.log.1 is %lld bytes, over the cap", s1);
	/* the heartbeat goes on in serial.log, which stays near the cap */
	testlib_wait_heartbeat(log, 0, 120, &g);
	testlib_wait_heartbeat(log, g.last.n, 60, &g);
	cr_assert_leq(size_of(log), 4096 + 65536, "serial.log is %lld bytes", size_of(log));
	cr_assert_leq(size_of(old), 4096);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "destroy", "sb1");
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
	/* the run directory went with the VMM, rotated log included */
	cr_assert_neq(access(dir, F_OK), 0, "%s is still there", dir);
	PQfinish(c);
}

/* Run `cmd` (a shell command line) on a pseudo-terminal (script(1)); its whole output. */
static char *on_a_tty(const char *cmd)
{
	char line[8192];
	static char out[65536];
	size_t n = 0;
	FILE *p;

	snprintf(line, sizeof(line), "script -qefc \"%s\" /dev/null 2>&1", cmd);
	p = popen(line, "r");
	cr_assert(p);
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	pclose(p);
	return out;
}

/*
 * While `vm-fleet launch` waits for the VMM, a terminal shows a progress
 * line on stderr (here: a QEMU whose control socket never appears, a 4 s
 * wait); without a terminal there is none (the other cases' stderr).
 */
Test(fleet, launch_shows_progress_on_a_tty, .timeout = 120, .fini = kill_test_vms)
{
	PGconn *c = fleet();
	char cmd[4096];
	const char *out;

	testlib_need_qemu();
	use_qemu_hiding_qmp();
	snprintf(cmd, sizeof(cmd), "%s/vm-fleet --db '%s' launch --sandbox sbt --org acme --worker w1 --wait 4s --spec %s",
		 getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin", ci,
		 spec("sbt", "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
	out = on_a_tty(cmd);
	cr_assert(strstr(out, "\rvm-fleet: launching sbt on w1: waiting for the VMM (2s)"), "%s", out);
	cr_assert(strstr(out, "exit") || strstr(out, "timed out") || strstr(out, "vm-fleet: launch"), "%s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes"), 0);
	PQfinish(c);
}
