/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "exitcodes.h"

int vmops_verr(struct vmops_error *e, int code, const char *fmt, va_list ap)
{
	if (!e)
		return -1;
	e->code = code;
	e->sqlstate[0] = '\0';
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	return -1;
}

int vmops_err(struct vmops_error *e, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmops_verr(e, code, fmt, ap);
	va_end(ap);
	return -1;
}

int vmops_err_prefix(struct vmops_error *e, const char *fmt, ...)
{
	char prefix[256], old[VMOPS_ERRMSG_MAX];
	va_list ap;

	if (!e)
		return -1;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, e->msg, sizeof(old));
	/* both parts bounded so the total fits; an overlong message is cut */
	snprintf(e->msg, sizeof(e->msg), "%.255s: %.760s", prefix, old);
	if (!e->code)
		e->code = VMOPS_EXIT_FAILURE;
	return -1;
}

void vmops_err_clear(struct vmops_error *e)
{
	if (e) {
		e->code = 0;
		e->msg[0] = '\0';
		e->sqlstate[0] = '\0';
	}
}

const char *vmops_exit_name(int code)
{
	static const char *const names[] = {
		[VMOPS_EXIT_OK] = "ok",
		[VMOPS_EXIT_FAILURE] = "failure",
		[VMOPS_EXIT_USAGE] = "usage",
		[VMOPS_EXIT_FOUND] = "found",
		[VMOPS_EXIT_FIXED] = "fixed",
		[VMOPS_EXIT_DB] = "database-unreachable",
		[VMOPS_EXIT_SCHEMA] = "schema",
		[VMOPS_EXIT_HYPERVISOR] = "hypervisor-unreachable",
		[VMOPS_EXIT_TIMEOUT] = "timeout",
		[VMOPS_EXIT_NOCAPACITY] = "no-capacity",
		[VMOPS_EXIT_CONFLICT] = "conflict",
		[VMOPS_EXIT_NOTFOUND] = "not-found",
		[VMOPS_EXIT_INTERRUPTED] = "interrupted",
		[VMOPS_EXIT_WRONG_HOST] = "wrong-host",
		[VMOPS_EXIT_UNKNOWN] = "unknown",
		[VMOPS_EXIT_PARTIAL] = "partial",
		[VMOPS_EXIT_INTEGRITY] = "integrity",
		[VMOPS_EXIT_UNREACHABLE] = "host-unreachable",
	};
	if (code < 0 || (size_t)code >= sizeof(names) / sizeof(names[0]) || !names[code])
		return "unknown";
	return names[code];
}
