/* SPDX-License-Identifier: MIT */
/*
 * The invariants of vmops(7) under every isolation level, attacked through
 * plain SQL: admission that does not depend on the writer's snapshot,
 * capacity not lowerable below what is reserved, a reservation on its VMM's
 * worker, a worker not drained while it holds live reservations or
 * in-flight receivers, and completion only of the attempt a sandbox is
 * migrating by, onto an active or draining worker.
 *
 * Concurrency cases use two connections; "B waits" is observed in
 * pg_stat_activity (wait_event_type = 'Lock' for B's backend pid) from a
 * third, never guessed with a sleep.  Under REPEATABLE READ the loser must
 * fail (40001 or a VO code); it must never commit what the invariant forbids.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "exitcodes.h"
#include "schema.h"
#include "testlib.h"

TestSuite(inv, .timeout = 60);

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

/* Run SQL that may fail: "" when it succeeded, else its SQLSTATE.  A failed
 * explicit transaction is rolled back. */
static const char *try_sql(PGconn *c, const char *sql, char msg[512])
{
	static char state[6];
	PGresult *r;

	state[0] = '\0';
	if (msg)
		msg[0] = '\0';
	cr_assert(PQsendQuery(c, sql), "%s", PQerrorMessage(c));
	while ((r = PQgetResult(c))) {
		if (PQresultStatus(r) == PGRES_FATAL_ERROR && !state[0]) {
			snprintf(state, sizeof(state), "%s", PQresultErrorField(r, PG_DIAG_SQLSTATE));
			if (msg)
				snprintf(msg, 512, "%s", PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
		}
		PQclear(r);
	}
	if (PQtransactionStatus(c) == PQTRANS_INERROR)
		x(c, "ROLLBACK");
	return state;
}

/* ---- a statement running on another connection --------------------------- */

struct async {
	PGconn *c;
	bool done;
	char state[6];          /* first error's SQLSTATE, "" if none */
	char msg[512];
};

static void async_send(struct async *a, PGconn *c, const char *sql)
{
	memset(a, 0, sizeof(*a));
	a->c = c;
	cr_assert(PQsendQuery(c, sql), "%s", PQerrorMessage(c));
}

static void async_take(struct async *a, bool block)
{
	while (!a->done) {
		PGresult *r;

		if (!block) {
			cr_assert(PQconsumeInput(a->c), "%s", PQerrorMessage(a->c));
			if (PQisBusy(a->c))
				return;
		}
		r = PQgetResult(a->c);
		if (!r) {
			a->done = true;
			break;
		}
		if (PQresultStatus(r) == PGRES_FATAL_ERROR && !a->state[0]) {
			snprintf(a->state, sizeof(a->state), "%s", PQresultErrorField(r, PG_DIAG_SQLSTATE));
			snprintf(a->msg, sizeof(a->msg), "%s", PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
		}
		PQclear(r);
	}
}

/* True once B's backend waits for a lock; false if B finished first. */
static bool async_blocked(struct async *a, PGconn *obs)
{
	char sql[160];

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND wait_event_type = 'Lock'",
		 PQbackendPID(a->c));
	for (int i = 0; i < 3000; i++) {
		async_take(a, false);
		if (a->done)
			return false;
		if (testdb_ll(obs, sql) == 1)
			return true;
		usleep(5000);
	}
	cr_assert_fail("backend %d neither finished nor waited for a lock", PQbackendPID(a->c));
	return false;
}

/* Wait for B to finish; its first error's SQLSTATE, "" if it succeeded. */
static const char *async_wait(struct async *a)
{
	async_take(a, true);
	if (PQtransactionStatus(a->c) == PQTRANS_INERROR)
		x(a->c, "ROLLBACK");
	return a->state;
}

static bool serialization_or(const char *st, const char *vo)
{
	return strcmp(st, "40001") == 0 || strcmp(st, vo) == 0;
}

/* ---- fixtures -------------------------------------------------------------- */

/*
 * Worker w1: 1000 MB, 8 vCPUs.  Sandboxes a and b (pending, 600 MB each),
 * each with a starting VMM on w1 (vmm 1, 2) and no reservation yet.
 */
static const char two_on_w1[] =
	"INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 1000, 8), ('w2', 1000, 8);"
	"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
	" VALUES ('a', 'o', 'pending', 1, 600, 1), ('b', 'o', 'pending', 1, 600, 1);"
	"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state)"
	" VALUES (1, 1, 'qemu', 'starting'), (2, 1, 'qemu', 'starting');"
	"UPDATE sandboxes SET target_vmm_id = id;";

#define RESERVE_A "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (1, 1, 600, 1)"
#define RESERVE_B "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (2, 1, 600, 1)"
#define RESERVED_W1 "SELECT coalesce(sum(memory_mb), 0) FROM reservations WHERE worker_id = 1"

/*
 * Sandbox s1 (1024 MB, 1 vCPU) running on w1 (vmm 1, billed), migrating to
 * w2 by migration 1: receiver vmm 2 on w2, reserved, state migrating.
 * The state vm-migrate's claim and receiver phases leave.
 */
static const char migrating[] =
	"INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 4096, 4), ('w2', 4096, 4), ('w3', 4096, 4);"
	"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
	" VALUES ('s1', 'o', 'running', 1, 1024, 1);"
	"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 1, 'qemu', 'running');"
	"UPDATE sandboxes SET active_vmm_id = 1;"
	"INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (1, 1, 1024, 1);"
	"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)"
	" VALUES (1, 'o', 1, 1, 1024, 1);"
	"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 2, 'qemu', 'starting');"
	"INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (2, 2, 1024, 1);"
	"INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, source_vmm_id, target_vmm_id,"
	"  state, lease_owner, lease_expires_at, time_started)"
	" VALUES (1, 1, 2, 1, 2, 'preparing', 'test', now() + interval '1 minute', now());"
	"UPDATE sandboxes SET status = 'migrating', target_vmm_id = 2 WHERE id = 1;"
	"UPDATE vmms SET state = 'migrating' WHERE id = 2;"
	"UPDATE migrations SET state = 'transferring' WHERE id = 1;";

/* The success path, statement for statement as lib/migrate.c finish_tx writes it. */
#define FINISH_STATEMENTS \
	"UPDATE migrations SET state = 'completed', time_finished = now(), lease_expires_at = NULL," \
	"  time_switched = coalesce(time_switched, now()) WHERE id = 1;" \
	"UPDATE vmms SET state = 'running' WHERE id = 2;" \
	"UPDATE vmms SET state = 'destroyed' WHERE id = 1;" \
	"UPDATE sandboxes SET status = 'running', worker_id = 2, active_vmm_id = 2, target_vmm_id = NULL WHERE id = 1;" \
	"UPDATE scale_events SET ended_at = greatest(now(), started_at) WHERE sandbox_id = 1 AND ended_at IS NULL;" \
	"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)" \
	"  SELECT id, org_id, 2, 2, memory_mb, vcpus FROM sandboxes WHERE id = 1;"
#define FINISH_RC "BEGIN;" FINISH_STATEMENTS "COMMIT;"
#define FINISH_RR "BEGIN ISOLATION LEVEL REPEATABLE READ;" FINISH_STATEMENTS "COMMIT;"

/* `vm-fleet destroy`, as lib/vm.c destroy_tx writes it (the source VMM is the active one). */
#define DESTROY_STATEMENTS \
	"UPDATE vmms SET state = 'destroyed' WHERE id = 1 AND state <> 'destroyed';" \
	"DELETE FROM reservations WHERE vmm_id = 1;" \
	"UPDATE sandboxes SET status = 'destroyed' WHERE id = 1;"

#define OPEN_EVENTS "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"

/* Totals on the worker rows that differ from the sum of their reservations. */
#define TOTALS_WRONG \
	"SELECT count(*) FROM workers w LEFT JOIN (SELECT worker_id, sum(memory_mb) AS m, sum(vcpus) AS c" \
	"  FROM reservations GROUP BY worker_id) r ON r.worker_id = w.id" \
	" WHERE w.reserved_memory_mb <> coalesce(r.m, 0) OR w.reserved_vcpus <> coalesce(r.c, 0)"

/* ---- 1. admission does not depend on the writer's snapshot ------------------ */

/*
 * Two REPEATABLE READ admissions race for the last room: B's snapshot was
 * taken before A's reservation, and B waits for A's row lock.  Version 2 let
 * B commit (it summed with its snapshot): 1200 MB on a 1000 MB worker.
 */
Test(inv, repeatable_read_admissions_never_overcommit)
{
	PGconn *a = testdb_new(true, ci, sizeof(ci)), *b = conn(), *obs = conn();
	struct async q;

	x(a, two_on_w1);
	x(a, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM reservations");
	x(b, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM reservations");
	x(a, RESERVE_A);
	async_send(&q, b, RESERVE_B);
	cr_assert(async_blocked(&q, obs), "B's admission should wait for A's");
	x(a, "COMMIT");
	async_wait(&q);
	cr_log_info("B: %s %s", q.state[0] ? q.state : "committed", q.msg);
	if (!q.state[0])
		try_sql(b, "COMMIT", NULL);
	cr_expect(serialization_or(q.state, "VO001"), "B's admission: '%s' %s", q.state, q.msg);
	cr_assert_leq(testdb_ll(a, RESERVED_W1), 1000, "two REPEATABLE READ admissions committed %lld MB on a 1000 MB worker",
		      testdb_ll(a, RESERVED_W1));
	PQfinish(obs);
	PQfinish(b);
	PQfinish(a);
}

/* The same without any waiting: A commits between B's snapshot and B's insert. */
Test(inv, repeatable_read_admission_after_concurrent_commit)
{
	PGconn *a = testdb_new(true, ci, sizeof(ci)), *b = conn();
	const char *st;
	char msg[512];

	x(a, two_on_w1);
	x(b, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM reservations");
	x(a, "BEGIN ISOLATION LEVEL REPEATABLE READ;" RESERVE_A "; COMMIT");
	st = try_sql(b, RESERVE_B "; COMMIT", msg);
	cr_log_info("B: %s %s", st[0] ? st : "committed", msg);
	cr_expect(serialization_or(st, "VO001"), "B's admission: '%s' %s", st, msg);
	cr_assert_leq(testdb_ll(a, RESERVED_W1), 1000, "REPEATABLE READ admission committed %lld MB on a 1000 MB worker",
		      testdb_ll(a, RESERVED_W1));
	PQfinish(b);
	PQfinish(a);
}

/* SERIALIZABLE and READ COMMITTED writers: one of the two is refused too. */
Test(inv, serializable_and_read_committed_admissions)
{
	static const char *const iso[] = { "SERIALIZABLE", "READ COMMITTED" };

	for (int i = 0; i < 2; i++) {
		PGconn *a = testdb_new(true, ci, sizeof(ci)), *b = conn(), *obs = conn();
		struct async q;
		char sql[128];

		x(a, two_on_w1);
		snprintf(sql, sizeof(sql), "BEGIN ISOLATION LEVEL %s; SELECT count(*) FROM reservations", iso[i]);
		x(a, sql);
		x(b, sql);
		x(a, RESERVE_A);
		async_send(&q, b, RESERVE_B);
		cr_assert(async_blocked(&q, obs), "%s: B's admission should wait for A's", iso[i]);
		x(a, "COMMIT");
		async_wait(&q);
		cr_log_info("%s: B: %s %s", iso[i], q.state[0] ? q.state : "committed", q.msg);
		if (!q.state[0])
			try_sql(b, "COMMIT", NULL);
		cr_expect(i == 0 ? serialization_or(q.state, "VO001") : strcmp(q.state, "VO001") == 0,
			  "%s: B's admission: '%s' %s", iso[i], q.state, q.msg);
		cr_assert_leq(testdb_ll(a, RESERVED_W1), 1000, "%s: %lld MB on a 1000 MB worker", iso[i],
			      testdb_ll(a, RESERVED_W1));
		PQfinish(obs);
		PQfinish(b);
		PQfinish(a);
	}
}

/* Admission errors are what they were, and the totals follow every kind of write. */
Test(inv, totals_follow_every_write)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	x(c, "INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 4096, 4), ('w2', 4096, 4), ('w3', 4096, 4);"
	     "INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
	     " SELECT 's' || i, 'o', 'stopped', 1 + i % 3, 256, 1 FROM generate_series(1, 12) i;"
	     "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state)"
	     " SELECT id, worker_id, 'qemu', 'running' FROM sandboxes ORDER BY id;");
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	/* one statement over three workers */
	x(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
	     " SELECT id, worker_id, 256 * (1 + id % 2), 1 FROM vmms WHERE id <= 9");
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	cr_assert_eq(testdb_ll(c, "SELECT reserved_memory_mb FROM workers WHERE name = 'w1'"), 1280);
	/* capacity and vCPUs, whole statement refused */
	cr_assert_str_eq(try_sql(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
				    " SELECT id, worker_id, 256, 2 FROM vmms WHERE id > 9", msg), "VO001");
	cr_assert(strstr(msg, "capacity exceeded"), "%s", msg);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 9);
	cr_assert_str_eq(try_sql(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
				    " VALUES (12, 1, 4096, 1)", msg), "VO001");
	cr_assert(strstr(msg, "worker w1 capacity exceeded: 1280 of 4096 MB"), "%s", msg);
	/* growing is admitted, shrinking always allowed */
	cr_assert_str_eq(try_sql(c, "UPDATE reservations SET memory_mb = memory_mb + 4000 WHERE vmm_id = 3", NULL), "VO001");
	x(c, "UPDATE reservations SET memory_mb = 100 WHERE worker_id = 1");
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	x(c, "UPDATE workers SET state = 'draining' WHERE name = 'w1'");
	cr_assert_str_eq(try_sql(c, "UPDATE reservations SET memory_mb = 200 WHERE vmm_id = 3", NULL), "VO002");
	cr_assert_str_eq(try_sql(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
				    " VALUES (12, 1, 1, 1)", NULL), "VO002");
	x(c, "UPDATE reservations SET memory_mb = 50 WHERE vmm_id = 3");
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	/* deletes over several workers in one statement, inside a CTE like vmm-reap's */
	x(c, "WITH d AS (DELETE FROM reservations WHERE vmm_id % 2 = 0 RETURNING vmm_id)"
	     " UPDATE vmms SET time_deleted = now() WHERE id IN (SELECT vmm_id FROM d)");
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	/* a rolled-back statement leaves them as they were */
	x(c, "BEGIN; DELETE FROM reservations; ROLLBACK");
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	x(c, "TRUNCATE reservations");
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	cr_assert_eq(testdb_ll(c, "SELECT sum(reserved_memory_mb) + sum(reserved_vcpus) FROM workers"), 0);
	PQfinish(c);
}

/* The totals are the reservations' business only. */
Test(inv, totals_cannot_be_written)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	x(c, two_on_w1);
	x(c, RESERVE_A);
	cr_assert_str_eq(try_sql(c, "UPDATE workers SET reserved_memory_mb = 0 WHERE name = 'w1'", msg), "VO010");
	cr_assert(strstr(msg, "worker w1: reserved_memory_mb and reserved_vcpus follow its reservations"), "%s", msg);
	cr_assert_str_eq(try_sql(c, "UPDATE workers SET reserved_vcpus = reserved_vcpus - 1", NULL), "VO010");
	cr_assert_str_eq(try_sql(c, "SELECT vmops_reserve(1, -600, -1)", NULL), "VO010");
	cr_assert_str_eq(try_sql(c, "INSERT INTO workers (name, memory_mb, vcpus, reserved_memory_mb)"
				    " VALUES ('w9', 100, 1, 50)", NULL), "VO010");
	/* the constraint stands behind the triggers */
	cr_assert_str_eq(try_sql(c, "SET session_replication_role = replica;"
				    "UPDATE workers SET reserved_memory_mb = 2000 WHERE name = 'w1'", NULL), "23514");
	x(c, "RESET session_replication_role");
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	PQfinish(c);
}

/* ---- 2. capacity is never lowered below what is reserved --------------------- */

Test(inv, capacity_not_lowered_below_reserved)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	x(c, two_on_w1);
	x(c, RESERVE_A "; UPDATE reservations SET vcpus = 3 WHERE vmm_id = 1");
	cr_assert_str_eq(try_sql(c, "UPDATE workers SET memory_mb = 599 WHERE name = 'w1'", msg), "VO005");
	cr_assert(strstr(msg, "worker w1 capacity cannot be lowered to 599 MB and 8 vCPUs: 600 MB and 3 vCPUs are reserved"),
		  "%s", msg);
	cr_assert_str_eq(try_sql(c, "UPDATE workers SET vcpus = 2 WHERE name = 'w1'", NULL), "VO005");
	/* down to exactly what is reserved, and up again */
	x(c, "UPDATE workers SET memory_mb = 600, vcpus = 3 WHERE name = 'w1'");
	x(c, "UPDATE workers SET memory_mb = 2000 WHERE name = 'w1'");
	cr_assert_eq(testdb_ll(c, "SELECT memory_mb FROM workers WHERE name = 'w1'"), 2000);
	PQfinish(c);
}

