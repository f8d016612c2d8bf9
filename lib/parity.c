/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "exitcodes.h"
#include "fleet.h"
#include "log.h"
#include "macro.h"
#include "parity.h"
#include "parse.h"

static const char *const category_names[VMOPS_PARITY_NCATEGORIES] = {
	[VMOPS_PARITY_OPEN_TERMINAL] = "open_terminal",
	[VMOPS_PARITY_OPEN_WORKER_TERMINATED] = "open_worker_terminated",
	[VMOPS_PARITY_OPEN_VMM_DEAD] = "open_vmm_dead",
	[VMOPS_PARITY_SIZE_MISMATCH] = "size_mismatch",
	[VMOPS_PARITY_MISSING_EVENT] = "missing_event",
	[VMOPS_PARITY_PENDING_LIVE_VMM] = "pending_live_vmm",
	[VMOPS_PARITY_OVERLAP] = "overlap",
	[VMOPS_PARITY_ORG_USAGE] = "org_usage",
};

const char *vmops_parity_category_name(int category)
{
	if (category < 0 || category >= VMOPS_PARITY_NCATEGORIES)
		return NULL;
	return category_names[category];
}

static int category_from_name(const char *s)
{
	for (int i = 0; i < VMOPS_PARITY_NCATEGORIES; i++)
		if (s && strcmp(s, category_names[i]) == 0)
			return i;
	return -1;
}

/* ---- time values ------------------------------------------------------- */

static int digits(const char **p, int n, int *out)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char)(*p)[i]))
			return -1;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return 0;
}

static int days_in_month(int y, int m)
{
	static const int d[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : d[m - 1];
}

static int parse_iso(const char *s, time_t *out)
{
	const char *p = s;
	int y, mo, d, h = 0, mi = 0, sec = 0, oh = 0, om = 0, sign = 0;
	struct tm tm = { 0 };
	time_t t;

	if (digits(&p, 4, &y) < 0 || *p++ != '-' || digits(&p, 2, &mo) < 0 || *p++ != '-' ||
	    digits(&p, 2, &d) < 0)
		return -1;
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
		return -1;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		if (digits(&p, 2, &h) < 0 || *p++ != ':' || digits(&p, 2, &mi) < 0)
			return -1;
		if (*p == ':') {
			p++;
			if (digits(&p, 2, &sec) < 0)
				return -1;
		}
		if (h > 23 || mi > 59 || sec > 59)
			return -1;
		if (*p == 'Z' || *p == 'z') {
			p++;
		} else if (*p == '+' || *p == '-') {
			sign = *p++ == '+' ? 1 : -1;
			if (digits(&p, 2, &oh) < 0)
				return -1;
			if (*p == ':')
				p++;
			if (*p && digits(&p, 2, &om) < 0)
				return -1;
			if (oh > 23 || om > 59)
				return -1;
		}
	}
	if (*p)
		return -1;
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	t = timegm(&tm);
	if (t == (time_t)-1)
		return -1;
	*out = t - sign * (oh * 3600 + om * 60);
	return 0;
}

int vmops_parity_parse_time(const char *s, time_t now, time_t *out, struct vmops_error *e)
{
	static const char hint[] = "use now, now-DUR, @EPOCH or YYYY-MM-DD[THH:MM[:SS]][Z|+HH:MM]";

	if (!s || !*s)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid time '': empty");
	if (strcmp(s, "now") == 0) {
		*out = now;
		return 0;
	}
	if (strncmp(s, "now-", 4) == 0) {
		uint64_t ms;
		struct vmops_error pe = { 0 };

		if (vmops_parse_duration(s + 4, &ms, &pe) < 0)
			return vmops_err(e, VMOPS_EXIT_USAGE, "invalid time '%s': %s", s, pe.msg);
		if (ms / 1000 > (uint64_t)now)
			return vmops_err(e, VMOPS_EXIT_USAGE, "invalid time '%s': before 1970", s);
		*out = now - (time_t)(ms / 1000);
		return 0;
	}
	if (s[0] == '@') {
		long long v;
		struct vmops_error pe = { 0 };

		if (vmops_parse_int(s + 1, 0, 253402300799LL, &v, &pe) < 0)
			return vmops_err(e, VMOPS_EXIT_USAGE, "invalid time '%s': %s", s, hint);
		*out = (time_t)v;
		return 0;
	}
	if (parse_iso(s, out) < 0)
		return vmops_err(e, VMOPS_EXIT_USAGE, "invalid time '%s': %s", s, hint);
	return 0;
}

void vmops_parity_default_window(time_t now, uint64_t grace_ms, time_t *from, time_t *to)
{
	time_t end = now - (time_t)(grace_ms / 1000);

	end -= ((end % 3600) + 3600) % 3600;
	*to = end;
	*from = end - 3600;
}

static const char *sql_time(time_t t, char *buf, size_t len)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%d %H:%M:%S+00", &tm);
	return buf;
}

/* ---- detection ---------------------------------------------------------- */

/*
 * Columns every detection query returns, in this order.  Every query takes
 * the same parameters: $1 now, $2 and $3 the window [from, to), $4 the
 * per-org tolerance in percent, $5 the starting timeout in ms.
 */
