/* tui.h — the station's terminal front end: a dashboard of slots, the operator's serial input
 * line, the log, the audit view and export, drawn with curses from the station's snapshots.
 * This header does not include curses, so the command line can call it. */
#ifndef PS_TUI_H
#define PS_TUI_H

#include "ca.h"
#include "config.h"
#include "err.h"
#include "station.h"

#include <stdbool.h>

struct ps_tui_options {
	bool no_color;	   /* --no-color; a non-empty NO_COLOR in the environment does the same */
	bool ascii;	   /* plain ASCII drawing even when the locale is UTF-8 */
	const char *title; /* shown after "provstation" in the header ("demo"); NULL: none */
};

/* Take the locale from the environment for the terminal's character set (setlocale is not
 * thread-safe: call this before ps_station_open starts threads; ps_tui_run calls it when the
 * caller did not). Numbers stay in the C locale, as the core library formats and parses
 * them. */
void ps_tui_init_locale(void);

/* Run the station's screen on the terminal (stdin and stdout) until the operator quits, or
 * SIGTERM / SIGHUP arrives; both wait, on screen, for running jobs to finish. The station is
 * opened and closed by the caller; curses is started here (after anything that prompts, such
 * as the CA passphrase) and ended before returning. Returns 0, or PS_EINVAL when stdin or
 * stdout is not a terminal curses can use. */
int ps_tui_run(struct ps_station *st, const struct ps_config *cfg, struct ps_ca *ca,
	       const struct ps_tui_options *opts, struct ps_err *err);

#endif
