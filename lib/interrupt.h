/* SPDX-License-Identifier: MIT */
/*
 * interrupt: SIGINT and SIGTERM for programs whose operations wait.
 *
 * The first signal only raises vmops_interrupted.  The library polls that
 * flag (opts->interrupted) in every wait it can leave safely, and unwinds
 * in order: bounded, and recorded in the database as it goes.
 *
 * A second signal, while that unwind runs and at least
 * VMOPS_INTERRUPT_REPEAT_MS after the first, leaves at once: the handler
 * writes one line,
 *
 *   PROG: second interrupt: leaving at once, without cleaning up; NOTE
 *
 * and calls _exit(VMOPS_EXIT_INTERRUPTED).  NOTE is what the program said
 * it leaves behind and how to clean it up (vmops_interrupt_note(), e.g.
 * "sandbox sb1, migration 17 (w1 -> w2) is left to its lease: run
 * 'vm-migrate --recover' once it has expired").  Notes are double-buffered:
 * the handler never writes half of one.  Set notes from one thread.
 *
 * For programs (cmd/): the library never calls these; it only reads the
 * flag it is given.
 *
 * A signal sooner than that after the first is the same request delivered
 * twice, and ignored: timeout(1) signals its child and then its whole
 * process group, and a shell's or systemd's group kill does the same, so
 * a single "stop" often arrives as two signals microseconds apart.
 */
#ifndef VMOPS_INTERRUPT_H
#define VMOPS_INTERRUPT_H

#include <signal.h>
#include <stdbool.h>

#define VMOPS_INTERRUPT_NOTE_MAX 900
/* A second signal this soon after the first is the same request (see above). */
#define VMOPS_INTERRUPT_REPEAT_MS 1000

/* Nonzero (the signal number) once SIGINT or SIGTERM (or SIGHUP, if asked) arrived. */
extern volatile sig_atomic_t vmops_interrupted;

enum {
	VMOPS_INTERRUPT_HUP = 1,       /* SIGHUP too (a closed terminal) */
	VMOPS_INTERRUPT_RESTART = 2,   /* SA_RESTART: slow calls resume instead of failing with EINTR */
};

/*
 * Install the handler for SIGINT and SIGTERM (flags: VMOPS_INTERRUPT_*),
 * the other signals blocked while it runs.  `prog` prefixes the second
 * signal's line and must outlive the process (a literal or prog_name).
 */
void vmops_interrupt_install(const char *prog, unsigned flags);

/* What a second signal leaves behind, said in its line (printf format). */
__attribute__((format(printf, 1, 2)))
void vmops_interrupt_note(const char *fmt, ...);

/* The line a second signal would write now (tests, and the program's own log). */
const char *vmops_interrupt_line(void);

#endif
