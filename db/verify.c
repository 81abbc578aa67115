/* verify.c — tamper evidence (see ps_db_verify in audit.h): the event chain checked row by
 * row, then every certificate replayed from its events and compared with its row, both in one
 * read snapshot. */
#include "audit.h"
#include "audit_int.h"
#include "export.h"
#include "util.h"

#include <jansson.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

/* A value for a message: itself when short and printable, else a note that it differs. */
static const char *shown(const char *v, char *buf, size_t len)
{
	const char *p;

	for (p = v; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20)
			break;
	if (*p != '\0' || strlen(v) > 40)
		return "(a longer value)";
	snprintf(buf, len, "'%s'", v);
	return buf;
}

static int verify_chain(struct ps_db *db, struct ps_db_verify_report *rep, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	char prev[65] = "", hash[65];
	int64_t expected = 1;
	int step, rc;

	rc = db_prepare(
	    db,
	    "SELECT seq, cert_id, at, station_id, operator, kind, detail, prev_hash, hash "
	    "FROM events ORDER BY seq",
	    &st, "reading the event chain", err);
	if (rc < 0)
		goto out;
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		int64_t seq = sqlite3_column_int64(st, 0);

		if (seq != expected) {
			rc = ps_fail(err, PS_EDB,
				     "audit chain broken: event seq %lld is missing (the next row "
				     "is seq %lld): rows were deleted or renumbered",
				     (long long)expected, (long long)seq);
			goto out;
		}
		if (strcmp(db_col(st, 7), prev) != 0) {
			rc = ps_fail(err, PS_EDB,
				     "audit chain broken at event seq %lld: it does not follow seq "
				     "%lld (its prev_hash is not that row's hash): rows were "
				     "reordered, inserted or deleted",
				     (long long)seq, (long long)(seq - 1));
			goto out;
		}
		rc = db_event_hash(prev, seq, sqlite3_column_int64(st, 1), db_col(st, 2),
				   db_col(st, 3), db_col(st, 4), db_col(st, 5), db_col(st, 6), hash,
				   err);
		if (rc == PS_ENOMEM)
			goto out;
		if (rc < 0 || strcmp(hash, db_col(st, 8)) != 0 ||
		    sqlite3_column_type(st, 1) != SQLITE_INTEGER) {
			rc = ps_fail(err, PS_EDB,
				     "audit chain broken at event seq %lld: the row was changed "
				     "(its hash does not match its content)",
				     (long long)seq);
			goto out;
		}
		memcpy(prev, hash, sizeof(prev));
		expected++;
	}
	if (step != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "reading the event chain", err);
		goto out;
	}
	rep->events = (long)(expected - 1);
	memcpy(rep->head, prev, sizeof(rep->head));
out:
	sqlite3_finalize(st);
	return rc;
}

/* A certificate as its events make it. */
struct replay {
	char *v[PS_N_COLUMNS];
	bool started;
	int64_t last_seq;
};

static void replay_clear(struct replay *r)
{
	size_t i;

	for (i = 0; i < PS_N_COLUMNS; i++) {
		free(r->v[i]);
		r->v[i] = NULL;
	}
	r->started = false;
}

static int replay_set(struct replay *r, enum ps_column c, const char *value, struct ps_err *err)
{
	free(r->v[c]);
	r->v[c] = strdup(value);
	return r->v[c] ? 0 : ps_fail(err, PS_ENOMEM, "out of memory");
}

/* Set column c from the detail's member of the same name. */
static int replay_from(struct replay *r, enum ps_column c, json_t *detail, int64_t seq,
		       struct ps_err *err)
{
	const char *v = json_string_value(json_object_get(detail, ps_export_columns[c]));

	if (v == NULL)
		return ps_fail(err, PS_EDB, "audit chain: event seq %lld lacks '%s' in its detail",
			       (long long)seq, ps_export_columns[c]);
	return replay_set(r, c, v, err);
}

static bool is_state(const char *kind)
{
	return strcmp(kind, PS_STATE_WRITTEN) == 0 || strcmp(kind, PS_STATE_VERIFIED) == 0 ||
	       strcmp(kind, PS_STATE_FAILED) == 0 || strcmp(kind, PS_STATE_SUPERSEDED) == 0 ||
	       strcmp(kind, PS_STATE_REVOKED) == 0;
}

