/* SPDX-License-Identifier: MIT */
/*
 * Error context.  The library never prints and never exits: a failing call
 * returns -1 (or NULL) and fills a struct vmops_error that the program prints.
 */
#ifndef VMOPS_ERROR_H
#define VMOPS_ERROR_H

#include <stdarg.h>
#include <stddef.h>

#define VMOPS_ERRMSG_MAX 1024

struct vmops_error {
	int code;                      /* enum vmops_exit: what the program should exit with */
	char msg[VMOPS_ERRMSG_MAX];    /* lowercase, no trailing period, names what failed */
	char sqlstate[6];              /* SQLSTATE when a database statement failed, else "" */
};

/* Set the error; always returns -1 so callers can `return vmops_err(...)`. */
int vmops_err(struct vmops_error *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int vmops_verr(struct vmops_error *e, int code, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));
/* Prepend "prefix: " to the message, keeping the code.  Returns -1. */
int vmops_err_prefix(struct vmops_error *e, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void vmops_err_clear(struct vmops_error *e);

#endif
