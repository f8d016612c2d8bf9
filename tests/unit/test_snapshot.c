/* SPDX-License-Identifier: MIT */
/*
 * snapshot-prep on real QEMU (TCG) with the test guest: its ext4 data disk,
 * its guest agent (and the agent's failure modes: vmops.qga=off | stopped |
 * slowfreeze), its memory check.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exitcodes.h"
#include "hv.h"
#include "hv_qemu.h"
#include "macro.h"
#include "proc.h"
#include "schema.h"
#include "qga.h"
#include "qmp.h"
#include "snapshot/snapshot.h"
#include "spec.h"
#include "vm.h"
#include "testlib.h"

static char dir[256];

/* Teardown, also after a failed assertion: no VM outlives the test; its
 * scratch directory (no mounts in it) goes too, unless VMOPS_KEEP_TMP is set. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void kill_test_vms(void)
{
	testlib_kill_vms_under(dir);
	if (dir[0] && !getenv("VMOPS_KEEP_TMP"))
		sh("rm -rf '%s'", dir);
}

static void mkscratch(void)
{
	snprintf(dir, sizeof(dir), "/tmp/vmops-st.XXXXXX");
	cr_assert(mkdtemp(dir));
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* A fresh ext4 image at DIR/name. */
static void make_disk(const char *name)
{
	cr_assert_eq(sh("truncate -s 64M %s/%s && mkfs.ext4 -q -F %s/%s", dir, name, dir, name), 0,
		     "mkfs.ext4 (e2fsprogs installed?)");
}

static struct vmops_spec *spec_for(const char *disk, const char *extra)
{
	char json[1024];
	struct vmops_error err = { 0 };
	struct vmops_spec *s;

	snprintf(json, sizeof(json),
		 "{\"hypervisor\":\"qemu\",\"memory_mb\":256,\"vcpus\":1,\"kernel\":\"%s\",\"initrd\":\"%s\","
		 "\"cmdline\":\"console=ttyS0 no_timer_check vmops.dirty_mb=8 %s\",\"accel\":\"tcg\""
		 "%s%s%s}",
		 getenv("VMOPS_TEST_KERNEL"), getenv("VMOPS_TEST_INITRD"), extra ? extra : "",
		 disk ? ",\"disks\":[{\"path\":\"" : "", disk ? disk : "", disk ? "\"}]" : "");
	s = vmops_spec_parse(json, (size_t)-1, &err);
	cr_assert_not_null(s, "%s", err.msg);
	return s;
}

static struct vmops_hv *boot(const struct vmops_spec *spec, const char *worker, int id)
{
	struct vmops_hv_launch_opts lo = { 0 };
	struct vmops_error err = { 0 };
	char rd[400];
	struct vmops_hv *h;

	snprintf(rd, sizeof(rd), "%s/%s", dir, worker);
	mkdir(rd, 0700);
	snprintf(rd, sizeof(rd), "%s/%s/vmm-%d", dir, worker, id);
	lo.run_dir = rd;
	lo.vmm_id = (uint64_t)id;
	lo.auto_accel = VMOPS_ACCEL_TCG;
	lo.die_with_parent = true;
	h = vmops_hv_launch(spec, &lo, &err);
	cr_assert_not_null(h, "%s", err.msg);
	cr_assert_eq(vmops_hv_wait_ready(h, 30000, &err), 0, "%s", err.msg);
	return h;
}

/* Last VMOPS-DATA line of a serial log: n, ok, bad (n = -1: none). */
struct data_state {
	long n, ok, bad, lines;
};

static void data_read(const char *log, struct data_state *d)
{
	FILE *f = fopen(log, "r");
	char line[1024];

	memset(d, 0, sizeof(*d));
	d->n = -1;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *p = strstr(line, "VMOPS-DATA ");
		long n, ok, bad;

		if (p && sscanf(p, "VMOPS-DATA n=%ld ok=%ld bad=%ld", &n, &ok, &bad) == 3) {
			d->n = n;
			d->ok = ok;
			d->bad += bad > d->bad ? bad - d->bad : 0;
			d->lines++;
		}
	}
	fclose(f);
}

/* Wait until the data writer reports a record above `above`; all checks OK. */
static long wait_data(const char *log, long above, int timeout_s)
{
	struct data_state d;

	for (int i = 0; i < timeout_s * 5; i++) {
		data_read(log, &d);
		cr_assert(d.lines == 0 || (d.ok == 1 && d.bad == 0), "%s: data check failed (n=%ld)", log, d.n);
		if (d.n > above)
			return d.n;
		usleep(200000);
	}
	cr_assert_fail("%s: no data record above %ld within %d s (last %ld)", log, above, timeout_s, d.n);
	return -1;
}

static int freeze_status(struct vmops_hv *h)
{
	struct vmops_error err = { 0 };
	struct vmops_qga *g = vmops_qga_connect(vmops_hv_info(h)->agent_socket, 5000, &err);
	int st;

	cr_assert_not_null(g, "%s", err.msg);
	cr_assert_eq(vmops_qga_sync(g, 30000, &err), 0, "%s", err.msg);
	st = vmops_qga_fsfreeze_status(g, 10000, &err);
	cr_assert_geq(st, 0, "%s", err.msg);
	vmops_qga_close(g);
	return st;
}

static void assert_running(struct vmops_hv *h)
{
	struct vmops_vm_status st;
	struct vmops_error err = { 0 };

	cr_assert_eq(vmops_hv_status(h, &st, &err), 0, "%s", err.msg);
	cr_assert(st.running, "vm is %s, not running", st.status);
}

/* e2fsck -fn on a copy of a disk taken while the guest's fs is frozen. */
static void assert_fsck_clean_frozen(struct vmops_hv *h, const char *disk)
{
	struct vmops_error err = { 0 };

	cr_assert_eq(vmops_hv_quiesce(h, 30000, 30000, &err), 1, "freeze: %s", err.msg);
	cr_assert_eq(sh("cp --sparse=always %s %s.fsck", disk, disk), 0);
	cr_assert_geq(vmops_hv_thaw(h, 30000, 30000, &err), 1, "thaw: %s", err.msg);
	cr_assert_eq(sh("e2fsck -fn %s.fsck >%s.fsck.log 2>&1", disk, disk), 0,
		     "e2fsck not clean (see %s.fsck.log)", disk);
	/* The records on the disk are whole: every slot file consistent. */
	cr_assert_eq(sh("rm -rf %s.w.d && mkdir -p %s.w.d && debugfs -R 'rdump /w %s.w.d' %s.fsck >/dev/null 2>&1",
			disk, disk, disk, disk), 0);
	cr_assert_eq(sh("cd %s.w.d/w && n=0 && for f in *; do case $f in *.new) continue;; esac;"
			" [ $(uniq $f | wc -l) = 1 ] && [ $(wc -c <$f) = 45056 ] || exit 1;"
			" set -- $(head -n 1 $f); [ $((1$2 %% 10000000000 %% 64)) = $f ] || exit 1;"
			" n=$((n + 1)); done; [ $n -gt 0 ]", disk), 0, "inconsistent record on %s", disk);
}

/* ---- snapshot -> restore on another worker ------------------------------------------ */

