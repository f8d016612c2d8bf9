/* SPDX-License-Identifier: MIT */
/* QMP client and the JSON line framer it is built on (see qmp.h). */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "log.h"
#include "macro.h"
#include "qmp.h"

/* --- small helpers ------------------------------------------------------ */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining_ms(int64_t deadline)
{
	int64_t left = deadline - now_ms();

	if (left < 0)
		return 0;
	if (left > INT32_MAX)
		return INT32_MAX;
	return (int)left;
}

/* strerror() with a lowercase first letter, as our messages are. */
static const char *errstr(int e, char *buf, size_t size)
{
	snprintf(buf, size, "%s", strerror(e));
	if (buf[0] && isupper((unsigned char)buf[0]) &&
	    !(buf[1] && isupper((unsigned char)buf[1])))
		buf[0] = (char)tolower((unsigned char)buf[0]);
	return buf;
}

/* --- framer -------------------------------------------------------------- */

void vmops_qmp_framer_init(struct vmops_qmp_framer *f)
{
	memset(f, 0, sizeof(*f));
}

void vmops_qmp_framer_free(struct vmops_qmp_framer *f)
{
	free(f->buf);
	f->buf = NULL;
	f->len = f->cap = f->pos = f->scan = 0;
	f->discarding = false;
}

void vmops_qmp_framer_reset(struct vmops_qmp_framer *f)
{
	f->len = f->pos = f->scan = 0;
	f->discarding = false;
}

int vmops_qmp_framer_feed(struct vmops_qmp_framer *f, const void *bytes, size_t n)
{
	if (n == 0)
		return 0;
	/* Drop the consumed prefix before growing. */
	if (f->pos > 0 && (f->pos == f->len || f->len + n > f->cap)) {
		memmove(f->buf, f->buf + f->pos, f->len - f->pos);
		f->len -= f->pos;
		f->pos = 0;
	}
	if (f->len + n > f->cap) {
		size_t cap = f->cap ? f->cap : 4096;
		char *nb;

		while (cap < f->len + n) {
			if (cap > SIZE_MAX / 2)
				return -1;
			cap *= 2;
		}
		nb = realloc(f->buf, cap);
		if (!nb)
			return -1;
		f->buf = nb;
		f->cap = cap;
	}
	memcpy(f->buf + f->len, bytes, n);
	f->len += n;
	return 0;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int vmops_qmp_framer_next(struct vmops_qmp_framer *f, cJSON **msg)
{
	size_t max_line = f->max_line ? f->max_line : VMOPS_QMP_MAX_LINE;

	*msg = NULL;
	for (;;) {
		size_t avail = f->len - f->pos;
		const char *start;
		size_t i, end, b, e;

		if (avail == 0) {
			f->scan = 0;
			return 0;
		}
		start = f->buf + f->pos;
		if (f->discarding) {
			/* Up to the newline, or a 0xFF reset, whichever comes first. */
			for (i = 0; i < avail; i++)
				if (start[i] == '\n' || (unsigned char)start[i] == 0xFF)
					break;
			if (i == avail) {
				f->pos = f->len;
				return 0;
			}
			if ((unsigned char)start[i] == 0xFF)
				f->resets++;
			f->pos += i + 1;
			f->discarding = false;
			f->overlong++;
			f->scan = 0;
			continue;
		}

		/* Find the end of the line: '\n', or a 0xFF reset byte. */
		for (i = f->scan; i < avail; i++)
			if (start[i] == '\n' || (unsigned char)start[i] == 0xFF)
				break;
		if (i == avail) {
			f->scan = avail;
			if (avail > max_line) {
				f->discarding = true;
				f->pos = f->len;
				f->scan = 0;
			}
			return 0;
		}
		if ((unsigned char)start[i] == 0xFF) {
			f->resets++;
			f->pos += i + 1;
			f->scan = 0;
			continue;
		}
		end = i;        /* start[end] == '\n' */
		if (end > max_line) {
			f->overlong++;
			f->pos += end + 1;
			f->scan = 0;
			continue;
		}

		/* Trim and parse one value from the line. */
		b = 0;
		while (b < end && is_space(start[b]))
			b++;
		e = end;
		while (e > b && is_space(start[e - 1]))
			e--;
		if (b == e) {
			f->pos += end + 1;
			f->scan = 0;
			continue;
		}

		const char *parse_end = NULL;
		cJSON *v = cJSON_ParseWithLengthOpts(start + b, e - b, &parse_end, false);
		size_t used;

		if (!v || !parse_end || parse_end < start + b || parse_end > start + e) {
			/* Not JSON: drop the rest of the line. */
			cJSON_Delete(v);
			f->garbage++;
			f->pos += end + 1;
			f->scan = 0;
			continue;
		}
		used = (size_t)(parse_end - start);
		while (used < end && is_space(start[used]))
			used++;
		if (used >= end) {
			f->pos += end + 1;
			f->scan = 0;
		} else {
			/* More values on this line; the newline is still ahead. */
			f->pos += used;
			f->scan = end - used;
		}
		if (!cJSON_IsObject(v)) {
			cJSON_Delete(v);
			f->garbage++;
			continue;
		}
		*msg = v;
		return 1;
	}
}

enum vmops_qmp_msg_kind vmops_qmp_msg_kind(const cJSON *msg)
{
	const cJSON *x;

	if (!cJSON_IsObject(msg))
		return VMOPS_QMP_MSG_INVALID;
	if ((x = cJSON_GetObjectItemCaseSensitive(msg, "event")))
		return cJSON_IsString(x) ? VMOPS_QMP_MSG_EVENT : VMOPS_QMP_MSG_INVALID;
	if (cJSON_GetObjectItemCaseSensitive(msg, "return"))
		return VMOPS_QMP_MSG_RETURN;
	if ((x = cJSON_GetObjectItemCaseSensitive(msg, "error")))
		return cJSON_IsObject(x) ? VMOPS_QMP_MSG_ERROR : VMOPS_QMP_MSG_INVALID;
	if ((x = cJSON_GetObjectItemCaseSensitive(msg, "QMP")))
		return cJSON_IsObject(x) ? VMOPS_QMP_MSG_GREETING : VMOPS_QMP_MSG_INVALID;
	return VMOPS_QMP_MSG_INVALID;
}

int vmops_qmp_parse_reply(cJSON *msg, const char *proto, const char *sock,
			  const char *cmd, cJSON **ret, struct vmops_error *err)
{
	if (ret)
		*ret = NULL;
	switch (vmops_qmp_msg_kind(msg)) {
	case VMOPS_QMP_MSG_RETURN:
		if (ret)
			*ret = cJSON_DetachItemFromObjectCaseSensitive(msg, "return");
		return 0;
	case VMOPS_QMP_MSG_ERROR: {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(msg, "error");
		const char *cls = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "class"));
		const char *desc = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "desc"));

		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s %s: %s: %s: %s", proto, sock,
				 cmd, cls ? cls : "UnknownError", desc ? desc : "no description");
	}
	default:
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s %s: %s: malformed reply", proto,
				 sock, cmd);
	}
}

