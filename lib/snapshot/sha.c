/* SPDX-License-Identifier: MIT */
/* SHA-256 of a whole file (libcrypto EVP). */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../exitcodes.h"
#include "../macro.h"
#include "snapshot.h"

int vmops_file_sha256(const char *path, char hex[65], uint64_t *size, struct vmops_error *e)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_free_ unsigned char *buf = malloc(1 << 20);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint64_t total = 0;
	ssize_t n;
	int r = -1;

	if (fd < 0 || !buf || !ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
		vmops_err(e, VMOPS_EXIT_FAILURE, "sha256 %s: %s", path, fd < 0 ? strerror(errno) : "out of memory");
		goto out;
	}
	while ((n = read(fd, buf, 1 << 20)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || !EVP_DigestUpdate(ctx, buf, (size_t)n)) {
			vmops_err(e, VMOPS_EXIT_FAILURE, "sha256 %s: read: %s", path, strerror(errno));
			goto out;
		}
		total += (uint64_t)n;
	}
	if (!EVP_DigestFinal_ex(ctx, md, &mdlen) || mdlen != 32) {
		vmops_err(e, VMOPS_EXIT_FAILURE, "sha256 %s: digest failed", path);
		goto out;
	}
	for (unsigned i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	if (size)
		*size = total;
	r = 0;
out:
	EVP_MD_CTX_free(ctx);
	return r;
}
