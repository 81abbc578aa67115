/* dashboard.c — the station's main screen: the header (station, CA, audit database,
 * preauthorization, today's counts), a row per slot with its state and progress, the log
 * pane, the status and serial input lines, the function-key bar; and the help screen. */
#include "preauth.h"
#include "tui_int.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

#define HEADER_ROWS 3
#define LOG_MIN	    3

enum { C_NAME, C_CONTENT, C_SERIAL, C_CN, C_STATE, C_DETAIL, C_N };

struct layout {
	int slots_y, slots_h; /* slot rows */
	int log_y, log_h;     /* log lines (below a separator) */
	int status_y, input_y, keys_y;
	int w[C_N], x[C_N]; /* column widths (0: hidden) and positions */
};

const char *tui_state_label(enum ps_slot_state state, bool short_form)
{
	static const char *const names[][2] = {
	    [PS_SLOT_EMPTY] = {"EMPTY", "EMPTY"},
	    [PS_SLOT_DETECTED] = {"DETECTED", "DETECTED"},
	    [PS_SLOT_WAITING_SERIAL] = {"WAITING FOR SERIAL", "SCAN SERIAL"},
	    [PS_SLOT_WAITING_CONFIRM] = {"WAITING FOR START", "PRESS START"},
	    [PS_SLOT_FLASHING] = {"FLASHING", "FLASHING"},
	    [PS_SLOT_PERSONALIZING] = {"PERSONALIZING", "PERSONALIZING"},
	    [PS_SLOT_VERIFYING] = {"VERIFYING", "VERIFYING"},
	    [PS_SLOT_PREAUTH_QUEUED] = {"PREAUTHORIZATION QUEUED", "PREAUTH QUEUED"},
	    [PS_SLOT_PASS] = {"PASS", "PASS"},
	    [PS_SLOT_FAIL] = {"FAIL", "FAIL"},
	    [PS_SLOT_NOT_A_SLOT] = {"NOT A SLOT", "NOT A SLOT"},
	};

	if ((size_t)state < PS_ARRAY_SIZE(names) && names[state][0] != NULL)
		return names[state][short_form ? 1 : 0];
	return "?";
}

/* A slot's state label: a flashing slot reading its image back says so (in no more columns
 * than the state column has anyway, so that the row does not shift). */
static const char *slot_label(const struct ps_slot_view *v, bool short_form)
{
	if (v->state == PS_SLOT_FLASHING && v->flash_phase == PS_FLASH_VERIFYING)
		return "VERIFY IMAGE";
	return tui_state_label(v->state, short_form);
}

static enum tui_role state_role(enum ps_slot_state state)
{
	switch (state) {
	case PS_SLOT_PASS:
		return R_PASS;
	case PS_SLOT_FAIL:
		return R_FAIL;
	case PS_SLOT_FLASHING:
	case PS_SLOT_PERSONALIZING:
	case PS_SLOT_VERIFYING:
	case PS_SLOT_PREAUTH_QUEUED:
		return R_BUSY;
	case PS_SLOT_DETECTED:
	case PS_SLOT_WAITING_SERIAL:
	case PS_SLOT_WAITING_CONFIRM:
		return R_WAIT;
	default:
		return R_DIM;
	}
}

const struct ps_slot_view *tui_slot_by_id(const struct tui *t, int id)
{
	size_t i;

	for (i = 0; i < t->n_slots; i++)
		if (t->slots[i].id == id)
			return &t->slots[i];
	return NULL;
}

static void slot_content(const struct ps_slot_view *v, char *out, size_t len)
{
	char size[32] = "";

	if (v->size > 0)
		tui_fmt_size(v->size, size, sizeof(size));
	if (v->is_virtual)
		snprintf(out, len, "image %s", size);
	else if (v->state == PS_SLOT_EMPTY)
		snprintf(out, len, "%s", "");
	else
		snprintf(out, len, "%s%s%s%s%s", v->vendor, v->vendor[0] ? " " : "", v->model,
			 v->model[0] ? " " : "", size);
}

static int max_width(const struct tui *t, int col)
{
	char buf[256];
	int m = 0, w;
	size_t i;

	for (i = 0; i < t->n_slots; i++) {
		const struct ps_slot_view *v = &t->slots[i];

		switch (col) {
		case C_NAME:
			w = tui_width(t, v->name);
			break;
		case C_CONTENT:
			slot_content(v, buf, sizeof(buf));
			w = tui_width(t, buf);
			break;
		case C_SERIAL:
			w = tui_width(t, v->serial);
			break;
		case C_CN:
			w = tui_width(t, v->common_name);
			break;
		default:
			w = (int)strlen(slot_label(v, false));
			break;
		}
		if (w > m)
			m = w;
	}
	return m;
}

