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

static int num(const cJSON *o, const char *key, double min, double max, double *out,
	       struct vmops_error *e)
{
	const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, key);

	if (!cJSON_IsNumber(n) || n->valuedouble < min || n->valuedouble > max ||
	    n->valuedouble != (double)(long long)n->valuedouble)
		return vmops_err(e, VMOPS_EXIT_USAGE, "vmm: %s: missing or out of range", key);
	*out = n->valuedouble;
	return 0;
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
