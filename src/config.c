/* config.c — the station configuration (see config.h). The INI reader is ours: Debian's inih
 * is built with a 200-byte line limit, shorter than a Mender tenant token. */
#include "config.h"
#include "util.h"

#include <ctype.h>
#include <limits.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum setting_kind { SET_STRING, SET_DAYS, SET_KEY_TYPE, SET_CONF_TARGET, SET_PARTITION,
		    SET_PARTITION_LIST, SET_BOOL };

struct setting {
	const char *section;
	const char *key;
	enum setting_kind kind;
	size_t offset;
};

#define S(sec, key, kind, field) {sec, key, kind, offsetof(struct ps_config, field)}
static const struct setting settings[] = {
	S("station", "id", SET_STRING, station_id),
	S("station", "operator", SET_STRING, operator_name),
	S("station", "database", SET_STRING, database),
	S("station", "batch", SET_STRING, batch),
	S("ca", "dir", SET_STRING, ca_dir),
	S("ca", "passphrase_file", SET_STRING, ca_passphrase_file),
	S("device", "key_type", SET_KEY_TYPE, key_type),
	S("device", "common_name", SET_STRING, common_name),
	S("device", "subject", SET_STRING, subject),
	S("device", "days", SET_DAYS, days),
	S("mender", "server_url", SET_STRING, server_url),
	S("mender", "tenant_token", SET_STRING, tenant_token),
	S("mender", "server_certificate", SET_STRING, server_certificate),
	S("mender", "conf_target", SET_CONF_TARGET, conf_target),
	S("mender", "data_partition", SET_PARTITION, data_partition),
	S("mender", "rootfs_partitions", SET_PARTITION_LIST, rootfs_partitions),
	S("audit", "revoke_superseded", SET_BOOL, revoke_superseded),
};
#undef S

int ps_config_set(char **field, const char *value, struct ps_err *err)
{
	char *copy = NULL;
	int rc = ps_strdup(value, &copy, err);

	if (rc < 0)
		return rc;
	free(*field);
	*field = copy;
	return 0;
}

static int set_defaults(struct ps_config *cfg, struct ps_err *err)
{
	char host[256] = "station";
	const char *user = getenv("SUDO_USER");
	struct passwd *pw;
	int rc;

	memset(cfg, 0, sizeof(*cfg));
	if (gethostname(host, sizeof(host) - 1) != 0)
		snprintf(host, sizeof(host), "station");
	if (user == NULL || *user == '\0') {
		pw = getpwuid(getuid());
		user = pw ? pw->pw_name : "unknown";
	}
	cfg->key_type = PS_KEY_P256;
	cfg->days = 3650;
	cfg->conf_target = PS_CONF_TARGET_DATA;
	rc = ps_config_set(&cfg->station_id, host, err);
	if (rc == 0)
		rc = ps_config_set(&cfg->operator_name, user, err);
	if (rc == 0)
		rc = ps_config_set(&cfg->database, "/var/lib/provstation/audit.db", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->batch, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->ca_dir, "/etc/provstation/ca", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->ca_passphrase_file, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->common_name, "{serial}", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->subject, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->server_url, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->tenant_token, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->server_certificate, "", err);
	return rc;
}

void ps_config_free(struct ps_config *cfg)
{
	size_t i;

	if (cfg == NULL)
		return;
	free(cfg->source);
	for (i = 0; i < PS_ARRAY_SIZE(settings); i++)
		if (settings[i].kind == SET_STRING)
			free(*(char **)((char *)cfg + settings[i].offset));
	memset(cfg, 0, sizeof(*cfg));
}

static int parse_partition(const char *v, int *out, struct ps_err *err)
{
	long n;
	int rc = ps_parse_int("partition number", v, 1, 128, &n, err);

	if (rc == 0)
		*out = (int)n;
	return rc;
}

static int apply_setting(struct ps_config *cfg, const struct setting *s, const char *value,
			 struct ps_err *err)
{
	void *field = (char *)cfg + s->offset;
	long n;
	int rc = 0;

