/* SPDX-License-Identifier: MIT */
/*
 * Scaffolding shared by the suites that drive the hypervisor fakes
 * (tests/fakes/fake-chv, fake-firecracker): a scratch directory per test,
 * VMMs launched from it and killed at teardown, the fake's request log
 * (JSON lines: one per request with "call", "status", "body"; events with
 * "event"), and faults armed in a running fake.
 *
 * VMOPS_TEST_DEBUG=1: library logs on stderr; VMOPS_TEST_KEEP=1: keep the
 * scratch directory; VMOPS_FAKES_DIR: where the fakes are (default
 * tests/fakes, from the top of the tree).
 */
#ifndef VMOPS_TEST_FAKELIB_H
#define VMOPS_TEST_FAKELIB_H

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#include <cjson/cJSON.h>
#include <libpq-fe.h>

#include "hv.h"
#include "spec.h"

extern char fake_dir[64];          /* this test's scratch directory */
extern char fake_bin[PATH_MAX];    /* the fake's absolute path */

/* Criterion .init: scratch directory /tmp/vmops-TAG.XXXXXX, the fake named
 * `fake` (e.g. "fake-chv"), API calls of 3 s, no fault armed. */
void fake_setup(const char *tag, const char *fake);
/* Criterion .fini: kill what was launched (also by programs under test,
 * found by the scratch directory in their command line), remove the
 * directory. */
void fake_teardown(void);

/* Launch options for VMM `id`: run directory <dir>/vm-<id>, the fake. */
struct vmops_hv_launch_opts fake_opts_for(int id, char *rd, size_t rdlen);
/* Remember h's process for teardown. */
void fake_track(struct vmops_hv *h);
/* Launch `s` as VMM `id` (tracked); NULL with err on failure. */
struct vmops_hv *fake_launch(const struct vmops_spec *s, int id, struct vmops_error *err);
/* Destroy (asserted), check the process is gone, free. */
void fake_destroy(struct vmops_hv *h);
/* "running", "paused", ... (asserted to answer). */
const char *fake_vm_status(struct vmops_hv *h);

/* The request log of the fake at `sock` / of h, as a JSON array. */
cJSON *fake_read_log_at(const char *sock);
cJSON *fake_read_log(struct vmops_hv *h);
/* o[k] as a string ("" if none). */
const char *fake_str(const cJSON *o, const char *k);
/* First request `call` at or after `from` whose body contains `body`
 * (NULL: any); -1 if none.  fake_last_call: the last one. */
int fake_find_call(const cJSON *log, const char *call, const char *body, int from);
int fake_last_call(const cJSON *log, const char *call);
/* The first event named `event`, or NULL. */
const cJSON *fake_find_event(const cJSON *log, const char *event);
/* The log of the fake at `sock` (*log, to free) once it has `event`, waiting up to 20 s; NULL: never came. */
const cJSON *fake_wait_event_at(const char *sock, const char *event, cJSON **log);
/* HTTP status of log entry i (-1 if none). */
int fake_status_of(const cJSON *log, int i);
/* Expect no answer with a status the spec does not declare. */
void fake_no_undeclared(const cJSON *log);

/* Arm a fault ("CALL:MODE[:COUNT]") in h's running fake; false on error. */
bool fake_fault_arm(struct vmops_hv *h, const char *rule);

/* Processes whose command line contains `needle`: the first one's pid (0:
 * none); kill_them: SIGKILL them all. */
pid_t fake_procs_naming(const char *needle, bool kill_them);
/* Does a process run from VMM id's run directory / from the scratch dir? */
bool fake_runs_under(int id);
bool fake_runs_under_dir(void);

/* mkdir <dir>/name, return an O_DIRECTORY fd of it. */
int fake_open_dir(const char *name);
/* Size of <dir>/sub/name, -1 if missing. */
off_t fake_file_size(const char *sub, const char *name);
/* Create (truncate) a file of `size` bytes (sparse). */
void fake_touch(const char *path, off_t size);

/*
 * The fleet the programs under test act on: workers w1 and w2 (run
 * directories in the scratch dir), and `fake` (a file in tests/fakes) on
 * PATH as `binary` ("cloud-hypervisor", "firecracker"), run by a copy of
 * its interpreter of that name: the process's executable is named as a real
 * hypervisor's (ghost-reap tells hypervisors by executable).  PATH is
 * restored at teardown.  May be called once per binary.
 */
void fake_fleet(PGconn *c, const char *binary, const char *fake);

/*
 * ghost-reap --worker w1, as on the worker's host, and `sandbox`'s VMM (of
 * hypervisor `hv`, launched by vm-fleet): found by its executable and
 * healthy, left alone; then recorded destroyed behind its back, a ghost that
 * --action kill stops.
 */
void fake_ghost_reap_finds(PGconn *c, const char *ci, const char *sandbox, const char *hv);

/* pid is a zombie (exited, not yet reaped). */
bool fake_is_zombie(pid_t pid);
/* testdb_ll() of a printf-formatted query. */
long long fake_ll(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Write `json` to <dir>/name; returns the path (static storage). */
const char *fake_write_file(const char *name, const char *json);
/*
 * h's vmm.log stays under the cap while its guest prints (launched with
 * VMOPS_LOG_MAX=4K and VMOPS_FAKE_CONSOLE_BPS set): within 30 s it has been
 * moved to vmm.log.1 (at most 4 KiB, console lines) and emptied, and the
 * VMM goes on writing at its start (appending: no hole where the old
 * content was).
 */
void fake_assert_log_capped(struct vmops_hv *h);

/* Wait until process pid has stopped itself (SIGSTOP: state T). */
void fake_wait_stopped(pid_t pid);

#endif
