/* SPDX-License-Identifier: MIT */
/*
 * Benchmark driver for lib/bundle (not installed; built by `make bench`):
 *
 *   bundle-bench write OUT DIR NAME...   bundle DIR/NAME... to OUT ("-": stdout)
 *   bundle-bench verify IN               verify a bundle ("-": stdin)
 *   bundle-bench extract IN DIR          extract into the empty DIR
 *
 * Environment: BUNDLE_THREADS, BUNDLE_LEVEL (vmops_bundle_opts).  Prints one
 * JSON line on stderr: seconds in all, seconds before the first archive byte
 * (the hashing pass, for write), bytes of member data.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bundle/bundle.h"
#include "exitcodes.h"

static double t0, t_first = -1;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void progress(uint64_t done, uint64_t total, void *arg)
{
	if (t_first < 0)
		t_first = now() - t0;
}

static int fail(const struct vmops_error *e)
{
	fprintf(stderr, "bundle-bench: %s\n", e->msg);
	return e->code ? e->code : 1;
}

int main(int argc, char **argv)
{
	struct vmops_bundle_opts o = { .progress = progress };
	struct vmops_manifest m = { 0 };
	struct vmops_error e = { 0 };
	uint64_t bytes = 0;
	int rc;

	o.threads = getenv("BUNDLE_THREADS") ? atoi(getenv("BUNDLE_THREADS")) : 0;
	o.zstd_level = getenv("BUNDLE_LEVEL") ? atoi(getenv("BUNDLE_LEVEL")) : 0;
	t0 = now();
	if (argc >= 5 && strcmp(argv[1], "write") == 0) {
		int dfd = open(argv[3], O_RDONLY | O_DIRECTORY);

		snprintf(m.hypervisor, sizeof(m.hypervisor), "qemu");
		snprintf(m.hypervisor_version, sizeof(m.hypervisor_version), "bench");
		snprintf(m.sandbox, sizeof(m.sandbox), "bench");
		snprintf(m.worker, sizeof(m.worker), "bench");
		m.memory_bytes = 1;
		m.spec = cJSON_CreateObject();
		if (strcmp(argv[2], "-") == 0)
			rc = vmops_bundle_write_fd(1, dfd, (const char *const *)argv + 4, argc - 4, &m, &o, &e);
		else
			rc = vmops_bundle_write_path(argv[2], dfd, (const char *const *)argv + 4, argc - 4, &m, &o, &e);
	} else if (argc == 3 && strcmp(argv[1], "verify") == 0) {
		int fd = strcmp(argv[2], "-") == 0 ? 0 : open(argv[2], O_RDONLY);

		rc = vmops_bundle_verify_fd(fd, &m, &o, &e);
	} else if (argc == 4 && strcmp(argv[1], "extract") == 0) {
		int fd = strcmp(argv[2], "-") == 0 ? 0 : open(argv[2], O_RDONLY);

		rc = vmops_bundle_extract_fd(fd, open(argv[3], O_RDONLY | O_DIRECTORY), &m, &o, &e);
	} else {
		fprintf(stderr, "usage: bundle-bench write OUT DIR NAME... | verify IN | extract IN DIR\n");
		return 2;
	}
	if (rc < 0)
		return fail(&e);
	for (size_t i = 0; i < m.n_members; i++)
		bytes += m.members[i].size;
	fprintf(stderr, "{\"seconds\": %.3f, \"first_byte_s\": %.3f, \"bytes\": %llu}\n", now() - t0,
		t_first, (unsigned long long)bytes);
	vmops_manifest_clear(&m);
	return 0;
}
