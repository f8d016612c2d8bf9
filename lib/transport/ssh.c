/* SPDX-License-Identifier: MIT */
/* The ssh transport's client side (see transport.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "exitcodes.h"
#include "host.h"
#include "log.h"
#include "macro.h"
#include "rundir.h"
#include "transport/transport.h"

#define OUT_MAX (1 << 20)

struct vmops_transport {
	char worker[64];
	char dest[256];
	char host_id[VMOPS_HOST_ID_MAX];
	char ctl_dir[PATH_MAX - 64];
};

bool vmops_transport_valid_destination(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > 253 || s[0] == '-' || s[0] == '.' || s[0] == ':')
		return false;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") == n;
}

static int control_dir(char *buf, size_t len, struct vmops_error *e)
{
	const char *env = getenv(VMOPS_SSH_DIR_ENV);
	int fd;

	if (env && *env) {
		if (env[0] != '/' || strlen(env) >= len)
			return vmops_err(e, VMOPS_EXIT_FAILURE, "%s: must be an absolute path shorter than %zu bytes",
					 VMOPS_SSH_DIR_ENV, len);
		snprintf(buf, len, "%s", env);
	} else if (vmops_rundir_default(".ssh", buf, len, e) < 0) {
		return -1;
	}
	/* ssh's ControlPath is a UNIX socket: DIR/ + 40 hex digits of %C. */
	if (strlen(buf) + 42 > 107)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "ssh control directory %s: too long for a socket path", buf);
	fd = vmops_rundir_open(buf, e);
	if (fd < 0)
		return vmops_err_prefix(e, "ssh control directory");
	close(fd);
	return 0;
}

