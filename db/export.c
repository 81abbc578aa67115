/* export.c — CSV and JSON-lines export of the audit rows (see export.h). */
#include "export.h"
#include "util.h"
#include "audit_int.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

const char *const ps_export_columns[PS_N_COLUMNS] = {
    [PS_COL_DEVICE_SERIAL] = "device_serial",
    [PS_COL_COMMON_NAME] = "common_name",
    [PS_COL_CERT_SERIAL] = "cert_serial",
    [PS_COL_STATE] = "state",
    [PS_COL_REASON] = "reason",
    [PS_COL_NOT_BEFORE] = "not_before",
    [PS_COL_NOT_AFTER] = "not_after",
    [PS_COL_PUBKEY_SHA256] = "pubkey_sha256",
    [PS_COL_PUBKEY_PEM] = "pubkey_pem",
    [PS_COL_CERT_PEM] = "cert_pem",
    [PS_COL_STATION_ID] = "station_id",
    [PS_COL_OPERATOR] = "operator",
    [PS_COL_BATCH] = "batch",
    [PS_COL_CA_FINGERPRINT] = "ca_fingerprint",
    [PS_COL_TARGET] = "target",
    [PS_COL_IMAGE_NAME] = "image_name",
    [PS_COL_IMAGE_SHA256] = "image_sha256",
    [PS_COL_REVOKED_AT] = "revoked_at",
    [PS_COL_CREATED_AT] = "created_at",
    [PS_COL_UPDATED_AT] = "updated_at",
};
const size_t ps_export_n_columns = PS_N_COLUMNS;

void ps_export_row_values(const struct ps_cert_row *r, const char *values[PS_N_COLUMNS])
{
	values[PS_COL_DEVICE_SERIAL] = r->device_serial;
	values[PS_COL_COMMON_NAME] = r->common_name;
	values[PS_COL_CERT_SERIAL] = r->cert_serial;
	values[PS_COL_STATE] = r->state;
	values[PS_COL_REASON] = r->reason;
	values[PS_COL_NOT_BEFORE] = r->not_before;
	values[PS_COL_NOT_AFTER] = r->not_after;
	values[PS_COL_PUBKEY_SHA256] = r->pubkey_sha256;
	values[PS_COL_PUBKEY_PEM] = r->pubkey_pem;
	values[PS_COL_CERT_PEM] = r->cert_pem;
	values[PS_COL_STATION_ID] = r->station_id;
	values[PS_COL_OPERATOR] = r->operator_name;
	values[PS_COL_BATCH] = r->batch;
	values[PS_COL_CA_FINGERPRINT] = r->ca_fingerprint;
	values[PS_COL_TARGET] = r->target;
	values[PS_COL_IMAGE_NAME] = r->image_name;
	values[PS_COL_IMAGE_SHA256] = r->image_sha256;
	values[PS_COL_REVOKED_AT] = r->revoked_at;
	values[PS_COL_CREATED_AT] = r->created_at;
	values[PS_COL_UPDATED_AT] = r->updated_at;
}

void ps_export_row_from_values(const char *const v[PS_N_COLUMNS], struct ps_cert_row *r)
{
	*r = (struct ps_cert_row){
	    .device_serial = v[PS_COL_DEVICE_SERIAL],
	    .common_name = v[PS_COL_COMMON_NAME],
	    .cert_serial = v[PS_COL_CERT_SERIAL],
	    .state = v[PS_COL_STATE],
	    .reason = v[PS_COL_REASON],
	    .not_before = v[PS_COL_NOT_BEFORE],
	    .not_after = v[PS_COL_NOT_AFTER],
	    .pubkey_sha256 = v[PS_COL_PUBKEY_SHA256],
	    .pubkey_pem = v[PS_COL_PUBKEY_PEM],
	    .cert_pem = v[PS_COL_CERT_PEM],
	    .station_id = v[PS_COL_STATION_ID],
	    .operator_name = v[PS_COL_OPERATOR],
	    .batch = v[PS_COL_BATCH],
	    .ca_fingerprint = v[PS_COL_CA_FINGERPRINT],
	    .target = v[PS_COL_TARGET],
	    .image_name = v[PS_COL_IMAGE_NAME],
	    .image_sha256 = v[PS_COL_IMAGE_SHA256],
	    .revoked_at = v[PS_COL_REVOKED_AT],
	    .created_at = v[PS_COL_CREATED_AT],
	    .updated_at = v[PS_COL_UPDATED_AT],
	};
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

/* One CSV field per RFC 4180: quoted when it holds a comma, quote, CR or LF; a quote inside
 * is doubled. Everything else, leading and trailing spaces included, is written as it is. */
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

/* A JSON string exactly as jansson's compact dump writes one (the lines are what
 * json_dumps(JSON_COMPACT | JSON_PRESERVE_ORDER) gives, without building objects): quote and
 * backslash escaped, \b \f \n \r \t, \u00XX for other control characters, the rest as it is. */
static void json_field(FILE *out, const char *s)
{
	const char *run = s, *p;

	fputc('"', out);
	for (p = s; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;
		const char *esc;
		char u[8];

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		switch (c) {
		case '"':
			esc = "\\\"";
			break;
		case '\\':
			esc = "\\\\";
			break;
		case '\b':
			esc = "\\b";
			break;
		case '\f':
			esc = "\\f";
			break;
		case '\n':
			esc = "\\n";
			break;
		case '\r':
			esc = "\\r";
			break;
		case '\t':
			esc = "\\t";
			break;
		default:
			snprintf(u, sizeof(u), "\\u%04X", c);
			esc = u;
		}
		fwrite(run, 1, (size_t)(p - run), out);
		fputs(esc, out);
		run = p + 1;
	}
	fwrite(run, 1, (size_t)(p - run), out);
	fputc('"', out);
}

static bool is_utf8(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p != '\0') {
		size_t n = ps_utf8_len(p);

		if (n == 0)
			return false;
		p += n;
	}
	return true;
}

static int write_jsonl(struct export_ctx *ctx, const struct ps_cert_row *row,
		       const char *const values[PS_N_COLUMNS])
{
	size_t i;

	/* JSON carries only UTF-8: say which value is not, rather than write half a line. */
	for (i = 0; i < PS_N_COLUMNS; i++)
		if (!is_utf8(values[i]))
			return ps_fail(ctx->err, PS_EINVAL,
				       "certificate %s: %s is not valid UTF-8, which JSON cannot "
				       "carry; export it as CSV",
				       row->cert_serial, ps_export_columns[i]);
	for (i = 0; i < PS_N_COLUMNS; i++) {
		fputs(i == 0 ? "{\"" : ",\"", ctx->out);
		fputs(ps_export_columns[i], ctx->out);
		fputs("\":", ctx->out);
		json_field(ctx->out, values[i]);
	}
	fputs("}\n", ctx->out);
	return 0;
}

static int write_row(const struct ps_cert_row *row, void *user)
{
	struct export_ctx *ctx = user;
	const char *values[PS_N_COLUMNS];
	size_t i;
	int rc;

	ps_export_row_values(row, values);
	if (ctx->format == PS_EXPORT_CSV) {
		for (i = 0; i < PS_N_COLUMNS; i++) {
			if (i > 0)
				fputc(',', ctx->out);
			csv_field(ctx->out, values[i]);
		}
		fputs("\r\n", ctx->out);
	} else {
		rc = write_jsonl(ctx, row, values);
		if (rc < 0)
			return rc;
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
		for (i = 0; i < PS_N_COLUMNS; i++) {
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