enum {
	F_CATEGORY, F_SANDBOX_ID, F_SANDBOX, F_ORG, F_EVENT_ID, F_OTHER_EVENT_ID, F_DRIFT,
	F_LEDGER, F_USAGE, F_PCT, F_DETAIL, F_FIXABLE,
};

#define TS(x) "to_char((" x ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
#define TERMINAL "('stopped', 'hibernated', 'error', 'destroyed')"
#define SECS(x) "extract(epoch FROM greatest((" x "), interval '0'))"

/* Open events in trouble: each under the first category that applies. */
static const char open_sql[] =
	"SELECT x.category, x.sandbox_id, x.sandbox, x.org, x.event_id, NULL::bigint,"
	" (CASE WHEN x.category = 'size_mismatch'"
	"   THEN (x.e_mem - x.s_mem)::numeric / 1024 * " SECS("$1 - x.started_at")
	"   ELSE x.e_mem::numeric / 1024 * " SECS("$1 - x.end_at") " END)::float8,"
	" NULL::float8, NULL::float8, NULL::float8,"
	" CASE x.category"
	"  WHEN 'open_terminal' THEN format('sandbox %s since %s; event open since %s',"
	"    x.status, " TS("x.status_at") ", " TS("x.started_at") ")"
	"  WHEN 'open_worker_terminated' THEN format('worker %s terminated at %s; event open since %s',"
	"    x.worker, " TS("x.worker_at") ", " TS("x.started_at") ")"
	"  WHEN 'open_vmm_dead' THEN format('vmm %s %s at %s; event open since %s',"
	"    x.vmm_id, x.vmm_state, " TS("x.vmm_at") ", " TS("x.started_at") ")"
	"  ELSE format('event %s MB %s vCPUs, sandbox %s MB %s vCPUs, since %s',"
	"    x.e_mem, x.e_cpu, x.s_mem, x.s_cpu, " TS("x.started_at") ") END,"
	" true"
	" FROM (SELECT e.id AS event_id, e.sandbox_id, s.name AS sandbox, e.org_id AS org,"
	"   e.memory_mb AS e_mem, e.vcpus AS e_cpu, s.memory_mb AS s_mem, s.vcpus AS s_cpu,"
	"   e.started_at, s.status, s.time_status_updated AS status_at,"
	"   w.name AS worker, w.time_state_updated AS worker_at,"
	"   v.id AS vmm_id, v.state AS vmm_state, v.time_state_updated AS vmm_at,"
	"   CASE WHEN s.status IN " TERMINAL " THEN 'open_terminal'"
	"    WHEN w.state = 'terminated' THEN 'open_worker_terminated'"
	"    WHEN v.state IN ('destroyed', 'failed') THEN 'open_vmm_dead'"
	"    WHEN e.memory_mb <> s.memory_mb OR e.vcpus <> s.vcpus THEN 'size_mismatch' END AS category,"
	"   greatest(e.started_at, least($1,"
	"    CASE WHEN s.status IN " TERMINAL " THEN s.time_status_updated"
	"     WHEN w.state = 'terminated' THEN w.time_state_updated"
	"     WHEN v.state IN ('destroyed', 'failed') THEN v.time_state_updated END)) AS end_at"
	"  FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
	"  LEFT JOIN workers w ON w.id = coalesce(e.worker_id, s.worker_id)"
	/* one index probe per open event, not a hash of every VMM ever (OFFSET 0: not flattened) */
	"  LEFT JOIN LATERAL (SELECT v.id, v.state, v.time_state_updated FROM vmms v"
	"   WHERE v.id = coalesce(e.vmm_id, s.active_vmm_id) OFFSET 0) v ON true"
	"  WHERE e.ended_at IS NULL) x"
	" WHERE x.category IS NOT NULL";

/*
 * Running sandboxes without an open event.  Not those on a terminated
 * worker or whose VMM is dead: they run nowhere, and billing them again
 * would recreate the leak that was just closed.  Missing since the later of
 * "became running" and the end of its last event (and at most `now`: the
 * detection's $1, a repair's own now()).
 */
#define MISSING_SINCE(now) \
	"least(" now ", greatest(s.time_status_updated," \
	" (SELECT max(e.ended_at) FROM scale_events e WHERE e.sandbox_id = s.id)))"
#define MISSING_WHERE \
	" s.status IN ('running', 'migrating')" \
	" AND NOT EXISTS (SELECT 1 FROM scale_events e WHERE e.sandbox_id = s.id AND e.ended_at IS NULL)" \
	" AND (SELECT w.state FROM workers w WHERE w.id = s.worker_id) IS DISTINCT FROM 'terminated'" \
	" AND coalesce((SELECT v.state FROM vmms v WHERE v.id = s.active_vmm_id), '') NOT IN ('destroyed', 'failed')"

