/* SPDX-License-Identifier: MIT */
/*
 * The schema and the four invariants of vmops(7), each attacked through
 * plain SQL: the database itself must refuse.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "db.h"
#include "exitcodes.h"
#include "schema.h"
#include "testlib.h"

static char ci[512];

/* Two workers (4 GiB/4 vCPU, 8 GiB/8 vCPU) and one running sandbox on w1. */
static void fleet(PGconn *c)
{
	PQclear(testdb_exec(c,
		"INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 4096, 4), ('w2', 8192, 8), ('w3', 8192, 8);"
		"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
		"  VALUES ('sb1', 'org1', 'running', 1, 1024, 1), ('sb2', 'org1', 'running', 1, 1024, 1);"
		"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 1, 'qemu', 'running'),"
		"  (2, 1, 'qemu', 'running');"
		"UPDATE sandboxes SET active_vmm_id = id;"));
}

static const char *catalog_sql =
	"SELECT string_agg(x, E'\\n' ORDER BY x) FROM ("
	" SELECT table_name || '.' || column_name || ':' || data_type || ':' || is_nullable AS x"
	"   FROM information_schema.columns WHERE table_schema = 'public'"
	" UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'"
	" UNION ALL SELECT tgname || ' on ' || tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal"
	" UNION ALL SELECT conname || ':' || pg_get_constraintdef(oid) FROM pg_constraint"
	"   WHERE connamespace = 'public'::regnamespace) s";

static char *catalog(PGconn *c)
{
	PGresult *r = testdb_exec(c, catalog_sql);
	char *s = strdup(PQgetvalue(r, 0, 0));

	PQclear(r);
	return s;
}

Test(schema, init_is_idempotent_and_check_passes)
{
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	struct vmops_error e = { 0 };
	int from = -1, to = -1, v;

	cr_assert_eq(vmops_schema_check(c, &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_SCHEMA);
	cr_assert(strstr(e.msg, "vm-fleet init"), "%s", e.msg);
	cr_assert_eq(vmops_schema_apply(c, &from, &to, &e), 0, "%s", e.msg);
	cr_assert_eq(from, 0);
	cr_assert_eq(to, vmops_schema_latest());
	cr_assert_eq(vmops_schema_apply(c, &from, &to, &e), 0, "%s", e.msg);
	cr_assert_eq(from, vmops_schema_latest());
	cr_assert_eq(to, from);
	cr_assert_eq(vmops_schema_check(c, &e), 0, "%s", e.msg);
	cr_assert_eq(vmops_schema_version(c, &v, &e), 0);
	cr_assert_eq(v, vmops_schema_latest());
	PQfinish(c);
}

/* Every older version upgrades to exactly what a fresh init creates. */
Test(schema, upgrade_from_every_older_version)
{
	PGconn *fresh = testdb_new(false, ci, sizeof(ci));
	struct vmops_error e = { 0 };
	char *want;

	cr_assert_eq(vmops_schema_apply(fresh, NULL, NULL, &e), 0, "%s", e.msg);
	want = catalog(fresh);
	for (size_t k = 1; k <= vmops_n_migrations; k++) {
		PGconn *c = testdb_new(false, ci, sizeof(ci));
		char sql[256], *got;
		int from, to;

		PQclear(testdb_exec(c, "CREATE TABLE vmops_schema_version (version integer PRIMARY KEY,"
				       " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"));
		for (size_t i = 0; i < k; i++) {
			PQclear(testdb_exec(c, vmops_migrations[i].sql));
			snprintf(sql, sizeof(sql), "INSERT INTO vmops_schema_version VALUES (%d, '%s')",
				 vmops_migrations[i].version, vmops_migrations[i].name);
			PQclear(testdb_exec(c, sql));
		}
		if (k < vmops_n_migrations) {
			cr_assert_eq(vmops_schema_check(c, &e), -1);
			cr_assert(strstr(e.msg, "older"), "%s", e.msg);
		}
		cr_assert_eq(vmops_schema_apply(c, &from, &to, &e), 0, "%s", e.msg);
		cr_assert_eq(from, vmops_migrations[k - 1].version);
		cr_assert_eq(to, vmops_schema_latest());
		got = catalog(c);
		cr_assert_str_eq(got, want, "upgrade from v%d differs from a fresh init", from);
		free(got);
		PQfinish(c);
	}
	free(want);
	PQfinish(fresh);
}

Test(schema, newer_schema_refused_and_untouched)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	struct vmops_error e = { 0 };
	struct testrun r;
	char sql[128];
	long long before;

	snprintf(sql, sizeof(sql), "INSERT INTO vmops_schema_version VALUES (%d, '999_future')",
		 vmops_schema_latest() + 1);
	PQclear(testdb_exec(c, sql));
	before = testdb_ll(c, "SELECT count(*) FROM vmops_schema_version");
	cr_assert_eq(vmops_schema_check(c, &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_SCHEMA);
	cr_assert(strstr(e.msg, "newer"), "%s", e.msg);
	cr_assert_eq(vmops_schema_apply(c, NULL, NULL, &e), -1);
	cr_assert_eq(e.code, VMOPS_EXIT_SCHEMA);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmops_schema_version"), before);

	TESTRUN(&r, "vm-fleet", "--db", ci, "init");
	cr_assert_eq(r.status, VMOPS_EXIT_SCHEMA, "init exit %d: %s", r.status, r.err);
	cr_assert(strstr(r.err, "newer than this vmops"), "%s", r.err);
	cr_assert_eq(testlib_lines(r.err), 1, "%s", r.err);
	testrun_free(&r);
	TESTRUN(&r, "vm-fleet", "--db", ci, "worker", "list");
	cr_assert_eq(r.status, VMOPS_EXIT_SCHEMA, "%s", r.err);
	cr_assert_str_eq(r.out, "");
	testrun_free(&r);
	PQfinish(c);
}

Test(schema, missing_schema_refused_by_programs)
{
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	struct testrun r;

	TESTRUN(&r, "vm-fleet", "--db", ci, "worker", "add", "w1", "--memory", "1G", "--vcpus", "1");
	cr_assert_eq(r.status, VMOPS_EXIT_SCHEMA, "%s", r.err);
	cr_assert(strstr(r.err, "schema not initialised"), "%s", r.err);
	testrun_free(&r);
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), 0);
	PQfinish(c);
}

