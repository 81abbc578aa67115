/* cmd_devices.c — `provstation devices`: every disk and USB board the station sees, the slot
 * each maps to, the serial it would be provisioned with and the safety gate's verdict, as a
 * list, JSON, or a line per hotplug event (--watch). */
#include "cli.h"
#include "hotplug.h"
#include "safety.h"
#include "slotmatch.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OPT_CONFIG = 1000, OPT_JSON, OPT_WATCH };

static void usage_devices(FILE *out)
{
	fprintf(
	    out,
	    "usage: provstation devices [--json] [--watch] [--config FILE]\n"
	    "\n"
	    "List every disk and USB board the station sees: device node, ID_PATH (the\n"
	    "physical port), vendor, model, size, bus, the USB parent's VID:PID, serial and\n"
	    "port, the SD card's CID serial; the station slot it maps to and the serial it\n"
	    "would be provisioned with; and the safety gate's verdict: whether provstation\n"
	    "would write it, and if not, why.\n"
	    "\n"
	    "  --json         a JSON array (with --watch: one JSON object per line)\n"
	    "  --watch        one line per event as disks and boards come and go, until\n"
	    "                 interrupted; the devices already present come first, as added\n"
	    "  --config FILE  the station configuration (default %s)\n"
	    "\n"
	    "Setting up the station's slots: put a card reader with a card (or whatever the\n"
	    "station writes) into each port the station uses, run `provstation devices`,\n"
	    "and copy each disk's ID_PATH into a slot of station.conf:\n"
	    "\n"
	    "  [slot front-left]\n"
	    "  ports = pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0\n"
	    "  serial_source = usb\n"
	    "\n"
	    "ports takes up to %d comma-separated fnmatch patterns (\"*\" matches any text:\n"
	    "pci-0000:00:14.0-usb-0:2:1.0-* is any disk behind that port); a pattern that\n"
	    "starts with /dev/ matches the device node instead (loop devices and some virtual\n"
	    "disks have no ID_PATH). Run `provstation devices` again: the disk names its slot.\n"
	    "A disk in no slot is never written by the station.\n",
	    PS_DEFAULT_CONFIG, PS_MAX_PORTS);
}

/* What `devices` shows about one disk beyond what hotplug saw. */
struct disk_view {
	const struct ps_slot_config *slot;
	char serial[PS_SERIAL_MAX + 1]; /* the serial itself, "" when none is known */
	char serial_text[1100];		/* the serial or why there is none, for display */
	bool safe;
	char safety[1024]; /* "ok" or the gate's reason */
};

static void view_disk(const struct ps_config *cfg, const struct ps_disk *disk,
		      struct disk_view *view)
{
	struct ps_safety_policy policy = {0};
	struct ps_err err = {""};

	memset(view, 0, sizeof(*view));
	view->slot = ps_slot_for_disk(cfg, disk);
	ps_slot_serial_text(view->slot, disk, view->serial_text, sizeof(view->serial_text));
	if (view->slot != NULL &&
	    ps_slot_serial(view->slot, disk, view->serial, sizeof(view->serial), NULL) < 0)
		view->serial[0] = '\0';
	policy.allow_fixed = view->slot != NULL && view->slot->allow_fixed;
	if (disk->node[0] == '\0') {
		snprintf(view->safety, sizeof(view->safety), "no device node");
	} else if (ps_safety_check(disk->node, &policy, NULL, &err) < 0) {
		snprintf(view->safety, sizeof(view->safety), "%s", err.msg);
	} else {
		view->safe = true;
		snprintf(view->safety, sizeof(view->safety), "ok");
	}
}

/* "15.9 GB" (decimal units, as disks are sold), or "no medium". */
static void format_size(uint64_t bytes, char *out, size_t len)
{
	static const char *const units[] = {"bytes", "kB", "MB", "GB", "TB", "PB"};
	double v = (double)bytes;
	size_t u = 0;

	if (bytes == 0) {
		snprintf(out, len, "no medium");
		return;
	}
	while (v >= 1000.0 && u + 1 < PS_ARRAY_SIZE(units)) {
		v /= 1000.0;
		u++;
	}
	if (u == 0)
		snprintf(out, len, "%llu bytes", (unsigned long long)bytes);
	else
		snprintf(out, len, "%.1f %s", v, units[u]);
}

