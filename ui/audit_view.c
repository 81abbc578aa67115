/* audit_view.c — the audit database on the station's screen: the audit view (F3: search by
 * serial, commonName or certificate serial; rows newest first; a certificate's details),
 * export to CSV (F4), and a serial's history before it is re-provisioned. Queries run on
 * the UI thread's own connection (ps_station_ui_db). */
#include "export.h"
#include "tui_int.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- loading rows ---- */

struct load_ctx {
	struct tui_certs *out;
	const char *substr; /* keep only rows containing it (case-insensitive); NULL: all */
};

static bool contains_ci(const char *hay, const char *needle)
{
	size_t n = strlen(needle), i;

	if (n == 0)
		return true;
	for (; *hay != '\0'; hay++) {
		for (i = 0; i < n && hay[i] != '\0'; i++)
			if (tolower((unsigned char)hay[i]) != tolower((unsigned char)needle[i]))
				break;
		if (i == n)
			return true;
	}
	return false;
}

static int keep_row(const struct ps_cert_row *row, void *user)
{
	struct load_ctx *ctx = user;
	struct tui_certs *c = ctx->out;
	const char *src[CF_N];
	struct tui_cert *cert;
	size_t i;

	if (ctx->substr != NULL && !contains_ci(row->device_serial, ctx->substr) &&
	    !contains_ci(row->common_name, ctx->substr) &&
	    !contains_ci(row->cert_serial, ctx->substr))
		return 0;
	for (i = 0; i < c->n; i++)
		if (c->v[i].id == row->id)
			return 0; /* found by another field already */
	if (c->n >= c->max) {
		c->truncated = true;
		return PS_EBUSY; /* enough: stops ps_db_each */
	}
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 32;
		struct tui_cert *v = realloc(c->v, cap * sizeof(*v));

		if (v == NULL)
			return PS_ENOMEM;
		c->v = v;
		c->cap = cap;
	}
	src[CF_SERIAL] = row->device_serial;
	src[CF_CN] = row->common_name;
	src[CF_CERT_SERIAL] = row->cert_serial;
	src[CF_NOT_BEFORE] = row->not_before;
	src[CF_NOT_AFTER] = row->not_after;
	src[CF_STATE] = row->state;
	src[CF_REASON] = row->reason;
	src[CF_REVOKED_AT] = row->revoked_at;
	src[CF_STATION] = row->station_id;
	src[CF_OPERATOR] = row->operator_name;
	src[CF_BATCH] = row->batch;
	src[CF_PUBKEY] = row->pubkey_sha256;
	src[CF_TARGET] = row->target;
	src[CF_IMAGE] = row->image_name;
	src[CF_CREATED] = row->created_at;
	src[CF_UPDATED] = row->updated_at;
	cert = &c->v[c->n];
	memset(cert, 0, sizeof(*cert));
	cert->id = row->id;
	for (i = 0; i < CF_N; i++) {
		cert->f[i] = strdup(src[i] ? src[i] : "");
		if (cert->f[i] == NULL) {
			while (i-- > 0)
				free(cert->f[i]);
			return PS_ENOMEM;
		}
	}
	c->n++;
	return 0;
}

int tui_certs_load(struct ps_db *db, const struct ps_db_filter *filter, const char *substr,
		   struct tui_certs *out, size_t max, struct ps_err *err)
{
	struct load_ctx ctx = {.out = out, .substr = substr};
	int rc;

	if (db == NULL)
		return ps_fail(err, PS_EDB, "the audit database is not open");
	out->max = max;
	rc = ps_db_each(db, filter, keep_row, &ctx, err);
	if (rc == PS_EBUSY && out->truncated)
		rc = 0;
	else if (rc == PS_ENOMEM)
		rc = ps_fail(err, rc, "out of memory listing certificates");
	return rc;
}

void tui_certs_free(struct tui_certs *c)
{
	size_t i, j;

	for (i = 0; i < c->n; i++)
		for (j = 0; j < CF_N; j++)
			free(c->v[i].f[j]);
	free(c->v);
	memset(c, 0, sizeof(*c));
}

