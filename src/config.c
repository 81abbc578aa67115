/* config.c — the station configuration (see config.h). The INI reader is ours: Debian's inih
 * is built with a 200-byte line limit, shorter than a Mender tenant token. */
#include "config.h"
#include "preauth.h"
#include "util.h"

#include <ctype.h>
#include <limits.h>
#include <pwd.h>
#include <regex.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum setting_kind {
	SET_STRING,
	SET_DAYS,
	SET_KEY_TYPE,
	SET_CONF_TARGET,
	SET_PARTITION,
	SET_PARTITION_LIST,
	SET_BOOL,
	SET_PORTS,
	SET_SERIAL_SOURCE,
	SET_USB_IDS,
	SET_SECONDS,
	SET_REGEX,
	SET_ON_CONFLICT
};

/* Which object a setting lives in: the configuration, the current [slot NAME] or
 * [board NAME]. */
enum setting_scope { SCOPE_CONFIG, SCOPE_SLOT, SCOPE_BOARD };

struct setting {
	const char *section;
	const char *key;
	enum setting_kind kind;
	size_t offset;
	enum setting_scope scope;
};

#define S(sec, key, kind, field)                                                                   \
	{                                                                                          \
		sec, key, kind, offsetof(struct ps_config, field), SCOPE_CONFIG                    \
	}
#define SLOT(key, kind, field)                                                                     \
	{                                                                                          \
		"slot", key, kind, offsetof(struct ps_slot_config, field), SCOPE_SLOT              \
	}
#define BOARD(key, kind, field)                                                                    \
	{                                                                                          \
		"board", key, kind, offsetof(struct ps_board_config, field), SCOPE_BOARD           \
	}
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
    S("station", "slots_dir", SET_STRING, slots_dir),
    S("station", "slots_flash", SET_STRING, slots_flash),
    S("station", "slots_bmap", SET_STRING, slots_bmap),
    S("station", "serial_pattern", SET_REGEX, serial_pattern),
    S("station", "confirm", SET_BOOL, confirm),
    S("station", "hotplug", SET_BOOL, hotplug),
    S("preauth", "enabled", SET_BOOL, preauth_enabled),
    S("preauth", "server", SET_STRING, preauth_server),
    S("preauth", "token_file", SET_STRING, preauth_token_file),
    S("preauth", "username", SET_STRING, preauth_username),
    S("preauth", "password_file", SET_STRING, preauth_password_file),
    S("preauth", "ca_bundle", SET_STRING, preauth_ca_bundle),
    S("preauth", "identity", SET_STRING, preauth_identity),
    S("preauth", "serial_file", SET_STRING, preauth_serial_file),
    S("preauth", "on_conflict", SET_ON_CONFLICT, preauth_on_conflict),
    SLOT("ports", SET_PORTS, ports),
    SLOT("serial_source", SET_SERIAL_SOURCE, serial_source),
    SLOT("serial_prefix", SET_STRING, serial_prefix),
    SLOT("flash", SET_STRING, flash),
    SLOT("bmap", SET_STRING, bmap),
    SLOT("allow_fixed", SET_BOOL, allow_fixed),
    BOARD("usb_id", SET_USB_IDS, usb_ids),
    BOARD("helper", SET_STRING, helper),
    BOARD("timeout", SET_SECONDS, timeout),
};
#undef S
#undef SLOT
#undef BOARD

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
	if (rc == 0)
		rc = ps_config_set(&cfg->slots_dir, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->slots_flash, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->slots_bmap, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->serial_pattern, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->preauth_server, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->preauth_token_file, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->preauth_username, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->preauth_password_file, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->preauth_ca_bundle, "", err);
	if (rc == 0)
		rc = ps_config_set(&cfg->preauth_identity, PS_PREAUTH_DEFAULT_IDENTITY, err);
	if (rc == 0)
		rc = ps_config_set(&cfg->preauth_serial_file, "", err);
	cfg->hotplug = true;
	return rc;
}

/* The object a setting of scope lives in: the configuration, or its newest slot or board. */
static void *scope_base(struct ps_config *cfg, enum setting_scope scope, int index)
{
	switch (scope) {
	case SCOPE_SLOT:
		return index >= 0 ? (void *)&cfg->slots[index] : NULL;
	case SCOPE_BOARD:
		return index >= 0 ? (void *)&cfg->boards[index] : NULL;
	default:
		return cfg;
	}
}

