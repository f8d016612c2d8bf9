/* SPDX-License-Identifier: MIT */
/* struct vmops_vmm_info <-> JSON, for requests and answers over ssh. */
#include <stdio.h>
#include <string.h>

#include "exitcodes.h"
#include "transport/internal.h"

cJSON *vmops_remote_info_to_json(const struct vmops_vmm_info *i)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "kind", i->kind);
	cJSON_AddNumberToObject(o, "vmm_id", (double)i->vmm_id);
	cJSON_AddNumberToObject(o, "pid", (double)i->pid);
	cJSON_AddNumberToObject(o, "start_time", (double)i->start_time);
	cJSON_AddBoolToObject(o, "incoming", i->incoming);
	cJSON_AddStringToObject(o, "run_dir", i->run_dir);
	cJSON_AddStringToObject(o, "control_socket", i->control_socket);
	cJSON_AddStringToObject(o, "agent_socket", i->agent_socket);
	cJSON_AddStringToObject(o, "serial_log", i->serial_log);
	cJSON_AddStringToObject(o, "stderr_log", i->stderr_log);
	cJSON_AddStringToObject(o, "incoming_uri", i->incoming_uri);
	return o;
}

static int str(const cJSON *o, const char *key, char *buf, size_t len, bool path,
	       struct vmops_error *e)
{
	const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));

	if (!v)
		return vmops_err(e, VMOPS_EXIT_USAGE, "vmm: %s: missing or not a string", key);
	if (strlen(v) >= len)
		return vmops_err(e, VMOPS_EXIT_USAGE, "vmm: %s: too long", key);
	if (path && v[0] && v[0] != '/')
		return vmops_err(e, VMOPS_EXIT_USAGE, "vmm: %s: not an absolute path", key);
	snprintf(buf, len, "%s", v);
	return 0;
}

static int num_of(const cJSON *o, const char *what, const char *key, double min, double max, double *out,
		  struct vmops_error *e)
{
	const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, key);

	if (!cJSON_IsNumber(n) || n->valuedouble < min || n->valuedouble > max ||
	    n->valuedouble != (double)(long long)n->valuedouble)
		return vmops_err(e, VMOPS_EXIT_USAGE, "%s: %s: missing or out of range", what, key);
	*out = n->valuedouble;
	return 0;
}

static int num(const cJSON *o, const char *key, double min, double max, double *out, struct vmops_error *e)
{
	return num_of(o, "vmm", key, min, max, out, e);
}

int vmops_remote_info_from_json(const cJSON *o, struct vmops_vmm_info *i, struct vmops_error *e)
{
	double id, pid, st;

	memset(i, 0, sizeof(*i));
	if (!cJSON_IsObject(o))
		return vmops_err(e, VMOPS_EXIT_USAGE, "vmm: not a JSON object");
	if (str(o, "kind", i->kind, sizeof(i->kind), false, e) < 0 ||
	    num(o, "vmm_id", 1, 9007199254740991.0, &id, e) < 0 ||
	    num(o, "pid", 0, 4194304, &pid, e) < 0 ||
	    num(o, "start_time", 0, 9007199254740991.0, &st, e) < 0 ||
	    str(o, "run_dir", i->run_dir, sizeof(i->run_dir), true, e) < 0 ||
	    str(o, "control_socket", i->control_socket, sizeof(i->control_socket), true, e) < 0 ||
	    str(o, "agent_socket", i->agent_socket, sizeof(i->agent_socket), true, e) < 0 ||
	    str(o, "serial_log", i->serial_log, sizeof(i->serial_log), true, e) < 0 ||
	    str(o, "stderr_log", i->stderr_log, sizeof(i->stderr_log), true, e) < 0 ||
	    str(o, "incoming_uri", i->incoming_uri, sizeof(i->incoming_uri), false, e) < 0)
		return -1;
	i->vmm_id = (uint64_t)id;
	i->pid = (pid_t)pid;
	i->start_time = (unsigned long long)st;
	i->incoming = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "incoming"));
	return 0;
}

cJSON *vmops_remote_mp_to_json(const struct vmops_migrate_params *mp)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	cJSON_AddNumberToObject(o, "connections", mp->connections);
	cJSON_AddNumberToObject(o, "max_bandwidth", (double)mp->max_bandwidth);
	cJSON_AddNumberToObject(o, "downtime_limit_ms", mp->downtime_limit_ms);
	cJSON_AddBoolToObject(o, "auto_converge", mp->auto_converge);
	return o;
}

