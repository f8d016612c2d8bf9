/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "output.h"

struct cell {
	bool set;
	char *s;
	long long i;
	double d;
	bool b;
};

struct vmops_section {
	char *name;
	bool record;
	const struct vmops_column *cols;
	size_t ncols;
	struct cell *cells;    /* rows * ncols */
	size_t rows, cap;
	struct vmops_section *next;
};

struct vmops_output {
	struct vmops_section *first, *last;
};

struct vmops_output *vmops_output_new(void)
{
	return calloc(1, sizeof(struct vmops_output));
}

static void section_free(struct vmops_section *s)
{
	for (size_t i = 0; i < s->rows * s->ncols; i++)
		free(s->cells[i].s);
	free(s->cells);
	free(s->name);
	free(s);
}

void vmops_output_free(struct vmops_output *o)
{
	if (!o)
		return;
	for (struct vmops_section *s = o->first, *n; s; s = n) {
		n = s->next;
		section_free(s);
	}
	free(o);
}

static struct vmops_section *add_section(struct vmops_output *o, const char *name,
					 const struct vmops_column *cols, size_t ncols, bool record)
{
	struct vmops_section *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->name = strdup(name);
	if (!s->name) {
		free(s);
		return NULL;
	}
	s->cols = cols;
	s->ncols = ncols;
	s->record = record;
	if (o->last)
		o->last->next = s;
	else
		o->first = s;
	o->last = s;
	if (record && vmops_section_add_row(s) < 0)
		return NULL;
	return s;
}

struct vmops_section *vmops_output_table(struct vmops_output *o, const char *name,
					 const struct vmops_column *cols, size_t ncols)
{
	return add_section(o, name, cols, ncols, false);
}

struct vmops_section *vmops_output_record(struct vmops_output *o, const char *name,
					  const struct vmops_column *cols, size_t ncols)
{
	return add_section(o, name, cols, ncols, true);
}

int vmops_section_add_row(struct vmops_section *s)
{
	if (s->record && s->rows == 1)
		return -1;
	if (s->rows == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 16;
		struct cell *c = realloc(s->cells, ncap * s->ncols * sizeof(*c));
		if (!c)
			return -1;
		s->cells = c;
		s->cap = ncap;
	}
	memset(&s->cells[s->rows * s->ncols], 0, s->ncols * sizeof(struct cell));
	s->rows++;
	return 0;
}

size_t vmops_section_rows(const struct vmops_section *s)
{
	return s->rows;
}

static struct cell *cur(struct vmops_section *s, size_t col)
{
	struct cell *c;

	if (!s->rows || col >= s->ncols)
		return NULL;
	c = &s->cells[(s->rows - 1) * s->ncols + col];
	free(c->s);
	memset(c, 0, sizeof(*c));
	return c;
}

int vmops_set_str(struct vmops_section *s, size_t col, const char *v)
{
	struct cell *c = cur(s, col);

	if (!c)
		return -1;
	if (!v)
		return 0;
	c->s = strdup(v);
	if (!c->s)
		return -1;
	c->set = true;
	return 0;
}

int vmops_set_int(struct vmops_section *s, size_t col, long long v)
{
	struct cell *c = cur(s, col);

	if (!c)
		return -1;
	c->i = v;
	c->d = (double)v;
	c->set = true;
	return 0;
}

int vmops_set_num(struct vmops_section *s, size_t col, double v)
{
	struct cell *c = cur(s, col);

	if (!c)
		return -1;
	c->d = v;
	c->i = (long long)v;
	c->set = true;
	return 0;
}

int vmops_set_bool(struct vmops_section *s, size_t col, bool v)
{
	struct cell *c = cur(s, col);

	if (!c)
		return -1;
	c->b = v;
	c->set = true;
	return 0;
}

int vmops_set_null(struct vmops_section *s, size_t col)
{
	return cur(s, col) ? 0 : -1;
}

int vmops_set_text(struct vmops_section *s, size_t col, const char *v)
{
	if (col >= s->ncols)
		return -1;
	if (!v)
		return vmops_set_null(s, col);
	switch (s->cols[col].type) {
	case VMOPS_COL_INT:
		return vmops_set_int(s, col, strtoll(v, NULL, 10));
	case VMOPS_COL_NUMBER:
		return vmops_set_num(s, col, strtod(v, NULL));
	case VMOPS_COL_BOOL:
		return vmops_set_bool(s, col, v[0] == 't' || v[0] == '1');
	case VMOPS_COL_STRING:
		break;
	}
	return vmops_set_str(s, col, v);
}

static char *cell_text(const struct vmops_column *col, const struct cell *c)
{
	char buf[64];

	if (!c->set)
		return strdup("-");
	switch (col->type) {
	case VMOPS_COL_STRING:
		return strdup(c->s);
	case VMOPS_COL_INT:
		snprintf(buf, sizeof(buf), "%lld", c->i);
		break;
	case VMOPS_COL_NUMBER:
		snprintf(buf, sizeof(buf), "%.*f", col->prec, c->d);
		break;
	case VMOPS_COL_BOOL:
		snprintf(buf, sizeof(buf), "%s", c->b ? "yes" : "no");
		break;
	}
	return strdup(buf);
}

