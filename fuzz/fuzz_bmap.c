/* fuzz_bmap.c — libFuzzer target for the bmap parser (src/bmap.c): arbitrary bytes as a bmap
 * file through ps_bmap_parse, once as given and once "signed": the hex digits of its
 * BmapFileChecksum (or BmapFileSHA1) replaced by the right hash, as bmaptool writes it, so
 * that mutated files get past the file checksum to the header and range checks. Oracles: an
 * accepted bmap is a supported version, BlocksCount is ImageSize in blocks, its ranges are
 * ascending, disjoint, inside the image and add up to MappedBlocksCount, each checksum has the
 * declared type's length, and the mapped bytes fit in the image. */
#define PENDING 0

#include "bmap.h"
#include "util.h"

#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct ps_bmap *b)
{
	uint64_t blocks = 0, bytes = 0;
	size_t i;

	if (b->version_major < 1 || b->version_major > 2)
		abort();
	if (b->block_size == 0 ||
	    b->blocks_count != b->image_size / b->block_size + (b->image_size % b->block_size != 0))
		abort();
	if (b->csum_len != (b->csum_type == PS_BMAP_CSUM_SHA256 ? 32u
			    : b->csum_type == PS_BMAP_CSUM_SHA1 ? 20u
								: 0u))
		abort();
	if (b->csum_type != PS_BMAP_CSUM_NONE && !b->file_csum_checked)
		abort(); /* a version with checksums has its own one checked */
	if (b->n_ranges > 0 && b->ranges == NULL)
		abort();
	for (i = 0; i < b->n_ranges; i++) {
		const struct ps_bmap_range *r = &b->ranges[i];
		uint64_t n = ps_bmap_range_bytes(b, r);

		if (r->first > r->last || r->last >= b->blocks_count)
			abort(); /* outside the image */
		if (i > 0 && r->first <= b->ranges[i - 1].last)
			abort(); /* out of order or overlapping */
		if (r->has_csum && r->csum_len != b->csum_len)
			abort();
		if (n == 0 || n > (r->last - r->first + 1) * b->block_size)
			abort(); /* every range holds bytes of the image */
		blocks += r->last - r->first + 1;
		bytes += n;
	}
	if (blocks != b->mapped_blocks || blocks > b->blocks_count)
		abort();
	if (bytes != ps_bmap_mapped_bytes(b) || bytes > b->image_size)
		abort();
}

static void parse(const char *text, size_t len)
{
	struct ps_bmap b;
	struct ps_err err = {""};

	if (ps_bmap_parse(text, len, "fuzz.bmap", &b, &err) == 0) {
		check(&b);
		ps_bmap_free(&b);
		if (b.ranges != NULL || b.n_ranges != 0)
			abort();
	} else if (b.ranges != NULL || b.n_ranges != 0 || err.msg[0] == '\0') {
		abort(); /* a refusal leaves nothing to free and says why */
	}
}

/* The hex digits after the first "<BmapFileChecksum>" or "<BmapFileSHA1>" (blanks skipped)
 * when there are 40 or 64 of them: set to the hash of the file with them all '0'. Returns
 * false when there is no such field. */
static bool sign(char *text, size_t len)
{
	static const char *const tags[] = {"<BmapFileChecksum>", "<BmapFileSHA1>"};
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	char hex[2 * EVP_MAX_MD_SIZE + 1];
	char *at = NULL;
	size_t i, n = 0;

	for (i = 0; i < 2 && at == NULL; i++) {
		at = memmem(text, len, tags[i], strlen(tags[i]));
		if (at != NULL)
			at += strlen(tags[i]);
	}
	if (at == NULL)
		return false;
	while (at < text + len && (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r'))
		at++;
	while (at + n < text + len && strchr("0123456789abcdefABCDEF", at[n]) != NULL &&
	       at[n] != '\0')
		n++;
	if (n != 40 && n != 64)
		return false;
	memset(at, '0', n);
	if (EVP_Digest(text, len, md, &md_len, n == 40 ? EVP_sha1() : EVP_sha256(), NULL) != 1 ||
	    2 * md_len != n)
		return false;
	ps_hex(md, md_len, hex);
	memcpy(at, hex, n);
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size ? size : 1);

	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	/* The parser takes a length, not a string: no terminator, so that ASan sees overreads. */
	parse(text, size);
	if (sign(text, size))
		parse(text, size);
	free(text);
	return 0;
}
