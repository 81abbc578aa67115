/* ca.c — the station's PKI (see ca.h): keys, the CA, certificate profiles and CRLs, all through
 * OpenSSL 3's EVP and X509 APIs. Private keys are wiped as they are released. */
#include "ca.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ui.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PS_DEFAULT_CA_SUBJECT "/CN=provstation device CA"
#define PS_PASSPHRASE_MAX     1024

static const struct {
	const char *name;
	enum ps_key_type type;
} key_types[] = {
    {"p256", PS_KEY_P256},
    {"p384", PS_KEY_P384},
    {"ed25519", PS_KEY_ED25519},
    {"rsa3072", PS_KEY_RSA3072},
};

int ps_key_type_parse(const char *name, enum ps_key_type *out, struct ps_err *err)
{
	size_t i;

	for (i = 0; i < PS_ARRAY_SIZE(key_types); i++) {
		if (strcmp(name, key_types[i].name) == 0) {
			*out = key_types[i].type;
			return 0;
		}
	}
	return ps_fail(err, PS_EINVAL, "unknown key type '%s' (use p256, p384, ed25519 or rsa3072)",
		       name);
}

const char *ps_key_type_name(enum ps_key_type type)
{
	size_t i;

	for (i = 0; i < PS_ARRAY_SIZE(key_types); i++)
		if (key_types[i].type == type)
			return key_types[i].name;
	return "?";
}

int ps_key_generate(enum ps_key_type type, EVP_PKEY **out, struct ps_err *err)
{
	switch (type) {
	case PS_KEY_P256:
		*out = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
		break;
	case PS_KEY_P384:
		*out = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
		break;
	case PS_KEY_ED25519:
		*out = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
		break;
	case PS_KEY_RSA3072:
		*out = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
		break;
	default:
		*out = NULL;
	}
	if (*out == NULL)
		return ps_fail_ssl(err, PS_ECRYPTO, "generating a %s key failed",
				   ps_key_type_name(type));
	return 0;
}

/* The digest that goes with a signing key: none for Ed25519, SHA-384 for P-384. */
static const EVP_MD *digest_for(EVP_PKEY *signer)
{
	if (EVP_PKEY_get_base_id(signer) == EVP_PKEY_ED25519)
		return NULL;
	if (EVP_PKEY_get_base_id(signer) == EVP_PKEY_EC && EVP_PKEY_get_bits(signer) >= 384)
		return EVP_sha384();
	return EVP_sha256();
}

int ps_check_common_name(const char *cn, struct ps_err *err)
{
	return ps_check_text("commonName", cn, PS_CN_MAX, err);
}

int ps_subject_parse(const char *subject, X509_NAME *name, bool allow_cn, struct ps_err *err)
{
	char *copy = NULL;
	char *field, *p;
	int rc;

	if (subject == NULL || *subject == '\0')
		return 0;
	if (subject[0] != '/') {
		rc = ps_fail(err, PS_EINVAL,
			     "subject '%s' does not parse: write it as /O=My Org/OU=Unit/C=NO",
			     subject);
		goto out;
	}
	rc = ps_strdup(subject + 1, &copy, err);
	if (rc < 0)
		goto out;
	field = copy;
	while (field != NULL && *field != '\0') {
		char *eq, *next = NULL, *w;
		int nid;

		/* Split on the next '/' that is not escaped as "\/". */
		for (p = w = field; *p != '\0'; p++) {
			if (p[0] == '\\' && p[1] == '/') {
				*w++ = '/';
				p++;
				continue;
			}
			if (*p == '/') {
				next = p + 1;
				break;
			}
			*w++ = *p;
		}
		*w = '\0';
		eq = strchr(field, '=');
		if (eq == NULL || eq == field || eq[1] == '\0') {
			rc = ps_fail(err, PS_EINVAL,
				     "subject '%s' does not parse: field '%s' is not KEY=VALUE",
				     subject, field);
			goto out;
		}
		*eq = '\0';
		nid = OBJ_txt2nid(field);
		if (nid == NID_undef) {
			rc = ps_fail(err, PS_EINVAL, "subject '%s': unknown field name '%s'",
				     subject, field);
			goto out;
		}
		if (nid == NID_commonName && !allow_cn) {
			rc = ps_fail(
			    err, PS_EINVAL,
			    "subject '%s' sets CN; the commonName comes from its own setting",
			    subject);
			goto out;
		}
		rc = ps_check_text(field, eq + 1, PS_CN_MAX * 2, err);
		if (rc < 0)
			goto out;
		if (!X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8,
						(const unsigned char *)(eq + 1), -1, -1, 0)) {
			rc = ps_fail_ssl(err, PS_EINVAL, "subject '%s': bad value for %s", subject,
					 field);
			goto out;
		}
		field = next;
	}
	rc = 0;