static const char missing_sql[] =
	/* the cheap anti-join first; worker and VMM only for the few left */
	"WITH c AS MATERIALIZED (SELECT s.id FROM sandboxes s"
	" WHERE s.status IN ('running', 'migrating')"
	"  AND NOT EXISTS (SELECT 1 FROM scale_events e WHERE e.sandbox_id = s.id AND e.ended_at IS NULL))"
	"SELECT 'missing_event', s.id, s.name, s.org_id, NULL::bigint, NULL::bigint,"
	" (-(s.memory_mb::numeric / 1024) * " SECS("$1 - " MISSING_SINCE("$1")) ")::float8,"
	" NULL::float8, NULL::float8, NULL::float8,"
	" format('sandbox %s since %s with no open event; last event ended %s',"
	"  s.status, " TS("s.time_status_updated") ","
	"  coalesce(" TS("(SELECT max(e.ended_at) FROM scale_events e WHERE e.sandbox_id = s.id)") ", 'never')),"
	" true"
	" FROM c JOIN sandboxes s ON s.id = c.id WHERE" MISSING_WHERE;

/*
 * Pending sandboxes whose VMM is live: running or migrating (a launch
 * records sandbox and VMM running in one transaction, so this never holds
 * for long), or starting for longer than $5 ms (the launch was abandoned:
 * vm-fleet killed with SIGKILL).  Without an open event the VM, if it runs,
 * runs unbilled; whether it runs is its worker's to say, so this is reported
 * for ghost-reap, not fixed here.  Drift: the sandbox's memory since the
 * VMM was created, what it costs if it runs.
 */
static const char pending_sql[] =
	"SELECT 'pending_live_vmm', s.id, s.name, s.org_id, NULL::bigint, NULL::bigint,"
	" (-(s.memory_mb::numeric / 1024) * " SECS("$1 - v.time_created") ")::float8,"
	" NULL::float8, NULL::float8, NULL::float8,"
	" format('sandbox pending with vmm %s %s since %s%s on worker %s and no open event: a launch that never"
	"  finished; if it runs it is not billed: run ghost-reap on %s',"
	"  v.id, v.state, " TS("v.time_state_updated") ", coalesce(' (pid ' || v.pid || ')', ''),"
	"  coalesce(w.name, '?'), coalesce(w.name, 'its worker')),"
	" false"
	" FROM sandboxes s"
	" JOIN LATERAL (SELECT v.* FROM vmms v"
	"  WHERE v.id IN (s.active_vmm_id, s.target_vmm_id) AND v.time_deleted IS NULL"
	"   AND (v.state IN ('running', 'migrating')"
	"    OR (v.state = 'starting' AND v.time_state_updated <= $1 - $5::bigint * interval '1 millisecond'))"
	"  ORDER BY v.id LIMIT 1) v ON true"
	" LEFT JOIN workers w ON w.id = v.worker_id"
	" WHERE s.status = 'pending'"
	"  AND NOT EXISTS (SELECT 1 FROM scale_events e WHERE e.sandbox_id = s.id AND e.ended_at IS NULL)";

/*
 * The events that intersect the window [$2, $3): closed ones through
 * scale_events_ended_idx, open ones through scale_events_one_open_uq.
 * Empty events (started_at = ended_at) bill nothing and overlap nothing.
 */
#define WINDOW_EVENTS \
	" SELECT id, sandbox_id, org_id, memory_mb, started_at, ended_at, ended_at AS end_at" \
	"   FROM scale_events WHERE ended_at > $2 AND started_at < $3 AND ended_at > started_at" \
	" UNION ALL" \
	" SELECT id, sandbox_id, org_id, memory_mb, started_at, ended_at, 'infinity'::timestamptz" \
	"   FROM scale_events WHERE ended_at IS NULL AND started_at < $3"

/* Event t intersects the window [$2, $3) and is not empty. */
#define IN_WINDOW(t) \
	" (" t ".ended_at > $2 OR " t ".ended_at IS NULL) AND " t ".started_at < $3" \
	" AND (" t ".ended_at IS NULL OR " t ".ended_at > " t ".started_at)"

/*
 * Overlapping events of one sandbox.  A running maximum of the ends of the
 * earlier events finds the events that start before an earlier one ended;
 * only those are joined back to name their partners.  Two intervals that
 * both meet the window and meet each other meet inside it, so this finds
 * every overlap that touches the window.  Drift: the earlier event's
 * memory over the overlap, billed twice.  Safe to repair when the earlier
 * event is closed and ends inside the later one (it was superseded and
 * closed late): its end moves to the later one's start.
 *
 * The running maximum reads only what it needs (sandbox, start, id, end),
 * one scan: for a short window the events of the window (bitmap scans of
 * scale_events_ended_idx and scale_events_one_open_uq), sorted in memory;
 * for a long one, scale_events_sandbox_idx in its order, index-only (schema
 * version 8), with no sort at all.  The few events it flags find their
 * partners through the same index (a probe per flagged event), not by
 * joining the whole window back to itself.
 */
