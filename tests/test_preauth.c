/* test_preauth.c — unit tests for preauthorization: identity templates and their escaping,
 * the serial file path, parsing the server's answers (409 bodies, Location, errors,
 * Retry-After) including garbage, backoff bounds, public key comparison, the client's
 * credential checks, and the outbox in a real database (queueing, the sweep, claims,
 * outcomes, counts and the status line), and the worker thread. */
#include "audit.h"
#include "config.h"
#include "outbox.h"
#include "preauth.h"
#include "tap.h"
#include "util.h"

#include <openssl/evp.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/ps-test-preauth.XXXXXX";

/* A fresh P-256 public key as SPKI PEM, wrapped at width columns (64 is OpenSSL's). */
static char *new_pubkey(int width)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	unsigned char *der = NULL;
	int len = i2d_PUBKEY(key, &der);
	char b64[512], *pem = malloc(1024);
	size_t n, i, used;

	EVP_EncodeBlock((unsigned char *)b64, der, len);
	n = strlen(b64);
	used = (size_t)snprintf(pem, 1024, "-----BEGIN PUBLIC KEY-----\n");
	for (i = 0; i < n; i += (size_t)width)
		used += (size_t)snprintf(pem + used, 1024 - used, "%.*s\n", width, b64 + i);
	snprintf(pem + used, 1024 - used, "-----END PUBLIC KEY-----\n");
	OPENSSL_free(der);
	EVP_PKEY_free(key);
	return pem;
}

/* The same key re-wrapped at another width. */
static char *rewrap(const char *pem, int width)
{
	char b64[512] = "", *out = malloc(1024);
	const char *p = strchr(pem, '\n') + 1;
	size_t n = 0, i, used;

	for (; *p != '-'; p++)
		if (*p != '\n')
			b64[n++] = *p;
	b64[n] = '\0';
	used = (size_t)snprintf(out, 1024, "-----BEGIN PUBLIC KEY-----\n");
	for (i = 0; i < n; i += (size_t)width)
		used += (size_t)snprintf(out + used, 1024 - used, "%.*s\n", width, b64 + i);
	snprintf(out + used, 1024 - used, "-----END PUBLIC KEY-----");
	return out;
}

static void test_identity(void)
{
	struct ps_err err = {""};
	char *out = NULL;

	ok(ps_preauth_identity(PS_PREAUTH_DEFAULT_IDENTITY, "SN-1", "sn-1.example.com", &out,
			       &err) == 0,
	   "the default identity template");
	is_str(out, "{\"serialnumber\":\"SN-1\"}", "... gives {\"serialnumber\": serial}");
	free(out);
	ok(ps_preauth_identity("{\"sn\": \"{serial}\", \"cn\": \"{cn}\", \"sku\": \"X-1\"}",
			       "S\"q\\1", "c/n", &out, &err) == 0,
	   "{serial} and {cn} with a quote and a backslash in the serial");
	is_str(out, "{\"cn\":\"c/n\",\"sku\":\"X-1\",\"sn\":\"S\\\"q\\\\1\"}",
	       "... escaped as JSON string content, keys sorted, compact");
	free(out);
	ok(ps_preauth_identity("{\"sn\": \"{serial}\"}", "x\", \"admin\": \"1", "", &out, &err) ==
	       0,
	   "a serial that tries to close the string and add a key");
	is_str(out, "{\"sn\":\"x\\\", \\\"admin\\\": \\\"1\"}", "... stays one string value");
	free(out);
	ok(ps_preauth_identity("{\"sn\": \"fixed\"}", "S", "C", &out, &err) == PS_EINVAL,
	   "no placeholder: every device would be the same: refused");
	contains(err.msg, "neither {serial} nor {cn}", "... saying so");
	ok(ps_preauth_identity("{\"sn\": {serial}}", "S1", "C", &out, &err) == PS_EINVAL,
	   "a placeholder outside a string: not JSON once filled in");
	ok(ps_preauth_identity("{\"sn\": \"{serial}\", \"n\": 1}", "S", "C", &out, &err) ==
	       PS_EINVAL,
	   "a number value is refused (identity values are strings)");
	ok(ps_preauth_identity("[\"{serial}\"]", "S", "C", &out, &err) == PS_EINVAL,
	   "an array is refused");
	ok(ps_preauth_identity("{\"a=b\": \"{serial}\"}", "S", "C", &out, &err) == PS_EINVAL,
	   "a key with '=' is refused (key=value lines)");
	ok(ps_preauth_identity("{\"sn\": \"{serial}\", \"sn\": \"x\"}", "S", "C", &out, &err) ==
	       PS_EINVAL,
	   "duplicate keys are refused");
	ok(ps_preauth_identity("{\"sn\": \"{serial}\\n\"}", "S", "C", &out, &err) == PS_EINVAL,
	   "a value with a line break is refused");
	ok(ps_preauth_identity("{\"sn\": \"{serial}\"", "S", "C", &out, &err) == PS_EINVAL,
	   "truncated JSON is refused");
	ok(ps_preauth_identity("{\"sn\": \"{serial}{cn}{other}\"}", "S", "C", &out, &err) == 0,
	   "unknown braces stay text");
	is_str(out, "{\"sn\":\"SC{other}\"}", "... as they are");
	free(out);
}

