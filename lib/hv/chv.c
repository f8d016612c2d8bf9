/* SPDX-License-Identifier: MIT */
/*
 * Cloud Hypervisor driver: the cloud-hypervisor binary started with only
 * --api-socket and --event-monitor, then driven over its REST API (v53;
 * v52 where it differs).
 *
 *   launch     vm.create (from the spec) + vm.boot; a receiver (migration
 *              or restore) is the bare VMM, with no VM yet
 *   destroy    vmm.shutdown, then the process is stopped (SIGTERM, KILL)
 *   snapshot   vm.snapshot to file://DIR (paused VM): config.json,
 *              state.json, memory-ranges; restore: config.json's disks
 *              pointed at the spec's (and its console at our log), then
 *              vm.restore, paused
 *   migrate    vm.receive-migration on the target (blocks until the VM has
 *              arrived: run in a thread; ready when the event monitor says
 *              migration-receive-ready, or for v52, which says nothing
 *              before a sender comes, when the port listens), vm.send-migration with
 *              `connections` (1..128, v52+) on the source.  v52 answers
 *              send-migration when the migration is over; v53 at once, and
 *              its source VMM exits after a successful migration.  The API
 *              has no cancel and no progress figures: progress is "active"
 *              while vm.counters says the VM is migrating, and v53's
 *              migration-memory-iteration events count the passes.
 *
 * More than one connection over a UNIX socket is refused by the API
 * ("UNIX sockets and connections option cannot be used at the same time"):
 * the driver then warns and sends over one.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exitcodes.h"
#include "hv.h"
#include "hv/rest.h"
#include "log.h"
#include "macro.h"

#define CHV_BINARY "cloud-hypervisor"
#define API "/api/v1/"
#define MIGRATION_TIMEOUT_MS (6 * 3600 * 1000)
#define VMM_FMT "cloud-hypervisor vmm %" PRIu64
#define VMM_ARG(h) (vmops_hv_info(h)->vmm_id)

static struct rest_priv *priv(struct vmops_hv *h)
{
	return vmops_hv_priv(h);
}

static int call(struct vmops_hv *h, const char *method, const char *name, const cJSON *body,
		struct vmops_http_reply *reply, struct vmops_error *err)
{
	char path[64];

	snprintf(path, sizeof(path), API "%s", name);
	return rest_call(h, method, path, body, reply, name, err);
}

static int ping(struct vmops_hv *h, struct vmops_error *err)
{
	struct vmops_http_reply r = { 0 };
	const char *v;
	int rc = call(h, "GET", "vmm.ping", NULL, &r, err);

	if (rc >= 0) {
		v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r.body, "version"));
		priv(h)->api_major = v ? atoi(v[0] == 'v' ? v + 1 : v) : 0;
		vmops_debug(VMM_FMT ": version %s", VMM_ARG(h), v ? v : "?");
	}
	vmops_http_reply_free(&r);
	return rc < 0 ? -1 : 0;
}

/* vmm.ping's version ("v53.0"), without the v. */
static int chv_version(struct vmops_hv *h, char *buf, size_t len, struct vmops_error *err)
{
	struct vmops_http_reply r = { 0 };
	const char *v;
	int rc = call(h, "GET", "vmm.ping", NULL, &r, err);

	if (rc >= 0) {
		v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r.body, "version"));
		if (!v || !v[0])
			rc = vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": vmm.ping: no version",
				       VMM_ARG(h));
		else
			snprintf(buf, len, "%s", v[0] == 'v' ? v + 1 : v);
	}
	vmops_http_reply_free(&r);
	return rc < 0 ? -1 : 0;
}

