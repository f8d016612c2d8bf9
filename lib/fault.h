/* SPDX-License-Identifier: MIT */
/*
 * fault: an inert fault-injection hook for testing long operations.
 *
 * VMOPS_FAULT=PHASE:ACTION (read once, at the first check) makes the process
 * act at the boundary of the named phase, before the phase is recorded and
 * before its physical step:
 *
 *   exit          _exit(1) at once: no cleanup, no database write
 *   sigkill-self  SIGKILL to itself (as the OOM killer or kill -9 would)
 *   stop          SIGSTOP to itself; after SIGCONT it carries on
 *                 (a stalled process, or a window for a test to act in)
 *   sigint        SIGINT to itself, as an operator's Ctrl-C at that point
 *                 (the program's handler decides what it means), sent
 *                 VMOPS_INTERRUPT_REPEAT_MS + 200 ms late so that it never
 *                 counts as a repeat of an earlier signal
 *
 * and, for the transaction that ends a phase (vmops_fault_commit(); vm-migrate:
 * claim (cut-after only), finish, done), once per process:
 *
 *   cut-before-commit  the database connection is cut just before COMMIT
 *                      (the server rolls the transaction back)
 *   cut-after-commit   COMMIT succeeds, then the connection is cut and the
 *                      reply treated as lost: the outcome is ambiguous
 *
 * PHASE is a phase name of the operation (vm-migrate: prepare, claim,
 * receiver, transfer, switchover, finish, rollback; vm-fleet launch:
 * launch-stop, where a failed or interrupted launch stops its hypervisor).  Unset, empty or
 * malformed: no effect; a check then costs one load and one branch.  This is the one place
 * in the library that may end the process, and only because it was asked to.
 */
#ifndef VMOPS_FAULT_H
#define VMOPS_FAULT_H

#include <stdbool.h>

extern int vmops_fault_state;   /* 0: not read yet, 1: inert, 2: armed */

void vmops_fault_check_slow(const char *phase);

/* Act if VMOPS_FAULT names this phase. */
static inline void vmops_fault_point(const char *phase)
{
	if (__builtin_expect(vmops_fault_state != 1, 0))
		vmops_fault_check_slow(phase);
}

enum vmops_fault_commit {
	VMOPS_FAULT_COMMIT_NONE,
	VMOPS_FAULT_COMMIT_CUT_BEFORE,
	VMOPS_FAULT_COMMIT_CUT_AFTER,
};

/* What to do to the COMMIT of the transaction that moves to phase `phase`. */
enum vmops_fault_commit vmops_fault_commit(const char *phase);

#endif
