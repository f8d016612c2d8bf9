/* SPDX-License-Identifier: MIT */
/*
 * vmm-reap against a real PostgreSQL: which VMMs are abandoned (NULL
 * references included), exact counts, batches and limits, the grace
 * period, dry runs, bad input, and four reapers on 200k VMMs at once.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"

TestSuite(reap, .timeout = 120);

static cJSON *json_of(const struct testrun *r)
{
	cJSON *j = cJSON_Parse(r->out);

	cr_assert(j, "stdout is not JSON:\n%s\nstderr:\n%s", r->out, r->err);
	return j;
}

static long long jint(const cJSON *root, const char *key)
{
	const cJSON *sec = cJSON_GetObjectItemCaseSensitive(root, "reap");
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(sec, key);

	cr_assert(cJSON_IsNumber(v), "reap.%s is not a number", key);
	return (long long)v->valuedouble;
}

/*
 * Two workers, four sandboxes and nine VMMs:
 *   vmm 1 destroyed, sa's active VMM        stays (referenced)
 *   vmm 2 failed, sb's target VMM           stays (referenced)
 *   vmm 3 destroyed, unreferenced, reserved reaped, reservation deleted
 *   vmm 4 failed, unreferenced              reaped
 *   vmm 5 destroyed, already deleted        untouched
 *   vmm 6 running, unreferenced             untouched
 *   vmm 7 destroyed, sandbox sc has NULL active and target VMMs
 *                                           reaped (NOT IN would reap nothing)
 *   vmm 8 failed, sd's active VMM           stays (referenced)
 *   vmm 9 starting, unreferenced            untouched
 */
static const char fixture[] =
	"INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 65536, 64), ('w2', 65536, 64);"
	"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus) VALUES"
	" ('sa', 'o1', 'running', 1, 1024, 1), ('sb', 'o1', 'migrating', 1, 1024, 1),"
	" ('sc', 'o1', 'stopped', 1, 1024, 1), ('sd', 'o1', 'stopped', 2, 1024, 1);"
	"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state, time_deleted) VALUES"
	" (1, 1, 'qemu', 'destroyed', NULL), (2, 2, 'qemu', 'failed', NULL),"
	" (1, 1, 'qemu', 'destroyed', NULL), (2, 1, 'firecracker', 'failed', NULL),"
	" (3, 1, 'qemu', 'destroyed', now() - interval '1 day'), (1, 1, 'qemu', 'running', NULL),"
	" (3, 2, 'cloud-hypervisor', 'destroyed', NULL), (4, 2, 'qemu', 'failed', NULL),"
	" (1, 1, 'qemu', 'starting', NULL);"
	"UPDATE sandboxes SET active_vmm_id = 1 WHERE name = 'sa';"
	"UPDATE sandboxes SET target_vmm_id = 2 WHERE name = 'sb';"
	"UPDATE sandboxes SET active_vmm_id = 8 WHERE name = 'sd';"
	"INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus) VALUES"
	" (1, 1, 1024, 1), (2, 2, 1024, 1), (3, 1, 2048, 2), (6, 1, 1024, 1), (7, 2, 512, 1);";

static PGconn *setup(char *ci, size_t len)
{
	PGconn *c = testdb_new(true, ci, len);

	PQclear(testdb_exec(c, fixture));
	return c;
}

static const char *deleted_ids_sql =
	"SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM vmms WHERE time_deleted IS NOT NULL";

static char *text_of(PGconn *c, const char *sql)
{
	PGresult *r = testdb_exec(c, sql);
	char *s = strdup(PQgetvalue(r, 0, 0));

	PQclear(r);
	return s;
}