static int by_id_desc(const void *a, const void *b)
{
	const struct tui_cert *x = a, *y = b;

	return x->id < y->id ? 1 : x->id > y->id ? -1 : 0;
}

/* "2026-11-23T11:07:36Z" as local time, "2026-11-23 12:07:36". */
static void local_time(const char *rfc3339, char *out, size_t len)
{
	time_t when;

	if (rfc3339[0] != '\0' && ps_parse_time(rfc3339, &when, NULL) == 0)
		tui_fmt_local_time(when, TUI_DATE_TIME, out, len);
	else
		snprintf(out, len, "%s", rfc3339);
}

/* ---- the audit view ---- */

static void audit_search(struct tui *t)
{
	struct tui_audit *a = &t->audit;
	struct ps_db *db = ps_station_ui_db(t->st);
	struct ps_err err = {""};
	char text[TUI_INPUT_MAX + 1], hex[TUI_INPUT_MAX + 1];
	size_t i, n = 0;
	int rc = 0;

	snprintf(text, sizeof(text), "%s", a->search.buf);
	/* trim: a scanner or a paste may bring spaces */
	while (text[0] == ' ')
		memmove(text, text + 1, strlen(text));
	for (i = strlen(text); i > 0 && text[i - 1] == ' '; i--)
		text[i - 1] = '\0';
	snprintf(a->searched, sizeof(a->searched), "%s", a->search.buf);
	tui_certs_free(&a->certs);
	a->sel = a->top = 0;
	a->details = false;
	if (db == NULL) {
		a->info_is_error = true;
		snprintf(a->info, sizeof(a->info), "the audit database is not open");
		return;
	}
	if (text[0] == '\0') {
		struct ps_db_filter f = {.newest_first = true};

		rc = tui_certs_load(db, &f, NULL, &a->certs, TUI_AUDIT_MAX, &err);
	} else {
		/* exact matches by the indexed columns; the certificate serial as stored:
		 * lower-case hex without colons */
		struct ps_db_filter by_serial = {.device_serial = text, .newest_first = true};
		struct ps_db_filter by_cn = {.common_name = text, .newest_first = true};
		struct ps_db_filter by_cert = {.cert_serial = hex, .newest_first = true};

		for (i = 0; text[i] != '\0'; i++)
			if (text[i] != ':')
				hex[n++] = (char)tolower((unsigned char)text[i]);
		hex[n] = '\0';
		rc = tui_certs_load(db, &by_serial, NULL, &a->certs, TUI_AUDIT_MAX, &err);
		if (rc == 0)
			rc = tui_certs_load(db, &by_cn, NULL, &a->certs, TUI_AUDIT_MAX, &err);
		if (rc == 0)
			rc = tui_certs_load(db, &by_cert, NULL, &a->certs, TUI_AUDIT_MAX, &err);
		/* none: rows containing the text, newest first */
		if (rc == 0 && a->certs.n == 0) {
			struct ps_db_filter all = {.newest_first = true};

			rc = tui_certs_load(db, &all, text, &a->certs, TUI_AUDIT_MAX, &err);
		}
		if (a->certs.n > 1)
			qsort(a->certs.v, a->certs.n, sizeof(a->certs.v[0]), by_id_desc);
	}
	a->info_is_error = rc < 0;
	if (rc < 0)
		snprintf(a->info, sizeof(a->info), "%s", err.msg);
	else if (a->certs.n == 0)
		snprintf(a->info, sizeof(a->info), "%s",
			 text[0] ? "no certificate matches" : "the audit database is empty");
	else
		snprintf(a->info, sizeof(a->info), "%zu%s certificate%s, newest first%s",
			 a->certs.n, a->certs.truncated ? "+" : "", a->certs.n == 1 ? "" : "s",
			 a->certs.truncated ? " (the newest shown; narrow the search)" : "");
}

void tui_audit_open(struct tui *t)
{
	tui_field_set(&t->audit.search, "");
	t->mode = MODE_AUDIT;
	audit_search(t);
}

void tui_audit_close(struct tui *t)
{
	tui_certs_free(&t->audit.certs);
	t->audit.details = false;
}