out:
	free(copy);
	return rc;
}

static int set_random_serial(X509 *x, struct ps_err *err)
{
	unsigned char bytes[16];
	BIGNUM *bn = NULL;
	int rc = 0;

	if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "no randomness for a certificate serial");
		goto out;
	}
	/* Positive and always 16 bytes long: 126 random bits. */
	bytes[0] = (unsigned char)((bytes[0] & 0x3f) | 0x40);
	bn = BN_bin2bn(bytes, sizeof(bytes), NULL);
	if (bn == NULL || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
		rc = ps_fail_ssl(err, PS_ECRYPTO, "setting the certificate serial failed");
out:
	BN_free(bn);
	return rc;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value, struct ps_err *err)
{
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
	int ok;

	if (ext == NULL)
		return ps_fail_ssl(err, PS_ECRYPTO, "bad %s extension '%s'", OBJ_nid2sn(nid),
				   value);
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	if (!ok)
		return ps_fail_ssl(err, PS_ECRYPTO, "adding %s failed", OBJ_nid2sn(nid));
	return 0;
}

static time_t asn1_to_time(const ASN1_TIME *t)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return timegm(&tm);
}

/* A DNS name for subjectAltName: letters, digits, '-', '.', and a leading "*." wildcard. */
static int check_dns_name(const char *name, struct ps_err *err)
{
	const char *p = name;
	int rc = ps_check_text("server name", name, 253, err);

	if (rc < 0)
		return rc;
	if (strncmp(p, "*.", 2) == 0)
		p += 2;
	for (; *p != '\0'; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
			return ps_fail(err, PS_EINVAL, "server name '%s' is not a DNS name", name);
	return 0;
}

static int append(char *buf, size_t size, size_t *used, const char *kind, const char *value,
		  struct ps_err *err)
{
	int n = snprintf(buf + *used, size - *used, "%s%s:%s", *used ? "," : "", kind, value);

	if (n < 0 || (size_t)n >= size - *used)
		return ps_fail(err, PS_EINVAL, "too many subjectAltName entries");
	*used += (size_t)n;
	return 0;
}

static int build_san(const struct ps_cert_request *req, char *buf, size_t size, struct ps_err *err)
{
	size_t used = 0, i;
	int rc;

	buf[0] = '\0';
	for (i = 0; i < req->n_dns; i++) {
		rc = check_dns_name(req->dns_names[i], err);
		if (rc == 0)
			rc = append(buf, size, &used, "DNS", req->dns_names[i], err);
		if (rc < 0)
			return rc;
	}
	for (i = 0; i < req->n_ips; i++) {
		unsigned char addr[16];

		if (inet_pton(AF_INET, req->ip_addrs[i], addr) != 1 &&
		    inet_pton(AF_INET6, req->ip_addrs[i], addr) != 1)
			return ps_fail(err, PS_EINVAL, "'%s' is not an IP address",
				       req->ip_addrs[i]);
		rc = append(buf, size, &used, "IP", req->ip_addrs[i], err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Build and sign a certificate for subject_key. issuer_cert NULL means self-signed (CA). */
static int make_cert(X509 *issuer_cert, EVP_PKEY *issuer_key, EVP_PKEY *subject_key,
		     const struct ps_cert_request *req, bool is_ca, X509 **out, struct ps_err *err)
{
	X509 *x = NULL;
	X509_NAME *name = NULL;
	X509V3_CTX ctx;
	time_t now = ps_now();
	char san[4096];
	int rc;

	*out = NULL;
	x = X509_new();
	name = X509_NAME_new();
	if (x == NULL || name == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	if (!X509_set_version(x, X509_VERSION_3)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "setting the certificate version failed");
		goto out;
	}
	rc = set_random_serial(x, err);
	if (rc < 0)
		goto out;
	if (req->common_name != NULL) {
		rc = ps_check_common_name(req->common_name, err);
		if (rc < 0)
			goto out;
		if (!X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
						(const unsigned char *)req->common_name, -1, -1,
						0)) {
			rc = ps_fail_ssl(err, PS_EINVAL, "bad commonName '%s'", req->common_name);
			goto out;
		}
	}
	rc = ps_subject_parse(req->subject, name, req->common_name == NULL, err);
	if (rc < 0)
		goto out;
	if (X509_NAME_entry_count(name) == 0) {
		rc = ps_fail(err, PS_EINVAL, "the certificate subject is empty");
		goto out;
	}
	if (!X509_set_subject_name(x, name) ||
	    !X509_set_issuer_name(x, issuer_cert ? X509_get_subject_name(issuer_cert) : name) ||
	    !X509_set_pubkey(x, subject_key)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "filling the certificate failed");
		goto out;
	}
	if (req->days < 1 || req->days > 36500) {
		rc = ps_fail(err, PS_EINVAL, "validity of %ld days is out of range (1..36500)",
			     req->days);
		goto out;
	}
	if (X509_time_adj_ex(X509_getm_notBefore(x), 0, 0, &now) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), (int)req->days, 0, &now) == NULL) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "setting the validity failed");
		goto out;
	}
	/* A certificate never outlives the CA that vouches for it. */
	if (issuer_cert != NULL &&
	    ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(issuer_cert)) > 0 &&
	    !X509_set1_notAfter(x, X509_get0_notAfter(issuer_cert))) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "capping the validity failed");
		goto out;
	}
	X509V3_set_ctx(&ctx, issuer_cert ? issuer_cert : x, x, NULL, NULL, 0);
	if (is_ca) {
		rc = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE", err);
		if (rc == 0)
			rc = add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign", err);
	} else {
		bool rsa = EVP_PKEY_get_base_id(subject_key) == EVP_PKEY_RSA;

		rc = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE", err);
		if (rc == 0)
			rc = add_ext(x, &ctx, NID_key_usage,
				     rsa && req->profile == PS_PROFILE_SERVER
					 ? "critical,digitalSignature,keyEncipherment"
					 : "critical,digitalSignature",
				     err);
		if (rc == 0)
			rc = add_ext(
			    x, &ctx, NID_ext_key_usage,
			    req->profile == PS_PROFILE_SERVER ? "serverAuth" : "clientAuth", err);
	}
	if (rc == 0)
		rc = add_ext(x, &ctx, NID_subject_key_identifier, "hash", err);
	if (rc == 0)
		rc = add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always", err);
	if (rc == 0 && (req->n_dns > 0 || req->n_ips > 0)) {
		rc = build_san(req, san, sizeof(san), err);
		if (rc == 0)
			rc = add_ext(x, &ctx, NID_subject_alt_name, san, err);
	}
	if (rc < 0)
		goto out;
	if (X509_sign(x, issuer_key, digest_for(issuer_key)) <= 0) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "signing the certificate failed");
		goto out;
	}
	*out = x;
	x = NULL;
	rc = 0;
