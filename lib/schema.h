/* SPDX-License-Identifier: MIT */
/*
 * The fleet schema: versioned SQL migrations (lib/sql/NNN_name.sql)
 * compiled into the library.  `vm-fleet init` applies what is missing;
 * every other program checks the version first and refuses a schema that
 * is missing, older, or newer than it knows.
 */
#ifndef VMOPS_SCHEMA_H
#define VMOPS_SCHEMA_H

#include <libpq-fe.h>
#include <stddef.h>

#include "error.h"

struct vmops_migration {
	int version;
	const char *name;
	const char *sql;
};

extern const struct vmops_migration vmops_migrations[];
extern const size_t vmops_n_migrations;

/* Highest schema version this binary knows. */
int vmops_schema_latest(void);

/* Installed version: 0 when vmops was never initialised here. */
int vmops_schema_version(PGconn *c, int *version, struct vmops_error *e);

/*
 * Refuse to work on a schema other than the latest: missing (run init),
 * older (run init to upgrade) or newer (upgrade vmops).  VMOPS_EXIT_SCHEMA.
 */
int vmops_schema_check(PGconn *c, struct vmops_error *e);

/*
 * Apply the missing migrations, each in the same transaction as its version
 * row, serialised by an advisory lock so concurrent inits are safe.  A
 * newer schema is refused.  `from`/`to` report the versions before and after.
 */
int vmops_schema_apply(PGconn *c, int *from, int *to, struct vmops_error *e);

#endif
