/* SPDX-License-Identifier: MIT */
/* Shared machinery of the REST-driven hypervisor drivers (see rest.h). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "hv/rest.h"
#include "log.h"
#include "logcap.h"
#include "macro.h"
#include "rundir.h"

#define VMM_FMT "%s vmm %" PRIu64
#define VMM_ARG(h) vmops_hv_info(h)->kind, vmops_hv_info(h)->vmm_id

int64_t rest_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void rest_sleep_ms(int ms)
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

int rest_oom(struct vmops_hv *h, struct vmops_error *err)
{
	return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": out of memory", VMM_ARG(h));
}

static int default_timeout_ms = VMOPS_HV_API_TIMEOUT_MS;

void vmops_hv_rest_set_default_timeout(int timeout_ms)
{
	default_timeout_ms = timeout_ms > 0 ? timeout_ms : VMOPS_HV_API_TIMEOUT_MS;
}

static struct rest_priv *priv_of(struct vmops_hv *h)
{
	return vmops_hv_priv(h);
}

struct rest_priv *rest_priv(struct vmops_hv *h, struct vmops_error *err)
{
	struct rest_priv *p = vmops_hv_priv(h);

	if (p)
		return p;
	p = calloc(1, sizeof(*p));
	if (!p) {
		rest_oom(h, err);
		return NULL;
	}
	p->timeout_ms = default_timeout_ms;
	vmops_hv_set_priv(h, p);
	return p;
}

void vmops_hv_rest_set_timeout(struct vmops_hv *h, int timeout_ms)
{
	struct vmops_error e;
	struct rest_priv *p = rest_priv(h, &e);

	if (p && timeout_ms > 0)
		p->timeout_ms = timeout_ms;
}

/* The spec's disk paths, for a VMM that will get its VM from a snapshot. */
static int keep_disks(struct vmops_hv *h, const struct vmops_spec *spec, struct vmops_error *err)
{
	struct rest_priv *p = priv_of(h);

	p->for_restore = true;
	if (!spec || !spec->n_disks)
		return 0;
	p->disks = calloc(spec->n_disks, sizeof(*p->disks));
	if (!p->disks)
		return rest_oom(h, err);
	for (size_t i = 0; i < spec->n_disks; i++, p->n_disks++)
		if (!(p->disks[i] = strdup(spec->disks[i].path)))
			return rest_oom(h, err);
	return 0;
}

int rest_need_restore(struct vmops_hv *h, const char *what, struct vmops_error *err)
{
	if (priv_of(h) && priv_of(h)->for_restore)
		return 0;
	return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": %s: not launched to receive a snapshot",
			 VMM_ARG(h), what);
}

int rest_prepare(struct vmops_hv *h, const struct vmops_hv_launch_opts *opts,
		 const struct vmops_spec *spec, bool incoming, struct vmops_error *err)
{
	struct vmops_vmm_info *info = vmops_hv_info_mut(h);
	char sock[64];
	int dirfd;

	info->vmm_id = opts->vmm_id;
	info->incoming = incoming;
	if (!rest_priv(h, err) || (incoming && keep_disks(h, spec, err) < 0))
		return -1;
	if (!opts->run_dir || opts->run_dir[0] != '/')
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": run dir must be an absolute path",
				 VMM_ARG(h));
	/* a ',' would end the path in Cloud Hypervisor's option syntax */
	if (strchr(opts->run_dir, ','))
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": run dir %s: ',' not allowed",
				 VMM_ARG(h), opts->run_dir);
	snprintf(sock, sizeof(sock), "/vmops-vmm-%" PRIu64 ".sock", info->vmm_id);
	if (strlen(opts->run_dir) + strlen(sock) + 1 > VMOPS_HV_SOCKPATH_MAX)
		return vmops_err(err, VMOPS_EXIT_FAILURE,
				 VMM_FMT ": run dir %s: too long for a socket path", VMM_ARG(h),
				 opts->run_dir);
	/* made and checked safely (lib/rundir): nobody else can plant files here */
	dirfd = vmops_rundir_open(opts->run_dir, err);
	if (dirfd < 0)
		return vmops_err_prefix(err, VMM_FMT, VMM_ARG(h));
	snprintf(info->run_dir, sizeof(info->run_dir), "%s", opts->run_dir);
	snprintf(info->control_socket, sizeof(info->control_socket), "%s%s", opts->run_dir, sock);
	info->agent_socket[0] = '\0';
	/* the guest's console goes to the VMM's stdout (see rest.h) */
	snprintf(info->serial_log, sizeof(info->serial_log), "%s/vmm.log", opts->run_dir);
	snprintf(info->stderr_log, sizeof(info->stderr_log), "%s/vmm.log", opts->run_dir);
	unlinkat(dirfd, sock + 1, 0);   /* a stale socket of a previous VMM */
	close(dirfd);
	return 0;
}

