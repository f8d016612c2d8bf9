/* SPDX-License-Identifier: MIT */
/* QEMU guest agent client (see qga.h). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "log.h"
#include "macro.h"
#include "qga.h"
#include "qmp.h"

struct vmops_qga {
	int fd;
	bool connected;
	bool synced;
	char *path;
	struct vmops_qmp_framer fr;
	uint64_t next_id;
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

static const char *errstr(int e, char *buf, size_t size)
{
	snprintf(buf, size, "%s", strerror(e));
	if (buf[0] && isupper((unsigned char)buf[0]) &&
	    !(buf[1] && isupper((unsigned char)buf[1])))
		buf[0] = (char)tolower((unsigned char)buf[0]);
	return buf;
}

struct vmops_qga *vmops_qga_connect(const char *path, int timeout_ms, struct vmops_error *err)
{
	struct vmops_qga *g = calloc(1, sizeof(*g));

	if (!g || !(g->path = strdup(path ? path : ""))) {
		free(g);
		vmops_err(err, VMOPS_EXIT_FAILURE, "qga: out of memory");
		return NULL;
	}
	vmops_qmp_framer_init(&g->fr);
	g->fd = vmops_qmp_dial("qga", path, timeout_ms, err);
	if (g->fd < 0) {
		vmops_qga_close(g);
		return NULL;
	}
	g->connected = true;
	return g;
}

void vmops_qga_close(struct vmops_qga *g)
{
	if (!g)
		return;
	if (g->fd >= 0)
		close(g->fd);
	vmops_qmp_framer_free(&g->fr);
	free(g->path);
	free(g);
}

void vmops_qga_closep(struct vmops_qga **g)
{
	vmops_qga_close(*g);
	*g = NULL;
}

bool vmops_qga_is_synced(const struct vmops_qga *g)
{
	return g && g->connected && g->synced;
}

static int send_all(struct vmops_qga *g, const char *what, const char *buf, size_t len,
		    int64_t deadline, struct vmops_error *err)
{
	char eb[128];

	while (len > 0) {
		ssize_t n = send(g->fd, buf, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd p = { .fd = g->fd, .events = POLLOUT };
			int r;

			do
				r = poll(&p, 1, remaining_ms(deadline));
			while (r < 0 && errno == EINTR);
			if (r == 0) {
				g->synced = false;
				return vmops_err(err, VMOPS_EXIT_TIMEOUT, "qga %s: %s: send timed out",
						 g->path, what);
			}
			continue;
		}
		if (n < 0) {
			int e = errno;

			g->connected = false;
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qga %s: %s: send: %s",
					 g->path, what, errstr(e, eb, sizeof(eb)));
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * Read into the framer until the deadline.  With `sentinel`, bytes up to and
 * including the first 0xFF are thrown away first (*sentinel is cleared once
 * it was seen).  Returns 1 (read something), 0 (timeout), -1.
 */
static int fill(struct vmops_qga *g, const char *what, int64_t deadline, bool *sentinel,
		struct vmops_error *err)
{
	struct pollfd p = { .fd = g->fd, .events = POLLIN };
	char buf[16384], eb[128];
	const char *data = buf;
	ssize_t n;
	int r;

	if (!g->connected)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qga %s: %s: connection closed",
				 g->path, what);
	for (;;) {
		do
			r = poll(&p, 1, remaining_ms(deadline));
		while (r < 0 && errno == EINTR);
		if (r < 0)
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qga %s: %s: poll: %s",
					 g->path, what, errstr(errno, eb, sizeof(eb)));
		if (r == 0)
			return 0;
		n = read(g->fd, buf, sizeof(buf));
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : 0;

			g->connected = false;
			g->synced = false;
			if (n == 0)
				return vmops_err(err, VMOPS_EXIT_HYPERVISOR,
						 "qga %s: %s: connection closed by peer", g->path, what);
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qga %s: %s: read: %s",
					 g->path, what, errstr(e, eb, sizeof(eb)));
		}
		if (sentinel && *sentinel) {
			const char *ff = memchr(buf, 0xFF, (size_t)n);

			if (!ff)
				return 1;     /* all discarded */
			*sentinel = false;
			data = ff + 1;
			n -= ff + 1 - buf;
		}
		if (vmops_qmp_framer_feed(&g->fr, data, (size_t)n) < 0)
			return vmops_err(err, VMOPS_EXIT_FAILURE, "qga %s: %s: out of memory",
					 g->path, what);
		return 1;
	}
}

