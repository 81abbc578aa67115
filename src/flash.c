/* flash.c — the flashing engine: the calling thread reads (and decompresses) the image into a
 * ring of chunks; a checker thread checks the bmap's range checksums (and takes chunk digests
 * for the read-back), one writer thread per target writes the mapped chunks and then reads
 * them back with the page cache bypassed, and a hasher thread takes the SHA-256 of the whole
 * stream: of every chunk in the ring for a compressed image, of the file itself for a raw one
 * (holes without reading them), off the write path. A chunk's buffer is reused once every
 * consumer has released it, so memory is bounded whatever the image size; a failing target
 * stops counting as a consumer. Also owns the image hash cache: the whole-image SHA-256 of an
 * image file already hashed, so that the hasher does not run again for it. */
#include "flash.h"
#include "bmap.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <lzma.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#define IN_BUF	  (1u << 20) /* compressed input read at a time */
#define HASH_BUF  (1u << 20) /* the hasher's buffer for unmapped ranges of raw images */
#define MIN_ALIGN 4096u	     /* O_DIRECT offsets, lengths and buffers */
#define NO_RANGE  ((size_t)-1)

_Static_assert(PS_FLASH_CHUNK >= 2 * PS_FLASH_VERIFY_CHUNK,
	       "a ring slot holds two read-back buffers");
_Static_assert(PS_FLASH_RING <= 32, "verify_slots is a 32-bit mask");
_Static_assert(PS_FLASH_RING >= 2 * PS_FLASH_MAX_VERIFYING, "two ring slots per read-back");

/* ------------------------------------------------------------------------ the image */

struct source {
	const char *path;
	int fd;
	enum ps_flash_format format;
	uint64_t file_size;
	uint64_t size;	   /* decompressed size, when size_known */
	bool size_known;   /* raw (file size) or xz (from its index) */
	uint64_t size_min; /* a lower bound (zstd frame header), 0 when none */
	/* compressed input */
	unsigned char *in;
	size_t in_len, in_pos;
	bool in_eof;
	uint64_t in_read; /* bytes of the file read so far */
	z_stream z;
	bool z_live;
	lzma_stream x;
	bool x_live;
	ZSTD_DStream *zs;
	size_t zs_last;	  /* the last ZSTD_decompressStream return: 0 at the end of a frame */
	bool ended;	  /* the decompressor saw the end of the stream */
	uint64_t out_pos; /* decompressed bytes delivered */
};

const char *ps_flash_format_name(enum ps_flash_format format)
{
	switch (format) {
	case PS_FLASH_GZIP:
		return "gzip";
	case PS_FLASH_XZ:
		return "xz";
	case PS_FLASH_ZSTD:
		return "zstd";
	case PS_FLASH_RAW:
	default:
		return "raw";
	}
}

static enum ps_flash_format format_of(const unsigned char *m, size_t n)
{
	static const unsigned char xz[6] = {0xfd, '7', 'z', 'X', 'Z', 0x00};

	if (n >= 2 && m[0] == 0x1f && m[1] == 0x8b)
		return PS_FLASH_GZIP;
	if (n >= 6 && memcmp(m, xz, 6) == 0)
		return PS_FLASH_XZ;
	if (n >= 4 && m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd)
		return PS_FLASH_ZSTD;
	return PS_FLASH_RAW;
}

static ssize_t pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, (unsigned char *)buf + got, len - got, (off_t)(off + got));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

