/* cmd_flash.c — `provstation flash`: write a golden image to one or more targets, with a
 * progress line when stderr is a terminal and one result line per target; and that progress
 * line with the interrupt handling for every command that flashes (cli_flash_watch). */
#include "cli.h"
#include "flash.h"
#include "util.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

enum { OPT_IMAGE = 1000, OPT_BMAP, OPT_TARGET, OPT_NO_VERIFY, OPT_ALLOW_UNLISTED, OPT_ALLOW_FIXED };

static atomic_bool interrupted;

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&interrupted, true);
}

static double monotonic(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The progress line: the latest event of every target. */
static void print_line(struct cli_flash_watch *w)
{
	struct winsize ws;
	char line[1024];
	size_t used = 0, i, width = 79;

	if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20)
		width = ws.ws_col - 1;
	if (width >= sizeof(line))
		width = sizeof(line) - 1;
	line[0] = '\0';
	for (i = 0; i < w->n && used < sizeof(line); i++) {
		const struct ps_flash_progress *p = &w->p[i];
		const char *what;
		char pct[16] = "", eta[32] = "";

		if (!w->seen[i])
			continue;
		what = p->phase == PS_FLASH_WRITING	? "writing"
		       : p->phase == PS_FLASH_VERIFYING ? "verifying"
		       : p->phase == PS_FLASH_DONE	? "done"
							: "FAILED";
		if (p->total > 0 && p->phase < PS_FLASH_DONE)
			snprintf(pct, sizeof(pct), " %3d%%",
				 (int)((double)p->done * 100.0 / (double)p->total));
		if (p->eta >= 0 && p->phase < PS_FLASH_DONE)
			snprintf(eta, sizeof(eta), " %d:%02d left", (int)p->eta / 60,
				 (int)p->eta % 60);
		used += (size_t)snprintf(line + used, sizeof(line) - used, "%s%s %s%s %.1f MB/s%s",
					 used ? " | " : "", ps_base_name(w->targets[i]), what, pct,
					 p->rate / 1e6, eta);
	}
	if (used > width)
		line[width] = '\0';
	fprintf(stderr, "\r%s\033[K", line);
	fflush(stderr);
	w->shown = true;
}

static void on_progress(const char *target, const struct ps_flash_progress *p, void *user)
{
	struct cli_flash_watch *w = user;
	double t = monotonic();

	(void)target;
	if (p->index >= w->n)
		return;
	pthread_mutex_lock(&w->lock);
	w->p[p->index] = *p;
	w->seen[p->index] = true;
	if (w->active && t - w->last >= 0.25) {
		w->last = t;
		print_line(w);
	}
	pthread_mutex_unlock(&w->lock);
}

void cli_flash_watch_start(struct cli_flash_watch *w, const char *const *targets, size_t n,
			   ps_flash_progress_fn *progress, void **progress_user,
			   atomic_bool **cancel)
{
	struct sigaction sa;

	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->lock, NULL);
	w->targets = targets;
	w->n = n < PS_FLASH_MAX_TARGETS ? n : PS_FLASH_MAX_TARGETS;
	w->active = true;
	*progress = NULL;
	*progress_user = NULL;
	if (isatty(STDERR_FILENO)) {
		*progress = on_progress;
		*progress_user = w;
	}
	atomic_store(&interrupted, false);
	*cancel = &interrupted;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sigaction(SIGINT, &sa, &w->old_int);
	sigaction(SIGTERM, &sa, &w->old_term);
}

void cli_flash_watch_end(struct cli_flash_watch *w)
{
	if (!w->active)
		return;
	/* The flashing threads are gone by now: no lock needed. */
	w->active = false;
	if (w->shown)
		fprintf(stderr, "\r\033[K");
	w->shown = false;
	sigaction(SIGINT, &w->old_int, NULL);
	sigaction(SIGTERM, &w->old_term, NULL);
	pthread_mutex_destroy(&w->lock);
}

