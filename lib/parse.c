/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "exitcodes.h"
#include "parse.h"

static int parse_u64(const char **p, uint64_t *out)
{
	uint64_t v = 0;
	const char *s = *p;

	if (!isdigit((unsigned char)*s))
		return -1;
	while (isdigit((unsigned char)*s)) {
		unsigned d = (unsigned)(*s - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -2;
		v = v * 10 + d;
		s++;
	}
	*p = s;
	*out = v;
	return 0;
}

int vmops_parse_duration(const char *str, uint64_t *ms, struct vmops_error *e)
{
	static const struct { const char *unit; uint64_t mult; } units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
	};
	const char *s = str;
	uint64_t total = 0;
	int parts = 0;

	if (!s || !*s)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid duration '': empty");
	while (*s) {
		uint64_t n, mult = 0;
		size_t best = 0;
		int r = parse_u64(&s, &n);

		if (r == -2)
			return vmops_err(e, VMOPS_EXIT_USAGE, "invalid duration '%s': too large", str);
		if (r < 0)
			return vmops_err(e, VMOPS_EXIT_USAGE,
					 "invalid duration '%s': expected a number with a unit (ms, s, m, h, d), e.g. 90s or 1h30m", str);
		for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
			size_t l = strlen(units[i].unit);
			if (strncmp(s, units[i].unit, l) == 0 && l > best &&
			    !isalpha((unsigned char)s[l])) {
				best = l;
				mult = units[i].mult;
			}
		}
		if (!best)
			return vmops_err(e, VMOPS_EXIT_USAGE,
					 "invalid duration '%s': missing or unknown unit (use ms, s, m, h or d)", str);
		s += best;
		if (n > (UINT64_MAX - total) / mult)
			return vmops_err(e, VMOPS_EXIT_USAGE, "invalid duration '%s': too large", str);
		total += n * mult;
		parts++;
	}
	*ms = total;
	return 0;
}

int vmops_parse_size(const char *str, uint64_t *bytes, struct vmops_error *e)
{
	const char *s = str;
	uint64_t n, mult = 1;
	int r;

	if (!s || !*s)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid size '': empty");
	r = parse_u64(&s, &n);
	if (r == -2)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid size '%s': too large", str);
	if (r < 0)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid size '%s': expected a number with an optional K, M, G or T suffix", str);
	if (*s) {
		switch (toupper((unsigned char)*s)) {
		case 'K': mult = 1ULL << 10; break;
		case 'M': mult = 1ULL << 20; break;
		case 'G': mult = 1ULL << 30; break;
		case 'T': mult = 1ULL << 40; break;
		case 'B': mult = 1; break;
		default:
			return vmops_err(e, VMOPS_EXIT_USAGE, "invalid size '%s': unknown suffix '%s'", str, s);
		}
		s++;
		/* accept K, KB, KiB (all binary), any case */
		if (mult > 1 && (strcasecmp(s, "iB") == 0 || strcasecmp(s, "B") == 0))
			s += strlen(s);
		if (*s)
			return vmops_err(e, VMOPS_EXIT_USAGE, "invalid size '%s': trailing characters '%s'", str, s);
	}
	if (n > UINT64_MAX / mult)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid size '%s': too large", str);
	*bytes = n * mult;
	return 0;
}

int vmops_parse_int(const char *s, long long min, long long max, long long *out,
		    struct vmops_error *e)
{
	char *end;
	long long v;

	if (!s || !*s)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid number '': empty");
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end || isspace((unsigned char)*s))
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid number '%s'", s);
	if (v < min || v > max)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid number '%s': must be between %lld and %lld", s, min, max);
	*out = v;
	return 0;
}

int vmops_parse_double(const char *s, double min, double max, double *out,
		       struct vmops_error *e)
{
	char *end;
	double v;

	if (!s || !*s)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid number '': empty");
	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || isspace((unsigned char)*s) || !isfinite(v))
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid number '%s'", s);
	if (v < min || v > max)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid number '%s': must be between %g and %g", s, min, max);
	*out = v;
	return 0;
}

const char *vmops_format_duration(uint64_t ms, char *buf, size_t len)
{
	uint64_t h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, r = ms % 1000;
	size_t o = 0;

	buf[0] = '\0';
	if (ms == 0) {
		snprintf(buf, len, "0s");
		return buf;
	}
	if (h && o < len)
		o += (size_t)snprintf(buf + o, len - o, "%" PRIu64 "h", h);
	if (m && o < len)
		o += (size_t)snprintf(buf + o, len - o, "%" PRIu64 "m", m);
	if (s && o < len)
		o += (size_t)snprintf(buf + o, len - o, "%" PRIu64 "s", s);
	if (r && o < len)
		snprintf(buf + o, len - o, "%" PRIu64 "ms", r);
	return buf;
}
