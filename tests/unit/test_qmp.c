/* SPDX-License-Identifier: MIT */
/*
 * QMP framer, QMP client (against a scripted fake QMP server), launch spec,
 * and — when VMOPS_TEST_KERNEL and VMOPS_TEST_INITRD name a guest built by
 * tests/guest/build-guest.sh — the QEMU driver against real QEMU: launch,
 * pause/resume, local live migration with 1 and 2 connections, and a target
 * killed mid-transfer.  The real-QEMU tests take a lock so that parallel
 * test workers do not run several QEMUs at once (two-core machines, TCG).
 *
 * Environment: VMOPS_TEST_ACCEL=kvm to boot with KVM (see probe-accel.sh),
 * VMOPS_TEST_DEBUG=1 for library debug logs on stderr, VMOPS_TEST_KEEP=1 to
 * keep the VMs' run directories.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>

#include "exitcodes.h"
#include "hv.h"
#include "proc.h"
#include "log.h"
#include "qga.h"
#include "qmp.h"
#include "spec.h"
#include "testlib.h"

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

static void log_to_stderr(void *data, int level, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void log_to_stderr(void *data, int level, const char *fmt, va_list ap)
{
	(void)data;
	fprintf(stderr, "vmops[%d]: ", level);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static void setup_logging(void)
{
	if (getenv("VMOPS_TEST_DEBUG"))
		vmops_set_log_fn(log_to_stderr, NULL);
}

/* ======================================================================= */
/* Framer                                                                   */
/* ======================================================================= */

static int drain(struct vmops_qmp_framer *f, cJSON **out, int max)
{
	int n = 0;
	cJSON *m;

	while (vmops_qmp_framer_next(f, &m)) {
		if (n < max)
			out[n] = m;
		else
			cJSON_Delete(m);
		n++;
	}
	return n;
}

static void free_all(cJSON **v, int n)
{
	for (int i = 0; i < n; i++)
		cJSON_Delete(v[i]);
}

TestSuite(qmp, .init = setup_logging);

Test(qmp, framer_single_message)
{
	struct vmops_qmp_framer f;
	const char *s = "{\"return\": {}, \"id\": \"a\"}\r\n";
	cJSON *m[4];

	vmops_qmp_framer_init(&f);
	cr_assert_eq(vmops_qmp_framer_feed(&f, s, strlen(s)), 0);
	cr_assert_eq(drain(&f, m, 4), 1);
	cr_assert_eq(vmops_qmp_msg_kind(m[0]), VMOPS_QMP_MSG_RETURN);
	cr_assert_str_eq(cJSON_GetObjectItem(m[0], "id")->valuestring, "a");
	free_all(m, 1);
	vmops_qmp_framer_free(&f);
}

Test(qmp, framer_split_byte_by_byte)
{
	struct vmops_qmp_framer f;
	const char *s = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}},"
			" \"capabilities\": [\"oob\"]}}\r\n{\"return\": {\"status\": \"running\"}}\r\n";
	size_t i, len = strlen(s), first_nl = strchr(s, '\n') - s;
	cJSON *m[4];
	int got = 0;

	vmops_qmp_framer_init(&f);
	for (i = 0; i < len; i++) {
		cr_assert_eq(vmops_qmp_framer_feed(&f, s + i, 1), 0);
		int n = drain(&f, m + got, 4 - got);

		if (i < first_nl)
			cr_assert_eq(n, 0, "message complete too early at byte %zu", i);
		got += n;
	}
	cr_assert_eq(got, 2);
	cr_assert_eq(vmops_qmp_msg_kind(m[0]), VMOPS_QMP_MSG_GREETING);
	cr_assert_eq(vmops_qmp_msg_kind(m[1]), VMOPS_QMP_MSG_RETURN);
	free_all(m, 2);
	vmops_qmp_framer_free(&f);
}

Test(qmp, framer_split_across_reads_in_the_middle_of_a_string)
{
	struct vmops_qmp_framer f;
	cJSON *m[2];

	vmops_qmp_framer_init(&f);
	vmops_qmp_framer_feed(&f, "{\"return\": {\"desc\": \"hel", 24);
	cr_assert_eq(drain(&f, m, 2), 0);
	vmops_qmp_framer_feed(&f, "lo\\nworld\"}}", 12);
	cr_assert_eq(drain(&f, m, 2), 0);
	vmops_qmp_framer_feed(&f, "\r\n", 2);
	cr_assert_eq(drain(&f, m, 2), 1);
	cr_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(m[0], "return"), "desc")->valuestring,
			 "hello\nworld");
	free_all(m, 1);
	vmops_qmp_framer_free(&f);
}

Test(qmp, framer_several_messages_in_one_read_and_one_line)
{
	struct vmops_qmp_framer f;
	const char *s =
		"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n"
		"\r\n"
		"{\"return\": {}, \"id\": \"x1\"}{\"event\": \"RESUME\"}  {\"return\": 3, \"id\": \"x2\"}\n"
		"   \t\r\n";
	cJSON *m[8];

	vmops_qmp_framer_init(&f);
	vmops_qmp_framer_feed(&f, s, strlen(s));
	cr_assert_eq(drain(&f, m, 8), 4);
	cr_assert_eq(vmops_qmp_msg_kind(m[0]), VMOPS_QMP_MSG_EVENT);
	cr_assert_eq(vmops_qmp_msg_kind(m[1]), VMOPS_QMP_MSG_RETURN);
	cr_assert_eq(vmops_qmp_msg_kind(m[2]), VMOPS_QMP_MSG_EVENT);
	cr_assert_str_eq(cJSON_GetObjectItem(m[2], "event")->valuestring, "RESUME");
	cr_assert_eq(cJSON_GetObjectItem(m[3], "return")->valueint, 3);
	cr_assert_eq(f.garbage, 0);
	free_all(m, 4);
	vmops_qmp_framer_free(&f);
}

Test(qmp, framer_skips_garbage)
{
	struct vmops_qmp_framer f;
	const char *s =
		"hello world\n"
		"{\"return\": {\n"           /* unterminated object */
		"[1, 2, 3]\n"                /* JSON, not an object */
		"\"just a string\"\n"
		"{\"return\": 1, \"id\": \"ok\"} trailing junk\n"
		"\x01\x02\x03\n"
		"{\"return\": 2}\n";
	cJSON *m[8];

	vmops_qmp_framer_init(&f);
	vmops_qmp_framer_feed(&f, s, strlen(s));
	cr_assert_eq(drain(&f, m, 8), 2);
	cr_assert_eq(cJSON_GetObjectItem(m[0], "return")->valueint, 1);
	cr_assert_eq(cJSON_GetObjectItem(m[1], "return")->valueint, 2);
	cr_assert_eq(f.garbage, 6, "garbage %lu", f.garbage);
	free_all(m, 2);
	vmops_qmp_framer_free(&f);
}

Test(qmp, framer_0xff_resets_the_line)
{
	struct vmops_qmp_framer f;
	const char s[] = "{\"return\": {\"stale\xff{\"return\": 42}\n";
	cJSON *m[2];

	vmops_qmp_framer_init(&f);
	vmops_qmp_framer_feed(&f, s, sizeof(s) - 1);
	cr_assert_eq(drain(&f, m, 2), 1);
	cr_assert_eq(cJSON_GetObjectItem(m[0], "return")->valueint, 42);
	cr_assert_eq(f.resets, 1);
	free_all(m, 1);
	vmops_qmp_framer_free(&f);
}

