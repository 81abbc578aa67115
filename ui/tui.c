/* tui.c — the station screen's loop and the operator's keys: poll()s the terminal and the
 * station's event fd, takes snapshots, rings the bell on PASS and FAIL, routes serials to
 * slots, and runs the quit and re-provision questions. Never waits on a job. */
#include "tui_int.h"
#include "util.h"

#include <errno.h>
#include <langinfo.h>
#include <limits.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wctype.h>

#define FRAME_MS     200 /* redraw at least this often (progress, elapsed times) */
#define MIN_FRAME_MS 30	 /* and at most this often when the station reports changes */

static volatile sig_atomic_t stop_signal;
static bool locale_done;

static void on_stop_signal(int sig)
{
	stop_signal = sig;
}

void ps_tui_init_locale(void)
{
	if (locale_done)
		return;
	locale_done = true;
	setlocale(LC_ALL, "");
	setlocale(LC_NUMERIC, "C"); /* the core library formats and parses numbers */
}

long tui_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- text fields ---- */

bool tui_field_key(struct tui_field *f, struct tui_key k)
{
	if (!k.fn && k.code >= 0x20 && k.code != 0x7f && iswprint((wint_t)k.code)) {
		char mb[MB_LEN_MAX];
		mbstate_t ps;
		size_t n;

		memset(&ps, 0, sizeof(ps));
		n = wcrtomb(mb, (wchar_t)k.code, &ps);
		if (n == (size_t)-1 || f->len + n > TUI_INPUT_MAX) {
			beep();
			return true;
		}
		memcpy(f->buf + f->len, mb, n);
		f->len += n;
		f->buf[f->len] = '\0';
		return true;
	}
	if ((k.fn && k.code == KEY_BACKSPACE) || (!k.fn && (k.code == 0x7f || k.code == 8))) {
		/* remove the last character: its continuation bytes, then its first byte */
		while (f->len > 0 && ((unsigned char)f->buf[f->len - 1] & 0xc0) == 0x80)
			f->len--;
		if (f->len > 0)
			f->len--;
		f->buf[f->len] = '\0';
		return true;
	}
	if (!k.fn && k.code == TUI_CTRL('u')) {
		f->len = 0;
		f->buf[0] = '\0';
		return true;
	}
	return false;
}

void tui_field_set(struct tui_field *f, const char *s)
{
	snprintf(f->buf, sizeof(f->buf), "%s", s);
	f->len = strlen(f->buf);
}

void tui_field_draw(struct tui *t, int y, int x, int width, const struct tui_field *f, attr_t attr)
{
	const char *p = f->buf;
	int w;

	if (width <= 1)
		return;
	/* show the end of a field longer than the space: the cursor is at its end */
	while (*p != '\0' && tui_width(t, p) > width - 1) {
		p++;
		while (((unsigned char)*p & 0xc0) == 0x80)
			p++;
	}
	tui_fill(y, x, width, attr);
	w = tui_put(t, y, x, width - 1, p, attr);
	tui_cursor(t, y, x + w);
}

void tui_set_notice(struct tui *t, bool is_error, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t->notice, sizeof(t->notice), fmt, ap);
	va_end(ap);
	t->notice_is_error = is_error;
	t->notice_at = tui_now_ms();
}

/* Spaces around a serial are never part of it (a scanner may add one). */
static void trim(struct tui_field *f)
{
	size_t start = 0;

	while (f->len > 0 && f->buf[f->len - 1] == ' ')
		f->buf[--f->len] = '\0';
	while (start < f->len && f->buf[start] == ' ')
		start++;
	memmove(f->buf, f->buf + start, f->len - start + 1);
	f->len -= start;
}

/* ---- snapshots ---- */

