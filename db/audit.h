/* audit.h — the audit store: every certificate the station issues, its lifecycle
 * (issued → written → verified, or failed; later superseded or revoked) and a hash-chained
 * event log that makes changes, deletions and reordering evident. SQLite in WAL mode with
 * durable commits; the only code that speaks SQL lives in db/. */
#ifndef PS_AUDIT_H
#define PS_AUDIT_H

#include "err.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

struct ps_db;

/* Certificate states, as stored. */
#define PS_STATE_ISSUED	    "issued"
#define PS_STATE_WRITTEN    "written"
#define PS_STATE_VERIFIED   "verified"
#define PS_STATE_FAILED	    "failed"
#define PS_STATE_SUPERSEDED "superseded"
#define PS_STATE_REVOKED    "revoked"

/* Who and where: recorded with every row and event. */
struct ps_audit_context {
	const char *station_id;
	const char *operator_name;
	const char *batch;
	const char *ca_fingerprint;
};

/* One certificate row as ps_db_each passes it: the strings are valid during the callback. */
struct ps_cert_row {
	int64_t id;
	const char *device_serial;
	const char *common_name;
	const char *pubkey_pem;
	const char *pubkey_sha256;
	const char *cert_serial;
	const char *cert_pem;
	const char *not_before; /* RFC 3339 UTC */
	const char *not_after;
	const char *state;
	const char *reason;		 /* why it failed, or the revocation reason */
	const char *revoked_at;	 /* RFC 3339 UTC or "" */
	const char *station_id;
	const char *operator_name;
	const char *batch;
	const char *ca_fingerprint;
	const char *target;
	const char *image_name;
	const char *image_sha256;
	const char *created_at;
	const char *updated_at;
};

/* What a new issuance records. */
struct ps_issue_record {
	const char *device_serial;
	const char *common_name;
	const char *pubkey_pem;
	const char *pubkey_sha256;
	const char *cert_serial;
	const char *cert_pem;
	time_t not_before, not_after;
	const char *target;
	const char *image_name;
	const char *image_sha256;
};

/* Open (creating it and its directory when missing) and migrate the database; checks its
 * integrity. */
int ps_db_open(const char *path, struct ps_db **out, struct ps_err *err);
void ps_db_close(struct ps_db *db);

/* Record a new certificate in state issued, durably, before it is written anywhere. */
int ps_db_record_issued(struct ps_db *db, const struct ps_audit_context *ctx,
			const struct ps_issue_record *rec, int64_t *id, struct ps_err *err);

/* Move a certificate to a new state (with a reason for failed, superseded, revoked). */
int ps_db_set_state(struct ps_db *db, int64_t id, const char *state, const char *reason,
		    const struct ps_audit_context *ctx, struct ps_err *err);

/* Filters for listing and export; NULL / 0 means any. */
struct ps_db_filter {
	time_t since, until; /* on created_at */
	const char *state;
	const char *station_id;
	const char *batch;
	const char *device_serial;
	const char *common_name;
	const char *cert_serial;
	bool newest_first;
};

/* Call fn for each matching row, streaming (bounded memory). fn returns 0 to go on, <0 stops
 * and becomes the result. */
typedef int (*ps_row_fn)(const struct ps_cert_row *row, void *user);
int ps_db_each(struct ps_db *db, const struct ps_db_filter *filter, ps_row_fn fn, void *user,
	       struct ps_err *err);

/* Count rows per state created since t (today's passes and failures). */
int ps_db_count(struct ps_db *db, const char *state, time_t since, long *out,
		struct ps_err *err);

#endif