static void audit_move(struct tui_audit *a, long delta)
{
	long sel = (long)a->sel + delta;

	if (a->certs.n == 0)
		return;
	if (sel < 0)
		sel = 0;
	if (sel >= (long)a->certs.n)
		sel = (long)a->certs.n - 1;
	a->sel = (size_t)sel;
}

void tui_audit_key(struct tui *t, struct tui_key k)
{
	struct tui_audit *a = &t->audit;

	if (k.fn) {
		switch (k.code) {
		case KEY_UP:
			audit_move(a, -1);
			return;
		case KEY_DOWN:
			audit_move(a, 1);
			return;
		case KEY_PPAGE:
			audit_move(a, -10);
			return;
		case KEY_NPAGE:
			audit_move(a, 10);
			return;
		case KEY_HOME:
			audit_move(a, -(long)a->certs.n);
			return;
		case KEY_END:
			audit_move(a, (long)a->certs.n);
			return;
		case KEY_F(3):
		case KEY_F(10):
			if (a->details) {
				a->details = false;
				return;
			}
			tui_audit_close(t);
			t->mode = MODE_DASH;
			return;
		default:
			break;
		}
	}
	if (!k.fn && k.code == TUI_ESC) {
		if (a->details) {
			a->details = false;
			return;
		}
		tui_audit_close(t);
		t->mode = MODE_DASH;
		return;
	}
	if (!k.fn && (k.code == '\r' || k.code == '\n')) {
		if (a->details)
			a->details = false;
		else if (strcmp(a->searched, a->search.buf) != 0 || a->certs.n == 0)
			audit_search(t);
		else
			a->details = true;
		return;
	}
	if (a->details && (k.fn || k.code == 0x7f || k.code == 8)) {
		a->details = false; /* Backspace goes back to the list */
		return;
	}
	if (tui_field_key(&a->search, k))
		a->details = false;
}

static int put_wrapped(const struct tui *t, int y, int x, int width, int max_lines, const char *s,
		       attr_t attr)
{
	char line[512];
	int lines = 0;
	size_t len = strlen(s), off = 0, take;

	if (width <= 0)
		return 0;
	do {
		take = len - off;
		if (take > (size_t)width)
			take = (size_t)width;
		/* a UTF-8 sequence is never split */
		while (take > 0 && off + take < len &&
		       ((unsigned char)s[off + take] & 0xc0) == 0x80)
			take--;
		if (take == 0)
			take = len - off < (size_t)width ? len - off : 1;
		if (take >= sizeof(line))
			take = sizeof(line) - 1;
		memcpy(line, s + off, take);
		line[take] = '\0';
		tui_put(t, y + lines, x, width, line, attr);
		off += take;
		lines++;
	} while (off < len && lines < max_lines);
	return lines ? lines : 1;
}