/* vmm.log under the cap (logcap.h), as QEMU's logs are; a failure only warns. */
static void cap_logs(struct vmops_hv *h, int dirfd)
{
	static const char *const logs[] = { "vmm.log", NULL };
	struct vmops_error le = { 0 };

	if (vmops_logcap_start(dirfd, vmops_hv_info(h)->pid, logs, vmops_logcap_max(), &le) < 0)
		vmops_warn(VMM_FMT ": logs not capped: %s", VMM_ARG(h), le.msg);
}

int rest_spawn(struct vmops_hv *h, const char *name, char **argv, bool die_with_parent,
	       struct vmops_error *err)
{
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	_cleanup_free_ char *binary = vmops_hv_find_binary(name);
	_cleanup_close_ int dirfd = -1, logfd = -1, nullfd = -1;
	char eb[128];

	if (!binary)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": %s: not found or not executable",
				 VMM_ARG(h), name);
	argv[0] = binary;
	dirfd = vmops_rundir_open(info->run_dir, err);
	if (dirfd < 0)
		return vmops_err_prefix(err, VMM_FMT, VMM_ARG(h));
	/* appended to, so that logcap can empty it under the running VMM */
	logfd = openat(dirfd, "vmm.log", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_NOFOLLOW | O_CLOEXEC,
		       0600);
	nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (logfd < 0 || nullfd < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": %s: %s", VMM_ARG(h),
				 info->stderr_log, errstr(errno, eb, sizeof(eb)));
	(void)unlinkat(dirfd, "vmm.log.1", 0);   /* a previous VMM's */
	if (vmops_hv_spawn(h, binary, argv, die_with_parent, logfd, nullfd, err) < 0)
		return -1;
	vmops_debug(VMM_FMT ": started %s pid %d (start time %llu)", VMM_ARG(h), binary,
		    (int)info->pid, info->start_time);
	cap_logs(h, dirfd);
	return 0;
}

int rest_exited_error(struct vmops_hv *h, struct vmops_error *err)
{
	char tail[256];

	vmops_hv_log_tail(h, tail, sizeof(tail));
	return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": pid %d exited%s%s", VMM_ARG(h),
			 (int)vmops_hv_info(h)->pid, tail[0] ? ": " : "", tail);
}

static bool can_connect(const struct vmops_vmm_info *info)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok;

	if (fd < 0)
		return false;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", info->control_socket);
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

int rest_wait_socket(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	int64_t deadline = rest_now_ms() + timeout_ms;
	struct stat st;

	for (;;) {
		/* a socket file exists from bind(); it answers from listen() */
		if (stat(info->control_socket, &st) == 0 && S_ISSOCK(st.st_mode) && can_connect(info))
			return 0;
		/* no process to watch (recorded without a pid): it is there or not */
		if (info->pid <= 0)
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": cannot connect to %s",
					 VMM_ARG(h), info->control_socket);
		if (info->pid > 0 && !vmops_hv_is_alive(h))
			return rest_exited_error(h, err);
		if (vmops_hv_interrupted(h))
			return vmops_err(err, VMOPS_EXIT_INTERRUPTED,
					 VMM_FMT ": interrupted while waiting for its API socket",
					 VMM_ARG(h));
		if (rest_now_ms() >= deadline)
			return vmops_err(err, VMOPS_EXIT_TIMEOUT, VMM_FMT ": no API socket %s after %d ms",
					 VMM_ARG(h), info->control_socket, timeout_ms);
		rest_sleep_ms(20);
	}
}

int rest_call_t(struct vmops_hv *h, const char *method, const char *path, const cJSON *body,
		int timeout_ms, struct vmops_http_reply *reply, const char *what,
		struct vmops_error *err)
{
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	struct vmops_http_reply local = { 0 };
	int r;

	r = vmops_http_request(info->control_socket, method, path, body, timeout_ms,
			       reply ? reply : &local, what, err);
	if (r < 0 && !(reply ? reply : &local)->status && info->pid > 0) {
		/* no answer: a VMM that died says why in its log */
		for (int i = 0; i < 10 && vmops_hv_is_alive(h); i++)
			rest_sleep_ms(10);
		if (!vmops_hv_is_alive(h))
			r = rest_exited_error(h, err);
	}
	if (r < 0 && err->code != VMOPS_EXIT_FAILURE && strncmp(err->msg, info->kind, strlen(info->kind)))
		vmops_err_prefix(err, VMM_FMT, VMM_ARG(h));
	vmops_http_reply_free(&local);
	return r < 0 ? -1 : r;
}