Test(qmp, framer_drops_overlong_lines)
{
	struct vmops_qmp_framer f;
	char big[200];
	cJSON *m[2];

	vmops_qmp_framer_init(&f);
	f.max_line = 64;
	memset(big, 'a', sizeof(big));
	vmops_qmp_framer_feed(&f, "{\"x\": \"", 7);
	vmops_qmp_framer_feed(&f, big, sizeof(big));
	cr_assert_eq(drain(&f, m, 2), 0);
	vmops_qmp_framer_feed(&f, big, sizeof(big));
	/* Memory stays bounded while discarding. */
	cr_assert_leq(f.len - f.pos, 64 + sizeof(big));
	vmops_qmp_framer_feed(&f, "\"}\n{\"return\": 7}\n", 17);
	cr_assert_eq(drain(&f, m, 2), 1);
	cr_assert_eq(cJSON_GetObjectItem(m[0], "return")->valueint, 7);
	cr_assert_eq(f.overlong, 1);
	free_all(m, 1);
	vmops_qmp_framer_free(&f);
}

Test(qmp, msg_kinds)
{
	static const struct {
		const char *json;
		enum vmops_qmp_msg_kind kind;
	} cases[] = {
		{ "{\"QMP\": {\"version\": {}}}", VMOPS_QMP_MSG_GREETING },
		{ "{\"return\": {}}", VMOPS_QMP_MSG_RETURN },
		{ "{\"return\": [], \"id\": 5}", VMOPS_QMP_MSG_RETURN },
		{ "{\"error\": {\"class\": \"GenericError\", \"desc\": \"x\"}}", VMOPS_QMP_MSG_ERROR },
		{ "{\"error\": \"not an object\"}", VMOPS_QMP_MSG_INVALID },
		{ "{\"event\": \"SHUTDOWN\", \"data\": {}}", VMOPS_QMP_MSG_EVENT },
		{ "{\"event\": 3}", VMOPS_QMP_MSG_INVALID },
		{ "{\"execute\": \"quit\"}", VMOPS_QMP_MSG_INVALID },
		{ "{}", VMOPS_QMP_MSG_INVALID },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cJSON *m = cJSON_Parse(cases[i].json);

		cr_assert_eq(vmops_qmp_msg_kind(m), cases[i].kind, "%s", cases[i].json);
		cJSON_Delete(m);
	}
	cr_assert_eq(vmops_qmp_msg_kind(NULL), VMOPS_QMP_MSG_INVALID);
}

Test(qmp, parse_reply_error_carries_class_and_desc)
{
	struct vmops_error err = { 0 };
	cJSON *m = cJSON_Parse("{\"error\": {\"class\": \"GenericError\", \"desc\": \"Failed to connect "
			       "socket: Connection refused\"}, \"id\": \"vmops-3\"}");
	cJSON *ret = (cJSON *)1;

	cr_assert_eq(vmops_qmp_parse_reply(m, "qmp", "/run/x.sock", "migrate-incoming", &ret, &err), -1);
	cr_assert_null(ret);
	cr_assert_str_eq(err.msg, "qmp /run/x.sock: migrate-incoming: GenericError: Failed to connect "
				  "socket: Connection refused");
	cr_assert_eq(err.code, VMOPS_EXIT_HYPERVISOR);
	cJSON_Delete(m);

	m = cJSON_Parse("{\"return\": {\"status\": \"running\"}}");
	cr_assert_eq(vmops_qmp_parse_reply(m, "qmp", "s", "query-status", &ret, &err), 0);
	cr_assert_str_eq(cJSON_GetObjectItem(ret, "status")->valuestring, "running");
	cJSON_Delete(ret);
	cJSON_Delete(m);

	m = cJSON_Parse("{\"event\": \"STOP\"}");
	cr_assert_eq(vmops_qmp_parse_reply(m, "qmp", "s", "stop", NULL, &err), -1);
	cr_assert_str_eq(err.msg, "qmp s: stop: malformed reply");
	cJSON_Delete(m);
}

/* ======================================================================= */
/* QMP client against a scripted fake server                                 */
/* ======================================================================= */

struct fake {
	char dir[64];
	char path[128];
	int lfd;
	pthread_t th;
	ino_t got_fd_ino;   /* inode of the fd received with getfd */
	int commands;       /* commands seen */
};

static void fake_send(int fd, const char *s)
{
	size_t len = strlen(s);

	while (len) {
		ssize_t n = send(fd, s, len, MSG_NOSIGNAL);

		if (n <= 0)
			return;
		s += n;
		len -= (size_t)n;
	}
}

static void fake_reply(int fd, const char *ret_json, const char *id)
{
	char buf[4096];

	snprintf(buf, sizeof(buf), "{\"return\": %s, \"id\": \"%s\"}\r\n", ret_json, id);
	fake_send(fd, buf);
}

static void *fake_main(void *arg)
{
	struct fake *fk = arg;
	char line[65536];
	size_t len = 0;
	int cfd = accept(fk->lfd, NULL, NULL);

	if (cfd < 0)
		return NULL;
	fake_send(cfd, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
		       "\"package\": \"fake\"}, \"capabilities\": [\"oob\"]}}\r\n");
	for (;;) {
		char cbuf[CMSG_SPACE(sizeof(int) * 4)];
		struct iovec iov = { .iov_base = line + len, .iov_len = sizeof(line) - len - 1 };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
		int passed = -1;
		ssize_t n = recvmsg(cfd, &mh, 0);
		char *nl;

		if (n <= 0)
			break;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
				memcpy(&passed, CMSG_DATA(c), sizeof(int));
		if (passed >= 0) {
			struct stat st;

			if (fstat(passed, &st) == 0)
				fk->got_fd_ino = st.st_ino;
			close(passed);
		}
		len += (size_t)n;
		line[len] = '\0';
		while ((nl = strchr(line, '\n'))) {
			cJSON *req;
			const char *cmd, *id;

			*nl = '\0';
			req = cJSON_Parse(line);
			memmove(line, nl + 1, len - (size_t)(nl + 1 - line) + 1);
			len = strlen(line);
			if (!req)
				continue;
			fk->commands++;
			cmd = cJSON_GetStringValue(cJSON_GetObjectItem(req, "execute"));
			id = cJSON_GetStringValue(cJSON_GetObjectItem(req, "id"));
			if (!cmd || !id) {
				cJSON_Delete(req);
				continue;
			}
			if (!strcmp(cmd, "query-status")) {
				char tail[256];
				int half;

				/* An event, a stale reply, garbage, then ours in two pieces. */
				fake_send(cfd, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 5}, "
					       "\"event\": \"STOP\"}\r\n");
				fake_send(cfd, "{\"return\": {\"status\": \"stale\"}, \"id\": \"vmops-0\"}\r\n");
				fake_send(cfd, "this is not json\r\n");
				snprintf(tail, sizeof(tail),
					 "{\"return\": {\"status\": \"running\", \"singlestep\": false, "
					 "\"running\": true}, \"id\": \"%s\"}\r\n", id);
				/* Two on one line, then ours split across two writes. */
				fake_send(cfd, "{\"event\": \"RESUME\"} {\"return\": {}, \"id\": \"x\"}\n");
				half = (int)strlen(tail) / 2;
				send(cfd, tail, (size_t)half, MSG_NOSIGNAL);
				sleep_ms(30);
				fake_send(cfd, tail + half);
			} else if (!strcmp(cmd, "migrate")) {
				char buf[256];

				snprintf(buf, sizeof(buf), "{\"id\": \"%s\", \"error\": {\"class\": "
					 "\"GenericError\", \"desc\": \"boom\"}}\r\n", id);
				fake_send(cfd, buf);
			} else if (!strcmp(cmd, "x-unparseable")) {
				fake_send(cfd, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
					       "\"JSON parse error, stray 'x'\"}}\r\n");
			} else if (!strcmp(cmd, "x-hang")) {
				/* no reply */
			} else if (!strcmp(cmd, "x-close")) {
				cJSON_Delete(req);
				goto out;
			} else if (!strcmp(cmd, "query-commands")) {
				fake_reply(cfd, "[{\"name\": \"migrate\"}, {\"name\": \"query-status\"}]", id);
			} else if (!strcmp(cmd, "query-migrate-capabilities")) {
				fake_reply(cfd, "[{\"capability\": \"xbzrle\", \"state\": true}, "
						"{\"capability\": \"multifd\", \"state\": false}]", id);
			} else if (!strcmp(cmd, "getfd")) {
				if (fk->got_fd_ino)
					fake_reply(cfd, "{}", id);
				else
					fake_send(cfd, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
						       "\"No file descriptor supplied via SCM_RIGHTS\"}}\r\n");
			} else {
				fake_reply(cfd, "{}", id);
			}
			cJSON_Delete(req);
		}
	}
