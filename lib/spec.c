/* SPDX-License-Identifier: MIT */
/* Launch spec parsing, validation and serialisation (see spec.h). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exitcodes.h"
#include "spec.h"

static const char *const hypervisors[] = { "qemu", "cloud-hypervisor", "firecracker" };

static const char *const accel_names[] = {
	[VMOPS_ACCEL_AUTO] = "auto",
	[VMOPS_ACCEL_TCG] = "tcg",
	[VMOPS_ACCEL_KVM] = "kvm",
};

const char *vmops_accel_name(enum vmops_accel a)
{
	if ((unsigned)a >= sizeof(accel_names) / sizeof(accel_names[0]))
		return "unknown";
	return accel_names[a];
}

static int bad(struct vmops_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad(struct vmops_error *err, const char *fmt, ...)
{
	char msg[VMOPS_ERRMSG_MAX - 16];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return vmops_err(err, VMOPS_EXIT_FAILURE, "spec: %s", msg);
}

/* Reject keys not in `allowed` and keys given twice. */
static int check_keys(const cJSON *obj, const char *where, const char *const *allowed,
		      size_t n_allowed, struct vmops_error *err)
{
	const cJSON *it, *prev;

	cJSON_ArrayForEach(it, obj) {
		size_t i;

		for (i = 0; i < n_allowed; i++)
			if (it->string && !strcmp(it->string, allowed[i]))
				break;
		if (i == n_allowed)
			return bad(err, "%s%sunknown key \"%s\"", where, *where ? ": " : "",
				   it->string ? it->string : "");
		for (prev = obj->child; prev != it; prev = prev->next)
			if (!strcmp(prev->string, it->string))
				return bad(err, "%s%sduplicate key \"%s\"", where,
					   *where ? ": " : "", it->string);
	}
	return 0;
}

static int get_uint(const cJSON *obj, const char *key, bool required, uint32_t min,
		    uint32_t max, uint32_t *out, struct vmops_error *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	double d;

	if (!v) {
		if (required)
			return bad(err, "%s: required", key);
		return 0;
	}
	if (!cJSON_IsNumber(v))
		return bad(err, "%s: must be an integer between %u and %u", key, min, max);
	d = v->valuedouble;
	if (!(d >= min && d <= max) || (double)(uint32_t)d != d)
		return bad(err, "%s: must be an integer between %u and %u, got %.17g", key, min,
			   max, d);
	*out = (uint32_t)d;
	return 0;
}

static bool has_control_chars(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

static int get_path(const cJSON *obj, const char *key, const char *where, bool required,
		    char **out, struct vmops_error *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

	if (!v) {
		if (required)
			return bad(err, "%s: required", where);
		return 0;
	}
	if (!cJSON_IsString(v) || !v->valuestring)
		return bad(err, "%s: must be a string", where);
	if (v->valuestring[0] != '/')
		return bad(err, "%s: must be an absolute path, got \"%.200s\"", where, v->valuestring);
	if (strlen(v->valuestring) >= PATH_MAX)
		return bad(err, "%s: path too long", where);
	if (has_control_chars(v->valuestring))
		return bad(err, "%s: control characters in path", where);
	*out = strdup(v->valuestring);
	if (!*out)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "spec: out of memory");
	return 0;
}

static int get_bool(const cJSON *obj, const char *key, const char *where, bool *out,
		    struct vmops_error *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

	if (!v)
		return 0;
	if (!cJSON_IsBool(v))
		return bad(err, "%s: must be true or false", where);
	*out = cJSON_IsTrue(v);
	return 0;
}