/* A lowers the capacity while B's reservation is in flight, both REPEATABLE READ. */
Test(inv, repeatable_read_capacity_lowering_races_admission)
{
	for (int order = 0; order < 2; order++) {
		PGconn *a = testdb_new(true, ci, sizeof(ci)), *b = conn(), *obs = conn();
		const char *first = order ? "UPDATE workers SET memory_mb = 500 WHERE name = 'w1'" : RESERVE_A;
		const char *second = order ? RESERVE_A : "UPDATE workers SET memory_mb = 500 WHERE name = 'w1'";
		struct async q;

		x(a, two_on_w1);
		x(a, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM workers");
		x(b, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM workers");
		x(a, first);
		async_send(&q, b, second);
		cr_assert(async_blocked(&q, obs), "order %d: B should wait for A", order);
		x(a, "COMMIT");
		async_wait(&q);
		cr_log_info("order %d: B: %s %s", order, q.state[0] ? q.state : "committed", q.msg);
		if (!q.state[0])
			try_sql(b, "COMMIT", NULL);
		cr_expect(serialization_or(q.state, order ? "VO001" : "VO005"), "order %d: B: '%s' %s", order, q.state,
			  q.msg);
		cr_assert_leq(testdb_ll(a, RESERVED_W1), testdb_ll(a, "SELECT memory_mb FROM workers WHERE name = 'w1'"),
			      "order %d: %lld MB reserved on a worker of %lld MB", order, testdb_ll(a, RESERVED_W1),
			      testdb_ll(a, "SELECT memory_mb FROM workers WHERE name = 'w1'"));
		PQfinish(obs);
		PQfinish(b);
		PQfinish(a);
	}
}

/* ---- 3. a reservation is on its VMM's worker --------------------------------- */

Test(inv, reservation_on_its_vmms_worker)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	x(c, two_on_w1);
	cr_assert_str_eq(try_sql(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (1, 2, 600, 1)",
				 msg), "VO006");
	cr_assert(strstr(msg, "reservation of vmm 1 is on worker 2 but the vmm runs on worker 1"), "%s", msg);
	x(c, RESERVE_A);
	cr_assert_str_eq(try_sql(c, "UPDATE reservations SET worker_id = 2 WHERE vmm_id = 1", NULL), "VO006");
	/* nor does the VMM move under its reservation, or at all */
	cr_assert_str_eq(try_sql(c, "UPDATE vmms SET worker_id = 2 WHERE id = 1", msg), "VO006");
	cr_assert(strstr(msg, "vmm 1: its worker cannot change"), "%s", msg);
	cr_assert_str_eq(try_sql(c, "UPDATE vmms SET worker_id = 2 WHERE id = 2", NULL), "VO006");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM reservations r JOIN vmms v ON v.id = r.vmm_id"
				  " WHERE v.worker_id <> r.worker_id"), 0);
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	PQfinish(c);
}

