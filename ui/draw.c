/* draw.c — the station screen's drawing helpers: colours and their monochrome equivalents,
 * width-aware text (UTF-8, with an ASCII fallback), lines, boxes, progress bars, and the
 * human forms of sizes, durations and times. */
#include "tui_int.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <wctype.h>

enum {
	PAIR_PASS = 1,
	PAIR_FAIL,
	PAIR_BUSY,
	PAIR_WAIT,
	PAIR_ERR,
	PAIR_OK,
	PAIR_HEAD,
	PAIR_BAR,
	PAIR_WARN,
};

void tui_colors_init(struct tui *t)
{
	if (!t->color || !has_colors() || start_color() == ERR) {
		t->color = false;
		return;
	}
	use_default_colors();
	init_pair(PAIR_PASS, COLOR_BLACK, COLOR_GREEN);
	init_pair(PAIR_FAIL, COLOR_WHITE, COLOR_RED);
	init_pair(PAIR_BUSY, COLOR_CYAN, -1);
	init_pair(PAIR_WAIT, COLOR_YELLOW, -1);
	init_pair(PAIR_ERR, COLOR_RED, -1);
	init_pair(PAIR_OK, COLOR_GREEN, -1);
	init_pair(PAIR_HEAD, COLOR_WHITE, COLOR_BLUE);
	init_pair(PAIR_BAR, COLOR_GREEN, -1);
	init_pair(PAIR_WARN, COLOR_YELLOW, -1);
}

attr_t tui_attr(const struct tui *t, enum tui_role role)
{
	if (!t->color) {
		switch (role) {
		case R_HEAD:
		case R_KEY:
		case R_SEL:
			return A_REVERSE;
		case R_PASS:
		case R_FAIL:
			return A_REVERSE | A_BOLD;
		case R_BUSY:
		case R_WAIT:
		case R_ERR:
		case R_WARN:
		case R_TITLE:
			return A_BOLD;
		case R_DIM:
			return A_DIM;
		default:
			return A_NORMAL;
		}
	}
	switch (role) {
	case R_HEAD:
		return COLOR_PAIR(PAIR_HEAD) | A_BOLD;
	case R_PASS:
		return COLOR_PAIR(PAIR_PASS) | A_BOLD;
	case R_FAIL:
		return COLOR_PAIR(PAIR_FAIL) | A_BOLD;
	case R_BUSY:
		return COLOR_PAIR(PAIR_BUSY) | A_BOLD;
	case R_WAIT:
		return COLOR_PAIR(PAIR_WAIT) | A_BOLD;
	case R_ERR:
		return COLOR_PAIR(PAIR_ERR) | A_BOLD;
	case R_OK:
		return COLOR_PAIR(PAIR_OK);
	case R_BAR:
		return COLOR_PAIR(PAIR_BAR);
	case R_WARN:
		return COLOR_PAIR(PAIR_WARN) | A_BOLD;
	case R_DIM:
		return A_DIM;
	case R_KEY:
	case R_SEL:
		return A_REVERSE;
	case R_TITLE:
		return A_BOLD;
	default:
		return A_NORMAL;
	}
}

/* Decode s into display characters: control characters and bytes that are not valid in the
 * locale become '?'. Fills out (at most max) and widths; returns how many. */
static size_t decode(const char *s, wchar_t *out, int *widths, size_t max)
{
	mbstate_t ps;
	size_t n = 0, left = strlen(s);

	memset(&ps, 0, sizeof(ps));
	while (left > 0 && n < max) {
		wchar_t wc;
		size_t used = mbrtowc(&wc, s, left, &ps);
		int w;

		if (used == (size_t)-1 || used == (size_t)-2 || used == 0) {
			memset(&ps, 0, sizeof(ps));
			wc = L'?';
			used = 1;
		}
		if (wc == L'\t')
			wc = L' ';
		if (iswcntrl((wint_t)wc))
			wc = L'?';
		w = wcwidth(wc);
		if (w < 0) {
			wc = L'?';
			w = 1;
		}
		out[n] = wc;
		widths[n] = w;
		n++;
		s += used;
		left -= used;
	}
	return n;
}

int tui_width(const struct tui *t, const char *s)
{
	wchar_t wbuf[512];
	int widths[512], total = 0;
	size_t i, n = decode(s, wbuf, widths, PS_ARRAY_SIZE(wbuf));

	(void)t;
	for (i = 0; i < n; i++)
		total += widths[i];
	return total;
}