Test(reap, exact_counts_and_null_references)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci));
	struct testrun r;
	cJSON *j;
	char *ids;

	TESTRUN(&r, "vmm-reap", "--db", ci, "--json");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	j = json_of(&r);
	cr_expect_eq(jint(j, "found"), 3);
	cr_expect_eq(jint(j, "vmms_deleted"), 3);
	cr_expect_eq(jint(j, "vmms_already_deleted"), 0);
	cr_expect_eq(jint(j, "reservations_deleted"), 2);
	cr_expect_eq(jint(j, "errors"), 0);
	cr_expect(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "reap"), "last_error")));
	cr_expect(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "reap"), "dry_run")));
	cJSON_Delete(j);
	testrun_free(&r);

	ids = text_of(c, deleted_ids_sql);
	cr_expect_str_eq(ids, "3,4,5,7");
	free(ids);
	ids = text_of(c, "SELECT string_agg(vmm_id::text, ',' ORDER BY vmm_id) FROM reservations");
	cr_expect_str_eq(ids, "1,2,6");
	free(ids);
	/* one audit row for the batch; the view vmm_reaps gives one row per VMM */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 1);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE program = 'vmm-reap'"
				  " AND action = 'reap-batch' AND object_type = 'vmm' AND object_id IS NULL"
				  " AND detail = '3 vmms deleted, 2 reservations deleted'"), 1);
	ids = text_of(c, "SELECT string_agg(vmm_id::text, ',' ORDER BY vmm_id) FROM vmm_reaps"
			 " WHERE program = 'vmm-reap' AND state IS NOT NULL");
	cr_expect_str_eq(ids, "3,4,7");
	free(ids);
	/* each VMM as it was (state, sandbox, worker), deleted when vmms says */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps r JOIN vmms v ON v.id = r.vmm_id"
				  " WHERE (r.state, r.sandbox_id, r.worker_id, r.time_deleted)"
				  "     = (v.state, v.sandbox_id, v.worker_id, v.time_deleted)"), 3);
	/* what was freed: vmm 3's reservation and vmm 7's, none for vmm 4 */
	ids = text_of(c, "SELECT string_agg(format('%s:%s/%s/%s', vmm_id, reservation_worker_id,"
			 " reservation_memory_mb, reservation_vcpus), ',' ORDER BY vmm_id) FROM vmm_reaps");
	cr_expect_str_eq(ids, "3:1/2048/2,4://,7:2/512/1");
	free(ids);

	/* Nothing left: a second run finds nothing and changes nothing. */
	TESTRUN(&r, "vmm-reap", "--db", ci, "--json");
	cr_assert_eq(r.status, 0);
	j = json_of(&r);
	cr_expect_eq(jint(j, "found"), 0);
	cr_expect_eq(jint(j, "vmms_deleted"), 0);
	cr_expect_eq(jint(j, "reservations_deleted"), 0);
	cJSON_Delete(j);
	testrun_free(&r);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 1);
	PQfinish(c);
}

Test(reap, text_output)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci));
	struct testrun r;

	TESTRUN(&r, "vmm-reap", "--db", ci);
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	cr_expect_str_eq(r.out,
			 "found:                3\n"
			 "vmms_deleted:         3\n"
			 "vmms_already_deleted: 0\n"
			 "reservations_deleted: 2\n"
			 "errors:               0\n"
			 "last_error:           -\n"
			 "batches:              1\n"
			 "dry_run:              no\n"
			 "sessions:             2\n");
	cr_expect_str_eq(r.err, "");
	testrun_free(&r);
	PQfinish(c);
}

Test(reap, dry_run_changes_nothing)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci));
	struct testrun r;
	cJSON *j;
	char *ids;

	TESTRUN(&r, "vmm-reap", "--db", ci, "--json", "--dry-run");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	j = json_of(&r);
	cr_expect_eq(jint(j, "found"), 3);
	cr_expect_eq(jint(j, "vmms_deleted"), 0);
	cr_expect_eq(jint(j, "reservations_deleted"), 0);
	cr_expect(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "reap"), "dry_run")));
	cJSON_Delete(j);
	testrun_free(&r);
	ids = text_of(c, deleted_ids_sql);
	cr_expect_str_eq(ids, "5");
	free(ids);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 5);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 0);
	PQfinish(c);
}

Test(reap, older_than_is_a_grace_period)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci));
	struct testrun r;
	cJSON *j;
	char *ids;

	/* vmm 3 destroyed 10 minutes ago, 4 and 7 a minute ago */
	PQclear(testdb_exec(c, "UPDATE vmms SET time_state_updated = now() - interval '10 minutes' WHERE id = 3;"
			       "UPDATE vmms SET time_state_updated = now() - interval '1 minute' WHERE id IN (4, 7)"));
	TESTRUN(&r, "vmm-reap", "--db", ci, "--json", "--older-than", "5m");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	j = json_of(&r);
	cr_expect_eq(jint(j, "found"), 1);
	cr_expect_eq(jint(j, "vmms_deleted"), 1);
	cr_expect_eq(jint(j, "reservations_deleted"), 1);
	cJSON_Delete(j);
	testrun_free(&r);
	ids = text_of(c, deleted_ids_sql);
	cr_expect_str_eq(ids, "3,5");
	free(ids);

	TESTRUN(&r, "vmm-reap", "--db", ci, "--json", "--older-than", "30s");
	cr_assert_eq(r.status, 0);
	j = json_of(&r);
	cr_expect_eq(jint(j, "vmms_deleted"), 2);
	cJSON_Delete(j);
	testrun_free(&r);
	PQfinish(c);
}

/*
 * One worker, one stopped sandbox and `n` destroyed VMMs (ids 1..n) that
 * no sandbox references; a reservation of `res_mb` MB and 1 vCPU for each
 * whose id % every == rem (every 0: none).
 */