static cJSON *vm_config(struct vmops_hv *h, const struct vmops_spec *s)
{
	cJSON *c = cJSON_CreateObject(), *o, *d;
	bool ok = c != NULL;

	ok = ok && (o = cJSON_AddObjectToObject(c, "payload")) &&
	     cJSON_AddStringToObject(o, "kernel", s->kernel) &&
	     (!s->initrd || cJSON_AddStringToObject(o, "initramfs", s->initrd)) &&
	     (!s->cmdline || cJSON_AddStringToObject(o, "cmdline", s->cmdline));
	ok = ok && (o = cJSON_AddObjectToObject(c, "cpus")) &&
	     cJSON_AddNumberToObject(o, "boot_vcpus", s->vcpus) &&
	     cJSON_AddNumberToObject(o, "max_vcpus", s->vcpus);
	ok = ok && (o = cJSON_AddObjectToObject(c, "memory")) &&
	     cJSON_AddNumberToObject(o, "size", (double)((uint64_t)s->memory_mb << 20));
	ok = ok && (o = cJSON_AddArrayToObject(c, "disks"));
	for (size_t i = 0; ok && i < s->n_disks; i++)
		ok = (d = cJSON_CreateObject()) && cJSON_AddItemToArray(o, d) &&
		     cJSON_AddStringToObject(d, "path", s->disks[i].path) &&
		     cJSON_AddBoolToObject(d, "readonly", s->disks[i].readonly);
	if (ok && s->balloon)
		ok = (o = cJSON_AddObjectToObject(c, "balloon")) &&
		     cJSON_AddNumberToObject(o, "size", 0) &&
		     cJSON_AddBoolToObject(o, "deflate_on_oom", true);
	/* the console to stdout, our vmm.log: appended to, so it can be capped
	 * (mode File truncates and writes at its own offset) */
	ok = ok && (o = cJSON_AddObjectToObject(c, "serial")) &&
	     cJSON_AddStringToObject(o, "mode", "Tty");
	ok = ok && (o = cJSON_AddObjectToObject(c, "console")) &&
	     cJSON_AddStringToObject(o, "mode", "Off");
	if (!ok) {
		cJSON_Delete(c);
		return NULL;
	}
	return c;
}

static int create_and_boot(struct vmops_hv *h, const struct vmops_spec *spec,
			   struct vmops_error *err)
{
	cJSON *cfg = vm_config(h, spec);
	int r;

	if (!cfg)
		return rest_oom(h, err);
	r = call(h, "PUT", "vm.create", cfg, NULL, err);
	cJSON_Delete(cfg);
	if (r < 0)
		return -1;
	return call(h, "PUT", "vm.boot", NULL, NULL, err) < 0 ? -1 : 0;
}

static int chv_launch(struct vmops_hv *h, const struct vmops_spec *spec,
		      const struct vmops_hv_launch_opts *opts, bool incoming,
		      struct vmops_error *err)
{
	const struct vmops_vmm_info *info;
	char sockarg[VMOPS_HV_SOCKPATH_MAX + 8], evarg[sizeof(priv(h)->events) + 8];
	char *argv[] = { NULL, "--api-socket", sockarg, "--event-monitor", evarg, NULL };
	struct vmops_error e2;

	if (rest_prepare(h, opts, spec, incoming, err) < 0)
		return -1;
	info = vmops_hv_info(h);
	snprintf(priv(h)->events, sizeof(priv(h)->events), "%s/events.json", info->run_dir);
	unlink(priv(h)->events);
	snprintf(sockarg, sizeof(sockarg), "path=%s", info->control_socket);
	snprintf(evarg, sizeof(evarg), "path=%s", priv(h)->events);
	if (rest_spawn(h, opts->binary ? opts->binary : CHV_BINARY, argv, opts->die_with_parent,
		       err) < 0)
		return -1;
	if (rest_wait_socket(h, VMOPS_HV_SOCKET_TIMEOUT_MS, err) < 0 || ping(h, err) < 0 ||
	    (!incoming && create_and_boot(h, spec, err) < 0)) {
		/* nothing half-started stays behind */
		if (vmops_hv_stop_process(h, false, 5000, &e2) < 0)
			vmops_warn("%s", e2.msg);
		return -1;
	}
	return 0;
}

static int chv_attach(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	if (!rest_priv(h, err))
		return -1;
	snprintf(priv(h)->events, sizeof(priv(h)->events), "%s/events.json",
		 vmops_hv_info(h)->run_dir);
	if (vmops_hv_info(h)->pid > 0 && !vmops_hv_is_alive(h))
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": pid %d is not running",
				 VMM_ARG(h), (int)vmops_hv_info(h)->pid);
	if (rest_wait_socket(h, timeout_ms > 0 ? timeout_ms : priv(h)->timeout_ms, err) < 0)
		return -1;
	return ping(h, err);
}

