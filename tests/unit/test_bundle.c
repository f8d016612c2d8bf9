/* SPDX-License-Identifier: MIT */
/*
 * lib/bundle: manifest JSON, round trips (sparse members stay sparse,
 * streaming through a pipe), atomic writes, and every malicious archive the
 * reader must refuse, each crafted here with libarchive directly.  No QEMU,
 * no database.  Each test works in its own temporary directory:
 * base/src (members), base/out (bundles), base/dst (extraction target).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <criterion/criterion.h>
#include <openssl/evp.h>

#include "bundle/bundle.h"
#include "exitcodes.h"
#include "macro.h"

#define MiB (1024 * 1024)

static char base[64], src[96], out[96], dst[96];

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	return remove(p);
}

static void setup(void)
{
	snprintf(base, sizeof(base), "/tmp/vmops-test-bundle.XXXXXX");
	cr_assert_not_null(mkdtemp(base));
	snprintf(src, sizeof(src), "%s/src", base);
	snprintf(out, sizeof(out), "%s/out", base);
	snprintf(dst, sizeof(dst), "%s/dst", base);
	cr_assert_eq(mkdir(src, 0700) | mkdir(out, 0700) | mkdir(dst, 0700), 0);
}

static void teardown(void)
{
	if (base[0] && !getenv("VMOPS_TEST_KEEP"))
		nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(bundle, .init = setup, .fini = teardown, .timeout = 300);

/* ---- helpers ------------------------------------------------------------ */

static int dir_fd(const char *d)
{
	int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	cr_assert_geq(fd, 0, "%s: %s", d, strerror(errno));
	return fd;
}

static int count_entries(const char *d)
{
	DIR *dp = opendir(d);
	struct dirent *de;
	int n = 0;

	cr_assert_not_null(dp);
	while ((de = readdir(dp)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(dp);
	return n;
}

static void put_file(const char *dir, const char *name, const void *p, size_t len, off_t at)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pwrite(fd, p, len, at), (ssize_t)len);
	close(fd);
}

static void random_bytes(void *p, size_t len, unsigned seed)
{
	unsigned char *b = p;

	for (size_t i = 0; i < len; i++) {
		seed = seed * 1103515245u + 12345u;
		b[i] = (unsigned char)(seed >> 16);
	}
}

/* SHA-256 of a file, read whole (the independent check). */
static void file_sha(const char *dir, const char *name, char hex[65])
{
	char path[256];
	unsigned char buf[65536], md[32];
	unsigned int n;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	ssize_t r;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0, "%s", path);
	EVP_DigestInit_ex(c, EVP_sha256(), NULL);
	while ((r = read(fd, buf, sizeof(buf))) > 0)
		EVP_DigestUpdate(c, buf, (size_t)r);
	EVP_DigestFinal_ex(c, md, &n);
	EVP_MD_CTX_free(c);
	close(fd);
	for (int i = 0; i < 32; i++)
		sprintf(hex + 2 * i, "%02x", md[i]);
}

static void sha_of(const void *p, size_t len, char hex[65])
{
	unsigned char md[32];
	unsigned int n;

	EVP_Digest(p, len, md, &n, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		sprintf(hex + 2 * i, "%02x", md[i]);
}

static void fill_manifest(struct vmops_manifest *m)
{
	memset(m, 0, sizeof(*m));
	strcpy(m->hypervisor, "qemu");
	strcpy(m->hypervisor_version, "7.2.19");
	strcpy(m->machine, "pc-i440fx-7.2");
	m->spec = cJSON_Parse("{\"hypervisor\":\"qemu\",\"memory_mb\":1024,\"vcpus\":1}");
	m->memory_bytes = 1024ull * MiB;
	strcpy(m->sandbox, "sb-1");
	m->vmm_id = 42;
	strcpy(m->worker, "w-1");
}

static off_t data_at(const char *dir, const char *name, off_t from)
{
	char path[256];
	int fd;
	off_t r;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY);
	cr_assert_geq(fd, 0);
	r = lseek(fd, from, SEEK_DATA);
	close(fd);
	return r;
}

static struct stat stat_of(const char *dir, const char *name)
{
	char path[256];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
	return st;
}

/* Members for the round trips: random memory, a 384 MiB sparse disk image
 * with data at the start, in the middle and a hole at the end, an empty
 * file, a small config, and a file that is one hole. */
static const char *const members[] = { "memory", "disk.img", "empty", "config.json", "hole" };

