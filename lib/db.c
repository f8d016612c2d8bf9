/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "exitcodes.h"
#include "log.h"
#include "macro.h"

void vmops_db_redact(const char *in, char *out, size_t len)
{
	size_t o = 0;
	const char *p = in;

	if (!len)
		return;
	while (*p && o + 1 < len) {
		/* keyword/value: password = value */
		if (strncasecmp(p, "password", 8) == 0 && (p == in || isspace((unsigned char)p[-1]))) {
			const char *q = p + 8;
			while (isspace((unsigned char)*q))
				q++;
			if (*q == '=') {
				q++;
				while (isspace((unsigned char)*q))
					q++;
				if (*q == '\'') {
					q++;
					while (*q && *q != '\'') {
						if (*q == '\\' && q[1])
							q++;
						q++;
					}
					if (*q)
						q++;
				} else {
					while (*q && !isspace((unsigned char)*q))
						q++;
				}
				o += (size_t)snprintf(out + o, len - o, "password=***");
				p = q;
				continue;
			}
		}
		/* URI: scheme://user:secret@host */
		if (strncmp(p, "://", 3) == 0) {
			const char *at = strchr(p + 3, '@');
			const char *slash = strchr(p + 3, '/');
			const char *colon = strchr(p + 3, ':');
			if (at && (!slash || at < slash) && colon && colon < at) {
				size_t ulen = (size_t)(colon - p);
				if (o + ulen + 5 < len) {
					memcpy(out + o, p, ulen);
					o += ulen;
					o += (size_t)snprintf(out + o, len - o, ":***");
					p = at;
					continue;
				}
			}
		}
		/* URI query parameter: ?password=... or &password=... */
		if ((*p == '?' || *p == '&') && strncasecmp(p + 1, "password=", 9) == 0) {
			const char *q = p + 10;
			while (*q && *q != '&')
				q++;
			o += (size_t)snprintf(out + o, len - o, "%cpassword=***", *p);
			p = q;
			continue;
		}
		out[o++] = *p++;
	}
	out[o < len ? o : len - 1] = '\0';
}

const char *vmops_db_describe(PGconn *c, char *buf, size_t len)
{
	const char *host = PQhost(c), *port = PQport(c), *db = PQdb(c);

	snprintf(buf, len, "host=%s port=%s dbname=%s",
		 host && *host ? host : "(default)", port && *port ? port : "(default)",
		 db && *db ? db : "(default)");
	return buf;
}

static void first_line(char *s)
{
	size_t n = strcspn(s, "\n");
	s[n] = '\0';
	while (n && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
}

/*
 * Connection-level defaults, so that a network partition or a dead server is
 * noticed in tens of seconds rather than after the kernel's two hours.  They
 * come before "dbname" in the keyword list, so the same keywords in --db win
 * (libpq: the expanded connection string overrides earlier keywords).  They
 * only matter for TCP connections; libpq ignores them on a UNIX socket.
 */
static const char *const conn_defaults[][2] = {
	{ "keepalives", "1" },
	{ "keepalives_idle", "10" },
	{ "keepalives_interval", "5" },
	{ "keepalives_count", "3" },
	{ "tcp_user_timeout", "30000" },
};
#define N_CONN_DEFAULTS (sizeof(conn_defaults) / sizeof(conn_defaults[0]))

static bool keyword_like(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!(islower((unsigned char)p[i]) || p[i] == '_'))
			return false;
	return n > 0;
}

/*
 * libpq's parse errors quote pieces of the connection string: `missing "="
 * after "secret"` for "password=my secret".  Any quoted piece may be part of
 * a password, so only keyword-like pieces of "invalid connection option"
 * survive; every other quoted piece becomes "***".
 */