out:
	X509_NAME_free(name);
	X509_free(x);
	return rc;
}

/* Copy a memory BIO's content into a NUL-terminated malloc'd string. */
static int bio_to_string(BIO *bio, char **out, size_t *out_len, struct ps_err *err)
{
	BUF_MEM *mem = NULL;

	BIO_get_mem_ptr(bio, &mem);
	if (mem == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	*out = malloc(mem->length + 1);
	if (*out == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	memcpy(*out, mem->data, mem->length);
	(*out)[mem->length] = '\0';
	if (out_len != NULL)
		*out_len = mem->length;
	return 0;
}

int ps_cert_to_pem(X509 *cert, char **out, struct ps_err *err)
{
	BIO *bio = BIO_new(BIO_s_mem());
	int rc;

	if (bio == NULL || !PEM_write_bio_X509(bio, cert))
		rc = ps_fail_ssl(err, PS_ECRYPTO, "encoding a certificate failed");
	else
		rc = bio_to_string(bio, out, NULL, err);
	BIO_free(bio);
	return rc;
}

/* The certificate's SubjectPublicKeyInfo as DER. It is serialized from the certificate's own
 * encoding, which spares OpenSSL 3's key encoders (the costliest step of issuing). */
static int cert_spki_der(X509 *cert, unsigned char **der, int *len, struct ps_err *err)
{
	*der = NULL;
	*len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), der);
	if (*len <= 0)
		return ps_fail_ssl(err, PS_ECRYPTO, "encoding a public key failed");
	return 0;
}

int ps_cert_pubkey_pem(X509 *cert, char **out, struct ps_err *err)
{
	unsigned char *der = NULL;
	BIO *bio = NULL;
	int len = 0;
	int rc = cert_spki_der(cert, &der, &len, err);

	if (rc < 0)
		goto out;
	bio = BIO_new(BIO_s_mem());
	if (bio == NULL || PEM_write_bio(bio, PEM_STRING_PUBLIC, "", der, len) <= 0)
		rc = ps_fail_ssl(err, PS_ECRYPTO, "encoding a public key failed");
	else
		rc = bio_to_string(bio, out, NULL, err);
out:
	BIO_free(bio);
	OPENSSL_free(der);
	return rc;
}