static void map_state(const char *s, bool incoming, struct vmops_vm_status *st)
{
	static const struct { const char *ch, *ours; } map[] = {
		{ "Created", "prelaunch" }, { "Running", "running" }, { "Paused", "paused" },
		{ "Shutdown", "shutdown" }, { "BreakPoint", "debug" },
	};

	snprintf(st->status, sizeof(st->status), "%s", incoming ? "inmigrate" : "none");
	for (size_t i = 0; s && i < ARRAY_SIZE(map); i++)
		if (!strcmp(s, map[i].ch))
			snprintf(st->status, sizeof(st->status), "%s", map[i].ours);
	st->running = !strcmp(st->status, "running");
}

static int chv_status(struct vmops_hv *h, struct vmops_vm_status *st, struct vmops_error *err)
{
	struct vmops_http_reply r = { 0 };
	int rc;

	memset(st, 0, sizeof(*st));
	rc = call(h, "GET", "vm.info", NULL, &r, err);
	if (rc < 0 && r.status == 404) {
		/* no VM (yet): a receiver waiting for one, or a bare VMM */
		map_state(NULL, vmops_hv_info(h)->incoming, st);
		rc = 0;
	} else if (rc >= 0) {
		map_state(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r.body, "state")),
			  false, st);
	}
	vmops_http_reply_free(&r);
	return rc < 0 ? -1 : 0;
}

static int chv_wait_ready(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	struct vmops_vm_status st;

	if (rest_wait_socket(h, timeout_ms > 0 ? timeout_ms : priv(h)->timeout_ms, err) < 0 ||
	    ping(h, err) < 0 || chv_status(h, &st, err) < 0)
		return -1;
	if (vmops_hv_interrupted(h))
		return vmops_err(err, VMOPS_EXIT_INTERRUPTED, VMM_FMT ": interrupted while waiting for it",
				 VMM_ARG(h));
	if (!strcmp(st.status, "shutdown"))
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, VMM_FMT ": vm is in state %s",
				 VMM_ARG(h), st.status);
	return 0;
}

static int chv_pause(struct vmops_hv *h, struct vmops_error *err)
{
	return call(h, "PUT", "vm.pause", NULL, NULL, err) < 0 ? -1 : 0;
}

static int chv_resume(struct vmops_hv *h, struct vmops_error *err)
{
	return call(h, "PUT", "vm.resume", NULL, NULL, err) < 0 ? -1 : 0;
}

static int chv_supports_multifd(struct vmops_hv *h, struct vmops_error *err)
{
	if (!priv(h)->api_major && ping(h, err) < 0)
		return -1;
	return priv(h)->api_major >= 52;
}

static int chv_destroy(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	const struct vmops_vmm_info *info = vmops_hv_info(h);
	struct vmops_error e2;
	bool asked = false;
	int r;

	if (timeout_ms <= 0)
		timeout_ms = 10000;
	if (info->pid <= 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": no process to destroy", VMM_ARG(h));
	if (vmops_hv_is_alive(h)) {
		/* Politely first: the VMM shuts the VM down and exits. */
		int t = timeout_ms / 4 < 2000 ? timeout_ms / 4 : 2000;

		asked = rest_call_t(h, "PUT", API "vmm.shutdown", NULL, t > 0 ? t : 1, NULL,
				    "vmm.shutdown", &e2) >= 0;
		if (!asked)
			vmops_debug("%s", e2.msg);
	}
	r = vmops_hv_stop_process(h, asked, timeout_ms, err);
	if (r == 0) {
		unlink(info->control_socket);
		vmops_debug(VMM_FMT ": destroyed (pid %d)", VMM_ARG(h), (int)info->pid);
	}
	return r;
}

/* --- snapshots ------------------------------------------------------------------- */

