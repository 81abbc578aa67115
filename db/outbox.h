/* outbox.h — the preauthorization outbox's SQL: one row per certificate to preauthorize
 * (table preauth_outbox), its state (pending → done, failed or cancelled), attempts and next
 * attempt, the claim of the process sending it, and the Mender device id the server gave.
 * The public key and the certificate's state come from the certificates table. */
#ifndef PS_OUTBOX_H
#define PS_OUTBOX_H

#include "audit.h"
#include "err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PS_OUTBOX_PENDING   "pending"
#define PS_OUTBOX_DONE	    "done"
#define PS_OUTBOX_FAILED    "failed"
#define PS_OUTBOX_CANCELLED "cancelled"

/* One row as the iterators pass it: the strings are valid during the callback. */
struct ps_outbox_row {
	int64_t id;
	int64_t cert_id;
	const char *device_serial;
	const char *common_name;
	const char *identity;	/* identity_data JSON */
	const char *pubkey_pem; /* the certificate's */
	const char *cert_state; /* the certificate's */
	const char *state;
	const char *result; /* how it ended: created, existing, replaced */
	const char *last_error;
	const char *device_id;
	const char *server;
	const char *created_at, *updated_at, *sent_at; /* RFC 3339 UTC, sent_at "" until done */
	long attempts;				       /* failed attempts */
	int64_t next_attempt_ms;		       /* epoch milliseconds */
	int64_t claimed_by;			       /* pid of the process sending it, 0 none */
	int64_t claimed_until_ms;
};

/* Return 0 to go on, > 0 to stop (the iterator returns 0), < 0 to stop with that error. */
typedef int (*ps_outbox_fn)(const struct ps_outbox_row *row, void *user);

/* Queue certificate cert_id with identity (now: RFC 3339). A certificate already queued keeps
 * its row unless requeue: then it goes back to pending with attempts cleared and the new
 * identity. PS_ENOENT when there is no such certificate. */
int ps_outbox_add(struct ps_db *db, int64_t cert_id, const char *identity, bool requeue,
		  const char *now, struct ps_err *err);

/* The newest certificate of a device in state verified; PS_ENOENT when it has none. */
int ps_outbox_newest_verified(struct ps_db *db, const char *device_serial, int64_t *cert_id,
			      char *common_name, size_t cn_len, struct ps_err *err);

/* Cancel pending rows that must never be sent: their certificate failed, was superseded or
 * revoked, or the device has a newer verified certificate. *cancelled (may be NULL) counts
 * them. */
int ps_outbox_sweep(struct ps_db *db, const char *now, long *cancelled, struct ps_err *err);

/* Pending rows with a verified certificate due at now_ms, the longest due first; only_cert_id
 * 0 for all. */
int ps_outbox_each_due(struct ps_db *db, int64_t now_ms, int64_t only_cert_id, ps_outbox_fn fn,
		       void *user, struct ps_err *err);

/* Rows in state (NULL: any), oldest first; only_cert_id 0 for all. */
int ps_outbox_each(struct ps_db *db, const char *state, int64_t only_cert_id, ps_outbox_fn fn,
		   void *user, struct ps_err *err);

/* Claim a pending row for owner until until_ms, if its claim is still (prev_owner,
 * prev_until_ms) as the caller saw it: *claimed says whether this caller won. */
int ps_outbox_claim(struct ps_db *db, int64_t id, int64_t prev_owner, int64_t prev_until_ms,
		    int64_t owner, int64_t until_ms, bool *claimed, struct ps_err *err);

/* The outcome of an attempt. */
struct ps_outbox_update {
	const char *state;	 /* pending (to retry), done, failed */
	const char *result;	 /* done: created, existing, replaced; else "" */
	const char *device_id;	 /* "" keeps the one recorded */
	const char *error;	 /* "" when done */
	const char *server;	 /* the server it went to */
	bool failed_attempt;	 /* counts in attempts */
	int64_t next_attempt_ms; /* pending: when to try again */
};

/* Record an attempt's outcome and release owner's claim. *applied (may be NULL) is false when
 * the row was no longer claimed by owner (then nothing changes). */
int ps_outbox_finish(struct ps_db *db, int64_t id, int64_t owner, const struct ps_outbox_update *u,
		     const char *now, bool *applied, struct ps_err *err);

struct ps_outbox_counts {
	long queued;   /* pending, certificate verified */
	long held;     /* pending, certificate issued or written */
	long retrying; /* queued after a failed attempt */
	long failed, done, cancelled;
	int64_t next_attempt_ms; /* earliest among queued, 0 when none */
	char last_error[256];	 /* of the latest retrying row */
};

/* Counts of the outbox (of one certificate's row when only_cert_id is not 0). */
int ps_outbox_counts(struct ps_db *db, int64_t only_cert_id, struct ps_outbox_counts *out,
		     struct ps_err *err);

#endif
