/* export.c — CSV and JSON-lines export of the audit rows (see export.h). */
#include "export.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <string.h>

const char *const ps_export_columns[] = {
	"device_serial", "common_name",	 "cert_serial", "state",	  "reason",
	"not_before",	 "not_after",	 "pubkey_sha256", "pubkey_pem",	  "cert_pem",
	"station_id",	 "operator",	 "batch",	  "ca_fingerprint", "target",
	"image_name",	 "image_sha256", "revoked_at",	  "created_at",	  "updated_at",
};
const size_t ps_export_n_columns = sizeof(ps_export_columns) / sizeof(ps_export_columns[0]);

static void row_values(const struct ps_cert_row *r, const char *values[])
{
	const char *v[] = {r->device_serial, r->common_name,  r->cert_serial,	 r->state,
			   r->reason,	     r->not_before,   r->not_after,	 r->pubkey_sha256,
			   r->pubkey_pem,    r->cert_pem,     r->station_id,	 r->operator_name,
			   r->batch,	     r->ca_fingerprint, r->target,	 r->image_name,
			   r->image_sha256,  r->revoked_at,   r->created_at,	 r->updated_at};

	memcpy(values, v, sizeof(v));
}

int ps_export_format_parse(const char *name, enum ps_export_format *out, struct ps_err *err)
{
	if (strcmp(name, "csv") == 0)
		*out = PS_EXPORT_CSV;
	else if (strcmp(name, "jsonl") == 0)
		*out = PS_EXPORT_JSONL;
	else
		return ps_fail(err, PS_EINVAL, "unknown export format '%s' (use csv or jsonl)",
			       name);
	return 0;
}

/* One CSV field per RFC 4180: quoted when it holds a comma, quote, CR or LF. */
static void csv_field(FILE *out, const char *value)
{
	const char *p;

	if (strpbrk(value, ",\"\r\n") == NULL) {
		fputs(value, out);
		return;
	}
	fputc('"', out);
	for (p = value; *p != '\0'; p++) {
		if (*p == '"')
			fputc('"', out);
		fputc(*p, out);
	}
	fputc('"', out);
}

struct export_ctx {
	enum ps_export_format format;
	FILE *out;
	long count;
	struct ps_err *err;
};

static int write_row(const struct ps_cert_row *row, void *user)
{
	struct export_ctx *ctx = user;
	const char *values[sizeof(ps_export_columns) / sizeof(ps_export_columns[0])];
	size_t i;

	row_values(row, values);
	if (ctx->format == PS_EXPORT_CSV) {
		for (i = 0; i < ps_export_n_columns; i++) {
			if (i > 0)
				fputc(',', ctx->out);
			csv_field(ctx->out, values[i]);
		}
		fputs("\r\n", ctx->out);
	} else {
		json_t *obj = json_object();
		char *line = NULL;

		for (i = 0; obj != NULL && i < ps_export_n_columns; i++)
			json_object_set_new(obj, ps_export_columns[i], json_string(values[i]));
		line = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		json_decref(obj);
		if (line == NULL)
			return ps_fail(ctx->err, PS_ENOMEM, "out of memory");
		fputs(line, ctx->out);
		fputc('\n', ctx->out);
		free(line);
	}
	if (ferror(ctx->out))
		return ps_fail(ctx->err, PS_EIO, "writing the export: %s", strerror(errno));
	ctx->count++;
	return 0;
}

int ps_export(struct ps_db *db, const struct ps_db_filter *filter, enum ps_export_format format,
	      FILE *out, long *count, struct ps_err *err)
{
	struct export_ctx ctx = {format, out, 0, err};
	size_t i;
	int rc;

	if (format == PS_EXPORT_CSV) {
		for (i = 0; i < ps_export_n_columns; i++) {
			if (i > 0)
				fputc(',', out);
			fputs(ps_export_columns[i], out);
		}
		fputs("\r\n", out);
	}
	rc = ps_db_each(db, filter, write_row, &ctx, err);
	if (rc == 0 && fflush(out) != 0)
		rc = ps_fail(err, PS_EIO, "writing the export: %s", strerror(errno));
	if (count != NULL)
		*count = ctx.count;
	return rc;
}