Test(snapshot, restore_elsewhere_keeps_memory_and_ext4_data, .timeout = 900, .fini = kill_test_vms)
{
	struct vmops_prepare_opts po = { .agent_ms = 30000, .prepare_ms = 30000 };
	struct vmops_error err = { 0 };
	struct vmops_prep p;
	struct vmops_hv *src, *dst;
	struct testlib_guest g0;
	const char *names[VMOPS_SNAP_UNDO_MAX];
	char disk[400], disk2[400], snap[400], log1[4200], log2[4200];
	struct vmops_spec *spec, *spec2;
	size_t n = 0;
	long rec;
	int dfd;

	testlib_need_qemu();
	mkscratch();
	make_disk("data.img");
	snprintf(disk, sizeof(disk), "%s/data.img", dir);
	spec = spec_for(disk, NULL);
	src = boot(spec, "w1", 1);
	snprintf(log1, sizeof(log1), "%s/serial.log", vmops_hv_info(src)->run_dir);
	testlib_wait_heartbeat(log1, 2, 120, &g0);
	rec = wait_data(log1, 8, 300);

	/* The guest as last seen before the snapshot: the restored one goes on from there. */
	testlib_guest_read(log1, &g0);
	cr_assert_eq(vmops_prepare(&p, src, &po, &err), 0, "%s", err.msg);
	cr_assert_eq(p.frozen, 1, "filesystems frozen: %d", p.frozen);
	snprintf(snap, sizeof(snap), "%s/snap", dir);
	cr_assert_eq(mkdir(snap, 0700), 0);
	dfd = open(snap, O_RDONLY | O_DIRECTORY);
	cr_assert_eq(vmops_prep_snapshot(&p, dfd, spec, 120000, names, &n, &err), 0, "%s", err.msg);
	cr_assert_eq(n, 2);
	cr_assert_str_eq(names[0], "vmstate");
	cr_assert_str_eq(names[1], "disk0.img");
	cr_assert_eq(vmops_prep_release(&p, &err), 0, "%s", err.msg);
	assert_running(src);
	cr_assert_eq(freeze_status(src), VMOPS_QGA_THAWED);
	/* The copy taken while frozen and paused is a clean filesystem. */
	cr_assert_eq(sh("e2fsck -fn %s/disk0.img >/dev/null 2>&1", snap), 0, "snapshot disk not clean");
	testlib_wait_heartbeat(log1, g0.last.n + 2, 60, NULL);

	/* The source goes away (as in hibernate); the copy restores on w2. */
	cr_assert_eq(vmops_hv_destroy(src, 10000, &err), 0, "%s", err.msg);
	vmops_hv_free(src);
	snprintf(disk2, sizeof(disk2), "%s/data2.img", dir);
	cr_assert_eq(sh("cp --sparse=always %s/disk0.img %s", snap, disk2), 0);
	spec2 = spec_for(disk2, NULL);
	{
		struct vmops_hv_launch_opts lo = { 0 };
		char rd[400];

		snprintf(rd, sizeof(rd), "%s/w2", dir);
		mkdir(rd, 0700);
		snprintf(rd, sizeof(rd), "%s/w2/vmm-2", dir);
		lo.run_dir = rd;
		lo.vmm_id = 2;
		lo.auto_accel = VMOPS_ACCEL_TCG;
		lo.die_with_parent = true;
		dst = vmops_hv_launch_for_restore(spec2, &lo, &err);
		cr_assert_not_null(dst, "%s", err.msg);
	}
	cr_assert_eq(vmops_hv_restore(dst, dfd, 120000, &err), 0, "%s", err.msg);
	{
		struct vmops_vm_status st;

		cr_assert_eq(vmops_hv_status(dst, &st, &err), 0, "%s", err.msg);
		cr_assert(!st.running, "restored vm runs before resume (%s)", st.status);
	}
	/* The snapshot holds a frozen guest: resume, then thaw it. */
	cr_assert_eq(vmops_prep_recover(dst, &po, &err), 0, "%s", err.msg);
	assert_running(dst);
	cr_assert_eq(freeze_status(dst), VMOPS_QGA_THAWED);
	snprintf(log2, sizeof(log2), "%s/serial.log", vmops_hv_info(dst)->run_dir);
	testlib_assert_guest_continues(log2, g0.boot_sum, &g0.last, 120, NULL);
	wait_data(log2, rec + 8, 300);
	assert_fsck_clean_frozen(dst, disk2);
	close(dfd);
	vmops_hv_destroy(dst, 10000, &err);
	vmops_hv_free(dst);
	vmops_spec_free(spec);
	vmops_spec_free(spec2);
}

/* ---- timeouts: each its own, VM left running and thawed ------------------------------- */

static void timeout_case(const char *mode, struct vmops_prepare_opts po, const char *want_msg,
			 bool check_thawed)
{
	struct vmops_error err = { 0 };
	struct vmops_prep p;
	struct vmops_hv *h;
	struct vmops_spec *spec;
	char disk[400], log[4200];
	long rec;

	testlib_need_qemu();
	mkscratch();
	make_disk("data.img");
	snprintf(disk, sizeof(disk), "%s/data.img", dir);
	spec = spec_for(disk, mode);
	h = boot(spec, "w1", 1);
	snprintf(log, sizeof(log), "%s/serial.log", vmops_hv_info(h)->run_dir);
	testlib_wait_heartbeat(log, 2, 120, NULL);
	rec = wait_data(log, 0, 300);

	cr_assert_eq(vmops_prepare(&p, h, &po, &err), -1, "prepare succeeded with qga=%s", mode);
	cr_assert_eq(err.code, VMOPS_EXIT_TIMEOUT, "exit code %d: %s", err.code, err.msg);
	cr_assert(strstr(err.msg, want_msg), "wrong timeout: %s", err.msg);
	/* The other budget (60 s) was not the one that ran out. */
	cr_assert(!strstr(err.msg, "60000"), "%s", err.msg);
	cr_assert_str_eq(p.failed_step, "quiesce");
	assert_running(h);
	if (check_thawed)
		cr_assert_eq(freeze_status(h), VMOPS_QGA_THAWED);
	/* The data writer goes on: nothing stays frozen. */
	wait_data(log, rec + 8, 300);
	vmops_hv_destroy(h, 10000, &err);
	vmops_hv_free(h);
	vmops_spec_free(spec);
}

Test(snapshot, agent_missing_hits_the_agent_timeout, .timeout = 900, .fini = kill_test_vms)
{
	timeout_case("vmops.qga=off",
		     (struct vmops_prepare_opts){ .agent_ms = 2000, .prepare_ms = 60000, .unwind_ms = 3000 },
		     "agent timeout 2000 ms: qga", false);
}

Test(snapshot, agent_hangs_hits_the_agent_timeout, .timeout = 900, .fini = kill_test_vms)
{
	timeout_case("vmops.qga=stopped",
		     (struct vmops_prepare_opts){ .agent_ms = 2000, .prepare_ms = 60000, .unwind_ms = 3000 },
		     "agent timeout 2000 ms: qga", false);
}

Test(snapshot, prepare_hangs_hits_the_prepare_timeout_and_thaws, .timeout = 900, .fini = kill_test_vms)
{
	timeout_case("vmops.qga=slowfreeze vmops.freeze_delay_s=15",
		     (struct vmops_prepare_opts){ .agent_ms = 60000, .prepare_ms = 2000, .unwind_ms = 90000 },
		     "prepare timeout 2000 ms: qga", true);
}

/* ---- the program, against the fleet database ------------------------------------------ */

static char ci[512];

/* Workers w1 and w2; sandbox sb1 launched on w1 with an ext4 data disk. */
static PGconn *fleet_with_guest(const char *extra)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char sql[1024], spec[600];
	struct testrun r;
	FILE *f;

	testlib_need_qemu();
	mkscratch();
	make_disk("data.img");
	snprintf(sql, sizeof(sql),
		 "INSERT INTO workers (name, memory_mb, vcpus, run_dir, state) VALUES"
		 " ('w1', 4096, 8, '%s/w1', 'active'), ('w2', 4096, 8, '%s/w2', 'active')", dir, dir);
	PQclear(testdb_exec(c, sql));
	snprintf(spec, sizeof(spec), "%s/sb1.json", dir);
	f = fopen(spec, "w");
	cr_assert(f);
	fprintf(f, "{\"hypervisor\":\"qemu\",\"memory_mb\":256,\"vcpus\":1,\"kernel\":\"%s\",\"initrd\":\"%s\","
		   "\"cmdline\":\"console=ttyS0 no_timer_check vmops.dirty_mb=8 %s\",\"accel\":\"tcg\","
		   "\"disks\":[{\"path\":\"%s/data.img\"}]}\n",
		getenv("VMOPS_TEST_KERNEL"), getenv("VMOPS_TEST_INITRD"), extra ? extra : "", dir);
	fclose(f);
	TESTRUN(&r, "vm-fleet", "--db", ci, "-q", "launch", "--sandbox", "sb1", "--org", "acme",
		"--worker", "w1", "--spec", spec);
	cr_assert_eq(r.status, 0, "launch: %s", r.err);
	testrun_free(&r);
	return c;
}