static PGconn *abandoned_fleet(char *ci, size_t len, int n, int every, int rem, int res_mb)
{
	PGconn *c = testdb_new(true, ci, len);
	char sql[1024];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 1048576, 8192);"
		 "INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
		 " VALUES ('s', 'o', 'stopped', 1, 1024, 1);"
		 "INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state)"
		 " SELECT 1, 1, 'qemu', 'destroyed' FROM generate_series(1, %d)", n);
	PQclear(testdb_exec(c, sql));
	if (every > 0) {
		snprintf(sql, sizeof(sql), "INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
			 " SELECT id, 1, %d, 1 FROM vmms WHERE id %% %d = %d", res_mb, every, rem);
		PQclear(testdb_exec(c, sql));
	}
	return c;
}

Test(reap, batches_and_limit)
{
	char ci[256];
	PGconn *c = abandoned_fleet(ci, sizeof(ci), 25, 5, 0, 256);
	struct testrun r;
	cJSON *j;
	char *ids;

	/* one session: the audit rows' order is the claims' (sessions_share_the_work_and_the_limit) */
	TESTRUN(&r, "vmm-reap", "--db", ci, "--json", "--batch", "10", "--limit", "15", "--sessions", "1");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	j = json_of(&r);
	cr_expect_eq(jint(j, "found"), 15);
	cr_expect_eq(jint(j, "vmms_deleted"), 15);
	cr_expect_eq(jint(j, "reservations_deleted"), 3);
	cr_expect_eq(jint(j, "batches"), 2);
	cJSON_Delete(j);
	testrun_free(&r);
	/* the lowest ids went first */
	cr_expect_eq(testdb_ll(c, "SELECT max(id) FROM vmms WHERE time_deleted IS NOT NULL"), 15);
	/* one audit row per batch, naming its VMMs: 1-10, then 11-15 */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 2);
	ids = text_of(c, "SELECT string_agg(format('%s:%s-%s', audit_id, min, max), ',' ORDER BY audit_id)"
			 " FROM (SELECT audit_id, min(vmm_id), max(vmm_id) FROM vmm_reaps GROUP BY audit_id) x");
	cr_expect_str_eq(ids, "1:1-10,2:11-15");
	free(ids);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps WHERE reservation_memory_mb = 256"), 3);

	TESTRUN(&r, "vmm-reap", "--db", ci, "--json", "--batch", "4");
	cr_assert_eq(r.status, 0);
	j = json_of(&r);
	cr_expect_eq(jint(j, "found"), 10);
	cr_expect_eq(jint(j, "vmms_deleted"), 10);
	cr_expect_eq(jint(j, "reservations_deleted"), 2);
	cr_expect_eq(jint(j, "batches"), 3);
	cr_expect_eq(jint(j, "sessions"), 2, "the default");
	cJSON_Delete(j);
	testrun_free(&r);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE time_deleted IS NULL"), 0);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 0);
	PQfinish(c);
}

/*
 * Four sessions of one run: each VMM reaped once, the limit exact, the
 * lowest ids first (the claims are taken in turn, each after the last),
 * and more than one session did batches.
 */
Test(reap, sessions_share_the_work_and_the_limit)
{
	char ci[256];
	PGconn *c = abandoned_fleet(ci, sizeof(ci), 10000, 2, 0, 64);
	struct testrun r;
	cJSON *j;

	TESTRUN(&r, "vmm-reap", "--db", ci, "--json", "-v", "--batch", "100", "--limit", "5550", "--sessions", "4");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	j = json_of(&r);
	cr_expect_eq(jint(j, "found"), 5550);
	cr_expect_eq(jint(j, "vmms_deleted"), 5550);
	cr_expect_eq(jint(j, "reservations_deleted"), 2775);
	cr_expect_eq(jint(j, "batches"), 56);
	cr_expect_eq(jint(j, "errors"), 0);
	cr_expect_eq(jint(j, "sessions"), 4);
	cJSON_Delete(j);
	cr_expect(strstr(r.err, "(session 1)") && strstr(r.err, "(session 2)"), "one session did all:\n%s", r.err);
	testrun_free(&r);
	cr_expect_eq(testdb_ll(c, "SELECT max(id) FROM vmms WHERE time_deleted IS NOT NULL"), 5550);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE time_deleted IS NOT NULL"), 5550);
	cr_expect_eq(testdb_ll(c, "SELECT count(DISTINCT vmm_id) FROM vmm_reaps"), 5550);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps"), 5550);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'reap-batch'"), 56);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 5000 - 2775);
	PQfinish(c);
}

