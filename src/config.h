/* config.h — the station configuration: an INI file (default /etc/provstation/station.conf),
 * its defaults, and the checks that name the file, line and key of anything wrong. */
#ifndef PS_CONFIG_H
#define PS_CONFIG_H

#include "ca.h"
#include "err.h"

#include <stdbool.h>
#include <stdint.h>

#define PS_DEFAULT_CONFIG "/etc/provstation/station.conf"
#define PS_CONFIG_ENV	  "PROVSTATION_CONFIG"
#define PS_SERIAL_MAX	  64
#define PS_MAX_ROOTFS	  4

/* [preauth] on_conflict: what a conflicting device on the server (same identity, another key)
 * gets. */
enum ps_preauth_conflict_policy {
	PS_PREAUTH_CONFLICT_FAIL,    /* record a failure naming the device (default) */
	PS_PREAUTH_CONFLICT_REPLACE, /* replace its key (field service) */
};

enum ps_conf_target {
	PS_CONF_TARGET_DATA,   /* merge into the data partition's mender.conf (default) */
	PS_CONF_TARGET_ROOTFS, /* merge into every root filesystem's /etc/mender/mender.conf */
};

#define PS_MAX_CONFIG_SLOTS 32
#define PS_MAX_PORTS	    8
#define PS_MAX_BOARDS	    8
#define PS_MAX_BOARD_IDS    8

/* Where a slot's device serial comes from. */
enum ps_serial_source {
	PS_SERIAL_OPERATOR, /* scanned or typed by the operator (default) */
	PS_SERIAL_USB,	    /* the USB parent's serial number */
	PS_SERIAL_CID,	    /* the SD/MMC card's CID serial */
	PS_SERIAL_SEQUENCE, /* prefix + the next number, unique in the audit database */
};

/* [slot NAME]: a physical port of the station. */
struct ps_slot_config {
	char *name;
	char *ports[PS_MAX_PORTS]; /* ID_PATH patterns (fnmatch), e.g. "pci-*-usb-0:1:1.0-*" */
	int n_ports;
	enum ps_serial_source serial_source;
	char *serial_prefix; /* for the sequence source */
	char *flash;	     /* golden image to write first, or "" */
	char *bmap;	     /* its bmap file, or "" */
	bool allow_fixed;    /* accept a non-removable disk that is not on USB or MMC */
};

/* [board NAME]: USB boards in a boot or recovery mode, and how to make them a disk. */
struct ps_board_config {
	char *name;
	uint16_t usb_ids[PS_MAX_BOARD_IDS][2]; /* vid, pid */
	int n_usb_ids;
	char *helper; /* command run when such a board appears ({port} is its USB port) */
	long timeout; /* seconds to wait for the disk to appear under the same port */
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
	int data_partition; /* 0: discover */
	int rootfs_partitions[PS_MAX_ROOTFS];
	int n_rootfs_partitions; /* 0: discover */

	/* [audit] */
	bool revoke_superseded;

	/* [station], for the station's front end */
	char *slots_dir;      /* image files here are virtual slots, or "" */
	char *slots_flash;    /* golden image flashed onto a virtual slot's file first, or "" */
	char *slots_bmap;     /* its bmap file, or "" */
	char *serial_pattern; /* POSIX extended regex a scanned serial must match, or "" */
	bool confirm;	      /* wait for the operator's confirm key before starting a job */
	bool hotplug;	      /* watch udev for disks and boards (default true) */

	/* [preauth]: preauthorizing devices through the Mender management API */
	bool preauth_enabled;
	char *preauth_server;	     /* https://mender.example.com */
	char *preauth_token_file;    /* personal access token, mode 0600 */
	char *preauth_username;	     /* or: log in as this user */
	char *preauth_password_file; /* with this password, mode 0600 */
	char *preauth_ca_bundle;     /* CA bundle for a private server, or "" */
	char *preauth_identity;	     /* identity_data template, JSON with {serial} and {cn} */
	char *preauth_serial_file;   /* the serial written into the data partition, or "" */
	enum ps_preauth_conflict_policy preauth_on_conflict;

	struct ps_slot_config slots[PS_MAX_CONFIG_SLOTS];
	int n_slots;
	struct ps_board_config boards[PS_MAX_BOARDS];
	int n_boards;
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
