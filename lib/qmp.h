/* SPDX-License-Identifier: MIT */
/*
 * QMP client: QEMU's JSON control protocol over a UNIX socket (or TCP).
 *
 * One struct vmops_qmp is one connection.  Commands are synchronous: each
 * carries an "id" that its reply must echo; asynchronous events that arrive
 * meanwhile are queued (vmops_qmp_next_event) and never taken for replies.
 * Every wait is bounded by a timeout.  QEMU accepts one QMP client per
 * socket at a time, so keep one connection per VMM.
 *
 * The framer below is pure (bytes in, JSON objects out) and is what the
 * fuzz target exercises; the guest agent client (qga.h) reuses it.
 */
#ifndef VMOPS_QMP_H
#define VMOPS_QMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "error.h"

/* --- framer: bytes -> JSON messages (no I/O) ---------------------------- */

/*
 * QMP messages are JSON objects, one per line ("\r\n" terminated).  The
 * framer accepts them split across reads or several per read (also several
 * on one line), skips blank lines, and drops what is not a JSON object
 * (counted in ->garbage).  A 0xFF byte resets the current line: the guest
 * agent sends it before a guest-sync-delimited reply to flush stale input.
 * A line longer than VMOPS_QMP_MAX_LINE is dropped up to its newline.
 */
#define VMOPS_QMP_MAX_LINE (64u << 20)

struct vmops_qmp_framer {
	char *buf;
	size_t len;           /* bytes held */
	size_t cap;
	size_t pos;           /* start of the unconsumed part */
	size_t scan;          /* bytes after pos known to hold no '\n' or 0xFF */
	bool discarding;      /* dropping an overlong line up to its newline */
	size_t max_line;      /* 0 means VMOPS_QMP_MAX_LINE */
	unsigned long garbage;   /* lines or values dropped as not-JSON-objects */
	unsigned long overlong;  /* lines dropped for being too long */
	unsigned long resets;    /* 0xFF bytes seen */
};

void vmops_qmp_framer_init(struct vmops_qmp_framer *f);
void vmops_qmp_framer_free(struct vmops_qmp_framer *f);
/* Append bytes.  Returns 0, or -1 if out of memory. */
int vmops_qmp_framer_feed(struct vmops_qmp_framer *f, const void *bytes, size_t n);
/*
 * Take the next complete message.  Returns 1 and sets *msg (a JSON object
 * the caller frees), or 0 if more bytes are needed.  Never fails.
 */
int vmops_qmp_framer_next(struct vmops_qmp_framer *f, cJSON **msg);
/* Forget everything buffered (not the counters). */
void vmops_qmp_framer_reset(struct vmops_qmp_framer *f);

enum vmops_qmp_msg_kind {
	VMOPS_QMP_MSG_INVALID = 0, /* an object QMP does not define */
	VMOPS_QMP_MSG_GREETING,    /* {"QMP": {...}} */
	VMOPS_QMP_MSG_RETURN,      /* {"return": ..., "id"?} */
	VMOPS_QMP_MSG_ERROR,       /* {"error": {"class", "desc"}, "id"?} */
	VMOPS_QMP_MSG_EVENT,       /* {"event": "NAME", "data"?, "timestamp"?} */
};

enum vmops_qmp_msg_kind vmops_qmp_msg_kind(const cJSON *msg);

/*
 * Interpret a reply to command `cmd` sent on `sock` over `proto` ("qmp",
 * "qga"; these three only label the message).  On {"return": X}: returns 0
 * and, if ret is not NULL, moves X into *ret.  On {"error": ...}: returns -1
 * with "PROTO SOCK: CMD: CLASS: desc" (code VMOPS_EXIT_HYPERVISOR).
 */
int vmops_qmp_parse_reply(cJSON *msg, const char *proto, const char *sock,
			  const char *cmd, cJSON **ret, struct vmops_error *err);

/* --- connection ----------------------------------------------------------- */

struct vmops_qmp;

/*
 * Default timeout: what vmops_qmp_connect() and vmops_qmp_cmd() take a
 * timeout_ms <= 0 for, and what the calls without a timeout argument use.
 */
