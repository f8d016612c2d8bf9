/* SPDX-License-Identifier: MIT */
/* Strict parsers for the values operators type: durations, sizes, counts. */
#ifndef VMOPS_PARSE_H
#define VMOPS_PARSE_H

#include <stdint.h>
#include "error.h"

/*
 * Duration: a non-negative integer followed by a unit, one or more parts:
 * "90s", "45m", "6h", "1h30m", "250ms", "2d".  A bare number is refused
 * (is "90" seconds or milliseconds?).  Result in milliseconds.
 */
int vmops_parse_duration(const char *s, uint64_t *ms, struct vmops_error *e);

/*
 * Size: an integer with an optional binary suffix K, M, G, T (powers of
 * 1024; "KiB"/"MB" style suffixes accepted too, all binary); a bare number
 * is bytes.  "512M", "2G", "1536KiB".  Result in bytes.
 */
int vmops_parse_size(const char *s, uint64_t *bytes, struct vmops_error *e);

/* Integer in [min, max], decimal only, whole string. */
int vmops_parse_int(const char *s, long long min, long long max, long long *out,
		    struct vmops_error *e);

/* Non-negative decimal number (e.g. a percentage), whole string. */
int vmops_parse_double(const char *s, double min, double max, double *out,
		       struct vmops_error *e);

/* Format milliseconds as "1h30m", "45s", "250ms" into buf. */
const char *vmops_format_duration(uint64_t ms, char *buf, size_t len);

#endif