/* A role allowed one connection: the run goes on in one session, and says so with -v. */
Test(reap, sessions_fall_back_to_the_connections_there_are)
{
	char ci[256], ci1[400], role[128], sql[600];
	PGconn *c = abandoned_fleet(ci, sizeof(ci), 30, 0, 0, 0);
	struct testrun r;
	cJSON *j;

	snprintf(role, sizeof(role), "one_%s", PQdb(c));
	snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN CONNECTION LIMIT 1;"
		 " GRANT ALL ON ALL TABLES IN SCHEMA public TO %s; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO %s",
		 role, role, role);
	PQclear(testdb_exec(c, sql));
	snprintf(ci1, sizeof(ci1), "%s user=%s", ci, role);
	TESTRUN(&r, "vmm-reap", "--db", ci1, "--json", "-v", "--batch", "10", "--sessions", "3");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	cr_expect(strstr(r.err, "reaping in 1 session(s): another connection failed"), "%s", r.err);
	j = json_of(&r);
	cr_expect_eq(jint(j, "vmms_deleted"), 30);
	cr_expect_eq(jint(j, "batches"), 3);
	cr_expect_eq(jint(j, "sessions"), 1, "the sessions that reaped, not those asked for");
	cJSON_Delete(j);
	testrun_free(&r);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE time_deleted IS NULL"), 0);
	snprintf(sql, sizeof(sql), "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %s;"
		 " REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %s; DROP ROLE %s", role, role, role);
	PQclear(testdb_exec(c, sql));
	PQfinish(c);
}

/* Start vmm-reap in the background with stdout to a file; returns its pid. */
static pid_t spawn_reaper(const char *ci, const char *out)
{
	const char *dir = getenv("VMOPS_BIN_DIR");
	char path[4096];
	pid_t pid;

	snprintf(path, sizeof(path), "%s/vmm-reap", dir ? dir : "bin");
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd < 0)
			_exit(127);
		dup2(fd, 1);
		execl(path, "vmm-reap", "--db", ci, "--json", "--batch", "2000", (char *)NULL);
		_exit(127);
	}
	return pid;
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	cr_assert(f, "%s: %s", path, strerror(errno));
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = calloc(1, (size_t)n + 1);
	cr_assert(buf);
	cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	return buf;
}

Test(reap, four_concurrent_reapers_on_200k, .timeout = 240)
{
	const long long n = 200000;
	char ci[256], out[4][64];
	PGconn *c = testdb_new(true, ci, sizeof(ci));
	long long found = 0, deleted = 0, already = 0, res = 0, batches = 0;
	PGconn *gate, *observer;
	pid_t pid[4];

	/* 200k abandoned VMMs (every third reserved), plus 150 referenced ones that must stay. */
	PQclear(testdb_exec(c,
		"INSERT INTO workers (name, memory_mb, vcpus) SELECT 'w' || i, 4194304, 65536 FROM generate_series(1, 10) i;"
		"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)"
		" SELECT 's' || i, 'o', 'running', 1 + i % 10, 1024, 1 FROM generate_series(1, 100) i;"
		"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state)"
		" SELECT 1 + i % 100, 1 + i % 10, 'qemu', CASE WHEN i % 7 = 0 THEN 'failed' ELSE 'destroyed' END"
		" FROM generate_series(1, 200150) i;"
		"UPDATE sandboxes s SET active_vmm_id = s.id * 2, target_vmm_id = CASE WHEN s.id % 2 = 0 THEN s.id * 2 - 1 END;"
		/* admitted per statement and worker, like the reaper's deletes are released */
		"INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)"
		" SELECT id, worker_id, 256, 1 FROM vmms WHERE id % 3 = 0;"
		"ANALYZE;"));
	/* referenced: active 2,4,...,200 and target 3,7,11,...,199 */
	cr_assert_eq(testdb_ll(c, "SELECT count(*) FROM vmms v WHERE NOT EXISTS (SELECT 1 FROM sandboxes s"
				  " WHERE s.active_vmm_id = v.id OR s.target_vmm_id = v.id)"), n);
	long long nres = testdb_ll(c, "SELECT count(*) FROM reservations r WHERE NOT EXISTS (SELECT 1 FROM sandboxes s"
				      " WHERE s.active_vmm_id = r.vmm_id OR s.target_vmm_id = r.vmm_id)");

	/*
	 * A starting gate, so that the four really run at once (four processes
	 * started one after another may as well run one after another): the
	 * test holds vmms in EXCLUSIVE mode, which lets the reapers connect and
	 * check the schema (plain reads) but stops each at its first claim (FOR
	 * NO KEY UPDATE); once all four are seen waiting there, the gate opens.
	 */
	gate = PQconnectdb(ci);
	observer = PQconnectdb(ci);
	cr_assert(PQstatus(gate) == CONNECTION_OK && PQstatus(observer) == CONNECTION_OK, "%s",
		  PQerrorMessage(gate));
	PQclear(testdb_exec(gate, "BEGIN; LOCK TABLE vmms IN EXCLUSIVE MODE"));
	for (int i = 0; i < 4; i++) {
		snprintf(out[i], sizeof(out[i]), "/tmp/vmops-reap-%d-%d.json", (int)getpid(), i);
		pid[i] = spawn_reaper(ci, out[i]);
	}
	/* well within the reapers' own lock_timeout (10 s) */
	testdb_wait_n_blocked_by(observer, PQbackendPID(gate), 4, 8000);
	PQclear(testdb_exec(gate, "COMMIT"));
	PQfinish(gate);
	PQfinish(observer);
	for (int i = 0; i < 4; i++) {
		int st;
		char *txt;
		cJSON *j;

		while (waitpid(pid[i], &st, 0) < 0 && errno == EINTR)
			;
		txt = slurp(out[i]);
		unlink(out[i]);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "reaper %d: status %d, out: %s", i, st, txt);
		j = cJSON_Parse(txt);
		cr_assert(j, "reaper %d: not JSON: %s", i, txt);
		cr_expect_eq(jint(j, "errors"), 0, "reaper %d errors", i);
		/* all four started claiming at once, each a batch of 2000 of 200k:
		 * each must have reaped some, or they did not share the work */
		cr_expect_gt(jint(j, "vmms_deleted"), 0, "reaper %d reaped nothing: not concurrent", i);
		cr_log_info("reaper %d: found %lld, deleted %lld, already deleted %lld, batches %lld", i,
			    jint(j, "found"), jint(j, "vmms_deleted"), jint(j, "vmms_already_deleted"),
			    jint(j, "batches"));
		found += jint(j, "found");
		deleted += jint(j, "vmms_deleted");
		already += jint(j, "vmms_already_deleted");
		res += jint(j, "reservations_deleted");
		batches += jint(j, "batches");
		cJSON_Delete(j);
		free(txt);
	}
	cr_expect_eq(deleted, n, "vmms_deleted summed over four reapers: %lld", deleted);
	cr_expect_eq(found, deleted + already);
	cr_expect_eq(res, nres);
	/* no VMM deleted twice: one audit row each, and none left behind */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps WHERE state IS NOT NULL"), n);
	cr_expect_eq(testdb_ll(c, "SELECT count(DISTINCT vmm_id) FROM vmm_reaps WHERE state IS NOT NULL"), n);
	/* every freed reservation attributed once, to the batch that reaped its VMM */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps WHERE reservation_memory_mb IS NOT NULL"), nres);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps WHERE state IS NULL"), 0);
	/* one audit row per committed batch of every reaper (a batch whose VMMs
	 * another run had deleted first, with no reservation, writes none) */
	if (already == 0)
		cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'reap-batch'"), batches);
	cr_expect_leq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'reap-batch'"), batches);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE time_deleted IS NULL"), 150);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM reservations"),
		     testdb_ll(c, "SELECT count(*) FROM vmms WHERE id <= 200 AND id % 3 = 0 AND time_deleted IS NULL"));
	/* the workers' reserved totals followed every batch of every reaper */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM workers w WHERE (w.reserved_memory_mb, w.reserved_vcpus) <>"
				  " (SELECT coalesce(sum(memory_mb), 0), coalesce(sum(vcpus), 0) FROM reservations r"
				  "  WHERE r.worker_id = w.id)"), 0);
	PQfinish(c);
}

