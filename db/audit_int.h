/* audit_int.h — inside the audit store only (db/): the connection and the helpers that
 * audit.c shares with verify.c. Nothing outside db/ includes it. */
#ifndef PS_AUDIT_INT_H
#define PS_AUDIT_INT_H

#include "audit.h"
#include "export.h"

#include <jansson.h>
#include <limits.h>
#include <sqlite3.h>

struct ps_db {
	sqlite3 *sql;
	char path[PATH_MAX];
};

/* The columns of a certificate row as db_row_from_stmt reads them. */
#define DB_ROW_COLUMNS                                                                             \
	"id, device_serial, common_name, pubkey_pem, pubkey_sha256, cert_serial, cert_pem, "       \
	"not_before, not_after, state, reason, revoked_at, station_id, operator, batch, "          \
	"ca_fingerprint, target, image_name, image_sha256, created_at, updated_at"

/* The event kind of a row merged in by an import. */
#define DB_KIND_IMPORTED "imported"

/* The fields of the issued event's detail: what never changes about a certificate. */
#define DB_N_ISSUED_FIELDS 13
extern const enum ps_column db_issued_fields[DB_N_ISSUED_FIELDS];

/* PS_EBUSY for a locked database, else code with SQLite's message about `what`. */
int db_fail(struct ps_db *db, int code, const char *what, struct ps_err *err);
int db_exec(struct ps_db *db, const char *sql, struct ps_err *err);
void db_rollback(struct ps_db *db);
int db_prepare(struct ps_db *db, const char *sql, sqlite3_stmt **st, const char *what,
	       struct ps_err *err);
int db_bind_text(sqlite3_stmt *st, int idx, const char *value);
/* A text column, "" for NULL. */
const char *db_col(sqlite3_stmt *st, int i);
/* A row read with DB_ROW_COLUMNS from column `first` on; valid until the next step. */
void db_row_from_stmt(sqlite3_stmt *st, int first, struct ps_cert_row *row);

/* hash = SHA-256(prev "\n" canonical), canonical being the compact JSON array
 * [seq, cert_id, at, station_id, operator, kind, detail]; PS_EINVAL when a field is not
 * UTF-8. */
int db_event_hash(const char *prev, int64_t seq, int64_t cert_id, const char *at,
		  const char *station, const char *operator_name, const char *kind,
		  const char *detail, char out[65], struct ps_err *err);
/* Append an event to the chain, inside the caller's transaction. */
int db_append_event(struct ps_db *db, int64_t cert_id, const char *at, const char *kind,
		    json_t *detail, const struct ps_audit_context *ctx, struct ps_err *err);

#endif