	switch (s->kind) {
	case SET_STRING:
		return ps_config_set((char **)field, value, err);
	case SET_DAYS:
		rc = ps_parse_int("days", value, 1, 36500, &n, err);
		if (rc == 0)
			*(long *)field = n;
		return rc;
	case SET_KEY_TYPE:
		return ps_key_type_parse(value, (enum ps_key_type *)field, err);
	case SET_CONF_TARGET:
		if (strcmp(value, "data") == 0)
			*(enum ps_conf_target *)field = PS_CONF_TARGET_DATA;
		else if (strcmp(value, "rootfs") == 0)
			*(enum ps_conf_target *)field = PS_CONF_TARGET_ROOTFS;
		else
			rc = ps_fail(err, PS_EINVAL, "'%s' is not data or rootfs", value);
		return rc;
	case SET_PARTITION:
		if (*value == '\0' || strcmp(value, "auto") == 0) {
			*(int *)field = 0;
			return 0;
		}
		return parse_partition(value, (int *)field, err);
	case SET_PARTITION_LIST: {
		char buf[256];
		char *tok, *save = NULL;

		cfg->n_rootfs_partitions = 0;
		if (*value == '\0' || strcmp(value, "auto") == 0)
			return 0;
		snprintf(buf, sizeof(buf), "%s", value);
		for (tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
			if (cfg->n_rootfs_partitions == PS_MAX_ROOTFS)
				return ps_fail(err, PS_EINVAL, "more than %d partitions",
					       PS_MAX_ROOTFS);
			rc = parse_partition(tok, &cfg->rootfs_partitions[cfg->n_rootfs_partitions],
					     err);
			if (rc < 0)
				return rc;
			cfg->n_rootfs_partitions++;
		}
		return 0;
	}
	case SET_BOOL:
		if (strcmp(value, "true") == 0 || strcmp(value, "yes") == 0 ||
		    strcmp(value, "1") == 0)
			*(bool *)field = true;
		else if (strcmp(value, "false") == 0 || strcmp(value, "no") == 0 ||
			 strcmp(value, "0") == 0)
			*(bool *)field = false;
		else
			rc = ps_fail(err, PS_EINVAL, "'%s' is not true or false", value);
		return rc;
	}
	return ps_fail(err, PS_EINVAL, "unhandled setting");
}

static char *trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

/* Parse INI text into cfg: [section] headers, key = value lines, '#' or ';' comments. */
static int parse_ini(struct ps_config *cfg, char *text, const char *name, struct ps_err *err)
{
	char section[64] = "";
	char *line, *next;
	int lineno = 0;
	int rc = 0;

	for (line = text; line != NULL; line = next) {
		char *key, *value, *eq;
		size_t i;
		bool known_section = false;

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		lineno++;
		if (lineno == 1 && strncmp(line, "\xef\xbb\xbf", 3) == 0)
			line += 3;
		line = trim(line);
		if (*line == '\0' || *line == '#' || *line == ';')
			continue;
		if (*line == '[') {
			char *close = strchr(line, ']');

			if (close == NULL || close[1] != '\0' || close - line - 1 >= (long)sizeof(section)) {
				return ps_fail(err, PS_EINVAL, "%s:%d: bad section header '%s'",
					       name, lineno, line);
			}
			*close = '\0';
			snprintf(section, sizeof(section), "%s", trim(line + 1));
			for (i = 0; i < PS_ARRAY_SIZE(settings); i++)
				known_section |= strcmp(settings[i].section, section) == 0;
			if (!known_section)
				return ps_fail(err, PS_EINVAL, "%s:%d: unknown section [%s]", name,
					       lineno, section);
			continue;
		}
		eq = strchr(line, '=');
		if (eq == NULL)
			return ps_fail(err, PS_EINVAL, "%s:%d: expected key = value, got '%s'", name,
				       lineno, line);
		*eq = '\0';
		key = trim(line);
		value = trim(eq + 1);
		if (section[0] == '\0')
			return ps_fail(err, PS_EINVAL, "%s:%d: key '%s' before any [section]", name,
				       lineno, key);
		for (i = 0; i < PS_ARRAY_SIZE(settings); i++)
			if (strcmp(settings[i].section, section) == 0 &&
			    strcmp(settings[i].key, key) == 0)
				break;
		if (i == PS_ARRAY_SIZE(settings))
			return ps_fail(err, PS_EINVAL, "%s:%d: unknown key '%s' in [%s]", name,
				       lineno, key, section);
		rc = apply_setting(cfg, &settings[i], value, err);
		if (rc < 0)
			return ps_prefix(err, rc, "%s:%d: [%s] %s", name, lineno, section, key);
	}
	return 0;
}