/* ---- 4. no drained or terminated worker holds anything ----------------------- */

Test(inv, not_drained_while_holding_live_reservations)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	/* sandbox a's VMM holds a reservation on w1, but a is hibernated: VO004 does not apply */
	x(c, two_on_w1);
	x(c, RESERVE_A "; UPDATE vmms SET state = 'running' WHERE id = 1;"
	     "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, size_bytes, sha256, manifest, state,"
	     " time_ready) SELECT id, id, 1, '/b/' || name, 1, repeat('0', 64), '{}', 'ready', now() FROM sandboxes;"
	     "UPDATE sandboxes SET status = 'hibernated'");
	cr_assert_str_eq(try_sql(c, "UPDATE workers SET state = 'drained' WHERE name = 'w1'", msg), "VO007");
	cr_assert(strstr(msg, "worker w1 still holds 1 live reservation(s) (vmm 1) and 0 in-flight receiver(s): it cannot be drained"),
		  "%s", msg);
	cr_assert_str_eq(try_sql(c, "UPDATE workers SET state = 'terminated' WHERE name = 'w1'", NULL), "VO007");
	x(c, "UPDATE workers SET state = 'draining' WHERE name = 'w1'");
	/* a destroyed VMM's reservation is capacity awaiting vmm-reap: it holds nothing */
	x(c, "UPDATE vmms SET state = 'destroyed' WHERE id = 1");
	x(c, "UPDATE workers SET state = 'drained' WHERE name = 'w1'");
	/* and it does not come back to life on a drained worker */
	cr_assert_str_eq(try_sql(c, "UPDATE vmms SET state = 'running' WHERE id = 1", msg), "VO007");
	cr_assert(strstr(msg, "vmm 1 cannot become running again: its worker w1 is drained"), "%s", msg);
	PQfinish(c);
}

