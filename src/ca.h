/* ca.h — the station's PKI: key generation, the offline CA (create, load with its key
 * protected), device and server certificates with a correct X.509 v3 profile, CRLs. */
#ifndef PS_CA_H
#define PS_CA_H

#include "err.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <time.h>

#define PS_CA_KEY_FILE	  "ca-private.key"
#define PS_CA_CERT_FILE	  "ca-cert.pem"
#define PS_CN_MAX	  64 /* RFC 5280 ub-common-name */
#define PS_PASSPHRASE_ENV "PROVSTATION_CA_PASSPHRASE"

enum ps_key_type {
	PS_KEY_P256,
	PS_KEY_P384,
	PS_KEY_ED25519,
	PS_KEY_RSA3072,
};

int ps_key_type_parse(const char *name, enum ps_key_type *out, struct ps_err *err);
const char *ps_key_type_name(enum ps_key_type type);
int ps_key_generate(enum ps_key_type type, EVP_PKEY **out, struct ps_err *err);

/* Where the CA key's passphrase comes from, tried in this order: a file, the environment
 * variable PROVSTATION_CA_PASSPHRASE, a prompt without echo when allow_prompt and a terminal. */
struct ps_passphrase_src {
	const char *file;
	bool allow_prompt;
};

/* A loaded CA. The private key is loaded only when needed (ps_ca_load with want_key). */
struct ps_ca {
	X509 *cert;
	EVP_PKEY *key;	      /* NULL when loaded without the key */
	char fingerprint[65]; /* SHA-256 of the certificate (DER), hex */
	char subject[256];    /* one-line subject, for display */
	time_t not_after;
};

struct ps_ca_init_opts {
	const char *dir;
	enum ps_key_type key_type;
	const char *subject; /* "/CN=.../O=..."; NULL for the default */
	long days;
	const char *passphrase_file; /* NULL: the key is written unencrypted */
};

int ps_ca_init(const struct ps_ca_init_opts *opts, struct ps_err *err);
int ps_ca_load(struct ps_ca *ca, const char *dir, bool want_key,
	       const struct ps_passphrase_src *pass, struct ps_err *err);
/* Release the CA; its private key is wiped by OpenSSL as it is freed. */
void ps_ca_free(struct ps_ca *ca);

enum ps_cert_profile {
	PS_PROFILE_DEVICE, /* clientAuth, digitalSignature */
	PS_PROFILE_SERVER, /* serverAuth, digitalSignature (+ keyEncipherment for RSA), SAN */
};

struct ps_cert_request {
	enum ps_cert_profile profile;
	const char *common_name;
	const char *subject; /* extra subject fields "/O=.../OU=...", may be NULL */
	long days;
	const char *const *dns_names; /* server profile: SAN DNS names */
	size_t n_dns;
	const char *const *ip_addrs; /* server profile: SAN IP addresses */
	size_t n_ips;
};

/* A freshly issued identity. key_pem holds the private key and is wiped by ps_issued_free. */
struct ps_issued {
	EVP_PKEY *key;
	X509 *cert;
	char *key_pem;
	size_t key_pem_len;
	char *cert_pem;
	char *pubkey_pem;	/* SPKI, "BEGIN PUBLIC KEY" */
	char pubkey_sha256[65]; /* SHA-256 of the SPKI DER, hex */
	char serial_hex[80];	/* certificate serial, lower-case hex */
	char common_name[PS_CN_MAX + 1];
	time_t not_before, not_after;
};

/* Generate a key of type and a certificate for it signed by the CA (which must hold its key). */
int ps_issue(struct ps_ca *ca, const struct ps_cert_request *req, enum ps_key_type type,
	     struct ps_issued *out, struct ps_err *err);
void ps_issued_free(struct ps_issued *issued);

/* Validate a certificate commonName (non-empty, at most 64 bytes, no control characters). */
int ps_check_common_name(const char *cn, struct ps_err *err);
/* Parse "/K=V/K=V" into name (appending); CN allowed only when allow_cn. */
int ps_subject_parse(const char *subject, X509_NAME *name, bool allow_cn, struct ps_err *err);

/* PEM helpers. */
int ps_cert_to_pem(X509 *cert, char **out, struct ps_err *err);
/* The certificate's public key as SPKI PEM ("BEGIN PUBLIC KEY") and the SHA-256 of its DER. */
int ps_cert_pubkey_pem(X509 *cert, char **out, struct ps_err *err);
int ps_cert_pubkey_sha256(X509 *cert, char out[65], struct ps_err *err);
int ps_cert_serial_hex(X509 *cert, char *out, size_t out_len, struct ps_err *err);
int ps_cert_from_pem(const char *pem, size_t len, X509 **out, struct ps_err *err);
/* keytype ("EC", "ED25519", "RSA") narrows the decoding; NULL accepts any. */
int ps_key_from_pem(const char *pem, size_t len, const char *keytype, EVP_PKEY **out,
		    struct ps_err *err);

/* Check that cert chains to the CA and is valid for purpose (X509_PURPOSE_SSL_CLIENT ...)
 * at the station's time. */
int ps_cert_verify(struct ps_ca *ca, X509 *cert, int purpose, struct ps_err *err);

/* One entry of a CRL. */
struct ps_revoked {
	const char *serial_hex;
	time_t revoked_at;
	int reason; /* CRL_REASON_* from <openssl/x509v3.h> */
};

/* A v2 CRL signed by the CA, with reason codes, CRL number and next update, as PEM. */
int ps_crl_make(struct ps_ca *ca, const struct ps_revoked *entries, size_t n, long crl_number,
		long days, char **pem_out, struct ps_err *err);

/* RFC 5280 reason names ("keyCompromise", ...) to CRL_REASON_* and back. */
int ps_crl_reason_parse(const char *name, int *reason, struct ps_err *err);
const char *ps_crl_reason_name(int reason);

#endif
