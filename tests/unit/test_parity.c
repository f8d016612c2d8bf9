/* SPDX-License-Identifier: MIT */
/*
 * usage-parity against a real PostgreSQL: for every category a fixture that
 * creates exactly that drift, a run that finds it, a --fix that repairs it
 * (or, where no repair is safe, leaves everything as it was), and a run
 * that then finds nothing.  Plus the time parser and the default window.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parity.h"
#include "testlib.h"

TestSuite(parity, .timeout = 60);

/* A window with nothing in it: the state categories alone. */
#define EMPTY_WINDOW "--from", "2001-01-01", "--to", "2001-01-02"

/*
 * The healthy part of every fixture: workers w1 and w2 (terminated ones are
 * added by the tests), sandbox s0 of org-a running on w1 since 5 hours ago,
 * billed by a closed event then an open one, with usage samples.
 */
static const char base[] =
	"INSERT INTO workers (name, memory_mb, vcpus) VALUES ('w1', 65536, 64), ('w2', 65536, 64);"
	"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus, time_status_updated)"
	" VALUES ('s0', 'org-a', 'running', 1, 1024, 1, now() - interval '5 hours');"
	"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (1, 1, 'qemu', 'running');"
	"UPDATE sandboxes SET active_vmm_id = 1 WHERE name = 's0';"
	"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at, ended_at)"
	" VALUES (1, 'org-a', 1, 1, 512, 1, now() - interval '5 hours', now() - interval '3 hours'),"
	"        (1, 'org-a', 1, 1, 1024, 1, now() - interval '3 hours', NULL);"
	"INSERT INTO usage_samples (org_id, sandbox_id, worker_id, period_start, period_end, memory_mb)"
	" SELECT 'org-a', 1, 1, now() - i * interval '1 hour', now() - (i - 1) * interval '1 hour', 1024"
	" FROM generate_series(1, 3) i;";

/* A sandbox s1 of org-b running on worker W since 4 hours ago, with its VMM. */
#define S1(worker, mem) \
	"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus, time_status_updated)" \
	" VALUES ('s1', 'org-b', 'running', " worker ", " mem ", 2, now() - interval '4 hours');" \
	"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state)" \
	" VALUES ((SELECT id FROM sandboxes WHERE name = 's1'), " worker ", 'qemu', 'running');" \
	"UPDATE sandboxes SET active_vmm_id = (SELECT max(id) FROM vmms) WHERE name = 's1';"

#define S1_OPEN(mem) \
	"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at)" \
	" SELECT id, org_id, worker_id, active_vmm_id, " mem ", 2, now() - interval '4 hours'" \
	" FROM sandboxes WHERE name = 's1';"

static PGconn *setup(char *ci, size_t len, const char *sql)
{
	PGconn *c = testdb_new(true, ci, len);

	PQclear(testdb_exec(c, base));
	if (sql)
		PQclear(testdb_exec(c, sql));
	return c;
}

static cJSON *json_of(const struct testrun *r)
{
	cJSON *j = cJSON_Parse(r->out);

	cr_assert(j, "stdout is not JSON:\n%s\nstderr:\n%s", r->out, r->err);
	return j;
}

static const cJSON *get(const cJSON *o, const char *k)
{
	return cJSON_GetObjectItemCaseSensitive(o, k);
}

static long long total_count(const cJSON *j, const char *cat)
{
	const cJSON *t;

	cJSON_ArrayForEach(t, get(j, "totals"))
		if (strcmp(get(t, "category")->valuestring, cat) == 0)
			return (long long)get(t, "count")->valuedouble;
	cr_assert_fail("no totals row for %s", cat);
	return -1;
}

static long long summary_int(const cJSON *j, const char *k)
{
	const cJSON *v = get(get(j, "summary"), k);

	cr_assert(cJSON_IsNumber(v), "summary.%s is not a number", k);
	return (long long)v->valuedouble;
}

/* The only finding: of this category.  Returns it. */
static const cJSON *only_finding(const cJSON *j, const char *cat)
{
	const cJSON *f = get(j, "findings");

	cr_assert_eq(cJSON_GetArraySize(f), 1, "expected one finding, got %d:\n%s", cJSON_GetArraySize(f),
		     cJSON_Print(f));
	f = cJSON_GetArrayItem(f, 0);
	cr_assert_str_eq(get(f, "category")->valuestring, cat);
	cr_assert_eq(total_count(j, cat), 1);
	cr_assert(cJSON_IsNumber(get(f, "drift_gbs")), "drift_gbs is not a number");
	return f;
}

static double num(const cJSON *o, const char *k)
{
	const cJSON *v = get(o, k);

	cr_assert(cJSON_IsNumber(v), "%s is not a number", k);
	return v->valuedouble;
}

/* Run usage-parity with --json; returns the parsed output and the exit status. */
#define PARITY(st, ...) parity_run((st), (const char *const[]){ "usage-parity", "--json", __VA_ARGS__, NULL })

static cJSON *parity_run(int *status, const char *const *argv)
{
	struct testrun r;
	cJSON *j;

	testrun(&r, argv);
	*status = r.status;
	j = json_of(&r);
	testrun_free(&r);
	return j;
}

