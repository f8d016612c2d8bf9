/* SPDX-License-Identifier: MIT */
/*
 * proc: the /proc layer of libvmops.
 *
 * Everything that reads /proc takes a root directory ("/proc" on a live
 * system; programs take it from --proc-root or VMOPS_PROC_ROOT) so that a
 * recorded tree can stand in for the real one.  A recorded tree is plain
 * files and symlinks laid out like /proc:
 *
 *   ROOT/uptime          "<seconds since boot> <idle seconds>"
 *   ROOT/stat            optional; only the "btime <epoch>" line is used
 *   ROOT/PID/stat        one line, exactly as the kernel writes it
 *   ROOT/PID/cmdline     argv, each argument NUL-terminated
 *   ROOT/PID/status      optional; only the "Uid:" line is used
 *   ROOT/PID/exe         the executable, in either form:
 *                          - a symlink whose target is the path (as in /proc;
 *                            it need not exist on the reading machine), or
 *                          - a regular file whose content is the path, with
 *                            or without a trailing newline (for trees copied
 *                            by tools that do not keep symlinks)
 *                        absent for kernel threads and zombies
 *
 * Identification of hypervisor processes is by the executable only (never by
 * comm or argv[0], which any process can set).  Liveness is by
 * /proc/PID/stat: a zombie (Z) or dead (X) process is dead whatever
 * kill(pid, 0) says, and a pid whose start time differs from the recorded
 * one is a different process.  Signalling goes through a pidfd and re-checks
 * the start time after the pidfd is open, so a reused pid is never signalled.
 *
 * A start time of 0 means "not recorded" (no process vmops manages started
 * in the first clock tick after boot): identity is then unknown, and unknown
 * is never taken for alive, for dead or for a licence to signal.
 * vmops_proc_check() says VMOPS_PROC_UNKNOWN for a live process at such a
 * pid, and vmops_proc_signal()/vmops_proc_terminate() refuse to signal it.
 *
 * All functions that can fail return -1 (or a documented negative code) and
 * fill the struct vmops_error; err->code is VMOPS_EXIT_NOTFOUND when the
 * process (or the file asked for) does not exist.  Nothing here prints or
 * exits.
 */
#ifndef VMOPS_PROC_H
#define VMOPS_PROC_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "error.h"

#define VMOPS_PROC_ROOT_DEFAULT "/proc"

/* Longest comm kept, including the NUL; longer ones are truncated. */
#define VMOPS_PROC_COMM_MAX 64

/* How long vmops_proc_terminate() waits for the exit after SIGKILL. */
#define VMOPS_PROC_KILL_WAIT_MS 5000

/* The fields of /proc/PID/stat that vmops uses. */
struct vmops_proc_stat {
	pid_t pid;                          /* field 1 */
	char comm[VMOPS_PROC_COMM_MAX];     /* field 2, without the parentheses */
	char state;                         /* field 3: R S D Z T t X I ... */
	pid_t ppid;                         /* field 4 */
	unsigned flags;                     /* field 9: PF_*; 0x00200000 kernel thread */
	unsigned long long starttime;       /* field 22: clock ticks after boot */
};

enum vmops_hv_kind {
	VMOPS_HV_NONE = 0,
	VMOPS_HV_QEMU,                      /* .../qemu-system-<arch> */
	VMOPS_HV_CLOUD_HYPERVISOR,          /* .../cloud-hypervisor */
	VMOPS_HV_FIRECRACKER,               /* .../firecracker */
};

/* Result of vmops_proc_check(); -1 is an error. */
enum vmops_proc_liveness {
	VMOPS_PROC_ALIVE = 0,               /* there, same start time, not Z/X */
	VMOPS_PROC_DEAD = 1,                /* absent, or state Z or X */
	VMOPS_PROC_REUSED = 2,              /* there, but start time differs */
	VMOPS_PROC_UNKNOWN = 3,             /* expected start time 0 (not recorded)
	                                       and a live process has that pid: it
	                                       may or may not be the one meant */
};

/* Results of vmops_proc_signal() and vmops_proc_terminate(). */
enum vmops_proc_sigres {
	VMOPS_PROC_SIG_SENT = 0,            /* signal delivered (terminate: done) */
	VMOPS_PROC_SIG_GONE = 1,            /* no such process: nothing sent */
	VMOPS_PROC_SIG_ERROR = -1,          /* err filled */
	VMOPS_PROC_SIG_REFUSED = -2,        /* pid is another process now, or no
	                                       start time was given (identity
	                                       unknown); err filled, code
	                                       VMOPS_EXIT_CONFLICT */
};

