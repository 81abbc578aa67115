/* test_ca.c — unit tests for the PKI core: CA creation and loading, the device and server
 * certificate profiles read back through OpenSSL, passphrases, modes, bad input, CRLs. */
#include "ca.h"
#include "tap.h"
#include "util.h"

#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[] = "/tmp/ps-test-ca-XXXXXX";

static const char *path(const char *name)
{
	static char buf[4][512];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", root, name);
	return buf[i];
}

static bool has_eku(X509 *cert, int nid)
{
	EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(cert, NID_ext_key_usage, NULL, NULL);
	bool found = false;
	int i;

	for (i = 0; eku && i < sk_ASN1_OBJECT_num(eku); i++)
		found |= OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, i)) == nid;
	EXTENDED_KEY_USAGE_free(eku);
	return found;
}

static bool ext_critical(X509 *cert, int nid)
{
	int idx = X509_get_ext_by_NID(cert, nid, -1);

	return idx >= 0 && X509_EXTENSION_get_critical(X509_get_ext(cert, idx));
}

static void test_key_type(enum ps_key_type type, const char *dir_name)
{
	struct ps_ca_init_opts init = {.dir = path(dir_name), .key_type = type, .days = 3650};
	struct ps_cert_request req = {.profile = PS_PROFILE_DEVICE,
				      .common_name = "SN-0001.devices.example.com",
				      .subject = "/O=My Organization/OU=My Unit/C=NO/L=Oslo/"
						 "emailAddress=me@example.com",
				      .days = 3650};
	struct ps_err err = {""};
	struct ps_ca ca;
	struct ps_issued issued;
	BASIC_CONSTRAINTS *bc = NULL;
	ASN1_BIT_STRING *ku = NULL;

	ok(ps_ca_init(&init, &err) == 0, "%s: CA created: %s", dir_name, err.msg);
	ok(ps_ca_load(&ca, init.dir, true, NULL, &err) == 0, "%s: CA loads: %s", dir_name, err.msg);
	ok(X509_get_version(ca.cert) == X509_VERSION_3, "%s: CA is v3", dir_name);
	bc = X509_get_ext_d2i(ca.cert, NID_basic_constraints, NULL, NULL);
	ok(bc && bc->ca && ext_critical(ca.cert, NID_basic_constraints), "%s: CA:TRUE critical",
	   dir_name);
	BASIC_CONSTRAINTS_free(bc);
	ok((X509_get_key_usage(ca.cert) & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) ==
		   (KU_KEY_CERT_SIGN | KU_CRL_SIGN) &&
	       ext_critical(ca.cert, NID_key_usage),
	   "%s: keyCertSign and cRLSign, critical", dir_name);
	ok(X509_get0_subject_key_id(ca.cert) != NULL, "%s: CA has a subject key id", dir_name);
	{
		BIGNUM *serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(ca.cert), NULL);

		ok(serial != NULL && BN_num_bits(serial) >= 120, "%s: CA serial has %d bits",
		   dir_name, serial ? BN_num_bits(serial) : 0);
		BN_free(serial);
	}

	ok(ps_issue(&ca, &req, type, &issued, &err) == 0, "%s: device issued: %s", dir_name,
	   err.msg);
	ok(X509_get_version(issued.cert) == X509_VERSION_3, "%s: device cert is v3", dir_name);
	bc = X509_get_ext_d2i(issued.cert, NID_basic_constraints, NULL, NULL);
	ok(bc && !bc->ca && ext_critical(issued.cert, NID_basic_constraints),
	   "%s: CA:FALSE critical", dir_name);
	BASIC_CONSTRAINTS_free(bc);
	ku = X509_get_ext_d2i(issued.cert, NID_key_usage, NULL, NULL);
	ok(ku && ASN1_BIT_STRING_get_bit(ku, 0) && !ASN1_BIT_STRING_get_bit(ku, 5) &&
	       ext_critical(issued.cert, NID_key_usage),
	   "%s: digitalSignature only, critical", dir_name);
	ASN1_BIT_STRING_free(ku);
	ok(has_eku(issued.cert, NID_client_auth) && !has_eku(issued.cert, NID_server_auth),
	   "%s: clientAuth", dir_name);
	ok(X509_get0_subject_key_id(issued.cert) != NULL &&
	       X509_get0_authority_key_id(issued.cert) != NULL,
	   "%s: subject and authority key ids", dir_name);
	ok(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(issued.cert),
				 X509_get0_subject_key_id(ca.cert)) == 0,
	   "%s: AKI equals the CA's SKI", dir_name);
	ok(strlen(issued.serial_hex) == 32, "%s: 128-bit serial (%s)", dir_name, issued.serial_hex);
	ok(ps_cert_verify(&ca, issued.cert, X509_PURPOSE_SSL_CLIENT, &err) == 0,
	   "%s: verifies for sslclient: %s", dir_name, err.msg);
	ok(ps_cert_verify(&ca, issued.cert, X509_PURPOSE_SSL_SERVER, &err) < 0,
	   "%s: does not verify for sslserver", dir_name);
	ok(X509_check_private_key(issued.cert, issued.key) == 1, "%s: key matches", dir_name);
	contains(issued.pubkey_pem, "-----BEGIN PUBLIC KEY-----", "%s: SPKI public key", dir_name);
	contains(issued.key_pem, "-----BEGIN PRIVATE KEY-----", "%s: PKCS#8 private key", dir_name);
	ok(strlen(issued.pubkey_sha256) == 64, "%s: public key fingerprint", dir_name);
	{
		char buf[256];

		X509_NAME_oneline(X509_get_subject_name(issued.cert), buf, sizeof(buf));
		contains(buf, "/O=My Organization/OU=My Unit/C=NO/L=Oslo", "%s: subject fields",
			 dir_name);
		contains(buf, "CN=SN-0001.devices.example.com", "%s: commonName", dir_name);
	}
	ps_issued_free(&issued);
	ps_ca_free(&ca);
}