static int parse_disks(struct vmops_spec *s, const cJSON *arr, struct vmops_error *err)
{
	static const char *const keys[] = { "path", "readonly" };
	const cJSON *d;
	int n, i = 0;

	if (!cJSON_IsArray(arr))
		return bad(err, "disks: must be an array");
	n = cJSON_GetArraySize(arr);
	if (n > VMOPS_SPEC_DISKS_MAX)
		return bad(err, "disks: at most %d disks, got %d", VMOPS_SPEC_DISKS_MAX, n);
	if (n == 0)
		return 0;
	s->disks = calloc((size_t)n, sizeof(*s->disks));
	if (!s->disks)
		return vmops_err(err, VMOPS_EXIT_FAILURE, "spec: out of memory");
	cJSON_ArrayForEach(d, arr) {
		char where[64];

		snprintf(where, sizeof(where), "disks[%d]", i);
		if (!cJSON_IsObject(d))
			return bad(err, "%s: must be an object", where);
		if (check_keys(d, where, keys, 2, err) < 0)
			return -1;
		snprintf(where, sizeof(where), "disks[%d].path", i);
		if (get_path(d, "path", where, true, &s->disks[i].path, err) < 0)
			return -1;
		s->n_disks++;
		snprintf(where, sizeof(where), "disks[%d].readonly", i);
		if (get_bool(d, "readonly", where, &s->disks[i].readonly, err) < 0)
			return -1;
		i++;
	}
	return 0;
}

struct vmops_spec *vmops_spec_from_json(const cJSON *obj, struct vmops_error *err)
{
	static const char *const keys[] = {
		"hypervisor", "memory_mb", "vcpus", "kernel", "initrd", "cmdline",
		"disks", "balloon", "accel",
	};
	static const char *const balloon_keys[] = { "free_page_hint" };
	struct vmops_spec *s;
	const cJSON *v;
	size_t i;

	if (!cJSON_IsObject(obj)) {
		bad(err, "must be a JSON object");
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "spec: out of memory");
		return NULL;
	}
	if (check_keys(obj, "", keys, sizeof(keys) / sizeof(keys[0]), err) < 0)
		goto fail;

	v = cJSON_GetObjectItemCaseSensitive(obj, "hypervisor");
	if (!v) {
		bad(err, "hypervisor: required");
		goto fail;
	}
	if (!cJSON_IsString(v)) {
		bad(err, "hypervisor: must be a string");
		goto fail;
	}
	for (i = 0; i < sizeof(hypervisors) / sizeof(hypervisors[0]); i++)
		if (!strcmp(v->valuestring, hypervisors[i]))
			break;
	if (i == sizeof(hypervisors) / sizeof(hypervisors[0])) {
		bad(err, "hypervisor: must be qemu, cloud-hypervisor or firecracker, got \"%.100s\"",
		    v->valuestring);
		goto fail;
	}
	s->hypervisor = strdup(v->valuestring);
	if (!s->hypervisor) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "spec: out of memory");
		goto fail;
	}

	if (get_uint(obj, "memory_mb", true, VMOPS_SPEC_MEMORY_MB_MIN, VMOPS_SPEC_MEMORY_MB_MAX,
		     &s->memory_mb, err) < 0 ||
	    get_uint(obj, "vcpus", true, VMOPS_SPEC_VCPUS_MIN, VMOPS_SPEC_VCPUS_MAX,
		     &s->vcpus, err) < 0 ||
	    get_path(obj, "kernel", "kernel", true, &s->kernel, err) < 0 ||
	    get_path(obj, "initrd", "initrd", false, &s->initrd, err) < 0)
		goto fail;

	v = cJSON_GetObjectItemCaseSensitive(obj, "cmdline");
	if (v) {
		if (!cJSON_IsString(v)) {
			bad(err, "cmdline: must be a string");
			goto fail;
		}
		if (strlen(v->valuestring) > VMOPS_SPEC_CMDLINE_MAX) {
			bad(err, "cmdline: at most %d bytes, got %zu", VMOPS_SPEC_CMDLINE_MAX,
			    strlen(v->valuestring));
			goto fail;
		}
		if (has_control_chars(v->valuestring)) {
			bad(err, "cmdline: control characters");
			goto fail;
		}
		s->cmdline = strdup(v->valuestring);
		if (!s->cmdline) {
			vmops_err(err, VMOPS_EXIT_FAILURE, "spec: out of memory");
			goto fail;
		}
	}

	v = cJSON_GetObjectItemCaseSensitive(obj, "disks");
	if (v && parse_disks(s, v, err) < 0)
		goto fail;

	v = cJSON_GetObjectItemCaseSensitive(obj, "balloon");
	if (v) {
		if (!cJSON_IsObject(v)) {
			bad(err, "balloon: must be an object");
			goto fail;
		}
		if (check_keys(v, "balloon", balloon_keys, 1, err) < 0 ||
		    get_bool(v, "free_page_hint", "balloon.free_page_hint",
			     &s->balloon_free_page_hint, err) < 0)
			goto fail;
		s->balloon = true;
	}

	v = cJSON_GetObjectItemCaseSensitive(obj, "accel");
	if (v) {
		if (!cJSON_IsString(v)) {
			bad(err, "accel: must be a string");
			goto fail;
		}
		for (i = 0; i < sizeof(accel_names) / sizeof(accel_names[0]); i++)
			if (!strcmp(v->valuestring, accel_names[i]))
				break;
		if (i == sizeof(accel_names) / sizeof(accel_names[0])) {
			bad(err, "accel: must be tcg, kvm or auto, got \"%.100s\"", v->valuestring);
			goto fail;
		}
		s->accel = (enum vmops_accel)i;
	}
	return s;