/* How vmops_proc_terminate() ended. */
enum vmops_proc_term {
	VMOPS_PROC_TERM_GONE = 0,           /* had exited before anything was sent */
	VMOPS_PROC_TERM_ZOMBIE,             /* already a zombie: nothing to signal;
	                                       its parent (ppid) has not reaped it */
	VMOPS_PROC_TERM_TERM,               /* exited within the grace after SIGTERM */
	VMOPS_PROC_TERM_KILL,               /* SIGKILL was needed */
};

struct vmops_proc_term_outcome {
	enum vmops_proc_term how;
	pid_t ppid;                         /* parent when last read; 0 if never read */
	unsigned elapsed_ms;                /* from SIGTERM to the observed exit */
};

/* Parse the text of /proc/PID/stat (len bytes, need not be NUL-terminated).
 * The comm may contain spaces and parentheses: the state follows the last
 * ')'.  Rejects anything the kernel would not write.  Fuzz-safe. */
int vmops_proc_parse_stat(const char *buf, size_t len, struct vmops_proc_stat *out,
			  struct vmops_error *err);
int vmops_proc_read_stat(const char *root, pid_t pid, struct vmops_proc_stat *out,
			 struct vmops_error *err);

/* argv from ROOT/PID/cmdline.  *argv is one allocation holding the NULL-
 * terminated pointer array and the strings: release it with free(*argv).
 * Kernel threads and zombies have argc 0.  An unterminated last argument
 * (setproctitle) is kept. */
int vmops_proc_read_cmdline(const char *root, pid_t pid, char ***argv, int *argc,
			    struct vmops_error *err);

/* The executable path of ROOT/PID/exe (symlink or regular file, see above),
 * including a " (deleted)" suffix if the kernel reports one.  Returns its
 * length.  No executable (kernel thread, zombie, gone): -1, code NOTFOUND. */
ssize_t vmops_proc_read_exe(const char *root, pid_t pid, char *buf, size_t size,
			    struct vmops_error *err);

/* Real and effective uid from the "Uid:" line of ROOT/PID/status.  Either
 * pointer may be NULL. */
int vmops_proc_read_uid(const char *root, pid_t pid, uid_t *ruid, uid_t *euid,
			struct vmops_error *err);

/* Hypervisor kind by the executable's basename, ignoring a " (deleted)"
 * suffix: qemu-system-<arch> (arch of [A-Za-z0-9_-]), cloud-hypervisor,
 * firecracker.  Anything else, NULL or "" is VMOPS_HV_NONE. */
enum vmops_hv_kind vmops_proc_hv_kind(const char *exe_path);
/* "none", "qemu", "cloud-hypervisor", "firecracker". */
const char *vmops_proc_hv_name(enum vmops_hv_kind kind);

/* The VMM id from the fleet token "vmops-vmm-<id>" in argv[1..argc-1]
 * (argv[0] is the program name and is not searched).  A token is
 * delimited: at the start of an argument or after a character that is not
 * an ASCII letter or digit, and followed by the end of the argument or by
 * such a character; the id is canonical decimal (no sign, no leading zero)
 * and fits in 63 bits.  So "-name vmops-vmm-42", "--id vmops-vmm-42",
 * "path=/run/vmops/vmops-vmm-42.sock", "guest=vmops-vmm-42,debug-threads=on"
 * give 42 and "vmops-vmm-12x", "xvmops-vmm-3", "vmops-vmm-", "vmops-vmm-07"
 * give nothing.  The same id may appear several times; two different ids
 * make the process ambiguous.  Returns the id, or -1 (none or ambiguous).
 * Stops at argc or at a NULL argv entry. */
long long vmops_proc_vmm_id(int argc, char *const argv[]);

/* Scanning. */
enum vmops_proc_scan_flags {
	/* Read the exe first and skip every process that is not a hypervisor
	 * before reading anything else; stat and cmdline are read only for
	 * hypervisors.  Zombies have no exe and are never reported. */
	VMOPS_PROC_SCAN_HV_ONLY = 1u << 0,
	/* Also read the uid from status (costs a read of a larger file). */
	VMOPS_PROC_SCAN_UID = 1u << 1,
};

struct vmops_proc_info {
	struct vmops_proc_stat stat;
	const char *exe;                    /* "" when none or unreadable */
	enum vmops_hv_kind hv;
	int argc;
	char *const *argv;                  /* argc entries, then NULL */
	long long vmm_id;                   /* hypervisors only; else -1 */
	uid_t uid, euid;                    /* with VMOPS_PROC_SCAN_UID; else -1 */
};