static void take_snapshot(struct tui *t)
{
	size_t i, j;
	uint64_t last = t->log_seq;
	char lines[32][256];
	size_t n;
	bool ring = false;

	t->n_slots = ps_station_slots(t->st, t->slots, PS_MAX_SLOTS);
	if (t->n_slots > PS_MAX_SLOTS)
		t->n_slots = PS_MAX_SLOTS;
	ps_station_counts(t->st, &t->counts);
	t->next_waiting = ps_station_next_waiting(t->st);

	/* the bell for every slot that has just passed or failed */
	for (i = 0; i < t->n_slots; i++) {
		const struct ps_slot_view *v = &t->slots[i];
		bool known = false;

		if (v->state != PS_SLOT_PASS && v->state != PS_SLOT_FAIL)
			continue;
		for (j = 0; j < t->n_prev; j++)
			if (t->prev_id[j] == v->id) {
				known = true;
				if (t->prev_state[j] != v->state)
					ring = true;
			}
		if (!known && t->primed)
			ring = true;
	}
	for (i = 0; i < t->n_slots; i++) {
		t->prev_id[i] = t->slots[i].id;
		t->prev_state[i] = t->slots[i].state;
	}
	t->n_prev = t->n_slots;
	if (ring && t->primed)
		beep();
	t->primed = true;

	/* new log lines into the ring */
	do {
		n = ps_station_log(t->st, t->log_seq, lines, PS_ARRAY_SIZE(lines), &last);
		for (i = 0; i < n; i++) {
			size_t slot;

			if (t->log_n < TUI_LOG_MAX) {
				slot = (t->log_head + t->log_n) % TUI_LOG_MAX;
				t->log_n++;
			} else {
				slot = t->log_head;
				t->log_head = (t->log_head + 1) % TUI_LOG_MAX;
			}
			memcpy(t->log[slot], lines[i], sizeof(t->log[slot]));
			t->log[slot][sizeof(t->log[slot]) - 1] = '\0';
			if (t->log_scroll > 0)
				t->log_scroll++; /* keep the scrolled-back view still */
		}
		if (last == t->log_seq)
			break;
		t->log_seq = last;
	} while (n == PS_ARRAY_SIZE(lines));

	/* the highlighted slot: the chosen one while it exists, else the longest waiting */
	if (t->sel_pinned && tui_slot_by_id(t, t->sel_id) == NULL)
		t->sel_pinned = false;
	if (!t->sel_pinned) {
		if (t->next_waiting >= 0)
			t->sel_id = t->next_waiting;
		else if (tui_slot_by_id(t, t->sel_id) == NULL)
			t->sel_id = t->n_slots > 0 ? t->slots[0].id : -1;
	}
}

/* ---- the operator's actions ---- */

static void request_quit(struct tui *t)
{
	ps_station_counts(t->st, &t->counts);
	if (t->counts.jobs_running > 0)
		t->mode = MODE_QUIT_ASK;
	else
		t->done = true;
}

static void submit(struct tui *t, bool reprovision)
{
	struct ps_err err = {""};
	const char *serial = reprovision ? t->reprov.serial : t->input.buf;
	int slot =
	    reprovision ? t->reprov.slot : (t->sel_pinned || t->next_waiting >= 0 ? t->sel_id : -1);
	const struct ps_slot_view *v;
	int rc;

	t->input_error[0] = '\0';
	rc = ps_station_check_serial(t->st, serial, &err);
	if (rc == 0)
		rc = ps_station_submit_serial(t->st, slot, serial, reprovision, &err);
	if (rc == PS_EEXIST && !reprovision) {
		struct ps_db_filter filter = {.device_serial = serial, .newest_first = true};
		struct ps_err herr = {""};

		t->reprov.slot = slot;
		snprintf(t->reprov.serial, sizeof(t->reprov.serial), "%s", serial);
		tui_certs_free(&t->reprov.history);
		t->reprov.error[0] = '\0';
		if (tui_certs_load(ps_station_ui_db(t->st), &filter, NULL, &t->reprov.history,
				   TUI_HISTORY_MAX, &herr) < 0)
			snprintf(t->reprov.error, sizeof(t->reprov.error), "%s", herr.msg);
		t->mode = MODE_REPROV_ASK;
		return;
	}
	if (rc < 0) {
		snprintf(t->input_error, sizeof(t->input_error), "%s",
			 err.msg[0] ? err.msg : ps_strstatus(rc));
		if (reprovision)
			tui_field_set(&t->input, serial); /* keep it for correction */
		beep();
		return;
	}
	take_snapshot(t);
	v = tui_slot_by_id(t, slot);
	tui_set_notice(t, false, "%s %s %s", serial, t->utf8 ? "\u2192" : "->",
		       v ? v->name : "the slot waiting longest");
	tui_field_set(&t->input, "");
	t->sel_pinned = false;
}