/* Invariant 1: at most one open scale event per sandbox. */
Test(invariants, one_open_scale_event_per_sandbox)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	fleet(c);
	PQclear(testdb_exec(c, "INSERT INTO scale_events (sandbox_id, org_id, memory_mb, vcpus)"
			       " VALUES (1, 'org1', 1024, 1)"));
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO scale_events (sandbox_id, org_id, memory_mb, vcpus)"
					" VALUES (1, 'org1', 2048, 1)"), "23505");
	/* closing it makes room for the next one */
	PQclear(testdb_exec(c, "UPDATE scale_events SET ended_at = now() WHERE sandbox_id = 1"));
	PQclear(testdb_exec(c, "INSERT INTO scale_events (sandbox_id, org_id, memory_mb, vcpus)"
			       " VALUES (1, 'org1', 2048, 1)"));
	cr_assert_str_eq(testdb_fail(c, "UPDATE scale_events SET ended_at = NULL WHERE sandbox_id = 1"), "23505");
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 1);
	PQfinish(c);
}

/* Invariant 2: a terminal status closes billing in the same transaction, and
 * no open event can be written for a terminal sandbox. */
Test(invariants, terminal_status_closes_billing)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	static const char *const terminal[] = { "stopped", "hibernated", "error", "destroyed" };

	fleet(c);
	/* A hibernated sandbox has its bundle (schema 11). */
	PQclear(testdb_exec(c, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, size_bytes, sha256,"
			       " manifest, state, time_ready) VALUES (1, 1, 1, '/b/sb1', 1, repeat('0', 64), '{}',"
			       " 'ready', now())"));
	for (size_t i = 0; i < 4; i++) {
		char sql[256];
		PQclear(testdb_exec(c, "UPDATE sandboxes SET status = 'running' WHERE id = 1"));
		PQclear(testdb_exec(c, "INSERT INTO scale_events (sandbox_id, org_id, memory_mb, vcpus)"
				       " VALUES (1, 'org1', 1024, 1)"));
		snprintf(sql, sizeof(sql), "BEGIN; UPDATE sandboxes SET status = '%s' WHERE id = 1;", terminal[i]);
		PQclear(testdb_exec(c, sql));
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE sandbox_id = 1 AND ended_at IS NULL"),
			     0, "status %s left billing open", terminal[i]);
		PQclear(testdb_exec(c, "ROLLBACK"));
		/* rolled back together */
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE sandbox_id = 1 AND ended_at IS NULL"), 1);
		PQclear(testdb_exec(c, sql + strlen("BEGIN; ")));
		cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE sandbox_id = 1 AND ended_at IS NULL"), 0);
		cr_assert_str_eq(testdb_fail(c, "INSERT INTO scale_events (sandbox_id, org_id, memory_mb, vcpus)"
						" VALUES (1, 'org1', 1024, 1)"), "VO003");
		cr_assert_str_eq(testdb_fail(c, "UPDATE scale_events SET ended_at = NULL WHERE sandbox_id = 1"),
				 "VO003");
	}
	/* A sandbox inserted directly in a terminal status cannot be billed either. */
	PQclear(testdb_exec(c, "INSERT INTO sandboxes (name, org_id, status, memory_mb, vcpus)"
			       " VALUES ('sb9', 'org1', 'stopped', 512, 1)"));
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO scale_events (sandbox_id, org_id, memory_mb, vcpus)"
					" SELECT id, 'org1', 512, 1 FROM sandboxes WHERE name = 'sb9'"), "VO003");
	PQfinish(c);
}