static void test_serial_file(void)
{
	struct ps_err err = {""};

	ok(ps_preauth_check_serial_file("", &err) == 0, "serial_file empty: none");
	ok(ps_preauth_check_serial_file("/mender/serial", &err) == 0, "/mender/serial");
	ok(ps_preauth_check_serial_file("/identity/serial.txt", &err) == 0,
	   "/identity/serial.txt (a new directory)");
	ok(ps_preauth_check_serial_file("mender/serial", &err) < 0, "a relative path is refused");
	ok(ps_preauth_check_serial_file("/mender/../etc/x", &err) < 0, "'..' is refused");
	ok(ps_preauth_check_serial_file("/mender//serial", &err) < 0, "an empty component");
	ok(ps_preauth_check_serial_file("/mender/", &err) < 0, "a directory");
	ok(ps_preauth_check_serial_file("/mender/mender.conf", &err) < 0, "mender.conf is refused");
	ok(ps_preauth_check_serial_file("/mender/mender-cert-private.pem", &err) < 0,
	   "the device key is refused");
}

static void test_conflict(const char *ours, const char *other)
{
	struct ps_preauth_conflict c;
	struct ps_err err = {""};
	char *ours76 = rewrap(ours, 76);
	json_t *body;
	char *text;
	static const char *const garbage[] = {
	    "",
	    "{",
	    "null",
	    "[]",
	    "\"x\"",
	    "{\"id\": 5}",
	    "{\"id\": \"\"}",
	    "{\"id\": \"../../x\"}",
	    "{\"id\": \"a/b\"}",
	    "{\"id\": \"ok\", \"auth_sets\": 3}",
	    "{\"id\": \"ok\", \"auth_sets\": [7]}",
	    "{\"id\": \"ok\", \"auth_sets\": [{\"pubkey\": \"x\"}]}",
	    "{\"id\": \"ok\", \"auth_sets\": [{\"id\": \"a b\"}]}",
	};
	size_t i;

	body = json_pack("{s:s, s:s, s:{s:s}, s:[{s:s, s:s, s:s}, {s:s, s:s, s:s}]}", "id", "dev-1",
			 "status", "accepted", "identity_data", "serialnumber", "SN-1", "auth_sets",
			 "id", "aset-1", "pubkey", other, "status", "rejected", "id", "aset-2",
			 "pubkey", ours76, "status", "accepted");
	text = json_dumps(body, 0);
	ok(ps_preauth_parse_conflict(text, strlen(text), ours, &c, &err) == 0,
	   "a 409 body: the device with two auth sets");
	is_str(c.device_id, "dev-1", "... its id");
	ok(c.same_key, "... our key (wrapped at 76 columns there) accepted: same key");
	is_str(c.same_key_status, "accepted", "... in status accepted");
	is_int(c.n_auth_sets, 2, "... two auth sets");
	is_int(c.n_others, 1, "... one of them another key");
	is_str(c.other_ids[0], "aset-1", "... which is aset-1");
	free(text);
	json_decref(body);

	body = json_pack("{s:s, s:s, s:b, s:[{s:s, s:s, s:s}]}", "id", "dev-2", "status", "pending",
			 "decommissioning", 1, "auth_sets", "id", "aset-3", "pubkey", ours,
			 "status", "pending");
	text = json_dumps(body, 0);
	ok(ps_preauth_parse_conflict(text, strlen(text), ours, &c, &err) == 0,
	   "our key, but pending");
	ok(!c.same_key, "... is not success");
	is_str(c.same_key_status, "pending", "... its status is kept for the message");
	ok(c.decommissioning, "... decommissioning is read");
	is_int(c.n_others, 1, "... and it counts as an auth set to replace");
	free(text);
	json_decref(body);

	ok(ps_preauth_parse_conflict("{\"id\":\"d\",\"auth_sets\":null}", 27, NULL, &c, &err) == 0,
	   "auth_sets null, no key to compare");
	for (i = 0; i < PS_ARRAY_SIZE(garbage); i++)
		ok(ps_preauth_parse_conflict(garbage[i], strlen(garbage[i]), ours, &c, &err) ==
		       PS_EINVAL,
		   "malformed 409 body %zu refused", i);
	ok(ps_preauth_parse_conflict(NULL, 0, ours, &c, &err) == PS_EINVAL, "no body refused");
	ok(strstr(err.msg, "{") == NULL, "... without echoing the body");
	{
		/* Deterministic noise: whatever comes, no crash, and either parsed or refused. */
		char buf[256];
		unsigned seed = 7;
		int n, bad = 0;

		for (n = 0; n < 2000; n++) {
			size_t len = (size_t)(rand_r(&seed) % (int)sizeof(buf));
			int r;

			for (i = 0; i < len; i++)
				buf[i] =
				    "{}[]\":,idauth_sets pubkey status 0\\"[rand_r(&seed) % 36];
			r = ps_preauth_parse_conflict(buf, len, ours, &c, NULL);
			bad += r != 0 && r != PS_EINVAL;
		}
		is_int(bad, 0, "2000 noisy bodies: each parsed or refused");
	}
	free(ours76);
}

