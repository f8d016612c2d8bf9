/* SPDX-License-Identifier: MIT */
/* lib/bundle internals shared by manifest.c, hash.c, write.c and read.c. */
#ifndef VMOPS_BUNDLE_INTERNAL_H
#define VMOPS_BUNDLE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/evp.h>

#include "bundle.h"

#define BUNDLE_BUF (1u << 20)           /* read/write chunk */
#define BUNDLE_MANIFEST_MAX (1u << 20)  /* largest manifest.json accepted */

/* A member name is a plain file name: not empty, no '/', not "." or "..",
 * not the manifest, no control characters, shorter than the name field.
 * Returns NULL if valid, else why not. */
const char *bundle_name_invalid(const char *name);

/* Data extents of a file (from SEEK_DATA/SEEK_HOLE); holes between. */
struct bundle_extent {
	off_t off, len;
};
struct bundle_map {
	struct bundle_extent *ext;
	size_t n;
	off_t size;
	bool sparse;        /* has at least one hole */
};
int bundle_map_file(int fd, off_t size, struct bundle_map *m);
void bundle_map_free(struct bundle_map *m);

/* SHA-256 over a stream with holes: feed data, or `len` zero bytes. */
struct bundle_sha {
	EVP_MD_CTX *ctx;
};
int bundle_sha_init(struct bundle_sha *s);
int bundle_sha_data(struct bundle_sha *s, const void *p, size_t len);
int bundle_sha_zeros(struct bundle_sha *s, uint64_t len);
int bundle_sha_final(struct bundle_sha *s, char hex[65]);
void bundle_sha_free(struct bundle_sha *s);

/* A zero-filled buffer of BUNDLE_BUF bytes (never written). */
extern const unsigned char bundle_zeros[BUNDLE_BUF];

/* Hash files fds[0..n) (maps given) with up to `threads` threads, filling
 * hex[i].  Returns 0, or -1 with err (I/O error, interrupted). */
int bundle_hash_files(const int *fds, const struct bundle_map *maps, const char *const *names,
		      size_t n, int threads, volatile sig_atomic_t *interrupted,
		      char (*hex)[65], struct vmops_error *err);

/* SHA-256 of one member at a time in a thread beside the archive pass
 * (hasher.c): begin, then per chunk take a free buffer, fill it, push it
 * (or push idx -1 for `len` zero bytes) and use it until the next take;
 * end waits for the queue and gives the hex digest. */
struct bundle_hasher;
struct bundle_hasher *bundle_hasher_new(void);
void bundle_hasher_free(struct bundle_hasher *h);
int bundle_hasher_begin(struct bundle_hasher *h);
unsigned char *bundle_hasher_buf(struct bundle_hasher *h, int *idx);
void bundle_hasher_push(struct bundle_hasher *h, int idx, uint64_t len);
int bundle_hasher_end(struct bundle_hasher *h, char hex[65]);

/* The manifest slot (frame.c): write `data` as one zstd frame of raw
 * blocks at fd's offset; later rewrite content bytes [off, off+len) of the
 * frame that starts at file offset `base`.  -1 with errno. */
int bundle_raw_frame_write(int fd, const void *data, size_t len);
int bundle_raw_frame_patch(int fd, off_t base, size_t off, const void *data, size_t len);

/* The number of CPUs, at least 1. */
int bundle_ncpu(void);

#endif
