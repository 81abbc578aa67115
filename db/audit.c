/* audit.c — the audit store in SQLite (see audit.h): schema and migrations, issuance rows
 * committed durably, state transitions as hash-chained events, streaming queries. */
#include "audit.h"
#include "util.h"

#include <jansson.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_VERSION 1

struct ps_db {
	sqlite3 *sql;
	char path[PATH_MAX];
};

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
};

static int db_fail(struct ps_db *db, int code, const char *what, struct ps_err *err)
{
	int sqlite_code = sqlite3_errcode(db->sql);

	if (sqlite_code == SQLITE_BUSY || sqlite_code == SQLITE_LOCKED)
		return ps_fail(err, PS_EBUSY,
			       "audit database %s is busy (another process holds it); try again",
			       db->path);
	return ps_fail(err, code, "audit database %s: %s: %s", db->path, what,
		       sqlite3_errmsg(db->sql));
}

static int exec(struct ps_db *db, const char *sql, struct ps_err *err)
{
	if (sqlite3_exec(db->sql, sql, NULL, NULL, NULL) != SQLITE_OK)
		return db_fail(db, PS_EDB, sql, err);
	return 0;
}

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
	rc = exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0)
		return rc;
	/* Re-read inside the write lock: another process may have migrated meanwhile. */
	rc = user_version(db, &version, err);
	while (rc == 0 && version < SCHEMA_VERSION) {
		rc = exec(db, migrations[version], err);
		version++;
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version);
		if (rc == 0)
			rc = exec(db, sql, err);
	}
	if (rc == 0)
		return exec(db, "COMMIT", err);
	sqlite3_exec(db->sql, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int ps_db_open(const char *path, struct ps_db **out, struct ps_err *err)
{
	struct ps_db *db = calloc(1, sizeof(*db));
	char dir[PATH_MAX];
	char *slash;
	int rc = 0;

	*out = NULL;
	if (db == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	if (path == NULL || *path == '\0') {
		rc = ps_fail(err, PS_EINVAL, "no audit database given (--db or [station] database)");
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
	sqlite3_busy_timeout(db->sql, 5000);
	/* Leave checkpoints to SQLite's automatic ones: closing stays cheap. */
	sqlite3_db_config(db->sql, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
	sqlite3_extended_result_codes(db->sql, 0);
	rc = exec(db, "PRAGMA journal_mode = WAL", err);
	if (rc == 0)
		rc = exec(db, "PRAGMA synchronous = FULL", err);
	if (rc == 0)
		rc = exec(db, "PRAGMA foreign_keys = ON", err);
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

static int bind_text(sqlite3_stmt *st, int idx, const char *value)
{
	return sqlite3_bind_text(st, idx, value ? value : "", -1, SQLITE_TRANSIENT);
}

/* Append an event to the chain: hash = SHA-256(prev_hash "\n" canonical JSON of the event). */
static int append_event(struct ps_db *db, int64_t cert_id, const char *at, const char *kind,
			json_t *detail, const struct ps_audit_context *ctx, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	char prev[65] = "";
	char hash[65];
	char *detail_text = NULL, *canonical = NULL, *hashed = NULL;
	json_t *event = NULL;
	int64_t seq = 1;
	int rc = 0;

	if (sqlite3_prepare_v2(db->sql, "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
			       -1, &st, NULL) != SQLITE_OK) {
		rc = db_fail(db, PS_EDB, "reading the event chain", err);
		goto out;
	}
	if (sqlite3_step(st) == SQLITE_ROW) {
		seq = sqlite3_column_int64(st, 0) + 1;
		snprintf(prev, sizeof(prev), "%s", (const char *)sqlite3_column_text(st, 1));
	}
	sqlite3_finalize(st);
	st = NULL;
	detail_text = json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS);
	event = json_pack("[I, I, s, s, s, s, s]", (json_int_t)seq, (json_int_t)cert_id, at,
			  ctx->station_id, ctx->operator_name, kind, detail_text ? detail_text : "");
	canonical = event ? json_dumps(event, JSON_COMPACT) : NULL;
	if (canonical == NULL || asprintf(&hashed, "%s\n%s", prev, canonical) < 0) {
		hashed = NULL;
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	rc = ps_sha256_hex(hashed, strlen(hashed), hash, err);
	if (rc < 0)
		goto out;
	if (sqlite3_prepare_v2(db->sql,
			       "INSERT INTO events (seq, cert_id, at, station_id, operator, kind, "
			       "detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
			       -1, &st, NULL) != SQLITE_OK) {
		rc = db_fail(db, PS_EDB, "recording an event", err);
		goto out;
	}
	sqlite3_bind_int64(st, 1, seq);
	sqlite3_bind_int64(st, 2, cert_id);
	bind_text(st, 3, at);
	bind_text(st, 4, ctx->station_id);
	bind_text(st, 5, ctx->operator_name);
	bind_text(st, 6, kind);
	bind_text(st, 7, detail_text);
	bind_text(st, 8, prev);
	bind_text(st, 9, hash);
	if (sqlite3_step(st) != SQLITE_DONE)
		rc = db_fail(db, PS_EDB, "recording an event", err);
out:
	sqlite3_finalize(st);
	json_decref(event);
	free(detail_text);
	free(canonical);
	free(hashed);
	return rc;
}

int ps_db_record_issued(struct ps_db *db, const struct ps_audit_context *ctx,
			const struct ps_issue_record *rec, int64_t *id, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	char now[32], nb[32], na[32];
	json_t *detail = NULL;
	int rc;

	ps_format_time(ps_now(), now);
	ps_format_time(rec->not_before, nb);
	ps_format_time(rec->not_after, na);
	rc = exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0)
		return rc;
	if (sqlite3_prepare_v2(db->sql,
			       "INSERT INTO certificates (device_serial, common_name, pubkey_pem, "
			       "pubkey_sha256, cert_serial, cert_pem, not_before, not_after, state, "
			       "station_id, operator, batch, ca_fingerprint, target, image_name, "
			       "image_sha256, created_at, updated_at) "
			       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'issued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
			       -1, &st, NULL) != SQLITE_OK) {
		rc = db_fail(db, PS_EDB, "recording a certificate", err);
		goto out;
	}
	bind_text(st, 1, rec->device_serial);
	bind_text(st, 2, rec->common_name);
	bind_text(st, 3, rec->pubkey_pem);
	bind_text(st, 4, rec->pubkey_sha256);
	bind_text(st, 5, rec->cert_serial);
	bind_text(st, 6, rec->cert_pem);
	bind_text(st, 7, nb);
	bind_text(st, 8, na);
	bind_text(st, 9, ctx->station_id);
	bind_text(st, 10, ctx->operator_name);
	bind_text(st, 11, ctx->batch);
	bind_text(st, 12, ctx->ca_fingerprint);
	bind_text(st, 13, rec->target);
	bind_text(st, 14, rec->image_name);
	bind_text(st, 15, rec->image_sha256);
	bind_text(st, 16, now);
	bind_text(st, 17, now);
	if (sqlite3_step(st) != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "recording a certificate", err);
		goto out;
	}
	*id = sqlite3_last_insert_rowid(db->sql);
	detail = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}",
			   "device_serial", rec->device_serial, "common_name", rec->common_name,
			   "pubkey_pem", rec->pubkey_pem, "pubkey_sha256", rec->pubkey_sha256,
			   "cert_serial", rec->cert_serial, "cert_pem", rec->cert_pem,
			   "not_before", nb, "not_after", na, "batch", ctx->batch ? ctx->batch : "",
			   "ca_fingerprint", ctx->ca_fingerprint, "target",
			   rec->target ? rec->target : "", "image_name",
			   rec->image_name ? rec->image_name : "", "image_sha256",
			   rec->image_sha256 ? rec->image_sha256 : "");
	if (detail == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	rc = append_event(db, *id, now, PS_STATE_ISSUED, detail, ctx, err);
	if (rc == 0)
		rc = exec(db, "COMMIT", err);
out:
	sqlite3_finalize(st);
	json_decref(detail);
	if (rc < 0)
		sqlite3_exec(db->sql, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int ps_db_set_state(struct ps_db *db, int64_t id, const char *state, const char *reason,
		    const struct ps_audit_context *ctx, struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	char now[32];
	json_t *detail = NULL;
	bool revoked = strcmp(state, PS_STATE_REVOKED) == 0;
	int rc;

	ps_format_time(ps_now(), now);
	rc = exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0)
		return rc;
	if (sqlite3_prepare_v2(db->sql,
			       "UPDATE certificates SET state = ?, reason = ?, updated_at = ?, "
			       "revoked_at = CASE WHEN ? THEN ? ELSE revoked_at END WHERE id = ?",
			       -1, &st, NULL) != SQLITE_OK) {
		rc = db_fail(db, PS_EDB, "updating a certificate", err);
		goto out;
	}
	bind_text(st, 1, state);
	bind_text(st, 2, reason);
	bind_text(st, 3, now);
	sqlite3_bind_int(st, 4, revoked);
	bind_text(st, 5, now);
	sqlite3_bind_int64(st, 6, id);
	if (sqlite3_step(st) != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "updating a certificate", err);
		goto out;
	}
	if (sqlite3_changes(db->sql) != 1) {
		rc = ps_fail(err, PS_ENOENT, "audit database %s has no certificate %lld", db->path,
			     (long long)id);
		goto out;
	}
	detail = json_pack("{s:s, s:s}", "state", state, "reason", reason ? reason : "");
	if (detail == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	rc = append_event(db, id, now, state, detail, ctx, err);
	if (rc == 0)
		rc = exec(db, "COMMIT", err);
out:
	sqlite3_finalize(st);
	json_decref(detail);
	if (rc < 0)
		sqlite3_exec(db->sql, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

static const char *col(sqlite3_stmt *st, int i)
{
	const unsigned char *v = sqlite3_column_text(st, i);

	return v ? (const char *)v : "";
}

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
	snprintf(sql, sizeof(sql),
		 "SELECT id, device_serial, common_name, pubkey_pem, pubkey_sha256, cert_serial, "
		 "cert_pem, not_before, not_after, state, reason, revoked_at, station_id, "
		 "operator, batch, ca_fingerprint, target, image_name, image_sha256, created_at, "
		 "updated_at FROM certificates WHERE 1");
#define FILTER(value, clause)                                                                  \
	do {                                                                                   \
		if ((value) != NULL && (value)[0] != '\0') {                                   \
			strncat(sql, clause, sizeof(sql) - strlen(sql) - 1);                   \
			binds[n_binds++] = (value);                                            \
		}                                                                              \
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
#undef FILTER
	strncat(sql, filter->newest_first ? " ORDER BY id DESC" : " ORDER BY id",
		sizeof(sql) - strlen(sql) - 1);
	if (sqlite3_prepare_v2(db->sql, sql, -1, &st, NULL) != SQLITE_OK) {
		rc = db_fail(db, PS_EDB, "listing certificates", err);
		goto out;
	}
	for (i = 0; i < n_binds; i++)
		bind_text(st, i + 1, binds[i]);
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		struct ps_cert_row row = {
			.id = sqlite3_column_int64(st, 0),
			.device_serial = col(st, 1),
			.common_name = col(st, 2),
			.pubkey_pem = col(st, 3),
			.pubkey_sha256 = col(st, 4),
			.cert_serial = col(st, 5),
			.cert_pem = col(st, 6),
			.not_before = col(st, 7),
			.not_after = col(st, 8),
			.state = col(st, 9),
			.reason = col(st, 10),
			.revoked_at = col(st, 11),
			.station_id = col(st, 12),
			.operator_name = col(st, 13),
			.batch = col(st, 14),
			.ca_fingerprint = col(st, 15),
			.target = col(st, 16),
			.image_name = col(st, 17),
			.image_sha256 = col(st, 18),
			.created_at = col(st, 19),
			.updated_at = col(st, 20),
		};

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

int ps_db_count(struct ps_db *db, const char *state, time_t since, long *out,
		struct ps_err *err)
{
	sqlite3_stmt *st = NULL;
	char from[32];
	int rc = 0;

	ps_format_time(since, from);
	if (sqlite3_prepare_v2(db->sql,
			       "SELECT count(*) FROM certificates WHERE state = ? AND updated_at >= ?",
			       -1, &st, NULL) != SQLITE_OK ||
	    bind_text(st, 1, state) != SQLITE_OK || bind_text(st, 2, from) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_ROW)
		rc = db_fail(db, PS_EDB, "counting certificates", err);
	else
		*out = (long)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return rc;
}