static void test_answers(void)
{
	struct ps_err err = {""};
	char id[PS_PREAUTH_ID_MAX], msg[128];
	long ms;
	int i;

	ok(ps_preauth_parse_location("devices/0e1f-77", id, sizeof(id), &err) == 0 &&
	       strcmp(id, "0e1f-77") == 0,
	   "Location devices/ID (what deviceauth sends)");
	ok(ps_preauth_parse_location("/api/management/v2/devauth/devices/abc ", id, sizeof(id),
				     &err) == 0 &&
	       strcmp(id, "abc") == 0,
	   "Location as a path");
	ok(ps_preauth_parse_location("https://h.example/api/devices/x_1?a=b#f", id, sizeof(id),
				     &err) == 0 &&
	       strcmp(id, "x_1") == 0,
	   "Location as a URL with a query");
	ok(ps_preauth_parse_location("", id, sizeof(id), &err) < 0, "an empty Location");
	ok(ps_preauth_parse_location(NULL, id, sizeof(id), &err) < 0, "no Location");
	ok(ps_preauth_parse_location("devices/", id, sizeof(id), &err) < 0, "no id in Location");
	ok(ps_preauth_parse_location("devices/a%2Fb", id, sizeof(id), &err) < 0,
	   "an id that is not [A-Za-z0-9._-]");
	ok(ps_preauth_parse_location("devices/..", id, sizeof(id), &err) < 0, "'..' as an id");

	ps_preauth_error_message("{\"error\": \"bad\\nkey\", \"request_id\": \"r\"}",
				 strlen("{\"error\": \"bad\\nkey\", \"request_id\": \"r\"}"), msg,
				 sizeof(msg));
	is_str(msg, "bad?key", "an Error body: its message, control characters replaced");
	ps_preauth_error_message("<html>\x1b[31m gateway\r\nmore", 25, msg, sizeof(msg));
	is_str(msg, "<html>?[31m gateway", "a text body: its first line, cleaned");
	ps_preauth_error_message("{\"other\": 1}", 12, msg, sizeof(msg));
	is_str(msg, "", "JSON without error: nothing");
	ps_preauth_error_message(NULL, 0, msg, sizeof(msg));
	is_str(msg, "", "no body: nothing");
	/* Found by fuzz_mgmt_api: no room returned before freeing the parsed body (a leak that
	 * valgrind.sh and the sanitizer build see). */
	msg[0] = 'X';
	ps_preauth_error_message("{\"error\": \"x\"}", 14, msg, 0);
	ok(msg[0] == 'X', "no room for the message: nothing written");

	{
		static const char *const bad[] = {"",	  " \r\n",    "\"\"",	   "a b",
						  "a\"b", "\"a\\b\"", "tok\x01en", "t\xc3\xa9"};
		char *tok = NULL;

		ok(ps_preauth_parse_token("eyJ.a-b_c.d\r\n", 13, &tok, &err) == 0 && tok &&
		       strcmp(tok, "eyJ.a-b_c.d") == 0,
		   "a raw JWT, trailing newline dropped");
		ps_free_secret_str(tok);
		ok(ps_preauth_parse_token("\"eyJ.x.y\"\n", 10, &tok, &err) == 0 && tok &&
		       strcmp(tok, "eyJ.x.y") == 0,
		   "a JWT as a JSON string");
		ps_free_secret_str(tok);
		ok(ps_preauth_parse_token("ab\0cd", 5, &tok, &err) < 0 && tok == NULL,
		   "a token with a NUL inside is refused");
		for (i = 0; i < (int)(sizeof(bad) / sizeof(bad[0])); i++)
			if (ps_preauth_parse_token(bad[i], strlen(bad[i]), &tok, &err) == 0 ||
			    tok != NULL || strstr(err.msg, bad[i][0] ? bad[i] : "\x01") != NULL)
				break;
		is_int(i, (int)(sizeof(bad) / sizeof(bad[0])),
		       "blank, quoted, spaced, escaped and control tokens are refused, unechoed");
	}

	is_int(ps_preauth_retry_after_ms("5", 0), 5000, "Retry-After: 5");
	is_int(ps_preauth_retry_after_ms(" 0 ", 0), 0, "Retry-After: 0");
	is_int(ps_preauth_retry_after_ms("99999999999999999999", 0), 3600000,
	       "a huge Retry-After is capped at an hour");
	is_int(ps_preauth_retry_after_ms("-3", 0), -1, "a negative Retry-After is ignored");
	is_int(ps_preauth_retry_after_ms("soon", 0), -1, "garbage is ignored");
	is_int(ps_preauth_retry_after_ms("", 0), -1, "empty is ignored");
	is_int(ps_preauth_retry_after_ms(NULL, 0), -1, "absent");
	ms = ps_preauth_retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470);
	is_int(ms, 10000, "an HTTP date 10 s ahead");
	is_int(ps_preauth_retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490), 0,
	       "an HTTP date in the past: now");

	for (i = 0; i < 50; i++) {
		long b1 = ps_preauth_backoff_ms(1, 100, 400, (uint32_t)rand());
		long b3 = ps_preauth_backoff_ms(3, 100, 400, (uint32_t)rand());
		long b9 = ps_preauth_backoff_ms(9, 100, 400, (uint32_t)rand());

		if (b1 < 50 || b1 > 100 || b3 < 200 || b3 > 400 || b9 < 200 || b9 > 400)
			break;
	}
	is_int(i, 50, "backoff: attempt 1 in [50,100], 3 in [200,400], capped at 400 (jitter)");
	ms = ps_preauth_backoff_ms(100000, 5000, 600000, 0xffffffffu);
	ok(ms >= 300000 && ms <= 600000, "backoff after many attempts stays within the cap (%ld)",
	   ms);
	ok(ps_preauth_backoff_ms(0, 0, 0, 0) >= 0, "backoff with nonsense arguments");
	/* Found by fuzz_mgmt_api: a jitter span of exactly 2^32 ms was a division by zero. */
	is_int(ps_preauth_backoff_ms(1, 8589934590L, 0, 7), 4294967295L + 7,
	       "backoff of 2^33-2 ms: a jitter span of 2^32 is no division by zero");
	ok(ps_preauth_backoff_ms(LONG_MIN, 100, 400, 1) == 51, "backoff with attempts LONG_MIN");
}