static int url_call(struct vmops_hv *h, const char *name, const char *key, int dirfd,
		    bool with_resume, int timeout_ms, struct vmops_error *err)
{
	char dir[PATH_MAX], url[PATH_MAX + 8], path[64];
	cJSON *b;
	int r;

	if (rest_dir_path(h, dirfd, dir, sizeof(dir), err) < 0)
		return -1;
	snprintf(url, sizeof(url), "file://%s", dir);
	b = cJSON_CreateObject();
	if (!b || !cJSON_AddStringToObject(b, key, url) ||
	    (with_resume && !cJSON_AddBoolToObject(b, "resume", false))) {
		cJSON_Delete(b);
		return rest_oom(h, err);
	}
	snprintf(path, sizeof(path), API "%s", name);
	r = rest_call_t(h, "PUT", path, b, timeout_ms > 0 ? timeout_ms : priv(h)->timeout_ms, NULL,
			name, err);
	cJSON_Delete(b);
	return r < 0 ? -1 : 0;
}

static int chv_snapshot(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
			struct vmops_error *err)
{
	if (o && o->live)
		return vmops_err(err, VMOPS_EXIT_CONFLICT,
				 VMM_FMT ": live snapshot: not supported (pause the VM first)", VMM_ARG(h));
	if (o && o->diff)
		return vmops_err(err, VMOPS_EXIT_CONFLICT, VMM_FMT ": diff snapshot: not supported",
				 VMM_ARG(h));
	return url_call(h, "vm.snapshot", "destination_url", dirfd, false, o ? o->timeout_ms : 0,
			err);
}

/* config.json of the snapshot in dirfd, parsed (a regular file, at most 1 MiB). */
static cJSON *read_config(struct vmops_hv *h, int dirfd, struct vmops_error *err)
{
	_cleanup_close_ int fd = openat(dirfd, "config.json", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	struct stat st;
	cJSON *cfg;

	if (fd < 0 || fstat(fd, &st) < 0)
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, VMM_FMT ": restore: config.json: %s",
				 VMM_ARG(h), strerror(errno)), NULL;
	if (!S_ISREG(st.st_mode) || st.st_size > (1 << 20) || !(text = malloc((size_t)st.st_size + 1)))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY,
				 VMM_FMT ": restore: config.json: not a regular file of at most 1 MiB",
				 VMM_ARG(h)), NULL;
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, text + len, (size_t)st.st_size - len);

		if (n <= 0)
			break;
		len += (size_t)n;
	}
	text[len] = '\0';
	cfg = cJSON_Parse(text);
	if (!cJSON_IsObject(cfg)) {
		cJSON_Delete(cfg);
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, VMM_FMT ": restore: config.json: not a JSON object",
				 VMM_ARG(h)), NULL;
	}
	return cfg;
}

/* Replace config.json in dirfd with cfg (written aside, then renamed over it). */
static int write_config(struct vmops_hv *h, int dirfd, const cJSON *cfg, struct vmops_error *err)
{
	_cleanup_free_ char *text = cJSON_PrintUnformatted(cfg);
	int fd, e = 0;
	size_t len, off = 0;

	if (!text)
		return rest_oom(h, err);
	len = strlen(text);
	fd = openat(dirfd, "config.json.new", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		e = errno;
	while (!e && off < len) {
		ssize_t n = write(fd, text + off, len - off);

		if (n < 0)
			e = errno;
		else
			off += (size_t)n;
	}
	if (fd >= 0 && close(fd) < 0 && !e)
		e = errno;
	if (!e && renameat(dirfd, "config.json.new", dirfd, "config.json") < 0)
		e = errno;
	if (e) {
		unlinkat(dirfd, "config.json.new", 0);
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": restore: writing config.json: %s",
				 VMM_ARG(h), strerror(e));
	}
	return 0;
}

