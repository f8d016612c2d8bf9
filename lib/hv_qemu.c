/* SPDX-License-Identifier: MIT */
/*
 * QEMU driver: qemu-system-x86_64 started directly (fork/exec, no shell, no
 * -daemonize), driven over QMP.
 *
 * Run directory layout (one per VMM):
 *   qmp.sock     QMP control socket
 *   qga.sock     guest agent chardev (virtio-serial org.qemu.guest_agent.0)
 *   serial.log   the guest's serial console
 *   qemu.log     QEMU's stdout and stderr
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "hv.h"
#include "hv_qemu.h"
#include "log.h"
#include "logcap.h"
#include "macro.h"
#include "qmp.h"
#include "rundir.h"

#define QEMU_DEFAULT_BINARY "qemu-system-x86_64"

struct qemu_priv {
	struct vmops_qmp *qmp;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining_ms(int64_t deadline)
{
	int64_t left = deadline - now_ms();

	return left < 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
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

static struct qemu_priv *priv(struct vmops_hv *h)
{
	return vmops_hv_priv(h);
}

#define VMM_FMT "qemu vmm %" PRIu64
#define VMM_ARG(h) (vmops_hv_info(h)->vmm_id)

/* --- argv building --------------------------------------------------------- */

struct strv {
	char **v;
	size_t n, cap;
	bool oom;
};

