/* tui_int.h — what the files of the station's screen share: the screen's state, its modes,
 * key events, text fields, and the drawing helpers (curses is included here, and only under
 * ui/). */
#ifndef PS_TUI_INT_H
#define PS_TUI_INT_H

#include "audit.h"
#include "station.h"
#include "tui.h"

#include <curses.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <wchar.h>

#define TUI_INPUT_MAX	   255	 /* bytes; longer than a serial so an over-long one is refused */
#define TUI_LOG_MAX	   200	 /* log lines kept for the log pane */
#define TUI_HISTORY_MAX	   50	 /* rows of a serial's history shown before re-provisioning */
#define TUI_AUDIT_MAX	   500	 /* rows the audit view lists */
#define TUI_SCAN_WINDOW_MS 60	 /* a key following a letter alias this fast makes it a serial */
#define TUI_NOTICE_MS	   15000 /* how long a notice stays on the status line */

/* What a piece of text is, for its colour or (in monochrome) its attributes. */
enum tui_role {
	R_NORMAL,
	R_HEAD,	 /* the header bar */
	R_PASS,	 /* PASS: reverse video, bold; green */
	R_FAIL,	 /* FAIL: reverse video, bold; red */
	R_BUSY,	 /* a job runs */
	R_WAIT,	 /* the slot waits for the operator */
	R_ERR,	 /* an error message */
	R_OK,	 /* a notice that something worked */
	R_BAR,	 /* the filled part of a progress bar */
	R_DIM,	 /* empty slots, secondary text */
	R_KEY,	 /* a key name in the key bar */
	R_SEL,	 /* the selected row's marker and name */
	R_TITLE, /* column headings, box titles */
	R_WARN,	 /* a warning (CA close to expiry) */
};

enum tui_mode {
	MODE_DASH,	 /* the dashboard; typing goes to the serial input line */
	MODE_HELP,	 /* the help screen */
	MODE_QUIT_ASK,	 /* "N jobs running — quit anyway? y/N" */
	MODE_QUITTING,	 /* waiting for running jobs to finish, then leaving */
	MODE_REPROV_ASK, /* a serial seen before: its history and "re-provision? y/N" */
	MODE_AUDIT,	 /* the audit view: search, list, details */
	MODE_EXPORT,	 /* asking for the export file's name */
};

/* One key: a curses function key (fn, code is KEY_*) or a character (code is a wchar_t). */
struct tui_key {
	bool fn;
	int code;
};

#define TUI_CTRL(c) ((c)&0x1f)
#define TUI_ESC	    27

/* A one-line text field (UTF-8), edited at its end. */
struct tui_field {
	char buf[TUI_INPUT_MAX + 1];
	size_t len;
};

/* One certificate row of the audit database, copied for display. */
enum tui_cert_field {
	CF_SERIAL,
	CF_CN,
	CF_CERT_SERIAL,
	CF_NOT_BEFORE,
	CF_NOT_AFTER,
	CF_STATE,
	CF_REASON,
	CF_REVOKED_AT,
	CF_STATION,
	CF_OPERATOR,
	CF_BATCH,
	CF_PUBKEY,
	CF_TARGET,
	CF_IMAGE,
	CF_CREATED,
	CF_UPDATED,
	CF_N
};

struct tui_cert {
	int64_t id;
	char *f[CF_N];
};

struct tui_certs {
	struct tui_cert *v;
	size_t n, cap;
	size_t max;	/* stop after this many rows */
	bool truncated; /* more rows matched than max */
};

struct tui_audit {
	struct tui_field search;
	char searched[TUI_INPUT_MAX + 1]; /* the search the list shows */
	struct tui_certs certs;
	size_t sel, top;
	bool details; /* showing the selected row's details */
	char info[256];
	bool info_is_error;
};

struct tui_export {
	struct tui_field path;
	bool ask_overwrite;
	char error[512];
};

struct tui_reprov {
	int slot; /* the slot id the serial was submitted to (-1: the one waiting longest) */
	char serial[TUI_INPUT_MAX + 1];
	struct tui_certs history;
	char error[512];
};

struct tui {
	struct ps_station *st;
	const struct ps_config *cfg;
	struct ps_ca *ca;
	const char *title;
	bool color, utf8;

	/* the latest snapshot */
	struct ps_slot_view slots[PS_MAX_SLOTS];
	size_t n_slots;
	struct ps_station_counts counts;
	int next_waiting;	   /* slot id, or -1 */
	int prev_id[PS_MAX_SLOTS]; /* states of the previous snapshot, to ring the bell */
	enum ps_slot_state prev_state[PS_MAX_SLOTS];
	size_t n_prev;
	bool primed;

