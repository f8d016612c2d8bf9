/* SPDX-License-Identifier: MIT */
/*
 * QEMU driver, optional operations: quiesce / thaw through the guest agent,
 * the balloon, and snapshot / restore as a migration stream to / from a
 * file we opened (getfd + SCM_RIGHTS; never exec:, never a path QEMU opens).
 *
 * Balloon: the device exists only when the spec asks for it ("balloon");
 * without it the balloon operations fail with QEMU's own "no balloon
 * device" error (VMOPS_EXIT_HYPERVISOR).  Free-page hinting outside a
 * migration does not exist in QEMU: hint_* stay NULL (not supported).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "hv_qemu.h"
#include "log.h"
#include "macro.h"
#include "qga.h"

#define VMM_FMT "qemu vmm %" PRIu64
#define VMM_ARG(h) (vmops_hv_info(h)->vmm_id)
#define SNAP_FDNAME "vmops-snapshot"
#define RESTORE_FDNAME "vmops-restore"
#define SNAPSHOT_DEFAULT_MS 600000     /* the write, when opts give no timeout */
#define LIVE_FINISH_GRACE_MS 60000     /* an interrupted live write may finish this long past it */

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

static const char *errstr(int e, char *buf, size_t size)
{
	snprintf(buf, size, "%s", strerror(e));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

static int oom(struct vmops_hv *h, struct vmops_error *err)
{
	return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
}

/* --- guest agent ---------------------------------------------------------- */

/*
 * Connect to the agent's socket and sync, both within agent_ms: that budget
 * is spent here and nowhere else.
 */
static struct vmops_qga *agent_open(struct vmops_hv *h, int agent_ms, struct vmops_error *err)
{
	const char *path = vmops_hv_info(h)->agent_socket;
	int64_t deadline = now_ms() + (agent_ms > 0 ? agent_ms : VMOPS_QMP_TIMEOUT_MS);
	struct vmops_qga *g;
	int64_t left;

	if (!path[0]) {
		vmops_err(err, VMOPS_EXIT_CONFLICT, VMM_FMT ": no guest agent socket", VMM_ARG(h));
		return NULL;
	}
	g = vmops_qga_connect(path, agent_ms > 0 ? agent_ms : VMOPS_QMP_TIMEOUT_MS, err);
	if (!g)
		return NULL;
	left = deadline - now_ms();
	if (vmops_qga_sync(g, left > 1 ? (int)left : 1, err) < 0) {
		if (err->code == VMOPS_EXIT_TIMEOUT)
			vmops_err_prefix(err, "agent timeout %d ms", agent_ms > 0 ? agent_ms : VMOPS_QMP_TIMEOUT_MS);
		vmops_qga_close(g);
		return NULL;
	}
	return g;
}

int vmops_qemu_quiesce(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err)
{
	_cleanup_qga_ struct vmops_qga *g = agent_open(h, agent_ms, err);
	int n;

	if (!g)
		return -1;
	n = vmops_qga_fsfreeze_freeze(g, op_ms, err);
	if (n < 0 && err->code == VMOPS_EXIT_TIMEOUT)
		vmops_err_prefix(err, "prepare timeout %d ms", op_ms > 0 ? op_ms : VMOPS_QMP_TIMEOUT_MS);
	if (n >= 0)
		vmops_debug(VMM_FMT ": %d guest filesystem%s frozen", VMM_ARG(h), n, n == 1 ? "" : "s");
	return n;
}

int vmops_qemu_thaw(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err)
{
	_cleanup_qga_ struct vmops_qga *g = agent_open(h, agent_ms, err);
	int n;

	if (!g)
		return -1;
	n = vmops_qga_fsfreeze_thaw(g, op_ms, err);
	if (n >= 0)
		vmops_debug(VMM_FMT ": %d guest filesystem%s thawed", VMM_ARG(h), n, n == 1 ? "" : "s");
	return n;
}

/* --- balloon ----------------------------------------------------------------- */

static int base_memory(struct vmops_hv *h, uint64_t *bytes, struct vmops_error *err)
{
	cJSON *ret = NULL;
	const cJSON *v;

	if (vmops_qemu_cmd(h, "query-memory-size-summary", NULL, &ret, err) < 0)
		return -1;
	v = cJSON_GetObjectItemCaseSensitive(ret, "base-memory");
	if (!cJSON_IsNumber(v) || v->valuedouble <= 0) {
		cJSON_Delete(ret);
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": query-memory-size-summary: no base-memory",
				 VMM_ARG(h));
	}
	*bytes = (uint64_t)v->valuedouble;
	cJSON_Delete(ret);
	return 0;
}