/* A digest of every usage sample, every column: --fix must never edit one. */
struct digest {
	char text[64];   /* "count:md5" */
};

static struct digest samples_digest(PGconn *c)
{
	PGresult *r = testdb_exec(c, "SELECT count(*) || ':' || coalesce(md5(string_agg(u::text, ',' ORDER BY u.id)), '')"
				     " FROM usage_samples u");
	struct digest d;

	snprintf(d.text, sizeof(d.text), "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	return d;
}

/* Find it, fix it, find nothing: the common tail of the repairable categories. */
static void find_fix_clean(PGconn *c, const char *ci, const char *cat, const char *action,
			   const char *audit_action, double drift_lo, double drift_hi)
{
	struct digest samples = samples_digest(c);
	const cJSON *f;
	cJSON *j;
	int st;

	j = PARITY(&st, "--db", ci, EMPTY_WINDOW);
	cr_assert_eq(st, 3, "exit %d", st);
	f = only_finding(j, cat);
	cr_expect(num(f, "drift_gbs") >= drift_lo && num(f, "drift_gbs") <= drift_hi,
		  "%s drift_gbs %f not in [%f, %f]", cat, num(f, "drift_gbs"), drift_lo, drift_hi);
	cr_expect(cJSON_IsNull(get(f, "action")));
	cr_expect_str_eq(get(get(j, "summary"), "status")->valuestring, "drift");
	cJSON_Delete(j);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 0, "detection wrote audit rows");

	j = PARITY(&st, "--db", ci, EMPTY_WINDOW, "--fix");
	cr_assert_eq(st, 4, "--fix: exit %d", st);
	f = only_finding(j, cat);
	cr_expect_str_eq(get(f, "action")->valuestring, action);
	cr_expect(cJSON_IsTrue(get(f, "fixed")));
	cr_expect_eq(summary_int(j, "remaining"), 0);
	cr_expect_eq(summary_int(j, "fixed"), 1);
	cr_expect_str_eq(get(get(j, "summary"), "status")->valuestring, "fixed");
	cJSON_Delete(j);
	{
		char sql[256];
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM audit_log WHERE program = 'usage-parity'"
			 " AND action = '%s' AND object_type = 'scale_event' AND detail LIKE '%s:%%'", audit_action, cat);
		cr_expect_eq(testdb_ll(c, sql), 1, "audit row for %s", audit_action);
	}
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 1);
	cr_expect_str_eq(samples_digest(c).text, samples.text, "usage samples were edited");

	j = PARITY(&st, "--db", ci, EMPTY_WINDOW);
	cr_expect_eq(st, 0, "after --fix: exit %d", st);
	cr_expect_eq(cJSON_GetArraySize(get(j, "findings")), 0);
	cJSON_Delete(j);
}

Test(parity, clean_fleet_is_clean)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci), NULL);
	struct testrun r;
	cJSON *j;
	int st;

	/* the state categories, and the usage comparison over the last 3 hours */
	j = PARITY(&st, "--db", ci, "--from", "now-3h", "--to", "now");
	cr_expect_eq(st, 0, "exit %d: %s", st, cJSON_Print(j));
	cr_expect_eq(cJSON_GetArraySize(get(j, "findings")), 0);
	cr_expect_eq(cJSON_GetArraySize(get(j, "totals")), 8);
	cr_expect_str_eq(get(get(j, "summary"), "status")->valuestring, "clean");
	cr_expect(cJSON_IsNumber(get(get(j, "summary"), "tolerance_pct")));
	cJSON_Delete(j);
	j = PARITY(&st, "--db", ci, "--from", "now-3h", "--to", "now", "--fix");
	cr_expect_eq(st, 0);
	cr_expect_eq(summary_int(j, "remaining"), 0);
	cJSON_Delete(j);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 0);

	TESTRUN(&r, "usage-parity", "--db", ci, "-q");
	cr_expect_eq(r.status, 0);
	cr_expect_str_eq(r.out, "");
	testrun_free(&r);
	PQfinish(c);
}

Test(parity, open_event_for_stopped_sandbox)
{
	char ci[256];
	/* stopped 30 minutes ago without its billing closed (legacy drift) */
	PGconn *c = setup(ci, sizeof(ci), S1("1", "2048") S1_OPEN("2048")
		"SET session_replication_role = replica;"
		"UPDATE sandboxes SET status = 'stopped', time_status_updated = now() - interval '30 minutes'"
		" WHERE name = 's1';"
		"RESET session_replication_role;");

	/* 2 GiB for the 30 minutes since the stop */
	find_fix_clean(c, ci, "open_terminal", "closed", "close-leaked-event", 3600, 3700);
	/* closed exactly when the sandbox left running */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
				  " WHERE s.name = 's1' AND e.ended_at = s.time_status_updated"), 1);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 1);
	PQfinish(c);
}

Test(parity, open_event_on_terminated_worker)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci), S1("2", "2048") S1_OPEN("2048")
		"SET session_replication_role = replica;"
		"UPDATE workers SET state = 'terminated', time_state_updated = now() - interval '20 minutes'"
		" WHERE name = 'w2';"
		"RESET session_replication_role;");

	find_fix_clean(c, ci, "open_worker_terminated", "closed", "close-leaked-event", 2400, 2500);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events e JOIN workers w ON w.id = e.worker_id"
				  " WHERE w.name = 'w2' AND e.ended_at = w.time_state_updated"), 1);
	PQfinish(c);
}

