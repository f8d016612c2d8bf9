/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "exitcodes.h"
#include "log.h"
#include "schema.h"

/* pg_advisory_xact_lock key: "vmops" schema changes */
#define SCHEMA_LOCK_KEY "7366737700"

int vmops_schema_latest(void)
{
	int v = 0;

	for (size_t i = 0; i < vmops_n_migrations; i++)
		if (vmops_migrations[i].version > v)
			v = vmops_migrations[i].version;
	return v;
}

int vmops_schema_version(PGconn *c, int *version, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL;

	r = vmops_db_q(c, e, "SELECT to_regclass('vmops_schema_version') IS NOT NULL");
	if (!r)
		return -1;
	if (strcmp(PQgetvalue(r, 0, 0), "t") != 0) {
		*version = 0;
		return 0;
	}
	PQclear(r);
	r = vmops_db_q(c, e, "SELECT coalesce(max(version), 0) FROM vmops_schema_version");
	if (!r)
		return -1;
	*version = atoi(PQgetvalue(r, 0, 0));
	return 0;
}

int vmops_schema_check(PGconn *c, struct vmops_error *e)
{
	int v, latest = vmops_schema_latest();

	if (vmops_schema_version(c, &v, e) < 0)
		return -1;
	if (v == 0)
		return vmops_err(e, VMOPS_EXIT_SCHEMA,
				 "schema not initialised in this database: run 'vm-fleet init'");
	if (v > latest)
		return vmops_err(e, VMOPS_EXIT_SCHEMA,
				 "schema version %d is newer than this vmops knows (%d): upgrade vmops", v, latest);
	if (v < latest)
		return vmops_err(e, VMOPS_EXIT_SCHEMA,
				 "schema version %d is older than this vmops needs (%d): run 'vm-fleet init' to upgrade",
				 v, latest);
	return 0;
}

struct apply_ctx {
	int from, to;
};

static int apply_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct apply_ctx *a = data;
	int latest = vmops_schema_latest();
	char vb[24];

	if (vmops_db_x(c, e, "SELECT pg_advisory_xact_lock(" SCHEMA_LOCK_KEY ")") < 0 ||
	    vmops_db_x(c, e, "SET LOCAL client_min_messages = warning") < 0 ||
	    vmops_db_x(c, e, "CREATE TABLE IF NOT EXISTS vmops_schema_version ("
			     " version integer PRIMARY KEY,"
			     " name text NOT NULL,"
			     " applied_at timestamptz NOT NULL DEFAULT now())") < 0 ||
	    vmops_schema_version(c, &a->from, e) < 0)
		return -1;
	a->to = a->from;
	if (a->from > latest)
		return vmops_err(e, VMOPS_EXIT_SCHEMA,
				 "schema version %d is newer than this vmops knows (%d): refusing to touch it; upgrade vmops",
				 a->from, latest);
	for (size_t i = 0; i < vmops_n_migrations; i++) {
		const struct vmops_migration *m = &vmops_migrations[i];
		_cleanup_pgresult_ PGresult *r = NULL;

		if (m->version <= a->from)
			continue;
		vmops_info("applying schema migration %s", m->name);
		/* Simple-query protocol: a migration holds several statements. */
		r = PQexec(c, m->sql);
		if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
			const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
			return vmops_err(e, VMOPS_EXIT_FAILURE, "schema migration %s failed: %s",
					 m->name, msg ? msg : PQerrorMessage(c));
		}
		if (vmops_db_x(c, e, "INSERT INTO vmops_schema_version (version, name) VALUES ($1, $2)",
			       vmops_db_ll(vb, m->version), m->name) < 0)
			return -1;
		a->to = m->version;
	}
	return 0;
}

int vmops_schema_apply(PGconn *c, int *from, int *to, struct vmops_error *e)
{
	struct apply_ctx a = { 0, 0 };

	if (vmops_db_tx(c, VMOPS_READ_COMMITTED, apply_tx, &a, e) < 0)
		return -1;
	if (from)
		*from = a.from;
	if (to)
		*to = a.to;
	return 0;
}