static void mask_fragments(char *msg)
{
	bool option = strstr(msg, "invalid connection option") != NULL;
	char out[VMOPS_ERRMSG_MAX];
	size_t o = 0;

	for (const char *p = msg; *p && o + 8 < sizeof(out);) {
		const char *q = *p == '"' ? strchr(p + 1, '"') : NULL;
		size_t n = q ? (size_t)(q - p - 1) : 0;

		if (!q) {
			out[o++] = *p++;
			continue;
		}
		if ((n == 1 && p[1] == '=') || (option && keyword_like(p + 1, n)))
			o += (size_t)snprintf(out + o, sizeof(out) - o, "%.*s", (int)(n + 2), p);
		else
			o += (size_t)snprintf(out + o, sizeof(out) - o, "\"***\"");
		p = q + 1;
	}
	out[o < sizeof(out) ? o : sizeof(out) - 1] = '\0';
	strcpy(msg, out);
}

/* Parse --db; true if it (or PGCONNECT_TIMEOUT) sets connect_timeout. */
static int check_conninfo(const char *conninfo, bool *has_timeout, struct vmops_error *e)
{
	char msg[VMOPS_ERRMSG_MAX], red[VMOPS_ERRMSG_MAX];
	char *perr = NULL;
	PQconninfoOption *opts;

	*has_timeout = getenv("PGCONNECT_TIMEOUT") != NULL;
	if (!conninfo || !*conninfo)
		return 0;
	opts = PQconninfoParse(conninfo, &perr);
	if (!opts) {
		snprintf(msg, sizeof(msg), "%s", perr ? perr : "out of memory");
		PQfreemem(perr);
		first_line(msg);
		mask_fragments(msg);
		vmops_db_redact(msg, red, sizeof(red));
		vmops_err(e, VMOPS_EXIT_USAGE, "invalid --db connection string: %s", red);
		return -1;
	}
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && *o->val)
			*has_timeout = true;
	PQconninfoFree(opts);
	return 0;
}

/*
 * Session timeouts, set only where nobody configured them (pg_settings
 * source 'default'): options= in --db, PGOPTIONS, ALTER ROLE/DATABASE SET
 * and postgresql.conf all win.  A statement or lock wait cannot stall a
 * program for hours, and a client that stalls inside a transaction does not
 * hold its row locks (a lease, a worker's admission lock) for ever.
 */
static int apply_session_defaults(PGconn *c, struct vmops_error *e)
{
	static const char sql[] =
		"SELECT set_config(name, v, false) FROM (VALUES "
		"('statement_timeout', '5min'), ('lock_timeout', '30s'), "
		"('idle_in_transaction_session_timeout', '2min')) AS d(name, v) "
		"JOIN pg_settings USING (name) WHERE source = 'default'";

	return vmops_db_exec(c, e, sql, 0, NULL);
}

/* Server notices and warnings go to the program's log callback (shown with
 * -v), never straight to stderr, and never with a password in them. */
static void on_notice(void *arg, const char *message)
{
	char msg[VMOPS_ERRMSG_MAX], red[VMOPS_ERRMSG_MAX];

	(void)arg;
	snprintf(msg, sizeof(msg), "%s", message);
	first_line(msg);
	vmops_db_redact(msg, red, sizeof(red));
	vmops_debug("database: %s", red);
}

static void connect_error(PGconn *c, struct vmops_error *e)
{
	char where[512], msg[VMOPS_ERRMSG_MAX], red[VMOPS_ERRMSG_MAX];

	snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
	first_line(msg);
	/* libpq prefixes 'connection to server on socket "..." failed: ' */
	vmops_db_redact(msg, red, sizeof(red));
	vmops_err(e, VMOPS_EXIT_DB, "database %s unreachable: %s", vmops_db_describe(c, where, sizeof(where)), red);
}

/* Notices through the logger, the session defaults. */
static PGconn *set_up(PGconn *c, struct vmops_error *e)
{
	PQsetNoticeProcessor(c, on_notice, NULL);
	if (apply_session_defaults(c, e) < 0) {
		PQfinish(c);
		return NULL;
	}
	return c;
}