Test(parity, open_event_with_dead_vmm)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci), S1("1", "2048") S1_OPEN("2048")
		"UPDATE vmms SET state = 'failed' WHERE id = (SELECT active_vmm_id FROM sandboxes WHERE name = 's1');"
		"UPDATE vmms SET time_state_updated = now() - interval '10 minutes'"
		" WHERE id = (SELECT active_vmm_id FROM sandboxes WHERE name = 's1');");

	find_fix_clean(c, ci, "open_vmm_dead", "closed", "close-leaked-event", 1200, 1300);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events e JOIN vmms v ON v.id = e.vmm_id"
				  " WHERE v.state = 'failed' AND e.ended_at = v.time_state_updated"), 1);
	PQfinish(c);
}

Test(parity, one_finding_per_event_first_category_wins)
{
	char ci[256];
	/* stopped, on a terminated worker, with a dead VMM, at the wrong size */
	PGconn *c = setup(ci, sizeof(ci), S1("2", "4096") S1_OPEN("2048")
		"UPDATE vmms SET state = 'destroyed' WHERE id = (SELECT active_vmm_id FROM sandboxes WHERE name = 's1');"
		"SET session_replication_role = replica;"
		"UPDATE sandboxes SET status = 'error', time_status_updated = now() - interval '1 hour' WHERE name = 's1';"
		"UPDATE workers SET state = 'terminated' WHERE name = 'w2';"
		"RESET session_replication_role;");

	find_fix_clean(c, ci, "open_terminal", "closed", "close-leaked-event", 7150, 7300);
	PQfinish(c);
}

Test(parity, event_size_differs_from_sandbox)
{
	char ci[256];
	/* resized to 4 GiB without a new event: billed at 2 GiB for 4 hours */
	PGconn *c = setup(ci, sizeof(ci), S1("1", "4096") S1_OPEN("2048"));

	find_fix_clean(c, ci, "size_mismatch", "resized", "resize-event", -28900, -28700);
	/* the old event closed, a new one opened at the sandbox's size where it ended */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events o JOIN scale_events n"
				  " ON n.sandbox_id = o.sandbox_id AND n.started_at = o.ended_at"
				  " JOIN sandboxes s ON s.id = n.sandbox_id"
				  " WHERE s.name = 's1' AND o.memory_mb = 2048 AND o.ended_at IS NOT NULL"
				  " AND n.ended_at IS NULL AND n.memory_mb = 4096 AND n.vcpus = 2"
				  " AND n.worker_id = o.worker_id AND n.vmm_id = o.vmm_id"), 1);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events"), 4);
	PQfinish(c);
}

Test(parity, running_sandbox_without_open_event)
{
	char ci[256];
	/* its last event ended an hour ago; it has been running since 4 hours ago */
	PGconn *c = setup(ci, sizeof(ci), S1("1", "2048")
		"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at, ended_at)"
		" SELECT id, org_id, worker_id, active_vmm_id, 2048, 2, now() - interval '4 hours', now() - interval '1 hour'"
		" FROM sandboxes WHERE name = 's1';");

	find_fix_clean(c, ci, "missing_event", "opened", "open-missing-event", -7300, -7150);
	/* opened where the last one ended, at the sandbox's size, worker and VMM */
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events o JOIN scale_events n"
				  " ON n.sandbox_id = o.sandbox_id AND n.started_at = o.ended_at"
				  " JOIN sandboxes s ON s.id = n.sandbox_id"
				  " WHERE s.name = 's1' AND n.ended_at IS NULL AND n.memory_mb = 2048 AND n.vcpus = 2"
				  " AND n.worker_id = s.worker_id AND n.vmm_id = s.active_vmm_id AND n.org_id = 'org-b'"), 1);
	PQfinish(c);
}

/*
 * Pending sandboxes whose launch never finished (vm-fleet launch killed with
 * SIGKILL): p1's VMM starting for 20 minutes (with a pid), p2's running (the
 * two-row commit cannot leave that, an outside writer can), p3's starting
 * for a minute (a launch in progress), p4's starting long ago but destroyed
 * meanwhile, p5 long starting but billed.  p1 and p2 are findings, reported
 * and never "fixed" here: whether the VM runs is its worker's to say.
 */
#define PENDING(name, state, age, extra) \
	"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)" \
	" VALUES ('" name "', 'org-p', 'pending', 1, 2048, 1);" \
	"INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state, pid, pid_start_time, time_created," \
	" time_state_updated) SELECT id, 1, 'qemu', '" state "', 4321, 777, now() - interval '" age "'," \
	" now() - interval '" age "' FROM sandboxes WHERE name = '" name "';" \
	"UPDATE sandboxes SET target_vmm_id = (SELECT max(id) FROM vmms) WHERE name = '" name "';" extra