int ps_flash_detect(const char *image, enum ps_flash_format *format, struct ps_err *err)
{
	unsigned char m[8];
	ssize_t n;
	int fd = open(image, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return ps_fail(err, errno == ENOENT ? PS_ENOENT : PS_EIO, "image %s: %s", image,
			       strerror(errno));
	n = pread_full(fd, m, sizeof(m), 0);
	close(fd);
	if (n < 0)
		return ps_fail(err, PS_EIO, "image %s: %s", image, strerror(errno));
	*format = format_of(m, (size_t)n);
	return 0;
}

/* The exact decompressed size of an .xz file, from its index at the end (without
 * decompressing). Returns false when it cannot be read; decompression reports why. */
static bool xz_size(int fd, uint64_t file_size, uint64_t *out)
{
	lzma_stream strm = LZMA_STREAM_INIT;
	lzma_index *idx = NULL;
	unsigned char buf[8192];
	uint64_t pos = 0;
	bool found = false;
	int rounds;

	if (lzma_file_info_decoder(&strm, &idx, UINT64_MAX, file_size) != LZMA_OK)
		return false;
	for (rounds = 0; rounds < 100000; rounds++) {
		lzma_ret ret;

		if (strm.avail_in == 0) {
			ssize_t n = pread_full(fd, buf, sizeof(buf), pos);

			if (n <= 0)
				break;
			strm.next_in = buf;
			strm.avail_in = (size_t)n;
			pos += (uint64_t)n;
		}
		ret = lzma_code(&strm, LZMA_RUN);
		if (ret == LZMA_SEEK_NEEDED) {
			pos = strm.seek_pos;
			strm.avail_in = 0;
			continue;
		}
		if (ret == LZMA_STREAM_END) {
			*out = lzma_index_uncompressed_size(idx);
			found = true;
			break;
		}
		if (ret != LZMA_OK)
			break;
	}
	if (idx != NULL)
		lzma_index_end(idx, NULL);
	lzma_end(&strm);
	return found;
}

static int source_open(struct source *s, const char *path, struct ps_err *err)
{
	unsigned char m[32];
	struct stat st;
	ssize_t n;

	memset(s, 0, sizeof(*s));
	s->path = path;
	s->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (s->fd < 0)
		return ps_fail(err, errno == ENOENT ? PS_ENOENT : PS_EIO, "image %s: %s", path,
			       strerror(errno));
	if (fstat(s->fd, &st) != 0)
		return ps_fail(err, PS_EIO, "image %s: %s", path, strerror(errno));
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(s->fd, BLKGETSIZE64, &s->file_size) != 0)
			return ps_fail(err, PS_EIO, "image %s: cannot read its size", path);
	} else if (S_ISREG(st.st_mode)) {
		s->file_size = (uint64_t)st.st_size;
	} else {
		return ps_fail(err, PS_EINVAL, "image %s is not a file", path);
	}
	if (s->file_size == 0)
		return ps_fail(err, PS_EINVAL, "image %s is empty", path);
	n = pread_full(s->fd, m, sizeof(m), 0);
	if (n < 0)
		return ps_fail(err, PS_EIO, "image %s: %s", path, strerror(errno));
	s->format = format_of(m, (size_t)n);
	posix_fadvise(s->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	switch (s->format) {
	case PS_FLASH_RAW:
		s->size = s->size_min = s->file_size;
		s->size_known = true;
		return 0;
	case PS_FLASH_XZ:
		s->size_known = xz_size(s->fd, s->file_size, &s->size);
		break;
	case PS_FLASH_ZSTD: {
		unsigned long long fcs = ZSTD_getFrameContentSize(m, (size_t)n);

		if (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs != ZSTD_CONTENTSIZE_ERROR)
			s->size_min = fcs;
		break;
	}
	case PS_FLASH_GZIP:
		break;
	}
	if (s->size_known)
		s->size_min = s->size;
	s->in = malloc(IN_BUF);
	if (s->in == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	switch (s->format) {
	case PS_FLASH_GZIP:
		if (inflateInit2(&s->z, 16 + MAX_WBITS) != Z_OK)
			return ps_fail(err, PS_ENOMEM, "cannot start the gzip decoder");
		s->z_live = true;
		break;
	case PS_FLASH_XZ:
		s->x = (lzma_stream)LZMA_STREAM_INIT;
		if (lzma_stream_decoder(&s->x, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK)
			return ps_fail(err, PS_ENOMEM, "cannot start the xz decoder");
		s->x_live = true;
		break;
	case PS_FLASH_ZSTD:
		s->zs = ZSTD_createDStream();
		if (s->zs == NULL || ZSTD_isError(ZSTD_initDStream(s->zs)))
			return ps_fail(err, PS_ENOMEM, "cannot start the zstd decoder");
		s->zs_last = 1;
		break;
	case PS_FLASH_RAW:
		break;
	}
	return 0;
}

static void source_close(struct source *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	if (s->z_live)
		inflateEnd(&s->z);
	if (s->x_live)
		lzma_end(&s->x);
	ZSTD_freeDStream(s->zs);
	s->zs = NULL;
	s->z_live = s->x_live = false;
	free(s->in);
	s->in = NULL;
}

/* Keep the unconsumed input, read more after it. */
static int refill(struct source *s, struct ps_err *err)
{
	ssize_t n;

	if (s->in_pos > 0) {
		memmove(s->in, s->in + s->in_pos, s->in_len - s->in_pos);
		s->in_len -= s->in_pos;
		s->in_pos = 0;
	}
	if (s->in_eof || s->in_len == IN_BUF)
		return 0;
	do
		n = read(s->fd, s->in + s->in_len, IN_BUF - s->in_len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return ps_fail(err, PS_EIO, "image %s: %s", s->path, strerror(errno));
	if (n == 0)
		s->in_eof = true;
	s->in_len += (size_t)n;
	s->in_read += (uint64_t)n;
	return 0;
}

/* Byte of the compressed file the decoder has reached, for messages. */
static uint64_t consumed(const struct source *s)
{
	return s->in_read - (s->in_len - s->in_pos);
}

static int truncated(const struct source *s, uint64_t at, struct ps_err *err)
{
	return ps_fail(err, PS_EINVAL,
		       "image %s is truncated: the %s stream ends without its end marker, after "
		       "%llu bytes of image",
		       s->path, ps_flash_format_name(s->format), (unsigned long long)at);
}

static int corrupt(const struct source *s, const char *why, struct ps_err *err)
{
	return ps_fail(err, PS_EINVAL,
		       "image %s is corrupt: %s data near byte %llu of the file: %s", s->path,
		       ps_flash_format_name(s->format), (unsigned long long)consumed(s), why);
}

static int step_gzip(struct source *s, unsigned char *out, size_t len, size_t *got,
		     struct ps_err *err)
{
	int ret;

	s->z.next_in = s->in + s->in_pos;
	s->z.avail_in = (uInt)(s->in_len - s->in_pos);
	s->z.next_out = out + *got;
	s->z.avail_out = (uInt)(len - *got);
	ret = inflate(&s->z, Z_NO_FLUSH);
	s->in_pos = s->in_len - s->z.avail_in;
	*got = len - s->z.avail_out;
	switch (ret) {
	case Z_OK:
		return 0;
	case Z_STREAM_END:
		/* Another member (pigz, cat a.gz b.gz) or the end of the file. */
		if (s->in_len - s->in_pos < 2 && refill(s, err) < 0)
			return PS_EIO;
		if (s->in_pos == s->in_len && s->in_eof) {
			s->ended = true;
			return 0;
		}
		if (s->in_len - s->in_pos >= 2 && s->in[s->in_pos] == 0x1f &&
		    s->in[s->in_pos + 1] == 0x8b) {
			inflateReset(&s->z);
			return 0;
		}
		return corrupt(s, "data follows the end of the gzip stream", err);
	case Z_BUF_ERROR:
		if (s->in_pos == s->in_len && s->in_eof)
			return truncated(s, s->out_pos + *got, err);
		return 0;
	case Z_MEM_ERROR:
		return ps_fail(err, PS_ENOMEM, "out of memory decompressing %s", s->path);
	default:
		return corrupt(s, s->z.msg ? s->z.msg : "bad data", err);
	}
}

static int step_xz(struct source *s, unsigned char *out, size_t len, size_t *got,
		   struct ps_err *err)
{
	lzma_ret ret;

	s->x.next_in = s->in + s->in_pos;
	s->x.avail_in = s->in_len - s->in_pos;
	s->x.next_out = out + *got;
	s->x.avail_out = len - *got;
	ret = lzma_code(&s->x, s->in_eof ? LZMA_FINISH : LZMA_RUN);
	s->in_pos = s->in_len - s->x.avail_in;
	*got = len - s->x.avail_out;
	switch (ret) {
	case LZMA_OK:
		return 0;
	case LZMA_STREAM_END:
		s->ended = true;
		return 0;
	case LZMA_BUF_ERROR:
		if (s->in_eof)
			return truncated(s, s->out_pos + *got, err);
		return 0;
	case LZMA_MEM_ERROR:
		return ps_fail(err, PS_ENOMEM, "out of memory decompressing %s", s->path);
	case LZMA_FORMAT_ERROR:
		return corrupt(s, "not in the .xz format", err);
	case LZMA_OPTIONS_ERROR:
		return corrupt(s, "unsupported compression options", err);
	case LZMA_DATA_ERROR:
		return corrupt(s, "compressed data is corrupt", err);
	default:
		return corrupt(s, "decoder error", err);
	}
}

static int step_zstd(struct source *s, unsigned char *out, size_t len, size_t *got,
		     struct ps_err *err)
{
	ZSTD_inBuffer in = {s->in + s->in_pos, s->in_len - s->in_pos, 0};
	ZSTD_outBuffer o = {out + *got, len - *got, 0};
	size_t r;

	if (in.size == 0 && s->in_eof && s->zs_last == 0) {
		/* The last frame ended (and was flushed) with the file. */
		s->ended = true;
		return 0;
	}
	r = ZSTD_decompressStream(s->zs, &o, &in);
	s->in_pos += in.pos;
	*got += o.pos;
	if (ZSTD_isError(r))
		return corrupt(s, ZSTD_getErrorName(r), err);
	s->zs_last = r;
	if (r == 0 && s->in_pos == s->in_len && s->in_eof)
		s->ended = true;
	else if (in.size == 0 && s->in_eof && o.pos == 0)
		return truncated(s, s->out_pos + *got, err);
	return 0;
}

/* Read up to len bytes of the decompressed stream; fewer only at its end. */
static int source_read(struct source *s, unsigned char *out, size_t len, size_t *got_out,
		       struct ps_err *err)
{
	size_t got = 0;
	int rc = 0;

	while (got < len && !s->ended) {
		if (s->in_pos == s->in_len && !s->in_eof && (rc = refill(s, err)) < 0)
			break;
		if (s->format == PS_FLASH_GZIP)
			rc = step_gzip(s, out, len, &got, err);
		else if (s->format == PS_FLASH_XZ)
			rc = step_xz(s, out, len, &got, err);
		else
			rc = step_zstd(s, out, len, &got, err);
		if (rc < 0)
			break;
	}
	s->out_pos += got;
	*got_out = got;
	return rc;
}

/* ------------------------------------------------------------------------ the hash cache */

/* The whole-image SHA-256 of regular image files, keyed by the file's identity, in a small
 * text file (see ps_flash_request.hash_cache):
 *
 *   provstation image-sha256 cache 1
 *   DEV INO SIZE MTIME CTIME FORMAT STREAM_SIZE SHA256
 *
 * one image a line, the newest first, MTIME and CTIME as SECONDS.NANOSECONDS (9 digits).
 * The file is only believed when it is a regular file owned by the user and writable by
 * nobody else; a line that does not parse exactly is ignored (and dropped at the next
 * write). Writes replace the whole file (ps_write_file) under a process-wide lock.
 *
 * File times have the granularity of the kernel's clock tick (or worse: 2 s on FAT), so a
 * change made within the same tick as the one before it may leave them as they were. An entry
 * is therefore only recorded when the image's ctime is older, by more than that granularity,
 * than the moment the job first looked at the file: any later change then gets a new ctime
 * (the "racily clean" rule of git's index). */

#define CACHE_HEADER	  "provstation image-sha256 cache 1"
#define CACHE_MAX_BYTES	  (64u << 10)
#define CACHE_MAX_ENTRIES 64
#define CACHE_LINE_MAX	  256

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

struct image_key {
	unsigned long long dev, ino, size;
	long long mtime_s, ctime_s;
	long mtime_ns, ctime_ns;
};

struct cache_entry {
	struct image_key key;
	enum ps_flash_format format;
	uint64_t stream_size;
	char sha256[65];
};

/* The image was last changed long enough before `at` for any later change to show in its
 * ctime: 2 s when its times are whole milliseconds (FAT, ext3, some network filesystems), 50 ms
 * (a few clock ticks) otherwise. */
static bool key_settled(const struct image_key *k, const struct timespec *at)
{
	long long margin = k->ctime_ns % 1000000 == 0 ? 2000000000LL : 50000000LL;
	long long age = ((long long)at->tv_sec - k->ctime_s) * 1000000000LL +
			((long long)at->tv_nsec - k->ctime_ns);

	return age > margin;
}

/* The station's wall clock, to the nanosecond unless PROVSTATION_NOW pins it (tests). */
static void station_time(struct timespec *at)
{
	time_t pinned = ps_now();

	clock_gettime(CLOCK_REALTIME, at);
	if (pinned != at->tv_sec) {
		at->tv_sec = pinned;
		at->tv_nsec = 0;
	}
}

static void key_of(const struct stat *st, struct image_key *k)
{
	memset(k, 0, sizeof(*k));
	k->dev = (unsigned long long)st->st_dev;
	k->ino = (unsigned long long)st->st_ino;
	k->size = (unsigned long long)st->st_size;
	k->mtime_s = (long long)st->st_mtim.tv_sec;
	k->mtime_ns = st->st_mtim.tv_nsec;
	k->ctime_s = (long long)st->st_ctim.tv_sec;
	k->ctime_ns = st->st_ctim.tv_nsec;
}

static bool key_equal(const struct image_key *a, const struct image_key *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_s == b->mtime_s && a->mtime_ns == b->mtime_ns && a->ctime_s == b->ctime_s &&
	       a->ctime_ns == b->ctime_ns;
}

/* The cache file's path; false when there is none. */
static bool cache_path(const struct ps_flash_request *req, char *out, size_t size)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	int n;

	if (req->no_hash_cache)
		return false;
	if (req->hash_cache != NULL)
		n = snprintf(out, size, "%s", req->hash_cache);
	else if (xdg != NULL && xdg[0] == '/') /* relative ones are to be ignored (XDG spec) */
		n = snprintf(out, size, "%s/provstation/image-sha256", xdg);
	else if (home != NULL && home[0] == '/')
		n = snprintf(out, size, "%s/.cache/provstation/image-sha256", home);
	else
		return false;
	return n > 0 && (size_t)n < size;
}

/* A decimal number made of 1 to 20 digits and nothing else. */
static bool parse_ull(const char *s, unsigned long long *v)
{
	char *end = NULL;

	if (*s < '0' || *s > '9' || strlen(s) > 20)
		return false;
	errno = 0;
	*v = strtoull(s, &end, 10);
	return errno == 0 && *end == '\0';
}

/* SECONDS.NANOSECONDS, with exactly 9 digits of nanoseconds; seconds may be negative. */
static bool parse_time(char *s, long long *sec, long *nsec)
{
	char *dot = strchr(s, '.');
	unsigned long long a, b;
	bool neg = s[0] == '-';

	if (dot == NULL || strlen(dot + 1) != 9)
		return false;
	*dot = '\0';
	if (!parse_ull(s + neg, &a) || !parse_ull(dot + 1, &b) || a > (unsigned long long)INT64_MAX)
		return false;
	*sec = neg ? -(long long)a : (long long)a;
	*nsec = (long)b;
	return true;
}

static bool parse_format(const char *s, enum ps_flash_format *f)
{
	static const enum ps_flash_format all[] = {PS_FLASH_RAW, PS_FLASH_GZIP, PS_FLASH_XZ,
						   PS_FLASH_ZSTD};
	size_t i;

	for (i = 0; i < PS_ARRAY_SIZE(all); i++)
		if (strcmp(s, ps_flash_format_name(all[i])) == 0) {
			*f = all[i];
			return true;
		}
	return false;
}

/* One line (without its newline) into e; false when it is not exactly an entry. */
static bool cache_parse_line(const char *line, size_t len, struct cache_entry *e)
{
	char buf[CACHE_LINE_MAX], *field[8], *p;
	unsigned long long v;
	size_t n = 0, i;

	if (len == 0 || len >= sizeof(buf) || memchr(line, '\0', len) != NULL)
		return false;
	memcpy(buf, line, len);
	buf[len] = '\0';
	for (p = buf; n < PS_ARRAY_SIZE(field); n++) {
		field[n] = p;
		p = strchr(p, ' ');
		if (p == NULL) {
			n++;
			break;
		}
		*p++ = '\0';
	}
	if (n != PS_ARRAY_SIZE(field) || p != NULL)
		return false;
	memset(e, 0, sizeof(*e));
	if (!parse_ull(field[0], &e->key.dev) || !parse_ull(field[1], &e->key.ino) ||
	    !parse_ull(field[2], &e->key.size) ||
	    !parse_time(field[3], &e->key.mtime_s, &e->key.mtime_ns) ||
	    !parse_time(field[4], &e->key.ctime_s, &e->key.ctime_ns) ||
	    !parse_format(field[5], &e->format) || !parse_ull(field[6], &v) ||
	    strlen(field[7]) != 64)
		return false;
	e->stream_size = v;
	for (i = 0; i < 64; i++)
		if (!((field[7][i] >= '0' && field[7][i] <= '9') ||
		      (field[7][i] >= 'a' && field[7][i] <= 'f')))
			return false;
	memcpy(e->sha256, field[7], 65);
	return true;
}

static size_t cache_format_line(const struct cache_entry *e, char *out, size_t size)
{
	int n = snprintf(out, size, "%llu %llu %llu %lld.%09ld %lld.%09ld %s %llu %s\n", e->key.dev,
			 e->key.ino, e->key.size, e->key.mtime_s, e->key.mtime_ns, e->key.ctime_s,
			 e->key.ctime_ns, ps_flash_format_name(e->format),
			 (unsigned long long)e->stream_size, e->sha256);

	return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

/* The cache file's content (NUL-terminated, after its header line) when it can be believed:
 * a regular file (not a symbolic link) owned by the user, writable by nobody else, with the
 * right header; NULL otherwise (missing, foreign, too large). */
static char *cache_read(const char *path, size_t *len_out)
{
	size_t hl = strlen(CACHE_HEADER), len = 0;
	struct stat st;
	char *buf = NULL;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		goto fail;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
	    (st.st_mode & (S_IWGRP | S_IWOTH)) != 0 || st.st_size < 0 ||
	    (uint64_t)st.st_size > CACHE_MAX_BYTES)
		goto fail;
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL)
		goto fail;
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	if (len <= hl || memcmp(buf, CACHE_HEADER, hl) != 0 || buf[hl] != '\n')
		goto fail;
	close(fd);
	memmove(buf, buf + hl + 1, len - hl); /* with the NUL */
	*len_out = len - hl - 1;
	return buf;
fail:
	free(buf);
	if (fd >= 0)
		close(fd);
	return NULL;
}

/* The entry for key, if the cache holds one for this format. */
static bool cache_lookup(const char *path, const struct image_key *key, enum ps_flash_format format,
			 struct cache_entry *out)
{
	size_t len = 0, pos = 0;
	bool found = false;
	char *buf;

	pthread_mutex_lock(&cache_lock);
	buf = cache_read(path, &len);
	while (buf != NULL && pos < len && !found) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		size_t ll = nl != NULL ? (size_t)(nl - (buf + pos)) : len - pos;

		found = cache_parse_line(buf + pos, ll, out) && key_equal(&out->key, key) &&
			out->format == format &&
			(format != PS_FLASH_RAW || out->stream_size == key->size);
		pos += ll + 1;
	}
	free(buf);
	pthread_mutex_unlock(&cache_lock);
	return found;
}