int main(void)
{
	struct ps_err err = {""};
	struct ps_ca ca;
	struct ps_issued issued;
	struct ps_cert_request req = {.profile = PS_PROFILE_DEVICE, .days = 30};
	struct ps_ca_init_opts init = {.key_type = PS_KEY_P256, .days = 3650};
	char long_cn[80];
	FILE *f;

	if (mkdtemp(root) == NULL)
		return 1;
	test_key_type(PS_KEY_P256, "p256");
	test_key_type(PS_KEY_P384, "p384");
	test_key_type(PS_KEY_ED25519, "ed25519");
	test_key_type(PS_KEY_RSA3072, "rsa");

	init.dir = path("p256");
	ok(ps_ca_init(&init, &err) == PS_EEXIST, "an existing CA is not overwritten");
	contains(err.msg, "refusing to overwrite", "says it refuses");

	ok(ps_ca_load(&ca, path("p256"), true, NULL, &err) == 0, "reload");
	req.common_name = "";
	ok(ps_issue(&ca, &req, PS_KEY_P256, &issued, &err) == PS_EINVAL, "empty CN refused");
	contains(err.msg, "commonName is empty", "names the commonName");
	memset(long_cn, 'a', 65);
	long_cn[65] = '\0';
	req.common_name = long_cn;
	ok(ps_issue(&ca, &req, PS_KEY_P256, &issued, &err) == PS_EINVAL, "65-byte CN refused");
	req.common_name = "bad\nname";
	ok(ps_issue(&ca, &req, PS_KEY_P256, &issued, &err) == PS_EINVAL, "newline in CN refused");
	req.common_name = "ok";
	req.subject = "O=missing slash";
	ok(ps_issue(&ca, &req, PS_KEY_P256, &issued, &err) == PS_EINVAL, "bad subject refused");
	contains(err.msg, "does not parse", "says it does not parse");
	req.subject = "/C=Norway";
	ok(ps_issue(&ca, &req, PS_KEY_P256, &issued, &err) == PS_EINVAL,
	   "a country that is not 2 letters refused");
	req.subject = NULL;
	{
		const char *dns[] = {"mender.example.com", "*.mender.example.com"};
		const char *ips[] = {"127.0.0.1", "::1"};
		struct ps_cert_request sreq = {.profile = PS_PROFILE_SERVER,
					       .common_name = "mender.example.com",
					       .days = 730,
					       .dns_names = dns,
					       .n_dns = 2,
					       .ip_addrs = ips,
					       .n_ips = 2};
		GENERAL_NAMES *san;

		ok(ps_issue(&ca, &sreq, PS_KEY_P256, &issued, &err) == 0, "server cert: %s",
		   err.msg);
		ok(has_eku(issued.cert, NID_server_auth), "server cert has serverAuth");
		san = X509_get_ext_d2i(issued.cert, NID_subject_alt_name, NULL, NULL);
		is_int(sk_GENERAL_NAME_num(san), 4, "four subjectAltNames");
		GENERAL_NAMES_free(san);
		ok(X509_check_host(issued.cert, "mender.example.com", 0, 0, NULL) == 1,
		   "host name matches");
		ok(X509_check_ip_asc(issued.cert, "127.0.0.1", 0) == 1, "IP matches");
		ok(ps_cert_verify(&ca, issued.cert, X509_PURPOSE_SSL_SERVER, &err) == 0,
		   "verifies for sslserver");
		ps_issued_free(&issued);
		ips[0] = "300.1.1.1";
		ok(ps_issue(&ca, &sreq, PS_KEY_P256, &issued, &err) == PS_EINVAL, "bad IP refused");
		dns[0] = "bad,name";
		ips[0] = "127.0.0.1";
		ok(ps_issue(&ca, &sreq, PS_KEY_P256, &issued, &err) == PS_EINVAL,
		   "a name with a comma refused");
	}
	{
		struct ps_revoked rev[] = {{"4a1b2c", 1700000000, CRL_REASON_KEY_COMPROMISE},
					   {"7f", 1700000100, CRL_REASON_UNSPECIFIED}};
		char *pem = NULL;
		X509_CRL *crl = NULL;
		BIO *bio;

		ok(ps_crl_make(&ca, rev, 2, 7, 30, &pem, &err) == 0, "CRL made: %s", err.msg);
		bio = BIO_new_mem_buf(pem, -1);
		crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
		ok(crl != NULL, "CRL parses");
		is_int(X509_CRL_get_version(crl), X509_CRL_VERSION_2, "v2 CRL");
		is_int(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 2, "two entries");
		ok(X509_CRL_verify(crl, X509_get0_pubkey(ca.cert)) == 1, "signed by the CA");
		{
			ASN1_INTEGER *num = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);

			is_int(ASN1_INTEGER_get(num), 7, "CRL number");
			ASN1_INTEGER_free(num);
		}
		X509_CRL_free(crl);
		BIO_free(bio);
		free(pem);
		rev[0].serial_hex = "zz";
		ok(ps_crl_make(&ca, rev, 1, 8, 30, &pem, &err) == PS_EINVAL, "bad serial refused");
	}
	ps_ca_free(&ca);

	ok(ps_ca_load(&ca, path("missing"), true, NULL, &err) == PS_ENOENT, "missing dir");
	contains(err.msg, "does not exist", "says it does not exist");
	ok(unlink(path("rsa/ca-cert.pem")) == 0, "make a half-made CA");
	ok(ps_ca_load(&ca, path("rsa"), true, NULL, &err) == PS_ENOENT, "half-made CA refused");
	contains(err.msg, "incomplete", "says incomplete");
	ok(chmod(path("p384/ca-private.key"), 0640) == 0, "make the key group-readable");
	ok(ps_ca_load(&ca, path("p384"), true, NULL, &err) == PS_EPERM, "readable key refused");
	contains(err.msg, "readable by group or others (mode 0640)", "says why, with the mode");
	ok(ps_ca_load(&ca, path("p384"), false, NULL, &err) == 0, "certificate-only load is fine");
	ps_ca_free(&ca);

	f = fopen(path("pass"), "w");
	fputs("correct horse\n", f);
	fclose(f);
	f = fopen(path("wrong"), "w");
	fputs("wrong horse\n", f);
	fclose(f);
	init.dir = path("enc");
	init.passphrase_file = path("pass");
	ok(ps_ca_init(&init, &err) == 0, "encrypted CA created");
	{
		struct ps_passphrase_src good = {.file = path("pass")};
		struct ps_passphrase_src bad = {.file = path("wrong")};
		struct ps_passphrase_src none = {.allow_prompt = false};
		char *pem = NULL;

		ok(ps_read_file(path("enc/ca-private.key"), 1 << 16, &pem, NULL, &err) == 0 &&
		       strstr(pem, "BEGIN ENCRYPTED PRIVATE KEY") != NULL,
		   "key is encrypted PKCS#8");
		free(pem);
		ok(ps_ca_load(&ca, path("enc"), true, &good, &err) == 0, "right passphrase: %s",
		   err.msg);
		ps_ca_free(&ca);
		ok(ps_ca_load(&ca, path("enc"), true, &bad, &err) == PS_EPERM, "wrong passphrase");
		contains(err.msg, "wrong passphrase", "says wrong passphrase");
		unsetenv(PS_PASSPHRASE_ENV);
		ok(ps_ca_load(&ca, path("enc"), true, &none, &err) == PS_EPERM, "no passphrase");
		contains(err.msg, "is encrypted", "says it is encrypted");
		setenv(PS_PASSPHRASE_ENV, "correct horse", 1);
		ok(ps_ca_load(&ca, path("enc"), true, &none, &err) == 0, "passphrase from env");
		ps_ca_free(&ca);
		unsetenv(PS_PASSPHRASE_ENV);
	}
	{
		enum ps_key_type t;

		ok(ps_key_type_parse("dsa", &t, &err) == PS_EINVAL, "unknown key type refused");
		contains(err.msg, "unknown key type 'dsa'", "names the key type");
	}
	{
		char cmd[600];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
		ok(system(cmd) == 0, "temporary files removed");
	}
	return tap_done();
}