static void usage_flash(FILE *out)
{
	fprintf(
	    out,
	    "usage: provstation flash --image IMG [--bmap FILE] --target PATH\n"
	    "                         [--target PATH]... [--no-verify]\n"
	    "                         [--allow-unlisted] [--allow-fixed-disk]\n"
	    "\n"
	    "Write a golden image to every target at once: a block device (whole disk) or a\n"
	    "regular file (created or truncated, mode 0600 when new). IMG is raw or compressed\n"
	    "with gzip, xz or zstd (found by its first bytes) and is decompressed as a stream.\n"
	    "With --bmap (bmaptool create), only the mapped ranges are written and their\n"
	    "checksums are checked as they are read. Afterwards every target is read back with\n"
	    "the page cache bypassed and compared (--no-verify skips that). A failing target is\n"
	    "dropped with its reason while the others finish.\n"
	    "\n"
	    "A block device passes the safety gate first (see provstation provision --help),\n"
	    "must hold the image, and needs --allow-unlisted while the station has no slots.\n"
	    "\n"
	    "Prints the image's SHA-256 and one line per target:\n"
	    "  PATH: OK; N bytes written, R MB/s; verified yes, V MB/s\n"
	    "  PATH: FAILED: REASON; N bytes written, R MB/s; verified no\n"
	    "Exit status 0 only when every target succeeded.\n");
}

int cmd_flash(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"image", required_argument, NULL, OPT_IMAGE},
	    {"bmap", required_argument, NULL, OPT_BMAP},
	    {"target", required_argument, NULL, OPT_TARGET},
	    {"no-verify", no_argument, NULL, OPT_NO_VERIFY},
	    {"allow-unlisted", no_argument, NULL, OPT_ALLOW_UNLISTED},
	    {"allow-fixed-disk", no_argument, NULL, OPT_ALLOW_FIXED},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	static struct ps_flash_result results[PS_FLASH_MAX_TARGETS];
	const char *targets[PS_FLASH_MAX_TARGETS];
	struct ps_flash_request req = {.verify = true};
	struct cli_flash_watch watch;
	struct ps_err err = {""};
	size_t n = 0, i;
	int c, rc;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case OPT_IMAGE:
			if (cli_option_once("flash", "--image", &req.image) != 0)
				return PS_EXIT_USAGE;
			break;
		case OPT_BMAP:
			if (cli_option_once("flash", "--bmap", &req.bmap) != 0)
				return PS_EXIT_USAGE;
			break;
		case OPT_TARGET:
			if (n == PS_FLASH_MAX_TARGETS)
				return cli_usage_error("flash", "more than %d targets",
						       PS_FLASH_MAX_TARGETS);
			targets[n++] = optarg;
			break;
		case OPT_NO_VERIFY:
			req.verify = false;
			break;
		case OPT_ALLOW_UNLISTED:
			req.allow_unlisted = true;
			break;
		case OPT_ALLOW_FIXED:
			req.safety.allow_fixed = true;
			break;
		case 'h':
			usage_flash(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error("flash", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("flash", "unexpected argument '%s'", argv[optind]);
	if (req.image == NULL || n == 0)
		return cli_usage_error("flash", "--image and at least one --target are required");
	for (i = 0; i < n; i++)
		if (targets[i][0] == '\0')
			return cli_usage_error("flash", "--target needs a path");
	req.targets = targets;
	req.n_targets = n;
	cli_flash_watch_start(&watch, targets, n, &req.progress, &req.progress_user, &req.cancel);
	rc = ps_flash(&req, results, &err);
	cli_flash_watch_end(&watch);

	printf("image %s: %s", results[0].image_name, ps_flash_format_name(results[0].format));
	if (results[0].image_size > 0)
		printf(", %llu bytes", (unsigned long long)results[0].image_size);
	if (results[0].image_sha256[0] != '\0')
		printf(", sha256 %s%s", results[0].image_sha256,
		       results[0].image_sha256_cached ? " (from the hash cache)" : "");
	printf("\n");
	for (i = 0; i < n; i++) {
		const struct ps_flash_result *r = &results[i];
		double rate =
		    r->write_seconds > 0 ? (double)r->bytes_written / r->write_seconds : 0;

		if (r->status == 0)
			printf("%s: OK", targets[i]);
		else
			printf("%s: FAILED: %s", targets[i], r->message);
		printf("; %llu bytes written, %.1f MB/s; verified %s",
		       (unsigned long long)r->bytes_written, rate / 1e6,
		       r->verified ? "yes" : "no");
		if (r->verified && r->verify_seconds > 0)
			printf(", %.1f MB/s", (double)r->bytes_verified / r->verify_seconds / 1e6);
		printf("\n");
		if (r->status == PS_EUNSAFE)
			syslog(LOG_WARNING, "provstation: refused to flash %s: %s", targets[i],
			       r->message);
	}
	fflush(stdout);
	if (rc < 0)
		return cli_error(&err);
	return PS_EXIT_OK;
}