static void make_members(void)
{
	size_t len = 3 * MiB;
	char *b = malloc(len);

	random_bytes(b, len, 1);
	put_file(src, "memory", b, len, 0);
	random_bytes(b, len, 2);
	put_file(src, "disk.img", b, MiB, 0);
	put_file(src, "disk.img", b + MiB, 2 * MiB, 200 * MiB);
	{
		char path[256];

		snprintf(path, sizeof(path), "%s/disk.img", src);
		cr_assert_eq(truncate(path, 384l * MiB), 0);
		snprintf(path, sizeof(path), "%s/hole", src);
		put_file(src, "hole", "", 0, 0);
		cr_assert_eq(truncate(path, 64l * MiB), 0);
	}
	put_file(src, "empty", "", 0, 0);
	put_file(src, "config.json", "{\"a\":1}\n", 8, 0);
	free(b);
}

static void check_extracted(void)
{
	for (size_t i = 0; i < sizeof(members) / sizeof(members[0]); i++) {
		char a[65], b[65];
		struct stat s1 = stat_of(src, members[i]), s2 = stat_of(dst, members[i]);

		file_sha(src, members[i], a);
		file_sha(dst, members[i], b);
		cr_assert_str_eq(a, b, "%s differs after extraction", members[i]);
		cr_assert_eq(s1.st_size, s2.st_size);
		cr_assert(S_ISREG(s2.st_mode));
	}
	/* holes kept: data where it was, little allocated */
	cr_assert_eq(data_at(dst, "disk.img", 0), 0);
	cr_assert_eq(data_at(dst, "disk.img", MiB), 200 * MiB);
	cr_assert_eq(data_at(dst, "disk.img", 202 * MiB), -1);
	cr_assert_lt(stat_of(dst, "disk.img").st_blocks * 512, 8 * MiB);
	cr_assert_lt(stat_of(dst, "hole").st_blocks * 512, MiB);
}

static void check_manifest(const struct vmops_manifest *m)
{
	struct vmops_manifest want;

	fill_manifest(&want);
	cr_assert_eq(m->format, VMOPS_BUNDLE_FORMAT);
	cr_assert_str_eq(m->hypervisor, "qemu");
	cr_assert_str_eq(m->hypervisor_version, "7.2.19");
	cr_assert_str_eq(m->machine, "pc-i440fx-7.2");
	cr_assert(cJSON_Compare(m->spec, want.spec, 1));
	cr_assert_eq(m->memory_bytes, 1024ull * MiB);
	cr_assert_str_eq(m->sandbox, "sb-1");
	cr_assert_eq(m->vmm_id, 42);
	cr_assert_str_eq(m->worker, "w-1");
	cr_assert_str_eq(m->vmops_version, VMOPS_VERSION);
	cr_assert_eq(strlen(m->created), 20);
	cr_assert_eq(m->n_members, 5);
	for (size_t i = 0; i < 5; i++) {
		char hex[65];

		file_sha(src, members[i], hex);
		cr_assert_str_eq(m->members[i].name, members[i]);
		cr_assert_str_eq(m->members[i].sha256, hex, "%s: sha256", members[i]);
		cr_assert_eq(m->members[i].size, (uint64_t)stat_of(src, members[i]).st_size);
	}
	vmops_manifest_clear(&want);
}

static uint64_t progress_calls, progress_last, progress_total;

static void count_progress(uint64_t done, uint64_t total, void *arg)
{
	cr_assert_geq(done, progress_last);
	progress_calls++;
	progress_last = done;
	progress_total = total;
}

/* ---- round trips -------------------------------------------------------- */

Test(bundle, round_trip_sparse)
{
	struct vmops_bundle_opts o = { .progress = count_progress };
	struct vmops_manifest m, r;
	struct vmops_error e = { 0 };
	char path[160];
	int sfd, dfd, fd;

	make_members();
	fill_manifest(&m);
	sfd = dir_fd(src);
	snprintf(path, sizeof(path), "%s/b.tar.zst", out);
	cr_assert_eq(vmops_bundle_write_path(path, sfd, members, 5, &m, &o, &e), 0, "%s", e.msg);
	cr_assert_eq(count_entries(out), 1, "only the bundle in out/");
	check_manifest(&m);
	cr_assert_eq(progress_last, progress_total);
	cr_assert_eq(progress_total, 3 * MiB + 384l * MiB + 8 + 64l * MiB);
	/* holes neither read nor stored: the archive is a little over the data */
	cr_assert_lt(stat_of(out, "b.tar.zst").st_size, 8 * MiB);

	fd = open(path, O_RDONLY);
	cr_assert_eq(vmops_bundle_verify_fd(fd, &r, NULL, &e), 0, "%s", e.msg);
	close(fd);
	check_manifest(&r);
	cr_assert_eq(count_entries(dst), 0, "verify extracts nothing");
	vmops_manifest_clear(&r);

	fd = open(path, O_RDONLY);
	dfd = dir_fd(dst);
	progress_last = 0;
	cr_assert_eq(vmops_bundle_extract_fd(fd, dfd, &r, &o, &e), 0, "%s", e.msg);
	cr_assert_eq(progress_last, progress_total);
	check_manifest(&r);
	check_extracted();
	cr_assert_eq(count_entries(dst), 5);
	vmops_manifest_clear(&r);
	vmops_manifest_clear(&m);
}

