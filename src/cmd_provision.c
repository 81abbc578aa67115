/* cmd_provision.c — `provstation provision`, `verify` and `export`: the headless pipeline and
 * the audit rows from the command line. */
#include "audit.h"
#include "cli.h"
#include "export.h"
#include "preauth.h"
#include "provision.h"
#include "sign.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <syslog.h>
#include <stdio.h>
#include <string.h>

enum {
	OPT_PASSFILE = 1000,
	OPT_TARGET,
	OPT_SERIAL,
	OPT_ALLOW_UNLISTED,
	OPT_ALLOW_FIXED,
	OPT_PREAUTH,
	OPT_FLASH,
	OPT_BMAP,
	OPT_NO_VERIFY_FLASH
};

/* Handle an option shared by the commands; returns false when c is not one of them. */

static void usage_provision(FILE *out)
{
	fprintf(
	    out,
	    "usage: provstation provision --target PATH --serial SERIAL [--config FILE]\n"
	    "                             [--ca-dir DIR] [--db FILE] [--passphrase-file F]\n"
	    "                             [--allow-unlisted] [--allow-fixed-disk] [--preauth]\n"
	    "                             [--flash IMG [--bmap FILE] [--no-verify-flash]]\n"
	    "\n"
	    "Personalize one device: PATH is a Mender disk image (.sdimg, .uefiimg, .img) or\n"
	    "a whole-disk block device. Issues a key and a client certificate signed by the CA,\n"
	    "records them in the audit database, writes them with the merged mender.conf into\n"
	    "the data partition in place, and verifies by reading everything back.\n"
	    "\n"
	    "--flash IMG first writes the golden image IMG onto PATH (raw, gzip, xz or zstd;\n"
	    "with --bmap only its mapped ranges), reads it back and compares it (unless\n"
	    "--no-verify-flash), as provstation flash does; a regular file is created or\n"
	    "replaced. Nothing is issued when the flash fails. The audit row records the\n"
	    "image's file name and the SHA-256 of its decompressed contents.\n"
	    "\n"
	    "A block device passes the safety gate first: no partition of it mounted, not\n"
	    "the system's disk, no swap, no LVM/md/dm holder, not write-protected, removable\n"
	    "or on USB/MMC (--allow-fixed-disk overrides), and a station slot\n"
	    "(--allow-unlisted overrides). Refusals are logged to syslog.\n"
	    "\n"
	    "--preauth queues the device for preauthorization on the Mender server ([preauth]\n"
	    "in the configuration) and tries to send it at once; what cannot be sent stays\n"
	    "queued (see provstation preauth).\n");
}

static void usage_verify(FILE *out)
{
	fprintf(out, "usage: provstation verify --target PATH [--config FILE] [--ca-dir DIR]\n"
		     "\n"
		     "Check a personalized image: key and certificate present with modes 0600 and\n"
		     "0644 owned by root, the key matches the certificate, the certificate chains\n"
		     "to the CA for clientAuth, and the client's effective mender.conf points at\n"
		     "them.\n");
}

static void usage_export(FILE *out)
{
	fprintf(
	    out,
	    "usage: provstation export --format csv|jsonl [--db FILE] [--config FILE]\n"
	    "                          [--since T] [--until T] [--status S] [--station ID]\n"
	    "                          [--batch B] [--serial S] [--out FILE [--sign KEY]]\n"
	    "\n"
	    "Print the audit rows, oldest first. T is YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC).\n"
	    "Columns: device_serial, common_name, cert_serial, state, reason, not_before,\n"
	    "not_after, pubkey_sha256, pubkey_pem, cert_pem, station_id, operator, batch,\n"
	    "ca_fingerprint, target, image_name, image_sha256, revoked_at, created_at,\n"
	    "updated_at. CSV follows RFC 4180.\n"
	    "--sign KEY: also write FILE.sig, a detached signature over FILE with the\n"
	    "station's private key KEY (PEM, EC, Ed25519 or RSA, mode 0600). An auditor\n"
	    "checks it with: openssl dgst -sha256 -verify station.pub -signature FILE.sig FILE\n"
	    "(Ed25519: openssl pkeyutl -verify -pubin -inkey station.pub -rawin -in FILE\n"
	    "-sigfile FILE.sig).\n");
}