static struct vmops_hv *attach_sb1(PGconn *c, char *log, size_t len)
{
	struct vmops_vmm_info info;
	struct vmops_error err = { 0 };
	struct vmops_hv *h;
	long long id = testdb_ll(c, "SELECT active_vmm_id FROM sandboxes WHERE name = 'sb1'");

	cr_assert_eq(vmops_vm_load_info(c, id, &info, &err), 0, "%s", err.msg);
	h = vmops_hv_attach(&info, 10000, &err);
	cr_assert_not_null(h, "%s", err.msg);
	snprintf(log, len, "%s/serial.log", info.run_dir);
	return h;
}

Test(snapshot, cli_snapshot_pipe_restore_on_another_worker, .timeout = 900, .fini = kill_test_vms)
{
	PGconn *c = fleet_with_guest(NULL);
	struct vmops_error err = { 0 };
	struct testlib_guest g0;
	struct vmops_hv *h;
	char log[4200], log2[600], cmd[8192], bin[512];
	long rec;

	h = attach_sb1(c, log, sizeof(log));
	testlib_wait_heartbeat(log, 2, 120, NULL);
	rec = wait_data(log, 8, 300);
	testlib_guest_read(log, &g0);
	/* Release the QMP socket for the program. */
	vmops_hv_free(h);

	/* Bundle to stdout, restored from stdin on w2: one shell pipeline. */
	snprintf(bin, sizeof(bin), "%s", getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin");
	snprintf(cmd, sizeof(cmd),
		 "%s/snapshot-prep --db '%s' -q snapshot --sandbox sb1 -o - --work-dir %s 2>%s/snap.err |"
		 " %s/snapshot-prep --json restore -i - --run-dir %s/w2/r1 --vmm-id 42 >%s/restore.out 2>%s/restore.err",
		 bin, ci, dir, dir, bin, dir, dir, dir);
	cr_assert_eq(sh("%s", cmd), 0, "pipeline failed (see %s/snap.err, restore.err)", dir);
	h = attach_sb1(c, log, sizeof(log));
	assert_running(h);
	cr_assert_eq(freeze_status(h), VMOPS_QGA_THAWED);
	cr_assert_eq(vmops_hv_destroy(h, 10000, &err), 0, "%s", err.msg);
	vmops_hv_free(h);
	/* The restored guest goes on from the snapshot, memory and data intact. */
	snprintf(log2, sizeof(log2), "%s/w2/r1/vmm/serial.log", dir);
	testlib_assert_guest_continues(log2, g0.boot_sum, &g0.last, 120, NULL);
	wait_data(log2, rec + 8, 300);
	cr_assert_eq(sh("grep -q '\"pid\"' %s/restore.out", dir), 0);
	cr_assert_eq(sh("ls %s | grep -c snapshot-prep. | grep -qx 0", dir), 0, "staging left behind");
	PQfinish(c);
}

/* ---- live snapshot (QEMU background-snapshot) ----------------------------------------- */

/* The process `pid` is stopped (SIGSTOP): /proc/PID/stat says T. */
static bool proc_stopped(pid_t pid)
{
	char path[64], buf[512], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (!(f = fopen(path, "r")))
		return false;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] == 'T';
}

