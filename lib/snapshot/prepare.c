/* SPDX-License-Identifier: MIT */
/* Prepare a VM for a snapshot, and undo it (see snapshot.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../exitcodes.h"
#include "../fault.h"
#include "../hv/hint.h"
#include "../log.h"
#include "snapshot.h"

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int ms_or(int v, int dflt)
{
	return v > 0 ? v : dflt;
}

static bool interrupted(const struct vmops_prep *p)
{
	return p->o.interrupted && *p->o.interrupted;
}

static int check_interrupted(struct vmops_prep *p, const char *step, struct vmops_error *err)
{
	if (!interrupted(p))
		return 0;
	p->failed_step = step;
	return vmops_err(err, VMOPS_EXIT_INTERRUPTED, "interrupted before %s", step);
}

static int push(struct vmops_prep *p, const char *what, enum vmops_snap_undo_kind kind,
		uint64_t arg, struct vmops_error *err)
{
	if (p->n_undo >= VMOPS_SNAP_UNDO_MAX)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "prepare: too many undo steps");
	p->undo[p->n_undo++] = (struct vmops_snap_undo){ .what = what, .kind = kind, .arg = arg };
	return 0;
}

/* --- undo actions -------------------------------------------------------------- */

/*
 * Delete what the snapshot wrote: every entry of the snapshot directory,
 * which was empty before (vmops_prep_snapshot checks), so all of it is ours
 * (the VMM's files, whatever their names, and the disk copies).  Entries are
 * unlinked, never followed; a subdirectory (no driver makes one) is kept.
 */
static int sweep(struct vmops_prep *p, struct vmops_error *err)
{
	int fd;
	DIR *d;
	struct dirent *de;
	int r = 0;

	if (p->dirfd < 0)
		return 0;  /* the directory is gone with its files */
	fd = openat(p->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "delete snapshot files: %s", strerror(errno));
	}
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (unlinkat(p->dirfd, de->d_name, 0) < 0 && errno != ENOENT && r == 0)
			r = vmops_err(err, VMOPS_EXIT_FAILURE, "delete %s: %s", de->d_name,
				      strerror(errno));
	}
	closedir(d);
	return r;
}

/* Thaw, retried until unwind_ms: an agent busy with a late freeze answers later. */
static int undo_thaw(struct vmops_prep *p, struct vmops_error *err)
{
	int64_t deadline = now_ms() + ms_or(p->o.unwind_ms, VMOPS_SNAP_UNWIND_MS);
	int n;

	for (;;) {
		n = vmops_hv_thaw(p->h, ms_or(p->o.agent_ms, VMOPS_SNAP_AGENT_MS),
				  ms_or(p->o.prepare_ms, VMOPS_SNAP_PREPARE_MS), err);
		if (n >= 0) {
			p->frozen = 0;
			return 0;
		}
		if (err->code != VMOPS_EXIT_TIMEOUT || now_ms() >= deadline)
			return -1;
		vmops_debug("thaw: %s; trying again", err->msg);
		sleep_ms(200);
	}
}

static int undo_one(struct vmops_prep *p, const struct vmops_snap_undo *u, struct vmops_error *err)
{
	if (!strcmp(u->what, "resume")) {
		if (vmops_hv_resume(p->h, err) < 0)
			return -1;
		p->resumed_at_ms = now_ms();
		return 0;
	}
	if (!strcmp(u->what, "thaw"))
		return undo_thaw(p, err);
	if (!strcmp(u->what, "deflate"))
		return vmops_hv_balloon_set(p->h, u->arg, err);
	if (!strcmp(u->what, "delete"))
		return sweep(p, err);
	return vmops_err(err, VMOPS_EXIT_FAILURE, "undo: unknown step %s", u->what);
}