static void strv_add(struct strv *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void strv_add(struct strv *s, const char *fmt, ...)
{
	va_list ap;
	char *str;

	if (s->oom)
		return;
	if (s->n + 2 > s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		char **nv = realloc(s->v, cap * sizeof(*nv));

		if (!nv) {
			s->oom = true;
			return;
		}
		s->v = nv;
		s->cap = cap;
	}
	va_start(ap, fmt);
	if (vasprintf(&str, fmt, ap) < 0) {
		s->oom = true;
		str = NULL;
	}
	va_end(ap);
	if (!str)
		return;
	s->v[s->n++] = str;
	s->v[s->n] = NULL;
}

static void strv_free(struct strv *s)
{
	size_t i;

	for (i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	memset(s, 0, sizeof(*s));
}

/* QemuOpts value: a ',' is written ",,". Returns malloc'ed text or NULL. */
static char *opt_escape(const char *s)
{
	size_t n = 0;
	const char *p;
	char *out, *o;

	for (p = s; *p; p++)
		n += *p == ',' ? 2 : 1;
	out = malloc(n + 1);
	if (!out)
		return NULL;
	for (p = s, o = out; *p; p++) {
		*o++ = *p;
		if (*p == ',')
			*o++ = ',';
	}
	*o = '\0';
	return out;
}

static int build_argv(struct vmops_hv *h, const struct vmops_spec *spec,
		      const struct vmops_hv_launch_opts *opts, const char *binary,
		      bool incoming, struct strv *a, struct vmops_error *err)
{
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	enum vmops_accel accel = spec->accel;
	size_t i;

	strv_add(a, "%s", binary);
	/* Fleet convention: ghost-reap finds our processes by this token. */
	strv_add(a, "-name");
	strv_add(a, "vmops-vmm-%" PRIu64, info->vmm_id);
	strv_add(a, "-nodefaults");
	strv_add(a, "-no-user-config");
	strv_add(a, "-nographic");
	strv_add(a, "-display");
	strv_add(a, "none");
	if (accel == VMOPS_ACCEL_AUTO)
		accel = opts->auto_accel;
	switch (accel) {
	case VMOPS_ACCEL_TCG:
		strv_add(a, "-accel");
		strv_add(a, "tcg");
		break;
	case VMOPS_ACCEL_KVM:
		strv_add(a, "-accel");
		strv_add(a, "kvm");
		break;
	case VMOPS_ACCEL_AUTO:
		/* QEMU tries them in order. */
		strv_add(a, "-accel");
		strv_add(a, "kvm");
		strv_add(a, "-accel");
		strv_add(a, "tcg");
		break;
	}
	strv_add(a, "-m");
	if (accel == VMOPS_ACCEL_KVM)
		strv_add(a, "%" PRIu32 "M", spec->memory_mb);
	else
		/*
		 * QEMU before 9.0 loses dirty pages when migrating a TCG
		 * guest: the fast path of cpu_physical_memory_sync_dirty_bitmap(),
		 * taken when a RAM block's length is a multiple of 64 pages,
		 * clears dirty bits without resetting the TCG TLB, so guest
		 * stores through cached TLB entries go unlogged and the target
		 * runs on stale pages (fixed upstream by 03bfc2188f "physmem:
		 * Fix migration dirty bitmap coherency with TCG memory
		 * access").  Whenever TCG may run the guest, 8 KiB more RAM
		 * (QEMU's -m granularity) sends every sync down the slow,
		 * correct path.  Both ends of a migration get the same size.
		 */
		strv_add(a, "%" PRIu64 "k", (uint64_t)spec->memory_mb * 1024 + 8);
	strv_add(a, "-smp");
	strv_add(a, "%" PRIu32, spec->vcpus);
	strv_add(a, "-kernel");
	strv_add(a, "%s", spec->kernel);
	if (spec->initrd) {
		strv_add(a, "-initrd");
		strv_add(a, "%s", spec->initrd);
	}
	if (spec->cmdline) {
		strv_add(a, "-append");
		strv_add(a, "%s", spec->cmdline);
	}
	/* run_dir has no ',' (checked), so these need no QemuOpts escaping. */
	/* Appended to, so that logcap can truncate it under the running VMM. */
	strv_add(a, "-chardev");
	strv_add(a, "file,id=serial0,path=%s,append=on", info->serial_log);
	strv_add(a, "-serial");
	strv_add(a, "chardev:serial0");
	strv_add(a, "-qmp");
	strv_add(a, "unix:%s,server=on,wait=off", info->control_socket);
	strv_add(a, "-chardev");
	strv_add(a, "socket,id=qga0,path=%s,server=on,wait=off", info->agent_socket);
	strv_add(a, "-device");
	strv_add(a, "virtio-serial-pci,id=vser0");
	strv_add(a, "-device");
	strv_add(a, "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0");
	if (spec->balloon && spec->balloon_free_page_hint) {
		/* free-page-hint needs an iothread. */
		strv_add(a, "-object");
		strv_add(a, "iothread,id=io0");
		strv_add(a, "-device");
		strv_add(a, "virtio-balloon-pci,id=balloon0,free-page-hint=on,iothread=io0");
	} else if (spec->balloon) {
		strv_add(a, "-device");
		strv_add(a, "virtio-balloon-pci,id=balloon0");
	}
	for (i = 0; i < spec->n_disks; i++) {
		_cleanup_free_ char *path = opt_escape(spec->disks[i].path);

		if (!path) {
			a->oom = true;
			break;
		}
		strv_add(a, "-drive");
		strv_add(a, "file=%s,format=raw,if=none,id=disk%zu%s", path, i,
			 spec->disks[i].readonly ? ",readonly=on" : "");
		strv_add(a, "-device");
		strv_add(a, "virtio-blk-pci,drive=disk%zu,id=vd%zu", i, i);
	}
	if (incoming) {
		/* Paused after the load: only the caller's `cont` lets the guest run there. */
		if (opts->incoming_paused)
			strv_add(a, "-S");
		strv_add(a, "-incoming");
		strv_add(a, "defer");
	}
	if (a->oom)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
	return 0;
}

static int exited_error(struct vmops_hv *h, struct vmops_error *err)
{
	char tail[512];

	vmops_hv_log_tail(h, tail, sizeof(tail));
	return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": pid %d exited%s%s", VMM_ARG(h),
			 (int)vmops_hv_info(h)->pid, tail[0] ? ": " : "", tail);
}

static int qemu_launch(struct vmops_hv *h, const struct vmops_spec *spec,
		       const struct vmops_hv_launch_opts *opts, bool incoming,
		       struct vmops_error *err)
{
	struct vmops_vmm_info *info = vmops_hv_info_mut(h);
	struct qemu_priv *p = priv(h);
	struct strv argv = { 0 };
	_cleanup_free_ char *binary = NULL;
	_cleanup_close_ int logfd = -1, nullfd = -1, dirfd = -1;
	char eb[128];
	int r = -1;

	info->vmm_id = opts->vmm_id;
	info->incoming = incoming;
	if (!p) {
		p = calloc(1, sizeof(*p));
		if (!p)
			return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
		vmops_hv_set_priv(h, p);
	}
	if (!opts->run_dir || opts->run_dir[0] != '/')
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": run dir must be an absolute path",
				 VMM_ARG(h));
	if (strchr(opts->run_dir, ','))
		return vmops_err(err, VMOPS_EXIT_FAILURE,
				 VMM_FMT ": run dir %s: ',' not allowed (QEMU option syntax)",
				 VMM_ARG(h), opts->run_dir);
	if (strlen(opts->run_dir) + sizeof("/qmp.sock") > VMOPS_HV_SOCKPATH_MAX)
		return vmops_err(err, VMOPS_EXIT_FAILURE,
				 VMM_FMT ": run dir %s: too long for a socket path (at most %zu bytes)",
				 VMM_ARG(h), opts->run_dir, VMOPS_HV_SOCKPATH_MAX - sizeof("/qmp.sock"));
	dirfd = vmops_rundir_open(opts->run_dir, err);
	if (dirfd < 0)
		return vmops_err_prefix(err, VMM_FMT, VMM_ARG(h));
	snprintf(info->run_dir, sizeof(info->run_dir), "%s", opts->run_dir);
	snprintf(info->control_socket, sizeof(info->control_socket), "%s/qmp.sock", opts->run_dir);
	snprintf(info->agent_socket, sizeof(info->agent_socket), "%s/qga.sock", opts->run_dir);
	snprintf(info->serial_log, sizeof(info->serial_log), "%s/serial.log", opts->run_dir);
	snprintf(info->stderr_log, sizeof(info->stderr_log), "%s/qemu.log", opts->run_dir);

	binary = vmops_hv_find_binary(opts->binary ? opts->binary : QEMU_DEFAULT_BINARY);
	if (!binary)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": %s: not found or not executable",
				 VMM_ARG(h), opts->binary ? opts->binary : QEMU_DEFAULT_BINARY);
	if (build_argv(h, spec, opts, binary, incoming, &argv, err) < 0)
		goto out;

	/* Stale sockets of a previous VMM in this run dir. */
	unlinkat(dirfd, "qmp.sock", 0);
	unlinkat(dirfd, "qga.sock", 0);
	logfd = openat(dirfd, "qemu.log", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
	/* A previous VMM's serial log in this run dir is not this one's (append=on keeps it otherwise). */
	(void)unlinkat(dirfd, "serial.log", 0);
	if (logfd < 0) {
		vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": %s: %s", VMM_ARG(h), info->stderr_log,
			  errstr(errno, eb, sizeof(eb)));
		goto out;
	}
	nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (nullfd < 0) {
		vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": /dev/null: %s", VMM_ARG(h),
			  errstr(errno, eb, sizeof(eb)));
		goto out;
	}
	{
		char line[2048] = "";
		size_t i;

		for (i = 0; i < argv.n && strlen(line) + 2 < sizeof(line); i++) {
			strncat(line, argv.v[i], sizeof(line) - strlen(line) - 2);
			strcat(line, " ");
		}
		vmops_debug(VMM_FMT ": exec %s", VMM_ARG(h), line);
	}
	if (vmops_hv_spawn(h, binary, argv.v, opts->die_with_parent, logfd, nullfd, err) < 0)
		goto out;
	vmops_debug(VMM_FMT ": started pid %d (start time %llu)%s", VMM_ARG(h), (int)info->pid,
		    info->start_time, incoming ? " as migration receiver" : "");
	{
		static const char *const logs[] = { "serial.log", "qemu.log", NULL };
		struct vmops_error le = { 0 };

		if (vmops_logcap_start(dirfd, info->pid, logs, vmops_logcap_max(), &le) < 0)
			vmops_warn(VMM_FMT ": logs not capped: %s", VMM_ARG(h), le.msg);
	}
	r = 0;