/* The number in file dir/name, -1 if none (yet). */
static long read_long(const char *name)
{
	char path[600];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((f = fopen(path, "r"))) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

/*
 * snapshot --live: the guest runs while its state is written.  The test
 * stops the program (SIGSTOP) as soon as the state file exists in its
 * staging directory and before any disk copy: QEMU writes on by itself,
 * but only snapshot-prep would resume a paused VM.  The guest must go on
 * printing heartbeats while the program is stopped (with a paused snapshot
 * it stays paused).  Then the bundle restores on w2 with memory and data
 * intact; the source runs, thawed, background-snapshot off again.
 */
Test(snapshot, cli_live_snapshot_guest_runs_during_the_write, .timeout = 900, .fini = kill_test_vms)
{
	PGconn *c = fleet_with_guest(NULL);
	struct vmops_error err = { 0 };
	struct testlib_guest g0, g1;
	struct vmops_hv *h;
	char log[4200], log2[600], bin[512];
	long rec, beat, pid = -1, rc = -1;
	bool on = true;
	int have;

	h = attach_sb1(c, log, sizeof(log));
	testlib_wait_heartbeat(log, 2, 120, NULL);
	rec = wait_data(log, 8, 300);
	testlib_guest_read(log, &g0);
	vmops_hv_free(h);
	snprintf(bin, sizeof(bin), "%s", getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin");
	cr_assert_eq(sh("( sh -c 'echo $$ >%s/live.pid; exec %s/snapshot-prep"
			" --db \"$1\" --json snapshot --live --sandbox sb1 -o %s/live.vmops --work-dir %s"
			" >%s/live.out 2>%s/live.err' sh '%s'; echo $? >%s/live.rc ) &",
			dir, bin, dir, dir, dir, dir, ci, dir), 0);
	for (int i = 0; i < 60000 && (pid <= 0 || sh("test -e %s/snapshot-prep.*/vmstate", dir) != 0); i++) {
		usleep(10000);
		pid = read_long("live.pid");
		cr_assert_lt(read_long("live.rc"), 0, "snapshot-prep ended early (see %s/live.err)", dir);
	}
	cr_assert_eq(kill((pid_t)pid, SIGSTOP), 0);
	for (int i = 0; i < 500 && !proc_stopped((pid_t)pid); i++)
		usleep(10000);
	cr_assert(proc_stopped((pid_t)pid));
	cr_assert_neq(sh("ls %s/snapshot-prep.*/disk0.img >/dev/null 2>&1", dir), 0,
		      "stopped too late: the disk copy had begun (a paused VM may have been resumed)");
	/* Writing the state, the program stopped: the guest runs on. */
	testlib_guest_read(log, &g1);
	beat = testlib_wait_heartbeat(log, g1.last.n + 2, 300, NULL);
	cr_log_info("live: heartbeat %ld -> %ld while snapshot-prep was stopped during the state write",
		    g1.last.n, beat);
	cr_assert_eq(kill((pid_t)pid, SIGCONT), 0);
	for (int i = 0; i < 3000 && (rc = read_long("live.rc")) < 0; i++)
		usleep(200000);
	cr_assert_eq(rc, 0, "snapshot-prep --live: exit %ld (see %s/live.err)", rc, dir);
	cr_assert_eq(sh("grep -Eq '\"live\":[[:space:]]*true' %s/live.out", dir), 0, "--json without live: true");
	/* QEMU's own downtime of the background snapshot (its brief device save). */
	cr_assert_eq(sh("grep -Eq '\"paused_ms\":[[:space:]]*[0-9]+' %s/live.out", dir), 0, "--json without paused_ms");
	h = attach_sb1(c, log, sizeof(log));
	assert_running(h);
	cr_assert_eq(freeze_status(h), VMOPS_QGA_THAWED);
	have = vmops_qmp_has_migrate_capability(vmops_hv_qmp(h), "background-snapshot", &on, &err);
	cr_assert_eq(have, 1, "%s", err.msg);
	cr_assert_not(on, "background-snapshot left on after the live snapshot");
	cr_assert_eq(vmops_hv_destroy(h, 10000, &err), 0, "%s", err.msg);
	vmops_hv_free(h);
	/* The bundle restores elsewhere: memory and data go on from the snapshot. */
	cr_assert_eq(sh("%s/snapshot-prep -q restore -i %s/live.vmops --run-dir %s/w2/r1 --vmm-id 43 2>%s/restore.err",
			bin, dir, dir, dir), 0, "restore failed (see %s/restore.err)", dir);
	snprintf(log2, sizeof(log2), "%s/w2/r1/vmm/serial.log", dir);
	testlib_assert_guest_continues(log2, g0.boot_sum, &g0.last, 120, NULL);
	wait_data(log2, rec + 8, 300);
	cr_assert_eq(sh("ls %s | grep -c snapshot-prep. | grep -qx 0", dir), 0, "staging left behind");
	PQfinish(c);
}

/*
 * A live snapshot that is not done within its timeout: the write QEMU has
 * started is let finish, never cancelled (a cancelled background snapshot
 * can hang QEMU for good: lib/hv_qemu_snapshot.c), then its file is
 * deleted.  The call fails with VMOPS_EXIT_TIMEOUT naming
 * the timeout; the guest runs on, its heartbeat goes on, and
 * background-snapshot is off again.  1 ms: no 256 MB guest is written in it.
 */
Test(snapshot, live_snapshot_timeout_lets_the_write_finish_and_deletes_it, .timeout = 900,
     .fini = kill_test_vms)
{
	struct vmops_snapshot_opts so = { .live = true, .timeout_ms = 1 };
	struct vmops_migrate_progress mp;
	struct vmops_error err = { 0 };
	struct vmops_hv *h;
	struct vmops_spec *spec;
	char log[4200];
	_cleanup_close_ int dirfd = -1;
	long beat;
	bool on = true;

	testlib_need_qemu();
	mkscratch();
	spec = spec_for(NULL, NULL);
	h = boot(spec, "w1", 1);
	snprintf(log, sizeof(log), "%s/serial.log", vmops_hv_info(h)->run_dir);
	beat = testlib_wait_heartbeat(log, 2, 120, NULL);
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert_geq(dirfd, 0);
	cr_assert_eq(vmops_hv_snapshot(h, dirfd, &so, &err), -1, "a 256 MB live snapshot done in 1 ms");
	cr_assert_eq(err.code, VMOPS_EXIT_TIMEOUT, "exit code %d: %s", err.code, err.msg);
	cr_assert(strstr(err.msg, "snapshot not done after 1 ms"), "%s", err.msg);
	cr_assert_neq(faccessat(dirfd, VMOPS_QEMU_SNAPSHOT_FILE, F_OK, 0), 0, "the timed-out snapshot file stayed");
	/* let finish, not cancelled: QEMU's migration ended by itself, as completed */
	cr_assert_eq(vmops_hv_progress(h, &mp, &err), 0, "%s", err.msg);
	cr_assert_str_eq(mp.status, "completed");
	assert_running(h);
	cr_assert_eq(vmops_qmp_has_migrate_capability(vmops_hv_qmp(h), "background-snapshot", &on, &err), 1,
		     "%s", err.msg);
	cr_assert_not(on, "background-snapshot left on after the timeout");
	testlib_wait_heartbeat(log, beat + 2, 120, NULL);
	vmops_hv_destroy(h, 10000, &err);
	vmops_hv_free(h);
	vmops_spec_free(spec);
}

/*
 * QEMU refuses background-snapshot when a capability it cannot combine with
 * is on (validate-uuid here; on a host kernel without userfaultfd write
 * protection the same refusal comes from its kernel check).  snapshot-prep
 * --live asks before it changes anything: exit 10, "live snapshot refused",
 * the guest never frozen nor paused, no bundle, no staging left.
 */
Test(snapshot, cli_live_snapshot_refused_changes_nothing, .timeout = 900, .fini = kill_test_vms)
{
	PGconn *c = fleet_with_guest(NULL);
	struct vmops_error err = { 0 };
	struct vmops_hv *h;
	struct testrun r;
	char log[4200], out[600];
	cJSON *args;

	h = attach_sb1(c, log, sizeof(log));
	testlib_wait_heartbeat(log, 2, 120, NULL);
	args = cJSON_Parse("{\"capabilities\":[{\"capability\":\"validate-uuid\",\"state\":true}]}");
	cr_assert_eq(vmops_qmp_cmd(vmops_hv_qmp(h), "migrate-set-capabilities", args, NULL, 30000, &err), 0, "%s", err.msg);
	cJSON_Delete(args);
	vmops_hv_free(h);
	snprintf(out, sizeof(out), "%s/refused.vmops", dir);
	TESTRUN(&r, "snapshot-prep", "--db", ci, "snapshot", "--live", "--sandbox", "sb1", "-o", out,
		"--work-dir", dir);
	cr_log_info("refused: exit %d: %s", r.status, r.err);
	cr_assert_eq(r.status, VMOPS_EXIT_CONFLICT, "exit %d: %s", r.status, r.err);
	cr_assert(strstr(r.err, "live snapshot refused"), "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	cr_assert_eq(access(out, F_OK), -1, "a bundle was written");
	cr_assert_eq(sh("ls %s | grep -c snapshot-prep. | grep -qx 0", dir), 0, "staging left behind");
	h = attach_sb1(c, log, sizeof(log));
	assert_running(h);
	cr_assert_eq(freeze_status(h), VMOPS_QGA_THAWED);
	/* No snapshot migration was started, and the capability is still off. */
	{
		cJSON *ret = NULL;
		bool on = true;

		cr_assert_eq(vmops_qmp_cmd(vmops_hv_qmp(h), "query-migrate", NULL, &ret, 30000, &err), 0, "%s", err.msg);
		cr_assert_null(cJSON_GetObjectItemCaseSensitive(ret, "status"), "a migration was started");
		cJSON_Delete(ret);
		cr_assert_eq(vmops_qmp_has_migrate_capability(vmops_hv_qmp(h), "background-snapshot", &on, &err), 1);
		cr_assert_not(on);
	}
	vmops_hv_free(h);
	PQfinish(c);
}

/* The VM after a failed or killed run, once `undo` ran where needed: running,
 * thawed, the data writer going on. */
static void assert_put_back(PGconn *c, const char *log, long *rec)
{
	struct vmops_hv *h;
	char l2[4200];

	h = attach_sb1(c, l2, sizeof(l2));
	assert_running(h);
	cr_assert_eq(freeze_status(h), VMOPS_QGA_THAWED);
	vmops_hv_free(h);
	*rec = wait_data(log, *rec + 8, 300);
}

static int run_prog_env(const char *env, const char *out, const char *const *argv)
{
	struct testrun r;
	int st;

	if (env)
		putenv((char *)(uintptr_t)env);
	testrun(&r, argv);
	st = r.status;
	cr_log_info("%s: exit %d: %s", argv[1], st, r.err);
	testrun_free(&r);
	if (env)
		unsetenv("VMOPS_FAULT");
	(void)out;
	return st;
}

/*
 * The fault matrix: the program dies (exit, SIGKILL) at each step; no
 * bundle under the final name; `undo` puts the VM back.  One guest for all.
 */
Test(snapshot, fault_at_each_step_then_undo, .timeout = 2400, .fini = kill_test_vms)
{
	static const char *const steps[] = { "quiesce", "pause", "snapshot", "disks", "bundle" };
	static const char *const actions[] = { "exit", "sigkill-self" };
	PGconn *c = fleet_with_guest(NULL);
	struct vmops_hv *h;
	char log[4200], out[600], env[64];
	long rec;

	h = attach_sb1(c, log, sizeof(log));
	vmops_hv_free(h);
	testlib_wait_heartbeat(log, 2, 120, NULL);
	rec = wait_data(log, 0, 300);
	snprintf(out, sizeof(out), "%s/b.vmops", dir);
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		for (size_t j = 0; j < 2; j++) {
			int st;

			snprintf(env, sizeof(env), "VMOPS_FAULT=%s:%s", steps[i], actions[j]);
			st = run_prog_env(env, out, (const char *const[]){ "snapshot-prep", "--db", ci, "-q",
					"snapshot", "--sandbox", "sb1", "-o", out, "--work-dir", dir, NULL });
			cr_assert_eq(st, j ? 128 + SIGKILL : 1, "%s: exit %d", env, st);
			cr_assert_neq(access(out, F_OK), 0, "%s: a bundle under the final name", env);
			st = run_prog_env(NULL, NULL, (const char *const[]){ "snapshot-prep", "--db", ci, "-q",
					"undo", "--sandbox", "sb1", NULL });
			cr_assert_eq(st, 0, "undo after %s: exit %d", env, st);
			assert_put_back(c, log, &rec);
		}
	}
	/* And without a fault it works, on the same guest. */
	cr_assert_eq(run_prog_env(NULL, NULL, (const char *const[]){ "snapshot-prep", "--db", ci, "-q",
			"snapshot", "--sandbox", "sb1", "-o", out, "--work-dir", dir, NULL }), 0);
	cr_assert_eq(access(out, F_OK), 0);
	assert_put_back(c, log, &rec);
	PQfinish(c);
}

/*
 * SIGTERM while stopped at a step (the fault hook's `stop`): the program
 * unwinds by itself (exit 12) and the VM is running and thawed, with no
 * `undo`; at the bundle step (VM already back) nothing is left either.
 */
Test(snapshot, sigterm_at_each_step_unwinds, .timeout = 1200, .fini = kill_test_vms)
{
	static const char *const steps[] = { "pause", "snapshot", "disks", "bundle" };
	PGconn *c = fleet_with_guest(NULL);
	struct vmops_hv *h;
	char log[4200], out[600], env[64];
	long rec;

	h = attach_sb1(c, log, sizeof(log));
	vmops_hv_free(h);
	testlib_wait_heartbeat(log, 2, 120, NULL);
	rec = wait_data(log, 0, 300);
	snprintf(out, sizeof(out), "%s/b.vmops", dir);
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		struct testproc p;
		struct testrun r;
		char path[64];
		int st = 0;

		snprintf(env, sizeof(env), "VMOPS_FAULT=%s:stop", steps[i]);
		putenv(env);
		TESTRUN_START(&p, "snapshot-prep", "--db", ci, "-q", "snapshot", "--sandbox", "sb1", "-o", out,
			      "--work-dir", dir);
		unsetenv("VMOPS_FAULT");
		/* Wait until it stopped itself (state T in /proc). */
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)p.pid);
		for (int k = 0; k < 1200 && !st; k++) {
			char buf[512] = "";
			FILE *f = fopen(path, "r");

			if (f) {
				if (fgets(buf, sizeof(buf), f) && strstr(buf, ") T "))
					st = 1;
				fclose(f);
			}
			if (!st)
				usleep(100000);
		}
		cr_assert(st, "%s: never stopped", env);
		kill(p.pid, SIGTERM);
		kill(p.pid, SIGCONT);
		testrun_finish(&p, &r);
		cr_assert_eq(r.status, VMOPS_EXIT_INTERRUPTED, "%s: exit %d: %s", env, r.status, r.err);
		testrun_free(&r);
		cr_assert_neq(access(out, F_OK), 0, "%s: a bundle under the final name", env);
		assert_put_back(c, log, &rec);
	}
	cr_assert_eq(sh("ls %s | grep -c snapshot-prep. | grep -qx 0", dir), 0, "staging left behind");
	PQfinish(c);
}