fail:
	vmops_spec_free(s);
	return NULL;
}

struct vmops_spec *vmops_spec_parse(const char *json, size_t len, struct vmops_error *err)
{
	const char *end = NULL;
	struct vmops_spec *s;
	cJSON *obj;

	if (!json) {
		bad(err, "no JSON text");
		return NULL;
	}
	if (len == (size_t)-1)
		len = strlen(json);
	obj = cJSON_ParseWithLengthOpts(json, len, &end, false);
	if (!obj) {
		size_t off = end && end >= json && end <= json + len ? (size_t)(end - json) : 0;

		bad(err, "invalid JSON at byte %zu", off);
		return NULL;
	}
	/* Only whitespace may follow the object. */
	while (end < json + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
		end++;
	if (end != json + len) {
		bad(err, "unexpected text after the JSON object at byte %zu", (size_t)(end - json));
		cJSON_Delete(obj);
		return NULL;
	}
	s = vmops_spec_from_json(obj, err);
	cJSON_Delete(obj);
	return s;
}

cJSON *vmops_spec_to_json(const struct vmops_spec *s)
{
	cJSON *o = cJSON_CreateObject();
	size_t i;

	if (!o)
		return NULL;
	if (!cJSON_AddStringToObject(o, "hypervisor", s->hypervisor ? s->hypervisor : "qemu") ||
	    !cJSON_AddNumberToObject(o, "memory_mb", s->memory_mb) ||
	    !cJSON_AddNumberToObject(o, "vcpus", s->vcpus) ||
	    !cJSON_AddStringToObject(o, "kernel", s->kernel ? s->kernel : "") ||
	    (s->initrd && !cJSON_AddStringToObject(o, "initrd", s->initrd)) ||
	    (s->cmdline && !cJSON_AddStringToObject(o, "cmdline", s->cmdline)))
		goto fail;
	if (s->n_disks) {
		cJSON *arr = cJSON_AddArrayToObject(o, "disks");

		if (!arr)
			goto fail;
		for (i = 0; i < s->n_disks; i++) {
			cJSON *d = cJSON_CreateObject();

			if (!d || !cJSON_AddItemToArray(arr, d) ||
			    !cJSON_AddStringToObject(d, "path", s->disks[i].path) ||
			    !cJSON_AddBoolToObject(d, "readonly", s->disks[i].readonly))
				goto fail;
		}
	}
	if (s->balloon) {
		cJSON *b = cJSON_AddObjectToObject(o, "balloon");

		if (!b || !cJSON_AddBoolToObject(b, "free_page_hint", s->balloon_free_page_hint))
			goto fail;
	}
	if (!cJSON_AddStringToObject(o, "accel", vmops_accel_name(s->accel)))
		goto fail;
	return o;
fail:
	cJSON_Delete(o);
	return NULL;
}

char *vmops_spec_to_string(const struct vmops_spec *s)
{
	cJSON *o = vmops_spec_to_json(s);
	char *text;

	if (!o)
		return NULL;
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return text;
}

void vmops_spec_free(struct vmops_spec *s)
{
	size_t i;

	if (!s)
		return;
	free(s->hypervisor);
	free(s->kernel);
	free(s->initrd);
	free(s->cmdline);
	for (i = 0; i < s->n_disks; i++)
		free(s->disks[i].path);
	free(s->disks);
	free(s);
}

void vmops_spec_freep(struct vmops_spec **s)
{
	vmops_spec_free(*s);
	*s = NULL;
}