	/* the log pane: a ring of the newest lines */
	char log[TUI_LOG_MAX][256];
	size_t log_n, log_head; /* lines held; index of the oldest */
	uint64_t log_seq;
	int log_scroll; /* lines scrolled back from the newest */

	/* which slot the next serial goes to (and F5 / F6 act on) */
	int sel_id;
	bool sel_pinned; /* chosen with the arrow keys; else it follows the longest waiting */
	int slot_top;	 /* first slot row shown when they do not all fit */

	/* the serial input line */
	struct tui_field input;
	char input_error[512];
	char notice[512];
	bool notice_is_error;
	long notice_at; /* tui_now_ms() */

	enum tui_mode mode;
	int help_top;
	struct tui_audit audit;
	struct tui_export export;
	struct tui_reprov reprov;
	bool done;
	bool cursor_shown;
	int cursor_y, cursor_x;
};

/* ---- draw.c: text and drawing helpers ---- */
void tui_colors_init(struct tui *t);
attr_t tui_attr(const struct tui *t, enum tui_role role);
/* Draw s at (y, x) in at most width columns (control characters become '?', an ellipsis
 * marks a cut); returns the columns used. */
int tui_put(const struct tui *t, int y, int x, int width, const char *s, attr_t attr);
/* Like tui_put, then fill the rest of width with spaces in attr. */
void tui_put_pad(const struct tui *t, int y, int x, int width, const char *s, attr_t attr);
/* tui_put of a formatted string. */
int tui_putf(const struct tui *t, int y, int x, int width, attr_t attr, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Display width of s in columns (as tui_put would draw it). */
int tui_width(const struct tui *t, const char *s);
void tui_fill(int y, int x, int width, attr_t attr);
void tui_hline(const struct tui *t, int y, int x, int width, attr_t attr);
/* A framed box, cleared inside, with a title on its top edge. */
void tui_box(const struct tui *t, int y, int x, int h, int w, const char *title);
/* A modal box centred on the screen: at most want_h x want_w, at least 2 cells inside the
 * screen's edges. Sets the inner area (top, left, rows, columns). */
void tui_modal(const struct tui *t, int want_h, int want_w, const char *title, int *y, int *x,
	       int *h, int *w);
void tui_fmt_size(uint64_t bytes, char *out, size_t len);
void tui_fmt_duration(double secs, char *out, size_t len);
enum tui_time_form {
	TUI_DATE,      /* 2026-11-23 */
	TUI_DATE_TIME, /* 2026-11-23 12:07:36 */
	TUI_STAMP,     /* 20261123-120736, for file names */
};
void tui_fmt_local_time(time_t when, enum tui_time_form form, char *out, size_t len);
/* A progress bar with percentage, rate (MB/s) and time left, fitted into width columns (at
 * least 24 for all three). */
void tui_progress(const struct tui *t, int y, int x, int width, const struct ps_slot_view *v);
/* Put the terminal cursor at (y, x) after this frame (the field being edited). */
void tui_cursor(struct tui *t, int y, int x);

/* ---- tui.c ---- */
/* A monotonic clock in milliseconds, for the screen's own timing. */
long tui_now_ms(void);
/* Apply an editing key (printable, Backspace, Ctrl-U); true when it was one. */
bool tui_field_key(struct tui_field *f, struct tui_key k);
void tui_field_set(struct tui_field *f, const char *s);
/* Draw a field in width columns, showing its end when it is longer; places the cursor. */
void tui_field_draw(struct tui *t, int y, int x, int width, const struct tui_field *f, attr_t attr);
void tui_set_notice(struct tui *t, bool is_error, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- dashboard.c: the main screen and the help ---- */
void tui_draw_dashboard(struct tui *t);
void tui_draw_help(struct tui *t);
/* Lines of the help text (for scrolling). */
int tui_help_lines(void);
const char *tui_state_label(enum ps_slot_state state, bool short_form);
const struct ps_slot_view *tui_slot_by_id(const struct tui *t, int id);
/* The slot Enter on an empty line (F5) starts: the highlighted one when it waits for a
 * confirm, else the one waiting longest for it; NULL when none waits. */
const struct ps_slot_view *tui_confirm_target(const struct tui *t);

/* ---- audit_view.c: audit view (F3), export (F4), a serial's history ---- */
int tui_certs_load(struct ps_db *db, const struct ps_db_filter *filter, const char *substr,
		   struct tui_certs *out, size_t max, struct ps_err *err);
void tui_certs_free(struct tui_certs *c);
void tui_audit_open(struct tui *t);
void tui_audit_close(struct tui *t);
void tui_audit_key(struct tui *t, struct tui_key k);
void tui_audit_draw(struct tui *t);
void tui_export_open(struct tui *t);
void tui_export_key(struct tui *t, struct tui_key k);
void tui_export_draw(struct tui *t);
void tui_reprov_draw(struct tui *t);

#endif