static const char overlap_sql[] =
	"WITH later AS MATERIALIZED (SELECT id, sandbox_id, started_at, ended_at FROM ("
	"  SELECT e.id, e.sandbox_id, e.started_at, e.ended_at,"
	"   max(coalesce(e.ended_at, 'infinity')) OVER (PARTITION BY e.sandbox_id ORDER BY e.started_at, e.id"
	"    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end"
	"  FROM scale_events e WHERE" IN_WINDOW("e") ") w"
	"  WHERE started_at < prev_end),"
	" p AS MATERIALIZED (SELECT a.id AS a_id, a.sandbox_id, a.org_id, a.memory_mb, a.started_at AS a_start,"
	"   a.ended_at AS a_ended, coalesce(a.ended_at, 'infinity') AS a_end, b.id AS b_id, b.started_at AS b_start,"
	"   b.ended_at AS b_ended, coalesce(b.ended_at, 'infinity') AS b_end"
	"  FROM later b"
	"  CROSS JOIN LATERAL (SELECT x.id FROM scale_events x WHERE x.sandbox_id = b.sandbox_id"
	"   AND (x.started_at, x.id) < (b.started_at, b.id) AND coalesce(x.ended_at, 'infinity') > b.started_at"
	"   AND" IN_WINDOW("x") " OFFSET 0) ax"
	"  JOIN scale_events a ON a.id = ax.id)"
	" SELECT 'overlap', p.sandbox_id, s.name, p.org_id, p.a_id, p.b_id,"
	"  (p.memory_mb::numeric / 1024 * " SECS("least(p.a_end, p.b_end, $1) - p.b_start") ")::float8,"
	"  NULL::float8, NULL::float8, NULL::float8,"
	"  format('event %s from %s to %s overlaps event %s from %s to %s for %s s',"
	"   p.a_id, " TS("p.a_start") ", coalesce(" TS("p.a_ended") ", 'open'),"
	"   p.b_id, " TS("p.b_start") ", coalesce(" TS("p.b_ended") ", 'open'),"
	"   round(" SECS("least(p.a_end, p.b_end, $1) - p.b_start") ")),"
	"  p.a_ended IS NOT NULL AND p.a_end <= p.b_end"
	" FROM p JOIN sandboxes s ON s.id = p.sandbox_id";

/*
 * Per-org GB·s in the window: the ledger (open events count until now)
 * against the usage samples, prorated to the window.  Flagged when they
 * differ by more than $4 percent of the larger; two zeros are equal.
 */
static const char org_sql[] =
	"WITH ev AS (" WINDOW_EVENTS "),"
	" ledger AS (SELECT org_id, sum(memory_mb::numeric *"
	"   " SECS("least(coalesce(ended_at, $1), $3) - greatest(started_at, $2)") ") / 1024 AS gbs"
	"  FROM ev GROUP BY org_id),"
	" usage AS (SELECT org_id, sum(memory_mb::numeric *"
	"   " SECS("least(period_end, $3) - greatest(period_start, $2)") ") / 1024 AS gbs"
	"  FROM usage_samples WHERE period_end > $2 AND period_start < $3 GROUP BY org_id),"
	" j AS (SELECT coalesce(l.org_id, u.org_id) AS org, coalesce(l.gbs, 0) AS lg, coalesce(u.gbs, 0) AS ug"
	"  FROM ledger l FULL JOIN usage u ON u.org_id = l.org_id)"
	" SELECT 'org_usage', NULL::bigint, NULL::text, org, NULL::bigint, NULL::bigint,"
	"  (lg - ug)::float8, lg::float8, ug::float8,"
	"  CASE WHEN greatest(lg, ug) > 0 THEN (100 * (lg - ug) / greatest(lg, ug))::float8 ELSE 0 END,"
	"  format('ledger %s GB·s, usage samples %s GB·s, %s%%', round(lg, 1), round(ug, 1),"
	"   CASE WHEN greatest(lg, ug) > 0 THEN round(100 * (lg - ug) / greatest(lg, ug), 2) ELSE 0 END),"
	"  false"
	" FROM j WHERE abs(lg - ug) > $4::numeric / 100 * greatest(lg, ug)";

struct list {
	struct vmops_parity_finding *v;
	size_t n, cap;
};

static void finding_free(struct vmops_parity_finding *f)
{
	free(f->sandbox);
	free(f->org);
	free(f->detail);
	free(f->error);
}

