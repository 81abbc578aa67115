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
	const char *reason;	/* why it failed, or the revocation reason */
	const char *revoked_at; /* RFC 3339 UTC or "" */
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

/* The busy timeout (milliseconds) ps_db_open sets comes from this variable, default 5000. */
#define PS_DB_BUSY_ENV "PROVSTATION_DB_BUSY_MS"

/* Open (creating it and its directory when missing) and migrate the database. A database that
 * another process keeps locked for longer than the busy timeout gives PS_EBUSY. */
int ps_db_open(const char *path, struct ps_db **out, struct ps_err *err);
void ps_db_close(struct ps_db *db);

/* SQLite's PRAGMA integrity_check: 0 when the file is sound, else PS_EDB naming the first
 * problem. `audit verify` and `audit backup` run it in full; the station, when it starts,
 * runs the quick form (PRAGMA quick_check: every page and record, but not whether indexes
 * match their tables), linear in the file's size, about four times faster on a large one. */
int ps_db_check_integrity(struct ps_db *db, bool quick, struct ps_err *err);

/* Record a new certificate in state issued, durably, before it is written anywhere. */
int ps_db_record_issued(struct ps_db *db, const struct ps_audit_context *ctx,
			const struct ps_issue_record *rec, int64_t *id, struct ps_err *err);

/* Move a certificate to a new state (with a reason for failed, superseded, revoked). Only
 * the lifecycle's transitions are allowed (PS_EINVAL otherwise):
 *   issued     -> written, failed, superseded, revoked
 *   written    -> verified, failed, superseded, revoked
 *   verified   -> superseded, revoked
 *   failed, superseded -> revoked
 *   revoked is final. */
int ps_db_set_state(struct ps_db *db, int64_t id, const char *state, const char *reason,
		    const struct ps_audit_context *ctx, struct ps_err *err);
bool ps_db_transition_allowed(const char *from, const char *to);

/* A failed certificate's reason, when more is learnt after the fact (the station finds that
 * the card was pulled during the job): the row takes the new reason and the chain one more
 * "failed" event holding it. PS_EINVAL when the certificate is not failed. */
int ps_db_restate_failure(struct ps_db *db, int64_t id, const char *reason,
			  const struct ps_audit_context *ctx, struct ps_err *err);

/* After keep_id was provisioned for device_serial: every other certificate of the device in
 * state issued, written or verified becomes superseded (reason "by <cert serial of keep_id>"),
 * or, when revoke, revoked with reason "superseded"; one event each, in one transaction. */
int ps_db_supersede(struct ps_db *db, const char *device_serial, int64_t keep_id, bool revoke,
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
	int64_t id;		    /* one row; 0: any */
	const char *ca_fingerprint; /* the rows of one CA */
};

/* Call fn for each matching row, streaming (bounded memory). fn returns 0 to go on, <0 stops
 * and becomes the result. */
typedef int (*ps_row_fn)(const struct ps_cert_row *row, void *user);
int ps_db_each(struct ps_db *db, const struct ps_db_filter *filter, ps_row_fn fn, void *user,
	       struct ps_err *err);

/* The rows of one device, oldest first. */
int ps_db_history(struct ps_db *db, const char *device_serial, ps_row_fn fn, void *user,
		  struct ps_err *err);

/* Count rows per state created since t (today's passes and failures). */
int ps_db_count(struct ps_db *db, const char *state, time_t since, long *out, struct ps_err *err);

/* Revocation: one certificate by its serial, or every certificate of a device that is not
 * revoked yet. Certificates already revoked are left as they are (counted in `already`). */
struct ps_revoke_request {
	const char *cert_serial;    /* hex, any case, colons allowed; or: */
	const char *device_serial;  /* every certificate of this device */
	const char *ca_fingerprint; /* only certificates of this CA; NULL: any */
	const char *reason;	    /* RFC 5280 reason name, stored as given */
	/* Called after the commit for each certificate matched; already: it was revoked before. */
	int (*fn)(const struct ps_cert_row *row, bool already, void *user);
	void *user;
};
struct ps_revoke_result {
	long revoked, already;
};
/* PS_ENOENT when nothing matches; PS_ECONFLICT when a serial names certificates of several
 * CAs and no ca_fingerprint chooses. */
int ps_db_revoke(struct ps_db *db, const struct ps_revoke_request *req,
		 const struct ps_audit_context *ctx, struct ps_revoke_result *res,
		 struct ps_err *err);

/* The next CRL number for a CA (1 for its first CRL), committed durably before it is used. */
int ps_db_next_crl_number(struct ps_db *db, const char *ca_fingerprint, long *number,
			  struct ps_err *err);

/* Tamper evidence. Checks, in one snapshot: the event chain (sequence numbers 1, 2, 3 ...
 * without gaps, each prev_hash the previous row's hash, each hash over the row's content),
 * then replays the events of every certificate and compares the result with its row. The
 * first problem found is the error (PS_EDB), naming the event seq or certificate id. */
struct ps_db_verify_report {
	long events;
	long certificates;
	char head[65]; /* hash of the last event: record it elsewhere to detect truncation */
};
int ps_db_verify(struct ps_db *db, struct ps_db_verify_report *rep, struct ps_err *err);

/* Online backup (SQLite's backup API) into dest, which must not exist: written as
 * dest.partial, checked with integrity_check, then linked into place (mode 0600). */
int ps_db_backup(struct ps_db *db, const char *dest, struct ps_err *err);

/* Merging another station's rows (see import.h). Rows are matched on (ca_fingerprint,
 * cert_serial): a new row is added; the same row is left alone; a row whose lifecycle
 * (state, reason, revoked_at) moved on later (updated_at) is updated; an older one or one
 * that would undo a revocation is skipped; a row that differs in anything else is an error
 * (PS_ECONFLICT). Each row added or updated gets an "imported" event holding all of it. All
 * of an import is one transaction: begin, rows, end (commit, or roll back on error). */
struct ps_import_stats {
	long added, updated, unchanged, skipped;
};
int ps_db_import_begin(struct ps_db *db, struct ps_err *err);
int ps_db_import_row(struct ps_db *db, const struct ps_cert_row *row,
		     const struct ps_audit_context *ctx, struct ps_import_stats *stats,
		     struct ps_err *err);
int ps_db_import_end(struct ps_db *db, bool commit, struct ps_err *err);

#endif