static void audit_draw_details(struct tui *t, int y, int x, int h, int w)
{
	const struct tui_cert *c = &t->audit.certs.v[t->audit.sel];
	static const struct {
		const char *label;
		int field;
	} rows[] = {
	    {"serial", CF_SERIAL},
	    {"commonName", CF_CN},
	    {"cert serial", CF_CERT_SERIAL},
	    {"not before", CF_NOT_BEFORE},
	    {"not after", CF_NOT_AFTER},
	    {"state", CF_STATE},
	    {"reason", CF_REASON},
	    {"revoked at", CF_REVOKED_AT},
	    {"station", CF_STATION},
	    {"operator", CF_OPERATOR},
	    {"batch", CF_BATCH},
	    {"pubkey sha256", CF_PUBKEY},
	    {"target", CF_TARGET},
	    {"image", CF_IMAGE},
	    {"created", CF_CREATED},
	    {"updated", CF_UPDATED},
	};
	int line = 0, label_w = 15;
	size_t i;

	for (i = 0; i < PS_ARRAY_SIZE(rows) && line < h - 1; i++) {
		const char *v = c->f[rows[i].field];
		char when[64];
		attr_t attr = A_NORMAL;

		if (v[0] == '\0' && (rows[i].field == CF_REVOKED_AT || rows[i].field == CF_REASON ||
				     rows[i].field == CF_IMAGE || rows[i].field == CF_BATCH ||
				     rows[i].field == CF_TARGET))
			continue;
		if (rows[i].field == CF_NOT_BEFORE || rows[i].field == CF_NOT_AFTER ||
		    rows[i].field == CF_CREATED || rows[i].field == CF_UPDATED ||
		    rows[i].field == CF_REVOKED_AT) {
			local_time(v, when, sizeof(when));
			v = when;
		}
		if (rows[i].field == CF_STATE)
			attr = strcmp(v, PS_STATE_VERIFIED) == 0 ? tui_attr(t, R_OK)
			       : strcmp(v, PS_STATE_FAILED) == 0 || strcmp(v, PS_STATE_REVOKED) == 0
				   ? tui_attr(t, R_ERR)
				   : A_BOLD;
		tui_put(t, y + line, x, label_w, rows[i].label, tui_attr(t, R_TITLE));
		line += put_wrapped(t, y + line, x + label_w, w - label_w, h - 1 - line, v, attr);
	}
	tui_put(t, y + h - 1, x, w,
		t->utf8 ? "Esc or Enter: back to the list   \u2191\u2193: previous / next row"
			: "Esc or Enter: back to the list   Up/Down: previous / next row",
		tui_attr(t, R_DIM));
}

void tui_audit_draw(struct tui *t)
{
	struct tui_audit *a = &t->audit;
	int y, x, h, w, list_h, i, px;
	int cw_time = 19, cw_serial, cw_cn, cw_state = 9, cw_reason;
	char head[256];

	tui_modal(t, LINES, 110, "audit: certificates issued", &y, &x, &h, &w);
	if (h < 5 || w < 30)
		return;
	if (a->details && a->certs.n > 0) {
		char title[256];

		snprintf(title, sizeof(title), "certificate %s",
			 a->certs.v[a->sel].f[CF_CERT_SERIAL]);
		tui_put(t, y, x, w, title, tui_attr(t, R_TITLE));
		audit_draw_details(t, y + 2, x, h - 2, w);
		return;
	}
	px =
	    tui_put(t, y, x, w, w >= 70 ? "Search (serial, commonName, cert serial): " : "Search: ",
		    tui_attr(t, R_TITLE));
	tui_field_draw(t, y, x + px, w - px, &a->search, A_UNDERLINE);
	tui_put(t, y + 1, x, w, a->info, tui_attr(t, a->info_is_error ? R_ERR : R_DIM));

	/* columns: created, serial, commonName, state, reason */
	cw_serial = w >= 90 ? 18 : 14;
	cw_cn = w - cw_time - cw_serial - cw_state - 4;
	cw_reason = 0;
	if (cw_cn < 8) { /* a narrow screen: the commonName is in the details */
		cw_serial += cw_cn > 0 ? cw_cn : 0;
		cw_cn = 0;
	}
	if (cw_cn > 30) {
		cw_reason = cw_cn - 30 - 1;
		cw_cn = 30;
	}
	snprintf(head, sizeof(head), "%-*s %-*s %-*s%s%-*s %s", cw_time, "CREATED", cw_serial,
		 "SERIAL", cw_cn, cw_cn ? "COMMON NAME" : "", cw_cn ? " " : "", cw_state, "STATE",
		 cw_reason ? "REASON" : "");
	tui_put(t, y + 2, x, w, head, tui_attr(t, R_TITLE) | A_UNDERLINE);
	list_h = h - 4;
	if (a->sel < a->top)
		a->top = a->sel;
	if (list_h > 0 && a->sel >= a->top + (size_t)list_h)
		a->top = a->sel - (size_t)list_h + 1;
	for (i = 0; i < list_h && a->top + (size_t)i < a->certs.n; i++) {
		const struct tui_cert *c = &a->certs.v[a->top + (size_t)i];
		bool sel = a->top + (size_t)i == a->sel;
		int ry = y + 3 + i, cx = x;
		char when[64];
		attr_t base = sel ? tui_attr(t, R_SEL) : A_NORMAL, st;

		if (sel)
			tui_fill(ry, x, w, base);
		local_time(c->f[CF_CREATED], when, sizeof(when));
		tui_put(t, ry, cx, cw_time, when, base);
		cx += cw_time + 1;
		tui_put(t, ry, cx, cw_serial, c->f[CF_SERIAL], base);
		cx += cw_serial + 1;
		if (cw_cn > 0) {
			tui_put(t, ry, cx, cw_cn, c->f[CF_CN], base);
			cx += cw_cn + 1;
		}
		st = strcmp(c->f[CF_STATE], PS_STATE_VERIFIED) == 0 ? tui_attr(t, R_OK)
		     : strcmp(c->f[CF_STATE], PS_STATE_FAILED) == 0 ||
			     strcmp(c->f[CF_STATE], PS_STATE_REVOKED) == 0
			 ? tui_attr(t, R_ERR)
			 : A_NORMAL;
		tui_put(t, ry, cx, cw_state, c->f[CF_STATE], sel ? base : st);
		cx += cw_state + 1;
		if (cw_reason > 0)
			tui_put(t, ry, cx, cw_reason, c->f[CF_REASON], base);
	}
	tui_put(t, y + h - 1, x, w,
		t->utf8 ? "Enter: search, or details of the row   \u2191\u2193 PgUp PgDn: move   "
			  "Esc: close"
			: "Enter: search, or details of the row   Up/Down PgUp PgDn: move   "
			  "Esc: close",
		tui_attr(t, R_DIM));
}