/*
 * The race tests below prove the lock that serialises two writers, not a
 * sleep: `first` runs in an open transaction on one connection, `second` is
 * sent on another, and before the first commits the test must see the second
 * backend waiting for a lock that the first holds (pg_stat_activity,
 * pg_locks, pg_blocking_pids; tests/unit/testlib.c).  If the lock is gone,
 * the second statement finishes on its own and the test fails there, however
 * fast or slow the machine.  After the COMMIT the second statement must end
 * with SQLSTATE `want` (NULL: success).  `a` is the test's connection, with
 * the fixture in place.
 */
#define LOCK_WAIT_MS 30000

static PGconn *connect_ci(void)
{
	PGconn *c = PQconnectdb(ci);

	cr_assert(PQstatus(c) == CONNECTION_OK, "connect %s: %s", ci, PQerrorMessage(c));
	PQsetNoticeProcessor(c, NULL, NULL);
	return c;
}

static void race(PGconn *a, const char *first, const char *second, const char *want)
{
	PGconn *b = connect_ci(), *observer = connect_ci();
	char sql[1024];
	PGresult *r;

	snprintf(sql, sizeof(sql), "BEGIN; %s", first);
	PQclear(testdb_exec(a, sql));
	cr_assert(PQsendQuery(b, second), "%s", PQerrorMessage(b));
	testdb_wait_conn_blocked(observer, b, PQbackendPID(a), LOCK_WAIT_MS);
	PQclear(testdb_exec(a, "COMMIT"));
	r = PQgetResult(b);
	if (want) {
		cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR, "'%s' succeeded after waiting for '%s'",
			     second, first);
		cr_assert_str_eq(PQresultErrorField(r, PG_DIAG_SQLSTATE), want, "%s", PQerrorMessage(b));
	} else {
		cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "'%s' failed after waiting for '%s': %s",
			     second, first, PQerrorMessage(b));
	}
	PQclear(r);
	while ((r = PQgetResult(b)))
		PQclear(r);
	PQfinish(observer);
	PQfinish(b);
}

/* Invariant 2 under concurrency, status first: the event insert waits for the
 * terminal-status write (the trigger's FOR SHARE), then sees it and refuses. */
Test(invariants, terminal_status_race_with_event_insert)
{
	PGconn *a = testdb_new(true, ci, sizeof(ci));

	fleet(a);
	race(a, "UPDATE sandboxes SET status = 'stopped' WHERE id = 2",
	     "INSERT INTO scale_events (sandbox_id, org_id, memory_mb, vcpus) VALUES (2, 'org1', 1024, 1)",
	     "VO003");
	cr_assert_eq(testdb_ll(a, "SELECT count(*) FROM scale_events WHERE sandbox_id = 2 AND ended_at IS NULL"), 0);
	PQfinish(a);
}