/*
 * SIGKILL while the bundle is being written (its temporary file has bytes):
 * nothing under the final name, the VM running and thawed (it was put back
 * before bundling), and a rerun writes a whole bundle that verifies.
 */
Test(snapshot, sigkill_mid_write_leaves_no_bundle, .timeout = 1200, .fini = kill_test_vms)
{
	PGconn *c = fleet_with_guest("vmops.static_mb=64");
	struct testproc p;
	struct testrun r;
	struct vmops_hv *h;
	char log[4200], out[600], cmd[1024];
	long rec;
	bool seen = false;

	h = attach_sb1(c, log, sizeof(log));
	vmops_hv_free(h);
	testlib_wait_heartbeat(log, 2, 180, NULL);
	rec = wait_data(log, 0, 300);
	snprintf(out, sizeof(out), "%s/out/b.vmops", dir);
	snprintf(cmd, sizeof(cmd), "%s/out", dir);
	mkdir(cmd, 0700);
	TESTRUN_START(&p, "snapshot-prep", "--db", ci, "-q", "snapshot", "--sandbox", "sb1", "-o", out,
		      "--work-dir", dir);
	/* The temporary bundle has data: kill it there. */
	snprintf(cmd, sizeof(cmd), "find %s/out -name '.b.vmops.tmp.*' -size +1k | grep -q .", dir);
	for (int k = 0; k < 3000 && !seen; k++) {
		seen = sh("%s", cmd) == 0;
		if (!seen)
			usleep(50000);
	}
	kill(p.pid, SIGKILL);
	testrun_finish(&p, &r);
	testrun_free(&r);
	cr_assert(seen, "never saw the bundle being written");
	cr_assert_neq(access(out, F_OK), 0, "a half bundle under the final name");
	/* The VM was put back before the bundle was written: no undo needed. */
	assert_put_back(c, log, &rec);
	cr_assert_eq(run_prog_env(NULL, NULL, (const char *const[]){ "snapshot-prep", "--db", ci, "-q",
			"snapshot", "--sandbox", "sb1", "-o", out, "--work-dir", dir, NULL }), 0);
	cr_assert_eq(run_prog_env(NULL, NULL, (const char *const[]){ "snapshot-prep", "-q", "restore",
			"-i", out, "--run-dir", "/nonexistent-unused", "--dry-run", NULL }), 0,
		     "the rerun's bundle does not verify");
	PQfinish(c);
}

/* ---- live snapshot interrupted ----------------------------------------------------------- */