/* Apply one event (seq, at, station_id, operator, kind, detail in st's columns 0, 2..6). */
static int replay_event(struct replay *r, sqlite3_stmt *st, int64_t cert_id, struct ps_err *err)
{
	int64_t seq = sqlite3_column_int64(st, 0);
	const char *at = db_col(st, 2), *kind = db_col(st, 5);
	json_t *detail = json_loads(db_col(st, 6), 0, NULL);
	size_t i;
	int rc = 0;

	if (!json_is_object(detail)) {
		rc = ps_fail(err, PS_EDB, "audit chain: event seq %lld has no JSON object detail",
			     (long long)seq);
		goto out;
	}
	if (strcmp(kind, PS_STATE_ISSUED) == 0) {
		replay_clear(r);
		for (i = 0; rc == 0 && i < DB_N_ISSUED_FIELDS; i++)
			rc = replay_from(r, db_issued_fields[i], detail, seq, err);
		if (rc == 0)
			rc = replay_set(r, PS_COL_STATION_ID, db_col(st, 3), err);
		if (rc == 0)
			rc = replay_set(r, PS_COL_OPERATOR, db_col(st, 4), err);
		if (rc == 0)
			rc = replay_set(r, PS_COL_STATE, PS_STATE_ISSUED, err);
		if (rc == 0)
			rc = replay_set(r, PS_COL_REASON, "", err);
		if (rc == 0)
			rc = replay_set(r, PS_COL_REVOKED_AT, "", err);
		if (rc == 0)
			rc = replay_set(r, PS_COL_CREATED_AT, at, err);
		if (rc == 0)
			rc = replay_set(r, PS_COL_UPDATED_AT, at, err);
	} else if (strcmp(kind, DB_KIND_IMPORTED) == 0) {
		replay_clear(r);
		for (i = 0; rc == 0 && i < PS_N_COLUMNS; i++)
			rc = replay_from(r, (enum ps_column)i, detail, seq, err);
	} else if (is_state(kind)) {
		if (!r->started) {
			rc = ps_fail(err, PS_EDB,
				     "audit chain: certificate id %lld starts with event seq %lld "
				     "(%s), not with its issue or import",
				     (long long)cert_id, (long long)seq, kind);
			goto out;
		}
		rc = replay_from(r, PS_COL_STATE, detail, seq, err);
		if (rc == 0 && strcmp(r->v[PS_COL_STATE], kind) != 0)
			rc = ps_fail(err, PS_EDB,
				     "audit chain: event seq %lld is '%s' but its detail says '%s'",
				     (long long)seq, kind, r->v[PS_COL_STATE]);
		if (rc == 0)
			rc = replay_from(r, PS_COL_REASON, detail, seq, err);
		if (rc == 0)
			rc = replay_set(r, PS_COL_UPDATED_AT, at, err);
		if (rc == 0 && strcmp(kind, PS_STATE_REVOKED) == 0)
			rc = replay_set(r, PS_COL_REVOKED_AT, at, err);
	} else {
		rc = ps_fail(err, PS_EDB, "audit chain: event seq %lld has an unknown kind '%s'",
			     (long long)seq, kind);
	}
	r->started = rc == 0;
	r->last_seq = seq;
out:
	json_decref(detail);
	return rc;
}

static int replay_compare(const struct replay *r, const struct ps_cert_row *row, struct ps_err *err)
{
	const char *have[PS_N_COLUMNS];
	char a[64], b[64];
	size_t i;

	ps_export_row_values(row, have);
	for (i = 0; i < PS_N_COLUMNS; i++)
		if (strcmp(have[i], r->v[i]) != 0)
			break;
	if (i == PS_N_COLUMNS)
		return 0;
	return ps_fail(err, PS_EDB,
		       "audit mismatch: certificate id %lld (cert serial %.40s) has %s %s, but its "
		       "events (last seq %lld) say %s: the row, or the events after it, were "
		       "changed outside provstation",
		       (long long)row->id, row->cert_serial, ps_export_columns[i],
		       shown(have[i], a, sizeof(a)), (long long)r->last_seq,
		       shown(r->v[i], b, sizeof(b)));
}

static int verify_rows(struct ps_db *db, struct ps_db_verify_report *rep, struct ps_err *err)
{
	sqlite3_stmt *certs = NULL, *events = NULL;
	struct replay r;
	int ev_step = SQLITE_DONE, c_step, rc;

	memset(&r, 0, sizeof(r));
	rc = db_prepare(db, "SELECT " DB_ROW_COLUMNS " FROM certificates ORDER BY id", &certs,
			"reading certificates", err);
	if (rc == 0)
		rc = db_prepare(db,
				"SELECT seq, cert_id, at, station_id, operator, kind, detail FROM "
				"events ORDER BY cert_id, seq",
				&events, "reading the event chain", err);
	if (rc < 0)
		goto out;
	ev_step = sqlite3_step(events);
	while ((c_step = sqlite3_step(certs)) == SQLITE_ROW) {
		struct ps_cert_row row;

		db_row_from_stmt(certs, 0, &row);
		replay_clear(&r);
		if (ev_step == SQLITE_ROW && sqlite3_column_int64(events, 1) < row.id)
			break; /* an event of a certificate that is gone: reported below */
		while (rc == 0 && ev_step == SQLITE_ROW &&
		       sqlite3_column_int64(events, 1) == row.id) {
			rc = replay_event(&r, events, row.id, err);
			ev_step = sqlite3_step(events);
		}
		if (rc < 0)
			goto out;
		if (!r.started) {
			rc = ps_fail(err, PS_EDB,
				     "audit mismatch: certificate id %lld (cert serial %.40s) has "
				     "no events: it was inserted outside provstation",
				     (long long)row.id, row.cert_serial);
			goto out;
		}
		rc = replay_compare(&r, &row, err);
		if (rc < 0)
			goto out;
		rep->certificates++;
	}
	if (ev_step == SQLITE_ROW) {
		rc = ps_fail(err, PS_EDB,
			     "audit mismatch: event seq %lld names certificate id %lld, which is "
			     "not in the certificates table: the row was deleted",
			     (long long)sqlite3_column_int64(events, 0),
			     (long long)sqlite3_column_int64(events, 1));
		goto out;
	}
	if (ev_step != SQLITE_DONE || (c_step != SQLITE_DONE && c_step != SQLITE_ROW))
		rc = db_fail(db, PS_EDB, "reading the audit rows", err);
out:
	replay_clear(&r);
	sqlite3_finalize(certs);
	sqlite3_finalize(events);
	return rc;
}

int ps_db_verify(struct ps_db *db, struct ps_db_verify_report *rep, struct ps_err *err)
{
	int rc;

	memset(rep, 0, sizeof(*rep));
	/* One read transaction: both passes see the same snapshot while stations write. */
	rc = db_exec(db, "BEGIN", err);
	if (rc < 0)
		return rc;
	rc = verify_chain(db, rep, err);
	if (rc == 0)
		rc = verify_rows(db, rep, err);
	db_rollback(db);
	return rc;
}
