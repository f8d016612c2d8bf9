/* SPDX-License-Identifier: MIT */
/*
 * Snapshot bundles: one archive per snapshot (pax format, zstd), with
 * manifest.json as its first member, then the snapshot's files and the
 * guest's disk images, sparse files stored sparse.
 *
 * The manifest names every member with its size and SHA-256.  Reading a
 * bundle verifies before anything is used: the manifest first (format,
 * fields), then each member against it; absolute paths, "..", links,
 * devices, directories, duplicate members, members not in the manifest,
 * members missing from the archive and sizes beyond the manifest's are
 * refused (VMOPS_EXIT_INTEGRITY), and so is any checksum mismatch.  Files
 * are extracted only below the directory given, never through a link, and
 * a refused bundle leaves no extracted file behind.
 *
 * Writing to a path goes to a temporary name in the same directory,
 * fsynced, renamed, and the directory fsynced: the final name holds a whole
 * bundle or nothing.  Writing to a file descriptor streams (a pipe works).
 *
 * Layout: a pax archive (GNU tar reads it: `zstd -dc B | tar -xf -`),
 * zstd-compressed through libarchive's filter with worker threads.
 * Members are stored with mode 0600 and their mtime; sparse members carry
 * a GNU.sparse 1.0 map (found with SEEK_DATA/SEEK_HOLE), their holes
 * neither read nor stored.  A member's sha256 is that of its whole content,
 * holes as zeros (what sha256sum prints).
 *
 * Cost: the manifest comes first and names every checksum.  Into a regular
 * file (write_path, or an fd on one without O_APPEND) the writer reads each
 * member once: the manifest's entry is a zstd frame of raw blocks written
 * with placeholder checksums, the members are hashed (in a thread) as they
 * are archived, and the real manifest is written over the placeholder at
 * the end (a reader of the unfinished file sees checksums that do not
 * match).  Into a pipe it reads them twice: a hashing pass (all members at
 * once, one thread per CPU up to one per member), then the archive pass.
 * A member whose size or mtime changes while it is bundled fails the
 * write.  The reader hashes while it extracts (one pass).
 */
#ifndef VMOPS_BUNDLE_H
#define VMOPS_BUNDLE_H

#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "../error.h"

#define VMOPS_BUNDLE_FORMAT 1
#define VMOPS_BUNDLE_MANIFEST "manifest.json"
#define VMOPS_BUNDLE_MEMBERS_MAX 64

struct vmops_bundle_member {
	char name[256];        /* file name inside the archive: no '/', no "..", not manifest.json */
	uint64_t size;         /* bytes (apparent size, holes included) */
	char sha256[65];       /* lowercase hex */
};

struct vmops_manifest {
	int format;                    /* VMOPS_BUNDLE_FORMAT */
	char hypervisor[32];           /* "qemu", "cloud-hypervisor", "firecracker" */
	char hypervisor_version[64];
	char machine[64];              /* QEMU machine type, "" if none */
	cJSON *spec;                   /* the launch spec (owned) */
	uint64_t memory_bytes;
	char sandbox[128];
	uint64_t vmm_id;
	char worker[128];
	char vmops_version[32];
	char created[32];              /* UTC, RFC 3339: 2026-12-02T01:02:03Z */
	size_t n_members;
	struct vmops_bundle_member members[VMOPS_BUNDLE_MEMBERS_MAX];
};

/* Progress of a long write or read: bytes of member data done / in all
 * (holes included).  Writing reports the archive pass, reading the whole
 * read; called at least once per MiB and per member. */
typedef void (*vmops_bundle_progress_fn)(uint64_t done, uint64_t total, void *arg);

struct vmops_bundle_opts {
	int zstd_level;                      /* 0: the default (1) */
	int threads;                         /* zstd worker threads and hashing threads; 0: one per CPU */
	vmops_bundle_progress_fn progress;   /* may be NULL */
	void *progress_arg;
	volatile sig_atomic_t *interrupted;  /* stop (VMOPS_EXIT_INTERRUPTED) when set; may be NULL */
};

/*
 * Write a bundle of the regular files `names[0..n)` in directory dirfd to
 * out_fd.  Fills m->members (names, sizes, checksums) and m->format; the
 * caller fills the rest of *m (vmops_version and created are filled if
 * empty).  out_fd is not closed.  Streaming to a pipe, ignore SIGPIPE:
 * a reader that goes away then fails the write with EPIPE.
 */
int vmops_bundle_write_fd(int out_fd, int dirfd, const char *const *names, size_t n,
			  struct vmops_manifest *m, const struct vmops_bundle_opts *o,
			  struct vmops_error *err);
/* The same to `path`, atomically (temporary name .NAME.tmp.XXXXXX, fsync,
 * rename, fsync of the directory).  The bundle gets mode 0600; an existing
 * file at `path` is replaced.  On failure nothing is left under either name.
 * Errors: VMOPS_EXIT_FAILURE (a member unreadable, not a regular file, a
 * bad name, a manifest field the reader would refuse, an I/O error),
 * VMOPS_EXIT_INTERRUPTED. */
int vmops_bundle_write_path(const char *path, int dirfd, const char *const *names, size_t n,
			    struct vmops_manifest *m, const struct vmops_bundle_opts *o,
			    struct vmops_error *err);

/*
 * Read a bundle from in_fd, verify it, and extract its members into the
 * (empty) directory dirfd.  On success *m holds the manifest.  On any
 * refusal the files extracted so far are removed and *m is cleared.
 * Errors: VMOPS_EXIT_INTEGRITY (the bundle is refused; the message names
 * the member and why), VMOPS_EXIT_FAILURE (writing into dirfd failed, e.g.
 * a name already exists there: nothing is written through it),
 * VMOPS_EXIT_INTERRUPTED.
 */
int vmops_bundle_extract_fd(int in_fd, int dirfd, struct vmops_manifest *m,
			    const struct vmops_bundle_opts *o, struct vmops_error *err);
/* Verify a whole bundle without extracting (reads it once). */
int vmops_bundle_verify_fd(int in_fd, struct vmops_manifest *m,
			   const struct vmops_bundle_opts *o, struct vmops_error *err);

/* Manifest <-> JSON (the exact document stored as manifest.json and in
 * the database).  from_json verifies the format and every field. */
cJSON *vmops_manifest_to_json(const struct vmops_manifest *m);
int vmops_manifest_from_json(const cJSON *j, struct vmops_manifest *m, struct vmops_error *err);
const struct vmops_bundle_member *vmops_manifest_member(const struct vmops_manifest *m,
							const char *name);
void vmops_manifest_clear(struct vmops_manifest *m);

#endif