/* --- dialing ------------------------------------------------------------- */

static bool dial_retryable(int e)
{
	return e == ENOENT || e == ECONNREFUSED || e == EAGAIN;
}

/* Wait for a nonblocking connect to finish.  Returns 0, or an errno. */
static int connect_wait(int fd, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int r, soerr = 0;
	socklen_t sl = sizeof(soerr);

	do
		r = poll(&p, 1, remaining_ms(deadline));
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return errno;
	if (r == 0)
		return ETIMEDOUT;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
		return errno;
	return soerr;
}

static int try_connect(int family, const struct sockaddr *sa, socklen_t salen,
		       int64_t deadline, int *fdp)
{
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int e;

	*fdp = -1;
	if (fd < 0)
		return errno;
	if (connect(fd, sa, salen) == 0) {
		*fdp = fd;
		return 0;
	}
	e = errno;
	if (e == EINPROGRESS)
		e = connect_wait(fd, deadline);
	if (e) {
		close(fd);
		return e;
	}
	*fdp = fd;
	return 0;
}

static void pause_until(int64_t deadline, int ms)
{
	int left = remaining_ms(deadline);
	struct timespec ts;

	if (ms > left)
		ms = left;
	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (long)(ms % 1000) * 1000000;
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int dial_unix(const char *proto, const char *label, const char *path,
		     int64_t deadline, struct vmops_error *err)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char eb[128];
	int fd, e;

	if (strlen(path) >= sizeof(sun.sun_path))
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR,
				 "%s %s: socket path too long (%zu bytes, at most %zu)",
				 proto, label, strlen(path), sizeof(sun.sun_path) - 1);
	memcpy(sun.sun_path, path, strlen(path) + 1);
	for (;;) {
		e = try_connect(AF_UNIX, (struct sockaddr *)&sun, sizeof(sun), deadline, &fd);
		if (e == 0)
			return fd;
		if (!dial_retryable(e) || remaining_ms(deadline) == 0)
			break;
		pause_until(deadline, 50);
	}
	return vmops_err(err, e == ETIMEDOUT ? VMOPS_EXIT_TIMEOUT : VMOPS_EXIT_HYPERVISOR,
			 "%s %s: connect: %s", proto, label, errstr(e, eb, sizeof(eb)));
}

