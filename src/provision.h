/* provision.h — the personalization pipeline for one device: check the target, issue the
 * identity, record it, write key, certificate and mender.conf into the image in place, verify
 * by reading everything back. The command line and the station UI both run it. */
#ifndef PS_PROVISION_H
#define PS_PROVISION_H

#include "audit.h"
#include "ca.h"
#include "config.h"
#include "err.h"
#include "safety.h"

#include <stdint.h>

/* Where the station puts the device's files: the data partition is mounted at /data. */
#define PS_DATA_DIR	    "/mender"
#define PS_DEVICE_DATA_DIR  "/data/mender"
#define PS_KEY_NAME	    "mender-cert-private.pem"
#define PS_CERT_NAME	    "mender-cert.pem"
#define PS_CONF_NAME	    "mender.conf"
#define PS_SERVER_CERT_NAME "server.crt"
#define PS_MAIN_CONF	    "/etc/mender/mender.conf"

/* Pipeline stages, reported to an optional observer. */
enum ps_stage {
	PS_STAGE_CHECKING,
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
};

/* Run the whole pipeline. On failure after issuance the audit row is left in state failed
 * with the reason; before issuance nothing is recorded and nothing is written. */
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