out:
	close(cfd);
	return NULL;
}

static void fake_start(struct fake *fk)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };

	memset(fk, 0, sizeof(*fk));
	snprintf(fk->dir, sizeof(fk->dir), "/tmp/vmops-qmp-fake.XXXXXX");
	cr_assert_not_null(mkdtemp(fk->dir));
	snprintf(fk->path, sizeof(fk->path), "%s/qmp.sock", fk->dir);
	cr_assert_lt(strlen(fk->path), sizeof(sun.sun_path));
	memcpy(sun.sun_path, fk->path, strlen(fk->path) + 1);
	fk->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fk->lfd, 0);
	cr_assert_eq(bind(fk->lfd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	cr_assert_eq(listen(fk->lfd, 1), 0);
	cr_assert_eq(pthread_create(&fk->th, NULL, fake_main, fk), 0);
}

static void fake_stop(struct fake *fk)
{
	shutdown(fk->lfd, SHUT_RDWR);
	pthread_join(fk->th, NULL);
	close(fk->lfd);
	unlink(fk->path);
	rmdir(fk->dir);
}

Test(qmp, client_matches_reply_by_id_and_queues_events)
{
	struct vmops_error err = { 0 };
	struct fake fk;
	struct vmops_qmp *q;
	cJSON *reply = NULL, *ev = NULL;
	int major = 0, minor = 0, micro = 0;

	fake_start(&fk);
	q = vmops_qmp_connect(fk.path, 2000, &err);
	cr_assert_not_null(q, "%s", err.msg);
	cr_assert_eq(vmops_qmp_version(q, &major, &minor, &micro), 0);
	cr_assert_eq(major * 10000 + minor * 100 + micro, 70222);

	cr_assert_eq(vmops_qmp_cmd(q, "query-status", NULL, &reply, 2000, &err), 0, "%s", err.msg);
	cr_assert_str_eq(cJSON_GetObjectItem(reply, "status")->valuestring, "running");
	cJSON_Delete(reply);

	cr_assert_eq(vmops_qmp_next_event(q, &ev, 0, &err), 1);
	cr_assert_str_eq(cJSON_GetObjectItem(ev, "event")->valuestring, "STOP");
	cJSON_Delete(ev);
	cr_assert_eq(vmops_qmp_next_event(q, &ev, 0, &err), 1);
	cr_assert_str_eq(cJSON_GetObjectItem(ev, "event")->valuestring, "RESUME");
	cJSON_Delete(ev);
	cr_assert_eq(vmops_qmp_next_event(q, &ev, 50, &err), 0);
	cr_assert_null(ev);

	vmops_qmp_close(q);
	fake_stop(&fk);
}

Test(qmp, client_error_reply)
{
	struct vmops_error err = { 0 };
	_cleanup_qmp_ struct vmops_qmp *q = NULL;
	cJSON *args = cJSON_CreateObject(), *reply = NULL;
	struct fake fk;
	char want[256];

	fake_start(&fk);
	q = vmops_qmp_connect(fk.path, 2000, &err);
	cr_assert_not_null(q, "%s", err.msg);
	cJSON_AddStringToObject(args, "uri", "tcp:127.0.0.1:1");
	cr_assert_eq(vmops_qmp_cmd(q, "migrate", args, &reply, 2000, &err), -1);
	cr_assert_null(reply);
	snprintf(want, sizeof(want), "qmp %s: migrate: GenericError: boom", fk.path);
	cr_assert_str_eq(err.msg, want);
	cr_assert_eq(err.code, VMOPS_EXIT_HYPERVISOR);
	/* args are not consumed */
	cr_assert_str_eq(cJSON_GetObjectItem(args, "uri")->valuestring, "tcp:127.0.0.1:1");
	cJSON_Delete(args);

	/* An error without id (QEMU could not parse our input) is ours. */
	cr_assert_eq(vmops_qmp_cmd(q, "x-unparseable", NULL, NULL, 2000, &err), -1);
	cr_assert(strstr(err.msg, "x-unparseable: GenericError: JSON parse error"), "%s", err.msg);

	/* The connection is still usable. */
	cr_assert_eq(vmops_qmp_cmd(q, "cont", NULL, NULL, 2000, &err), 0, "%s", err.msg);
	vmops_qmp_close(q);
	q = NULL;
	fake_stop(&fk);
}

Test(qmp, client_timeout_then_recovers)
{
	struct vmops_error err = { 0 };
	struct vmops_qmp *q;
	struct fake fk;
	int64_t t0;

	fake_start(&fk);
	q = vmops_qmp_connect(fk.path, 2000, &err);
	cr_assert_not_null(q, "%s", err.msg);
	t0 = now_ms();
	cr_assert_eq(vmops_qmp_cmd(q, "x-hang", NULL, NULL, 200, &err), -1);
	cr_assert_geq(now_ms() - t0, 190);
	cr_assert_lt(now_ms() - t0, 2000);
	cr_assert_eq(err.code, VMOPS_EXIT_TIMEOUT);
	cr_assert(strstr(err.msg, "x-hang: no reply within 200 ms"), "%s", err.msg);
	cr_assert_eq(vmops_qmp_cmd(q, "stop", NULL, NULL, 2000, &err), 0, "%s", err.msg);
	vmops_qmp_close(q);
	fake_stop(&fk);
}

Test(qmp, client_peer_closes)
{
	struct vmops_error err = { 0 };
	struct vmops_qmp *q;
	struct fake fk;

	fake_start(&fk);
	q = vmops_qmp_connect(fk.path, 2000, &err);
	cr_assert_not_null(q, "%s", err.msg);
	cr_assert_eq(vmops_qmp_cmd(q, "x-close", NULL, NULL, 2000, &err), -1);
	cr_assert_eq(err.code, VMOPS_EXIT_HYPERVISOR);
	cr_assert(strstr(err.msg, "x-close: connection closed by peer"), "%s", err.msg);
	cr_assert(!vmops_qmp_is_connected(q));
	cr_assert_eq(vmops_qmp_cmd(q, "stop", NULL, NULL, 2000, &err), -1);
	vmops_qmp_close(q);
	fake_stop(&fk);
}

Test(qmp, client_queries_and_send_fd)
{
	struct vmops_error err = { 0 };
	struct vmops_qmp *q;
	struct fake fk;
	struct stat st;
	bool enabled = true;
	int fd;

	fake_start(&fk);
	q = vmops_qmp_connect(fk.path, 2000, &err);
	cr_assert_not_null(q, "%s", err.msg);
	cr_assert_eq(vmops_qmp_has_command(q, "migrate", &err), 1);
	cr_assert_eq(vmops_qmp_has_command(q, "query-status", &err), 1);
	cr_assert_eq(vmops_qmp_has_command(q, "migrate-pause", &err), 0);
	cr_assert_eq(vmops_qmp_has_migrate_capability(q, "multifd", &enabled, &err), 1);
	cr_assert(!enabled);
	cr_assert_eq(vmops_qmp_has_migrate_capability(q, "zero-copy-send", NULL, &err), 0);

	fd = open(fk.path[0] ? fk.dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(fstat(fd, &st), 0);
	cr_assert_eq(vmops_qmp_send_fd(q, fd, "snap0", &err), 0, "%s", err.msg);
	cr_assert_eq(fk.got_fd_ino, st.st_ino);
	close(fd);
	vmops_qmp_close(q);
	fake_stop(&fk);
}

Test(qmp, connect_missing_socket_times_out)
{
	struct vmops_error err = { 0 };
	int64_t t0 = now_ms();
	struct vmops_qmp *q = vmops_qmp_connect("/tmp/vmops-no-such-dir/qmp.sock", 300, &err);

	cr_assert_null(q);
	cr_assert_geq(now_ms() - t0, 290);
	cr_assert_eq(err.code, VMOPS_EXIT_HYPERVISOR);
	cr_assert_str_eq(err.msg, "qmp /tmp/vmops-no-such-dir/qmp.sock: connect: no such file or directory");

	q = vmops_qmp_connect("127.0.0.1:notaport", 300, &err);
	cr_assert_null(q);
	cr_assert(strstr(err.msg, "bad port"), "%s", err.msg);
}

/* ======================================================================= */
/* Launch spec                                                               */
/* ======================================================================= */

TestSuite(spec);

Test(spec, round_trip)
{
	struct vmops_error err = { 0 };
	const char *json =
		"{\"hypervisor\":\"qemu\",\"memory_mb\":256,\"vcpus\":2,\"kernel\":\"/boot/k\","
		"\"initrd\":\"/boot/i\",\"cmdline\":\"console=ttyS0\","
		"\"disks\":[{\"path\":\"/d/a.img\",\"readonly\":true},{\"path\":\"/d/b,c.img\"}],"
		"\"balloon\":{\"free_page_hint\":true},\"accel\":\"tcg\"}";
	_cleanup_spec_ struct vmops_spec *s = vmops_spec_parse(json, (size_t)-1, &err);
	_cleanup_spec_ struct vmops_spec *s2 = NULL;
	char *text, *text2;

	cr_assert_not_null(s, "%s", err.msg);
	cr_assert_eq(s->memory_mb, 256);
	cr_assert_eq(s->vcpus, 2);
	cr_assert_eq(s->n_disks, 2);
	cr_assert(s->disks[0].readonly);
	cr_assert(!s->disks[1].readonly);
	cr_assert(s->balloon && s->balloon_free_page_hint);
	cr_assert_eq(s->accel, VMOPS_ACCEL_TCG);
	text = vmops_spec_to_string(s);
	s2 = vmops_spec_parse(text, strlen(text), &err);
	cr_assert_not_null(s2, "%s", err.msg);
	text2 = vmops_spec_to_string(s2);
	cr_assert_str_eq(text, text2);
	free(text);
	free(text2);
}

Test(spec, defaults)
{
	struct vmops_error err = { 0 };
	_cleanup_spec_ struct vmops_spec *s = vmops_spec_parse(
		"{\"hypervisor\":\"qemu\",\"memory_mb\":16,\"vcpus\":1,\"kernel\":\"/k\"}", (size_t)-1,
		&err);
	char *text;

	cr_assert_not_null(s, "%s", err.msg);
	cr_assert_eq(s->accel, VMOPS_ACCEL_AUTO);
	cr_assert_null(s->initrd);
	cr_assert(!s->balloon);
	text = vmops_spec_to_string(s);
	cr_assert_str_eq(text, "{\"hypervisor\":\"qemu\",\"memory_mb\":16,\"vcpus\":1,\"kernel\":\"/k\","
			       "\"accel\":\"auto\"}");
	free(text);
}

Test(spec, rejects_bad_input)
{
	static const struct {
		const char *json;
		const char *msg;
	} cases[] = {
		{ "", "spec: invalid JSON at byte 0" },
		{ "{\"hypervisor\":\"qemu\"", "spec: invalid JSON at byte 19" },
		{ "[]", "spec: must be a JSON object" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\"} x",
		  "spec: unexpected text after the JSON object at byte 61" },
		{ "{\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\"}", "spec: hypervisor: required" },
		{ "{\"hypervisor\":\"xen\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\"}",
		  "spec: hypervisor: must be qemu, cloud-hypervisor or firecracker, got \"xen\"" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":8,\"vcpus\":1,\"kernel\":\"/k\"}",
		  "spec: memory_mb: must be an integer between 16 and 1048576, got 8" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":1048577,\"vcpus\":1,\"kernel\":\"/k\"}",
		  "spec: memory_mb: must be an integer between 16 and 1048576, got 1048577" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64.5,\"vcpus\":1,\"kernel\":\"/k\"}",
		  "spec: memory_mb: must be an integer between 16 and 1048576, got 64.5" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":\"64\",\"vcpus\":1,\"kernel\":\"/k\"}",
		  "spec: memory_mb: must be an integer between 16 and 1048576" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":0,\"kernel\":\"/k\"}",
		  "spec: vcpus: must be an integer between 1 and 256, got 0" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":257,\"kernel\":\"/k\"}",
		  "spec: vcpus: must be an integer between 1 and 256, got 257" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1}", "spec: kernel: required" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"vmlinuz\"}",
		  "spec: kernel: must be an absolute path, got \"vmlinuz\"" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\",\"cpus\":2}",
		  "spec: unknown key \"cpus\"" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\",\"vcpus\":2}",
		  "spec: duplicate key \"vcpus\"" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\",\"disks\":{}}",
		  "spec: disks: must be an array" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\","
		  "\"disks\":[{\"path\":\"/a\"},{\"path\":\"/b\",\"readonly\":1}]}",
		  "spec: disks[1].readonly: must be true or false" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\","
		  "\"disks\":[{\"path\":\"/a\",\"cache\":\"none\"}]}",
		  "spec: disks[0]: unknown key \"cache\"" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\","
		  "\"disks\":[{\"readonly\":true}]}",
		  "spec: disks[0].path: required" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\","
		  "\"balloon\":{\"free_page_hints\":true}}",
		  "spec: balloon: unknown key \"free_page_hints\"" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\",\"accel\":\"hvf\"}",
		  "spec: accel: must be tcg, kvm or auto, got \"hvf\"" },
		{ "{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\",\"cmdline\":7}",
		  "spec: cmdline: must be a string" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct vmops_error err = { 0 };
		struct vmops_spec *s = vmops_spec_parse(cases[i].json, (size_t)-1, &err);

		cr_expect_null(s, "accepted: %s", cases[i].json);
		cr_expect_str_eq(err.msg, cases[i].msg, "for %s: got \"%s\"", cases[i].json, err.msg);
		vmops_spec_free(s);
	}
}

/* ======================================================================= */
/* Real QEMU                                                                 */
/* ======================================================================= */

#define MAX_VMS 8

static struct vmops_hv *vms[MAX_VMS];
static char run_base[64];
static int lock_fd = -1;
static const char *kernel_path, *initrd_path;

static void qemu_fini(void)
{
	struct vmops_error err;

	for (int i = 0; i < MAX_VMS; i++) {
		if (!vms[i])
			continue;
		if (vmops_hv_is_alive(vms[i]))
			vmops_hv_destroy(vms[i], 3000, &err);
		vmops_hv_free(vms[i]);
		vms[i] = NULL;
	}
	if (run_base[0] && !getenv("VMOPS_TEST_KEEP")) {
		DIR *d = opendir(run_base);
		struct dirent *de;

		while (d && (de = readdir(d))) {
			char sub[sizeof(run_base) + 512];
			static const char *const files[] = { "qmp.sock", "qga.sock", "serial.log", "qemu.log" };

			if (de->d_name[0] == '.')
				continue;
			for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
				snprintf(sub, sizeof(sub), "%s/%.255s/%.32s", run_base, de->d_name, files[i]);
				unlink(sub);
			}
			snprintf(sub, sizeof(sub), "%s/%.255s", run_base, de->d_name);
			rmdir(sub);
		}
		if (d)
			closedir(d);
		rmdir(run_base);
	}
	if (lock_fd >= 0)
		close(lock_fd);
}

/* Skip without a guest; serialise the QEMU tests across test workers. */
static void qemu_init(void)
{
	char lock[256];
	const char *tmp = getenv("TMPDIR");

	setup_logging();
	testlib_need_qemu();
	kernel_path = getenv("VMOPS_TEST_KERNEL");
	initrd_path = getenv("VMOPS_TEST_INITRD");
	if (!tmp || !*tmp || strlen(tmp) > 40)
		tmp = "/tmp";
	snprintf(lock, sizeof(lock), "%s/vmops-test-qemu.lock", tmp);
	lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
	cr_assert_geq(lock_fd, 0);
	while (flock(lock_fd, LOCK_EX) < 0 && errno == EINTR)
		;
	snprintf(run_base, sizeof(run_base), "%s/vmops-test.XXXXXX", tmp);
	cr_assert_not_null(mkdtemp(run_base));
}

TestSuite(qemu, .init = qemu_init, .fini = qemu_fini, .timeout = 900);

static struct vmops_spec *test_spec_with(unsigned dirty_mb, bool free_page_hint, const char *extra)
{
	struct vmops_error err = { 0 };
	const char *accel = getenv("VMOPS_TEST_ACCEL");
	char json[2048];
	struct vmops_spec *s;

	if (!accel || (strcmp(accel, "kvm") && strcmp(accel, "tcg")))
		accel = "tcg";
	snprintf(json, sizeof(json),
		 "{\"hypervisor\":\"qemu\",\"memory_mb\":256,\"vcpus\":1,\"kernel\":\"%s\","
		 "\"initrd\":\"%s\",\"cmdline\":\"console=ttyS0 no_timer_check loglevel=4 vmops.dirty_mb=%u%s%s\","
		 "\"balloon\":{\"free_page_hint\":%s},\"accel\":\"%s\"}",
		 kernel_path, initrd_path, dirty_mb, *extra ? " " : "", extra,
		 free_page_hint ? "true" : "false", accel);
	s = vmops_spec_parse(json, (size_t)-1, &err);
	cr_assert_not_null(s, "%s", err.msg);
	return s;
}

static struct vmops_spec *test_spec(unsigned dirty_mb, bool free_page_hint)
{
	return test_spec_with(dirty_mb, free_page_hint, "");
}

static void opts_for(struct vmops_hv_launch_opts *o, const char *name, uint64_t id, char *dir,
		     size_t size)
{
	snprintf(dir, size, "%s/%s", run_base, name);
	memset(o, 0, sizeof(*o));
	o->run_dir = dir;
	o->vmm_id = id;
	o->auto_accel = VMOPS_ACCEL_TCG;
	o->die_with_parent = true;
}

static void keep(struct vmops_hv *h)
{
	for (int i = 0; i < MAX_VMS; i++)
		if (!vms[i]) {
			vms[i] = h;
			return;
		}
	cr_assert_fail("too many VMs");
}

static void forget(struct vmops_hv *h)
{
	for (int i = 0; i < MAX_VMS; i++)
		if (vms[i] == h)
			vms[i] = NULL;
	vmops_hv_free(h);
}

/* Wait until the guest printed a heartbeat > after; *s: its serial log. */
static void wait_heartbeat(struct vmops_hv *h, long after, int timeout_ms, struct testlib_guest *s)
{
	int64_t deadline = now_ms() + timeout_ms;

	for (;;) {
		testlib_guest_read(vmops_hv_info(h)->serial_log, s);
		cr_assert(!s->trouble[0], "vmm %llu: guest says: %s",
			  (unsigned long long)vmops_hv_info(h)->vmm_id, s->trouble);
		if (s->last.n > after)
			return;
		cr_assert(vmops_hv_is_alive(h), "vmm %llu died (see %s)",
			  (unsigned long long)vmops_hv_info(h)->vmm_id, vmops_hv_info(h)->stderr_log);
		cr_assert_lt(now_ms(), deadline, "vmm %llu: no heartbeat after %ld within %d ms",
			     (unsigned long long)vmops_hv_info(h)->vmm_id, after, timeout_ms);
		sleep_ms(100);
	}
}

static struct vmops_hv *launch(const struct vmops_spec *spec, const char *name, uint64_t id)
{
	struct vmops_error err = { 0 };
	struct vmops_hv_launch_opts o;
	char dir[128];
	struct vmops_hv *h;

	opts_for(&o, name, id, dir, sizeof(dir));
	h = vmops_hv_launch(spec, &o, &err);
	cr_assert_not_null(h, "%s", err.msg);
	keep(h);
	cr_assert_eq(vmops_hv_wait_ready(h, 20000, &err), 0, "%s", err.msg);
	return h;
}

static struct vmops_hv *receiver(const struct vmops_spec *spec, const char *name, uint64_t id,
				 unsigned conns)
{
	struct vmops_error err = { 0 };
	struct vmops_migrate_params mp = { .connections = conns };
	struct vmops_hv_launch_opts o;
	struct vmops_vm_status st;
	char dir[128];
	struct vmops_hv *h;

	opts_for(&o, name, id, dir, sizeof(dir));
	h = vmops_hv_prepare_incoming(spec, &o, "tcp:127.0.0.1:0", &mp, 20000, &err);
	cr_assert_not_null(h, "%s", err.msg);
	keep(h);
	cr_assert(!strncmp(vmops_hv_info(h)->incoming_uri, "tcp:127.0.0.1:", 14));
	cr_assert_str_neq(vmops_hv_info(h)->incoming_uri, "tcp:127.0.0.1:0");
	cr_assert_eq(vmops_hv_status(h, &st, &err), 0, "%s", err.msg);
	cr_assert_str_eq(st.status, "inmigrate");
	return h;
}

/* Poll progress until a final state; returns the last progress. */
static void migrate_wait(struct vmops_hv *src, int timeout_ms, struct vmops_migrate_progress *p)
{
	struct vmops_error err = { 0 };
	int64_t deadline = now_ms() + timeout_ms;

	for (;;) {
		cr_assert_eq(vmops_hv_progress(src, p, &err), 0, "%s", err.msg);
		if (vmops_migrate_status_is_final(p->status))
			return;
		cr_assert_lt(now_ms(), deadline, "migration still %s after %d ms (%llu/%llu bytes)",
			     p->status, timeout_ms, (unsigned long long)p->transferred_bytes,
			     (unsigned long long)p->total_bytes);
		sleep_ms(100);
	}
}

/* Migrate src to a fresh receiver; check the guest, which booted with
 * static checksum `boot`, carries on there. */
static struct vmops_hv *migrate(struct vmops_hv *src, const struct vmops_spec *spec,
				const char *name, uint64_t id, unsigned conns, const char *boot)
{
	struct vmops_error err = { 0 };
	struct vmops_migrate_params mp = { .connections = conns, .downtime_limit_ms = 300 };
	struct vmops_migrate_progress p;
	struct testlib_guest before;
	struct vmops_vm_status st;
	struct vmops_hv *dst;
	int64_t t0;

	dst = receiver(spec, name, id, conns);
	t0 = now_ms();
	cr_assert_eq(vmops_hv_send(src, vmops_hv_info(dst)->incoming_uri, &mp, &err), 0, "%s", err.msg);
	migrate_wait(src, 300000, &p);
	cr_assert_str_eq(p.status, "completed", "migration %s: %s", p.status, p.error_desc);
	cr_log_info("migration with %u connection(s): %lld ms total, %lld ms downtime, %llu bytes, "
		    "%.0f mbps (wall %lld ms)", conns, (long long)p.total_time_ms,
		    (long long)p.downtime_ms, (unsigned long long)p.transferred_bytes, p.mbps,
		    (long long)(now_ms() - t0));
	cr_assert_geq(p.downtime_ms, 0);
	cr_assert_gt(p.transferred_bytes, 0);
	if (conns > 1)
		cr_assert_gt(p.multifd_bytes, 0, "%u connections but nothing went over multifd", conns);
	else
		cr_assert_eq(p.multifd_bytes, 0);

	/* QEMU reports the migration completed while its run state may still be
	 * finish-migrate for a moment; it must settle on postmigrate, never run. */
	for (int64_t end = now_ms() + 10000;; sleep_ms(50)) {
		cr_assert_eq(vmops_hv_status(src, &st, &err), 0, "%s", err.msg);
		if (strcmp(st.status, "finish-migrate"))
			break;
		cr_assert_lt(now_ms(), end, "source still finish-migrate 10 s after completing");
	}
	cr_assert_str_eq(st.status, "postmigrate");
	/* The source says completed a little before the target runs. */
	for (int64_t end = now_ms() + 10000;; sleep_ms(50)) {
		cr_assert_eq(vmops_hv_status(dst, &st, &err), 0, "%s", err.msg);
		if (!strcmp(st.status, "running"))
			break;
		cr_assert_lt(now_ms(), end, "target still %s 10 s after the source completed",
			     st.status);
	}

	/*
	 * The guest continues on the target from the source's last heartbeat:
	 * the static region as at boot, the dirtier's passes verified, every
	 * heartbeat OK.
	 */
	testlib_guest_read(vmops_hv_info(src)->serial_log, &before);
	cr_assert_geq(before.last.n, 1, "no heartbeat on the source");
	testlib_assert_guest_continues(vmops_hv_info(dst)->serial_log, boot, &before.last, 30, NULL);
	return dst;
}

static void destroy(struct vmops_hv *h)
{
	struct vmops_error err = { 0 };
	pid_t pid = vmops_hv_info(h)->pid;
	int64_t t0 = now_ms();

	cr_assert_eq(vmops_hv_destroy(h, 10000, &err), 0, "%s", err.msg);
	cr_assert(!vmops_hv_is_alive(h));
	cr_assert(kill(pid, 0) < 0 && errno == ESRCH, "pid %d still exists (not reaped?)", (int)pid);
	cr_assert_lt(now_ms() - t0, 5000, "destroy took %lld ms", (long long)(now_ms() - t0));
	forget(h);
}

Test(qemu, launch_failure_reports_qemu_stderr)
{
	struct vmops_error err = { 0 };
	struct vmops_hv_launch_opts o;
	struct vmops_spec *spec = test_spec(1, false);
	struct vmops_hv *h;
	char dir[128];

	free(spec->kernel);
	spec->kernel = strdup("/nonexistent/vmlinuz");
	opts_for(&o, "bad", 99001, dir, sizeof(dir));
	h = vmops_hv_launch(spec, &o, &err);
	cr_assert_not_null(h, "%s", err.msg);
	keep(h);
	cr_assert_eq(vmops_hv_wait_ready(h, 20000, &err), -1);
	cr_assert_eq(err.code, VMOPS_EXIT_HYPERVISOR);
	cr_assert(strstr(err.msg, "exited") && strstr(err.msg, "/nonexistent/vmlinuz"), "%s", err.msg);

	o.binary = "/nonexistent/qemu";
	cr_assert_null(vmops_hv_launch(spec, &o, &err));
	cr_assert(strstr(err.msg, "/nonexistent/qemu: not found"), "%s", err.msg);
	vmops_spec_free(spec);
}

Test(qemu, lifecycle_and_local_migration)
{
	struct vmops_error err = { 0 };
	struct vmops_spec *spec = test_spec(8, false);
	struct testlib_guest s, s2;
	struct testlib_beat b0;
	struct vmops_vm_status st;
	struct vmops_hv *a, *b, *c;
	char boot[33];
	unsigned long long start;
	char path[64], cmdline[4096];
	ssize_t n;
	int fd;

	a = launch(spec, "a", 91001);

	/* Identity marker and start time, as ghost-reap will look for them. */
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)vmops_hv_info(a)->pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	n = read(fd, cmdline, sizeof(cmdline) - 1);
	close(fd);
	cr_assert_gt(n, 0);
	for (ssize_t i = 0; i < n; i++)
		if (!cmdline[i])
			cmdline[i] = ' ';
	cmdline[n] = '\0';
	cr_assert(strstr(cmdline, " -name vmops-vmm-91001 "), "%s", cmdline);
	/* TCG: 8 KiB more than asked, see the QEMU dirty-bitmap note in hv_qemu.c. */
	if (spec->accel == VMOPS_ACCEL_TCG)
		cr_assert(strstr(cmdline, " -m 262152k "), "%s", cmdline);
	{
		struct vmops_proc_stat pst;

		cr_assert_eq(vmops_proc_read_stat(NULL, vmops_hv_info(a)->pid, &pst, NULL), 0);
		start = pst.starttime;
	}
	cr_assert_eq(start, vmops_hv_info(a)->start_time);
	cr_assert_gt(start, 0);

	cr_assert_eq(vmops_hv_status(a, &st, &err), 0, "%s", err.msg);
	cr_assert_str_eq(st.status, "running");
	cr_assert(st.running);
	cr_assert_eq(vmops_hv_supports_multifd(a, &err), 1, "%s", err.msg);

	/* Without vmops.corrupt_after the guest's checks all pass. */
	wait_heartbeat(a, 2, 300000, &s);
	cr_assert(s.ready);
	cr_assert_eq(strlen(s.boot_sum), 32);
	snprintf(boot, sizeof(boot), "%s", s.boot_sum);
	b0 = s.first;
	testlib_assert_guest_continues(vmops_hv_info(a)->serial_log, boot, &b0, 30, &s);
	cr_assert_eq(s.mismatches, 0);
	cr_assert(s.last.static_ok && s.last.pass_ok && s.last.bad == 0 && s.last.pass > 0);

	/* Guest agent, if the guest has one. */
	{
		FILE *f = fopen(vmops_hv_info(a)->serial_log, "re");
		char line[512];
		bool have_qga = false;

		while (f && fgets(line, sizeof(line), f))
			if (strstr(line, "qemu-ga started"))
				have_qga = true;
		if (f)
			fclose(f);
		if (have_qga) {
			_cleanup_qga_ struct vmops_qga *g = vmops_qga_connect(vmops_hv_info(a)->agent_socket,
									     2000, &err);

			cr_assert_not_null(g, "%s", err.msg);
			cr_assert_eq(vmops_qga_sync(g, 10000, &err), 0, "%s", err.msg);
			cr_assert_eq(vmops_qga_ping(g, 5000, &err), 0, "%s", err.msg);
			cr_assert_eq(vmops_qga_fsfreeze_status(g, 5000, &err), VMOPS_QGA_THAWED, "%s",
				     err.msg);
			cr_assert_eq(vmops_qga_cmd(g, "guest-no-such-command", NULL, NULL, 5000, &err), -1);
			cr_assert(strstr(err.msg, "CommandNotFound"), "%s", err.msg);
		} else {
			testlib_missing("the test guest has no qemu-ga (install qemu-guest-agent, "
					"then rebuild it with make guest)");
		}
	}

	/* Pause: heartbeats stop.  Resume: they go on. */
	cr_assert_eq(vmops_hv_pause(a, &err), 0, "%s", err.msg);
	cr_assert_eq(vmops_hv_status(a, &st, &err), 0, "%s", err.msg);
	cr_assert_str_eq(st.status, "paused");
	cr_assert(!st.running);
	testlib_guest_read(vmops_hv_info(a)->serial_log, &s);
	sleep_ms(1500);
	testlib_guest_read(vmops_hv_info(a)->serial_log, &s2);
	cr_assert_eq(s2.last.n, s.last.n, "heartbeats while paused");
	cr_assert_eq(vmops_hv_resume(a, &err), 0, "%s", err.msg);
	cr_assert_eq(vmops_hv_status(a, &st, &err), 0, "%s", err.msg);
	cr_assert_str_eq(st.status, "running");
	wait_heartbeat(a, s.last.n, 120000, &s2);

	/* a -> b, one connection; then b -> c, two (multifd). */
	b = migrate(a, spec, "b", 91002, 1, boot);
	destroy(a);
	c = migrate(b, spec, "c", 91003, 2, boot);
	destroy(b);
	destroy(c);
	vmops_spec_free(spec);
}