static void free_scope(struct ps_config *cfg, enum setting_scope scope, int index)
{
	char *base = scope_base(cfg, scope, index);
	size_t i;
	int j;

	for (i = 0; base != NULL && i < PS_ARRAY_SIZE(settings); i++) {
		if (settings[i].scope != scope)
			continue;
		if (settings[i].kind == SET_STRING || settings[i].kind == SET_REGEX)
			free(*(char **)(base + settings[i].offset));
		if (settings[i].kind == SET_PORTS)
			for (j = 0; j < PS_MAX_PORTS; j++)
				free(((char **)(base + settings[i].offset))[j]);
	}
}

void ps_config_free(struct ps_config *cfg)
{
	int i;

	if (cfg == NULL)
		return;
	free(cfg->source);
	free_scope(cfg, SCOPE_CONFIG, 0);
	for (i = 0; i < cfg->n_slots; i++) {
		free_scope(cfg, SCOPE_SLOT, i);
		free(cfg->slots[i].name);
	}
	for (i = 0; i < cfg->n_boards; i++) {
		free_scope(cfg, SCOPE_BOARD, i);
		free(cfg->boards[i].name);
	}
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

static int apply_setting(struct ps_config *cfg, void *base, const struct setting *s,
			 const char *value, struct ps_err *err)
{
	void *field = (char *)base + s->offset;
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
	case SET_REGEX: {
		regex_t re;
		int code = *value ? regcomp(&re, value, REG_EXTENDED | REG_NOSUB) : 0;

		if (code != 0)
			return ps_fail(err, PS_EINVAL,
				       "'%s' is not a valid extended regular expression", value);
		if (*value)
			regfree(&re);
		return ps_config_set((char **)field, value, err);
	}
	case SET_PORTS: {
		char **ports = field;
		char buf[2048];
		char *tok, *save = NULL;
		int count = 0;

		snprintf(buf, sizeof(buf), "%s", value);
		for (tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
			if (count == PS_MAX_PORTS)
				return ps_fail(err, PS_EINVAL, "more than %d ports", PS_MAX_PORTS);
			rc = ps_config_set(&ports[count++], tok, err);
			if (rc < 0)
				return rc;
		}
		((struct ps_slot_config *)base)->n_ports = count;
		return 0;
	}
	case SET_SERIAL_SOURCE: {
		static const char *const names[] = {"operator", "usb", "cid", "sequence"};
		size_t i;

		for (i = 0; i < PS_ARRAY_SIZE(names); i++) {
			if (strcmp(value, names[i]) == 0) {
				*(enum ps_serial_source *)field = (enum ps_serial_source)i;
				return 0;
			}
		}
		return ps_fail(err, PS_EINVAL, "'%s' is not operator, usb, cid or sequence", value);
	}
	case SET_USB_IDS: {
		struct ps_board_config *board = base;
		char buf[512];
		char *tok, *save = NULL;

		board->n_usb_ids = 0;
		snprintf(buf, sizeof(buf), "%s", value);
		for (tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
			unsigned vid, pid;
			char extra;

			if (sscanf(tok, "%4x:%4x%c", &vid, &pid, &extra) != 2)
				return ps_fail(err, PS_EINVAL,
					       "'%s' is not a USB id VID:PID in hex", tok);
			if (board->n_usb_ids == PS_MAX_BOARD_IDS)
				return ps_fail(err, PS_EINVAL, "more than %d USB ids",
					       PS_MAX_BOARD_IDS);
			board->usb_ids[board->n_usb_ids][0] = (uint16_t)vid;
			board->usb_ids[board->n_usb_ids][1] = (uint16_t)pid;
			board->n_usb_ids++;
		}
		return 0;
	}
	case SET_ON_CONFLICT:
		if (strcmp(value, "fail") == 0)
			*(enum ps_preauth_conflict_policy *)field = PS_PREAUTH_CONFLICT_FAIL;
		else if (strcmp(value, "replace") == 0)
			*(enum ps_preauth_conflict_policy *)field = PS_PREAUTH_CONFLICT_REPLACE;
		else
			rc = ps_fail(err, PS_EINVAL, "'%s' is not fail or replace", value);
		return rc;
	case SET_SECONDS:
		rc = ps_parse_int("seconds", value, 1, 3600, &n, err);
		if (rc == 0)
			*(long *)field = n;
		return rc;
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
/* Start a [slot NAME] or [board NAME] section. */
static int open_named_section(struct ps_config *cfg, const char *kind, const char *value,
			      const char *name, int lineno, enum setting_scope *scope, int *index,
			      struct ps_err *err)
{
	int i;

	if (ps_check_text("section name", value, 63, err) < 0)
		return ps_prefix(err, PS_EINVAL, "%s:%d: [%s ...]", name, lineno, kind);
	if (strcmp(kind, "slot") == 0) {
		for (i = 0; i < cfg->n_slots; i++)
			if (strcmp(cfg->slots[i].name, value) == 0)
				return ps_fail(err, PS_EINVAL, "%s:%d: slot '%s' is defined twice",
					       name, lineno, value);
		if (cfg->n_slots == PS_MAX_CONFIG_SLOTS)
			return ps_fail(err, PS_EINVAL, "%s:%d: more than %d slots", name, lineno,
				       PS_MAX_CONFIG_SLOTS);
		*index = cfg->n_slots++;
		*scope = SCOPE_SLOT;
		if (ps_config_set(&cfg->slots[*index].serial_prefix, "", err) < 0 ||
		    ps_config_set(&cfg->slots[*index].flash, "", err) < 0 ||
		    ps_config_set(&cfg->slots[*index].bmap, "", err) < 0)
			return PS_ENOMEM;
		return ps_config_set(&cfg->slots[*index].name, value, err);
	}
	if (strcmp(kind, "board") == 0) {
		if (cfg->n_boards == PS_MAX_BOARDS)
			return ps_fail(err, PS_EINVAL, "%s:%d: more than %d boards", name, lineno,
				       PS_MAX_BOARDS);
		*index = cfg->n_boards++;
		*scope = SCOPE_BOARD;
		cfg->boards[*index].timeout = 60;
		if (ps_config_set(&cfg->boards[*index].helper, "", err) < 0)
			return PS_ENOMEM;
		return ps_config_set(&cfg->boards[*index].name, value, err);
	}
	return ps_fail(err, PS_EINVAL, "%s:%d: unknown section [%s %s]", name, lineno, kind, value);
}

static int parse_ini(struct ps_config *cfg, char *text, const char *name, struct ps_err *err)
{
	enum setting_scope scope = SCOPE_CONFIG;
	int index = -1;
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
			char *head, *space;

			if (close == NULL || close[1] != '\0' ||
			    close - line - 1 >= (long)sizeof(section)) {
				return ps_fail(err, PS_EINVAL, "%s:%d: bad section header '%s'",
					       name, lineno, line);
			}
			*close = '\0';
			head = trim(line + 1);
			space = strchr(head, ' ');
			if (space != NULL) {
				/* [slot NAME] or [board NAME] */
				*space = '\0';
				rc = open_named_section(cfg, head, trim(space + 1), name, lineno,
							&scope, &index, err);
				if (rc < 0)
					return rc;
				snprintf(section, sizeof(section), "%s", head);
				continue;
			}
			snprintf(section, sizeof(section), "%s", head);
			scope = SCOPE_CONFIG;
			for (i = 0; i < PS_ARRAY_SIZE(settings); i++)
				known_section |= settings[i].scope == SCOPE_CONFIG &&
						 strcmp(settings[i].section, section) == 0;
			if (!known_section)
				return ps_fail(err, PS_EINVAL, "%s:%d: unknown section [%s]", name,
					       lineno, section);
			continue;
		}
		eq = strchr(line, '=');
		if (eq == NULL)
			return ps_fail(err, PS_EINVAL, "%s:%d: expected key = value, got '%s'",
				       name, lineno, line);
		*eq = '\0';
		key = trim(line);
		value = trim(eq + 1);
		if (section[0] == '\0')
			return ps_fail(err, PS_EINVAL, "%s:%d: key '%s' before any [section]", name,
				       lineno, key);
		for (i = 0; i < PS_ARRAY_SIZE(settings); i++)
			if (settings[i].scope == scope &&
			    strcmp(settings[i].section, section) == 0 &&
			    strcmp(settings[i].key, key) == 0)
				break;
		if (i == PS_ARRAY_SIZE(settings))
			return ps_fail(err, PS_EINVAL, "%s:%d: unknown key '%s' in [%s]", name,
				       lineno, key, section);
		rc = apply_setting(cfg, scope_base(cfg, scope, index), &settings[i], value, err);
		if (rc < 0)
			return ps_prefix(err, rc, "%s:%d: [%s] %s", name, lineno, section, key);
	}
	return 0;
}

