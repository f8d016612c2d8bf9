/* SPDX-License-Identifier: MIT */
/*
 * manifest.json <-> struct vmops_manifest.  The document:
 *
 *   {"format": 1, "hypervisor": "qemu", "hypervisor_version": "7.2.19",
 *    "machine": "pc-i440fx-7.2", "memory_bytes": 1073741824, "spec": {...},
 *    "source": {"sandbox": "sb-1", "vmm_id": 42, "worker": "w-1"},
 *    "vmops_version": "0.1.0", "created": "2026-12-02T01:02:03Z",
 *    "members": [{"name": "memory", "size": 123, "sha256": "<64 hex>"}]}
 *
 * Reading is strict: every key required, none unknown, every value checked.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../exitcodes.h"
#include "internal.h"

#define JSON_INT_MAX 9007199254740992.0 /* 2^53: exact in a double */

static const char *const hypervisors[] = { "qemu", "cloud-hypervisor", "firecracker" };

const char *bundle_name_invalid(const char *name)
{
	size_t len = strlen(name);

	if (len == 0)
		return "empty name";
	if (len >= sizeof(((struct vmops_bundle_member *)0)->name))
		return "name too long";
	if (name[0] == '/')
		return "absolute path";
	if (strcmp(name, "..") == 0 || strncmp(name, "../", 3) == 0 || strstr(name, "/../") ||
	    (len >= 3 && strcmp(name + len - 3, "/..") == 0))
		return "path with \"..\"";
	if (strchr(name, '/'))
		return "path with a directory";
	if (strcmp(name, ".") == 0)
		return "name \".\"";
	if (strcmp(name, VMOPS_BUNDLE_MANIFEST) == 0)
		return "second manifest";
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return "control character in name";
	return NULL;
}

cJSON *vmops_manifest_to_json(const struct vmops_manifest *m)
{
	cJSON *j = cJSON_CreateObject(), *src, *arr, *spec;

	if (!j)
		return NULL;
	spec = m->spec ? cJSON_Duplicate(m->spec, 1) : cJSON_CreateObject();
	cJSON_AddNumberToObject(j, "format", m->format);
	cJSON_AddStringToObject(j, "hypervisor", m->hypervisor);
	cJSON_AddStringToObject(j, "hypervisor_version", m->hypervisor_version);
	cJSON_AddStringToObject(j, "machine", m->machine);
	cJSON_AddNumberToObject(j, "memory_bytes", (double)m->memory_bytes);
	if (spec)
		cJSON_AddItemToObject(j, "spec", spec);
	src = cJSON_AddObjectToObject(j, "source");
	if (src) {
		cJSON_AddStringToObject(src, "sandbox", m->sandbox);
		cJSON_AddNumberToObject(src, "vmm_id", (double)m->vmm_id);
		cJSON_AddStringToObject(src, "worker", m->worker);
	}
	cJSON_AddStringToObject(j, "vmops_version", m->vmops_version);
	cJSON_AddStringToObject(j, "created", m->created);
	arr = cJSON_AddArrayToObject(j, "members");
	for (size_t i = 0; arr && i < m->n_members && i < VMOPS_BUNDLE_MEMBERS_MAX; i++) {
		cJSON *o = cJSON_CreateObject();

		if (!o || !cJSON_AddItemToArray(arr, o)) {
			cJSON_Delete(o);
			break;
		}
		cJSON_AddStringToObject(o, "name", m->members[i].name);
		cJSON_AddNumberToObject(o, "size", (double)m->members[i].size);
		cJSON_AddStringToObject(o, "sha256", m->members[i].sha256);
	}
	/* any allocation failure above shows as a missing key */
	if (!spec || !src || !arr || cJSON_GetArraySize(arr) != (int)m->n_members ||
	    cJSON_GetArraySize(j) != 10) {
		cJSON_Delete(j);
		return NULL;
	}
	return j;
}

