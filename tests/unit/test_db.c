/* SPDX-License-Identifier: MIT */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "exitcodes.h"
#include "testlib.h"

static char ci[512];

static void redacts(const char *in, const char *want)
{
	char out[512];

	vmops_db_redact(in, out, sizeof(out));
	cr_assert_str_eq(out, want, "redact(%s)", in);
	cr_assert_null(strstr(out, "s3cret"), "%s", out);
}

Test(db, redaction)
{
	redacts("host=/tmp password=s3cret dbname=x", "host=/tmp password=*** dbname=x");
	redacts("password = 's3 cr\\'et' user=a", "password=*** user=a");
	redacts("PASSWORD=s3cret", "password=***");
	redacts("postgresql://bob:s3cret@db.example/fleet", "postgresql://bob:***@db.example/fleet");
	redacts("postgres://bob@h/fleet?password=s3cret&sslmode=require",
		"postgres://bob@h/fleet?password=***&sslmode=require");
	redacts("host=a passwordfile=x", "host=a passwordfile=x");
}

Test(db, unreachable_names_socket_never_password)
{
	struct vmops_error e = { 0 };
	PGconn *c = vmops_db_connect("host=/nonexistent-vmops port=5999 dbname=fleet password=s3cret",
				     "test", &e);

	cr_assert_null(c);
	cr_assert_eq(e.code, VMOPS_EXIT_DB);
	cr_assert(strstr(e.msg, "/nonexistent-vmops"), "%s", e.msg);
	cr_assert(strstr(e.msg, "5999"), "%s", e.msg);
	cr_assert_null(strstr(e.msg, "s3cret"), "%s", e.msg);
	cr_assert_null(strchr(e.msg, '\n'), "%s", e.msg);
}

Test(db, malformed_conninfo_is_usage_error)
{
	struct vmops_error e = { 0 };
	PGconn *c = vmops_db_connect("host=/x password=s3cret bogus_keyword=1", "test", &e);

	cr_assert_null(c);
	cr_assert_eq(e.code, VMOPS_EXIT_USAGE);
	cr_assert(strstr(e.msg, "bogus_keyword"), "%s", e.msg);
	cr_assert_null(strstr(e.msg, "s3cret"), "%s", e.msg);
}

Test(db, programs_report_unreachable_database)
{
	struct testrun r;

	TESTRUN(&r, "vm-fleet", "--db", "postgresql://bob:s3cret@/fleet?host=/nonexistent-vmops&port=5999",
		"worker", "list");
	cr_assert_eq(r.status, VMOPS_EXIT_DB, "exit %d: %s", r.status, r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	cr_assert(strstr(r.err, "/nonexistent-vmops"), "%s", r.err);
	cr_assert_null(strstr(r.err, "s3cret"), "%s", r.err);
	cr_assert_str_eq(r.out, "");
	testrun_free(&r);
}

struct flaky {
	int calls, fail_times;
	const char *state;
};

static int flaky_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct flaky *f = data;
	char sql[256];

	f->calls++;
	if (vmops_db_x(c, e, "INSERT INTO t (v) VALUES (1)") < 0)
		return -1;
	if (f->calls <= f->fail_times) {
		snprintf(sql, sizeof(sql), "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '%s'; END $$",
			 f->state);
		return vmops_db_x(c, e, sql);
	}
	return 0;
}

Test(db, tx_retries_serialization_failures_and_deadlocks)
{
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	struct vmops_error e = { 0 };
	struct flaky f = { 0, 2, "40001" }, g = { 0, 1, "40P01" };

	PQclear(testdb_exec(c, "CREATE TABLE t (v int)"));
	cr_assert_eq(vmops_db_tx(c, VMOPS_SERIALIZABLE, flaky_tx, &f, &e), 0, "%s", e.msg);
	cr_assert_eq(f.calls, 3);
	cr_assert_eq(vmops_db_tx(c, VMOPS_READ_COMMITTED, flaky_tx, &g, &e), 0, "%s", e.msg);
	cr_assert_eq(g.calls, 2);
	/* rolled-back attempts left nothing behind */
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM t"), 2);
	PQfinish(c);
}