/* GNU tar reads the bundle too (pax with GNU.sparse 1.0 headers). */
Test(bundle, gnu_tar_reads_it)
{
	struct vmops_manifest m;
	struct vmops_error e = { 0 };
	char cmd[512];

	make_members();
	fill_manifest(&m);
	snprintf(cmd, sizeof(cmd), "%s/b.tar.zst", out);
	cr_assert_eq(vmops_bundle_write_path(cmd, dir_fd(src), members, 5, &m, NULL, &e), 0, "%s", e.msg);
	snprintf(cmd, sizeof(cmd), "zstd -dc %s/b.tar.zst | tar -C %s -xf - && test \"$(zstd -dc %s/b.tar.zst | tar -tf - | head -n1)\" = manifest.json",
		 out, dst, out);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
	unlink(strcat(strcpy(cmd, dst), "/manifest.json"));
	check_extracted();
	vmops_manifest_clear(&m);
}

struct pipe_writer {
	int fd, sfd;
	struct vmops_manifest m;
	struct vmops_error e;
	int rc;
};

static void *write_to_pipe(void *arg)
{
	struct pipe_writer *w = arg;
	struct vmops_bundle_opts o = { .threads = 2 };

	w->rc = vmops_bundle_write_fd(w->fd, w->sfd, members, 5, &w->m, &o, &w->e);
	close(w->fd);
	return NULL;
}

Test(bundle, streams_through_a_pipe)
{
	struct pipe_writer w = { 0 };
	struct vmops_manifest r;
	struct vmops_error e = { 0 };
	pthread_t t;
	int p[2];

	make_members();
	fill_manifest(&w.m);
	cr_assert_eq(pipe(p), 0);
	w.fd = p[1];
	w.sfd = dir_fd(src);
	cr_assert_eq(pthread_create(&t, NULL, write_to_pipe, &w), 0);
	cr_assert_eq(vmops_bundle_extract_fd(p[0], dir_fd(dst), &r, NULL, &e), 0, "%s", e.msg);
	pthread_join(t, NULL);
	cr_assert_eq(w.rc, 0, "%s", w.e.msg);
	check_manifest(&r);
	check_extracted();
	vmops_manifest_clear(&r);
	vmops_manifest_clear(&w.m);
	close(p[0]);
}

/*
 * Into a regular file at an offset: one pass (the manifest's tar entry is a
 * zstd frame of raw blocks where the bundle starts, its checksums written
 * over at the end); with O_APPEND (pwrite would append) two passes.  Both
 * read back the same, and what was in the file before is untouched.
 */
static void write_at_offset(int flags, bool one_pass, const char *big)
{
	static const unsigned char raw[5] = { 0x28, 0xb5, 0x2f, 0xfd, 0xa0 };
	struct vmops_manifest m, r;
	struct vmops_error e = { 0 };
	char path[128], head[13];
	int fd;

	make_members();
	fill_manifest(&m);
	if (big)
		cJSON_AddStringToObject(m.spec, "padding", big);
	snprintf(path, sizeof(path), "%s/b.vmops", out);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | flags, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, "prefix--", 8), 8);
	cr_assert_eq(vmops_bundle_write_fd(fd, dir_fd(src), members, 5, &m, NULL, &e), 0, "%s", e.msg);
	close(fd);
	fd = open(path, O_RDONLY);
	cr_assert_eq(pread(fd, head, 13, 0), 13);
	cr_assert_eq(memcmp(head, "prefix--", 8), 0);
	cr_assert_eq(memcmp(head + 8, raw, 5) == 0, one_pass, "one pass: %d", one_pass);
	cr_assert_eq(lseek(fd, 8, SEEK_SET), 8);
	cr_assert_eq(vmops_bundle_extract_fd(fd, dir_fd(dst), &r, NULL, &e), 0, "%s", e.msg);
	close(fd);
	if (!big)
		check_manifest(&r);
	for (size_t i = 0; i < 5; i++) {
		char hex[65];

		file_sha(src, members[i], hex);
		cr_assert_str_eq(r.members[i].sha256, hex, "%s: sha256", members[i]);
	}
	check_extracted();
	vmops_manifest_clear(&r);
	vmops_manifest_clear(&m);
}