static int dial_tcp(const char *proto, const char *label, const char *hostport,
		    int64_t deadline, struct vmops_error *err)
{
	_cleanup_free_ char *host = NULL;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL, *ai;
	const char *port, *colon;
	char eb[128];
	int r, fd, e = 0;

	if (hostport[0] == '[') {
		const char *rb = strchr(hostport, ']');

		if (!rb || rb[1] != ':')
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR,
					 "%s %s: bad address, expected [HOST]:PORT", proto, label);
		host = strndup(hostport + 1, (size_t)(rb - hostport - 1));
		port = rb + 2;
	} else {
		colon = strrchr(hostport, ':');
		if (!colon)
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR,
					 "%s %s: bad address, expected HOST:PORT", proto, label);
		host = strndup(hostport, (size_t)(colon - hostport));
		port = colon + 1;
	}
	if (!host)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "%s %s: out of memory", proto, label);
	if (!*port || strspn(port, "0123456789") != strlen(port))
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s %s: bad port '%s'", proto, label, port);
	r = getaddrinfo(host, port, &hints, &res);
	if (r)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s %s: resolve %s: %s", proto, label,
				 host, gai_strerror(r));
	for (;;) {
		for (ai = res; ai; ai = ai->ai_next) {
			e = try_connect(ai->ai_family, ai->ai_addr, ai->ai_addrlen, deadline, &fd);
			if (e == 0) {
				freeaddrinfo(res);
				return fd;
			}
		}
		if (!dial_retryable(e) || remaining_ms(deadline) == 0)
			break;
		pause_until(deadline, 50);
	}
	freeaddrinfo(res);
	return vmops_err(err, e == ETIMEDOUT ? VMOPS_EXIT_TIMEOUT : VMOPS_EXIT_HYPERVISOR,
			 "%s %s: connect: %s", proto, label, errstr(e, eb, sizeof(eb)));
}

int vmops_qmp_dial(const char *proto, const char *addr, int timeout_ms,
		   struct vmops_error *err)
{
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);

	if (!addr || !*addr)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s: empty socket address", proto);
	if (!strncmp(addr, "unix:", 5))
		return dial_unix(proto, addr + 5, addr + 5, deadline, err);
	if (!strncmp(addr, "tcp:", 4))
		return dial_tcp(proto, addr, addr + 4, deadline, err);
	if (strchr(addr, '/') || !strchr(addr, ':'))
		return dial_unix(proto, addr, addr, deadline, err);
	return dial_tcp(proto, addr, addr, deadline, err);
}

/* --- connection ----------------------------------------------------------- */

struct qmp_event {
	struct qmp_event *next;
	cJSON *ev;
};

struct vmops_qmp {
	int fd;
	bool connected;
	char *addr;
	struct vmops_qmp_framer fr;
	cJSON *greeting;
	cJSON *commands;          /* query-commands cache */
	uint64_t next_id;
	struct qmp_event *ev_head, *ev_tail;
	size_t n_events;
	unsigned long ev_dropped;
};

const char *vmops_qmp_addr(const struct vmops_qmp *q)
{
	return q->addr;
}

bool vmops_qmp_is_connected(const struct vmops_qmp *q)
{
	return q && q->connected;
}

unsigned long vmops_qmp_events_dropped(const struct vmops_qmp *q)
{
	return q->ev_dropped;
}

static void enqueue_event(struct vmops_qmp *q, cJSON *ev)
{
	struct qmp_event *e;

	if (q->n_events >= VMOPS_QMP_MAX_EVENTS) {
		struct qmp_event *old = q->ev_head;

		q->ev_head = old->next;
		if (!q->ev_head)
			q->ev_tail = NULL;
		cJSON_Delete(old->ev);
		free(old);
		q->n_events--;
		q->ev_dropped++;
	}
	e = calloc(1, sizeof(*e));
	if (!e) {
		cJSON_Delete(ev);
		q->ev_dropped++;
		return;
	}
	e->ev = ev;
	if (q->ev_tail)
		q->ev_tail->next = e;
	else
		q->ev_head = e;
	q->ev_tail = e;
	q->n_events++;
}