Test(inv, not_drained_while_receiving)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	x(c, migrating);
	/* the receiver (vmm 2) is live and the attempt in flight */
	cr_assert_str_eq(try_sql(c, "UPDATE workers SET state = 'drained' WHERE name = 'w2'", msg), "VO007");
	cr_assert(strstr(msg, "worker w2 still holds 1 live reservation(s) (vmm 2) and 1 in-flight receiver(s) (migration 1)"),
		  "%s", msg);
	/* the attempt alone, without its receiver's reservation, pins the target too */
	x(c, "DELETE FROM reservations WHERE vmm_id = 2");
	cr_assert_str_eq(try_sql(c, "UPDATE workers SET state = 'terminated' WHERE name = 'w2'", msg), "VO007");
	cr_assert(strstr(msg, "0 live reservation(s) and 1 in-flight receiver(s) (migration 1)"), "%s", msg);
	/* a failed attempt does not */
	x(c, "UPDATE migrations SET state = 'failed' WHERE id = 1; UPDATE sandboxes SET status = 'running', target_vmm_id = NULL");
	x(c, "UPDATE workers SET state = 'drained' WHERE name = 'w2'");
	/* and no new attempt targets a worker that is not active */
	cr_assert_str_eq(try_sql(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
				    " VALUES (1, 1, 2, 'queued')", msg), "VO002");
	cr_assert(strstr(msg, "worker w2 is drained, not accepting migrations"), "%s", msg);
	x(c, "UPDATE workers SET state = 'draining' WHERE name = 'w3'");
	cr_assert_str_eq(try_sql(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
				    " VALUES (1, 1, 3, 'queued')", NULL), "VO002");
	x(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state) VALUES (1, 1, 3, 'failed')");
	cr_assert_str_eq(try_sql(c, "UPDATE migrations SET state = 'queued' WHERE target_worker_id = 3", NULL), "VO002");
	PQfinish(c);
}

