/* audit.c — the audit store in SQLite (see audit.h): schema and migrations, issuance rows
 * committed durably, the certificate lifecycle as hash-chained events, revocation and CRL
 * numbers, online backup, merging imported rows, streaming queries. Chain verification is in
 * verify.c. */
#include "audit.h"
#include "audit_int.h"
#include "export.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCHEMA_VERSION	4
#define BUSY_MS_DEFAULT 5000

static const char *const migrations[SCHEMA_VERSION] = {
    /* 1: certificates, their event chain, CRL numbering */
    "CREATE TABLE certificates ("
    "  id INTEGER PRIMARY KEY,"
    "  device_serial TEXT NOT NULL,"
    "  common_name TEXT NOT NULL,"
    "  pubkey_pem TEXT NOT NULL,"
    "  pubkey_sha256 TEXT NOT NULL,"
    "  cert_serial TEXT NOT NULL,"
    "  cert_pem TEXT NOT NULL,"
    "  not_before TEXT NOT NULL,"
    "  not_after TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN ('issued','written','verified','failed',"
    "                                       'superseded','revoked')),"
    "  reason TEXT NOT NULL DEFAULT '',"
    "  revoked_at TEXT NOT NULL DEFAULT '',"
    "  station_id TEXT NOT NULL,"
    "  operator TEXT NOT NULL,"
    "  batch TEXT NOT NULL DEFAULT '',"
    "  ca_fingerprint TEXT NOT NULL,"
    "  target TEXT NOT NULL DEFAULT '',"
    "  image_name TEXT NOT NULL DEFAULT '',"
    "  image_sha256 TEXT NOT NULL DEFAULT '',"
    "  created_at TEXT NOT NULL,"
    "  updated_at TEXT NOT NULL,"
    "  UNIQUE (ca_fingerprint, cert_serial)"
    ");"
    "CREATE INDEX certificates_device ON certificates(device_serial);"
    "CREATE INDEX certificates_cn ON certificates(common_name);"
    "CREATE INDEX certificates_created ON certificates(created_at);"
    "CREATE TABLE events ("
    "  seq INTEGER PRIMARY KEY,"
    "  cert_id INTEGER NOT NULL REFERENCES certificates(id),"
    "  at TEXT NOT NULL,"
    "  station_id TEXT NOT NULL,"
    "  operator TEXT NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  detail TEXT NOT NULL,"
    "  prev_hash TEXT NOT NULL,"
    "  hash TEXT NOT NULL"
    ");"
    "CREATE INDEX events_cert ON events(cert_id);"
    "CREATE TABLE crl_numbers (ca_fingerprint TEXT PRIMARY KEY, last INTEGER NOT NULL);",
    /* 2: revocation looks certificates up by their serial alone */
    "CREATE INDEX certificates_serial ON certificates(cert_serial);",
    /* 3: the preauthorization outbox (db/outbox.c): one row per certificate to preauthorize
     * on the Mender server, its attempts, and the device id the server gave it */
    "CREATE TABLE preauth_outbox ("
    "  id INTEGER PRIMARY KEY,"
    "  cert_id INTEGER NOT NULL UNIQUE REFERENCES certificates(id),"
    "  device_serial TEXT NOT NULL,"
    "  common_name TEXT NOT NULL,"
    "  identity TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN ('pending','done','failed','cancelled')),"
    "  result TEXT NOT NULL DEFAULT '',"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  next_attempt_ms INTEGER NOT NULL DEFAULT 0,"
    "  claimed_by INTEGER NOT NULL DEFAULT 0,"
    "  claimed_until_ms INTEGER NOT NULL DEFAULT 0,"
    "  last_error TEXT NOT NULL DEFAULT '',"
    "  device_id TEXT NOT NULL DEFAULT '',"
    "  server TEXT NOT NULL DEFAULT '',"
    "  created_at TEXT NOT NULL,"
    "  updated_at TEXT NOT NULL,"
    "  sent_at TEXT NOT NULL DEFAULT ''"
    ");"
    "CREATE INDEX preauth_outbox_due ON preauth_outbox(state, next_attempt_ms);"
    "CREATE INDEX preauth_outbox_device ON preauth_outbox(device_serial);",
    /* 4: serials handed out by sequences (db/sequence.c), reserved before they are used */
    "CREATE TABLE serial_sequence ("
    "  id INTEGER PRIMARY KEY,"
    "  prefix TEXT NOT NULL,"
    "  number INTEGER NOT NULL,"
    "  serial TEXT NOT NULL UNIQUE,"
    "  station_id TEXT NOT NULL,"
    "  operator TEXT NOT NULL,"
    "  target TEXT NOT NULL DEFAULT '',"
    "  reserved_at TEXT NOT NULL,"
    "  UNIQUE (prefix, number)"
    ");",
};

int db_fail(struct ps_db *db, int code, const char *what, struct ps_err *err)
{
	int sqlite_code = sqlite3_errcode(db->sql);

	if (sqlite_code == SQLITE_BUSY || sqlite_code == SQLITE_LOCKED)
		return ps_fail(err, PS_EBUSY,
			       "audit database %s is busy (another process holds it); try again",
			       db->path);
	return ps_fail(err, code, "audit database %s: %s: %s", db->path, what,
		       sqlite3_errmsg(db->sql));
}

int db_exec(struct ps_db *db, const char *sql, struct ps_err *err)
{
	if (sqlite3_exec(db->sql, sql, NULL, NULL, NULL) != SQLITE_OK)
		return db_fail(db, PS_EDB, sql, err);
	return 0;
}

void db_rollback(struct ps_db *db)
{
	sqlite3_exec(db->sql, "ROLLBACK", NULL, NULL, NULL);
}

int db_prepare(struct ps_db *db, const char *sql, sqlite3_stmt **st, const char *what,
	       struct ps_err *err)
{
	if (sqlite3_prepare_v2(db->sql, sql, -1, st, NULL) != SQLITE_OK)
		return db_fail(db, PS_EDB, what, err);
	return 0;
}

int db_bind_text(sqlite3_stmt *st, int idx, const char *value)
{
	return sqlite3_bind_text(st, idx, value ? value : "", -1, SQLITE_TRANSIENT);
}

