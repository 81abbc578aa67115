/* preauth.c — preauthorization through the Mender management API (see preauth.h): identity
 * templates, parsing the server's answers, the libcurl client with its credentials and
 * conflict policy, the outbox flush with backoff, the status the TUI shows, and the worker
 * thread. Tokens and passwords live only in memory (wiped when freed) and in the one request
 * header that carries them; they never reach a message, a log or the database. */
#include "preauth.h"
#include "outbox.h"
#include "provision.h"
#include "util.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define BODY_MAX	   (1 << 20) /* larger answers are malformed */
#define SECRET_MAX	   16384
#define DECOMMISSION_TRIES 8

/* ---- small helpers ----------------------------------------------------------------------- */

int64_t ps_preauth_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A long from the environment within [min, max], else def. */
static long env_ms(const char *name, long def, long min, long max)
{
	const char *v = getenv(name);
	long n;

	if (v == NULL || *v == '\0' || ps_parse_int(name, v, min, max, &n, NULL) < 0)
		return def;
	return n;
}

static bool cancelled(const atomic_bool *cancel)
{
	return cancel != NULL && atomic_load(cancel);
}

/* Sleep ms, waking early when cancel becomes true. */
static void sleep_ms(long ms, const atomic_bool *cancel)
{
	while (ms > 0 && !cancelled(cancel)) {
		long step = ms < 50 ? ms : 50;
		struct timespec ts = {step / 1000, (step % 1000) * 1000000L};

		nanosleep(&ts, NULL);
		ms -= step;
	}
}

