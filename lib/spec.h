/* SPDX-License-Identifier: MIT */
/*
 * Launch spec: the JSON that makes a sandbox's VM reproducible on another
 * worker (stored in sandboxes.launch_spec).
 *
 *   {"hypervisor": "qemu" | "cloud-hypervisor" | "firecracker",
 *    "memory_mb": 16..1048576, "vcpus": 1..256,
 *    "kernel": "/abs/path", "initrd": "/abs/path", "cmdline": "...",
 *    "disks": [{"path": "/abs/path", "readonly": false}],
 *    "balloon": {"free_page_hint": false},
 *    "accel": "tcg" | "kvm" | "auto"}
 *
 * hypervisor, memory_mb, vcpus and kernel are required.  Parsing is strict:
 * unknown or duplicate keys, wrong types, non-integral numbers and values
 * out of range are rejected with a message naming the key, e.g.
 * "spec: disks[1].readonly: must be true or false".
 */
#ifndef VMOPS_SPEC_H
#define VMOPS_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "error.h"

#define VMOPS_SPEC_MEMORY_MB_MIN 16
#define VMOPS_SPEC_MEMORY_MB_MAX 1048576
#define VMOPS_SPEC_VCPUS_MIN 1
#define VMOPS_SPEC_VCPUS_MAX 256
#define VMOPS_SPEC_DISKS_MAX 16
#define VMOPS_SPEC_CMDLINE_MAX 2047  /* x86 COMMAND_LINE_SIZE - 1 */

enum vmops_accel {
	VMOPS_ACCEL_AUTO = 0,  /* the launcher decides (see hv.h) */
	VMOPS_ACCEL_TCG,
	VMOPS_ACCEL_KVM,
};

struct vmops_spec_disk {
	char *path;
	bool readonly;
};

struct vmops_spec {
	char *hypervisor;
	uint32_t memory_mb;
	uint32_t vcpus;
	char *kernel;
	char *initrd;                 /* NULL: none */
	char *cmdline;                /* NULL: none */
	struct vmops_spec_disk *disks;
	size_t n_disks;
	bool balloon;                 /* "balloon" given: add a balloon device */
	bool balloon_free_page_hint;
	enum vmops_accel accel;       /* default auto */
};

/* Parse `len` bytes of JSON text (len may be (size_t)-1 for a C string). */
struct vmops_spec *vmops_spec_parse(const char *json, size_t len, struct vmops_error *err);
/* Validate and copy an already parsed JSON object. */
struct vmops_spec *vmops_spec_from_json(const cJSON *obj, struct vmops_error *err);
/* Serialise (all keys; optional ones only when set).  NULL: out of memory. */
cJSON *vmops_spec_to_json(const struct vmops_spec *s);
/* Compact JSON text, malloc'ed; NULL: out of memory. */
char *vmops_spec_to_string(const struct vmops_spec *s);
void vmops_spec_free(struct vmops_spec *s);
void vmops_spec_freep(struct vmops_spec **s);
#define _cleanup_spec_ __attribute__((cleanup(vmops_spec_freep)))

const char *vmops_accel_name(enum vmops_accel a);

#endif