/* Print key=value; the value in double quotes (with \" and \\) when it has blanks or quotes,
 * "-" when empty. */
static void print_kv(const char *key, const char *value)
{
	const char *p;

	if (value == NULL || *value == '\0') {
		printf(" %s=-", key);
		return;
	}
	if (strpbrk(value, " \t\"\\=") == NULL) {
		printf(" %s=%s", key, value);
		return;
	}
	printf(" %s=\"", key);
	for (p = value; *p != '\0'; p++) {
		if (*p == '"' || *p == '\\')
			putchar('\\');
		putchar(*p);
	}
	putchar('"');
}

static void print_disk(const struct ps_disk *disk, const struct disk_view *view)
{
	char size[32];

	format_size(disk->size, size, sizeof(size));
	printf("%s  %s%s%s, %s%s%s%s%s\n", disk->node[0] ? disk->node : disk->syspath, disk->vendor,
	       disk->vendor[0] && disk->model[0] ? " " : "",
	       disk->vendor[0] || disk->model[0] ? disk->model : "(no model)", size,
	       disk->bus[0] ? ", " : "", disk->bus, disk->removable ? ", removable" : "",
	       disk->read_only ? ", read-only" : "");
	printf("  ID_PATH   %s\n", disk->id_path[0] ? disk->id_path : "(none)");
	if (disk->usb_vid != 0 || disk->usb_pid != 0)
		printf("  USB       %04x:%04x serial %s, port %s\n", disk->usb_vid, disk->usb_pid,
		       disk->usb_serial[0] ? disk->usb_serial : "(none)", disk->usb_port);
	if (disk->cid_serial[0] != '\0')
		printf("  SD card   CID serial %s\n", disk->cid_serial);
	if (view->slot != NULL)
		printf("  slot      %s\n  serial    %s (%s)\n", view->slot->name, view->serial_text,
		       ps_serial_source_name(view->slot->serial_source));
	else
		printf("  slot      not a station slot\n");
	printf("  safety    %s%s\n", view->safe ? "" : "refused: ", view->safety);
}

/* The helper command the station would run for a board: expanded, "(none)", or why not. */
static void helper_text(const struct ps_board_config *bc, const struct ps_usb_board *board,
			char *out, size_t len)
{
	struct ps_err err = {""};

	if (bc == NULL)
		snprintf(out, len, "(not a configured board)");
	else if (ps_board_helper_command(bc, board, out, len, &err) < 0)
		snprintf(out, len, "(%s)", err.msg);
	else if (out[0] == '\0')
		snprintf(out, len, "(none)");
}

static void print_board(const struct ps_config *cfg, const struct ps_usb_board *board)
{
	const struct ps_board_config *bc = ps_board_for_usb_id(cfg, board->vid, board->pid);
	const struct ps_slot_config *slot = ps_slot_for_board(cfg, board);
	char helper[2048];

	helper_text(bc, board, helper, sizeof(helper));
	printf("USB board %04x:%04x at port %s\n", board->vid, board->pid, board->port);
	printf("  ID_PATH   %s\n", board->id_path[0] ? board->id_path : "(none)");
	printf("  serial    %s\n", board->serial[0] ? board->serial : "(none)");
	if (bc != NULL) {
		printf("  board     %s, in a boot or recovery mode\n", bc->name);
		printf("  helper    %s\n", helper);
		printf("  then      %ld s for a disk to appear on port %s\n", bc->timeout,
		       board->port);
	}
	printf("  slot      %s%s\n", slot != NULL ? slot->name : "not a station slot",
	       slot == NULL && bc != NULL ? " (the helper does not run)" : "");
}

/* A JSON string; bytes jansson refuses (not UTF-8) cannot occur: hotplug keeps text ASCII. */
static json_t *jstr(const char *s)
{
	json_t *v = json_string(s != NULL ? s : "");

	return v != NULL ? v : json_string("?");
}

/* "" becomes null. */
static json_t *jstr_or_null(const char *s)
{
	return s != NULL && *s != '\0' ? jstr(s) : json_null();
}

static json_t *jhex(uint16_t v)
{
	char buf[8];

	snprintf(buf, sizeof(buf), "%04x", v);
	return jstr(buf);
}