Test(db, tx_gives_up_and_rolls_back)
{
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	struct vmops_error e = { 0 };
	struct flaky always = { 0, 100, "40001" }, other = { 0, 100, "23505" };

	PQclear(testdb_exec(c, "CREATE TABLE t (v int)"));
	cr_assert_eq(vmops_db_tx(c, VMOPS_SERIALIZABLE, flaky_tx, &always, &e), -1);
	cr_assert_eq(always.calls, 5);
	cr_assert_str_eq(e.sqlstate, "40001");
	cr_assert_eq(vmops_db_tx(c, VMOPS_READ_COMMITTED, flaky_tx, &other, &e), -1);
	cr_assert_eq(other.calls, 1, "a constraint violation is not retried");
	cr_assert_eq(e.code, VMOPS_EXIT_CONFLICT);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM t"), 0);
	/* the connection is usable afterwards */
	cr_assert_eq(testdb_ll(c, "SELECT 42"), 42);
	PQfinish(c);
}

Test(db, parameters_are_never_interpolated)
{
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	struct vmops_error e = { 0 };
	PGresult *r;

	PQclear(testdb_exec(c, "CREATE TABLE t (s text)"));
	cr_assert_eq(vmops_db_x(c, &e, "INSERT INTO t VALUES ($1)", "x'); DROP TABLE t; --"), 0, "%s", e.msg);
	r = vmops_db_q(c, &e, "SELECT s FROM t WHERE s = $1", "x'); DROP TABLE t; --");
	cr_assert(r);
	cr_assert_eq(PQntuples(r), 1);
	PQclear(r);
	PQfinish(c);
}

/*
 * A prepared statement: run with parameters; preparing the same name again
 * keeps it; a statement the server refuses is an error mapped like any
 * other (42P01: schema), and a name never prepared is an error, not a crash.
 */