static cJSON *dequeue_event(struct vmops_qmp *q)
{
	struct qmp_event *e = q->ev_head;
	cJSON *ev;

	if (!e)
		return NULL;
	q->ev_head = e->next;
	if (!q->ev_head)
		q->ev_tail = NULL;
	q->n_events--;
	ev = e->ev;
	free(e);
	return ev;
}

/*
 * Read what is available, waiting until the deadline.  Returns 1 if bytes
 * were read, 0 on timeout, -1 on error or EOF (connection marked closed).
 */
static int qmp_fill(struct vmops_qmp *q, const char *what, int64_t deadline,
		    struct vmops_error *err)
{
	struct pollfd p = { .fd = q->fd, .events = POLLIN };
	char buf[65536], eb[128];
	ssize_t n;
	int r;

	if (!q->connected)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qmp %s: %s: connection closed",
				 q->addr, what);
	for (;;) {
		do
			r = poll(&p, 1, remaining_ms(deadline));
		while (r < 0 && errno == EINTR);
		if (r < 0)
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qmp %s: %s: poll: %s",
					 q->addr, what, errstr(errno, eb, sizeof(eb)));
		if (r == 0)
			return 0;
		n = read(q->fd, buf, sizeof(buf));
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0) {
			int e = errno;

			q->connected = false;
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qmp %s: %s: read: %s",
					 q->addr, what, errstr(e, eb, sizeof(eb)));
		}
		if (n == 0) {
			q->connected = false;
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR,
					 "qmp %s: %s: connection closed by peer", q->addr, what);
		}
		if (vmops_qmp_framer_feed(&q->fr, buf, (size_t)n) < 0)
			return vmops_err(err, VMOPS_EXIT_FAILURE, "qmp %s: %s: out of memory",
					 q->addr, what);
		return 1;
	}
}

/* Next message, waiting until the deadline: 1 got one, 0 timeout, -1 error. */
static int qmp_next_msg(struct vmops_qmp *q, const char *what, int64_t deadline,
			cJSON **msg, struct vmops_error *err)
{
	int r;

	for (;;) {
		if (vmops_qmp_framer_next(&q->fr, msg))
			return 1;
		r = qmp_fill(q, what, deadline, err);
		if (r <= 0)
			return r;
	}
}