/* Copy s into out, control characters shown as '?', cut to fit. */
static void clean_copy(char *out, size_t len, const char *s, size_t n)
{
	size_t i, j = 0;

	if (len == 0)
		return;
	for (i = 0; i < n && s[i] != '\0' && j + 1 < len; i++) {
		unsigned char ch = (unsigned char)s[i];

		out[j++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	out[j] = '\0';
}

/* Ids the server gives go into URL paths: letters, digits, '.', '_', '-' only. */
static bool safe_id(const char *s)
{
	size_t n = strlen(s), i;

	if (n == 0 || n >= PS_PREAUTH_ID_MAX)
		return false;
	for (i = 0; i < n; i++) {
		char ch = s[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
			return false;
	}
	return strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* ---- identity ------------------------------------------------------------------------------ */

/* Append s to buf as the content of a JSON string. */
static int append_escaped(char **buf, size_t *used, size_t *cap, const char *s)
{
	const unsigned char *p;

	for (p = (const unsigned char *)s; *p != '\0'; p++) {
		char tmp[8];
		size_t n;

		if (*p == '"' || *p == '\\')
			n = (size_t)snprintf(tmp, sizeof(tmp), "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			n = (size_t)snprintf(tmp, sizeof(tmp), "\\u%04x", *p);
		else
			n = (size_t)snprintf(tmp, sizeof(tmp), "%c", *p);
		if (*used + n + 1 > *cap) {
			size_t cap2 = (*cap + n + 1) * 2;
			char *b = realloc(*buf, cap2);

			if (b == NULL)
				return PS_ENOMEM;
			*buf = b;
			*cap = cap2;
		}
		memcpy(*buf + *used, tmp, n);
		*used += n;
		(*buf)[*used] = '\0';
	}
	return 0;
}

static bool has_control(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

int ps_preauth_identity(const char *tmpl, const char *serial, const char *cn, char **out,
			struct ps_err *err)
{
	json_error_t jerr;
	json_t *obj = NULL, *value;
	const char *key, *p;
	char *buf = NULL;
	size_t used = 0, cap = 0;
	int rc = 0;

	*out = NULL;
	if (strstr(tmpl, "{serial}") == NULL && strstr(tmpl, "{cn}") == NULL) {
		rc = ps_fail(err, PS_EINVAL,
			     "the identity template names neither {serial} nor {cn}: every device "
			     "would have the same identity");
		goto out;
	}
	for (p = tmpl; *p != '\0' && rc == 0;) {
		if (strncmp(p, "{serial}", 8) == 0) {
			rc = append_escaped(&buf, &used, &cap, serial);
			p += 8;
		} else if (strncmp(p, "{cn}", 4) == 0) {
			rc = append_escaped(&buf, &used, &cap, cn);
			p += 4;
		} else {
			/* Template text is JSON already: copied as it is. */
			if (used + 2 > cap) {
				char *b = realloc(buf, cap * 2 + 64);

				if (b == NULL) {
					rc = PS_ENOMEM;
					break;
				}
				buf = b;
				cap = cap * 2 + 64;
			}
			buf[used++] = *p++;
			buf[used] = '\0';
		}
	}
	if (rc < 0) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	obj = json_loads(buf ? buf : "", JSON_REJECT_DUPLICATES, &jerr);
	if (obj == NULL) {
		rc = ps_fail(err, PS_EINVAL, "identity template %s is not valid JSON (%s)", tmpl,
			     jerr.text);
		goto out;
	}
	if (!json_is_object(obj) || json_object_size(obj) == 0) {
		rc = ps_fail(err, PS_EINVAL, "identity template %s is not a JSON object with keys",
			     tmpl);
		goto out;
	}
	json_object_foreach(obj, key, value)
	{
		if (*key == '\0' || strchr(key, '=') != NULL || has_control(key)) {
			rc = ps_fail(err, PS_EINVAL,
				     "identity template %s: a key is empty or holds '=' or control "
				     "characters (an identity script prints key=value lines)",
				     tmpl);
			goto out;
		}
		if (!json_is_string(value) || json_string_length(value) == 0 ||
		    has_control(json_string_value(value))) {
			rc = ps_fail(
			    err, PS_EINVAL,
			    "identity template %s: '%s' must be a non-empty one-line string "
			    "(identity values are strings)",
			    tmpl, key);
			goto out;
		}
	}
	*out = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
	if (*out == NULL)
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
out:
	json_decref(obj);
	free(buf);
	return rc;
}

int ps_preauth_check_serial_file(const char *path, struct ps_err *err)
{
	static const char *const reserved[] = {
	    PS_DATA_DIR "/" PS_KEY_NAME,
	    PS_DATA_DIR "/" PS_CERT_NAME,
	    PS_DATA_DIR "/" PS_CONF_NAME,
	    PS_DATA_DIR "/" PS_SERVER_CERT_NAME,
	};
	const char *p;
	size_t i;

	if (*path == '\0')
		return 0;
	if (path[0] != '/' || strlen(path) > 255 || has_control(path))
		return ps_fail(err, PS_EINVAL,
			       "'%s' is not an absolute path inside the data partition (like "
			       "/mender/serial)",
			       path);
	for (p = path; *p != '\0';) {
		const char *next = strchr(p + 1, '/');
		size_t n = next ? (size_t)(next - p - 1) : strlen(p + 1);

		if (n == 0 || (n == 1 && p[1] == '.') || (n == 2 && p[1] == '.' && p[2] == '.'))
			return ps_fail(err, PS_EINVAL, "'%s' has an empty, '.' or '..' component",
				       path);
		p = next ? next : p + 1 + n;
	}
	for (i = 0; i < PS_ARRAY_SIZE(reserved); i++)
		if (strcmp(path, reserved[i]) == 0)
			return ps_fail(err, PS_EINVAL, "'%s' is a file provisioning writes", path);
	return 0;
}

/* ---- parsing answers ------------------------------------------------------------------------ */

bool ps_preauth_same_pubkey(const char *a, const char *b)
{
	unsigned char *da = NULL, *db = NULL;
	EVP_PKEY *ka = NULL, *kb = NULL;
	BIO *bio;
	int la = -1, lb = -1;
	bool same = false;

	if (a == NULL || b == NULL)
		return false;
	bio = BIO_new_mem_buf(a, -1);
	if (bio != NULL)
		ka = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	BIO_free(bio);
	bio = BIO_new_mem_buf(b, -1);
	if (bio != NULL)
		kb = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (ka != NULL && kb != NULL) {
		la = i2d_PUBKEY(ka, &da);
		lb = i2d_PUBKEY(kb, &db);
		same = la > 0 && la == lb && memcmp(da, db, (size_t)la) == 0;
	} else {
		/* Not parseable: the same text, whitespace aside. */
		const char *p = a, *q = b;

		for (;;) {
			while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
				p++;
			while (*q == ' ' || *q == '\n' || *q == '\r' || *q == '\t')
				q++;
			if (*p != *q)
				break;
			if (*p == '\0') {
				same = ka == NULL && kb == NULL && p != a;
				break;
			}
			p++;
			q++;
		}
	}
	OPENSSL_free(da);
	OPENSSL_free(db);
	EVP_PKEY_free(ka);
	EVP_PKEY_free(kb);
	ERR_clear_error();
	return same;
}

static bool status_is(const char *status, const char *want)
{
	return status != NULL && strcmp(status, want) == 0;
}

int ps_preauth_parse_conflict(const char *body, size_t len, const char *pubkey_pem,
			      struct ps_preauth_conflict *out, struct ps_err *err)
{
	json_error_t jerr;
	json_t *root, *id, *sets, *set;
	size_t i;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	root = json_loadb(body ? body : "", body ? len : 0, 0, &jerr);
	if (root == NULL || !json_is_object(root)) {
		rc = ps_fail(err, PS_EINVAL, "the answer is not a JSON object");
		goto out;
	}
	id = json_object_get(root, "id");
	if (!json_is_string(id) || !safe_id(json_string_value(id))) {
		rc = ps_fail(err, PS_EINVAL, "the answer has no usable device id");
		goto out;
	}
	snprintf(out->device_id, sizeof(out->device_id), "%s", json_string_value(id));
	if (json_is_string(json_object_get(root, "status")))
		clean_copy(out->status, sizeof(out->status),
			   json_string_value(json_object_get(root, "status")), SIZE_MAX);
	out->decommissioning = json_is_true(json_object_get(root, "decommissioning"));
	sets = json_object_get(root, "auth_sets");
	if (sets != NULL && !json_is_array(sets) && !json_is_null(sets)) {
		rc = ps_fail(err, PS_EINVAL, "the answer's auth_sets is not an array");
		goto out;
	}
	json_array_foreach(sets, i, set)
	{
		json_t *set_id = json_object_get(set, "id");
		json_t *key = json_object_get(set, "pubkey");
		const char *status = json_string_value(json_object_get(set, "status"));
		bool ours;

		if (!json_is_object(set) || !json_is_string(set_id) ||
		    !safe_id(json_string_value(set_id))) {
			rc = ps_fail(err, PS_EINVAL, "an auth set in the answer has no usable id");
			goto out;
		}
		out->n_auth_sets++;
		ours = json_is_string(key) && pubkey_pem != NULL &&
		       ps_preauth_same_pubkey(json_string_value(key), pubkey_pem);
		if (ours && out->same_key_status[0] == '\0')
			clean_copy(out->same_key_status, sizeof(out->same_key_status),
				   status ? status : "", SIZE_MAX);
		if (ours && (status_is(status, "preauthorized") || status_is(status, "accepted"))) {
			out->same_key = true;
			clean_copy(out->same_key_status, sizeof(out->same_key_status), status,
				   SIZE_MAX);
			continue;
		}
		if (out->n_others < PS_PREAUTH_MAX_AUTHSETS)
			snprintf(out->other_ids[out->n_others], sizeof(out->other_ids[0]), "%s",
				 json_string_value(set_id));
		out->n_others++;
	}
out:
	json_decref(root);
	return rc;
}

int ps_preauth_parse_location(const char *location, char *id, size_t id_len, struct ps_err *err)
{
	char buf[512];
	char *end, *slash;

	if (location == NULL || *location == '\0')
		return ps_fail(err, PS_EINVAL, "no Location header");
	clean_copy(buf, sizeof(buf), location, SIZE_MAX);
	end = buf + strcspn(buf, "?#");
	*end = '\0';
	while (end > buf && (end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';
	/* "devices/ID", a path or a URL: the id is the last segment. */
	slash = strrchr(buf, '/');
	if (slash == NULL || !safe_id(slash + 1) || strlen(slash + 1) >= id_len)
		return ps_fail(err, PS_EINVAL, "the Location header holds no usable device id");
	snprintf(id, id_len, "%s", slash + 1);
	return 0;
}

void ps_preauth_error_message(const char *body, size_t len, char *out, size_t out_len)
{
	json_t *root;
	const char *msg;

	if (out_len == 0)
		return; /* before anything is allocated */
	out[0] = '\0';
	root = body ? json_loadb(body, len, 0, NULL) : NULL;
	msg = json_string_value(json_object_get(root, "error"));
	if (msg != NULL) {
		clean_copy(out, out_len < 300 ? out_len : 300, msg, SIZE_MAX);
	} else if (body != NULL && root == NULL) {
		size_t n = 0;

		while (n < len && n < 200 && body[n] != '\n' && body[n] != '\r' && body[n] != '\0')
			n++;
		clean_copy(out, out_len, body, n);
	}
	json_decref(root);
}

int ps_preauth_parse_token(const char *body, size_t len, char **token, struct ps_err *err)
{
	size_t i;

	*token = NULL;
	if (body == NULL)
		len = 0;
	while (len > 0 && (body[len - 1] == '\n' || body[len - 1] == '\r' || body[len - 1] == ' '))
		len--;
	if (len >= 2 && body[0] == '"' && body[len - 1] == '"') {
		body++;
		len -= 2;
	}
	if (len == 0 || len > SECRET_MAX)
		return ps_fail(err, PS_EINVAL, "the login answer is not a token");
	for (i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)body[i];

		/* A header's printable ASCII without spaces; a JWT needs no quotes or escapes. */
		if (ch <= 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
			return ps_fail(err, PS_EINVAL, "the login answer is not a token");
	}
	*token = malloc(len + 1);
	if (*token == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	memcpy(*token, body, len);
	(*token)[len] = '\0';
	return 0;
}

long ps_preauth_retry_after_ms(const char *value, time_t now)
{
	long seconds = -1;
	char *end;

	if (value == NULL)
		return -1;
	while (*value == ' ' || *value == '\t')
		value++;
	if (*value == '\0')
		return -1;
	if (*value >= '0' && *value <= '9') {
		unsigned long n;

		errno = 0;
		n = strtoul(value, &end, 10);
		while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
			end++;
		if (*end != '\0')
			return -1;
		seconds = (errno == ERANGE || n > 3600) ? 3600 : (long)n;
	} else {
		time_t at = curl_getdate(value, NULL);

		if (at < 0)
			return -1;
		seconds = at <= now ? 0 : (at - now > 3600 ? 3600 : (long)(at - now));
	}
	return seconds * 1000;
}

long ps_preauth_backoff_ms(long attempts, long base_ms, long max_ms, uint32_t random)
{
	long delay = base_ms > 0 ? base_ms : 1;
	long half;

	if (max_ms < delay)
		max_ms = delay;
	for (; attempts > 1 && delay < max_ms; attempts--)
		delay = delay > max_ms / 2 ? max_ms : delay * 2;
	if (delay > max_ms)
		delay = max_ms;
	half = delay / 2;
	/* In 64 bits: a span of 2^32 must not become a division by zero. */
	return half + (long)((uint64_t)random % (uint64_t)(delay - half + 1));
}

const char *ps_preauth_result_name(enum ps_preauth_result result)
{
	switch (result) {
	case PS_PREAUTH_CREATED:
		return "created";
	case PS_PREAUTH_EXISTING:
		return "existing";
	case PS_PREAUTH_REPLACED:
		return "replaced";
	case PS_PREAUTH_RETRY:
		return "retry";
	case PS_PREAUTH_BLOCKED:
		return "blocked";
	case PS_PREAUTH_FAILED:
		return "failed";
	case PS_PREAUTH_CANCELLED:
		return "cancelled";
	}
	return "?";
}

/* ---- the client ------------------------------------------------------------------------------ */

enum force_support { FORCE_UNKNOWN, FORCE_YES, FORCE_NO };

struct ps_preauth_client {
	CURL *curl;
	char *server;	 /* without a trailing slash */
	char *ca_bundle; /* NULL: the system's */
	char *token;	 /* the personal access token, or the JWT of the last login */
	char *username;
	char *password;
	bool login; /* the token comes from logging in */
	enum force_support force;
	long timeout_ms;
	long backoff_ms, backoff_max_ms;
	const atomic_bool *cancel;
	char auth_desc[320];
	char curl_err[CURL_ERROR_SIZE];
};

/* One HTTP exchange. */
struct http {
	long status;
	char *body;
	size_t len;
	bool too_big;
	char location[512];
	char retry_after[64];
	char content_type[128];
	char curl_msg[CURL_ERROR_SIZE + 64];
	CURLcode code;
};

static void http_free(struct http *r)
{
	if (r->body != NULL)
		OPENSSL_cleanse(r->body, r->len);
	free(r->body);
	memset(r, 0, sizeof(*r));
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *user)
{
	struct http *r = user;
	size_t n = size * nmemb;
	char *b;

	if (r->len + n > BODY_MAX) {
		r->too_big = true;
		return 0;
	}
	b = realloc(r->body, r->len + n + 1);
	if (b == NULL)
		return 0;
	memcpy(b + r->len, data, n);
	r->body = b;
	r->len += n;
	r->body[r->len] = '\0';
	return n;
}

/* Keep a header's value (trimmed) when its name is name. */
static void header_value(const char *line, size_t n, const char *name, char *out, size_t len)
{
	size_t k = strlen(name);
	const char *v, *end = line + n;

	if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':')
		return;
	for (v = line + k + 1; v < end && (*v == ' ' || *v == '\t'); v++) {
	}
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
		end--;
	clean_copy(out, len, v, (size_t)(end - v));
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *user)
{
	struct http *r = user;
	size_t n = size * nmemb;

	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
		/* A new response (after 100 Continue, say): forget the previous headers. */
		r->location[0] = r->retry_after[0] = r->content_type[0] = '\0';
		return n;
	}
	header_value(data, n, "Location", r->location, sizeof(r->location));
	header_value(data, n, "Retry-After", r->retry_after, sizeof(r->retry_after));
	header_value(data, n, "Content-Type", r->content_type, sizeof(r->content_type));
	return n;
}

static int on_progress(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	const struct ps_preauth_client *c = user;

	return cancelled(c->cancel) ? 1 : 0;
}

/* Wipe and free a header list (it may hold a credential). */
static void free_headers(struct curl_slist *list)
{
	struct curl_slist *h;

	for (h = list; h != NULL; h = h->next)
		OPENSSL_cleanse(h->data, strlen(h->data));
	curl_slist_free_all(list);
}

/* Append a header; false when out of memory. */
static bool add_header(struct curl_slist **list, const char *line)
{
	struct curl_slist *l = curl_slist_append(*list, line);

	if (l == NULL)
		return false;
	*list = l;
	return true;
}

/* Send one request. auth: the full Authorization header line, or NULL. Returns 0 when an
 * HTTP answer came (r->status), PS_ENET when none did (r->curl_msg says why), PS_ENOMEM. */
static int http_request(struct ps_preauth_client *c, const char *method, const char *path,
			const char *body, const char *content_type, const char *auth,
			struct http *r)
{
	struct curl_slist *headers = NULL;
	unsigned char rnd[8];
	char url[2048], line[160];
	int rc = 0;

	memset(r, 0, sizeof(*r));
	if (snprintf(url, sizeof(url), "%s%s", c->server, path) >= (int)sizeof(url))
		return PS_ENOMEM;
	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		memset(rnd, 0, sizeof(rnd));
	snprintf(line, sizeof(line),
		 "X-MEN-RequestID: provstation-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1],
		 rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
	if (!add_header(&headers, "Accept: application/json") || !add_header(&headers, "Expect:") ||
	    !add_header(&headers, line) ||
	    (content_type != NULL && !add_header(&headers, content_type)) ||
	    (auth != NULL && !add_header(&headers, auth))) {
		free_headers(headers);
		return PS_ENOMEM;
	}
	curl_easy_reset(c->curl);
	c->curl_err[0] = '\0';
	curl_easy_setopt(c->curl, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "https");
#else
	curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS, (long)CURLPROTO_HTTPS);
#endif
	curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(c->curl, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (c->ca_bundle != NULL)
		curl_easy_setopt(c->curl, CURLOPT_CAINFO, c->ca_bundle);
	curl_easy_setopt(c->curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, c->timeout_ms);
	curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS,
			 c->timeout_ms < 10000 ? c->timeout_ms : 10000L);
	curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "provstation/" PACKAGE_VERSION);
	curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, c->curl_err);
	curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(c->curl, CURLOPT_XFERINFODATA, c);
	curl_easy_setopt(c->curl, CURLOPT_NOPROGRESS, 0L);
	if (strcmp(method, "POST") == 0) {
		curl_easy_setopt(c->curl, CURLOPT_POST, 1L);
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body ? body : "");
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE, (long)(body ? strlen(body) : 0));
	} else if (strcmp(method, "GET") != 0) {
		curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, method);
	}
	r->code = curl_easy_perform(c->curl);
	curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
	free_headers(headers);
	if (r->code == CURLE_OK) {
		curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &r->status);
		return 0;
	}
	if (r->code == CURLE_WRITE_ERROR && r->too_big) {
		/* An answer came, but too large to be one of the API's. */
		curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &r->status);
		snprintf(r->curl_msg, sizeof(r->curl_msg), "the answer is larger than %d bytes",
			 BODY_MAX);
		return PS_ENET;
	}
	snprintf(r->curl_msg, sizeof(r->curl_msg), "%s",
		 c->curl_err[0] ? c->curl_err : curl_easy_strerror(r->code));
	rc = PS_ENET;
	return rc;
}