/*
 * The view vmm_reaps also gives the per-VMM audit rows that vmm-reap wrote
 * before schema version 8 (action reap, and reap-reservation for a
 * reservation freed without its VMM), next to the batch rows.
 */
Test(reap, audit_view_keeps_rows_written_before_version_8)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci));
	struct testrun r;
	char *rows;

	PQclear(testdb_exec(c,
		"INSERT INTO audit_log (actor, program, action, object_type, object_id, before, after) VALUES"
		" ('a@h', 'vmm-reap', 'reap', 'vmm', 5,"
		"  '{\"state\": \"destroyed\", \"sandbox_id\": 3, \"worker_id\": 1, \"time_deleted\": null,"
		"    \"reservation\": {\"worker_id\": 1, \"memory_mb\": 768, \"vcpus\": 3}}',"
		"  '{\"time_deleted\": \"2026-01-02T03:04:05+00:00\", \"reservation\": null}'),"
		" ('a@h', 'vmm-reap', 'reap-reservation', 'vmm', 6,"
		"  '{\"state\": null, \"sandbox_id\": null, \"worker_id\": null, \"time_deleted\": null,"
		"    \"reservation\": {\"worker_id\": 1, \"memory_mb\": 1024, \"vcpus\": 1}}',"
		"  '{\"time_deleted\": null, \"reservation\": null}'),"
		" ('a@h', 'vm-fleet', 'destroy', 'vmm', 6, NULL, NULL)"));
	TESTRUN(&r, "vmm-reap", "--db", ci, "-q");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	testrun_free(&r);
	rows = text_of(c, "SELECT string_agg(format('%s %s %s/%s/%s %s %s/%s/%s', vmm_id, coalesce(state, '-'),"
			  " sandbox_id, worker_id, coalesce(to_char(time_deleted AT TIME ZONE 'UTC', 'YYYY-MM-DD'), '-'),"
			  " program, reservation_worker_id, reservation_memory_mb, reservation_vcpus), ', '"
			  " ORDER BY audit_id, vmm_id) FROM vmm_reaps WHERE vmm_id IN (5, 6) OR audit_id <= 2");
	cr_expect_str_eq(rows, "5 destroyed 3/1/2026-01-02 vmm-reap 1/768/3, 6 - //- vmm-reap 1/1024/1");
	free(rows);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps"), 5);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps WHERE audit_id = 4"), 3);
	PQfinish(c);
}

