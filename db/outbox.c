/* outbox.c — the preauthorization outbox in SQLite (see outbox.h): queueing, the sweep of
 * rows that must never be sent, due rows, claims, outcomes and counts. Every write is one
 * short transaction, so the station's jobs and a `preauth flush` in another process share
 * the database without waiting on each other. */
#include "outbox.h"
#include "audit_int.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

/* The columns of a row as row_from_stmt reads them. */
#define OUTBOX_COLUMNS                                                                             \
	"o.id, o.cert_id, o.device_serial, o.common_name, o.identity, c.pubkey_pem, c.state, "     \
	"o.state, o.result, o.last_error, o.device_id, o.server, o.created_at, o.updated_at, "     \
	"o.sent_at, o.attempts, o.next_attempt_ms, o.claimed_by, o.claimed_until_ms "              \
	"FROM preauth_outbox o JOIN certificates c ON c.id = o.cert_id "

static void row_from_stmt(sqlite3_stmt *st, struct ps_outbox_row *row)
{
	int i = 0;

	row->id = sqlite3_column_int64(st, i++);
	row->cert_id = sqlite3_column_int64(st, i++);
	row->device_serial = db_col(st, i++);
	row->common_name = db_col(st, i++);
	row->identity = db_col(st, i++);
	row->pubkey_pem = db_col(st, i++);
	row->cert_state = db_col(st, i++);
	row->state = db_col(st, i++);
	row->result = db_col(st, i++);
	row->last_error = db_col(st, i++);
	row->device_id = db_col(st, i++);
	row->server = db_col(st, i++);
	row->created_at = db_col(st, i++);
	row->updated_at = db_col(st, i++);
	row->sent_at = db_col(st, i++);
	row->attempts = (long)sqlite3_column_int64(st, i++);
	row->next_attempt_ms = sqlite3_column_int64(st, i++);
	row->claimed_by = sqlite3_column_int64(st, i++);
	row->claimed_until_ms = sqlite3_column_int64(st, i);
}

/* Step a prepared query, calling fn for each row. */
static int each_row(struct ps_db *db, sqlite3_stmt *st, ps_outbox_fn fn, void *user,
		    const char *what, struct ps_err *err)
{
	struct ps_outbox_row row;
	int step, rc = 0;

	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		row_from_stmt(st, &row);
		rc = fn(&row, user);
		if (rc != 0)
			return rc < 0 ? rc : 0;
	}
	if (step != SQLITE_DONE)
		rc = db_fail(db, PS_EDB, what, err);
	return rc;
}

int ps_outbox_add(struct ps_db *db, int64_t cert_id, const char *identity, bool requeue,
		  const char *now, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc =
	    db_prepare(db,
		       "INSERT INTO preauth_outbox (cert_id, device_serial, common_name, identity, "
		       "state, created_at, updated_at) "
		       "SELECT id, device_serial, common_name, ?2, 'pending', ?3, ?3 "
		       "FROM certificates WHERE id = ?1 "
		       "ON CONFLICT (cert_id) DO UPDATE SET state = 'pending', "
		       "identity = excluded.identity, attempts = 0, next_attempt_ms = 0, "
		       "last_error = '', result = '', updated_at = excluded.updated_at WHERE ?4",
		       &st, "queueing a preauthorization", err);
	if (rc < 0)
		goto out;
	sqlite3_bind_int64(st, 1, cert_id);
	db_bind_text(st, 2, identity);
	db_bind_text(st, 3, now);
	sqlite3_bind_int(st, 4, requeue);
	if (sqlite3_step(st) != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "queueing a preauthorization", err);
		goto out;
	}
	sqlite3_finalize(st);
	st = NULL;
	/* Nothing inserted or updated: either the certificate does not exist, or it is queued
	 * already (and stays as it is). */
	rc = db_prepare(db, "SELECT 1 FROM preauth_outbox WHERE cert_id = ?", &st,
			"queueing a preauthorization", err);
	if (rc < 0)
		goto out;
	sqlite3_bind_int64(st, 1, cert_id);
	switch (sqlite3_step(st)) {
	case SQLITE_ROW:
		break;
	case SQLITE_DONE:
		rc = ps_fail(err, PS_ENOENT, "audit database %s has no certificate %lld", db->path,
			     (long long)cert_id);
		break;
	default:
		rc = db_fail(db, PS_EDB, "queueing a preauthorization", err);
	}
out:
	sqlite3_finalize(st);
	return rc;
}

