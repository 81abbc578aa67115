/* test_faults.c — fault injection into the image engine: an io_manager wrapping libext2fs's
 * unix_io_manager fails the Nth read or write (EIO, ENOSPC), pulls the card at the Nth write
 * (it and every later I/O fail), or ends the process at the Nth write (_exit, with and without
 * unix_io's block cache). For every N over a whole provisioning run (counted first on a clean
 * run), one forked child provisions a fresh copy of the image through the library; afterwards
 * e2fsck -fn may find only leaks that e2fsck -p repairs without asking (counts and bitmap
 * differences, an unattached empty inode, a link count one short of two names; never a name of a
 * deleted inode), every file holds its old or
 * its complete new content, the audit row is failed with the reason or verified (issued or
 * written after a crash), and a clean re-provisioning of the same image succeeds.
 *
 * Environment: SRCDIR (the source tree, for scripts/mkmenderimg.sh); PS_FAULTS_STRIDE=K tries
 * every Kth N only and PS_FAULTS_KINDS=write-eio,read-eio only those kinds (valgrind);
 * PS_FAULTS_VERBOSE=1 prints every trial, PS_FAULTS_TRACE=1 every write of a clean run;
 * for debugging, PS_FAULTS_SCENARIOS=hashed runs only the scenarios named, PS_FAULTS_N=K
 * only the Kth operation, and PS_FAULTS_KEEP=1 keeps the work directory. */
#include "audit.h"
#include "ca.h"
#include "config.h"
#include "image.h"
#include "menderconf.h"
#include "provision.h"
#include "tap.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

#define CRASH_STATUS	   77 /* the child's exit status when the fault ended it */
#define MAX_FAILURES_SHOWN 12

/* ------------------------------------------------------------------------------------------
 * The fault-injecting io_manager. */

enum fault_kind {
	FK_COUNT,	 /* no fault: count the operations */
	FK_READ_EIO,	 /* the Nth read fails with EIO */
	FK_WRITE_EIO,	 /* the Nth write fails with EIO */
	FK_WRITE_ENOSPC, /* the Nth write fails with ENOSPC */
	FK_PULL,	 /* the Nth write and every later I/O fail with EIO (no block cache) */
	FK_EXIT,	 /* _exit at the Nth write, unix_io's block cache as shipped */
	FK_EXIT_DIRECT,	 /* _exit at the Nth write, no block cache: all earlier writes landed */
};

static const char *const kind_names[] = {"count", "read-eio", "write-eio",  "write-enospc",
					 "pull",  "exit",     "exit-direct"};

struct fault_plan {
	enum fault_kind kind;
	long at; /* the Nth operation of the kind's class (1-based) */
	long reads, writes, flushes, opens, rw_opens;
	bool pulled;
	bool fired;
};

static struct fault_plan fault;
static bool trace; /* PS_FAULTS_TRACE: print every operation of the counting runs */

static bool kind_is_crash(enum fault_kind k)
{
	return k == FK_EXIT || k == FK_EXIT_DIRECT;
}

static bool kind_is_direct(enum fault_kind k)
{
	return k == FK_PULL || k == FK_EXIT_DIRECT;
}

static errcode_t on_read(void)
{
	fault.reads++;
	if (fault.pulled)
		return EIO;
	if (fault.kind == FK_READ_EIO && fault.reads == fault.at) {
		fault.fired = true;
		return EIO;
	}
	return 0;
}

/* Every operation that changes the medium or makes it durable counts as a write. */
static errcode_t on_write(void)
{
	fault.writes++;
	if (fault.pulled)
		return EIO;
	if (fault.writes != fault.at)
		return 0;
	switch (fault.kind) {
	case FK_WRITE_EIO:
		fault.fired = true;
		return EIO;
	case FK_WRITE_ENOSPC:
		fault.fired = true;
		return ENOSPC;
	case FK_PULL:
		fault.fired = fault.pulled = true;
		return EIO;
	case FK_EXIT:
	case FK_EXIT_DIRECT:
		_exit(CRASH_STATUS);
	case FK_COUNT:
	case FK_READ_EIO:
		break;
	}
	return 0;
}

static io_channel inner(io_channel ch)
{
	return ch->private_data;
}

static struct struct_io_manager fault_manager;

static errcode_t f_open(const char *name, int flags, io_channel *out)
{
	io_channel in = NULL, ch;
	errcode_t code;

	fault.opens++;
	fault.rw_opens += (flags & IO_FLAG_RW) != 0;
	if (kind_is_direct(fault.kind))
		flags |= IO_FLAG_NOCACHE;
	code = unix_io_manager->open(name, flags, &in);
	if (code != 0)
		return code;
	ch = calloc(1, sizeof(*ch));
	if (ch == NULL || (ch->name = strdup(name)) == NULL) {
		free(ch);
		unix_io_manager->close(in);
		return ENOMEM;
	}
	ch->magic = EXT2_ET_MAGIC_IO_CHANNEL;
	ch->manager = &fault_manager;
	ch->block_size = in->block_size;
	ch->refcount = 1;
	ch->flags = in->flags;
	ch->align = in->align;
	ch->private_data = in;
	*out = ch;
	return 0;
}

static errcode_t f_close(io_channel ch)
{
	errcode_t code;

	if (--ch->refcount > 0)
		return 0;
	code = inner(ch)->manager->close(inner(ch));
	free(ch->name);
	free(ch);
	return code;
}

static errcode_t f_set_blksize(io_channel ch, int blksize)
{
	errcode_t code = inner(ch)->manager->set_blksize(inner(ch), blksize);

	if (code == 0)
		ch->block_size = blksize;
	return code;
}

static errcode_t f_read_blk64(io_channel ch, unsigned long long block, int count, void *data)
{
	errcode_t code = on_read();

	return code ? code : inner(ch)->manager->read_blk64(inner(ch), block, count, data);
}

static errcode_t f_read_blk(io_channel ch, unsigned long block, int count, void *data)
{
	return f_read_blk64(ch, block, count, data);
}

