/* SPDX-License-Identifier: MIT */
/*
 * Writing a bundle.  manifest.json comes first and names every member's
 * SHA-256.  Two ways to get there:
 *
 * - One pass, when the output is a regular file we may write at an offset
 *   (write_path, or a file descriptor on a regular file without O_APPEND):
 *   the manifest's tar entry goes first as a zstd frame of raw blocks
 *   (frame.c) with every checksum written as 64 zeros, then the members
 *   are archived (pax, zstd with worker threads) while a hasher thread
 *   hashes the same chunks (hasher.c); at the end the real manifest, of
 *   exactly the same length, is written over the placeholder in place.
 * - Two passes otherwise (a pipe): a hashing pass (all members at once,
 *   one thread per CPU; it also brings them into the page cache), then
 *   the archive pass.
 *
 * Both read only the data extents of a sparse file; its holes are neither
 * read nor stored.  A member whose size or mtime changes while it is
 * bundled fails the write.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "../exitcodes.h"
#include "../macro.h"
#include "internal.h"

#ifndef VMOPS_VERSION
#define VMOPS_VERSION "0.0.0"
#endif

struct member_src {
	int fd;
	struct stat st;
	struct bundle_map map;
};

struct progress {
	const struct vmops_bundle_opts *o;
	uint64_t done, total;
	struct bundle_hasher *h;   /* one pass: hashes what is archived; NULL: two passes */
	unsigned char *buf;        /* two passes: the read buffer */
};

static void close_srcs(struct member_src *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i].fd >= 0)
			close(s[i].fd);
		bundle_map_free(&s[i].map);
	}
}

static int open_member(int dirfd, const char *name, struct member_src *s, struct vmops_error *err)
{
	const char *bad = bundle_name_invalid(name);

	if (bad)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: member \"%s\": %s", name, bad);
	s->fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (s->fd < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: %s", name, strerror(errno));
	if (fstat(s->fd, &s->st) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: %s", name, strerror(errno));
	if (!S_ISREG(s->st.st_mode))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: not a regular file", name);
	if (bundle_map_file(s->fd, s->st.st_size, &s->map) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: mapping holes: %s", name, strerror(errno));
	return 0;
}

static int open_members(int dirfd, const char *const *names, size_t n, struct member_src *s,
			struct vmops_error *err)
{
	if (n < 1 || n > VMOPS_BUNDLE_MEMBERS_MAX)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %zu members (1 to %d allowed)", n,
				 VMOPS_BUNDLE_MEMBERS_MAX);
	for (size_t i = 0; i < n; i++)
		s[i].fd = -1;
	for (size_t i = 0; i < n; i++) {
		for (size_t k = 0; k < i; k++)
			if (strcmp(names[k], names[i]) == 0)
				return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: member \"%s\" named twice", names[i]);
		if (open_member(dirfd, names[i], &s[i], err) < 0)
			return -1;
	}
	return 0;
}

/* Members, format, version and time into *m; then the whole manifest is
 * checked as a reader will check it.  Returns the JSON text (malloc). */
static char *finish_manifest(struct vmops_manifest *m, const char *const *names,
			     const struct member_src *s, size_t n, char (*hex)[65], struct vmops_error *err)
{
	struct vmops_manifest *check = calloc(1, sizeof(*check));
	cJSON *j = NULL;
	char *text = NULL;

	m->format = VMOPS_BUNDLE_FORMAT;
	if (!m->vmops_version[0])
		snprintf(m->vmops_version, sizeof(m->vmops_version), "%s", VMOPS_VERSION);
	if (!m->created[0]) {
		time_t t = time(NULL);
		struct tm tm;

		strftime(m->created, sizeof(m->created), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
	}
	m->n_members = n;
	for (size_t i = 0; i < n; i++) {
		snprintf(m->members[i].name, sizeof(m->members[i].name), "%s", names[i]);
		m->members[i].size = (uint64_t)s[i].st.st_size;
		memcpy(m->members[i].sha256, hex[i], 65);
	}
	if (!check || !(j = vmops_manifest_to_json(m))) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: manifest: out of memory");
	} else if (vmops_manifest_from_json(j, check, err) < 0) {
		err->code = VMOPS_EXIT_FAILURE;
		vmops_err_prefix(err, "bundle");
	} else if (!(text = cJSON_Print(j))) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: manifest: out of memory");
	}
	if (check)
		vmops_manifest_clear(check);
	free(check);
	cJSON_Delete(j);
	return text;
}

