/* test_menderconf.c — unit tests for mender.conf handling: merging keeps every key and
 * matches names case-insensitively, the client's effective view, conflict detection. */
#include "menderconf.h"
#include "tap.h"

#include <stdlib.h>

static json_t *parse(const char *text)
{
	json_t *conf = NULL;

	ps_menderconf_parse(text, strlen(text), "test", &conf, NULL);
	return conf;
}

static const char *str(json_t *obj, const char *a, const char *b)
{
	json_t *v = ps_json_get_ci(obj, a, NULL);

	if (b != NULL)
		v = ps_json_get_ci(v, b, NULL);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

int main(void)
{
	const struct ps_mender_settings s = {
	    .cert_path = "/data/mender/mender-cert.pem",
	    .key_path = "/data/mender/mender-cert-private.pem",
	};
	const struct ps_mender_settings with_url = {
	    .cert_path = "/data/mender/mender-cert.pem",
	    .key_path = "/data/mender/mender-cert-private.pem",
	    .server_url = "https://mender.example.com",
	    .tenant_token = "TOKEN",
	    .server_certificate = "/data/mender/server.crt",
	};
	struct ps_err err = {""};
	json_t *conf, *main_conf, *eff;
	char *text = NULL;

	ok(ps_menderconf_parse("{", 1, "p4:/mender/mender.conf", &conf, &err) == PS_EINVAL,
	   "invalid JSON refused");
	contains(err.msg, "p4:/mender/mender.conf is not valid JSON: line 1",
		 "names file and line");
	ok(ps_menderconf_parse("[1]", 3, "x.conf", &conf, &err) == PS_EINVAL, "array refused");
	contains(err.msg, "x.conf is not a JSON object", "says not an object");

	conf = parse("{\"RootfsPartA\": \"/dev/mmcblk0p2\", \"RootfsPartB\": \"/dev/mmcblk0p3\", "
		     "\"httpsclient\": {\"SkipVerify\": false, \"certificate\": \"/old\"}, "
		     "\"InventoryPollIntervalSeconds\": 28800}");
	ok(ps_menderconf_merge(conf, &s, "t", &err) == 0, "merge");
	is_str(str(conf, "RootfsPartA", NULL), "/dev/mmcblk0p2", "RootfsPartA kept");
	is_str(str(conf, "RootfsPartB", NULL), "/dev/mmcblk0p3", "RootfsPartB kept");
	ok(json_integer_value(json_object_get(conf, "InventoryPollIntervalSeconds")) == 28800,
	   "numbers kept");
	ok(json_object_get(conf, "httpsclient") != NULL &&
	       json_object_get(conf, "HttpsClient") == NULL,
	   "existing lower-case section reused, not duplicated");
	ok(json_object_get(json_object_get(conf, "httpsclient"), "certificate") != NULL &&
	       json_object_get(json_object_get(conf, "httpsclient"), "Certificate") == NULL,
	   "existing lower-case key reused");
	is_str(str(conf, "HttpsClient", "Certificate"), "/data/mender/mender-cert.pem",
	       "certificate set");
	is_str(str(conf, "HttpsClient", "Key"), "/data/mender/mender-cert-private.pem", "key set");
	is_str(str(conf, "Security", "AuthPrivateKey"), "/data/mender/mender-cert-private.pem",
	       "auth key is the same key");
	ok(json_is_false(json_object_get(json_object_get(conf, "httpsclient"), "SkipVerify")),
	   "sibling keys kept");
	ok(ps_menderconf_dump(conf, &text, &err) == 0 && text[strlen(text) - 1] == '\n',
	   "dump ends with a newline");
	ok(strstr(text, "RootfsPartA") < strstr(text, "httpsclient"), "key order kept");
	free(text);

	/* The client's view: main over fallback, objects merged key by key. */
	main_conf =
	    parse("{\"ServerURL\": \"https://x\", \"HttpsClient\": {\"SkipVerify\": true}}");
	eff = ps_menderconf_effective(conf, main_conf);
	is_str(str(eff, "HttpsClient", "Key"), "/data/mender/mender-cert-private.pem",
	       "effective keeps the fallback's sub-keys");
	ok(json_is_true(
	       ps_json_get_ci(ps_json_get_ci(eff, "HttpsClient", NULL), "SkipVerify", NULL)),
	   "main's sub-key wins");
	ok(ps_menderconf_check_effective(eff, &s, "p2", &err) == 0, "effective points at files");
	ok(ps_menderconf_check_conflicts(conf, main_conf, "p2:/etc/mender/mender.conf", &s, &err) ==
	       0,
	   "no conflict with unrelated keys");
	json_decref(eff);
	json_decref(main_conf);

	main_conf = parse("{\"httpsclient\": {\"key\": \"/etc/other.pem\"}}");
	ok(ps_menderconf_check_conflicts(conf, main_conf, "p2:/etc/mender/mender.conf", &s, &err) ==
	       PS_ECONFLICT,
	   "main file overriding the key is a conflict");
	contains(err.msg, "p2:/etc/mender/mender.conf sets HttpsClient.Key", "names file and key");
	eff = ps_menderconf_effective(conf, main_conf);
	ok(ps_menderconf_check_effective(eff, &s, "p2", &err) == PS_EINVAL,
	   "effective check catches the override");
	json_decref(eff);
	json_decref(main_conf);

	main_conf = parse("{\"HttpsClient\": {\"Key\": \"/data/mender/mender-cert-private.pem\"}}");
	ok(ps_menderconf_check_conflicts(conf, main_conf, "m", &s, &err) == 0,
	   "the same value in the main file is no conflict");
	json_decref(main_conf);

	main_conf = parse("{\"Servers\": [{\"ServerURL\": \"https://a\"}]}");
	ok(ps_menderconf_check_conflicts(conf, main_conf, "m", &with_url, &err) == PS_ECONFLICT,
	   "ServerURL here and Servers there is refused");
	contains(err.msg, "split", "says split");
	json_decref(main_conf);

	main_conf = parse("{\"ServerURL\": \"https://other\"}");
	ok(ps_menderconf_check_conflicts(conf, main_conf, "m", &with_url, &err) == PS_ECONFLICT,
	   "a different ServerURL in the main file is refused");
	json_decref(main_conf);
	ok(ps_menderconf_merge(conf, &with_url, "t", &err) == 0, "merge server settings");
	is_str(str(conf, "ServerURL", NULL), "https://mender.example.com", "ServerURL set");
	is_str(str(conf, "TenantToken", NULL), "TOKEN", "TenantToken set");
	is_str(str(conf, "ServerCertificate", NULL), "/data/mender/server.crt",
	       "ServerCertificate set");
	json_decref(conf);

	conf = parse("{\"HttpsClient\": \"oops\"}");
	ok(ps_menderconf_merge(conf, &s, "p4:/mender/mender.conf", &err) == PS_EINVAL,
	   "a section that is not an object is refused");
	contains(err.msg, "HttpsClient is not a JSON object", "names the section");
	json_decref(conf);
	return tap_done();
}