static cJSON *cell_json(const struct vmops_column *col, const struct cell *c)
{
	if (!c->set)
		return cJSON_CreateNull();
	switch (col->type) {
	case VMOPS_COL_STRING:
		return cJSON_CreateString(c->s);
	case VMOPS_COL_INT: {
		/* cJSON prints doubles with 15 digits: emit integers exactly. */
		char buf[24];
		snprintf(buf, sizeof(buf), "%lld", c->i);
		return cJSON_CreateRaw(buf);
	}
	case VMOPS_COL_NUMBER:
		return cJSON_CreateNumber(c->d);
	case VMOPS_COL_BOOL:
		return cJSON_CreateBool(c->b);
	}
	return cJSON_CreateNull();
}

static int print_json(const struct vmops_output *o, FILE *f)
{
	cJSON *root = cJSON_CreateObject();
	char *txt;
	int rc = 0;

	if (!root)
		return -1;
	for (const struct vmops_section *s = o->first; s; s = s->next) {
		cJSON *sec = s->record ? cJSON_CreateObject() : cJSON_CreateArray();
		if (!sec)
			goto oom;
		cJSON_AddItemToObject(root, s->name, sec);
		for (size_t r = 0; r < s->rows; r++) {
			cJSON *obj = s->record ? sec : cJSON_CreateObject();
			if (!obj)
				goto oom;
			if (!s->record)
				cJSON_AddItemToArray(sec, obj);
			for (size_t c = 0; c < s->ncols; c++) {
				cJSON *v = cell_json(&s->cols[c], &s->cells[r * s->ncols + c]);
				if (!v)
					goto oom;
				cJSON_AddItemToObject(obj, s->cols[c].name, v);
			}
		}
	}
	txt = cJSON_Print(root);
	if (!txt)
		goto oom;
	if (fputs(txt, f) == EOF || fputc('\n', f) == EOF)
		rc = -1;
	cJSON_free(txt);
	cJSON_Delete(root);
	return rc;
oom:
	cJSON_Delete(root);
	errno = ENOMEM;
	return -1;
}

static void upper(char *dst, const char *src, size_t len)
{
	size_t i;

	for (i = 0; src[i] && i + 1 < len; i++)
		dst[i] = (char)toupper((unsigned char)src[i]);
	dst[i] = '\0';
}

static void print_cell(FILE *f, const struct vmops_section *s, const size_t *w,
		       size_t c, const char *t)
{
	bool last = c + 1 == s->ncols, right = s->cols[c].flags & VMOPS_COL_RIGHT;

	if (right)
		fprintf(f, "%*s%s", (int)w[c], t, last ? "\n" : "  ");
	else if (last)
		fprintf(f, "%s\n", t);
	else
		fprintf(f, "%-*s  ", (int)w[c], t);
}

static int print_table(const struct vmops_section *s, FILE *f)
{
	size_t n = s->rows * s->ncols;
	char **txt = calloc(n ? n : 1, sizeof(char *));
	size_t *w = calloc(s->ncols, sizeof(size_t));
	char hdr[128];
	int rc = 0;

	if (!txt || !w) {
		free(txt);
		free(w);
		return -1;
	}
	for (size_t c = 0; c < s->ncols; c++)
		w[c] = strlen(s->cols[c].name);
	for (size_t i = 0; i < n; i++) {
		txt[i] = cell_text(&s->cols[i % s->ncols], &s->cells[i]);
		if (!txt[i]) {
			rc = -1;
			goto out;
		}
		if (strlen(txt[i]) > w[i % s->ncols])
			w[i % s->ncols] = strlen(txt[i]);
	}
	for (size_t c = 0; c < s->ncols; c++) {
		upper(hdr, s->cols[c].name, sizeof(hdr));
		print_cell(f, s, w, c, hdr);
	}
	for (size_t r = 0; r < s->rows; r++)
		for (size_t c = 0; c < s->ncols; c++)
			print_cell(f, s, w, c, txt[r * s->ncols + c]);
out:
	for (size_t i = 0; i < n; i++)
		free(txt[i]);
	free(txt);
	free(w);
	return rc;
}

static int print_record(const struct vmops_section *s, FILE *f)
{
	size_t w = 0;

	for (size_t c = 0; c < s->ncols; c++)
		if (strlen(s->cols[c].name) > w)
			w = strlen(s->cols[c].name);
	for (size_t c = 0; c < s->ncols; c++) {
		char *t = cell_text(&s->cols[c], &s->cells[c]);
		if (!t)
			return -1;
		fprintf(f, "%s:%*s %s\n", s->cols[c].name, (int)(w - strlen(s->cols[c].name)), "", t);
		free(t);
	}
	return 0;
}

int vmops_output_print(const struct vmops_output *o, FILE *f, bool json)
{
	if (json) {
		if (print_json(o, f) < 0)
			return -1;
	} else {
		for (const struct vmops_section *s = o->first; s; s = s->next) {
			if (s != o->first)
				fputc('\n', f);
			if ((s->record ? print_record(s, f) : print_table(s, f)) < 0)
				return -1;
		}
	}
	return ferror(f) ? -1 : 0;
}