static int write_all(struct vmops_qmp *q, const char *what, const char *buf, size_t len,
		     int passfd, int64_t deadline, struct vmops_error *err)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cm;
	char eb[128];

	while (len > 0) {
		struct iovec iov = { .iov_base = (void *)(uintptr_t)buf, .iov_len = len };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n;

		if (passfd >= 0) {
			struct cmsghdr *c;

			memset(&cm, 0, sizeof(cm));
			mh.msg_control = cm.buf;
			mh.msg_controllen = sizeof(cm.buf);
			c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &passfd, sizeof(int));
		}
		n = sendmsg(q->fd, &mh, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd p = { .fd = q->fd, .events = POLLOUT };
			int r;

			do
				r = poll(&p, 1, remaining_ms(deadline));
			while (r < 0 && errno == EINTR);
			if (r == 0)
				return vmops_err(err, VMOPS_EXIT_TIMEOUT,
						 "qmp %s: %s: send timed out", q->addr, what);
			continue;
		}
		if (n < 0) {
			int e = errno;

			q->connected = false;
			return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qmp %s: %s: send: %s",
					 q->addr, what, errstr(e, eb, sizeof(eb)));
		}
		/* The fd travels with the first byte sent. */
		passfd = -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int qmp_execute(struct vmops_qmp *q, const char *cmd, const cJSON *args,
		       int passfd, cJSON **reply, int timeout_ms, struct vmops_error *err)
{
	int64_t start = now_ms();
	int64_t deadline = start + (timeout_ms > 0 ? timeout_ms : VMOPS_QMP_TIMEOUT_MS);
	_cleanup_free_ char *text = NULL;
	char id[32];
	cJSON *req;
	size_t len;
	int r;

	if (reply)
		*reply = NULL;
	if (!q->connected)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "qmp %s: %s: not connected",
				 q->addr, cmd);
	if (args && !cJSON_IsObject(args))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "qmp %s: %s: arguments must be an object",
				 q->addr, cmd);

	snprintf(id, sizeof(id), "vmops-%" PRIu64, ++q->next_id);
	req = cJSON_CreateObject();
	if (!req || !cJSON_AddStringToObject(req, "execute", cmd) ||
	    (args && !cJSON_AddItemToObject(req, "arguments", cJSON_Duplicate(args, true))) ||
	    !cJSON_AddStringToObject(req, "id", id)) {
		cJSON_Delete(req);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "qmp %s: %s: out of memory", q->addr, cmd);
	}
	text = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	if (!text)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "qmp %s: %s: out of memory", q->addr, cmd);
	len = strlen(text);
	{
		char *t = realloc(text, len + 2);

		if (!t)
			return vmops_err(err, VMOPS_EXIT_FAILURE, "qmp %s: %s: out of memory",
					 q->addr, cmd);
		text = t;
		text[len++] = '\n';
		text[len] = '\0';
	}
	vmops_debug("qmp %s: -> %.*s", q->addr, (int)len - 1, text);
	if (write_all(q, cmd, text, len, passfd, deadline, err) < 0)
		return -1;

	for (;;) {
		cJSON *msg = NULL;
		const char *rid;

		r = qmp_next_msg(q, cmd, deadline, &msg, err);
		if (r < 0)
			return -1;
		if (r == 0)
			return vmops_err(err, VMOPS_EXIT_TIMEOUT, "qmp %s: %s: no reply within %d ms",
					 q->addr, cmd, (int)(deadline - start));
		switch (vmops_qmp_msg_kind(msg)) {
		case VMOPS_QMP_MSG_EVENT:
			vmops_debug("qmp %s: event %s", q->addr,
				    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "event")));
			enqueue_event(q, msg);
			continue;
		case VMOPS_QMP_MSG_RETURN:
		case VMOPS_QMP_MSG_ERROR:
			rid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "id"));
			if (rid && !strcmp(rid, id))
				break;
			/*
			 * QEMU answers input it could not parse with an error
			 * without id; we have one command in flight, so it is
			 * ours.  Anything else is a late reply to a command
			 * that timed out.
			 */
			if (!cJSON_GetObjectItemCaseSensitive(msg, "id") &&
			    vmops_qmp_msg_kind(msg) == VMOPS_QMP_MSG_ERROR)
				break;
			vmops_debug("qmp %s: discarding stale reply (id %s)", q->addr,
				    rid ? rid : "none");
			cJSON_Delete(msg);
			continue;
		default:
			vmops_debug("qmp %s: ignoring unexpected message", q->addr);
			cJSON_Delete(msg);
			continue;
		}
		r = vmops_qmp_parse_reply(msg, "qmp", q->addr, cmd, reply, err);
		cJSON_Delete(msg);
		return r;
	}
}

int vmops_qmp_cmd(struct vmops_qmp *q, const char *cmd, const cJSON *args,
		  cJSON **reply, int timeout_ms, struct vmops_error *err)
{
	return qmp_execute(q, cmd, args, -1, reply, timeout_ms, err);
}

int vmops_qmp_send_fd(struct vmops_qmp *q, int fd, const char *name, struct vmops_error *err)
{
	cJSON *args;
	int r;

	if (fd < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "qmp %s: getfd %s: bad file descriptor",
				 q->addr, name);
	args = cJSON_CreateObject();
	if (!args || !cJSON_AddStringToObject(args, "fdname", name)) {
		cJSON_Delete(args);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "qmp %s: getfd: out of memory", q->addr);
	}
	r = qmp_execute(q, "getfd", args, fd, NULL, VMOPS_QMP_TIMEOUT_MS, err);
	cJSON_Delete(args);
	return r;
}

