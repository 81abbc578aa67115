/* menderconf.h — mender.conf as the Mender client reads it: parse, merge the station's
 * per-device settings into it keeping every other key, and compute the effective
 * configuration (fallback file first, main file over it, case-insensitive keys). */
#ifndef PS_MENDERCONF_H
#define PS_MENDERCONF_H

#include "err.h"

#include <jansson.h>

/* What the station sets; NULL or "" leaves a setting alone. Paths are as the device sees them. */
struct ps_mender_settings {
	const char *cert_path;
	const char *key_path;
	const char *server_url;
	const char *tenant_token;
	const char *server_certificate;
};

/* Parse text as a mender.conf: valid JSON and an object. name is used in messages. */
int ps_menderconf_parse(const char *text, size_t len, const char *name, json_t **out,
			struct ps_err *err);

/* Set the station's keys in conf (HttpsClient.Certificate, HttpsClient.Key,
 * Security.AuthPrivateKey, and ServerURL, TenantToken, ServerCertificate where given),
 * matching existing key names case-insensitively and keeping every other key. */
int ps_menderconf_merge(json_t *conf, const struct ps_mender_settings *s, const char *name,
			struct ps_err *err);

/* The configuration the client ends up with: fallback, then main over it (objects merge key
 * by key, anything else is replaced). Either may be NULL. Returns a new reference. */
json_t *ps_menderconf_effective(json_t *fallback, json_t *main);

/* Refuse when main would override a key the station sets in the fallback (data partition)
 * file, or when ServerURL and Servers end up split across the two files. */
int ps_menderconf_check_conflicts(json_t *fallback, json_t *main, const char *main_name,
				  const struct ps_mender_settings *s, struct ps_err *err);

/* Check that an effective configuration points at the station's files and settings. */
int ps_menderconf_check_effective(json_t *effective, const struct ps_mender_settings *s,
				  const char *where, struct ps_err *err);

/* Serialize as the file content: 2-space indent, key order kept, trailing newline. */
int ps_menderconf_dump(json_t *conf, char **out, struct ps_err *err);

/* Look up a key case-insensitively, as the client does. NULL when absent. */
json_t *ps_json_get_ci(json_t *obj, const char *key, const char **actual);

#endif
