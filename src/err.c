/* err.c — formatting of the operator-facing error messages (see err.h). */
#include "err.h"

#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void format_into(struct ps_err *err, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void format_into(struct ps_err *err, const char *fmt, va_list ap)
{
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
}

int ps_fail(struct ps_err *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return code;
	va_start(ap, fmt);
	format_into(err, fmt, ap);
	va_end(ap);
	return code;
}

int ps_fail_ssl(struct ps_err *err, int code, const char *fmt, ...)
{
	unsigned long e = ERR_peek_last_error();
	char reason[256] = "";
	va_list ap;

	if (e != 0)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	if (err == NULL)
		return code;
	va_start(ap, fmt);
	format_into(err, fmt, ap);
	va_end(ap);
	if (reason[0] != '\0') {
		size_t used = strlen(err->msg);
		const char *why = ERR_reason_error_string(e);

		snprintf(err->msg + used, sizeof(err->msg) - used, " (%s)", why ? why : reason);
	}
	return code;
}

int ps_prefix(struct ps_err *err, int code, const char *fmt, ...)
{
	char tail[sizeof(err->msg)];
	va_list ap;
	int n;

	if (err == NULL)
		return code;
	memcpy(tail, err->msg, sizeof(tail));
	va_start(ap, fmt);
	n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof(err->msg))
		snprintf(err->msg + n, sizeof(err->msg) - (size_t)n, ": %s", tail);
	return code;
}

const char *ps_strstatus(int code)
{
	switch (code) {
	case PS_OK:
		return "ok";
	case PS_EINVAL:
		return "bad input";
	case PS_EIO:
		return "I/O error";
	case PS_ECRYPTO:
		return "crypto error";
	case PS_EDB:
		return "database error";
	case PS_ENOENT:
		return "not found";
	case PS_EEXIST:
		return "already exists";
	case PS_EPERM:
		return "permission error";
	case PS_EBUSY:
		return "busy";
	case PS_ENOMEM:
		return "out of memory";
	case PS_ECONFLICT:
		return "conflict";
	case PS_EUNSAFE:
		return "refused by the safety gate";
	case PS_ENET:
		return "network error";
	default:
		return "error";
	}
}
