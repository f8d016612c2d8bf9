/* SPDX-License-Identifier: MIT */
/*
 * File extents (SEEK_DATA/SEEK_HOLE) and SHA-256 (OpenSSL EVP, SHA-NI where
 * the CPU has it) of members, several files at once in threads.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>

#include "../exitcodes.h"
#include "internal.h"

const unsigned char bundle_zeros[BUNDLE_BUF];

int bundle_ncpu(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (int)n : 1;
}

static int map_add(struct bundle_map *m, off_t off, off_t len, size_t *cap)
{
	if (m->n == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		struct bundle_extent *e = realloc(m->ext, nc * sizeof(*e));

		if (!e)
			return -1;
		m->ext = e;
		*cap = nc;
	}
	m->ext[m->n++] = (struct bundle_extent){ off, len };
	return 0;
}

/* Fills *m with the data extents of fd (size bytes); a file system without
 * SEEK_DATA gives one extent over the whole file.  -1 with errno set. */
int bundle_map_file(int fd, off_t size, struct bundle_map *m)
{
	size_t cap = 0;
	off_t pos = 0, data, hole;

	memset(m, 0, sizeof(*m));
	m->size = size;
	while (pos < size) {
		data = lseek(fd, pos, SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			break;
		if (data < 0 && errno == EINVAL && pos == 0) {
			data = 0;
			hole = size;
		} else if (data < 0 || (hole = lseek(fd, data, SEEK_HOLE)) < 0) {
			goto fail;
		}
		if (data >= size)
			break;
		if (hole > size)
			hole = size;
		if (map_add(m, data, hole - data, &cap) < 0)
			goto fail;
		pos = hole;
	}
	off_t covered = 0;
	for (size_t i = 0; i < m->n; i++)
		covered += m->ext[i].len;
	m->sparse = covered < size;
	if (lseek(fd, 0, SEEK_SET) < 0)
		goto fail;
	return 0;
fail:
	bundle_map_free(m);
	return -1;
}

void bundle_map_free(struct bundle_map *m)
{
	free(m->ext);
	m->ext = NULL;
	m->n = 0;
}

int bundle_sha_init(struct bundle_sha *s)
{
	s->ctx = EVP_MD_CTX_new();
	if (!s->ctx || EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) != 1) {
		bundle_sha_free(s);
		return -1;
	}
	return 0;
}

int bundle_sha_data(struct bundle_sha *s, const void *p, size_t len)
{
	return EVP_DigestUpdate(s->ctx, p, len) == 1 ? 0 : -1;
}

int bundle_sha_zeros(struct bundle_sha *s, uint64_t len)
{
	while (len > 0) {
		size_t k = len < BUNDLE_BUF ? (size_t)len : BUNDLE_BUF;

		if (bundle_sha_data(s, bundle_zeros, k) < 0)
			return -1;
		len -= k;
	}
	return 0;
}