PGconn *vmops_db_connect(const char *conninfo, const char *program, struct vmops_error *e)
{
	const char *keys[N_CONN_DEFAULTS + 4], *vals[N_CONN_DEFAULTS + 4];
	bool has_timeout;
	size_t n = 0;
	PGconn *c;

	if (check_conninfo(conninfo, &has_timeout, e) < 0)
		return NULL;
	for (size_t i = 0; i < N_CONN_DEFAULTS; i++, n++) {
		keys[n] = conn_defaults[i][0];
		vals[n] = conn_defaults[i][1];
	}
	/* The user's connect_timeout (in --db or PGCONNECT_TIMEOUT) wins; else do not hang forever. */
	if (!has_timeout) {
		keys[n] = "connect_timeout";
		vals[n++] = "10";
	}
	keys[n] = "dbname";
	vals[n++] = conninfo && *conninfo ? conninfo : NULL;
	keys[n] = "fallback_application_name";
	vals[n++] = program;
	keys[n] = vals[n] = NULL;
	c = PQconnectdbParams(keys, vals, 1);
	if (!c) {
		vmops_err(e, VMOPS_EXIT_DB, "database: out of memory");
		return NULL;
	}
	if (PQstatus(c) != CONNECTION_OK) {
		connect_error(c, e);
		PQfinish(c);
		return NULL;
	}
	return set_up(c, e);
}

/*
 * Another session on the server, database and user of `c`: its resolved
 * connection parameters (PQconninfo: --db, the environment and the defaults
 * as they were applied), set up like the first.
 */
PGconn *vmops_db_connect_again(PGconn *c, struct vmops_error *e)
{
	PQconninfoOption *opts = PQconninfo(c);
	const char **keys = NULL, **vals = NULL;
	size_t n = 0, k = 0;
	PGconn *c2 = NULL;

	for (PQconninfoOption *o = opts; o && o->keyword; o++)
		n++;
	if (!opts || !(keys = calloc(n + 1, sizeof(*keys))) || !(vals = calloc(n + 1, sizeof(*vals)))) {
		vmops_err(e, VMOPS_EXIT_FAILURE, "out of memory");
		goto out;
	}
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (o->val && *o->val) {
			keys[k] = o->keyword;
			vals[k++] = o->val;
		}
	c2 = PQconnectdbParams(keys, vals, 0);
	if (!c2)
		vmops_err(e, VMOPS_EXIT_DB, "database: out of memory");
	else if (PQstatus(c2) != CONNECTION_OK) {
		connect_error(c2, e);
		PQfinish(c2);
		c2 = NULL;
	} else
		c2 = set_up(c2, e);
out:
	free(keys);
	free(vals);
	PQconninfoFree(opts);
	return c2;
}

static int map_sqlstate(const char *st)
{
	if (!st)
		return VMOPS_EXIT_FAILURE;
	if (strncmp(st, "23", 2) == 0 || strncmp(st, "VO", 2) == 0)
		return VMOPS_EXIT_CONFLICT;
	if (strcmp(st, "42P01") == 0 || strcmp(st, "42883") == 0)
		return VMOPS_EXIT_SCHEMA;
	if (strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0)
		return VMOPS_EXIT_DB;
	return VMOPS_EXIT_FAILURE;
}

static void fill_result_error(PGconn *c, const PGresult *r, struct vmops_error *e)
{
	const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	const char *prim = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	char msg[VMOPS_ERRMSG_MAX], red[VMOPS_ERRMSG_MAX];

	snprintf(msg, sizeof(msg), "%s", prim ? prim : PQerrorMessage(c));
	first_line(msg);
	vmops_db_redact(msg, red, sizeof(red));
	if (PQstatus(c) == CONNECTION_BAD)
		vmops_err(e, VMOPS_EXIT_DB, "database connection lost: %s", red);
	else if (map_sqlstate(st) == VMOPS_EXIT_CONFLICT)
		vmops_err(e, VMOPS_EXIT_CONFLICT, "%s", red);  /* the database's own refusal says it all */
	else
		vmops_err(e, map_sqlstate(st), "database: %s", red);
	if (e && st)
		snprintf(e->sqlstate, sizeof(e->sqlstate), "%s", st);
}