/* Rewrite the cache: add (may be NULL) first, then the other entries that still parse, the
 * entry of the same file (device and inode) dropped. Best effort: a cache that cannot be
 * written only costs the next flash a hash. Nothing is written in a directory that another
 * user owns or may write. */
static void cache_update(const char *path, const struct cache_entry *add,
			 const struct image_key *drop_key)
{
	char dir[PATH_MAX], line[CACHE_LINE_MAX], *old = NULL, *out = NULL;
	size_t old_len = 0, pos = 0, used = 0, n_entries = 0, cap;
	struct stat st;

	if (ps_parent_dir(path, dir, sizeof(dir)) < 0)
		return;
	pthread_mutex_lock(&cache_lock);
	if (ps_mkdir_p(dir, 0700, NULL) < 0 || lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
	    st.st_uid != geteuid() || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
		goto out;
	old = cache_read(path, &old_len);
	cap = strlen(CACHE_HEADER) + 1 + (CACHE_MAX_ENTRIES + 1) * CACHE_LINE_MAX;
	out = malloc(cap);
	if (out == NULL)
		goto out;
	used = (size_t)snprintf(out, cap, "%s\n", CACHE_HEADER);
	if (add != NULL) {
		used += cache_format_line(add, out + used, cap - used);
		n_entries++;
	}
	while (old != NULL && pos < old_len && n_entries < CACHE_MAX_ENTRIES) {
		const char *nl = memchr(old + pos, '\n', old_len - pos);
		size_t ll = nl != NULL ? (size_t)(nl - (old + pos)) : old_len - pos;
		struct cache_entry e;

		if (cache_parse_line(old + pos, ll, &e) &&
		    !(e.key.dev == drop_key->dev && e.key.ino == drop_key->ino)) {
			size_t n = cache_format_line(&e, line, sizeof(line));

			memcpy(out + used, line, n);
			used += n;
			n_entries++;
		}
		pos += ll + 1;
	}
	ps_write_file(path, out, used, 0600, 0, NULL);
out:
	pthread_mutex_unlock(&cache_lock);
	free(old);
	free(out);
}

/* Record an image's SHA-256 in the cache, first, replacing the file's older entry. */
static void cache_record(const char *path, const struct image_key *key, enum ps_flash_format format,
			 uint64_t stream_size, const char sha256[65])
{
	struct cache_entry add;

	memset(&add, 0, sizeof(add));
	add.key = *key;
	add.format = format;
	add.stream_size = stream_size;
	memcpy(add.sha256, sha256, sizeof(add.sha256));
	cache_update(path, &add, key);
}

int ps_flash_hash_image(const char *image, const char *hash_cache, atomic_bool *cancel,
			char sha256[65], bool *from_cache, struct ps_err *err)
{
	const struct ps_flash_request req = {.hash_cache = hash_cache};
	struct source src;
	struct image_key key, key_after;
	struct cache_entry entry;
	struct timespec looked_at;
	struct stat st;
	EVP_MD_CTX *md = NULL;
	unsigned char *buf = NULL, digest[32];
	unsigned int digest_len = 0;
	char cache[PATH_MAX];
	bool have_cache;
	uint64_t total = 0;
	int rc;

	sha256[0] = '\0';
	if (from_cache != NULL)
		*from_cache = false;
	station_time(&looked_at);
	rc = source_open(&src, image, err);
	if (rc < 0)
		goto out;
	if (fstat(src.fd, &st) != 0) {
		rc = ps_fail(err, PS_EIO, "image %s: %s", image, strerror(errno));
		goto out;
	}
	key_of(&st, &key);
	have_cache = S_ISREG(st.st_mode) && cache_path(&req, cache, sizeof(cache));
	if (have_cache && cache_lookup(cache, &key, src.format, &entry)) {
		memcpy(sha256, entry.sha256, 65);
		if (from_cache != NULL)
			*from_cache = true;
		goto out;
	}
	md = EVP_MD_CTX_new();
	buf = malloc(PS_FLASH_CHUNK);
	if (md == NULL || buf == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory hashing %s", image);
		goto out;
	}
	for (;;) {
		size_t got = 0;
		ssize_t n;

		if (cancel != NULL && atomic_load(cancel)) {
			rc = ps_fail(err, PS_EIO, "hashing %s: stopped", image);
			goto out;
		}
		if (src.format == PS_FLASH_RAW) {
			n = pread_full(src.fd, buf, PS_FLASH_CHUNK, total);
			if (n < 0) {
				rc = ps_fail(err, PS_EIO, "image %s: %s", image, strerror(errno));
				goto out;
			}
			got = (size_t)n;
		} else {
			rc = source_read(&src, buf, PS_FLASH_CHUNK, &got, err);
			if (rc < 0)
				goto out;
		}
		if (got == 0)
			break;
		EVP_DigestUpdate(md, buf, got);
		total += got;
	}
	if (src.format != PS_FLASH_RAW && !src.ended) {
		rc = truncated(&src, consumed(&src), err);
		goto out;
	}
	if (EVP_DigestFinal_ex(md, digest, &digest_len) != 1 || digest_len != sizeof(digest)) {
		rc = ps_fail(err, PS_EIO, "hashing %s failed", image);
		goto out;
	}
	if (fstat(src.fd, &st) != 0) {
		rc = ps_fail(err, PS_EIO, "image %s: %s", image, strerror(errno));
		goto out;
	}
	key_of(&st, &key_after);
	if (!key_equal(&key, &key_after)) {
		rc = ps_fail(err, PS_EINVAL, "image %s was modified while it was being hashed",
			     image);
		goto out;
	}
	ps_hex(digest, sizeof(digest), sha256);
	if (have_cache && key_settled(&key, &looked_at))
		cache_record(cache, &key, src.format, total, sha256);
out:
	if (rc < 0)
		sha256[0] = '\0';
	EVP_MD_CTX_free(md);
	free(buf);
	source_close(&src);
	return rc;
}

/* ------------------------------------------------------------------------ the job */

enum slot_kind { SLOT_DATA, SLOT_GAP, SLOT_END };

/* One chunk of the image stream on its way to the consumers. */
struct slot {
	uint64_t seq;
	enum slot_kind kind;
	uint64_t off, len; /* bytes of the image */
	size_t range;	   /* DATA with a bmap: its range */
	bool range_first, range_last;
	unsigned char *buf;
	int refs; /* consumers that still have to release it */
};

/* One read-back comparison: a bmap range (its own checksum) or a chunk (its digest). */
struct unit {
	uint64_t off, len;
	size_t range;
	unsigned char sha[32];
};

struct job;

struct target {
	struct job *job;
	size_t index;
	const char *path;
	struct ps_flash_result *res;
	int fd, fd_direct;
	bool is_block;
	uint64_t limit; /* bytes it holds; UINT64_MAX for files */
	size_t align;	/* O_DIRECT alignment */
	dev_t dev;
	ino_t ino;
	dev_t rdev;
	bool live; /* counted as a consumer of DATA slots (under the job lock) */
	pthread_t thread;
	bool started;
	uint64_t since_sync;
	double phase_start, last_cb;
};

struct job {
	const struct ps_flash_request *req;
	struct source src;
	struct ps_bmap bmap;
	bool have_bmap;
	bool range_checks;     /* the bmap's range checksums are checked */
	bool verify_by_ranges; /* read back against the bmap's SHA-256s (else chunk digests) */
	bool need_checker;
	uint64_t total; /* bytes to write to each target, 0 when not known */
	EVP_MD *sha256, *sha1;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct slot ring[PS_FLASH_RING];
	uint64_t published; /* slots below this sequence number are filled */
	int n_live;	    /* writers consuming */
	int fatal;	    /* the image's failure, for every target */
	struct ps_err fatal_err;
	bool stopped;	  /* the reader gave up early: no target left */
	atomic_bool quit; /* fatal or stopped, for the hasher reading a raw image itself */
	bool
	    hash_from_file; /* raw: the hasher reads the file itself (holes without reading),
			       off the write path; compressed: it takes every chunk from the ring */
	int verifying;
	unsigned verify_slots; /* ring slots lent to read-backs (bit i: slot i) */

	struct unit *units;
	size_t n_units, cap_units;
	bool units_final;
	uint64_t stream_size; /* decompressed bytes, when the reader reached the end */

	pthread_t hasher, checker;
	bool hasher_started, checker_started;
	bool hashed;
	char image_sha256[65];
	bool read_complete; /* the reader reached the end of the image */

	/* The image file's identity (regular files), for the hash cache and for noticing that
	 * the image changed under the job. */
	struct image_key key;
	bool key_ok;
	struct timespec looked_at; /* when key was taken */
	char cache_file[PATH_MAX];
	bool cache_on;
	bool cache_hit; /* cached is the image's entry: the hasher does not run */
	struct cache_entry cached;
	bool sha_from_cache;

	_Atomic uint64_t est_in, est_out; /* compressed and decompressed bytes so far */
	struct target *targets;
	size_t n_targets;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool cancelled(const struct job *j)
{
	return j->req->cancel != NULL && atomic_load(j->req->cancel);
}

/* Record the image's failure (the first one wins) and wake everyone. */
static void job_fail(struct job *j, int code, const struct ps_err *why)
{
	pthread_mutex_lock(&j->lock);
	if (j->fatal == 0) {
		j->fatal = code;
		memcpy(j->fatal_err.msg, why->msg, sizeof(why->msg));
		atomic_store(&j->quit, true);
	}
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
}

static void release(struct job *j, struct slot *s)
{
	pthread_mutex_lock(&j->lock);
	if (--s->refs == 0)
		pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
}

/* Wait for slot seq; NULL when the job failed or stopped. data_only consumers (the checker and
 * the writers) are not counted in GAP slots, which may already be reused: they get the slot
 * only when it is DATA or END and skip (return the ring's slot with kind GAP) otherwise. */
static struct slot *next_slot(struct job *j, uint64_t seq, bool data_only, bool *skip)
{
	struct slot *s = &j->ring[seq % PS_FLASH_RING];

	*skip = false;
	pthread_mutex_lock(&j->lock);
	while (j->published <= seq && j->fatal == 0 && !j->stopped)
		pthread_cond_wait(&j->cond, &j->lock);
	if (j->fatal != 0 || (j->published <= seq && j->stopped))
		s = NULL;
	else if (data_only && (s->seq != seq || s->kind == SLOT_GAP))
		*skip = true;
	pthread_mutex_unlock(&j->lock);
	return s;
}

/* The progress event of a target, throttled unless forced. */
static void report(struct target *t, enum ps_flash_phase phase, uint64_t done, uint64_t total,
		   bool force)
{
	const struct ps_flash_request *req = t->job->req;
	struct ps_flash_progress p = {t->index, phase, done, total, 0, -1};
	double n, el;

	if (req->progress == NULL)
		return;
	n = now();
	if (!force && n - t->last_cb < PS_FLASH_PROGRESS_MS / 1000.0)
		return;
	t->last_cb = n;
	el = n - t->phase_start;
	if (el > 0 && done > 0)
		p.rate = (double)done / el;
	if (p.total == 0 && phase == PS_FLASH_WRITING) {
		/* Compressed without bmap: estimate from how far into the file the reader is. */
		uint64_t in = atomic_load(&t->job->est_in), out = atomic_load(&t->job->est_out);

		if (in > 0 && t->job->src.file_size > 0)
			p.total =
			    (uint64_t)((double)out * (double)t->job->src.file_size / (double)in);
		if (p.total < done)
			p.total = done;
	}
	if (p.rate > 0 && p.total >= done &&
	    (phase == PS_FLASH_WRITING || phase == PS_FLASH_VERIFYING))
		p.eta = (double)(p.total - done) / p.rate;
	if (phase == PS_FLASH_DONE || phase == PS_FLASH_FAILED) {
		p.eta = 0;
		p.rate = t->res->write_seconds > 0
			     ? (double)t->res->bytes_written / t->res->write_seconds
			     : 0;
	}
	req->progress(t->path, &p, req->progress_user);
}

/* ------------------------------------------------------------------------ the reader */

/* Wait until the slot for seq is free; NULL when the job is over. */
static struct slot *acquire(struct job *j, uint64_t seq)
{
	struct slot *s = &j->ring[seq % PS_FLASH_RING];
	bool over;

	if (cancelled(j)) {
		struct ps_err e;

		ps_fail(&e, PS_EIO, "cancelled");
		job_fail(j, PS_EIO, &e);
	}
	pthread_mutex_lock(&j->lock);
	while (s->refs > 0 && j->fatal == 0 && j->n_live > 0)
		pthread_cond_wait(&j->cond, &j->lock);
	over = j->fatal != 0 || j->n_live == 0;
	if (over && j->fatal == 0) {
		j->stopped = true;
		atomic_store(&j->quit, true);
	}
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	return over ? NULL : s;
}

static void publish(struct job *j, struct slot *s, uint64_t seq)
{
	pthread_mutex_lock(&j->lock);
	s->seq = seq;
	s->refs = j->hash_from_file || j->cache_hit ? 0 : 1; /* the hasher */
	if (s->kind == SLOT_DATA)
		s->refs += (j->need_checker ? 1 : 0) + j->n_live;
	if (s->kind == SLOT_END)
		s->refs = 0;
	j->published = seq + 1;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
}

struct reader {
	struct job *j;
	uint64_t seq;
	struct ps_err err;
};

/* Stream bytes [off, off+len) that no target needs, for the hasher: only for compressed
 * images (a raw image's hasher reads the file itself). */
static int emit_gap(struct reader *r, uint64_t off, uint64_t len)
{
	struct job *j = r->j;

	if (j->hash_from_file)
		return 0;
	while (len > 0) {
		struct slot *s = acquire(j, r->seq);
		size_t got = 0;
		uint64_t piece;

		if (s == NULL)
			return 1;
		s->kind = SLOT_GAP;
		s->off = off;
		s->range = NO_RANGE;
		piece = len < PS_FLASH_CHUNK ? len : PS_FLASH_CHUNK;
		if (source_read(&j->src, s->buf, (size_t)piece, &got, &r->err) < 0)
			return -1;
		atomic_store(&j->est_in, consumed(&j->src));
		atomic_store(&j->est_out, j->src.out_pos);
		if (got < piece)
			return ps_fail(&r->err, PS_EINVAL,
				       "image %s is truncated: it ends at byte %llu, the bmap "
				       "describes %llu bytes",
				       j->src.path, (unsigned long long)j->src.out_pos,
				       (unsigned long long)j->bmap.image_size);
		s->len = piece;
		publish(j, s, r->seq++);
		off += piece;
		len -= piece;
	}
	return 0;
}

/* Mapped bytes [off, off+len) (len 0 with an unknown size: to the end of the stream), in
 * pieces cut at multiples of PS_FLASH_CHUNK so that they stay aligned. */
static int emit_data(struct reader *r, uint64_t off, uint64_t len, bool to_end, size_t range)
{
	struct job *j = r->j;
	uint64_t end = off + len;
	bool first = true;

	while (to_end || off < end) {
		struct slot *s = acquire(j, r->seq);
		uint64_t piece = PS_FLASH_CHUNK - off % PS_FLASH_CHUNK;
		size_t got = 0;

		if (s == NULL)
			return 1;
		if (!to_end && piece > end - off)
			piece = end - off;
		if (j->src.format == PS_FLASH_RAW) {
			ssize_t n = pread_full(j->src.fd, s->buf, (size_t)piece, off);

			if (n < 0)
				return ps_fail(&r->err, PS_EIO,
					       "image %s: reading at byte %llu: %s", j->src.path,
					       (unsigned long long)off, strerror(errno));
			got = (size_t)n;
		} else {
			if (source_read(&j->src, s->buf, (size_t)piece, &got, &r->err) < 0)
				return -1;
			atomic_store(&j->est_in, consumed(&j->src));
			atomic_store(&j->est_out, j->src.out_pos);
		}
		if (got < piece && !to_end)
			return ps_fail(&r->err, PS_EINVAL,
				       "image %s is truncated: it ends at byte %llu, the bmap maps "
				       "bytes up to %llu",
				       j->src.path, (unsigned long long)(off + got),
				       (unsigned long long)end);
		if (got == 0)
			return 0; /* the end of a stream of unknown size */
		s->kind = SLOT_DATA;
		s->off = off;
		s->len = got;
		s->range = range;
		s->range_first = first;
		off += got;
		s->range_last = range != NO_RANGE && off == end;
		first = false;
		publish(j, s, r->seq++);
		if (got < piece)
			return 0;
	}
	return 0;
}

/* Read the whole image into the ring; returns 0, 1 when stopped, or an error in r->err. */
static int read_image(struct reader *r)
{
	struct job *j = r->j;
	struct slot *s;
	uint64_t pos = 0;
	int rc = 0;
	size_t i;

	if (j->have_bmap) {
		const struct ps_bmap *b = &j->bmap;

		for (i = 0; i < b->n_ranges && rc == 0; i++) {
			uint64_t start = b->ranges[i].first * b->block_size;
			uint64_t len = ps_bmap_range_bytes(b, &b->ranges[i]);

			if (pos < start)
				rc = emit_gap(r, pos, start - pos);
			if (rc == 0)
				rc = emit_data(r, start, len, false, i);
			pos = start + len;
		}
		if (rc == 0 && pos < b->image_size)
			rc = emit_gap(r, pos, b->image_size - pos);
		if (rc == 0 && j->src.format != PS_FLASH_RAW) {
			unsigned char extra;
			size_t got = 0;

			rc = source_read(&j->src, &extra, 1, &got, &r->err);
			if (rc == 0 && got > 0)
				rc = ps_fail(&r->err, PS_EINVAL,
					     "image %s is longer than the %llu bytes its bmap "
					     "describes: wrong bmap file?",
					     j->src.path, (unsigned long long)b->image_size);
		}
		if (rc == 0)
			j->stream_size = b->image_size;
	} else if (j->src.format == PS_FLASH_RAW) {
		rc = emit_data(r, 0, j->src.size, false, NO_RANGE);
		j->stream_size = j->src.size;
	} else {
		rc = emit_data(r, 0, 0, true, NO_RANGE);
		j->stream_size = j->src.out_pos;
		if (rc == 0 && j->src.size_known && j->src.size != j->stream_size)
			rc = ps_fail(&r->err, PS_EINVAL,
				     "image %s: the stream holds %llu bytes, its index says %llu",
				     j->src.path, (unsigned long long)j->stream_size,
				     (unsigned long long)j->src.size);
	}
	if (rc != 0)
		return rc;
	s = acquire(j, r->seq);
	if (s == NULL)
		return 1;
	s->kind = SLOT_END;
	s->len = 0;
	j->read_complete = true;
	publish(j, s, r->seq++);
	return 0;
}

/* ------------------------------------------------------------------------ hasher, checker */

/* Hash a raw image from the file: holes as zeros without reading them, data through the page
 * cache (where the reader puts it too). Returns 1 when the job ended meanwhile. */
static int hash_raw(struct job *j, EVP_MD_CTX *md, unsigned char *buf, uint64_t off, uint64_t len,
		    struct ps_err *err)
{
	uint64_t end = off + len;
	bool zeroed = false;

	while (off < end) {
		if (atomic_load(&j->quit))
			return 1;
		off_t data = lseek(j->src.fd, (off_t)off, SEEK_DATA);
		uint64_t stop;

		if (data < 0 && errno == ENXIO)
			data = (off_t)end; /* nothing but a hole up to the end of the file */
		if (data < 0)
			data = (off_t)off; /* no SEEK_DATA: read it all */
		if ((uint64_t)data > off) {
			stop = (uint64_t)data < end ? (uint64_t)data : end;
			if (!zeroed)
				memset(buf, 0, HASH_BUF);
			zeroed = true;
			while (off < stop && !atomic_load(&j->quit)) {
				size_t n = stop - off < HASH_BUF ? (size_t)(stop - off) : HASH_BUF;

				EVP_DigestUpdate(md, buf, n);
				off += n;
			}
			continue;
		}
		{
			off_t hole = lseek(j->src.fd, (off_t)off, SEEK_HOLE);
			size_t n;
			ssize_t got;

			stop = hole > (off_t)off && (uint64_t)hole < end ? (uint64_t)hole : end;
			n = stop - off < HASH_BUF ? (size_t)(stop - off) : HASH_BUF;
			got = pread_full(j->src.fd, buf, n, off);
			zeroed = false;
			if (got < 0)
				return ps_fail(err, PS_EIO, "image %s: reading at byte %llu: %s",
					       j->src.path, (unsigned long long)off,
					       strerror(errno));
			if ((size_t)got < n)
				return ps_fail(err, PS_EINVAL, "image %s is truncated at byte %llu",
					       j->src.path,
					       (unsigned long long)(off + (uint64_t)got));
			EVP_DigestUpdate(md, buf, n);
			off += n;
		}
	}
	return 0;
}

static void *hasher_main(void *arg)
{
	struct job *j = arg;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char *buf = NULL, sha[32];
	unsigned int sha_len = 0;
	struct ps_err err = {""};
	uint64_t seq;
	bool skip;
	int rc;

	if (md == NULL || EVP_DigestInit_ex(md, j->sha256, NULL) != 1) {
		ps_fail(&err, PS_ECRYPTO, "cannot start SHA-256");
		job_fail(j, PS_ECRYPTO, &err);
		goto out;
	}
	if (j->hash_from_file) {
		buf = malloc(HASH_BUF);
		if (buf == NULL) {
			ps_fail(&err, PS_ENOMEM, "out of memory");
			job_fail(j, PS_ENOMEM, &err);
			goto out;
		}
		rc = hash_raw(j, md, buf, 0, j->src.size, &err);
		if (rc < 0)
			job_fail(j, rc, &err);
		if (rc != 0)
			goto out;
	}
	for (seq = 0; !j->hash_from_file; seq++) {
		struct slot *s = next_slot(j, seq, false, &skip);

		if (s == NULL)
			goto out;
		if (s->kind == SLOT_END)
			break;
		EVP_DigestUpdate(md, s->buf, (size_t)s->len);
		release(j, s);
	}
	if (EVP_DigestFinal_ex(md, sha, &sha_len) == 1 && sha_len == 32) {
		pthread_mutex_lock(&j->lock);
		ps_hex(sha, 32, j->image_sha256);
		j->hashed = true;
		pthread_mutex_unlock(&j->lock);
	}
out:
	free(buf);
	EVP_MD_CTX_free(md);
	return NULL;
}

static int add_unit(struct job *j, uint64_t off, uint64_t len, size_t range,
		    const unsigned char *sha)
{
	if (j->n_units == j->cap_units) {
		size_t cap = j->cap_units ? j->cap_units * 2 : 256;
		struct unit *u = realloc(j->units, cap * sizeof(*u));

		if (u == NULL)
			return PS_ENOMEM;
		j->units = u;
		j->cap_units = cap;
	}
	j->units[j->n_units].off = off;
	j->units[j->n_units].len = len;
	j->units[j->n_units].range = range;
	memcpy(j->units[j->n_units].sha, sha, 32);
	j->n_units++;
	return 0;
}

static void *checker_main(void *arg)
{
	struct job *j = arg;
	const struct ps_bmap *b = &j->bmap;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	struct ps_err err = {""};
	uint64_t seq;
	bool skip;

	if (md == NULL) {
		ps_fail(&err, PS_ENOMEM, "out of memory");
		job_fail(j, PS_ENOMEM, &err);
		goto out;
	}
	for (seq = 0;; seq++) {
		struct slot *s = next_slot(j, seq, true, &skip);
		unsigned char sha[EVP_MAX_MD_SIZE];
		unsigned int sha_len = 0;

		if (s == NULL)
			goto out;
		if (skip)
			continue;
		if (s->kind == SLOT_END)
			break;
		if (j->range_checks && s->range != NO_RANGE && b->ranges[s->range].has_csum) {
			const struct ps_bmap_range *r = &b->ranges[s->range];

			if (s->range_first)
				EVP_DigestInit_ex(
				    md, b->csum_type == PS_BMAP_CSUM_SHA1 ? j->sha1 : j->sha256,
				    NULL);
			EVP_DigestUpdate(md, s->buf, (size_t)s->len);
			if (s->range_last &&
			    (EVP_DigestFinal_ex(md, sha, &sha_len) != 1 || sha_len != r->csum_len ||
			     memcmp(sha, r->csum, r->csum_len) != 0)) {
				uint64_t start = r->first * b->block_size;

				ps_fail(
				    &err, PS_EINVAL,
				    "image %s does not match its bmap: checksum mismatch in "
				    "blocks %llu-%llu (bytes %llu-%llu)",
				    j->src.path, (unsigned long long)r->first,
				    (unsigned long long)r->last, (unsigned long long)start,
				    (unsigned long long)(start + ps_bmap_range_bytes(b, r) - 1));
				job_fail(j, PS_EINVAL, &err);
				goto out;
			}
		}
		if (j->req->verify && !j->verify_by_ranges) {
			if (EVP_Digest(s->buf, (size_t)s->len, sha, &sha_len, j->sha256, NULL) !=
				1 ||
			    add_unit(j, s->off, s->len, NO_RANGE, sha) < 0) {
				ps_fail(&err, PS_ENOMEM, "out of memory");
				job_fail(j, PS_ENOMEM, &err);
				goto out;
			}
		}
		release(j, s);
	}
	pthread_mutex_lock(&j->lock);
	j->units_final = true;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
out:
	EVP_MD_CTX_free(md);
	return NULL;
}

/* ------------------------------------------------------------------------ targets */

static int target_fail(struct target *t, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int target_fail(struct target *t, int code, const char *fmt, ...)
{
	va_list ap;

	if (t->res->status != 0)
		return t->res->status;
	va_start(ap, fmt);
	vsnprintf(t->res->message, sizeof(t->res->message), fmt, ap);
	va_end(ap);
	t->res->status = code;
	return code;
}

static int errno_status(int e)
{
	return e == ENOMEM ? PS_ENOMEM : PS_EIO;
}

/* Write one piece: O_DIRECT when the target allows it and the piece is aligned. */
static int write_piece(struct target *t, const unsigned char *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	if (off + len > t->limit)
		return target_fail(t, PS_EINVAL,
				   "the image is larger than the target: it goes on past the "
				   "target's end (%llu bytes)",
				   (unsigned long long)t->limit);
	while (done < len) {
		bool direct = t->fd_direct >= 0 && (off + done) % t->align == 0 &&
			      (len - done) % t->align == 0 &&
			      (uintptr_t)(buf + done) % t->align == 0;
		ssize_t n = pwrite(direct ? t->fd_direct : t->fd, buf + done, len - done,
				   (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && direct && errno == EINVAL) {
			/* The target refuses this alignment after all: buffered from now on. */
			close(t->fd_direct);
			t->fd_direct = -1;
			continue;
		}
		if (n < 0)
			return target_fail(t, errno_status(errno), "writing at byte %llu: %s",
					   (unsigned long long)(off + done), strerror(errno));
		if (n == 0)
			return target_fail(t, PS_EIO, "writing at byte %llu: %s",
					   (unsigned long long)(off + done), strerror(ENOSPC));
		if (!direct)
			t->since_sync += (uint64_t)n;
		done += (size_t)n;
		t->res->bytes_written += (uint64_t)n;
	}
	if (t->since_sync >= PS_FLASH_SYNC_EVERY) {
		t->since_sync = 0;
		if (fdatasync(t->fd) != 0 && errno != EINVAL)
			return target_fail(t, PS_EIO, "flushing: %s", strerror(errno));
	}
	return 0;
}

/* Stop consuming: release the slots counted for this target and not consumed yet. */
static void drop(struct target *t, uint64_t seq)
{
	struct job *j = t->job;

	pthread_mutex_lock(&j->lock);
	if (t->live) {
		t->live = false;
		j->n_live--;
		for (; seq < j->published; seq++) {
			struct slot *s = &j->ring[seq % PS_FLASH_RING];

			if (s->seq == seq && s->kind == SLOT_DATA)
				s->refs--;
		}
	}
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
}

/* ---- read-back: helper threads read ahead into buffers while the one before is hashed. With
 * buffers of its own a target has two (one read in flight); with buffers lent by the ring, four
 * and two helpers (two reads in flight: faster where the device serves several at once). Piece
 * i (of PS_FLASH_VERIFY_CHUNK at most, in the order of the units) goes into buffer i % nbuf and
 * is read by helper i % (nbuf / 2), so each buffer has one writer and is filled in order. */

#define RB_MAX 4

struct piece {
	uint64_t off;
	size_t len;
	size_t unit;
	bool first, last; /* of its unit */
	int err;	  /* errno of the read, or -1 when it came back short */
	bool full;
};

struct readback {
	struct target *t;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	size_t nbuf; /* 2 or RB_MAX */
	unsigned char *buf[RB_MAX];
	struct piece p[RB_MAX];
	bool stop;
	size_t done; /* helpers finished */
};

struct helper {
	struct readback *rb;
	size_t id;
	pthread_t thread;
	bool started;
};

static ssize_t read_piece(struct target *t, unsigned char *buf, size_t len, uint64_t off)
{
	bool direct = t->fd_direct >= 0 && off % t->align == 0 && len % t->align == 0;
	ssize_t n = pread_full(direct ? t->fd_direct : t->fd, buf, len, off);

	if (n < 0 && direct && errno == EINVAL)
		n = pread_full(t->fd, buf, len, off);
	return n;
}

static void *readahead_main(void *arg)
{
	struct helper *h = arg;
	struct readback *rb = h->rb;
	struct job *j = rb->t->job;
	size_t u, i = 0, helpers = rb->nbuf / 2;
	bool stop = false;

	for (u = 0; u < j->n_units && !stop; u++) {
		uint64_t off = j->units[u].off, end = off + j->units[u].len;
		bool first = true;

		for (; off < end && !stop; i++) {
			uint64_t n = PS_FLASH_VERIFY_CHUNK - off % PS_FLASH_VERIFY_CHUNK;
			struct piece p = {off, 0, u, first, false, 0, true};
			size_t k = i % rb->nbuf;
			ssize_t got;

			if (n > end - off)
				n = end - off;
			p.len = (size_t)n;
			p.last = off + n == end;
			off += n;
			first = false;
			if (i % helpers != h->id)
				continue;
			pthread_mutex_lock(&rb->lock);
			while (rb->p[k].full && !rb->stop)
				pthread_cond_wait(&rb->cond, &rb->lock);
			stop = rb->stop;
			pthread_mutex_unlock(&rb->lock);
			if (stop)
				break;
			got = read_piece(rb->t, rb->buf[k], p.len, p.off);
			if (got < 0)
				p.err = errno ? errno : EIO;
			else if ((size_t)got < p.len)
				p.err = -1;
			pthread_mutex_lock(&rb->lock);
			rb->p[k] = p;
			pthread_cond_broadcast(&rb->cond);
			pthread_mutex_unlock(&rb->lock);
		}
	}
	pthread_mutex_lock(&rb->lock);
	rb->done++;
	pthread_cond_broadcast(&rb->cond);
	pthread_mutex_unlock(&rb->lock);
	return NULL;
}

/* Read back into the ring slots in the mask `slots` (free once every target is done writing,
 * each slot two buffers, no memory added) or, when it is 0, into two buffers of its own. */
static int verify_target(struct target *t, unsigned slots)
{
	struct job *j = t->job;
	struct readback rb = {.t = t, .nbuf = 2};
	struct helper helpers[RB_MAX / 2];
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint64_t total = 0, done = 0;
	size_t k = 0, u, i, n_helpers;
	int rc = 0;

	memset(helpers, 0, sizeof(helpers));
	for (u = 0; u < j->n_units; u++)
		total += j->units[u].len;
	pthread_mutex_init(&rb.lock, NULL);
	pthread_cond_init(&rb.cond, NULL);
	if (slots != 0) {
		rb.nbuf = 0;
		for (i = 0; i < PS_FLASH_RING && rb.nbuf < RB_MAX; i++)
			if (slots & (1u << i)) {
				rb.buf[rb.nbuf++] = j->ring[i].buf;
				rb.buf[rb.nbuf++] = j->ring[i].buf + PS_FLASH_VERIFY_CHUNK;
			}
	}
	if (md == NULL ||
	    (slots == 0 &&
	     (posix_memalign((void **)&rb.buf[0], MIN_ALIGN, PS_FLASH_VERIFY_CHUNK) != 0 ||
	      posix_memalign((void **)&rb.buf[1], MIN_ALIGN, PS_FLASH_VERIFY_CHUNK) != 0))) {
		rc = target_fail(t, PS_ENOMEM, "out of memory for the read-back");
		goto out;
	}
	n_helpers = rb.nbuf / 2;
	/* Whatever went through the page cache is on the disk now: drop it so that the
	 * buffered reads (unaligned pieces, targets without O_DIRECT) come from the disk. */
	posix_fadvise(t->fd, 0, 0, POSIX_FADV_DONTNEED);
	t->phase_start = now();
	report(t, PS_FLASH_VERIFYING, 0, total, true);
	for (i = 0; i < n_helpers; i++) {
		helpers[i].rb = &rb;
		helpers[i].id = i;
		if (pthread_create(&helpers[i].thread, NULL, readahead_main, &helpers[i]) != 0) {
			rc = target_fail(t, PS_ENOMEM, "cannot start the read-back thread");
			goto out;
		}
		helpers[i].started = true;
	}
	for (;;) {
		struct piece p;
		const struct unit *unit;
		unsigned char sha[32];
		unsigned int sha_len = 0;

		pthread_mutex_lock(&rb.lock);
		while (!rb.p[k].full && rb.done < n_helpers)
			pthread_cond_wait(&rb.cond, &rb.lock);
		p = rb.p[k];
		pthread_mutex_unlock(&rb.lock);
		if (!p.full)
			break; /* the helpers are done and nothing is left */
		unit = &j->units[p.unit];
		if (cancelled(j)) {
			rc = target_fail(t, PS_EIO, "cancelled while verifying");
			break;
		}
		if (p.err != 0) {
			rc = target_fail(t, PS_EIO, "reading back at byte %llu: %s",
					 (unsigned long long)p.off,
					 p.err > 0 ? strerror(p.err) : "the target ends there");
			break;
		}
		if (p.first)
			EVP_DigestInit_ex(md, j->sha256, NULL);
		EVP_DigestUpdate(md, rb.buf[k], p.len);
		if (p.last && (EVP_DigestFinal_ex(md, sha, &sha_len) != 1 || sha_len != 32 ||
			       memcmp(sha, unit->sha, 32) != 0)) {
			rc = target_fail(t, PS_EIO,
					 "verification failed: bytes %llu-%llu read back differ "
					 "from the image",
					 (unsigned long long)unit->off,
					 (unsigned long long)(unit->off + unit->len - 1));
			break;
		}
		done += p.len;
		t->res->bytes_verified = done;
		report(t, PS_FLASH_VERIFYING, done, total, done == total);
		pthread_mutex_lock(&rb.lock);
		rb.p[k].full = false;
		pthread_cond_broadcast(&rb.cond);
		pthread_mutex_unlock(&rb.lock);
		k = (k + 1) % rb.nbuf;
	}
out:
	pthread_mutex_lock(&rb.lock);
	rb.stop = true;
	pthread_cond_broadcast(&rb.cond);
	pthread_mutex_unlock(&rb.lock);
	for (i = 0; i < RB_MAX / 2; i++)
		if (helpers[i].started)
			pthread_join(helpers[i].thread, NULL);
	t->res->verify_seconds = now() - t->phase_start;
	if (rc == 0)
		t->res->verified = true;
	if (slots == 0) {
		free(rb.buf[0]);
		free(rb.buf[1]);
	}
	EVP_MD_CTX_free(md);
	pthread_cond_destroy(&rb.cond);
	pthread_mutex_destroy(&rb.lock);
	return rc;
}

/* Whether a chunk of the ring is still held: with every writer done (n_live is 0) and the
 * checker too (units_final), only by the hasher of a compressed image, which has at most the
 * ring's last chunks left to hash. */
static bool ring_held(const struct job *j)
{
	int i;

	for (i = 0; i < PS_FLASH_RING; i++)
		if (j->ring[i].refs > 0)
			return true;
	return false;
}

/* Ring slots for a read-back (a mask), under the job lock, once the ring is free for good: two
 * slots each for the PS_FLASH_MAX_VERIFYING read-backs. 0 when it is still held. */
static unsigned take_ring_slots(struct job *j)
{
	unsigned mask = 0;
	int i, n = 0;

	if (ring_held(j))
		return 0;
	for (i = 0; i < PS_FLASH_RING && n < RB_MAX / 2; i++)
		if (!(j->verify_slots & (1u << i))) {
			mask |= 1u << i;
			n++;
		}
	j->verify_slots |= mask;
	return mask;
}

/* Copy the image's failure into a target that has none of its own. */
static int take_fatal(struct target *t)
{
	struct job *j = t->job;
	int code;

	pthread_mutex_lock(&j->lock);
	code = j->fatal;
	if (code != 0 && t->res->status == 0) {
		t->res->status = code;
		snprintf(t->res->message, sizeof(t->res->message), "%s", j->fatal_err.msg);
	}
	pthread_mutex_unlock(&j->lock);
	return code;
}

static void *writer_main(void *arg)
{
	struct target *t = arg;
	struct job *j = t->job;
	struct ps_flash_result *res = t->res;
	uint64_t seq, total = j->total;
	double start;
	bool skip, go;
	int rc = 0;
	unsigned slots = 0;

	start = t->phase_start = now();
	report(t, PS_FLASH_WRITING, 0, total, true);
	for (seq = 0;; seq++) {
		struct slot *s = next_slot(j, seq, true, &skip);

		if (s == NULL) {
			take_fatal(t);
			drop(t, seq);
			goto out;
		}
		if (skip)
			continue;
		if (s->kind == SLOT_END)
			break;
		if (cancelled(j))
			rc = target_fail(t, PS_EIO, "cancelled");
		else
			rc = write_piece(t, s->buf, (size_t)s->len, s->off);
		if (rc < 0) {
			drop(t, seq);
			goto out;
		}
		release(j, s);
		report(t, PS_FLASH_WRITING, res->bytes_written, total, false);
	}
	drop(t, seq);
	/* A regular file gets the image's size (known now for a compressed stream). */
	if (!t->is_block && ftruncate(t->fd, (off_t)j->stream_size) != 0) {
		rc = target_fail(t, PS_EIO, "setting its size: %s", strerror(errno));
		goto out;
	}
	if (fdatasync(t->fd) != 0 && errno != EINVAL) {
		rc = target_fail(t, PS_EIO, "flushing: %s", strerror(errno));
		goto out;
	}
	res->write_seconds = now() - start;
	report(t, PS_FLASH_WRITING, res->bytes_written, res->bytes_written, true);
	if (!j->req->verify)
		goto out;

	/* Read back once every digest is known, every target is done writing (they share the ring,
	 * so they finish together) and the ring is free (its buffers serve the read-backs), a few
	 * targets at a time. */
	pthread_mutex_lock(&j->lock);
	while ((!j->units_final || j->n_live > 0 || ring_held(j) ||
		j->verifying >= PS_FLASH_MAX_VERIFYING) &&
	       j->fatal == 0)
		pthread_cond_wait(&j->cond, &j->lock);
	go = j->fatal == 0;
	if (go) {
		j->verifying++;
		slots = take_ring_slots(j);
	}
	pthread_mutex_unlock(&j->lock);
	if (!go) {
		take_fatal(t);
		goto out;
	}
	rc = verify_target(t, slots);
	pthread_mutex_lock(&j->lock);
	j->verifying--;
	j->verify_slots &= ~slots;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
out:
	if (res->write_seconds == 0)
		res->write_seconds = now() - start;
	(void)rc;
	return NULL;
}

/* Open a target for writing after the safety gate; fills t or fails it. */
static int open_target(struct job *j, struct target *t, uint64_t need)
{
	const struct ps_flash_request *req = j->req;
	struct ps_err e = {""};
	struct stat st;
	char proc[64];
	bool exists;
	size_t i;
	int flags = O_RDWR | O_CLOEXEC;

	exists = stat(t->path, &st) == 0;
	if (!exists && errno != ENOENT)
		return target_fail(t, PS_EIO, "%s", strerror(errno));
	if (exists && S_ISDIR(st.st_mode))
		return target_fail(t, PS_EINVAL, "it is a directory");
	if (exists && !S_ISREG(st.st_mode)) {
		struct ps_safety_policy policy = req->safety;
		int rc;

		policy.min_size = need;
		rc = ps_safety_check(t->path, &policy, NULL, &e);
		if (rc < 0)
			return target_fail(t, rc, "%s", e.msg);
		if (!req->allow_unlisted &&
		    !(req->target_is_slot != NULL && req->target_is_slot[t->index]))
			return target_fail(t, PS_EUNSAFE,
					   "%s is not a configured station slot; refusing to write "
					   "it (--allow-unlisted overrides)",
					   t->path);
		t->is_block = true;
		flags |= O_EXCL; /* fails when mounted or held by another exclusive opener */
	} else {
		flags |= O_CREAT;
	}
	t->fd = open(t->path, flags, 0600);
	if (t->fd < 0) {
		if (errno == EBUSY)
			return target_fail(t, PS_EBUSY, "it is in use (mounted or held)");
		if (errno == EROFS || errno == EACCES || errno == EPERM)
			return target_fail(t, PS_EPERM, "cannot write it: %s", strerror(errno));
		return target_fail(t, PS_EIO, "cannot open it: %s", strerror(errno));
	}
	if (fstat(t->fd, &st) != 0)
		return target_fail(t, PS_EIO, "%s", strerror(errno));
	if (t->is_block != S_ISBLK(st.st_mode))
		return target_fail(t, PS_EUNSAFE, "it changed while being opened");
	t->dev = st.st_dev;
	t->ino = st.st_ino;
	t->rdev = st.st_rdev;
	for (i = 0; i < t->index; i++) {
		const struct target *o = &j->targets[i];

		if (o->fd >= 0 && o->is_block == t->is_block &&
		    (t->is_block ? o->rdev == t->rdev : o->dev == t->dev && o->ino == t->ino))
			return target_fail(t, PS_EINVAL, "the same target as %s", o->path);
	}
	if (!t->is_block) {
		struct stat is;

		if (fstat(j->src.fd, &is) == 0 && is.st_dev == st.st_dev && is.st_ino == st.st_ino)
			return target_fail(t, PS_EINVAL, "it is the image itself");
		if (req->bmap != NULL && stat(req->bmap, &is) == 0 && is.st_dev == st.st_dev &&
		    is.st_ino == st.st_ino)
			return target_fail(t, PS_EINVAL, "it is the bmap file");
	}
	if (flock(t->fd, LOCK_EX | LOCK_NB) != 0)
		return target_fail(t, PS_EBUSY, "busy: another provstation job holds it");
	t->align = MIN_ALIGN;
	if (t->is_block) {
		int ro = 0, lbs = 0;

		if (ioctl(t->fd, BLKGETSIZE64, &t->limit) != 0)
			return target_fail(t, PS_EIO, "cannot read its size");
		if (ioctl(t->fd, BLKROGET, &ro) == 0 && ro)
			return target_fail(t, PS_EPERM, "it is read-only (write-protected)");
		if (ioctl(t->fd, BLKSSZGET, &lbs) == 0 && lbs > (int)t->align)
			t->align = (size_t)lbs;
		if (need > t->limit)
			return target_fail(t, PS_EUNSAFE,
					   "the image (%llu bytes) is larger than the target (%llu "
					   "bytes)",
					   (unsigned long long)need, (unsigned long long)t->limit);
	} else {
		t->limit = UINT64_MAX;
		/* Unmapped ranges of the new file are holes: they read as zeros. */
		if (ftruncate(t->fd, 0) != 0 ||
		    (j->src.size_known && ftruncate(t->fd, (off_t)j->src.size) != 0) ||
		    (j->have_bmap && ftruncate(t->fd, (off_t)j->bmap.image_size) != 0))
			return target_fail(t, PS_EIO, "cannot truncate it: %s", strerror(errno));
	}
	/* A second description of the same open file, for the aligned writes. */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", t->fd);
	t->fd_direct = open(proc, O_RDWR | O_DIRECT | O_CLOEXEC);
	return 0;
}

/* ------------------------------------------------------------------------ ps_flash */

static int check_request(const struct ps_flash_request *req, struct ps_err *err)
{
	size_t i;

	if (req->image == NULL || req->image[0] == '\0')
		return ps_fail(err, PS_EINVAL, "no image given");
	if (req->n_targets == 0 || req->targets == NULL)
		return ps_fail(err, PS_EINVAL, "no target given");
	if (req->n_targets > PS_FLASH_MAX_TARGETS)
		return ps_fail(err, PS_EINVAL, "%zu targets: at most %d at once", req->n_targets,
			       PS_FLASH_MAX_TARGETS);
	for (i = 0; i < req->n_targets; i++)
		if (req->targets[i] == NULL || req->targets[i][0] == '\0')
			return ps_fail(err, PS_EINVAL, "target %zu has no path", i + 1);
	return 0;
}

/* Prepare the image and bmap: nothing is written when this fails. */
static int prepare(struct job *j, struct ps_err *err)
{
	const struct ps_flash_request *req = j->req;
	struct stat st;
	size_t i;
	int rc;

	j->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	j->sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
	if (j->sha256 == NULL)
		return ps_fail_ssl(err, PS_ECRYPTO, "SHA-256 is not available");
	if (req->bmap != NULL) {
		rc = ps_bmap_load(req->bmap, &j->bmap, err);
		if (rc < 0)
			return rc;
		j->have_bmap = true;
		if (j->bmap.csum_type == PS_BMAP_CSUM_SHA1 && j->sha1 == NULL)
			return ps_fail_ssl(err, PS_ECRYPTO, "%s: SHA-1 is not available",
					   req->bmap);
	}
	rc = source_open(&j->src, req->image, err);
	if (rc < 0)
		return rc;
	j->hash_from_file = j->src.format == PS_FLASH_RAW;
	if (fstat(j->src.fd, &st) == 0 && S_ISREG(st.st_mode)) {
		key_of(&st, &j->key);
		station_time(&j->looked_at);
		j->key_ok = true;
		j->cache_on = cache_path(req, j->cache_file, sizeof(j->cache_file));
		j->cache_hit =
		    j->cache_on && cache_lookup(j->cache_file, &j->key, j->src.format, &j->cached);
	}
	if (j->have_bmap && j->src.size_known && j->src.size != j->bmap.image_size)
		return ps_fail(err, PS_EINVAL,
			       "image %s holds %llu bytes, its bmap %s describes %llu: wrong "
			       "bmap file or %s image",
			       req->image, (unsigned long long)j->src.size, req->bmap,
			       (unsigned long long)j->bmap.image_size,
			       j->src.size < j->bmap.image_size ? "truncated" : "wrong");
	if (j->have_bmap && j->src.size_min > j->bmap.image_size)
		return ps_fail(err, PS_EINVAL,
			       "image %s holds at least %llu bytes, its bmap %s describes %llu: "
			       "wrong bmap file",
			       req->image, (unsigned long long)j->src.size_min, req->bmap,
			       (unsigned long long)j->bmap.image_size);
	if (j->have_bmap) {
		j->total = ps_bmap_mapped_bytes(&j->bmap);
		j->range_checks = j->bmap.csum_type != PS_BMAP_CSUM_NONE;
		j->verify_by_ranges = j->bmap.csum_type == PS_BMAP_CSUM_SHA256;
		for (i = 0; i < j->bmap.n_ranges; i++)
			if (!j->bmap.ranges[i].has_csum)
				j->verify_by_ranges = false;
	} else if (j->src.size_known) {
		j->total = j->src.size;
	}
	j->need_checker = j->range_checks || (req->verify && !j->verify_by_ranges);
	if (req->verify && j->verify_by_ranges) {
		for (i = 0; i < j->bmap.n_ranges; i++) {
			const struct ps_bmap_range *r = &j->bmap.ranges[i];

			if (add_unit(j, r->first * j->bmap.block_size,
				     ps_bmap_range_bytes(&j->bmap, r), i, r->csum) < 0)
				return ps_fail(err, PS_ENOMEM, "out of memory");
		}
		j->units_final = !j->need_checker;
	}
	for (i = 0; i < PS_FLASH_RING; i++)
		if (posix_memalign((void **)&j->ring[i].buf, MIN_ALIGN, PS_FLASH_CHUNK) != 0)
			return ps_fail(err, PS_ENOMEM, "out of memory for the chunk ring");
	return 0;
}

/* After the job: the image must not have changed while it was read (the targets would hold
 * a mix); the whole-image SHA-256 comes from the cache, or goes into it. */
static void finish_hash(struct job *j)
{
	struct ps_err e = {""};
	struct image_key now_key;
	struct stat st;

	if (j->fatal != 0 || !j->read_complete)
		return;
	if (j->key_ok) {
		if (fstat(j->src.fd, &st) != 0) {
			ps_fail(&e, PS_EIO, "image %s: %s", j->src.path, strerror(errno));
			job_fail(j, PS_EIO, &e);
			return;
		}
		key_of(&st, &now_key);
		if (!key_equal(&now_key, &j->key)) {
			ps_fail(&e, PS_EINVAL,
				"image %s was modified while it was being flashed: the targets may "
				"hold a mix of two versions; flash them again",
				j->src.path);
			job_fail(j, PS_EINVAL, &e);
			return;
		}
	}
	if (j->cache_hit && j->cached.stream_size != j->stream_size) {
		/* Only a damaged or forged entry can say so: drop it, and the audit row gets no
		 * SHA-256 it cannot trust. */
		ps_fail(&e, PS_EINVAL,
			"image %s holds %llu bytes, the entry of its hash cache %s says %llu: the "
			"entry is dropped; flash again",
			j->src.path, (unsigned long long)j->stream_size, j->cache_file,
			(unsigned long long)j->cached.stream_size);
		cache_update(j->cache_file, NULL, &j->key);
		job_fail(j, PS_EINVAL, &e);
		return;
	}
	if (j->cache_hit) {
		memcpy(j->image_sha256, j->cached.sha256, sizeof(j->image_sha256));
		j->sha_from_cache = true;
		j->hashed = true;
	} else if (j->hashed && j->cache_on && key_settled(&j->key, &j->looked_at)) {
		cache_record(j->cache_file, &j->key, j->src.format, j->stream_size,
			     j->image_sha256);
	}
}

static void fill_image_info(const struct job *j, struct ps_flash_result *res)
{
	snprintf(res->image_name, sizeof(res->image_name), "%s", ps_base_name(j->req->image));
	res->format = j->src.format;
	if (j->hashed) {
		memcpy(res->image_sha256, j->image_sha256, sizeof(res->image_sha256));
		res->image_sha256_cached = j->sha_from_cache;
		res->image_size = j->stream_size;
	} else if (j->have_bmap) {
		res->image_size = j->bmap.image_size;
	} else if (j->src.size_known) {
		res->image_size = j->src.size;
	}
}

int ps_flash(const struct ps_flash_request *req, struct ps_flash_result *results,
	     struct ps_err *err)
{
	struct job *j = NULL;
	struct reader r;
	size_t i, n_ok = 0, n_failed = 0, first_failed = 0;
	uint64_t need;
	int rc;

	rc = check_request(req, err);
	if (rc < 0)
		return rc;
	for (i = 0; i < req->n_targets; i++) {
		memset(&results[i], 0, sizeof(results[i]));
		snprintf(results[i].image_name, sizeof(results[i].image_name), "%s",
			 ps_base_name(req->image));
	}
	j = calloc(1, sizeof(*j));
	if (j == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	j->req = req;
	j->src.fd = -1;
	j->n_targets = req->n_targets;
	j->targets = calloc(req->n_targets, sizeof(*j->targets));
	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->cond, NULL);
	if (j->targets == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < req->n_targets; i++) {
		struct target *t = &j->targets[i];

		t->job = j;
		t->index = i;
		t->path = req->targets[i];
		t->res = &results[i];
		t->fd = t->fd_direct = -1;
	}
	rc = prepare(j, err);
	if (rc < 0) {
		for (i = 0; i < req->n_targets; i++) {
			results[i].status = rc;
			snprintf(results[i].message, sizeof(results[i].message), "%s", err->msg);
		}
		goto out;
	}
	for (i = 0; i < req->n_targets; i++)
		fill_image_info(j, &results[i]);

	/* The targets: the gate, open, size; a refused one is dropped now. */
	need = j->have_bmap ? j->bmap.image_size : j->src.size_min;
	for (i = 0; i < req->n_targets; i++) {
		struct target *t = &j->targets[i];

		if (open_target(j, t, need) < 0) {
			if (t->fd >= 0)
				close(t->fd);
			t->fd = -1;
			if (t->fd_direct >= 0)
				close(t->fd_direct);
			t->fd_direct = -1;
			report(t, PS_FLASH_FAILED, 0, 0, true);
			continue;
		}
		t->live = true;
		j->n_live++;
	}
	if (j->n_live == 0)
		goto results;

	if (!j->cache_hit) {
		if (pthread_create(&j->hasher, NULL, hasher_main, j) != 0) {
			rc = ps_fail(err, PS_ENOMEM, "cannot start a thread");
			goto stop;
		}
		j->hasher_started = true;
	}
	if (j->need_checker) {
		if (pthread_create(&j->checker, NULL, checker_main, j) != 0) {
			rc = ps_fail(err, PS_ENOMEM, "cannot start a thread");
			goto stop;
		}
		j->checker_started = true;
	}
	for (i = 0; i < req->n_targets; i++) {
		struct target *t = &j->targets[i];

		if (!t->live)
			continue;
		if (pthread_create(&t->thread, NULL, writer_main, t) != 0) {
			target_fail(t, PS_ENOMEM, "cannot start a thread");
			drop(t, 0);
			continue;
		}
		t->started = true;
	}

	r.j = j;
	r.seq = 0;
	r.err.msg[0] = '\0';
	rc = read_image(&r);
	if (rc < 0)
		job_fail(j, rc, &r.err);
	rc = 0;
	goto join;
stop:
	job_fail(j, rc, err);
join:
	if (j->hasher_started)
		pthread_join(j->hasher, NULL);
	if (j->checker_started)
		pthread_join(j->checker, NULL);
	for (i = 0; i < req->n_targets; i++)
		if (j->targets[i].started)
			pthread_join(j->targets[i].thread, NULL);
	finish_hash(j);
results:
	for (i = 0; i < req->n_targets; i++) {
		struct target *t = &j->targets[i];

		if (t->fd_direct >= 0)
			close(t->fd_direct);
		if (t->fd >= 0 && close(t->fd) != 0 && results[i].status == 0)
			target_fail(t, PS_EIO, "closing: %s", strerror(errno));
		t->fd = t->fd_direct = -1;
		if (j->fatal != 0 && results[i].status == 0) {
			results[i].status = j->fatal;
			snprintf(results[i].message, sizeof(results[i].message), "%s",
				 j->fatal_err.msg);
		}
		if (results[i].status != 0)
			results[i].verified = false;
		fill_image_info(j, &results[i]);
		if (results[i].status == 0) {
			n_ok++;
			if (t->started)
				report(t, PS_FLASH_DONE, results[i].bytes_written,
				       results[i].bytes_written, true);
		} else {
			if (n_failed++ == 0)
				first_failed = i;
			if (t->started)
				report(t, PS_FLASH_FAILED, results[i].bytes_written, 0, true);
		}
	}
	if (n_failed == 0)
		rc = 0;
	else if (j->fatal != 0)
		rc = ps_fail(err, j->fatal, "%s", j->fatal_err.msg);
	else if (req->n_targets == 1)
		rc = ps_fail(err, results[0].status, "%s: %s", req->targets[0], results[0].message);
	else
		rc = ps_fail(err, results[first_failed].status, "%zu of %zu targets failed; %s: %s",
			     n_failed, req->n_targets, req->targets[first_failed],
			     results[first_failed].message);
out:
	source_close(&j->src);
	ps_bmap_free(&j->bmap);
	for (i = 0; i < PS_FLASH_RING; i++)
		free(j->ring[i].buf);
	free(j->units);
	free(j->targets);
	EVP_MD_free(j->sha256);
	EVP_MD_free(j->sha1);
	pthread_cond_destroy(&j->cond);
	pthread_mutex_destroy(&j->lock);
	free(j);
	return rc;
}