const char *db_col(sqlite3_stmt *st, int i)
{
	const unsigned char *v = sqlite3_column_text(st, i);

	return v ? (const char *)v : "";
}

/* A row read with DB_ROW_COLUMNS from column `first` on; valid until the next step. */
void db_row_from_stmt(sqlite3_stmt *st, int first, struct ps_cert_row *row)
{
	int i = first;

	row->id = sqlite3_column_int64(st, i++);
	row->device_serial = db_col(st, i++);
	row->common_name = db_col(st, i++);
	row->pubkey_pem = db_col(st, i++);
	row->pubkey_sha256 = db_col(st, i++);
	row->cert_serial = db_col(st, i++);
	row->cert_pem = db_col(st, i++);
	row->not_before = db_col(st, i++);
	row->not_after = db_col(st, i++);
	row->state = db_col(st, i++);
	row->reason = db_col(st, i++);
	row->revoked_at = db_col(st, i++);
	row->station_id = db_col(st, i++);
	row->operator_name = db_col(st, i++);
	row->batch = db_col(st, i++);
	row->ca_fingerprint = db_col(st, i++);
	row->target = db_col(st, i++);
	row->image_name = db_col(st, i++);
	row->image_sha256 = db_col(st, i++);
	row->created_at = db_col(st, i++);
	row->updated_at = db_col(st, i);
}

/* ---------------------------------------------------------------------------------------- */
/* Text that goes into the chain's JSON must be UTF-8: a free-text value from outside (a     */
/* target path, a failure reason) is stored with each invalid byte replaced by U+FFFD, the   */
/* same in the row and in its event.                                                         */

/* Up to 24 cleaned copies of strings, freed together. */
struct texts {
	char *v[24];
	size_t n;
};

static const char *clean(struct texts *t, const char *s)
{
	const unsigned char *p;
	char *out, *q;

	if (s == NULL)
		s = "";
	if (t->n == PS_ARRAY_SIZE(t->v) || (out = malloc(strlen(s) * 3 + 1)) == NULL)
		return NULL;
	for (p = (const unsigned char *)s, q = out; *p != '\0';) {
		size_t n = ps_utf8_len(p);

		if (n == 0) {
			memcpy(q, "\xef\xbf\xbd", 3);
			q += 3;
			p++;
		} else {
			memcpy(q, p, n);
			q += n;
			p += n;
		}
	}
	*q = '\0';
	t->v[t->n++] = out;
	return out;
}

static void texts_free(struct texts *t)
{
	while (t->n > 0)
		free(t->v[--t->n]);
}

/* ---------------------------------------------------------------------------------------- */

static int user_version(struct ps_db *db, int *version, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	int rc = 0;

	if (sqlite3_prepare_v2(db->sql, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW)
		rc = db_fail(db, PS_EDB, "reading the schema version", err);
	else
		*version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return rc;
}

static int migrate(struct ps_db *db, struct ps_err *err)
{
	char sql[64];
	int version = 0;
	int rc = user_version(db, &version, err);

	if (rc < 0)
		return rc;
	if (version > SCHEMA_VERSION)
		return ps_fail(err, PS_EDB,
			       "audit database %s has schema %d, newer than this provstation (%d)",
			       db->path, version, SCHEMA_VERSION);
	if (version == SCHEMA_VERSION)
		return 0;
	rc = db_exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0)
		return rc;
	/* Re-read inside the write lock: another process may have migrated meanwhile. */
	rc = user_version(db, &version, err);
	while (rc == 0 && version < SCHEMA_VERSION) {
		rc = db_exec(db, migrations[version], err);
		version++;
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version);
		if (rc == 0)
			rc = db_exec(db, sql, err);
	}
	if (rc == 0)
		return db_exec(db, "COMMIT", err);
	db_rollback(db);
	return rc;
}

