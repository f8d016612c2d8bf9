/* SPDX-License-Identifier: MIT */
/*
 * Database access.  One owner per connection; every PGresult cleared on every
 * path (use _cleanup_pgresult_).  Statements are always parameterised.
 */
#ifndef VMOPS_DB_H
#define VMOPS_DB_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "error.h"

/*
 * Connect.  `conninfo` is a libpq keyword/value string or URI; NULL or ""
 * means libpq's own environment (PGHOST, PGDATABASE, PGSERVICE, ...).
 * `program` becomes the fallback application_name.  A malformed conninfo is
 * a usage error; a failed connection is VMOPS_EXIT_DB with a message that
 * names host/socket, port and database, never a password.
 */
PGconn *vmops_db_connect(const char *conninfo, const char *program, struct vmops_error *e);

/* "host=/tmp/x port=5432 dbname=fleet": where a connection points, no secrets. */
const char *vmops_db_describe(PGconn *c, char *buf, size_t len);

/*
 * Copy `in` to `out` with every password removed: password=... values in
 * keyword/value strings and the password part of postgresql:// URIs.
 */
void vmops_db_redact(const char *in, char *out, size_t len);

/*
 * Run a parameterised statement.  Returns the result (TUPLES_OK/COMMAND_OK)
 * or NULL with `e` filled: message from the server's primary message,
 * e->sqlstate set, e->code mapped (23xxx and VOxxx: CONFLICT; 40001/40P01:
 * FAILURE, retried by vmops_db_tx; lost connection: DB; 42P01: SCHEMA).
 */
PGresult *vmops_db_query(PGconn *c, struct vmops_error *e, const char *sql,
			 int nparams, const char *const *params);

/* vmops_db_q(conn, err, sql, "param1", "param2", ...) */
#define vmops_db_q(c, e, sql, ...) \
	vmops_db_query((c), (e), (sql), \
		       (int)(sizeof((const char *[]){ NULL, ##__VA_ARGS__ }) / sizeof(const char *)) - 1, \
		       ((const char *const[]){ NULL, ##__VA_ARGS__ }) + 1)

/*
 * Prepare `sql` as the named statement `name` on this connection, for
 * vmops_db_query_prepared; one of that name already there is kept (the
 * caller names one text by one name).  Outside a transaction: a failure
 * inside one would abort it.
 */
int vmops_db_prepare(PGconn *c, struct vmops_error *e, const char *name, const char *sql);

/* vmops_db_query for a statement made by vmops_db_prepare. */
PGresult *vmops_db_query_prepared(PGconn *c, struct vmops_error *e, const char *name,
				  int nparams, const char *const *params);
#define vmops_db_qp(c, e, name, ...) \
	vmops_db_query_prepared((c), (e), (name), \
				(int)(sizeof((const char *[]){ NULL, ##__VA_ARGS__ }) / sizeof(const char *)) - 1, \
				((const char *const[]){ NULL, ##__VA_ARGS__ }) + 1)

/* Run a statement whose result is not needed. */
int vmops_db_exec(PGconn *c, struct vmops_error *e, const char *sql, int nparams,
		  const char *const *params);
#define vmops_db_x(c, e, sql, ...) \
	vmops_db_exec((c), (e), (sql), \
		      (int)(sizeof((const char *[]){ NULL, ##__VA_ARGS__ }) / sizeof(const char *)) - 1, \
		      ((const char *const[]){ NULL, ##__VA_ARGS__ }) + 1)

/*
 * Statements on several connections at once, each connection's in the
 * order given (one in flight per connection).  Returns 0 when every one
 * succeeded, each job's `result` set (the caller clears them); else -1 with
 * the first failure in `e`, after every statement already sent has
 * finished (results of those that succeeded are set too).  `types` may be
 * NULL (the server infers them) or give one type OID per parameter.
 */
#define VMOPS_DB_JOBS_MAX 16
enum vmops_db_job_state { VMOPS_DB_JOB_WAITING, VMOPS_DB_JOB_RUNNING, VMOPS_DB_JOB_DONE };
struct vmops_db_job {
	PGconn *c;
	const char *sql;
	int nparams;
	const Oid *types;
	const char *const *params;
	PGresult *result;
	enum vmops_db_job_state state_;  /* vmops_db_query_all's own */
};
int vmops_db_query_all(struct vmops_db_job *jobs, size_t n, struct vmops_error *e);

/* Another session to the server, database and user of `c`, set up as
 * vmops_db_connect does (errors likewise). */
PGconn *vmops_db_connect_again(PGconn *c, struct vmops_error *e);

enum vmops_isolation {
	VMOPS_READ_COMMITTED,
	VMOPS_REPEATABLE_READ,
	VMOPS_SERIALIZABLE,
};

typedef int (*vmops_tx_fn)(PGconn *c, void *data, struct vmops_error *e);

/*
 * Run fn inside BEGIN ... COMMIT.  fn returning -1 rolls back.  A
 * serialization failure or deadlock (in fn or at COMMIT) rolls back and runs
 * fn again, up to 5 attempts with a short randomised backoff; fn must be
 * safe to re-run (reset its outputs at its start).
 */
int vmops_db_tx(PGconn *c, enum vmops_isolation iso, vmops_tx_fn fn, void *data,
		struct vmops_error *e);

/* Random 0..max-1 ms, different per process: backoff for contended retries. */
unsigned vmops_db_jitter_ms(unsigned max);

/* Text of an integer for a query parameter. */
const char *vmops_db_ll(char buf[static 24], long long v);

/* Value of a column by name in row r; NULL for SQL NULL or a missing column. */
const char *vmops_db_get(const PGresult *r, int row, const char *col);
long long vmops_db_get_ll(const PGresult *r, int row, const char *col, long long dflt);

/* Who is acting, for audit rows: "user@host". */
const char *vmops_db_actor(void);

static inline void vmops_pgresult_clear(PGresult **r) { if (*r) PQclear(*r); }
static inline void vmops_pgconn_finish(PGconn **c) { if (*c) PQfinish(*c); }
#define _cleanup_pgresult_ __attribute__((cleanup(vmops_pgresult_clear)))
#define _cleanup_pgconn_   __attribute__((cleanup(vmops_pgconn_finish)))

#endif