static void expect_usage_error(const char *ci, const char *const *argv)
{
	struct testrun r;

	testrun(&r, argv);
	cr_expect_eq(r.status, 2, "%s %s: exit %d, stderr: %s", argv[1], argv[2], r.status, r.err);
	cr_expect_eq(testlib_lines(r.err), 2, "stderr: %s", r.err);
	cr_expect(strstr(r.err, "\nTry 'vmm-reap --help' for more information.\n"), "stderr: %s", r.err);
	cr_expect_str_eq(r.out, "");
	testrun_free(&r);
	(void)ci;
}

Test(reap, bad_input_is_a_usage_error_without_database_contact)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci));
	/* an unreachable database: contacting it would exit 5, not 2 */
	const char *nodb = "host=/nonexistent dbname=nothing";

	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--batch", "0", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--batch", "ten", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--batch", "100001", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--limit", "-1", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--sessions", "0", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--sessions", "9", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--older-than", "5", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--older-than", "-5m", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--older-than", "5 m", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "extra", "--db", nodb, NULL });
	expect_usage_error(ci, (const char *const[]){ "vmm-reap", "--batch", "0", "--db", ci, NULL });
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE time_deleted IS NOT NULL"), 1);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 0);
	PQfinish(c);
}

Test(reap, unreachable_database_and_missing_schema)
{
	char ci[256];
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	struct testrun r;

	TESTRUN(&r, "vmm-reap", "--db", ci);
	cr_expect_eq(r.status, 6, "exit %d: %s", r.status, r.err);
	cr_expect(strstr(r.err, "vm-fleet init"), "stderr: %s", r.err);
	testrun_free(&r);
	TESTRUN(&r, "vmm-reap", "--db", "host=/nonexistent dbname=nothing");
	cr_expect_eq(r.status, 5, "exit %d: %s", r.status, r.err);
	cr_expect_eq(testlib_lines(r.err), 1, "stderr: %s", r.err);
	testrun_free(&r);
	PQfinish(c);
}

/* A pid that is certainly gone: a child that exited and was waited for. */
static pid_t dead_pid(void)
{
	pid_t p = fork();

	cr_assert_geq(p, 0);
	if (p == 0)
		_exit(0);
	cr_assert_eq(waitpid(p, NULL, 0), p);
	return p;
}

static void mkdir_private(const char *base, const char *rel, const char *file)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", base, rel);
	cr_assert_eq(mkdir(path, 0700), 0, "%s: %s", path, strerror(errno));
	if (file) {
		snprintf(path, sizeof(path), "%s/%s/%s", base, rel, file);
		f = fopen(path, "w");
		cr_assert(f);
		fputs("heartbeat 1\n", f);
		fclose(f);
	}
}

static bool exists_in(const char *base, const char *rel)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", base, rel);
	return access(path, F_OK) == 0;
}

/*
 * The run directories of the VMMs it reaps go, but only on this host and
 * only where the process is positively gone: vmm 3 (this host, dead pid)
 * goes; vmm 4 (this host, a live pid without a start time: unknown) and
 * vmm 7 (another host's worker) keep theirs.
 */
Test(reap, run_directories_of_gone_vmms_on_this_host)
{
	char ci[256], base[] = "/tmp/vmops-reap-rd.XXXXXX", sql[2048];
	PGconn *c = setup(ci, sizeof(ci));
	struct testrun r;

	cr_assert(mkdtemp(base));
	mkdir_private(base, "w1", NULL);
	mkdir_private(base, "w2", NULL);
	mkdir_private(base, "w1/vmm-3", "serial.log");
	mkdir_private(base, "w1/vmm-4", "serial.log");
	mkdir_private(base, "w2/vmm-7", "serial.log");
	snprintf(sql, sizeof(sql),
		 "UPDATE workers SET host_id = 'reap-host-' || id;"
		 "UPDATE vmms SET run_dir = '%s/w1/vmm-3', pid = %d, pid_start_time = 12345 WHERE id = 3;"
		 "UPDATE vmms SET run_dir = '%s/w1/vmm-4', pid = %d WHERE id = 4;"
		 "UPDATE vmms SET run_dir = '%s/w2/vmm-7', pid = %d, pid_start_time = 12345 WHERE id = 7;",
		 base, (int)dead_pid(), base, (int)getpid(), base, (int)dead_pid());
	PQclear(testdb_exec(c, sql));
	setenv("VMOPS_HOST_ID", "reap-host-1", 1);
	TESTRUN(&r, "vmm-reap", "--db", ci, "--json");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE id IN (3, 4, 7) AND time_deleted IS NOT NULL"), 3);
	cr_expect_not(exists_in(base, "w1/vmm-3"), "the dead vmm's run directory is still there");
	cr_expect(exists_in(base, "w1/vmm-4/serial.log"), "removed under a process that may live");
	cr_expect(exists_in(base, "w2/vmm-7/serial.log"), "removed another host's run directory");
	testrun_free(&r);
	snprintf(sql, sizeof(sql), "rm -rf --one-file-system '%s'", base);
	(void)system(sql);
	PQfinish(c);
}

