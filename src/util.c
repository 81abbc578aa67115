/* util.c — small helpers shared by the core library (see util.h). */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

time_t ps_now(void)
{
	const char *pinned = getenv("PROVSTATION_NOW");

	if (pinned != NULL && *pinned != '\0') {
		char *end = NULL;
		long long v = strtoll(pinned, &end, 10);

		if (end != pinned && *end == '\0' && v >= 0)
			return (time_t)v;
	}
	return time(NULL);
}

int ps_read_file(const char *path, size_t max, char **out, size_t *out_len, struct ps_err *err)
{
	int fd = -1;
	char *buf = NULL;
	size_t len = 0;
	struct stat st;
	int rc;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = ps_fail(err, errno == ENOENT ? PS_ENOENT : PS_EIO, "%s: %s", path,
			     strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		rc = ps_fail(err, PS_EINVAL, "%s: not a regular file", path);
		goto out;
	}
	if ((size_t)st.st_size > max) {
		rc = ps_fail(err, PS_EINVAL, "%s: larger than %zu bytes", path, max);
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "%s: out of memory", path);
		goto out;
	}
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = ps_fail(err, PS_EIO, "%s: %s", path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	*out = buf;
	buf = NULL;
	if (out_len != NULL)
		*out_len = len;
	rc = 0;
out:
	if (buf != NULL)
		ps_free_secret(buf, (size_t)st.st_size + 1);
	if (fd >= 0)
		close(fd);
	return rc;
}

int ps_sibling_path(const char *path, const char *name, char *out, size_t len)
{
	const char *slash = strrchr(path, '/');
	int dir_len = slash == NULL ? 0 : (int)(slash - path) + 1;
	int n = snprintf(out, len, "%.*s%s", dir_len, path, name);

	return n < 0 || (size_t)n >= len ? -1 : 0;
}

const char *ps_base_name(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash != NULL && slash[1] != '\0' ? slash + 1 : path;
}