out:
	strv_free(&argv);
	return r;
}

/* --- QMP connection ----------------------------------------------------------- */

static void drop_qmp(struct vmops_hv *h)
{
	struct qemu_priv *p = priv(h);

	if (p && p->qmp) {
		vmops_qmp_close(p->qmp);
		p->qmp = NULL;
	}
}

/* Connect QMP, watching the process so that a dead VMM fails fast. */
static int connect_qmp(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	struct qemu_priv *p = priv(h);
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	int64_t deadline = now_ms() + timeout_ms;
	struct stat st;

	if (p->qmp && vmops_qmp_is_connected(p->qmp))
		return 0;
	drop_qmp(h);
	if (info->pid > 0) {
		/* Until the socket exists, keep an eye on the process. */
		for (;;) {
			if (!vmops_hv_is_alive(h))
				return exited_error(h, err);
			if (vmops_hv_interrupted(h))
				return vmops_err(err, VMOPS_EXIT_INTERRUPTED,
						 VMM_FMT ": interrupted while waiting for its control socket",
						 VMM_ARG(h));
			if (stat(info->control_socket, &st) == 0 && S_ISSOCK(st.st_mode))
				break;
			if (remaining_ms(deadline) == 0)
				return vmops_err(err, VMOPS_EXIT_TIMEOUT,
						 VMM_FMT ": no control socket %s after %d ms",
						 VMM_ARG(h), info->control_socket, timeout_ms);
			sleep_ms(20);
		}
	}
	p->qmp = vmops_qmp_connect(info->control_socket, remaining_ms(deadline) > 0 ? remaining_ms(deadline) : 1, err);
	if (!p->qmp) {
		/* A VMM that dies during the handshake may need a moment to be gone:
		 * its own error message beats "connection reset". */
		for (int i = 0; info->pid > 0 && i < 50; i++) {
			if (!vmops_hv_is_alive(h))
				return exited_error(h, err);
			sleep_ms(20);
		}
		return -1;
	}
	return 0;
}