/*
 * The audit row's columns are each in VMM id order, also when the tables
 * hold the rows in another order and the plan reads them in that order:
 * vmm 3 and its reservation get new row versions (so the tables hold 4, 7,
 * 3), and index scans are off for the run.
 */
Test(reap, audit_columns_in_id_order_whatever_the_plan)
{
	char ci[256], ci_noidx[400], *cols;
	PGconn *c = setup(ci, sizeof(ci));
	struct testrun r;

	PQclear(testdb_exec(c, "UPDATE vmms SET control_socket = NULL WHERE id = 3;"
			       "UPDATE reservations SET time_created = time_created WHERE vmm_id = 3"));
	snprintf(ci_noidx, sizeof(ci_noidx), "%s options='-c enable_indexscan=off -c enable_bitmapscan=off'", ci);
	TESTRUN(&r, "vmm-reap", "--db", ci_noidx, "-q");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	testrun_free(&r);
	cols = text_of(c, "SELECT concat_ws(' ', before->'vmms'->'id', before->'vmms'->'state',"
			  " before->'vmms'->'worker_id', before->'reservations'->'vmm_id',"
			  " before->'reservations'->'memory_mb') FROM audit_log");
	cr_expect_str_eq(cols, "[3, 4, 7] [\"destroyed\", \"failed\", \"destroyed\"] [1, 1, 2] [3, 7] [2048, 512]");
	free(cols);
	PQfinish(c);
}

/*
 * A batch that fails is rolled back and its VMMs are reaped one per
 * transaction: the one that fails again (vmm 4, refused by a trigger) is
 * one error and stays as it was; the others (3 and 7) are reaped, each with
 * its own audit row, and their run directories on this host go as they
 * would after a whole batch.
 */
Test(reap, a_failed_batch_is_reaped_one_by_one)
{
	char ci[256], base[] = "/tmp/vmops-reap-fb.XXXXXX", sql[2048], *ids;
	PGconn *c = setup(ci, sizeof(ci));
	struct testrun r;
	cJSON *j;

	cr_assert(mkdtemp(base));
	mkdir_private(base, "vmm-3", "serial.log");
	mkdir_private(base, "vmm-7", "serial.log");
	snprintf(sql, sizeof(sql),
		 "UPDATE workers SET host_id = 'reap-host-1';"
		 "UPDATE vmms SET run_dir = '%s/vmm-' || id, pid = %d, pid_start_time = 12345 WHERE id IN (3, 7);"
		 "CREATE FUNCTION refuse_4() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
		 " IF NEW.id = 4 THEN RAISE EXCEPTION 'vmm 4 is held for the test'; END IF; RETURN NEW; END $$;"
		 "CREATE TRIGGER refuse_4 BEFORE UPDATE ON vmms FOR EACH ROW EXECUTE FUNCTION refuse_4();",
		 base, (int)dead_pid());
	PQclear(testdb_exec(c, sql));
	setenv("VMOPS_HOST_ID", "reap-host-1", 1);
	TESTRUN(&r, "vmm-reap", "--db", ci, "--json", "-v", "--sessions", "1");
	cr_expect_eq(r.status, 1, "exit %d: %s", r.status, r.err);
	cr_expect(strstr(r.err, "reaping its 3 vmms one by one"), "%s", r.err);
	j = json_of(&r);
	cr_expect_eq(jint(j, "found"), 3);
	cr_expect_eq(jint(j, "vmms_deleted"), 2);
	cr_expect_eq(jint(j, "reservations_deleted"), 2);
	cr_expect_eq(jint(j, "errors"), 1);
	cr_expect_eq(jint(j, "batches"), 2, "one transaction per VMM that committed");
	cr_expect(strstr(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "reap"), "last_error")->valuestring,
			 "vmm 4: database: vmm 4 is held for the test"), "%s", r.out);
	cJSON_Delete(j);
	testrun_free(&r);
	ids = text_of(c, deleted_ids_sql);
	cr_expect_str_eq(ids, "3,5,7", "vmm 4 stays as it was");
	free(ids);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'reap-batch'"), 2);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps WHERE state IS NOT NULL AND vmm_id IN (3, 7)"), 2);
	cr_expect_not(exists_in(base, "vmm-3"), "vmm 3's run directory is still there");
	cr_expect_not(exists_in(base, "vmm-7"), "vmm 7's run directory is still there");
	unsetenv("VMOPS_HOST_ID");
	snprintf(sql, sizeof(sql), "rm -rf --one-file-system '%s'", base);
	(void)system(sql);
	PQfinish(c);
}