int ps_parent_dir(const char *path, char *out, size_t len)
{
	const char *slash = strrchr(path, '/');
	int n;

	if (slash == NULL)
		n = snprintf(out, len, ".");
	else if (slash == path)
		n = snprintf(out, len, "/");
	else
		n = snprintf(out, len, "%.*s", (int)(slash - path), path);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

static int fsync_parent_dir(const char *path)
{
	char dir[PATH_MAX];
	int fd, rc;

	if (ps_parent_dir(path, dir, sizeof(dir)) < 0)
		return -1;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

int ps_write_file(const char *path, const void *buf, size_t len, mode_t mode, int flags,
		  struct ps_err *err)
{
	char tmp[PATH_MAX];
	int fd = -1;
	size_t done = 0;
	int rc;
	bool tmp_made = false;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp)) {
		rc = ps_fail(err, PS_EINVAL, "%s: path too long", path);
		goto out;
	}
	if ((flags & PS_WRITE_EXCL) && access(path, F_OK) == 0) {
		rc = ps_fail(err, PS_EEXIST, "%s already exists; refusing to overwrite it", path);
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0) {
		rc = ps_fail(err, PS_EIO, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	tmp_made = true;
	if (fchmod(fd, mode) != 0) {
		rc = ps_fail(err, PS_EIO, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	while (done < len) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = ps_fail(err, PS_EIO, "%s: %s", tmp, strerror(errno));
			goto out;
		}
		done += (size_t)n;
	}
	if (fsync(fd) != 0) {
		rc = ps_fail(err, PS_EIO, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	close(fd);
	fd = -1;
	if (flags & PS_WRITE_EXCL) {
		/* link() fails when path exists, closing the race between access() and now. */
		if (link(tmp, path) != 0) {
			rc = ps_fail(err, errno == EEXIST ? PS_EEXIST : PS_EIO, "%s: %s", path,
				     errno == EEXIST ? "already exists; refusing to overwrite it"
						     : strerror(errno));
			goto out;
		}
	} else if (rename(tmp, path) != 0) {
		rc = ps_fail(err, PS_EIO, "%s: %s", path, strerror(errno));
		goto out;
	} else {
		tmp_made = false;
	}
	if (fsync_parent_dir(path) != 0) {
		rc = ps_fail(err, PS_EIO, "%s: syncing its directory: %s", path, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	if (tmp_made)
		unlink(tmp);
	return rc;
}

int ps_mkdir_p(const char *path, mode_t mode, struct ps_err *err)
{
	char buf[PATH_MAX];
	size_t i, len;

	len = strlen(path);
	if (len == 0 || len >= sizeof(buf))
		return ps_fail(err, PS_EINVAL, "bad directory path '%s'", path);
	memcpy(buf, path, len + 1);
	for (i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		buf[i] = '\0';
		if (mkdir(buf, mode) != 0 && errno != EEXIST)
			return ps_fail(err, PS_EIO, "%s: %s", buf, strerror(errno));
		if (i < len)
			buf[i] = '/';
	}
	return 0;
}

void ps_free_secret(void *buf, size_t len)
{
	if (buf == NULL)
		return;
	OPENSSL_cleanse(buf, len);
	free(buf);
}

void ps_free_secret_str(char *s)
{
	if (s != NULL)
		ps_free_secret(s, strlen(s));
}

void ps_hex(const unsigned char *bytes, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < len; i++) {
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 0xf];
	}
	out[2 * len] = '\0';
}

int ps_sha256_hex(const void *data, size_t len, char out[65], struct ps_err *err)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;

	if (EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != 32)
		return ps_fail_ssl(err, PS_ECRYPTO, "SHA-256 failed");
	ps_hex(md, md_len, out);
	return 0;
}

size_t ps_utf8_len(const unsigned char *s)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n, i;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4;
	else
		return 0;
	/* No overlong forms, no surrogates, nothing above U+10FFFF (RFC 3629), as jansson. */
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

int ps_check_text(const char *what, const char *s, size_t max_len, struct ps_err *err)
{
	const unsigned char *p;
	size_t len;

	if (s == NULL || *s == '\0')
		return ps_fail(err, PS_EINVAL, "%s is empty", what);
	len = strlen(s);
	if (len > max_len)
		return ps_fail(err, PS_EINVAL, "%s is %zu bytes long, more than %zu", what, len,
			       max_len);
	for (p = (const unsigned char *)s; *p != '\0';) {
		size_t n;

		if (*p < 0x20 || *p == 0x7f)
			return ps_fail(err, PS_EINVAL,
				       "%s holds a control character (0x%02x) at byte %zu", what,
				       *p, (size_t)(p - (const unsigned char *)s));
		n = ps_utf8_len(p);
		if (n == 0)
			return ps_fail(err, PS_EINVAL, "%s is not valid UTF-8 at byte %zu", what,
				       (size_t)(p - (const unsigned char *)s));
		/* C1 controls (U+0080..U+009F) and the Unicode line and paragraph separators. */
		if ((n == 2 && p[0] == 0xc2 && p[1] < 0xa0) ||
		    (n == 3 && p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9)))
			return ps_fail(err, PS_EINVAL,
				       "%s holds a control character (U+%04X) at byte %zu", what,
				       n == 2 ? p[1] : 0x2000u | (p[2] & 0x3fu),
				       (size_t)(p - (const unsigned char *)s));
		p += n;
	}
	return 0;
}

void ps_format_time(time_t t, char out[32])
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int ps_parse_time(const char *s, time_t *t, struct ps_err *err)
{
	struct tm tm;
	const char *end;

	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
	if (end == NULL || *end != '\0') {
		memset(&tm, 0, sizeof(tm));
		end = strptime(s, "%Y-%m-%d", &tm);
	}
	if (end == NULL || *end != '\0')
		return ps_fail(err, PS_EINVAL,
			       "bad time '%s': use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)", s);
	*t = timegm(&tm);
	return 0;
}

int ps_strdup(const char *s, char **out, struct ps_err *err)
{
	*out = strdup(s);
	if (*out == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	return 0;
}

int ps_parse_int(const char *what, const char *s, long min, long max, long *out, struct ps_err *err)
{
	char *end = NULL;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (s[0] == '\0' || end == NULL || *end != '\0' || errno != 0 || v < min || v > max)
		return ps_fail(err, PS_EINVAL,
			       "%s must be a whole number from %ld to %ld, not '%s'", what, min,
			       max, s);
	*out = v;
	return 0;
}