int tui_put(const struct tui *t, int y, int x, int width, const char *s, attr_t attr)
{
	wchar_t wbuf[1024];
	int widths[1024], used = 0;
	size_t i, n, keep;
	bool cut = false;

	if (x < 0 || y < 0 || y >= LINES || x >= COLS)
		return 0;
	if (width > COLS - x)
		width = COLS - x;
	if (width <= 0)
		return 0;
	n = decode(s, wbuf, widths, PS_ARRAY_SIZE(wbuf) - 1);
	for (keep = 0; keep < n; keep++) {
		if (used + widths[keep] > width) {
			cut = true;
			break;
		}
		used += widths[keep];
	}
	if (cut || (keep == n && s[0] != '\0' && n == PS_ARRAY_SIZE(wbuf) - 1)) {
		/* make room for the ellipsis */
		while (keep > 0 && used + 1 > width) {
			keep--;
			used -= widths[keep];
		}
		wbuf[keep++] = t->utf8 ? L'\u2026' : L'~';
		used++;
	}
	attrset(attr);
	for (i = 0; i < keep; i++)
		if (widths[i] == 0 && i == 0)
			wbuf[i] = L' '; /* a combining mark with nothing to combine with */
	mvaddnwstr(y, x, wbuf, (int)keep);
	attrset(A_NORMAL);
	return used;
}

void tui_put_pad(const struct tui *t, int y, int x, int width, const char *s, attr_t attr)
{
	int used;

	if (width > COLS - x)
		width = COLS - x;
	used = tui_put(t, y, x, width, s, attr);
	if (used < width)
		tui_fill(y, x + used, width - used, attr);
}

int tui_putf(const struct tui *t, int y, int x, int width, attr_t attr, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return tui_put(t, y, x, width, buf, attr);
}

void tui_fill(int y, int x, int width, attr_t attr)
{
	if (y < 0 || y >= LINES || x < 0 || x >= COLS)
		return;
	if (width > COLS - x)
		width = COLS - x;
	if (width <= 0)
		return;
	attrset(attr);
	mvhline(y, x, ' ', width);
	attrset(A_NORMAL);
}

void tui_hline(const struct tui *t, int y, int x, int width, attr_t attr)
{
	if (y < 0 || y >= LINES || x < 0 || x >= COLS)
		return;
	if (width > COLS - x)
		width = COLS - x;
	if (width <= 0)
		return;
	attrset(attr);
	mvhline(y, x, t->utf8 ? ACS_HLINE : '-', width);
	attrset(A_NORMAL);
}

void tui_box(const struct tui *t, int y, int x, int h, int w, const char *title)
{
	int i;
	chtype hl = t->utf8 ? ACS_HLINE : '-', vl = t->utf8 ? ACS_VLINE : '|';

	if (h < 2 || w < 2)
		return;
	for (i = 1; i < h - 1; i++)
		tui_fill(y + i, x + 1, w - 2, A_NORMAL);
	mvhline(y, x + 1, hl, w - 2);
	mvhline(y + h - 1, x + 1, hl, w - 2);
	mvvline(y + 1, x, vl, h - 2);
	mvvline(y + 1, x + w - 1, vl, h - 2);
	mvaddch(y, x, t->utf8 ? ACS_ULCORNER : '+');
	mvaddch(y, x + w - 1, t->utf8 ? ACS_URCORNER : '+');
	mvaddch(y + h - 1, x, t->utf8 ? ACS_LLCORNER : '+');
	mvaddch(y + h - 1, x + w - 1, t->utf8 ? ACS_LRCORNER : '+');
	if (title != NULL && title[0] != '\0' && w > 6) {
		char buf[256];

		snprintf(buf, sizeof(buf), " %s ", title);
		tui_put(t, y, x + 2, w - 4, buf, tui_attr(t, R_TITLE));
	}
}

void tui_modal(const struct tui *t, int want_h, int want_w, const char *title, int *y, int *x,
	       int *h, int *w)
{
	int bh = want_h + 2, bw = want_w + 4, i;

	if (bh > LINES - 2)
		bh = LINES - 2;
	if (bw > COLS - 2)
		bw = COLS - 2;
	if (bh < 3)
		bh = 3;
	if (bw < 8)
		bw = 8;
	*y = (LINES - bh) / 2;
	*x = (COLS - bw) / 2;
	if (*y < 0)
		*y = 0;
	if (*x < 0)
		*x = 0;
	for (i = 0; i < bh; i++) /* a clean band: no cut-off text beside the box */
		tui_fill(*y + i, 0, COLS, A_NORMAL);
	tui_box(t, *y, *x, bh, bw, title);
	*y += 1;
	*x += 2;
	*h = bh - 2;
	*w = bw - 4;
}