int ps_db_open(const char *path, struct ps_db **out, struct ps_err *err)
{
	struct ps_db *db = calloc(1, sizeof(*db));
	const char *busy_env = getenv(PS_DB_BUSY_ENV);
	long busy_ms = BUSY_MS_DEFAULT;
	char dir[PATH_MAX];
	char *slash;
	int rc = 0;

	*out = NULL;
	if (db == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	if (path == NULL || *path == '\0') {
		rc =
		    ps_fail(err, PS_EINVAL, "no audit database given (--db or [station] database)");
		goto out;
	}
	if (busy_env != NULL && *busy_env != '\0') {
		rc = ps_parse_int(PS_DB_BUSY_ENV, busy_env, 0, 3600000, &busy_ms, err);
		if (rc < 0)
			goto out;
	}
	snprintf(db->path, sizeof(db->path), "%s", path);
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash != NULL && slash != dir) {
		*slash = '\0';
		rc = ps_mkdir_p(dir, 0700, err);
		if (rc < 0)
			goto out;
	}
	if (sqlite3_open_v2(path, &db->sql, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
	    SQLITE_OK) {
		rc = db_fail(db, PS_EDB, "opening", err);
		goto out;
	}
	sqlite3_busy_timeout(db->sql, (int)busy_ms);
	/* Leave checkpoints to SQLite's automatic ones: closing stays cheap. */
	sqlite3_db_config(db->sql, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
	sqlite3_extended_result_codes(db->sql, 0);
	rc = db_exec(db, "PRAGMA journal_mode = WAL", err);
	if (rc == 0)
		rc = db_exec(db, "PRAGMA synchronous = FULL", err);
	if (rc == 0)
		rc = db_exec(db, "PRAGMA foreign_keys = ON", err);
	if (rc == 0)
		rc = migrate(db, err);
	if (rc < 0)
		goto out;
	*out = db;
	db = NULL;
out:
	ps_db_close(db);
	return rc;
}

void ps_db_close(struct ps_db *db)
{
	if (db == NULL)
		return;
	sqlite3_close(db->sql);
	free(db);
}

int ps_db_check_integrity(struct ps_db *db, bool quick, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	char first[512] = "";
	long problems = 0;
	int step, rc;

	rc = db_prepare(db, quick ? "PRAGMA quick_check" : "PRAGMA integrity_check", &st,
			"checking integrity", err);
	if (rc < 0)
		goto out;
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		const char *line = db_col(st, 0);

		if (strcmp(line, "ok") == 0)
			continue;
		if (problems++ == 0)
			snprintf(first, sizeof(first), "%s", line);
	}
	if (step != SQLITE_DONE) {
		rc = ps_fail(err, PS_EDB,
			     "audit database %s failed SQLite's integrity check (%s); restore it "
			     "from a backup",
			     db->path, sqlite3_errmsg(db->sql));
		goto out;
	}
	if (problems > 0)
		rc =
		    ps_fail(err, PS_EDB,
			    "audit database %s failed SQLite's integrity check (%ld problem%s, the "
			    "first: %s); restore it from a backup",
			    db->path, problems, problems == 1 ? "" : "s", first);
out:
	sqlite3_finalize(st);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* The event chain. hash = SHA-256(prev_hash "\n" canonical), canonical being the compact    */
/* JSON array [seq, cert_id, at, station_id, operator, kind, detail].                        */

int db_event_hash(const char *prev, int64_t seq, int64_t cert_id, const char *at,
		  const char *station, const char *operator_name, const char *kind,
		  const char *detail, char out[65], struct ps_err *err)
{
	json_t *event = json_pack("[I, I, s, s, s, s, s]", (json_int_t)seq, (json_int_t)cert_id, at,
				  station, operator_name, kind, detail);
	char *canonical = NULL, *hashed = NULL;
	int rc = 0;

	if (event == NULL) { /* a field that is not UTF-8 */
		rc = ps_fail(err, PS_EINVAL, "an event field is not valid UTF-8");
		goto out;
	}
	canonical = json_dumps(event, JSON_COMPACT);
	if (canonical == NULL || asprintf(&hashed, "%s\n%s", prev, canonical) < 0) {
		hashed = NULL;
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	rc = ps_sha256_hex(hashed, strlen(hashed), out, err);
out:
	json_decref(event);
	free(canonical);
	free(hashed);
	return rc;
}

/* Append an event to the chain (inside the caller's transaction). */
int db_append_event(struct ps_db *db, int64_t cert_id, const char *at, const char *kind,
		    json_t *detail, const struct ps_audit_context *ctx, struct ps_err *err)
{
	struct texts t = {.n = 0};
	sqlite3_stmt *st = NULL;
	char prev[65] = "";
	char hash[65];
	const char *station = clean(&t, ctx->station_id);
	const char *operator_name = clean(&t, ctx->operator_name);
	char *detail_text = NULL;
	int64_t seq = 1;
	int rc;

	rc = db_prepare(db, "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1", &st,
			"reading the event chain", err);
	if (rc < 0)
		goto out;
	switch (sqlite3_step(st)) {
	case SQLITE_ROW:
		seq = sqlite3_column_int64(st, 0) + 1;
		snprintf(prev, sizeof(prev), "%s", db_col(st, 1));
		break;
	case SQLITE_DONE:
		break;
	default:
		rc = db_fail(db, PS_EDB, "reading the event chain", err);
		goto out;
	}
	sqlite3_finalize(st);
	st = NULL;
	detail_text = json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS);
	if (detail_text == NULL || station == NULL || operator_name == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	rc = db_event_hash(prev, seq, cert_id, at, station, operator_name, kind, detail_text, hash,
			   err);
	if (rc < 0)
		goto out;
	rc = db_prepare(db,
			"INSERT INTO events (seq, cert_id, at, station_id, operator, kind, detail, "
			"prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
			&st, "recording an event", err);
	if (rc < 0)
		goto out;
	sqlite3_bind_int64(st, 1, seq);
	sqlite3_bind_int64(st, 2, cert_id);
	db_bind_text(st, 3, at);
	db_bind_text(st, 4, station);
	db_bind_text(st, 5, operator_name);
	db_bind_text(st, 6, kind);
	db_bind_text(st, 7, detail_text);
	db_bind_text(st, 8, prev);
	db_bind_text(st, 9, hash);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = db_fail(db, PS_EDB, "recording an event", err);
out:
	sqlite3_finalize(st);
	free(detail_text);
	texts_free(&t);
	return rc;
}

/* The fields of the issued event's detail: what never changes about a certificate. */
const enum ps_column db_issued_fields[DB_N_ISSUED_FIELDS] = {
    PS_COL_DEVICE_SERIAL, PS_COL_COMMON_NAME,	 PS_COL_PUBKEY_PEM, PS_COL_PUBKEY_SHA256,
    PS_COL_CERT_SERIAL,	  PS_COL_CERT_PEM,	 PS_COL_NOT_BEFORE, PS_COL_NOT_AFTER,
    PS_COL_BATCH,	  PS_COL_CA_FINGERPRINT, PS_COL_TARGET,	    PS_COL_IMAGE_NAME,
    PS_COL_IMAGE_SHA256,
};

int ps_db_record_issued(struct ps_db *db, const struct ps_audit_context *ctx,
			const struct ps_issue_record *rec, int64_t *id, struct ps_err *err)
{
	struct texts t = {.n = 0};
	const char *v[PS_N_COLUMNS] = {NULL};
	sqlite3_stmt *st = NULL;
	char now[32], nb[32], na[32];
	json_t *detail = NULL;
	size_t i;
	int rc;

	ps_format_time(ps_now(), now);
	ps_format_time(rec->not_before, nb);
	ps_format_time(rec->not_after, na);
	v[PS_COL_DEVICE_SERIAL] = clean(&t, rec->device_serial);
	v[PS_COL_COMMON_NAME] = clean(&t, rec->common_name);
	v[PS_COL_PUBKEY_PEM] = clean(&t, rec->pubkey_pem);
	v[PS_COL_PUBKEY_SHA256] = clean(&t, rec->pubkey_sha256);
	v[PS_COL_CERT_SERIAL] = clean(&t, rec->cert_serial);
	v[PS_COL_CERT_PEM] = clean(&t, rec->cert_pem);
	v[PS_COL_NOT_BEFORE] = nb;
	v[PS_COL_NOT_AFTER] = na;
	v[PS_COL_STATION_ID] = clean(&t, ctx->station_id);
	v[PS_COL_OPERATOR] = clean(&t, ctx->operator_name);
	v[PS_COL_BATCH] = clean(&t, ctx->batch);
	v[PS_COL_CA_FINGERPRINT] = clean(&t, ctx->ca_fingerprint);
	v[PS_COL_TARGET] = clean(&t, rec->target);
	v[PS_COL_IMAGE_NAME] = clean(&t, rec->image_name);
	v[PS_COL_IMAGE_SHA256] = clean(&t, rec->image_sha256);
	detail = json_object();
	for (i = 0; detail != NULL && i < DB_N_ISSUED_FIELDS; i++) {
		enum ps_column c = db_issued_fields[i];

		if (v[c] == NULL ||
		    json_object_set_new(detail, ps_export_columns[c], json_string(v[c])) != 0) {
			json_decref(detail);
			detail = NULL;
		}
	}
	if (detail == NULL || v[PS_COL_STATION_ID] == NULL || v[PS_COL_OPERATOR] == NULL) {
		texts_free(&t);
		json_decref(detail);
		return ps_fail(err, PS_ENOMEM, "out of memory");
	}
	rc = db_exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0) {
		texts_free(&t);
		json_decref(detail);
		return rc;
	}
	rc = db_prepare(db,
			"INSERT INTO certificates (device_serial, common_name, pubkey_pem, "
			"pubkey_sha256, cert_serial, cert_pem, not_before, not_after, state, "
			"station_id, operator, batch, ca_fingerprint, target, image_name, "
			"image_sha256, created_at, updated_at) "
			"VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'issued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
			&st, "recording a certificate", err);
	if (rc < 0)
		goto out;
	db_bind_text(st, 1, v[PS_COL_DEVICE_SERIAL]);
	db_bind_text(st, 2, v[PS_COL_COMMON_NAME]);
	db_bind_text(st, 3, v[PS_COL_PUBKEY_PEM]);
	db_bind_text(st, 4, v[PS_COL_PUBKEY_SHA256]);
	db_bind_text(st, 5, v[PS_COL_CERT_SERIAL]);
	db_bind_text(st, 6, v[PS_COL_CERT_PEM]);
	db_bind_text(st, 7, nb);
	db_bind_text(st, 8, na);
	db_bind_text(st, 9, v[PS_COL_STATION_ID]);
	db_bind_text(st, 10, v[PS_COL_OPERATOR]);
	db_bind_text(st, 11, v[PS_COL_BATCH]);
	db_bind_text(st, 12, v[PS_COL_CA_FINGERPRINT]);
	db_bind_text(st, 13, v[PS_COL_TARGET]);
	db_bind_text(st, 14, v[PS_COL_IMAGE_NAME]);
	db_bind_text(st, 15, v[PS_COL_IMAGE_SHA256]);
	db_bind_text(st, 16, now);
	db_bind_text(st, 17, now);
	if (sqlite3_step(st) != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "recording a certificate", err);
		goto out;
	}
	*id = sqlite3_last_insert_rowid(db->sql);
	rc = db_append_event(db, *id, now, PS_STATE_ISSUED, detail, ctx, err);
	if (rc == 0)
		rc = db_exec(db, "COMMIT", err);
out:
	sqlite3_finalize(st);
	json_decref(detail);
	texts_free(&t);
	if (rc < 0)
		db_rollback(db);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* The lifecycle.                                                                            */

static const char *const lifecycle[][2] = {
    {PS_STATE_ISSUED, PS_STATE_WRITTEN},      {PS_STATE_ISSUED, PS_STATE_FAILED},
    {PS_STATE_ISSUED, PS_STATE_SUPERSEDED},   {PS_STATE_ISSUED, PS_STATE_REVOKED},
    {PS_STATE_WRITTEN, PS_STATE_VERIFIED},    {PS_STATE_WRITTEN, PS_STATE_FAILED},
    {PS_STATE_WRITTEN, PS_STATE_SUPERSEDED},  {PS_STATE_WRITTEN, PS_STATE_REVOKED},
    {PS_STATE_VERIFIED, PS_STATE_SUPERSEDED}, {PS_STATE_VERIFIED, PS_STATE_REVOKED},
    {PS_STATE_FAILED, PS_STATE_REVOKED},      {PS_STATE_SUPERSEDED, PS_STATE_REVOKED},
};

bool ps_db_transition_allowed(const char *from, const char *to)
{
	size_t i;

	for (i = 0; i < PS_ARRAY_SIZE(lifecycle); i++)
		if (strcmp(lifecycle[i][0], from) == 0 && strcmp(lifecycle[i][1], to) == 0)
			return true;
	return false;
}

/* Move certificate id to state (inside the caller's transaction): the row and one event.
 * by, when not NULL, names the certificate that supersedes this one (kept in the event). */
static int transition(struct ps_db *db, int64_t id, const char *state, const char *reason,
		      const char *by, const char *now, const struct ps_audit_context *ctx,
		      bool restate, struct ps_err *err)
{
	struct texts t = {.n = 0};
	sqlite3_stmt *st = NULL;
	json_t *detail = NULL;
	char from[32] = "";
	bool revoked = strcmp(state, PS_STATE_REVOKED) == 0;
	const char *why;
	int rc;

	if (reason == NULL || (revoked && *reason == '\0'))
		reason = revoked ? "unspecified" : "";
	why = clean(&t, reason);
	if (why == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	rc = db_prepare(db, "SELECT state FROM certificates WHERE id = ?", &st,
			"reading a certificate", err);
	if (rc < 0)
		goto out;
	sqlite3_bind_int64(st, 1, id);
	switch (sqlite3_step(st)) {
	case SQLITE_ROW:
		snprintf(from, sizeof(from), "%s", db_col(st, 0));
		break;
	case SQLITE_DONE:
		rc = ps_fail(err, PS_ENOENT, "audit database %s has no certificate %lld", db->path,
			     (long long)id);
		goto out;
	default:
		rc = db_fail(db, PS_EDB, "reading a certificate", err);
		goto out;
	}
	sqlite3_finalize(st);
	st = NULL;
	if (restate ? strcmp(from, state) != 0 : !ps_db_transition_allowed(from, state)) {
		rc = ps_fail(err, PS_EINVAL, "certificate %lld is %s; it cannot become %s",
			     (long long)id, from, state);
		goto out;
	}
	rc = db_prepare(db,
			"UPDATE certificates SET state = ?, reason = ?, updated_at = ?, "
			"revoked_at = CASE WHEN ? THEN ? ELSE revoked_at END WHERE id = ?",
			&st, "updating a certificate", err);
	if (rc < 0)
		goto out;
	db_bind_text(st, 1, state);
	db_bind_text(st, 2, why);
	db_bind_text(st, 3, now);
	sqlite3_bind_int(st, 4, revoked);
	db_bind_text(st, 5, now);
	sqlite3_bind_int64(st, 6, id);
	if (sqlite3_step(st) != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "updating a certificate", err);
		goto out;
	}
	detail = json_pack("{s:s, s:s}", "state", state, "reason", why);
	if (detail == NULL ||
	    (by != NULL && json_object_set_new(detail, "by", json_string(by)) != 0)) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	rc = db_append_event(db, id, now, state, detail, ctx, err);
out:
	sqlite3_finalize(st);
	json_decref(detail);
	texts_free(&t);
	return rc;
}

/* One transition in its own write transaction. */
static int transition_tx(struct ps_db *db, int64_t id, const char *state, const char *reason,
			 const struct ps_audit_context *ctx, bool restate, struct ps_err *err)
{
	char now[32];
	int rc;

	ps_format_time(ps_now(), now);
	rc = db_exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0)
		return rc;
	rc = transition(db, id, state, reason, NULL, now, ctx, restate, err);
	if (rc == 0)
		rc = db_exec(db, "COMMIT", err);
	if (rc < 0)
		db_rollback(db);
	return rc;
}

int ps_db_set_state(struct ps_db *db, int64_t id, const char *state, const char *reason,
		    const struct ps_audit_context *ctx, struct ps_err *err)
{
	return transition_tx(db, id, state, reason, ctx, false, err);
}

int ps_db_restate_failure(struct ps_db *db, int64_t id, const char *reason,
			  const struct ps_audit_context *ctx, struct ps_err *err)
{
	return transition_tx(db, id, PS_STATE_FAILED, reason, ctx, true, err);
}

/* A growable list of row ids. */
struct ids {
	int64_t *v;
	bool *flag;
	size_t n, cap;
};

static int ids_add(struct ids *ids, int64_t id, bool flag, struct ps_err *err)
{
	if (ids->n == ids->cap) {
		size_t cap = ids->cap ? ids->cap * 2 : 8;
		int64_t *v = realloc(ids->v, cap * sizeof(*v));
		bool *f;

		if (v == NULL)
			return ps_fail(err, PS_ENOMEM, "out of memory");
		ids->v = v;
		f = realloc(ids->flag, cap * sizeof(*f));
		if (f == NULL)
			return ps_fail(err, PS_ENOMEM, "out of memory");
		ids->flag = f;
		ids->cap = cap;
	}
	ids->v[ids->n] = id;
	ids->flag[ids->n] = flag;
	ids->n++;
	return 0;
}

static void ids_free(struct ids *ids)
{
	free(ids->v);
	free(ids->flag);
}

int ps_db_supersede(struct ps_db *db, const char *device_serial, int64_t keep_id, bool revoke,
		    const struct ps_audit_context *ctx, struct ps_err *err)
{
	struct ids ids = {NULL, NULL, 0, 0};
	sqlite3_stmt *st = NULL;
	char now[32], by[96] = "", reason[128];
	size_t i;
	int step, rc;

	ps_format_time(ps_now(), now);
	rc = db_exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0)
		return rc;
	rc = db_prepare(db, "SELECT cert_serial, device_serial FROM certificates WHERE id = ?", &st,
			"reading a certificate", err);
	if (rc < 0)
		goto out;
	sqlite3_bind_int64(st, 1, keep_id);
	step = sqlite3_step(st);
	if (step == SQLITE_DONE) {
		rc = ps_fail(err, PS_ENOENT, "audit database %s has no certificate %lld", db->path,
			     (long long)keep_id);
		goto out;
	}
	if (step != SQLITE_ROW) {
		rc = db_fail(db, PS_EDB, "reading a certificate", err);
		goto out;
	}
	if (strcmp(db_col(st, 1), device_serial) != 0) {
		rc = ps_fail(err, PS_EINVAL, "certificate %lld belongs to device '%s', not '%s'",
			     (long long)keep_id, db_col(st, 1), device_serial);
		goto out;
	}
	snprintf(by, sizeof(by), "%s", db_col(st, 0));
	sqlite3_finalize(st);
	rc = db_prepare(db,
			"SELECT id FROM certificates WHERE device_serial = ? AND id != ? AND "
			"state IN ('issued', 'written', 'verified') ORDER BY id",
			&st, "listing a device's certificates", err);
	if (rc < 0)
		goto out;
	db_bind_text(st, 1, device_serial);
	sqlite3_bind_int64(st, 2, keep_id);
	while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW)
		rc = ids_add(&ids, sqlite3_column_int64(st, 0), false, err);
	if (rc == 0 && step != SQLITE_DONE)
		rc = db_fail(db, PS_EDB, "listing a device's certificates", err);
	if (rc < 0)
		goto out;
	snprintf(reason, sizeof(reason), "by %s", by);
	for (i = 0; rc == 0 && i < ids.n; i++)
		rc = transition(db, ids.v[i], revoke ? PS_STATE_REVOKED : PS_STATE_SUPERSEDED,
				revoke ? "superseded" : reason, by, now, ctx, false, err);
	if (rc == 0)
		rc = db_exec(db, "COMMIT", err);