/*
 * A drain and a new in-flight receiver (an attempt inserted as vm-migrate's
 * claim does, or a reservation), both REPEATABLE READ, in both orders: the
 * second never commits next to the first.
 */
Test(inv, repeatable_read_drain_races_receiver)
{
	static const char *const receiver[] = {
		"INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state) VALUES (1, 1, 3, 'preparing')",
		"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 3, 'qemu', 'starting');"
		"INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) SELECT max(id), 3, 1024, 1 FROM vmms",
	};
	static const char drain[] = "UPDATE workers SET state = 'drained' WHERE name = 'w3'";

	for (int k = 0; k < 2; k++) {
		for (int order = 0; order < 2; order++) {
			PGconn *a = testdb_new(true, ci, sizeof(ci)), *b = conn(), *obs = conn();
			struct async q;
			long long held;

			x(a, migrating);
			x(a, "UPDATE migrations SET state = 'failed'; UPDATE sandboxes SET status = 'running', target_vmm_id = NULL;"
			     "DELETE FROM reservations WHERE vmm_id = 2; UPDATE vmms SET state = 'destroyed' WHERE id = 2");
			x(a, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM workers");
			x(b, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM workers");
			x(a, order ? drain : receiver[k]);
			async_send(&q, b, order ? receiver[k] : drain);
			async_blocked(&q, obs);
			x(a, "COMMIT");
			async_wait(&q);
			cr_log_info("case %d order %d: B: %s %s", k, order, q.state[0] ? q.state : "committed", q.msg);
			if (!q.state[0])
				try_sql(b, "COMMIT", NULL);
			cr_expect(serialization_or(q.state, order ? "VO002" : "VO007"), "case %d order %d: B: '%s' %s", k,
				  order, q.state, q.msg);
			held = testdb_ll(a, "SELECT count(*) FROM migrations WHERE target_worker_id = 3 AND state = 'preparing'") +
			       testdb_ll(a, "SELECT count(*) FROM reservations r JOIN vmms v ON v.id = r.vmm_id"
					    " WHERE r.worker_id = 3 AND v.state = 'starting'");
			cr_assert(!(held && testdb_ll(a, "SELECT count(*) FROM workers WHERE name = 'w3' AND state = 'drained'")),
				  "case %d order %d: worker w3 drained with an in-flight receiver", k, order);
			PQfinish(obs);
			PQfinish(b);
			PQfinish(a);
		}
	}
}

/* ---- 5. completion ------------------------------------------------------------ */

/*
 * Reproduced on version 2: the target is set drained while the attempt is
 * in flight (only sandboxes were counted), then the success path completes
 * onto it; usage-parity --fix would then close the billing of a VM that runs.
 */
Test(inv, target_not_drained_under_a_completing_migration)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	x(c, migrating);
	cr_assert_str_eq(try_sql(c, "UPDATE workers SET state = 'drained' WHERE name = 'w2'", msg), "VO007",
			 "worker w2 set drained under an in-flight migration: %s", msg);
	cr_assert_str_eq(try_sql(c, FINISH_RC, msg), "", "%s", msg);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'running' AND worker_id = 2"
				  " AND active_vmm_id = 2"), 1);
	PQfinish(c);
}