/* Every key of object `o` is one of keys[]; returns the first other, or NULL. */
static const char *unknown_key(const cJSON *o, const char *const *keys, size_t n)
{
	const cJSON *it;

	cJSON_ArrayForEach(it, o) {
		size_t k = 0;

		while (k < n && strcmp(it->string, keys[k]) != 0)
			k++;
		if (k == n)
			return it->string;
	}
	return NULL;
}

static int get_str(const cJSON *o, const char *key, char *dst, size_t size, bool may_be_empty,
		   struct vmops_error *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	if (!cJSON_IsString(v))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"%s\" missing or not a string", key);
	if (strlen(v->valuestring) >= size)
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"%s\" too long", key);
	if (!may_be_empty && !v->valuestring[0])
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"%s\" is empty", key);
	for (const unsigned char *p = (const unsigned char *)v->valuestring; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"%s\" has a control character", key);
	strcpy(dst, v->valuestring);
	return 0;
}

static int get_u64(const cJSON *o, const char *key, uint64_t *dst, struct vmops_error *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	double d;

	if (!cJSON_IsNumber(v))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"%s\" missing or not a number", key);
	d = v->valuedouble;
	if (!(d >= 0 && d <= JSON_INT_MAX) || d != (double)(uint64_t)d)
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"%s\" is not a whole number in range", key);
	*dst = (uint64_t)d;
	return 0;
}

static bool is_rfc3339_utc(const char *s)
{
	struct tm tm = { 0 };
	const char *end;

	if (strlen(s) != 20)
		return false;
	end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return end && *end == '\0' && isdigit((unsigned char)s[0]);
}

static bool is_sha256_hex(const char *s)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (!isdigit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
			return false;
	return i == 64;
}

static int member_from_json(const cJSON *o, size_t i, struct vmops_manifest *m, struct vmops_error *err)
{
	static const char *const keys[] = { "name", "size", "sha256" };
	struct vmops_bundle_member *b = &m->members[i];
	const char *bad;

	if (!cJSON_IsObject(o))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: member %zu is not an object", i);
	if ((bad = unknown_key(o, keys, 3)))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: member %zu: unknown key \"%s\"", i, bad);
	if (get_str(o, "name", b->name, sizeof(b->name), false, err) < 0 ||
	    get_u64(o, "size", &b->size, err) < 0 ||
	    get_str(o, "sha256", b->sha256, sizeof(b->sha256), false, err) < 0)
		return vmops_err_prefix(err, "member %zu", i);
	if ((bad = bundle_name_invalid(b->name)))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: member \"%s\": %s", b->name, bad);
	if (!is_sha256_hex(b->sha256))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: member \"%s\": sha256 is not 64 lowercase hex digits",
				 b->name);
	for (size_t k = 0; k < i; k++)
		if (strcmp(m->members[k].name, b->name) == 0)
			return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: member \"%s\" listed twice", b->name);
	return 0;
}

static int members_from_json(const cJSON *j, struct vmops_manifest *m, struct vmops_error *err)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "members"), *o;
	int n = cJSON_GetArraySize(arr);

	if (!cJSON_IsArray(arr))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"members\" missing or not an array");
	if (n < 1 || n > VMOPS_BUNDLE_MEMBERS_MAX)
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: %d members (1 to %d allowed)", n,
				 VMOPS_BUNDLE_MEMBERS_MAX);
	m->n_members = 0;
	cJSON_ArrayForEach(o, arr) {
		if (member_from_json(o, m->n_members, m, err) < 0)
			return -1;
		m->n_members++;
	}
	return 0;
}