out:
	sqlite3_finalize(st);
	ids_free(&ids);
	if (rc < 0)
		db_rollback(db);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Queries.                                                                                  */

int ps_db_each(struct ps_db *db, const struct ps_db_filter *filter, ps_row_fn fn, void *user,
	       struct ps_err *err)
{
	static const struct ps_db_filter none;
	char sql[2048];
	char since[32] = "", until[32] = "";
	const char *binds[16];
	int n_binds = 0, i, step;
	sqlite3_stmt *st = NULL;
	int rc = 0;

	if (filter == NULL)
		filter = &none;
	snprintf(sql, sizeof(sql), "SELECT " DB_ROW_COLUMNS " FROM certificates WHERE 1");
#define FILTER(value, clause)                                                                      \
	do {                                                                                       \
		if ((value) != NULL && (value)[0] != '\0') {                                       \
			strncat(sql, clause, sizeof(sql) - strlen(sql) - 1);                       \
			binds[n_binds++] = (value);                                                \
		}                                                                                  \
	} while (0)
	if (filter->since)
		ps_format_time(filter->since, since);
	if (filter->until)
		ps_format_time(filter->until, until);
	FILTER(since, " AND created_at >= ?");
	FILTER(until, " AND created_at < ?");
	FILTER(filter->state, " AND state = ?");
	FILTER(filter->station_id, " AND station_id = ?");
	FILTER(filter->batch, " AND batch = ?");
	FILTER(filter->device_serial, " AND device_serial = ?");
	FILTER(filter->common_name, " AND common_name = ?");
	FILTER(filter->cert_serial, " AND cert_serial = ?");
	FILTER(filter->ca_fingerprint, " AND ca_fingerprint = ?");
#undef FILTER
	if (filter->id != 0)
		snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), " AND id = %lld",
			 (long long)filter->id);
	strncat(sql, filter->newest_first ? " ORDER BY id DESC" : " ORDER BY id",
		sizeof(sql) - strlen(sql) - 1);
	rc = db_prepare(db, sql, &st, "listing certificates", err);
	if (rc < 0)
		goto out;
	for (i = 0; i < n_binds; i++)
		db_bind_text(st, i + 1, binds[i]);
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		struct ps_cert_row row;

		db_row_from_stmt(st, 0, &row);
		rc = fn(&row, user);
		if (rc < 0)
			goto out;
	}
	if (step != SQLITE_DONE)
		rc = db_fail(db, PS_EDB, "listing certificates", err);