int ps_cert_pubkey_sha256(X509 *cert, char out[65], struct ps_err *err)
{
	unsigned char *der = NULL;
	int len = 0;
	int rc = cert_spki_der(cert, &der, &len, err);

	if (rc == 0)
		rc = ps_sha256_hex(der, (size_t)len, out, err);
	OPENSSL_free(der);
	return rc;
}

/* Private key as unencrypted PKCS#8 PEM, through a BIO that wipes itself when freed. */
static int private_key_to_pem(EVP_PKEY *key, char **out, size_t *out_len, struct ps_err *err)
{
	BIO *bio = BIO_new(BIO_s_secmem());
	BUF_MEM *mem = NULL;
	int rc;

	if (bio == NULL || !PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "encoding a private key failed");
		goto out;
	}
	rc = bio_to_string(bio, out, out_len, err);
	BIO_get_mem_ptr(bio, &mem);
	if (mem != NULL)
		OPENSSL_cleanse(mem->data, mem->length);
out:
	BIO_free(bio);
	return rc;
}

int ps_cert_serial_hex(X509 *cert, char *out, size_t out_len, struct ps_err *err)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	char *hex = NULL;
	char *p;
	int rc = 0;

	if (bn == NULL || (hex = BN_bn2hex(bn)) == NULL) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "reading a certificate serial failed");
		goto out;
	}
	for (p = hex; *p != '\0'; p++)
		if (*p >= 'A' && *p <= 'F')
			*p = (char)(*p - 'A' + 'a');
	if (snprintf(out, out_len, "%s", hex) >= (int)out_len)
		rc = ps_fail(err, PS_EINVAL, "certificate serial too long");
out:
	OPENSSL_free(hex);
	BN_free(bn);
	return rc;
}

int ps_cert_from_pem(const char *pem, size_t len, X509 **out, struct ps_err *err)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);

	*out = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	if (*out == NULL)
		return ps_fail_ssl(err, PS_EINVAL, "not a PEM certificate");
	return 0;
}

/* Decode a PEM private key. Naming the key type (from the matching certificate) spares
 * OpenSSL 3 from building decoders for every key type, which dominates the cost. */
static EVP_PKEY *decode_private_key(const char *pem, size_t len, const char *keytype,
				    pem_password_cb *cb, void *user)
{
	const unsigned char *data = (const unsigned char *)pem;
	size_t left = len;
	EVP_PKEY *key = NULL;
	OSSL_DECODER_CTX *ctx =
	    OSSL_DECODER_CTX_new_for_pkey(&key, "PEM", NULL, keytype, EVP_PKEY_KEYPAIR, NULL, NULL);

	if (ctx == NULL || (cb != NULL && !OSSL_DECODER_CTX_set_pem_password_cb(ctx, cb, user)) ||
	    !OSSL_DECODER_from_data(ctx, &data, &left)) {
		EVP_PKEY_free(key);
		key = NULL;
	}
	OSSL_DECODER_CTX_free(ctx);
	return key;
}

static int no_passphrase_cb(char *buf, int size, int rwflag, void *user)
{
	return -1; /* an encrypted key is refused, never prompted for */
}

int ps_key_from_pem(const char *pem, size_t len, const char *keytype, EVP_PKEY **out,
		    struct ps_err *err)
{
	*out = decode_private_key(pem, len, keytype, no_passphrase_cb, NULL);
	if (*out == NULL)
		return ps_fail_ssl(err, PS_EINVAL, "not an unencrypted PEM %s private key",
				   keytype ? keytype : "");
	return 0;
}

/* Fill a ps_issued from its key and certificate. */
static int describe_issued(struct ps_issued *out, struct ps_err *err)
{
	int rc;

	rc = private_key_to_pem(out->key, &out->key_pem, &out->key_pem_len, err);
	if (rc == 0)
		rc = ps_cert_to_pem(out->cert, &out->cert_pem, err);
	if (rc == 0)
		rc = ps_cert_pubkey_pem(out->cert, &out->pubkey_pem, err);
	if (rc == 0)
		rc = ps_cert_pubkey_sha256(out->cert, out->pubkey_sha256, err);
	if (rc == 0)
		rc = ps_cert_serial_hex(out->cert, out->serial_hex, sizeof(out->serial_hex), err);
	out->not_before = asn1_to_time(X509_get0_notBefore(out->cert));
	out->not_after = asn1_to_time(X509_get0_notAfter(out->cert));
	return rc;
}