/* QMP `balloon` takes the guest's target size; ours is what is taken away. */
int vmops_qemu_balloon_set(struct vmops_hv *h, uint64_t bytes, struct vmops_error *err)
{
	uint64_t base;
	cJSON *args;
	int r;

	if (base_memory(h, &base, err) < 0)
		return -1;
	if (bytes >= base)
		return vmops_err(err, VMOPS_EXIT_FAILURE,
				 VMM_FMT ": balloon of %" PRIu64 " bytes leaves the guest no memory (%" PRIu64 ")",
				 VMM_ARG(h), bytes, base);
	args = cJSON_CreateObject();
	if (!args || !cJSON_AddNumberToObject(args, "value", (double)(base - bytes))) {
		cJSON_Delete(args);
		return oom(h, err);
	}
	r = vmops_qemu_cmd(h, "balloon", args, NULL, err);
	cJSON_Delete(args);
	return r;
}

int vmops_qemu_balloon_get(struct vmops_hv *h, uint64_t *bytes, struct vmops_error *err)
{
	uint64_t base, actual;
	cJSON *ret = NULL;
	const cJSON *v;

	if (base_memory(h, &base, err) < 0)
		return -1;
	if (vmops_qemu_cmd(h, "query-balloon", NULL, &ret, err) < 0)
		return -1;
	v = cJSON_GetObjectItemCaseSensitive(ret, "actual");
	actual = cJSON_IsNumber(v) && v->valuedouble > 0 ? (uint64_t)v->valuedouble : base;
	cJSON_Delete(ret);
	*bytes = actual < base ? base - actual : 0;
	return 0;
}

/* --- snapshot (migration to a file descriptor) ------------------------------------ */

static int set_cap(struct vmops_hv *h, const char *cap, bool on, struct vmops_error *err)
{
	cJSON *args = cJSON_CreateObject();
	cJSON *caps = args ? cJSON_AddArrayToObject(args, "capabilities") : NULL;
	cJSON *c = cJSON_CreateObject();
	int r;

	if (!caps || !c || !cJSON_AddItemToArray(caps, c)) {
		cJSON_Delete(c);
		cJSON_Delete(args);
		return oom(h, err);
	}
	if (!cJSON_AddStringToObject(c, "capability", cap) || !cJSON_AddBoolToObject(c, "state", on)) {
		cJSON_Delete(args);
		return oom(h, err);
	}
	r = vmops_qemu_cmd(h, "migrate-set-capabilities", args, NULL, err);
	cJSON_Delete(args);
	return r;
}

static int check_paused(struct vmops_hv *h, bool live, struct vmops_error *err);

/*
 * background-snapshot on or off.  QEMU checks at this point whether it can
 * write-protect guest memory (userfaultfd with write protection, for every
 * RAM block): a refusal is CONFLICT, and nothing was changed.
 */
static int set_live(struct vmops_hv *h, struct vmops_qmp *q, bool live, struct vmops_error *err)
{
	int have = vmops_qmp_has_migrate_capability(q, "background-snapshot", NULL, err);

	if (have < 0)
		return -1;
	if (live && !have)
		return vmops_err(err, VMOPS_EXIT_CONFLICT,
				 VMM_FMT ": live snapshot refused: this qemu has no background-snapshot",
				 VMM_ARG(h));
	if (!have)
		return 0;
	if (set_cap(h, "background-snapshot", live, err) < 0) {
		if (live && err->code == VMOPS_EXIT_HYPERVISOR)
			err->code = VMOPS_EXIT_CONFLICT;
		return live ? vmops_err_prefix(err, "live snapshot refused") : -1;
	}
	return 0;
}

