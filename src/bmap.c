/* bmap.c — reading bmap-tools block map files (versions 1.x and 2.x) with libxml2's streaming
 * reader, so that memory stays proportional to the ranges, not to the file's DOM. */
#include "bmap.h"
#include "util.h"

#include <libxml/parser.h>
#include <libxml/xmlreader.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The fields of the header, collected while reading. */
struct header {
	char *image_size, *block_size, *blocks_count, *mapped_blocks, *csum_type, *file_csum;
	bool seen_root, seen_blockmap;
};

/* What the reader's error handler keeps: the first error. */
struct xml_error {
	char msg[256];
	int line;
};

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static void xml_init(void)
{
	xmlInitParser();
}

#if LIBXML_VERSION >= 21200
static void on_xml_error(void *arg, const xmlError *e)
#else
static void on_xml_error(void *arg, xmlErrorPtr e)
#endif
{
	struct xml_error *x = arg;
	size_t n;

	if (x->msg[0] != '\0' || e == NULL || e->level < XML_ERR_ERROR)
		return;
	snprintf(x->msg, sizeof(x->msg), "%s", e->message ? e->message : "malformed XML");
	n = strlen(x->msg);
	while (n > 0 && (x->msg[n - 1] == '\n' || x->msg[n - 1] == ' '))
		x->msg[--n] = '\0';
	x->line = e->line;
}

