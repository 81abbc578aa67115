/* cmd_station.c — `provstation station`: load the configuration and the CA (asking for its
 * passphrase before the screen starts), open the station, run its screen, close it. */
#include "cli.h"
#include "station.h"
#include "tui.h"

#include <getopt.h>
#include <stdio.h>
#include <unistd.h>

enum { OPT_PASSFILE = 1000, OPT_NO_COLOR, OPT_ASCII };

static void usage_station(FILE *out)
{
	fprintf(out,
		"usage: provstation station [--config FILE] [--ca-dir DIR] [--db FILE]\n"
		"                           [--passphrase-file F] [--no-color] [--ascii]\n"
		"\n"
		"The provisioning station's screen: a row per slot (configured ports and the\n"
		"image files of the slots directory) with what is in it, its serial and state,\n"
		"PASS or FAIL with the reason; the log; an input line for serials (scan or type,\n"
		"Enter). F1 or ? shows the keys. The CA key's passphrase is asked once, before\n"
		"the screen starts. --no-color (or NO_COLOR) draws in monochrome; --ascii draws\n"
		"without line-drawing characters (the default when the locale is not UTF-8).\n");
}

int cmd_station(int argc, char **argv)
{
	static const struct option opts[] = {
	    CLI_COMMON_OPTIONS,
	    {"passphrase-file", required_argument, NULL, OPT_PASSFILE},
	    {"no-color", no_argument, NULL, OPT_NO_COLOR},
	    {"ascii", no_argument, NULL, OPT_ASCII},
	    {NULL, 0, NULL, 0},
	};
	struct cli_common_args args = {0};
	struct ps_passphrase_src pass = {.allow_prompt = true};
	struct ps_tui_options tui = {0};
	struct ps_station_counts counts;
	struct ps_station *st = NULL;
	struct ps_config cfg;
	struct ps_ca ca;
	struct ps_err err = {""};
	bool have_cfg = false, have_ca = false;
	int c, rc = PS_EXIT_OK;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (cli_common_option(c, &args))
			continue;
		switch (c) {
		case OPT_PASSFILE:
			pass.file = optarg;
			break;
		case OPT_NO_COLOR:
			tui.no_color = true;
			break;
		case OPT_ASCII:
			tui.ascii = true;
			break;
		case 'h':
			usage_station(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error("station", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("station", "unexpected argument '%s'", argv[optind]);
	if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
		ps_fail(&err, PS_EINVAL, "the station needs a terminal (stdin and stdout)");
		goto fail;
	}
	/* before any thread starts: setlocale is not thread-safe */
	ps_tui_init_locale();
	if (cli_load_config(&cfg, args.config, args.ca_dir, args.db, &err) < 0)
		goto fail;
	have_cfg = true;
	if (pass.file == NULL && cfg.ca_passphrase_file != NULL && cfg.ca_passphrase_file[0])
		pass.file = cfg.ca_passphrase_file;
	/* the passphrase prompt (no echo) happens here, while the terminal is still plain */
	if (ps_ca_load(&ca, cfg.ca_dir, true, &pass, &err) < 0)
		goto fail;
	have_ca = true;
	if (ps_station_open(&cfg, &ca, &st, &err) < 0)
		goto fail;
	if (ps_tui_run(st, &cfg, &ca, &tui, &err) < 0)
		goto fail;
	goto out;
fail:
	rc = cli_error(&err);
out:
	if (st != NULL) {
		ps_station_counts(st, &counts);
		if (counts.jobs_running > 0) {
			fprintf(stderr, "provstation: waiting for %ld running job%s to finish\n",
				counts.jobs_running, counts.jobs_running == 1 ? "" : "s");
		}
		ps_station_close(st);
	}
	if (have_ca)
		ps_ca_free(&ca);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}
