/* config.h — the station configuration: an INI file (default /etc/provstation/station.conf),
 * its defaults, and the checks that name the file, line and key of anything wrong. */
#ifndef PS_CONFIG_H
#define PS_CONFIG_H

#include "ca.h"
#include "err.h"

#include <stdbool.h>

#define PS_DEFAULT_CONFIG   "/etc/provstation/station.conf"
#define PS_CONFIG_ENV	    "PROVSTATION_CONFIG"
#define PS_SERIAL_MAX	    64
#define PS_MAX_ROOTFS	    4

enum ps_conf_target {
	PS_CONF_TARGET_DATA,   /* merge into the data partition's mender.conf (default) */
	PS_CONF_TARGET_ROOTFS, /* merge into every root filesystem's /etc/mender/mender.conf */
};

struct ps_config {
	char *source; /* the file read, or NULL when running on built-in defaults */

	/* [station] */
	char *station_id;
	char *operator_name;
	char *database;
	char *batch;

	/* [ca] */
	char *ca_dir;
	char *ca_passphrase_file;

	/* [device] */
	enum ps_key_type key_type;
	char *common_name; /* template with {serial} */
	char *subject;
	long days;

	/* [mender] */
	char *server_url;
	char *tenant_token;
	char *server_certificate; /* CA file on the station, installed into the image */
	enum ps_conf_target conf_target;
	int data_partition;	  /* 0: discover */
	int rootfs_partitions[PS_MAX_ROOTFS];
	int n_rootfs_partitions;  /* 0: discover */

	/* [audit] */
	bool revoke_superseded;
};

/* Load defaults, then path (NULL: $PROVSTATION_CONFIG, else the default file when it exists). */
int ps_config_load(struct ps_config *cfg, const char *path, struct ps_err *err);
/* Parse INI text (for tests and fuzzing); `name` is used in messages. */
int ps_config_load_string(struct ps_config *cfg, const char *text, const char *name,
			  struct ps_err *err);
void ps_config_free(struct ps_config *cfg);

/* Replace a string setting (command-line overrides). */
int ps_config_set(char **field, const char *value, struct ps_err *err);

/* Expand the commonName template for serial; the result is checked as a commonName. */
int ps_expand_template(const char *tmpl, const char *serial, const char *cn, char *out,
		       size_t out_len, struct ps_err *err);
/* Check a device serial: non-empty, at most PS_SERIAL_MAX bytes, no control characters. */
int ps_check_serial(const char *serial, struct ps_err *err);

#endif