static PGresult *checked(PGconn *c, PGresult *r, struct vmops_error *e)
{
	ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;

	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
		return r;
	fill_result_error(c, r, e);
	PQclear(r);
	return NULL;
}

PGresult *vmops_db_query(PGconn *c, struct vmops_error *e, const char *sql,
			 int nparams, const char *const *params)
{
	return checked(c, PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0), e);
}

int vmops_db_prepare(PGconn *c, struct vmops_error *e, const char *name, const char *sql)
{
	struct vmops_error local = { 0 };
	PGresult *r = checked(c, PQprepare(c, name, sql, 0, NULL), &local);

	if (r) {
		PQclear(r);
		return 0;
	}
	if (strcmp(local.sqlstate, "42P05") == 0)  /* duplicate_prepared_statement */
		return 0;
	if (e)
		*e = local;
	return -1;
}

PGresult *vmops_db_query_prepared(PGconn *c, struct vmops_error *e, const char *name,
				  int nparams, const char *const *params)
{
	return checked(c, PQexecPrepared(c, name, nparams, params, NULL, NULL, 0), e);
}

int vmops_db_exec(PGconn *c, struct vmops_error *e, const char *sql, int nparams,
		  const char *const *params)
{
	PGresult *r = vmops_db_query(c, e, sql, nparams, params);

	if (!r)
		return -1;
	PQclear(r);
	return 0;
}

/* Job i may start: nothing runs on its connection, no earlier job waits for it. */
static bool may_start(const struct vmops_db_job *jobs, size_t i)
{
	for (size_t j = 0; j < i; j++)
		if (jobs[j].c == jobs[i].c && jobs[j].state_ != VMOPS_DB_JOB_DONE)
			return false;
	return true;
}

static int start_job(struct vmops_db_job *j, struct vmops_error *e)
{
	j->state_ = VMOPS_DB_JOB_RUNNING;
	if (PQsendQueryParams(j->c, j->sql, j->nparams, j->types, j->params, NULL, NULL, 0))
		return 0;
	j->state_ = VMOPS_DB_JOB_DONE;
	fill_result_error(j->c, NULL, e);
	return -1;
}

/* Read what has arrived for running job j; done once libpq says so. */
static int collect_job(struct vmops_db_job *j, struct vmops_error *e)
{
	int rc = 0;

	if (!PQconsumeInput(j->c)) {
		fill_result_error(j->c, NULL, e);
		j->state_ = VMOPS_DB_JOB_DONE;
		return -1;
	}
	while (!PQisBusy(j->c)) {
		PGresult *r = PQgetResult(j->c);
		ExecStatusType st = r ? PQresultStatus(r) : PGRES_COMMAND_OK;

		if (!r) {
			j->state_ = VMOPS_DB_JOB_DONE;
			break;
		}
		if ((st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) && !j->result) {
			j->result = r;
			continue;
		}
		fill_result_error(j->c, r, e);
		PQclear(r);
		rc = -1;
	}
	return rc;
}

int vmops_db_query_all(struct vmops_db_job *jobs, size_t n, struct vmops_error *e)
{
	struct pollfd pfd[VMOPS_DB_JOBS_MAX];
	size_t who[VMOPS_DB_JOBS_MAX];
	struct vmops_error first = { 0 }, err = { 0 };
	bool failed = false;

	if (n > VMOPS_DB_JOBS_MAX)
		return vmops_err(e, VMOPS_EXIT_FAILURE, "database: %zu statements at once, at most %d", n,
				 VMOPS_DB_JOBS_MAX);
	for (size_t i = 0; i < n; i++) {
		jobs[i].state_ = VMOPS_DB_JOB_WAITING;
		jobs[i].result = NULL;
	}
	for (;;) {
		size_t k = 0;

		for (size_t i = 0; i < n && !failed; i++)
			if (jobs[i].state_ == VMOPS_DB_JOB_WAITING && may_start(jobs, i) && start_job(&jobs[i], &err) < 0)
				failed = true, first = err;
		for (size_t i = 0; i < n; i++)
			if (jobs[i].state_ == VMOPS_DB_JOB_RUNNING) {
				pfd[k] = (struct pollfd){ .fd = PQsocket(jobs[i].c), .events = POLLIN };
				who[k++] = i;
			}
		if (k == 0)
			break;
		if (poll(pfd, k, -1) < 0 && errno != EINTR)
			return vmops_err(e, VMOPS_EXIT_FAILURE, "database: poll: %s", strerror(errno));
		for (size_t p = 0; p < k; p++)
			if (pfd[p].revents && collect_job(&jobs[who[p]], &err) < 0 && !failed)
				failed = true, first = err;
	}
	if (failed && e)
		*e = first;
	return failed ? -1 : 0;
}