static int archive_fail(struct archive *a, const char *what, struct vmops_error *err)
{
	return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: %s", what,
			 archive_error_string(a) ? archive_error_string(a) : "unknown libarchive error");
}

static struct archive *open_archive(int out_fd, const struct vmops_bundle_opts *o, struct vmops_error *err)
{
	struct archive *a = archive_write_new();
	char level[16], threads[16];

	if (!a) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
		return NULL;
	}
	snprintf(level, sizeof(level), "%d", o && o->zstd_level > 0 ? o->zstd_level : 1);
	snprintf(threads, sizeof(threads), "%d", o && o->threads > 0 ? o->threads : bundle_ncpu());
	if (archive_write_set_format_pax(a) != ARCHIVE_OK ||
	    archive_write_add_filter_zstd(a) != ARCHIVE_OK ||
	    archive_write_set_filter_option(a, "zstd", "compression-level", level) != ARCHIVE_OK ||
	    archive_write_set_filter_option(a, "zstd", "threads", threads) != ARCHIVE_OK ||
	    archive_write_set_bytes_per_block(a, 1 << 20) != ARCHIVE_OK ||
	    archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
	    archive_write_open_fd(a, out_fd) != ARCHIVE_OK) {
		archive_fail(a, "opening the archive", err);
		archive_write_free(a);
		return NULL;
	}
	return a;
}

static struct archive_entry *new_entry(const char *name, const struct stat *st, int64_t size)
{
	struct archive_entry *e = archive_entry_new();

	if (!e)
		return NULL;
	archive_entry_set_pathname(e, name);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0600);
	archive_entry_set_size(e, size);
	archive_entry_set_mtime(e, st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
	return e;
}

static int write_manifest(struct archive *a, const char *text, struct vmops_error *err)
{
	struct stat st = { 0 };
	struct archive_entry *e;
	size_t len = strlen(text);
	int rc = 0;

	clock_gettime(CLOCK_REALTIME, &st.st_mtim);
	if (!(e = new_entry(VMOPS_BUNDLE_MANIFEST, &st, (int64_t)len)))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
	archive_entry_set_perm(e, 0644);
	if (archive_write_header(a, e) != ARCHIVE_OK || archive_write_data(a, text, len) != (la_ssize_t)len)
		rc = archive_fail(a, "writing " VMOPS_BUNDLE_MANIFEST, err);
	archive_entry_free(e);
	return rc;
}

static int step(struct progress *p, uint64_t bytes, const char *name, struct vmops_error *err)
{
	p->done += bytes;
	if (p->o && p->o->progress)
		p->o->progress(p->done, p->total, p->o->progress_arg);
	if (p->o && p->o->interrupted && *p->o->interrupted)
		return vmops_err(err, VMOPS_EXIT_INTERRUPTED, "bundle: interrupted while writing %s", name);
	return 0;
}

/* `len` bytes of hole: libarchive counts them off its sparse map and
 * neither reads nor stores them. */
static int write_hole(struct archive *a, uint64_t len, const char *name, struct progress *p,
		      struct vmops_error *err)
{
	if (p->h && len > 0)
		bundle_hasher_push(p->h, -1, len);
	while (len > 0) {
		size_t k = len < BUNDLE_BUF ? (size_t)len : BUNDLE_BUF;

		if (archive_write_data(a, bundle_zeros, k) != (la_ssize_t)k)
			return archive_fail(a, name, err);
		len -= k;
		if (step(p, k, name, err) < 0)
			return -1;
	}
	return 0;
}