Test(qemu, target_killed_mid_transfer)
{
	struct vmops_error err = { 0 };
	/* Bigger dirty set and a slow link: the transfer lasts long enough. */
	struct vmops_spec *spec = test_spec(16, true);
	struct vmops_migrate_params slow = { .connections = 1, .max_bandwidth = 8u << 20 };
	struct vmops_migrate_progress p;
	struct testlib_guest s;
	struct vmops_vm_status st;
	struct vmops_hv *src, *dst, *dst2;
	char boot[33];
	int64_t deadline;
	pid_t dpid;

	src = launch(spec, "src", 92001);
	wait_heartbeat(src, 1, 300000, &s);
	snprintf(boot, sizeof(boot), "%s", s.boot_sum);

	dst = receiver(spec, "dst", 92002, 1);
	dpid = vmops_hv_info(dst)->pid;
	cr_assert_eq(vmops_hv_send(src, vmops_hv_info(dst)->incoming_uri, &slow, &err), 0, "%s", err.msg);
	deadline = now_ms() + 20000;
	for (;;) {
		cr_assert_eq(vmops_hv_progress(src, &p, &err), 0, "%s", err.msg);
		if (!strcmp(p.status, "active") && p.transferred_bytes > (2u << 20))
			break;
		cr_assert(!vmops_migrate_status_is_final(p.status), "migration ended early: %s", p.status);
		cr_assert_lt(now_ms(), deadline, "migration not active: %s", p.status);
		sleep_ms(50);
	}
	cr_assert_eq(kill(dpid, SIGKILL), 0);

	migrate_wait(src, 30000, &p);
	cr_assert_str_eq(p.status, "failed");
	cr_assert_neq(p.error_desc[0], '\0', "no error-desc for the failed migration");
	cr_log_info("source reports: failed: %s", p.error_desc);

	/* The source keeps running. */
	cr_assert_eq(vmops_hv_status(src, &st, &err), 0, "%s", err.msg);
	cr_assert_str_eq(st.status, "running");
	testlib_guest_read(vmops_hv_info(src)->serial_log, &s);
	testlib_assert_guest_continues(vmops_hv_info(src)->serial_log, boot, &s.last, 30, NULL);

	/* The dead receiver is reaped by destroy; its status call fails cleanly. */
	cr_assert(!vmops_hv_is_alive(dst));
	cr_assert_eq(vmops_hv_status(dst, &st, &err), -1);
	cr_assert(strstr(err.msg, "exited"), "%s", err.msg);
	destroy(dst);

	/* A retry to a fresh receiver works. */
	dst2 = migrate(src, spec, "dst2", 92003, 1, boot);
	destroy(src);
	destroy(dst2);
	vmops_spec_free(spec);
}

