/* SPDX-License-Identifier: MIT */
/* The free-page hinting lesson before a snapshot (see hint.h). */
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "exitcodes.h"
#include "hv/hint.h"
#include "hv/rest.h"
#include "log.h"

#define POLL_MS 50

static int stop_round(struct vmops_hv *h, int stop_ms, const char *why, struct vmops_error *err)
{
	struct vmops_error se = { 0 };

	vmops_info("%s vmm %" PRIu64 ": stopping the free-page hinting round (%s)",
		   vmops_hv_info(h)->kind, vmops_hv_info(h)->vmm_id, why);
	if (vmops_hv_hint_stop(h, stop_ms, &se) < 0) {
		*err = se;
		return vmops_err_prefix(err, "hinting round %s and could not be stopped; not pausing", why);
	}
	return VMOPS_HINT_STOPPED;
}

int vmops_hv_hint_drain(struct vmops_hv *h, int drain_ms, int stop_ms,
			volatile sig_atomic_t *interrupted, struct vmops_error *err)
{
	int64_t deadline = rest_now_ms() + (drain_ms > 0 ? drain_ms : 0);
	struct vmops_hint_status st;
	struct vmops_error se = { 0 };
	bool ran = false;

	if (!vmops_hv_can(h, VMOPS_HV_OP_HINT))
		return VMOPS_HINT_NONE;
	for (;;) {
		if (vmops_hv_hint_status(h, &st, &se) < 0) {
			vmops_debug("%s", se.msg);
			return stop_round(h, stop_ms, "status unknown", err);
		}
		if (!st.running)
			return ran ? VMOPS_HINT_FINISHED : VMOPS_HINT_NONE;
		ran = true;
		if (rest_now_ms() >= deadline)
			return stop_round(h, stop_ms, "outlived its drain budget", err);
		if (vmops_hv_interrupted(h) || (interrupted && *interrupted))
			return stop_round(h, stop_ms, "interrupted", err);
		rest_sleep_ms(POLL_MS);
	}
}

int vmops_hv_snapshot_drained(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
			      int drain_ms, int stop_ms, bool leave_paused,
			      struct vmops_error *err)
{
	struct vmops_vm_status st;
	struct vmops_error re = { 0 };
	bool was_running;

	if (vmops_hv_status(h, &st, err) < 0)
		return -1;
	was_running = st.running;
	if (vmops_hv_hint_drain(h, drain_ms, stop_ms, o ? o->interrupted : NULL, err) < 0)
		return -1;
	if (was_running && vmops_hv_pause(h, err) < 0)
		return -1;
	if (vmops_hv_snapshot(h, dirfd, o, err) < 0) {
		if (was_running && vmops_hv_resume(h, &re) < 0)
			vmops_warn("%s", re.msg);
		return -1;
	}
	if (was_running && !leave_paused && vmops_hv_resume(h, err) < 0)
		return -1;
	return 0;
}