static int clamp(int v, int lo, int hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

/* Rows top to bottom, and columns that shrink sensibly: at 80 columns the slot, content,
 * serial, state and details show; the commonName appears when there is room for it. */
static void compute_layout(const struct tui *t, struct layout *l)
{
	static const char *const headings[C_N] = {"SLOT",	 "CONTENT", "SERIAL",
						  "COMMON NAME", "STATE",   "DETAILS"};
	int pref[C_N], avail = COLS - 2, used, extra, i, rows, x, log_min;

	/* rows: header, column headings, slots, log separator and lines, status, input, keys */
	rows = LINES - HEADER_ROWS - 1 - 1 - 3;
	log_min = rows >= 2 * LOG_MIN ? LOG_MIN : rows > 2 ? 1 : 0;
	l->slots_y = HEADER_ROWS + 1;
	l->slots_h = clamp((int)t->n_slots, 1, rows - log_min > 1 ? rows - log_min : 1);
	l->log_y = l->slots_y + l->slots_h + 1;
	l->log_h = rows - l->slots_h > 0 ? rows - l->slots_h : 0;
	l->status_y = LINES - 3;
	l->input_y = LINES - 2;
	l->keys_y = LINES - 1;

	for (i = 0; i < C_N; i++)
		pref[i] = clamp(max_width(t, i), (int)strlen(headings[i]), 32);
	pref[C_STATE] = clamp(max_width(t, C_STATE), 14, 23);
	/* compact widths first */
	l->w[C_NAME] = clamp(pref[C_NAME], 4, 12);
	l->w[C_CONTENT] = clamp(pref[C_CONTENT], 7, 12);
	l->w[C_SERIAL] = clamp(pref[C_SERIAL], 6, 12);
	l->w[C_CN] = 0;
	l->w[C_STATE] = 14;
	l->w[C_DETAIL] = 24;
	used = l->w[C_NAME] + l->w[C_CONTENT] + l->w[C_SERIAL] + l->w[C_STATE] + l->w[C_DETAIL] + 4;
	if (used > avail) { /* narrower than 80 columns: drop the content, then squeeze */
		used -= l->w[C_CONTENT] + 1;
		l->w[C_CONTENT] = 0;
		l->w[C_DETAIL] = clamp(24 - (used - avail), 8, 24);
		used = l->w[C_NAME] + l->w[C_SERIAL] + l->w[C_STATE] + l->w[C_DETAIL] + 3;
		if (used > avail)
			l->w[C_STATE] = clamp(14 - (used - avail), 4, 14);
	}
	extra = avail - (l->w[C_NAME] + l->w[C_CONTENT] + l->w[C_SERIAL] + l->w[C_STATE] +
			 l->w[C_DETAIL] + (l->w[C_CONTENT] ? 4 : 3));
	/* then, with room to spare: full names, serials and states, the commonName, content */
	{
		static const int order[] = {C_NAME, C_SERIAL, C_STATE};
		size_t k;

		for (k = 0; k < PS_ARRAY_SIZE(order) && extra > 0; k++) {
			int grow = clamp(pref[order[k]] - l->w[order[k]], 0, extra);

			l->w[order[k]] += grow;
			extra -= grow;
		}
	}
	/* the commonName only once the details (progress, FAIL reasons) have 40 columns */
	if (l->w[C_DETAIL] + extra >= 40 + 1 + 12) {
		l->w[C_CN] = clamp(pref[C_CN], 12, l->w[C_DETAIL] + extra - 40 - 1);
		extra -= l->w[C_CN] + 1;
	}
	if (l->w[C_CONTENT] > 0 && extra > 0) {
		int grow = clamp(clamp(pref[C_CONTENT], 0, 24) - l->w[C_CONTENT], 0, extra);

		l->w[C_CONTENT] += grow;
		extra -= grow;
	}
	if (extra > 0)
		l->w[C_DETAIL] += extra;
	x = 2;
	for (i = 0; i < C_N; i++) {
		l->x[i] = x;
		if (l->w[i] > 0)
			x += l->w[i] + 1;
	}
}

/* The preauthorization state for the header: off, online, or OFFLINE with N queued. */
static void preauth_text(const struct tui *t, char *out, size_t len, enum tui_role *role)
{
	struct ps_preauth_status status;
	char line[256];

	if (!t->cfg->preauth_enabled || ps_station_preauth_status(t->st, &status, NULL) < 0) {
		snprintf(out, len, "off");
		*role = R_DIM;
		return;
	}
	ps_preauth_status_line(&status, line, sizeof(line));
	/* The header prints "preauth " itself; a long line is cut at the header's width. */
	{
		const char *text = strncmp(line, "preauth: ", 9) == 0 ? line + 9 : line;
		size_t n = strlen(text) < len ? strlen(text) : len - 1;

		memcpy(out, text, n);
		out[n] = '\0';
	}
	*role = status.state == PS_PREAUTH_OFFLINE ? R_WARN : R_NORMAL;
}

/* Show the end of a long path ("…/demo/audit.db") in width columns. */
static void put_path(const struct tui *t, int y, int x, int width, const char *path, attr_t a)
{
	const char *p = path;
	char buf[1100];

	while (tui_width(t, p) > width && strchr(p + 1, '/') != NULL)
		p = strchr(p + 1, '/');
	if (p != path) {
		snprintf(buf, sizeof(buf), "%s%s", t->utf8 ? "\u2026" : "...", p);
		p = buf;
	}
	tui_put(t, y, x, width, p, a);
}

static void draw_header(struct tui *t)
{
	char left[512], right[128], buf[256], exp[32], pre[64];
	attr_t head = tui_attr(t, R_HEAD);
	enum tui_role pre_role;
	long days_left = (long)((t->ca->not_after - ps_now()) / 86400);
	int rw, x;

	tui_fill(0, 0, COLS, head);
	snprintf(right, sizeof(right), " today: %ld PASS  %ld FAIL ", t->counts.pass_today,
		 t->counts.fail_today);
	rw = (int)strlen(right);
	if (rw > COLS)
		rw = 0;
	snprintf(left, sizeof(left), " provstation%s%s  station %s%s%s%s%s", t->title ? " " : "",
		 t->title ? t->title : "", t->cfg->station_id ? t->cfg->station_id : "?",
		 t->cfg->batch && t->cfg->batch[0] ? "  batch " : "",
		 t->cfg->batch ? t->cfg->batch : "",
		 t->cfg->operator_name && t->cfg->operator_name[0] ? "  operator " : "",
		 t->cfg->operator_name ? t->cfg->operator_name : "");
	tui_put(t, 0, 0, COLS - rw - 1, left, head);
	if (rw > 0)
		tui_put(t, 0, COLS - rw, rw, right, head);

	x = tui_put(t, 1, 1, COLS - 1, "CA ", tui_attr(t, R_TITLE)) + 1;
	tui_fmt_local_time(t->ca->not_after, TUI_DATE, exp, sizeof(exp));
	if (days_left < 0)
		snprintf(buf, sizeof(buf), "  EXPIRED %s", exp);
	else if (days_left < 30)
		snprintf(buf, sizeof(buf), "  expires %s (in %ld days)", exp, days_left);
	else
		snprintf(buf, sizeof(buf), "  expires %s", exp);
	rw = (int)strlen(buf);
	x += tui_put(t, 1, x, COLS - x - rw, t->ca->subject, A_NORMAL);
	tui_put(t, 1, x, COLS - x, buf, tui_attr(t, days_left < 30 ? R_WARN : R_NORMAL));

	preauth_text(t, pre, sizeof(pre), &pre_role);
	x = 1;
	x += tui_put(t, 2, x, COLS - x, "preauth ", tui_attr(t, R_TITLE));
	x += tui_put(t, 2, x, COLS - x, pre, tui_attr(t, pre_role));
	x += tui_put(t, 2, x, COLS - x, "  jobs ", tui_attr(t, R_TITLE));
	x += tui_putf(t, 2, x, COLS - x, tui_attr(t, t->counts.jobs_running ? R_BUSY : R_NORMAL),
		      "%ld running", t->counts.jobs_running);
	x += tui_put(t, 2, x, COLS - x, "  audit ", tui_attr(t, R_TITLE));
	put_path(t, 2, x, COLS - x, t->cfg->database ? t->cfg->database : "?", A_NORMAL);
}

/* A message without the slot's own target path in front ("x.img is not a disk image"
 * rather than the image file's full path): the row already says which slot it is. */
static const char *short_message(const struct ps_slot_view *v, char *buf, size_t len)
{
	size_t n = strlen(v->target);
	const char *base;

	if (n == 0 || strncmp(v->message, v->target, n) != 0)
		return v->message;
	base = strrchr(v->target, '/');
	snprintf(buf, len, "%s%s", base ? base + 1 : v->target, v->message + n);
	return buf;
}

static void draw_detail(struct tui *t, int y, int x, int width, const struct ps_slot_view *v)
{
	char buf[512], dur[32], msg[512];
	double elapsed = difftime(ps_now(), v->since);

	if (width <= 0)
		return;
	switch (v->state) {
	case PS_SLOT_FLASHING:
	case PS_SLOT_PERSONALIZING:
	case PS_SLOT_VERIFYING:
		if (v->progress >= 0) {
			tui_progress(t, y, x, width, v);
			return;
		}
		tui_fmt_duration(elapsed, dur, sizeof(dur));
		if (v->state == PS_SLOT_FLASHING && v->flash_done > 0) {
			/* the image's size is not known yet: what is done, and how fast */
			char done[32];

			tui_fmt_size(v->flash_done, done, sizeof(done));
			snprintf(buf, sizeof(buf), "%s %.1f MB/s  %s", done, v->rate / 1e6, dur);
		} else {
			snprintf(buf, sizeof(buf), "%s  %s", v->message, dur);
		}
		tui_put(t, y, x, width, buf, A_NORMAL);
		return;
	case PS_SLOT_WAITING_SERIAL:
		tui_fmt_duration(elapsed, dur, sizeof(dur));
		snprintf(buf, sizeof(buf), "%s  %s", v->message[0] ? v->message : "scan the serial",
			 dur);
		tui_put(t, y, x, width, buf, tui_attr(t, R_WAIT));
		return;
	case PS_SLOT_WAITING_CONFIRM:
		tui_put(t, y, x, width, "Enter or F5 starts it", tui_attr(t, R_WAIT));
		return;
	case PS_SLOT_PASS:
		tui_put(t, y, x, width,
			v->is_virtual ? "F6 provisions the image again" : v->message, A_NORMAL);
		return;
	case PS_SLOT_FAIL:
		tui_put(t, y, x, width,
			v->message[0] ? short_message(v, msg, sizeof(msg)) : "failed",
			tui_attr(t, R_ERR));
		return;
	case PS_SLOT_EMPTY:
		tui_put(t, y, x, width, v->is_virtual ? "" : "insert a card", tui_attr(t, R_DIM));
		return;
	default:
		tui_put(t, y, x, width, short_message(v, msg, sizeof(msg)), tui_attr(t, R_DIM));
		return;
	}
}

static void draw_slots(struct tui *t, const struct layout *l)
{
	static const char *const headings[C_N] = {"SLOT",	 "CONTENT", "SERIAL",
						  "COMMON NAME", "STATE",   "PROGRESS / DETAILS"};
	attr_t th = tui_attr(t, R_TITLE);
	size_t i, sel = 0;
	int c, row;

	for (c = 0; c < C_N; c++)
		if (l->w[c] > 0)
			tui_put(t, HEADER_ROWS, l->x[c], l->w[c], headings[c], th | A_UNDERLINE);
	if (t->n_slots == 0) {
		char none[1200];

		snprintf(none, sizeof(none), "No slots yet: insert a card%s%s.",
			 t->cfg->slots_dir && t->cfg->slots_dir[0] ? ", or put Mender images in "
								   : "",
			 t->cfg->slots_dir ? t->cfg->slots_dir : "");
		tui_put(t, l->slots_y, 2, COLS - 2, none, tui_attr(t, R_DIM));
		return;
	}
	for (i = 0; i < t->n_slots; i++)
		if (t->slots[i].id == t->sel_id)
			sel = i;
	/* keep the selected slot in view */
	if ((int)sel < t->slot_top)
		t->slot_top = (int)sel;
	if ((int)sel >= t->slot_top + l->slots_h)
		t->slot_top = (int)sel - l->slots_h + 1;
	if (t->slot_top > (int)t->n_slots - l->slots_h)
		t->slot_top = (int)t->n_slots - l->slots_h;
	if (t->slot_top < 0)
		t->slot_top = 0;
	if ((int)t->n_slots > l->slots_h) {
		char more[64];

		snprintf(more, sizeof(more), " %d-%d of %zu ", t->slot_top + 1,
			 t->slot_top + l->slots_h, t->n_slots);
		tui_put(t, HEADER_ROWS, COLS - (int)strlen(more), (int)strlen(more), more, th);
	}
	for (row = 0; row < l->slots_h && t->slot_top + row < (int)t->n_slots; row++) {
		const struct ps_slot_view *v = &t->slots[t->slot_top + row];
		int y = l->slots_y + row;
		bool selected = v->id == t->sel_id;
		char buf[512], label[64];
		enum tui_role role = state_role(v->state);

		if (selected)
			tui_put(t, y, 0, 2, t->utf8 ? "\u25b6" : ">", tui_attr(t, R_SEL));
		tui_put_pad(t, y, l->x[C_NAME], l->w[C_NAME], v->name,
			    selected ? tui_attr(t, R_SEL) : A_BOLD);
		if (l->w[C_CONTENT] > 0) {
			slot_content(v, buf, sizeof(buf));
			tui_put(t, y, l->x[C_CONTENT], l->w[C_CONTENT], buf, A_NORMAL);
		}
		tui_put(t, y, l->x[C_SERIAL], l->w[C_SERIAL], v->serial, A_NORMAL);
		if (l->w[C_CN] > 0)
			tui_put(t, y, l->x[C_CN], l->w[C_CN], v->common_name, A_NORMAL);
		snprintf(label, sizeof(label), "%s%s", role == R_PASS || role == R_FAIL ? " " : "",
			 slot_label(v, (int)strlen(slot_label(v, false)) > l->w[C_STATE]));
		if (role == R_PASS || role == R_FAIL)
			tui_put_pad(t, y, l->x[C_STATE], l->w[C_STATE], label, tui_attr(t, role));
		else
			tui_put(t, y, l->x[C_STATE], l->w[C_STATE], label, tui_attr(t, role));
		draw_detail(t, y, l->x[C_DETAIL], l->w[C_DETAIL], v);
	}
}

static void draw_log(struct tui *t, const struct layout *l)
{
	int i, first, shown;
	char title[96];

	tui_hline(t, l->log_y - 1, 0, COLS, tui_attr(t, R_DIM));
	if (t->log_scroll > 0)
		snprintf(title, sizeof(title), " log (%d back; End: newest) ", t->log_scroll);
	else
		snprintf(title, sizeof(title), " log ");
	tui_put(t, l->log_y - 1, 2, COLS - 4, title, tui_attr(t, R_TITLE));
	if (l->log_h <= 0)
		return;
	shown = (int)t->log_n < l->log_h ? (int)t->log_n : l->log_h;
	if (t->log_scroll > (int)t->log_n - shown)
		t->log_scroll = (int)t->log_n - shown;
	if (t->log_scroll < 0)
		t->log_scroll = 0;
	first = (int)t->log_n - shown - t->log_scroll;
	for (i = 0; i < shown; i++) {
		const char *line = t->log[(t->log_head + (size_t)(first + i)) % TUI_LOG_MAX];
		const char *msg = strchr(line, ' ');
		attr_t a = A_NORMAL;

		msg = msg ? msg + 1 : line;
		if (strncmp(msg, "FAIL", 4) == 0 || strstr(msg, "refused") != NULL)
			a = tui_attr(t, R_ERR);
		else if (strncmp(msg, "PASS", 4) == 0)
			a = tui_attr(t, R_OK);
		tui_put(t, l->log_y + i, 1, COLS - 1, line, a);
	}
}

static const char *serial_target_name(const struct tui *t)
{
	const struct ps_slot_view *v = tui_slot_by_id(t, t->sel_id);

	if (v == NULL || (!t->sel_pinned && t->next_waiting < 0))
		return NULL;
	return v->name;
}

const struct ps_slot_view *tui_confirm_target(const struct tui *t)
{
	const struct ps_slot_view *v = tui_slot_by_id(t, t->sel_id), *oldest = NULL;
	size_t i;

	if (v != NULL && v->state == PS_SLOT_WAITING_CONFIRM)
		return v;
	for (i = 0; i < t->n_slots; i++)
		if (t->slots[i].state == PS_SLOT_WAITING_CONFIRM &&
		    (oldest == NULL || t->slots[i].since < oldest->since))
			oldest = &t->slots[i];
	return oldest;
}

static void draw_status(struct tui *t, const struct layout *l)
{
	const struct ps_slot_view *v = tui_slot_by_id(t, t->sel_id);
	char buf[1600];

	if (t->notice[0] != '\0' && tui_now_ms() - t->notice_at < TUI_NOTICE_MS) {
		tui_put(t, l->status_y, 1, COLS - 1, t->notice,
			tui_attr(t, t->notice_is_error ? R_ERR : R_OK));
		return;
	}
	if (v == NULL)
		return;
	snprintf(buf, sizeof(buf), "%s %s  %s  %s%s%s", t->utf8 ? "\u25b6" : ">", v->name,
		 v->target, tui_state_label(v->state, false), v->message[0] ? ": " : "",
		 v->message);
	tui_put(t, l->status_y, 1, COLS - 1, buf,
		tui_attr(t, v->state == PS_SLOT_FAIL ? R_ERR : R_DIM));
}

static void draw_input(struct tui *t, const struct layout *l)
{
	const char *name = serial_target_name(t);
	int y = l->input_y, x, fw, room;

	if (t->mode == MODE_QUIT_ASK) {
		char q[160];

		snprintf(q, sizeof(q), " %ld job%s running %s quit anyway? y/N ",
			 t->counts.jobs_running, t->counts.jobs_running == 1 ? "" : "s",
			 t->utf8 ? "\u2014" : "-");
		tui_put_pad(t, y, 0, COLS, q, tui_attr(t, R_FAIL));
		tui_cursor(t, y, tui_width(t, q) < COLS ? tui_width(t, q) : COLS - 1);
		return;
	}
	if (t->mode == MODE_QUITTING) {
		char q[256];

		snprintf(q, sizeof(q),
			 " Quitting: waiting for %ld running job%s to finish (the station closes "
			 "when they are done; cards are never cut off mid-write)",
			 t->counts.jobs_running, t->counts.jobs_running == 1 ? "" : "s");
		tui_put_pad(t, y, 0, COLS, q, tui_attr(t, R_WARN) | A_REVERSE);
		return;
	}
	if (name != NULL) {
		x = tui_put(t, y, 0, COLS, "Serial for ", tui_attr(t, R_TITLE));
		x += tui_put(t, y, x, 20, name, tui_attr(t, R_TITLE));
		x += tui_put(t, y, x, COLS - x, ": ", tui_attr(t, R_TITLE));
	} else {
		x = tui_put(t, y, 0, COLS, "Serial (none waiting): ", tui_attr(t, R_TITLE));
	}
	room = COLS - x - 1;
	if (t->input_error[0] != '\0') {
		/* the error after the input, in red; on the status line when it does not fit */
		char e[600];

		snprintf(e, sizeof(e), "%s %s", t->utf8 ? "\u2717" : "!", t->input_error);
		fw = tui_width(t, t->input.buf) + 1;
		if (fw < 16)
			fw = 16;
		if (fw > room)
			fw = room;
		if (room - fw >= 20) {
			tui_put(t, y, x + fw + 1, room - fw, e, tui_attr(t, R_ERR));
		} else {
			tui_fill(l->status_y, 0, COLS, A_NORMAL);
			tui_put(t, l->status_y, 1, COLS - 1, e, tui_attr(t, R_ERR));
		}
		tui_field_draw(t, y, x, fw, &t->input, tui_attr(t, R_ERR) | A_UNDERLINE);
	} else {
		const struct ps_slot_view *c = tui_confirm_target(t);

		tui_field_draw(t, y, x, room, &t->input, A_NORMAL);
		if (t->input.len == 0 && c != NULL) {
			char hint[200];

			snprintf(hint, sizeof(hint), "Enter starts %s (%s)", c->name, c->serial);
			tui_put(t, y, x + 1, room - 1, hint, tui_attr(t, R_WAIT));
		}
	}
}

struct key_hint {
	const char *key, *alias, *label;
};

static void draw_keys(struct tui *t, const struct layout *l)
{
	static const struct key_hint hints[] = {
	    {"F1", "?", "Help"},   {"F3", NULL, "Audit"}, {"F4", NULL, "Export"},
	    {"F5", NULL, "Start"}, {"F6", NULL, "Reset"}, {"F10", "q", "Quit"},
	};
	bool aliases = t->input.len == 0 && t->mode == MODE_DASH;
	char key[16], label[32];
	size_t i;
	int x = 0;

	for (i = 0; i < PS_ARRAY_SIZE(hints) && x < COLS; i++) {
		snprintf(key, sizeof(key), "%s%s%s", hints[i].key,
			 aliases && hints[i].alias ? "/" : "",
			 aliases && hints[i].alias ? hints[i].alias : "");
		snprintf(label, sizeof(label), " %s ", hints[i].label);
		x += tui_put(t, l->keys_y, x, COLS - x, key, tui_attr(t, R_KEY));
		x += tui_put(t, l->keys_y, x, COLS - x, label, A_NORMAL);
	}
	if (COLS - x > 22)
		tui_put(t, l->keys_y, x, COLS - x,
			t->utf8 ? " \u2191\u2193 slot  PgUp/PgDn log"
				: " Up/Down slot  PgUp/PgDn log",
			tui_attr(t, R_DIM));
}

void tui_draw_dashboard(struct tui *t)
{
	struct layout l;

	compute_layout(t, &l);
	draw_header(t);
	draw_slots(t, &l);
	draw_log(t, &l);
	draw_status(t, &l);
	draw_input(t, &l);
	draw_keys(t, &l);
}

/* ---- help ---- */

static const char *const help_text[] = {
    "The input line at the bottom always has the focus. Scan the serial (a",
    "barcode scanner types it and presses Enter) or type it and press Enter.",
    "",
    "OPERATOR'S FLOW",
    "  1. Insert a card: its slot lights up, WAITING FOR SERIAL.",
    "  2. Scan or type the serial. It goes to the slot marked at the left: the",
    "     one that has waited longest, or the one chosen with Up/Down.",
    "  3. A refused serial stays on the input line in red: correct it, Enter.",
    "     A serial provisioned before shows its history and asks y/N first.",
    "  4. PASS or FAIL with the reason; the bell rings. Remove the card.",
    "  A slot with a golden image flashes it first (FLASHING, then VERIFY",
    "  IMAGE, with a progress bar: percentage, MB/s, time left).",
    "  Slots work at the same time: insert and scan the next card while others",
    "  are being written. When the station asks for a start, Enter on an empty",
    "  input line (or F5) starts the highlighted or longest waiting slot.",
    "",
    "KEYS (always)",
    "  Enter          submit the serial; on an empty line: start (confirm)",
    "  Up / Down      choose the slot for the next serial, F5 and F6",
    "  Esc            clear the input line, back to the longest waiting slot",
    "  Backspace ^U   delete a character / the whole input line",
    "  F1             this help",
    "  F3  or ^F      audit view: search by serial or commonName, details",
    "  F4  or ^E      export the audit database as CSV",
    "  F5             start the slot that waits for a confirm",
    "  F6  or ^R      reset a finished image-file slot to provision it again",
    "  F10 or ^C      quit (asks when jobs run, then waits for them)",
    "  PgUp PgDn End  scroll the log; ^L redraws the screen",
    "",
    "LETTER ALIASES (only on an empty input line, typed alone)",
    "  ?  help        q  quit",
    "  Letters are serial characters otherwise: a letter followed quickly by",
    "  more keys (a scanner) always goes to the input line.",
    "",
    "Esc, F1, ? or q closes this help; Up/Down scroll it.",
};

int tui_help_lines(void)
{
	return (int)PS_ARRAY_SIZE(help_text);
}

void tui_draw_help(struct tui *t)
{
	int y, x, h, w, i, n = tui_help_lines();

	tui_modal(t, n, 76, "provstation station: help", &y, &x, &h, &w);
	if (t->help_top > n - h)
		t->help_top = n - h;
	if (t->help_top < 0)
		t->help_top = 0;
	for (i = 0; i < h && t->help_top + i < n; i++) {
		const char *line = help_text[t->help_top + i];
		bool heading = line[0] >= 'A' && line[0] <= 'Z' && line[1] >= 'A' && line[1] <= 'Z';

		tui_put(t, y + i, x, w, line, heading ? tui_attr(t, R_TITLE) : A_NORMAL);
	}
	if (t->help_top + h < n)
		tui_put(t, y + h, x + w - 24, 24,
			t->utf8 ? " \u2193 more: Down, PgDn " : " more: Down, PgDn ",
			tui_attr(t, R_TITLE));
	if (t->help_top > 0)
		tui_put(t, y - 1, x + w - 12, 12, t->utf8 ? " \u2191 Up " : " more: Up ",
			tui_attr(t, R_TITLE));
}
