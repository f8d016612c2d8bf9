/* SPDX-License-Identifier: MIT */
/* HTTP over a UNIX socket on libcurl (see http.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "exitcodes.h"
#include "hv/http.h"

#define HTTP_BODY_MAX (4u << 20)   /* an answer larger than this is refused */

struct buf {
	char *p;
	size_t n;
	bool overflow;
};

static size_t on_data(char *data, size_t size, size_t nmemb, void *user)
{
	struct buf *b = user;
	size_t len = size * nmemb;
	char *np;

	if (b->n + len > HTTP_BODY_MAX) {
		b->overflow = true;
		return 0;
	}
	np = realloc(b->p, b->n + len + 1);
	if (!np)
		return 0;
	memcpy(np + b->n, data, len);
	b->p = np;
	b->n += len;
	b->p[b->n] = '\0';
	return len;
}

static void join_strings(const cJSON *arr, char *out, size_t size)
{
	const cJSON *s;
	size_t used = 0;

	out[0] = '\0';
	cJSON_ArrayForEach(s, arr) {
		if (!cJSON_IsString(s) || used + 3 >= size)
			continue;
		used += (size_t)snprintf(out + used, size - used, "%s%s", used ? ": " : "",
					 s->valuestring);
		if (used >= size)
			used = size - 1;
	}
}

void vmops_http_error_text(const char *text, char *out, size_t size)
{
	cJSON *j;
	const char *fm;
	size_t n;

	out[0] = '\0';
	if (!text || !*text)
		return;
	j = cJSON_Parse(text);
	if (cJSON_IsArray(j)) {
		join_strings(j, out, size);
	} else if ((fm = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "fault_message")))) {
		snprintf(out, size, "%s", fm);
	} else {
		snprintf(out, size, "%s", text);
		/* one line: the hypervisor's text ends messages */
		for (n = 0; out[n]; n++)
			if (out[n] == '\n' || out[n] == '\r')
				out[n] = ' ';
	}
	cJSON_Delete(j);
	n = strlen(out);
	while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '.'))
		out[--n] = '\0';
}

void vmops_http_reply_free(struct vmops_http_reply *r)
{
	if (!r)
		return;
	cJSON_Delete(r->body);
	free(r->text);
	r->body = NULL;
	r->text = NULL;
}

static int curl_failed(CURLcode rc, const char *errbuf, const char *sock, const char *what,
		       int timeout_ms, struct vmops_error *err)
{
	const char *m = errbuf[0] ? errbuf : curl_easy_strerror(rc);

	if (rc == CURLE_OPERATION_TIMEDOUT)
		return vmops_err(err, VMOPS_EXIT_TIMEOUT, "%s: no answer within %d ms", what,
				 timeout_ms);
	if (rc == CURLE_COULDNT_CONNECT)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s: cannot connect to %s", what, sock);
	if (rc == CURLE_GOT_NOTHING || rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR ||
	    rc == CURLE_PARTIAL_FILE)
		return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s: connection dropped (%s)", what, m);
	return vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s: %s", what, m);
}

static CURL *setup(const char *sock, const char *method, const char *url, const char *payload,
		   int timeout_ms, struct curl_slist **hdrs, struct buf *b, char *errbuf)
{
	CURL *c = curl_easy_init();

	if (!c)
		return NULL;
	curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, sock);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_ms > 0 ? timeout_ms : 1));
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
	curl_easy_setopt(c, CURLOPT_PROXY, "");     /* never a proxy from the environment */
	*hdrs = curl_slist_append(NULL, "Accept: application/json");
	if (payload) {
		*hdrs = curl_slist_append(*hdrs, "Content-Type: application/json");
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
	}
	/* no "Expect: 100-continue" round trip on small bodies */
	*hdrs = curl_slist_append(*hdrs, "Expect:");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hdrs);
	return c;
}

int vmops_http_request(const char *sock, const char *method, const char *path,
		       const cJSON *body, int timeout_ms, struct vmops_http_reply *reply,
		       const char *what, struct vmops_error *err)
{
	char errbuf[CURL_ERROR_SIZE] = "", url[512], msg[512];
	struct curl_slist *hdrs = NULL;
	struct buf b = { 0 };
	char *payload = NULL;
	long status = 0;
	CURLcode rc;
	CURL *c;
	int r = -1;

	if (reply)
		memset(reply, 0, sizeof(*reply));
	if (body && !(payload = cJSON_PrintUnformatted(body)))
		return vmops_err(err, VMOPS_EXIT_FAILURE, "%s: out of memory", what);
	snprintf(url, sizeof(url), "http://localhost%s", path);
	c = setup(sock, method, url, payload, timeout_ms, &hdrs, &b, errbuf);
	if (!c || !hdrs) {
		vmops_err(err, VMOPS_EXIT_FAILURE, "%s: cannot set up a request", what);
		goto out;
	}
	rc = curl_easy_perform(c);
	if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && b.overflow)) {
		curl_failed(rc, errbuf, sock, what, timeout_ms, err);
		goto out;
	}
	if (b.overflow) {
		vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s: answer larger than %u bytes", what,
			  HTTP_BODY_MAX);
		goto out;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (reply) {
		reply->status = status;
		reply->text = b.p ? b.p : strdup("");
		b.p = NULL;
		reply->body = reply->text && *reply->text ? cJSON_Parse(reply->text) : NULL;
	}
	if (status < 200 || status >= 300) {
		vmops_http_error_text(reply ? reply->text : b.p, msg, sizeof(msg));
		vmops_err(err, VMOPS_EXIT_HYPERVISOR, "%s: HTTP %ld%s%s", what, status,
			  msg[0] ? ": " : "", msg);
		goto out;
	}
	r = (int)status;
out:
	if (c)
		curl_easy_cleanup(c);
	curl_slist_free_all(hdrs);
	free(payload);
	free(b.p);
	return r;
}
