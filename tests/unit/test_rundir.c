/* SPDX-License-Identifier: MIT */
/* Run directories on a shared host: made safely, hostile paths refused (lib/rundir). */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "logcap.h"
#include "rundir.h"
#include "testlib.h"

static char base[256];

static void setup(void)
{
	snprintf(base, sizeof(base), "/tmp/vmops-rd.XXXXXX");
	cr_assert(mkdtemp(base));
}

static void teardown(void)
{
	char cmd[700];

	snprintf(cmd, sizeof(cmd), "chmod -R u+rwx '%s' 2>/dev/null; rm -rf --one-file-system '%s'", base, base);
	(void)system(cmd);
}

/* Refused with CONFLICT, the message containing `why`. */
static void assert_refused(const char *path, const char *why)
{
	struct vmops_error e = { 0 };

	cr_assert_eq(vmops_rundir_open(path, &e), -1, "%s was accepted", path);
	cr_assert_eq(e.code, VMOPS_EXIT_CONFLICT, "%s: %s", path, e.msg);
	cr_assert(strstr(e.msg, why), "%s: %s (expected: %s)", path, e.msg, why);
	cr_assert(strstr(e.msg, "refusing"), "%s", e.msg);
}

static char *at(const char *rel)
{
	static char buf[4][512];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", base, rel);
	return buf[i];
}

TestSuite(rundir, .init = setup, .fini = teardown);

Test(rundir, creates_every_level_private)
{
	struct vmops_error e = { 0 };
	struct stat st;
	int fd = vmops_rundir_open(at("w1/vmm-7"), &e);

	cr_assert_geq(fd, 0, "%s", e.msg);
	close(fd);
	cr_assert_eq(stat(at("w1"), &st), 0);
	cr_assert_eq(st.st_mode & 07777, 0700);
	cr_assert_eq(stat(at("w1/vmm-7"), &st), 0);
	cr_assert_eq(st.st_mode & 07777, 0700);
	cr_assert_eq(st.st_uid, geteuid());
	/* again: an existing safe directory is fine */
	fd = vmops_rundir_open(at("w1/vmm-7"), &e);
	cr_assert_geq(fd, 0, "%s", e.msg);
	close(fd);
}

Test(rundir, symlinks_anywhere_are_refused)
{
	cr_assert_eq(mkdir(at("elsewhere"), 0700), 0);
	cr_assert_eq(symlink(at("elsewhere"), at("vmm-1")), 0);
	assert_refused(at("vmm-1"), "a symbolic link");
	cr_assert_eq(symlink(at("elsewhere"), at("w2")), 0);
	assert_refused(at("w2/vmm-1"), "a symbolic link");
	/* nothing was created through the link */
	cr_assert_neq(access(at("elsewhere/vmm-1"), F_OK), 0);
}

Test(rundir, wrong_type_mode_and_names_are_refused)
{
	int fd = open(at("file"), O_WRONLY | O_CREAT, 0600);

	cr_assert_geq(fd, 0);
	close(fd);
	assert_refused(at("file"), "not a directory");
	cr_assert_eq(mkdir(at("loose"), 0755), 0);
	cr_assert_eq(chmod(at("loose"), 0755), 0);
	assert_refused(at("loose"), "mode 0755, expected 0700");
	cr_assert_eq(mkdir(at("shared"), 0777), 0);
	cr_assert_eq(chmod(at("shared"), 0777), 0);
	assert_refused(at("shared/vmm-1"), "writable by others and not sticky");
	assert_refused(at("w1/../w1"), "'..'");
}

