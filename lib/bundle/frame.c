/* SPDX-License-Identifier: MIT */
/*
 * The manifest slot of a one-pass bundle: the archive's first bytes (the
 * manifest.json tar entry) as a zstd frame of raw (stored) blocks, so that
 * the manifest's bytes sit at known offsets in the file and can be
 * rewritten in place once every member's SHA-256 is known.  The rest of
 * the archive follows as ordinary compressed zstd frames; a zstd stream may
 * be any sequence of frames (RFC 8878 section 3.1), and zstd(1), GNU tar
 * and libarchive decode them as one.
 *
 * A frame of raw blocks (RFC 8878 3.1.1): magic 28 b5 2f fd, a frame
 * header descriptor 0xa0 (single segment, 4-byte content size, no
 * checksum, no dictionary), the content size (LE32), then blocks of at
 * most 128 KiB, each a 3-byte header (last-block bit, type 0 = raw,
 * size << 3) and its bytes.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define RAW_BLOCK_MAX (128u * 1024)
#define FRAME_HDR 9u   /* magic 4 + descriptor 1 + content size 4 */

static int put_all(int fd, const void *p, size_t len, off_t at)
{
	while (len > 0) {
		ssize_t w = at >= 0 ? pwrite(fd, p, len, at) : write(fd, p, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (w == 0)
				errno = EIO;
			return -1;
		}
		p = (const char *)p + w;
		len -= (size_t)w;
		if (at >= 0)
			at += w;
	}
	return 0;
}

static void le32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

int bundle_raw_frame_write(int fd, const void *data, size_t len)
{
	unsigned char hdr[FRAME_HDR] = { 0x28, 0xb5, 0x2f, 0xfd, 0xa0 };
	const unsigned char *p = data;

	if (len == 0 || len > UINT32_MAX) {
		errno = EINVAL;
		return -1;
	}
	le32(hdr + 5, (uint32_t)len);
	if (put_all(fd, hdr, sizeof(hdr), -1) < 0)
		return -1;
	while (len > 0) {
		size_t k = len < RAW_BLOCK_MAX ? len : RAW_BLOCK_MAX;
		uint32_t bh = (uint32_t)(k << 3) | (k == len ? 1u : 0u);
		unsigned char b[3] = { (unsigned char)bh, (unsigned char)(bh >> 8), (unsigned char)(bh >> 16) };

		if (put_all(fd, b, 3, -1) < 0 || put_all(fd, p, k, -1) < 0)
			return -1;
		p += k;
		len -= k;
	}
	return 0;
}

/* Where byte `off` of the frame's content is in the file (frame at `base`). */
static off_t content_pos(off_t base, size_t off)
{
	return base + FRAME_HDR + (off_t)(off / RAW_BLOCK_MAX + 1) * 3 + (off_t)off;
}

int bundle_raw_frame_patch(int fd, off_t base, size_t off, const void *data, size_t len)
{
	const unsigned char *p = data;

	while (len > 0) {
		size_t k = RAW_BLOCK_MAX - off % RAW_BLOCK_MAX;

		if (k > len)
			k = len;
		if (put_all(fd, p, k, content_pos(base, off)) < 0)
			return -1;
		p += k;
		off += k;
		len -= k;
	}
	return 0;
}
