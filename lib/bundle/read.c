/* SPDX-License-Identifier: MIT */
/*
 * Reading a bundle: the manifest first, then every member checked against
 * it before its data is used; extraction only into the directory given,
 * through openat(O_CREAT|O_EXCL|O_NOFOLLOW), holes kept as holes.  Any
 * refusal removes what this call extracted.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "../exitcodes.h"
#include "internal.h"

struct reader {
	struct archive *a;
	int dirfd;                 /* -1: verify only */
	struct vmops_manifest *m;
	const struct vmops_bundle_opts *o;
	bool seen[VMOPS_BUNDLE_MEMBERS_MAX];
	bool created[VMOPS_BUNDLE_MEMBERS_MAX];
	uint64_t done, total;
};

static int refuse(struct vmops_error *err, const char *name, const char *why)
{
	return vmops_err(err, VMOPS_EXIT_INTEGRITY, "bundle: member \"%s\": %s", name, why);
}

static int archive_refuse(struct reader *r, const char *what, struct vmops_error *err)
{
	const char *s = archive_error_string(r->a);

	return vmops_err(err, VMOPS_EXIT_INTEGRITY, "bundle: %s: %s", what, s ? s : "unreadable archive");
}

static const char *type_refused(struct archive_entry *e)
{
	if (archive_entry_hardlink(e))
		return "hard link refused";
	switch (archive_entry_filetype(e)) {
	case AE_IFREG:
		return archive_entry_symlink(e) ? "symbolic link refused" : NULL;
	case AE_IFLNK:
		return "symbolic link refused";
	case AE_IFDIR:
		return "directory refused";
	case AE_IFCHR:
	case AE_IFBLK:
		return "device refused";
	case AE_IFIFO:
		return "fifo refused";
	default:
		return "not a regular file";
	}
}

static int read_manifest(struct reader *r, struct vmops_error *err)
{
	struct archive_entry *e;
	const char *name, *bad;
	char *text;
	cJSON *j;
	int64_t size;
	int rc;

	rc = archive_read_next_header(r->a, &e);
	if (rc == ARCHIVE_EOF)
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "bundle: empty archive");
	if (rc < ARCHIVE_WARN)
		return archive_refuse(r, "reading the first header", err);
	name = archive_entry_pathname(e) ? archive_entry_pathname(e) : "";
	if (strcmp(name, VMOPS_BUNDLE_MANIFEST) != 0)
		return refuse(err, name, "first member is not " VMOPS_BUNDLE_MANIFEST);
	if ((bad = type_refused(e)))
		return refuse(err, name, bad);
	size = archive_entry_size(e);
	if (!archive_entry_size_is_set(e) || size <= 0 || size > BUNDLE_MANIFEST_MAX)
		return refuse(err, name, "missing, empty or larger than 1 MiB");
	if (!(text = malloc((size_t)size)))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
	if (archive_read_data(r->a, text, (size_t)size) != (la_ssize_t)size) {
		free(text);
		return archive_refuse(r, VMOPS_BUNDLE_MANIFEST, err);
	}
	j = cJSON_ParseWithLength(text, (size_t)size);
	free(text);
	if (!j)
		return refuse(err, name, "not valid JSON");
	rc = vmops_manifest_from_json(j, r->m, err);
	cJSON_Delete(j);
	if (rc < 0)
		return vmops_err_prefix(err, "bundle");
	for (size_t i = 0; i < r->m->n_members; i++)
		r->total += r->m->members[i].size;
	return 0;
}

/* The checks before a member's data is read; returns its manifest index. */
static int check_entry(struct reader *r, struct archive_entry *e, struct vmops_error *err)
{
	const char *name = archive_entry_pathname(e), *bad;
	const struct vmops_bundle_member *b;
	size_t i;

	if (!name)
		return refuse(err, "", "no name");
	if ((bad = bundle_name_invalid(name)))
		return refuse(err, name, bad);
	if ((bad = type_refused(e)))
		return refuse(err, name, bad);
	if (!(b = vmops_manifest_member(r->m, name)))
		return refuse(err, name, "not in the manifest");
	i = (size_t)(b - r->m->members);
	if (r->seen[i])
		return refuse(err, name, "duplicate member");
	r->seen[i] = true;
	if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0 ||
	    (uint64_t)archive_entry_size(e) != b->size) {
		char why[128];

		snprintf(why, sizeof(why), "size %lld, the manifest says %llu",
			 (long long)archive_entry_size(e), (unsigned long long)b->size);
		return refuse(err, name, why);
	}
	return (int)i;
}

static int put(struct reader *r, int fd, const char *name, const void *p, size_t len, int64_t off,
	       struct vmops_error *err)
{
	while (len > 0) {
		ssize_t w = pwrite(fd, p, len, off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: extracting %s: %s", name,
					 w < 0 ? strerror(errno) : "short write");
		p = (const char *)p + w;
		len -= (size_t)w;
		off += w;
	}
	return 0;
}