/* Checks that span settings, after the file is read. */
static int check_config(struct ps_config *cfg, const char *name, struct ps_err *err)
{
	char cn[PS_CN_MAX + 1];
	X509_NAME *subject = X509_NAME_new();
	int rc;

	rc = ps_expand_template(cfg->common_name, "SERIAL0001", NULL, cn, sizeof(cn), err);
	if (rc < 0) {
		rc = ps_prefix(err, rc, "%s: [device] common_name", name);
		goto out;
	}
	if (subject == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	rc = ps_subject_parse(cfg->subject, subject, false, err);
	if (rc < 0)
		rc = ps_prefix(err, rc, "%s: [device] subject", name);
out:
	X509_NAME_free(subject);
	return rc;
}

int ps_config_load_string(struct ps_config *cfg, const char *text, const char *name,
			  struct ps_err *err)
{
	char *copy = NULL;
	int rc = set_defaults(cfg, err);

	if (rc == 0)
		rc = ps_strdup(text, &copy, err);
	if (rc == 0)
		rc = parse_ini(cfg, copy, name, err);
	if (rc == 0)
		rc = check_config(cfg, name, err);
	free(copy);
	if (rc < 0)
		ps_config_free(cfg);
	return rc;
}

int ps_config_load(struct ps_config *cfg, const char *path, struct ps_err *err)
{
	char *text = NULL;
	bool explicit_path = path != NULL;
	struct stat st;
	int rc;

	if (path == NULL && getenv(PS_CONFIG_ENV) != NULL && *getenv(PS_CONFIG_ENV) != '\0') {
		path = getenv(PS_CONFIG_ENV);
		explicit_path = true;
	}
	if (path == NULL)
		path = PS_DEFAULT_CONFIG;
	if (!explicit_path && stat(path, &st) != 0)
		return ps_config_load_string(cfg, "", "built-in defaults", err);
	rc = ps_read_file(path, 1 << 20, &text, NULL, err);
	if (rc < 0)
		return ps_prefix(err, rc, "configuration");
	rc = ps_config_load_string(cfg, text, path, err);
	if (rc == 0)
		rc = ps_strdup(path, &cfg->source, err);
	free(text);
	return rc;
}

int ps_check_serial(const char *serial, struct ps_err *err)
{
	return ps_check_text("serial", serial, PS_SERIAL_MAX, err);
}

int ps_expand_template(const char *tmpl, const char *serial, const char *cn, char *out,
		       size_t out_len, struct ps_err *err)
{
	size_t used = 0;
	const char *p = tmpl;

	while (*p != '\0') {
		const char *value = NULL;
		size_t n;

		if (*p == '{') {
			if (strncmp(p, "{serial}", 8) == 0) {
				value = serial;
				p += 8;
			} else if (cn != NULL && strncmp(p, "{cn}", 4) == 0) {
				value = cn;
				p += 4;
			} else {
				return ps_fail(err, PS_EINVAL,
					       "template '%s' has an unknown placeholder at '%s'",
					       tmpl, p);
			}
		}
		n = value ? strlen(value) : 1;
		if (used + n >= out_len)
			return ps_fail(err, PS_EINVAL, "template '%s' expands to more than %zu bytes",
				       tmpl, out_len - 1);
		memcpy(out + used, value ? value : p, n);
		used += n;
		if (value == NULL)
			p++;
	}
	out[used] = '\0';
	return ps_check_common_name(out, err);
}