/* Invariant 2 under concurrency, event first: the terminal-status write waits
 * for the event insert (whose FOR SHARE it conflicts with), then closes it. */
Test(invariants, terminal_status_waits_for_event_insert)
{
	PGconn *a = testdb_new(true, ci, sizeof(ci));

	fleet(a);
	race(a, "INSERT INTO scale_events (sandbox_id, org_id, memory_mb, vcpus) VALUES (2, 'org1', 1024, 1)",
	     "UPDATE sandboxes SET status = 'stopped' WHERE id = 2", NULL);
	cr_assert_eq(testdb_ll(a, "SELECT count(*) FROM scale_events WHERE sandbox_id = 2"), 1);
	cr_assert_eq(testdb_ll(a, "SELECT count(*) FROM scale_events WHERE sandbox_id = 2 AND ended_at IS NULL"), 0,
		     "an open event outlived the terminal status");
	PQfinish(a);
}

/* Invariant 3: one active migration per sandbox and per target worker. */
Test(invariants, one_active_migration_per_sandbox_and_target)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	fleet(c);
	PQclear(testdb_exec(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
			       " VALUES (1, 1, 2, 'transferring')"));
	/* same sandbox, other target */
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
					" VALUES (1, 1, 3, 'queued')"), "23505");
	/* other sandbox, same target */
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
					" VALUES (2, 1, 2, 'preparing')"), "23505");
	/* other sandbox, other target: parallel receivers are fine */
	PQclear(testdb_exec(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
			       " VALUES (2, 1, 3, 'switching')"));
	/* the source is never the target */
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
					" VALUES (2, 1, 1, 'failed')"), "23514");
	/* finished attempts do not hold the guard */
	PQclear(testdb_exec(c, "UPDATE migrations SET state = 'failed' WHERE sandbox_id = 1"));
	PQclear(testdb_exec(c, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
			       " VALUES (1, 1, 2, 'queued')"));
	cr_assert_str_eq(testdb_fail(c, "UPDATE migrations SET state = 'queued' WHERE state = 'failed'"), "23505");
	PQfinish(c);
}

/* Invariant 4: admission in the same transaction as the reservation. */
Test(invariants, reservations_never_exceed_capacity)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	fleet(c);
	PQclear(testdb_exec(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (1, 1, 3072, 1)"));
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
					" VALUES (2, 1, 2048, 1)"), "VO001");
	/* vCPUs count too */
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
					" VALUES (2, 1, 512, 4)"), "VO001");
	/* exactly full is fine */
	PQclear(testdb_exec(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (2, 1, 1024, 3)"));
	/* growing a reservation is admitted too */
	cr_assert_str_eq(testdb_fail(c, "UPDATE reservations SET memory_mb = 4096 WHERE vmm_id = 2"), "VO001");
	/* a draining worker takes no new placements */
	PQclear(testdb_exec(c, "DELETE FROM reservations WHERE vmm_id = 2; UPDATE workers SET state = 'draining' WHERE id = 1"));
	cr_assert_str_eq(testdb_fail(c, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
					" VALUES (2, 1, 128, 1)"), "VO002");
	cr_assert_eq(testdb_ll(c, "SELECT sum(memory_mb) FROM reservations WHERE worker_id = 1"), 3072);
	PQfinish(c);
}

/* Invariant 4 under concurrency: two admissions race for the last room; the
 * second waits for the first's lock on the worker row, then re-reads the sum. */
Test(invariants, concurrent_admissions_serialised)
{
	PGconn *a = testdb_new(true, ci, sizeof(ci));

	fleet(a);
	race(a, "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (1, 1, 3072, 1)",
	     "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES (2, 1, 2048, 1)", "VO001");
	cr_assert_eq(testdb_ll(a, "SELECT sum(memory_mb) FROM reservations WHERE worker_id = 1"), 3072);
	PQfinish(a);
}

/* Invariant 3 under concurrency: two processes start a migration to the same
 * target; the second waits on the in-flight guard (the unique index) for the
 * first to commit, then is refused. */
Test(invariants, concurrent_migrations_to_one_target_serialised)
{
	PGconn *a = testdb_new(true, ci, sizeof(ci));

	fleet(a);
	race(a, "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
		" VALUES (1, 1, 2, 'preparing')",
	     "INSERT INTO migrations (sandbox_id, source_worker_id, target_worker_id, state)"
	     " VALUES (2, 1, 2, 'queued')", "23505");
	cr_assert_eq(testdb_ll(a, "SELECT count(*) FROM migrations WHERE target_worker_id = 2"), 1);
	PQfinish(a);
}

Test(invariants, worker_not_drained_while_holding_sandboxes)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));

	fleet(c);
	cr_assert_str_eq(testdb_fail(c, "UPDATE workers SET state = 'drained' WHERE id = 1"), "VO004");
	cr_assert_str_eq(testdb_fail(c, "UPDATE workers SET state = 'terminated' WHERE id = 1"), "VO004");
	PQclear(testdb_exec(c, "UPDATE workers SET state = 'draining' WHERE id = 1"));
	/* Hibernated sandboxes have their bundles (schema 11). */
	PQclear(testdb_exec(c, "INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, size_bytes, sha256,"
			       " manifest, state, time_ready) SELECT id, active_vmm_id, 1, '/b/' || name, 1,"
			       " repeat('0', 64), '{}', 'ready', now() FROM sandboxes WHERE worker_id = 1;"
			       "UPDATE sandboxes SET status = 'hibernated' WHERE worker_id = 1"));
	PQclear(testdb_exec(c, "UPDATE workers SET state = 'drained' WHERE id = 1"));
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM workers WHERE state = 'drained'"), 1);
	PQfinish(c);
}