Test(bundle, one_pass_into_a_file_at_an_offset)
{
	write_at_offset(0, true, NULL);
}

Test(bundle, append_mode_takes_two_passes)
{
	write_at_offset(O_APPEND, false, NULL);
}

/* A manifest over 128 KiB: its slot spans several raw blocks. */
Test(bundle, one_pass_manifest_spanning_raw_blocks)
{
	size_t len = 300 * 1024;
	char *big = malloc(len + 1);

	memset(big, 'x', len);
	big[len] = '\0';
	write_at_offset(0, true, big);
	free(big);
}

/* ---- atomic write ------------------------------------------------------- */

static volatile sig_atomic_t stop_flag;

static void stop_after_first(uint64_t done, uint64_t total, void *arg)
{
	if (done >= 2 * MiB)
		stop_flag = 1;
}

Test(bundle, interrupted_write_leaves_nothing)
{
	struct vmops_bundle_opts o = { .progress = stop_after_first, .interrupted = &stop_flag };
	struct vmops_manifest m;
	struct vmops_error e = { 0 };
	char path[160];

	make_members();
	fill_manifest(&m);
	snprintf(path, sizeof(path), "%s/b.tar.zst", out);
	cr_assert_eq(vmops_bundle_write_path(path, dir_fd(src), members, 5, &m, &o, &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_INTERRUPTED, "%d %s", e.code, e.msg);
	cr_assert_eq(count_entries(out), 0, "nothing under the final or a temporary name");
	vmops_manifest_clear(&m);
}

Test(bundle, interrupted_extract_leaves_nothing)
{
	struct vmops_bundle_opts o = { .progress = stop_after_first, .interrupted = &stop_flag };
	struct vmops_manifest m;
	struct vmops_error e = { 0 };
	char path[160];
	int fd;

	make_members();
	fill_manifest(&m);
	snprintf(path, sizeof(path), "%s/b.tar.zst", out);
	cr_assert_eq(vmops_bundle_write_path(path, dir_fd(src), members, 5, &m, NULL, &e), 0, "%s", e.msg);
	vmops_manifest_clear(&m);
	fd = open(path, O_RDONLY);
	cr_assert_eq(vmops_bundle_extract_fd(fd, dir_fd(dst), &m, &o, &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_INTERRUPTED, "%d %s", e.code, e.msg);
	cr_assert_eq(count_entries(dst), 0, "extracted files removed");
	cr_assert_null(m.spec);
	close(fd);
}

Test(bundle, failing_member_leaves_nothing)
{
	const char *const bad[][2] = { { "memory", "missing" }, { "memory", "link" }, { "memory", "fifo" },
				       { "memory", "../src/memory" }, { "memory", "memory" } };
	struct vmops_error e = { 0 };
	char path[160], target[160];

	make_members();
	snprintf(path, sizeof(path), "%s/link", src);
	snprintf(target, sizeof(target), "%s/memory", src);
	cr_assert_eq(symlink(target, path), 0);
	snprintf(path, sizeof(path), "%s/fifo", src);
	cr_assert_eq(mkfifo(path, 0600), 0);
	snprintf(path, sizeof(path), "%s/b.tar.zst", out);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct vmops_manifest m;

		fill_manifest(&m);
		cr_assert_eq(vmops_bundle_write_path(path, dir_fd(src), bad[i], 2, &m, NULL, &e), -1, "%s", bad[i][1]);
		cr_assert_eq(e.code, VMOPS_EXIT_FAILURE, "%s: %s", bad[i][1], e.msg);
		cr_assert(strstr(e.msg, bad[i][1]), "%s", e.msg);
		cr_assert_eq(count_entries(out), 0, "%s: left a file", bad[i][1]);
		vmops_manifest_clear(&m);
	}
}

Test(bundle, write_error_on_output)
{
	struct vmops_manifest m;
	struct vmops_error e = { 0 };
	int fd = open("/dev/full", O_WRONLY);

	make_members();
	fill_manifest(&m);
	cr_assert_eq(vmops_bundle_write_fd(fd, dir_fd(src), members, 5, &m, NULL, &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_FAILURE, "%s", e.msg);
	close(fd);
	vmops_manifest_clear(&m);
}

/* ---- malicious archives, crafted with libarchive ------------------------ */

struct craft {
	const char *name;
	int type;             /* AE_IFREG, AE_IFLNK, ...; 0: regular */
	const char *data;     /* regular files */
	const char *link;     /* symlink target (AE_IFLNK) or hard link target */
};

/* A manifest (JSON text, malloc) listing `names` with the given contents. */
static char *manifest_for(const char *const *names, const char *const *datas, size_t n)
{
	struct vmops_manifest m;
	cJSON *j;
	char *text;

	fill_manifest(&m);
	strcpy(m.vmops_version, "0.1.0");
	strcpy(m.created, "2026-12-02T01:02:03Z");
	m.format = VMOPS_BUNDLE_FORMAT;
	m.n_members = n;
	for (size_t i = 0; i < n; i++) {
		strcpy(m.members[i].name, names[i]);
		m.members[i].size = strlen(datas[i]);
		sha_of(datas[i], strlen(datas[i]), m.members[i].sha256);
	}
	j = vmops_manifest_to_json(&m);
	cr_assert_not_null(j);
	text = cJSON_Print(j);
	cJSON_Delete(j);
	vmops_manifest_clear(&m);
	return text;
}

static void craft_entry(struct archive *a, const struct craft *c)
{
	struct archive_entry *e = archive_entry_new();
	int type = c->type ? c->type : (int)AE_IFREG;
	size_t len = type == AE_IFREG && c->data && !c->link ? strlen(c->data) : 0;

	archive_entry_set_pathname(e, c->name);
	archive_entry_set_filetype(e, (unsigned)type);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (la_int64_t)len);
	if (type == AE_IFLNK)
		archive_entry_set_symlink(e, c->link);
	else if (c->link)
		archive_entry_set_hardlink(e, c->link);
	if (type == AE_IFCHR)
		archive_entry_set_rdev(e, makedev(1, 3));
	cr_assert_eq(archive_write_header(a, e), ARCHIVE_OK, "%s", archive_error_string(a));
	if (len)
		cr_assert_eq(archive_write_data(a, c->data, len), (la_ssize_t)len);
	archive_entry_free(e);
}

/* Write OUT/name: pax + zstd, the manifest entry first when given (a
 * "manifest.json" entry in `c` puts it elsewhere). */
static const char *craft(const char *name, const char *manifest, const struct craft *c, size_t n)
{
	static char path[160];
	struct archive *a = archive_write_new();

	snprintf(path, sizeof(path), "%s/%s", out, name);
	archive_write_set_format_pax(a);
	archive_write_add_filter_zstd(a);
	cr_assert_eq(archive_write_open_filename(a, path), ARCHIVE_OK);
	if (manifest)
		craft_entry(a, &(struct craft){ .name = "manifest.json", .data = manifest });
	for (size_t i = 0; i < n; i++)
		craft_entry(a, &c[i]);
	cr_assert_eq(archive_write_close(a), ARCHIVE_OK);
	archive_write_free(a);
	return path;
}

/* The bundle at `path` is refused by verify and extract with INTEGRITY, a
 * message naming `what` and `why`, and nothing left in dst or written
 * beside it. */
static void refused(const char *path, const char *what, const char *why)
{
	struct vmops_manifest m;
	struct vmops_error e = { 0 };
	int fd = open(path, O_RDONLY);

	cr_assert_geq(fd, 0);
	cr_assert_eq(vmops_bundle_verify_fd(fd, &m, NULL, &e), -1, "verify accepted %s", path);
	cr_assert_eq(e.code, VMOPS_EXIT_INTEGRITY, "verify: %d %s", e.code, e.msg);
	close(fd);
	fd = open(path, O_RDONLY);
	vmops_err_clear(&e);
	cr_assert_eq(vmops_bundle_extract_fd(fd, dir_fd(dst), &m, NULL, &e), -1, "extract accepted %s", path);
	close(fd);
	cr_assert_eq(e.code, VMOPS_EXIT_INTEGRITY, "%d %s", e.code, e.msg);
	cr_assert(strstr(e.msg, what), "message \"%s\" does not name \"%s\"", e.msg, what);
	cr_assert(strstr(e.msg, why), "message \"%s\" does not say \"%s\"", e.msg, why);
	cr_assert_null(m.spec, "manifest cleared");
	cr_assert_eq(m.n_members, 0);
	cr_assert_eq(count_entries(dst), 0, "files left in the target directory");
	cr_assert_eq(count_entries(base), 3, "a file written beside the target directory");
	cr_assert_eq(count_entries(out), 1);
}

static const char *const X[] = { "x" }, *const HELLO[] = { "hello" };

Test(bundle, crafted_valid_is_accepted)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);
	const char *p = craft("ok.tar.zst", man, (struct craft[]){ { .name = "x", .data = "hello" } }, 1);
	struct vmops_manifest m;
	struct vmops_error e = { 0 };
	char buf[16] = { 0 };
	int fd = open(p, O_RDONLY), x;

	cr_assert_eq(vmops_bundle_extract_fd(fd, dir_fd(dst), &m, NULL, &e), 0, "%s", e.msg);
	x = openat(dir_fd(dst), "x", O_RDONLY);
	cr_assert_eq(read(x, buf, sizeof(buf)), 5);
	cr_assert_str_eq(buf, "hello");
	vmops_manifest_clear(&m);
}