static char *request_text(const char *cmd, const cJSON *args, cJSON *extra_args,
			  const char *id)
{
	cJSON *req = cJSON_CreateObject();
	char *text = NULL, *t;
	size_t len;

	if (!req || !cJSON_AddStringToObject(req, "execute", cmd))
		goto out;
	if (extra_args) {
		if (!cJSON_AddItemToObject(req, "arguments", extra_args)) {
			cJSON_Delete(extra_args);
			goto out;
		}
	} else if (args && !cJSON_AddItemToObject(req, "arguments", cJSON_Duplicate(args, true))) {
		goto out;
	}
	if (id && !cJSON_AddStringToObject(req, "id", id))
		goto out;
	text = cJSON_PrintUnformatted(req);
	if (!text)
		goto out;
	len = strlen(text);
	t = realloc(text, len + 2);
	if (!t) {
		free(text);
		text = NULL;
		goto out;
	}
	text = t;
	text[len] = '\n';
	text[len + 1] = '\0';
out:
	cJSON_Delete(req);
	return text;
}

int vmops_qga_sync(struct vmops_qga *g, int timeout_ms, struct vmops_error *err)
{
	int64_t start = now_ms();
	int64_t deadline = start + (timeout_ms > 0 ? timeout_ms : VMOPS_QMP_TIMEOUT_MS);
	_cleanup_free_ char *text = NULL;
	uint32_t rnd = 0;
	cJSON *args;
	bool sentinel = true;
	char last_error[256] = "";
	int64_t id;
	int r;

	g->synced = false;
	if (!g->connected)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qga %s: guest-sync-delimited: not connected",
				 g->path);
	if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
		rnd = (uint32_t)now_ms() ^ (uint32_t)getpid() ^ (uint32_t)(uintptr_t)g;
	/* Positive and exactly representable as a JSON number. */
	id = (int64_t)(rnd & 0x7fffffffu) + 1;
	args = cJSON_CreateObject();
	if (!args || !cJSON_AddNumberToObject(args, "id", (double)id)) {
		cJSON_Delete(args);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "qga %s: out of memory", g->path);
	}
	text = request_text("guest-sync-delimited", NULL, args, NULL);
	if (!text)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "qga %s: out of memory", g->path);

	/* Whatever is buffered is stale now. */
	vmops_qmp_framer_reset(&g->fr);
	/* A leading 0xFF makes the agent drop any partial request of ours. */
	if (send_all(g, "guest-sync-delimited", "\xff", 1, deadline, err) < 0 ||
	    send_all(g, "guest-sync-delimited", text, strlen(text), deadline, err) < 0)
		return -1;
	vmops_debug("qga %s: -> %.*s", g->path, (int)strlen(text) - 1, text);

	for (;;) {
		cJSON *msg = NULL;
		const cJSON *ret;

		if (!sentinel && vmops_qmp_framer_next(&g->fr, &msg)) {
			ret = cJSON_GetObjectItemCaseSensitive(msg, "return");
			if (cJSON_IsNumber(ret) && (int64_t)ret->valuedouble == id) {
				cJSON_Delete(msg);
				g->synced = true;
				return 0;
			}
			/*
			 * The agent answers the 0xFF we send first with a parse
			 * error, and stale replies of earlier requests may
			 * follow: only our id counts.  Keep the last error for
			 * the timeout message, in case the sync itself fails.
			 */
			if (vmops_qmp_msg_kind(msg) == VMOPS_QMP_MSG_ERROR) {
				const char *d = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
					cJSON_GetObjectItemCaseSensitive(msg, "error"), "desc"));

				snprintf(last_error, sizeof(last_error), "%s", d ? d : "");
			}
			vmops_debug("qga %s: discarding stale message while syncing", g->path);
			cJSON_Delete(msg);
			continue;
		}
		r = fill(g, "guest-sync-delimited", deadline, &sentinel, err);
		if (r < 0)
			return -1;
		if (r == 0)
			return vmops_err(err, VMOPS_EXIT_TIMEOUT,
					 "qga %s: guest-sync-delimited: no answer from the guest agent within %d ms%s%s%s",
					 g->path, (int)(deadline - start),
					 last_error[0] ? " (last error: " : "",
					 last_error[0] ? last_error : "", last_error[0] ? ")" : "");
	}
}