/* ---- export ---- */

void tui_export_open(struct tui *t)
{
	char name[128], stamp[32];

	tui_fmt_local_time(ps_now(), TUI_STAMP, stamp, sizeof(stamp));
	snprintf(name, sizeof(name), "provstation-audit-%s.csv", stamp);
	tui_field_set(&t->export.path, name);
	t->export.ask_overwrite = false;
	t->export.error[0] = '\0';
	t->mode = MODE_EXPORT;
}

/* Write every row as CSV into path (through path.partial, renamed when complete). */
static int export_csv(struct tui *t, const char *path, long *count, struct ps_err *err)
{
	char tmp[4200];
	FILE *f = NULL;
	int rc;

	if (snprintf(tmp, sizeof(tmp), "%s.partial", path) >= (int)sizeof(tmp))
		return ps_fail(err, PS_EINVAL, "file name too long");
	f = fopen(tmp, "w");
	if (f == NULL) {
		rc = ps_fail(err, PS_EIO, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	rc = ps_station_ui_db(t->st) == NULL
		 ? ps_fail(err, PS_EDB, "the audit database is not open")
		 : ps_export(ps_station_ui_db(t->st), NULL, PS_EXPORT_CSV, f, count, err);
	if (rc == 0 && (fflush(f) != 0 || fsync(fileno(f)) != 0 || ferror(f)))
		rc = ps_fail(err, PS_EIO, "%s: %s", tmp, strerror(errno));
	if (fclose(f) != 0 && rc == 0)
		rc = ps_fail(err, PS_EIO, "%s: %s", tmp, strerror(errno));
	f = NULL;
	if (rc == 0 && rename(tmp, path) != 0)
		rc = ps_fail(err, PS_EIO, "%s: %s", path, strerror(errno));
out:
	if (rc < 0)
		unlink(tmp);
	return rc;
}

static void export_now(struct tui *t, bool overwrite)
{
	struct tui_export *e = &t->export;
	struct ps_err err = {""};
	struct stat sb;
	long count = 0;

	e->error[0] = '\0';
	if (e->path.len == 0) {
		snprintf(e->error, sizeof(e->error), "type a file name");
		return;
	}
	if (!overwrite && stat(e->path.buf, &sb) == 0) {
		e->ask_overwrite = true;
		return;
	}
	if (export_csv(t, e->path.buf, &count, &err) < 0) {
		snprintf(e->error, sizeof(e->error), "%s", err.msg);
		beep();
		return;
	}
	tui_set_notice(t, false, "Exported %ld row%s to %s", count, count == 1 ? "" : "s",
		       e->path.buf);
	t->mode = MODE_DASH;
}

void tui_export_key(struct tui *t, struct tui_key k)
{
	struct tui_export *e = &t->export;

	if (e->ask_overwrite) {
		e->ask_overwrite = false;
		if (!k.fn && (k.code == 'y' || k.code == 'Y'))
			export_now(t, true);
		return;
	}
	if ((!k.fn && k.code == TUI_ESC) || (k.fn && (k.code == KEY_F(4) || k.code == KEY_F(10)))) {
		t->mode = MODE_DASH;
		return;
	}
	if (!k.fn && (k.code == '\r' || k.code == '\n')) {
		export_now(t, false);
		return;
	}
	if (tui_field_key(&e->path, k))
		e->error[0] = '\0';
}

void tui_export_draw(struct tui *t)
{
	struct tui_export *e = &t->export;
	char cwd[1024], line[1200];
	int y, x, h, w, px;

	tui_modal(t, 6, 76, "export the audit database as CSV", &y, &x, &h, &w);
	if (getcwd(cwd, sizeof(cwd)) == NULL)
		snprintf(cwd, sizeof(cwd), "?");
	snprintf(line, sizeof(line), "Every certificate, oldest first (RFC 4180). In %s:", cwd);
	tui_put(t, y, x, w, line, A_NORMAL);
	px = tui_put(t, y + 2, x, w, "File: ", tui_attr(t, R_TITLE));
	tui_field_draw(t, y + 2, x + px, w - px, &e->path, A_UNDERLINE);
	if (e->ask_overwrite) {
		snprintf(line, sizeof(line), "%s exists: overwrite? y/N", e->path.buf);
		tui_put(t, y + 3, x, w, line, tui_attr(t, R_WARN));
	} else if (e->error[0] != '\0') {
		tui_put(t, y + 3, x, w, e->error, tui_attr(t, R_ERR));
	}
	if (h > 5)
		tui_put(t, y + h - 1, x, w, "Enter: export   Esc: cancel", tui_attr(t, R_DIM));
}

/* ---- a serial seen before ---- */

void tui_reprov_draw(struct tui *t)
{
	struct tui_reprov *r = &t->reprov;
	const struct ps_slot_view *v = tui_slot_by_id(t, r->slot);
	char line[1024], when[64];
	int y, x, h, w, i, n = (int)r->history.n;

	tui_modal(t, n + 6, 100, "serial provisioned before", &y, &x, &h, &w);
	snprintf(line, sizeof(line), "%s has %d certificate%s%s, newest first:", r->serial, n,
		 n == 1 ? "" : "s", r->history.truncated ? " or more" : "");
	tui_put(t, y, x, w, line, tui_attr(t, R_TITLE));
	if (r->error[0] != '\0')
		tui_put(t, y + 1, x, w, r->error, tui_attr(t, R_ERR));
	for (i = 0; i < n && i < h - 4; i++) {
		const struct tui_cert *c = &r->history.v[i];

		local_time(c->f[CF_CREATED], when, sizeof(when));
		snprintf(line, sizeof(line), "%s  %-9s %s  cert %.16s  %s%s%s", when,
			 c->f[CF_STATE], c->f[CF_CN], c->f[CF_CERT_SERIAL], c->f[CF_STATION],
			 c->f[CF_REASON][0] ? "  " : "", c->f[CF_REASON]);
		tui_put(t, y + 1 + i, x, w, line,
			strcmp(c->f[CF_STATE], PS_STATE_FAILED) == 0 ? tui_attr(t, R_ERR)
								     : A_NORMAL);
	}
	snprintf(line, sizeof(line), "Re-provision %s on %s with a new key and certificate? y/N",
		 r->serial, v ? v->name : "the slot waiting longest");
	tui_put_pad(t, y + h - 1, x, w, line, tui_attr(t, R_WARN) | A_REVERSE);
	tui_cursor(t, y + h - 1, x + (tui_width(t, line) < w ? tui_width(t, line) : w - 1));
}