int ps_issue(struct ps_ca *ca, const struct ps_cert_request *req, enum ps_key_type type,
	     struct ps_issued *out, struct ps_err *err)
{
	int rc;

	memset(out, 0, sizeof(*out));
	if (ca->key == NULL) {
		rc = ps_fail(err, PS_EINVAL, "the CA was loaded without its private key");
		goto out;
	}
	rc = ps_check_common_name(req->common_name, err);
	if (rc < 0)
		goto out;
	snprintf(out->common_name, sizeof(out->common_name), "%s", req->common_name);
	rc = ps_key_generate(type, &out->key, err);
	if (rc == 0)
		rc = make_cert(ca->cert, ca->key, out->key, req, false, &out->cert, err);
	if (rc == 0)
		rc = describe_issued(out, err);
out:
	if (rc < 0)
		ps_issued_free(out);
	return rc;
}

void ps_issued_free(struct ps_issued *issued)
{
	if (issued == NULL)
		return;
	EVP_PKEY_free(issued->key);
	X509_free(issued->cert);
	ps_free_secret(issued->key_pem, issued->key_pem_len);
	free(issued->cert_pem);
	free(issued->pubkey_pem);
	memset(issued, 0, sizeof(*issued));
}

static int path_in(char *buf, size_t size, const char *dir, const char *file, struct ps_err *err)
{
	if (snprintf(buf, size, "%s/%s", dir, file) >= (int)size)
		return ps_fail(err, PS_EINVAL, "path too long: %s/%s", dir, file);
	return 0;
}

/* Read a passphrase file: its first line, without the newline. */
static int read_passphrase_file(const char *path, char **out, struct ps_err *err)
{
	size_t len = 0;
	int rc = ps_read_file(path, PS_PASSPHRASE_MAX, out, &len, err);

	if (rc < 0)
		return ps_prefix(err, rc, "passphrase file");
	(*out)[strcspn(*out, "\r\n")] = '\0';
	if ((*out)[0] == '\0') {
		ps_free_secret(*out, len);
		*out = NULL;
		return ps_fail(err, PS_EINVAL, "passphrase file %s is empty", path);
	}
	return 0;
}

int ps_ca_init(const struct ps_ca_init_opts *opts, struct ps_err *err)
{
	char key_path[PATH_MAX], cert_path[PATH_MAX];
	struct ps_cert_request req = {.profile = PS_PROFILE_DEVICE, .days = opts->days};
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	BIO *bio = NULL;
	char *pass = NULL;
	char *cert_pem = NULL;
	char *key_pem = NULL;
	size_t key_pem_len = 0;
	bool key_written = false;
	struct stat st;
	int rc;

	req.subject = opts->subject ? opts->subject : PS_DEFAULT_CA_SUBJECT;
	rc = path_in(key_path, sizeof(key_path), opts->dir, PS_CA_KEY_FILE, err);
	if (rc == 0)
		rc = path_in(cert_path, sizeof(cert_path), opts->dir, PS_CA_CERT_FILE, err);
	if (rc < 0)
		goto out;
	if (stat(key_path, &st) == 0 || stat(cert_path, &st) == 0) {
		rc = ps_fail(err, PS_EEXIST, "%s already holds a CA; refusing to overwrite it",
			     opts->dir);
		goto out;
	}
	if (opts->passphrase_file != NULL) {
		rc = read_passphrase_file(opts->passphrase_file, &pass, err);
		if (rc < 0)
			goto out;
	}
	rc = ps_key_generate(opts->key_type, &key, err);
	if (rc == 0)
		rc = make_cert(NULL, key, key, &req, true, &cert, err);
	if (rc == 0)
		rc = ps_cert_to_pem(cert, &cert_pem, err);
	if (rc < 0)
		goto out;
	bio = BIO_new(BIO_s_secmem());
	if (bio == NULL ||
	    !(pass ? PEM_write_bio_PKCS8PrivateKey(bio, key, EVP_aes_256_cbc(), pass,
						   (int)strlen(pass), NULL, NULL)
		   : PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL))) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "encoding the CA key failed");
		goto out;
	}
	rc = bio_to_string(bio, &key_pem, &key_pem_len, err);
	if (rc == 0)
		rc = ps_mkdir_p(opts->dir, 0700, err);
	if (rc == 0)
		rc = ps_write_file(key_path, key_pem, key_pem_len, 0600, PS_WRITE_EXCL, err);
	if (rc < 0)
		goto out;
	key_written = true;
	rc = ps_write_file(cert_path, cert_pem, strlen(cert_pem), 0644, PS_WRITE_EXCL, err);