out:
	sqlite3_finalize(st);
	return rc;
}

int ps_db_history(struct ps_db *db, const char *device_serial, ps_row_fn fn, void *user,
		  struct ps_err *err)
{
	struct ps_db_filter filter = {.device_serial = device_serial};

	if (device_serial == NULL || *device_serial == '\0')
		return ps_fail(err, PS_EINVAL, "no device serial given");
	return ps_db_each(db, &filter, fn, user, err);
}

int ps_db_count(struct ps_db *db, const char *state, time_t since, long *out, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	char from[32];
	int rc = 0;

	ps_format_time(since, from);
	if (sqlite3_prepare_v2(
		db->sql, "SELECT count(*) FROM certificates WHERE state = ? AND updated_at >= ?",
		-1, &st, NULL) != SQLITE_OK ||
	    db_bind_text(st, 1, state) != SQLITE_OK || db_bind_text(st, 2, from) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW)
		rc = db_fail(db, PS_EDB, "counting certificates", err);
	else
		*out = (long)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Revocation and CRL numbers.                                                               */

/* A serial as the user typed it ("0A:3F", "0x0a3f", "A3F") to lower-case hex without leading
 * zeros; the stored form (lower-case, whole bytes) is that or "0" before it. */
static int normalize_serial(const char *in, char *out, size_t out_len, struct ps_err *err)
{
	const char *p = in;
	size_t n = 0;

	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
		p += 2;
	for (; *p != '\0'; p++) {
		char c = *p;

		if (c == ':')
			continue;
		if (c >= 'A' && c <= 'F')
			c = (char)(c - 'A' + 'a');
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return ps_fail(err, PS_EINVAL, "certificate serial '%s' is not hex", in);
		if (n == 0 && c == '0')
			continue;
		if (n + 2 >= out_len)
			return ps_fail(err, PS_EINVAL, "certificate serial '%s' is too long", in);
		out[n++] = c;
	}
	out[n] = '\0';
	if (n == 0)
		return ps_fail(err, PS_EINVAL, "certificate serial '%s' is not a serial", in);
	return 0;
}

struct revoke_cb {
	const struct ps_revoke_request *req;
	bool already;
};

static int revoke_report(const struct ps_cert_row *row, void *user)
{
	struct revoke_cb *cb = user;

	return cb->req->fn(row, cb->already, cb->req->user);
}

int ps_db_revoke(struct ps_db *db, const struct ps_revoke_request *req,
		 const struct ps_audit_context *ctx, struct ps_revoke_result *res,
		 struct ps_err *err)
{
	struct ids ids = {NULL, NULL, 0, 0};
	sqlite3_stmt *st = NULL;
	char serial[96], padded[100], now[32], first_ca[80] = "";
	const char *what;
	bool by_cert = req->cert_serial != NULL && *req->cert_serial != '\0';
	bool by_device = req->device_serial != NULL && *req->device_serial != '\0';
	long n_cas = 0;
	size_t i;
	int step, rc;

	memset(res, 0, sizeof(*res));
	if (by_cert == by_device)
		return ps_fail(err, PS_EINVAL, "give a certificate serial or a device serial");
	if (by_cert) {
		rc = normalize_serial(req->cert_serial, serial, sizeof(serial), err);
		if (rc < 0)
			return rc;
		snprintf(padded, sizeof(padded), "0%s", serial);
	}
	ps_format_time(ps_now(), now);
	rc = db_exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0)
		return rc;
	what = "looking up certificates to revoke";
	if (by_cert)
		rc = db_prepare(
		    db,
		    "SELECT id, state, ca_fingerprint FROM certificates WHERE cert_serial "
		    "IN (?1, ?2) AND (?3 = '' OR ca_fingerprint = ?3) "
		    "ORDER BY ca_fingerprint, id",
		    &st, what, err);
	else
		rc = db_prepare(
		    db,
		    "SELECT id, state, ca_fingerprint FROM certificates WHERE "
		    "device_serial = ?1 AND (?3 = '' OR ca_fingerprint = ?3) ORDER BY id",
		    &st, what, err);
	if (rc < 0)
		goto out;
	if (by_cert) {
		db_bind_text(st, 1, serial);
		db_bind_text(st, 2, padded);
	} else {
		db_bind_text(st, 1, req->device_serial);
	}
	db_bind_text(st, 3, req->ca_fingerprint);
	while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
		bool already = strcmp(db_col(st, 1), PS_STATE_REVOKED) == 0;

		if (n_cas == 0 || strcmp(first_ca, db_col(st, 2)) != 0) {
			n_cas++;
			snprintf(first_ca, sizeof(first_ca), "%s", db_col(st, 2));
		}
		rc = ids_add(&ids, sqlite3_column_int64(st, 0), already, err);
	}
	if (rc == 0 && step != SQLITE_DONE)
		rc = db_fail(db, PS_EDB, what, err);
	if (rc < 0)
		goto out;
	sqlite3_finalize(st);
	st = NULL;
	if (ids.n == 0) {
		if (by_cert)
			rc = ps_fail(err, PS_ENOENT, "no certificate with serial %s in %s",
				     req->cert_serial, db->path);
		else
			rc = ps_fail(err, PS_ENOENT, "no certificate of device '%s' in %s",
				     req->device_serial, db->path);
		goto out;
	}
	if (by_cert && n_cas > 1) {
		rc = ps_fail(err, PS_ECONFLICT,
			     "serial %s names certificates of %ld different CAs; give the CA "
			     "(--ca-dir) to choose",
			     req->cert_serial, n_cas);
		goto out;
	}
	for (i = 0; rc == 0 && i < ids.n; i++) {
		if (ids.flag[i]) {
			res->already++;
			continue;
		}
		rc = transition(db, ids.v[i], PS_STATE_REVOKED, req->reason, NULL, now, ctx, false,
				err);
		res->revoked++;
	}
	if (rc == 0)
		rc = db_exec(db, "COMMIT", err);
	if (rc < 0)
		goto out;
	for (i = 0; req->fn != NULL && rc == 0 && i < ids.n; i++) {
		struct ps_db_filter one = {.id = ids.v[i]};
		struct revoke_cb cb = {req, ids.flag[i]};

		rc = ps_db_each(db, &one, revoke_report, &cb, err);
	}
	ids_free(&ids);
	return rc;