unsigned vmops_db_jitter_ms(unsigned max)
{
	/* Private state: the library does not reseed the program's rand(). */
	static unsigned seed;

	if (!seed) {
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		seed = ((unsigned)getpid() ^ (unsigned)now.tv_nsec) | 1u;
	}
	return max ? (unsigned)rand_r(&seed) % max : 0;
}

static bool retryable(const struct vmops_error *e)
{
	return strcmp(e->sqlstate, "40001") == 0 || strcmp(e->sqlstate, "40P01") == 0;
}

int vmops_db_tx(PGconn *c, enum vmops_isolation iso, vmops_tx_fn fn, void *data,
		struct vmops_error *e)
{
	static const char *const begin[] = {
		[VMOPS_READ_COMMITTED] = "BEGIN ISOLATION LEVEL READ COMMITTED",
		[VMOPS_REPEATABLE_READ] = "BEGIN ISOLATION LEVEL REPEATABLE READ",
		[VMOPS_SERIALIZABLE] = "BEGIN ISOLATION LEVEL SERIALIZABLE",
	};
	const int attempts = 5;
	for (int i = 1;; i++) {
		struct vmops_error local = { 0 };
		int rc;

		if (vmops_db_exec(c, e, begin[iso], 0, NULL) < 0)
			return -1;
		rc = fn(c, data, &local);
		if (rc == 0)
			rc = vmops_db_exec(c, &local, "COMMIT", 0, NULL);
		if (rc == 0)
			return 0;
		/* ROLLBACK is harmless after a failed COMMIT */
		PQclear(PQexec(c, "ROLLBACK"));
		if (!retryable(&local) || i == attempts) {
			if (e)
				*e = local;
			return -1;
		}
		vmops_debug("transaction: %s; retrying (attempt %d of %d)", local.msg, i + 1, attempts);
		{
			struct timespec ts = { 0, (long)(vmops_db_jitter_ms(50) + 10u * (unsigned)i) * 1000000L };
			nanosleep(&ts, NULL);
		}
	}
}

const char *vmops_db_ll(char buf[static 24], long long v)
{
	snprintf(buf, 24, "%lld", v);
	return buf;
}

const char *vmops_db_get(const PGresult *r, int row, const char *col)
{
	int f = PQfnumber(r, col);

	if (f < 0 || row >= PQntuples(r) || PQgetisnull(r, row, f))
		return NULL;
	return PQgetvalue(r, row, f);
}

long long vmops_db_get_ll(const PGresult *r, int row, const char *col, long long dflt)
{
	const char *v = vmops_db_get(r, row, col);

	return v ? strtoll(v, NULL, 10) : dflt;
}

const char *vmops_db_actor(void)
{
	static char actor[256];
	char host[128] = "localhost";
	const char *user = getenv("USER");
	struct passwd *pw;

	if (actor[0])
		return actor;
	if (gethostname(host, sizeof(host) - 1) < 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	if ((pw = getpwuid(geteuid())))
		user = pw->pw_name;
	snprintf(actor, sizeof(actor), "%s@%s", user ? user : "unknown", host);
	return actor;
}
