/* test_bmap.c — unit tests for bmap.c (a real bmaptool 2.0 file, versions 1.0, 1.3 and 1.4,
 * every refusal) and for the ps_flash API on the image that file describes. */
#include "bmap.h"
#include "flash.h"
#include "tap.h"
#include "util.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *srcdir(void)
{
	const char *s = getenv("SRCDIR");

	return s && *s ? s : ".";
}

/* Put the file checksum into a document written with zeros in its place (what bmaptool
 * computes: the hash of the file with the checksum field all '0'). */
static char *sign(const char *doc, bool sha1)
{
	size_t n = sha1 ? 40 : 64, len = strlen(doc);
	char *out = strdup(doc), *at, hex[65];
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;

	at = strstr(out, "<BmapFileSHA1>");
	if (at == NULL)
		at = strstr(out, "<BmapFileChecksum>");
	at = at ? strchr(at, '>') + 1 : NULL;
	while (at && *at == ' ')
		at++;
	if (at == NULL || strspn(at, "0") < n)
		return out;
	EVP_Digest(out, len, md, &md_len, sha1 ? EVP_sha1() : EVP_sha256(), NULL);
	ps_hex(md, md_len, hex);
	memcpy(at, hex, n);
	return out;
}

#define Z64 "0000000000000000000000000000000000000000000000000000000000000000"
#define Z40 "0000000000000000000000000000000000000000"
#define H64 "66952ef1ed44b6b97a4214be1d96ce2bf84586633b2dfcfca29007cb715520ab"
#define H40 "a9993e364706816aba3e25717850c26c9cd0d89d"

/* A version 2.0 document with the given fields; the file checksum is filled in. */
static char *doc20(const char *image_size, const char *blocks, const char *mapped, const char *type,
		   const char *ranges)
{
	char buf[4096];

	snprintf(buf, sizeof(buf),
		 "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n"
		 "  <ImageSize> %s </ImageSize>\n  <BlockSize> 4096 </BlockSize>\n"
		 "  <BlocksCount> %s </BlocksCount>\n"
		 "  <MappedBlocksCount> %s </MappedBlocksCount>\n"
		 "  <ChecksumType> %s </ChecksumType>\n"
		 "  <BmapFileChecksum> " Z64 " </BmapFileChecksum>\n"
		 "  <BlockMap>\n%s  </BlockMap>\n</bmap>\n",
		 image_size, blocks, mapped, type, ranges);
	return sign(buf, false);
}

static int parse(const char *doc, struct ps_bmap *b, struct ps_err *err)
{
	err->msg[0] = '\0';
	return ps_bmap_parse(doc, strlen(doc), "t.bmap", b, err);
}

/* Refused with a message containing want. */
static void refused(const char *what, char *doc, const char *want)
{
	struct ps_bmap b;
	struct ps_err err = {""};
	int rc = parse(doc, &b, &err);

	ok(rc == PS_EINVAL, "%s: refused", what);
	contains(err.msg, want, "%s: message says '%s'", what, want);
	if (strstr(err.msg, want) == NULL)
		printf("#   message: %s\n", err.msg);
	if (rc == 0)
		ps_bmap_free(&b);
	free(doc);
}

/* The image small-2.0.bmap describes: a 1049576-byte sparse file. */
static int make_small_image(const char *path)
{
	static unsigned char block[4096];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644), rc = 0;

	if (fd < 0)
		return -1;
	if (ftruncate(fd, 1049576) != 0)
		rc = -1;
	memset(block, 0, sizeof(block));
	memcpy(block, "boot sector", 11);
	if (rc == 0 && pwrite(fd, block, 4096, 0) != 4096)
		rc = -1;
	memset(block, 'A', sizeof(block));
	for (int i = 10; rc == 0 && i <= 12; i++)
		if (pwrite(fd, block, 4096, (off_t)i * 4096) != 4096)
			rc = -1;
	if (rc == 0 && pwrite(fd, "tail", 4, 1049000) != 4)
		rc = -1;
	close(fd);
	return rc;
}

struct seen {
	pthread_mutex_t lock; /* the callback runs on the writer threads */
	int events, writing, verifying, done, failed;
	const char *corrupt; /* a target to damage when its read-back starts */
};