static int qmp_ensure(struct vmops_hv *h, struct vmops_error *err)
{
	struct qemu_priv *p = priv(h);

	if (p->qmp && vmops_qmp_is_connected(p->qmp))
		return 0;
	if (vmops_hv_info(h)->pid > 0 && !vmops_hv_is_alive(h))
		return exited_error(h, err);
	return connect_qmp(h, VMOPS_QMP_TIMEOUT_MS, err);
}

static int qmp(struct vmops_hv *h, const char *cmd, const cJSON *args, cJSON **reply,
	       struct vmops_error *err)
{
	struct qemu_priv *p = priv(h);

	if (qmp_ensure(h, err) < 0)
		return -1;
	if (vmops_qmp_cmd(p->qmp, cmd, args, reply, VMOPS_QMP_TIMEOUT_MS, err) < 0) {
		if (!vmops_qmp_is_connected(p->qmp) && vmops_hv_info(h)->pid > 0 &&
		    !vmops_hv_is_alive(h))
			return exited_error(h, err);
		return -1;
	}
	return 0;
}

int vmops_qemu_cmd(struct vmops_hv *h, const char *cmd, const cJSON *args, cJSON **reply,
		   struct vmops_error *err)
{
	return qmp(h, cmd, args, reply, err);
}

struct vmops_qmp *vmops_qemu_conn(struct vmops_hv *h, struct vmops_error *err)
{
	return qmp_ensure(h, err) < 0 ? NULL : priv(h)->qmp;
}

struct vmops_qmp *vmops_hv_qmp(struct vmops_hv *h)
{
	struct qemu_priv *p;

	if (!h || vmops_hv_get_driver(h) != &vmops_hv_qemu_driver)
		return NULL;
	p = priv(h);
	return p ? p->qmp : NULL;
}

/* --- operations ------------------------------------------------------------------ */

static int qemu_attach(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	struct qemu_priv *p = calloc(1, sizeof(*p));

	if (!p)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
	vmops_hv_set_priv(h, p);
	if (vmops_hv_info(h)->pid > 0 && !vmops_hv_is_alive(h))
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": pid %d is not running",
				 VMM_ARG(h), (int)vmops_hv_info(h)->pid);
	return connect_qmp(h, timeout_ms > 0 ? timeout_ms : VMOPS_QMP_TIMEOUT_MS, err);
}

static int query_status(struct vmops_hv *h, struct vmops_vm_status *st, struct vmops_error *err)
{
	cJSON *ret = NULL;
	const char *s;

	memset(st, 0, sizeof(*st));
	if (qmp(h, "query-status", NULL, &ret, err) < 0)
		return -1;
	s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ret, "status"));
	snprintf(st->status, sizeof(st->status), "%s", s ? s : "unknown");
	st->running = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ret, "running"));
	cJSON_Delete(ret);
	return 0;
}