Test(parity, pending_sandbox_with_a_live_vmm)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci),
		PENDING("p1", "starting", "20 minutes", "")
		PENDING("p2", "running", "1 minute", "")
		PENDING("p3", "starting", "1 minute", "")
		PENDING("p4", "starting", "2 hours", "UPDATE vmms SET state = 'destroyed' WHERE id = (SELECT max(id) FROM vmms);")
		PENDING("p5", "starting", "2 hours",
			"INSERT INTO scale_events (sandbox_id, org_id, worker_id, memory_mb, vcpus)"
			" SELECT id, org_id, 1, 2048, 1 FROM sandboxes WHERE name = 'p5';"));
	const cJSON *f, *g;
	cJSON *j;
	int st;

	j = PARITY(&st, "--db", ci, EMPTY_WINDOW);
	cr_assert_eq(st, 3, "exit %d", st);
	cr_assert_eq(total_count(j, "pending_live_vmm"), 2, "%s", cJSON_Print(j));
	f = cJSON_GetArrayItem(get(j, "findings"), 0);
	g = cJSON_GetArrayItem(get(j, "findings"), 1);
	cr_expect_str_eq(get(f, "sandbox")->valuestring, "p1");
	cr_expect_str_eq(get(g, "sandbox")->valuestring, "p2");
	cr_expect(strstr(get(f, "detail")->valuestring, "starting since"), "%s", get(f, "detail")->valuestring);
	cr_expect(strstr(get(f, "detail")->valuestring, "(pid 4321)"), "%s", get(f, "detail")->valuestring);
	cr_expect(strstr(get(f, "detail")->valuestring, "run ghost-reap on w1"), "%s", get(f, "detail")->valuestring);
	/* 2 GiB unbilled for 20 minutes, if it runs */
	cr_expect(num(f, "drift_gbs") < -2390 && num(f, "drift_gbs") > -2410, "drift %f", num(f, "drift_gbs"));
	cJSON_Delete(j);

	/* a shorter --starting-timeout: the launch in progress is judged too */
	j = PARITY(&st, "--db", ci, EMPTY_WINDOW, "--starting-timeout", "30s");
	cr_assert_eq(st, 3, "exit %d", st);
	cr_expect_eq(total_count(j, "pending_live_vmm"), 3);
	cJSON_Delete(j);
	j = PARITY(&st, "--db", ci, EMPTY_WINDOW, "--starting-timeout", "1h");
	cr_expect_eq(total_count(j, "pending_live_vmm"), 1);  /* p2, running */
	cJSON_Delete(j);

	/* --fix knows no safe repair: reported, left as is, exit 3 */
	j = PARITY(&st, "--db", ci, EMPTY_WINDOW, "--fix");
	cr_assert_eq(st, 3, "exit %d", st);
	cr_expect_eq(summary_int(j, "remaining"), 2);
	f = cJSON_GetArrayItem(get(j, "findings"), 0);
	cr_expect(cJSON_IsNull(get(f, "action")));
	cr_expect(cJSON_IsFalse(get(f, "fixed")));
	cJSON_Delete(j);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 0);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL"), 2);

	/* ghost-reap repaired them (VMM failed, sandbox error): nothing left */
	PQclear(testdb_exec(c, "UPDATE vmms SET state = 'failed' WHERE sandbox_id IN"
			       " (SELECT id FROM sandboxes WHERE name IN ('p1', 'p2'));"
			       "UPDATE sandboxes SET status = 'error' WHERE name IN ('p1', 'p2')"));
	j = PARITY(&st, "--db", ci, EMPTY_WINDOW);
	cr_expect_eq(st, 0, "exit %d: %s", st, cJSON_Print(j));
	cJSON_Delete(j);
	PQfinish(c);
}

Test(parity, overlapping_events)
{
	char ci[256];
	/* the first event was closed an hour late, over its successor */
	PGconn *c = setup(ci, sizeof(ci), S1("1", "2048")
		"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at, ended_at)"
		" SELECT id, org_id, worker_id, active_vmm_id, 1024, 2, now() - interval '4 hours', now() - interval '1 hour'"
		" FROM sandboxes WHERE name = 's1';"
		"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at)"
		" SELECT id, org_id, worker_id, active_vmm_id, 2048, 2, now() - interval '2 hours'"
		" FROM sandboxes WHERE name = 's1';");
	struct digest samples = samples_digest(c);
	const cJSON *f;
	cJSON *j;
	int st;

	/* the usage comparison is not what this test is about: tolerate everything */
	j = PARITY(&st, "--db", ci, "--from", "now-5h", "--to", "now", "--tolerance", "100");
	cr_assert_eq(st, 3, "exit %d", st);
	f = only_finding(j, "overlap");
	cr_expect_eq(num(f, "event_id"), 3);
	cr_expect_eq(num(f, "other_event_id"), 4);
	/* 1 GiB billed twice for an hour */
	cr_expect(num(f, "drift_gbs") > 3590 && num(f, "drift_gbs") < 3610, "drift %f", num(f, "drift_gbs"));
	cJSON_Delete(j);
	/* outside the window: not seen */
	j = PARITY(&st, "--db", ci, "--from", "now-10h", "--to", "now-5h", "--tolerance", "100");
	cr_expect_eq(st, 0);
	cJSON_Delete(j);

	j = PARITY(&st, "--db", ci, "--from", "now-5h", "--to", "now", "--tolerance", "100", "--fix");
	cr_assert_eq(st, 4, "exit %d", st);
	f = only_finding(j, "overlap");
	cr_expect_str_eq(get(f, "action")->valuestring, "trimmed");
	cJSON_Delete(j);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events a JOIN scale_events b ON b.id = 4"
				  " WHERE a.id = 3 AND a.ended_at = b.started_at"), 1);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log WHERE action = 'trim-overlapping-event'"
				  " AND object_id = 3 AND (before->>'ended_at') IS NOT NULL"), 1);
	cr_expect_str_eq(samples_digest(c).text, samples.text, "usage samples were edited");
	j = PARITY(&st, "--db", ci, "--from", "now-5h", "--to", "now", "--tolerance", "100");
	cr_expect_eq(st, 0);
	cJSON_Delete(j);
	PQfinish(c);
}

