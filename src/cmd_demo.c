/* cmd_demo.c — `provstation demo`: a demo workspace (a CA, a configuration, sample Mender
 * images as virtual slots) and the station's screen on it, so a newcomer can provision
 * without hardware; `--no-tui` provisions one sample image and prints what it did. */
#include "audit.h"
#include "cli.h"
#include "provision.h"
#include "station.h"
#include "tui.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const struct {
	const char *file;
	const char *description;
	const char *args[8];
} samples[] = {
    {"slot1-sdimg.img", "MBR, boot partition, rootfs B empty", {"--table", "mbr", NULL}},
    {"slot2-uefiimg.img", "GPT, no boot partition", {"--table", "gpt", "--boot", "no", NULL}},
    {"slot3-converted.img",
     "MBR, rootfs B a full copy, swap before data (6 partitions)",
     {"--rootfs-b", "full", "--extra", "swap", NULL}},
};

static void usage_demo(FILE *out)
{
	fprintf(out,
		"usage: provstation demo [--dir DIR] [--no-tui] [--no-color]\n"
		"\n"
		"Create (or reuse) a demo workspace in DIR (default\n"
		"~/.local/share/provstation/demo): a CA, station.conf, an audit database and\n"
		"sample Mender images in DIR/slots, which the station shows as virtual slots;\n"
		"then start the station's screen on it: type a serial and press Enter.\n"
		"With --no-tui (or without a terminal), provision one sample image and print\n"
		"what was written instead.\n");
}

/* The image builder shipped with provstation: beside the binary in a build tree, or
 * installed in the package data directory. */
static int find_image_builder(char *out, size_t len, struct ps_err *err)
{
	char exe[PATH_MAX];
	ssize_t n;
	const char *env = getenv("PROVSTATION_DATADIR");

	if (env != NULL && snprintf(out, len, "%s/mkmenderimg.sh", env) < (int)len &&
	    access(out, X_OK) == 0)
		return 0;
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		if (snprintf(out, len, "%s/scripts/mkmenderimg.sh", dirname(exe)) < (int)len &&
		    access(out, X_OK) == 0)
			return 0;
	}
	if (snprintf(out, len, "%s/mkmenderimg.sh", PKGDATADIR) < (int)len &&
	    access(out, X_OK) == 0)
		return 0;
	return ps_fail(err, PS_ENOENT,
		       "mkmenderimg.sh not found (set PROVSTATION_DATADIR to its directory)");
}