/* One data block at `off`: in order, within the manifest's size. */
static int take_block(struct reader *r, int fd, const struct vmops_bundle_member *b, struct bundle_sha *s,
		      uint64_t *pos, const void *p, size_t len, int64_t off, struct vmops_error *err)
{
	if (off < 0 || (uint64_t)off < *pos)
		return refuse(err, b->name, "data out of order");
	if ((uint64_t)off > b->size || len > b->size - (uint64_t)off)
		return refuse(err, b->name, "data beyond the manifest's size");
	if (bundle_sha_zeros(s, (uint64_t)off - *pos) < 0 || bundle_sha_data(s, p, len) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: sha256 failed", b->name);
	if (fd >= 0 && put(r, fd, b->name, p, len, off, err) < 0)
		return -1;
	r->done += (uint64_t)off - *pos + len;
	*pos = (uint64_t)off + len;
	if (r->o && r->o->progress)
		r->o->progress(r->done, r->total, r->o->progress_arg);
	if (r->o && r->o->interrupted && *r->o->interrupted)
		return vmops_err(err, VMOPS_EXIT_INTERRUPTED, "bundle: interrupted while reading %s", b->name);
	return 0;
}

static int read_data(struct reader *r, int fd, const struct vmops_bundle_member *b, struct bundle_sha *s,
		     struct vmops_error *err)
{
	uint64_t pos = 0;
	char hex[65];

	for (;;) {
		const void *p;
		size_t len;
		la_int64_t off;
		int rc = archive_read_data_block(r->a, &p, &len, &off);

		if (rc == ARCHIVE_EOF)
			break;
		if (rc < ARCHIVE_WARN)
			return archive_refuse(r, b->name, err);
		if (take_block(r, fd, b, s, &pos, p, len, off, err) < 0)
			return -1;
	}
	if (bundle_sha_zeros(s, b->size - pos) < 0 || bundle_sha_final(s, hex) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: %s: sha256 failed", b->name);
	r->done += b->size - pos;
	if (r->o && r->o->progress)
		r->o->progress(r->done, r->total, r->o->progress_arg);
	if (strcmp(hex, b->sha256) != 0)
		return refuse(err, b->name, "sha256 mismatch");
	if (fd >= 0 && ftruncate(fd, (off_t)b->size) < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: extracting %s: %s", b->name, strerror(errno));
	return 0;
}

static int read_member(struct reader *r, struct archive_entry *e, struct vmops_error *err)
{
	const struct vmops_bundle_member *b;
	struct bundle_sha s;
	int i = check_entry(r, e, err), fd = -1, rc;

	if (i < 0)
		return -1;
	b = &r->m->members[i];
	if (r->dirfd >= 0) {
		fd = openat(r->dirfd, b->name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
		if (fd < 0)
			return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: extracting %s: %s", b->name, strerror(errno));
		r->created[i] = true;
	}
	if (bundle_sha_init(&s) < 0) {
		if (fd >= 0)
			close(fd);
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: sha256: out of memory");
	}
	rc = read_data(r, fd, b, &s, err);
	bundle_sha_free(&s);
	if (fd >= 0 && close(fd) < 0 && rc == 0)
		rc = vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: extracting %s: %s", b->name, strerror(errno));
	return rc;
}

static int read_members(struct reader *r, struct vmops_error *err)
{
	struct archive_entry *e;
	int rc;

	while ((rc = archive_read_next_header(r->a, &e)) != ARCHIVE_EOF) {
		if (rc < ARCHIVE_WARN)
			return archive_refuse(r, "reading a header", err);
		if (read_member(r, e, err) < 0)
			return -1;
	}
	for (size_t i = 0; i < r->m->n_members; i++)
		if (!r->seen[i])
			return refuse(err, r->m->members[i].name, "listed in the manifest, missing from the archive");
	return 0;
}

static int read_bundle(int in_fd, int dirfd, struct vmops_manifest *m, const struct vmops_bundle_opts *o,
		       struct vmops_error *err)
{
	struct reader r = { .dirfd = dirfd, .m = m, .o = o };
	int rc = -1;

	memset(m, 0, sizeof(*m));
	r.a = archive_read_new();
	if (!r.a)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: out of memory");
	if (archive_read_support_filter_zstd(r.a) != ARCHIVE_OK ||
	    archive_read_support_format_tar(r.a) != ARCHIVE_OK) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: libarchive without zstd or tar support");
		goto out;
	}
	if (archive_read_open_fd(r.a, in_fd, BUNDLE_BUF) != ARCHIVE_OK) {
		archive_refuse(&r, "not a bundle", err);
		goto out;
	}
	if (read_manifest(&r, err) == 0 && read_members(&r, err) == 0)
		rc = 0;
out:
	archive_read_free(r.a);
	if (rc < 0) {
		for (size_t i = 0; i < VMOPS_BUNDLE_MEMBERS_MAX; i++)
			if (r.created[i])
				unlinkat(dirfd, m->members[i].name, 0);
		vmops_manifest_clear(m);
	}
	return rc;
}

int vmops_bundle_extract_fd(int in_fd, int dirfd, struct vmops_manifest *m,
			    const struct vmops_bundle_opts *o, struct vmops_error *err)
{
	if (dirfd < 0)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "bundle: no target directory");
	return read_bundle(in_fd, dirfd, m, o, err);
}

int vmops_bundle_verify_fd(int in_fd, struct vmops_manifest *m,
			   const struct vmops_bundle_opts *o, struct vmops_error *err)
{
	return read_bundle(in_fd, -1, m, o, err);
}