/* Capabilities and parameters for a migration into a file: one stream, no
 * bandwidth cap, background-snapshot exactly when live. */
static int snapshot_setup(struct vmops_hv *h, bool live, struct vmops_error *err)
{
	struct vmops_qmp *q = vmops_qemu_conn(h, err);
	cJSON *args;
	int have, r;

	if (!q)
		return -1;
	have = vmops_qmp_has_migrate_capability(q, "multifd", NULL, err);
	if (have < 0 || (have && set_cap(h, "multifd", false, err) < 0))
		return -1;
	if (set_live(h, q, live, err) < 0)
		return -1;
	args = cJSON_CreateObject();
	if (!args || !cJSON_AddNumberToObject(args, "max-bandwidth",
					      (double)VMOPS_MIGRATE_DEFAULT_BANDWIDTH)) {
		cJSON_Delete(args);
		return oom(h, err);
	}
	r = vmops_qemu_cmd(h, "migrate-set-parameters", args, NULL, err);
	cJSON_Delete(args);
	return r;
}

/* Leave background-snapshot off after a live snapshot: a later migration of
 * this VM (vm-migrate) must be an ordinary one. */
static void live_off(struct vmops_hv *h)
{
	struct vmops_error e2 = { 0 };
	struct vmops_qmp *q = vmops_qemu_conn(h, &e2);

	if (!q || set_live(h, q, false, &e2) < 0)
		vmops_warn(VMM_FMT ": turning background-snapshot off: %s", VMM_ARG(h), e2.msg);
}

/* check_only: would QEMU take a live snapshot of this running VM?  Turns
 * background-snapshot on (QEMU's own check) and off again. */
static int live_check(struct vmops_hv *h, struct vmops_error *err)
{
	struct vmops_qmp *q = vmops_qemu_conn(h, err);
	int r;

	if (!q || check_paused(h, true, err) < 0)
		return -1;
	r = set_live(h, q, true, err);
	if (r == 0)
		live_off(h);
	return r;
}

static int check_paused(struct vmops_hv *h, bool live, struct vmops_error *err)
{
	struct vmops_vm_status st;

	if (vmops_hv_status(h, &st, err) < 0)
		return -1;
	if (!live && st.running)
		return vmops_err(err, VMOPS_EXIT_CONFLICT,
				 VMM_FMT ": snapshot: the vm is running (pause it first, or take a live snapshot)",
				 VMM_ARG(h));
	if (live && !st.running)
		return vmops_err(err, VMOPS_EXIT_CONFLICT,
				 VMM_FMT ": live snapshot: the vm is %s, not running", VMM_ARG(h), st.status);
	return 0;
}

/* Cancel a migration in flight and wait (bounded) until QEMU says it ended. */
static void cancel_and_wait(struct vmops_hv *h)
{
	struct vmops_migrate_progress p;
	struct vmops_error e2;

	if (vmops_hv_cancel(h, &e2) < 0)
		vmops_debug("%s", e2.msg);
	for (int i = 0; i < 200; i++) {
		if (vmops_hv_progress(h, &p, &e2) < 0 || vmops_migrate_status_is_final(p.status))
			return;
		sleep_ms(25);
	}
	vmops_warn(VMM_FMT ": snapshot migration still %s after cancel", VMM_ARG(h), p.status);
}

/*
 * A live snapshot is never cancelled once QEMU writes it: it is let finish,
 * then deleted.  QEMU 7.2 write-protects guest RAM (userfaultfd) and lifts
 * the protection of a page as it copies it, of the rest only in the
 * migration's cleanup.  migrate_cancel stops the copying first; a device
 * or vCPU that then writes a page still protected blocks with the big lock
 * held, while the migration thread waits for that lock before its cleanup:
 * QEMU hangs for good, vCPUs, monitor and guest agent (seen here: main
 * thread in handle_userfault under virtio_blk_handle_vq, migration thread
 * in qemu_mutex_lock_iothread).  A completed write has lifted every
 * protection.  Bounded by `deadline`; not finished by then: it is left to
 * QEMU (into a deleted file), with a warning, still not cancelled.
 */