Test(rundir, others_directories_are_refused)
{
	struct vmops_error e = { 0 };
	int fd;

	if (geteuid() != 0)
		testlib_missing("needs root to plant another user's directory");
	/* someone else's directory, even with the right mode */
	cr_assert_eq(mkdir(at("planted"), 0700), 0);
	cr_assert_eq(chown(at("planted"), 65534, 65534), 0);
	assert_refused(at("planted"), "owned by uid 65534");
	/* a sticky world-writable directory (like /tmp): what is below it must be ours */
	cr_assert_eq(mkdir(at("tmp"), 01777), 0);
	cr_assert_eq(chmod(at("tmp"), 01777), 0);
	cr_assert_eq(mkdir(at("tmp/theirs"), 0755), 0);
	cr_assert_eq(chown(at("tmp/theirs"), 65534, 65534), 0);
	assert_refused(at("tmp/theirs/vmm-1"), "in a directory others can write to");
	fd = vmops_rundir_open(at("tmp/mine/vmm-1"), &e);
	cr_assert_geq(fd, 0, "%s", e.msg);
	close(fd);
}

Test(rundir, remove_takes_only_what_a_vmm_leaves)
{
	struct vmops_error e = { 0 };
	int kept = -1, fd = vmops_rundir_open(at("w1/vmm-3"), &e);

	cr_assert_geq(fd, 0, "%s", e.msg);
	close(fd);
	fclose(fopen(at("w1/vmm-3/serial.log"), "w"));
	fclose(fopen(at("w1/vmm-3/qemu.log"), "w"));
	fclose(fopen(at("w1/vmm-3/vmops-vmm-3.sock"), "w"));
	fclose(fopen(at("w1/vmm-3/events.json"), "w"));
	/* what vmops-logcap leaves: the previous cap's worth of each log */
	fclose(fopen(at("w1/vmm-3/qemu.log.1"), "w"));
	fclose(fopen(at("w1/vmm-3/vmm.log"), "w"));
	fclose(fopen(at("w1/vmm-3/vmm.log.1"), "w"));
	cr_assert_eq(vmops_rundir_remove(at("w1/vmm-3"), &kept, &e), 0, "%s", e.msg);
	cr_assert_eq(kept, 0);
	cr_assert_neq(access(at("w1/vmm-3"), F_OK), 0, "the run directory is still there");
	/* a file it does not know keeps the directory (and the file) */
	fd = vmops_rundir_open(at("w1/vmm-4"), &e);
	cr_assert_geq(fd, 0, "%s", e.msg);
	close(fd);
	fclose(fopen(at("w1/vmm-4/keep-me"), "w"));
	fclose(fopen(at("w1/vmm-4/vmops-vmm-5.sock"), "w"));   /* another VMM's name: kept */
	cr_assert_eq(vmops_rundir_remove(at("w1/vmm-4"), &kept, &e), 0, "%s", e.msg);
	cr_assert_eq(kept, 1);
	cr_assert_eq(access(at("w1/vmm-4/keep-me"), F_OK), 0);
	cr_assert_eq(access(at("w1/vmm-4/vmops-vmm-5.sock"), F_OK), 0);
	/* a symlinked run directory is not followed */
	cr_assert_eq(mkdir(at("victim"), 0700), 0);
	fclose(fopen(at("victim/serial.log"), "w"));
	cr_assert_eq(symlink(at("victim"), at("w1/vmm-5")), 0);
	cr_assert_eq(vmops_rundir_remove(at("w1/vmm-5"), &kept, &e), -1);
	cr_assert_eq(access(at("victim/serial.log"), F_OK), 0, "removed through a link");
	/* gone already: fine */
	cr_assert_eq(vmops_rundir_remove(at("w1/vmm-9"), &kept, &e), 0, "%s", e.msg);
}