out:
	if (rc < 0 && key_written)
		unlink(key_path); /* never leave a half-made CA behind */
	ps_free_secret_str(pass);
	ps_free_secret(key_pem, key_pem_len);
	free(cert_pem);
	BIO_free(bio);
	X509_free(cert);
	EVP_PKEY_free(key);
	return rc;
}

struct passphrase_ctx {
	const struct ps_passphrase_src *src;
	bool asked;
	bool missing;
	struct ps_err *err;
	int rc;
};

/* OpenSSL's pem_password_cb: called only when the key is encrypted. */
static int passphrase_cb(char *buf, int size, int rwflag, void *user)
{
	struct passphrase_ctx *ctx = user;
	char *pass = NULL;
	const char *env = getenv(PS_PASSPHRASE_ENV);
	int len = -1;

	ctx->asked = true;
	if (ctx->src != NULL && ctx->src->file != NULL) {
		ctx->rc = read_passphrase_file(ctx->src->file, &pass, ctx->err);
		if (ctx->rc < 0)
			goto out;
	} else if (env != NULL && *env != '\0') {
		if (ps_strdup(env, &pass, ctx->err) < 0)
			goto out;
	} else if (ctx->src != NULL && ctx->src->allow_prompt && isatty(STDIN_FILENO)) {
		pass = calloc(1, PS_PASSPHRASE_MAX);
		if (pass == NULL || EVP_read_pw_string_min(pass, 1, PS_PASSPHRASE_MAX - 1,
							   "Passphrase for the CA key: ", 0) != 0) {
			ctx->missing = true;
			goto out;
		}
	} else {
		ctx->missing = true;
		goto out;
	}
	len = (int)strlen(pass);
	if (len >= size) {
		len = -1;
		goto out;
	}
	memcpy(buf, pass, (size_t)len);
out:
	ps_free_secret_str(pass);
	return len;
}

int ps_ca_load(struct ps_ca *ca, const char *dir, bool want_key,
	       const struct ps_passphrase_src *pass, struct ps_err *err)
{
	char key_path[PATH_MAX], cert_path[PATH_MAX];
	struct passphrase_ctx pctx = {.src = pass, .err = err};
	char *cert_pem = NULL;
	char *key_pem = NULL;
	size_t cert_len = 0, key_len = 0;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	BIO *bio = NULL;
	struct stat st;
	int fd = -1;
	int rc;

	memset(ca, 0, sizeof(*ca));
	if (dir == NULL || *dir == '\0') {
		rc = ps_fail(err, PS_EINVAL, "no CA directory given (--ca-dir or [ca] dir)");
		goto out;
	}
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		rc = ps_fail(err, PS_ENOENT, "CA directory %s does not exist", dir);
		goto out;
	}
	rc = path_in(key_path, sizeof(key_path), dir, PS_CA_KEY_FILE, err);
	if (rc == 0)
		rc = path_in(cert_path, sizeof(cert_path), dir, PS_CA_CERT_FILE, err);
	if (rc < 0)
		goto out;
	rc = ps_read_file(cert_path, 1 << 20, &cert_pem, &cert_len, err);
	if (rc == PS_ENOENT) {
		rc = ps_fail(err, PS_ENOENT, "CA directory %s is incomplete: %s is missing", dir,
			     PS_CA_CERT_FILE);
		goto out;
	}
	if (rc == 0)
		rc = ps_cert_from_pem(cert_pem, cert_len, &ca->cert, err);
	if (rc < 0) {
		ps_prefix(err, rc, "%s", cert_path);
		goto out;
	}
	if (X509_check_ca(ca->cert) != 1) {
		rc = ps_fail(err, PS_EINVAL, "%s is not a CA certificate", cert_path);
		goto out;
	}
	if (!X509_digest(ca->cert, EVP_sha256(), md, &md_len)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "fingerprinting %s failed", cert_path);
		goto out;
	}
	ps_hex(md, md_len, ca->fingerprint);
	X509_NAME_oneline(X509_get_subject_name(ca->cert), ca->subject, sizeof(ca->subject));
	ca->not_after = asn1_to_time(X509_get0_notAfter(ca->cert));
	if (!want_key)
		goto out;

	fd = open(key_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = ps_fail(err, PS_ENOENT, "CA directory %s is incomplete: %s: %s", dir,
			     PS_CA_KEY_FILE, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) != 0 || (st.st_mode & 077) != 0) {
		rc = ps_fail(err, PS_EPERM,
			     "CA key %s is readable by group or others (mode %04o); "
			     "run chmod 600 %s",
			     key_path, (unsigned)(st.st_mode & 07777), key_path);
		goto out;
	}
	rc = ps_read_file(key_path, 1 << 20, &key_pem, &key_len, err);
	if (rc < 0)
		goto out;
	ca->key = decode_private_key(key_pem, key_len,
				     EVP_PKEY_get0_type_name(X509_get0_pubkey(ca->cert)),
				     passphrase_cb, &pctx);
	if (ca->key == NULL) {
		if (pctx.rc < 0)
			rc = pctx.rc;
		else if (pctx.missing)
			rc = ps_fail(err, PS_EPERM,
				     "CA key %s is encrypted: give its passphrase with "
				     "--passphrase-file, [ca] passphrase_file or %s",
				     key_path, PS_PASSPHRASE_ENV);
		else if (pctx.asked)
			rc = ps_fail(err, PS_EPERM, "wrong passphrase for CA key %s", key_path);
		else
			rc = ps_fail_ssl(err, PS_EINVAL, "CA key %s is not a PEM private key",
					 key_path);
		ERR_clear_error();
		goto out;
	}
	if (X509_check_private_key(ca->cert, ca->key) != 1) {
		rc =
		    ps_fail(err, PS_EINVAL, "CA key %s does not belong to %s", key_path, cert_path);
		ERR_clear_error();
		goto out;
	}
	if (ca->not_after <= ps_now()) {
		rc = ps_fail(err, PS_EINVAL, "CA certificate %s has expired", cert_path);
		goto out;
	}
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	BIO_free(bio);
	ps_free_secret(key_pem, key_len);
	free(cert_pem);
	if (rc < 0)
		ps_ca_free(ca);
	return rc;
}