/* The identity of each finding: what --json says besides the drift figures. */
static void expect_same_findings(const cJSON *a, const cJSON *b)
{
	static const char *const keys[] = { "category", "org", "sandbox_id", "sandbox", "event_id", "other_event_id" };
	const cJSON *fa = get(a, "findings"), *fb = get(b, "findings");

	cr_assert_eq(cJSON_GetArraySize(fa), cJSON_GetArraySize(fb));
	for (int i = 0; i < cJSON_GetArraySize(fa); i++)
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
			char *x = cJSON_PrintUnformatted(get(cJSON_GetArrayItem(fa, i), keys[k]));
			char *y = cJSON_PrintUnformatted(get(cJSON_GetArrayItem(fb, i), keys[k]));
			cr_expect_str_eq(x, y, "finding %d: %s", i, keys[k]);
			free(x);
			free(y);
		}
}

/*
 * The checks run in three sessions that share one snapshot.  A role that
 * may hold only one connection gets no second session: then they run one
 * after the other in the first, and find the same.
 */
Test(parity, one_session_finds_what_three_find)
{
	char ci[256], ci1[400], role[80], sql[400];
	PGconn *c = setup(ci, sizeof(ci), S1("1", "2048")
		"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at, ended_at)"
		" SELECT id, org_id, worker_id, active_vmm_id, 1024, 2, now() - interval '4 hours', now() - interval '1 hour'"
		" FROM sandboxes WHERE name = 's1';"
		"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at)"
		" SELECT id, org_id, worker_id, active_vmm_id, 2048, 2, now() - interval '2 hours'"
		" FROM sandboxes WHERE name = 's1';"
		"UPDATE sandboxes SET status = 'stopped' WHERE name = 's0';");
	struct testrun r;
	cJSON *three, *one;

	snprintf(role, sizeof(role), "one_%s", PQdb(c));
	snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN CONNECTION LIMIT 1; GRANT SELECT ON ALL TABLES IN SCHEMA public TO %s",
		 role, role);
	PQclear(testdb_exec(c, sql));
	snprintf(ci1, sizeof(ci1), "%s user=%s", ci, role);

	TESTRUN(&r, "usage-parity", "--db", ci, "-vv", "--json", "--from", "now-5h", "--to", "now");
	cr_assert_eq(r.status, 3, "exit %d: %s", r.status, r.err);
	cr_expect(!strstr(r.err, "no second database session"), "%s", r.err);
	three = json_of(&r);
	testrun_free(&r);
	TESTRUN(&r, "usage-parity", "--db", ci1, "-vv", "--json", "--from", "now-5h", "--to", "now");
	cr_assert_eq(r.status, 3, "exit %d: %s", r.status, r.err);
	cr_expect(strstr(r.err, "no second database session"), "%s", r.err);
	one = json_of(&r);
	testrun_free(&r);

	cr_expect_geq(cJSON_GetArraySize(get(three, "findings")), 3, "%s", cJSON_Print(three));
	expect_same_findings(three, one);
	cJSON_Delete(three);
	cJSON_Delete(one);
	snprintf(sql, sizeof(sql), "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %s; DROP ROLE %s", role, role);
	PQclear(testdb_exec(c, sql));
	PQfinish(c);
}

Test(parity, overlap_that_is_not_safe_to_repair_is_left_alone)
{
	char ci[256];
	/* a closed event lies inside a longer one: which is wrong is unknown */
	PGconn *c = setup(ci, sizeof(ci), S1("1", "2048") S1_OPEN("2048")
		"INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at, ended_at)"
		" SELECT id, org_id, worker_id, active_vmm_id, 1024, 2, now() - interval '3 hours', now() - interval '2 hours'"
		" FROM sandboxes WHERE name = 's1';");
	const cJSON *f;
	cJSON *j;
	int st;

	j = PARITY(&st, "--db", ci, "--from", "now-5h", "--to", "now", "--tolerance", "100", "--fix");
	cr_assert_eq(st, 3, "exit %d", st);
	f = only_finding(j, "overlap");
	cr_expect(cJSON_IsNull(get(f, "action")));
	cr_expect(cJSON_IsFalse(get(f, "fixed")));
	cr_expect_eq(summary_int(j, "remaining"), 1);
	cJSON_Delete(j);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 0);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE id = 3 AND ended_at IS NULL"), 1);
	PQfinish(c);
}

