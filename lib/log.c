/* SPDX-License-Identifier: MIT */
#include "log.h"

static vmops_log_fn log_fn;
static void *log_data;

void vmops_set_log_fn(vmops_log_fn fn, void *data)
{
	log_fn = fn;
	log_data = data;
}

void vmops_log(int level, const char *fmt, ...)
{
	va_list ap;

	if (!log_fn)
		return;
	va_start(ap, fmt);
	log_fn(log_data, level, fmt, ap);
	va_end(ap);
}
