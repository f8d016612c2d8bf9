/* SPDX-License-Identifier: MIT */
/*
 * vmops exit codes.  This catalogue is part of the official interface: every
 * program returns one of these, and every man page lists them in EXIT STATUS.
 * Never renumber; only append.
 *
 * The audit programs (usage-parity, ghost-reap) share one convention for
 * what they found: 0 nothing found, 3 found and not all fixed (reported
 * only, a dry run, a repair skipped or failed), 4 found and all fixed, and
 * 1 only when the run itself failed.  vmm-reap is not an audit program: the
 * VMM records it deletes are the normal end of a VMM's life, not a
 * discrepancy, so it exits 0 whether or not it deleted any.
 */
#ifndef VMOPS_EXITCODES_H
#define VMOPS_EXITCODES_H

enum vmops_exit {
	VMOPS_EXIT_OK          = 0,  /* success; audit programs: nothing found */
	VMOPS_EXIT_FAILURE     = 1,  /* runtime failure not covered below */
	VMOPS_EXIT_USAGE       = 2,  /* bad command line; nothing was done */
	VMOPS_EXIT_FOUND       = 3,  /* audit programs: problems found, not (all) fixed
	                                (including a fix that failed) */
	VMOPS_EXIT_FIXED       = 4,  /* audit programs: problems found and all fixed */
	VMOPS_EXIT_DB          = 5,  /* database unreachable or connection lost */
	VMOPS_EXIT_SCHEMA      = 6,  /* schema missing, too old or newer than this binary */
	VMOPS_EXIT_HYPERVISOR  = 7,  /* hypervisor (QMP/API socket) unreachable or failing */
	VMOPS_EXIT_TIMEOUT     = 8,  /* a deadline passed */
	VMOPS_EXIT_NOCAPACITY  = 9,  /* no worker can take the work (no target, no room) */
	VMOPS_EXIT_CONFLICT    = 10, /* refused by the database: invariant, capacity, state */
	VMOPS_EXIT_NOTFOUND    = 11, /* named worker/sandbox/VMM does not exist */
	VMOPS_EXIT_INTERRUPTED = 12, /* stopped by SIGINT/SIGTERM after cleaning up */
	VMOPS_EXIT_WRONG_HOST  = 13, /* this host is not (or cannot be shown to be) the
	                                worker named: host identity differs or is unknown */
	VMOPS_EXIT_UNKNOWN     = 14, /* facts unknown (a live peer did not answer): nothing irreversible done; retry */
	VMOPS_EXIT_PARTIAL     = 15, /* vm-drain: the worker still holds something; it stays draining */
	VMOPS_EXIT_INTEGRITY   = 16, /* a bundle or manifest failed verification; nothing was launched */
	VMOPS_EXIT_UNREACHABLE = 17, /* a worker's host could not be reached over ssh (refused, no
	                                answer within the timeout, authentication failed): nothing
	                                was asked of it and nothing is recorded */
};

/* Short stable name of an exit code ("ok", "usage", ...), for --json. */
const char *vmops_exit_name(int code);

#endif