int vmops_remote_mp_from_json(const cJSON *o, struct vmops_migrate_params *mp, struct vmops_error *e)
{
	double c, bw, dl;

	memset(mp, 0, sizeof(*mp));
	if (!cJSON_IsObject(o))
		return vmops_err(e, VMOPS_EXIT_USAGE, "mp: not a JSON object");
	if (num_of(o, "mp", "connections", 1, VMOPS_MIGRATE_CONNECTIONS_MAX, &c, e) < 0 ||
	    num_of(o, "mp", "max_bandwidth", 0, 9007199254740991.0, &bw, e) < 0 ||
	    num_of(o, "mp", "downtime_limit_ms", 0, 4294967295.0, &dl, e) < 0)
		return -1;
	mp->connections = (unsigned)c;
	mp->max_bandwidth = (uint64_t)bw;
	mp->downtime_limit_ms = (uint32_t)dl;
	mp->auto_converge = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "auto_converge"));
	return 0;
}

cJSON *vmops_remote_progress_to_json(const struct vmops_migrate_progress *p)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "status", p->status);
	cJSON_AddNumberToObject(o, "total_bytes", (double)p->total_bytes);
	cJSON_AddNumberToObject(o, "transferred_bytes", (double)p->transferred_bytes);
	cJSON_AddNumberToObject(o, "remaining_bytes", (double)p->remaining_bytes);
	cJSON_AddNumberToObject(o, "downtime_ms", (double)p->downtime_ms);
	cJSON_AddNumberToObject(o, "expected_downtime_ms", (double)p->expected_downtime_ms);
	cJSON_AddNumberToObject(o, "setup_time_ms", (double)p->setup_time_ms);
	cJSON_AddNumberToObject(o, "total_time_ms", (double)p->total_time_ms);
	cJSON_AddNumberToObject(o, "mbps", p->mbps);
	cJSON_AddNumberToObject(o, "dirty_pages_rate", (double)p->dirty_pages_rate);
	cJSON_AddNumberToObject(o, "dirty_sync_count", (double)p->dirty_sync_count);
	cJSON_AddNumberToObject(o, "page_size", (double)p->page_size);
	cJSON_AddNumberToObject(o, "multifd_bytes", (double)p->multifd_bytes);
	cJSON_AddNumberToObject(o, "cpu_throttle_percent", p->cpu_throttle_percent);
	cJSON_AddStringToObject(o, "error_desc", p->error_desc);
	return o;
}

static double dbl(const cJSON *o, const char *key, double dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static uint64_t u64(const cJSON *o, const char *key)
{
	double d = dbl(o, key, 0);

	return d > 0 && d < 18446744073709551615.0 ? (uint64_t)d : 0;
}

/* Lenient: a missing figure is unknown (0 or -1), never an error. */
void vmops_remote_progress_from_json(const cJSON *o, struct vmops_migrate_progress *p)
{
	const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "status"));
	const char *d = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "error_desc"));

	memset(p, 0, sizeof(*p));
	snprintf(p->status, sizeof(p->status), "%s", s ? s : "none");
	snprintf(p->error_desc, sizeof(p->error_desc), "%s", d ? d : "");
	p->total_bytes = u64(o, "total_bytes");
	p->transferred_bytes = u64(o, "transferred_bytes");
	p->remaining_bytes = u64(o, "remaining_bytes");
	p->downtime_ms = (int64_t)dbl(o, "downtime_ms", -1);
	p->expected_downtime_ms = (int64_t)dbl(o, "expected_downtime_ms", -1);
	p->setup_time_ms = (int64_t)dbl(o, "setup_time_ms", -1);
	p->total_time_ms = (int64_t)dbl(o, "total_time_ms", -1);
	p->mbps = dbl(o, "mbps", 0);
	p->dirty_pages_rate = u64(o, "dirty_pages_rate");
	p->dirty_sync_count = u64(o, "dirty_sync_count");
	p->page_size = u64(o, "page_size");
	p->multifd_bytes = u64(o, "multifd_bytes");
	p->cpu_throttle_percent = (int)dbl(o, "cpu_throttle_percent", 0);
}