void tui_fmt_size(uint64_t bytes, char *out, size_t len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double v = (double)bytes;
	size_t u = 0;

	while (v >= 1024 && u + 1 < PS_ARRAY_SIZE(units)) {
		v /= 1024;
		u++;
	}
	if (u == 0 || v >= 100 || v == (double)(uint64_t)v)
		snprintf(out, len, "%.0f %s", v, units[u]);
	else
		snprintf(out, len, "%.1f %s", v, units[u]);
}

void tui_fmt_duration(double secs, char *out, size_t len)
{
	long s = secs < 0 ? 0 : (long)(secs + 0.5);

	if (s >= 3600)
		snprintf(out, len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
	else
		snprintf(out, len, "%ld:%02ld", s / 60, s % 60);
}

void tui_fmt_local_time(time_t when, enum tui_time_form form, char *out, size_t len)
{
	struct tm tm;
	size_t n = 0;

	if (localtime_r(&when, &tm) != NULL) {
		switch (form) {
		case TUI_DATE:
			n = strftime(out, len, "%Y-%m-%d", &tm);
			break;
		case TUI_DATE_TIME:
			n = strftime(out, len, "%Y-%m-%d %H:%M:%S", &tm);
			break;
		case TUI_STAMP:
			n = strftime(out, len, "%Y%m%d-%H%M%S", &tm);
			break;
		}
	}
	if (n == 0)
		snprintf(out, len, "?");
}

void tui_progress(const struct tui *t, int y, int x, int width, const struct ps_slot_view *v)
{
	static const char *const eighths[] = {"",	"\u258f", "\u258e", "\u258d",
					      "\u258c", "\u258b", "\u258a", "\u2589"};
	char pct[16], rate[32] = "", eta[32] = "", tail[96], bar[256];
	double p = v->progress < 0 ? 0 : v->progress > 1 ? 1 : v->progress;
	int bar_w, i, used, fill8, room;
	size_t off = 0;

	/* the bar's width depends only on the column's, so the bars of all rows line up */
	bar_w = width - 2 - 25 < 3 ? 3 : width - 2 - 25 > 20 ? 20 : width - 2 - 25;
	room = width - bar_w - 2;
	if (room < 5) {
		tui_putf(t, y, x, width, tui_attr(t, R_BUSY), "%3d%%", (int)(p * 100));
		return;
	}
	/* then the percentage, the rate and the time left, shortened until they fit: "left"
	 * goes first, then the rate */
	snprintf(pct, sizeof(pct), " %3d%%", (int)(p * 100));
	if (v->rate > 0)
		snprintf(rate, sizeof(rate), v->rate >= 10e6 ? " %.0f MB/s" : " %.1f MB/s",
			 v->rate / 1e6);
	if (v->eta >= 0) {
		tui_fmt_duration(v->eta, eta + 1, sizeof(eta) - 1);
		eta[0] = ' ';
	}
	snprintf(tail, sizeof(tail), "%s%s%s%s", pct, rate, eta, eta[0] ? " left" : "");
	if ((int)strlen(tail) > room)
		snprintf(tail, sizeof(tail), "%s%s%s", pct, rate, eta);
	if ((int)strlen(tail) > room)
		snprintf(tail, sizeof(tail), "%s%s", pct, eta);
	if ((int)strlen(tail) > room)
		snprintf(tail, sizeof(tail), "%s", pct);
	fill8 = (int)(p * bar_w * 8 + 0.5);
	if (t->utf8) {
		for (i = 0; i < fill8 / 8 && off + 4 < sizeof(bar); i++) {
			memcpy(bar + off, "\u2588", 3);
			off += 3;
		}
		if (fill8 % 8 != 0 && off + 4 < sizeof(bar)) {
			memcpy(bar + off, eighths[fill8 % 8], 3);
			off += 3;
		}
	} else {
		for (i = 0; i < fill8 / 8 && off + 1 < sizeof(bar); i++)
			bar[off++] = '#';
	}
	bar[off] = '\0';
	mvaddch(y, x, '[');
	used = tui_put(t, y, x + 1, bar_w, bar, tui_attr(t, R_BAR));
	if (used < bar_w) {
		attrset(tui_attr(t, R_DIM));
		mvhline(y, x + 1 + used, t->utf8 ? ' ' : '.', bar_w - used);
		attrset(A_NORMAL);
	}
	mvaddch(y, x + 1 + bar_w, ']');
	tui_put(t, y, x + 2 + bar_w, room, tail, A_NORMAL);
}

void tui_cursor(struct tui *t, int y, int x)
{
	t->cursor_shown = true;
	t->cursor_y = y;
	t->cursor_x = x;
}