Test(bundle, refuses_absolute_path)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);
	char evil[160];

	snprintf(evil, sizeof(evil), "%s/evil", base);
	refused(craft("b", man, (struct craft[]){ { .name = evil, .data = "hello" } }, 1), evil, "absolute path");
}

Test(bundle, refuses_dotdot)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	refused(craft("b", man, (struct craft[]){ { .name = "x", .data = "hello" }, { .name = "../evil", .data = "hello" } }, 2),
		"../evil", "\"..\"");
}

Test(bundle, refuses_subdirectory)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	refused(craft("b", man, (struct craft[]){ { .name = "sub/x", .data = "hello" } }, 1), "sub/x", "directory");
}

Test(bundle, refuses_symlink)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	refused(craft("b", man, (struct craft[]){ { .name = "x", .type = AE_IFLNK, .link = "/etc/passwd" } }, 1),
		"\"x\"", "symbolic link");
}

Test(bundle, refuses_hardlink)
{
	static const char *const XY[] = { "x", "y" }, *const D[] = { "hello", "hello" };
	_cleanup_free_ char *man = manifest_for(XY, D, 2);

	refused(craft("b", man, (struct craft[]){ { .name = "x", .data = "hello" }, { .name = "y", .link = "x" } }, 2),
		"\"y\"", "hard link");
}

