/* import.h — merging another station's export (CSV or JSON lines, as ps_export writes them)
 * into this audit database: streamed, validated row by row, one transaction, idempotent. */
#ifndef PS_IMPORT_H
#define PS_IMPORT_H

#include "audit.h"

#include <stdio.h>

enum ps_import_format {
	PS_IMPORT_DETECT, /* by content: JSON lines start with {, CSV with the header */
	PS_IMPORT_CSV,
	PS_IMPORT_JSONL,
};

/* Read every row from in (`name` for messages) and merge it (see ps_db_import_row). The
 * import is all or nothing: an error in any row (it names the CSV record or JSON line) leaves
 * the database as it was. *used receives the format read when not NULL. */
int ps_import(struct ps_db *db, FILE *in, const char *name, enum ps_import_format format,
	      const struct ps_audit_context *ctx, struct ps_import_stats *stats,
	      enum ps_import_format *used, struct ps_err *err);

#endif