/* Run (and drop) the undo actions of `kinds`, newest first; keep the first error. */
static int unwind(struct vmops_prep *p, bool files_too, struct vmops_error *err)
{
	struct vmops_error e2;
	size_t keep = 0, i;
	int r = 0;

	for (i = p->n_undo; i-- > 0;) {
		const struct vmops_snap_undo *u = &p->undo[i];

		if (u->kind == VMOPS_UNDO_FILE && !files_too)
			continue;
		vmops_err_clear(&e2);
		if (undo_one(p, u, &e2) < 0) {
			vmops_warn("undo %s: %s", u->what, e2.msg);
			if (r == 0 && err)
				*err = e2;
			r = -1;
		} else {
			vmops_debug("undo %s: done", u->what);
		}
	}
	/* What was not run stays registered (files kept on release). */
	for (i = 0; i < p->n_undo; i++)
		if (p->undo[i].kind == VMOPS_UNDO_FILE && !files_too)
			p->undo[keep++] = p->undo[i];
	p->n_undo = keep;
	return r;
}

/* Failure: unwind everything, keep the error that caused it. */
static int fail(struct vmops_prep *p, const char *step, struct vmops_error *err)
{
	struct vmops_error e2;

	p->failed_step = step;
	if (unwind(p, true, &e2) < 0)
		vmops_warn("unwinding after %s failed: %s", step, e2.msg);
	return -1;
}

int vmops_prep_release(struct vmops_prep *p, struct vmops_error *err)
{
	return unwind(p, false, err);
}

int vmops_prep_undo(struct vmops_prep *p, struct vmops_error *err)
{
	return unwind(p, true, err);
}

/* --- prepare steps --------------------------------------------------------------- */

/*
 * A free-page hinting round left running keeps the host discarding guest
 * pages after the pause: wait for it (hint_ms), else stop it and see it
 * stopped (hint_stop_ms).  A stop that fails or is never confirmed fails
 * the step: the VM is put back, nothing is written.
 */
static int step_hint(struct vmops_prep *p, struct vmops_error *err)
{
	int r;

	if (!vmops_hv_can(p->h, VMOPS_HV_OP_HINT))
		return 0;
	vmops_fault_point("hint");
	r = vmops_hv_hint_drain(p->h, ms_or(p->o.hint_ms, VMOPS_SNAP_HINT_MS),
				ms_or(p->o.hint_stop_ms, VMOPS_SNAP_HINT_STOP_MS), p->o.interrupted, err);
	if (r == VMOPS_HINT_STOPPED)
		vmops_info("free-page hinting round stopped before the pause");
	return r < 0 ? -1 : 0;
}

static int step_balloon(struct vmops_prep *p, struct vmops_error *err)
{
	if (!p->o.balloon_bytes)
		return 0;
	vmops_fault_point("balloon");
	if (vmops_hv_balloon_get(p->h, &p->balloon_found, err) < 0)
		return -1;
	if (push(p, "deflate", VMOPS_UNDO_VM, p->balloon_found, err) < 0)
		return -1;
	return vmops_hv_balloon_set(p->h, p->o.balloon_bytes, err);
}

static int step_quiesce(struct vmops_prep *p, struct vmops_error *err)
{
	int n;

	if (p->o.no_quiesce)
		return 0;
	if (!vmops_hv_can(p->h, VMOPS_HV_OP_QUIESCE)) {
		/* No guest agent channel (Cloud Hypervisor, Firecracker): crash-consistent. */
		vmops_info("%s: no guest agent: filesystems not frozen", vmops_hv_info(p->h)->kind);
		return 0;
	}
	vmops_fault_point("quiesce");
	/* First the undo: a freeze that times out here may still happen there. */
	if (push(p, "thaw", VMOPS_UNDO_VM, 0, err) < 0)
		return -1;
	p->frozen = -1;
	n = vmops_hv_quiesce(p->h, ms_or(p->o.agent_ms, VMOPS_SNAP_AGENT_MS),
			     ms_or(p->o.prepare_ms, VMOPS_SNAP_PREPARE_MS), err);
	if (n < 0)
		return -1;
	p->frozen = n;
	return 0;
}