static int qemu_wait_ready(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	struct vmops_vm_status st;

	if (timeout_ms <= 0)
		timeout_ms = VMOPS_QMP_TIMEOUT_MS;
	if (connect_qmp(h, timeout_ms, err) < 0)
		return -1;
	if (query_status(h, &st, err) < 0)
		return -1;
	if (vmops_hv_interrupted(h))
		return vmops_err(err, VMOPS_EXIT_INTERRUPTED, VMM_FMT ": interrupted while waiting for it",
				 VMM_ARG(h));
	if (!strcmp(st.status, "internal-error") || !strcmp(st.status, "guest-panicked") ||
	    !strcmp(st.status, "shutdown"))
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": vm is in state %s",
				 VMM_ARG(h), st.status);
	vmops_debug(VMM_FMT ": ready, status %s", VMM_ARG(h), st.status);
	return 0;
}

static int supports_multifd(struct vmops_hv *h, struct vmops_error *err)
{
	if (qmp_ensure(h, err) < 0)
		return -1;
	return vmops_qmp_has_migrate_capability(priv(h)->qmp, "multifd", NULL, err);
}

static int check_uri(struct vmops_hv *h, const char *what, const char *uri,
		     struct vmops_error *err)
{
	if (!uri || !*uri)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": %s: no address", VMM_ARG(h), what);
	/* exec: runs a shell command: never build one from our inputs. */
	if (strncmp(uri, "tcp:", 4) && strncmp(uri, "unix:", 5) && strncmp(uri, "fd:", 3))
		return vmops_err(err, VMOPS_EXIT_FAILURE,
				 VMM_FMT ": %s: unsupported address %s (tcp:, unix: or fd:)",
				 VMM_ARG(h), what, uri);
	return 0;
}

static unsigned connections_of(const struct vmops_migrate_params *mp)
{
	return mp && mp->connections ? mp->connections : 1;
}

/*
 * Set migration capabilities; `multifd` is only mentioned if the peer knows
 * it (an older QEMU rejects unknown capabilities).
 */
static int set_caps(struct vmops_hv *h, bool multifd, bool have_multifd, int auto_converge,
		    struct vmops_error *err)
{
	cJSON *args = cJSON_CreateObject();
	cJSON *caps = args ? cJSON_AddArrayToObject(args, "capabilities") : NULL;
	cJSON *c;
	int r;

	if (!caps)
		goto oom;
	if (have_multifd) {
		c = cJSON_CreateObject();
		if (!c || !cJSON_AddItemToArray(caps, c) ||
		    !cJSON_AddStringToObject(c, "capability", "multifd") ||
		    !cJSON_AddBoolToObject(c, "state", multifd))
			goto oom;
	}
	if (auto_converge >= 0) {
		c = cJSON_CreateObject();
		if (!c || !cJSON_AddItemToArray(caps, c) ||
		    !cJSON_AddStringToObject(c, "capability", "auto-converge") ||
		    !cJSON_AddBoolToObject(c, "state", auto_converge))
			goto oom;
	}
	if (cJSON_GetArraySize(caps) == 0) {
		cJSON_Delete(args);
		return 0;
	}
	r = qmp(h, "migrate-set-capabilities", args, NULL, err);
	cJSON_Delete(args);
	return r;
oom:
	cJSON_Delete(args);
	return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
}

static int setup_multifd(struct vmops_hv *h, unsigned conns, int auto_converge,
			 struct vmops_error *err)
{
	int have = supports_multifd(h, err);

	if (have < 0)
		return -1;
	if (conns > 1 && !have)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR,
				 VMM_FMT ": %u connections requested, but this qemu has no multifd migration",
				 VMM_ARG(h), conns);
	return set_caps(h, conns > 1, have == 1, auto_converge, err);
}

static int qemu_prepare_incoming(struct vmops_hv *h, const char *uri,
				 const struct vmops_migrate_params *mp, int timeout_ms,
				 struct vmops_error *err)
{
	struct vmops_vmm_info *info = vmops_hv_info_mut(h);
	unsigned conns = connections_of(mp);
	cJSON *args, *ret = NULL;
	const cJSON *sa, *a;
	int r;