/* Field service: the earlier certificates of a serial, printed before it is provisioned. */
struct history {
	long rows;
	long in_use; /* issued, written or verified: what the new certificate supersedes */
};

static int print_history(const struct ps_cert_row *row, void *user)
{
	struct history *h = user;

	if (h->rows++ == 0)
		printf("%s was provisioned before; its certificates:\n", row->device_serial);
	if (strcmp(row->state, PS_STATE_ISSUED) == 0 || strcmp(row->state, PS_STATE_WRITTEN) == 0 ||
	    strcmp(row->state, PS_STATE_VERIFIED) == 0)
		h->in_use++;
	printf("  %s  %-10s  cert %s  %s  station %s%s%s\n", row->created_at, row->state,
	       row->cert_serial, row->common_name, row->station_id, row->reason[0] ? "  " : "",
	       row->reason);
	return 0;
}

static void preauth_report(const struct ps_preauth_event *ev, void *user)
{
	switch (ev->result) {
	case PS_PREAUTH_CREATED:
	case PS_PREAUTH_EXISTING:
	case PS_PREAUTH_REPLACED:
		printf("  preauth      device %s (%s)\n", ev->device_id,
		       ps_preauth_result_name(ev->result));
		break;
	case PS_PREAUTH_FAILED:
		printf("  preauth      FAILED: %s\n", ev->message);
		break;
	default:
		printf("  preauth      queued, not sent yet: %s\n", ev->message);
		break;
	}
}

/* The device is queued (ps_provision did it): one attempt now; what fails stays queued for the
 * station or `provstation preauth flush`. */
static void preauth_now(struct ps_db *db, const struct ps_config *cfg, int64_t cert_id)
{
	struct ps_preauth_flush_opts opts = {
	    .only_cert_id = cert_id, .policy = cfg->preauth_on_conflict, .report = preauth_report};
	struct ps_preauth_flush_result fres = {0};
	struct ps_preauth_client *client = NULL;
	struct ps_err err = {""};

	if (ps_preauth_client_open(cfg, NULL, &client, &err) < 0)
		printf("  preauth      queued, not sent yet: %s\n", err.msg);
	else if (ps_preauth_flush(db, client, &opts, &fres, &err) < 0 && fres.retried == 0)
		printf("  preauth      queued, not sent yet: %s\n", err.msg);
	ps_preauth_client_close(client);
}

/* The observer of provision --flash: once the flash is over, the progress line goes and ^C
 * is a signal again. */
static void flash_over(enum ps_stage stage, void *user)
{
	if (stage != PS_STAGE_CHECKING && stage != PS_STAGE_FLASHING)
		cli_flash_watch_end(user);
}

static void print_flashed(const struct ps_flash_result *f)
{
	double rate = f->write_seconds > 0 ? (double)f->bytes_written / f->write_seconds : 0;

	printf("  image        %s (%s, %llu bytes, sha256 %s%s)\n", f->image_name,
	       ps_flash_format_name(f->format), (unsigned long long)f->image_size, f->image_sha256,
	       f->image_sha256_cached ? ", from the hash cache" : "");
	printf("  flashed      %llu bytes, %.1f MB/s; verified %s",
	       (unsigned long long)f->bytes_written, rate / 1e6, f->verified ? "yes" : "no");
	if (f->verified && f->verify_seconds > 0)
		printf(", %.1f MB/s", (double)f->bytes_verified / f->verify_seconds / 1e6);
	printf("\n");
}