/* Live: ask the hypervisor whether it takes a live snapshot, changing nothing. */
static int step_live(struct vmops_prep *p, struct vmops_error *err)
{
	struct vmops_snapshot_opts so = { .live = true, .check_only = true };

	if (!p->o.live)
		return 0;
	if (strcmp(vmops_hv_info(p->h)->kind, "qemu") != 0)
		return vmops_err(err, VMOPS_EXIT_CONFLICT, "live snapshot refused: %s has no background snapshot",
				 vmops_hv_info(p->h)->kind);
	return vmops_hv_snapshot(p->h, -1, &so, err);
}

static int step_pause(struct vmops_prep *p, struct vmops_error *err)
{
	struct vmops_vm_status st;

	if (p->o.live)
		return 0;
	vmops_fault_point("pause");
	if (vmops_hv_status(p->h, &st, err) < 0)
		return -1;
	p->was_running = st.running;
	if (!st.running)
		return 0;
	if (push(p, "resume", VMOPS_UNDO_VM, 0, err) < 0)
		return -1;
	if (vmops_hv_pause(p->h, err) < 0)
		return -1;
	p->paused_at_ms = now_ms();
	return 0;
}

int vmops_prepare(struct vmops_prep *p, struct vmops_hv *h, const struct vmops_prepare_opts *o,
		  struct vmops_error *err)
{
	static const struct {
		const char *name;
		int (*fn)(struct vmops_prep *, struct vmops_error *);
	} steps[] = {
		{ "live", step_live },
		{ "balloon", step_balloon },
		{ "quiesce", step_quiesce },
		{ "hint", step_hint },
		{ "pause", step_pause },
	};

	memset(p, 0, sizeof(*p));
	p->h = h;
	p->o = *o;
	p->dirfd = -1;
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		if (check_interrupted(p, steps[i].name, err) < 0)
			return fail(p, steps[i].name, err);
		if (steps[i].fn(p, err) < 0) {
			vmops_err_prefix(err, "%s", steps[i].name);
			return fail(p, steps[i].name, err);
		}
	}
	return 0;
}

/* --- snapshot ------------------------------------------------------------------------ */

static int add_file(struct vmops_prep *p, const char *name, struct vmops_error *err)
{
	for (size_t i = 0; i < p->n_files; i++)
		if (!strcmp(p->files[i], name))
			return 0;
	if (p->n_files >= VMOPS_SNAP_UNDO_MAX || strlen(name) >= sizeof(p->files[0]))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "snapshot: too many files, or %s too long", name);
	snprintf(p->files[p->n_files++], sizeof(p->files[0]), "%s", name);
	return 0;
}

/* Add every regular file in dirfd (what the VMM wrote) to p->files. */
static int collect_files(struct vmops_prep *p, struct vmops_error *err)
{
	int fd = openat(p->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	struct stat st;
	DIR *d;
	int r = 0;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "snapshot directory: %s", strerror(errno));
	}
	while (r == 0 && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (fstatat(p->dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
			r = vmops_err(err, VMOPS_EXIT_HYPERVISOR, "snapshot: %s is not a regular file",
				      de->d_name);
		else
			r = add_file(p, de->d_name, err);
	}
	closedir(d);
	return r;
}

/* Is dirfd empty?  (Then everything in it after the snapshot is ours.) */
static int check_empty(int dirfd, struct vmops_error *err)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	bool empty = true;
	DIR *d;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "snapshot directory: %s", strerror(errno));
	}
	while (empty && (de = readdir(d)))
		empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
	closedir(d);
	return empty ? 0 : vmops_err(err, VMOPS_EXIT_FAILURE, "snapshot directory is not empty");
}

