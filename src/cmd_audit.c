/* cmd_audit.c — `provstation revoke`, `crl`, `import` and `audit verify|backup`: the audit
 * trail's lifecycle, revocation lists, merging stations and tamper checks from the command
 * line. */
#include "audit.h"
#include "ca.h"
#include "cli.h"
#include "import.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
	OPT_PASSFILE = 1000,
	OPT_CERT_SERIAL,
	OPT_SERIAL,
	OPT_REASON,
	OPT_OUT,
	OPT_DAYS,
	OPT_FORMAT,
};

#define CRL_DAYS_DEFAULT 30

/* Commands that read the audit trail refuse to create an empty database by mistake. */
static int open_existing(const char *path, struct ps_db **db, struct ps_err *err)
{
	if (path != NULL && *path != '\0' && access(path, F_OK) != 0)
		return ps_fail(err, PS_ENOENT, "audit database %s: %s", path, strerror(errno));
	return ps_db_open(path, db, err);
}

static struct ps_audit_context context_of(const struct ps_config *cfg)
{
	struct ps_audit_context ctx = {cfg->station_id, cfg->operator_name, cfg->batch, ""};

	return ctx;
}

/* --------------------------------------------------------------------------------------- */

static void usage_revoke(FILE *out)
{
	fprintf(out,
		"usage: provstation revoke (--cert-serial HEX | --serial DEVICE) [--reason R]\n"
		"                          [--config FILE] [--db FILE] [--ca-dir DIR]\n"
		"\n"
		"Revoke one certificate by its serial number (hex, any case, colons allowed), or\n"
		"every certificate of a device that is not revoked yet. R is an RFC 5280 reason:\n"
		"unspecified (default), keyCompromise, cACompromise, affiliationChanged,\n"
		"superseded, cessationOfOperation, certificateHold, privilegeWithdrawn,\n"
		"aACompromise. A certificate already revoked is left as it is. --ca-dir picks\n"
		"the CA when a serial names certificates of several. Publish the result with\n"
		"provstation crl.\n");
}

static int print_revoked(const struct ps_cert_row *row, bool already, void *user)
{
	if (already)
		printf("already revoked  %s  device %s  (%s, %s); left as it was\n",
		       row->cert_serial, row->device_serial, row->reason, row->revoked_at);
	else
		printf("revoked          %s  device %s  (%s)\n", row->cert_serial,
		       row->device_serial, row->reason);
	return 0;
}