struct vmops_qmp *vmops_qmp_connect(const char *addr, int timeout_ms, struct vmops_error *err)
{
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : VMOPS_QMP_TIMEOUT_MS);
	struct vmops_qmp *q;
	cJSON *msg = NULL;
	int r;

	q = calloc(1, sizeof(*q));
	if (!q || !(q->addr = strdup(addr ? addr : ""))) {
		free(q);
		vmops_err(err, VMOPS_EXIT_FAILURE, "qmp: out of memory");
		return NULL;
	}
	vmops_qmp_framer_init(&q->fr);
	q->fd = vmops_qmp_dial("qmp", addr, remaining_ms(deadline), err);
	if (q->fd < 0)
		goto fail;
	q->connected = true;

	/* The greeting comes first; events cannot precede it. */
	for (;;) {
		r = qmp_next_msg(q, "greeting", deadline, &msg, err);
		if (r < 0)
			goto fail;
		if (r == 0) {
			vmops_err(err, VMOPS_EXIT_TIMEOUT, "qmp %s: no greeting within %d ms",
				  q->addr, timeout_ms > 0 ? timeout_ms : VMOPS_QMP_TIMEOUT_MS);
			goto fail;
		}
		if (vmops_qmp_msg_kind(msg) == VMOPS_QMP_MSG_GREETING)
			break;
		cJSON_Delete(msg);
		msg = NULL;
	}
	q->greeting = msg;
	if (vmops_qmp_cmd(q, "qmp_capabilities", NULL, NULL,
			  remaining_ms(deadline) > 0 ? remaining_ms(deadline) : 1, err) < 0)
		goto fail;
	return q;
fail:
	vmops_qmp_close(q);
	return NULL;
}

void vmops_qmp_close(struct vmops_qmp *q)
{
	cJSON *ev;

	if (!q)
		return;
	if (q->fd >= 0)
		close(q->fd);
	while ((ev = dequeue_event(q)))
		cJSON_Delete(ev);
	vmops_qmp_framer_free(&q->fr);
	cJSON_Delete(q->greeting);
	cJSON_Delete(q->commands);
	free(q->addr);
	free(q);
}

void vmops_qmp_closep(struct vmops_qmp **q)
{
	vmops_qmp_close(*q);
	*q = NULL;
}

int vmops_qmp_version(const struct vmops_qmp *q, int *major, int *minor, int *micro)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(q->greeting, "QMP");
	const cJSON *x;

	v = cJSON_GetObjectItemCaseSensitive(v, "version");
	v = cJSON_GetObjectItemCaseSensitive(v, "qemu");
	if (!cJSON_IsObject(v))
		return -1;
	x = cJSON_GetObjectItemCaseSensitive(v, "major");
	if (!cJSON_IsNumber(x))
		return -1;
	if (major)
		*major = x->valueint;
	x = cJSON_GetObjectItemCaseSensitive(v, "minor");
	if (minor)
		*minor = cJSON_IsNumber(x) ? x->valueint : 0;
	x = cJSON_GetObjectItemCaseSensitive(v, "micro");
	if (micro)
		*micro = cJSON_IsNumber(x) ? x->valueint : 0;
	return 0;
}

int vmops_qmp_next_event(struct vmops_qmp *q, cJSON **event, int timeout_ms,
			 struct vmops_error *err)
{
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);

	*event = dequeue_event(q);
	if (*event)
		return 1;
	for (;;) {
		cJSON *msg = NULL;
		int r = qmp_next_msg(q, "event", deadline, &msg, err);

		if (r <= 0)
			return r;
		if (vmops_qmp_msg_kind(msg) == VMOPS_QMP_MSG_EVENT) {
			*event = msg;
			return 1;
		}
		vmops_debug("qmp %s: discarding stale reply while waiting for events", q->addr);
		cJSON_Delete(msg);
	}
}

int vmops_qmp_has_command(struct vmops_qmp *q, const char *name, struct vmops_error *err)
{
	const cJSON *c;

	if (!q->commands && vmops_qmp_cmd(q, "query-commands", NULL, &q->commands,
					  VMOPS_QMP_TIMEOUT_MS, err) < 0)
		return -1;
	cJSON_ArrayForEach(c, q->commands) {
		const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "name"));

		if (n && !strcmp(n, name))
			return 1;
	}
	return 0;
}

int vmops_qmp_has_migrate_capability(struct vmops_qmp *q, const char *name, bool *enabled,
				     struct vmops_error *err)
{
	cJSON *caps = NULL;
	const cJSON *c;
	int found = 0;

	if (vmops_qmp_cmd(q, "query-migrate-capabilities", NULL, &caps, VMOPS_QMP_TIMEOUT_MS,
			  err) < 0)
		return -1;
	cJSON_ArrayForEach(c, caps) {
		const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "capability"));

		if (n && !strcmp(n, name)) {
			found = 1;
			if (enabled)
				*enabled = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "state"));
			break;
		}
	}
	cJSON_Delete(caps);
	return found;
}
