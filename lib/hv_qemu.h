/* SPDX-License-Identifier: MIT */
/*
 * Inside the QEMU driver: what hv_qemu.c shares with hv_qemu_snapshot.c
 * (the optional operations of struct vmops_hv_driver).  Not for programs.
 */
#ifndef VMOPS_HV_QEMU_H
#define VMOPS_HV_QEMU_H

#include <cjson/cJSON.h>

#include "hv.h"
#include "qmp.h"

/* One QMP command on the handle's connection (connecting if needed). */
int vmops_qemu_cmd(struct vmops_hv *h, const char *cmd, const cJSON *args, cJSON **reply,
		   struct vmops_error *err);
/* The handle's QMP connection, connected; NULL with err set. */
struct vmops_qmp *vmops_qemu_conn(struct vmops_hv *h, struct vmops_error *err);

int vmops_qemu_quiesce(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err);
int vmops_qemu_thaw(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err);
int vmops_qemu_balloon_set(struct vmops_hv *h, uint64_t bytes, struct vmops_error *err);
int vmops_qemu_balloon_get(struct vmops_hv *h, uint64_t *bytes, struct vmops_error *err);
int vmops_qemu_snapshot(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
			struct vmops_error *err);
int vmops_qemu_restore(struct vmops_hv *h, int dirfd, int timeout_ms, struct vmops_error *err);
/* From the QMP greeting: "7.2.19". */
int vmops_qemu_version(struct vmops_hv *h, char *buf, size_t len, struct vmops_error *err);

/* The file a QEMU snapshot consists of (one migration stream). */
#define VMOPS_QEMU_SNAPSHOT_FILE "vmstate"

#endif
