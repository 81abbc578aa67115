/* util.h — small helpers shared by the core library: the injectable clock, whole-file reads
 * and durable writes on the station's own filesystem, hex and SHA-256, text validation. */
#ifndef PS_UTIL_H
#define PS_UTIL_H

#include "err.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#define PS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* The station's clock. PROVSTATION_NOW (seconds since the epoch) pins it for tests. */
time_t ps_now(void);

/* Read a whole file (at most max bytes) into a NUL-terminated malloc'd buffer. */
int ps_read_file(const char *path, size_t max, char **out, size_t *out_len, struct ps_err *err);

/* Flags for ps_write_file. */
enum {
	PS_WRITE_EXCL = 1, /* refuse when the file exists */
};

/* Write a file durably: temporary file with mode, fsync, rename over path, fsync directory. */
int ps_write_file(const char *path, const void *buf, size_t len, mode_t mode, int flags,
		  struct ps_err *err);

/* The last component of path ("/srv/g.img" gives "g.img"); path itself when it has no slash or
 * ends with one. */
const char *ps_base_name(const char *path);

/* The directory that holds path: "db/audit.db" gives "db", "/audit.db" "/", "audit.db" ".".
 * Returns 0, or -1 when it does not fit in len. */
int ps_parent_dir(const char *path, char *out, size_t len);

/* The path of a file named name in the directory that holds path ("db/audit.db", "x" gives
 * "db/x"; "audit.db" gives "x"). Returns 0, or -1 when it does not fit in len. */
int ps_sibling_path(const char *path, const char *name, char *out, size_t len);

/* Create a directory and its parents (mode for the ones created). */
int ps_mkdir_p(const char *path, mode_t mode, struct ps_err *err);

/* Wipe and free a buffer that held a secret; NULL is fine. */
void ps_free_secret(void *buf, size_t len);
/* Wipe and free a NUL-terminated secret string. */
void ps_free_secret_str(char *s);

/* Lower-case hex of len bytes into out (2*len+1 bytes). */
void ps_hex(const unsigned char *bytes, size_t len, char *out);

/* SHA-256 of data as 64 lower-case hex digits plus NUL. */
int ps_sha256_hex(const void *data, size_t len, char out[65], struct ps_err *err);

/* Check a printable one-line value: non-empty, at most max_len bytes, no control characters,
 * valid UTF-8. `what` names it in the error ("serial", "commonName"). */
int ps_check_text(const char *what, const char *s, size_t max_len, struct ps_err *err);

/* Length of the UTF-8 sequence at s (RFC 3629: no overlong forms, surrogates or code points
 * above U+10FFFF), or 0 when it is not valid UTF-8. */
size_t ps_utf8_len(const unsigned char *s);

/* Format a time as RFC 3339 UTC ("2026-11-23T11:07:36Z") into out (at least 21 bytes). */
void ps_format_time(time_t t, char out[32]);

/* Parse RFC 3339 UTC ("2026-11-23T11:07:36Z" or "2026-11-23") into t. */
int ps_parse_time(const char *s, time_t *t, struct ps_err *err);

/* strdup that reports failure through err. */
int ps_strdup(const char *s, char **out, struct ps_err *err);

/* Parse a decimal integer in [min, max]; `what` names it in the error. */
int ps_parse_int(const char *what, const char *s, long min, long max, long *out,
		 struct ps_err *err);

#endif
