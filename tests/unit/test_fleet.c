/* SPDX-License-Identifier: MIT */
/* vm-fleet launch / destroy on real QEMU, and what the database records. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
		   "\"cmdline\":\"console=ttyS0 vmops.dirty_mb=8\",\"accel\":\"tcg\"}\n",
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
	cr_assert_neq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL), VMOPS_PROC_ALIVE);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'destroyed'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE state = 'destroyed'"), 1);
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
	/* the kernel does not exist: QEMU exits at once */
	TESTRUN(&r, "vm-fleet", "--db", ci, "launch", "--sandbox", "sb1", "--org", "acme", "--worker", "w1",
		"--spec", spec("bad", "qemu", "/nonexistent-vmops/vmlinuz", 192));
	cr_assert_eq(r.status, VMOPS_EXIT_HYPERVISOR, "%s", r.err);
	cr_assert(strstr(r.err, "could not open kernel file"), "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	/* not built in */
	TESTRUN(&r, "vm-fleet", "--db", ci, "launch", "--sandbox", "sb1", "--org", "acme", "--worker", "w1",
		"--spec", spec("fc", "firecracker", getenv("VMOPS_TEST_KERNEL"), 192));
	cr_assert_eq(r.status, VMOPS_EXIT_HYPERVISOR, "%s", r.err);
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
		FILE *f = fopen("/tmp/vmops-badspec.json", "w");
		fputs("{\"hypervisor\":\"qemu\",\"memory_mb\":\"lots\"}", f);
		fclose(f);
	}
	TESTRUN(&r, "vm-fleet", "--db", "host=/nonexistent-vmops", "launch", "--sandbox", "sb1", "--org", "acme",
		"--worker", "w1", "--spec", "/tmp/vmops-badspec.json");
	cr_assert_eq(r.status, VMOPS_EXIT_USAGE, "%s", r.err);
	testrun_free(&r);
	after = snapshot(c);
	cr_assert_str_eq(after, before, "a failed launch left rows behind");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'launch-failed'"), 1);
	/* the name is free again */
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", "sb1", "--org", "acme", "--worker", "w1",
		"--spec", spec("ok", "qemu", getenv("VMOPS_TEST_KERNEL"), 192));
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "destroy", "sb1");
	cr_assert_eq(r.status, 0, "%s", r.err);
	testrun_free(&r);
	free(before);
	free(after);
	PQfinish(c);
}