/*
 * Org usage over a fixed past window [2020-01-01 00:00, 01:00):
 *   org-b ledger 2 GiB for the hour = 7200 GB·s, samples 1600 MB = 5625 GB·s
 *   org-c ledger 1 GiB for the hour, no samples at all
 *   org-d samples, no ledger
 *   org-e ledger 1 GiB for the hour; samples straddle both ends of the window
 *         (prorated: exactly equal)
 */
static const char org_fixture[] =
	"INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus) VALUES"
	" ('b1', 'org-b', 'stopped', 1, 2048, 1), ('c1', 'org-c', 'stopped', 1, 1024, 1),"
	" ('e1', 'org-e', 'stopped', 1, 1024, 1);"
	"INSERT INTO scale_events (sandbox_id, org_id, worker_id, memory_mb, vcpus, started_at, ended_at)"
	" SELECT id, org_id, 1, memory_mb, 1, '2020-01-01 00:00:00+00', '2020-01-01 01:00:00+00'"
	" FROM sandboxes WHERE name IN ('b1', 'c1', 'e1');"
	"INSERT INTO usage_samples (org_id, period_start, period_end, memory_mb)"
	" SELECT 'org-b', t, t + interval '15 minutes', 1600"
	" FROM generate_series('2020-01-01 00:00:00+00'::timestamptz, '2020-01-01 00:45:00+00', interval '15 minutes') t;"
	"INSERT INTO usage_samples (org_id, period_start, period_end, memory_mb) VALUES"
	" ('org-d', '2020-01-01 00:10:00+00', '2020-01-01 00:20:00+00', 512),"
	" ('org-e', '2019-12-31 23:30:00+00', '2020-01-01 00:30:00+00', 1024),"
	" ('org-e', '2020-01-01 00:30:00+00', '2020-01-01 01:30:00+00', 1024);";

#define ORG_WINDOW "--from", "2020-01-01T00:00:00Z", "--to", "2020-01-01T01:00:00Z"

Test(parity, org_usage_differs_from_samples)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci), org_fixture);
	struct digest samples = samples_digest(c);
	const cJSON *f, *fs;
	cJSON *j;
	int st;

	j = PARITY(&st, "--db", ci, ORG_WINDOW);
	cr_assert_eq(st, 3, "exit %d", st);
	fs = get(j, "findings");
	cr_assert_eq(cJSON_GetArraySize(fs), 3, "%s", cJSON_Print(fs));
	cr_expect_eq(total_count(j, "org_usage"), 3);
	f = cJSON_GetArrayItem(fs, 0);
	cr_expect_str_eq(get(f, "org")->valuestring, "org-b");
	cr_expect(cJSON_IsNull(get(f, "sandbox")));
	cr_expect_float_eq(num(f, "ledger_gbs"), 7200.0, 1e-9);
	cr_expect_float_eq(num(f, "usage_gbs"), 5625.0, 1e-9);
	cr_expect_float_eq(num(f, "drift_gbs"), 1575.0, 1e-9);
	cr_expect_float_eq(num(f, "drift_pct"), 21.875, 1e-9);
	/* a zero side: 100 % either way, no division by zero */
	f = cJSON_GetArrayItem(fs, 1);
	cr_expect_str_eq(get(f, "org")->valuestring, "org-c");
	cr_expect_float_eq(num(f, "usage_gbs"), 0.0, 1e-9);
	cr_expect_float_eq(num(f, "drift_pct"), 100.0, 1e-9);
	f = cJSON_GetArrayItem(fs, 2);
	cr_expect_str_eq(get(f, "org")->valuestring, "org-d");
	cr_expect_float_eq(num(f, "ledger_gbs"), 0.0, 1e-9);
	cr_expect_float_eq(num(f, "usage_gbs"), 300.0, 1e-9);
	cr_expect_float_eq(num(f, "drift_pct"), -100.0, 1e-9);
	cJSON_Delete(j);

	/* beyond 21.875 % only the zero sides remain; at 100 % nothing */
	j = PARITY(&st, "--db", ci, ORG_WINDOW, "--tolerance", "22");
	cr_expect_eq(st, 3);
	cr_expect_eq(total_count(j, "org_usage"), 2);
	cJSON_Delete(j);
	j = PARITY(&st, "--db", ci, ORG_WINDOW, "--tolerance", "100%");
	cr_expect_eq(st, 0);
	cJSON_Delete(j);

	/* --fix never edits usage samples and has no safe repair for this: exit 3 */
	j = PARITY(&st, "--db", ci, ORG_WINDOW, "--fix");
	cr_expect_eq(st, 3);
	cr_expect_eq(summary_int(j, "remaining"), 3);
	cr_expect_eq(summary_int(j, "fixed"), 0);
	cJSON_Delete(j);
	cr_expect_str_eq(samples_digest(c).text, samples.text, "usage samples were edited");
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 0);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at = '2020-01-01 01:00:00+00'"), 3);
	PQfinish(c);
}