int ps_outbox_newest_verified(struct ps_db *db, const char *device_serial, int64_t *cert_id,
			      char *common_name, size_t cn_len, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = db_prepare(db,
			"SELECT id, common_name FROM certificates WHERE device_serial = ? AND "
			"state = 'verified' ORDER BY id DESC LIMIT 1",
			&st, "finding the device's certificate", err);
	if (rc < 0)
		return rc;
	db_bind_text(st, 1, device_serial);
	switch (sqlite3_step(st)) {
	case SQLITE_ROW:
		*cert_id = sqlite3_column_int64(st, 0);
		snprintf(common_name, cn_len, "%s", db_col(st, 1));
		break;
	case SQLITE_DONE:
		rc = ps_fail(err, PS_ENOENT, "device %s has no verified certificate in %s",
			     device_serial, db->path);
		break;
	default:
		rc = db_fail(db, PS_EDB, "finding the device's certificate", err);
	}
	sqlite3_finalize(st);
	return rc;
}

int ps_outbox_sweep(struct ps_db *db, const char *now, long *cancelled, struct ps_err *err)
{
	static const char *const sweeps[] = {
	    "UPDATE preauth_outbox SET state = 'cancelled', updated_at = ?1, "
	    "last_error = 'the certificate is ' || (SELECT c.state FROM certificates c "
	    "WHERE c.id = preauth_outbox.cert_id) "
	    "WHERE state = 'pending' AND (SELECT c.state FROM certificates c WHERE c.id = "
	    "preauth_outbox.cert_id) IN ('failed', 'superseded', 'revoked')",
	    "UPDATE preauth_outbox SET state = 'cancelled', updated_at = ?1, "
	    "last_error = 'the device has a newer verified certificate' "
	    "WHERE state = 'pending' AND EXISTS (SELECT 1 FROM certificates n WHERE "
	    "n.device_serial = preauth_outbox.device_serial AND n.id > preauth_outbox.cert_id "
	    "AND n.state = 'verified')",
	};
	sqlite3_stmt *st = NULL;
	long n = 0;
	size_t i;
	int rc;

	rc = db_exec(db, "BEGIN IMMEDIATE", err);
	for (i = 0; rc == 0 && i < sizeof(sweeps) / sizeof(sweeps[0]); i++) {
		rc = db_prepare(db, sweeps[i], &st, "sweeping the preauthorization outbox", err);
		if (rc < 0)
			break;
		db_bind_text(st, 1, now);
		if (sqlite3_step(st) != SQLITE_DONE)
			rc = db_fail(db, PS_EDB, "sweeping the preauthorization outbox", err);
		else
			n += sqlite3_changes(db->sql);
		sqlite3_finalize(st);
		st = NULL;
	}
	if (rc == 0)
		rc = db_exec(db, "COMMIT", err);
	else
		db_rollback(db);
	if (cancelled != NULL)
		*cancelled = rc == 0 ? n : 0;
	return rc;
}

int ps_outbox_each_due(struct ps_db *db, int64_t now_ms, int64_t only_cert_id, ps_outbox_fn fn,
		       void *user, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = db_prepare(db,
			"SELECT " OUTBOX_COLUMNS
			"WHERE o.state = 'pending' AND c.state = 'verified' AND "
			"o.next_attempt_ms <= ?1 AND (?2 = 0 OR o.cert_id = ?2) "
			"ORDER BY o.next_attempt_ms, o.id",
			&st, "reading the preauthorization outbox", err);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(st, 1, now_ms);
	sqlite3_bind_int64(st, 2, only_cert_id);
	rc = each_row(db, st, fn, user, "reading the preauthorization outbox", err);
	sqlite3_finalize(st);
	return rc;
}

int ps_outbox_each(struct ps_db *db, const char *state, int64_t only_cert_id, ps_outbox_fn fn,
		   void *user, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = db_prepare(db,
			"SELECT " OUTBOX_COLUMNS "WHERE (?1 IS NULL OR o.state = ?1) AND "
			"(?2 = 0 OR o.cert_id = ?2) ORDER BY o.id",
			&st, "reading the preauthorization outbox", err);
	if (rc < 0)
		return rc;
	if (state != NULL)
		db_bind_text(st, 1, state);
	sqlite3_bind_int64(st, 2, only_cert_id);
	rc = each_row(db, st, fn, user, "reading the preauthorization outbox", err);
	sqlite3_finalize(st);
	return rc;
}