static int write_extent(struct archive *a, const char *name, int fd, const struct bundle_extent *x,
			struct progress *p, struct vmops_error *err)
{
	off_t off = x->off, end = x->off + x->len;

	while (off < end) {
		size_t want = end - off < BUNDLE_BUF ? (size_t)(end - off) : BUNDLE_BUF;
		int idx = -1;
		unsigned char *buf = p->h ? bundle_hasher_buf(p->h, &idx) : p->buf;
		ssize_t r = pread(fd, buf, want, off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: read: %s", name,
					 r < 0 ? strerror(errno) : "file shrank");
		if (p->h)
			bundle_hasher_push(p->h, idx, (uint64_t)r);
		if (archive_write_data(a, buf, (size_t)r) != r)
			return archive_fail(a, name, err);
		off += r;
		if (step(p, (uint64_t)r, name, err) < 0)
			return -1;
	}
	return 0;
}

static int add_sparse_map(struct archive_entry *e, const struct bundle_map *m)
{
	for (size_t k = 0; k < m->n; k++)
		archive_entry_sparse_add_entry(e, m->ext[k].off, m->ext[k].len);
	if (m->n == 0)  /* all hole: an empty extent at the end keeps it sparse */
		archive_entry_sparse_add_entry(e, m->size, 0);
	return 0;
}

static int write_member(struct archive *a, const char *name, const struct member_src *s,
			struct progress *p, struct vmops_error *err)
{
	struct archive_entry *e = new_entry(name, &s->st, s->st.st_size);
	off_t pos = 0;
	int rc = -1;