static void finish_live_write(struct vmops_hv *h, int64_t deadline)
{
	struct vmops_migrate_progress p = { .status = "unknown" };
	struct vmops_error e2;

	vmops_info(VMM_FMT ": letting the live snapshot finish before deleting it"
		   " (cancelling one can hang qemu)", VMM_ARG(h));
	while (now_ms() < deadline) {
		if (vmops_hv_progress(h, &p, &e2) < 0) {
			vmops_warn("%s", e2.msg);
			return;
		}
		if (vmops_migrate_status_is_final(p.status))
			return;
		sleep_ms(50);
	}
	vmops_warn(VMM_FMT ": live snapshot still %s: left to qemu, not cancelled", VMM_ARG(h), p.status);
}

/* Poll the migration until it is final, the deadline passes or we are told to stop. */
static int wait_migration(struct vmops_hv *h, const char *what, int timeout_ms,
			  volatile sig_atomic_t *interrupted, struct vmops_error *err)
{
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : SNAPSHOT_DEFAULT_MS);
	struct vmops_migrate_progress p;
	int pause = 5;

	for (;;) {
		if (vmops_hv_progress(h, &p, err) < 0)
			return -1;
		if (!strcmp(p.status, "completed"))
			return 0;
		if (!strcmp(p.status, "failed") || !strcmp(p.status, "cancelled"))
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": %s %s%s%s", VMM_ARG(h),
					 what, p.status, p.error_desc[0] ? ": " : "", p.error_desc);
		if ((interrupted && *interrupted) || vmops_hv_interrupted(h))
			return vmops_err(err, VMOPS_EXIT_INTERRUPTED, VMM_FMT ": %s interrupted",
					 VMM_ARG(h), what);
		if (now_ms() >= deadline)
			return vmops_err(err, VMOPS_EXIT_TIMEOUT,
					 VMM_FMT ": %s not done after %d ms (%s, %" PRIu64 " bytes)",
					 VMM_ARG(h), what, timeout_ms, p.status, p.transferred_bytes);
		sleep_ms(pause);
		if (pause < 100)
			pause *= 2;
	}
}

static int start_migration(struct vmops_hv *h, const char *cmd, const char *fdname,
			   struct vmops_error *err)
{
	char uri[64];
	cJSON *args = cJSON_CreateObject();
	int r;

	snprintf(uri, sizeof(uri), "fd:%s", fdname);
	if (!args || !cJSON_AddStringToObject(args, "uri", uri)) {
		cJSON_Delete(args);
		return oom(h, err);
	}
	r = vmops_qemu_cmd(h, cmd, args, NULL, err);
	cJSON_Delete(args);
	return r;
}

static int send_fd(struct vmops_hv *h, int fd, const char *name, struct vmops_error *err)
{
	struct vmops_qmp *q = vmops_qemu_conn(h, err);

	return q ? vmops_qmp_send_fd(q, fd, name, err) : -1;
}

/* Told to stop before the write starts: nothing to let finish. */
static int not_interrupted(struct vmops_hv *h, const struct vmops_snapshot_opts *o,
			   struct vmops_error *err)
{
	if ((o->interrupted && *o->interrupted) || vmops_hv_interrupted(h))
		return vmops_err(err, VMOPS_EXIT_INTERRUPTED, VMM_FMT ": snapshot interrupted before the write",
				 VMM_ARG(h));
	return 0;
}

/* The migration into a new file in dirfd (set up already). */
static int write_snapshot(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
			  struct vmops_error *err)
{
	int timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : SNAPSHOT_DEFAULT_MS;
	int64_t start = now_ms();
	_cleanup_close_ int fd = -1;
	char eb[128];