/* Trim the blanks around s in place; returns s + leading blanks. */
static char *trim(char *s)
{
	size_t n;

	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	n = strlen(s);
	while (n > 0 &&
	       (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}

/* Parse a decimal unsigned number, the whole string. */
static bool parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return false;
		if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return true;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode exactly 2*len hex digits. */
static bool parse_hex(const char *s, unsigned char *out, size_t len)
{
	size_t i;

	if (strlen(s) != 2 * len)
		return false;
	for (i = 0; i < len; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return true;
}

static int number(const char *name, const char *field, const char *text, uint64_t *out,
		  struct ps_err *err)
{
	char *copy, *t;
	bool good;

	if (text == NULL)
		return ps_fail(err, PS_EINVAL, "%s: not a usable bmap file: <%s> is missing", name,
			       field);
	if (ps_strdup(text, &copy, err) < 0)
		return PS_ENOMEM;
	t = trim(copy);
	good = parse_u64(t, out);
	free(copy);
	if (!good)
		return ps_fail(err, PS_EINVAL, "%s: <%s> is not a number: '%.40s'", name, field,
			       text);
	return 0;
}

/* Store a copy of the text of the reader's current element into *slot (first one wins). */
static int take_text(xmlTextReaderPtr reader, char **slot, const char *name, struct ps_err *err)
{
	xmlChar *text;

	if (*slot != NULL)
		return ps_fail(err, PS_EINVAL, "%s: <%s> appears twice", name,
			       (const char *)xmlTextReaderConstLocalName(reader));
	text = xmlTextReaderReadString(reader);
	if (ps_strdup(text ? (const char *)text : "", slot, err) < 0) {
		xmlFree(text);
		return PS_ENOMEM;
	}
	xmlFree(text);
	return 0;
}

static int add_range(struct ps_bmap *b, size_t *cap, const struct ps_bmap_range *r,
		     struct ps_err *err)
{
	if (b->n_ranges == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		struct ps_bmap_range *n = realloc(b->ranges, ncap * sizeof(*n));

		if (n == NULL)
			return ps_fail(err, PS_ENOMEM, "out of memory reading the bmap");
		b->ranges = n;
		*cap = ncap;
	}
	b->ranges[b->n_ranges++] = *r;
	return 0;
}

/* One <Range> element: "first-last" or "block", with an optional checksum attribute ("sha1"
 * in version 1.3, "chksum" from 1.4). The blocks are checked once the header is known. */
static int read_range(xmlTextReaderPtr reader, struct ps_bmap *b, size_t *cap, const char *name,
		      struct ps_err *err)
{
	struct ps_bmap_range r = {0};
	const char *attr = NULL;
	xmlChar *text = NULL, *sum = NULL;
	char *copy = NULL, *t, *dash;
	bool good;
	int rc;

	if (b->version_major > 1 || b->version_minor >= 4)
		attr = "chksum";
	else if (b->version_minor == 3)
		attr = "sha1";
	if (attr != NULL)
		sum = xmlTextReaderGetAttribute(reader, (const xmlChar *)attr);
	text = xmlTextReaderReadString(reader);
	rc = ps_strdup(text ? (const char *)text : "", &copy, err);
	if (rc < 0)
		goto out;
	t = trim(copy);
	dash = strchr(t, '-');
	if (dash != NULL) {
		*dash = '\0';
		good = parse_u64(trim(t), &r.first) && parse_u64(trim(dash + 1), &r.last);
	} else {
		good = parse_u64(t, &r.first);
		r.last = r.first;
	}
	if (!good) {
		rc = ps_fail(err, PS_EINVAL, "%s: bad block range '%.40s' (range %zu)", name,
			     text ? (const char *)text : "", b->n_ranges + 1);
		goto out;
	}
	if (sum != NULL) {
		size_t hl = strlen((const char *)sum);

		if ((hl != 64 && hl != 40) || !parse_hex((const char *)sum, r.csum, hl / 2)) {
			rc =
			    ps_fail(err, PS_EINVAL, "%s: bad checksum '%.70s' for blocks %llu-%llu",
				    name, (const char *)sum, (unsigned long long)r.first,
				    (unsigned long long)r.last);
			goto out;
		}
		r.has_csum = true;
		r.csum_len = (unsigned char)(hl / 2);
	}
	rc = add_range(b, cap, &r, err);
out:
	free(copy);
	xmlFree(text);
	xmlFree(sum);
	return rc;
}

/* Parse "MAJOR.MINOR" into the bmap. */
static int parse_version(const char *v, const char *name, struct ps_bmap *b, struct ps_err *err)
{
	char buf[32], *dot;
	uint64_t major, minor;

	snprintf(buf, sizeof(buf), "%s", v);
	dot = strchr(buf, '.');
	if (dot == NULL)
		return ps_fail(err, PS_EINVAL, "%s: bmap version '%.20s' is not MAJOR.MINOR", name,
			       v);
	*dot = '\0';
	if (!parse_u64(buf, &major) || !parse_u64(dot + 1, &minor) || major > 1000 || minor > 1000)
		return ps_fail(err, PS_EINVAL, "%s: bmap version '%.20s' is not MAJOR.MINOR", name,
			       v);
	if (major < 1 || major > 2)
		return ps_fail(err, PS_EINVAL,
			       "%s: bmap format version %.20s is not supported (1.x and 2.x are)",
			       name, v);
	b->version_major = (unsigned)major;
	b->version_minor = (unsigned)minor;
	return 0;
}

/* Walk the document: <bmap version> with header elements and <BlockMap><Range>s. */
static int read_document(const char *buf, size_t len, const char *name, struct header *h,
			 struct ps_bmap *b, struct ps_err *err)
{
	struct xml_error xerr = {"", 0};
	xmlTextReaderPtr reader;
	size_t cap = 0;
	bool in_blockmap = false;
	int rc = 0, r;

	if (len > INT_MAX)
		return ps_fail(err, PS_EINVAL, "%s: too large for a bmap file", name);
	pthread_once(&xml_once, xml_init);
	reader = xmlReaderForMemory(buf, (int)len, name, NULL,
				    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	if (reader == NULL)
		return ps_fail(err, PS_ENOMEM, "%s: cannot start the XML reader", name);
	xmlTextReaderSetStructuredErrorHandler(reader, on_xml_error, &xerr);
	while ((r = xmlTextReaderRead(reader)) == 1) {
		int type = xmlTextReaderNodeType(reader), depth = xmlTextReaderDepth(reader);
		const char *el = (const char *)xmlTextReaderConstLocalName(reader);

		if (type == XML_READER_TYPE_END_ELEMENT && depth == 1 &&
		    strcmp(el, "BlockMap") == 0)
			in_blockmap = false;
		if (type != XML_READER_TYPE_ELEMENT)
			continue;
		if (depth == 0) {
			xmlChar *v;

			if (strcmp(el, "bmap") != 0) {
				rc = ps_fail(err, PS_EINVAL,
					     "%s: not a bmap file (root element <%s>, not <bmap>)",
					     name, el);
				goto out;
			}
			v = xmlTextReaderGetAttribute(reader, (const xmlChar *)"version");
			rc = parse_version(v ? (const char *)v : "", name, b, err);
			xmlFree(v);
			if (rc < 0)
				goto out;
			h->seen_root = true;
		} else if (depth == 1) {
			if (strcmp(el, "ImageSize") == 0)
				rc = take_text(reader, &h->image_size, name, err);
			else if (strcmp(el, "BlockSize") == 0)
				rc = take_text(reader, &h->block_size, name, err);
			else if (strcmp(el, "BlocksCount") == 0)
				rc = take_text(reader, &h->blocks_count, name, err);
			else if (strcmp(el, "MappedBlocksCount") == 0)
				rc = take_text(reader, &h->mapped_blocks, name, err);
			else if (strcmp(el, "ChecksumType") == 0)
				rc = take_text(reader, &h->csum_type, name, err);
			else if (strcmp(el, "BmapFileChecksum") == 0 ||
				 strcmp(el, "BmapFileSHA1") == 0)
				rc = take_text(reader, &h->file_csum, name, err);
			else if (strcmp(el, "BlockMap") == 0) {
				if (h->seen_blockmap) {
					rc = ps_fail(err, PS_EINVAL, "%s: <BlockMap> appears twice",
						     name);
					goto out;
				}
				h->seen_blockmap = true;
				in_blockmap = !xmlTextReaderIsEmptyElement(reader);
			}
			if (rc < 0)
				goto out;
		} else if (depth == 2 && in_blockmap && strcmp(el, "Range") == 0) {
			rc = read_range(reader, b, &cap, name, err);
			if (rc < 0)
				goto out;
		}
	}
	if (r < 0 || xerr.msg[0] != '\0') {
		if (xerr.msg[0] != '\0')
			rc = ps_fail(err, PS_EINVAL, "%s: not a usable bmap file: line %d: %s",
				     name, xerr.line, xerr.msg);
		else
			rc = ps_fail(err, PS_EINVAL, "%s: not a usable bmap file: malformed XML",
				     name);
		goto out;
	}
	if (!h->seen_root)
		rc = ps_fail(err, PS_EINVAL, "%s: not a bmap file (empty document)", name);
out:
	xmlFreeTextReader(reader);
	return rc;
}

/* Check the file's own checksum: the hex digits of the checksum element replaced by '0's,
 * the whole file hashed (what bmaptool does). */
static int check_file_csum(const char *buf, size_t len, const char *name, const char *given,
			   const struct ps_bmap *b, struct ps_err *err)
{
	unsigned char want[32], got[EVP_MAX_MD_SIZE];
	unsigned int got_len = 0;
	size_t hl = 2 * b->csum_len;
	const char *at;
	char *copy;
	int rc = 0;

	if (!parse_hex(given, want, b->csum_len))
		return ps_fail(err, PS_EINVAL,
			       "%s: the file checksum '%.70s' is not %zu hex digits", name, given,
			       hl);
	at = memmem(buf, len, given, hl);
	if (at == NULL)
		return ps_fail(err, PS_EINVAL,
			       "%s: the file checksum is not in the file as written", name);
	copy = malloc(len ? len : 1);
	if (copy == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory checking %s", name);
	memcpy(copy, buf, len);
	memset(copy + (at - buf), '0', hl);
	if (EVP_Digest(copy, len, got, &got_len,
		       b->csum_type == PS_BMAP_CSUM_SHA1 ? EVP_sha1() : EVP_sha256(), NULL) != 1 ||
	    got_len != b->csum_len)
		rc = ps_fail_ssl(err, PS_ECRYPTO, "%s: cannot compute the file checksum", name);
	else if (memcmp(got, want, b->csum_len) != 0)
		rc = ps_fail(err, PS_EINVAL,
			     "%s: the bmap file's own checksum does not match: the file was "
			     "altered or damaged",
			     name);
	free(copy);
	return rc;
}

/* Check the ranges against the header and settle their checksums. */
static int check_ranges(struct ps_bmap *b, const char *name, struct ps_err *err)
{
	uint64_t blocks = 0;
	size_t i;

	for (i = 0; i < b->n_ranges; i++) {
		struct ps_bmap_range *r = &b->ranges[i];
		if (r->first > r->last)
			return ps_fail(err, PS_EINVAL, "%s: bad range %llu-%llu (first > last)",
				       name, (unsigned long long)r->first,
				       (unsigned long long)r->last);
		if (r->last >= b->blocks_count)
			return ps_fail(
			    err, PS_EINVAL, "%s: range %llu-%llu goes past the image's %llu blocks",
			    name, (unsigned long long)r->first, (unsigned long long)r->last,
			    (unsigned long long)b->blocks_count);
		if (i > 0 && r->first <= b->ranges[i - 1].last)
			return ps_fail(err, PS_EINVAL,
				       "%s: range %llu-%llu is out of order or overlaps the one "
				       "before",
				       name, (unsigned long long)r->first,
				       (unsigned long long)r->last);
		blocks += r->last - r->first + 1;
		if (!r->has_csum)
			continue;
		if (b->csum_type == PS_BMAP_CSUM_NONE) {
			r->has_csum = false; /* versions without checksums: ignored */
			continue;
		}
		if (r->csum_len != b->csum_len)
			return ps_fail(err, PS_EINVAL,
				       "%s: the checksum of blocks %llu-%llu is not a %s checksum",
				       name, (unsigned long long)r->first,
				       (unsigned long long)r->last,
				       b->csum_type == PS_BMAP_CSUM_SHA1 ? "SHA-1" : "SHA-256");
	}
	if (blocks != b->mapped_blocks)
		return ps_fail(err, PS_EINVAL,
			       "%s: inconsistent: the ranges hold %llu blocks, MappedBlocksCount "
			       "says %llu",
			       name, (unsigned long long)blocks,
			       (unsigned long long)b->mapped_blocks);
	return 0;
}

int ps_bmap_parse(const char *buf, size_t len, const char *name, struct ps_bmap *out,
		  struct ps_err *err)
{
	struct header h = {0};
	struct ps_bmap b = {0};
	char *t;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = read_document(buf, len, name, &h, &b, err);
	if (rc < 0)
		goto out;

	if ((rc = number(name, "ImageSize", h.image_size, &b.image_size, err)) < 0 ||
	    (rc = number(name, "BlockSize", h.block_size, &b.block_size, err)) < 0 ||
	    (rc = number(name, "BlocksCount", h.blocks_count, &b.blocks_count, err)) < 0 ||
	    (rc = number(name, "MappedBlocksCount", h.mapped_blocks, &b.mapped_blocks, err)) < 0)
		goto out;
	if (!h.seen_blockmap) {
		rc = ps_fail(err, PS_EINVAL, "%s: not a usable bmap file: <BlockMap> is missing",
			     name);
		goto out;
	}
	if (b.version_major > 1 || b.version_minor >= 4) {
		t = h.csum_type ? trim(h.csum_type) : NULL;
		if (t == NULL) {
			rc = ps_fail(err, PS_EINVAL, "%s: <ChecksumType> is missing", name);
			goto out;
		}
		if (strcmp(t, "sha256") == 0) {
			b.csum_type = PS_BMAP_CSUM_SHA256;
		} else if (strcmp(t, "sha1") == 0) {
			b.csum_type = PS_BMAP_CSUM_SHA1;
		} else {
			rc = ps_fail(err, PS_EINVAL,
				     "%s: checksum type '%.20s' is not supported (sha256, sha1)",
				     name, t);
			goto out;
		}
	} else if (b.version_minor == 3) {
		b.csum_type = PS_BMAP_CSUM_SHA1;
	}
	b.csum_len = b.csum_type == PS_BMAP_CSUM_SHA256 ? 32
		     : b.csum_type == PS_BMAP_CSUM_SHA1 ? 20
							: 0;
	if (b.csum_type != PS_BMAP_CSUM_NONE) {
		if (h.file_csum == NULL) {
			rc = ps_fail(
			    err, PS_EINVAL, "%s: the file's own checksum (%s) is missing", name,
			    b.version_minor == 3 && b.version_major == 1 ? "BmapFileSHA1"
									 : "BmapFileChecksum");
			goto out;
		}
		rc = check_file_csum(buf, len, name, trim(h.file_csum), &b, err);
		if (rc < 0)
			goto out;
		b.file_csum_checked = true;
	}
	if (b.block_size == 0 || b.block_size > (1u << 30) ||
	    b.image_size > UINT64_MAX - b.block_size) {
		rc = ps_fail(err, PS_EINVAL, "%s: bad BlockSize %llu", name,
			     (unsigned long long)b.block_size);
		goto out;
	}
	if (b.blocks_count != (b.image_size + b.block_size - 1) / b.block_size) {
		rc = ps_fail(err, PS_EINVAL,
			     "%s: inconsistent: ImageSize %llu bytes is not BlocksCount %llu "
			     "blocks of %llu bytes",
			     name, (unsigned long long)b.image_size,
			     (unsigned long long)b.blocks_count, (unsigned long long)b.block_size);
		goto out;
	}
	if (b.mapped_blocks > b.blocks_count) {
		rc = ps_fail(err, PS_EINVAL,
			     "%s: inconsistent: MappedBlocksCount %llu is more than BlocksCount",
			     name, (unsigned long long)b.mapped_blocks);
		goto out;
	}

	rc = check_ranges(&b, name, err);
	if (rc < 0)
		goto out;
	*out = b;
	b.ranges = NULL;
out:
	free(b.ranges);
	free(h.image_size);
	free(h.block_size);
	free(h.blocks_count);
	free(h.mapped_blocks);
	free(h.csum_type);
	free(h.file_csum);
	return rc;
}

int ps_bmap_load(const char *path, struct ps_bmap *out, struct ps_err *err)
{
	char *buf = NULL;
	size_t len = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = ps_read_file(path, PS_BMAP_MAX_FILE, &buf, &len, err);
	if (rc == 0)
		rc = ps_bmap_parse(buf, len, path, out, err);
	free(buf);
	return rc;
}

void ps_bmap_free(struct ps_bmap *bmap)
{
	if (bmap == NULL)
		return;
	free(bmap->ranges);
	bmap->ranges = NULL;
	bmap->n_ranges = 0;
}

uint64_t ps_bmap_range_bytes(const struct ps_bmap *bmap, const struct ps_bmap_range *r)
{
	uint64_t start = r->first * bmap->block_size, end = (r->last + 1) * bmap->block_size;

	if (end > bmap->image_size)
		end = bmap->image_size;
	return end > start ? end - start : 0;
}

uint64_t ps_bmap_mapped_bytes(const struct ps_bmap *bmap)
{
	uint64_t sum = 0;
	size_t i;

	for (i = 0; i < bmap->n_ranges; i++)
		sum += ps_bmap_range_bytes(bmap, &bmap->ranges[i]);
	return sum;
}