	if (check_uri(h, "migrate-incoming", uri, err) < 0)
		return -1;
	if (conns > VMOPS_MIGRATE_CONNECTIONS_MAX)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": connections must be 1..%d",
				 VMM_ARG(h), VMOPS_MIGRATE_CONNECTIONS_MAX);
	if (qemu_wait_ready(h, timeout_ms, err) < 0)
		return -1;
	if (conns > 1) {
		if (setup_multifd(h, conns, -1, err) < 0)
			return -1;
		args = cJSON_CreateObject();
		if (!args || !cJSON_AddNumberToObject(args, "multifd-channels", conns)) {
			cJSON_Delete(args);
			return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
		}
		r = qmp(h, "migrate-set-parameters", args, NULL, err);
		cJSON_Delete(args);
		if (r < 0)
			return -1;
	}
	args = cJSON_CreateObject();
	if (!args || !cJSON_AddStringToObject(args, "uri", uri)) {
		cJSON_Delete(args);
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
	}
	r = qmp(h, "migrate-incoming", args, NULL, err);
	cJSON_Delete(args);
	if (r < 0)
		return -1;

	/* Where it really listens (port 0 picks a free one). */
	snprintf(info->incoming_uri, sizeof(info->incoming_uri), "%s", uri);
	if (qmp(h, "query-migrate", NULL, &ret, err) < 0)
		return -1;
	sa = cJSON_GetObjectItemCaseSensitive(ret, "socket-address");
	cJSON_ArrayForEach(a, sa) {
		const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "type"));
		const char *host = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "host"));
		const char *port = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "port"));

		if (type && !strcmp(type, "inet") && host && port) {
			snprintf(info->incoming_uri, sizeof(info->incoming_uri),
				 strchr(host, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", host, port);
			break;
		}
	}
	cJSON_Delete(ret);
	vmops_debug(VMM_FMT ": listening for migration on %s (%u connection%s)", VMM_ARG(h),
		    info->incoming_uri, conns, conns == 1 ? "" : "s");
	return 0;
}

static int qemu_send(struct vmops_hv *h, const char *uri, const struct vmops_migrate_params *mp,
		     struct vmops_error *err)
{
	unsigned conns = connections_of(mp);
	uint64_t bw = mp && mp->max_bandwidth ? mp->max_bandwidth : VMOPS_MIGRATE_DEFAULT_BANDWIDTH;
	cJSON *args;
	int r;

	if (check_uri(h, "migrate", uri, err) < 0)
		return -1;
	if (conns > VMOPS_MIGRATE_CONNECTIONS_MAX)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": connections must be 1..%d",
				 VMM_ARG(h), VMOPS_MIGRATE_CONNECTIONS_MAX);
	if (bw > (1ull << 53))
		bw = 1ull << 53;
	if (setup_multifd(h, conns, mp && mp->auto_converge, err) < 0)
		return -1;

	args = cJSON_CreateObject();
	if (!args || !cJSON_AddNumberToObject(args, "max-bandwidth", (double)bw) ||
	    (mp && mp->downtime_limit_ms &&
	     !cJSON_AddNumberToObject(args, "downtime-limit", mp->downtime_limit_ms)) ||
	    (conns > 1 && !cJSON_AddNumberToObject(args, "multifd-channels", conns))) {
		cJSON_Delete(args);
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
	}
	r = qmp(h, "migrate-set-parameters", args, NULL, err);
	cJSON_Delete(args);
	if (r < 0)
		return -1;

	args = cJSON_CreateObject();
	if (!args || !cJSON_AddStringToObject(args, "uri", uri)) {
		cJSON_Delete(args);
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
	}
	r = qmp(h, "migrate", args, NULL, err);
	cJSON_Delete(args);
	if (r == 0)
		vmops_debug(VMM_FMT ": migrating to %s (%u connection%s, %" PRIu64 " B/s)",
			    VMM_ARG(h), uri, conns, conns == 1 ? "" : "s", bw);
	return r;
}

static int64_t get_int(const cJSON *obj, const char *key, int64_t dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : dflt;
}

static uint64_t get_u64(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsNumber(v) && v->valuedouble > 0 ? (uint64_t)v->valuedouble : 0;
}

static int qemu_progress(struct vmops_hv *h, struct vmops_migrate_progress *p,
			 struct vmops_error *err)
{
	cJSON *ret = NULL;
	const cJSON *ram, *v;
	const char *s;

