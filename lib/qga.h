/* SPDX-License-Identifier: MIT */
/*
 * QEMU guest agent client, on the agent's own chardev socket.
 *
 * The host side of that socket is served by QEMU whether or not the agent
 * runs in the guest, so connecting proves nothing: vmops_qga_sync() is the
 * "is the agent there" wait (guest-sync-delimited with a random id; bytes
 * before the 0xFF sentinel and replies with another id are discarded).  It
 * must succeed before commands are sent, and again after any timeout.
 * Waiting for the agent and each command have separate timeouts, so a slow
 * agent cannot eat a command's budget or the other way round; a timeout_ms
 * <= 0 means VMOPS_QMP_TIMEOUT_MS.
 */
#ifndef VMOPS_QGA_H
#define VMOPS_QGA_H

#include <stdbool.h>

#include <cjson/cJSON.h>

#include "error.h"

struct vmops_qga;

/* Connect to the socket (retrying a missing socket until timeout_ms). */
struct vmops_qga *vmops_qga_connect(const char *path, int timeout_ms,
				    struct vmops_error *err);
void vmops_qga_close(struct vmops_qga *g);
void vmops_qga_closep(struct vmops_qga **g);
#define _cleanup_qga_ __attribute__((cleanup(vmops_qga_closep)))

/*
 * guest-sync-delimited: wait at most timeout_ms for the agent to answer with
 * our id.  Returns 0, or -1 (VMOPS_EXIT_TIMEOUT: no agent answered).
 */
int vmops_qga_sync(struct vmops_qga *g, int timeout_ms, struct vmops_error *err);
/* True after a successful sync and no timeout since. */
bool vmops_qga_is_synced(const struct vmops_qga *g);

/*
 * Execute an agent command (args: JSON object or NULL, not consumed).  On
 * success returns 0 and stores the "return" value in *reply if reply is not
 * NULL.  Errors read "qga PATH: CMD: CLASS: desc".  A timeout unsyncs the
 * connection.
 */
int vmops_qga_cmd(struct vmops_qga *g, const char *cmd, const cJSON *args,
		  cJSON **reply, int timeout_ms, struct vmops_error *err);

int vmops_qga_ping(struct vmops_qga *g, int timeout_ms, struct vmops_error *err);

/* Returns the number of filesystems frozen/thawed, or -1. */
int vmops_qga_fsfreeze_freeze(struct vmops_qga *g, int timeout_ms, struct vmops_error *err);
int vmops_qga_fsfreeze_thaw(struct vmops_qga *g, int timeout_ms, struct vmops_error *err);

enum vmops_qga_freeze_status {
	VMOPS_QGA_THAWED = 0,
	VMOPS_QGA_FROZEN = 1,
};
/* Returns VMOPS_QGA_THAWED or VMOPS_QGA_FROZEN, or -1. */
int vmops_qga_fsfreeze_status(struct vmops_qga *g, int timeout_ms, struct vmops_error *err);

#endif