/* The disks (spec's paths, in order) and the console (Tty) in cfg. */
static int repoint(struct vmops_hv *h, cJSON *cfg, struct vmops_error *err)
{
	const struct rest_priv *p = priv(h);
	cJSON *disks = cJSON_GetObjectItemCaseSensitive(cfg, "disks"), *d, *serial;
	size_t i = 0;

	if ((disks && !cJSON_IsArray(disks)) || (size_t)cJSON_GetArraySize(disks) != p->n_disks)
		return vmops_err(err, VMOPS_EXIT_INTEGRITY,
				 VMM_FMT ": restore: config.json has %d disks, the spec %zu",
				 VMM_ARG(h), cJSON_GetArraySize(disks), p->n_disks);
	cJSON_ArrayForEach(d, disks) {
		cJSON *path = cJSON_GetObjectItemCaseSensitive(d, "path");

		if (!cJSON_IsString(path))
			return vmops_err(err, VMOPS_EXIT_INTEGRITY,
					 VMM_FMT ": restore: config.json: disk %zu has no path", VMM_ARG(h), i);
		if (!cJSON_SetValuestring(path, p->disks[i++]))
			return rest_oom(h, err);
	}
	serial = cJSON_GetObjectItemCaseSensitive(cfg, "serial");
	if (!cJSON_IsObject(serial)) {
		cJSON_DeleteItemFromObjectCaseSensitive(cfg, "serial");
		serial = cJSON_AddObjectToObject(cfg, "serial");
	}
	cJSON_DeleteItemFromObjectCaseSensitive(serial, "mode");
	cJSON_DeleteItemFromObjectCaseSensitive(serial, "file");
	return serial && cJSON_AddStringToObject(serial, "mode", "Tty") ? 0 : rest_oom(h, err);
}

/*
 * Point the snapshot's config.json at this VM's disks and its console at
 * our log: vm.restore has no override (v53 and main: source_url, prefault,
 * memory_restore_mode, resume; main adds zone_updates), and Cloud
 * Hypervisor opens the disks and the serial file that config.json names
 * (state.json carries only their device state), so left alone the restored
 * VM would write to the disks of the VM that was snapshotted.
 */
static int repoint_config(struct vmops_hv *h, int dirfd, struct vmops_error *err)
{
	cJSON *cfg = read_config(h, dirfd, err);
	int r;

	if (!cfg)
		return -1;
	r = repoint(h, cfg, err) < 0 ? -1 : write_config(h, dirfd, cfg, err);
	cJSON_Delete(cfg);
	return r;
}

static int chv_restore(struct vmops_hv *h, int dirfd, int timeout_ms, struct vmops_error *err)
{
	if (rest_need_restore(h, "restore", err) < 0 || repoint_config(h, dirfd, err) < 0)
		return -1;
	return url_call(h, "vm.restore", "source_url", dirfd, true, timeout_ms, err);
}

/* --- migration -------------------------------------------------------------------- */

/*
 * Walk the event monitor's file (pretty-printed JSON objects one after the
 * other): count events named `event` from `source`.
 */
static int count_events(struct vmops_hv *h, const char *source, const char *event)
{
	_cleanup_fclose_ FILE *f = fopen(priv(h)->events, "re");
	_cleanup_free_ char *text = NULL;
	const char *p, *end;
	size_t len = 0;
	int n = 0;

	if (!f || getdelim(&text, &len, '\0', f) < 0)
		return 0;
	for (p = text; *p; p = end) {
		cJSON *ev = cJSON_ParseWithOpts(p, &end, false);
		const char *s, *e;

		if (!ev)
			break;
		s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev, "source"));
		e = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ev, "event"));
		n += s && e && !strcmp(s, source) && !strcmp(e, event);
		cJSON_Delete(ev);
		while (*end == '\n' || *end == ' ' || *end == '\r')
			end++;
	}
	return n;
}

static int check_connections(struct vmops_hv *h, const struct vmops_migrate_params *mp,
			     struct vmops_error *err)
{
	unsigned n = mp ? mp->connections : 1;

	if (n < 1 || n > VMOPS_MIGRATE_CONNECTIONS_MAX)
		return vmops_err(err, VMOPS_EXIT_USAGE, VMM_FMT ": connections must be 1..%d, not %u",
				 VMM_ARG(h), VMOPS_MIGRATE_CONNECTIONS_MAX, n);
	return 0;
}

