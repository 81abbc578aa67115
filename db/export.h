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

/* The column names, in order (the CSV header and the JSON keys). */
extern const char *const ps_export_columns[];
extern const size_t ps_export_n_columns;

#endif
