/* image.h — targets: a Mender disk image file or a whole-disk block device. Finds the
 * partitions (libblkid) and their roles (boot, root filesystems, data), and reads and writes
 * files inside ext2/3/4 partitions in place through libext2fs, without mounting. */
#ifndef PS_IMAGE_H
#define PS_IMAGE_H

#include "err.h"

#include <ext2fs/ext2fs.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PS_MAX_PARTITIONS   32
#define PS_MAX_ROOTFS_PARTS 4

enum ps_part_role { PS_ROLE_OTHER, PS_ROLE_BOOT, PS_ROLE_ROOTFS, PS_ROLE_DATA };

struct ps_partition {
	int number;	 /* as the partition table numbers it (p1, p2, ...) */
	uint64_t offset; /* bytes from the start of the target */
	uint64_t size;	 /* bytes */
	char fstype[16]; /* "ext4", "vfat", "" when unformatted */
	char label[64];
	enum ps_part_role role;
};

/* Overrides from the configuration; 0 / n_rootfs 0 mean "discover". */
struct ps_layout_hint {
	int data_partition;
	const int *rootfs_partitions;
	int n_rootfs;
};

struct ps_image {
	char path[4096];
	int fd;
	bool writable;
	bool is_block_device;
	uint64_t size;
	char table[8]; /* "dos" or "gpt" */
	struct ps_partition parts[PS_MAX_PARTITIONS];
	int n_parts;
	int data;			 /* index into parts */
	int rootfs[PS_MAX_ROOTFS_PARTS]; /* indexes into parts */
	int n_rootfs;
};

/* Open a target and discover its layout. writable opens it for writing (exclusively for block
 * devices) and locks it against a second provstation job. */
int ps_image_open(struct ps_image *img, const char *path, bool writable,
		  const struct ps_layout_hint *hint, struct ps_err *err);
/* Flush the target to stable storage. */
int ps_image_sync(struct ps_image *img, struct ps_err *err);
void ps_image_close(struct ps_image *img);
/* "p4 (ext4, label data)" for messages. */
void ps_partition_describe(const struct ps_partition *part, char *out, size_t out_len);

/* The io_manager used to open filesystems; tests swap in a fault-injecting one. */
extern io_manager ps_image_io_manager;

struct ps_fs;

int ps_fs_open(struct ps_image *img, const struct ps_partition *part, bool writable,
	       struct ps_fs **out, struct ps_err *err);
/* Write everything out (when writable) and release. Always frees fs. */
int ps_fs_close(struct ps_fs *fs, struct ps_err *err);

struct ps_fs_stat {
	unsigned mode; /* permission bits */
	unsigned uid, gid;
	uint64_t size;
	bool is_regular;
};

int ps_fs_stat(struct ps_fs *fs, const char *path, struct ps_fs_stat *st, struct ps_err *err);
/* Read a regular file (at most max bytes) into a NUL-terminated buffer. PS_ENOENT if absent. */
int ps_fs_read(struct ps_fs *fs, const char *path, size_t max, char **out, size_t *out_len,
	       struct ps_err *err);
/* True when the filesystem holds nothing but lost+found (an empty rootfs B). */
bool ps_fs_is_empty(struct ps_fs *fs);

/* One file to write. */
struct ps_fs_file {
	const char *path; /* absolute, inside the filesystem */
	const void *data;
	size_t len;
	unsigned mode; /* permission bits; owner root:root */
};

/* Check, before anything is written, that the files can be written: parents are directories
 * or can be made, existing names are regular files, blocks and inodes suffice. */
int ps_fs_check_write(struct ps_fs *fs, const struct ps_fs_file *files, size_t n,
		      struct ps_err *err);

/* Write files, each replaced atomically: a new inode under a temporary name, then the two
 * directory entries swapped in one directory block write, then the old inode released.
 * At every moment each name holds either its old or its complete new content. */
int ps_fs_write_files(struct ps_fs *fs, const struct ps_fs_file *files, size_t n,
		      struct ps_err *err);

#endif