static void on_progress(const char *target, const struct ps_flash_progress *p, void *user)
{
	struct seen *s = user;

	pthread_mutex_lock(&s->lock);
	s->events++;
	s->writing += p->phase == PS_FLASH_WRITING;
	if (s->corrupt != NULL && strcmp(target, s->corrupt) == 0 &&
	    p->phase == PS_FLASH_VERIFYING && p->done == 0) {
		int fd = open(target, O_WRONLY);

		if (fd >= 0) {
			if (pwrite(fd, "X", 1, 10 * 4096 + 5) != 1)
				s->events = -1000;
			close(fd);
		}
		s->corrupt = NULL;
	}
	s->verifying += p->phase == PS_FLASH_VERIFYING;
	s->done += p->phase == PS_FLASH_DONE;
	s->failed += p->phase == PS_FLASH_FAILED;
	pthread_mutex_unlock(&s->lock);
}

/* Let a file just written age past the hash cache's granularity margin (50 ms), so that its
 * SHA-256 may be recorded. */
static void settle(void)
{
	struct timespec ts = {0, 100000000};

	nanosleep(&ts, NULL);
}

static void flash_api(void)
{
	char dir[] = "/tmp/ps-test-bmap-XXXXXX", img[256], bmap[512], t1[256], t2[256];
	char cache_dir[256], cache[300];
	const char *targets[3];
	struct ps_flash_result res[3];
	struct ps_flash_request req = {0};
	struct seen seen = {.lock = PTHREAD_MUTEX_INITIALIZER};
	struct ps_err err = {""};
	struct stat st;
	int rc;

	if (mkdtemp(dir) == NULL) {
		ok(0, "temporary directory");
		return;
	}
	snprintf(img, sizeof(img), "%s/small.img", dir);
	snprintf(bmap, sizeof(bmap), "%s/tests/data/flash/small-2.0.bmap", srcdir());
	snprintf(t1, sizeof(t1), "%s/t1.img", dir);
	snprintf(t2, sizeof(t2), "%s/t2.img", dir);
	snprintf(cache_dir, sizeof(cache_dir), "%s/cache", dir);
	snprintf(cache, sizeof(cache), "%s/image-sha256", cache_dir);
	ok(make_small_image(img) == 0, "the fixture's image is built");
	settle();
	targets[0] = t1;
	targets[1] = t2;
	targets[2] = dir; /* a directory: dropped with its reason */
	req.image = img;
	req.bmap = bmap;
	req.targets = targets;
	req.n_targets = 3;
	req.verify = true;
	req.progress = on_progress;
	req.progress_user = &seen;
	req.hash_cache = cache; /* not the user's ~/.cache */
	rc = ps_flash(&req, res, &err);
	is_int(rc, PS_EINVAL, "one bad target of three: ps_flash fails");
	contains(err.msg, "1 of 3 targets failed", "the error counts the failed targets");
	is_int(res[0].status, 0, "target 1 succeeded");
	is_int(res[1].status, 0, "target 2 succeeded");
	ok(res[0].verified && res[1].verified, "both were verified");
	is_int(res[0].bytes_written, 4096 + 12288 + 1000, "only the mapped bytes were written");
	is_int(res[0].bytes_verified, res[0].bytes_written, "all of them were read back");
	is_str(res[0].image_sha256,
	       "3f90e126a2d05649b4eb74cdf541d633aa0b78f680b1c06966ffe46ddb9b2f3f",
	       "the result carries the SHA-256 of the whole image");
	ok(!res[0].image_sha256_cached, "the first flash hashed the image");
	ok(stat(cache, &st) == 0 && (st.st_mode & 0777) == 0600,
	   "and recorded its SHA-256 in a 0600 cache file");
	is_str(res[1].image_name, "small.img", "and the image's file name");
	is_int(res[0].image_size, 1049576, "and its size");
	ok(stat(t1, &st) == 0 && st.st_size == 1049576, "the file target has the image's size");
	ok(stat(t1, &st) == 0 && (st.st_mode & 0777) == 0600, "a new file target is 0600");
	is_int(res[2].status, PS_EINVAL, "the directory is dropped");
	contains(res[2].message, "directory", "with its reason");
	ok(seen.writing >= 2 && seen.verifying >= 2 && seen.done == 2 && seen.failed == 1,
	   "progress: writing, verifying, done for each good target, failed for the bad one "
	   "(%d/%d/%d/%d)",
	   seen.writing, seen.verifying, seen.done, seen.failed);

	/* The image must not be the bmap's: refused before any target is touched. */
	req.n_targets = 1;
	req.progress = NULL;
	req.image = bmap; /* a text file as a raw image: not the image the bmap describes */
	rc = ps_flash(&req, res, &err);
	is_int(rc, PS_EINVAL, "an image of another size than its bmap is refused");
	contains(err.msg, "wrong bmap file", "the message suspects the bmap");

	/* A target that changes between the write and the read-back fails with the range. */
	req.image = img;
	req.bmap = bmap;
	req.n_targets = 2;
	req.progress = on_progress;
	seen.corrupt = t2;
	rc = ps_flash(&req, res, &err);
	ok(rc == PS_EIO && res[0].status == 0 && res[0].verified && res[1].status == PS_EIO &&
	       !res[1].verified,
	   "a target damaged before its read-back fails verification, the other passes");
	is_str(res[1].message,
	       "verification failed: bytes 40960-53247 read back differ from the image",
	       "the message gives the first bad range");
	req.progress = NULL;
	ok(res[0].image_sha256_cached, "the same image again: its SHA-256 came from the cache");
	is_str(res[0].image_sha256,
	       "3f90e126a2d05649b4eb74cdf541d633aa0b78f680b1c06966ffe46ddb9b2f3f",
	       "the cached SHA-256 is the image's");

	/* Rewritten in place, same size, its mtime put back: the ctime alone tells. */
	{
		char *data = NULL, want[65];
		size_t len = 0;
		struct timespec times[2];
		int fd;

		ok(stat(img, &st) == 0, "the image's times");
		times[0] = st.st_atim;
		times[1] = st.st_mtim;
		fd = open(img, O_WRONLY);
		ok(fd >= 0 && pwrite(fd, "changed", 7, 500000) == 7 && futimens(fd, times) == 0,
		   "one unmapped byte of the image is rewritten, its mtime kept");
		if (fd >= 0)
			close(fd);
		settle();
		ok(ps_read_file(img, 2u << 20, &data, &len, &err) == 0 &&
		       ps_sha256_hex(data, len, want, &err) == 0,
		   "the new SHA-256 of the image");
		free(data);
		req.n_targets = 1;
		rc = ps_flash(&req, res, &err);
		is_int(rc, 0, "the rewritten image flashes");
		ok(!res[0].image_sha256_cached, "it was hashed again, not taken from the cache");
		is_str(res[0].image_sha256, want, "the result carries its new SHA-256");
		rc = ps_flash(&req, res, &err);
		ok(rc == 0 && res[0].image_sha256_cached && strcmp(res[0].image_sha256, want) == 0,
		   "the next flash takes the new SHA-256 from the cache");
		req.no_hash_cache = true;
		rc = ps_flash(&req, res, &err);
		ok(rc == 0 && !res[0].image_sha256_cached && strcmp(res[0].image_sha256, want) == 0,
		   "no_hash_cache: hashed every time");
		req.no_hash_cache = false;
	}

	/* Hashing ahead of the first flash (the station does it at start). */
	{
		char sha[65], other_cache[320], gz[300], cmd[700], want[65];
		bool cached = true;

		snprintf(want, sizeof(want), "%s", res[0].image_sha256);
		snprintf(other_cache, sizeof(other_cache), "%s/ahead", cache_dir);
		ok(ps_flash_hash_image(img, other_cache, NULL, sha, &cached, &err) == 0,
		   "an image hashed ahead: %s", err.msg);
		is_str(sha, want, "its SHA-256 is the one flashing reports");
		ok(!cached, "computed the first time");
		ok(ps_flash_hash_image(img, other_cache, NULL, sha, &cached, &err) == 0 && cached &&
		       strcmp(sha, want) == 0,
		   "then known from the cache");
		snprintf(gz, sizeof(gz), "%s/small.img.gz", dir);
		snprintf(cmd, sizeof(cmd), "gzip -1 -c %s > %s", img, gz);
		ok(system(cmd) == 0, "the image gzipped");
		ok(ps_flash_hash_image(gz, other_cache, NULL, sha, &cached, &err) == 0 && !cached &&
		       strcmp(sha, want) == 0,
		   "a gzip image: the SHA-256 of its decompressed stream");
		snprintf(cmd, sizeof(cmd), "truncate -s 2000 %s", gz);
		ok(system(cmd) == 0, "the gzip image cut short");
		is_int(ps_flash_hash_image(gz, other_cache, NULL, sha, &cached, &err), PS_EINVAL,
		       "a truncated stream is refused");
		contains(err.msg, "small.img.gz", "naming the image: %s", err.msg);
		is_str(sha, "", "and no SHA-256 comes out");
		unlink(gz);
		unlink(other_cache);
	}

	/* Cancelled (the flag set before the start): every target says so. */
	{
		atomic_bool stop = true;

		req.image = img;
		req.bmap = bmap;
		req.cancel = &stop;
		req.n_targets = 2;
		rc = ps_flash(&req, res, &err);
		ok(rc < 0 && strcmp(res[0].message, "cancelled") == 0 &&
		       strcmp(res[1].message, "cancelled") == 0,
		   "a cancelled flash fails every target with 'cancelled' (%s)", err.msg);
	}

	unlink(t1);
	unlink(t2);
	unlink(img);
	unlink(cache);
	rmdir(cache_dir);
	rmdir(dir);
}

