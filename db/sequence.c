/* sequence.c — serials from a sequence in SQLite (see sequence.h): the reservation table
 * serial_sequence and the allocation of the next number for a prefix. */
#include "sequence.h"
#include "audit_int.h"
#include "config.h"
#include "util.h"

#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Numbers with more digits than this are ignored when looking for the largest one: they
 * could not be incremented. */
#define MAX_DIGITS 18

/* A GLOB pattern matching prefix followed by a digit: "*", "?" and "[" in the prefix are
 * escaped as one-character classes. */
static char *glob_for(const char *prefix)
{
	char *out = malloc(strlen(prefix) * 3 + sizeof("[0-9]*")), *q = out;
	const char *p;

	if (out == NULL)
		return NULL;
	for (p = prefix; *p != '\0'; p++) {
		if (*p == '*' || *p == '?' || *p == '[') {
			*q++ = '[';
			*q++ = *p;
			*q++ = ']';
		} else {
			*q++ = *p;
		}
	}
	memcpy(q, "[0-9]*", sizeof("[0-9]*"));
	return out;
}

int ps_db_next_serial(struct ps_db *db, const char *prefix, const struct ps_audit_context *ctx,
		      const char *target, char *out, size_t len, struct ps_err *err)
{
	char serial[PS_SERIAL_MAX + 32], now[32];
	sqlite3_stmt *st = NULL;
	char *pattern = NULL;
	int64_t number = 0;
	int rc;

	if (len > 0)
		out[0] = '\0';
	if (prefix == NULL)
		prefix = "";
	if (strlen(prefix) > PS_SERIAL_MAX)
		return ps_fail(err, PS_EINVAL, "serial prefix '%.20s...' is too long", prefix);
	pattern = glob_for(prefix);
	if (pattern == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	rc = db_exec(db, "BEGIN IMMEDIATE", err);
	if (rc < 0) {
		free(pattern);
		return rc;
	}
	rc = db_prepare(db,
			"SELECT max(n) FROM ("
			" SELECT number AS n FROM serial_sequence WHERE prefix = ?1"
			" UNION ALL"
			" SELECT CAST(substr(device_serial, length(?1) + 1) AS INTEGER) AS n"
			" FROM certificates WHERE device_serial GLOB ?2"
			" AND length(device_serial) - length(?1) <= ?3"
			" AND substr(device_serial, length(?1) + 1) NOT GLOB '*[^0-9]*')",
			&st, "finding the last serial of a sequence", err);
	if (rc < 0)
		goto out;
	db_bind_text(st, 1, prefix);
	db_bind_text(st, 2, pattern);
	sqlite3_bind_int(st, 3, MAX_DIGITS);
	if (sqlite3_step(st) != SQLITE_ROW) {
		rc = db_fail(db, PS_EDB, "finding the last serial of a sequence", err);
		goto out;
	}
	number = sqlite3_column_int64(st, 0) + 1; /* NULL (none yet) reads as 0 */
	sqlite3_finalize(st);
	st = NULL;
	snprintf(serial, sizeof(serial), "%s%0*" PRId64, prefix, PS_SEQUENCE_WIDTH, number);
	rc = ps_check_serial(serial, err);
	if (rc == 0 && strlen(serial) >= len)
		rc = ps_fail(err, PS_EINVAL, "serial %s does not fit", serial);
	if (rc < 0) {
		ps_prefix(err, rc, "sequence with prefix '%s'", prefix);
		goto out;
	}
	ps_format_time(ps_now(), now);
	rc =
	    db_prepare(db,
		       "INSERT INTO serial_sequence (prefix, number, serial, station_id, operator, "
		       "target, reserved_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
		       &st, "reserving a serial", err);
	if (rc < 0)
		goto out;
	db_bind_text(st, 1, prefix);
	sqlite3_bind_int64(st, 2, number);
	db_bind_text(st, 3, serial);
	db_bind_text(st, 4, ctx ? ctx->station_id : "");
	db_bind_text(st, 5, ctx ? ctx->operator_name : "");
	db_bind_text(st, 6, target);
	db_bind_text(st, 7, now);
	if (sqlite3_step(st) != SQLITE_DONE) {
		rc = db_fail(db, PS_EDB, "reserving a serial", err);
		goto out;
	}
	rc = db_exec(db, "COMMIT", err);
	if (rc == 0)
		memcpy(out, serial, strlen(serial) + 1);
out:
	sqlite3_finalize(st);
	free(pattern);
	if (rc < 0)
		db_rollback(db);
	return rc;
}
