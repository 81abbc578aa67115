/* sign.h — detached signatures over audit exports with the station's own key, in the form an
 * auditor checks with plain openssl (see the README: `openssl dgst -sha256 -verify` for EC and
 * RSA keys, `openssl pkeyutl -verify -rawin` for Ed25519). */
#ifndef PS_SIGN_H
#define PS_SIGN_H

#include "err.h"

#include <stddef.h>

struct ps_signature_info {
	char algorithm[64];  /* "ECDSA P-256 with SHA-256", "Ed25519", ... */
	char key_sha256[65]; /* SHA-256 of the signing key's SubjectPublicKeyInfo (DER), hex */
	size_t length;	     /* bytes of signature written */
};

/* Load the key and check that it can sign exports, before anything is written. */
int ps_sign_check_key(const char *key_path, struct ps_err *err);

/* Sign the bytes of the file at path with the private key in key_path (PEM, unencrypted, not
 * readable by group or others) and write the signature to sig_path (replacing it): DER ECDSA
 * or PKCS#1 v1.5 RSA over SHA-256, streamed; pure Ed25519 over the whole file. */
int ps_sign_file(const char *path, const char *key_path, const char *sig_path,
		 struct ps_signature_info *info, struct ps_err *err);

#endif
