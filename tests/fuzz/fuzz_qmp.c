/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the QMP framer (lib/qmp.c): the bytes a hypervisor
 * or guest agent sends us are untrusted.
 *
 *   clang -std=c17 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
 *         -Ilib tests/fuzz/fuzz_qmp.c lib/qmp.c lib/error.c lib/log.c \
 *         -lcjson -o fuzz_qmp
 *   ./fuzz_qmp -max_total_time=60
 *
 * Input: byte 0 picks the chunk size the stream is fed in, byte 1 a small
 * line limit (or none); the rest is the stream.  Invariants checked:
 * every message is a JSON object; replies classify and convert to an error
 * message without crashing; feeding the stream in chunks yields exactly the
 * messages that feeding it at once does; buffer bookkeeping stays sane.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSGS 4096

struct run {
	char *texts[MAX_MSGS];
	size_t n;
	size_t dropped;     /* beyond MAX_MSGS */
};

static void check_framer(const struct vmops_qmp_framer *f)
{
	if (f->pos > f->len || f->len > f->cap || f->scan > f->len - f->pos)
		abort();
}

static void take(struct vmops_qmp_framer *f, struct run *r)
{
	cJSON *m;

	while (vmops_qmp_framer_next(f, &m)) {
		struct vmops_error err = { 0 };
		cJSON *ret = NULL;

		check_framer(f);
		if (!cJSON_IsObject(m))
			abort();
		if ((unsigned)vmops_qmp_msg_kind(m) > VMOPS_QMP_MSG_EVENT)
			abort();
		/* Print first: parse_reply moves "return" out of m. */
		if (r->n < MAX_MSGS) {
			r->texts[r->n] = cJSON_PrintUnformatted(m);
			if (!r->texts[r->n])
				abort();
			r->n++;
		} else {
			r->dropped++;
		}
		if (vmops_qmp_parse_reply(m, "qmp", "fuzz.sock", "cmd", &ret, &err) < 0) {
			if (!err.msg[0] || !memchr(err.msg, '\0', sizeof(err.msg)) || ret)
				abort();
		}
		cJSON_Delete(ret);
		cJSON_Delete(m);
	}
	check_framer(f);
}

static void run_free(struct run *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->texts[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vmops_qmp_framer whole, split;
	struct run a = { 0 }, b = { 0 };
	size_t chunk, i;

	if (size < 2)
		return 0;
	chunk = (size_t)data[0] % 17 + 1;
	vmops_qmp_framer_init(&whole);
	vmops_qmp_framer_init(&split);
	if (data[1] & 0x80)
		whole.max_line = split.max_line = (size_t)(data[1] & 0x7f) + 1;
	data += 2;
	size -= 2;

	if (vmops_qmp_framer_feed(&whole, data, size) < 0)
		abort();
	take(&whole, &a);

	for (i = 0; i < size; i += chunk) {
		size_t n = size - i < chunk ? size - i : chunk;

		if (vmops_qmp_framer_feed(&split, data + i, n) < 0)
			abort();
		take(&split, &b);
	}

	/* Chunking must not change what comes out. */
	if (a.n != b.n || a.dropped != b.dropped)
		abort();
	for (i = 0; i < a.n; i++)
		if (strcmp(a.texts[i], b.texts[i]))
			abort();

	/* After a final newline nothing can be pending. */
	vmops_qmp_framer_feed(&whole, "\n", 1);
	take(&whole, &a);

	run_free(&a);
	run_free(&b);
	vmops_qmp_framer_free(&whole);
	vmops_qmp_framer_free(&split);
	return 0;
}