/* [preauth]: the identity template and serial file always (provisioning writes the serial
 * file whether or not preauthorization is on); server and credentials when enabled. */
static int check_preauth(const struct ps_config *cfg, const char *name, struct ps_err *err)
{
	char *identity = NULL;
	int rc;

	rc = ps_preauth_identity(cfg->preauth_identity, "SERIAL0001", "SERIAL0001", &identity, err);
	free(identity);
	if (rc < 0)
		return ps_prefix(err, rc, "%s: [preauth] identity", name);
	rc = ps_preauth_check_serial_file(cfg->preauth_serial_file, err);
	if (rc < 0)
		return ps_prefix(err, rc, "%s: [preauth] serial_file", name);
	if (!cfg->preauth_enabled)
		return 0;
	if (strncmp(cfg->preauth_server, "https://", 8) != 0 || cfg->preauth_server[8] == '\0')
		return ps_fail(err, PS_EINVAL,
			       "%s: [preauth] server must be an https:// URL (got '%s')", name,
			       strchr(cfg->preauth_server, '@') ? "..." : cfg->preauth_server);
	if (memchr(cfg->preauth_server + 8, '@', strcspn(cfg->preauth_server + 8, "/?#")) != NULL)
		return ps_fail(err, PS_EINVAL,
			       "%s: [preauth] server must not hold credentials (user@host): use "
			       "token_file, or username and password_file",
			       name);
	if (cfg->preauth_token_file[0] != '\0' && cfg->preauth_username[0] != '\0')
		return ps_fail(err, PS_EINVAL,
			       "%s: [preauth] token_file and username exclude each other", name);
	if (cfg->preauth_password_file[0] != '\0' && cfg->preauth_username[0] == '\0')
		return ps_fail(err, PS_EINVAL, "%s: [preauth] password_file needs username", name);
	return 0;
}