int bundle_sha_final(struct bundle_sha *s, char hex[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (EVP_DigestFinal_ex(s->ctx, md, &n) != 1 || n != 32)
		return -1;
	for (unsigned int i = 0; i < n; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	return 0;
}

void bundle_sha_free(struct bundle_sha *s)
{
	EVP_MD_CTX_free(s->ctx);
	s->ctx = NULL;
}

struct hash_job {
	const int *fds;
	const struct bundle_map *maps;
	const char *const *names;
	size_t n;
	atomic_size_t next;
	volatile sig_atomic_t *interrupted;
	char (*hex)[65];
	pthread_mutex_t lock;
	struct vmops_error *err;
	atomic_bool failed;
};

static void job_fail(struct hash_job *j, int code, const char *name, const char *what, int e)
{
	pthread_mutex_lock(&j->lock);
	if (!j->failed) {
		if (code == VMOPS_EXIT_INTERRUPTED)
			vmops_err(j->err, code, "bundle: interrupted while hashing %s", name);
		else
			vmops_err(j->err, code, "bundle: %s: %s: %s", name, what, strerror(e));
		j->failed = true;
	}
	pthread_mutex_unlock(&j->lock);
}

/* Hash one extent of file i into s. */
static int hash_extent(struct hash_job *j, size_t i, struct bundle_sha *s, unsigned char *buf,
		       const struct bundle_extent *x)
{
	off_t off = x->off, end = x->off + x->len;

	while (off < end) {
		size_t want = end - off < BUNDLE_BUF ? (size_t)(end - off) : BUNDLE_BUF;
		ssize_t r = pread(j->fds[i], buf, want, off);

		if (j->failed)
			return -1;
		if (j->interrupted && *j->interrupted) {
			job_fail(j, VMOPS_EXIT_INTERRUPTED, j->names[i], NULL, 0);
			return -1;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			job_fail(j, VMOPS_EXIT_FAILURE, j->names[i], r < 0 ? "read" : "read: file shrank",
				 r < 0 ? errno : EIO);
			return -1;
		}
		if (bundle_sha_data(s, buf, (size_t)r) < 0)
			return -1;
		off += r;
	}
	return 0;
}

static int hash_one(struct hash_job *j, size_t i, unsigned char *buf)
{
	const struct bundle_map *m = &j->maps[i];
	struct bundle_sha s;
	off_t pos = 0;
	int rc = -1;

	if (bundle_sha_init(&s) < 0) {
		job_fail(j, VMOPS_EXIT_FAILURE, j->names[i], "sha256", ENOMEM);
		return -1;
	}
	posix_fadvise(j->fds[i], 0, 0, POSIX_FADV_SEQUENTIAL);
	for (size_t k = 0; k < m->n; k++) {
		if (bundle_sha_zeros(&s, (uint64_t)(m->ext[k].off - pos)) < 0 ||
		    hash_extent(j, i, &s, buf, &m->ext[k]) < 0)
			goto out;
		pos = m->ext[k].off + m->ext[k].len;
	}
	if (bundle_sha_zeros(&s, (uint64_t)(m->size - pos)) < 0 || bundle_sha_final(&s, j->hex[i]) < 0)
		goto out;
	rc = 0;
out:
	if (rc < 0)
		job_fail(j, VMOPS_EXIT_FAILURE, j->names[i], "sha256", EIO);
	bundle_sha_free(&s);
	return rc;
}

static void *hash_worker(void *arg)
{
	struct hash_job *j = arg;
	unsigned char *buf = malloc(BUNDLE_BUF);
	size_t i;

	if (!buf) {
		job_fail(j, VMOPS_EXIT_FAILURE, "buffer", "malloc", ENOMEM);
		return NULL;
	}
	while (!j->failed && (i = atomic_fetch_add(&j->next, 1)) < j->n)
		if (hash_one(j, i, buf) < 0)
			break;
	free(buf);
	return NULL;
}

int bundle_hash_files(const int *fds, const struct bundle_map *maps, const char *const *names,
		      size_t n, int threads, volatile sig_atomic_t *interrupted,
		      char (*hex)[65], struct vmops_error *err)
{
	struct hash_job j = { .fds = fds, .maps = maps, .names = names, .n = n,
			      .interrupted = interrupted, .hex = hex, .err = err };
	pthread_t tid[VMOPS_BUNDLE_MEMBERS_MAX];
	size_t started = 0, want = threads > 0 ? (size_t)threads : 1;

	if (want > n)
		want = n;
	pthread_mutex_init(&j.lock, NULL);
	atomic_init(&j.next, 0);
	/* the calling thread is one of the workers */
	while (started + 1 < want && pthread_create(&tid[started], NULL, hash_worker, &j) == 0)
		started++;
	hash_worker(&j);
	for (size_t k = 0; k < started; k++)
		pthread_join(tid[k], NULL);
	pthread_mutex_destroy(&j.lock);
	return j.failed ? -1 : 0;
}
