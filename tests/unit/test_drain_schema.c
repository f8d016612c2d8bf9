/* SPDX-License-Identifier: MIT */
/*
 * Schema version 7 (lib/sql/007_drains.sql): the drains record and its
 * invariants, enforced by the database, also against REPEATABLE READ
 * writers (two connections, the second blocked on the first's lock, proven
 * from pg_stat_activity, never guessed with a sleep).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

TestSuite(drain_schema, .timeout = 60);

static char ci[512];

static void quiet(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

static PGconn *conn(void)
{
	PGconn *c = PQconnectdb(ci);

	cr_assert(PQstatus(c) == CONNECTION_OK, "connect %s: %s", ci, PQerrorMessage(c));
	PQsetNoticeProcessor(c, quiet, NULL);
	return c;
}

static void x(PGconn *c, const char *sql)
{
	PQclear(testdb_exec(c, sql));
}

/* A statement sent on another connection, then waited for. */
struct async {
	PGconn *c;
	char state[6];
	char msg[512];
};

static void async_send(struct async *a, PGconn *c, const char *sql)
{
	memset(a, 0, sizeof(*a));
	a->c = c;
	cr_assert(PQsendQuery(c, sql), "%s", PQerrorMessage(c));
}

static const char *async_wait(struct async *a)
{
	PGresult *r;

	while ((r = PQgetResult(a->c))) {
		if (PQresultStatus(r) == PGRES_FATAL_ERROR && !a->state[0]) {
			snprintf(a->state, sizeof(a->state), "%s", PQresultErrorField(r, PG_DIAG_SQLSTATE));
			snprintf(a->msg, sizeof(a->msg), "%s", PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
		}
		PQclear(r);
	}
	if (PQtransactionStatus(a->c) == PQTRANS_INERROR)
		x(a->c, "ROLLBACK");
	return a->state;
}

/* Workers w1 (draining, holding sandbox a), w2 (active). */
static PGconn *fixture(void)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	PQsetNoticeProcessor(c, quiet, NULL);
	x(c, "INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 4096, 8), ('w2', 4096, 8);"
	     "INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
	     " VALUES ('a', 'o', 'running', 1, 512, 1);"
	     "UPDATE workers SET state = 'draining' WHERE name = 'w1'");
	return c;
}

#define NEW_DRAIN "INSERT INTO drains (worker_id) VALUES (1)"

Test(drain_schema, one_active_drain_per_worker)
{
	PGconn *c = fixture();

	x(c, NEW_DRAIN);
	cr_assert_str_eq(testdb_fail(c, NEW_DRAIN), "23505");
	x(c, "UPDATE drains SET state = 'partial'");
	cr_assert_str_eq(testdb_fail(c, NEW_DRAIN), "23505", "a partial drain is continued, not doubled");
	x(c, "UPDATE drains SET state = 'running'");
	x(c, "UPDATE drains SET state = 'cancelled', time_finished = now()");
	x(c, NEW_DRAIN);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains"), 2);
	PQfinish(c);
}

Test(drain_schema, an_active_drain_needs_a_draining_worker)
{
	PGconn *c = fixture();

	cr_assert_str_eq(testdb_fail(c, "INSERT INTO drains (worker_id) VALUES (2)"), "VO021");
	x(c, NEW_DRAIN);
	cr_assert_str_eq(testdb_fail(c, "UPDATE workers SET state = 'active' WHERE id = 1"), "VO022");
	/* Cancelling first, in the same transaction, is the way back. */
	x(c, "BEGIN; UPDATE drains SET state = 'cancelled', time_finished = now();"
	     " UPDATE workers SET state = 'active' WHERE id = 1; COMMIT");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE id = 1 AND state = 'active'"), 1);
	/* A partial drain does not hold the worker; resuming it needs draining again. */
	x(c, "UPDATE workers SET state = 'draining' WHERE id = 1;" NEW_DRAIN ";"
	     "UPDATE drains SET state = 'partial' WHERE state = 'running';"
	     "UPDATE workers SET state = 'active' WHERE id = 1");
	cr_assert_str_eq(testdb_fail(c, "UPDATE drains SET state = 'running' WHERE state = 'partial'"), "VO021");
	PQfinish(c);
}

Test(drain_schema, done_only_when_the_worker_is_drained)
{
	PGconn *c = fixture();

	x(c, NEW_DRAIN);
	cr_assert_str_eq(testdb_fail(c, "UPDATE drains SET state = 'done', time_finished = now()"), "VO023");
	/* The database also refuses drained while a sandbox remains (version 1). */
	cr_assert_str_eq(testdb_fail(c, "UPDATE workers SET state = 'drained' WHERE id = 1"), "VO004");
	x(c, "UPDATE sandboxes SET worker_id = 2");
	x(c, "BEGIN; UPDATE workers SET state = 'drained' WHERE id = 1;"
	     " UPDATE drains SET state = 'done', time_finished = now(); COMMIT");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM drains WHERE state = 'done'"), 1);
	PQfinish(c);
}