Test(db, prepared_statements)
{
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	struct vmops_error e = { 0 };
	PGresult *r;

	PQclear(testdb_exec(c, "CREATE TABLE t (s text)"));
	cr_assert_eq(vmops_db_prepare(c, &e, "ins", "INSERT INTO t VALUES ($1) RETURNING s"), 0, "%s", e.msg);
	cr_assert_eq(vmops_db_prepare(c, &e, "ins", "INSERT INTO t VALUES ($1) RETURNING s"), 0, "%s", e.msg);
	r = vmops_db_qp(c, &e, "ins", "x'); DROP TABLE t; --");
	cr_assert(r, "%s", e.msg);
	cr_assert_str_eq(PQgetvalue(r, 0, 0), "x'); DROP TABLE t; --");
	PQclear(r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM t"), 1);
	cr_assert_eq(vmops_db_prepare(c, &e, "bad", "SELECT * FROM no_such_table"), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_SCHEMA, "%d %s", e.code, e.msg);
	cr_assert_str_eq(e.sqlstate, "42P01");
	cr_assert_null(vmops_db_qp(c, &e, "never"));
	cr_assert_str_eq(e.sqlstate, "26000");
	PQfinish(c);
}

static void show(PGconn *c, const char *name, const char *want)
{
	char sql[128];
	PGresult *r;

	snprintf(sql, sizeof(sql), "SHOW %s", name);
	r = testdb_exec(c, sql);
	cr_assert_str_eq(PQgetvalue(r, 0, 0), want, "%s", name);
	PQclear(r);
}

static const char *conn_opt(PGconn *c, const char *kw, char *buf, size_t len)
{
	PQconninfoOption *o = PQconninfo(c);

	buf[0] = '\0';
	for (PQconninfoOption *p = o; p && p->keyword; p++)
		if (!strcmp(p->keyword, kw) && p->val)
			snprintf(buf, len, "%s", p->val);
	PQconninfoFree(o);
	return buf;
}

/* Timeouts so that a stalled peer cannot hold a program (or its locks) for
 * hours: set by default, and the user's own settings always win. */
Test(db, session_timeouts_default_and_user_override)
{
	struct vmops_error e = { 0 };
	char buf[64], dsn[700];
	PGconn *base = testdb_new(false, ci, sizeof(ci));
	PGconn *c = vmops_db_connect(ci, "test", &e);

	cr_assert_not_null(c, "%s", e.msg);
	show(c, "statement_timeout", "5min");
	show(c, "lock_timeout", "30s");
	show(c, "idle_in_transaction_session_timeout", "2min");
	cr_assert_str_eq(conn_opt(c, "keepalives_idle", buf, sizeof(buf)), "10");
	cr_assert_str_eq(conn_opt(c, "tcp_user_timeout", buf, sizeof(buf)), "30000");
	PQfinish(c);

	snprintf(dsn, sizeof(dsn), "%s keepalives_idle=99 options='-c statement_timeout=7s'", ci);
	c = vmops_db_connect(dsn, "test", &e);
	cr_assert_not_null(c, "%s", e.msg);
	show(c, "statement_timeout", "7s");
	show(c, "lock_timeout", "30s");
	cr_assert_str_eq(conn_opt(c, "keepalives_idle", buf, sizeof(buf)), "99");
	PQfinish(c);

	/* A database-level setting (the DBA's) is not overridden either. */
	PQclear(testdb_exec(base, "DO $$ BEGIN EXECUTE format("
				  "'ALTER DATABASE %I SET lock_timeout = ''3s''', current_database()); END $$"));
	c = vmops_db_connect(ci, "test", &e);
	cr_assert_not_null(c, "%s", e.msg);
	show(c, "lock_timeout", "3s");
	show(c, "statement_timeout", "5min");
	PQfinish(c);
	PQfinish(base);
}

/* libpq quotes pieces of a malformed string back: none may be a password's. */
Test(db, malformed_conninfo_never_echoes_password_pieces)
{
	struct vmops_error e = { 0 };
	PGconn *c = vmops_db_connect("host=x password=my secret", "test", &e);

	cr_assert_null(c);
	cr_assert_eq(e.code, VMOPS_EXIT_USAGE);
	cr_assert_null(strstr(e.msg, "secret"), "%s", e.msg);
	cr_assert(strstr(e.msg, "missing \"=\""), "%s", e.msg);
	c = vmops_db_connect("host=x password='unterminated sec", "test", &e);
	cr_assert_null(c);
	cr_assert_null(strstr(e.msg, "sec"), "%s", e.msg);
	cr_assert_eq(e.code, VMOPS_EXIT_USAGE);
}

static char *value_of(PGconn *c, const char *sql)
{
	PGresult *r = testdb_exec(c, sql);
	char *v = strdup(PQgetvalue(r, 0, 0));

	PQclear(r);
	return v;
}

/*
 * vmops_db_query_all: one statement fails while another is in flight on
 * another session.  The failure is the one reported, the statement in
 * flight is waited for and its result kept, nothing is started after the
 * failure, and both sessions are usable afterwards (no result left unread).
 */
Test(db, query_all_waits_for_statements_in_flight_after_a_failure)
{
	struct vmops_error e = { 0 };
	PGconn *base = testdb_new(false, ci, sizeof(ci));
	PGconn *a = vmops_db_connect(ci, "test", &e), *b;
	struct vmops_db_job jobs[3];
	char *v;

	cr_assert(a, "%s", e.msg);
	b = vmops_db_connect_again(a, &e);
	cr_assert(b, "%s", e.msg);
	memset(jobs, 0, sizeof(jobs));
	jobs[0] = (struct vmops_db_job){ .c = a, .sql = "SELECT 'slow' FROM pg_sleep(1)" };
	jobs[1] = (struct vmops_db_job){ .c = b, .sql = "SELECT 1 / 0" };
	jobs[2] = (struct vmops_db_job){ .c = b, .sql = "INSERT INTO never_created VALUES (1)" };
	cr_assert_eq(vmops_db_query_all(jobs, 3, &e), -1);
	cr_assert(strstr(e.msg, "division by zero"), "%s", e.msg);
	cr_assert_eq(e.code, VMOPS_EXIT_FAILURE, "code %d: %s", e.code, e.msg);
	cr_assert(jobs[0].result, "the statement in flight lost its result");
	cr_assert_str_eq(PQgetvalue(jobs[0].result, 0, 0), "slow");
	cr_assert_null(jobs[1].result);
	cr_assert_null(jobs[2].result, "a statement was sent after the failure");
	PQclear(jobs[0].result);
	v = value_of(a, "SELECT 'a ok'");
	cr_assert_str_eq(v, "a ok");
	free(v);
	v = value_of(b, "SELECT 'b ok'");
	cr_assert_str_eq(v, "b ok");
	free(v);
	PQfinish(a);
	PQfinish(b);
	PQfinish(base);
}