static void test_pubkeys(const char *a, const char *b)
{
	char *a80 = rewrap(a, 80);

	ok(ps_preauth_same_pubkey(a, a80), "the same key wrapped differently is the same key");
	ok(!ps_preauth_same_pubkey(a, b), "two keys differ");
	ok(!ps_preauth_same_pubkey(a, "garbage"), "a key and garbage differ");
	ok(!ps_preauth_same_pubkey(a, NULL), "a key and nothing differ");
	ok(!ps_preauth_same_pubkey("", ""), "two empty strings are not a key");
	free(a80);
}

static void test_client(void)
{
	struct ps_preauth_client *client = NULL;
	struct ps_preauth_outcome o;
	struct ps_config cfg;
	struct ps_err err = {""};
	char path[600], text[1024];
	int fd;

	snprintf(path, sizeof(path), "%s/token", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ok(fd >= 0 && write(fd, "tok-123\n", 8) == 8, "a token file");
	close(fd);
	chmod(path, 0644);
	snprintf(text, sizeof(text),
		 "[preauth]\nenabled = true\nserver = https://127.0.0.1:1/\ntoken_file = %s\n",
		 path);
	ok(ps_config_load_string(&cfg, text, "t.conf", &err) == 0, "a [preauth] configuration");
	ok(ps_preauth_client_open(&cfg, NULL, &client, &err) == PS_EPERM,
	   "a token file readable by others is refused");
	contains(err.msg, "chmod 600", "... saying how to fix it");
	ok(strstr(err.msg, "tok-123") == NULL, "... without the token");
	chmod(path, 0600);
	ok(ps_preauth_client_open(&cfg, NULL, &client, &err) == 0, "mode 0600 is fine");
	contains(ps_preauth_client_auth(client), "personal access token (file",
		 "... described as a token file");
	{
		struct ps_preauth_item item = {"SN-1", "SN-1", "{\"serialnumber\":\"SN-1\"}",
					       "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC "
					       "KEY-----\n"};

		setenv(PS_PREAUTH_TIMEOUT_ENV, "2000", 1);
		ps_preauth_send(client, &item, PS_PREAUTH_CONFLICT_FAIL, &o);
		is_int(o.result, PS_PREAUTH_RETRY, "nothing listens: retry");
		ok(o.server_level, "... the whole server is unavailable");
		contains(o.message, "cannot reach https://127.0.0.1:1", "... saying where");
		ok(strstr(o.message, "tok-123") == NULL, "... without the token");
	}
	ps_preauth_client_close(client);
	ps_config_free(&cfg);

	ok(ps_config_load_string(&cfg, "[preauth]\nenabled = true\nserver = https://h/\n", "t.conf",
				 &err) == 0,
	   "[preauth] without credentials");
	unsetenv(PS_PREAUTH_TOKEN_ENV);
	ok(ps_preauth_client_open(&cfg, NULL, &client, &err) == PS_EINVAL,
	   "no credentials: refused");
	setenv(PS_PREAUTH_TOKEN_ENV, "env-token", 1);
	ok(ps_preauth_client_open(&cfg, NULL, &client, &err) == 0,
	   "$" PS_PREAUTH_TOKEN_ENV " is a token");
	ps_preauth_client_close(client);
	setenv(PS_PREAUTH_TOKEN_ENV, "bad token", 1);
	ok(ps_preauth_client_open(&cfg, NULL, &client, &err) == PS_EINVAL,
	   "a token with a space is refused");
	ok(strstr(err.msg, "bad token") == NULL, "... without echoing it");
	unsetenv(PS_PREAUTH_TOKEN_ENV);
	ps_config_free(&cfg);

	ok(ps_config_load_string(&cfg, "[preauth]\nenabled = true\nserver = http://h/\n", "t.conf",
				 &err) < 0,
	   "an http:// server is refused when the configuration loads");
	ok(ps_config_load_string(&cfg, "[preauth]\nenabled = true\nserver = https://u:secret@h/\n",
				 "t.conf", &err) < 0 &&
	       strstr(err.msg, "must not hold credentials") != NULL,
	   "a server URL with credentials in it is refused");
	ok(ps_config_load_string(&cfg,
				 "[preauth]\nenabled = true\nserver = https://h/\ntoken_file = "
				 "/x\nusername = u\n",
				 "t.conf", &err) < 0,
	   "token_file and username together are refused");
	ok(ps_config_load_string(&cfg, "[preauth]\non_conflict = maybe\n", "t.conf", &err) < 0,
	   "on_conflict is fail or replace");
	ok(ps_config_load_string(&cfg, "[preauth]\non_conflict = replace\n", "t.conf", &err) == 0 &&
	       cfg.preauth_on_conflict == PS_PREAUTH_CONFLICT_REPLACE && !cfg.preauth_enabled,
	   "on_conflict = replace; off by default");
	ps_config_free(&cfg);
}

static int64_t issue(struct ps_db *db, const char *device, const char *serial, const char *pem,
		     bool verify)
{
	struct ps_audit_context ctx = {"st", "op", "", "ca"};
	struct ps_issue_record rec = {
	    .device_serial = device,
	    .common_name = device,
	    .pubkey_pem = pem,
	    .pubkey_sha256 = "00",
	    .cert_serial = serial,
	    .cert_pem = "cert",
	    .not_before = 1795000000,
	    .not_after = 2110000000,
	};
	int64_t id = 0;

	ps_db_record_issued(db, &ctx, &rec, &id, NULL);
	if (verify) {
		ps_db_set_state(db, id, PS_STATE_WRITTEN, "", &ctx, NULL);
		ps_db_set_state(db, id, PS_STATE_VERIFIED, "", &ctx, NULL);
	}
	return id;
}

struct seen {
	int n;
	int64_t id[8], cert[8], claimed_by[8], claimed_until[8];
	char state[8][16];
};

static int collect(const struct ps_outbox_row *row, void *user)
{
	struct seen *s = user;

	if (s->n < 8) {
		s->id[s->n] = row->id;
		s->cert[s->n] = row->cert_id;
		s->claimed_by[s->n] = row->claimed_by;
		s->claimed_until[s->n] = row->claimed_until_ms;
		snprintf(s->state[s->n], sizeof(s->state[0]), "%s", row->state);
	}
	s->n++;
	return 0;
}

static void test_outbox(const char *pem)
{
	struct ps_audit_context ctx = {"st", "op", "", "ca"};
	struct ps_outbox_update done = {PS_OUTBOX_DONE, "created", "dev-9", "",
					"https://s",	false,	   0};
	struct ps_preauth_status status;
	struct ps_outbox_counts counts;
	struct ps_config cfg;
	struct ps_err err = {""};
	struct ps_db *db = NULL;
	struct seen s;
	char path[600], line[160];
	int64_t a1, a2, b1, c1, cert = 0;
	bool claimed = false, applied = false;
	long cancelled = 0;

	snprintf(path, sizeof(path), "%s/audit.db", dir);
	ok(ps_db_open(path, &db, &err) == 0, "an audit database with the outbox table");
	ok(ps_config_load_string(&cfg, "[preauth]\nenabled = true\nserver = https://h/\n", "t",
				 &err) == 0,
	   "a configuration");
	a1 = issue(db, "A", "01", pem, false);
	ok(ps_preauth_enqueue(db, &cfg, a1, "A", "A", &err) == 0,
	   "queue a certificate right after it is recorded (issued)");
	ok(ps_preauth_enqueue(db, &cfg, a1, "A", "A", &err) == 0, "queueing it twice is fine");
	ok(ps_outbox_counts(db, 0, &counts, &err) == 0 && counts.held == 1 && counts.queued == 0,
	   "... one row, held until the certificate is verified");
	memset(&s, 0, sizeof(s));
	ps_outbox_each_due(db, ps_preauth_now_ms(), 0, collect, &s, &err);
	is_int(s.n, 0, "... and not due");
	ps_db_set_state(db, a1, PS_STATE_WRITTEN, "", &ctx, NULL);
	ps_db_set_state(db, a1, PS_STATE_VERIFIED, "", &ctx, NULL);
	memset(&s, 0, sizeof(s));
	ps_outbox_each_due(db, ps_preauth_now_ms(), 0, collect, &s, &err);
	ok(s.n == 1 && s.cert[0] == a1, "verified: due");
	ok(ps_outbox_claim(db, s.id[0], 0, 0, 4242, ps_preauth_now_ms() + 60000, &claimed, &err) ==
		   0 &&
	       claimed,
	   "claim it");
	ok(ps_outbox_claim(db, s.id[0], 0, 0, 4343, ps_preauth_now_ms() + 60000, &claimed, &err) ==
		   0 &&
	       !claimed,
	   "a second claimer with the old view loses");
	ok(ps_outbox_finish(db, s.id[0], 4343, &done, "2026-01-01T00:00:00Z", &applied, &err) ==
		   0 &&
	       !applied,
	   "a non-owner's outcome is not applied");
	ok(ps_outbox_finish(db, s.id[0], 4242, &done, "2026-01-01T00:00:00Z", &applied, &err) ==
		   0 &&
	       applied,
	   "the owner's outcome is");
	ok(ps_outbox_counts(db, 0, &counts, &err) == 0 && counts.done == 1 && counts.queued == 0,
	   "... done");
	ok(ps_preauth_enqueue(db, &cfg, a1, "A", "A", &err) == 0, "queueing a done row again");
	ok(ps_outbox_counts(db, 0, &counts, &err) == 0 && counts.done == 1, "... leaves it done");
	ok(ps_preauth_requeue_serial(db, &cfg, "A", &cert, &err) == 0 && cert == a1,
	   "requeue device A: its newest verified certificate");
	ok(ps_outbox_counts(db, 0, &counts, &err) == 0 && counts.queued == 1 && counts.done == 0,
	   "... pending again");
	ok(ps_preauth_requeue_serial(db, &cfg, "NOPE", &cert, &err) == PS_ENOENT,
	   "requeue a device without a verified certificate: PS_ENOENT");
	ok(ps_preauth_enqueue(db, &cfg, 9999, "X", "X", &err) == PS_ENOENT,
	   "queue a certificate that does not exist: PS_ENOENT");

	/* A newer verified certificate of the device cancels the older pending row. */
	a2 = issue(db, "A", "02", pem, true);
	ok(ps_outbox_sweep(db, "2026-01-01T00:00:00Z", &cancelled, &err) == 0 && cancelled == 1,
	   "a newer verified certificate: the old row is cancelled by the sweep");
	ok(ps_preauth_enqueue(db, &cfg, a2, "A", "A", &err) == 0, "queue the new one");
	b1 = issue(db, "B", "03", pem, true);
	ps_preauth_enqueue(db, &cfg, b1, "B", "B", &err);
	ps_db_set_state(db, b1, PS_STATE_REVOKED, "keyCompromise", &ctx, NULL);
	c1 = issue(db, "C", "04", pem, true);
	ps_preauth_enqueue(db, &cfg, c1, "C", "C", &err);
	ok(ps_outbox_sweep(db, "2026-01-01T00:00:00Z", &cancelled, &err) == 0 && cancelled == 1,
	   "a revoked certificate's row is cancelled");
	ok(ps_outbox_counts(db, 0, &counts, &err) == 0 && counts.queued == 2 &&
	       counts.cancelled == 2,
	   "two queued (A's new, C), two cancelled");

	/* A retry: pending with an error, the status goes offline. */
	memset(&s, 0, sizeof(s));
	ps_outbox_each_due(db, ps_preauth_now_ms(), c1, collect, &s, &err);
	ok(s.n == 1, "only_cert_id picks C's row");
	ps_outbox_claim(db, s.id[0], s.claimed_by[0], s.claimed_until[0], 77,
			ps_preauth_now_ms() + 1000, &claimed, &err);
	{
		struct ps_outbox_update retry = {PS_OUTBOX_PENDING,	     "",	  "",
						 "cannot reach s",	     "https://s", true,
						 ps_preauth_now_ms() + 30000};

		ok(ps_outbox_finish(db, s.id[0], 77, &retry, "2026-01-01T00:00:01Z", &applied,
				    &err) == 0 &&
		       applied,
		   "a failed attempt");
	}
	ok(ps_preauth_status(db, &cfg, &status, &err) == 0 && status.state == PS_PREAUTH_OFFLINE &&
	       status.queued == 2 && status.retrying == 1,
	   "status: offline, 2 queued, 1 retrying");
	is_str(status.last_error, "cannot reach s", "... with the last error");
	ps_preauth_status_line(&status, line, sizeof(line));
	contains(line, "preauth: OFFLINE, 2 queued", "status line: %s", line);
	cfg.preauth_enabled = false;
	ps_preauth_status(db, &cfg, &status, &err);
	ps_preauth_status_line(&status, line, sizeof(line));
	is_str(line, "preauth: off, 2 queued", "status line when off");
	memset(&status, 0, sizeof(status));
	status.state = PS_PREAUTH_ONLINE;
	ps_preauth_status_line(&status, line, sizeof(line));
	is_str(line, "preauth: online", "status line online, nothing queued");
	ps_config_free(&cfg);
	ps_db_close(db);
}

struct worker_seen {
	pthread_mutex_t lock;
	int lines, retries;
	char last[512];
};

static void worker_line(const char *line, void *user)
{
	struct worker_seen *w = user;

	pthread_mutex_lock(&w->lock);
	w->lines++;
	snprintf(w->last, sizeof(w->last), "%s", line);
	pthread_mutex_unlock(&w->lock);
}

static void worker_event(const struct ps_preauth_event *ev, void *user)
{
	struct worker_seen *w = user;

	pthread_mutex_lock(&w->lock);
	w->retries += ev->result == PS_PREAUTH_RETRY;
	pthread_mutex_unlock(&w->lock);
}

/* The worker: it sends what is queued, retries, and stops promptly, even in the middle of a
 * request to a server that never answers. */
static void test_worker(const char *pem)
{
	struct worker_seen seen = {PTHREAD_MUTEX_INITIALIZER, 0, 0, ""};
	struct ps_preauth_worker *w = NULL;
	struct sockaddr_in addr = {.sin_family = AF_INET};
	socklen_t alen = sizeof(addr);
	struct ps_config cfg;
	struct ps_err err = {""};
	struct ps_db *db = NULL;
	char text[1200];
	int64_t id, t0;
	int lfd, i, retries = 0;

	/* A server that accepts connections and never says a word. */
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	ok(lfd >= 0 && bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
	       listen(lfd, 8) == 0 && getsockname(lfd, (struct sockaddr *)&addr, &alen) == 0,
	   "a silent server on loopback");
	snprintf(text, sizeof(text),
		 "[station]\ndatabase = %s/worker.db\n[preauth]\nenabled = true\n"
		 "server = https://127.0.0.1:%d\n",
		 dir, ntohs(addr.sin_port));
	setenv(PS_PREAUTH_TOKEN_ENV, "worker-token", 1);
	setenv(PS_PREAUTH_TIMEOUT_ENV, "400", 1);
	setenv(PS_PREAUTH_BACKOFF_ENV, "50", 1);
	ok(ps_config_load_string(&cfg, text, "w.conf", &err) == 0, "a station configuration");
	ok(ps_db_open(cfg.database, &db, &err) == 0, "its database");
	id = issue(db, "W1", "w1", pem, true);
	ok(ps_preauth_enqueue(db, &cfg, id, "W1", "W1", &err) == 0, "a queued device");
	ok(ps_preauth_worker_start(&cfg, worker_line, worker_event, &seen, &w, &err) == 0,
	   "the worker starts");
	for (i = 0; i < 600 && retries < 2; i++) {
		usleep(50000);
		pthread_mutex_lock(&seen.lock);
		retries = seen.retries;
		pthread_mutex_unlock(&seen.lock);
	}
	ok(retries >= 2, "it tries, times out and tries again after the backoff (%d tries)",
	   retries);
	contains(seen.last, "preauth W1: retry in", "log: %s", seen.last);
	ok(strstr(seen.last, "worker-token") == NULL, "... without the token");
	ps_preauth_worker_wake(w);
	setenv(PS_PREAUTH_TIMEOUT_ENV, "60000", 1);
	ps_preauth_worker_stop(w);
	/* Now a request that would wait a minute: stop must not wait for it. */
	ok(ps_preauth_worker_start(&cfg, NULL, NULL, NULL, &w, &err) == 0, "start it again");
	usleep(300000);
	t0 = ps_preauth_now_ms();
	ps_preauth_worker_stop(w);
	ok(ps_preauth_now_ms() - t0 < 10000,
	   "stop aborts a request of up to 60 s at once (%lld ms)",
	   (long long)(ps_preauth_now_ms() - t0));
	{
		struct ps_outbox_counts counts;

		ok(ps_outbox_counts(db, 0, &counts, &err) == 0 && counts.queued == 1,
		   "the row stays queued");
	}
	cfg.preauth_enabled = false;
	ok(ps_preauth_worker_start(&cfg, NULL, NULL, NULL, &w, &err) == PS_EINVAL,
	   "no worker when preauthorization is off");
	unsetenv(PS_PREAUTH_TOKEN_ENV);
	unsetenv(PS_PREAUTH_TIMEOUT_ENV);
	unsetenv(PS_PREAUTH_BACKOFF_ENV);
	close(lfd);
	ps_db_close(db);
	ps_config_free(&cfg);
}

int main(void)
{
	char *a, *b;
	char cmd[600];

	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	a = new_pubkey(64);
	b = new_pubkey(64);
	test_identity();
	test_serial_file();
	test_conflict(a, b);
	test_answers();
	test_pubkeys(a, b);
	test_client();
	test_outbox(a);
	test_worker(a);
	free(a);
	free(b);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", dir);
	return tap_done();
}