void ps_ca_free(struct ps_ca *ca)
{
	if (ca == NULL)
		return;
	X509_free(ca->cert);
	EVP_PKEY_free(ca->key);
	memset(ca, 0, sizeof(*ca));
}

int ps_cert_verify(struct ps_ca *ca, X509 *cert, int purpose, struct ps_err *err)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	int rc = 0;

	if (store == NULL || ctx == NULL || !X509_STORE_add_cert(store, ca->cert) ||
	    !X509_STORE_CTX_init(ctx, store, cert, NULL)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "setting up certificate verification failed");
		goto out;
	}
	X509_STORE_CTX_set_purpose(ctx, purpose);
	X509_STORE_CTX_set_time(ctx, 0, ps_now());
	if (X509_verify_cert(ctx) != 1) {
		rc = ps_fail(err, PS_ECRYPTO, "certificate does not verify against the CA: %s",
			     X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
		ERR_clear_error();
	}
out:
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	return rc;
}

static const struct {
	const char *name;
	int reason;
} crl_reasons[] = {
    {"unspecified", CRL_REASON_UNSPECIFIED},
    {"keyCompromise", CRL_REASON_KEY_COMPROMISE},
    {"cACompromise", CRL_REASON_CA_COMPROMISE},
    {"affiliationChanged", CRL_REASON_AFFILIATION_CHANGED},
    {"superseded", CRL_REASON_SUPERSEDED},
    {"cessationOfOperation", CRL_REASON_CESSATION_OF_OPERATION},
    {"certificateHold", CRL_REASON_CERTIFICATE_HOLD},
    {"privilegeWithdrawn", CRL_REASON_PRIVILEGE_WITHDRAWN},
    {"aACompromise", CRL_REASON_AA_COMPROMISE},
};

int ps_crl_reason_parse(const char *name, int *reason, struct ps_err *err)
{
	size_t i;

	for (i = 0; i < PS_ARRAY_SIZE(crl_reasons); i++) {
		if (strcasecmp(name, crl_reasons[i].name) == 0) {
			*reason = crl_reasons[i].reason;
			return 0;
		}
	}
	return ps_fail(err, PS_EINVAL,
		       "unknown revocation reason '%s' (use unspecified, keyCompromise, "
		       "cACompromise, affiliationChanged, superseded, cessationOfOperation, "
		       "certificateHold, privilegeWithdrawn or aACompromise)",
		       name);
}

const char *ps_crl_reason_name(int reason)
{
	size_t i;

	for (i = 0; i < PS_ARRAY_SIZE(crl_reasons); i++)
		if (crl_reasons[i].reason == reason)
			return crl_reasons[i].name;
	return "unspecified";
}