out:
	sqlite3_finalize(st);
	ids_free(&ids);
	db_rollback(db);
	if (rc < 0)
		memset(res, 0, sizeof(*res));
	return rc;
}

int ps_db_next_crl_number(struct ps_db *db, const char *ca_fingerprint, long *number,
			  struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	int64_t n = 0;
	int step, rc;

	rc = db_exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0)
		return rc;
	rc = db_prepare(db,
			"INSERT INTO crl_numbers (ca_fingerprint, last) VALUES (?, 1) "
			"ON CONFLICT (ca_fingerprint) DO UPDATE SET last = last + 1 RETURNING last",
			&st, "numbering the CRL", err);
	if (rc < 0)
		goto out;
	db_bind_text(st, 1, ca_fingerprint);
	while ((step = sqlite3_step(st)) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	if (step != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "numbering the CRL", err);
		goto out;
	}
	if (n < 1 || n > LONG_MAX) {
		rc = ps_fail(err, PS_EDB, "audit database %s: CRL number %lld is out of range",
			     db->path, (long long)n);
		goto out;
	}
	sqlite3_finalize(st);
	st = NULL;
	rc = db_exec(db, "COMMIT", err);
	if (rc == 0)
		*number = (long)n;
out:
	sqlite3_finalize(st);
	if (rc < 0)
		db_rollback(db);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Online backup.                                                                            */

