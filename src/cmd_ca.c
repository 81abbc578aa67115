/* cmd_ca.c — `provstation ca init|server-cert|issue`: the CA and its certificates from the
 * command line. */
#include "ca.h"
#include "cli.h"
#include "util.h"

#include <getopt.h>
#include <limits.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_NAMES 32

static void usage_ca(FILE *out)
{
	fprintf(
	    out,
	    "usage: provstation ca init --dir DIR [--key-type p256|p384|ed25519|rsa3072]\n"
	    "                           [--subject /CN=.../O=...] [--days N] "
	    "[--passphrase-file F]\n"
	    "       provstation ca server-cert --ca-dir DIR --domain NAME [--domain NAME]...\n"
	    "                           [--ip ADDR]... [--days N] --out DIR [--ambassador] "
	    "[--force]\n"
	    "       provstation ca issue --ca-dir DIR --cn NAME --out DIR [--key-type T] "
	    "[--days N]\n"
	    "                           [--subject /O=...] [--config FILE] [--force]\n"
	    "\n"
	    "init         create DIR/ca-private.key (0600; encrypted PKCS#8 with a passphrase)\n"
	    "             and a self-signed X.509 v3 CA certificate DIR/ca-cert.pem\n"
	    "             (default P-256, 10 years). Refuses to overwrite a CA.\n"
	    "server-cert  server-private.key + server-cert.pem for the mTLS edge proxy, with\n"
	    "             subjectAltName for every name and address (default 2 years);\n"
	    "             --ambassador writes server.key, server.crt and tenant.ca.pem as\n"
	    "             Mender's mtls-ambassador mounts them.\n"
	    "issue        device-private.key + device-cert.pem for one device (clientAuth,\n"
	    "             default 10 years), subject fields from [device] subject.\n"
	    "\n"
	    "The CA key's passphrase comes from --passphrase-file, [ca] passphrase_file,\n"
	    "%s, or a prompt without echo.\n",
	    PS_PASSPHRASE_ENV);
}

static int parse_days(const char *s, long *days, struct ps_err *err)
{
	return ps_parse_int("--days", s, 1, 36500, days, err);
}