/* tcp:HOST:0 -> a free port of HOST (Cloud Hypervisor cannot say which it took). */
static int resolve_port(struct vmops_hv *h, const char *uri, char *out, size_t size,
			struct vmops_error *err)
{
	char host[256], port[16];
	const char *colon = strrchr(uri + 4, ':');
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST }, *ai;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd, r;

	if (strncmp(uri, "tcp:", 4) || !colon || strcmp(colon, ":0")) {
		snprintf(out, size, "%s", uri);
		return 0;
	}
	snprintf(host, sizeof(host), "%.*s", (int)(colon - (uri + 4)), uri + 4);
	if (host[0] == '[') {
		memmove(host, host + 1, strlen(host));
		host[strcspn(host, "]")] = '\0';
	}
	if (getaddrinfo(host, "0", &hints, &ai) != 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": %s: not a numeric address",
				 VMM_ARG(h), uri);
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r = fd >= 0 ? bind(fd, ai->ai_addr, ai->ai_addrlen) : -1;
	freeaddrinfo(ai);
	if (r < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		if (fd >= 0)
			close(fd);
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": %s: no free port", VMM_ARG(h), uri);
	}
	close(fd);
	getnameinfo((struct sockaddr *)&ss, sl, NULL, 0, port, sizeof(port), NI_NUMERICSERV);
	snprintf(out, size, strchr(host, ':') ? "tcp:[%s]:%s" : "tcp:%s:%s", host, port);
	return 0;
}

/* Is something listening on the TCP port of tcp:HOST:PORT (this host's
 * /proc/net/tcp and tcp6, state 0A)?  unix:PATH: does the socket exist? */
static bool listening(const char *url)
{
	static const char *const tables[] = { "/proc/net/tcp", "/proc/net/tcp6" };
	const char *colon = strrchr(url, ':');
	char line[512];
	unsigned port, lport, st;
	struct stat sb;

	if (!strncmp(url, "unix:", 5))
		return stat(url + 5, &sb) == 0 && S_ISSOCK(sb.st_mode);
	if (!colon || sscanf(colon + 1, "%u", &port) != 1)
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(tables); i++) {
		_cleanup_fclose_ FILE *f = fopen(tables[i], "re");

		while (f && fgets(line, sizeof(line), f))
			if (sscanf(line, " %*u: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x", &lport, &st) == 2 &&
			    lport == port && st == 0x0A)
				return true;
	}
	return false;
}

/*
 * v53 says "migration-receive-ready" on its event monitor once it listens;
 * v52 says nothing before a sender connects: look for the listening socket.
 */
static int wait_receive_ready(struct vmops_hv *h, const char *url, int timeout_ms,
			      struct vmops_error *err)
{
	int64_t deadline = rest_now_ms() + (timeout_ms > 0 ? timeout_ms : priv(h)->timeout_ms);
	int rc;

	for (;;) {
		if (count_events(h, "vm", "migration-receive-ready") > 0 ||
		    (priv(h)->api_major <= 52 && listening(url)))
			return 0;
		if (rest_async_done(priv(h)->recv, &rc, err))
			return rc < 0 ? vmops_err_prefix(err, VMM_FMT, VMM_ARG(h))
				      : vmops_err(err, VMOPS_EXIT_HYPERVISOR,
						  VMM_FMT ": vm.receive-migration ended before any sender came",
						  VMM_ARG(h));
		if (!vmops_hv_is_alive(h))
			return rest_exited_error(h, err);
		if (rest_now_ms() >= deadline)
			return vmops_err(err, VMOPS_EXIT_TIMEOUT,
					 VMM_FMT ": not listening for the migration after %d ms",
					 VMM_ARG(h), timeout_ms);
		rest_sleep_ms(20);
	}
}

static int chv_prepare_incoming(struct vmops_hv *h, const char *uri,
				const struct vmops_migrate_params *mp, int timeout_ms,
				struct vmops_error *err)
{
	struct vmops_vmm_info *info = vmops_hv_info_mut(h);
	char url[256];
	cJSON *b;