static int source_from_json(const cJSON *j, struct vmops_manifest *m, struct vmops_error *err)
{
	static const char *const keys[] = { "sandbox", "vmm_id", "worker" };
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "source");
	const char *bad;

	if (!cJSON_IsObject(s))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"source\" missing or not an object");
	if ((bad = unknown_key(s, keys, 3)))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: source: unknown key \"%s\"", bad);
	if (get_str(s, "sandbox", m->sandbox, sizeof(m->sandbox), false, err) < 0 ||
	    get_u64(s, "vmm_id", &m->vmm_id, err) < 0 ||
	    get_str(s, "worker", m->worker, sizeof(m->worker), false, err) < 0)
		return vmops_err_prefix(err, "source");
	return 0;
}

static int header_from_json(const cJSON *j, struct vmops_manifest *m, struct vmops_error *err)
{
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "format");
	size_t h = 0;

	if (!cJSON_IsNumber(f))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"format\" missing or not a number");
	if (f->valuedouble != VMOPS_BUNDLE_FORMAT)
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: unsupported format %g (this vmops reads %d)",
				 f->valuedouble, VMOPS_BUNDLE_FORMAT);
	m->format = VMOPS_BUNDLE_FORMAT;
	if (get_str(j, "hypervisor", m->hypervisor, sizeof(m->hypervisor), false, err) < 0)
		return -1;
	while (h < sizeof(hypervisors) / sizeof(hypervisors[0]) && strcmp(hypervisors[h], m->hypervisor) != 0)
		h++;
	if (h == sizeof(hypervisors) / sizeof(hypervisors[0]))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: unknown hypervisor \"%s\"", m->hypervisor);
	if (get_str(j, "hypervisor_version", m->hypervisor_version, sizeof(m->hypervisor_version), false, err) < 0 ||
	    get_str(j, "machine", m->machine, sizeof(m->machine), true, err) < 0 ||
	    get_u64(j, "memory_bytes", &m->memory_bytes, err) < 0 ||
	    get_str(j, "vmops_version", m->vmops_version, sizeof(m->vmops_version), false, err) < 0 ||
	    get_str(j, "created", m->created, sizeof(m->created), false, err) < 0)
		return -1;
	if (m->memory_bytes == 0)
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"memory_bytes\" is 0");
	if (!is_rfc3339_utc(m->created))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"created\" is not UTC RFC 3339 (%s)", m->created);
	return 0;
}

int vmops_manifest_from_json(const cJSON *j, struct vmops_manifest *m, struct vmops_error *err)
{
	static const char *const keys[] = { "format", "hypervisor", "hypervisor_version", "machine",
					    "memory_bytes", "spec", "source", "vmops_version",
					    "created", "members" };
	const cJSON *spec = cJSON_GetObjectItemCaseSensitive(j, "spec");
	const char *bad;

	memset(m, 0, sizeof(*m));
	if (!cJSON_IsObject(j))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: not a JSON object");
	if ((bad = unknown_key(j, keys, sizeof(keys) / sizeof(keys[0]))))
		return vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: unknown key \"%s\"", bad);
	if (!cJSON_IsObject(spec)) {
		vmops_err(err, VMOPS_EXIT_INTEGRITY, "manifest: \"spec\" missing or not an object");
		goto fail;
	}
	if (header_from_json(j, m, err) < 0 || source_from_json(j, m, err) < 0 ||
	    members_from_json(j, m, err) < 0)
		goto fail;
	m->spec = cJSON_Duplicate(spec, 1);
	if (!m->spec) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "manifest: out of memory");
		goto fail;
	}
	return 0;
fail:
	vmops_manifest_clear(m);
	return -1;
}

const struct vmops_bundle_member *vmops_manifest_member(const struct vmops_manifest *m, const char *name)
{
	for (size_t i = 0; i < m->n_members && i < VMOPS_BUNDLE_MEMBERS_MAX; i++)
		if (strcmp(m->members[i].name, name) == 0)
			return &m->members[i];
	return NULL;
}

void vmops_manifest_clear(struct vmops_manifest *m)
{
	cJSON_Delete(m->spec);
	memset(m, 0, sizeof(*m));
}
