/* provision.h — the personalization pipeline for one device: optionally flash the golden
 * image onto the target, check it, issue the identity, record it, write key, certificate and
 * mender.conf into the image in place, verify by reading everything back. The command line
 * and the station UI both run it. */
#ifndef PS_PROVISION_H
#define PS_PROVISION_H

#include "audit.h"
#include "ca.h"
#include "config.h"
#include "err.h"
#include "flash.h"
#include "safety.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Where the station puts the device's files: the data partition is mounted at /data. */
#define PS_DATA_DIR	    "/mender"
#define PS_DEVICE_DATA_DIR  "/data/mender"
#define PS_KEY_NAME	    "mender-cert-private.pem"
#define PS_CERT_NAME	    "mender-cert.pem"
#define PS_CONF_NAME	    "mender.conf"
#define PS_SERVER_CERT_NAME "server.crt"
#define PS_MAIN_CONF	    "/etc/mender/mender.conf"
/* The flashing image hash cache (see ps_flash_request), beside the audit database. */
#define PS_IMAGE_HASH_CACHE "image-sha256.cache"

/* Pipeline stages, reported to an optional observer. */
enum ps_stage {
	PS_STAGE_CHECKING,
	PS_STAGE_FLASHING, /* only with flash_image */
	PS_STAGE_ISSUING,
	PS_STAGE_WRITING,
	PS_STAGE_VERIFYING,
	PS_STAGE_DONE,
};

struct ps_provision_request {
	const struct ps_config *cfg;
	const char *target;
	const char *serial;
	struct ps_ca *ca; /* loaded with its key */
	struct ps_db *db; /* the audit store */
	/* The safety gate: a block device must be a station slot (or the operator says
	 * --allow-unlisted) and pass ps_safety_check with this policy. */
	bool target_is_slot;
	bool allow_unlisted;
	struct ps_safety_policy safety;
	/* Queue the device for preauthorization on the Mender server ([preauth]) as soon as its
	 * certificate is recorded; the outbox sends it once the certificate is verified. */
	bool preauth;
	void (*observer)(enum ps_stage stage, void *user);
	void *observer_user;
	/* Flash a golden image onto the target first (NULL: personalize what is there): raw,
	 * gzip, xz or zstd, with an optional bmap file, through the same safety gate, read back
	 * and compared unless flash_no_verify. Nothing is issued unless it succeeds; the audit
	 * row then records the image's name and SHA-256. */
	const char *flash_image;
	const char *flash_bmap;
	bool flash_no_verify;
	ps_flash_progress_fn flash_progress; /* optional, called from the flashing threads */
	void *flash_progress_user;
	/* Optional: once set, the flash stops soon, and nothing is issued afterwards. */
	atomic_bool *cancel;
};

#define PS_MAX_WRITTEN 8

struct ps_provision_result {
	char common_name[PS_CN_MAX + 1];
	char cert_serial[80];
	char pubkey_sha256[65];
	int64_t audit_id; /* 0 when nothing was recorded */
	char data_partition[96];
	char written[PS_MAX_WRITTEN][160]; /* "p4:/mender/mender-cert.pem (0600)" */
	int n_written;
	bool flashed;		      /* flash_image was given and ps_flash ran */
	struct ps_flash_result flash; /* its result, when flashed (also when it failed) */
};

/* Run the whole pipeline. On failure after issuance the audit row is left in state failed
 * with the reason; before issuance nothing is recorded, and nothing is written but the
 * flashed image (a failed flash says "cannot flash IMAGE onto TARGET: REASON"). */
int ps_provision(const struct ps_provision_request *req, struct ps_provision_result *res,
		 struct ps_err *err);

struct ps_verify_result {
	char common_name[PS_CN_MAX + 1];
	char cert_serial[80];
	char pubkey_sha256[65];
	char not_after[32];
	int n_configs_checked; /* effective configurations checked (one per root filesystem) */
};

/* Re-open the target read-only and check everything the pipeline wrote. */
int ps_verify(const struct ps_config *cfg, struct ps_ca *ca, const char *target,
	      struct ps_verify_result *res, struct ps_err *err);

#endif
