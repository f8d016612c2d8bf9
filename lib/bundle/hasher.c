/* SPDX-License-Identifier: MIT */
/*
 * SHA-256 of the member being archived, in a thread of its own beside the
 * archive pass: the writer reads each chunk into one of the hasher's
 * buffers, queues it, and hands the same bytes to libarchive while the
 * hasher thread hashes them.  A buffer is reused only once hashed.  Holes
 * are queued as "n zero bytes" (no buffer).  One producer (the writer),
 * one consumer (the thread).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define HBUF 4
#define HQ 16

struct item {
	int buf;        /* index into buf[], -1: `len` zero bytes */
	uint64_t len;
};

struct bundle_hasher {
	pthread_t tid;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned char *buf[HBUF];
	bool busy[HBUF];
	struct item q[HQ];
	size_t head, n, pending;   /* queued items; queued + being hashed */
	bool stop, failed;
	struct bundle_sha sha;
};

static int hash_item(struct bundle_hasher *h, const struct item *it)
{
	if (it->buf < 0)
		return bundle_sha_zeros(&h->sha, it->len);
	return bundle_sha_data(&h->sha, h->buf[it->buf], (size_t)it->len);
}

static void *hasher_main(void *arg)
{
	struct bundle_hasher *h = arg;

	pthread_mutex_lock(&h->mu);
	for (;;) {
		struct item it;
		int r;

		while (h->n == 0 && !h->stop)
			pthread_cond_wait(&h->cv, &h->mu);
		if (h->n == 0)
			break;
		it = h->q[h->head];
		h->head = (h->head + 1) % HQ;
		h->n--;
		pthread_mutex_unlock(&h->mu);
		r = h->failed ? -1 : hash_item(h, &it);
		pthread_mutex_lock(&h->mu);
		if (r < 0)
			h->failed = true;
		if (it.buf >= 0)
			h->busy[it.buf] = false;
		h->pending--;
		pthread_cond_broadcast(&h->cv);
	}
	pthread_mutex_unlock(&h->mu);
	return NULL;
}

void bundle_hasher_free(struct bundle_hasher *h)
{
	if (!h)
		return;
	pthread_mutex_lock(&h->mu);
	h->stop = true;
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
	pthread_join(h->tid, NULL);
	for (int i = 0; i < HBUF; i++)
		free(h->buf[i]);
	bundle_sha_free(&h->sha);
	pthread_cond_destroy(&h->cv);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

struct bundle_hasher *bundle_hasher_new(void)
{
	struct bundle_hasher *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	for (int i = 0; i < HBUF; i++)
		if (!(h->buf[i] = malloc(BUNDLE_BUF)))
			goto fail;
	pthread_mutex_init(&h->mu, NULL);
	pthread_cond_init(&h->cv, NULL);
	if (pthread_create(&h->tid, NULL, hasher_main, h) != 0) {
		pthread_cond_destroy(&h->cv);
		pthread_mutex_destroy(&h->mu);
		goto fail;
	}
	return h;
fail:
	for (int i = 0; i < HBUF; i++)
		free(h->buf[i]);
	free(h);
	return NULL;
}

/* Waits until nothing is queued or being hashed (mutex held). */
static void drain(struct bundle_hasher *h)
{
	while (h->pending > 0)
		pthread_cond_wait(&h->cv, &h->mu);
}

int bundle_hasher_begin(struct bundle_hasher *h)
{
	int r;

	pthread_mutex_lock(&h->mu);
	drain(h);
	bundle_sha_free(&h->sha);
	r = h->failed ? -1 : bundle_sha_init(&h->sha);
	pthread_mutex_unlock(&h->mu);
	return r;
}

unsigned char *bundle_hasher_buf(struct bundle_hasher *h, int *idx)
{
	pthread_mutex_lock(&h->mu);
	for (;;) {
		for (int i = 0; i < HBUF; i++)
			if (!h->busy[i]) {
				*idx = i;
				pthread_mutex_unlock(&h->mu);
				return h->buf[i];
			}
		pthread_cond_wait(&h->cv, &h->mu);
	}
}

/* Queue buffer idx (len bytes), or len zero bytes when idx < 0. */
void bundle_hasher_push(struct bundle_hasher *h, int idx, uint64_t len)
{
	pthread_mutex_lock(&h->mu);
	while (h->n == HQ)
		pthread_cond_wait(&h->cv, &h->mu);
	h->q[(h->head + h->n) % HQ] = (struct item){ idx, len };
	h->n++;
	h->pending++;
	if (idx >= 0)
		h->busy[idx] = true;
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
}

int bundle_hasher_end(struct bundle_hasher *h, char hex[65])
{
	int r;

	pthread_mutex_lock(&h->mu);
	drain(h);
	r = h->failed || !h->sha.ctx ? -1 : bundle_sha_final(&h->sha, hex);
	pthread_mutex_unlock(&h->mu);
	return r;
}