/* Does process `pid` hold the state file of a staging directory open? */
static bool holds_vmstate(pid_t pid)
{
	char path[64], link[1024];
	struct dirent *de;
	bool found = false;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	if (!(d = opendir(path)))
		return false;
	while (!found && (de = readdir(d))) {
		char fd[600];
		ssize_t n;

		snprintf(fd, sizeof(fd), "%s/%s", path, de->d_name);
		n = readlink(fd, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = '\0';
		found = strstr(link, "/snapshot-prep.") && strstr(link, "/vmstate");
	}
	closedir(d);
	return found;
}

/* Size of the state file in the staging directory, -1 if there is none. */
static long long vmstate_size(void)
{
	char pat[300];
	struct stat st;
	glob_t g;
	long long n = -1;

	snprintf(pat, sizeof(pat), "%s/snapshot-prep.*/vmstate", dir);
	if (glob(pat, 0, NULL, &g) == 0) {
		if (stat(g.gl_pathv[0], &st) == 0)
			n = st.st_size;
		globfree(&g);
	}
	return n;
}

static pid_t qemu_pid_sb1(PGconn *c)
{
	struct vmops_hv *h;
	char log[4200];
	pid_t pid;

	h = attach_sb1(c, log, sizeof(log));
	pid = vmops_hv_info(h)->pid;
	vmops_hv_free(h);
	cr_assert_gt(pid, 0);
	return pid;
}

/*
 * After an interrupted --live: exit 12 already checked.  The VM runs,
 * thawed, the data writer goes on (assert_put_back); heartbeats go on after
 * `before` with the memory checks passing; the migration is over (not
 * active) and background-snapshot off again; no bundle, no staging.
 */
static void assert_live_put_back(PGconn *c, const char *what, const char *log,
				 const struct testlib_beat *before, long *rec, const char *out)
{
	struct vmops_error err = { 0 };
	struct vmops_migrate_progress mp;
	struct vmops_hv *h;
	char l2[4200];
	bool on = true;

	assert_put_back(c, log, rec);
	testlib_assert_guest_continues(log, NULL, before, 120, NULL);
	h = attach_sb1(c, l2, sizeof(l2));
	cr_assert_eq(vmops_hv_progress(h, &mp, &err), 0, "%s: %s", what, err.msg);
	cr_assert(!mp.status[0] || !strcmp(mp.status, "none") || vmops_migrate_status_is_final(mp.status),
		  "%s: the snapshot migration is still %s", what, mp.status);
	cr_assert_eq(vmops_qmp_has_migrate_capability(vmops_hv_qmp(h), "background-snapshot", &on, &err), 1,
		     "%s: %s", what, err.msg);
	cr_assert_not(on, "%s: background-snapshot left on", what);
	vmops_hv_free(h);
	cr_assert_neq(access(out, F_OK), 0, "%s: a bundle under the final name", what);
	cr_assert_eq(sh("ls %s | grep -c snapshot-prep. | grep -qx 0", dir), 0, "%s: staging left behind", what);
}

/*
 * One `snapshot --live`, SIGTERM while QEMU writes the state.  To catch the
 * write in flight, QEMU itself is stopped (SIGSTOP) as soon as the state
 * file has bytes (the migration started); if QEMU then still holds it open
 * (it closes it in the migration's cleanup), SIGTERM goes to
 * snapshot-prep, then SIGCONT to QEMU.  Returns 1 if the program says the
 * write was interrupted, 0 if the signal came just before or after it
 * (exit 12 all the same), -1 if no signal was sent (the write was over:
 * the run is let finish, its bundle removed).
 */
static int live_sigterm_mid_write(pid_t qpid, const char *out)
{
	struct testproc p;
	struct testrun r;
	bool sent;
	int hit;

	TESTRUN_START(&p, "snapshot-prep", "--db", ci, "snapshot", "--live", "--sandbox", "sb1", "-o", out,
		      "--work-dir", dir);
	for (int i = 0; i < 300000 && vmstate_size() <= 0; i++)
		usleep(1000);
	cr_assert_eq(kill(qpid, SIGSTOP), 0);
	for (int i = 0; i < 500 && !proc_stopped(qpid); i++)
		usleep(10000);
	cr_assert(proc_stopped(qpid), "qemu did not stop");
	sent = holds_vmstate(qpid) && vmstate_size() > 0;
	if (sent) {
		cr_assert_eq(kill(p.pid, SIGTERM), 0);
		usleep(300000);
	}
	cr_assert_eq(kill(qpid, SIGCONT), 0);
	testrun_finish(&p, &r);
	hit = strstr(r.err, "snapshot interrupted") && !strstr(r.err, "before the write");
	cr_log_info("live mid-write (%s): exit %d: %s", !sent ? "no signal" : hit ? "hit" : "missed",
		    r.status, r.err);
	cr_assert_eq(r.status, sent ? VMOPS_EXIT_INTERRUPTED : 0, "exit %d: %s", r.status, r.err);
	testrun_free(&r);
	if (!sent)
		unlink(out);
	return sent ? hit : -1;
}

/* SIGTERM while stopped at `step` (VMOPS_FAULT=STEP:stop) in a --live run. */
static void live_sigterm_at(const char *step, const char *out)
{
	struct testproc p;
	struct testrun r;
	char env[64];

	snprintf(env, sizeof(env), "VMOPS_FAULT=%s:stop", step);
	putenv(env);
	TESTRUN_START(&p, "snapshot-prep", "--db", ci, "snapshot", "--live", "--sandbox", "sb1", "-o", out,
		      "--work-dir", dir);
	unsetenv("VMOPS_FAULT");
	for (int k = 0; k < 12000 && !proc_stopped(p.pid); k++)
		usleep(10000);
	cr_assert(proc_stopped(p.pid), "%s: never stopped", env);
	kill(p.pid, SIGTERM);
	kill(p.pid, SIGCONT);
	testrun_finish(&p, &r);
	cr_log_info("live %s: exit %d: %s", env, r.status, r.err);
	cr_assert_eq(r.status, VMOPS_EXIT_INTERRUPTED, "%s: exit %d: %s", env, r.status, r.err);
	testrun_free(&r);
}

/*
 * snapshot --live interrupted (one SIGTERM): while QEMU writes the state,
 * and at each step where --live differs from a paused snapshot (snapshot:
 * the background snapshot is cancelled as it starts; disks: the guest runs
 * frozen; bundle: already put back).  Each time exit 12 and the VM exactly
 * as found (assert_live_put_back).  One guest for all.
 */
Test(snapshot, live_sigterm_mid_write_and_at_each_step_unwinds, .timeout = 2400, .fini = kill_test_vms)
{
	static const char *const steps[] = { "snapshot", "disks", "bundle" };
	PGconn *c = fleet_with_guest("vmops.static_mb=64");
	struct testlib_guest g;
	char log[4200], out[600];
	pid_t qpid;
	long rec;
	int hits = 0;

	vmops_hv_free(attach_sb1(c, log, sizeof(log)));
	qpid = qemu_pid_sb1(c);
	testlib_wait_heartbeat(log, 2, 180, NULL);
	rec = wait_data(log, 0, 300);
	snprintf(out, sizeof(out), "%s/b.vmops", dir);
	for (int attempt = 0; attempt < 8 && hits < 1; attempt++) {
		int hit;

		testlib_guest_read(log, &g);
		hit = live_sigterm_mid_write(qpid, out);
		if (hit >= 0)
			assert_live_put_back(c, "mid-write", log, &g.last, &rec, out);
		hits += hit > 0;
	}
	cr_assert_eq(hits, 1, "the state write was never caught in flight in 8 attempts");
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		testlib_guest_read(log, &g);
		live_sigterm_at(steps[i], out);
		assert_live_put_back(c, steps[i], log, &g.last, &rec, out);
	}
	PQfinish(c);
}

/* ---- hibernate -> wake on the other worker ----------------------------------------------- */

Test(snapshot, hibernate_then_wake_on_the_other_worker, .timeout = 1200, .fini = kill_test_vms)
{
	PGconn *c = fleet_with_guest(NULL);
	struct testlib_guest g0;
	struct testrun r;
	struct vmops_hv *h;
	char log[4200], bdir[600], log2[600], sql[512];
	long long pid, start, vmm1;
	long rec;

	h = attach_sb1(c, log, sizeof(log));
	vmops_hv_free(h);
	testlib_wait_heartbeat(log, 2, 120, NULL);
	rec = wait_data(log, 8, 300);
	vmm1 = testdb_ll(c, "SELECT active_vmm_id FROM sandboxes WHERE name = 'sb1'");
	pid = testdb_ll(c, "SELECT pid FROM vmms WHERE id = (SELECT active_vmm_id FROM sandboxes)");
	start = testdb_ll(c, "SELECT pid_start_time FROM vmms WHERE id = (SELECT active_vmm_id FROM sandboxes)");
	snprintf(bdir, sizeof(bdir), "%s/bundles", dir);
	mkdir(bdir, 0700);
	testlib_guest_read(log, &g0);

	TESTRUN(&r, "snapshot-prep", "--db", ci, "--json", "hibernate", "--sandbox", "sb1", "--bundle-dir", bdir);
	cr_assert_eq(r.status, 0, "hibernate: %s\n%s", r.out, r.err);
	testrun_free(&r);
	/* Hibernated: billing closed, the VMM destroyed and gone, its reservation freed, a ready bundle. */
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'hibernated' AND active_vmm_id IS NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 0, "billing still open");
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM vmms WHERE id = %lld AND state = 'destroyed'", vmm1);
	cr_assert_eq(testdb_ll(c, sql), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 0, "reservation outlived the hibernated VMM");
	cr_assert_neq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL),
		      VMOPS_PROC_ALIVE, "the hibernated QEMU still runs");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'ready' AND size_bytes > 0"
				  " AND manifest->>'hypervisor' = 'qemu'"), 1);
	/* The bundle cannot disappear under a hibernated sandbox (VO062). */
	cr_assert_str_eq(testdb_fail(c, "UPDATE snapshots SET state = 'deleted'"), "VO062");

	TESTRUN(&r, "snapshot-prep", "--db", ci, "--json", "wake", "--sandbox", "sb1", "--worker", "w2");
	cr_assert_eq(r.status, 0, "wake: %s\n%s", r.err, r.out);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes s JOIN workers w ON w.id = s.worker_id"
				  " JOIN vmms v ON v.id = s.active_vmm_id WHERE s.status = 'running' AND w.name = 'w2'"
				  " AND v.state = 'running' AND v.worker_id = w.id AND s.target_vmm_id IS NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
				  " WHERE e.ended_at IS NULL AND e.vmm_id = s.active_vmm_id AND e.worker_id = s.worker_id"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'restored'"), 1);
	TESTRUN(&r, "usage-parity", "--db", ci, "-q", "--from", "now-2h", "--to", "now-1h");
	cr_assert_eq(r.status, 0, "usage-parity found drift:\n%s\n%s", r.err, r.out);
	testrun_free(&r);
	/* The guest goes on from the hibernation, memory and data intact. */
	snprintf(log2, sizeof(log2), "%s/w2/vmm-%lld/serial.log", dir,
		 testdb_ll(c, "SELECT active_vmm_id FROM sandboxes"));
	testlib_assert_guest_continues(log2, g0.boot_sum, &g0.last, 120, NULL);
	wait_data(log2, rec + 8, 300);
	PQfinish(c);
}