/*
 * A session whose connection is lost mid-run stops the run (exit 5, the
 * database) once the other session's batch in flight is done: what the
 * stopped line says was deleted is what the database holds, the lost
 * session's batch is rolled back whole (vmm 1501 is in it), and a second
 * run reaps the rest, each VMM once.  The batch is held by a trigger that
 * sleeps on vmm 1501; the test ends that backend.
 */
Test(reap, a_session_lost_mid_run_stops_the_run_and_says_what_it_did)
{
	char ci[256], *p;
	PGconn *c = abandoned_fleet(ci, sizeof(ci), 3000, 100, 1, 256);
	struct testproc proc;
	struct testrun r;
	long long found, deleted, res, held = 0;
	cJSON *j;

	PQclear(testdb_exec(c,
		"CREATE FUNCTION hold_1501() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
		" IF NEW.id = 1501 THEN PERFORM pg_sleep(60); END IF; RETURN NEW; END $$;"
		"CREATE TRIGGER hold_1501 BEFORE UPDATE ON vmms FOR EACH ROW EXECUTE FUNCTION hold_1501();"));
	TESTRUN_START(&proc, "vmm-reap", "--db", ci, "--json", "--batch", "100", "--sessions", "2");
	for (int i = 0; i < 400 && !held; i++) {
		usleep(50000);
		held = testdb_ll(c, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
				    " WHERE datname = current_database() AND wait_event = 'PgSleep'");
	}
	cr_assert_eq(held, 1, "no session was seen held at vmm 1501");
	testrun_finish(&proc, &r);
	cr_expect_eq(r.status, 5, "exit %d: %s", r.status, r.err);
	cr_expect(strstr(r.err, "database connection lost"), "%s", r.err);
	p = strstr(r.err, "stopped after ");
	cr_assert(p, "%s", r.err);
	cr_assert_eq(sscanf(p, "stopped after %lld vmms found, %lld deleted, %lld reservations deleted",
			    &found, &deleted, &res), 3, "%s", r.err);
	testrun_free(&r);
	cr_expect_eq(deleted, testdb_ll(c, "SELECT count(*) FROM vmms WHERE time_deleted IS NOT NULL"));
	cr_expect_eq(found, deleted);
	cr_expect_eq(res, testdb_ll(c, "SELECT 30 - count(*) FROM reservations"));
	cr_expect_eq(deleted, testdb_ll(c, "SELECT count(*) FROM vmm_reaps WHERE state IS NOT NULL"));
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE id = 1501 AND time_deleted IS NULL"), 1,
		     "the held batch was not rolled back");
	cr_expect_lt(deleted, 3000);

	PQclear(testdb_exec(c, "DROP TRIGGER hold_1501 ON vmms"));
	TESTRUN(&r, "vmm-reap", "--db", ci, "--json");
	cr_assert_eq(r.status, 0, "exit %d: %s", r.status, r.err);
	j = json_of(&r);
	cr_expect_eq(jint(j, "vmms_deleted"), 3000 - deleted);
	cJSON_Delete(j);
	testrun_free(&r);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmms WHERE time_deleted IS NULL"), 0);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM reservations"), 0);
	cr_expect_eq(testdb_ll(c, "SELECT count(DISTINCT vmm_id) FROM vmm_reaps WHERE state IS NOT NULL"), 3000);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM vmm_reaps WHERE state IS NOT NULL"), 3000);
	cr_expect_eq(testdb_ll(c, "SELECT reserved_memory_mb FROM workers"), 0);
	PQfinish(c);
}

/* On a terminal, a progress line per batch on stderr; without one, none (text_output). */
Test(reap, progress_line_on_a_tty_only)
{
	char ci[256], cmd[1024], line[1400], out[8192];
	PGconn *c = setup(ci, sizeof(ci));
	size_t n;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "%s/vmm-reap --db '%s' --batch 1",
		 getenv("VMOPS_BIN_DIR") ? getenv("VMOPS_BIN_DIR") : "bin", ci);
	snprintf(line, sizeof(line), "script -qefc \"%s\" /dev/null 2>&1", cmd);
	p = popen(line, "r");
	cr_assert(p);
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	cr_assert_eq(pclose(p), 0, "%s", out);
	cr_assert(strstr(out, "\rvmm-reap: batch 1: 1 vmms found, 1 deleted"), "%s", out);
	cr_assert(strstr(out, "\rvmm-reap: batch 3: 3 vmms found, 3 deleted, 2 reservations deleted"), "%s", out);
	cr_assert(strstr(out, "vmms_deleted:         3"), "%s", out);
	PQfinish(c);
}