Test(parity, org_usage_drift_from_a_leak_is_fixed_by_closing_it)
{
	char ci[256];
	/*
	 * s1 (2 GiB) ran from 4 hours to 2 hours ago and the samples say so;
	 * its event was left open.  In the window [3h ago, 1h ago) the ledger
	 * bills 2 hours, the samples 1: org-b is 50 % off, and s1 is open_terminal.
	 */
	PGconn *c = setup(ci, sizeof(ci), S1("1", "2048") S1_OPEN("2048")
		"INSERT INTO usage_samples (org_id, sandbox_id, worker_id, period_start, period_end, memory_mb)"
		" SELECT org_id, id, worker_id, now() - interval '4 hours', now() - interval '2 hours', 2048"
		" FROM sandboxes WHERE name = 's1';"
		"SET session_replication_role = replica;"
		"UPDATE sandboxes SET status = 'stopped', time_status_updated = now() - interval '2 hours'"
		" WHERE name = 's1';"
		"RESET session_replication_role;");
	const cJSON *fs;
	cJSON *j;
	int st;

	j = PARITY(&st, "--db", ci, "--from", "now-3h", "--to", "now-1h");
	cr_assert_eq(st, 3, "exit %d", st);
	fs = get(j, "findings");
	cr_assert_eq(cJSON_GetArraySize(fs), 2, "%s", cJSON_Print(fs));
	cr_expect_eq(total_count(j, "open_terminal"), 1);
	cr_expect_eq(total_count(j, "org_usage"), 1);
	cr_expect_str_eq(get(cJSON_GetArrayItem(fs, 1), "org")->valuestring, "org-b");
	/* the window follows the program's clock: a slow start shifts it by seconds */
	cr_expect_float_eq(num(cJSON_GetArrayItem(fs, 1), "drift_pct"), 50.0, 0.5);
	cJSON_Delete(j);

	j = PARITY(&st, "--db", ci, "--from", "now-3h", "--to", "now-1h", "--fix");
	cr_assert_eq(st, 4, "exit %d: %s", st, cJSON_Print(j));
	fs = get(j, "findings");
	cr_expect_str_eq(get(cJSON_GetArrayItem(fs, 0), "action")->valuestring, "closed");
	cr_expect(cJSON_IsNull(get(cJSON_GetArrayItem(fs, 1), "action")));
	cr_expect(cJSON_IsTrue(get(cJSON_GetArrayItem(fs, 1), "fixed")));
	cJSON_Delete(j);
	j = PARITY(&st, "--db", ci, "--from", "now-3h", "--to", "now-1h");
	cr_expect_eq(st, 0);
	cJSON_Delete(j);
	PQfinish(c);
}

Test(parity, dry_run_fix_changes_nothing)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci), S1("1", "4096") S1_OPEN("2048"));
	const cJSON *f;
	cJSON *j;
	int st;

	j = PARITY(&st, "--db", ci, EMPTY_WINDOW, "--fix", "--dry-run");
	cr_assert_eq(st, 3, "exit %d", st);
	f = only_finding(j, "size_mismatch");
	cr_expect_str_eq(get(f, "action")->valuestring, "resized");
	cr_expect(cJSON_IsTrue(get(get(j, "summary"), "dry_run")));
	cr_expect(cJSON_IsNull(get(get(j, "summary"), "remaining")));
	cJSON_Delete(j);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 0);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events"), 3);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events WHERE ended_at IS NULL AND memory_mb = 2048"), 1);
	PQfinish(c);
}

Test(parity, text_output_names_the_drift)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci), S1("1", "4096") S1_OPEN("2048"));
	struct testrun r;

	TESTRUN(&r, "usage-parity", "--db", ci, EMPTY_WINDOW);
	cr_expect_eq(r.status, 3);
	cr_expect(strstr(r.out, "size_mismatch  org-b"), "%s", r.out);
	cr_expect(strstr(r.out, "event 2048 MB 2 vCPUs, sandbox 4096 MB 2 vCPUs"), "%s", r.out);
	cr_expect(strstr(r.out, "\nstatus:        drift\n"), "%s", r.out);
	cr_expect(strstr(r.out, "\nfrom:          2001-01-01T00:00:00Z\n"), "%s", r.out);
	testrun_free(&r);
	PQfinish(c);
}

static void expect_usage_error(const char *const *argv)
{
	struct testrun r;

	testrun(&r, argv);
	cr_expect_eq(r.status, 2, "%s %s: exit %d, stderr: %s", argv[1], argv[2], r.status, r.err);
	cr_expect_eq(testlib_lines(r.err), 2, "stderr: %s", r.err);
	cr_expect(strstr(r.err, "\nTry 'usage-parity --help' for more information.\n"), "stderr: %s", r.err);
	cr_expect_str_eq(r.out, "");
	testrun_free(&r);
}

#define BAD(...) expect_usage_error((const char *const[]){ "usage-parity", __VA_ARGS__, NULL })

