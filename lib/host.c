/* SPDX-License-Identifier: MIT */
/* This host's identity (see host.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "exitcodes.h"
#include "host.h"
#include "macro.h"

/* strerror, lowercased for messages ("no such file or directory"). */
static const char *errstr(int e, char *buf, size_t len)
{
	snprintf(buf, len, "%s", strerror(e));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

static bool id_char(char c, bool first)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return !first && (c == '.' || c == '_' || c == ':' || c == '-');
}

bool vmops_host_id_valid(const char *s)
{
	size_t n;

	if (!s)
		return false;
	for (n = 0; s[n]; n++)
		if (n >= VMOPS_HOST_ID_MAX - 1 || !id_char(s[n], n == 0))
			return false;
	return n > 0;
}

int vmops_host_id_read(const char *path, char *buf, size_t len, struct vmops_error *err)
{
	char tmp[VMOPS_HOST_ID_MAX + 64], eb[128];
	_cleanup_close_ int fd = -1;
	ssize_t n;
	size_t k;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vmops_err(err, VMOPS_EXIT_WRONG_HOST, "%s: %s", path, errstr(errno, eb, sizeof(eb)));
	do
		n = read(fd, tmp, sizeof(tmp) - 1);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return vmops_err(err, VMOPS_EXIT_WRONG_HOST, "%s: %s", path, errstr(errno, eb, sizeof(eb)));
	tmp[n] = '\0';
	k = strcspn(tmp, "\n");
	while (k > 0 && (tmp[k - 1] == ' ' || tmp[k - 1] == '\t' || tmp[k - 1] == '\r'))
		k--;
	tmp[k] = '\0';
	if (!vmops_host_id_valid(tmp))
		return vmops_err(err, VMOPS_EXIT_WRONG_HOST, "%s: %s", path,
				 k ? "not a valid host identity" : "empty");
	if (k + 1 > len)
		return vmops_err(err, VMOPS_EXIT_WRONG_HOST, "%s: host identity too long", path);
	memcpy(buf, tmp, k + 1);
	return 0;
}

int vmops_host_id(const char *override, char *buf, size_t len, struct vmops_error *err)
{
	static const char *const files[] = { "/etc/machine-id", "/var/lib/dbus/machine-id" };
	struct vmops_error first = { 0 };

	if (override && *override) {
		if (!vmops_host_id_valid(override))
			return vmops_err(err, VMOPS_EXIT_WRONG_HOST,
					 "%s '%.200s': not a valid host identity (1 to 128 of letters, digits, '.', '_', ':', '-')",
					 VMOPS_HOST_ID_ENV, override);
		if (strlen(override) + 1 > len)
			return vmops_err(err, VMOPS_EXIT_WRONG_HOST, "%s: too long", VMOPS_HOST_ID_ENV);
		memcpy(buf, override, strlen(override) + 1);
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		struct vmops_error e = { 0 };

		if (vmops_host_id_read(files[i], buf, len, &e) == 0)
			return 0;
		if (i == 0)
			first = e;
	}
	*err = first;
	return vmops_err_prefix(err, "this host's identity is unknown (set %s)", VMOPS_HOST_ID_ENV);
}