static int add_revoked(X509_CRL *crl, const struct ps_revoked *entry, struct ps_err *err)
{
	X509_REVOKED *rev = X509_REVOKED_new();
	ASN1_INTEGER *serial = NULL;
	ASN1_TIME *when = NULL;
	ASN1_ENUMERATED *reason = NULL;
	BIGNUM *bn = NULL;
	int rc = 0;

	if (rev == NULL || (size_t)BN_hex2bn(&bn, entry->serial_hex) != strlen(entry->serial_hex) ||
	    entry->serial_hex[0] == '\0') {
		rc = ps_fail(err, PS_EINVAL, "bad certificate serial '%s'", entry->serial_hex);
		goto out;
	}
	serial = BN_to_ASN1_INTEGER(bn, NULL);
	when = ASN1_TIME_set(NULL, entry->revoked_at);
	if (serial == NULL || when == NULL || !X509_REVOKED_set_serialNumber(rev, serial) ||
	    !X509_REVOKED_set_revocationDate(rev, when)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "building a CRL entry failed");
		goto out;
	}
	if (entry->reason != CRL_REASON_UNSPECIFIED) {
		reason = ASN1_ENUMERATED_new();
		if (reason == NULL || !ASN1_ENUMERATED_set(reason, entry->reason) ||
		    !X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, reason, 0, 0)) {
			rc = ps_fail_ssl(err, PS_ECRYPTO, "adding a CRL reason failed");
			goto out;
		}
	}
	if (!X509_CRL_add0_revoked(crl, rev)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "adding a CRL entry failed");
		goto out;
	}
	rev = NULL;
out:
	ASN1_ENUMERATED_free(reason);
	ASN1_TIME_free(when);
	ASN1_INTEGER_free(serial);
	BN_free(bn);
	X509_REVOKED_free(rev);
	return rc;
}

int ps_crl_make(struct ps_ca *ca, const struct ps_revoked *entries, size_t n, long crl_number,
		long days, char **pem_out, struct ps_err *err)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *last = NULL, *next = NULL;
	ASN1_INTEGER *number = NULL;
	X509_EXTENSION *aki = NULL;
	X509V3_CTX ctx;
	BIO *bio = NULL;
	time_t now = ps_now();
	size_t i;
	int rc = 0;

	*pem_out = NULL;
	if (ca->key == NULL) {
		rc = ps_fail(err, PS_EINVAL, "the CA was loaded without its private key");
		goto out;
	}
	if (days < 1 || days > 3650) {
		rc = ps_fail(err, PS_EINVAL, "CRL validity of %ld days is out of range (1..3650)",
			     days);
		goto out;
	}
	last = ASN1_TIME_set(NULL, now);
	next = ASN1_TIME_adj(NULL, now, (int)days, 0);
	number = ASN1_INTEGER_new();
	if (crl == NULL || last == NULL || next == NULL || number == NULL ||
	    !X509_CRL_set_version(crl, X509_CRL_VERSION_2) ||
	    !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca->cert)) ||
	    !X509_CRL_set1_lastUpdate(crl, last) || !X509_CRL_set1_nextUpdate(crl, next) ||
	    !ASN1_INTEGER_set(number, crl_number) ||
	    !X509_CRL_add1_ext_i2d(crl, NID_crl_number, number, 0, 0)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "building the CRL failed");
		goto out;
	}
	X509V3_set_ctx(&ctx, ca->cert, NULL, NULL, crl, 0);
	aki = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
	if (aki == NULL || !X509_CRL_add_ext(crl, aki, -1)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "adding the CRL's authority key id failed");
		goto out;
	}
	for (i = 0; i < n && rc == 0; i++)
		rc = add_revoked(crl, &entries[i], err);
	if (rc < 0)
		goto out;
	if (!X509_CRL_sort(crl) || X509_CRL_sign(crl, ca->key, digest_for(ca->key)) <= 0) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "signing the CRL failed");
		goto out;
	}
	bio = BIO_new(BIO_s_mem());
	if (bio == NULL || !PEM_write_bio_X509_CRL(bio, crl)) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "encoding the CRL failed");
		goto out;
	}
	rc = bio_to_string(bio, pem_out, NULL, err);
out:
	BIO_free(bio);
	X509_EXTENSION_free(aki);
	ASN1_INTEGER_free(number);
	ASN1_TIME_free(next);
	ASN1_TIME_free(last);
	X509_CRL_free(crl);
	return rc;
}