int ps_outbox_claim(struct ps_db *db, int64_t id, int64_t prev_owner, int64_t prev_until_ms,
		    int64_t owner, int64_t until_ms, bool *claimed, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	int rc;

	*claimed = false;
	rc = db_prepare(db,
			"UPDATE preauth_outbox SET claimed_by = ?1, claimed_until_ms = ?2 "
			"WHERE id = ?3 AND state = 'pending' AND claimed_by = ?4 AND "
			"claimed_until_ms = ?5",
			&st, "claiming a preauthorization", err);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(st, 1, owner);
	sqlite3_bind_int64(st, 2, until_ms);
	sqlite3_bind_int64(st, 3, id);
	sqlite3_bind_int64(st, 4, prev_owner);
	sqlite3_bind_int64(st, 5, prev_until_ms);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = db_fail(db, PS_EDB, "claiming a preauthorization", err);
	else
		*claimed = sqlite3_changes(db->sql) == 1;
	sqlite3_finalize(st);
	return rc;
}

int ps_outbox_finish(struct ps_db *db, int64_t id, int64_t owner, const struct ps_outbox_update *u,
		     const char *now, bool *applied, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	int rc;

	if (applied != NULL)
		*applied = false;
	rc = db_prepare(db,
			"UPDATE preauth_outbox SET state = ?1, result = ?2, "
			"device_id = CASE WHEN ?3 = '' THEN device_id ELSE ?3 END, "
			"last_error = ?4, server = ?5, attempts = attempts + ?6, "
			"next_attempt_ms = ?7, claimed_by = 0, claimed_until_ms = 0, "
			"updated_at = ?8, sent_at = CASE WHEN ?1 = 'done' THEN ?8 ELSE sent_at END "
			"WHERE id = ?9 AND claimed_by = ?10",
			&st, "recording a preauthorization", err);
	if (rc < 0)
		return rc;
	db_bind_text(st, 1, u->state);
	db_bind_text(st, 2, u->result);
	db_bind_text(st, 3, u->device_id);
	db_bind_text(st, 4, u->error);
	db_bind_text(st, 5, u->server);
	sqlite3_bind_int(st, 6, u->failed_attempt ? 1 : 0);
	sqlite3_bind_int64(st, 7, u->next_attempt_ms);
	db_bind_text(st, 8, now);
	sqlite3_bind_int64(st, 9, id);
	sqlite3_bind_int64(st, 10, owner);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = db_fail(db, PS_EDB, "recording a preauthorization", err);
	else if (applied != NULL)
		*applied = sqlite3_changes(db->sql) == 1;
	sqlite3_finalize(st);
	return rc;
}

int ps_outbox_counts(struct ps_db *db, int64_t only_cert_id, struct ps_outbox_counts *out,
		     struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = db_prepare(
	    db,
	    "SELECT "
	    "COALESCE(SUM(o.state = 'pending' AND c.state = 'verified'), 0), "
	    "COALESCE(SUM(o.state = 'pending' AND c.state IN ('issued', 'written')), 0), "
	    "COALESCE(SUM(o.state = 'pending' AND c.state = 'verified' AND o.last_error != ''), "
	    "0), "
	    "COALESCE(SUM(o.state = 'failed'), 0), COALESCE(SUM(o.state = 'done'), 0), "
	    "COALESCE(SUM(o.state = 'cancelled'), 0), "
	    "COALESCE(MIN(CASE WHEN o.state = 'pending' AND c.state = 'verified' "
	    "THEN o.next_attempt_ms END), 0), "
	    "(SELECT p.last_error FROM preauth_outbox p JOIN certificates pc ON "
	    "pc.id = p.cert_id WHERE p.state = 'pending' AND pc.state = 'verified' AND "
	    "p.last_error != '' AND (?1 = 0 OR p.cert_id = ?1) "
	    "ORDER BY p.updated_at DESC, p.id DESC LIMIT 1) "
	    "FROM preauth_outbox o JOIN certificates c ON c.id = o.cert_id "
	    "WHERE (?1 = 0 OR o.cert_id = ?1)",
	    &st, "counting the preauthorization outbox", err);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(st, 1, only_cert_id);
	if (sqlite3_step(st) != SQLITE_ROW) {
		rc = db_fail(db, PS_EDB, "counting the preauthorization outbox", err);
	} else {
		out->queued = (long)sqlite3_column_int64(st, 0);
		out->held = (long)sqlite3_column_int64(st, 1);
		out->retrying = (long)sqlite3_column_int64(st, 2);
		out->failed = (long)sqlite3_column_int64(st, 3);
		out->done = (long)sqlite3_column_int64(st, 4);
		out->cancelled = (long)sqlite3_column_int64(st, 5);
		out->next_attempt_ms = sqlite3_column_int64(st, 6);
		snprintf(out->last_error, sizeof(out->last_error), "%s", db_col(st, 7));
	}
	sqlite3_finalize(st);
	return rc;
}