int rest_call(struct vmops_hv *h, const char *method, const char *path, const cJSON *body,
	      struct vmops_http_reply *reply, const char *what, struct vmops_error *err)
{
	struct rest_priv *p = rest_priv(h, err);

	if (!p)
		return -1;
	return rest_call_t(h, method, path, body, p->timeout_ms, reply, what, err);
}

struct rest_async {
	pthread_mutex_t lock;
	int refs;                 /* the thread and the handle */
	bool done;
	int rc;
	struct vmops_error err;
	char sock[VMOPS_HV_SOCKPATH_MAX], method[8], path[64], what[64];
	char *payload;
	int timeout_ms;
};

static void async_unref(struct rest_async *a)
{
	bool last;

	pthread_mutex_lock(&a->lock);
	last = --a->refs == 0;
	pthread_mutex_unlock(&a->lock);
	if (!last)
		return;
	pthread_mutex_destroy(&a->lock);
	free(a->payload);
	free(a);
}

static void *async_main(void *arg)
{
	struct rest_async *a = arg;
	struct vmops_error e = { 0 };
	cJSON *body = a->payload ? cJSON_Parse(a->payload) : NULL;
	int rc;

	rc = vmops_http_request(a->sock, a->method, a->path, body, a->timeout_ms, NULL, a->what, &e);
	cJSON_Delete(body);
	pthread_mutex_lock(&a->lock);
	a->rc = rc;
	a->err = e;
	a->done = true;
	pthread_mutex_unlock(&a->lock);
	async_unref(a);
	return NULL;
}

struct rest_async *rest_async_start(struct vmops_hv *h, const char *method, const char *path,
				    const cJSON *body, int timeout_ms, const char *what,
				    struct vmops_error *err)
{
	struct rest_async *a = calloc(1, sizeof(*a));
	pthread_attr_t attr;
	pthread_t t;
	int r;

	if (!a || (body && !(a->payload = cJSON_PrintUnformatted(body)))) {
		free(a);
		rest_oom(h, err);
		return NULL;
	}
	pthread_mutex_init(&a->lock, NULL);
	a->refs = 2;
	a->rc = -1;
	a->timeout_ms = timeout_ms;
	snprintf(a->sock, sizeof(a->sock), "%s", vmops_hv_info(h)->control_socket);
	snprintf(a->method, sizeof(a->method), "%s", method);
	snprintf(a->path, sizeof(a->path), "%s", path);
	snprintf(a->what, sizeof(a->what), "%s", what);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	r = pthread_create(&t, &attr, async_main, a);
	pthread_attr_destroy(&attr);
	if (r != 0) {
		pthread_mutex_destroy(&a->lock);
		free(a->payload);
		free(a);
		vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": cannot start a thread", VMM_ARG(h));
		return NULL;
	}
	return a;
}

bool rest_async_done(struct rest_async *a, int *rc, struct vmops_error *err)
{
	bool done;

	pthread_mutex_lock(&a->lock);
	done = a->done;
	if (done) {
		*rc = a->rc;
		if (a->rc < 0 && err)
			*err = a->err;
	}
	pthread_mutex_unlock(&a->lock);
	return done;
}

void rest_async_drop(struct rest_async **a)
{
	if (*a)
		async_unref(*a);
	*a = NULL;
}

int rest_dir_path(struct vmops_hv *h, int dirfd, char *out, size_t size, struct vmops_error *err)
{
	char link[64], eb[128];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
	n = readlink(link, out, size - 1);
	if (n < 0 || (size_t)n >= size - 1)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": snapshot directory: %s", VMM_ARG(h),
				 n < 0 ? errstr(errno, eb, sizeof(eb)) : "path too long");
	out[n] = '\0';
	if (out[0] != '/')
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": snapshot directory fd %d is not a directory on a path",
				 VMM_ARG(h), dirfd);
	return 0;
}

void rest_release(struct vmops_hv *h)
{
	struct rest_priv *p = vmops_hv_priv(h);

	if (!p)
		return;
	rest_async_drop(&p->recv);
	rest_async_drop(&p->send);
	for (size_t i = 0; i < p->n_disks; i++)
		free(p->disks[i]);
	free(p->disks);
	free(p);
	vmops_hv_set_priv(h, NULL);
}