	/* Ours, new, never followed through a link; QEMU only gets the fd. */
	fd = openat(dirfd, VMOPS_QEMU_SNAPSHOT_FILE,
		    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": snapshot: create %s: %s",
				 VMM_ARG(h), VMOPS_QEMU_SNAPSHOT_FILE,
				 errstr(errno, eb, sizeof(eb)));
	if (send_fd(h, fd, SNAP_FDNAME, err) < 0 || not_interrupted(h, o, err) < 0 ||
	    start_migration(h, "migrate", SNAP_FDNAME, err) < 0)
		goto fail;
	if (wait_migration(h, "snapshot", o->timeout_ms, o->interrupted, err) < 0) {
		if (o->live)
			finish_live_write(h, start + timeout_ms + LIVE_FINISH_GRACE_MS);
		else
			cancel_and_wait(h);
		goto fail;
	}
	if (fsync(fd) < 0) {
		vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": snapshot: fsync: %s", VMM_ARG(h),
			  errstr(errno, eb, sizeof(eb)));
		goto fail;
	}
	vmops_debug(VMM_FMT ": snapshot written (%s)", VMM_ARG(h), o->live ? "live" : "paused");
	return 0;
fail:
	/* No half snapshot stays behind; QEMU may still hold its copy of the fd. */
	unlinkat(dirfd, VMOPS_QEMU_SNAPSHOT_FILE, 0);
	return -1;
}

int vmops_qemu_snapshot(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
			struct vmops_error *err)
{
	int r;

	if (o->diff)
		return vmops_err(err, VMOPS_EXIT_CONFLICT, VMM_FMT ": diff snapshot: not supported",
				 VMM_ARG(h));
	if (o->check_only)
		return o->live ? live_check(h, err) : 0;
	if (check_paused(h, o->live, err) < 0 || snapshot_setup(h, o->live, err) < 0)
		return -1;
	r = write_snapshot(h, dirfd, o, err);
	if (o->live)
		live_off(h);
	return r;
}

/* --- restore (receiver launched with -incoming defer) ------------------------------ */

int vmops_qemu_restore(struct vmops_hv *h, int dirfd, int timeout_ms, struct vmops_error *err)
{
	_cleanup_close_ int fd = -1;
	struct vmops_vm_status st;
	struct stat sb;
	char eb[128];

	if (!vmops_hv_info(h)->incoming)
		return vmops_err(err, VMOPS_EXIT_CONFLICT,
				 VMM_FMT ": restore: not launched to receive a snapshot", VMM_ARG(h));
	fd = openat(dirfd, VMOPS_QEMU_SNAPSHOT_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &sb) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": restore: open %s: %s",
				 VMM_ARG(h), VMOPS_QEMU_SNAPSHOT_FILE,
				 errstr(errno, eb, sizeof(eb)));
	if (!S_ISREG(sb.st_mode))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, VMM_FMT ": restore: %s is not a regular file",
				 VMM_ARG(h), VMOPS_QEMU_SNAPSHOT_FILE);
	if (vmops_hv_wait_ready(h, timeout_ms, err) < 0 ||
	    send_fd(h, fd, RESTORE_FDNAME, err) < 0 ||
	    start_migration(h, "migrate-incoming", RESTORE_FDNAME, err) < 0 ||
	    wait_migration(h, "restore", timeout_ms, NULL, err) < 0)
		return -1;
	/* Loaded; the receiver was started with -S: nothing runs until resume. */
	if (vmops_hv_status(h, &st, err) < 0)
		return -1;
	if (st.running)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR,
				 VMM_FMT ": restore: the vm runs before it was resumed", VMM_ARG(h));
	vmops_debug(VMM_FMT ": snapshot loaded (%s)", VMM_ARG(h), st.status);
	return 0;
}

int vmops_qemu_version(struct vmops_hv *h, char *buf, size_t len, struct vmops_error *err)
{
	struct vmops_qmp *q = vmops_hv_qmp(h);
	int major, minor, micro;

	if (!q || vmops_qmp_version(q, &major, &minor, &micro) < 0)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": version unknown", VMM_ARG(h));
	snprintf(buf, len, "%d.%d.%d", major, minor, micro);
	return 0;
}