static void expire_leases(PGconn *c)
{
	PQclear(testdb_exec(c, "UPDATE snapshots SET lease_expires_at = now() - interval '1 second'"
			       " WHERE lease_owner IS NOT NULL"));
}

/* snapshot-prep recover, with the exit status wanted; its stdout into out. */
static void recover(const char *extra, int want, char *out, size_t len)
{
	struct testrun r;

	if (extra)
		TESTRUN(&r, "snapshot-prep", "--db", ci, "recover", "--sandbox", "sb1", extra);
	else
		TESTRUN(&r, "snapshot-prep", "--db", ci, "recover", "--sandbox", "sb1");
	cr_assert_eq(r.status, want, "recover %s: exit %d\n%s\n%s", extra ? extra : "", r.status, r.out, r.err);
	if (out)
		snprintf(out, len, "%s%s", r.out, r.err);
	testrun_free(&r);
}

/*
 * A hibernate killed while writing its bundle leaves the VM paused and
 * frozen, the snapshot 'writing' and its staging files; a wake killed before
 * its commit leaves a restored VMM running with a reservation.  `recover`
 * waits for each lease, then puts everything back from the recorded facts.
 */
Test(snapshot, crashed_hibernate_and_wake_are_recovered, .timeout = 1500, .fini = kill_test_vms)
{
	PGconn *c = fleet_with_guest(NULL);
	struct testlib_guest g0;
	struct vmops_vm_status st;
	struct vmops_error err = { 0 };
	struct vmops_hv *h;
	char log[4200], bdir[600], log2[600], out[4096], sql[512];
	long long pid, start, vmm2;
	long rec;

	h = attach_sb1(c, log, sizeof(log));
	vmops_hv_free(h);              /* QMP takes one client at a time */
	testlib_wait_heartbeat(log, 2, 120, NULL);
	rec = wait_data(log, 8, 300);
	snprintf(bdir, sizeof(bdir), "%s/bundles", dir);
	mkdir(bdir, 0700);
	cr_assert_eq(run_prog_env("VMOPS_FAULT=bundle:sigkill-self", NULL, (const char *const[]){ "snapshot-prep",
			"--db", ci, "-q", "hibernate", "--sandbox", "sb1", "--bundle-dir", bdir, NULL }), 128 + SIGKILL);
	h = attach_sb1(c, log, sizeof(log));
	cr_assert_eq(vmops_hv_status(h, &st, &err), 0, "%s", err.msg);
	cr_assert(!st.running, "the crash left the vm %s, not paused: nothing to recover", st.status);
	cr_assert_eq(sh("ls -A %s/.hibernate-* | grep -q .", bdir), 0, "no staging files left to clean up");
	vmops_hv_free(h);

	recover(NULL, VMOPS_EXIT_CONFLICT, out, sizeof(out));      /* its lease still runs */
	cr_assert(strstr(out, "still in progress"), "%s", out);
	expire_leases(c);
	recover("--dry-run", 0, out, sizeof(out));
	cr_assert(strstr(out, "writing") && strstr(out, "would recover"), "%s", out);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'writing'"), 1, "dry run changed it");
	recover(NULL, 0, out, sizeof(out));
	cr_assert(strstr(out, "vm resumed and thawed"), "%s", out);
	assert_put_back(c, log, &rec);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'failed' AND lease_owner IS NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running'"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'hibernate-recovered'"), 1);
	cr_assert_eq(sh("ls -A %s | grep -q .", bdir), 1, "bundle or staging files left in %s", bdir);
	recover(NULL, 0, out, sizeof(out));                        /* again: nothing in flight */
	cr_assert(strstr(out, "nothing in flight"), "%s", out);

	/* Hibernate for real, then a wake killed before its commit. */
	testlib_guest_read(log, &g0);
	cr_assert_eq(run_prog_env(NULL, NULL, (const char *const[]){ "snapshot-prep", "--db", ci, "-q",
			"hibernate", "--sandbox", "sb1", "--bundle-dir", bdir, NULL }), 0);
	cr_assert_eq(run_prog_env("VMOPS_FAULT=commit:sigkill-self", NULL, (const char *const[]){ "snapshot-prep",
			"--db", ci, "-q", "wake", "--sandbox", "sb1", "--worker", "w2", NULL }), 128 + SIGKILL);
	vmm2 = testdb_ll(c, "SELECT restore_vmm_id FROM snapshots WHERE state = 'restoring'");
	snprintf(sql, sizeof(sql), "SELECT pid FROM vmms WHERE id = %lld", vmm2);
	pid = testdb_ll(c, sql);
	snprintf(sql, sizeof(sql), "SELECT pid_start_time FROM vmms WHERE id = %lld", vmm2);
	start = testdb_ll(c, sql);
	cr_assert_eq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL), VMOPS_PROC_ALIVE,
		     "the killed wake's vmm is not running: nothing to recover");
	expire_leases(c);
	recover(NULL, 0, out, sizeof(out));
	cr_assert(strstr(out, "new vmm stopped"), "%s", out);
	cr_assert_neq(vmops_proc_check("/proc", (pid_t)pid, (unsigned long long)start, NULL, NULL), VMOPS_PROC_ALIVE,
		      "the half-woken vmm still runs");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 0, "its reservation was not freed");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'ready' AND restore_vmm_id IS NULL"), 1);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'hibernated' AND target_vmm_id IS NULL"), 1);
	snprintf(sql, sizeof(sql), "%s/w2/vmm-%lld", dir, vmm2);
	cr_assert_neq(access(sql, F_OK), 0, "run directory %s (with the extracted bundle) left", sql);

	/* And the sandbox wakes from its bundle, memory and data intact. */
	cr_assert_eq(run_prog_env(NULL, NULL, (const char *const[]){ "snapshot-prep", "--db", ci, "-q",
			"wake", "--sandbox", "sb1", "--worker", "w2", NULL }), 0);
	snprintf(log2, sizeof(log2), "%s/w2/vmm-%lld/serial.log", dir,
		 testdb_ll(c, "SELECT active_vmm_id FROM sandboxes"));
	testlib_assert_guest_continues(log2, g0.boot_sum, &g0.last, 120, NULL);
	wait_data(log2, rec + 8, 300);
	PQfinish(c);
}

/* ---- the snapshots table: invariants held by the database (no QEMU) ---------------------- */

#define SNAP_FIXTURE \
	"INSERT INTO workers (name, memory_mb, vcpus, state) VALUES ('w1', 4096, 8, 'active');" \
	"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus) VALUES ('sb1', 'acme', 'running', 1, 256, 1);" \
	"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 1, 'qemu', 'running');" \
	"UPDATE sandboxes SET active_vmm_id = 1;"
