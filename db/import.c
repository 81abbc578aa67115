/* import.c — reading an export back (see import.h): CSV through libcsv (RFC 4180 quoting,
 * strict mode, no trimming), JSON lines through jansson, both streamed in chunks; each row
 * checked, then merged by ps_db_import_row inside one transaction. */
#include "import.h"
#include "export.h"
#include "util.h"

#include <csv.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK	  65536
#define MAX_FIELD (1 << 20) /* a CSV field (a PEM, say) longer than this is refused */
#define MAX_LINE  (4 << 20) /* and a JSON line longer than this */

struct importer {
	struct ps_db *db;
	const char *name;
	const struct ps_audit_context *ctx;
	struct ps_import_stats *stats;
	struct ps_err *err;
	int rc; /* the first error; later rows are not looked at */

	/* CSV */
	long record; /* the current record, the header being 1 */
	bool have_header;
	int map[PS_N_COLUMNS];	    /* field position -> column */
	size_t n_fields;	    /* fields of the current record so far */
	char *fields[PS_N_COLUMNS]; /* by column */

	/* JSON lines */
	long line;
	char *buf;
	size_t len, cap;
};

static bool is_lower_hex(const char *s, size_t min, size_t max)
{
	size_t n = strlen(s);

	if (n < min || n > max)
		return false;
	return strspn(s, "0123456789abcdef") == n;
}

static bool is_time(const char *s)
{
	time_t t;

	return strlen(s) == 20 && s[10] == 'T' && s[19] == 'Z' && ps_parse_time(s, &t, NULL) == 0;
}

static bool is_utf8(const char *s)
{
	json_t *j = json_string(s);

	json_decref(j);
	return j != NULL;
}

static bool known_state(const char *s)
{
	static const char *const states[] = {PS_STATE_ISSUED,	  PS_STATE_WRITTEN,
					     PS_STATE_VERIFIED,	  PS_STATE_FAILED,
					     PS_STATE_SUPERSEDED, PS_STATE_REVOKED};
	size_t i;

	for (i = 0; i < PS_ARRAY_SIZE(states); i++)
		if (strcmp(s, states[i]) == 0)
			return true;
	return false;
}

