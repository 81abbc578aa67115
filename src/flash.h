/* flash.h — writing a golden image to one or more targets at once: raw or gzip/xz/zstd
 * compressed (decompressed as a stream), only the mapped ranges when a bmap file is given (its
 * checksums checked as the ranges are read), every target fed from one read of the image,
 * each read back and compared afterwards. A failing target is dropped with its reason while
 * the others finish. */
#ifndef PS_FLASH_H
#define PS_FLASH_H

#include "err.h"
#include "safety.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PS_FLASH_MAX_TARGETS 32

/* Memory: a ring of PS_FLASH_RING chunks of PS_FLASH_CHUNK bytes shared by all targets,
 * whatever the image size. The read-backs (at most PS_FLASH_MAX_VERIFYING at a time) start once
 * every target is done writing and the ring is free, and read into its chunks: four buffers of
 * PS_FLASH_VERIFY_CHUNK each, two reads in flight. */
#define PS_FLASH_CHUNK	       (4u << 20)
#define PS_FLASH_RING	       8
#define PS_FLASH_VERIFY_CHUNK  (2u << 20)
#define PS_FLASH_MAX_VERIFYING 4
/* Buffered writes are flushed (fdatasync) every this many bytes, so that stopping is quick. */
#define PS_FLASH_SYNC_EVERY (64ull << 20)

enum ps_flash_format { PS_FLASH_RAW, PS_FLASH_GZIP, PS_FLASH_XZ, PS_FLASH_ZSTD };

enum ps_flash_phase {
	PS_FLASH_WRITING,   /* done/total: bytes written of the bytes to write */
	PS_FLASH_VERIFYING, /* done/total: bytes read back of the bytes written */
	PS_FLASH_DONE,	    /* finished: written and (when asked) verified */
	PS_FLASH_FAILED,    /* dropped; the result says why */
};

struct ps_flash_progress {
	size_t index; /* the target's index in the request */
	enum ps_flash_phase phase;
	uint64_t done, total; /* bytes; total is 0 when not known yet (compressed, no bmap) */
	double rate;	      /* bytes per second since the phase started */
	double eta;	      /* seconds left in this phase, < 0 when unknown */
};

/* Called from the flashing threads, at most every PS_FLASH_PROGRESS_MS per target and at each
 * phase change: keep it cheap and thread-safe. */
typedef void (*ps_flash_progress_fn)(const char *target, const struct ps_flash_progress *p,
				     void *user);
#define PS_FLASH_PROGRESS_MS 100

struct ps_flash_request {
	const char *image;	    /* raw, .gz, .xz or .zst (found by magic bytes, not the name) */
	const char *bmap;	    /* optional bmap file (bmaptool create) */
	const char *const *targets; /* block devices (whole disks) or regular files */
	size_t n_targets;
	bool verify; /* read back and compare after writing */
	/* The safety gate for block devices: ps_safety_check with this policy, min_size raised
	 * to the image size; and a block device must be a station slot (target_is_slot[i], may
	 * be NULL) or allow_unlisted. Regular files are created or truncated. */
	struct ps_safety_policy safety;
	bool allow_unlisted;
	const bool *target_is_slot;
	ps_flash_progress_fn progress; /* optional */
	void *progress_user;
	atomic_bool *cancel; /* optional: set it (e.g. from a signal handler) to stop soon */
	/* The whole-image SHA-256 of a regular image file is cached, keyed by the file's identity
	 * (device, inode, size, mtime and ctime to the nanosecond), so that flashing the same image
	 * again does not hash it again; any change to the file changes its ctime and makes it
	 * hashed anew. The cache is a small text file owned by the user and writable by nobody
	 * else (otherwise it is ignored). hash_cache names it; NULL means
	 * $XDG_CACHE_HOME/provstation/image-sha256, else ~/.cache/provstation/image-sha256, else
	 * no cache (the station passes a file in its state directory). */
	const char *hash_cache;
	bool no_hash_cache; /* neither read nor write the cache: hash the image every time */
};

struct ps_flash_result {
	int status;	    /* 0 or a PS_E* status */
	char message[1024]; /* why it failed (without the target's name); "" when it did not */
	uint64_t bytes_written;
	double write_seconds; /* first write to the last flush */
	bool verified;	      /* read back and equal to the image */
	double verify_seconds;
	uint64_t bytes_verified;
	/* The image, the same in every result: for the audit row. */
	char image_name[256];  /* the image file's name, without its directory */
	char image_sha256[65]; /* SHA-256 of the decompressed image stream, all of it
				  (mapped or not); "" when the image was not read to its end */
	uint64_t image_size;   /* bytes of the decompressed image; 0 when not known */
	enum ps_flash_format format;
	bool image_sha256_cached; /* image_sha256 came from the hash cache (the image was still
				     read to its end, and matched the cached size) */
};

/* Flash req->image onto every target; results has req->n_targets entries, filled in order.
 * Returns 0 when every target was written (and verified when asked). Otherwise a negative
 * status with err naming the image's problem (bad bmap, checksum mismatch, corrupt or truncated
 * stream: every target fails with it) or the failed targets ("2 of 3 targets failed; ...").
 * Nothing is written anywhere when the image or bmap is unusable; a target the gate refuses,
 * or that is known to be smaller than the image, is dropped before anything is written to it
 * while the others go ahead. */
int ps_flash(const struct ps_flash_request *req, struct ps_flash_result *results,
	     struct ps_err *err);

/* The SHA-256 of a golden image's decompressed stream, as ps_flash reports it, from the hash
 * cache (hash_cache as in ps_flash_request; NULL: the default place) or computed and recorded
 * there, so that the first flash of an image the station already knows needs no hash.
 * *from_cache (may be NULL) says which. cancel (may be NULL) stops it soon (PS_EIO). */
int ps_flash_hash_image(const char *image, const char *hash_cache, atomic_bool *cancel,
			char sha256[65], bool *from_cache, struct ps_err *err);

/* "raw", "gzip", "xz", "zstd" */
const char *ps_flash_format_name(enum ps_flash_format format);

/* Detect the format of an image file by its first bytes. */
int ps_flash_detect(const char *image, enum ps_flash_format *format, struct ps_err *err);

#endif
