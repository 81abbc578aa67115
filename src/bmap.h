/* bmap.h — the block map files of bmap-tools (format versions 1.x and 2.x): which blocks of an
 * image hold data, with a checksum per range, read with libxml2 and checked for consistency
 * (sizes, counts, ascending ranges) and against the file's own checksum. */
#ifndef PS_BMAP_H
#define PS_BMAP_H

#include "err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest bmap file read (a bmap of a 64 GiB image with 1 M ranges is about 100 MiB of
 * which most is comments; real ones are a few MiB at most). */
#define PS_BMAP_MAX_FILE (128u * 1024 * 1024)

enum ps_bmap_csum {
	PS_BMAP_CSUM_NONE,   /* versions 1.0 to 1.2: no checksums */
	PS_BMAP_CSUM_SHA1,   /* version 1.3 ("sha1" attributes), or 1.4 with ChecksumType sha1 */
	PS_BMAP_CSUM_SHA256, /* versions 1.4 and 2.x */
};

struct ps_bmap_range {
	uint64_t first, last; /* block numbers, inclusive */
	bool has_csum;
	unsigned char csum_len; /* 20 (SHA-1) or 32 (SHA-256) when has_csum */
	unsigned char csum[32];
};

struct ps_bmap {
	unsigned version_major, version_minor;
	uint64_t image_size;	/* bytes (ImageSize) */
	uint64_t block_size;	/* bytes (BlockSize) */
	uint64_t blocks_count;	/* BlocksCount: ImageSize / BlockSize rounded up */
	uint64_t mapped_blocks; /* MappedBlocksCount, equal to the blocks in the ranges */
	enum ps_bmap_csum csum_type;
	size_t csum_len;	      /* bytes of a checksum: 0, 20 or 32 */
	bool file_csum_checked;	      /* the file's own checksum was present and matched */
	struct ps_bmap_range *ranges; /* ascending, not overlapping */
	size_t n_ranges;
};

/* Parse a bmap held in memory; name is used in messages ("IMG.bmap"). On success out owns
 * the ranges (ps_bmap_free). Checks the version (1.x or 2.x), that BlocksCount matches
 * ImageSize, that the ranges are in order, inside the image and add up to
 * MappedBlocksCount, the checksums' form, and the file's own checksum (BmapFileChecksum,
 * BmapFileSHA1) when the version has one. */
int ps_bmap_parse(const char *buf, size_t len, const char *name, struct ps_bmap *out,
		  struct ps_err *err);

/* Read and parse a bmap file. */
int ps_bmap_load(const char *path, struct ps_bmap *out, struct ps_err *err);

void ps_bmap_free(struct ps_bmap *bmap);

/* Bytes of the range r: its blocks, the last one cut at the end of the image. */
uint64_t ps_bmap_range_bytes(const struct ps_bmap *bmap, const struct ps_bmap_range *r);

/* Bytes of all mapped ranges: what a flash writes. */
uint64_t ps_bmap_mapped_bytes(const struct ps_bmap *bmap);

#endif
