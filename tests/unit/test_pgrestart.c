/* SPDX-License-Identifier: MIT */
/*
 * The "PostgreSQL restart" column of vm-migrate's fault matrix
 * (test_faults.c): at each phase boundary vm-migrate is stopped, the whole
 * throwaway cluster restarted (tests/pg-restart.sh: fast shutdown, every
 * session cut), vm-migrate let go on; it must ride the restart out by
 * reconnecting within its lease and complete, then --recover, vmm-reap and
 * the matrix's end-state checks.  A suite of its own because a restart cuts
 * every session of the cluster: tests/run-all.sh runs it alone, with
 * --jobs 1, and its cells take a lock in the cluster's directory as well.
 */
#define VMOPS_FAULTS_PG_RESTART 1
#include "test_faults.c"