Test(drain_schema, finished_drains_are_history)
{
	PGconn *c = fixture();

	x(c, NEW_DRAIN "; INSERT INTO drain_sandboxes (drain_id, sandbox_id) VALUES (1, 1)");
	x(c, "UPDATE drains SET state = 'cancelled', time_finished = now()");
	cr_assert_str_eq(testdb_fail(c, "UPDATE drains SET state = 'running', time_finished = NULL"), "VO024");
	cr_assert_str_eq(testdb_fail(c, "UPDATE drain_sandboxes SET attempts = 5"), "VO024");
	cr_assert_str_eq(testdb_fail(c, "UPDATE drains SET state = 'done'"), "VO024");
	PQfinish(c);
}

Test(drain_schema, outcomes_follow_the_facts)
{
	PGconn *c = fixture();

	x(c, NEW_DRAIN "; INSERT INTO drain_sandboxes (drain_id, sandbox_id) VALUES (1, 1)");
	cr_assert_str_eq(testdb_fail(c, "UPDATE drain_sandboxes SET outcome = 'moved'"), "VO025");
	cr_assert_str_eq(testdb_fail(c, "UPDATE drain_sandboxes SET outcome = 'hibernated'"), "VO025");
	x(c, "UPDATE drain_sandboxes SET outcome = 'stuck', attempts = 3, last_error = 'x'");
	x(c, "UPDATE sandboxes SET worker_id = 2");
	x(c, "UPDATE drain_sandboxes SET outcome = 'moved'");
	PQfinish(c);
}

/*
 * REPEATABLE READ: a drain starting and the worker set active at once, in
 * both orders; the second never commits next to the first (an active drain
 * of an active worker).
 */
Test(drain_schema, repeatable_read_drain_races_undrain)
{
	static const char start[] = "INSERT INTO drains (worker_id) VALUES (1)";
	static const char undrain[] = "UPDATE workers SET state = 'active' WHERE id = 1";

	for (int order = 0; order < 2; order++) {
		PGconn *a = fixture(), *b = conn(), *obs = conn();
		struct async q;

		x(a, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM workers, drains");
		x(b, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM workers, drains");
		x(a, order ? undrain : start);
		async_send(&q, b, order ? start : undrain);
		testdb_wait_conn_blocked(obs, b, PQbackendPID(a), 10000);
		x(a, "COMMIT");
		async_wait(&q);
		if (!q.state[0]) {
			PGresult *r = PQexec(b, "COMMIT");
			if (PQresultStatus(r) != PGRES_COMMAND_OK)
				snprintf(q.state, sizeof(q.state), "%s", PQresultErrorField(r, PG_DIAG_SQLSTATE));
			PQclear(r);
		}
		cr_expect(strcmp(q.state, "40001") == 0 || strcmp(q.state, order ? "VO021" : "VO022") == 0,
			  "order %d: B: '%s' %s", order, q.state, q.msg);
		cr_assert_eq(testdb_ll(a, "SELECT count(*) FROM drains d JOIN workers w ON w.id = d.worker_id"
					  " WHERE d.state = 'running' AND w.state <> 'draining'"), 0,
			     "order %d: an active drain of a worker that is not draining", order);
		PQfinish(obs);
		PQfinish(b);
		PQfinish(a);
	}
}

/* Two REPEATABLE READ vm-drains start a drain of one worker: one wins. */
Test(drain_schema, repeatable_read_two_drains_one_wins)
{
	PGconn *a = fixture(), *b = conn(), *obs = conn();
	struct async q;

	x(a, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM drains");
	x(b, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM drains");
	x(a, NEW_DRAIN);
	async_send(&q, b, NEW_DRAIN);
	testdb_wait_conn_blocked(obs, b, PQbackendPID(a), 10000);
	x(a, "COMMIT");
	async_wait(&q);
	cr_assert(strcmp(q.state, "40001") == 0 || strcmp(q.state, "23505") == 0, "B: '%s' %s", q.state, q.msg);
	cr_assert_eq(testdb_ll(a, "SELECT count(*) FROM drains"), 1);
	PQfinish(obs);
	PQfinish(b);
	PQfinish(a);
}

/* A sandbox moved back onto the drained worker while a REPEATABLE READ
 * writer, whose snapshot still has it elsewhere, records it moved. */
Test(drain_schema, repeatable_read_moved_against_a_move_back)
{
	PGconn *a = fixture(), *b = conn(), *obs = conn();
	struct async q;

	x(a, NEW_DRAIN "; INSERT INTO drain_sandboxes (drain_id, sandbox_id) VALUES (1, 1);"
	     "UPDATE sandboxes SET worker_id = 2");
	x(b, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM sandboxes");
	x(a, "BEGIN; UPDATE sandboxes SET worker_id = 1");
	async_send(&q, b, "UPDATE drain_sandboxes SET outcome = 'moved'");
	testdb_wait_conn_blocked(obs, b, PQbackendPID(a), 10000);
	x(a, "COMMIT");
	async_wait(&q);
	cr_assert(strcmp(q.state, "40001") == 0 || strcmp(q.state, "VO025") == 0, "B: '%s' %s", q.state, q.msg);
	cr_assert_eq(testdb_ll(a, "SELECT count(*) FROM drain_sandboxes WHERE outcome = 'moved'"), 0);
	PQfinish(obs);
	PQfinish(b);
	PQfinish(a);
}