static json_t *disk_json(const struct ps_disk *disk, const struct disk_view *view)
{
	json_t *o = json_object();
	json_t *usb = json_null();

	if (disk->usb_vid != 0 || disk->usb_pid != 0) {
		usb = json_object();
		json_object_set_new(usb, "vid", jhex(disk->usb_vid));
		json_object_set_new(usb, "pid", jhex(disk->usb_pid));
		json_object_set_new(usb, "serial", jstr_or_null(disk->usb_serial));
		json_object_set_new(usb, "port", jstr_or_null(disk->usb_port));
	}
	json_object_set_new(o, "type", jstr("disk"));
	json_object_set_new(o, "node", jstr(disk->node));
	json_object_set_new(o, "syspath", jstr(disk->syspath));
	json_object_set_new(o, "id_path", jstr_or_null(disk->id_path));
	json_object_set_new(o, "vendor", jstr(disk->vendor));
	json_object_set_new(o, "model", jstr(disk->model));
	json_object_set_new(o, "size", json_integer((json_int_t)disk->size));
	json_object_set_new(o, "removable", json_boolean(disk->removable));
	json_object_set_new(o, "read_only", json_boolean(disk->read_only));
	json_object_set_new(o, "bus", jstr(disk->bus));
	json_object_set_new(o, "cid_serial", jstr_or_null(disk->cid_serial));
	json_object_set_new(o, "usb", usb);
	if (view != NULL) {
		json_object_set_new(o, "slot", view->slot ? jstr(view->slot->name) : json_null());
		json_object_set_new(o, "serial_source",
				    view->slot
					? jstr(ps_serial_source_name(view->slot->serial_source))
					: json_null());
		json_object_set_new(o, "serial", jstr_or_null(view->serial));
		json_object_set_new(o, "serial_text", jstr(view->serial_text));
		json_object_set_new(o, "safe", json_boolean(view->safe));
		json_object_set_new(o, "safety", jstr(view->safety));
	}
	return o;
}

static json_t *board_json(const struct ps_config *cfg, const struct ps_usb_board *board)
{
	const struct ps_board_config *bc = ps_board_for_usb_id(cfg, board->vid, board->pid);
	const struct ps_slot_config *slot = ps_slot_for_board(cfg, board);
	json_t *o = json_object();

	json_object_set_new(o, "type", jstr("board"));
	json_object_set_new(o, "vid", jhex(board->vid));
	json_object_set_new(o, "pid", jhex(board->pid));
	json_object_set_new(o, "serial", jstr_or_null(board->serial));
	json_object_set_new(o, "port", jstr(board->port));
	json_object_set_new(o, "id_path", jstr_or_null(board->id_path));
	json_object_set_new(o, "syspath", jstr(board->syspath));
	json_object_set_new(o, "board", bc ? jstr(bc->name) : json_null());
	if (bc != NULL) {
		char helper[2048];
		struct ps_err err = {""};

		if (ps_board_helper_command(bc, board, helper, sizeof(helper), &err) < 0)
			snprintf(helper, sizeof(helper), "(%s)", err.msg);
		json_object_set_new(o, "helper", jstr_or_null(helper));
		json_object_set_new(o, "timeout", json_integer(bc->timeout));
	} else {
		json_object_set_new(o, "helper", json_null());
		json_object_set_new(o, "timeout", json_null());
	}
	json_object_set_new(o, "slot", slot ? jstr(slot->name) : json_null());
	return o;
}

/* What the hotplug callback works with. */
struct devices_ctx {
	const struct ps_config *cfg;
	bool json, watch;
	bool failed;	       /* out of memory while collecting */
	struct ps_disk *disks; /* collected (list mode) */
	size_t n_disks;
	struct ps_usb_board *boards;
	size_t n_boards;
};

