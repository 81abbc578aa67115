/* fuzz_menderconf.c — libFuzzer target for mender.conf handling: arbitrary bytes as the data
 * partition's file and (after the first NUL byte) a root filesystem's file; parse, merge the
 * station's settings, serialize, parse again, compute the client's effective view and the
 * conflict checks. Oracles: a merged configuration always serializes to a mender.conf that
 * parses and whose effective view points at the station's files. */
#include "menderconf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct ps_mender_settings settings = {
    .cert_path = "/data/mender/mender-cert.pem",
    .key_path = "/data/mender/mender-cert-private.pem",
    .server_url = "https://mender.example.com",
    .tenant_token = "TOKEN",
    .server_certificate = "/data/mender/server.crt",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	const char *nul = memchr(data, '\0', size);
	size_t first = nul ? (size_t)(nul - text) : size;
	json_t *fallback = NULL, *main_conf = NULL, *merged = NULL, *reparsed = NULL, *eff;
	struct ps_err err;
	char *dumped = NULL;

	if (ps_menderconf_parse(text, first, "p4:/mender/mender.conf", &fallback, &err) == 0) {
		merged = json_deep_copy(fallback);
		if (merged != NULL &&
		    ps_menderconf_merge(merged, &settings, "p4:/mender/mender.conf", &err) == 0) {
			if (ps_menderconf_dump(merged, &dumped, &err) != 0)
				abort(); /* a merged configuration always serializes */
			if (ps_menderconf_parse(dumped, strlen(dumped), "dumped", &reparsed,
						&err) != 0)
				abort(); /* and what it writes parses */
			if (ps_menderconf_check_effective(reparsed, &settings, "dumped", &err) != 0)
				abort(); /* and points at the station's files */
		}
	}
	if (nul != NULL)
		ps_menderconf_parse(nul + 1, size - first - 1, "p2:/etc/mender/mender.conf",
				    &main_conf, &err);
	eff = ps_menderconf_effective(merged ? merged : fallback, main_conf);
	if (eff != NULL)
		ps_menderconf_check_effective(eff, &settings, "effective", &err);
	json_decref(eff);
	ps_menderconf_check_conflicts(merged ? merged : fallback, main_conf, "p2", &settings, &err);
	ps_json_get_ci(main_conf, "ServerURL", NULL);
	json_decref(fallback);
	json_decref(main_conf);
	json_decref(merged);
	json_decref(reparsed);
	free(dumped);
	return 0;
}