static errcode_t f_write_blk64(io_channel ch, unsigned long long block, int count, const void *data)
{
	errcode_t code = on_write();

	if (trace && fault.kind == FK_COUNT)
		fprintf(stderr, "write #%ld: block %llu count %d\n", fault.writes, block, count);

	return code ? code : inner(ch)->manager->write_blk64(inner(ch), block, count, data);
}

static errcode_t f_write_blk(io_channel ch, unsigned long block, int count, const void *data)
{
	return f_write_blk64(ch, block, count, data);
}

static errcode_t f_write_byte(io_channel ch, unsigned long offset, int count, const void *data)
{
	errcode_t code = on_write();

	if (trace && fault.kind == FK_COUNT)
		fprintf(stderr, "write #%ld: bytes at %lu count %d\n", fault.writes, offset, count);

	return code ? code : inner(ch)->manager->write_byte(inner(ch), offset, count, data);
}

static errcode_t f_flush(io_channel ch)
{
	errcode_t code;

	fault.flushes++;
	code = on_write();
	if (trace && fault.kind == FK_COUNT)
		fprintf(stderr, "write #%ld: flush\n", fault.writes);
	return code ? code : inner(ch)->manager->flush(inner(ch));
}

static errcode_t f_set_option(io_channel ch, const char *option, const char *arg)
{
	return inner(ch)->manager->set_option(inner(ch), option, arg);
}

static errcode_t f_get_stats(io_channel ch, io_stats *stats)
{
	return inner(ch)->manager->get_stats(inner(ch), stats);
}

static errcode_t f_discard(io_channel ch, unsigned long long block, unsigned long long count)
{
	errcode_t code = on_write();

	return code ? code : inner(ch)->manager->discard(inner(ch), block, count);
}

static errcode_t f_zeroout(io_channel ch, unsigned long long block, unsigned long long count)
{
	errcode_t code = on_write();

	return code ? code : inner(ch)->manager->zeroout(inner(ch), block, count);
}

static errcode_t f_cache_readahead(io_channel ch, unsigned long long block,
				   unsigned long long count)
{
	return inner(ch)->manager->cache_readahead(inner(ch), block, count);
}

static struct struct_io_manager fault_manager = {
    .magic = EXT2_ET_MAGIC_IO_MANAGER,
    .name = "provstation fault-injecting I/O manager",
    .open = f_open,
    .close = f_close,
    .set_blksize = f_set_blksize,
    .read_blk = f_read_blk,
    .write_blk = f_write_blk,
    .flush = f_flush,
    .write_byte = f_write_byte,
    .set_option = f_set_option,
    .get_stats = f_get_stats,
    .read_blk64 = f_read_blk64,
    .write_blk64 = f_write_blk64,
    .discard = f_discard,
    .cache_readahead = f_cache_readahead,
    .zeroout = f_zeroout,
};

/* ------------------------------------------------------------------------------------------
 * The workspace: CA, configuration, audit database, images. */

static char root[4096];
static struct ps_config cfg;
static struct ps_ca ca;
static unsigned long long data_offset;
static char *server_pem;
static size_t server_pem_len;