Test(parity, bad_input_is_a_usage_error_without_database_contact)
{
	char ci[256];
	PGconn *c = setup(ci, sizeof(ci), S1("1", "4096") S1_OPEN("2048"));
	const char *nodb = "host=/nonexistent dbname=nothing";

	BAD("--from", "2024-01-02", "--to", "2024-01-01", "--db", nodb);
	BAD("--from", "2024-01-01T10:00Z", "--to", "2024-01-01T10:00Z", "--db", nodb);
	BAD("--from", "now", "--to", "now-1h", "--db", nodb);
	BAD("--tolerance", "-1", "--db", nodb);
	BAD("--tolerance=-0.5", "--db", nodb);
	BAD("--tolerance", "two", "--db", nodb);
	BAD("--tolerance", "101", "--db", nodb);
	BAD("--grace", "5", "--db", nodb);
	BAD("--grace", "5x", "--db", nodb);
	BAD("--from", "yesterday", "--db", nodb);
	BAD("--from", "now-5", "--db", nodb);
	BAD("--to", "2024-02-30", "--db", nodb);
	BAD("--to", "2024-01-01T25:00", "--db", nodb);
	BAD("--fix", "extra", "--db", nodb);
	BAD("--from", "2024-01-02", "--to", "2024-01-01", "--fix", "--db", ci);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM audit_log"), 0);
	cr_expect_eq(testdb_ll(c, "SELECT count(*) FROM scale_events"), 3);
	PQfinish(c);
}

Test(parity, missing_schema_and_unreachable_database)
{
	char ci[256];
	PGconn *c = testdb_new(false, ci, sizeof(ci));
	struct testrun r;

	TESTRUN(&r, "usage-parity", "--db", ci);
	cr_expect_eq(r.status, 6, "exit %d: %s", r.status, r.err);
	testrun_free(&r);
	TESTRUN(&r, "usage-parity", "--db", "host=/nonexistent dbname=nothing", "--fix");
	cr_expect_eq(r.status, 5, "exit %d: %s", r.status, r.err);
	testrun_free(&r);
	PQfinish(c);
}

/* ---- the library, no database ------------------------------------------ */

Test(parity, parse_time)
{
	struct vmops_error e = { 0 };
	const time_t now = 1700000000;  /* 2023-11-14T22:13:20Z */
	time_t t;

	cr_assert_eq(vmops_parity_parse_time("now", now, &t, &e), 0);
	cr_expect_eq(t, now);
	cr_assert_eq(vmops_parity_parse_time("now-1h30m", now, &t, &e), 0);
	cr_expect_eq(t, now - 5400);
	cr_assert_eq(vmops_parity_parse_time("@86400", now, &t, &e), 0);
	cr_expect_eq(t, 86400);
	cr_assert_eq(vmops_parity_parse_time("2024-02-29", now, &t, &e), 0);
	cr_expect_eq(t, 1709164800);
	cr_assert_eq(vmops_parity_parse_time("2024-02-29T01:02:03Z", now, &t, &e), 0);
	cr_expect_eq(t, 1709164800 + 3723);
	cr_assert_eq(vmops_parity_parse_time("2024-02-29 01:02", now, &t, &e), 0);
	cr_expect_eq(t, 1709164800 + 3720);
	cr_assert_eq(vmops_parity_parse_time("2024-02-29T01:02:03+02:00", now, &t, &e), 0);
	cr_expect_eq(t, 1709164800 + 3723 - 7200);
	cr_assert_eq(vmops_parity_parse_time("2024-02-29T01:02:03-0130", now, &t, &e), 0);
	cr_expect_eq(t, 1709164800 + 3723 + 5400);

	const char *bad[] = { "", "today", "now-", "now-5", "now+1h", "@", "@-1", "@1x", "2023-02-29",
			      "2024-13-01", "2024-1-01", "2024-01-01T", "2024-01-01T24:00", "2024-01-01T10:60",
			      "2024-01-01T10:00:61", "2024-01-01T10:00+25", "2024-01-01T10:00Zjunk", "1969-12-31" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		vmops_err_clear(&e);
		cr_expect_eq(vmops_parity_parse_time(bad[i], now, &t, &e), -1, "'%s' accepted", bad[i]);
		cr_expect_eq(e.code, 2, "'%s': code %d", bad[i], e.code);
	}
}

Test(parity, default_window_is_the_last_full_hour_minus_grace)
{
	time_t from, to;

	/* 22:13:20 with 5 min grace: 21:00 to 22:00 */
	vmops_parity_default_window(1700000000, 300000, &from, &to);
	cr_expect_eq(to, 1699999200);
	cr_expect_eq(from, 1699999200 - 3600);
	/* 22:03:00 with 5 min grace: the hour that ended at 22:00 is too fresh */
	vmops_parity_default_window(1699999380, 300000, &from, &to);
	cr_expect_eq(to, 1699995600);
	/* no grace, on the hour */
	vmops_parity_default_window(1699999200, 0, &from, &to);
	cr_expect_eq(to, 1699999200);
}

Test(parity, category_names)
{
	cr_expect_str_eq(vmops_parity_category_name(VMOPS_PARITY_OPEN_TERMINAL), "open_terminal");
	cr_expect_str_eq(vmops_parity_category_name(VMOPS_PARITY_ORG_USAGE), "org_usage");
	cr_expect_str_eq(vmops_parity_category_name(VMOPS_PARITY_PENDING_LIVE_VMM), "pending_live_vmm");
	cr_expect_null(vmops_parity_category_name(VMOPS_PARITY_NCATEGORIES));
	cr_expect_null(vmops_parity_category_name(-1));
}