static int ca_init(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"dir", required_argument, NULL, 'd'},
	    {"key-type", required_argument, NULL, 'k'},
	    {"subject", required_argument, NULL, 's'},
	    {"days", required_argument, NULL, 'D'},
	    {"passphrase-file", required_argument, NULL, 'p'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct ps_ca_init_opts init = {.key_type = PS_KEY_P256, .days = 3650};
	struct ps_ca ca;
	struct ps_err err = {""};
	char until[32];
	int c;

	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			init.dir = optarg;
			break;
		case 'k':
			if (ps_key_type_parse(optarg, &init.key_type, &err) < 0)
				return cli_error(&err);
			break;
		case 's':
			init.subject = optarg;
			break;
		case 'D':
			if (parse_days(optarg, &init.days, &err) < 0)
				return cli_error(&err);
			break;
		case 'p':
			init.passphrase_file = optarg;
			break;
		case 'h':
			usage_ca(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error("ca init", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("ca init", "unexpected argument '%s'", argv[optind]);
	if (init.dir == NULL)
		return cli_usage_error("ca init", "--dir is required");
	if (ps_ca_init(&init, &err) < 0 || ps_ca_load(&ca, init.dir, false, NULL, &err) < 0)
		return cli_error(&err);
	ps_format_time(ca.not_after, until);
	printf("CA created in %s\n"
	       "  certificate  %s/%s\n"
	       "  private key  %s/%s (mode 0600, %s)\n"
	       "  subject      %s\n"
	       "  key type     %s\n"
	       "  valid until  %s\n"
	       "  fingerprint  sha256:%s\n",
	       init.dir, init.dir, PS_CA_CERT_FILE, init.dir, PS_CA_KEY_FILE,
	       init.passphrase_file ? "encrypted PKCS#8" : "unencrypted PKCS#8", ca.subject,
	       ps_key_type_name(init.key_type), until, ca.fingerprint);
	ps_ca_free(&ca);
	return PS_EXIT_OK;
}

/* Write key and certificate (and optionally the CA certificate) into out_dir. */
static int write_identity(const char *out_dir, const char *key_name, const char *cert_name,
			  const char *ca_name, const struct ps_issued *issued, struct ps_ca *ca,
			  bool force, struct ps_err *err)
{
	char key_path[PATH_MAX], cert_path[PATH_MAX], ca_path[PATH_MAX];
	char *ca_pem = NULL;
	int flags = force ? 0 : PS_WRITE_EXCL;
	int rc;

	snprintf(key_path, sizeof(key_path), "%s/%s", out_dir, key_name);
	snprintf(cert_path, sizeof(cert_path), "%s/%s", out_dir, cert_name);
	snprintf(ca_path, sizeof(ca_path), "%s/%s", out_dir, ca_name ? ca_name : "");
	rc = ps_mkdir_p(out_dir, 0700, err);
	if (rc == 0 && !force) {
		const char *paths[] = {key_path, cert_path, ca_name ? ca_path : NULL};
		size_t i;

		for (i = 0; i < PS_ARRAY_SIZE(paths) && rc == 0; i++)
			if (paths[i] != NULL && access(paths[i], F_OK) == 0)
				rc = ps_fail(err, PS_EEXIST,
					     "%s already exists; refusing to overwrite it "
					     "(--force replaces it)",
					     paths[i]);
	}
	if (rc == 0)
		rc =
		    ps_write_file(key_path, issued->key_pem, issued->key_pem_len, 0600, flags, err);
	if (rc == 0)
		rc = ps_write_file(cert_path, issued->cert_pem, strlen(issued->cert_pem), 0644,
				   flags, err);
	if (rc == 0 && ca_name != NULL) {
		rc = ps_cert_to_pem(ca->cert, &ca_pem, err);
		if (rc == 0)
			rc = ps_write_file(ca_path, ca_pem, strlen(ca_pem), 0644, flags, err);
	}
	free(ca_pem);
	return rc;
}

static void print_issued(const char *what, const struct ps_issued *issued, const char *out_dir,
			 const char *key_name, const char *cert_name)
{
	char nb[32], na[32];

	ps_format_time(issued->not_before, nb);
	ps_format_time(issued->not_after, na);
	printf("%s certificate issued\n"
	       "  commonName   %s\n"
	       "  serial       %s\n"
	       "  valid        %s .. %s\n"
	       "  public key   sha256:%s\n"
	       "  written      %s/%s (0600), %s/%s (0644)\n",
	       what, issued->common_name, issued->serial_hex, nb, na, issued->pubkey_sha256,
	       out_dir, key_name, out_dir, cert_name);
}

/* Both `server-cert` and `issue`: load config and CA, issue, write. */
static int ca_issue_common(int argc, char **argv, enum ps_cert_profile profile)
{
	static const struct option opts[] = {
	    {"ca-dir", required_argument, NULL, 'c'},
	    {"config", required_argument, NULL, 'C'},
	    {"domain", required_argument, NULL, 'n'},
	    {"ip", required_argument, NULL, 'i'},
	    {"cn", required_argument, NULL, 'N'},
	    {"days", required_argument, NULL, 'D'},
	    {"out", required_argument, NULL, 'o'},
	    {"key-type", required_argument, NULL, 'k'},
	    {"subject", required_argument, NULL, 's'},
	    {"passphrase-file", required_argument, NULL, 'p'},
	    {"ambassador", no_argument, NULL, 'a'},
	    {"force", no_argument, NULL, 'f'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *cmd = profile == PS_PROFILE_SERVER ? "ca server-cert" : "ca issue";
	const char *names[MAX_NAMES], *ips[MAX_NAMES];
	const char *ca_dir = NULL, *config_path = NULL, *out_dir = NULL, *subject = NULL;
	const char *pass_file = NULL, *key_type_arg = NULL, *cn = NULL;
	struct ps_cert_request req = {.profile = profile, .dns_names = names, .ip_addrs = ips};
	struct ps_passphrase_src pass = {.allow_prompt = true};
	struct ps_config cfg;
	struct ps_ca ca;
	struct ps_issued issued;
	struct ps_err err = {""};
	enum ps_key_type key_type;
	bool ambassador = false, force = false, have_cfg = false, have_ca = false;
	long days = 0;
	int c, rc = PS_EXIT_OK;

	memset(&issued, 0, sizeof(issued));
	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			ca_dir = optarg;
			break;
		case 'C':
			config_path = optarg;
			break;
		case 'n':
		case 'i':
			if (profile != PS_PROFILE_SERVER)
				return cli_usage_error(cmd,
						       "--domain and --ip are for server-cert");
			if ((c == 'n' ? req.n_dns : req.n_ips) == MAX_NAMES)
				return cli_usage_error(cmd, "at most %d names", MAX_NAMES);
			if (c == 'n')
				names[req.n_dns++] = optarg;
			else
				ips[req.n_ips++] = optarg;
			break;
		case 'N':
			cn = optarg;
			break;
		case 'D':
			if (parse_days(optarg, &days, &err) < 0)
				return cli_error(&err);
			break;
		case 'o':
			out_dir = optarg;
			break;
		case 'k':
			key_type_arg = optarg;
			break;
		case 's':
			subject = optarg;
			break;
		case 'p':
			pass_file = optarg;
			break;
		case 'a':
			ambassador = true;
			break;
		case 'f':
			force = true;
			break;
		case 'h':
			usage_ca(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error(cmd, "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	if (out_dir == NULL)
		return cli_usage_error(cmd, "--out is required");
	if (profile == PS_PROFILE_SERVER && req.n_dns == 0)
		return cli_usage_error(cmd, "--domain is required");
	if (profile == PS_PROFILE_DEVICE && cn == NULL)
		return cli_usage_error(cmd, "--cn is required");
	if (ambassador && profile != PS_PROFILE_SERVER)
		return cli_usage_error(cmd, "--ambassador is for server-cert");

	if (cli_load_config(&cfg, config_path, ca_dir, NULL, &err) < 0) {
		rc = cli_error(&err);
		goto out;
	}
	have_cfg = true;
	key_type = cfg.key_type;
	if (key_type_arg != NULL && ps_key_type_parse(key_type_arg, &key_type, &err) < 0) {
		rc = cli_error(&err);
		goto out;
	}
	req.common_name = profile == PS_PROFILE_SERVER ? names[0] : cn;
	req.subject = subject ? subject : cfg.subject;
	req.days = days ? days : (profile == PS_PROFILE_SERVER ? 730 : cfg.days);
	pass.file =
	    pass_file ? pass_file : (cfg.ca_passphrase_file[0] ? cfg.ca_passphrase_file : NULL);
	if (ps_check_common_name(req.common_name, &err) < 0 ||
	    ps_ca_load(&ca, cfg.ca_dir, true, &pass, &err) < 0) {
		rc = cli_error(&err);
		goto out;
	}
	have_ca = true;
	if (ps_issue(&ca, &req, key_type, &issued, &err) < 0) {
		rc = cli_error(&err);
		goto out;
	}
	if (profile == PS_PROFILE_SERVER && ambassador) {
		if (write_identity(out_dir, "server.key", "server.crt", "tenant.ca.pem", &issued,
				   &ca, force, &err) < 0) {
			rc = cli_error(&err);
			goto out;
		}
		print_issued("server", &issued, out_dir, "server.key", "server.crt");
		printf("  CA           %s/tenant.ca.pem\n", out_dir);
	} else {
		const char *key_name =
		    profile == PS_PROFILE_SERVER ? "server-private.key" : "device-private.key";
		const char *cert_name =
		    profile == PS_PROFILE_SERVER ? "server-cert.pem" : "device-cert.pem";

		if (write_identity(out_dir, key_name, cert_name, NULL, &issued, &ca, force, &err) <
		    0) {
			rc = cli_error(&err);
			goto out;
		}
		print_issued(profile == PS_PROFILE_SERVER ? "server" : "device", &issued, out_dir,
			     key_name, cert_name);
	}
out:
	ps_issued_free(&issued);
	if (have_ca)
		ps_ca_free(&ca);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}

int cmd_ca(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		usage_ca(argc < 2 ? stderr : stdout);
		return argc < 2 ? PS_EXIT_USAGE : PS_EXIT_OK;
	}
	if (strcmp(argv[1], "init") == 0)
		return ca_init(argc - 1, argv + 1);
	if (strcmp(argv[1], "server-cert") == 0)
		return ca_issue_common(argc - 1, argv + 1, PS_PROFILE_SERVER);
	if (strcmp(argv[1], "issue") == 0)
		return ca_issue_common(argc - 1, argv + 1, PS_PROFILE_DEVICE);
	return cli_usage_error("ca", "unknown subcommand '%s'", argv[1]);
}