	memset(p, 0, sizeof(*p));
	p->downtime_ms = p->expected_downtime_ms = p->setup_time_ms = p->total_time_ms = -1;
	if (qmp(h, "query-migrate", NULL, &ret, err) < 0)
		return -1;
	s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ret, "status"));
	snprintf(p->status, sizeof(p->status), "%s", s ? s : "none");
	p->total_time_ms = get_int(ret, "total-time", -1);
	p->setup_time_ms = get_int(ret, "setup-time", -1);
	p->downtime_ms = get_int(ret, "downtime", -1);
	p->expected_downtime_ms = get_int(ret, "expected-downtime", -1);
	p->cpu_throttle_percent = (int)get_int(ret, "cpu-throttle-percentage", 0);
	ram = cJSON_GetObjectItemCaseSensitive(ret, "ram");
	if (ram) {
		p->total_bytes = get_u64(ram, "total");
		p->transferred_bytes = get_u64(ram, "transferred");
		p->remaining_bytes = get_u64(ram, "remaining");
		p->dirty_pages_rate = get_u64(ram, "dirty-pages-rate");
		p->dirty_sync_count = get_u64(ram, "dirty-sync-count");
		p->page_size = get_u64(ram, "page-size");
		p->multifd_bytes = get_u64(ram, "multifd-bytes");
		v = cJSON_GetObjectItemCaseSensitive(ram, "mbps");
		p->mbps = cJSON_IsNumber(v) ? v->valuedouble : 0;
	}
	s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ret, "error-desc"));
	if (s)
		snprintf(p->error_desc, sizeof(p->error_desc), "%s", s);
	cJSON_Delete(ret);
	return 0;
}

static int qemu_cancel(struct vmops_hv *h, struct vmops_error *err)
{
	return qmp(h, "migrate_cancel", NULL, NULL, err);
}

static int qemu_pause(struct vmops_hv *h, struct vmops_error *err)
{
	return qmp(h, "stop", NULL, NULL, err);
}

static int qemu_resume(struct vmops_hv *h, struct vmops_error *err)
{
	return qmp(h, "cont", NULL, NULL, err);
}

static int qemu_status(struct vmops_hv *h, struct vmops_vm_status *st, struct vmops_error *err)
{
	return query_status(h, st, err);
}

static int qemu_supports_multifd(struct vmops_hv *h, struct vmops_error *err)
{
	return supports_multifd(h, err);
}

static int qemu_destroy(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	struct qemu_priv *p = priv(h);
	struct vmops_error e2;
	bool asked = false;
	int r;

	if (timeout_ms <= 0)
		timeout_ms = 10000;
	if (info->pid <= 0) {
		drop_qmp(h);
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": no process to destroy",
				 VMM_ARG(h));
	}
	if (vmops_hv_is_alive(h)) {
		/* Politely first: QEMU flushes and removes its sockets on quit. */
		if (!(p->qmp && vmops_qmp_is_connected(p->qmp)))
			connect_qmp(h, timeout_ms / 4 < 1000 ? timeout_ms / 4 : 1000, &e2);
		if (p->qmp && vmops_qmp_is_connected(p->qmp)) {
			if (vmops_qmp_cmd(p->qmp, "quit", NULL, NULL, timeout_ms / 4 > 0 ? timeout_ms / 4 : 1, &e2) < 0)
				vmops_debug("%s", e2.msg);
			asked = true;
		}
	}
	drop_qmp(h);
	r = vmops_hv_stop_process(h, asked, timeout_ms, err);
	if (r == 0) {
		unlink(info->control_socket);
		unlink(info->agent_socket);
		vmops_debug(VMM_FMT ": destroyed (pid %d)", VMM_ARG(h), (int)info->pid);
	}
	return r;
}

static void qemu_release(struct vmops_hv *h)
{
	struct qemu_priv *p = priv(h);

	if (!p)
		return;
	drop_qmp(h);
	free(p);
	vmops_hv_set_priv(h, NULL);
}

const struct vmops_hv_driver vmops_hv_qemu_driver = {
	.kind = "qemu",
	.launch = qemu_launch,
	.attach = qemu_attach,
	.wait_ready = qemu_wait_ready,
	.prepare_incoming = qemu_prepare_incoming,
	.send = qemu_send,
	.progress = qemu_progress,
	.cancel = qemu_cancel,
	.destroy = qemu_destroy,
	.pause = qemu_pause,
	.resume = qemu_resume,
	.status = qemu_status,
	.supports_multifd = qemu_supports_multifd,
	.quiesce = vmops_qemu_quiesce,
	.thaw = vmops_qemu_thaw,
	.balloon_set = vmops_qemu_balloon_set,
	.balloon_get = vmops_qemu_balloon_get,
	/* hint_*: QEMU's free-page hinting runs inside migration only. */
	.snapshot = vmops_qemu_snapshot,
	.restore = vmops_qemu_restore,
	.release = qemu_release,
	.version = vmops_qemu_version,
};