struct vmops_transport *vmops_transport_ssh(const char *worker, const char *destination,
					    const char *host_id, struct vmops_error *e)
{
	struct vmops_transport *t;

	if (!vmops_transport_valid_destination(destination)) {
		vmops_err(e, VMOPS_EXIT_FAILURE,
			  "worker %s: ssh destination '%s' is not a host name or address", worker,
			  destination ? destination : "");
		return NULL;
	}
	if (host_id && *host_id && !vmops_host_id_valid(host_id)) {
		vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: invalid host identity recorded", worker);
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (!t) {
		vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: out of memory", worker);
		return NULL;
	}
	snprintf(t->worker, sizeof(t->worker), "%s", worker);
	snprintf(t->dest, sizeof(t->dest), "%s", destination);
	snprintf(t->host_id, sizeof(t->host_id), "%s", host_id ? host_id : "");
	if (control_dir(t->ctl_dir, sizeof(t->ctl_dir), e) < 0) {
		free(t);
		return NULL;
	}
	return t;
}

void vmops_transport_free(struct vmops_transport *t)
{
	free(t);
}

void vmops_transport_freep(struct vmops_transport **t)
{
	vmops_transport_free(*t);
	*t = NULL;
}

const char *vmops_transport_worker(const struct vmops_transport *t)
{
	return t->worker;
}

const char *vmops_transport_destination(const struct vmops_transport *t)
{
	return t->dest;
}

const char *vmops_transport_host_id(const struct vmops_transport *t)
{
	return t->host_id;
}

static int from_row(PGresult *r, const char *what, struct vmops_transport **out,
		    struct vmops_error *e)
{
	*out = NULL;
	if (!r)
		return -1;
	if (PQntuples(r) == 0)
		return vmops_err(e, VMOPS_EXIT_NOTFOUND, "%s does not exist", what);
	if (strcmp(vmops_db_get(r, 0, "transport"), "ssh") != 0)
		return 0;
	*out = vmops_transport_ssh(vmops_db_get(r, 0, "name"), vmops_db_get(r, 0, "migration_address"),
				   vmops_db_get(r, 0, "host_id"), e);
	return *out ? 0 : -1;
}

int vmops_transport_for_worker(PGconn *c, const char *worker, struct vmops_transport **out,
			       struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = vmops_db_q(c, e,
		"SELECT name, transport, migration_address, host_id FROM workers WHERE name = $1", worker);
	char what[100];

	snprintf(what, sizeof(what), "worker %.63s", worker);
	return from_row(r, what, out, e);
}

int vmops_transport_for_vmm(PGconn *c, long long vmm_id, struct vmops_transport **out,
			    struct vmops_error *e)
{
	char vid[24], what[64];
	_cleanup_pgresult_ PGresult *r = vmops_db_q(c, e,
		"SELECT w.name, w.transport, w.migration_address, w.host_id"
		" FROM vmms v JOIN workers w ON w.id = v.worker_id WHERE v.id = $1", vmops_db_ll(vid, vmm_id));

	snprintf(what, sizeof(what), "vmm %lld", vmm_id);
	return from_row(r, what, out, e);
}

/* --- running ssh ---------------------------------------------------------------- */

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int connect_timeout_s(int timeout_ms)
{
	const char *env = getenv(VMOPS_SSH_CONNECT_TIMEOUT_ENV);
	int s = env && *env ? atoi(env) : VMOPS_SSH_CONNECT_TIMEOUT_DEFAULT_S;

	if (s <= 0)
		s = VMOPS_SSH_CONNECT_TIMEOUT_DEFAULT_S;
	if (timeout_ms > 0 && s * 1000 > timeout_ms)
		s = timeout_ms / 1000 > 0 ? timeout_ms / 1000 : 1;
	return s;
}

struct ssh_run {
	char *out, *err;          /* NUL-terminated, malloc'ed */
	size_t nout, nerr;
	int status;               /* exit code; -1: killed at the deadline */
};

static void ssh_run_free(struct ssh_run *r)
{
	free(r->out);
	free(r->err);
	memset(r, 0, sizeof(*r));
}

static void build_argv(const struct vmops_transport *t, const char *action, int timeout_ms,
		       char opts[6][PATH_MAX + 32], const char *argv[40])
{
	const char *cfg = getenv(VMOPS_SSH_CONFIG_ENV);
	int n = 0;

	snprintf(opts[0], sizeof(opts[0]), "ConnectTimeout=%d", connect_timeout_s(timeout_ms));
	snprintf(opts[1], sizeof(opts[1]), "ControlPath=%s/%%C", t->ctl_dir);
	argv[n++] = "ssh";
	if (cfg && *cfg) {
		argv[n++] = "-F";
		argv[n++] = cfg;
	}
	argv[n++] = "-o"; argv[n++] = "BatchMode=yes";
	argv[n++] = "-o"; argv[n++] = opts[0];
	argv[n++] = "-o"; argv[n++] = "ControlMaster=auto";
	argv[n++] = "-o"; argv[n++] = opts[1];
	argv[n++] = "-o"; argv[n++] = "ControlPersist=60";
	argv[n++] = "-o"; argv[n++] = "ServerAliveInterval=5";
	argv[n++] = "-o"; argv[n++] = "ServerAliveCountMax=3";
	argv[n++] = "-T"; argv[n++] = "-x"; argv[n++] = "-a";
	argv[n++] = "-e"; argv[n++] = "none";
	argv[n++] = "--";
	argv[n++] = t->dest;
	/* The remote command line: constant words only. */
	argv[n++] = VMOPS_REMOTE_PROGRAM;
	argv[n++] = "remote";
	argv[n++] = action;
	argv[n] = NULL;
}

static void append(char **buf, size_t *n, const char *data, size_t len)
{
	char *nb;

	if (*n + len > OUT_MAX)
		len = OUT_MAX - *n;
	nb = realloc(*buf, *n + len + 1);
	if (!nb)
		return;
	memcpy(nb + *n, data, len);
	*n += len;
	nb[*n] = '\0';
	*buf = nb;
}

/* Feed `input`, collect stdout and stderr until both close or the deadline. */
static void pump(pid_t pid, int in, int out, int err, const char *input, int64_t deadline,
		 struct ssh_run *r)
{
	size_t off = 0, ilen = strlen(input);
	char buf[8192];

	while (out >= 0 || err >= 0) {
		struct pollfd p[3];
		int np = 0, left = (int)(deadline - mono_ms());

		if (left <= 0) {
			kill(pid, SIGKILL);   /* our own child, not yet reaped: the pid is ours */
			r->status = -1;
			break;
		}
		if (in >= 0)
			p[np++] = (struct pollfd){ .fd = in, .events = POLLOUT };
		if (out >= 0)
			p[np++] = (struct pollfd){ .fd = out, .events = POLLIN };
		if (err >= 0)
			p[np++] = (struct pollfd){ .fd = err, .events = POLLIN };
		if (poll(p, (nfds_t)np, left > 200 ? 200 : left) < 0 && errno != EINTR)
			break;
		for (int i = 0; i < np; i++) {
			ssize_t k;

			if (!p[i].revents)
				continue;
			if (p[i].fd == in) {
				k = write(in, input + off, ilen - off);
				if (k > 0)
					off += (size_t)k;
				if (k < 0 || off == ilen) {
					close(in);
					in = -1;
				}
				continue;
			}
			k = read(p[i].fd, buf, sizeof(buf));
			if (k > 0) {
				append(p[i].fd == out ? &r->out : &r->err, p[i].fd == out ? &r->nout : &r->nerr,
				       buf, (size_t)k);
			} else if (k == 0 || errno != EINTR) {
				close(p[i].fd);
				if (p[i].fd == out)
					out = -1;
				else
					err = -1;
			}
		}
	}
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	if (err >= 0)
		close(err);
}

static int run_ssh(const struct vmops_transport *t, const char *action, const char *input,
		   int timeout_ms, struct ssh_run *r, struct vmops_error *e)
{
	char opts[6][PATH_MAX + 32];
	const char *argv[40];
	int pin[2], pout[2], perr[2], status;
	int64_t deadline = mono_ms() + timeout_ms;
	pid_t pid, w;

	memset(r, 0, sizeof(*r));
	build_argv(t, action, timeout_ms, opts, argv);
	if (pipe2(pin, O_CLOEXEC) < 0)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: pipe: %s", t->worker, strerror(errno));
	if (pipe2(pout, O_CLOEXEC) < 0 || pipe2(perr, O_CLOEXEC) < 0) {
		close(pin[0]);
		close(pin[1]);
		return vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: pipe: %s", t->worker, strerror(errno));
	}
	pid = fork();
	if (pid == 0) {
		dup2(pin[0], 0);
		dup2(pout[1], 1);
		dup2(perr[1], 2);
		union { const char **c; char *const *v; } a = { .c = argv };

		execvp("ssh", a.v);
		dprintf(2, "ssh: %s\n", strerror(errno));
		_exit(255);
	}
	close(pin[0]);
	close(pout[1]);
	close(perr[1]);
	if (pid < 0) {
		close(pin[1]);
		close(pout[0]);
		close(perr[0]);
		return vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: fork: %s", t->worker, strerror(errno));
	}
	signal(SIGPIPE, SIG_IGN);
	pump(pid, pin[1], pout[0], perr[0], input, deadline, r);
	while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
		;
	if (r->status != -1)
		r->status = w == pid && WIFEXITED(status) ? WEXITSTATUS(status) : 255;
	return 0;
}

/* The last non-empty line of ssh's stderr, for the one-line error. */
static const char *last_line(char *s)
{
	char *end, *start;

	if (!s)
		return "";
	end = s + strlen(s);
	while (end > s && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' '))
		*--end = '\0';
	start = strrchr(s, '\n');
	return start ? start + 1 : s;
}