int main(void)
{
	struct ps_bmap b;
	struct ps_err err = {""};
	char path[512], *doc;
	size_t len;
	int rc;

	/* A real file from bmaptool 3.6. */
	snprintf(path, sizeof(path), "%s/tests/data/flash/small-2.0.bmap", srcdir());
	rc = ps_bmap_load(path, &b, &err);
	ok(rc == 0, "bmaptool's 2.0 file loads (%s)", err.msg);
	if (rc == 0) {
		is_int(b.version_major, 2, "version 2.x");
		is_int(b.image_size, 1049576, "ImageSize");
		is_int(b.block_size, 4096, "BlockSize");
		is_int(b.blocks_count, 257, "BlocksCount");
		is_int(b.mapped_blocks, 5, "MappedBlocksCount");
		is_int(b.csum_type, PS_BMAP_CSUM_SHA256, "SHA-256 checksums");
		ok(b.file_csum_checked, "the file's own checksum was checked");
		is_int(b.n_ranges, 3, "three ranges");
		ok(b.n_ranges == 3 && b.ranges[0].first == 0 && b.ranges[0].last == 0,
		   "a single block: '0'");
		ok(b.n_ranges == 3 && b.ranges[1].first == 10 && b.ranges[1].last == 12,
		   "a range: '10-12'");
		ok(b.n_ranges == 3 && b.ranges[0].has_csum && b.ranges[0].csum_len == 32 &&
		       b.ranges[0].csum[0] == 0x66 && b.ranges[0].csum[31] == 0xab,
		   "the range checksum is decoded");
		is_int(ps_bmap_range_bytes(&b, &b.ranges[2]), 1000,
		       "the last block is cut at the end of the image");
		is_int(ps_bmap_mapped_bytes(&b), 4096 + 12288 + 1000, "mapped bytes");
		ps_bmap_free(&b);
	}
	if (ps_read_file(path, 1 << 20, &doc, &len, &err) == 0) {
		char *c = strstr(doc, "Image size in bytes"); /* in a comment: still good XML */

		if (c != NULL)
			*c = 'i';
		refused("a 2.0 file with one letter changed in a comment", doc,
			"own checksum does not match");
	} else {
		ok(0, "read %s: %s", path, err.msg);
	}

	/* Versions 1.0 to 1.2: no checksums at all. */
	doc = strdup("<bmap version=\"1.2\"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize>"
		     "<BlocksCount>2</BlocksCount><MappedBlocksCount>1</MappedBlocksCount>"
		     "<BlockMap><Range>1</Range></BlockMap></bmap>");
	rc = parse(doc, &b, &err);
	ok(rc == 0, "version 1.2 without checksums (%s)", err.msg);
	if (rc == 0) {
		ok(b.csum_type == PS_BMAP_CSUM_NONE && !b.file_csum_checked &&
		       !b.ranges[0].has_csum,
		   "no checksums");
		ps_bmap_free(&b);
	}
	free(doc);

	/* Version 1.3: SHA-1 in "sha1" attributes and BmapFileSHA1. */
	doc = sign("<bmap version=\"1.3\"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize>"
		   "<BlocksCount>2</BlocksCount><MappedBlocksCount>2</MappedBlocksCount>"
		   "<BmapFileSHA1> " Z40 " </BmapFileSHA1><BlockMap>"
		   "<Range sha1=\"" H40 "\"> 0-1 </Range></BlockMap></bmap>",
		   true);
	rc = parse(doc, &b, &err);
	ok(rc == 0, "version 1.3 with SHA-1 (%s)", err.msg);
	if (rc == 0) {
		ok(b.csum_type == PS_BMAP_CSUM_SHA1 && b.csum_len == 20 && b.file_csum_checked &&
		       b.ranges[0].has_csum && b.ranges[0].csum_len == 20 &&
		       b.ranges[0].csum[0] == 0xa9,
		   "SHA-1 checksums, the file's own checked");
		ps_bmap_free(&b);
	}
	free(doc);

	/* Version 1.4: ChecksumType, "chksum" attributes, BmapFileChecksum. */
	doc = sign("<bmap version=\"1.4\"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize>"
		   "<BlocksCount>2</BlocksCount><MappedBlocksCount>1</MappedBlocksCount>"
		   "<ChecksumType>sha1</ChecksumType>"
		   "<BmapFileChecksum>" Z40 "</BmapFileChecksum><BlockMap>"
		   "<Range chksum=\"" H40 "\">1</Range></BlockMap></bmap>",
		   true);
	rc = parse(doc, &b, &err);
	ok(rc == 0 && b.csum_type == PS_BMAP_CSUM_SHA1 && b.file_csum_checked,
	   "version 1.4 with ChecksumType sha1 (%s)", err.msg);
	if (rc == 0)
		ps_bmap_free(&b);
	free(doc);

	doc = doc20("8192", "2", "2", "sha256",
		    "<Range chksum=\"" H64 "\">0</Range>\n"
		    "<Range chksum=\"" H64 "\">1</Range>\n");
	rc = parse(doc, &b, &err);
	ok(rc == 0 && b.n_ranges == 2, "a constructed 2.0 file parses (%s)", err.msg);
	if (rc == 0)
		ps_bmap_free(&b);
	free(doc);

	refused("version 3.0", strdup("<bmap version=\"3.0\"></bmap>"), "not supported");
	refused("no version", strdup("<bmap><ImageSize>1</ImageSize></bmap>"), "MAJOR.MINOR");
	refused("malformed XML", strdup("<bmap version=\"2.0\"><ImageSize>1</bmap>"),
		"not a usable bmap file: line 1");
	refused("another root element", strdup("<html version=\"2.0\"></html>"), "not a bmap file");
	refused("an empty file", strdup(""), "t.bmap");
	refused("a missing ImageSize",
		strdup("<bmap version=\"1.0\"><BlockSize>4096</BlockSize><BlocksCount>1"
		       "</BlocksCount><MappedBlocksCount>0</MappedBlocksCount><BlockMap/></bmap>"),
		"<ImageSize> is missing");
	refused("an external entity is not expanded",
		strdup("<?xml version=\"1.0\"?><!DOCTYPE bmap [<!ENTITY x SYSTEM "
		       "\"file:///etc/hostname\">]><bmap version=\"1.0\"><ImageSize>&x;"
		       "</ImageSize><BlockSize>4096</BlockSize><BlocksCount>1</BlocksCount>"
		       "<MappedBlocksCount>0</MappedBlocksCount><BlockMap/></bmap>"),
		"ImageSize");
	refused("a missing file checksum",
		strdup("<bmap version=\"2.0\"><ImageSize>4096</ImageSize><BlockSize>4096"
		       "</BlockSize><BlocksCount>1</BlocksCount><MappedBlocksCount>0"
		       "</MappedBlocksCount><ChecksumType>sha256</ChecksumType><BlockMap/></bmap>"),
		"own checksum (BmapFileChecksum) is missing");
	refused("an unknown checksum type", doc20("8192", "2", "0", "md5", ""), "md5");
	refused("BlocksCount that does not match ImageSize", doc20("8193", "2", "0", "sha256", ""),
		"ImageSize 8193 bytes is not BlocksCount 2");
	refused("MappedBlocksCount that does not match the ranges",
		doc20("8192", "2", "2", "sha256", "<Range chksum=\"" H64 "\">1</Range>"),
		"the ranges hold 1 blocks, MappedBlocksCount says 2");
	refused("ranges out of order",
		doc20("16384", "4", "2", "sha256",
		      "<Range chksum=\"" H64 "\">2</Range><Range chksum=\"" H64 "\">1</Range>"),
		"out of order");
	refused("overlapping ranges",
		doc20("16384", "4", "4", "sha256",
		      "<Range chksum=\"" H64 "\">0-2</Range><Range chksum=\"" H64 "\">2</Range>"),
		"overlaps");
	refused("a range past the image",
		doc20("8192", "2", "2", "sha256", "<Range chksum=\"" H64 "\">1-2</Range>"),
		"goes past the image's 2 blocks");
	refused("first after last",
		doc20("8192", "2", "2", "sha256", "<Range chksum=\"" H64 "\">1-0</Range>"),
		"first > last");
	refused("a range that is not a number",
		doc20("8192", "2", "1", "sha256", "<Range chksum=\"" H64 "\">one</Range>"),
		"bad block range 'one'");
	refused("a negative block", doc20("8192", "2", "1", "sha256", "<Range>-1</Range>"),
		"bad block range");
	refused("a checksum of the wrong length",
		doc20("8192", "2", "1", "sha256", "<Range chksum=\"" H40 "\">1</Range>"),
		"not a SHA-256 checksum");
	refused("a checksum that is not hex",
		doc20("8192", "2", "1", "sha256", "<Range chksum=\"xyz\">1</Range>"),
		"bad checksum 'xyz'");
	refused("a number too large", doc20("99999999999999999999999", "2", "0", "sha256", ""),
		"not a number");

	flash_api();
	return tap_done();
}