int vmops_qga_cmd(struct vmops_qga *g, const char *cmd, const cJSON *args,
		  cJSON **reply, int timeout_ms, struct vmops_error *err)
{
	int64_t start = now_ms();
	int64_t deadline = start + (timeout_ms > 0 ? timeout_ms : VMOPS_QMP_TIMEOUT_MS);
	_cleanup_free_ char *text = NULL;
	char id[32];
	int r;

	if (reply)
		*reply = NULL;
	if (!g->connected)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qga %s: %s: not connected", g->path, cmd);
	if (!g->synced)
		return vmops_err(err, VMOPS_EXIT_FAILURE,
				 "qga %s: %s: not synchronised with the agent (guest-sync-delimited first)",
				 g->path, cmd);
	if (args && !cJSON_IsObject(args))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "qga %s: %s: arguments must be an object",
				 g->path, cmd);
	snprintf(id, sizeof(id), "vmops-qga-%" PRIu64, ++g->next_id);
	text = request_text(cmd, args, NULL, id);
	if (!text)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "qga %s: %s: out of memory", g->path, cmd);
	vmops_debug("qga %s: -> %.*s", g->path, (int)strlen(text) - 1, text);
	if (send_all(g, cmd, text, strlen(text), deadline, err) < 0)
		return -1;

	for (;;) {
		cJSON *msg = NULL;
		const cJSON *rid;

		if (vmops_qmp_framer_next(&g->fr, &msg)) {
			enum vmops_qmp_msg_kind k = vmops_qmp_msg_kind(msg);

			rid = cJSON_GetObjectItemCaseSensitive(msg, "id");
			if ((k != VMOPS_QMP_MSG_RETURN && k != VMOPS_QMP_MSG_ERROR) ||
			    (rid && !(cJSON_IsString(rid) && !strcmp(rid->valuestring, id)))) {
				vmops_debug("qga %s: discarding unexpected message", g->path);
				cJSON_Delete(msg);
				continue;
			}
			r = vmops_qmp_parse_reply(msg, "qga", g->path, cmd, reply, err);
			cJSON_Delete(msg);
			return r;
		}
		r = fill(g, cmd, deadline, NULL, err);
		if (r < 0)
			return -1;
		if (r == 0) {
			g->synced = false;
			return vmops_err(err, VMOPS_EXIT_TIMEOUT, "qga %s: %s: no reply within %d ms",
					 g->path, cmd, (int)(deadline - start));
		}
	}
}

int vmops_qga_ping(struct vmops_qga *g, int timeout_ms, struct vmops_error *err)
{
	return vmops_qga_cmd(g, "guest-ping", NULL, NULL, timeout_ms, err);
}

static int int_cmd(struct vmops_qga *g, const char *cmd, int timeout_ms, struct vmops_error *err)
{
	cJSON *ret = NULL;
	int n;

	if (vmops_qga_cmd(g, cmd, NULL, &ret, timeout_ms, err) < 0)
		return -1;
	if (!cJSON_IsNumber(ret)) {
		cJSON_Delete(ret);
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qga %s: %s: malformed reply", g->path, cmd);
	}
	n = ret->valueint;
	cJSON_Delete(ret);
	return n;
}

int vmops_qga_fsfreeze_freeze(struct vmops_qga *g, int timeout_ms, struct vmops_error *err)
{
	return int_cmd(g, "guest-fsfreeze-freeze", timeout_ms, err);
}

int vmops_qga_fsfreeze_thaw(struct vmops_qga *g, int timeout_ms, struct vmops_error *err)
{
	return int_cmd(g, "guest-fsfreeze-thaw", timeout_ms, err);
}

int vmops_qga_fsfreeze_status(struct vmops_qga *g, int timeout_ms, struct vmops_error *err)
{
	cJSON *ret = NULL;
	const char *s;
	int st = -1;

	if (vmops_qga_cmd(g, "guest-fsfreeze-status", NULL, &ret, timeout_ms, err) < 0)
		return -1;
	s = cJSON_GetStringValue(ret);
	if (s && !strcmp(s, "thawed"))
		st = VMOPS_QGA_THAWED;
	else if (s && !strcmp(s, "frozen"))
		st = VMOPS_QGA_FROZEN;
	else
		vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qga %s: guest-fsfreeze-status: unexpected status '%s'",
			  g->path, s ? s : "?");
	cJSON_Delete(ret);
	return st;
}