int cmd_revoke(int argc, char **argv)
{
	static const struct option opts[] = {
	    CLI_COMMON_OPTIONS,
	    {"cert-serial", required_argument, NULL, OPT_CERT_SERIAL},
	    {"serial", required_argument, NULL, OPT_SERIAL},
	    {"reason", required_argument, NULL, OPT_REASON},
	    {NULL, 0, NULL, 0},
	};
	struct cli_common_args args = {0};
	struct ps_revoke_request req = {.fn = print_revoked};
	struct ps_revoke_result res;
	struct ps_audit_context ctx;
	struct ps_config cfg;
	struct ps_ca ca;
	struct ps_db *db = NULL;
	struct ps_err err = {""};
	const char *reason_name = "unspecified";
	bool have_cfg = false, have_ca = false;
	int c, reason, rc = PS_EXIT_OK;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (cli_common_option(c, &args))
			continue;
		switch (c) {
		case OPT_CERT_SERIAL:
			req.cert_serial = optarg;
			break;
		case OPT_SERIAL:
			req.device_serial = optarg;
			break;
		case OPT_REASON:
			reason_name = optarg;
			break;
		case 'h':
			usage_revoke(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error("revoke", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("revoke", "unexpected argument '%s'", argv[optind]);
	if ((req.cert_serial == NULL) == (req.device_serial == NULL))
		return cli_usage_error("revoke", "give either --cert-serial or --serial");
	if (ps_crl_reason_parse(reason_name, &reason, &err) < 0)
		return cli_usage_error("revoke", "%s", err.msg);
	req.reason = ps_crl_reason_name(reason);

	if (cli_load_config(&cfg, args.config, args.ca_dir, args.db, &err) < 0)
		goto fail;
	have_cfg = true;
	if (args.ca_dir != NULL) {
		if (ps_ca_load(&ca, cfg.ca_dir, false, NULL, &err) < 0)
			goto fail;
		have_ca = true;
		req.ca_fingerprint = ca.fingerprint;
	}
	if (open_existing(cfg.database, &db, &err) < 0)
		goto fail;
	ctx = context_of(&cfg);
	if (ps_db_revoke(db, &req, &ctx, &res, &err) < 0)
		goto fail;
	if (res.revoked > 0)
		printf("%ld certificate%s revoked; publish it: provstation crl --out FILE\n",
		       res.revoked, res.revoked == 1 ? "" : "s");
	else
		printf("nothing to revoke: %s already revoked\n",
		       res.already == 1 ? "the certificate was" : "every certificate was");
	goto out;
fail:
	rc = cli_error(&err);
out:
	ps_db_close(db);
	if (have_ca)
		ps_ca_free(&ca);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}

/* --------------------------------------------------------------------------------------- */

static void usage_crl(FILE *out)
{
	fprintf(
	    out,
	    "usage: provstation crl --out FILE [--format pem|serials] [--days N]\n"
	    "                       [--config FILE] [--ca-dir DIR] [--db FILE]\n"
	    "                       [--passphrase-file F]\n"
	    "\n"
	    "pem (default): a v2 CRL signed by the CA (its key is needed), listing every\n"
	    "revoked certificate of that CA with its revocation date and reason, numbered one\n"
	    "above the CA's previous CRL, next update in N days (default %d): what nginx's\n"
	    "ssl_crl loads. Issue a new one before then: an expired CRL makes nginx refuse\n"
	    "every client.\n"
	    "serials: the revoked certificates' serial numbers, one per line, lower-case hex\n"
	    "without colons or leading zeros (Mender Gateway's MTLS_BLACKLIST_PATH); no CA key\n"
	    "needed. FILE - is standard output.\n",
	    CRL_DAYS_DEFAULT);
}

struct revoked_list {
	struct ps_revoked *v;
	char **serials; /* what v[i].serial_hex points at, owned here */
	size_t n, cap;
	struct ps_err *err;
};

static int collect_revoked(const struct ps_cert_row *row, void *user)
{
	struct revoked_list *list = user;
	struct ps_revoked *e;
	time_t when = 0;
	int reason = CRL_REASON_UNSPECIFIED;

	if (list->n == list->cap) {
		size_t cap = list->cap ? list->cap * 2 : 64;
		struct ps_revoked *v = realloc(list->v, cap * sizeof(*v));
		char **serials;

		if (v == NULL)
			return ps_fail(list->err, PS_ENOMEM, "out of memory");
		list->v = v;
		serials = realloc(list->serials, cap * sizeof(*serials));
		if (serials == NULL)
			return ps_fail(list->err, PS_ENOMEM, "out of memory");
		list->serials = serials;
		list->cap = cap;
	}
	if (ps_parse_time(row->revoked_at, &when, list->err) < 0)
		return ps_prefix(list->err, PS_EINVAL, "certificate %s: revoked_at",
				 row->cert_serial);
	/* A reason that is no RFC 5280 name (an old or imported row) is listed as unspecified. */
	if (ps_crl_reason_parse(row->reason, &reason, NULL) < 0)
		reason = CRL_REASON_UNSPECIFIED;
	e = &list->v[list->n];
	list->serials[list->n] = strdup(row->cert_serial);
	if (list->serials[list->n] == NULL)
		return ps_fail(list->err, PS_ENOMEM, "out of memory");
	e->serial_hex = list->serials[list->n];
	e->revoked_at = when;
	e->reason = reason;
	list->n++;
	return 0;
}

static void revoked_free(struct revoked_list *list)
{
	size_t i;

	for (i = 0; i < list->n; i++)
		free(list->serials[i]);
	free(list->serials);
	free(list->v);
}

/* The serials as Mender Gateway's blacklist file: lower-case hex, no leading zeros. */
static int serials_text(const struct revoked_list *list, char **out, size_t *len,
			struct ps_err *err)
{
	size_t i, cap = 1, n = 0;
	char *text;

	for (i = 0; i < list->n; i++)
		cap += strlen(list->v[i].serial_hex) + 1;
	text = malloc(cap);
	if (text == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	for (i = 0; i < list->n; i++) {
		const char *s = list->v[i].serial_hex;

		while (s[0] == '0' && s[1] != '\0')
			s++;
		n += (size_t)snprintf(text + n, cap - n, "%s\n", s);
	}
	text[n] = '\0';
	*out = text;
	*len = n;
	return 0;
}

static int write_out(const char *path, const char *text, size_t len, struct ps_err *err)
{
	if (strcmp(path, "-") == 0) {
		if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0)
			return ps_fail(err, PS_EIO, "writing to standard output: %s",
				       strerror(errno));
		return 0;
	}
	return ps_write_file(path, text, len, 0644, 0, err);
}

int cmd_crl(int argc, char **argv)
{
	static const struct option opts[] = {
	    CLI_COMMON_OPTIONS,
	    {"out", required_argument, NULL, OPT_OUT},
	    {"days", required_argument, NULL, OPT_DAYS},
	    {"format", required_argument, NULL, OPT_FORMAT},
	    {"passphrase-file", required_argument, NULL, OPT_PASSFILE},
	    {NULL, 0, NULL, 0},
	};
	struct cli_common_args args = {0};
	struct ps_passphrase_src pass = {.allow_prompt = true};
	struct ps_db_filter filter = {.state = PS_STATE_REVOKED};
	struct ps_err err = {""};
	struct revoked_list list = {NULL, NULL, 0, 0, &err};
	struct ps_config cfg;
	struct ps_ca ca;
	struct ps_db *db = NULL;
	const char *out_path = NULL, *format = "pem";
	char *text = NULL;
	char next[32];
	size_t len = 0;
	long days = CRL_DAYS_DEFAULT, number = 0;
	bool have_cfg = false, have_ca = false, pem;
	int c, rc = PS_EXIT_OK;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (cli_common_option(c, &args))
			continue;
		switch (c) {
		case OPT_OUT:
			out_path = optarg;
			break;
		case OPT_DAYS:
			if (ps_parse_int("--days", optarg, 1, 3650, &days, &err) < 0)
				return cli_usage_error("crl", "%s", err.msg);
			break;
		case OPT_FORMAT:
			format = optarg;
			break;
		case OPT_PASSFILE:
			pass.file = optarg;
			break;
		case 'h':
			usage_crl(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error("crl", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("crl", "unexpected argument '%s'", argv[optind]);
	if (out_path == NULL)
		return cli_usage_error("crl", "--out is required");
	if (strcmp(format, "pem") != 0 && strcmp(format, "serials") != 0)
		return cli_usage_error("crl", "unknown format '%s' (use pem or serials)", format);
	pem = strcmp(format, "pem") == 0;

	if (cli_load_config(&cfg, args.config, args.ca_dir, args.db, &err) < 0)
		goto fail;
	have_cfg = true;
	if (pass.file == NULL && cfg.ca_passphrase_file[0] != '\0')
		pass.file = cfg.ca_passphrase_file;
	if (ps_ca_load(&ca, cfg.ca_dir, pem, &pass, &err) < 0)
		goto fail;
	have_ca = true;
	if (open_existing(cfg.database, &db, &err) < 0)
		goto fail;
	/* The number first, durably: whatever was revoked before it is in this CRL. */
	if (pem && ps_db_next_crl_number(db, ca.fingerprint, &number, &err) < 0)
		goto fail;
	filter.ca_fingerprint = ca.fingerprint;
	if (ps_db_each(db, &filter, collect_revoked, &list, &err) < 0)
		goto fail;
	if (pem) {
		if (ps_crl_make(&ca, list.v, list.n, number, days, &text, &err) < 0)
			goto fail;
		len = strlen(text);
	} else if (serials_text(&list, &text, &len, &err) < 0) {
		goto fail;
	}
	if (write_out(out_path, text, len, &err) < 0)
		goto fail;
	ps_format_time(ps_now() + (time_t)days * 86400, next);
	if (pem)
		fprintf(strcmp(out_path, "-") == 0 ? stderr : stdout,
			"CRL number %ld of %s: %zu revoked certificate%s, next update %s, written "
			"to %s\n",
			number, ca.subject, list.n, list.n == 1 ? "" : "s", next, out_path);
	else
		fprintf(strcmp(out_path, "-") == 0 ? stderr : stdout,
			"%zu revoked serial number%s of %s written to %s\n", list.n,
			list.n == 1 ? "" : "s", ca.subject, out_path);
	goto out;
fail:
	rc = cli_error(&err);
out:
	free(text);
	revoked_free(&list);
	ps_db_close(db);
	if (have_ca)
		ps_ca_free(&ca);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}

/* --------------------------------------------------------------------------------------- */

static void usage_import(FILE *out)
{
	fprintf(out,
		"usage: provstation import FILE [--format csv|jsonl] [--config FILE] [--db FILE]\n"
		"\n"
		"Merge another station's export (provstation export, CSV or JSON lines, told\n"
		"apart by content) into this audit database; FILE - is standard input. Rows keep\n"
		"their station, operator, batch and times; a certificate is the same when its CA\n"
		"fingerprint and serial are. New rows are added, rows whose state moved on\n"
		"later are updated, the rest is left alone (unchanged, or skipped when this\n"
		"database's row is newer or revoked): importing twice changes nothing. Each row\n"
		"added or updated gets an \"imported\" event in this database's chain. All or\n"
		"nothing: a bad row names its CSV record or JSON line and nothing is imported.\n");
}

int cmd_import(int argc, char **argv)
{
	static const struct option opts[] = {
	    CLI_COMMON_OPTIONS,
	    {"format", required_argument, NULL, OPT_FORMAT},
	    {NULL, 0, NULL, 0},
	};
	struct cli_common_args args = {0};
	enum ps_import_format format = PS_IMPORT_DETECT, used = PS_IMPORT_DETECT;
	struct ps_import_stats stats;
	struct ps_audit_context ctx;
	struct ps_config cfg;
	struct ps_db *db = NULL;
	struct ps_err err = {""};
	const char *path;
	FILE *in = NULL;
	bool have_cfg = false;
	int c, rc = PS_EXIT_OK;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (cli_common_option(c, &args))
			continue;
		if (c == OPT_FORMAT) {
			if (strcmp(optarg, "csv") == 0)
				format = PS_IMPORT_CSV;
			else if (strcmp(optarg, "jsonl") == 0)
				format = PS_IMPORT_JSONL;
			else
				return cli_usage_error(
				    "import", "unknown format '%s' (csv or jsonl)", optarg);
		} else if (c == 'h') {
			usage_import(stdout);
			return PS_EXIT_OK;
		} else {
			return cli_usage_error("import", "bad option");
		}
	}
	if (optind != argc - 1)
		return cli_usage_error("import", "give one FILE to import");
	path = argv[optind];

	if (cli_load_config(&cfg, args.config, args.ca_dir, args.db, &err) < 0)
		goto fail;
	have_cfg = true;
	in = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	if (in == NULL) {
		ps_fail(&err, errno == ENOENT ? PS_ENOENT : PS_EIO, "%s: %s", path,
			strerror(errno));
		goto fail;
	}
	if (ps_db_open(cfg.database, &db, &err) < 0)
		goto fail;
	ctx = context_of(&cfg);
	if (ps_import(db, in, strcmp(path, "-") == 0 ? "standard input" : path, format, &ctx,
		      &stats, &used, &err) < 0)
		goto fail;
	printf("imported %s (%s): %ld added, %ld updated, %ld unchanged, %ld skipped\n", path,
	       used == PS_IMPORT_CSV ? "csv" : "jsonl", stats.added, stats.updated, stats.unchanged,
	       stats.skipped);
	goto out;
fail:
	rc = cli_error(&err);
out:
	if (in != NULL && in != stdin)
		fclose(in);
	ps_db_close(db);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}

/* --------------------------------------------------------------------------------------- */

static void usage_audit(FILE *out)
{
	fprintf(out,
		"usage: provstation audit verify [--config FILE] [--db FILE]\n"
		"       provstation audit backup FILE [--config FILE] [--db FILE]\n"
		"\n"
		"verify: SQLite's integrity check, then the event chain (sequence numbers without\n"
		"gaps, each row's hash over its content and the previous row's hash), then every\n"
		"certificate row against what its events say. Exits 1 naming the first event\n"
		"(seq) or certificate (id) that was changed, deleted or reordered. Prints the\n"
		"chain's head hash: note it elsewhere to detect a truncated chain later.\n"
		"backup: an online copy (SQLite's backup API; stations may keep working) into\n"
		"FILE, which must not exist, checked before it is put in place.\n");
}

int cmd_audit(int argc, char **argv)
{
	static const struct option opts[] = {
	    CLI_COMMON_OPTIONS,
	    {NULL, 0, NULL, 0},
	};
	struct cli_common_args args = {0};
	struct ps_db_verify_report rep;
	struct ps_config cfg;
	struct ps_db *db = NULL;
	struct ps_err err = {""};
	const char *action, *dest = NULL;
	bool have_cfg = false;
	int c, rc = PS_EXIT_OK;

	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage_audit(stdout);
		return PS_EXIT_OK;
	}
	if (argc < 2 || argv[1][0] == '-')
		return cli_usage_error("audit", "give an action: verify or backup");
	action = argv[1];
	if (strcmp(action, "verify") != 0 && strcmp(action, "backup") != 0)
		return cli_usage_error("audit", "unknown action '%s' (verify or backup)", action);
	optind = 0;
	while ((c = getopt_long(argc - 1, argv + 1, "", opts, NULL)) != -1) {
		if (cli_common_option(c, &args))
			continue;
		if (c == 'h') {
			usage_audit(stdout);
			return PS_EXIT_OK;
		}
		return cli_usage_error("audit", "bad option");
	}
	if (strcmp(action, "backup") == 0) {
		if (optind != argc - 2)
			return cli_usage_error("audit", "backup takes one FILE");
		dest = argv[optind + 1];
	} else if (optind < argc - 1) {
		return cli_usage_error("audit", "unexpected argument '%s'", argv[optind + 1]);
	}

	if (cli_load_config(&cfg, args.config, args.ca_dir, args.db, &err) < 0)
		goto fail;
	have_cfg = true;
	if (open_existing(cfg.database, &db, &err) < 0)
		goto fail;
	if (dest != NULL) {
		if (ps_db_backup(db, dest, &err) < 0)
			goto fail;
		printf("backup of %s written to %s (integrity ok)\n", cfg.database, dest);
		goto out;
	}
	if (ps_db_check_integrity(db, false, &err) < 0 || ps_db_verify(db, &rep, &err) < 0)
		goto fail;
	printf("audit database %s: integrity ok; %ld events in an unbroken chain, head %s; "
	       "%ld certificates match their events\n",
	       cfg.database, rep.events, rep.events > 0 ? rep.head : "(empty)", rep.certificates);
	goto out;
fail:
	rc = cli_error(&err);
out:
	ps_db_close(db);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}
