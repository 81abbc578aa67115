/* err.h — the one error convention of provstation.
 *
 * Every fallible function returns 0 on success or a negative PS_E* status, and takes an
 * optional `struct ps_err *` that receives a one-line message for the operator naming what is
 * wrong. Library code never exits and never prints; only main() turns a status into output. */
#ifndef PS_ERR_H
#define PS_ERR_H

#include <stddef.h>

enum ps_status {
	PS_OK = 0,
	PS_EINVAL = -1,	    /* bad input: argument, file content, configuration */
	PS_EIO = -2,	    /* reading or writing a file, disk or image failed */
	PS_ECRYPTO = -3,    /* key, certificate or signature operation failed */
	PS_EDB = -4,	    /* the audit database refused */
	PS_ENOENT = -5,	    /* something named does not exist */
	PS_EEXIST = -6,	    /* refusing to overwrite */
	PS_EPERM = -7,	    /* permissions or file modes are wrong */
	PS_EBUSY = -8,	    /* locked by someone else */
	PS_ENOMEM = -9,	    /* out of memory */
	PS_ECONFLICT = -10, /* configuration conflict (mender.conf keys, server state) */
	PS_EUNSAFE = -11,   /* the safety gate refused a target */
	PS_ENET = -12,	    /* network or server failure, worth retrying */
};

struct ps_err {
	char msg[1024];
};

/* Fill err (when not NULL) with a formatted message and return code. */
int ps_fail(struct ps_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like ps_fail, and append the innermost OpenSSL error reason; clears OpenSSL's queue. */
int ps_fail_ssl(struct ps_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepend "what: " to an existing message (for adding context while propagating). */
int ps_prefix(struct ps_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A short name for a status, for logs ("bad input", "I/O error", ...). */
const char *ps_strstatus(int code);

#endif
