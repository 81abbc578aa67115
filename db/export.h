/* export.h — the audit rows as CSV (RFC 4180) or JSON lines, streamed row by row with
 * stable, documented columns. */
#ifndef PS_EXPORT_H
#define PS_EXPORT_H

#include "audit.h"

#include <stdio.h>

enum ps_export_format { PS_EXPORT_CSV, PS_EXPORT_JSONL };

int ps_export_format_parse(const char *name, enum ps_export_format *out, struct ps_err *err);

/* Write every row matching filter to out; returns the number of rows in *count. */
int ps_export(struct ps_db *db, const struct ps_db_filter *filter, enum ps_export_format format,
	      FILE *out, long *count, struct ps_err *err);

/* The columns, in export order: the CSV header and the JSON keys. This order is a contract
 * (documented in the README); new columns may only ever be added at the end. */
enum ps_column {
	PS_COL_DEVICE_SERIAL,
	PS_COL_COMMON_NAME,
	PS_COL_CERT_SERIAL,
	PS_COL_STATE,
	PS_COL_REASON,
	PS_COL_NOT_BEFORE,
	PS_COL_NOT_AFTER,
	PS_COL_PUBKEY_SHA256,
	PS_COL_PUBKEY_PEM,
	PS_COL_CERT_PEM,
	PS_COL_STATION_ID,
	PS_COL_OPERATOR,
	PS_COL_BATCH,
	PS_COL_CA_FINGERPRINT,
	PS_COL_TARGET,
	PS_COL_IMAGE_NAME,
	PS_COL_IMAGE_SHA256,
	PS_COL_REVOKED_AT,
	PS_COL_CREATED_AT,
	PS_COL_UPDATED_AT,
	PS_N_COLUMNS
};

/* The column names, in order (the CSV header and the JSON keys). */
extern const char *const ps_export_columns[PS_N_COLUMNS];
extern const size_t ps_export_n_columns;

/* A row's values in column order (pointers into row). */
void ps_export_row_values(const struct ps_cert_row *row, const char *values[PS_N_COLUMNS]);
/* The inverse: a row (id 0) whose fields point at values, given in column order. */
void ps_export_row_from_values(const char *const values[PS_N_COLUMNS], struct ps_cert_row *row);

#endif