/* Read a credential file: it must be a regular file only its owner can read. */
static int read_secret_file(const char *what, const char *path, char **out, struct ps_err *err)
{
	struct stat st;
	char *text = NULL;
	size_t len = 0, start = 0;
	int rc;

	*out = NULL;
	if (stat(path, &st) != 0)
		return ps_fail(err, PS_ENOENT, "[preauth] %s %s: %s", what, path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return ps_fail(err, PS_EINVAL, "[preauth] %s %s is not a regular file", what, path);
	if ((st.st_mode & 077) != 0)
		return ps_fail(err, PS_EPERM,
			       "[preauth] %s %s has mode %04o; it must be readable by its owner "
			       "only (chmod 600 %s)",
			       what, path, (unsigned)(st.st_mode & 07777), path);
	rc = ps_read_file(path, SECRET_MAX, &text, &len, err);
	if (rc < 0)
		return ps_prefix(err, rc, "[preauth] %s", what);
	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' ' ||
			   text[len - 1] == '\t'))
		text[--len] = '\0';
	while (start < len && (text[start] == ' ' || text[start] == '\t'))
		start++;
	if (start == len || memchr(text + start, '\n', len - start) != NULL) {
		ps_free_secret(text, len);
		return ps_fail(err, PS_EINVAL, "[preauth] %s %s must hold one line", what, path);
	}
	if (start > 0)
		memmove(text, text + start, len - start + 1);
	*out = text;
	return 0;
}