/* Check one row's values (in column order) and merge it. `where` is "record 7", "line 3". */
static int import_values(struct importer *im, const char *const v[PS_N_COLUMNS], const char *where)
{
	struct ps_cert_row row;
	const char *bad = NULL;
	size_t i;
	int rc;

	for (i = 0; bad == NULL && i < PS_N_COLUMNS; i++)
		if (!is_utf8(v[i]))
			return ps_fail(im->err, PS_EINVAL, "%s, %s: %s is not valid UTF-8",
				       im->name, where, ps_export_columns[i]);
	if (v[PS_COL_DEVICE_SERIAL][0] == '\0')
		bad = "device_serial is empty";
	else if (!is_lower_hex(v[PS_COL_CERT_SERIAL], 1, 78))
		bad = "cert_serial is not lower-case hexadecimal";
	else if (!is_lower_hex(v[PS_COL_CA_FINGERPRINT], 64, 64))
		bad = "ca_fingerprint is not 64 lower-case hex digits";
	else if (!known_state(v[PS_COL_STATE]))
		bad = "state is not one of issued, written, verified, failed, superseded, revoked";
	else if (v[PS_COL_STATION_ID][0] == '\0')
		bad = "station_id is empty";
	else if (!is_time(v[PS_COL_NOT_BEFORE]) || !is_time(v[PS_COL_NOT_AFTER]) ||
		 !is_time(v[PS_COL_CREATED_AT]) || !is_time(v[PS_COL_UPDATED_AT]))
		bad = "a time is not YYYY-MM-DDTHH:MM:SSZ";
	else if ((strcmp(v[PS_COL_STATE], PS_STATE_REVOKED) == 0) !=
		 (v[PS_COL_REVOKED_AT][0] != '\0'))
		bad = "revoked_at is set when, and only when, the state is revoked";
	else if (v[PS_COL_REVOKED_AT][0] != '\0' && !is_time(v[PS_COL_REVOKED_AT]))
		bad = "revoked_at is not YYYY-MM-DDTHH:MM:SSZ";
	if (bad != NULL)
		return ps_fail(im->err, PS_EINVAL, "%s, %s: %s", im->name, where, bad);
	ps_export_row_from_values(v, &row);
	rc = ps_db_import_row(im->db, &row, im->ctx, im->stats, im->err);
	if (rc < 0)
		ps_prefix(im->err, rc, "%s, %s", im->name, where);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* CSV                                                                                       */

static void csv_reset_fields(struct importer *im)
{
	size_t i;

	for (i = 0; i < PS_N_COLUMNS; i++) {
		free(im->fields[i]);
		im->fields[i] = NULL;
	}
	im->n_fields = 0;
}

static void csv_on_field(void *data, size_t len, void *user)
{
	struct importer *im = user;
	const char *s = data ? data : "";
	size_t i;

	if (im->rc < 0)
		return;
	if (im->n_fields == PS_N_COLUMNS) {
		im->rc = ps_fail(im->err, PS_EINVAL, "%s, record %ld: more than %d fields",
				 im->name, im->record + 1, PS_N_COLUMNS);
		return;
	}
	if (memchr(s, '\0', len) != NULL) {
		im->rc = ps_fail(im->err, PS_EINVAL, "%s, record %ld, field %zu: holds a NUL byte",
				 im->name, im->record + 1, im->n_fields + 1);
		return;
	}
	if (!im->have_header) {
		for (i = 0; i < PS_N_COLUMNS; i++)
			if (strlen(ps_export_columns[i]) == len &&
			    memcmp(ps_export_columns[i], s, len) == 0)
				break;
		if (i == PS_N_COLUMNS || im->fields[i] != NULL) {
			im->rc = ps_fail(im->err, PS_EINVAL,
					 "%s, record 1: field %zu of the header is %s column "
					 "'%.*s' (the header is the export's: device_serial,...)",
					 im->name, im->n_fields + 1,
					 i == PS_N_COLUMNS ? "an unknown" : "a repeated",
					 (int)(len > 40 ? 40 : len), s);
			return;
		}
		im->map[im->n_fields] = (int)i;
		im->fields[i] = strdup("");
	} else {
		i = (size_t)im->map[im->n_fields];
		im->fields[i] = strndup(s, len);
	}
	if (im->fields[i] == NULL) {
		im->rc = ps_fail(im->err, PS_ENOMEM, "out of memory");
		return;
	}
	im->n_fields++;
}

static void csv_on_record(int c, void *user)
{
	struct importer *im = user;
	char where[32];

	if (im->rc < 0)
		return;
	im->record++;
	if (im->n_fields != PS_N_COLUMNS) {
		im->rc = ps_fail(im->err, PS_EINVAL, "%s, record %ld: %zu fields, not %d", im->name,
				 im->record, im->n_fields, PS_N_COLUMNS);
		return;
	}
	if (!im->have_header) {
		im->have_header = true;
	} else {
		snprintf(where, sizeof(where), "record %ld", im->record);
		im->rc = import_values(im, (const char *const *)im->fields, where);
	}
	csv_reset_fields(im);
}

/* libcsv's default trims spaces and tabs around unquoted fields; RFC 4180 keeps them. */
static int csv_no_space(unsigned char c)
{
	return 0;
}

static int import_csv(struct importer *im, FILE *in, const char *first, size_t first_len)
{
	struct csv_parser p;
	char *chunk = NULL;
	size_t n;
	int rc = 0;

	if (csv_init(&p, CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL) != 0)
		return ps_fail(im->err, PS_ENOMEM, "out of memory");
	csv_set_space_func(&p, csv_no_space);
	chunk = malloc(CHUNK);
	if (chunk == NULL) {
		rc = ps_fail(im->err, PS_ENOMEM, "out of memory");
		goto out;
	}
	for (n = first_len; im->rc == 0; n = fread(chunk, 1, CHUNK, in)) {
		const char *data = first != NULL ? first : chunk;

		first = NULL;
		if (n == 0)
			break;
		if (csv_parse(&p, data, n, csv_on_field, csv_on_record, im) != n) {
			if (im->rc == 0)
				im->rc =
				    ps_fail(im->err, PS_EINVAL,
					    "%s, record %ld: %s (RFC 4180: a field with a comma, "
					    "quote or line break is quoted, a quote in it doubled)",
					    im->name, im->record + 1, csv_strerror(csv_error(&p)));
			break;
		}
		if (csv_get_buffer_size(&p) > MAX_FIELD && im->rc == 0)
			im->rc = ps_fail(im->err, PS_EINVAL,
					 "%s, record %ld: a field longer than %d "
					 "bytes",
					 im->name, im->record + 1, MAX_FIELD);
	}
	if (im->rc == 0 && ferror(in))
		im->rc = ps_fail(im->err, PS_EIO, "%s: read error: %s", im->name, strerror(errno));
	if (im->rc == 0 && csv_fini(&p, csv_on_field, csv_on_record, im) != 0)
		im->rc = ps_fail(im->err, PS_EINVAL, "%s, record %ld: %s", im->name, im->record + 1,
				 csv_strerror(csv_error(&p)));
	if (im->rc == 0 && !im->have_header)
		im->rc =
		    ps_fail(im->err, PS_EINVAL, "%s: empty, not even the CSV header", im->name);
	rc = im->rc;
out:
	csv_free(&p);
	csv_reset_fields(im);
	free(chunk);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* JSON lines                                                                                */

static int import_json_line(struct importer *im, const char *line, size_t len)
{
	const char *v[PS_N_COLUMNS];
	json_error_t jerr;
	json_t *obj = NULL;
	const char *key;
	json_t *value;
	char where[32];
	size_t i;
	int rc = 0;

	im->line++;
	snprintf(where, sizeof(where), "line %ld", im->line);
	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	if (len == 0)
		return 0; /* a blank line, at the end say */
	obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(obj)) {
		rc = ps_fail(im->err, PS_EINVAL, "%s, %s: not a JSON object%s%s", im->name, where,
			     obj == NULL ? ": " : "", obj == NULL ? jerr.text : "");
		goto out;
	}
	for (i = 0; i < PS_N_COLUMNS; i++) {
		v[i] = json_string_value(json_object_get(obj, ps_export_columns[i]));
		if (v[i] == NULL) {
			rc = ps_fail(im->err, PS_EINVAL, "%s, %s: no string member \"%s\"",
				     im->name, where, ps_export_columns[i]);
			goto out;
		}
		if (strlen(v[i]) !=
		    json_string_length(json_object_get(obj, ps_export_columns[i]))) {
			rc = ps_fail(im->err, PS_EINVAL, "%s, %s: \"%s\" holds a NUL", im->name,
				     where, ps_export_columns[i]);
			goto out;
		}
	}
	json_object_foreach(obj, key, value)
	{
		for (i = 0; i < PS_N_COLUMNS; i++)
			if (strcmp(key, ps_export_columns[i]) == 0)
				break;
		if (i == PS_N_COLUMNS) {
			rc = ps_fail(im->err, PS_EINVAL, "%s, %s: unknown member \"%.40s\"",
				     im->name, where, key);
			goto out;
		}
	}
	rc = import_values(im, v, where);
out:
	json_decref(obj);
	return rc;
}

static int import_jsonl(struct importer *im, FILE *in, const char *first, size_t first_len)
{
	char *chunk = malloc(CHUNK);
	size_t n;
	int rc = 0;

	if (chunk == NULL)
		return ps_fail(im->err, PS_ENOMEM, "out of memory");
	for (n = first_len; rc == 0; n = fread(chunk, 1, CHUNK, in)) {
		const char *data = first != NULL ? first : chunk;
		const char *end = data + n;

		first = NULL;
		if (n == 0)
			break;
		while (rc == 0 && data < end) {
			const char *nl = memchr(data, '\n', (size_t)(end - data));
			size_t take = (size_t)((nl ? nl : end) - data);

			if (im->len + take > MAX_LINE) {
				rc = ps_fail(im->err, PS_EINVAL,
					     "%s, line %ld: longer than %d bytes", im->name,
					     im->line + 1, MAX_LINE);
				break;
			}
			if (im->len + take + 1 > im->cap) {
				size_t cap = (im->len + take + 1) * 2;
				char *buf = realloc(im->buf, cap);

				if (buf == NULL) {
					rc = ps_fail(im->err, PS_ENOMEM, "out of memory");
					break;
				}
				im->buf = buf;
				im->cap = cap;
			}
			memcpy(im->buf + im->len, data, take);
			im->len += take;
			data += take;
			if (nl != NULL) {
				data++;
				rc = import_json_line(im, im->buf, im->len);
				im->len = 0;
			}
		}
	}
	if (rc == 0 && ferror(in))
		rc = ps_fail(im->err, PS_EIO, "%s: read error: %s", im->name, strerror(errno));
	if (rc == 0 && im->len > 0) /* the last line without its newline */
		rc = import_json_line(im, im->buf, im->len);
	free(chunk);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */

/* Does the text start like the export's CSV header: a column name, then a comma? */
static bool csv_header_start(const char *s, size_t len)
{
	size_t i, n;

	for (i = 0; i < PS_N_COLUMNS; i++) {
		n = strlen(ps_export_columns[i]);
		if (len > n && memcmp(s, ps_export_columns[i], n) == 0 && s[n] == ',')
			return true;
	}
	return false;
}

int ps_import(struct ps_db *db, FILE *in, const char *name, enum ps_import_format format,
	      const struct ps_audit_context *ctx, struct ps_import_stats *stats,
	      enum ps_import_format *used, struct ps_err *err)
{
	struct importer im;
	char *first = malloc(CHUNK);
	const char *start;
	size_t n, skip = 0;
	int rc, end;

	memset(stats, 0, sizeof(*stats));
	memset(&im, 0, sizeof(im));
	im.db = db;
	im.name = name;
	im.ctx = ctx;
	im.stats = stats;
	im.err = err;
	if (first == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	n = fread(first, 1, CHUNK, in);
	if (n == 0 && ferror(in)) {
		rc = ps_fail(err, PS_EIO, "%s: read error: %s", name, strerror(errno));
		goto out;
	}
	/* A UTF-8 byte order mark (spreadsheets write one) is not part of the data. */
	if (n >= 3 && memcmp(first, "\xef\xbb\xbf", 3) == 0)
		skip = 3;
	start = first + skip;
	if (format == PS_IMPORT_DETECT) {
		size_t i = 0;

		while (i < n - skip && strchr(" \t\r\n", start[i]) != NULL)
			i++;
		if (i < n - skip && start[i] == '{')
			format = PS_IMPORT_JSONL;
		else if (csv_header_start(start, n - skip))
			format = PS_IMPORT_CSV;
		else if (i == n - skip)
			format = PS_IMPORT_JSONL; /* empty: nothing to import either way */
		else {
			rc = ps_fail(err, PS_EINVAL,
				     "%s is neither JSON lines nor CSV with the export's header "
				     "(device_serial,common_name,...)",
				     name);
			goto out;
		}
	}
	if (used != NULL)
		*used = format;
	rc = ps_db_import_begin(db, err);
	if (rc < 0)
		goto out;
	if (format == PS_IMPORT_CSV)
		rc = import_csv(&im, in, start, n - skip);
	else
		rc = import_jsonl(&im, in, start, n - skip);
	if (rc < 0)
		memset(stats, 0, sizeof(*stats));
	end = ps_db_import_end(db, rc == 0, rc == 0 ? err : NULL);
	if (rc == 0)
		rc = end;
out:
	free(im.buf);
	free(first);
	return rc;
}