/* Called once per process.  The info and everything it points to is valid
 * only during the call.  Return 0 to go on; any other value stops the scan
 * and vmops_proc_scan() returns it unchanged (a callback that fails should
 * keep its own error context in data and return a value other than -1 if
 * the caller must tell the two apart). */
typedef int (*vmops_proc_scan_fn)(const struct vmops_proc_info *info, void *data);

/* Visit every process (numeric directory) under root.  Kernel threads and
 * zombies get exe "" and argc 0 without further reads.  For a hypervisor
 * process the stat is read again after exe, cmdline (and status), and the
 * process is skipped unless the start time is unchanged: so what is reported
 * for a hypervisor all belongs to the one process with that start time, even
 * if its pid is reused mid-scan (for other processes that is not re-checked;
 * they are for listing).  Processes that vanish mid-scan are skipped
 * silently, as are those whose files are not readable (EACCES).  Returns 0,
 * the callback's nonzero value, or -1 with err filled (root unreadable,
 * malformed stat, out of memory). */
int vmops_proc_scan(const char *root, unsigned flags, vmops_proc_scan_fn fn, void *data,
		    struct vmops_error *err);

/* Liveness of a recorded (pid, starttime).  st, if not NULL, receives the
 * stat that was read; st->state is '\0' when the process is absent.  A pid
 * whose start time differs is REUSED even when that other process is a
 * zombie; a zombie with the expected start time is DEAD and st->ppid names
 * the parent that has not reaped it.  An expected start time of 0 (not
 * recorded): absent, zombie or dead is DEAD (whichever process held the pid,
 * the one meant has exited), anything else is UNKNOWN.  Returns the enum
 * vmops_proc_liveness, or -1 with err filled (unreadable or malformed
 * stat). */
int vmops_proc_check(const char *root, pid_t pid, unsigned long long expected_starttime,
		     struct vmops_proc_stat *st, struct vmops_error *err);

/* Live system only (reads /proc).  Opens a pidfd for pid, then re-reads the
 * start time and checks that the pidfd's process still exists (so the stat
 * read was of that process), and only if the start time is the expected one
 * sends sig through the pidfd.  An expected start time of 0 is refused
 * before anything is opened.  Returns an enum vmops_proc_sigres:
 * SENT, GONE, ERROR (-1) or REFUSED (-2, the process was not touched). */
int vmops_proc_signal(pid_t pid, unsigned long long expected_starttime, int sig,
		      struct vmops_error *err);

/* Live system only.  Send sig, through a pidfd, to pid, which must be a child
 * of the calling process that it has not reaped yet: such a pid cannot be
 * reused, so no start time is needed (for a freshly forked child whose start
 * time could not be read).  Returns SENT, GONE or ERROR. */
int vmops_proc_signal_child(pid_t pid, int sig, struct vmops_error *err);

/* Live system only.  Verified as in vmops_proc_signal() (a start time of 0
 * is refused), then SIGTERM, wait
 * up to grace_ms for the exit (poll on the pidfd, which works for processes
 * that are not our children), then SIGKILL and wait up to
 * VMOPS_PROC_KILL_WAIT_MS.  An exited process that its parent has not reaped
 * yet counts as exited.  A process that is already a zombie is not signalled
 * (how = ZOMBIE, ppid = the parent that fails to reap it).  Returns
 * SENT (0, see out->how), REFUSED (-2) or ERROR (-1; code TIMEOUT if even
 * SIGKILL did not end it). */
int vmops_proc_terminate(pid_t pid, unsigned long long starttime, unsigned grace_ms,
			 struct vmops_proc_term_outcome *out, struct vmops_error *err);

/* Clock ticks per second (USER_HZ) that starttime is counted in. */
long vmops_proc_clk_tck(void);
/* Seconds since boot, from ROOT/uptime (parsed without locale). */
int vmops_proc_uptime(const char *root, double *seconds, struct vmops_error *err);
/* Boot time (seconds since the epoch), from the btime line of ROOT/stat. */
int vmops_proc_boot_time(const char *root, time_t *btime, struct vmops_error *err);
/* Age in seconds of a process that started at starttime, for a given
 * uptime; never negative (a start after the uptime gives 0). */
double vmops_proc_age_at(double uptime, unsigned long long starttime);
/* Same, reading ROOT/uptime: works for a live and for a recorded tree. */
int vmops_proc_age(const char *root, unsigned long long starttime, double *age,
		   struct vmops_error *err);

#endif