static void confirm(struct tui *t)
{
	const struct ps_slot_view *v = tui_confirm_target(t);
	struct ps_err err = {""};

	if (v == NULL && !t->cfg->confirm)
		return; /* Enter on an empty line, nothing to start: a scanner's stray Enter */
	if (v == NULL) {
		snprintf(t->input_error, sizeof(t->input_error),
			 "no slot is waiting for a start: scan or type a serial first");
		beep();
		return;
	}
	if (ps_station_confirm(t->st, v->id, &err) < 0) {
		snprintf(t->input_error, sizeof(t->input_error), "%s", err.msg);
		beep();
		return;
	}
	tui_set_notice(t, false, "%s: started", v->name);
	t->input_error[0] = '\0';
	take_snapshot(t);
}

static void reset_slot(struct tui *t)
{
	const struct ps_slot_view *v = tui_slot_by_id(t, t->sel_id);
	struct ps_err err = {""};
	char name[64];

	if (v == NULL) {
		snprintf(t->input_error, sizeof(t->input_error), "no slot is selected");
		return;
	}
	snprintf(name, sizeof(name), "%s", v->name);
	if (ps_station_reset(t->st, v->id, &err) < 0) {
		snprintf(t->input_error, sizeof(t->input_error), "%s", err.msg);
		beep();
		return;
	}
	t->input_error[0] = '\0';
	t->sel_pinned = true; /* the next serial goes to the slot just reset */
	tui_set_notice(t, false, "%s: ready again; scan or type the serial", name);
	take_snapshot(t);
}

static void move_selection(struct tui *t, int delta)
{
	size_t i;
	int at = -1;

	if (t->n_slots == 0)
		return;
	for (i = 0; i < t->n_slots; i++)
		if (t->slots[i].id == t->sel_id)
			at = (int)i;
	at = at < 0 ? 0 : at + delta;
	if (at < 0)
		at = 0;
	if (at >= (int)t->n_slots)
		at = (int)t->n_slots - 1;
	t->sel_id = t->slots[at].id;
	t->sel_pinned = true;
}

/* Read one key without waiting. */
static bool read_key(struct tui_key *k)
{
	wint_t wc;
	int r = wget_wch(stdscr, &wc);

	if (r == ERR)
		return false;
	k->fn = r == KEY_CODE_YES;
	k->code = (int)wc;
	if (k->fn && k->code == KEY_ENTER) {
		k->fn = false;
		k->code = '\r';
	}
	return true;
}

static bool is_enter(struct tui_key k)
{
	return !k.fn && (k.code == '\r' || k.code == '\n');
}

static bool is_fn(struct tui_key k, int code)
{
	return k.fn && k.code == code;
}

static bool is_char(struct tui_key k, int c)
{
	return !k.fn && k.code == c;
}

static bool is_printable(struct tui_key k)
{
	return !k.fn && k.code >= 0x20 && k.code != 0x7f && iswprint((wint_t)k.code);
}

/* A letter alias typed on an empty input line is a command only when no other key follows
 * within TUI_SCAN_WINDOW_MS: a barcode scanner types the whole serial in a burst. Returns
 * true (and the following key in *next) when more keys follow. */
static bool followed_by_more(struct tui_key *next)
{
	struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};

	if (read_key(next))
		return true;
	if (poll(&pfd, 1, TUI_SCAN_WINDOW_MS) > 0 && read_key(next))
		return true;
	return false;
}

static void dash_key(struct tui *t, struct tui_key k);

static void help_key(struct tui *t, struct tui_key k)
{
	if (is_fn(k, KEY_UP) || is_fn(k, KEY_PPAGE)) {
		t->help_top -= is_fn(k, KEY_UP) ? 1 : 10;
		return;
	}
	if (is_fn(k, KEY_DOWN) || is_fn(k, KEY_NPAGE)) {
		t->help_top += is_fn(k, KEY_DOWN) ? 1 : 10;
		return;
	}
	if (is_fn(k, KEY_RESIZE))
		return;
	t->mode = MODE_DASH;
	/* a closing key; anything else (a scanned serial) goes on to the input line */
	if (is_fn(k, KEY_F(1)) || is_fn(k, KEY_F(10)) || is_char(k, TUI_ESC) || is_char(k, '?') ||
	    is_char(k, 'q'))
		return;
	dash_key(t, k);
}