/*
 * vmops.corrupt_after=N: after N heartbeats the guest inverts one byte of
 * its static region and one of the dirtier's seed.  Its checks must say so:
 * the heartbeats from N+1 on report the failures, CHECKSUM-MISMATCH lines
 * appear for both, and the post-migration assertion would refuse the log.
 */
Test(qemu, guest_memory_check_detects_corruption)
{
	struct vmops_spec *spec = test_spec_with(4, false, "vmops.corrupt_after=3");
	struct testlib_beat before = { .n = 0 };
	struct testlib_guest s;
	struct vmops_hv *a;
	char why[1024];
	int64_t deadline;

	a = launch(spec, "corrupt", 93001);
	wait_heartbeat(a, 3, 300000, &s);
	cr_assert(s.ready);
	cr_assert_eq(strlen(s.boot_sum), 32);
	deadline = now_ms() + 120000;
	while (s.first_static_failed < 0 || s.first_pass_failed < 0 || s.last.n < 6) {
		cr_assert_lt(now_ms(), deadline, "no failed check reported: first static failure %ld, first "
			     "pass failure %ld, last beat %ld", s.first_static_failed, s.first_pass_failed, s.last.n);
		sleep_ms(200);
		wait_heartbeat(a, 0, 1000, &s);
	}
	/* Beats 1..3 were clean; from 4 on the static region is reported bad. */
	cr_assert_eq(s.first_static_failed, 4, "first static failure at beat %ld", s.first_static_failed);
	cr_assert_gt(s.first_pass_failed, 3, "first pass failure at beat %ld", s.first_pass_failed);
	cr_assert(!s.last.static_ok && !s.last.pass_ok && s.last.bad > 0, "HEARTBEAT %ld static_ok=%d "
		  "pass_ok=%d bad=%ld", s.last.n, s.last.static_ok, s.last.pass_ok, s.last.bad);
	cr_assert_str_neq(s.last.static_sum, s.boot_sum);
	cr_assert_gt(s.static_changed, 0);
	cr_assert_geq(s.mismatches, 2, "%ld CHECKSUM-MISMATCH lines", s.mismatches);
	cr_assert(strstr(s.mismatch, "CHECKSUM-MISMATCH static beat=4 "), "%s", s.mismatch);
	{
		FILE *f = fopen(vmops_hv_info(a)->serial_log, "re");
		char line[1024];
		bool dirty = false;

		while (f && fgets(line, sizeof(line), f))
			dirty |= strstr(line, "CHECKSUM-MISMATCH dirty ") != NULL;
		if (f)
			fclose(f);
		cr_assert(dirty, "no CHECKSUM-MISMATCH dirty line");
	}
	cr_assert_eq(testlib_guest_check(&s, s.boot_sum, &before, 3, why, sizeof(why)), -1);
	cr_log_info("the post-migration check refuses this log: %s", why);
	destroy(a);
	vmops_spec_free(spec);
}