#define VMOPS_QMP_TIMEOUT_MS 10000

/*
 * Open a nonblocking, close-on-exec stream socket to ADDR: "unix:PATH",
 * a path (anything containing '/', or no ':'), or "HOST:PORT" /
 * "tcp:HOST:PORT" ("[v6]:PORT" for IPv6).  A missing socket or refused
 * connection is retried until timeout_ms has passed (a VMM that is starting
 * creates its socket a little later).  `proto` only labels messages
 * ("qmp ADDR: connect: connection refused").  Returns the fd or -1.
 */
int vmops_qmp_dial(const char *proto, const char *addr, int timeout_ms,
		   struct vmops_error *err);

/*
 * Connect, read the greeting and negotiate capabilities (qmp_capabilities),
 * all within timeout_ms.  Returns NULL on failure (code
 * VMOPS_EXIT_HYPERVISOR, or VMOPS_EXIT_TIMEOUT when the deadline passed).
 */
struct vmops_qmp *vmops_qmp_connect(const char *addr, int timeout_ms,
				    struct vmops_error *err);
void vmops_qmp_close(struct vmops_qmp *q);
void vmops_qmp_closep(struct vmops_qmp **q);
#define _cleanup_qmp_ __attribute__((cleanup(vmops_qmp_closep)))

/* The address given to vmops_qmp_connect. */
const char *vmops_qmp_addr(const struct vmops_qmp *q);
/* QEMU version from the greeting; returns -1 if the greeting had none. */
int vmops_qmp_version(const struct vmops_qmp *q, int *major, int *minor, int *micro);
/* False once the peer closed the connection or it failed. */
bool vmops_qmp_is_connected(const struct vmops_qmp *q);

/*
 * Execute command `cmd` with arguments `args` (a JSON object, or NULL; not
 * consumed).  Waits at most timeout_ms for the reply.  On success returns 0
 * and, if reply is not NULL, stores the "return" value in *reply (caller
 * frees).  Errors: QEMU's "CLASS: desc", connection loss (HYPERVISOR),
 * timeout (TIMEOUT; a late reply is recognised by its id and discarded).
 */
int vmops_qmp_cmd(struct vmops_qmp *q, const char *cmd, const cJSON *args,
		  cJSON **reply, int timeout_ms, struct vmops_error *err);

/*
 * Pass `fd` to QEMU with SCM_RIGHTS under `name` (QMP "getfd"), e.g. for
 * migrate "fd:NAME".  UNIX sockets only.  `fd` stays open in this process.
 * Waits at most VMOPS_QMP_TIMEOUT_MS.
 */
int vmops_qmp_send_fd(struct vmops_qmp *q, int fd, const char *name,
		      struct vmops_error *err);

/*
 * Next queued asynchronous event, reading for up to timeout_ms if none is
 * queued (0: only what is already readable).  Returns 1 and sets *event
 * (caller frees), 0 if none arrived in time, -1 if the connection failed.
 */
int vmops_qmp_next_event(struct vmops_qmp *q, cJSON **event, int timeout_ms,
			 struct vmops_error *err);
/* Events dropped because the queue was full (VMOPS_QMP_MAX_EVENTS). */
#define VMOPS_QMP_MAX_EVENTS 1024
unsigned long vmops_qmp_events_dropped(const struct vmops_qmp *q);

/*
 * Does the peer know command `name` (query-commands, cached)?  Returns 1, 0,
 * or -1 on error.  Waits at most VMOPS_QMP_TIMEOUT_MS.
 */
int vmops_qmp_has_command(struct vmops_qmp *q, const char *name, struct vmops_error *err);
/*
 * Does the peer know migration capability `name`
 * (query-migrate-capabilities)?  Returns 1, 0, or -1 on error; *enabled
 * (may be NULL) gets its current state.  Waits at most VMOPS_QMP_TIMEOUT_MS.
 */
int vmops_qmp_has_migrate_capability(struct vmops_qmp *q, const char *name,
				     bool *enabled, struct vmops_error *err);

#endif
