/* SPDX-License-Identifier: MIT */
/*
 * Logging: the library reports progress and diagnostics through a callback
 * that the program installs (like kmod_set_log_fn).  Without one, nothing is
 * written anywhere.
 */
#ifndef VMOPS_LOG_H
#define VMOPS_LOG_H

#include <stdarg.h>

enum vmops_log_level {
	VMOPS_LOG_ERR = 3,
	VMOPS_LOG_WARNING = 4,
	VMOPS_LOG_NOTICE = 5,
	VMOPS_LOG_INFO = 6,
	VMOPS_LOG_DEBUG = 7,
};

typedef void (*vmops_log_fn)(void *data, int level, const char *fmt, va_list ap);

void vmops_set_log_fn(vmops_log_fn fn, void *data);
void vmops_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define vmops_warn(...)  vmops_log(VMOPS_LOG_WARNING, __VA_ARGS__)
#define vmops_info(...)  vmops_log(VMOPS_LOG_INFO, __VA_ARGS__)
#define vmops_debug(...) vmops_log(VMOPS_LOG_DEBUG, __VA_ARGS__)

#endif
