/* SPDX-License-Identifier: MIT */
/* The fault hook (see fault.h). */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault.h"
#include "interrupt.h"
#include "log.h"

int vmops_fault_state;

static char fault_phase[32];
static enum { ACT_NONE, ACT_EXIT, ACT_KILL, ACT_STOP, ACT_SIGINT, ACT_CUT_BEFORE, ACT_CUT_AFTER } fault_action;
static bool commit_fault_fired;

static void fault_read(void)
{
	const char *v = getenv("VMOPS_FAULT");
	const char *colon = v ? strchr(v, ':') : NULL;

	vmops_fault_state = 1;
	if (!colon || colon == v || (size_t)(colon - v) >= sizeof(fault_phase))
		return;
	if (!strcmp(colon + 1, "exit"))
		fault_action = ACT_EXIT;
	else if (!strcmp(colon + 1, "sigkill-self"))
		fault_action = ACT_KILL;
	else if (!strcmp(colon + 1, "stop"))
		fault_action = ACT_STOP;
	else if (!strcmp(colon + 1, "sigint"))
		fault_action = ACT_SIGINT;
	else if (!strcmp(colon + 1, "cut-before-commit"))
		fault_action = ACT_CUT_BEFORE;
	else if (!strcmp(colon + 1, "cut-after-commit"))
		fault_action = ACT_CUT_AFTER;
	else
		return;
	memcpy(fault_phase, v, (size_t)(colon - v));
	fault_phase[colon - v] = '\0';
	vmops_fault_state = 2;
}

void vmops_fault_check_slow(const char *phase)
{
	if (vmops_fault_state == 0)
		fault_read();
	if (vmops_fault_state != 2 || strcmp(phase, fault_phase) != 0 ||
	    fault_action == ACT_CUT_BEFORE || fault_action == ACT_CUT_AFTER)
		return;
	vmops_debug("VMOPS_FAULT: %s at phase %s", fault_action == ACT_EXIT ? "exit" :
		    fault_action == ACT_KILL ? "sigkill-self" : fault_action == ACT_SIGINT ? "sigint" : "stop", phase);
	switch (fault_action) {
	case ACT_EXIT:
		_exit(1);
	case ACT_KILL:
		raise(SIGKILL);
		break;
	case ACT_STOP:
		raise(SIGSTOP);
		break;
	case ACT_SIGINT:
		/* an operator's Ctrl-C: past the window in which a repeat counts as the same request */
		usleep((VMOPS_INTERRUPT_REPEAT_MS + 200) * 1000);
		raise(SIGINT);
		break;
	case ACT_NONE:
	case ACT_CUT_BEFORE:
	case ACT_CUT_AFTER:
		break;
	}
}

enum vmops_fault_commit vmops_fault_commit(const char *phase)
{
	if (vmops_fault_state == 0)
		fault_read();
	if (vmops_fault_state != 2 || commit_fault_fired || strcmp(phase, fault_phase) != 0 ||
	    (fault_action != ACT_CUT_BEFORE && fault_action != ACT_CUT_AFTER))
		return VMOPS_FAULT_COMMIT_NONE;
	commit_fault_fired = true;
	vmops_debug("VMOPS_FAULT: cut the connection %s the COMMIT into phase %s",
		    fault_action == ACT_CUT_BEFORE ? "before" : "after", phase);
	return fault_action == ACT_CUT_BEFORE ? VMOPS_FAULT_COMMIT_CUT_BEFORE
					      : VMOPS_FAULT_COMMIT_CUT_AFTER;
}