int cmd_provision(int argc, char **argv)
{
	static const struct option opts[] = {
	    CLI_COMMON_OPTIONS,
	    {"target", required_argument, NULL, OPT_TARGET},
	    {"serial", required_argument, NULL, OPT_SERIAL},
	    {"passphrase-file", required_argument, NULL, OPT_PASSFILE},
	    {"allow-unlisted", no_argument, NULL, OPT_ALLOW_UNLISTED},
	    {"allow-fixed-disk", no_argument, NULL, OPT_ALLOW_FIXED},
	    {"preauth", no_argument, NULL, OPT_PREAUTH},
	    {"flash", required_argument, NULL, OPT_FLASH},
	    {"bmap", required_argument, NULL, OPT_BMAP},
	    {"no-verify-flash", no_argument, NULL, OPT_NO_VERIFY_FLASH},
	    {NULL, 0, NULL, 0},
	};
	struct cli_common_args args = {0};
	struct cli_flash_watch watch = {.active = false};
	struct ps_passphrase_src pass = {.allow_prompt = true};
	struct ps_provision_request req = {0};
	struct ps_provision_result res;
	struct ps_config cfg;
	struct ps_ca ca;
	struct ps_db *db = NULL;
	struct ps_err err = {""};
	bool have_cfg = false, have_ca = false;
	struct history history = {0, 0};
	int c, i, rc = PS_EXIT_OK;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (cli_common_option(c, &args))
			continue;
		switch (c) {
		case OPT_TARGET:
			req.target = optarg;
			break;
		case OPT_SERIAL:
			req.serial = optarg;
			break;
		case OPT_PASSFILE:
			pass.file = optarg;
			break;
		case OPT_ALLOW_UNLISTED:
			req.allow_unlisted = true;
			break;
		case OPT_ALLOW_FIXED:
			req.safety.allow_fixed = true;
			break;
		case OPT_PREAUTH:
			req.preauth = true;
			break;
		case OPT_FLASH:
			if (cli_option_once("provision", "--flash", &req.flash_image) != 0)
				return PS_EXIT_USAGE;
			break;
		case OPT_BMAP:
			if (cli_option_once("provision", "--bmap", &req.flash_bmap) != 0)
				return PS_EXIT_USAGE;
			break;
		case OPT_NO_VERIFY_FLASH:
			req.flash_no_verify = true;
			break;
		case 'h':
			usage_provision(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error("provision", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("provision", "unexpected argument '%s'", argv[optind]);
	if (req.target == NULL || req.serial == NULL)
		return cli_usage_error("provision", "--target and --serial are required");
	if (req.flash_image == NULL && (req.flash_bmap != NULL || req.flash_no_verify))
		return cli_usage_error("provision",
				       "--bmap and --no-verify-flash need --flash IMG");
	if (req.flash_image != NULL && req.flash_image[0] == '\0')
		return cli_usage_error("provision", "--flash needs an image file");

	if (cli_load_config(&cfg, args.config, args.ca_dir, args.db, &err) < 0)
		goto fail;
	have_cfg = true;
	if (req.preauth && !cfg.preauth_enabled) {
		ps_fail(&err, PS_EINVAL,
			"--preauth needs [preauth] enabled = true (and server, credentials) in %s",
			cfg.source ? cfg.source : PS_DEFAULT_CONFIG);
		goto fail;
	}
	if (pass.file == NULL && cfg.ca_passphrase_file[0] != '\0')
		pass.file = cfg.ca_passphrase_file;
	if (ps_ca_load(&ca, cfg.ca_dir, true, &pass, &err) < 0)
		goto fail;
	have_ca = true;
	if (ps_db_open(cfg.database, &db, &err) < 0)
		goto fail;
	if (ps_check_serial(req.serial, &err) < 0 ||
	    ps_db_history(db, req.serial, print_history, &history, &err) < 0)
		goto fail;
	req.cfg = &cfg;
	req.ca = &ca;
	req.db = db;
	if (req.flash_image != NULL) {
		/* The progress line and ^C while flashing; personalizing is left to finish. */
		cli_flash_watch_start(&watch, &req.target, 1, &req.flash_progress,
				      &req.flash_progress_user, &req.cancel);
		req.observer = flash_over;
		req.observer_user = &watch;
	}
	rc = ps_provision(&req, &res, &err);
	cli_flash_watch_end(&watch);
	if (rc == PS_EUNSAFE)
		syslog(LOG_WARNING, "provstation: refused to write %s: %s", req.target, err.msg);
	if (rc < 0)
		goto fail;
	printf("provisioned %s on %s\n", req.serial, req.target);
	if (res.flashed)
		print_flashed(&res.flash);
	printf("  commonName   %s\n"
	       "  cert serial  %s\n"
	       "  public key   sha256:%s\n"
	       "  data         %s\n",
	       res.common_name, res.cert_serial, res.pubkey_sha256, res.data_partition);
	for (i = 0; i < res.n_written; i++)
		printf("  wrote        %s\n", res.written[i]);
	printf("  audit        row %lld in %s: verified\n", (long long)res.audit_id, cfg.database);
	if (history.in_use > 0)
		printf("  superseded   %ld earlier certificate%s of %s%s\n", history.in_use,
		       history.in_use == 1 ? "" : "s", req.serial,
		       cfg.revoke_superseded ? " (and revoked)" : "");
	if (req.preauth)
		preauth_now(db, &cfg, res.audit_id);
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

int cmd_verify(int argc, char **argv)
{
	static const struct option opts[] = {
	    CLI_COMMON_OPTIONS,
	    {"target", required_argument, NULL, OPT_TARGET},
	    {NULL, 0, NULL, 0},
	};
	struct cli_common_args args = {0};
	struct ps_verify_result res;
	struct ps_config cfg;
	struct ps_ca ca;
	struct ps_err err = {""};
	const char *target = NULL;
	bool have_cfg = false, have_ca = false;
	int c, rc = PS_EXIT_OK;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (cli_common_option(c, &args))
			continue;
		if (c == OPT_TARGET) {
			target = optarg;
		} else if (c == 'h') {
			usage_verify(stdout);
			return PS_EXIT_OK;
		} else {
			return cli_usage_error("verify", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("verify", "unexpected argument '%s'", argv[optind]);
	if (target == NULL)
		return cli_usage_error("verify", "--target is required");
	if (cli_load_config(&cfg, args.config, args.ca_dir, args.db, &err) < 0)
		goto fail;
	have_cfg = true;
	if (ps_ca_load(&ca, cfg.ca_dir, false, NULL, &err) < 0)
		goto fail;
	have_ca = true;
	if (ps_verify(&cfg, &ca, target, &res, &err) < 0)
		goto fail;
	printf("%s: OK\n"
	       "  commonName   %s\n"
	       "  cert serial  %s\n"
	       "  public key   sha256:%s\n"
	       "  valid until  %s\n"
	       "  mender.conf  %d effective configuration(s) point at the key and certificate\n",
	       target, res.common_name, res.cert_serial, res.pubkey_sha256, res.not_after,
	       res.n_configs_checked);
	goto out;
fail:
	rc = cli_error(&err);
out:
	if (have_ca)
		ps_ca_free(&ca);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}

int cmd_export(int argc, char **argv)
{
	enum {
		OPT_FORMAT = 2000,
		OPT_SINCE,
		OPT_UNTIL,
		OPT_STATUS,
		OPT_STATION,
		OPT_BATCH,
		OPT_OUT,
		OPT_DEVICE,
		OPT_SIGN
	};
	static const struct option opts[] = {
	    CLI_COMMON_OPTIONS,
	    {"format", required_argument, NULL, OPT_FORMAT},
	    {"since", required_argument, NULL, OPT_SINCE},
	    {"until", required_argument, NULL, OPT_UNTIL},
	    {"status", required_argument, NULL, OPT_STATUS},
	    {"station", required_argument, NULL, OPT_STATION},
	    {"batch", required_argument, NULL, OPT_BATCH},
	    {"serial", required_argument, NULL, OPT_DEVICE},
	    {"out", required_argument, NULL, OPT_OUT},
	    {"sign", required_argument, NULL, OPT_SIGN},
	    {NULL, 0, NULL, 0},
	};
	static const char *const states[] = {PS_STATE_ISSUED,	  PS_STATE_WRITTEN,
					     PS_STATE_VERIFIED,	  PS_STATE_FAILED,
					     PS_STATE_SUPERSEDED, PS_STATE_REVOKED};
	struct cli_common_args args = {0};
	struct ps_db_filter filter = {0};
	enum ps_export_format format = PS_EXPORT_CSV;
	const char *format_name = NULL, *out_path = NULL, *sign_key = NULL;
	struct ps_config cfg;
	struct ps_db *db = NULL;
	struct ps_err err = {""};
	FILE *out = stdout;
	bool have_cfg = false;
	long count = 0;
	size_t i;
	int c, rc = PS_EXIT_OK;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (cli_common_option(c, &args))
			continue;
		switch (c) {
		case OPT_FORMAT:
			format_name = optarg;
			break;
		case OPT_SINCE:
		case OPT_UNTIL:
			if (ps_parse_time(optarg, c == OPT_SINCE ? &filter.since : &filter.until,
					  &err) < 0)
				return cli_error(&err);
			break;
		case OPT_STATUS:
			filter.state = optarg;
			break;
		case OPT_STATION:
			filter.station_id = optarg;
			break;
		case OPT_BATCH:
			filter.batch = optarg;
			break;
		case OPT_DEVICE:
			filter.device_serial = optarg;
			break;
		case OPT_OUT:
			out_path = optarg;
			break;
		case OPT_SIGN:
			sign_key = optarg;
			break;
		case 'h':
			usage_export(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error("export", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("export", "unexpected argument '%s'", argv[optind]);
	if (format_name == NULL)
		return cli_usage_error("export", "--format is required");
	if (sign_key != NULL && out_path == NULL)
		return cli_usage_error("export",
				       "--sign needs --out FILE (the signature is FILE.sig)");
	if (ps_export_format_parse(format_name, &format, &err) < 0)
		return cli_error(&err);
	for (i = 0; filter.state != NULL && i < PS_ARRAY_SIZE(states); i++)
		if (strcmp(filter.state, states[i]) == 0)
			break;
	if (filter.state != NULL && i == PS_ARRAY_SIZE(states))
		return cli_usage_error("export",
				       "unknown status '%s' (issued, written, verified, failed, "
				       "superseded, revoked)",
				       filter.state);
	if (cli_load_config(&cfg, args.config, args.ca_dir, args.db, &err) < 0)
		goto fail;
	have_cfg = true;
	if (ps_db_open(cfg.database, &db, &err) < 0)
		goto fail;
	if (sign_key != NULL && ps_sign_check_key(sign_key, &err) < 0)
		goto fail;
	if (out_path != NULL && (out = fopen(out_path, "w")) == NULL) {
		ps_fail(&err, PS_EIO, "%s: cannot write it", out_path);
		out = stdout;
		goto fail;
	}
	if (ps_export(db, &filter, format, out, &count, &err) < 0)
		goto fail;
	if (out != stdout) {
		int closed = fclose(out);

		out = stdout;
		if (closed != 0) {
			ps_fail(&err, PS_EIO, "%s: writing the export failed: %s", out_path,
				strerror(errno));
			goto fail;
		}
	}
	if (out_path != NULL)
		fprintf(stderr, "exported %ld rows to %s\n", count, out_path);
	if (sign_key != NULL) {
		struct ps_signature_info sig;
		char sig_path[PATH_MAX];

		if (snprintf(sig_path, sizeof(sig_path), "%s.sig", out_path) >=
		    (int)sizeof(sig_path)) {
			ps_fail(&err, PS_EINVAL, "%s: path too long", out_path);
			goto fail;
		}
		if (ps_sign_file(out_path, sign_key, sig_path, &sig, &err) < 0)
			goto fail;
		fprintf(stderr, "signed %s: %s (%s, station key sha256:%s)\n", out_path, sig_path,
			sig.algorithm, sig.key_sha256);
	}
	goto out;
fail:
	rc = cli_error(&err);
out:
	if (out != stdout && fclose(out) != 0 && rc == PS_EXIT_OK)
		rc = cli_error(&(struct ps_err){"writing the export failed"});
	ps_db_close(db);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}