static int run_quietly(const char *const argv[], struct ps_err *err)
{
	union {
		const char *const *in;
		char *const *out;
	} args = {argv}; /* execv's historical prototype */
	int status = 0;
	pid_t pid;

	fflush(NULL); /* or the child would print our buffered output again */
	pid = fork();

	if (pid < 0)
		return ps_fail(err, PS_EIO, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (freopen("/dev/null", "w", stdout) == NULL)
			_exit(127);
		execv(argv[0], args.out);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return ps_fail(err, PS_EIO, "%s failed (status %d)", argv[0], WEXITSTATUS(status));
	return 0;
}

static int write_config(const char *dir, const char *path, struct ps_err *err)
{
	char text[2048];
	int n = snprintf(text, sizeof(text),
			 "# provstation demo station: every key is documented in the README.\n"
			 "[station]\n"
			 "id = demo-station\n"
			 "database = %s/audit.db\n"
			 "batch = DEMO-BATCH-1\n"
			 "# Image files in this directory are virtual slots; real disks are not\n"
			 "# watched in the demo.\n"
			 "slots_dir = %s/slots\n"
			 "hotplug = false\n"
			 "\n[ca]\n"
			 "dir = %s/ca\n"
			 "\n[device]\n"
			 "key_type = p256\n"
			 "common_name = {serial}.devices.example.com\n"
			 "subject = /O=provstation demo/OU=Factory line 1/C=NO/L=Oslo\n"
			 "days = 3650\n"
			 "\n[mender]\n"
			 "# The sample images name their server in /etc/mender/mender.conf,\n"
			 "# so server_url stays unset here (the main file would win).\n"
			 "conf_target = data\n",
			 dir, dir, dir);

	if (n < 0 || (size_t)n >= sizeof(text))
		return ps_fail(err, PS_EINVAL, "demo path too long");
	return ps_write_file(path, text, (size_t)n, 0644, 0, err);
}

static int join(char *out, size_t len, const char *dir, const char *name, struct ps_err *err)
{
	int n = snprintf(out, len, "%s/%s", dir, name);

	if (n < 0 || (size_t)n >= len)
		return ps_fail(err, PS_EINVAL, "path too long: %s/%s", dir, name);
	return 0;
}

/* Create what is missing of the workspace; an existing CA and images are kept. */
static int make_workspace(const char *dir, struct ps_err *err)
{
	char path[PATH_MAX], builder[PATH_MAX];
	struct stat st;
	size_t i;
	int rc;

	rc = ps_mkdir_p(dir, 0700, err);
	if (rc == 0)
		rc = join(path, sizeof(path), dir, "ca", err);
	if (rc == 0 && stat(path, &st) != 0) {
		struct ps_ca_init_opts init = {.dir = path,
					       .key_type = PS_KEY_P256,
					       .subject =
						   "/CN=provstation demo CA/O=provstation demo",
					       .days = 3650};

		rc = ps_ca_init(&init, err);
		if (rc == 0)
			printf("created  %s (demo CA, P-256, 10 years)\n", path);
	}
	if (rc == 0)
		rc = join(path, sizeof(path), dir, "station.conf", err);
	if (rc == 0 && stat(path, &st) != 0) {
		rc = write_config(dir, path, err);
		if (rc == 0)
			printf("created  %s\n", path);
	}
	if (rc == 0)
		rc = join(path, sizeof(path), dir, "slots", err);
	if (rc == 0)
		rc = ps_mkdir_p(path, 0700, err);
	if (rc == 0)
		rc = find_image_builder(builder, sizeof(builder), err);
	for (i = 0; rc == 0 && i < PS_ARRAY_SIZE(samples); i++) {
		const char *argv[16];
		char slots[PATH_MAX];
		size_t n = 0, j;

		rc = join(slots, sizeof(slots), dir, "slots", err);
		if (rc == 0)
			rc = join(path, sizeof(path), slots, samples[i].file, err);
		if (rc < 0 || stat(path, &st) == 0)
			continue;
		argv[n++] = builder;
		argv[n++] = "--size";
		argv[n++] = "64";
		for (j = 0; samples[i].args[j] != NULL; j++)
			argv[n++] = samples[i].args[j];
		argv[n++] = path;
		argv[n] = NULL;
		rc = run_quietly(argv, err);
		if (rc == 0)
			printf("created  %s (%s)\n", path, samples[i].description);
	}
	return rc;
}

static int count_rows(const struct ps_cert_row *row, void *user)
{
	(*(long *)user)++;
	return 0;
}

/* Without a terminal: provision the next sample image and print what was written. */
static int demo_once(const char *dir, const char *conf_path, const struct ps_config *cfg,
		     struct ps_ca *ca, struct ps_err *err)
{
	struct ps_provision_request req = {0};
	struct ps_provision_result res;
	char target[PATH_MAX], serial[32];
	struct ps_db *db = NULL;
	long rows = 0;
	int i, rc;

	rc = ps_db_open(cfg->database, &db, err);
	if (rc == 0)
		rc = ps_db_each(db, NULL, count_rows, &rows, err);
	if (rc == 0)
		rc = join(target, sizeof(target), dir, "slots", err);
	if (rc == 0)
		rc = join(target + strlen(target), sizeof(target) - strlen(target), "",
			  samples[rows % 3].file, err);
	if (rc < 0)
		goto out;
	snprintf(serial, sizeof(serial), "DEMO-%04ld", rows + 1);
	req = (struct ps_provision_request){.cfg = cfg,
					    .target = target,
					    .serial = serial,
					    .ca = ca,
					    .db = db,
					    .target_is_slot = true};
	rc = ps_provision(&req, &res, err);
	if (rc < 0)
		goto out;
	printf("\nprovisioned %s on %s\n"
	       "  commonName   %s\n"
	       "  cert serial  %s\n"
	       "  public key   sha256:%s\n"
	       "  data         %s\n",
	       serial, target, res.common_name, res.cert_serial, res.pubkey_sha256,
	       res.data_partition);
	for (i = 0; i < res.n_written; i++)
		printf("  wrote        %s\n", res.written[i]);
	printf("  audit        row %lld in %s: verified\n\n"
	       "Next: provstation station --config %s   (the station's screen)\n"
	       "      provstation verify --config %s --target %s\n"
	       "      provstation export --config %s --format csv\n",
	       (long long)res.audit_id, cfg->database, conf_path, conf_path, target, conf_path);
out:
	ps_db_close(db);
	return rc;
}

int cmd_demo(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"dir", required_argument, NULL, 'd'},
	    {"no-tui", no_argument, NULL, 'n'},
	    {"no-color", no_argument, NULL, 'c'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	char default_dir[PATH_MAX], conf_path[PATH_MAX], slots[PATH_MAX];
	const char *dir = NULL, *home = getenv("HOME");
	struct ps_tui_options tui = {.title = "demo"};
	struct ps_station *st = NULL;
	struct ps_config cfg;
	struct ps_ca ca;
	struct ps_err err = {""};
	bool have_cfg = false, have_ca = false, no_tui = false;
	int c, rc = PS_EXIT_OK;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'd') {
			dir = optarg;
		} else if (c == 'n') {
			no_tui = true;
		} else if (c == 'c') {
			tui.no_color = true;
		} else if (c == 'h') {
			usage_demo(stdout);
			return PS_EXIT_OK;
		} else {
			return cli_usage_error("demo", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("demo", "unexpected argument '%s'", argv[optind]);
	if (dir == NULL) {
		snprintf(default_dir, sizeof(default_dir), "%s/.local/share/provstation/demo",
			 home && *home ? home : "/tmp");
		dir = default_dir;
	}
	if (!no_tui && (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))) {
		printf("no terminal: provisioning one sample image instead of starting the "
		       "station's screen\n");
		no_tui = true;
	}
	if (!no_tui)
		ps_tui_init_locale();
	printf("provstation demo workspace: %s\n", dir);
	if (make_workspace(dir, &err) < 0)
		goto fail;
	if (join(conf_path, sizeof(conf_path), dir, "station.conf", &err) < 0 ||
	    join(slots, sizeof(slots), dir, "slots", &err) < 0 ||
	    ps_config_load(&cfg, conf_path, &err) < 0)
		goto fail;
	have_cfg = true;
	/* Whatever an older demo configuration says: the sample images, never real disks. */
	cfg.hotplug = false;
	if (ps_config_set(&cfg.slots_dir, slots, &err) < 0)
		goto fail;
	if (ps_ca_load(&ca, cfg.ca_dir, true, NULL, &err) < 0)
		goto fail;
	have_ca = true;
	if (no_tui) {
		if (demo_once(dir, conf_path, &cfg, &ca, &err) < 0)
			goto fail;
		goto out;
	}
	if (ps_station_open(&cfg, &ca, &st, &err) < 0 || ps_tui_run(st, &cfg, &ca, &tui, &err) < 0)
		goto fail;
	goto out;
fail:
	rc = cli_error(&err);
out:
	ps_station_close(st);
	if (have_ca)
		ps_ca_free(&ca);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}