static void list_free(struct list *l)
{
	for (size_t i = 0; i < l->n; i++)
		finding_free(&l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static double num_or_nan(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NAN : strtod(PQgetvalue(r, row, col), NULL);
}

static long long ll_or(const PGresult *r, int row, int col, long long dflt)
{
	return PQgetisnull(r, row, col) ? dflt : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static const char *str_or_null(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static int add_rows(struct list *l, const PGresult *r, struct vmops_error *e)
{
	for (int i = 0; i < PQntuples(r); i++) {
		struct vmops_parity_finding *f;

		if (l->n == l->cap) {
			size_t cap = l->cap ? l->cap * 2 : 64;
			struct vmops_parity_finding *v = realloc(l->v, cap * sizeof(*v));
			if (!v)
				return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
			l->v = v;
			l->cap = cap;
		}
		f = &l->v[l->n];
		memset(f, 0, sizeof(*f));
		f->category = category_from_name(PQgetvalue(r, i, F_CATEGORY));
		f->sandbox_id = ll_or(r, i, F_SANDBOX_ID, -1);
		f->event_id = ll_or(r, i, F_EVENT_ID, -1);
		f->other_event_id = ll_or(r, i, F_OTHER_EVENT_ID, -1);
		f->drift_gbs = num_or_nan(r, i, F_DRIFT);
		f->ledger_gbs = num_or_nan(r, i, F_LEDGER);
		f->usage_gbs = num_or_nan(r, i, F_USAGE);
		f->drift_pct = num_or_nan(r, i, F_PCT);
		f->fixable = PQgetvalue(r, i, F_FIXABLE)[0] == 't';
		f->sandbox = dup_or_null(str_or_null(r, i, F_SANDBOX));
		f->org = dup_or_null(str_or_null(r, i, F_ORG));
		f->detail = dup_or_null(str_or_null(r, i, F_DETAIL));
		l->n++;
		if (f->category < 0 || (!f->org && str_or_null(r, i, F_ORG)) ||
		    (!f->sandbox && str_or_null(r, i, F_SANDBOX)) ||
		    (!f->detail && str_or_null(r, i, F_DETAIL)))
			return vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
	}
	return 0;
}

static int cmp_str(const char *a, const char *b)
{
	if (!a || !b)
		return (a != NULL) - (b != NULL);
	return strcmp(a, b);
}

static int cmp_ll(long long a, long long b)
{
	return (a > b) - (a < b);
}

static int finding_cmp(const void *pa, const void *pb)
{
	const struct vmops_parity_finding *a = pa, *b = pb;
	int c;

	if ((c = cmp_ll(a->category, b->category)))
		return c;
	if ((c = cmp_str(a->org, b->org)))
		return c;
	if ((c = cmp_ll(a->sandbox_id, b->sandbox_id)))
		return c;
	if ((c = cmp_ll(a->event_id, b->event_id)))
		return c;
	return cmp_ll(a->other_event_id, b->other_event_id);
}

static bool same_finding(const struct vmops_parity_finding *a, const struct vmops_parity_finding *b)
{
	return a->category == b->category && cmp_str(a->org, b->org) == 0 &&
	       a->sandbox_id == b->sandbox_id && a->event_id == b->event_id &&
	       a->other_event_id == b->other_event_id;
}

struct detect {
	const char *from, *to, *tol, *starting;
	struct list *out;
};

/*
 * Detection reads one snapshot in up to three sessions at once: this one
 * exports its snapshot (pg_export_snapshot) and the others import it, so
 * every check sees the same database; each query gets this session's now()
 * as $1, so they also agree on the time.  The open-event checks run here,
 * the overlap check and the per-org usage in one session each: on two CPUs
 * the one-hour window takes the time of its longest check, not the sum.
 * Without the extra sessions (they cannot connect) it all runs here, one
 * check after the other.
 *
 * Short reporting queries over big tables: JIT compilation costs more than
 * it saves (seconds per query), and the window sorts fit in memory.
 */
#define DETECT_BEGIN "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
#define DETECT_SETTINGS "SELECT set_config('jit', 'off', true), set_config('work_mem', '64MB', true)"
#define DETECT_SESSIONS 3

/* A session in the snapshot `snap` (SET TRANSACTION SNAPSHOT takes no
 * parameter: the id must look like what pg_export_snapshot returns). */
static PGconn *extra_session(PGconn *c, const char *snap)
{
	struct vmops_error err = { 0 };
	char sql[96];
	PGconn *c2;

	if (!*snap || strlen(snap) > 64 || strspn(snap, "0123456789ABCDEF-") != strlen(snap))
		return NULL;
	snprintf(sql, sizeof(sql), "SET TRANSACTION SNAPSHOT '%s'", snap);
	c2 = vmops_db_connect_again(c, &err);
	if (c2 && vmops_db_x(c2, &err, DETECT_BEGIN) == 0 && vmops_db_x(c2, &err, sql) == 0 &&
	    vmops_db_x(c2, &err, DETECT_SETTINGS) == 0)
		return c2;
	vmops_debug("no second database session (%s): the checks run one after the other", err.msg);
	if (c2)
		PQfinish(c2);
	return NULL;
}

static int run_checks(PGconn *const *s, struct detect *d, const char *now, struct vmops_error *e)
{
	/* $1 now, $2 from, $3 to, $4 tolerance (percent), $5 starting timeout (ms) */
	static const Oid types[] = { 1184, 1184, 1184, 1700, 20 };  /* timestamptz, numeric, int8 */
	static const struct { const char *sql; int session; } q[] = {
		{ open_sql, 0 }, { overlap_sql, 1 }, { org_sql, 2 }, { missing_sql, 0 }, { pending_sql, 0 },
	};
	const char *params[] = { now, d->from, d->to, d->tol, d->starting };
	struct vmops_db_job jobs[ARRAY_SIZE(q)];
	int rc;

	for (size_t i = 0; i < ARRAY_SIZE(q); i++)
		jobs[i] = (struct vmops_db_job){ .c = s[q[i].session] ? s[q[i].session] : s[0], .sql = q[i].sql,
						 .nparams = (int)ARRAY_SIZE(params), .types = types, .params = params };
	rc = vmops_db_query_all(jobs, ARRAY_SIZE(jobs), e);
	if (rc < 0)
		vmops_err_prefix(e, "detecting drift");
	for (size_t i = 0; i < ARRAY_SIZE(jobs); i++) {
		if (rc == 0 && add_rows(d->out, jobs[i].result, e) < 0)
			rc = -1;
		PQclear(jobs[i].result);
	}
	return rc;
}

static int detect(PGconn *c, struct detect *d, struct vmops_error *e)
{
	PGconn *s[DETECT_SESSIONS] = { c };
	_cleanup_pgresult_ PGresult *r = NULL;
	int rc = -1;

	list_free(d->out);
	if (vmops_db_x(c, e, DETECT_BEGIN) < 0)
		return -1;
	if (vmops_db_x(c, e, DETECT_SETTINGS) == 0 &&
	    (r = vmops_db_q(c, e, "SELECT pg_export_snapshot(),"
			    " to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"))) {
		for (size_t i = 1; i < DETECT_SESSIONS; i++)
			s[i] = extra_session(c, PQgetvalue(r, 0, 0));
		rc = run_checks(s, d, PQgetvalue(r, 0, 1), e);
	}
	if (rc == 0)
		rc = vmops_db_x(c, e, "COMMIT");
	if (rc < 0)
		PQclear(PQexec(c, "ROLLBACK"));
	for (size_t i = 1; i < DETECT_SESSIONS; i++)
		if (s[i])
			PQfinish(s[i]);
	if (rc == 0 && d->out->n > 1)
		qsort(d->out->v, d->out->n, sizeof(*d->out->v), finding_cmp);
	return rc;
}

/* ---- repairs ------------------------------------------------------------ */

struct repair {
	const struct vmops_parity_opts *o;
	struct vmops_parity_finding *f;
	const char *action;     /* set when the repair was done */
	bool stale;             /* the finding no longer holds */
};

#define EVENT_JSON(t) "jsonb_build_object('id', " t ".id, 'sandbox_id', " t ".sandbox_id, 'org_id', " t ".org_id," \
	" 'worker_id', " t ".worker_id, 'vmm_id', " t ".vmm_id, 'memory_mb', " t ".memory_mb, 'vcpus', " t ".vcpus," \
	" 'started_at', " t ".started_at, 'ended_at', " t ".ended_at)"

static const char *program(const struct repair *rp)
{
	return rp->o->program ? rp->o->program : "usage-parity";
}

static int audit(PGconn *c, const struct repair *rp, const char *action, long long id,
		 const char *before, const char *after, struct vmops_error *e)
{
	char detail[VMOPS_ERRMSG_MAX];

	snprintf(detail, sizeof(detail), "%s: %s", category_names[rp->f->category],
		 rp->f->detail ? rp->f->detail : "");
	return vmops_audit(c, program(rp), action, "scale_event", id, before, after, detail, e);
}

/* Close a leaked open event at the best-known end time, re-classified under lock. */
static int repair_close(PGconn *c, struct repair *rp, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL, *u = NULL;
	char id[24];

	r = vmops_db_q(c, e,
		       "SELECT CASE WHEN s.status IN " TERMINAL " THEN 'open_terminal'"
		       "  WHEN w.state = 'terminated' THEN 'open_worker_terminated'"
		       "  WHEN v.state IN ('destroyed', 'failed') THEN 'open_vmm_dead' END,"
		       " greatest(e.started_at, least(now(),"
		       "  CASE WHEN s.status IN " TERMINAL " THEN s.time_status_updated"
		       "   WHEN w.state = 'terminated' THEN w.time_state_updated"
		       "   WHEN v.state IN ('destroyed', 'failed') THEN v.time_state_updated END)),"
		       " " EVENT_JSON("e") "::text"
		       " FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
		       " LEFT JOIN workers w ON w.id = coalesce(e.worker_id, s.worker_id)"
		       " LEFT JOIN vmms v ON v.id = coalesce(e.vmm_id, s.active_vmm_id)"
		       " WHERE e.id = $1 AND e.ended_at IS NULL"
		       " FOR UPDATE OF e",
		       vmops_db_ll(id, rp->f->event_id));
	if (!r)
		return -1;
	if (PQntuples(r) != 1 || cmp_str(str_or_null(r, 0, 0), category_names[rp->f->category]) != 0) {
		rp->stale = true;
		return 0;
	}
	u = vmops_db_q(c, e,
		       "UPDATE scale_events e SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL"
		       " RETURNING " EVENT_JSON("e") "::text",
		       id, PQgetvalue(r, 0, 1));
	if (!u)
		return -1;
	if (PQntuples(u) != 1) {
		rp->stale = true;
		return 0;
	}
	if (audit(c, rp, "close-leaked-event", rp->f->event_id, PQgetvalue(r, 0, 2), PQgetvalue(u, 0, 0), e) < 0)
		return -1;
	rp->action = "closed";
	return 0;
}

/* An open event at the wrong size: close it now, open one at the sandbox's size. */
static int repair_resize(PGconn *c, struct repair *rp, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL, *u = NULL, *n = NULL;
	char id[24], after[2 * VMOPS_ERRMSG_MAX];

	r = vmops_db_q(c, e,
		       "SELECT " EVENT_JSON("e") "::text, s.memory_mb, s.vcpus, s.org_id"
		       " FROM scale_events e JOIN sandboxes s ON s.id = e.sandbox_id"
		       " LEFT JOIN workers w ON w.id = coalesce(e.worker_id, s.worker_id)"
		       " LEFT JOIN vmms v ON v.id = coalesce(e.vmm_id, s.active_vmm_id)"
		       " WHERE e.id = $1 AND e.ended_at IS NULL"
		       "  AND s.status NOT IN " TERMINAL
		       "  AND w.state IS DISTINCT FROM 'terminated'"
		       "  AND coalesce(v.state, '') NOT IN ('destroyed', 'failed')"
		       "  AND (e.memory_mb <> s.memory_mb OR e.vcpus <> s.vcpus)"
		       " FOR UPDATE OF e, s",
		       vmops_db_ll(id, rp->f->event_id));
	if (!r)
		return -1;
	if (PQntuples(r) != 1) {
		rp->stale = true;
		return 0;
	}
	u = vmops_db_q(c, e,
		       "UPDATE scale_events e SET ended_at = greatest(now(), started_at) WHERE id = $1"
		       " RETURNING " EVENT_JSON("e") "::text, e.ended_at",
		       id);
	if (!u)
		return -1;
	n = vmops_db_q(c, e,
		       "INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at)"
		       " SELECT sandbox_id, $2, worker_id, vmm_id, $3, $4, $5 FROM scale_events WHERE id = $1"
		       " RETURNING id, " EVENT_JSON("scale_events") "::text",
		       id, PQgetvalue(r, 0, 3), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(u, 0, 1));
	if (!n)
		return -1;
	snprintf(after, sizeof(after), "{\"closed\": %.1000s, \"opened\": %.1000s}", PQgetvalue(u, 0, 0),
		 PQgetvalue(n, 0, 1));
	if (audit(c, rp, "resize-event", rp->f->event_id, PQgetvalue(r, 0, 0), after, e) < 0)
		return -1;
	rp->action = "resized";
	return 0;
}

/* A running sandbox without an open event: open one since it went missing. */
static int repair_open(PGconn *c, struct repair *rp, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL, *n = NULL;
	char id[24];

	r = vmops_db_q(c, e, "SELECT 1 FROM sandboxes s WHERE s.id = $1 FOR UPDATE",
		       vmops_db_ll(id, rp->f->sandbox_id));
	if (!r)
		return -1;
	PQclear(r);
	r = vmops_db_q(c, e,
		       "SELECT s.org_id, s.worker_id, s.active_vmm_id, s.memory_mb, s.vcpus, " MISSING_SINCE("now()")
		       " FROM sandboxes s WHERE s.id = $1 AND" MISSING_WHERE,
		       id);
	if (!r)
		return -1;
	if (PQntuples(r) != 1) {
		rp->stale = true;
		return 0;
	}
	n = vmops_db_q(c, e,
		       "INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at)"
		       " VALUES ($1, $2, $3, $4, $5, $6, $7)"
		       " RETURNING id, " EVENT_JSON("scale_events") "::text",
		       id, str_or_null(r, 0, 0), str_or_null(r, 0, 1), str_or_null(r, 0, 2),
		       PQgetvalue(r, 0, 3), PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5));
	if (!n)
		return -1;
	if (audit(c, rp, "open-missing-event", strtoll(PQgetvalue(n, 0, 0), NULL, 10), NULL,
		  PQgetvalue(n, 0, 1), e) < 0)
		return -1;
	rp->action = "opened";
	return 0;
}

/* An event closed late over its successor: end it where the successor starts. */
static int repair_trim(PGconn *c, struct repair *rp, struct vmops_error *e)
{
	_cleanup_pgresult_ PGresult *r = NULL, *u = NULL;
	char a[24], b[24];

	r = vmops_db_q(c, e,
		       "SELECT " EVENT_JSON("x") "::text, y.started_at"
		       " FROM scale_events x JOIN scale_events y ON y.sandbox_id = x.sandbox_id"
		       " WHERE x.id = $1 AND y.id = $2"
		       "  AND (x.started_at, x.id) < (y.started_at, y.id)"
		       "  AND x.ended_at IS NOT NULL AND x.ended_at > y.started_at"
		       "  AND x.ended_at <= coalesce(y.ended_at, 'infinity')"
		       " FOR UPDATE OF x, y",
		       vmops_db_ll(a, rp->f->event_id), vmops_db_ll(b, rp->f->other_event_id));
	if (!r)
		return -1;
	if (PQntuples(r) != 1) {
		rp->stale = true;
		return 0;
	}
	u = vmops_db_q(c, e,
		       "UPDATE scale_events e SET ended_at = $2 WHERE id = $1"
		       " RETURNING " EVENT_JSON("e") "::text",
		       a, PQgetvalue(r, 0, 1));
	if (!u)
		return -1;
	if (audit(c, rp, "trim-overlapping-event", rp->f->event_id, PQgetvalue(r, 0, 0), PQgetvalue(u, 0, 0), e) < 0)
		return -1;
	rp->action = "trimmed";
	return 0;
}

static int repair_tx(PGconn *c, void *data, struct vmops_error *e)
{
	struct repair *rp = data;
	int rc;

	rp->action = NULL;
	rp->stale = false;
	switch (rp->f->category) {
	case VMOPS_PARITY_OPEN_TERMINAL:
	case VMOPS_PARITY_OPEN_WORKER_TERMINATED:
	case VMOPS_PARITY_OPEN_VMM_DEAD:
		rc = repair_close(c, rp, e);
		break;
	case VMOPS_PARITY_SIZE_MISMATCH:
		rc = repair_resize(c, rp, e);
		break;
	case VMOPS_PARITY_MISSING_EVENT:
		rc = repair_open(c, rp, e);
		break;
	case VMOPS_PARITY_OVERLAP:
		rc = repair_trim(c, rp, e);
		break;
	default:
		return 0;
	}
	if (rc == 0 && rp->o->dry_run && rp->action)
		return vmops_err(e, VMOPS_EXIT_OK, "dry run");  /* roll back */
	return rc;
}

static int repair_all(PGconn *c, const struct vmops_parity_opts *o, struct vmops_parity_report *rep,
		      struct vmops_error *e)
{
	for (size_t i = 0; i < rep->n; i++) {
		struct vmops_parity_finding *f = &rep->findings[i];
		struct repair rp = { .o = o, .f = f };
		struct vmops_error err = { 0 };

		if (!f->fixable)
			continue;
		if (vmops_db_tx(c, VMOPS_READ_COMMITTED, repair_tx, &rp, &err) < 0) {
			if (err.code == VMOPS_EXIT_OK && strcmp(err.msg, "dry run") == 0) {
				f->action = rp.action;
				continue;
			}
			if (err.code == VMOPS_EXIT_DB) {
				*e = err;
				return -1;
			}
			free(f->error);
			f->error = strdup(err.msg);
			rep->fix_errors++;
			snprintf(rep->last_error, sizeof(rep->last_error), "%s: %.900s",
				 category_names[f->category], err.msg);
			vmops_warn("repair of %s (%s %s): %s", category_names[f->category],
				   f->sandbox ? "sandbox" : "org", f->sandbox ? f->sandbox : f->org ? f->org : "?",
				   err.msg);
			continue;
		}
		f->action = rp.action;
		if (rp.stale)
			vmops_info("%s (%s): changed since it was found; not repaired",
				   category_names[f->category], f->sandbox ? f->sandbox : f->org ? f->org : "?");
	}
	return 0;
}

/* ---- the run ------------------------------------------------------------ */

void vmops_parity_report_free(struct vmops_parity_report *r)
{
	struct list l;

	if (!r)
		return;
	l.v = r->findings;
	l.n = r->n;
	l.cap = r->n;
	list_free(&l);
	free(r);
}

struct vmops_parity_report *vmops_parity_run(PGconn *c, const struct vmops_parity_opts *o,
					     struct vmops_error *e)
{
	struct vmops_parity_report *rep = calloc(1, sizeof(*rep));
	struct list found = { 0 }, again = { 0 };
	char from[40], to[40], tol[40], starting[24];
	struct detect d = { from, to, tol, starting, &found };

	if (!rep) {
		vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
		return NULL;
	}
	rep->remaining = -1;
	sql_time(o->from, from, sizeof(from));
	sql_time(o->to, to, sizeof(to));
	snprintf(tol, sizeof(tol), "%.6f", o->tolerance_pct);
	snprintf(starting, sizeof(starting), "%llu", (unsigned long long)o->starting_timeout_ms);
	vmops_info("window %s to %s, tolerance %s%%", from, to, tol);

	if (detect(c, &d, e) < 0)
		goto fail;
	rep->findings = found.v;
	rep->n = found.n;
	found.v = NULL;

	if (o->fix && !o->dry_run && rep->n == 0)
		rep->remaining = 0;
	if (o->fix && rep->n) {
		if (repair_all(c, o, rep, e) < 0)
			goto fail;
		if (!o->dry_run) {
			d.out = &again;
			if (detect(c, &d, e) < 0) {
				vmops_err_prefix(e, "re-checking after repairs");
				goto fail;
			}
			rep->remaining = (long long)again.n;
			for (size_t i = 0; i < rep->n; i++) {
				bool left = false;
				for (size_t j = 0; j < again.n && !left; j++)
					left = same_finding(&rep->findings[i], &again.v[j]);
				rep->findings[i].fixed = !left;
			}
			/* New drift seen at the re-check is reported too (not fixed). */
			for (size_t j = 0; j < again.n; j++) {
				bool known = false;
				for (size_t i = 0; i < rep->n && !known; i++)
					known = same_finding(&rep->findings[i], &again.v[j]);
				if (known)
					continue;
				struct vmops_parity_finding *v = realloc(rep->findings, (rep->n + 1) * sizeof(*v));
				if (!v) {
					vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
					goto fail;
				}
				rep->findings = v;
				rep->findings[rep->n++] = again.v[j];
				memset(&again.v[j], 0, sizeof(again.v[j]));
			}
			list_free(&again);
		}
	}
	for (size_t i = 0; i < rep->n; i++) {
		const struct vmops_parity_finding *f = &rep->findings[i];
		struct vmops_parity_total *t = &rep->totals[f->category];

		t->count++;
		t->fixed += f->fixed;
		if (!isnan(f->drift_gbs))
			t->drift_gbs += f->drift_gbs;
	}
	return rep;
fail:
	list_free(&found);
	list_free(&again);
	vmops_parity_report_free(rep);
	return NULL;
}