	if (!e)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
	if (p->h && bundle_hasher_begin(p->h) < 0) {
		archive_entry_free(e);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: sha256 failed", name);
	}
	posix_fadvise(s->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	if (s->map.sparse)
		add_sparse_map(e, &s->map);
	if (archive_write_header(a, e) != ARCHIVE_OK) {
		archive_fail(a, name, err);
		goto out;
	}
	for (size_t k = 0; k < s->map.n; k++) {
		if (write_hole(a, (uint64_t)(s->map.ext[k].off - pos), name, p, err) < 0 ||
		    write_extent(a, name, s->fd, &s->map.ext[k], p, err) < 0)
			goto out;
		pos = s->map.ext[k].off + s->map.ext[k].len;
	}
	if (write_hole(a, (uint64_t)(s->st.st_size - pos), name, p, err) < 0)
		goto out;
	rc = 0;
out:
	archive_entry_free(e);
	return rc;
}

static int check_unchanged(const char *name, const struct member_src *s, struct vmops_error *err)
{
	struct stat now;

	if (fstat(s->fd, &now) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: %s", name, strerror(errno));
	if (now.st_size != s->st.st_size || now.st_mtim.tv_sec != s->st.st_mtim.tv_sec ||
	    now.st_mtim.tv_nsec != s->st.st_mtim.tv_nsec)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s changed while being bundled", name);
	return 0;
}

/* The archive pass: the manifest (two passes; one pass: it is in its slot
 * already, text NULL), then every member.  With a hasher, hex[i] receives
 * member i's SHA-256, computed from the very bytes archived. */
static int write_archive(int out_fd, const char *text, const char *const *names,
			 const struct member_src *s, size_t n, const struct vmops_bundle_opts *o,
			 struct bundle_hasher *h, char (*hex)[65], struct vmops_error *err)
{
	struct progress p = { .o = o, .h = h };
	_cleanup_free_ unsigned char *buf = h ? NULL : malloc(BUNDLE_BUF);
	struct archive *a;
	int rc = -1;

	for (size_t i = 0; i < n; i++)
		p.total += (uint64_t)s[i].st.st_size;
	if (!h && !buf)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
	p.buf = buf;
	if (!(a = open_archive(out_fd, o, err)))
		return -1;
	if (text && write_manifest(a, text, err) < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		if (write_member(a, names[i], &s[i], &p, err) < 0)
			goto out;
		if (h && bundle_hasher_end(h, hex[i]) < 0) {
			vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: sha256 failed", names[i]);
			goto out;
		}
		if (check_unchanged(names[i], &s[i], err) < 0)
			goto out;
	}
	if (archive_write_close(a) != ARCHIVE_OK) {
		archive_fail(a, "finishing the archive", err);
		goto out;
	}
	rc = 0;
out:
	if (rc < 0) {
		/* Fail first so closing neither pads the unfinished entry nor
		 * leaves a well-formed end; close anyway: libarchive 3.6 frees
		 * its output buffer only there, even after a failed write. */
		archive_write_fail(a);
		archive_write_close(a);
	}
	archive_write_free(a);
	return rc;
}

/* The output takes the one-pass layout: a regular file written at an offset
 * we can come back to (not O_APPEND, where pwrite appends).  *base: where
 * the bundle starts in it. */
static bool seekable_output(int fd, off_t *base)
{
	struct stat st;
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || (fl & O_APPEND) || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return false;
	*base = lseek(fd, 0, SEEK_CUR);
	return *base >= 0;
}

static int entry_fail(struct archive *a, unsigned char *buf, struct vmops_error *err)
{
	archive_fail(a, "building the manifest entry", err);
	archive_write_free(a);
	free(buf);
	return -1;
}

/* The tar bytes of the manifest's entry (headers, text, padding; without
 * the end-of-archive blocks) and where the text is in them. */
static int manifest_entry(const char *text, unsigned char **out, size_t *len, size_t *text_off,
			  struct vmops_error *err)
{
	size_t tlen = strlen(text), cap = tlen + 16384, used = 0, padded = (tlen + 511) / 512 * 512;
	unsigned char *buf = malloc(cap);
	struct archive *a = archive_write_new();

	if (!buf || !a) {
		free(buf);
		archive_write_free(a);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
	}
	if (archive_write_set_format_pax(a) != ARCHIVE_OK || archive_write_add_filter_none(a) != ARCHIVE_OK ||
	    archive_write_set_bytes_per_block(a, 0) != ARCHIVE_OK ||
	    archive_write_open_memory(a, buf, cap, &used) != ARCHIVE_OK ||
	    write_manifest(a, text, err) < 0 || archive_write_close(a) != ARCHIVE_OK)
		return entry_fail(a, buf, err);
	archive_write_free(a);
	/* libarchive ends a pax archive with two zero blocks: cut them off. */
	if (used % 512 || used < 1024 + padded || memcmp(buf + used - 1024, bundle_zeros, 1024) ||
	    memcmp(buf + used - 1024 - padded, text, tlen)) {
		free(buf);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: unexpected layout of the manifest entry");
	}
	*out = buf;
	*len = used - 1024;
	*text_off = *len - padded;
	return 0;
}

/* One pass (see the top): placeholder manifest, members hashed as they are
 * archived, the real manifest written over the placeholder. */
static int write_one_pass(int out_fd, off_t base, const char *const *names, const struct member_src *s,
			  size_t n, struct vmops_manifest *m, const struct vmops_bundle_opts *o,
			  struct vmops_error *err)
{
	char hex[VMOPS_BUNDLE_MEMBERS_MAX][65];
	_cleanup_free_ char *text = NULL, *final = NULL;
	_cleanup_free_ unsigned char *entry = NULL;
	size_t elen = 0, toff = 0;
	struct bundle_hasher *h;
	int rc;

	for (size_t i = 0; i < n; i++) {
		memset(hex[i], '0', 64);
		hex[i][64] = '\0';
	}
	if (!(text = finish_manifest(m, names, s, n, hex, err)) ||
	    manifest_entry(text, &entry, &elen, &toff, err) < 0)
		return -1;
	if (bundle_raw_frame_write(out_fd, entry, elen) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: writing %s: %s", VMOPS_BUNDLE_MANIFEST,
				 strerror(errno));
	if (!(h = bundle_hasher_new()))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: starting the hasher: out of memory");
	rc = write_archive(out_fd, NULL, names, s, n, o, h, hex, err);
	bundle_hasher_free(h);
	if (rc < 0 || !(final = finish_manifest(m, names, s, n, hex, err)))
		return -1;
	if (strlen(final) != strlen(text))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: the manifest changed length");
	if (bundle_raw_frame_patch(out_fd, base, toff, final, strlen(final)) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: writing %s: %s", VMOPS_BUNDLE_MANIFEST,
				 strerror(errno));
	return 0;
}

/* Two passes (a pipe): hash everything, then archive. */
static int write_two_pass(int out_fd, const char *const *names, const struct member_src *s, size_t n,
			  struct vmops_manifest *m, const struct vmops_bundle_opts *o,
			  struct vmops_error *err)
{
	struct bundle_map maps[VMOPS_BUNDLE_MEMBERS_MAX];
	int fds[VMOPS_BUNDLE_MEMBERS_MAX];
	char hex[VMOPS_BUNDLE_MEMBERS_MAX][65];
	int threads = o && o->threads > 0 ? o->threads : bundle_ncpu();
	_cleanup_free_ char *text = NULL;

	for (size_t i = 0; i < n; i++) {
		fds[i] = s[i].fd;
		maps[i] = s[i].map;
	}
	if (bundle_hash_files(fds, maps, names, n, threads, o ? o->interrupted : NULL, hex, err) < 0)
		return -1;
	if (!(text = finish_manifest(m, names, s, n, hex, err)))
		return -1;
	return write_archive(out_fd, text, names, s, n, o, NULL, NULL, err);
}

int vmops_bundle_write_fd(int out_fd, int dirfd, const char *const *names, size_t n,
			  struct vmops_manifest *m, const struct vmops_bundle_opts *o,
			  struct vmops_error *err)
{
	struct member_src s[VMOPS_BUNDLE_MEMBERS_MAX];
	off_t base;
	int rc = -1;

	if (n < 1 || n > VMOPS_BUNDLE_MEMBERS_MAX)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %zu members (1 to %d allowed)", n,
				 VMOPS_BUNDLE_MEMBERS_MAX);
	memset(s, 0, sizeof(s));
	for (size_t i = 0; i < n; i++)
		s[i].fd = -1;
	if (open_members(dirfd, names, n, s, err) == 0) {
		if (seekable_output(out_fd, &base) && !getenv("VMOPS_BUNDLE_TWO_PASS"))
			rc = write_one_pass(out_fd, base, names, s, n, m, o, err);
		else
			rc = write_two_pass(out_fd, names, s, n, m, o, err);
	}
	close_srcs(s, n);
	return rc;
}

static int fsync_dir_of(const char *path, struct vmops_error *err)
{
	_cleanup_free_ char *copy = strdup(path);
	_cleanup_close_ int dfd = -1;

	if (!copy)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
	dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: syncing the directory of %s: %s", path,
				 strerror(errno));
	return 0;
}

int vmops_bundle_write_path(const char *path, int dirfd, const char *const *names, size_t n,
			    struct vmops_manifest *m, const struct vmops_bundle_opts *o,
			    struct vmops_error *err)
{
	_cleanup_free_ char *copy = strdup(path), *tmp = NULL;
	const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	int fd;

	if (!copy)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
	if (!*base)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: not a file name", path);
	if (asprintf(&tmp, "%s/.%s.tmp.XXXXXX", dirname(copy), base) < 0) {
		tmp = NULL;
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
	}
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: creating a temporary file next to %s: %s", path,
				 strerror(errno));
	if (vmops_bundle_write_fd(fd, dirfd, names, n, m, o, err) < 0)
		goto fail;
	if (fsync(fd) < 0) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: fsync %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (close(fd) < 0) {
		fd = -1;
		vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: close %s: %s", tmp, strerror(errno));
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: rename to %s: %s", path, strerror(errno));
		goto fail;
	}
	if (fsync_dir_of(path, err) < 0) {
		unlink(path);  /* not known to be durable: the contract is all or nothing */
		return -1;
	}
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	return -1;
}