static const char *path(const char *name)
{
	static char bufs[8][4200];
	static int i;
	char *p = bufs[i++ % 8];

	snprintf(p, sizeof(bufs[0]), "%s/%s", root, name);
	return p;
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Run a command and capture its output (stdout and stderr); returns its exit status. */
static int capture(char *out, size_t out_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int capture(char *out, size_t out_len, const char *fmt, ...)
{
	char cmd[8192];
	va_list ap;
	FILE *p;
	size_t n = 0, got;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	p = popen(cmd, "r");
	if (p == NULL)
		return -1;
	while (n + 1 < out_len && (got = fread(out + n, 1, out_len - n - 1, p)) > 0)
		n += got;
	out[n] = '\0';
	while (fgetc(p) != EOF)
		; /* drain what does not fit */
	st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Copy an image keeping its holes (they read as zeros either way). */
static int copy_image(const char *from, const char *to)
{
	int in = open(from, O_RDONLY | O_CLOEXEC), out = -1, rc = -1;
	static char buf[1 << 16];
	off_t size, data, hole;
	struct stat st;

	unlink(to);
	if (in < 0 || fstat(in, &st) != 0)
		goto out;
	size = st.st_size;
	out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0 || ftruncate(out, size) != 0)
		goto out;
	for (data = lseek(in, 0, SEEK_DATA); data >= 0 && data < size;
	     data = lseek(in, hole, SEEK_DATA)) {
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			goto out;
		while (data < hole) {
			size_t want = (size_t)(hole - data) < sizeof(buf) ? (size_t)(hole - data)
									  : sizeof(buf);
			ssize_t got = pread(in, buf, want, data);

			if (got <= 0 || pwrite(out, buf, (size_t)got, data) != got)
				goto out;
			data += got;
		}
	}
	rc = 0;
out:
	if (in >= 0)
		close(in);
	if (out >= 0 && close(out) != 0)
		rc = -1;
	return rc;
}

static bool same_file(const char *a, const char *b)
{
	static char ba[1 << 16], bb[1 << 16];
	int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
	bool same = fa >= 0 && fb >= 0;
	ssize_t na, nb;

	while (same) {
		na = read(fa, ba, sizeof(ba));
		nb = read(fb, bb, sizeof(bb));
		if (na != nb || na < 0 || memcmp(ba, bb, (size_t)na) != 0)
			same = false;
		if (na <= 0)
			break;
	}
	if (fa >= 0)
		close(fa);
	if (fb >= 0)
		close(fb);
	return same;
}

/* ------------------------------------------------------------------------------------------
 * e2fsck -fn, classified. */

static bool starts(const char *line, const char *prefix)
{
	return strncmp(line, prefix, strlen(prefix)) == 0;
}

/* CLEAN: nothing found. HARMLESS: only what e2fsck -p repairs silently, leaked counts and
 * bitmap differences. LEAKED: besides those, what else the write order allows (see "Crash
 * safety" in src/image.c), which e2fsck -p repairs without asking and without losing a name
 * or a byte: an unattached inode of zero length (cleared), a link count one short of the two
 * names that point at the inode (raised). DANGLING: a temporary name
 * (.provstation-new-*) naming a deleted inode, which e2fsck -p clears: the write order
 * exists to rule it out, so it fails a trial like BAD, anything else. */
enum fsck_class { FSCK_CLEAN, FSCK_HARMLESS, FSCK_LEAKED, FSCK_DANGLING, FSCK_BAD };

struct fsck_result {
	enum fsck_class cls;
	bool plus_bitmap; /* a "+" bitmap difference: in use but marked free */
	char first_bad[256];
	char first_leak[256];
	char output[16384];
};

/* "Entry '.provstation-new-x' in /mender (12) has deleted/unused inode 19.  Clear? no" */
static bool dangling_temporary(const char *line)
{
	return starts(line, "Entry '.provstation-new-") &&
	       strstr(line, "has deleted/unused inode") != NULL;
}

/* "Inode 19 ref count is 1, should be 2.  Fix? no": a count one short of the names, while a
 * temporary and the real name point at the inode for one step (src/image.c). Not 0 (the
 * inode reads as deleted), not more than one short, not above the names (which the next run
 * could not tell from hard links). */
static bool count_one_short(const char *line)
{
	unsigned ino, have, want;

	return sscanf(line, "Inode %u ref count is %u, should be %u.", &ino, &have, &want) == 3 &&
	       have >= 1 && want == have + 1;
}

/* The kinds of finding e2fsck -p repairs silently: counts and bitmaps in the group summary. */
static bool harmless_line(const char *line, bool *plus)
{
	static const char *const ok_prefixes[] = {
	    "Free blocks count wrong",
	    "Free inodes count wrong",
	    "Directories count wrong",
	    "Fix? no",
	    "Pass ",
	    "e2fsck ",
	};
	size_t i;

	for (i = 0; i < PS_ARRAY_SIZE(ok_prefixes); i++)
		if (starts(line, ok_prefixes[i]))
			return true;
	if (starts(line, "Block bitmap differences:") ||
	    starts(line, "Inode bitmap differences:")) {
		/* also "Group 0 inode bitmap does not match checksum." (answered IGNORED.):
		 * the bitmap was written and its checksum in the descriptor not yet */
		if (strchr(line, '+') != NULL)
			*plus = true;
		return true;
	}
	return strcmp(line, "IGNORED.") == 0;
}

static void leaked(struct fsck_result *res, const char *line)
{
	if (res->cls == FSCK_CLEAN || res->cls == FSCK_HARMLESS) {
		res->cls = FSCK_LEAKED;
		snprintf(res->first_leak, sizeof(res->first_leak), "%s", line);
	}
}

static void run_fsck(const char *image, struct fsck_result *res)
{
	char *line, *save = NULL;
	bool summary_seen = false, connect_prompt = false;
	unsigned empty[64], ino;
	size_t n_empty = 0, k;
	int st;

	memset(res, 0, sizeof(*res));
	st = capture(res->output, sizeof(res->output), "e2fsck -fn '%s?offset=%llu'", image,
		     data_offset);
	res->cls = st == 0 ? FSCK_CLEAN : st == 4 ? FSCK_HARMLESS : FSCK_BAD;
	if (res->cls == FSCK_BAD)
		snprintf(res->first_bad, sizeof(res->first_bad), "e2fsck exit status %d", st);
	{
		char copy[sizeof(res->output)];

		memcpy(copy, res->output, sizeof(copy));
		for (line = strtok_r(copy, "\n", &save); line != NULL;
		     line = strtok_r(NULL, "\n", &save)) {
			if (line[0] == '\0' || harmless_line(line, &res->plus_bitmap))
				continue;
			/* Pass 4 on an unattached empty inode, answered no: "Unattached zero-length
			 * inode 15.  Clear? no", then "Unattached inode 15" and "Connect to
			 * /lost+found? no". The last two only for an inode the first named. */
			if (sscanf(line, "Unattached zero-length inode %u.  Clear? no", &ino) ==
				1 &&
			    n_empty < PS_ARRAY_SIZE(empty)) {
				empty[n_empty++] = ino;
				leaked(res, line);
				continue;
			}
			if (sscanf(line, "Unattached inode %u", &ino) == 1 &&
			    strspn(line + strlen("Unattached inode "), "0123456789") ==
				strlen(line + strlen("Unattached inode "))) {
				for (k = 0; k < n_empty && empty[k] != ino; k++) {
				}
				if (k < n_empty) {
					connect_prompt = true;
					continue;
				}
			}
			if (connect_prompt && strcmp(line, "Connect to /lost+found? no") == 0) {
				connect_prompt = false;
				continue;
			}
			connect_prompt = false;
			if (count_one_short(line)) {
				leaked(res, line);
				continue;
			}
			/* "data: 14/4344 files (0.0% non-contiguous), 2408/17408 blocks" */
			if (strstr(line, " files (") != NULL && strstr(line, " blocks") != NULL) {
				summary_seen = true;
				continue;
			}
			if (strstr(line, "WARNING: Filesystem still has errors") != NULL)
				continue;
			if (dangling_temporary(line) && res->cls != FSCK_BAD) {
				/* not a leak: a name lost */
				if (res->cls != FSCK_DANGLING)
					snprintf(res->first_bad, sizeof(res->first_bad), "%s",
						 line);
				res->cls = FSCK_DANGLING;
				continue;
			}
			if (res->cls != FSCK_BAD)
				snprintf(res->first_bad, sizeof(res->first_bad), "%s", line);
			res->cls = FSCK_BAD;
		}
	}
	if (!summary_seen && res->cls != FSCK_BAD) {
		res->cls = FSCK_BAD;
		snprintf(res->first_bad, sizeof(res->first_bad), "no summary line from e2fsck");
	}
}

/* ------------------------------------------------------------------------------------------
 * What an image holds: the files of /mender, read with debugfs. */

#define N_FILES 4
static const char *const file_names[N_FILES] = {PS_KEY_NAME, PS_CERT_NAME, PS_SERVER_CERT_NAME,
						PS_CONF_NAME};
enum { F_KEY, F_CERT, F_SERVER, F_CONF };

struct image_files {
	char *data[N_FILES]; /* NULL: absent */
	size_t len[N_FILES];
	int temporaries; /* .provstation-new-* names left behind */
};

static void files_free(struct image_files *f)
{
	int i;

	for (i = 0; i < N_FILES; i++) {
		ps_free_secret(f->data[i], f->len[i]);
		f->data[i] = NULL;
	}
}

static int read_files(const char *image, struct image_files *f, char *why, size_t why_len)
{
	char out[4096], dir[4300], name[4600];
	struct ps_err err = {""};
	struct dirent *de;
	DIR *d;
	int i, st;

	memset(f, 0, sizeof(*f));
	snprintf(dir, sizeof(dir), "%s", path("dump"));
	sh("rm -rf '%s' && mkdir -p '%s'", dir, dir);
	/* -c: catastrophic mode, the bitmaps are not read (their checksums may lag) */
	st = capture(out, sizeof(out), "debugfs -c -R 'rdump /mender %s' '%s?offset=%llu'", dir,
		     image, data_offset);
	/* debugfs prints its banner on stderr and exits 0 even when a command fails */
	if (st != 0 || strstr(out, "rdump:") != NULL || strstr(out, "while ") != NULL) {
		snprintf(why, why_len, "debugfs rdump /mender failed: %.200s", out);
		return -1;
	}
	for (i = 0; i < N_FILES; i++) {
		snprintf(name, sizeof(name), "%s/mender/%s", dir, file_names[i]);
		if (access(name, F_OK) != 0)
			continue;
		if (ps_read_file(name, 1 << 20, &f->data[i], &f->len[i], &err) < 0) {
			snprintf(why, why_len, "%s", err.msg);
			return -1;
		}
	}
	snprintf(name, sizeof(name), "%s/mender", dir);
	d = opendir(name);
	while (d != NULL && (de = readdir(d)) != NULL)
		f->temporaries += strncmp(de->d_name, ".provstation-new-", 17) == 0;
	if (d != NULL)
		closedir(d);
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Audit rows. */

struct row_info {
	int n;
	char state[16];
	char reason[512];
	char cert_serial[80];
};

static int collect_row(const struct ps_cert_row *row, void *user)
{
	struct row_info *info = user;

	info->n++;
	snprintf(info->state, sizeof(info->state), "%s", row->state);
	snprintf(info->reason, sizeof(info->reason), "%s", row->reason);
	snprintf(info->cert_serial, sizeof(info->cert_serial), "%s", row->cert_serial);
	return 0;
}

static int find_row(const char *serial, struct row_info *info, struct ps_err *err)
{
	struct ps_db_filter filter = {.device_serial = serial};
	struct ps_db *db = NULL;
	int rc;

	memset(info, 0, sizeof(*info));
	rc = ps_db_open(cfg.database, &db, err);
	if (rc == 0)
		rc = ps_db_each(db, &filter, collect_row, info, err);
	ps_db_close(db);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * One provisioning in a forked child. */

struct child_result {
	int status; /* 0 provisioned, 1 failed, CRASH_STATUS, or 128+signal */
	bool fired;
	char msg[1024];
	long reads, writes, flushes, opens, rw_opens;
};

struct child_report {
	int rc;
	bool fired;
	long reads, writes, flushes, opens, rw_opens;
	char msg[1024];
};

/* One provisioning through the library, with the fault plan set. */
static int provision(enum fault_kind kind, long at, const char *image, const char *serial,
		     struct child_report *rep)
{
	struct ps_provision_request req = {0};
	struct ps_provision_result res;
	struct ps_err err = {""};
	struct ps_db *db = NULL;
	int rc;

	memset(&fault, 0, sizeof(fault));
	fault.kind = kind;
	fault.at = at;
	ps_image_io_manager = &fault_manager;
	rc = ps_db_open(cfg.database, &db, &err);
	if (rc == 0) {
		req.cfg = &cfg;
		req.target = image;
		req.serial = serial;
		req.ca = &ca;
		req.db = db;
		rc = ps_provision(&req, &res, &err);
	}
	ps_db_close(db);
	ps_image_io_manager = NULL;
	memset(rep, 0, sizeof(*rep));
	rep->rc = rc;
	rep->fired = fault.fired;
	rep->reads = fault.reads;
	rep->writes = fault.writes;
	rep->flushes = fault.flushes;
	rep->opens = fault.opens;
	rep->rw_opens = fault.rw_opens;
	snprintf(rep->msg, sizeof(rep->msg), "%s", err.msg);
	return rc;
}

static void provision_child(int fd, enum fault_kind kind, long at, const char *image,
			    const char *serial)
{
	struct child_report rep;
	int rc = provision(kind, at, image, serial, &rep);

	if (write(fd, &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
		_exit(3);
	_exit(rc == 0 ? 0 : 1);
}

/* Without a fault nothing ends the process: this one runs in the test itself (a fork of a
 * sanitizer build costs tens of milliseconds). */
static void run_clean(const char *image, const char *serial, struct child_result *out)
{
	struct child_report rep;

	memset(out, 0, sizeof(*out));
	out->status = provision(FK_COUNT, 0, image, serial, &rep) == 0 ? 0 : 1;
	snprintf(out->msg, sizeof(out->msg), "%s", rep.msg);
}

static void run_child(enum fault_kind kind, long at, const char *image, const char *serial,
		      struct child_result *out)
{
	struct child_report rep;
	int fds[2], st = 0;
	ssize_t got;
	pid_t pid;

	memset(out, 0, sizeof(*out));
	fflush(stdout);
	if (pipe(fds) != 0) {
		out->status = -1;
		return;
	}
	pid = fork();
	if (pid == 0) {
		close(fds[0]);
		provision_child(fds[1], kind, at, image, serial);
	}
	close(fds[1]);
	memset(&rep, 0, sizeof(rep));
	got = read(fds[0], &rep, sizeof(rep));
	close(fds[0]);
	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		out->status = -1;
	else
		out->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	if (got == (ssize_t)sizeof(rep)) {
		out->fired = rep.fired;
		out->reads = rep.reads;
		out->writes = rep.writes;
		out->flushes = rep.flushes;
		out->opens = rep.opens;
		out->rw_opens = rep.rw_opens;
		snprintf(out->msg, sizeof(out->msg), "%s", rep.msg);
	} else if (out->status == CRASH_STATUS) {
		out->fired = true;
		snprintf(out->msg, sizeof(out->msg), "(ended at the fault)");
	}
}

/* ------------------------------------------------------------------------------------------
 * Judging one trial. */

struct scenario {
	const char *name;
	char pristine[4200]; /* the image every trial starts from */
	struct image_files old;
	long reads, writes, flushes, opens, rw_opens;
	unsigned changing; /* the files a job changes (a bit per file) */
};

struct tally {
	long trials, passed, not_reached;
	long failed_rows, verified_rows, issued_rows, written_rows, no_rows;
	long fsck_clean, fsck_harmless, fsck_leaked, fsck_dangling, preen_ok;
	long files_new, files_old, files_mixed, temporaries;
	long recovered, refused_until_fsck;
	int shown, leaked_shown;
};

static bool same_content(const char *a, size_t alen, const char *b, size_t blen)
{
	if (a == NULL || b == NULL)
		return a == b;
	return alen == blen && memcmp(a, b, alen) == 0;
}

static const struct ps_mender_settings *settings(void)
{
	static struct ps_mender_settings s;

	s.cert_path = PS_DEVICE_DATA_DIR "/" PS_CERT_NAME;
	s.key_path = PS_DEVICE_DATA_DIR "/" PS_KEY_NAME;
	s.server_url = cfg.server_url;
	s.tenant_token = cfg.tenant_token;
	s.server_certificate = PS_DEVICE_DATA_DIR "/" PS_SERVER_CERT_NAME;
	return &s;
}

/* Each file old or completely new; returns false with why. new_mask gets a bit per new file. */
static bool check_files(const struct scenario *sc, const struct image_files *f,
			const struct row_info *row, unsigned *new_mask, char *why, size_t why_len)
{
	struct ps_err err = {""};
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	json_t *conf = NULL;
	char serial[80];
	bool good = true;
	int i;

	*new_mask = 0;
	for (i = 0; i < N_FILES; i++) {
		if (same_content(f->data[i], f->len[i], sc->old.data[i], sc->old.len[i]))
			continue;
		*new_mask |= 1u << i;
		if (f->data[i] == NULL) {
			snprintf(why, why_len, "%s vanished", file_names[i]);
			good = false;
			break;
		}
		switch (i) {
		case F_KEY:
			good = ps_key_from_pem(f->data[i], f->len[i], NULL, &key, &err) == 0;
			break;
		case F_CERT:
			good = ps_cert_from_pem(f->data[i], f->len[i], &cert, &err) == 0 &&
			       ps_cert_serial_hex(cert, serial, sizeof(serial), &err) == 0;
			if (good && (row->n != 1 || strcmp(serial, row->cert_serial) != 0)) {
				snprintf(err.msg, sizeof(err.msg),
					 "its serial %s has no audit row of this job", serial);
				good = false;
			}
			break;
		case F_SERVER:
			good = same_content(f->data[i], f->len[i], server_pem, server_pem_len);
			if (!good)
				snprintf(err.msg, sizeof(err.msg), "not the station's CA bundle");
			break;
		case F_CONF:
			good = ps_menderconf_parse(f->data[i], f->len[i], "mender.conf", &conf,
						   &err) == 0 &&
			       ps_menderconf_check_effective(conf, settings(), "mender.conf",
							     &err) == 0;
			break;
		}
		if (!good) {
			snprintf(why, why_len, "%s is neither old nor complete new content: %s",
				 file_names[i], err.msg);
			break;
		}
	}
	if (good && key != NULL && cert != NULL && X509_check_private_key(cert, key) != 1) {
		snprintf(why, why_len, "the new key does not match the new certificate");
		good = false;
	}
	EVP_PKEY_free(key);
	X509_free(cert);
	json_decref(conf);
	return good;
}

static void show_failure(struct tally *t, const char *scenario, const char *kind, long n,
			 const char *why, const char *detail)
{
	if (t->shown++ >= MAX_FAILURES_SHOWN)
		return;
	printf("#   %s %s N=%ld: %s\n", scenario, kind, n, why);
	if (detail != NULL && detail[0] != '\0') {
		char copy[16384], *line, *save = NULL;
		int lines = 0;

		snprintf(copy, sizeof(copy), "%s", detail);
		for (line = strtok_r(copy, "\n", &save); line != NULL && lines < 25;
		     line = strtok_r(NULL, "\n", &save), lines++)
			printf("#     | %s\n", line);
	}
}

static bool verbose;
static long only_n; /* PS_FAULTS_N: only this N (debugging) */

static void trial(struct scenario *sc, enum fault_kind kind, long n, struct tally *t)
{
	const char *image = path("work.img"), *scratch = path("preen.img");
	struct child_result child, again;
	struct fsck_result fsck;
	struct image_files files;
	struct row_info row;
	struct ps_err err = {""};
	char serial[64], why[2200] = "";
	const char *detail = NULL;
	unsigned new_mask = 0;
	bool crash = kind_is_crash(kind), pass = false;

	snprintf(serial, sizeof(serial), "F-%s-%s-%ld", sc->name, kind_names[kind], n);
	t->trials++;
	memset(&files, 0, sizeof(files));
	if (copy_image(sc->pristine, image) != 0) {
		snprintf(why, sizeof(why), "copying the image failed");
		goto out;
	}
	run_child(kind, n, image, serial, &child);
	if (!child.fired && child.status != CRASH_STATUS)
		t->not_reached++;
	if (child.status != 0 && child.status != 1 && child.status != CRASH_STATUS) {
		snprintf(why, sizeof(why), "the job ended abnormally (status %d)", child.status);
		goto out;
	}
	if (child.status == CRASH_STATUS && !crash) {
		snprintf(why, sizeof(why), "unexpected crash status");
		goto out;
	}
	if (find_row(serial, &row, &err) < 0) {
		snprintf(why, sizeof(why), "reading the audit database: %s", err.msg);
		goto out;
	}
	if (row.n > 1) {
		snprintf(why, sizeof(why), "%d audit rows for one job", row.n);
		goto out;
	}
	/* The audit row. */
	if (row.n == 0) {
		t->no_rows++;
		if (child.status == 0) {
			snprintf(why, sizeof(why), "provisioned without an audit row");
			goto out;
		}
		if (!same_file(image, sc->pristine)) {
			snprintf(why, sizeof(why),
				 "no audit row (refused before issuance: %s) but the image changed",
				 child.msg);
			goto out;
		}
	} else if (strcmp(row.state, PS_STATE_VERIFIED) == 0) {
		t->verified_rows++;
		if (child.status != 0) {
			snprintf(why, sizeof(why), "row verified but the job failed: %s",
				 child.msg);
			goto out;
		}
	} else if (strcmp(row.state, PS_STATE_FAILED) == 0) {
		t->failed_rows++;
		if (child.status != 1 || row.reason[0] == '\0') {
			snprintf(why, sizeof(why), "row failed (reason '%s') but job status %d",
				 row.reason, child.status);
			goto out;
		}
	} else if (crash && (strcmp(row.state, PS_STATE_ISSUED) == 0 ||
			     strcmp(row.state, PS_STATE_WRITTEN) == 0)) {
		if (row.state[0] == 'i')
			t->issued_rows++;
		else
			t->written_rows++;
	} else {
		snprintf(why, sizeof(why), "row in state %s after status %d (%s)", row.state,
			 child.status, child.msg);
		goto out;
	}
	/* The filesystem. */
	run_fsck(image, &fsck);
	if (fsck.cls == FSCK_DANGLING)
		t->fsck_dangling++;
	if (fsck.cls == FSCK_BAD || fsck.cls == FSCK_DANGLING) {
		snprintf(why, sizeof(why), "e2fsck -fn: %s", fsck.first_bad);
		detail = fsck.output;
		goto out;
	}
	if (fsck.plus_bitmap) {
		snprintf(why, sizeof(why),
			 "e2fsck -fn: blocks or inodes in use but marked free (a later job could "
			 "allocate them twice)");
		detail = fsck.output;
		goto out;
	}
	if (fsck.cls != FSCK_CLEAN) {
		char out[4096];
		int st;

		if (fsck.cls == FSCK_LEAKED) {
			t->fsck_leaked++;
			if (verbose && t->leaked_shown++ < 2)
				show_failure(t, sc->name, kind_names[kind], n,
					     "example of a leak besides counts and bitmaps (not a "
					     "failure):",
					     fsck.output);
		} else {
			t->fsck_harmless++;
		}
		/* What e2fsck -p does with it, on a scratch copy: repairs it without asking. */
		st = copy_image(image, scratch) == 0
			 ? capture(out, sizeof(out), "e2fsck -fp '%s?offset=%llu'", scratch,
				   data_offset)
			 : -1;
		if (st != 0 && st != 1) {
			snprintf(why, sizeof(why), "e2fsck -fp did not repair it silently (%d)",
				 st);
			detail = out;
			goto out;
		}
		t->preen_ok++;
	} else {
		t->fsck_clean++;
	}
	/* The files. */
	if (read_files(image, &files, why, sizeof(why)) < 0)
		goto out;
	if (!check_files(sc, &files, &row, &new_mask, why, sizeof(why)))
		goto out;
	t->temporaries += files.temporaries > 0;
	if (new_mask == 0)
		t->files_old++;
	else if (new_mask == sc->changing)
		t->files_new++;
	else
		t->files_mixed++;
	if (child.status == 0 && new_mask != sc->changing) {
		snprintf(why, sizeof(why), "provisioned, but not every file is new (mask %x)",
			 new_mask);
		goto out;
	}
	/* The card again, without faults: a later job provisions it, or refuses it with the
	 * reason until e2fsck -p has run (a bitmap whose checksum in the group descriptor was
	 * not written yet). */
	run_clean(image, "F-recover", &again);
	if (again.status != 0 && fsck.cls != FSCK_CLEAN) {
		char out[4096];
		int st =
		    capture(out, sizeof(out), "e2fsck -fp '%s?offset=%llu'", image, data_offset);

		if (st == 0 || st == 1) {
			t->refused_until_fsck++;
			run_clean(image, "F-recover", &again);
		}
	}
	if (again.status != 0) {
		snprintf(why, sizeof(why), "re-provisioning after the fault failed: %s", again.msg);
		goto out;
	}
	run_fsck(image, &fsck);
	if (fsck.cls == FSCK_BAD) {
		snprintf(why, sizeof(why), "after re-provisioning, e2fsck -fn: %s", fsck.first_bad);
		detail = fsck.output;
		goto out;
	}
	t->recovered++;
	pass = true;
out:
	if (pass)
		t->passed++;
	else
		show_failure(t, sc->name, kind_names[kind], n, why[0] ? why : "failed", detail);
	if (verbose)
		printf("# %s %s N=%ld: status %d fired %d row %s: %s%s%s\n", sc->name,
		       kind_names[kind], n, child.status, child.fired, row.n ? row.state : "none",
		       child.msg, pass ? "" : " -- FAIL: ", pass ? "" : why);
	files_free(&files);
}

static void run_kind(struct scenario *sc, enum fault_kind kind, long stride)
{
	long count = kind == FK_READ_EIO ? sc->reads : sc->writes;
	bool crash_like = kind_is_crash(kind) || kind == FK_PULL;
	struct tally t;
	long n;
	time_t start = time(NULL);

	memset(&t, 0, sizeof(t));
	for (n = 1; n <= count; n += stride)
		if (only_n == 0 || n == only_n)
			trial(sc, kind, n, &t);
	ok(t.passed == t.trials && t.not_reached == 0,
	   "%s, %s: N = 1..%ld%s: %ld trials, %ld passed (files old or complete new, audit row, "
	   "e2fsck -fp repairs without asking, the card provisions again)",
	   sc->name, kind_names[kind], count,
	   stride > 1 ? (SANITIZED ? " every 3rd (sanitizer build)" : " by a stride") : "",
	   t.trials, t.passed);
	printf("#   audit rows: %ld failed with the reason, %ld verified, %ld issued, %ld written,"
	       " %ld none (refused before issuance, image unchanged)\n",
	       t.failed_rows, t.verified_rows, t.issued_rows, t.written_rows, t.no_rows);
	printf("#   e2fsck -fn: %ld clean, %ld leaked counts/bitmaps only, %ld also an unattached "
	       "empty inode or a link count one short; %ld of these %ld repaired by "
	       "e2fsck -fp without asking; %ld a name naming a deleted inode\n",
	       t.fsck_clean, t.fsck_harmless, t.fsck_leaked, t.preen_ok,
	       t.fsck_harmless + t.fsck_leaked, t.fsck_dangling);
	printf("#   files: %ld all old, %ld all complete new, %ld some old some new; %ld left "
	       "a temporary name\n",
	       t.files_old, t.files_new, t.files_mixed, t.temporaries);
	printf(
	    "#   the card again: %ld re-provisioned cleanly (%ld of them refused with the reason "
	    "until e2fsck -p had run); %lds\n",
	    t.recovered, t.refused_until_fsck, (long)(time(NULL) - start));
	if (t.not_reached)
		printf("#   %ld trials never reached their fault\n", t.not_reached);
	if (crash_like)
		ok(t.fsck_dangling == 0,
		   "%s, %s: no trial stopped leaving a name that names a deleted inode (%ld of %ld "
		   "did); e2fsck -fn found at most leaks that e2fsck -p repairs without asking",
		   sc->name, kind_names[kind], t.fsck_dangling, t.trials);
}

/* ------------------------------------------------------------------------------------------ */

/* PS_FAULTS_KINDS: a comma-separated list of kinds to run (default: all). */
static bool kind_selected(enum fault_kind k)
{
	const char *list = getenv("PS_FAULTS_KINDS"), *p;
	size_t len = strlen(kind_names[k]);

	if (list == NULL || list[0] == '\0')
		return true;
	for (p = strstr(list, kind_names[k]); p != NULL; p = strstr(p + 1, kind_names[k]))
		if ((p == list || p[-1] == ',') && (p[len] == '\0' || p[len] == ','))
			return true;
	return false;
}

static bool have(const char *cmd)
{
	return sh("command -v %s >/dev/null 2>&1", cmd) == 0;
}

static int setup_scenario(struct scenario *sc, const char *name, const char *pristine)
{
	char why[512] = "";
	struct child_result c;

	sc->name = name;
	snprintf(sc->pristine, sizeof(sc->pristine), "%s", pristine);
	if (read_files(pristine, &sc->old, why, sizeof(why)) < 0) {
		printf("# %s\n", why);
		return -1;
	}
	if (copy_image(pristine, path("count.img")) != 0)
		return -1;
	run_child(FK_COUNT, 0, path("count.img"), "F-count", &c);
	ok(c.status == 0, "%s: a clean run provisions: %s", name, c.msg);
	{
		struct image_files after;
		unsigned mask = 0;
		int i;

		if (read_files(path("count.img"), &after, why, sizeof(why)) < 0)
			return -1;
		for (i = 0; i < N_FILES; i++)
			if (!same_content(after.data[i], after.len[i], sc->old.data[i],
					  sc->old.len[i]))
				mask |= 1u << i;
		files_free(&after);
		sc->changing = mask;
	}
	sc->reads = c.reads;
	sc->writes = c.writes;
	sc->flushes = c.flushes;
	sc->opens = c.opens;
	sc->rw_opens = c.rw_opens;
	printf("#   a clean run: %ld filesystem opens (%ld writable), %ld reads, %ld writes "
	       "(of which %ld flushes)\n",
	       sc->opens, sc->rw_opens, sc->reads, sc->writes, sc->flushes);
	return c.status == 0 && sc->writes > 0 ? 0 : -1;
}

int main(void)
{
	static const enum fault_kind kinds[] = {FK_WRITE_EIO, FK_WRITE_ENOSPC, FK_PULL,
						FK_EXIT,      FK_EXIT_DIRECT,  FK_READ_EIO};
	struct ps_ca_init_opts init = {.key_type = PS_KEY_P256, .days = 30};
	struct scenario scenarios[3];
	const char *srcdir = getenv("SRCDIR"), *s;
	struct ps_err err = {""};
	char text[8192], out[4096];
	long stride = 1;
	size_t i, k;
	int st;

	memset(scenarios, 0, sizeof(scenarios));
	setenv("PATH", "/usr/sbin:/sbin:/usr/bin:/bin", 0);
	{
		char p[8192];

		snprintf(p, sizeof(p), "/usr/sbin:/sbin:%s", getenv("PATH"));
		setenv("PATH", p, 1);
	}
	if (srcdir == NULL) {
		printf("1..0 # SKIP needs SRCDIR (run through make check)\n");
		return 0;
	}
	for (i = 0; i < 5; i++) {
		static const char *const tools[] = {"e2fsck", "debugfs", "mkfs.ext4", "sfdisk",
						    "mkfs.vfat"};

		if (!have(tools[i])) {
			printf("1..0 # SKIP %s is not installed\n", tools[i]);
			return 0;
		}
	}
	if ((s = getenv("PS_FAULTS_STRIDE")) != NULL && atol(s) > 0)
		stride = atol(s);
	else if (SANITIZED)
		stride = 3; /* every N in the plain build; here a fork costs tens of ms */
	verbose = getenv("PS_FAULTS_VERBOSE") != NULL;
	if ((s = getenv("PS_FAULTS_N")) != NULL)
		only_n = atol(s);
	trace = getenv("PS_FAULTS_TRACE") != NULL;
	/* tmpfs when there is one: thousands of fsyncs of the image and the database */
	s = getenv("TMPDIR");
	if (s == NULL || s[0] == '\0')
		s = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
	snprintf(root, sizeof(root), "%s/ps-faults.XXXXXX", s);
	if (mkdtemp(root) == NULL) {
		printf("1..0 # SKIP cannot create a temporary directory\n");
		return 0;
	}

	/* The root filesystem's mender.conf leaves ServerURL to the data partition's file. */
	st = sh("printf '{\\n  \"InventoryPollIntervalSeconds\": 28800,\\n"
		"  \"UpdatePollIntervalSeconds\": 1800\\n}\\n' >'%s'",
		path("main.conf"));
	st = st ? st
		: capture(out, sizeof(out),
			  "'%s/scripts/mkmenderimg.sh' --size 48 --main-conf '%s' '%s'", srcdir,
			  path("main.conf"), path("fresh.img"));
	ok(st == 0, "image built: %s", st ? out : "48 MiB, boot, rootfs A/B, data");
	{
		const char *line = strstr(out, " data\n");

		while (line != NULL && line > out && line[-1] != '\n')
			line--;
		if (line == NULL || sscanf(line, "p%*d %llu", &data_offset) != 1) {
			printf("# no data partition in: %s\n", out);
			goto done;
		}
	}
	init.dir = path("ca");
	ok(ps_ca_init(&init, &err) == 0 && ps_ca_load(&ca, init.dir, true, NULL, &err) == 0,
	   "CA: %s", err.msg);
	snprintf(text, sizeof(text),
		 "[station]\nid = faults\noperator = tester\ndatabase = %s\n"
		 "[ca]\ndir = %s\n"
		 "[mender]\nserver_url = https://mender.example.com\n"
		 "tenant_token = TENANT-TOKEN\nserver_certificate = %s/ca-cert.pem\n",
		 path("audit.db"), path("ca"), path("ca"));
	ok(ps_config_load_string(&cfg, text, "faults.conf", &err) == 0, "config: %s", err.msg);
	ok(ps_read_file(cfg.server_certificate, 1 << 20, &server_pem, &server_pem_len, &err) == 0,
	   "server CA bundle read");

	/* The re-provisioning scenario starts from an image provisioned once without faults:
	 * every name exists and is replaced. */
	{
		struct child_result c;

		st = copy_image(path("fresh.img"), path("provisioned.img"));
		run_child(FK_COUNT, 0, path("provisioned.img"), "F-first", &c);
		ok(st == 0 && c.status == 0, "image provisioned once: %s", c.msg);
	}
	/* The hashed scenario: /mender an indexed (htree) directory, where a new name cannot be
	 * renamed in place but is linked beside its temporary (src/image.c). Filled with names
	 * by debugfs, indexed by e2fsck -D. */
	{
		FILE *f = fopen(path("fill.cmd"), "w");
		unsigned flags = 0;
		const char *at;

		for (i = 0; f != NULL && i < 120; i++)
			fprintf(f, "write /dev/null /mender/filler-with-a-long-name-%zu\n", i);
		st = f == NULL || fclose(f) != 0 ||
		     copy_image(path("fresh.img"), path("hashed.img"));
		st = st ? st
			: sh("debugfs -w -f '%s' '%s?offset=%llu' >/dev/null 2>&1",
			     path("fill.cmd"), path("hashed.img"), data_offset);
		st = st ? st
			: sh("e2fsck -fyD '%s?offset=%llu' >/dev/null 2>&1", path("hashed.img"),
			     data_offset);
		/* e2fsck: 1 when it changed something (the index) */
		st = st == 1 ? 0 : st;
		st = st ? st
			: capture(out, sizeof(out), "debugfs -R 'stat /mender' '%s?offset=%llu'",
				  path("hashed.img"), data_offset);
		at = strstr(out, "Flags: 0x");
		if (st != 0 || at == NULL || sscanf(at, "Flags: 0x%x", &flags) != 1)
			flags = 0;
		ok((flags & 0x1000) != 0,
		   "hashed: /mender is an indexed directory of 120 more names (flags 0x%x)", flags);
	}
	if (setup_scenario(&scenarios[0], "fresh", path("fresh.img")) < 0 ||
	    setup_scenario(&scenarios[1], "re-provision", path("provisioned.img")) < 0 ||
	    setup_scenario(&scenarios[2], "hashed", path("hashed.img")) < 0)
		goto done;
	ok(scenarios[1].old.data[F_KEY] != NULL && scenarios[0].old.data[F_KEY] == NULL,
	   "the fresh image has no key, the provisioned one has");

	for (i = 0; i < PS_ARRAY_SIZE(scenarios); i++)
		for (k = 0; k < PS_ARRAY_SIZE(kinds); k++)
			if (kind_selected(kinds[k]) &&
			    (getenv("PS_FAULTS_SCENARIOS") == NULL ||
			     strstr(getenv("PS_FAULTS_SCENARIOS"), scenarios[i].name) != NULL))
				run_kind(&scenarios[i], kinds[k], stride);
done:
	for (i = 0; i < PS_ARRAY_SIZE(scenarios); i++)
		files_free(&scenarios[i].old);
	free(server_pem);
	ps_ca_free(&ca);
	ps_config_free(&cfg);
	if (getenv("PS_FAULTS_KEEP") != NULL)
		printf("# kept %s\n", root);
	else
		sh("rm -rf '%s'", root);
	return tap_done();
}