/* A token goes into a header: printable ASCII without spaces. */
static bool token_ok(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	return true;
}

void ps_preauth_client_close(struct ps_preauth_client *c)
{
	if (c == NULL)
		return;
	if (c->curl != NULL)
		curl_easy_cleanup(c->curl);
	free(c->server);
	free(c->ca_bundle);
	ps_free_secret_str(c->token);
	free(c->username);
	ps_free_secret_str(c->password);
	free(c);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

int ps_preauth_client_open(const struct ps_config *cfg, const atomic_bool *cancel,
			   struct ps_preauth_client **out, struct ps_err *err)
{
	struct ps_preauth_client *c = calloc(1, sizeof(*c));
	const char *env_token = getenv(PS_PREAUTH_TOKEN_ENV);
	const char *env_password = getenv(PS_PREAUTH_PASSWORD_ENV);
	size_t n;
	int rc = 0;

	*out = NULL;
	if (c == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	c->cancel = cancel;
	c->timeout_ms = env_ms(PS_PREAUTH_TIMEOUT_ENV, PS_PREAUTH_TIMEOUT_MS, 100, 600000);
	c->backoff_ms = env_ms(PS_PREAUTH_BACKOFF_ENV, PS_PREAUTH_BACKOFF_MS, 1, 3600000);
	c->backoff_max_ms =
	    env_ms(PS_PREAUTH_BACKOFF_MAX_ENV, PS_PREAUTH_BACKOFF_MAX_MS, 1, 24 * 3600000L);
	if (strncmp(cfg->preauth_server, "https://", 8) != 0 || cfg->preauth_server[8] == '\0') {
		rc = ps_fail(err, PS_EINVAL, "[preauth] server must be an https:// URL (got '%s')",
			     cfg->preauth_server);
		goto out;
	}
	rc = ps_strdup(cfg->preauth_server, &c->server, err);
	if (rc < 0)
		goto out;
	n = strlen(c->server);
	while (n > 8 && c->server[n - 1] == '/')
		c->server[--n] = '\0';
	if (cfg->preauth_ca_bundle[0] != '\0') {
		if (access(cfg->preauth_ca_bundle, R_OK) != 0) {
			rc = ps_fail(err, PS_ENOENT, "[preauth] ca_bundle %s: %s",
				     cfg->preauth_ca_bundle, strerror(errno));
			goto out;
		}
		rc = ps_strdup(cfg->preauth_ca_bundle, &c->ca_bundle, err);
		if (rc < 0)
			goto out;
	}
	if (cfg->preauth_token_file[0] != '\0') {
		rc = read_secret_file("token_file", cfg->preauth_token_file, &c->token, err);
		snprintf(c->auth_desc, sizeof(c->auth_desc), "personal access token (file %s)",
			 cfg->preauth_token_file);
	} else if (cfg->preauth_username[0] == '\0' && env_token != NULL && *env_token != '\0') {
		rc = ps_strdup(env_token, &c->token, err);
		snprintf(c->auth_desc, sizeof(c->auth_desc), "personal access token ($%s)",
			 PS_PREAUTH_TOKEN_ENV);
	} else if (cfg->preauth_username[0] != '\0') {
		c->login = true;
		rc = ps_strdup(cfg->preauth_username, &c->username, err);
		if (rc == 0 && cfg->preauth_password_file[0] != '\0') {
			rc = read_secret_file("password_file", cfg->preauth_password_file,
					      &c->password, err);
			snprintf(c->auth_desc, sizeof(c->auth_desc),
				 "login as %s (password file %s)", c->username,
				 cfg->preauth_password_file);
		} else if (rc == 0 && env_password != NULL && *env_password != '\0') {
			rc = ps_strdup(env_password, &c->password, err);
			snprintf(c->auth_desc, sizeof(c->auth_desc), "login as %s (password $%s)",
				 c->username, PS_PREAUTH_PASSWORD_ENV);
		} else if (rc == 0) {
			rc = ps_fail(err, PS_EINVAL,
				     "[preauth] username %s needs password_file or $%s",
				     c->username, PS_PREAUTH_PASSWORD_ENV);
		}
	} else {
		rc = ps_fail(err, PS_EINVAL,
			     "[preauth] needs credentials: token_file, $%s, or username with "
			     "password_file",
			     PS_PREAUTH_TOKEN_ENV);
	}
	if (rc < 0)
		goto out;
	if (c->token != NULL && !token_ok(c->token)) {
		rc = ps_fail(err, PS_EINVAL,
			     "the access token holds spaces or control characters (%s)",
			     c->auth_desc);
		goto out;
	}
	if (c->username != NULL && (strchr(c->username, ':') != NULL || has_control(c->username))) {
		rc = ps_fail(err, PS_EINVAL, "[preauth] username must not hold ':'");
		goto out;
	}
	pthread_once(&curl_once, curl_init_once);
	c->curl = curl_easy_init();
	if (c->curl == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "cannot initialize libcurl");
		goto out;
	}
	*out = c;
	c = NULL;
out:
	ps_preauth_client_close(c);
	return rc;
}

const char *ps_preauth_client_auth(const struct ps_preauth_client *c)
{
	return c->auth_desc;
}

/* ---- classifying answers ----------------------------------------------------------------------
 */

static void set_outcome(struct ps_preauth_outcome *out, enum ps_preauth_result result, int status,
			bool server_level, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void set_outcome(struct ps_preauth_outcome *out, enum ps_preauth_result result, int status,
			bool server_level, const char *fmt, ...)
{
	va_list ap;

	out->result = result;
	out->http_status = status;
	out->server_level = server_level;
	va_start(ap, fmt);
	vsnprintf(out->message, sizeof(out->message), fmt, ap);
	va_end(ap);
}

/* A request that got no answer. */
static void no_answer(struct ps_preauth_client *c, const char *what, const struct http *r,
		      struct ps_preauth_outcome *out)
{
	if (cancelled(c->cancel) || r->code == CURLE_ABORTED_BY_CALLBACK) {
		set_outcome(out, PS_PREAUTH_CANCELLED, 0, false, "%s: stopped", what);
		return;
	}
	if (r->too_big) {
		set_outcome(out, PS_PREAUTH_RETRY, (int)r->status, false, "%s: %s", what,
			    r->curl_msg);
		return;
	}
	if (r->code == CURLE_PEER_FAILED_VERIFICATION || r->code == CURLE_SSL_CACERT_BADFILE ||
	    r->code == CURLE_SSL_CERTPROBLEM)
		set_outcome(out, PS_PREAUTH_RETRY, 0, true,
			    "%s: TLS verification of %s failed (%s); check [preauth] ca_bundle",
			    what, c->server, r->curl_msg);
	else if (r->code == CURLE_OPERATION_TIMEDOUT)
		set_outcome(out, PS_PREAUTH_RETRY, 0, true, "%s: %s did not answer in time (%s)",
			    what, c->server, r->curl_msg);
	else
		set_outcome(out, PS_PREAUTH_RETRY, 0, true, "%s: cannot reach %s (%s)", what,
			    c->server, r->curl_msg);
}

/* An answer that is not the one hoped for. */
static void unexpected(struct ps_preauth_client *c, const char *what, const struct http *r,
		       struct ps_preauth_outcome *out)
{
	char msg[320];
	int s = (int)r->status;

	ps_preauth_error_message(r->body, r->len, msg, sizeof(msg));
	if (s == 429 || s >= 500 || s == 408) {
		out->retry_after_ms = ps_preauth_retry_after_ms(r->retry_after, time(NULL));
		set_outcome(out, PS_PREAUTH_RETRY, s, true, "%s: HTTP %d%s%s", what, s,
			    msg[0] ? ": " : "", msg);
	} else if (s == 401 || s == 403) {
		set_outcome(out, PS_PREAUTH_BLOCKED, s, true,
			    "%s: HTTP %d%s%s (the server refuses the station's credentials: %s)",
			    what, s, msg[0] ? ": " : "", msg, c->auth_desc);
	} else if (s == 404 || s == 405 || (s >= 300 && s < 400)) {
		set_outcome(out, PS_PREAUTH_BLOCKED, s, true,
			    "%s: HTTP %d%s%s (is [preauth] server %s a Mender server?)", what, s,
			    msg[0] ? ": " : "", msg, c->server);
	} else if (s >= 400 && s < 500) {
		set_outcome(out, PS_PREAUTH_FAILED, s, false, "%s: HTTP %d%s%s", what, s,
			    msg[0] ? ": " : "", msg);
	} else {
		set_outcome(out, PS_PREAUTH_RETRY, s, false, "%s: unexpected HTTP %d", what, s);
	}
}

/* ---- requests -------------------------------------------------------------------------------- */

/* Log in (user and password, HTTP Basic) and keep the JWT. 0, or -1 with out filled. */
static int login(struct ps_preauth_client *c, struct ps_preauth_outcome *out)
{
	struct http r;
	char *pair = NULL, *header = NULL;
	size_t pair_len, enc_len;
	int rc = -1;

	memset(&r, 0, sizeof(r));
	ps_free_secret_str(c->token);
	c->token = NULL;
	pair_len = strlen(c->username) + 1 + strlen(c->password);
	enc_len = 4 * ((pair_len + 2) / 3);
	pair = malloc(pair_len + 1);
	header = malloc(enc_len + 32);
	if (pair == NULL || header == NULL) {
		set_outcome(out, PS_PREAUTH_RETRY, 0, false, "out of memory");
		goto out;
	}
	snprintf(pair, pair_len + 1, "%s:%s", c->username, c->password);
	memcpy(header, "Authorization: Basic ", 21);
	EVP_EncodeBlock((unsigned char *)header + 21, (const unsigned char *)pair, (int)pair_len);
	/* No body (LoginOptions is optional), and no form content type with it. */
	if (http_request(c, "POST", PS_PREAUTH_API_LOGIN, NULL, "Content-Type:", header, &r) < 0) {
		no_answer(c, "login", &r, out);
		goto out;
	}
	if (r.status != 200) {
		unexpected(c, "login", &r, out);
		if (out->result == PS_PREAUTH_BLOCKED)
			snprintf(out->message, sizeof(out->message),
				 "login as %s refused (HTTP %ld); check [preauth] username and its "
				 "password",
				 c->username, r.status);
		goto out;
	}
	rc = ps_preauth_parse_token(r.body, r.len, &c->token, NULL);
	if (rc == PS_ENOMEM)
		set_outcome(out, PS_PREAUTH_RETRY, 0, false, "out of memory");
	else if (rc < 0)
		set_outcome(out, PS_PREAUTH_RETRY, 200, true,
			    "login: the server's answer is not a token");
	if (rc < 0) {
		rc = -1;
		goto out;
	}
	rc = 0;
out:
	http_free(&r);
	if (pair != NULL)
		ps_free_secret(pair, pair_len + 1);
	if (header != NULL)
		ps_free_secret(header, strlen(header) + 1);
	return rc;
}

/* An authenticated request to the management API; a login token is renewed once on 401.
 * 0 with r holding the answer, or -1 with out filled (no answer, login refused). */
static int api_request(struct ps_preauth_client *c, const char *what, const char *method,
		       const char *path, const char *body, struct http *r,
		       struct ps_preauth_outcome *out)
{
	bool retried = false;
	char *auth = NULL;
	size_t auth_len = 0;

	for (;;) {
		int rc;

		if (c->login && c->token == NULL && login(c, out) < 0)
			return -1;
		auth_len = strlen(c->token) + 32;
		auth = malloc(auth_len);
		if (auth == NULL) {
			set_outcome(out, PS_PREAUTH_RETRY, 0, false, "out of memory");
			return -1;
		}
		snprintf(auth, auth_len, "Authorization: Bearer %s", c->token);
		rc = http_request(c, method, path, body,
				  body ? "Content-Type: application/json" : NULL, auth, r);
		ps_free_secret(auth, auth_len);
		if (rc == PS_ENOMEM) {
			set_outcome(out, PS_PREAUTH_RETRY, 0, false, "out of memory");
			return -1;
		}
		if (rc < 0) {
			no_answer(c, what, r, out);
			http_free(r);
			return -1;
		}
		if (r->status != 401 || !c->login || retried)
			return 0;
		/* The login token expired (or was revoked): log in again, once. */
		retried = true;
		http_free(r);
		ps_free_secret_str(c->token);
		c->token = NULL;
	}
}

/* The request body of a preauthorization. */
static char *preauth_body(const struct ps_preauth_item *item, bool force)
{
	json_t *identity = json_loads(item->identity, 0, NULL);
	json_t *req = NULL;
	char *text = NULL;

	if (!json_is_object(identity))
		goto out;
	req = json_pack("{s:O, s:s}", "identity_data", identity, "pubkey", item->pubkey_pem);
	if (req != NULL && force && json_object_set_new(req, "force", json_true()) != 0)
		goto out;
	if (req != NULL)
		text = json_dumps(req, JSON_COMPACT);
out:
	json_decref(identity);
	json_decref(req);
	return text;
}

/* POST one preauthorization. 0 with the answer in r, -1 with out filled. */
static int post_preauth(struct ps_preauth_client *c, const struct ps_preauth_item *item, bool force,
			struct http *r, struct ps_preauth_outcome *out)
{
	char *body = preauth_body(item, force);
	int rc;

	if (body == NULL) {
		set_outcome(out, PS_PREAUTH_FAILED, 0, false,
			    "the queued identity or public key cannot be sent (identity %s)",
			    item->identity);
		return -1;
	}
	rc = api_request(c, "preauthorize", "POST", PS_PREAUTH_API_DEVICES, body, r, out);
	free(body);
	return rc;
}

/* After a forced 201: the server keeps the existing device, but (mender-server 4.0) names a
 * fresh id in Location. Ask the device itself; fall back to Location when it is gone. */
static void forced_device_id(struct ps_preauth_client *c, const struct ps_preauth_item *item,
			     const char *device_id, const char *location,
			     struct ps_preauth_outcome *out)
{
	struct ps_preauth_outcome scratch;
	struct ps_preauth_conflict dev;
	struct http r;
	char path[256];

	snprintf(out->device_id, sizeof(out->device_id), "%s", device_id);
	snprintf(path, sizeof(path), "%s/%s", PS_PREAUTH_API_DEVICES, device_id);
	memset(&scratch, 0, sizeof(scratch));
	if (api_request(c, "checking the device", "GET", path, NULL, &r, &scratch) < 0)
		return;
	if (r.status == 404)
		ps_preauth_parse_location(location, out->device_id, sizeof(out->device_id), NULL);
	else if (r.status == 200 &&
		 ps_preauth_parse_conflict(r.body, r.len, item->pubkey_pem, &dev, NULL) == 0 &&
		 !dev.same_key)
		snprintf(out->message, sizeof(out->message),
			 "the server answered 201 to force, but device %s does not list the key",
			 device_id);
	http_free(&r);
}

/* DELETE path; 204 and 404 (already gone) are fine. 0, or -1 with out filled. */
static int delete_path(struct ps_preauth_client *c, const char *what, const char *path,
		       struct ps_preauth_outcome *out)
{
	struct http r;

	if (api_request(c, what, "DELETE", path, NULL, &r, out) < 0)
		return -1;
	if (r.status != 204 && r.status != 200 && r.status != 202 && r.status != 404) {
		unexpected(c, what, &r, out);
		http_free(&r);
		return -1;
	}
	http_free(&r);
	return 0;
}

/* Replace a conflicting device's key: force, else delete and retry. */
static void replace(struct ps_preauth_client *c, const struct ps_preauth_item *item,
		    struct ps_preauth_conflict *conflict, struct ps_preauth_outcome *out)
{
	struct ps_preauth_conflict now;
	bool decommissioned = false;
	char path[512];
	struct http r;
	int i, k;

	if (c->force != FORCE_NO) {
		if (post_preauth(c, item, true, &r, out) < 0)
			return;
		if (r.status == 201) {
			c->force = FORCE_YES;
			set_outcome(out, PS_PREAUTH_REPLACED, 201, false, "replaced the key of %s",
				    conflict->device_id);
			forced_device_id(c, item, conflict->device_id, r.location, out);
			http_free(&r);
			return;
		}
		if (r.status != 409 && r.status != 400) {
			unexpected(c, "preauthorize (force)", &r, out);
			http_free(&r);
			return;
		}
		/* The server ignores or refuses "force" (before mender-server 4.0). */
		c->force = FORCE_NO;
		http_free(&r);
	}
	for (k = 0; k < DECOMMISSION_TRIES; k++) {
		long delay = c->backoff_ms < 250 ? c->backoff_ms : 250;

		for (i = 0; i < conflict->n_others && i < PS_PREAUTH_MAX_AUTHSETS; i++) {
			snprintf(path, sizeof(path), "%s/%s/auth/%s", PS_PREAUTH_API_DEVICES,
				 conflict->device_id, conflict->other_ids[i]);
			if (delete_path(c, "removing the old auth set", path, out) < 0)
				return;
		}
		if (conflict->n_others == 0 && !conflict->decommissioning && !decommissioned) {
			/* The device stays without auth sets: decommission it (asynchronous). */
			snprintf(path, sizeof(path), "%s/%s", PS_PREAUTH_API_DEVICES,
				 conflict->device_id);
			if (delete_path(c, "decommissioning the old device", path, out) < 0)
				return;
			decommissioned = true;
		}
		if (post_preauth(c, item, false, &r, out) < 0)
			return;
		if (r.status == 201) {
			set_outcome(out, PS_PREAUTH_REPLACED, 201, false, "replaced device %s",
				    conflict->device_id);
			if (ps_preauth_parse_location(r.location, out->device_id,
						      sizeof(out->device_id), NULL) < 0)
				set_outcome(out, PS_PREAUTH_RETRY, 201, false,
					    "the server answered 201 without a usable Location");
			http_free(&r);
			return;
		}
		if (r.status != 409) {
			unexpected(c, "preauthorize", &r, out);
			http_free(&r);
			return;
		}
		if (ps_preauth_parse_conflict(r.body, r.len, item->pubkey_pem, &now, NULL) < 0) {
			set_outcome(out, PS_PREAUTH_RETRY, 409, false,
				    "the server answered 409 with a body that is not a device");
			http_free(&r);
			return;
		}
		http_free(&r);
		if (now.same_key) {
			set_outcome(out, PS_PREAUTH_REPLACED, 409, false, "device %s holds the key",
				    now.device_id);
			snprintf(out->device_id, sizeof(out->device_id), "%s", now.device_id);
			return;
		}
		if (strcmp(now.device_id, conflict->device_id) != 0)
			decommissioned = false; /* another device holds the identity now */
		*conflict = now;
		/* Decommissioning is asynchronous: wait a little, then try again. */
		sleep_ms(delay << (k < 5 ? k : 5), c->cancel);
		if (cancelled(c->cancel)) {
			set_outcome(out, PS_PREAUTH_CANCELLED, 0, false, "stopped");
			return;
		}
	}
	set_outcome(out, PS_PREAUTH_RETRY, 409, false,
		    "device %s is still being removed from the server (decommissioning is "
		    "asynchronous); trying again later",
		    conflict->device_id);
}

/* A 409 to our POST. */
static void conflict_answer(struct ps_preauth_client *c, const struct ps_preauth_item *item,
			    enum ps_preauth_conflict_policy policy, const struct http *r,
			    struct ps_preauth_outcome *out)
{
	struct ps_preauth_conflict conflict;
	struct ps_err perr = {""};

	if (ps_preauth_parse_conflict(r->body, r->len, item->pubkey_pem, &conflict, &perr) < 0) {
		set_outcome(out, PS_PREAUTH_RETRY, 409, false,
			    "the server answered 409 with a body that is not a device (%s)",
			    perr.msg);
		return;
	}
	if (conflict.same_key) {
		set_outcome(out, PS_PREAUTH_EXISTING, 409, false,
			    "device %s already holds this key (%s)", conflict.device_id,
			    conflict.same_key_status);
		snprintf(out->device_id, sizeof(out->device_id), "%s", conflict.device_id);
		return;
	}
	if (conflict.decommissioning) {
		set_outcome(out, PS_PREAUTH_RETRY, 409, false,
			    "device %s with this identity is being decommissioned; trying again "
			    "later",
			    conflict.device_id);
		return;
	}
	if (policy == PS_PREAUTH_CONFLICT_FAIL) {
		if (conflict.same_key_status[0] != '\0')
			set_outcome(out, PS_PREAUTH_FAILED, 409, false,
				    "device %s already exists on the server with this key in "
				    "status %s; accept it there, or replace it (on_conflict = "
				    "replace)",
				    conflict.device_id, conflict.same_key_status);
		else
			set_outcome(out, PS_PREAUTH_FAILED, 409, false,
				    "device %s (%s) already exists on the server with another "
				    "public key; on_conflict = replace (or preauth --serial %s "
				    "--on-conflict replace) replaces it",
				    conflict.device_id, conflict.status[0] ? conflict.status : "?",
				    item->serial);
		snprintf(out->device_id, sizeof(out->device_id), "%s", conflict.device_id);
		return;
	}
	replace(c, item, &conflict, out);
}

void ps_preauth_send(struct ps_preauth_client *c, const struct ps_preauth_item *item,
		     enum ps_preauth_conflict_policy policy, struct ps_preauth_outcome *out)
{
	struct http r;

	memset(out, 0, sizeof(*out));
	out->retry_after_ms = -1;
	if (post_preauth(c, item, false, &r, out) < 0)
		return;
	if (r.status == 201) {
		set_outcome(out, PS_PREAUTH_CREATED, 201, false, "preauthorized");
		if (ps_preauth_parse_location(r.location, out->device_id, sizeof(out->device_id),
					      NULL) < 0)
			/* Created, but unnamed: the next attempt gets a 409 naming it. */
			set_outcome(out, PS_PREAUTH_RETRY, 201, false,
				    "the server answered 201 without a usable Location header");
	} else if (r.status == 409) {
		conflict_answer(c, item, policy, &r, out);
	} else {
		unexpected(c, "preauthorize", &r, out);
	}
	http_free(&r);
}

/* ---- the outbox --------------------------------------------------------------------------------
 */

static void now_text(char out[32])
{
	ps_format_time(ps_now(), out);
}

int ps_preauth_enqueue(struct ps_db *db, const struct ps_config *cfg, int64_t cert_id,
		       const char *serial, const char *common_name, struct ps_err *err)
{
	char *identity = NULL;
	char now[32];
	int rc;

	now_text(now);
	rc = ps_preauth_identity(cfg->preauth_identity, serial, common_name, &identity, err);
	if (rc == 0)
		rc = ps_outbox_add(db, cert_id, identity, false, now, err);
	free(identity);
	if (rc < 0)
		ps_prefix(err, rc, "queueing the preauthorization of %s", serial);
	return rc;
}

int ps_preauth_requeue_serial(struct ps_db *db, const struct ps_config *cfg, const char *serial,
			      int64_t *cert_id, struct ps_err *err)
{
	char cn[PS_CN_MAX + 1];
	char *identity = NULL;
	char now[32];
	int rc;

	now_text(now);
	rc = ps_outbox_newest_verified(db, serial, cert_id, cn, sizeof(cn), err);
	if (rc == 0)
		rc = ps_preauth_identity(cfg->preauth_identity, serial, cn, &identity, err);
	if (rc == 0)
		rc = ps_outbox_add(db, *cert_id, identity, true, now, err);
	free(identity);
	return rc;
}

/* Is the process that claimed a row alive? */
static bool pid_alive(int64_t pid)
{
	if (pid <= 0 || pid > 0x7fffffff)
		return false;
	return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/* A row taken out of the database to be sent. */
struct picked {
	bool found;
	bool busy; /* a due row is being sent by another live process */
	int64_t now_ms, self;
	int64_t id, cert_id, claimed_by, claimed_until_ms;
	long attempts;
	char *serial, *common_name, *identity, *pubkey_pem;
};

static void picked_free(struct picked *p)
{
	free(p->serial);
	free(p->common_name);
	free(p->identity);
	free(p->pubkey_pem);
	p->serial = p->common_name = p->identity = p->pubkey_pem = NULL;
	p->found = false;
}

/* Claimed by a live process (or, in this process, by another thread)? */
static bool claimed_by_other(const struct ps_outbox_row *row, int64_t now_ms)
{
	return row->claimed_by != 0 && row->claimed_until_ms > now_ms &&
	       (row->claimed_by == (int64_t)getpid() || pid_alive(row->claimed_by));
}

static int pick_row(const struct ps_outbox_row *row, void *user)
{
	struct picked *p = user;

	if (claimed_by_other(row, p->now_ms)) {
		p->busy = true;
		return 0;
	}
	p->id = row->id;
	p->cert_id = row->cert_id;
	p->claimed_by = row->claimed_by;
	p->claimed_until_ms = row->claimed_until_ms;
	p->attempts = row->attempts;
	p->serial = strdup(row->device_serial);
	p->common_name = strdup(row->common_name);
	p->identity = strdup(row->identity);
	p->pubkey_pem = strdup(row->pubkey_pem);
	if (!p->serial || !p->common_name || !p->identity || !p->pubkey_pem) {
		picked_free(p);
		return PS_ENOMEM;
	}
	p->found = true;
	return 1;
}

struct in_flight {
	int64_t now_ms;
	long count;
};

static int count_in_flight(const struct ps_outbox_row *row, void *user)
{
	struct in_flight *f = user;

	if (strcmp(row->cert_state, PS_STATE_VERIFIED) == 0 && claimed_by_other(row, f->now_ms))
		f->count++;
	return 0;
}

int ps_preauth_flush(struct ps_db *db, struct ps_preauth_client *c,
		     const struct ps_preauth_flush_opts *opts, struct ps_preauth_flush_result *res,
		     struct ps_err *err)
{
	const int64_t self = (int64_t)getpid();
	const int64_t deadline = ps_preauth_now_ms() + (opts->wait_ms > 0 ? opts->wait_ms : 0);
	/* A claim outlives the longest attempt: a live sender is never overtaken. */
	const int64_t lease = 4 * c->timeout_ms * (DECOMMISSION_TRIES + 4) + 60000;
	struct ps_outbox_counts counts;
	struct picked p = {0};
	int64_t pause_until = 0;
	char now[32];
	int rc = 0;

	memset(res, 0, sizeof(*res));
	now_text(now);
	rc = ps_outbox_sweep(db, now, NULL, err);
	while (rc == 0 && !cancelled(opts->stop)) {
		struct ps_preauth_outcome o;
		struct ps_outbox_update u = {.server = c->server};
		struct ps_preauth_item item;
		struct ps_preauth_event ev;
		int64_t now_ms = ps_preauth_now_ms(), wake;
		bool claimed = false;
		uint32_t rnd = 0;

		picked_free(&p);
		p.now_ms = now_ms;
		p.self = self;
		p.busy = false;
		if (now_ms >= pause_until)
			rc = ps_outbox_each_due(db, now_ms, opts->only_cert_id, pick_row, &p, err);
		if (rc < 0)
			break;
		if (!p.found) {
			rc = ps_outbox_counts(db, opts->only_cert_id, &counts, err);
			if (rc < 0 || counts.queued == 0)
				break;
			wake = counts.next_attempt_ms > pause_until ? counts.next_attempt_ms
								    : pause_until;
			if (p.busy || wake <= now_ms)
				wake = now_ms + 250; /* another process is sending */
			if (wake > deadline)
				break;
			sleep_ms((long)(wake - now_ms), opts->stop);
			continue;
		}
		rc = ps_outbox_claim(db, p.id, p.claimed_by, p.claimed_until_ms, self,
				     now_ms + lease, &claimed, err);
		if (rc < 0 || !claimed)
			continue;

		item = (struct ps_preauth_item){p.serial, p.common_name, p.identity, p.pubkey_pem};
		ps_preauth_send(c, &item, opts->policy, &o);
		now_ms = ps_preauth_now_ms();
		if (RAND_bytes((unsigned char *)&rnd, sizeof(rnd)) != 1)
			rnd = (uint32_t)now_ms;
		switch (o.result) {
		case PS_PREAUTH_CREATED:
		case PS_PREAUTH_EXISTING:
		case PS_PREAUTH_REPLACED:
			u.state = PS_OUTBOX_DONE;
			u.result = ps_preauth_result_name(o.result);
			u.device_id = o.device_id;
			u.error = "";
			res->sent++;
			break;
		case PS_PREAUTH_FAILED:
			u.state = PS_OUTBOX_FAILED;
			u.result = "";
			u.device_id = o.device_id;
			u.error = o.message;
			u.failed_attempt = true;
			res->failed++;
			break;
		case PS_PREAUTH_CANCELLED:
			u.state = PS_OUTBOX_PENDING;
			u.result = "";
			u.device_id = "";
			u.error = "";
			u.next_attempt_ms = 0;
			break;
		case PS_PREAUTH_RETRY:
		case PS_PREAUTH_BLOCKED: {
			long delay = ps_preauth_backoff_ms(p.attempts + 1, c->backoff_ms,
							   c->backoff_max_ms, rnd);

			if (o.retry_after_ms > delay)
				delay = o.retry_after_ms;
			u.state = PS_OUTBOX_PENDING;
			u.result = "";
			u.device_id = "";
			u.error = o.message;
			u.failed_attempt = true;
			u.next_attempt_ms = now_ms + delay;
			res->retried++;
			if (o.server_level)
				pause_until = u.next_attempt_ms;
			break;
		}
		}
		now_text(now);
		rc = ps_outbox_finish(db, p.id, self, &u, now, NULL, err);
		if (rc < 0)
			break;
		if (opts->report != NULL && o.result != PS_PREAUTH_CANCELLED) {
			ev = (struct ps_preauth_event){
			    .cert_id = p.cert_id,
			    .serial = p.serial,
			    .common_name = p.common_name,
			    .result = o.result,
			    .device_id = o.device_id,
			    .message = o.message,
			    .retry_in_ms =
				u.next_attempt_ms ? (long)(u.next_attempt_ms - now_ms) : 0,
			    .attempts = p.attempts + (u.failed_attempt ? 1 : 0),
			};
			opts->report(&ev, opts->user);
		}
		if (o.result == PS_PREAUTH_BLOCKED) {
			rc = ps_fail(
			    err, o.http_status == 401 || o.http_status == 403 ? PS_EPERM : PS_ENET,
			    "%s", o.message);
			break;
		}
	}
	picked_free(&p);
	if (rc == 0 || rc == PS_EPERM || rc == PS_ENET) {
		struct in_flight f = {0, 0};
		struct ps_err cerr;
		int crc = ps_outbox_counts(db, opts->only_cert_id, &counts, &cerr);

		if (crc < 0) {
			if (rc == 0)
				*err = cerr;
			return crc;
		}
		res->remaining = counts.queued;
		res->next_attempt_ms = counts.next_attempt_ms;
		if (res->remaining > 0 && pause_until > res->next_attempt_ms)
			res->next_attempt_ms = pause_until;
		f.now_ms = ps_preauth_now_ms();
		if (res->remaining > 0 && ps_outbox_each(db, PS_OUTBOX_PENDING, opts->only_cert_id,
							 count_in_flight, &f, NULL) == 0)
			res->in_flight = f.count;
	}
	return rc;
}

/* ---- status ------------------------------------------------------------------------------------
 */

const char *ps_preauth_state_name(enum ps_preauth_state state)
{
	switch (state) {
	case PS_PREAUTH_OFF:
		return "off";
	case PS_PREAUTH_ONLINE:
		return "online";
	case PS_PREAUTH_OFFLINE:
		return "offline";
	}
	return "?";
}

int ps_preauth_status(struct ps_db *db, const struct ps_config *cfg, struct ps_preauth_status *out,
		      struct ps_err *err)
{
	struct ps_outbox_counts counts;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = ps_outbox_counts(db, 0, &counts, err);
	if (rc < 0)
		return rc;
	out->queued = counts.queued;
	out->held = counts.held;
	out->retrying = counts.retrying;
	out->failed = counts.failed;
	out->done = counts.done;
	out->next_attempt_ms = counts.next_attempt_ms;
	snprintf(out->last_error, sizeof(out->last_error), "%s", counts.last_error);
	if (!cfg->preauth_enabled)
		out->state = PS_PREAUTH_OFF;
	else
		out->state = counts.retrying > 0 ? PS_PREAUTH_OFFLINE : PS_PREAUTH_ONLINE;
	return 0;
}

void ps_preauth_status_line(const struct ps_preauth_status *s, char *out, size_t len)
{
	int64_t wait = s->next_attempt_ms - ps_preauth_now_ms();
	size_t n;

	n = (size_t)snprintf(out, len, "preauth: %s",
			     s->state == PS_PREAUTH_OFFLINE ? "OFFLINE"
							    : ps_preauth_state_name(s->state));
	if (n < len && s->queued > 0)
		n += (size_t)snprintf(out + n, len - n, ", %ld queued", s->queued);
	if (n < len && s->state == PS_PREAUTH_OFFLINE && s->next_attempt_ms > 0)
		n += (size_t)snprintf(out + n, len - n, " (next try in %lld s)",
				      (long long)(wait > 0 ? (wait + 999) / 1000 : 0));
	if (n < len && s->failed > 0)
		snprintf(out + n, len - n, ", %ld failed", s->failed);
}

/* ---- the worker ---------------------------------------------------------------------------------
 */

struct ps_preauth_worker {
	const struct ps_config *cfg;
	void (*log)(const char *line, void *user);
	void (*on_event)(const struct ps_preauth_event *event, void *user);
	void *user;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool woken;
	atomic_bool stop;
	char last_problem[sizeof(((struct ps_err *)0)->msg)];
};

static void worker_log(struct ps_preauth_worker *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void worker_log(struct ps_preauth_worker *w, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	if (w->log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	w->log(line, w->user);
}

/* Log a problem once, until it changes or goes away. */
static void worker_problem(struct ps_preauth_worker *w, const char *msg)
{
	if (msg == NULL || *msg == '\0') {
		w->last_problem[0] = '\0';
		return;
	}
	if (strcmp(w->last_problem, msg) == 0)
		return;
	snprintf(w->last_problem, sizeof(w->last_problem), "%s", msg);
	worker_log(w, "preauth: %s", msg);
}

static void worker_report(const struct ps_preauth_event *ev, void *user)
{
	struct ps_preauth_worker *w = user;

	switch (ev->result) {
	case PS_PREAUTH_CREATED:
	case PS_PREAUTH_EXISTING:
	case PS_PREAUTH_REPLACED:
		worker_log(w, "preauth %s: %s, device %s", ev->serial,
			   ps_preauth_result_name(ev->result), ev->device_id);
		break;
	case PS_PREAUTH_FAILED:
		worker_log(w, "preauth %s: FAILED: %s", ev->serial, ev->message);
		break;
	case PS_PREAUTH_RETRY:
	case PS_PREAUTH_BLOCKED:
		worker_log(w, "preauth %s: retry in %ld s: %s", ev->serial,
			   (ev->retry_in_ms + 999) / 1000, ev->message);
		break;
	case PS_PREAUTH_CANCELLED:
		break;
	}
	if (w->on_event != NULL)
		w->on_event(ev, w->user);
}

/* Wait until woken, stopped, or ms passed. */
static void worker_wait(struct ps_preauth_worker *w, long ms)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&w->lock);
	while (!w->woken && !atomic_load(&w->stop))
		if (pthread_cond_timedwait(&w->cond, &w->lock, &until) == ETIMEDOUT)
			break;
	w->woken = false;
	pthread_mutex_unlock(&w->lock);
}

static void *worker_main(void *arg)
{
	struct ps_preauth_worker *w = arg;
	struct ps_preauth_client *client = NULL;
	struct ps_db *db = NULL;

	while (!atomic_load(&w->stop)) {
		struct ps_preauth_flush_opts opts = {
		    .policy = w->cfg->preauth_on_conflict,
		    .report = worker_report,
		    .user = w,
		    .stop = &w->stop,
		};
		struct ps_preauth_flush_result res;
		struct ps_err err = {""};
		long wait_ms = 60000;
		int rc = 0;

		if (db == NULL)
			rc = ps_db_open(w->cfg->database, &db, &err);
		if (rc == 0 && client == NULL)
			rc = ps_preauth_client_open(w->cfg, &w->stop, &client, &err);
		if (rc < 0) {
			worker_problem(w, err.msg);
			worker_wait(w, 30000);
			continue;
		}
		rc = ps_preauth_flush(db, client, &opts, &res, &err);
		worker_problem(w, rc < 0 ? err.msg : NULL);
		if (rc == PS_EPERM) {
			/* Credentials refused: read them again next time (a rotated token file). */
			ps_preauth_client_close(client);
			client = NULL;
		}
		if (res.remaining > 0 && res.next_attempt_ms > 0) {
			int64_t until = res.next_attempt_ms - ps_preauth_now_ms();

			wait_ms = until < 100 ? 100 : (until > 60000 ? 60000 : (long)until);
		}
		if (res.in_flight > 0 && wait_ms > 1000)
			wait_ms = 1000;
		worker_wait(w, wait_ms);
	}
	ps_preauth_client_close(client);
	ps_db_close(db);
	return NULL;
}

int ps_preauth_worker_start(const struct ps_config *cfg, void (*log)(const char *line, void *user),
			    void (*on_event)(const struct ps_preauth_event *event, void *user),
			    void *user, struct ps_preauth_worker **out, struct ps_err *err)
{
	struct ps_preauth_worker *w;
	int rc;

	*out = NULL;
	if (!cfg->preauth_enabled)
		return ps_fail(err, PS_EINVAL, "preauthorization is off ([preauth] enabled)");
	w = calloc(1, sizeof(*w));
	if (w == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	w->cfg = cfg;
	w->log = log;
	w->on_event = on_event;
	w->user = user;
	atomic_init(&w->stop, false);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	rc = pthread_create(&w->thread, NULL, worker_main, w);
	if (rc != 0) {
		pthread_cond_destroy(&w->cond);
		pthread_mutex_destroy(&w->lock);
		free(w);
		return ps_fail(err, PS_ENOMEM, "cannot start the preauthorization worker: %s",
			       strerror(rc));
	}
	*out = w;
	return 0;
}

void ps_preauth_worker_wake(struct ps_preauth_worker *w)
{
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->lock);
	w->woken = true;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

void ps_preauth_worker_stop(struct ps_preauth_worker *w)
{
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->lock);
	atomic_store(&w->stop, true);
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
	free(w);
}