/* ======================================================================= */
/* The serial log parser (a fake log, no QEMU)                               */
/* ======================================================================= */

#define SUM_A "0123456789abcdef0123456789abcdef"
#define SUM_B "fedcba9876543210fedcba9876543210"

static const char *fake_log(const char *text)
{
	static char path[64];
	int fd;

	snprintf(path, sizeof(path), "/tmp/vmops-serial.XXXXXX");
	fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

Test(guestlog, markers_after_console_junk)
{
	/* What the serial log of a real boot looks like (see TESTBED.md). */
	const char *path = fake_log(
		"\033c\033[?7l\033[2J\033[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
		"Booting from ROM...\r\n"
		"Probing EDD (edd=off to disable)... ok\033[?7l\033[2JVMOPS-GUEST-READY static_mb=4 "
		"dirty_mb=16 corrupt_after=0 static=" SUM_A "\r\n"
		"HEARTBEAT 1 static=" SUM_A " static_ok=1 pass=0 pass_ok=1 bad=0\r\n"
		"[    3.1] random: crng init done\033[0mHEARTBEAT 2 static=" SUM_A " static_ok=1 pass=2 pass_ok=1 bad=0\r\n"
		"HEARTBEAT 3 static=" SUM_A " static_ok=1 pass=4 pass_ok=1 bad=0\r\n"
		"HEARTBEAT 4 static=" SUM_A " static_ok=1 pa");
	struct testlib_guest g;
	struct testlib_beat before = { .n = 1, .pass = 0 };
	char why[512];

	testlib_guest_read(path, &g);
	unlink(path);
	cr_assert(g.ready);
	cr_assert_str_eq(g.boot_sum, SUM_A);
	cr_assert_eq(g.beats, 3, "the unfinished last line counts");
	cr_assert_eq(g.first.n, 1);
	cr_assert_eq(g.last.n, 3);
	cr_assert_eq(g.last.pass, 4);
	cr_assert(g.last.static_ok && g.last.pass_ok);
	cr_assert_eq(g.failed_beats + g.static_changed + g.mismatches, 0);
	cr_assert_eq(g.trouble[0], '\0', "%s", g.trouble);
	cr_assert_eq(testlib_guest_check(&g, SUM_A, &before, 2, why, sizeof(why)), 1, "%s", why);
	cr_assert_eq(testlib_guest_check(&g, SUM_A, &before, 3, why, sizeof(why)), 0, "not enough beats yet");
	before.pass = 4;
	cr_assert_eq(testlib_guest_check(&g, SUM_A, &before, 1, why, sizeof(why)), 0, "no new pass yet");
	cr_assert_eq(testlib_guest_check(&g, SUM_B, &before, 1, why, sizeof(why)), -1);
	cr_assert(strstr(why, "booted"), "%s", why);
}

Test(guestlog, heartbeat_parser)
{
	struct testlib_beat b;

	cr_assert(testlib_parse_heartbeat("junk\033[2JHEARTBEAT 12 static=" SUM_B " static_ok=0 pass=7 "
					  "pass_ok=0 bad=3\r\n", &b));
	cr_assert_eq(b.n, 12);
	cr_assert_str_eq(b.static_sum, SUM_B);
	cr_assert(!b.static_ok && !b.pass_ok);
	cr_assert_eq(b.pass, 7);
	cr_assert_eq(b.bad, 3);
	/* the old format, truncated lines and bad values are not heartbeats */
	cr_assert_not(testlib_parse_heartbeat("HEARTBEAT 3 " SUM_A, &b));
	cr_assert_not(testlib_parse_heartbeat("HEARTBEAT 3 static=" SUM_A " static_ok=1 pass=1", &b));
	cr_assert_not(testlib_parse_heartbeat("HEARTBEAT 3 static=0123 static_ok=1 pass=1 pass_ok=1 bad=0", &b));
	cr_assert_not(testlib_parse_heartbeat("HEARTBEAT 3 static=" SUM_A " static_ok=2 pass=1 pass_ok=1 bad=0", &b));
	cr_assert_not(testlib_parse_heartbeat("HEARTBEAT 3 static=" SUM_A " static_ok=1 pass=1 pass_ok=1 bad=0x", &b));
	cr_assert_not(testlib_parse_heartbeat("no heartbeat here", &b));
}

Test(guestlog, failures_are_reported)
{
	struct testlib_beat before = { .n = 2, .pass = 1 };
	struct testlib_guest g;
	char why[512];
	const char *path;

	/* a target's log (no READY line) whose static region changed */
	path = fake_log("HEARTBEAT 3 static=" SUM_A " static_ok=1 pass=2 pass_ok=1 bad=0\n"
			"xx CHECKSUM-MISMATCH static beat=4 got=" SUM_B " want=" SUM_A "\n"
			"HEARTBEAT 4 static=" SUM_B " static_ok=0 pass=3 pass_ok=1 bad=1\n");
	testlib_guest_read(path, &g);
	unlink(path);
	cr_assert_not(g.ready);
	cr_assert_eq(g.beats, 2);
	cr_assert_eq(g.failed_beats, 1);
	cr_assert_eq(g.first_static_failed, 4);
	cr_assert_eq(g.first_pass_failed, -1);
	cr_assert_eq(g.static_changed, 1);
	cr_assert_eq(g.mismatches, 1);
	cr_assert(!strncmp(g.mismatch, "xx CHECKSUM-MISMATCH static", 27), "%s", g.mismatch);
	cr_assert_eq(testlib_guest_check(&g, SUM_A, &before, 1, why, sizeof(why)), -1);
	cr_assert(strstr(why, "CHECKSUM-MISMATCH"), "%s", why);

	/* a failed dirtier pass between two beats: only the counter shows it */
	path = fake_log("HEARTBEAT 3 static=" SUM_A " static_ok=1 pass=2 pass_ok=1 bad=0\n"
			"HEARTBEAT 4 static=" SUM_A " static_ok=1 pass=5 pass_ok=1 bad=1\n");
	testlib_guest_read(path, &g);
	unlink(path);
	cr_assert_eq(g.failed_beats, 1);
	cr_assert_eq(testlib_guest_check(&g, SUM_A, &before, 1, why, sizeof(why)), -1);
	cr_assert(strstr(why, "failed check"), "%s", why);

	/* a kernel oops on the target */
	path = fake_log("HEARTBEAT 3 static=" SUM_A " static_ok=1 pass=2 pass_ok=1 bad=0\n"
			"[   9.0] BUG: unable to handle page fault for address: 0000\n");
	testlib_guest_read(path, &g);
	unlink(path);
	cr_assert(strstr(g.trouble, "BUG: unable"), "%s", g.trouble);
	cr_assert_eq(testlib_guest_check(&g, SUM_A, &before, 1, why, sizeof(why)), -1);

	/* heartbeats that start again: a rebooted guest */
	path = fake_log("HEARTBEAT 1 static=" SUM_A " static_ok=1 pass=2 pass_ok=1 bad=0\n");
	testlib_guest_read(path, &g);
	unlink(path);
	cr_assert_eq(testlib_guest_check(&g, SUM_A, &before, 1, why, sizeof(why)), -1);
	cr_assert(strstr(why, "start again"), "%s", why);

	/* and a missing log is an empty one */
	testlib_guest_read("/nonexistent-vmops/serial.log", &g);
	cr_assert_eq(g.beats, 0);
	cr_assert_eq(g.last.n, -1);
}