/* A target that is drained or terminated anyway (a database from before version 3): no completion onto it. */
Test(inv, no_completion_onto_drained_or_terminated_target)
{
	static const char *const states[] = { "drained", "terminated" };

	for (int i = 0; i < 2; i++) {
		PGconn *c = testdb_new(true, ci, sizeof(ci));
		char sql[256], msg[512];

		x(c, migrating);
		snprintf(sql, sizeof(sql), "SET session_replication_role = replica;"
			 "UPDATE workers SET state = '%s' WHERE name = 'w2'; RESET session_replication_role", states[i]);
		x(c, sql);
		cr_assert_str_eq(try_sql(c, FINISH_RC, msg), "VO009", "completion onto a %s worker: '%s'", states[i], msg);
		snprintf(sql, sizeof(sql), "migration 1 cannot complete: target worker w2 is %s, not active or draining",
			 states[i]);
		cr_assert(strstr(msg, sql), "%s", msg);
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM migrations WHERE state = 'completed'"), 0);
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL AND vmm_id = 1"), 1);
		PQfinish(c);
	}
}

/* A draining target still receives what it had accepted. */
Test(inv, completion_onto_draining_target)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	x(c, migrating);
	x(c, "UPDATE workers SET state = 'draining' WHERE name = 'w2'");
	cr_assert_str_eq(try_sql(c, FINISH_RC, msg), "", "%s", msg);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL AND vmm_id = 2"), 1);
	PQfinish(c);
}