/*
 * A VMM's time_state_updated follows its state (schema version 8 runs the
 * trigger only then): stamped when the state changes, also under REPEATABLE
 * READ and when another BEFORE trigger changes the state; left alone by
 * every other update (vmm-reap's time_deleted, or a client's own value).
 */
Test(schema, vmm_time_state_updated_follows_the_state)
{
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	static const char stale[] = "SELECT count(*) FROM vmms WHERE id = 1 AND time_state_updated = '2001-01-01'";

	fleet(c);
	PQclear(testdb_exec(c, "UPDATE vmms SET time_state_updated = '2001-01-01' WHERE id = 1"));
	cr_expect_eq(testdb_ll(c, stale), 1, "a client's own value is kept when the state does not change");
	PQclear(testdb_exec(c, "UPDATE vmms SET time_deleted = now(), pid = 7 WHERE id = 1"));
	cr_expect_eq(testdb_ll(c, stale), 1, "an update that leaves the state alone does not stamp it");
	PQclear(testdb_exec(c, "UPDATE vmms SET state = 'running' WHERE id = 1"));
	cr_expect_eq(testdb_ll(c, stale), 1, "the same state again is no change");
	PQclear(testdb_exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ;"
			       "UPDATE vmms SET state = 'destroyed' WHERE id = 1; COMMIT"));
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE id = 1 AND time_state_updated > '2001-01-01'"), 1,
		     "a state change under REPEATABLE READ is stamped");

	/* a BEFORE trigger that runs first (by name) and changes the state */
	PQclear(testdb_exec(c, "UPDATE vmms SET time_state_updated = '2001-01-01' WHERE id = 2;"
			       "CREATE FUNCTION t_fail() RETURNS trigger LANGUAGE plpgsql AS $$"
			       " BEGIN IF NEW.pid = 4242 THEN NEW.state := 'failed'; END IF; RETURN NEW; END $$;"
			       "CREATE TRIGGER aaa_fail BEFORE UPDATE ON vmms FOR EACH ROW EXECUTE FUNCTION t_fail()"));
	PQclear(testdb_exec(c, "UPDATE vmms SET pid = 4242 WHERE id = 2"));
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE id = 2 AND state = 'failed'"
				  " AND time_state_updated > '2001-01-01'"), 1,
		     "a state changed by an earlier trigger is stamped");
	PQfinish(c);
}