static void dash_key(struct tui *t, struct tui_key k)
{
	struct tui_key next;

	if (t->input.len == 0 && (is_char(k, 'q') || is_char(k, '?'))) {
		if (followed_by_more(&next)) {
			tui_field_key(&t->input, k);
			dash_key(t, next);
			return;
		}
		if (is_char(k, 'q')) {
			request_quit(t);
		} else {
			t->mode = MODE_HELP;
			t->help_top = 0;
		}
		return;
	}
	if (is_enter(k)) {
		trim(&t->input);
		if (t->input.len > 0)
			submit(t, false);
		else
			confirm(t);
		return;
	}
	if (tui_field_key(&t->input, k)) {
		t->input_error[0] = '\0';
		return;
	}
	if (k.fn) {
		switch (k.code) {
		case KEY_F(1):
			t->mode = MODE_HELP;
			t->help_top = 0;
			return;
		case KEY_F(3):
			tui_audit_open(t);
			return;
		case KEY_F(4):
			tui_export_open(t);
			return;
		case KEY_F(5):
			confirm(t);
			return;
		case KEY_F(6):
			reset_slot(t);
			return;
		case KEY_F(10):
			request_quit(t);
			return;
		case KEY_UP:
			move_selection(t, -1);
			return;
		case KEY_DOWN:
			move_selection(t, 1);
			return;
		case KEY_PPAGE:
			t->log_scroll += 5;
			return;
		case KEY_NPAGE:
			t->log_scroll = t->log_scroll > 5 ? t->log_scroll - 5 : 0;
			return;
		case KEY_END:
			t->log_scroll = 0;
			return;
		default:
			return;
		}
	}
	switch (k.code) {
	case TUI_ESC:
		tui_field_set(&t->input, "");
		t->input_error[0] = '\0';
		t->sel_pinned = false;
		take_snapshot(t);
		return;
	case TUI_CTRL('f'):
		tui_audit_open(t);
		return;
	case TUI_CTRL('e'):
		tui_export_open(t);
		return;
	case TUI_CTRL('r'):
		reset_slot(t);
		return;
	case TUI_CTRL('c'):
		request_quit(t);
		return;
	case TUI_CTRL('l'):
		clearok(curscr, TRUE);
		return;
	default:
		return;
	}
}

static void handle_key(struct tui *t, struct tui_key k)
{
	if (is_fn(k, KEY_RESIZE))
		return; /* ncurses has resized the screen; the next frame lays it out anew */
	switch (t->mode) {
	case MODE_DASH:
		dash_key(t, k);
		return;
	case MODE_HELP:
		help_key(t, k);
		return;
	case MODE_QUIT_ASK:
		if (is_char(k, 'y') || is_char(k, 'Y')) {
			ps_station_counts(t->st, &t->counts);
			t->mode = MODE_QUITTING;
			return;
		}
		t->mode = MODE_DASH;
		if (is_printable(k) && !is_char(k, 'n') && !is_char(k, 'N'))
			dash_key(t, k); /* not an answer: the start of a scan */
		return;
	case MODE_QUITTING:
		if (is_char(k, TUI_CTRL('l')))
			clearok(curscr, TRUE);
		return;
	case MODE_REPROV_ASK:
		t->mode = MODE_DASH;
		if (is_char(k, 'y') || is_char(k, 'Y')) {
			submit(t, true);
		} else {
			tui_set_notice(t, false, "%s: not re-provisioned", t->reprov.serial);
			if (is_printable(k) && !is_char(k, 'n') && !is_char(k, 'N')) {
				/* not an answer: a new scan begins */
				tui_field_set(&t->input, "");
				dash_key(t, k);
			}
		}
		tui_certs_free(&t->reprov.history);
		return;
	case MODE_AUDIT:
		tui_audit_key(t, k);
		return;
	case MODE_EXPORT:
		tui_export_key(t, k);
		return;
	}
}

static void draw(struct tui *t)
{
	t->cursor_shown = false;
	erase();
	tui_draw_dashboard(t);
	if (t->mode != MODE_DASH && t->mode != MODE_QUIT_ASK && t->mode != MODE_QUITTING)
		t->cursor_shown = false; /* a box over the input line: its own field, or none */
	switch (t->mode) {
	case MODE_HELP:
		tui_draw_help(t);
		break;
	case MODE_REPROV_ASK:
		tui_reprov_draw(t);
		break;
	case MODE_AUDIT:
		tui_audit_draw(t);
		break;
	case MODE_EXPORT:
		tui_export_draw(t);
		break;
	default:
		break;
	}
	if (t->cursor_shown) {
		curs_set(1);
		move(t->cursor_y, t->cursor_x);
	} else {
		curs_set(0);
	}
	refresh();
}

