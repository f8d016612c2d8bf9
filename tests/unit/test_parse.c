/* SPDX-License-Identifier: MIT */
#include <criterion/criterion.h>
#include <string.h>

#include "exitcodes.h"
#include "parse.h"

static uint64_t dur_ok(const char *s)
{
	struct vmops_error e = { 0 };
	uint64_t ms = 12345;

	cr_assert_eq(vmops_parse_duration(s, &ms, &e), 0, "'%s' refused: %s", s, e.msg);
	return ms;
}

static void dur_bad(const char *s, const char *needle)
{
	struct vmops_error e = { 0 };
	uint64_t ms = 777;

	cr_assert_eq(vmops_parse_duration(s, &ms, &e), -1, "'%s' accepted", s);
	cr_assert_eq(e.code, VMOPS_EXIT_USAGE);
	cr_assert_eq(ms, 777, "output written on failure");
	cr_assert(strstr(e.msg, needle), "'%s': message '%s' lacks '%s'", s, e.msg, needle);
}

Test(parse, durations)
{
	cr_assert_eq(dur_ok("90s"), 90000);
	cr_assert_eq(dur_ok("45m"), 45 * 60000);
	cr_assert_eq(dur_ok("6h"), 6 * 3600000ULL);
	cr_assert_eq(dur_ok("1h30m"), 90 * 60000);
	cr_assert_eq(dur_ok("250ms"), 250);
	cr_assert_eq(dur_ok("2d"), 2 * 86400000ULL);
	cr_assert_eq(dur_ok("0s"), 0);
	cr_assert_eq(dur_ok("1m1ms"), 60001);
}

Test(parse, bad_durations)
{
	dur_bad("", "empty");
	dur_bad("90", "unit");
	dur_bad("s", "number");
	dur_bad("-5s", "number");
	dur_bad("5 s", "unit");
	dur_bad("5sec", "unit");
	dur_bad("1.5h", "unit");
	dur_bad("5x", "unit");
	dur_bad("99999999999999999999s", "too large");
	dur_bad("18446744073709552h", "too large");
}

Test(parse, sizes)
{
	struct vmops_error e = { 0 };
	uint64_t b;
	static const struct { const char *s; uint64_t v; } ok[] = {
		{ "512M", 512ULL << 20 }, { "2G", 2ULL << 30 }, { "1536KiB", 1536ULL << 10 },
		{ "4096", 4096 }, { "1T", 1ULL << 40 }, { "3gb", 3ULL << 30 }, { "10B", 10 },
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		cr_assert_eq(vmops_parse_size(ok[i].s, &b, &e), 0, "%s: %s", ok[i].s, e.msg);
		cr_assert_eq(b, ok[i].v, "%s", ok[i].s);
	}
	static const char *const bad[] = { "", "G", "2X", "2GG", "-1M", "1.5G", " 1G", "2G ", "99999999999T" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_eq(vmops_parse_size(bad[i], &b, &e), -1, "'%s' accepted", bad[i]);
		cr_assert_eq(e.code, VMOPS_EXIT_USAGE);
		cr_assert(strstr(e.msg, "invalid size"), "%s", e.msg);
	}
}

Test(parse, ints_and_doubles)
{
	struct vmops_error e = { 0 };
	long long n;
	double d;

	cr_assert_eq(vmops_parse_int("128", 1, 128, &n, &e), 0);
	cr_assert_eq(n, 128);
	cr_assert_eq(vmops_parse_int("0", 1, 128, &n, &e), -1);
	cr_assert(strstr(e.msg, "between 1 and 128"), "%s", e.msg);
	cr_assert_eq(vmops_parse_int("12a", 1, 128, &n, &e), -1);
	cr_assert_eq(vmops_parse_int(" 12", 1, 128, &n, &e), -1);
	cr_assert_eq(vmops_parse_int("", 1, 128, &n, &e), -1);
	cr_assert_eq(vmops_parse_double("2.5", 0, 100, &d, &e), 0);
	cr_assert_float_eq(d, 2.5, 1e-9);
	cr_assert_eq(vmops_parse_double("-1", 0, 100, &d, &e), -1);
	cr_assert_eq(vmops_parse_double("nan", 0, 100, &d, &e), -1);
	cr_assert_eq(vmops_parse_double("1e400", 0, 100, &d, &e), -1);
}

Test(parse, format_duration)
{
	char buf[32];

	cr_assert_str_eq(vmops_format_duration(0, buf, sizeof(buf)), "0s");
	cr_assert_str_eq(vmops_format_duration(5400000, buf, sizeof(buf)), "1h30m");
	cr_assert_str_eq(vmops_format_duration(1250, buf, sizeof(buf)), "1s250ms");
}