Test(bundle, refuses_device_fifo_directory)
{
	static const struct { int type; const char *why; } cases[] = {
		{ AE_IFCHR, "device" }, { AE_IFBLK, "device" }, { AE_IFIFO, "fifo" }, { AE_IFDIR, "directory" } };
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		/* libarchive names a directory "x/" */
		refused(craft("b", man, (struct craft[]){ { .name = "x", .type = cases[i].type } }, 1), "\"x", cases[i].why);
	}
}

Test(bundle, refuses_duplicate)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	refused(craft("b", man, (struct craft[]){ { .name = "x", .data = "hello" }, { .name = "x", .data = "hello" } }, 2),
		"\"x\"", "duplicate");
}

Test(bundle, refuses_member_not_in_manifest)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	refused(craft("b", man, (struct craft[]){ { .name = "x", .data = "hello" }, { .name = "y", .data = "hi" } }, 2),
		"\"y\"", "not in the manifest");
}

Test(bundle, refuses_missing_member)
{
	static const char *const XY[] = { "x", "y" }, *const D[] = { "hello", "world" };
	_cleanup_free_ char *man = manifest_for(XY, D, 2);

	refused(craft("b", man, (struct craft[]){ { .name = "x", .data = "hello" } }, 1), "\"y\"", "missing");
}

Test(bundle, refuses_member_larger_than_manifest)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	refused(craft("b", man, (struct craft[]){ { .name = "x", .data = "hello world" } }, 1),
		"\"x\"", "size 11, the manifest says 5");
}

Test(bundle, refuses_manifest_not_first)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	refused(craft("b", NULL, (struct craft[]){ { .name = "x", .data = "hello" }, { .name = "manifest.json", .data = man } }, 2),
		"\"x\"", "first member is not manifest.json");
	refused(craft("b", NULL, (struct craft[]){ { .name = "x", .data = "hello" } }, 1), "\"x\"", "first member");
}

Test(bundle, refuses_second_manifest)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	refused(craft("b", man, (struct craft[]){ { .name = "x", .data = "hello" }, { .name = "manifest.json", .data = man } }, 2),
		"manifest.json", "second manifest");
}