/* `vm-fleet destroy` during the migration, then the success path: refused, billing stays closed. */
Test(inv, destroy_during_migration_then_success_path)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	x(c, migrating);
	x(c, "BEGIN;" DESTROY_STATEMENTS "COMMIT");
	cr_assert_eq(testdb_ll(c, OPEN_EVENTS), 0);
	cr_assert_str_eq(try_sql(c, FINISH_RC, msg), "VO008", "the success path after a destroy: '%s'", msg);
	cr_assert(strstr(msg, "migration 1 cannot complete: sandbox s1 is destroyed with target vmm 2,"
			      " not migrating by this attempt (target vmm 2)"), "%s", msg);
	cr_assert_eq(testdb_ll(c, OPEN_EVENTS), 0, "billing reopened for a destroyed sandbox");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM sandboxes WHERE status = 'destroyed'"), 1);
	PQfinish(c);
}

/* The same, concurrently: the destroy holds the sandbox row when the success path starts. */
Test(inv, concurrent_destroy_and_success_path)
{
	static const char *const finish[] = { FINISH_RC, FINISH_RR };

	for (int i = 0; i < 2; i++) {
		PGconn *a = testdb_new(true, ci, sizeof(ci)), *b = conn(), *obs = conn();
		struct async q;

		x(a, migrating);
		x(a, i ? "BEGIN ISOLATION LEVEL REPEATABLE READ;" DESTROY_STATEMENTS : "BEGIN;" DESTROY_STATEMENTS);
		async_send(&q, b, finish[i]);
		cr_assert(async_blocked(&q, obs), "%s: the success path should wait for the destroy", i ? "RR" : "RC");
		x(a, "COMMIT");
		async_wait(&q);
		cr_log_info("%s: B: %s %s", i ? "RR" : "RC", q.state[0] ? q.state : "committed", q.msg);
		cr_expect(i ? serialization_or(q.state, "VO008") : strcmp(q.state, "VO008") == 0,
			  "%s: success path: '%s' %s", i ? "RR" : "RC", q.state, q.msg);
		cr_assert_eq(testdb_ll(a, OPEN_EVENTS), 0, "%s: billing reopened for a destroyed sandbox", i ? "RR" : "RC");
		cr_assert_eq(testdb_ll(a, "SELECT count(*) FROM migrations WHERE state = 'completed'"), 0);
		PQfinish(obs);
		PQfinish(b);
		PQfinish(a);
	}
}

/* Only the attempt the sandbox is migrating by, and only once, from an active state. */
Test(inv, completion_only_by_the_active_attempt)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	char msg[512];

	x(c, migrating);
	/* another attempt's (stale) row for the same sandbox */
	x(c, "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 3, 'qemu', 'destroyed');"
	     "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, source_vmm_id, target_vmm_id, state)"
	     " VALUES (1, 1, 3, 1, 3, 'failed')");
	cr_assert_str_eq(try_sql(c, "UPDATE migrations SET state = 'completed' WHERE id = 2", msg), "VO008");
	cr_assert(strstr(msg, "migration 2 cannot complete: it is failed, not an active attempt"), "%s", msg);
	cr_assert_str_eq(try_sql(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, source_vmm_id,"
				    " target_vmm_id, state) VALUES (1, 1, 3, 1, 3, 'completed')", NULL), "VO008");
	/* an active attempt whose receiver is not the sandbox's target */
	x(c, "UPDATE sandboxes SET target_vmm_id = NULL");
	cr_assert_str_eq(try_sql(c, FINISH_RC, msg), "VO008");
	cr_assert(strstr(msg, "sandbox s1 is migrating with target vmm none"), "%s", msg);
	x(c, "UPDATE sandboxes SET status = 'running'");
	cr_assert_str_eq(try_sql(c, FINISH_RC, NULL), "VO008");
	x(c, "UPDATE sandboxes SET status = 'migrating', target_vmm_id = 2");
	cr_assert_str_eq(try_sql(c, FINISH_RC, msg), "", "%s", msg);
	/* completed stays completed; updating the row otherwise is fine */
	x(c, "UPDATE migrations SET error = 'note', state = 'completed' WHERE id = 1");
	PQfinish(c);
}

/* ---- the programs see conflicts -------------------------------------------------- */

