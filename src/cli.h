/* cli.h — what the provstation subcommands share: their entry points, the one place errors
 * become a line on stderr and an exit status, and option parsing helpers. */
#ifndef PS_CLI_H
#define PS_CLI_H

#include "config.h"
#include "err.h"
#include "flash.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

enum { PS_EXIT_OK = 0, PS_EXIT_FAIL = 1, PS_EXIT_USAGE = 2 };

struct ps_command {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
};

int cmd_ca(int argc, char **argv);
int cmd_provision(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_devices(int argc, char **argv);
int cmd_station(int argc, char **argv);
int cmd_preauth(int argc, char **argv);
int cmd_flash(int argc, char **argv);
int cmd_revoke(int argc, char **argv);
int cmd_crl(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_audit(int argc, char **argv);

/* Print "provstation: <message>" and return PS_EXIT_FAIL. */
int cli_error(const struct ps_err *err);
/* Print "provstation: <formatted>" and return PS_EXIT_USAGE (or FAIL for non-usage). */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Set *slot to optarg for an option that may be given once; a usage error (as
 * cli_usage_error) when it was given before. */
int cli_option_once(const char *cmd, const char *option, const char **slot);

/* The options every command that reads the configuration takes, with --help. */
enum { CLI_OPT_CONFIG = 900, CLI_OPT_CA_DIR, CLI_OPT_DB };
#define CLI_COMMON_OPTIONS                                                                         \
	{"config", required_argument, NULL, CLI_OPT_CONFIG},                                       \
	    {"ca-dir", required_argument, NULL, CLI_OPT_CA_DIR},                                   \
	    {"db", required_argument, NULL, CLI_OPT_DB},                                           \
	{                                                                                          \
		"help", no_argument, NULL, 'h'                                                     \
	}

struct cli_common_args {
	const char *config, *ca_dir, *db;
};

/* Record option c when it is one of CLI_COMMON_OPTIONS; false otherwise. */
bool cli_common_option(int c, struct cli_common_args *args);

/* Load the configuration named by --config (or the default) and apply --ca-dir / --db. */
int cli_load_config(struct ps_config *cfg, const char *config_path, const char *ca_dir,
		    const char *db, struct ps_err *err);

/* While flashing from the command line (flash, provision --flash): a progress line on stderr
 * when it is a terminal (each target's phase, percentage, rate and time left, at most four
 * times a second, cut at the terminal's width), and SIGINT/SIGTERM stopping the flash soon. */
struct cli_flash_watch {
	pthread_mutex_t lock;
	const char *const *targets;
	size_t n;
	struct ps_flash_progress p[PS_FLASH_MAX_TARGETS];
	bool seen[PS_FLASH_MAX_TARGETS];
	double last;
	bool shown, active;
	struct sigaction old_int, old_term;
};

/* Start watching n targets: sets *progress and *progress_user (NULL unless stderr is a
 * terminal) and *cancel for the flash request. */
void cli_flash_watch_start(struct cli_flash_watch *w, const char *const *targets, size_t n,
			   ps_flash_progress_fn *progress, void **progress_user,
			   atomic_bool **cancel);
/* Once the flash is over: clear the progress line and restore the signals; calling it again
 * does nothing. */
void cli_flash_watch_end(struct cli_flash_watch *w);

#endif
