/* main.c — the provstation binary: dispatches subcommands and owns the process exit. */
#include "cli.h"
#include "util.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int cmd_help(int argc, char **argv);
static int cmd_version(int argc, char **argv);

static const struct ps_command commands[] = {
    {"ca", cmd_ca, "create the CA, issue server and device certificates"},
    {"provision", cmd_provision, "personalize a Mender image or disk for one device"},
    {"flash", cmd_flash, "write a golden image (raw, gz, xz, zst; bmap) to disks or files"},
    {"verify", cmd_verify, "check a personalized image against the CA"},
    {"export", cmd_export, "print the audit rows as CSV or JSON lines"},
    {"revoke", cmd_revoke, "revoke a certificate, or every certificate of a device"},
    {"crl", cmd_crl, "write the CA's revocation list (PEM) or the revoked serials"},
    {"import", cmd_import, "merge another station's export into the audit database"},
    {"audit", cmd_audit, "verify the audit trail's hash chain, or back it up online"},
    {"devices", cmd_devices, "list disks and USB boards: port, slot, serial, safety"},
    {"station", cmd_station, "the provisioning station's screen (slots, serials, audit)"},
    {"preauth", cmd_preauth, "preauthorize devices on the Mender server; the outbox"},
    {"demo", cmd_demo, "create a demo workspace and provision a sample image"},

    {"help", cmd_help, "list the commands"},
    {"version", cmd_version, "print the version"},
};

/* Print text on one line: control characters (from a file name or a scanned serial, say)
 * are shown escaped, never sent to the terminal. */
static void print_one_line(FILE *out, const char *text)
{
	const unsigned char *p;

	for (p = (const unsigned char *)text; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f)
			fprintf(out, "\\x%02x", *p);
		else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] < 0xa0)
			fprintf(out, "\\u%04x", *++p);
		else
			fputc(*p, out);
	}
}

int cli_error(const struct ps_err *err)
{
	fputs("provstation: ", stderr);
	print_one_line(stderr, err->msg[0] ? err->msg : "failed");
	fputc('\n', stderr);
	return PS_EXIT_FAIL;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "provstation %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see provstation %s --help)\n", cmd);
	return PS_EXIT_USAGE;
}

int cli_option_once(const char *cmd, const char *option, const char **slot)
{
	if (*slot != NULL)
		return cli_usage_error(cmd, "%s is given twice", option);
	*slot = optarg;
	return 0;
}

bool cli_common_option(int c, struct cli_common_args *args)
{
	switch (c) {
	case CLI_OPT_CONFIG:
		args->config = optarg;
		return true;
	case CLI_OPT_CA_DIR:
		args->ca_dir = optarg;
		return true;
	case CLI_OPT_DB:
		args->db = optarg;
		return true;
	default:
		return false;
	}
}

int cli_load_config(struct ps_config *cfg, const char *config_path, const char *ca_dir,
		    const char *db, struct ps_err *err)
{
	int rc = ps_config_load(cfg, config_path, err);

	if (rc == 0 && ca_dir != NULL)
		rc = ps_config_set(&cfg->ca_dir, ca_dir, err);
	if (rc == 0 && db != NULL)
		rc = ps_config_set(&cfg->database, db, err);
	return rc;
}

static int cmd_help(int argc, char **argv)
{
	size_t i;

	printf("usage: provstation COMMAND [OPTIONS]\n\ncommands:\n");
	for (i = 0; i < PS_ARRAY_SIZE(commands); i++)
		printf("  %-10s %s\n", commands[i].name, commands[i].summary);
	printf("\nEach command takes --help. Configuration: --config FILE, default %s\n",
	       PS_DEFAULT_CONFIG);
	return PS_EXIT_OK;
}

static int cmd_version(int argc, char **argv)
{
	printf("provstation %s\n", PACKAGE_VERSION);
	return PS_EXIT_OK;
}

int main(int argc, char **argv)
{
	size_t i;

	if (argc < 2)
		return cmd_help(argc, argv) == 0 ? PS_EXIT_USAGE : PS_EXIT_USAGE;
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
		return cmd_help(argc - 1, argv + 1);
	if (strcmp(argv[1], "--version") == 0)
		return cmd_version(argc - 1, argv + 1);
	for (i = 0; i < PS_ARRAY_SIZE(commands); i++)
		if (strcmp(argv[1], commands[i].name) == 0)
			return commands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "provstation: unknown command '%s' (see provstation help)\n", argv[1]);
	return PS_EXIT_USAGE;
}