/* Every new refusal is a conflict (exit status 10) with its own SQLSTATE and message. */
Test(inv, refusals_map_to_conflict)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	static const struct {
		const char *sql, *state;
	} cases[] = {
		{ "UPDATE workers SET memory_mb = 1 WHERE name = 'w1'", "VO005" },
		{ "UPDATE vmms SET worker_id = 3 WHERE id = 2", "VO006" },
		{ "UPDATE workers SET state = 'drained' WHERE name = 'w2'", "VO007" },
		{ "UPDATE migrations SET state = 'completed', target_vmm_id = 1 WHERE id = 1", "VO008" },
		{ "UPDATE workers SET reserved_vcpus = 0", "VO010" },
	};
	struct testrun r;

	x(c, migrating);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct vmops_error e = { 0 };

		cr_assert_eq(vmops_db_x(c, &e, cases[i].sql), -1, "%s", cases[i].sql);
		cr_expect_str_eq(e.sqlstate, cases[i].state, "%s: %s", cases[i].sql, e.msg);
		cr_expect_eq(e.code, VMOPS_EXIT_CONFLICT, "%s: %s", cases[i].sql, e.msg);
	}
	TESTRUN(&r, "vm-fleet", "--db", ci, "worker", "set-state", "w2", "drained");
	cr_expect_eq(r.status, VMOPS_EXIT_CONFLICT, "exit %d: %s", r.status, r.err);
	cr_expect(strstr(r.err, "worker w2 still holds 1 live reservation(s) (vmm 2) and 1 in-flight receiver(s)"
				" (migration 1): it cannot be drained"), "%s", r.err);
	cr_expect_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	PQfinish(c);
}

/* ---- upgrading to version 3 --------------------------------------------------------- */

/* A database at version 2, with `sql` written before the upgrade. */
static PGconn *at_version_2(const char *sql)
{
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	char v[256];

	x(c, "CREATE TABLE vmops_schema_version (version integer PRIMARY KEY,"
	     " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
	for (size_t i = 0; i < vmops_n_migrations && vmops_migrations[i].version <= 2; i++) {
		x(c, vmops_migrations[i].sql);
		snprintf(v, sizeof(v), "INSERT INTO vmops_schema_version VALUES (%d, '%s')", vmops_migrations[i].version,
			 vmops_migrations[i].name);
		x(c, v);
	}
	x(c, sql);
	return c;
}

Test(inv, upgrade_backfills_the_totals)
{
	PGconn *c = at_version_2(
		"INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 4096, 4), ('w2', 4096, 4), ('w3', 4096, 4);"
		"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
		" SELECT 's' || i, 'o', 'running', 1 + i % 2, 512, 1 FROM generate_series(1, 6) i;"
		"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) SELECT id, worker_id, 'qemu', 'running' FROM sandboxes;"
		"INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) SELECT id, worker_id, 512, 1 FROM vmms;");
	struct vmops_error e = { 0 };
	int from, to;

	cr_assert_eq(vmops_schema_apply(c, &from, &to, &e), 0, "%s", e.msg);
	cr_assert_eq(from, 2);
	cr_assert_eq(to, vmops_schema_latest());
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	cr_assert_eq(testdb_ll(c, "SELECT reserved_memory_mb FROM workers WHERE name = 'w1'"), 1536);
	cr_assert_eq(testdb_ll(c, "SELECT reserved_vcpus FROM workers WHERE name = 'w3'"), 0);
	/* and they are live from there on */
	x(c, "DELETE FROM reservations WHERE vmm_id = 1");
	cr_assert_eq(testdb_ll(c, TOTALS_WRONG), 0);
	PQfinish(c);
}

/* A database that already breaks them is not upgraded: the operator is told what to fix. */
Test(inv, upgrade_refused_over_broken_invariants)
{
	static const struct {
		const char *sql, *msg;
	} cases[] = {
		{ /* the version 2 overcommit, or a capacity lowered since */
		  "INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 4096, 4);"
		  "INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus) VALUES ('s', 'o', 'running', 1, 512, 1);"
		  "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 1, 'qemu', 'running');"
		  "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (1, 1, 1200, 1);"
		  "UPDATE workers SET memory_mb = 1000;",
		  "reservations exceed the capacity of worker(s) w1 (1200 of 1000 MB, 1 of 4 vCPUs)" },
		{ "INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 4096, 4), ('w2', 4096, 4);"
		  "INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus) VALUES ('s', 'o', 'running', 1, 512, 1);"
		  "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 1, 'qemu', 'running');"
		  "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (1, 2, 512, 1);",
		  "reservations on another worker than their VMM's: vmm 1 (reserved on worker 2, runs on worker 1)" },
	};

	for (size_t i = 0; i < 2; i++) {
		PGconn *c = at_version_2(cases[i].sql);
		struct vmops_error e = { 0 };
		int v;

		cr_assert_eq(vmops_schema_apply(c, NULL, NULL, &e), -1);
		cr_expect(strstr(e.msg, cases[i].msg), "%s", e.msg);
		cr_expect(strstr(e.msg, "then run vm-fleet init again"), "%s", e.msg);
		cr_assert_eq(vmops_schema_version(c, &v, &e), 0);
		cr_assert_eq(v, 2, "half-upgraded to %d", v);
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM information_schema.columns"
					  " WHERE table_name = 'workers' AND column_name = 'reserved_memory_mb'"), 0);
		PQfinish(c);
	}
}