static int fsync_path(const char *path, bool dir)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | (dir ? O_DIRECTORY : 0));
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

int ps_db_backup(struct ps_db *db, const char *dest, struct ps_err *err)
{
	sqlite3 *copy = NULL;
	sqlite3_backup *backup = NULL;
	char tmp[PATH_MAX], dir[PATH_MAX];
	char *slash;
	bool made = false;
	int fd, step, tries, rc = 0;
	struct ps_db view;

	if (snprintf(tmp, sizeof(tmp), "%s.partial", dest) >= (int)sizeof(tmp))
		return ps_fail(err, PS_EINVAL, "%s: path too long", dest);
	if (access(dest, F_OK) == 0)
		return ps_fail(err, PS_EEXIST, "%s exists; a backup never overwrites a file", dest);
	if (unlink(tmp) != 0 && errno != ENOENT)
		return ps_fail(err, PS_EIO, "%s: cannot remove it: %s", tmp, strerror(errno));
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return ps_fail(err, PS_EIO, "%s: cannot create it: %s", tmp, strerror(errno));
	close(fd);
	made = true;
	if (sqlite3_open_v2(tmp, &copy, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
		rc = ps_fail(err, PS_EDB, "%s: %s", tmp, sqlite3_errmsg(copy));
		goto out;
	}
	backup = sqlite3_backup_init(copy, "main", db->sql, "main");
	if (backup == NULL) {
		rc = ps_fail(err, PS_EDB, "backing up %s: %s", db->path, sqlite3_errmsg(copy));
		goto out;
	}
	/* All pages in one step: a reader in WAL mode never blocks the stations writing. */
	for (tries = 0; (step = sqlite3_backup_step(backup, -1)) != SQLITE_DONE; tries++) {
		if ((step != SQLITE_BUSY && step != SQLITE_LOCKED) || tries == 50)
			break;
		sqlite3_sleep(100);
	}
	sqlite3_backup_finish(backup);
	backup = NULL;
	if (step != SQLITE_DONE) {
		if (step == SQLITE_BUSY || step == SQLITE_LOCKED)
			rc = ps_fail(err, PS_EBUSY, "audit database %s is busy; try again",
				     db->path);
		else
			rc = ps_fail(err, PS_EDB, "backing up %s: %s", db->path,
				     sqlite3_errstr(step));
		goto out;
	}
	view.sql = copy;
	snprintf(view.path, sizeof(view.path), "%s", tmp);
	rc = ps_db_check_integrity(&view, false, err);
	if (rc < 0)
		goto out;
	sqlite3_close(copy);
	copy = NULL;
	if (fsync_path(tmp, false) != 0) {
		rc = ps_fail(err, PS_EIO, "%s: fsync failed: %s", tmp, strerror(errno));
		goto out;
	}
	/* link(2) refuses an existing name: nothing written meanwhile is ever replaced. */
	if (link(tmp, dest) != 0) {
		rc = ps_fail(err, errno == EEXIST ? PS_EEXIST : PS_EIO, "%s: %s", dest,
			     errno == EEXIST ? "exists; a backup never overwrites a file"
					     : strerror(errno));
		goto out;
	}
	snprintf(dir, sizeof(dir), "%s", dest);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	unlink(tmp);
	made = false;
	if (fsync_path(dir, true) != 0)
		rc = ps_fail(err, PS_EIO, "%s: fsync failed: %s", dir, strerror(errno));
out:
	if (backup != NULL)
		sqlite3_backup_finish(backup);
	sqlite3_close(copy);
	if (made)
		unlink(tmp);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Import.                                                                                   */

int ps_db_import_begin(struct ps_db *db, struct ps_err *err)
{
	return db_exec(db, "BEGIN IMMEDIATE", err);
}

int ps_db_import_end(struct ps_db *db, bool commit, struct ps_err *err)
{
	int rc = 0;

	if (commit)
		rc = db_exec(db, "COMMIT", err);
	if (!commit || rc < 0)
		db_rollback(db);
	return rc;
}

/* The columns a later export of the same certificate may change. */
static bool lifecycle_column(size_t c)
{
	return c == PS_COL_STATE || c == PS_COL_REASON || c == PS_COL_REVOKED_AT ||
	       c == PS_COL_UPDATED_AT;
}

static int imported_event(struct ps_db *db, int64_t id, const char *const v[PS_N_COLUMNS],
			  const struct ps_audit_context *ctx, struct ps_err *err)
{
	json_t *detail = json_object();
	char now[32];
	size_t i;
	int rc;

	for (i = 0; detail != NULL && i < PS_N_COLUMNS; i++) {
		json_t *s = json_string(v[i]);

		if (s == NULL) {
			json_decref(detail);
			return ps_fail(err, PS_EINVAL, "%s is not valid UTF-8",
				       ps_export_columns[i]);
		}
		if (json_object_set_new(detail, ps_export_columns[i], s) != 0) {
			json_decref(detail);
			detail = NULL;
		}
	}
	if (detail == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	ps_format_time(ps_now(), now);
	rc = db_append_event(db, id, now, DB_KIND_IMPORTED, detail, ctx, err);
	json_decref(detail);
	return rc;
}

int ps_db_import_row(struct ps_db *db, const struct ps_cert_row *row,
		     const struct ps_audit_context *ctx, struct ps_import_stats *stats,
		     struct ps_err *err)
{
	const char *in[PS_N_COLUMNS], *have[PS_N_COLUMNS];
	sqlite3_stmt *st = NULL;
	struct ps_cert_row existing;
	int64_t id;
	size_t i;
	bool same = true;
	int step, rc;

	ps_export_row_values(row, in);
	rc = db_prepare(db,
			"SELECT " DB_ROW_COLUMNS " FROM certificates WHERE ca_fingerprint = ? AND "
			"cert_serial = ?",
			&st, "looking up a certificate", err);
	if (rc < 0)
		goto out;
	db_bind_text(st, 1, row->ca_fingerprint);
	db_bind_text(st, 2, row->cert_serial);
	step = sqlite3_step(st);
	if (step == SQLITE_ROW) {
		db_row_from_stmt(st, 0, &existing);
		ps_export_row_values(&existing, have);
		id = existing.id;
		for (i = 0; i < PS_N_COLUMNS; i++) {
			if (strcmp(in[i], have[i]) == 0)
				continue;
			same = false;
			if (!lifecycle_column(i)) {
				rc = ps_fail(err, PS_ECONFLICT,
					     "certificate %s of CA %.16s... is in this database "
					     "with a different %s",
					     row->cert_serial, row->ca_fingerprint,
					     ps_export_columns[i]);
				goto out;
			}
		}
		if (same) {
			stats->unchanged++;
			goto out;
		}
		/* Only a later lifecycle moves a row on, and never out of revoked. */
		if (strcmp(row->updated_at, existing.updated_at) <= 0 ||
		    (strcmp(existing.state, PS_STATE_REVOKED) == 0 &&
		     strcmp(row->state, PS_STATE_REVOKED) != 0)) {
			stats->skipped++;
			goto out;
		}
		sqlite3_finalize(st);
		st = NULL;
		rc = db_prepare(db,
				"UPDATE certificates SET state = ?, reason = ?, revoked_at = ?, "
				"updated_at = ? WHERE id = ?",
				&st, "updating a certificate", err);
		if (rc < 0)
			goto out;
		db_bind_text(st, 1, row->state);
		db_bind_text(st, 2, row->reason);
		db_bind_text(st, 3, row->revoked_at);
		db_bind_text(st, 4, row->updated_at);
		sqlite3_bind_int64(st, 5, id);
		if (sqlite3_step(st) != SQLITE_DONE) {
			rc = db_fail(db, PS_EDB, "updating a certificate", err);
			goto out;
		}
		rc = imported_event(db, id, in, ctx, err);
		if (rc == 0)
			stats->updated++;
		goto out;
	}
	if (step != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "looking up a certificate", err);
		goto out;
	}
	sqlite3_finalize(st);
	st = NULL;
	rc = db_prepare(db,
			"INSERT INTO certificates (device_serial, common_name, cert_serial, state, "
			"reason, not_before, not_after, pubkey_sha256, pubkey_pem, cert_pem, "
			"station_id, operator, batch, ca_fingerprint, target, image_name, "
			"image_sha256, revoked_at, created_at, updated_at) "
			"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
			&st, "adding a certificate", err);
	if (rc < 0)
		goto out;
	/* The statement's columns are in export order. */
	for (i = 0; i < PS_N_COLUMNS; i++)
		db_bind_text(st, (int)i + 1, in[i]);
	if (sqlite3_step(st) != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "adding a certificate", err);
		goto out;
	}
	rc = imported_event(db, sqlite3_last_insert_rowid(db->sql), in, ctx, err);
	if (rc == 0)
		stats->added++;
out:
	sqlite3_finalize(st);
	return rc;
}
