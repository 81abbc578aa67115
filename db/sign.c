/* sign.c — detached signatures over audit exports with the station key (see sign.h). */
#include "sign.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK 65536

/* Never prompt: an encrypted station key is refused with a message instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *user)
{
	*(int *)user = 1;
	return -1;
}

static int load_key(const char *key_path, EVP_PKEY **out, struct ps_err *err)
{
	struct stat st;
	char *pem = NULL;
	size_t len = 0;
	BIO *bio = NULL;
	int asked = 0, fd, rc;

	fd = open(key_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ps_fail(err, errno == ENOENT ? PS_ENOENT : PS_EIO, "station key %s: %s",
			       key_path, strerror(errno));
	rc = fstat(fd, &st);
	close(fd);
	if (rc != 0 || (st.st_mode & 077) != 0)
		return ps_fail(err, PS_EPERM,
			       "station key %s is readable by group or others (mode %04o); run "
			       "chmod 600 %s",
			       key_path, (unsigned)(st.st_mode & 07777), key_path);
	rc = ps_read_file(key_path, 1 << 20, &pem, &len, err);
	if (rc < 0)
		return rc;
	bio = BIO_new_mem_buf(pem, (int)len);
	*out = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, &asked) : NULL;
	if (*out == NULL) {
		if (asked)
			rc = ps_fail(err, PS_EPERM,
				     "station key %s is encrypted; provstation signs with an "
				     "unencrypted key kept with mode 0600",
				     key_path);
		else
			rc = ps_fail_ssl(err, PS_EINVAL, "station key %s is not a PEM private key",
					 key_path);
	}
	BIO_free(bio);
	ps_free_secret(pem, len);
	return rc;
}

/* The NIST name of the curves most keys use ("P-256"), else OpenSSL's. */
static const char *nist_name(const char *group)
{
	if (strcmp(group, "prime256v1") == 0)
		return "P-256";
	if (strcmp(group, "secp384r1") == 0)
		return "P-384";
	if (strcmp(group, "secp521r1") == 0)
		return "P-521";
	return group;
}

static int describe(EVP_PKEY *key, const EVP_MD **md, struct ps_signature_info *info,
		    struct ps_err *err)
{
	unsigned char *der = NULL;
	char group[64] = "";
	int der_len, rc;

	switch (EVP_PKEY_get_base_id(key)) {
	case EVP_PKEY_EC:
		EVP_PKEY_get_group_name(key, group, sizeof(group), NULL);
		snprintf(info->algorithm, sizeof(info->algorithm), "ECDSA %s with SHA-256",
			 nist_name(group));
		*md = EVP_sha256();
		break;
	case EVP_PKEY_RSA:
		snprintf(info->algorithm, sizeof(info->algorithm), "RSA PKCS#1 v1.5 with SHA-256");
		*md = EVP_sha256();
		break;
	case EVP_PKEY_ED25519:
		snprintf(info->algorithm, sizeof(info->algorithm), "Ed25519");
		*md = NULL;
		break;
	default:
		return ps_fail(err, PS_EINVAL,
			       "station key type %s cannot sign exports (use EC, Ed25519 or RSA)",
			       EVP_PKEY_get0_type_name(key));
	}
	der_len = i2d_PUBKEY(key, &der);
	if (der_len <= 0)
		return ps_fail_ssl(err, PS_ECRYPTO, "encoding the station's public key failed");
	rc = ps_sha256_hex(der, (size_t)der_len, info->key_sha256, err);
	OPENSSL_free(der);
	return rc;
}

/* Digest-then-sign, reading the file in chunks (EC, RSA). */
static int sign_stream(EVP_MD_CTX *mctx, int fd, const char *path, unsigned char **sig,
		       size_t *sig_len, struct ps_err *err)
{
	unsigned char *buf = malloc(CHUNK);
	ssize_t n;
	int rc = 0;

	if (buf == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	while ((n = read(fd, buf, CHUNK)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = ps_fail(err, PS_EIO, "%s: read error: %s", path, strerror(errno));
			goto out;
		}
		if (EVP_DigestSignUpdate(mctx, buf, (size_t)n) != 1) {
			rc = ps_fail_ssl(err, PS_ECRYPTO, "signing %s failed", path);
			goto out;
		}
	}
	if (EVP_DigestSignFinal(mctx, NULL, sig_len) != 1 || (*sig = malloc(*sig_len)) == NULL ||
	    EVP_DigestSignFinal(mctx, *sig, sig_len) != 1)
		rc = ps_fail_ssl(err, PS_ECRYPTO, "signing %s failed", path);
out:
	free(buf);
	return rc;
}

/* Ed25519 signs the message itself, in one piece: the file is mapped, not read into memory. */
static int sign_whole(EVP_MD_CTX *mctx, int fd, const char *path, unsigned char **sig,
		      size_t *sig_len, struct ps_err *err)
{
	static const unsigned char empty[1];
	const unsigned char *data = empty;
	void *map = MAP_FAILED;
	struct stat st;
	int rc = 0;

	if (fstat(fd, &st) != 0)
		return ps_fail(err, PS_EIO, "%s: %s", path, strerror(errno));
	if (st.st_size > 0) {
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED)
			return ps_fail(err, PS_EIO, "%s: cannot map it: %s", path, strerror(errno));
		data = map;
	}
	if (EVP_DigestSign(mctx, NULL, sig_len, data, (size_t)st.st_size) != 1 ||
	    (*sig = malloc(*sig_len)) == NULL ||
	    EVP_DigestSign(mctx, *sig, sig_len, data, (size_t)st.st_size) != 1)
		rc = ps_fail_ssl(err, PS_ECRYPTO, "signing %s failed", path);
	if (map != MAP_FAILED)
		munmap(map, (size_t)st.st_size);
	return rc;
}

int ps_sign_check_key(const char *key_path, struct ps_err *err)
{
	struct ps_signature_info info;
	const EVP_MD *md = NULL;
	EVP_PKEY *key = NULL;
	int rc = load_key(key_path, &key, err);

	if (rc == 0)
		rc = describe(key, &md, &info, err);
	EVP_PKEY_free(key);
	return rc;
}

int ps_sign_file(const char *path, const char *key_path, const char *sig_path,
		 struct ps_signature_info *info, struct ps_err *err)
{
	EVP_PKEY *key = NULL;
	EVP_MD_CTX *mctx = NULL;
	const EVP_MD *md = NULL;
	unsigned char *sig = NULL;
	size_t sig_len = 0;
	int fd = -1, rc;

	memset(info, 0, sizeof(*info));
	rc = load_key(key_path, &key, err);
	if (rc == 0)
		rc = describe(key, &md, info, err);
	if (rc < 0)
		goto out;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = ps_fail(err, PS_EIO, "%s: %s", path, strerror(errno));
		goto out;
	}
	mctx = EVP_MD_CTX_new();
	if (mctx == NULL || EVP_DigestSignInit(mctx, NULL, md, NULL, key) != 1) {
		rc = ps_fail_ssl(err, PS_ECRYPTO, "cannot sign with station key %s", key_path);
		goto out;
	}
	if (md != NULL)
		rc = sign_stream(mctx, fd, path, &sig, &sig_len, err);
	else
		rc = sign_whole(mctx, fd, path, &sig, &sig_len, err);
	if (rc == 0)
		rc = ps_write_file(sig_path, sig, sig_len, 0644, 0, err);
	if (rc == 0)
		info->length = sig_len;
out:
	if (fd >= 0)
		close(fd);
	free(sig);
	EVP_MD_CTX_free(mctx);
	EVP_PKEY_free(key);
	return rc;
}