Test(bundle, refuses_flipped_byte)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);

	refused(craft("b", man, (struct craft[]){ { .name = "x", .data = "hellp" } }, 1), "\"x\"", "sha256 mismatch");
}

Test(bundle, refuses_bad_manifest)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);
	char *fmt2 = strdup(man), *p = strstr(fmt2, "\"format\":\t1");

	cr_assert_not_null(p);
	p[strlen("\"format\":\t")] = '2';
	refused(craft("b", "{not json", (struct craft[]){ { .name = "x", .data = "hello" } }, 1), "manifest.json", "not valid JSON");
	refused(craft("b", fmt2, (struct craft[]){ { .name = "x", .data = "hello" } }, 1), "manifest", "unsupported format 2");
	refused(craft("b", "{\"format\": 1}", (struct craft[]){ { .name = "x", .data = "hello" } }, 1), "manifest", "missing");
	free(fmt2);
}

Test(bundle, refuses_what_is_not_a_bundle)
{
	char path[160];
	char *b = malloc(MiB);

	snprintf(path, sizeof(path), "%s/b", out);
	put_file(out, "b", "just text, not an archive\n", 26, 0);
	refused(path, "bundle", "");
	/* a real bundle, cut in half */
	unlink(path);
	random_bytes(b, MiB, 7);
	put_file(src, "memory", b, MiB, 0);
	{
		struct vmops_manifest m;
		struct vmops_error e = { 0 };

		fill_manifest(&m);
		cr_assert_eq(vmops_bundle_write_path(path, dir_fd(src), (const char *const[]){ "memory" }, 1, &m, NULL, &e), 0);
		vmops_manifest_clear(&m);
	}
	cr_assert_eq(truncate(path, stat_of(out, "b").st_size / 2), 0);
	refused(path, "memory", "");
	free(b);
}