static void print_event(struct devices_ctx *ctx, enum ps_hotplug_event event,
			const struct ps_disk *disk, const struct ps_usb_board *board)
{
	char now[32];
	struct disk_view view;
	bool gone = event == PS_HOTPLUG_DISK_REMOVED || event == PS_HOTPLUG_BOARD_REMOVED;

	ps_format_time(ps_now(), now);
	if (disk != NULL && !gone)
		view_disk(ctx->cfg, disk, &view);
	if (ctx->json) {
		json_t *o =
		    disk ? disk_json(disk, gone ? NULL : &view) : board_json(ctx->cfg, board);
		char *text;

		if (disk != NULL && gone) {
			const struct ps_slot_config *slot = ps_slot_for_disk(ctx->cfg, disk);

			json_object_set_new(o, "slot", slot ? jstr(slot->name) : json_null());
		}
		json_object_set_new(o, "event", jstr(ps_hotplug_event_name(event)));
		json_object_set_new(o, "time", jstr(now));
		text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		if (text != NULL)
			printf("%s\n", text);
		free(text);
		json_decref(o);
	} else if (disk != NULL) {
		const struct ps_slot_config *slot = ps_slot_for_disk(ctx->cfg, disk);
		char size[32];

		printf("%s %s %s", now, ps_hotplug_event_name(event), disk->node);
		print_kv("ID_PATH", disk->id_path);
		print_kv("slot", slot ? slot->name : "");
		if (!gone) {
			char model[160], usb[200], verdict[1100];

			format_size(disk->size, size, sizeof(size));
			snprintf(model, sizeof(model), "%s%s%s", disk->vendor,
				 disk->vendor[0] && disk->model[0] ? " " : "", disk->model);
			usb[0] = '\0';
			if (disk->usb_vid != 0 || disk->usb_pid != 0)
				snprintf(usb, sizeof(usb), "%04x:%04x", disk->usb_vid,
					 disk->usb_pid);
			print_kv("size", size);
			print_kv("model", model);
			print_kv("bus", disk->bus);
			print_kv("usb", usb);
			print_kv("usb_serial", disk->usb_serial);
			print_kv("port", disk->usb_port);
			print_kv("cid", disk->cid_serial);
			print_kv("serial", slot ? view.serial_text : "");
			snprintf(verdict, sizeof(verdict), "%s%s",
				 view.safe ? "" : "refused: ", view.safety);
			print_kv("safety", verdict);
		}
		putchar('\n');
	} else {
		const struct ps_board_config *bc =
		    ps_board_for_usb_id(ctx->cfg, board->vid, board->pid);
		const struct ps_slot_config *slot = ps_slot_for_board(ctx->cfg, board);
		char id[16];

		snprintf(id, sizeof(id), "%04x:%04x", board->vid, board->pid);
		printf("%s %s %s", now, ps_hotplug_event_name(event), board->port);
		print_kv("usb", id);
		print_kv("serial", board->serial);
		print_kv("ID_PATH", board->id_path);
		print_kv("board", bc ? bc->name : "");
		print_kv("slot", slot ? slot->name : "");
		if (!gone && bc != NULL) {
			char helper[2048];

			helper_text(bc, board, helper, sizeof(helper));
			print_kv("helper", helper);
		}
		putchar('\n');
	}
	fflush(stdout);
}

static void on_event(enum ps_hotplug_event event, const struct ps_disk *disk,
		     const struct ps_usb_board *board, void *user)
{
	struct devices_ctx *ctx = user;

	if (ctx->watch) {
		print_event(ctx, event, disk, board);
		return;
	}
	/* Listing: only the devices present, which the opening reports as added. */
	if (event == PS_HOTPLUG_DISK_ADDED && disk != NULL) {
		struct ps_disk *grown = realloc(ctx->disks, (ctx->n_disks + 1) * sizeof(*grown));

		if (grown == NULL) {
			ctx->failed = true;
			return;
		}
		ctx->disks = grown;
		ctx->disks[ctx->n_disks++] = *disk;
	} else if (event == PS_HOTPLUG_BOARD_ADDED && board != NULL) {
		struct ps_usb_board *grown =
		    realloc(ctx->boards, (ctx->n_boards + 1) * sizeof(*grown));

		if (grown == NULL) {
			ctx->failed = true;
			return;
		}
		ctx->boards = grown;
		ctx->boards[ctx->n_boards++] = *board;
	}
}

static int compare_disks(const void *a, const void *b)
{
	return strverscmp(((const struct ps_disk *)a)->node, ((const struct ps_disk *)b)->node);
}