static int remote_error(const struct vmops_transport *t, const char *action, struct ssh_run *r,
			cJSON *ans, struct vmops_error *e)
{
	const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "error"));
	int code = r->status;

	if (code == 127)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: host %s has no %s on its PATH: install vmops there",
				 t->worker, t->dest, VMOPS_REMOTE_PROGRAM);
	if (code <= 0 || code > 100)
		code = VMOPS_EXIT_FAILURE;
	return vmops_err(e, code, "worker %s: host %s: %s: %s", t->worker, t->dest, action,
			 msg ? msg : *last_line(r->err) ? last_line(r->err) : "failed without a message");
}

/*
 * One action.  `greeting`: nothing but a greeting is asked, so a failed
 * connection means the host is unreachable; for any other action it means
 * that what happened there is unknown.
 */
static cJSON *call(struct vmops_transport *t, const char *action, const cJSON *req,
		   int timeout_ms, bool greeting, struct vmops_error *e)
{
	struct ssh_run r;
	cJSON *full = req ? cJSON_Duplicate(req, true) : cJSON_CreateObject();
	char *input = NULL;
	cJSON *ans = NULL;
	int secs = (timeout_ms + 999) / 1000;

	if (!full || (t->host_id[0] && !cJSON_AddStringToObject(full, "host_id", t->host_id)) ||
	    !(input = cJSON_PrintUnformatted(full))) {
		cJSON_Delete(full);
		vmops_err(e, VMOPS_EXIT_FAILURE, "worker %s: out of memory", t->worker);
		return NULL;
	}
	cJSON_Delete(full);
	vmops_debug("worker %s: ssh %s %s remote %s", t->worker, t->dest, VMOPS_REMOTE_PROGRAM, action);
	if (run_ssh(t, action, input, timeout_ms, &r, e) < 0) {
		free(input);
		return NULL;
	}
	free(input);
	if (r.status == -1 && greeting)
		vmops_err(e, VMOPS_EXIT_UNREACHABLE, "worker %s: host %s is unreachable: no answer within %d s",
			  t->worker, t->dest, secs);
	else if (r.status == 255 && greeting)
		vmops_err(e, VMOPS_EXIT_UNREACHABLE, "worker %s: host %s is unreachable over ssh: %s",
			  t->worker, t->dest, *last_line(r.err) ? last_line(r.err) : "ssh failed");
	else if (r.status == -1)
		vmops_err(e, VMOPS_EXIT_UNKNOWN, "worker %s: host %s: no answer to '%s' within %d s; what it did is unknown",
			  t->worker, t->dest, action, secs);
	else if (r.status == 255)
		vmops_err(e, VMOPS_EXIT_UNKNOWN, "worker %s: host %s: ssh failed during '%s' (%s); what it did is unknown",
			  t->worker, t->dest, action, last_line(r.err));
	else if (!(ans = r.out ? cJSON_Parse(r.out) : NULL) || !cJSON_IsObject(ans))
		remote_error(t, action, &r, NULL, e);
	else if (r.status != 0)
		remote_error(t, action, &r, ans, e);
	if (r.status != 0 || !ans) {
		cJSON_Delete(ans);
		ans = NULL;
	}
	ssh_run_free(&r);
	return ans;
}

cJSON *vmops_transport_call(struct vmops_transport *t, const char *action, const cJSON *req,
			    int timeout_ms, struct vmops_error *e)
{
	return call(t, action, req, timeout_ms, false, e);
}

int vmops_transport_hello(struct vmops_transport *t, char *host_id, int timeout_ms,
			  struct vmops_error *e)
{
	cJSON *ans = call(t, "hello", NULL, timeout_ms, true, e);
	const char *id;

	if (!ans)
		return -1;
	id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "host_id"));
	if (host_id)
		snprintf(host_id, VMOPS_HOST_ID_MAX, "%s", id ? id : "");
	cJSON_Delete(ans);
	return 0;
}