/* An existing link in the target directory is never followed. */
Test(bundle, never_extracts_through_a_link)
{
	_cleanup_free_ char *man = manifest_for(X, HELLO, 1);
	const char *p = craft("b", man, (struct craft[]){ { .name = "x", .data = "hello" } }, 1);
	struct vmops_manifest m;
	struct vmops_error e = { 0 };
	char link[160], target[160];
	int fd = open(p, O_RDONLY);

	snprintf(target, sizeof(target), "%s/outside", base);
	snprintf(link, sizeof(link), "%s/x", dst);
	cr_assert_eq(symlink(target, link), 0);
	cr_assert_eq(vmops_bundle_extract_fd(fd, dir_fd(dst), &m, NULL, &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_FAILURE, "%s", e.msg);
	cr_assert_eq(access(target, F_OK), -1, "wrote through the link");
	cr_assert_eq(count_entries(dst), 1, "the link itself is not ours to remove");
}

/* ---- manifest JSON ------------------------------------------------------ */

static cJSON *valid_manifest_json(void)
{
	static const char *const N[] = { "memory", "disk.img" }, *const D[] = { "abc", "" };
	_cleanup_free_ char *text = manifest_for(N, D, 2);
	cJSON *j = cJSON_Parse(text);

	cr_assert_not_null(j);
	return j;
}

Test(bundle, manifest_json_round_trip)
{
	cJSON *j = valid_manifest_json(), *j2;
	struct vmops_manifest m, m2;
	struct vmops_error e = { 0 };

	cr_assert_eq(vmops_manifest_from_json(j, &m, &e), 0, "%s", e.msg);
	cr_assert_eq(m.format, 1);
	cr_assert_str_eq(m.created, "2026-12-02T01:02:03Z");
	cr_assert_eq(m.n_members, 2);
	cr_assert_str_eq(m.members[0].sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	cr_assert_eq(m.members[0].size, 3);
	cr_assert_str_eq(m.members[1].name, "disk.img");
	cr_assert_eq(vmops_manifest_member(&m, "disk.img"), &m.members[1]);
	cr_assert_null(vmops_manifest_member(&m, "nope"));
	j2 = vmops_manifest_to_json(&m);
	cr_assert(cJSON_Compare(j, j2, 1), "to_json(from_json(j)) == j");
	cr_assert_eq(vmops_manifest_from_json(j2, &m2, &e), 0);
	cr_assert_eq(memcmp(m.members, m2.members, sizeof(m.members)), 0);
	cr_assert_str_eq(m2.sandbox, "sb-1");
	cr_assert_eq(m2.vmm_id, 42);
	cr_assert_eq(m2.memory_bytes, 1024ull * MiB);
	vmops_manifest_clear(&m);
	vmops_manifest_clear(&m2);
	cr_assert_null(m.spec);
	cJSON_Delete(j);
	cJSON_Delete(j2);
}

/* where: "" top level, "source", or "m0"/"m1" (a member); value NULL deletes. */
static const struct { const char *where, *key, *value, *why; } bad_fields[] = {
	{ "", "format", "2", "unsupported format 2" },
	{ "", "format", "\"1\"", "format" },
	{ "", "format", NULL, "format" },
	{ "", "hypervisor", "\"vmware\"", "unknown hypervisor" },
	{ "", "hypervisor", NULL, "hypervisor" },
	{ "", "hypervisor_version", "\"\"", "empty" },
	{ "", "machine", "7", "machine" },
	{ "", "created", "\"yesterday\"", "created" },
	{ "", "created", "\"2026-13-40T00:00:00Z\"", "created" },
	{ "", "created", "\"2026-12-02 01:02:03\"", "created" },
	{ "", "memory_bytes", "-1", "memory_bytes" },
	{ "", "memory_bytes", "1.5", "memory_bytes" },
	{ "", "memory_bytes", "0", "memory_bytes" },
	{ "", "memory_bytes", "1e300", "memory_bytes" },
	{ "", "spec", "[]", "spec" },
	{ "", "spec", NULL, "spec" },
	{ "", "source", NULL, "source" },
	{ "", "members", "[]", "0 members" },
	{ "", "members", "{}", "members" },
	{ "", "vmops_version", "\"\"", "empty" },
	{ "", "surprise", "1", "unknown key \"surprise\"" },
	{ "source", "vmm_id", "\"x\"", "vmm_id" },
	{ "source", "sandbox", "\"\"", "sandbox" },
	{ "source", "worker", "\"a\\nb\"", "control character" },
	{ "source", "surprise", "1", "unknown key" },
	{ "m0", "sha256", "\"abc\"", "sha256" },
	{ "m0", "sha256", "\"BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD\"", "sha256" },
	{ "m0", "name", "\"../x\"", "\"..\"" },
	{ "m0", "name", "\"/x\"", "absolute" },
	{ "m0", "name", "\"a/b\"", "directory" },
	{ "m0", "name", "\"manifest.json\"", "second manifest" },
	{ "m0", "name", "\"\"", "name" },
	{ "m1", "name", "\"memory\"", "listed twice" },
	{ "m0", "size", "-5", "size" },
	{ "m0", "size", NULL, "size" },
	{ "m0", "surprise", "1", "unknown key" },
};

Test(bundle, manifest_field_validation)
{
	for (size_t i = 0; i < sizeof(bad_fields) / sizeof(bad_fields[0]); i++) {
		cJSON *j = valid_manifest_json(), *o = j;
		struct vmops_manifest m;
		struct vmops_error e = { 0 };

		if (strcmp(bad_fields[i].where, "source") == 0)
			o = cJSON_GetObjectItem(j, "source");
		else if (bad_fields[i].where[0] == 'm')
			o = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "members"), bad_fields[i].where[1] - '0');
		cJSON_DeleteItemFromObjectCaseSensitive(o, bad_fields[i].key);
		if (bad_fields[i].value)
			cJSON_AddItemToObject(o, bad_fields[i].key, cJSON_Parse(bad_fields[i].value));
		cr_assert_eq(vmops_manifest_from_json(j, &m, &e), -1, "accepted %s.%s = %s", bad_fields[i].where,
			     bad_fields[i].key, bad_fields[i].value);
		cr_assert_eq(e.code, VMOPS_EXIT_INTEGRITY);
		cr_assert(strstr(e.msg, bad_fields[i].why), "%s.%s: message \"%s\" lacks \"%s\"",
			  bad_fields[i].where, bad_fields[i].key, e.msg, bad_fields[i].why);
		cr_assert_null(m.spec);
		cJSON_Delete(j);
	}
}

/* The writer refuses a manifest the reader would refuse. */
Test(bundle, writer_checks_the_callers_fields)
{
	struct vmops_manifest m;
	struct vmops_error e = { 0 };
	char path[160];

	make_members();
	fill_manifest(&m);
	strcpy(m.hypervisor, "vmware");
	snprintf(path, sizeof(path), "%s/b", out);
	cr_assert_eq(vmops_bundle_write_path(path, dir_fd(src), members, 5, &m, NULL, &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_FAILURE);
	cr_assert(strstr(e.msg, "unknown hypervisor"), "%s", e.msg);
	cr_assert_eq(count_entries(out), 0);
	vmops_manifest_clear(&m);
}