static int print_list(struct devices_ctx *ctx, struct ps_err *err)
{
	struct disk_view view;
	size_t i;

	qsort(ctx->disks, ctx->n_disks, sizeof(*ctx->disks), compare_disks);
	if (ctx->json) {
		json_t *all = json_array();
		char *text;

		for (i = 0; i < ctx->n_disks; i++) {
			view_disk(ctx->cfg, &ctx->disks[i], &view);
			json_array_append_new(all, disk_json(&ctx->disks[i], &view));
		}
		for (i = 0; i < ctx->n_boards; i++)
			json_array_append_new(all, board_json(ctx->cfg, &ctx->boards[i]));
		text = json_dumps(all, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		json_decref(all);
		if (text == NULL)
			return ps_fail(err, PS_ENOMEM, "out of memory printing JSON");
		printf("%s\n", text);
		free(text);
		return 0;
	}
	if (ctx->n_disks == 0 && ctx->n_boards == 0)
		printf("no disks or USB boards detected\n");
	for (i = 0; i < ctx->n_disks; i++) {
		view_disk(ctx->cfg, &ctx->disks[i], &view);
		printf("%s", i > 0 ? "\n" : "");
		print_disk(&ctx->disks[i], &view);
	}
	for (i = 0; i < ctx->n_boards; i++) {
		printf("%s", i > 0 || ctx->n_disks > 0 ? "\n" : "");
		print_board(ctx->cfg, &ctx->boards[i]);
	}
	return 0;
}

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
	stop_signal = sig;
}

/* Catch SIGINT and SIGTERM, blocked (orig receives the mask before) until ppoll waits: one
 * arriving between the check and the wait, or already while the devices present are listed,
 * stays pending instead of being lost. Done before the hotplug monitor opens. */
static void catch_stop_signals(sigset_t *orig)
{
	struct sigaction sa;
	sigset_t block;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop;
	sigemptyset(&sa.sa_mask);
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, orig);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* Follow events until SIGINT or SIGTERM (caught by catch_stop_signals, unblocked only inside
 * ppoll). */
static int watch(struct ps_hotplug *hp, const sigset_t *orig, struct ps_err *err)
{
	struct pollfd pfd = {.fd = ps_hotplug_fd(hp), .events = POLLIN};
	int rc = 0;

	while (rc == 0 && !stop_signal) {
		int n = ppoll(&pfd, 1, NULL, orig);

		if (n < 0 && errno != EINTR)
			rc = ps_fail(err, PS_EIO, "waiting for udev events: %s", strerror(errno));
		else if (n > 0)
			rc = ps_hotplug_dispatch(hp, err);
		if (rc == 0 && ferror(stdout))
			rc = ps_fail(err, PS_EIO, "writing to standard output failed");
	}
	return rc;
}

int cmd_devices(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, OPT_CONFIG},
	    {"json", no_argument, NULL, OPT_JSON},
	    {"watch", no_argument, NULL, OPT_WATCH},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct ps_board_id ids[PS_MAX_BOARDS * PS_MAX_BOARD_IDS];
	struct devices_ctx ctx = {0};
	struct ps_hotplug *hp = NULL;
	struct ps_config cfg;
	struct ps_err err = {""};
	const char *config = NULL;
	bool have_cfg = false, have_mask = false;
	sigset_t orig_mask;
	size_t n_ids;
	int c, rc = PS_EXIT_OK;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case OPT_CONFIG:
			config = optarg;
			break;
		case OPT_JSON:
			ctx.json = true;
			break;
		case OPT_WATCH:
			ctx.watch = true;
			break;
		case 'h':
			usage_devices(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error("devices", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("devices", "unexpected argument '%s'", argv[optind]);
	if (cli_load_config(&cfg, config, NULL, NULL, &err) < 0)
		goto fail;
	have_cfg = true;
	ctx.cfg = &cfg;
	n_ids = ps_board_ids(&cfg, ids, PS_ARRAY_SIZE(ids));
	if (ctx.watch) {
		catch_stop_signals(&orig_mask);
		have_mask = true;
	}
	if (ps_hotplug_open(on_event, &ctx, ids, n_ids, &hp, &err) < 0)
		goto fail;
	if (ctx.failed) {
		ps_fail(&err, PS_ENOMEM, "out of memory listing devices");
		goto fail;
	}
	if (ctx.watch ? watch(hp, &orig_mask, &err) < 0 : print_list(&ctx, &err) < 0)
		goto fail;
	if (fflush(stdout) != 0 || ferror(stdout)) {
		ps_fail(&err, PS_EIO, "writing to standard output failed");
		goto fail;
	}
	goto out;
fail:
	rc = cli_error(&err);
out:
	if (have_mask)
		sigprocmask(SIG_SETMASK, &orig_mask, NULL);
	ps_hotplug_close(hp);
	free(ctx.disks);
	free(ctx.boards);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}
