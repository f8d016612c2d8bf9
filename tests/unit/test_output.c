/* SPDX-License-Identifier: MIT */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "output.h"

static const struct vmops_column cols[] = {
	{ "name", VMOPS_COL_STRING, 0, 0 },
	{ "count", VMOPS_COL_INT, VMOPS_COL_RIGHT, 0 },
	{ "gbs", VMOPS_COL_NUMBER, VMOPS_COL_RIGHT, 2 },
	{ "ok", VMOPS_COL_BOOL, 0, 0 },
};

static char *render(struct vmops_output *o, bool json)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	cr_assert(f);
	cr_assert_eq(vmops_output_print(o, f, json), 0);
	fclose(f);
	return buf;
}

static struct vmops_output *sample(void)
{
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *t = vmops_output_table(o, "rows", cols, 4);
	struct vmops_section *r;

	vmops_section_add_row(t);
	vmops_set_str(t, 0, "alpha");
	vmops_set_int(t, 1, 7);
	vmops_set_num(t, 2, 1.5);
	vmops_set_bool(t, 3, true);
	vmops_section_add_row(t);
	vmops_set_text(t, 0, "b");
	vmops_set_text(t, 1, "12345");
	vmops_set_text(t, 2, NULL);
	vmops_set_text(t, 3, "f");
	r = vmops_output_record(o, "totals", cols, 4);
	vmops_set_str(r, 0, "all");
	vmops_set_int(r, 1, 9007199254740991LL);
	vmops_set_num(r, 2, 0.125);
	vmops_set_null(r, 3);
	return o;
}

Test(output, text_table_and_record)
{
	struct vmops_output *o = sample();
	char *txt = render(o, false);

	cr_assert_str_eq(txt,
			 "NAME   COUNT   GBS  OK\n"
			 "alpha      7  1.50  yes\n"
			 "b      12345     -  no\n"
			 "\n"
			 "name:  all\n"
			 "count: 9007199254740991\n"
			 "gbs:   0.12\n"
			 "ok:    -\n");
	free(txt);
	vmops_output_free(o);
}

Test(output, json_types_stay_types)
{
	struct vmops_output *o = sample();
	char *txt = render(o, true);
	cJSON *j = cJSON_Parse(txt), *rows, *row, *tot;

	cr_assert(j, "invalid JSON: %s", txt);
	rows = cJSON_GetObjectItem(j, "rows");
	cr_assert(cJSON_IsArray(rows));
	cr_assert_eq(cJSON_GetArraySize(rows), 2);
	row = cJSON_GetArrayItem(rows, 0);
	cr_assert_str_eq(cJSON_GetObjectItem(row, "name")->valuestring, "alpha");
	cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(row, "count")));
	cr_assert_eq(cJSON_GetObjectItem(row, "count")->valueint, 7);
	cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(row, "ok")));
	cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(row, "gbs")));
	cr_assert_float_eq(cJSON_GetObjectItem(row, "gbs")->valuedouble, 1.5, 1e-12);
	/* the second row came in as text (vmops_set_text, as from PQgetvalue):
	 * the column's type decides, not the text */
	row = cJSON_GetArrayItem(rows, 1);
	cr_assert(cJSON_IsString(cJSON_GetObjectItem(row, "name")));
	cr_assert_str_eq(cJSON_GetObjectItem(row, "name")->valuestring, "b");
	cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(row, "count")), "text '12345' in an int column: %s", txt);
	cr_assert_eq(cJSON_GetObjectItem(row, "count")->valueint, 12345);
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(row, "gbs")));
	cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(row, "ok")));
	tot = cJSON_GetObjectItem(j, "totals");
	cr_assert(cJSON_IsObject(tot));
	cr_assert_str_eq(cJSON_GetObjectItem(tot, "name")->valuestring, "all");
	cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(tot, "gbs")));
	cr_assert_float_eq(cJSON_GetObjectItem(tot, "gbs")->valuedouble, 0.125, 1e-12);
	cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(tot, "count")));
	/* integers are printed exactly, not as a 15-digit double */
	cr_assert(strstr(txt, "\"count\":\t9007199254740991,"), "%s", txt);
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(tot, "ok")));
	cJSON_Delete(j);
	free(txt);
	vmops_output_free(o);
}

Test(output, empty_table_prints_header_and_empty_array)
{
	struct vmops_output *o = vmops_output_new();
	char *t, *j;

	vmops_output_table(o, "rows", cols, 4);
	t = render(o, false);
	j = render(o, true);
	cr_assert_str_eq(t, "NAME  COUNT  GBS  OK\n");
	cr_assert(strstr(j, "\"rows\":\t[]"), "%s", j);
	free(t);
	free(j);
	vmops_output_free(o);
}

Test(output, bad_column_and_second_record_row_refused)
{
	struct vmops_output *o = vmops_output_new();
	struct vmops_section *r = vmops_output_record(o, "r", cols, 4);

	cr_assert_eq(vmops_set_int(r, 4, 1), -1);
	cr_assert_eq(vmops_section_add_row(r), -1);
	vmops_output_free(o);
}

Test(output, write_error_is_reported)
{
	struct vmops_output *o = sample();
	FILE *f = fopen("/dev/full", "w");

	cr_assert(f);
	setvbuf(f, NULL, _IONBF, 0);
	cr_assert_eq(vmops_output_print(o, f, false), -1);
	fclose(f);
	vmops_output_free(o);
}
