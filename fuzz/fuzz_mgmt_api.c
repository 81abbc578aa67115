/* fuzz_mgmt_api.c — libFuzzer target for the parsers of the Mender management API's answers
 * (src/preauth.c): the input is an HTTP response body, then after the first NUL byte its
 * header lines. The body goes through the Device parser of a 409 (with and without the key
 * being preauthorized), the error message extractor and the login token parser; the headers'
 * Location and Retry-After values, cut to the client's buffers as its header callback keeps
 * them, through the device id and delay parsers, and the delay into the backoff. Oracles: ids
 * that come out are non-empty, fit, and hold only [A-Za-z0-9._-] (they go into URLs);
 * messages are terminated inside their buffer without control characters; a token is
 * printable ASCII without blanks, quotes or backslashes; delays stay within their caps. */
#define PENDING 0

#include "preauth.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The key a station would preauthorize (P-256); seeds list it in an auth set. */
static const char pubkey[] = "-----BEGIN PUBLIC KEY-----\n"
			     "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfgl/EIpBZAfCI0YYNxFI/Wpe87bs\n"
			     "W9MQy8iTq66xpeZ5Oyld2p+Ff3UFOBWGly+WcRa2DgWsddLAZCW/uUsuiA==\n"
			     "-----END PUBLIC KEY-----\n";

static void check_id(const char *id, size_t cap)
{
	size_t n = strnlen(id, cap);

	if (n == 0 || n == cap ||
	    strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		       "0123456789._-") != n ||
	    strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
		abort();
}

/* Terminated inside cap bytes, and no control characters. */
static void check_text(const char *s, size_t cap)
{
	size_t n = strnlen(s, cap), i;

	if (n == cap)
		abort();
	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			abort();
}

static void body(const char *text, size_t len)
{
	struct ps_preauth_conflict c;
	struct ps_err err = {""};
	char msg[320], tiny[2];
	char *token = NULL;
	int i, rc;

	for (i = 0; i < 2; i++) {
		rc = ps_preauth_parse_conflict(text, len, i ? pubkey : NULL, &c, &err);
		if (rc != 0) {
			if (rc != PS_EINVAL || err.msg[0] == '\0')
				abort();
			continue;
		}
		check_id(c.device_id, sizeof(c.device_id));
		check_text(c.status, sizeof(c.status));
		check_text(c.same_key_status, sizeof(c.same_key_status));
		if (c.n_others < 0 || c.n_others > c.n_auth_sets ||
		    c.n_auth_sets - c.n_others > (c.same_key ? c.n_auth_sets : 0))
			abort(); /* every auth set is ours (and counted in same_key) or another */
		if (i == 0 && c.same_key)
			abort(); /* without a key, nothing is ours */
		for (int k = 0; k < c.n_others && k < PS_PREAUTH_MAX_AUTHSETS; k++)
			check_id(c.other_ids[k], sizeof(c.other_ids[k]));
	}

	ps_preauth_error_message(text, len, msg, sizeof(msg));
	check_text(msg, sizeof(msg));
	ps_preauth_error_message(text, len, tiny, sizeof(tiny));
	check_text(tiny, sizeof(tiny));
	ps_preauth_error_message(text, len, tiny, 0);

	rc = ps_preauth_parse_token(text, len, &token, &err);
	if (rc == 0) {
		size_t n = strlen(token);

		if (n == 0 || n > len)
			abort();
		for (size_t k = 0; k < n; k++)
			if ((unsigned char)token[k] <= 0x20 || (unsigned char)token[k] >= 0x7f ||
			    token[k] == '"' || token[k] == '\\')
				abort();
		if (memmem(text, len, token, n) == NULL)
			abort(); /* the token is a piece of the body */
		ps_free_secret_str(token);
	} else if (token != NULL || memmem(err.msg, sizeof(err.msg), "\"", 1) != NULL) {
		abort(); /* nothing returned, and the message echoes nothing of the body */
	}

	/* Whatever the key text, the comparison is symmetric (OpenSSL 3's PEM decoders take a
	 * millisecond a key: only for bodies that look like one). */
	if (len < 4096 && memmem(text, len, "-----BEGIN", 10) != NULL) {
		char *s = strndup(text, len);

		if (s != NULL &&
		    ps_preauth_same_pubkey(s, pubkey) != ps_preauth_same_pubkey(pubkey, s))
			abort();
		free(s);
	}
}

/* One header line "Name: value": the value as the client's header callback keeps it (blanks
 * around trimmed, cut to its buffer, control characters as '?'), then parsed. */
static void header(const char *line, size_t n)
{
	struct ps_err err = {""};
	char value[512], id[PS_PREAUTH_ID_MAX];
	const char *colon = memchr(line, ':', n), *v, *end = line + n;
	size_t cap, i, j = 0;
	bool location =
	    colon != NULL && (size_t)(colon - line) == 8 && strncasecmp(line, "Location", 8) == 0;
	bool retry = colon != NULL && (size_t)(colon - line) == 11 &&
		     strncasecmp(line, "Retry-After", 11) == 0;
	long ms, delay;

	if (!location && !retry)
		return;
	cap = location ? 512 : 64;
	for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++) {
	}
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
		end--;
	for (i = 0; v + i < end && j + 1 < cap; i++) {
		unsigned char ch = (unsigned char)v[i];

		value[j++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	value[j] = '\0';

	if (location) {
		memset(id, 'X', sizeof(id));
		if (ps_preauth_parse_location(value, id, sizeof(id), &err) == 0)
			check_id(id, sizeof(id));
		else if (err.msg[0] == '\0')
			abort();
		return;
	}
	ms = ps_preauth_retry_after_ms(value, 1700000000);
	if (ms != -1 && (ms < 0 || ms > 3600 * 1000L))
		abort();
	/* The flush waits the longer of the backoff and Retry-After. */
	for (long attempts = 1; attempts < 40; attempts += 13) {
		delay = ps_preauth_backoff_ms(attempts, 5000, 600000, (uint32_t)ms);
		if (delay < 2500 || delay > 600000)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	const char *nul = memchr(data, '\0', size);
	size_t first = nul ? (size_t)(nul - text) : size;
	char *copy = malloc(first + 1);

	if (copy == NULL)
		return 0;
	/* The client's body buffer is terminated at its length (it may hold NULs itself; the
	 * fuzzer's NUL separates the headers here). */
	memcpy(copy, data, first);
	copy[first] = '\0';
	body(copy, first);
	free(copy);

	if (nul != NULL) {
		const char *p = nul + 1, *end = text + size;

		while (p < end) {
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);

			header(p, n);
			p += n;
		}
	}
	/* The backoff itself, on any numbers: a delay in [0, max(base, max, 1)]. */
	if (size >= 12) {
		uint32_t a, b, r;
		long base, max, d;

		memcpy(&a, data + size - 12, 4);
		memcpy(&b, data + size - 8, 4);
		memcpy(&r, data + size - 4, 4);
		base = (long)b * (long)(a >> 16);
		max = (long)(b ^ r) * (long)(r >> 20);
		d = ps_preauth_backoff_ms((long)(int32_t)a, base, max, r);
		if (d < 0 || d > (base > max ? base : max > 1 ? max : 1))
			abort();
	}
	return 0;
}
