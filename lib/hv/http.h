/* SPDX-License-Identifier: MIT */
/*
 * HTTP over a UNIX socket (libcurl, CURLOPT_UNIX_SOCKET_PATH) for the REST
 * control sockets of Cloud Hypervisor and Firecracker.
 *
 * Every request has a timeout (connect + answer).  A request body is JSON
 * (cJSON); an answer body is parsed as JSON when it is not empty.  A status
 * outside 2xx is an error whose message carries the hypervisor's own words:
 *
 *   Cloud Hypervisor >= v47:  ["Error from API", "The VM could not ...", ...]
 *                             (a JSON array of strings: joined with ": ")
 *   Firecracker:              {"fault_message": "..."}
 *
 * Error codes: VMOPS_EXIT_HYPERVISOR (refused, failed, bad answer, socket
 * missing or connection dropped), VMOPS_EXIT_TIMEOUT (no answer in time).
 * Nothing is printed.
 */
#ifndef VMOPS_HV_HTTP_H
#define VMOPS_HV_HTTP_H

#include <stdbool.h>

#include <cjson/cJSON.h>

#include "error.h"

struct vmops_http_reply {
	long status;      /* HTTP status; 0: no answer (see the error) */
	cJSON *body;      /* parsed JSON body, NULL if empty or not JSON */
	char *text;       /* the raw body, NUL-terminated ("" if none) */
};

/*
 * Send `method` (GET, PUT, PATCH) to `path` (e.g. "/api/v1/vm.info") on the
 * UNIX socket `sock`, with `body` (NULL: none) as JSON.  Returns the status
 * (>= 200 < 300), or -1 with err set: for an HTTP error status too (then
 * reply->status says which).  `reply` may be NULL; else free it with
 * vmops_http_reply_free() whatever the outcome.  `what` names the call in
 * messages ("vm.pause").
 */
int vmops_http_request(const char *sock, const char *method, const char *path,
		       const cJSON *body, int timeout_ms, struct vmops_http_reply *reply,
		       const char *what, struct vmops_error *err);
void vmops_http_reply_free(struct vmops_http_reply *r);

/* The hypervisor's error text in `text` (CH array, FC fault_message, else the
 * text itself), written to out. */
void vmops_http_error_text(const char *text, char *out, size_t size);

#endif