#define SHA "'" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" "'"
#define READY_SNAPSHOT \
	"INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, size_bytes, sha256, manifest, state, time_ready)" \
	" VALUES (1, 1, 1, '/b/sb1-1.vmops', 10, " SHA ", '{}', 'ready', now());"

Test(snapshot_db, table_constraints)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	PQclear(testdb_exec(c, SNAP_FIXTURE));
	/* ready without its size/sha/manifest; relative location; bad sha; lease rules */
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, state)"
					" VALUES (1, 1, 1, '/b/x', 'ready')"), "23514");
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, lease_owner,"
					" lease_expires_at) VALUES (1, 1, 1, 'b/x', 'me', now())"), "23514");
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, sha256, state)"
					" VALUES (1, 1, 1, '/b/x', 'XYZ', 'failed')"), "23514");
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location)"
					" VALUES (1, 1, 1, '/b/x')"), "23514");   /* writing without a lease */
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, size_bytes,"
					" sha256, manifest, state, time_ready) VALUES (1, 1, 1, '/b/x', 1, " SHA ", '{}',"
					" 'restoring', now())"), "23514");   /* restoring without its VMM */
	/* one live snapshot per sandbox */
	PQclear(testdb_exec(c, READY_SNAPSHOT));
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, lease_owner,"
					" lease_expires_at) VALUES (1, 1, 1, '/b/y', 'me', now())"), "23505");
	PQfinish(c);
}

Test(snapshot_db, bundle_of_a_hibernated_sandbox_stays)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	PQclear(testdb_exec(c, SNAP_FIXTURE READY_SNAPSHOT
			    "UPDATE sandboxes SET status = 'hibernated', active_vmm_id = NULL"));
	cr_assert_str_eq(testdb_fail(c, "UPDATE snapshots SET state = 'deleted'"), "VO062");
	cr_assert_str_eq(testdb_fail(c, "UPDATE snapshots SET state = 'failed'"), "VO062");
	cr_assert_str_eq(testdb_fail(c, "DELETE FROM snapshots"), "VO062");
	/* A restore ends it, in the transaction that makes the sandbox run again. */
	PQclear(testdb_exec(c, "BEGIN;"
			       "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 1, 'qemu', 'running');"
			       "UPDATE snapshots SET state = 'restored', restore_vmm_id = 2, time_restored = now();"
			       "UPDATE sandboxes SET status = 'running', active_vmm_id = 2;"
			       "COMMIT"));
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM snapshots WHERE state = 'restored'"), 1);
	PQfinish(c);
}

/*
 * Two REPEATABLE READ writers: A takes its snapshot (a_read), B commits
 * b_sql, then A's a_sql must not commit (serialisation failure or the
 * trigger's `code`); `left` (a count query) must still be 1.
 */
static void rr_race(const char *a_read, const char *b_sql, const char *a_sql, const char *code,
		    const char *left)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	PGconn *a = PQconnectdb(ci), *b = PQconnectdb(ci);
	char sql[512];
	PGresult *r;

	cr_assert_eq(PQstatus(a), CONNECTION_OK);
	cr_assert_eq(PQstatus(b), CONNECTION_OK);
	PQclear(testdb_exec(c, SNAP_FIXTURE READY_SNAPSHOT));
	snprintf(sql, sizeof(sql), "BEGIN ISOLATION LEVEL REPEATABLE READ; %s", a_read);
	PQclear(testdb_exec(a, sql));
	snprintf(sql, sizeof(sql), "BEGIN ISOLATION LEVEL REPEATABLE READ; %s; COMMIT", b_sql);
	PQclear(testdb_exec(b, sql));
	snprintf(sql, sizeof(sql), "%s; COMMIT", a_sql);
	r = PQexec(a, sql);
	cr_assert_neq(PQresultStatus(r), PGRES_COMMAND_OK, "'%s' committed after '%s'", a_sql, b_sql);
	cr_assert(!strcmp(PQresultErrorField(r, PG_DIAG_SQLSTATE), "40001") ||
		  !strcmp(PQresultErrorField(r, PG_DIAG_SQLSTATE), code),
		  "SQLSTATE %s", PQresultErrorField(r, PG_DIAG_SQLSTATE));
	PQclear(r);
	cr_assert_eq(testdb_ll(c, left), 1, "%s", left);
	PQfinish(a);
	PQfinish(b);
	PQfinish(c);
}

/* A deletes the bundle while B (committed after A's snapshot) hibernates the sandbox. */
Test(snapshot_db, repeatable_read_delete_races_hibernate)
{
	rr_race("SELECT status FROM sandboxes", "UPDATE sandboxes SET status = 'hibernated', active_vmm_id = NULL",
		"UPDATE snapshots SET state = 'deleted'", "VO062",
		"SELECT count(*) FROM snapshots WHERE state = 'ready'");
}

/* Schema 11: a sandbox is hibernated only with its bundle, whoever writes it. */
Test(snapshot_db, hibernated_needs_a_ready_snapshot)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	PQclear(testdb_exec(c, SNAP_FIXTURE));
	cr_assert_str_eq(testdb_fail(c, "UPDATE sandboxes SET status = 'hibernated', active_vmm_id = NULL"), "VO111");
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
					" VALUES ('sb2', 'acme', 'hibernated', 1, 256, 1)"), "VO111");
	/* A snapshot still being written is not a bundle yet. */
	PQclear(testdb_exec(c, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, lease_owner,"
			       " lease_expires_at) VALUES (1, 1, 1, '/b/x', 'me', now() + interval '1 minute')"));
	cr_assert_str_eq(testdb_fail(c, "UPDATE sandboxes SET status = 'hibernated', active_vmm_id = NULL"), "VO111");
	/* Ready in the same transaction (as hibernate does it): accepted. */
	PQclear(testdb_exec(c, "BEGIN;"
			       "UPDATE sandboxes SET status = 'hibernated', active_vmm_id = NULL;"
			       "UPDATE snapshots SET state = 'ready', size_bytes = 1, sha256 = " SHA ", manifest = '{}',"
			       " time_ready = now(), lease_owner = NULL, lease_expires_at = NULL;"
			       "COMMIT"));
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'hibernated'"), 1);
	PQfinish(c);
}

/* A hibernates the sandbox while B (committed first) marks its bundle failed. */
Test(snapshot_db, repeatable_read_hibernate_races_bundle_failure)
{
	rr_race("SELECT state FROM snapshots", "UPDATE snapshots SET state = 'failed'",
		"UPDATE sandboxes SET status = 'hibernated', active_vmm_id = NULL", "VO111",
		"SELECT count(*) FROM sandboxes WHERE status = 'running'");
}

/* An older database holding a hibernated sandbox without a bundle is not upgraded. */
Test(snapshot_db, upgrade_refused_for_a_hibernated_sandbox_without_bundle)
{
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	struct vmops_error e = { 0 };
	char sql[256];
	int v = 0;

	PQclear(testdb_exec(c, "CREATE TABLE vmops_schema_version (version integer PRIMARY KEY,"
			       " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"));
	for (size_t i = 0; i < vmops_n_migrations && vmops_migrations[i].version < 11; i++) {
		PQclear(testdb_exec(c, vmops_migrations[i].sql));
		snprintf(sql, sizeof(sql), "INSERT INTO vmops_schema_version VALUES (%d, '%s')",
			 vmops_migrations[i].version, vmops_migrations[i].name);
		PQclear(testdb_exec(c, sql));
	}
	PQclear(testdb_exec(c, SNAP_FIXTURE "UPDATE sandboxes SET status = 'hibernated', active_vmm_id = NULL"));
	cr_assert_eq(vmops_schema_apply(c, NULL, NULL, &e), -1);
	cr_assert(strstr(e.msg, "hibernated sandboxes without a ready snapshot: sb1"), "%s", e.msg);
	cr_assert_eq(vmops_schema_version(c, &v, &e), 0);
	cr_assert_lt(v, 11, "the upgrade went through");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'staging'"), 0);
	PQfinish(c);
}
