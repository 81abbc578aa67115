/* menderconf.c — mender.conf parsing, merging and the client's effective view, through
 * jansson (see menderconf.h). */
#include "menderconf.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct setting_path {
	const char *section; /* NULL for a top-level key */
	const char *key;
};

/* The keys the station sets, in the order of struct ps_mender_settings' fields. */
static const struct setting_path station_keys[] = {
    {"HttpsClient", "Certificate"}, {"HttpsClient", "Key"},
    {"Security", "AuthPrivateKey"}, {NULL, "ServerURL"},
    {NULL, "TenantToken"},	    {NULL, "ServerCertificate"},
};

static const char *setting_value(const struct ps_mender_settings *s, size_t i)
{
	const char *values[] = {s->cert_path,  s->key_path,	s->key_path,
				s->server_url, s->tenant_token, s->server_certificate};

	return values[i] && values[i][0] ? values[i] : NULL;
}

json_t *ps_json_get_ci(json_t *obj, const char *key, const char **actual)
{
	const char *k;
	json_t *v;

	if (!json_is_object(obj))
		return NULL;
	v = json_object_get(obj, key);
	if (v != NULL) {
		if (actual)
			*actual = key;
		return v;
	}
	json_object_foreach(obj, k, v)
	{
		if (strcasecmp(k, key) == 0) {
			if (actual)
				*actual = k;
			return v;
		}
	}
	return NULL;
}

int ps_menderconf_parse(const char *text, size_t len, const char *name, json_t **out,
			struct ps_err *err)
{
	json_error_t jerr;
	json_t *conf = json_loadb(text, len, 0, &jerr);

	*out = NULL;
	if (conf == NULL)
		return ps_fail(err, PS_EINVAL, "%s is not valid JSON: line %d column %d: %s", name,
			       jerr.line, jerr.column, jerr.text);
	if (!json_is_object(conf)) {
		json_decref(conf);
		return ps_fail(err, PS_EINVAL, "%s is not a JSON object", name);
	}
	*out = conf;
	return 0;
}

/* Set key (case-insensitively matched) in obj to a new string. */
static int set_string_ci(json_t *obj, const char *key, const char *value)
{
	const char *actual = key;

	ps_json_get_ci(obj, key, &actual);
	return json_object_set_new(obj, actual, json_string(value));
}

int ps_menderconf_merge(json_t *conf, const struct ps_mender_settings *s, const char *name,
			struct ps_err *err)
{
	size_t i;

	for (i = 0; i < sizeof(station_keys) / sizeof(station_keys[0]); i++) {
		const char *value = setting_value(s, i);
		json_t *target = conf;

		if (value == NULL)
			continue;
		if (station_keys[i].section != NULL) {
			const char *actual = station_keys[i].section;

			target = ps_json_get_ci(conf, station_keys[i].section, &actual);
			if (target == NULL || json_is_null(target)) {
				target = json_object();
				if (target == NULL ||
				    json_object_set_new(conf, actual, target) != 0)
					return ps_fail(err, PS_ENOMEM, "out of memory");
			} else if (!json_is_object(target)) {
				return ps_fail(err, PS_EINVAL, "%s: %s is not a JSON object", name,
					       actual);
			}
		}
		if (set_string_ci(target, station_keys[i].key, value) != 0)
			return ps_fail(err, PS_ENOMEM, "out of memory");
	}
	return 0;
}

/* Merge src into dst the way the client's second JSON decode does. */
static int merge_into(json_t *dst, json_t *src)
{
	const char *k;
	json_t *v;

	json_object_foreach(src, k, v)
	{
		const char *actual = k;
		json_t *existing = ps_json_get_ci(dst, k, &actual);

		if (json_is_object(existing) && json_is_object(v)) {
			if (merge_into(existing, v) != 0)
				return -1;
			continue;
		}
		if (existing != NULL && strcmp(actual, k) != 0)
			json_object_del(dst, actual);
		if (json_object_set_new(dst, k, json_deep_copy(v)) != 0)
			return -1;
	}
	return 0;
}