static bool env_no_color(void)
{
	const char *v = getenv("NO_COLOR");

	return v != NULL && v[0] != '\0';
}

int ps_tui_run(struct ps_station *st, const struct ps_config *cfg, struct ps_ca *ca,
	       const struct ps_tui_options *opts, struct ps_err *err)
{
	static const struct ps_tui_options defaults;
	struct sigaction sa, old_term, old_hup, old_int;
	struct tui *t = NULL;
	SCREEN *screen = NULL;
	const char *codeset;
	long last_draw = 0, last_snap = 0;
	bool dirty = true, signals_set = false;
	int rc = 0;

	if (opts == NULL)
		opts = &defaults;
	if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
		rc = ps_fail(err, PS_EINVAL,
			     "the station's screen needs a terminal on stdin and "
			     "stdout");
		goto out;
	}
	t = calloc(1, sizeof(*t));
	if (t == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	ps_tui_init_locale();
	codeset = nl_langinfo(CODESET);
	t->st = st;
	t->cfg = cfg;
	t->ca = ca;
	t->title = opts->title;
	t->utf8 = !opts->ascii && codeset != NULL && strcmp(codeset, "UTF-8") == 0;
	t->color = !opts->no_color && !env_no_color();
	t->sel_id = -1;
	t->next_waiting = -1;

	/* SIGTERM, SIGHUP and SIGINT leave the way the quit key does: after the running jobs
	 * (set before newterm, so ncurses keeps its hands off them) */
	stop_signal = 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, &old_term);
	sigaction(SIGHUP, &sa, &old_hup);
	sigaction(SIGINT, &sa, &old_int);
	signals_set = true;

	screen = newterm(NULL, stdout, stdin);
	if (screen == NULL) {
		const char *term = getenv("TERM");

		rc = ps_fail(err, PS_EINVAL, "cannot use the terminal (TERM=%s)",
			     term ? term : "unset");
		goto out;
	}
	set_term(screen);
	raw(); /* ^C, ^S, ^Q, ^Z are keys of the station, not signals or flow control */
	noecho();
	nonl();
	keypad(stdscr, TRUE);
	nodelay(stdscr, TRUE);
	set_escdelay(25);
	tui_colors_init(t);
	take_snapshot(t);

	while (!t->done) {
		struct pollfd pfd[2] = {
		    {.fd = STDIN_FILENO, .events = POLLIN},
		    {.fd = ps_station_event_fd(st), .events = POLLIN},
		};
		struct tui_key k;
		long now, timeout;
		bool keys = false;

		now = tui_now_ms();
		timeout = dirty ? MIN_FRAME_MS - (now - last_draw) : FRAME_MS - (now - last_snap);
		if (timeout < 0)
			timeout = 0;
		if (timeout > FRAME_MS)
			timeout = FRAME_MS;
		if (poll(pfd, 2, (int)timeout) < 0 && errno != EINTR) {
			rc = ps_fail(err, PS_EIO, "poll: %s", strerror(errno));
			break;
		}
		if (pfd[1].revents & POLLIN) {
			ps_station_ack(st);
			dirty = true;
		}
		/* every key waiting is handled before the next frame (ncurses also reports a
		 * resize here, as KEY_RESIZE) */
		while (!t->done && read_key(&k)) {
			handle_key(t, k);
			keys = true;
		}
		if (stop_signal != 0 && t->mode != MODE_QUITTING) {
			t->mode = MODE_QUITTING;
			dirty = true;
		}
		now = tui_now_ms();
		if (keys || (dirty && now - last_draw >= MIN_FRAME_MS) ||
		    now - last_snap >= FRAME_MS) {
			take_snapshot(t);
			last_snap = now;
			if (t->mode == MODE_QUITTING && t->counts.jobs_running == 0)
				break;
			draw(t);
			last_draw = now;
			dirty = false;
		}
	}
out:
	if (screen != NULL) {
		endwin();
		delscreen(screen);
	}
	if (signals_set) {
		sigaction(SIGTERM, &old_term, NULL);
		sigaction(SIGHUP, &old_hup, NULL);
		sigaction(SIGINT, &old_int, NULL);
	}
	if (t != NULL) {
		tui_audit_close(t);
		tui_certs_free(&t->reprov.history);
		free(t);
	}
	return rc;
}