/* A bmap file belongs to a golden image. */
static int check_flash(const struct ps_config *cfg, const char *name, struct ps_err *err)
{
	int i;

	if (cfg->slots_bmap[0] != '\0' && cfg->slots_flash[0] == '\0')
		return ps_fail(err, PS_EINVAL, "%s: [station] slots_bmap needs slots_flash", name);
	for (i = 0; i < cfg->n_slots; i++)
		if (cfg->slots[i].bmap[0] != '\0' && cfg->slots[i].flash[0] == '\0')
			return ps_fail(err, PS_EINVAL, "%s: [slot %s] bmap needs flash", name,
				       cfg->slots[i].name);
	return 0;
}

/* A sequence's prefix must make usable serials: "PREFIX000001" passes ps_check_serial. */
static int check_sequences(const struct ps_config *cfg, const char *name, struct ps_err *err)
{
	char serial[PS_SERIAL_MAX * 2 + 8];
	int i, rc;

	for (i = 0; i < cfg->n_slots; i++) {
		const struct ps_slot_config *slot = &cfg->slots[i];

		if (slot->serial_source != PS_SERIAL_SEQUENCE)
			continue;
		snprintf(serial, sizeof(serial), "%.*s000001", PS_SERIAL_MAX + 1,
			 slot->serial_prefix);
		rc = ps_check_serial(serial, err);
		if (rc < 0)
			return ps_prefix(err, rc, "%s: [slot %s] serial_prefix", name, slot->name);
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
	if (rc == 0)
		rc = check_preauth(cfg, name, err);
	if (rc == 0)
		rc = check_flash(cfg, name, err);
	if (rc == 0)
		rc = check_sequences(cfg, name, err);
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
			return ps_fail(err, PS_EINVAL,
				       "template '%s' expands to more than %zu bytes", tmpl,
				       out_len - 1);
		memcpy(out + used, value ? value : p, n);
		used += n;
		if (value == NULL)
			p++;
	}
	out[used] = '\0';
	return ps_check_common_name(out, err);
}