json_t *ps_menderconf_effective(json_t *fallback, json_t *main)
{
	json_t *result = fallback ? json_deep_copy(fallback) : json_object();

	if (result != NULL && main != NULL && merge_into(result, main) != 0) {
		json_decref(result);
		return NULL;
	}
	return result;
}

/* The value of a station key in conf, or NULL. */
static json_t *get_setting(json_t *conf, const struct setting_path *path)
{
	json_t *parent = conf;

	if (path->section != NULL)
		parent = ps_json_get_ci(conf, path->section, NULL);
	return ps_json_get_ci(parent, path->key, NULL);
}

static bool non_empty(json_t *v)
{
	if (v == NULL || json_is_null(v))
		return false;
	if (json_is_string(v))
		return json_string_length(v) > 0;
	if (json_is_array(v))
		return json_array_size(v) > 0;
	return true;
}

int ps_menderconf_check_conflicts(json_t *fallback, json_t *main, const char *main_name,
				  const struct ps_mender_settings *s, struct ps_err *err)
{
	size_t i;

	if (main == NULL)
		return 0;
	for (i = 0; i < sizeof(station_keys) / sizeof(station_keys[0]); i++) {
		const char *value = setting_value(s, i);
		json_t *theirs = get_setting(main, &station_keys[i]);
		char key[64];

		if (value == NULL || theirs == NULL)
			continue;
		if (json_is_string(theirs) && strcmp(json_string_value(theirs), value) == 0)
			continue;
		snprintf(key, sizeof(key), "%s%s%s",
			 station_keys[i].section ? station_keys[i].section : "",
			 station_keys[i].section ? "." : "", station_keys[i].key);
		return ps_fail(err, PS_ECONFLICT,
			       "%s sets %s, which overrides the device's own value (the main file "
			       "wins); remove it from the image or set [mender] conf_target = "
			       "rootfs",
			       main_name, key);
	}
	{
		bool url_fallback = non_empty(ps_json_get_ci(fallback, "ServerURL", NULL)) ||
				    (s->server_url && s->server_url[0]);
		bool servers_fallback = non_empty(ps_json_get_ci(fallback, "Servers", NULL));
		bool url_main = non_empty(ps_json_get_ci(main, "ServerURL", NULL));
		bool servers_main = non_empty(ps_json_get_ci(main, "Servers", NULL));

		if ((url_fallback && servers_main) || (servers_fallback && url_main))
			return ps_fail(err, PS_ECONFLICT,
				       "ServerURL and Servers would be split between %s and the "
				       "data partition's mender.conf, which the client refuses",
				       main_name);
	}
	return 0;
}

int ps_menderconf_check_effective(json_t *effective, const struct ps_mender_settings *s,
				  const char *where, struct ps_err *err)
{
	size_t i;

	for (i = 0; i < sizeof(station_keys) / sizeof(station_keys[0]); i++) {
		const char *value = setting_value(s, i);
		json_t *got = get_setting(effective, &station_keys[i]);

		if (value == NULL)
			continue;
		if (!json_is_string(got) || strcmp(json_string_value(got), value) != 0)
			return ps_fail(
			    err, PS_EINVAL,
			    "%s: the effective configuration has %s%s%s = %s, expected "
			    "%s",
			    where, station_keys[i].section ? station_keys[i].section : "",
			    station_keys[i].section ? "." : "", station_keys[i].key,
			    json_is_string(got) ? json_string_value(got) : "(unset)", value);
	}
	return 0;
}

int ps_menderconf_dump(json_t *conf, char **out, struct ps_err *err)
{
	char *text = json_dumps(conf, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	size_t len;

	*out = NULL;
	if (text == NULL)
		return ps_fail(err, PS_ENOMEM, "serializing mender.conf failed");
	len = strlen(text);
	*out = malloc(len + 2);
	if (*out == NULL) {
		free(text);
		return ps_fail(err, PS_ENOMEM, "out of memory");
	}
	memcpy(*out, text, len);
	(*out)[len] = '\n';
	(*out)[len + 1] = '\0';
	free(text);
	return 0;
}