/*
 * The VMM writes its own files (hv.h leaves the names to the driver: QEMU
 * vmstate; Cloud Hypervisor config.json, state.json, memory-ranges;
 * Firecracker vmstate, memory).  The undo (delete everything in the
 * directory) is registered before the write starts; afterwards whatever
 * is there is the snapshot.
 */
static int snapshot_vmm(struct vmops_prep *p, int timeout_ms, struct vmops_error *err)
{
	struct vmops_snapshot_opts so = { .live = p->o.live, .timeout_ms = timeout_ms,
					  .interrupted = p->o.interrupted };

	vmops_fault_point("snapshot");
	if (push(p, "delete", VMOPS_UNDO_FILE, 0, err) < 0 ||
	    vmops_hv_snapshot(p->h, p->dirfd, &so, err) < 0)
		return -1;
	return collect_files(p, err);
}

/* A live snapshot's memory is the guest's at the start of the write; a disk
 * copied afterwards matches it only while the guest's filesystems are
 * frozen (they stay frozen until release). */
static int live_disks_ok(const struct vmops_prep *p, const struct vmops_spec *spec,
			 struct vmops_error *err)
{
	for (size_t i = 0; p->o.live && p->o.no_quiesce && spec && i < spec->n_disks; i++)
		if (!spec->disks[i].readonly)
			return vmops_err(err, VMOPS_EXIT_CONFLICT,
					 "live snapshot of a guest with a writable disk needs the freeze (no --no-quiesce)");
	return 0;
}

static int snapshot_disks(struct vmops_prep *p, const struct vmops_spec *spec,
			  struct vmops_error *err)
{
	char name[32];

	vmops_fault_point("disks");
	for (size_t i = 0; spec && i < spec->n_disks; i++) {
		if (spec->disks[i].readonly)
			continue;
		snprintf(name, sizeof(name), "disk%zu.img", i);
		if (add_file(p, name, err) < 0 ||
		    vmops_copy_sparse(spec->disks[i].path, p->dirfd, name, p->o.interrupted, err) < 0)
			return -1;
	}
	return 0;
}

int vmops_prep_snapshot(struct vmops_prep *p, int dirfd, const struct vmops_spec *spec,
			int timeout_ms, const char *names[VMOPS_SNAP_UNDO_MAX], size_t *n_names,
			struct vmops_error *err)
{
	if (check_empty(dirfd, err) < 0)
		return fail(p, "snapshot", err);
	p->dirfd = dirfd;
	if (check_interrupted(p, "snapshot", err) < 0)
		return fail(p, "snapshot", err);
	if (live_disks_ok(p, spec, err) < 0)
		return fail(p, "snapshot", err);
	if (snapshot_vmm(p, timeout_ms, err) < 0) {
		vmops_err_prefix(err, "snapshot");
		return fail(p, "snapshot", err);
	}
	if (check_interrupted(p, "disks", err) < 0)
		return fail(p, "disks", err);
	if (snapshot_disks(p, spec, err) < 0) {
		vmops_err_prefix(err, "disks");
		return fail(p, "disks", err);
	}
	if (names)
		for (size_t i = 0; i < p->n_files; i++)
			names[i] = p->files[i];
	if (n_names)
		*n_names = p->n_files;
	return 0;
}

/* --- recovery ------------------------------------------------------------------------ */

int vmops_prep_recover(struct vmops_hv *h, const struct vmops_prepare_opts *o,
		       struct vmops_error *err)
{
	struct vmops_prep p = { .h = h, .o = *o, .dirfd = -1 };
	struct vmops_vm_status st;

	if (vmops_hv_status(h, &st, err) < 0)
		return -1;
	if (!st.running && (!strcmp(st.status, "paused") || !strcmp(st.status, "postmigrate")) &&
	    vmops_hv_resume(h, err) < 0)
		return -1;
	if (o->no_quiesce || !vmops_hv_can(h, VMOPS_HV_OP_QUIESCE))
		return 0;
	if (undo_thaw(&p, err) < 0)
		return -1;
	return 0;
}
