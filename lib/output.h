/* SPDX-License-Identifier: MIT */
/*
 * Output: a program declares its columns once (name + JSON type) and fills
 * rows; the same declaration renders an aligned text table or JSON.
 * Programs never call cJSON for output themselves.
 *
 * An output document holds named sections, each a table (many rows) or a
 * record (one row, printed as "name: value" lines).  JSON is one object with
 * one member per section: tables are arrays of objects, records objects.
 * Numbers stay numbers, NULL stays null.
 */
#ifndef VMOPS_OUTPUT_H
#define VMOPS_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum vmops_coltype {
	VMOPS_COL_STRING,
	VMOPS_COL_INT,     /* 64-bit integer */
	VMOPS_COL_NUMBER,  /* double; text shows `prec` decimals */
	VMOPS_COL_BOOL,
};

#define VMOPS_COL_RIGHT 0x1u  /* right-align in text */

struct vmops_column {
	const char *name;      /* lowercase JSON key; text header is uppercased */
	enum vmops_coltype type;
	unsigned flags;
	int prec;              /* decimals for VMOPS_COL_NUMBER in text */
};

struct vmops_output;
struct vmops_section;

struct vmops_output *vmops_output_new(void);
void vmops_output_free(struct vmops_output *o);

/* A table section; `cols` must outlive the output (declare it static). */
struct vmops_section *vmops_output_table(struct vmops_output *o, const char *name,
					 const struct vmops_column *cols, size_t ncols);
/* A record section: exactly one row, which is created now. */
struct vmops_section *vmops_output_record(struct vmops_output *o, const char *name,
					  const struct vmops_column *cols, size_t ncols);

/* Start a new row in a table (records already have theirs). */
int vmops_section_add_row(struct vmops_section *s);
size_t vmops_section_rows(const struct vmops_section *s);

/* Set a cell of the last row, by column index; -1 on a bad index or type. */
int vmops_set_str(struct vmops_section *s, size_t col, const char *v); /* NULL → null */
int vmops_set_int(struct vmops_section *s, size_t col, long long v);
int vmops_set_num(struct vmops_section *s, size_t col, double v);
int vmops_set_bool(struct vmops_section *s, size_t col, bool v);
int vmops_set_null(struct vmops_section *s, size_t col);
/* Set from text as returned by libpq (NULL → null), converting per type. */
int vmops_set_text(struct vmops_section *s, size_t col, const char *v);

/*
 * Render to `f`.  Returns 0, or -1 if writing failed (check ferror/fflush
 * too: a late write error on stdout is an error).
 */
int vmops_output_print(const struct vmops_output *o, FILE *f, bool json);

#endif