/* Removal walks the path like making it does: no link anywhere, nothing loose or foreign. */
Test(rundir, remove_refuses_what_is_not_ours)
{
	struct vmops_error e = { 0 };
	int kept = -1;

	/* a symlinked level above the run directory is not followed */
	cr_assert_eq(mkdir(at("victim"), 0700), 0);
	cr_assert_eq(mkdir(at("victim/vmm-5"), 0700), 0);
	fclose(fopen(at("victim/vmm-5/serial.log"), "w"));
	cr_assert_eq(symlink(at("victim"), at("w1")), 0);
	cr_assert_eq(vmops_rundir_remove(at("w1/vmm-5"), &kept, &e), -1, "removed through a link");
	cr_assert_eq(e.code, VMOPS_EXIT_CONFLICT, "%s", e.msg);
	cr_assert(strstr(e.msg, "a symbolic link"), "%s", e.msg);
	cr_assert_eq(access(at("victim/vmm-5/serial.log"), F_OK), 0, "emptied through a link");
	/* a run directory others can read is not one vmops made: left alone */
	cr_assert_eq(mkdir(at("loose"), 0755), 0);
	cr_assert_eq(chmod(at("loose"), 0755), 0);
	fclose(fopen(at("loose/serial.log"), "w"));
	cr_assert_eq(vmops_rundir_remove(at("loose"), &kept, &e), -1);
	cr_assert(strstr(e.msg, "mode 0755"), "%s", e.msg);
	cr_assert_eq(access(at("loose/serial.log"), F_OK), 0);
	if (geteuid() != 0)
		return;
	/* another user's directory, even 0700 */
	cr_assert_eq(mkdir(at("theirs"), 0700), 0);
	fclose(fopen(at("theirs/serial.log"), "w"));
	cr_assert_eq(chown(at("theirs"), 65534, 65534), 0);
	cr_assert_eq(vmops_rundir_remove(at("theirs"), &kept, &e), -1);
	cr_assert(strstr(e.msg, "owned by uid 65534"), "%s", e.msg);
	cr_assert_eq(access(at("theirs/serial.log"), F_OK), 0);
}

/* ---- logcap ------------------------------------------------------------------------------ */

/* A VMM stand-in that appends to `fd` without a pause: 16 bytes a microsecond or so. */
static _Noreturn void busy_writer(int fd)
{
	static const char line[] = "0123456789abcde\n";

	for (;;) {
		struct timespec t0, t;

		if (write(fd, line, sizeof(line) - 1) < 0)
			_exit(1);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		do
			clock_gettime(CLOCK_MONOTONIC, &t);
		while ((t.tv_sec - t0.tv_sec) * 1000000000L + t.tv_nsec - t0.tv_nsec < 1000);
	}
}

/*
 * A log the VMM keeps appending to while vmops-logcap rotates it: NAME.1
 * holds the cap's worth at most, every time.  (Copying on to the end of
 * the file, as it did, made NAME.1 grow by whatever the VMM wrote during
 * the copy: test_fleet's capped-serial case saw it under ASan.)
 */
Test(rundir, the_rotated_log_never_exceeds_the_cap_while_the_vmm_writes, .timeout = 60)
{
	const char *names[] = { "serial.log", NULL };
	struct vmops_error e = { 0 };
	int dfd, fd, st, changes = 0;
	long long worst = -1;
	struct stat prev = { 0 };
	pid_t w;

	dfd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert_geq(dfd, 0);
	fd = open(at("serial.log"), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	w = fork();
	cr_assert_geq(w, 0);
	if (w == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);   /* a failed assertion must not leave it spinning */
		busy_writer(fd);
	}
	cr_assert_eq(vmops_logcap_start(dfd, w, names, 4096, &e), 0, "%s", e.msg);
	/* watch serial.log.1 over four rotations (one a second) */
	for (int i = 0; i < 2000 && changes < 4; i++) {
		struct stat s;

		usleep(5000);
		if (stat(at("serial.log.1"), &s) < 0)
			continue;
		if (s.st_size > worst)
			worst = s.st_size;
		if (s.st_mtim.tv_sec != prev.st_mtim.tv_sec || s.st_mtim.tv_nsec != prev.st_mtim.tv_nsec)
			changes++;
		prev = s;
	}
	kill(w, SIGKILL);
	waitpid(w, &st, 0);
	close(fd);
	close(dfd);
	cr_assert_geq(changes, 2, "vmops-logcap rotated serial.log %d times in 10 s", changes);
	cr_assert_leq(worst, 4096, "serial.log.1 held %lld bytes, over the cap of 4096", worst);
	cr_assert_eq(worst, 4096, "serial.log.1 held %lld bytes, not the cap's worth", worst);
}