	if (check_connections(h, mp, err) < 0)
		return -1;
	if (!uri || (strncmp(uri, "tcp:", 4) && strncmp(uri, "unix:", 5)))
		return vmops_err(err, VMOPS_EXIT_FAILURE, VMM_FMT ": receive: unsupported address %s (tcp: or unix:)",
				 VMM_ARG(h), uri ? uri : "(none)");
	if (resolve_port(h, uri, url, sizeof(url), err) < 0)
		return -1;
	b = cJSON_CreateObject();
	if (!b || !cJSON_AddStringToObject(b, "receiver_url", url)) {
		cJSON_Delete(b);
		return rest_oom(h, err);
	}
	rest_async_drop(&priv(h)->recv);
	priv(h)->recv = rest_async_start(h, "PUT", API "vm.receive-migration", b,
					 MIGRATION_TIMEOUT_MS, "vm.receive-migration", err);
	cJSON_Delete(b);
	if (!priv(h)->recv || wait_receive_ready(h, url, timeout_ms, err) < 0)
		return -1;
	snprintf(info->incoming_uri, sizeof(info->incoming_uri), "%s", url);
	vmops_debug(VMM_FMT ": listening for migration on %s", VMM_ARG(h), url);
	return 0;
}

static cJSON *send_body(const char *uri, unsigned n, const struct vmops_migrate_params *mp)
{
	cJSON *b = cJSON_CreateObject();

	if (!b || !cJSON_AddStringToObject(b, "destination_url", uri) ||
	    !cJSON_AddNumberToObject(b, "connections", n) ||
	    (mp && mp->downtime_limit_ms &&
	     !cJSON_AddNumberToObject(b, "downtime_ms", mp->downtime_limit_ms))) {
		cJSON_Delete(b);
		return NULL;
	}
	return b;
}

static uint64_t memory_size(struct vmops_hv *h)
{
	struct vmops_http_reply r = { 0 };
	struct vmops_error e;
	const cJSON *cfg, *mem;
	uint64_t size = 0;

	if (call(h, "GET", "vm.info", NULL, &r, &e) >= 0) {
		cfg = cJSON_GetObjectItemCaseSensitive(r.body, "config");
		mem = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(cfg, "memory"), "size");
		size = cJSON_IsNumber(mem) && mem->valuedouble > 0 ? (uint64_t)mem->valuedouble : 0;
	}
	vmops_http_reply_free(&r);
	return size;
}

static int send_once(struct vmops_hv *h, const char *uri, unsigned n,
		     const struct vmops_migrate_params *mp, struct vmops_error *err)
{
	struct rest_priv *p = priv(h);
	cJSON *b = send_body(uri, n, mp);
	struct vmops_http_reply r = { 0 };
	int rc;

	if (!b)
		return rest_oom(h, err);
	if (p->api_major && p->api_major <= 52) {
		/* v52: the answer comes when the migration is over */
		rest_async_drop(&p->send);
		p->send = rest_async_start(h, "PUT", API "vm.send-migration", b, MIGRATION_TIMEOUT_MS,
					   "vm.send-migration", err);
		cJSON_Delete(b);
		return p->send ? 0 : -1;
	}
	rc = call(h, "PUT", "vm.send-migration", b, &r, err);
	cJSON_Delete(b);
	if (rc < 0 && r.status == 500 && n > 1 && strstr(r.text ? r.text : "", "connections option"))
		rc = -2;    /* this destination takes one connection only */
	vmops_http_reply_free(&r);
	return rc == -2 ? -2 : rc < 0 ? -1 : 0;
}

static int chv_send(struct vmops_hv *h, const char *uri, const struct vmops_migrate_params *mp,
		    struct vmops_error *err)
{
	struct rest_priv *p = priv(h);
	unsigned n;
	int r;

