/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the /proc/PID/stat parser (and, on the same bytes,
 * the hypervisor and VMM-id identification, which see untrusted argv).
 *
 *   clang -std=c17 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
 *         tests/fuzz/fuzz_proc_stat.c lib/proc.c lib/error.c lib/log.c \
 *         -o fuzz_proc_stat
 *   ./fuzz_proc_stat -max_total_time=60 tests/fixtures/proc/[0-9]*
 *
 * (Seeds: the fixture directories' stat files, e.g. copy them into a corpus
 * directory first.)  Crashes, sanitizer reports and the invariants below
 * being broken are bugs.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/proc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_stat(const uint8_t *data, size_t size)
{
	struct vmops_proc_stat st;
	struct vmops_error err;
	int r;

	memset(&err, 0, sizeof(err));
	r = vmops_proc_parse_stat((const char *)data, size, &st, &err);
	if (r == 0) {
		/* what a success promises */
		if (st.pid <= 0 || st.ppid < 0)
			abort();
		if (!memchr(st.comm, '\0', sizeof(st.comm)))
			abort();
		if (!((st.state >= 'a' && st.state <= 'z') || (st.state >= 'A' && st.state <= 'Z')))
			abort();
	} else if (r != -1 || !err.msg[0] || !memchr(err.msg, '\0', sizeof(err.msg))) {
		abort();
	}
}

static void check_identify(const uint8_t *data, size_t size)
{
	char *buf, *argv[64];
	size_t i, start = 0;
	int argc = 0;
	long long id;

	/* the bytes as a NUL-separated cmdline, and the first piece as an exe */
	buf = malloc(size + 1);
	if (!buf)
		return;
	memcpy(buf, data, size);
	buf[size] = '\0';
	for (i = 0; i <= size && argc < 63; i++) {
		if (buf[i] == '\0') {
			argv[argc++] = buf + start;
			start = i + 1;
		}
	}
	argv[argc] = NULL;
	if (vmops_proc_hv_kind(buf) > VMOPS_HV_FIRECRACKER)
		abort();
	id = vmops_proc_vmm_id(argc, argv);
	if (id == 0 || id < -1)
		abort();
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_stat(data, size);
	check_identify(data, size);
	return 0;
}