	if (check_connections(h, mp, err) < 0)
		return -1;
	if (!p->api_major && ping(h, err) < 0)
		return -1;
	n = mp ? mp->connections : 1;
	if (n > 1 && p->api_major < 52) {
		vmops_warn(VMM_FMT ": version %d has no multi-connection migration: sending over one connection",
			   VMM_ARG(h), p->api_major);
		n = 1;
	}
	p->mem_bytes = memory_size(h);
	r = send_once(h, uri, n, mp, err);
	if (r == -2) {
		vmops_warn(VMM_FMT ": %s; sending over one connection", VMM_ARG(h), err->msg);
		n = 1;
		r = send_once(h, uri, n, mp, err);
	}
	if (r < 0)
		return -1;
	p->sent = true;
	p->connections = n;
	vmops_debug(VMM_FMT ": migrating to %s over %u connection%s", VMM_ARG(h), uri, n,
		    n == 1 ? "" : "s");
	return 0;
}

static void progress_final(struct vmops_migrate_progress *pr, bool ok, const char *why)
{
	snprintf(pr->status, sizeof(pr->status), "%s", ok ? "completed" : "failed");
	if (!ok)
		snprintf(pr->error_desc, sizeof(pr->error_desc), "%.*s",
			 (int)sizeof(pr->error_desc) - 1, why);
}

/* v53: the source's VM belongs to the migration while it runs. */
static int progress_v53(struct vmops_hv *h, struct vmops_migrate_progress *pr,
			struct vmops_error *err)
{
	struct vmops_http_reply r = { 0 };
	struct vmops_error e;
	int rc;

	if (!vmops_hv_is_alive(h)) {
		/* a successful migration ends the source VMM cleanly */
		progress_final(pr, count_events(h, "vmm", "shutdown") > 0,
			       "the source vmm exited during the migration");
		return 0;
	}
	rc = call(h, "GET", "vm.counters", NULL, &r, &e);
	if (rc >= 0)
		progress_final(pr, false, "the migration failed; the vm runs on the source (see its log)");
	else if (r.status == 500 && strstr(r.text ? r.text : "", "currently migrating"))
		snprintf(pr->status, sizeof(pr->status), "active");
	else if (r.status == 500)
		progress_final(pr, true, "");   /* the VM has left; the VMM exits next */
	else if (e.code == VMOPS_EXIT_TIMEOUT)
		rc = vmops_err(err, e.code, "%s", e.msg);
	else
		snprintf(pr->status, sizeof(pr->status), "active");  /* exiting: look again */
	vmops_http_reply_free(&r);
	return rc < 0 && e.code == VMOPS_EXIT_TIMEOUT ? -1 : 0;
}

static int chv_progress(struct vmops_hv *h, struct vmops_migrate_progress *pr,
			struct vmops_error *err)
{
	struct rest_priv *p = priv(h);
	struct vmops_error e;
	int rc;

	memset(pr, 0, sizeof(*pr));
	pr->downtime_ms = pr->expected_downtime_ms = pr->setup_time_ms = pr->total_time_ms = -1;
	snprintf(pr->status, sizeof(pr->status), "none");
	if (!p->sent)
		return 0;
	pr->total_bytes = p->mem_bytes;
	pr->dirty_sync_count = (uint64_t)count_events(h, "vm", "migration-memory-iteration");
	if (p->send) {
		if (!rest_async_done(p->send, &rc, &e))
			snprintf(pr->status, sizeof(pr->status), "active");
		else
			progress_final(pr, rc >= 0, e.msg);
		return 0;
	}
	return progress_v53(h, pr, err);
}

static int chv_cancel(struct vmops_hv *h, struct vmops_error *err)
{
	return vmops_err(err, VMOPS_EXIT_CONFLICT,
			 VMM_FMT ": cancelling a migration: not in the API (destroy the receiver; the source then resumes)",
			 VMM_ARG(h));
}

const struct vmops_hv_driver vmops_hv_chv_driver = {
	.kind = "cloud-hypervisor",
	.launch = chv_launch,
	.attach = chv_attach,
	.wait_ready = chv_wait_ready,
	.prepare_incoming = chv_prepare_incoming,
	.send = chv_send,
	.progress = chv_progress,
	.cancel = chv_cancel,
	.destroy = chv_destroy,
	.pause = chv_pause,
	.resume = chv_resume,
	.status = chv_status,
	.supports_multifd = chv_supports_multifd,
	.snapshot = chv_snapshot,
	.restore = chv_restore,
	.version = chv_version,
	.release = rest_release,
};
