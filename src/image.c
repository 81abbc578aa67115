/* image.c — targets and their partitions (libblkid), and files inside ext2/3/4 partitions
 * written in place through libext2fs (see image.h). Nothing here mounts or copies partitions. */
#include "image.h"
#include "util.h"

#include <blkid/blkid.h>
#include <errno.h>
#include <et/com_err.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define TEMP_PREFIX	".provstation-new-"
#define OLD_TEMP_PREFIX ".provstation-old-" /* the same length */

io_manager ps_image_io_manager;

struct ps_fs {
	ext2_filsys fs;
	bool writable;
	char name[64]; /* "p4" for messages */
};

static pthread_once_t error_table_once = PTHREAD_ONCE_INIT;

static void load_ext2_messages(void)
{
	initialize_ext2_error_table();
}

static const char *ext2_message(errcode_t code)
{
	pthread_once(&error_table_once, load_ext2_messages);
	return error_message(code);
}

void ps_partition_describe(const struct ps_partition *part, char *out, size_t out_len)
{
	snprintf(out, out_len, "p%d (%s%s%s)", part->number,
		 part->fstype[0] ? part->fstype : "unformatted", part->label[0] ? ", label " : "",
		 part->label);
}

/* The filesystems worth telling apart on a device's disk; probing only for these keeps
 * discovery fast. Anything else shows as unformatted. */
static char fs_type_names[][10] = {"ext2", "ext3", "ext4",     "jbd",	"vfat", "swap", "btrfs",
				   "xfs",  "f2fs", "squashfs", "erofs", "ntfs", "exfat"};
static char *fs_types[] = {
    fs_type_names[0],  fs_type_names[1],
    fs_type_names[2],  fs_type_names[3],
    fs_type_names[4],  fs_type_names[5],
    fs_type_names[6],  fs_type_names[7],
    fs_type_names[8],  fs_type_names[9],
    fs_type_names[10], fs_type_names[11],
    fs_type_names[12], NULL,
};

/* Probe the filesystem inside one partition. */
static int probe_filesystem(int fd, struct ps_partition *part)
{
	blkid_probe pr = blkid_new_probe();
	const char *value = NULL;
	int rc = -1;

	if (pr == NULL)
		return -1;
	if (blkid_probe_set_device(pr, fd, (blkid_loff_t)part->offset, (blkid_loff_t)part->size) !=
	    0)
		goto out;
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL);
	blkid_probe_filter_superblocks_type(pr, BLKID_FLTR_ONLYIN, fs_types);
	blkid_probe_enable_partitions(pr, 0);
	if (blkid_do_safeprobe(pr) == 0) {
		if (blkid_probe_lookup_value(pr, "TYPE", &value, NULL) == 0)
			snprintf(part->fstype, sizeof(part->fstype), "%s", value);
		if (blkid_probe_lookup_value(pr, "LABEL", &value, NULL) == 0)
			snprintf(part->label, sizeof(part->label), "%s", value);
	}
	rc = 0;
out:
	blkid_free_probe(pr);
	return rc;
}

static bool is_ext(const struct ps_partition *part)
{
	return strcmp(part->fstype, "ext2") == 0 || strcmp(part->fstype, "ext3") == 0 ||
	       strcmp(part->fstype, "ext4") == 0;
}

static int find_number(const struct ps_image *img, int number)
{
	int i;

	for (i = 0; i < img->n_parts; i++)
		if (img->parts[i].number == number)
			return i;
	return -1;
}

static int read_partition_table(struct ps_image *img, struct ps_err *err)
{
	blkid_probe pr = blkid_new_probe();
	blkid_partlist list;
	int i, n, rc = 0;

	if (pr == NULL || blkid_probe_set_device(pr, img->fd, 0, 0) != 0) {
		rc = ps_fail(err, PS_EIO, "%s: cannot probe it", img->path);
		goto out;
	}
	blkid_probe_enable_superblocks(pr, 0);
	blkid_probe_enable_partitions(pr, 1);
	blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
	list = blkid_probe_get_partitions(pr);
	if (list == NULL || blkid_partlist_get_table(list) == NULL) {
		rc = ps_fail(err, PS_EINVAL, "%s is not a disk image: no partition table found",
			     img->path);
		goto out;
	}
	snprintf(img->table, sizeof(img->table), "%s",
		 blkid_parttable_get_type(blkid_partlist_get_table(list)));
	n = blkid_partlist_numof_partitions(list);
	for (i = 0; i < n; i++) {
		blkid_partition par = blkid_partlist_get_partition(list, i);
		struct ps_partition *part;

		if (par == NULL || blkid_partition_is_extended(par))
			continue;
		if (img->n_parts == PS_MAX_PARTITIONS) {
			rc = ps_fail(err, PS_EINVAL, "%s: more than %d partitions", img->path,
				     PS_MAX_PARTITIONS);
			goto out;
		}
		part = &img->parts[img->n_parts++];
		memset(part, 0, sizeof(*part));
		part->number = blkid_partition_get_partno(par);
		part->offset = (uint64_t)blkid_partition_get_start(par) * 512;
		part->size = (uint64_t)blkid_partition_get_size(par) * 512;
		if (part->offset + part->size > img->size) {
			rc = ps_fail(err, PS_EINVAL,
				     "%s is truncated: partition %d ends at byte %llu but the "
				     "target has %llu bytes",
				     img->path, part->number,
				     (unsigned long long)(part->offset + part->size),
				     (unsigned long long)img->size);
			goto out;
		}
		if (probe_filesystem(img->fd, part) != 0) {
			rc = ps_fail(err, PS_EIO, "%s: probing partition %d failed", img->path,
				     part->number);
			goto out;
		}
	}
	if (img->n_parts == 0)
		rc = ps_fail(err, PS_EINVAL, "%s: the partition table is empty", img->path);
out:
	blkid_free_probe(pr);
	return rc;
}

/* Assign roles: the data partition, then the root filesystems before it. */
static int assign_roles(struct ps_image *img, const struct ps_layout_hint *hint, struct ps_err *err)
{
	char desc[128];
	int i, data = -1, n_ext = 0;

	for (i = 0; i < img->n_parts; i++)
		if (strcmp(img->parts[i].fstype, "vfat") == 0 && i == 0)
			img->parts[i].role = PS_ROLE_BOOT;
	if (hint != NULL && hint->data_partition > 0) {
		data = find_number(img, hint->data_partition);
		if (data < 0)
			return ps_fail(err, PS_EINVAL,
				       "%s has no partition %d ([mender] data_partition)",
				       img->path, hint->data_partition);
	} else {
		for (i = 0; i < img->n_parts; i++)
			if (strcmp(img->parts[i].label, "data") == 0)
				data = i;
		/* Mender's numbering as a hint: the last ext partition after the rootfs pair. */
		for (i = 0; data < 0 && i < img->n_parts; i++)
			n_ext += is_ext(&img->parts[i]);
		for (i = img->n_parts - 1; data < 0 && n_ext >= 2 && i >= 0; i--)
			if (is_ext(&img->parts[i]))
				data = i;
	}
	if (data < 0)
		return ps_fail(err, PS_EINVAL,
			       "%s: no data partition found (no ext4 filesystem labelled 'data'; "
			       "set [mender] data_partition)",
			       img->path);
	if (!is_ext(&img->parts[data])) {
		ps_partition_describe(&img->parts[data], desc, sizeof(desc));
		return ps_fail(err, PS_EINVAL, "%s: data partition %s is not ext2/3/4", img->path,
			       desc);
	}
	img->data = data;
	img->parts[data].role = PS_ROLE_DATA;

	img->n_rootfs = 0;
	if (hint != NULL && hint->n_rootfs > 0) {
		for (i = 0; i < hint->n_rootfs && i < PS_MAX_ROOTFS_PARTS; i++) {
			int idx = find_number(img, hint->rootfs_partitions[i]);

			if (idx < 0 || idx == data)
				return ps_fail(
				    err, PS_EINVAL,
				    "%s: rootfs partition %d ([mender] rootfs_partitions) "
				    "%s",
				    img->path, hint->rootfs_partitions[i],
				    idx < 0 ? "does not exist" : "is the data partition");
			img->rootfs[img->n_rootfs++] = idx;
			img->parts[idx].role = PS_ROLE_ROOTFS;
		}
		return 0;
	}
	/* Root filesystems: the two partitions before data that are not boot, formatted as ext
	 * or not formatted at all (an empty rootfs B). */
	for (i = 0; i < data && img->n_rootfs < 2; i++) {
		struct ps_partition *part = &img->parts[i];

		if (part->role == PS_ROLE_BOOT || (!is_ext(part) && part->fstype[0] != '\0'))
			continue;
		img->rootfs[img->n_rootfs++] = i;
		part->role = PS_ROLE_ROOTFS;
	}
	return 0;
}

int ps_image_open(struct ps_image *img, const char *path, bool writable,
		  const struct ps_layout_hint *hint, struct ps_err *err)
{
	struct stat st;
	int flags = O_CLOEXEC | (writable ? O_RDWR : O_RDONLY);
	int rc;

	memset(img, 0, sizeof(*img));
	img->fd = -1;
	img->writable = writable;
	if (snprintf(img->path, sizeof(img->path), "%s", path) >= (int)sizeof(img->path)) {
		rc = ps_fail(err, PS_EINVAL, "target path too long");
		goto out;
	}
	if (stat(path, &st) != 0) {
		rc = ps_fail(err, PS_ENOENT, "target %s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		rc = ps_fail(err, PS_EINVAL,
			     "target %s is neither an image file nor a block device", path);
		goto out;
	}
	img->is_block_device = S_ISBLK(st.st_mode);
	if (writable && img->is_block_device)
		flags |= O_EXCL; /* fails when mounted or held by another exclusive opener */
	img->fd = open(path, flags);
	if (img->fd < 0) {
		if (errno == EROFS || errno == EACCES || errno == EPERM)
			rc = ps_fail(err, PS_EPERM, "target %s is read-only (%s)", path,
				     strerror(errno));
		else if (errno == EBUSY)
			rc = ps_fail(err, PS_EBUSY, "target %s is in use (mounted or held)", path);
		else
			rc = ps_fail(err, PS_EIO, "target %s: %s", path, strerror(errno));
		goto out;
	}
	if (img->is_block_device) {
		int ro = 0;

		if (ioctl(img->fd, BLKGETSIZE64, &img->size) != 0) {
			rc = ps_fail(err, PS_EIO, "target %s: cannot read its size", path);
			goto out;
		}
		if (writable && ioctl(img->fd, BLKROGET, &ro) == 0 && ro) {
			rc = ps_fail(err, PS_EPERM, "target %s is read-only (write-protected)",
				     path);
			goto out;
		}
	} else {
		img->size = (uint64_t)st.st_size;
	}
	if (flock(img->fd, (writable ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
		rc = ps_fail(err, PS_EBUSY, "target %s is busy: another provstation job holds it",
			     path);
		goto out;
	}
	if (img->size < 4096) {
		rc = ps_fail(err, PS_EINVAL, "%s is not a disk image: only %llu bytes", path,
			     (unsigned long long)img->size);
		goto out;
	}
	rc = read_partition_table(img, err);
	if (rc == 0)
		rc = assign_roles(img, hint, err);
out:
	if (rc < 0)
		ps_image_close(img);
	return rc;
}

int ps_image_sync(struct ps_image *img, struct ps_err *err)
{
	if (img->fd >= 0 && fsync(img->fd) != 0)
		return ps_fail(err, PS_EIO, "target %s: flushing failed: %s", img->path,
			       strerror(errno));
	return 0;
}

void ps_image_close(struct ps_image *img)
{
	if (img->fd >= 0)
		close(img->fd);
	img->fd = -1;
}

static int fs_fail(struct ps_fs *fs, errcode_t code, int status, const char *what, const char *path,
		   struct ps_err *err)
{
	return ps_fail(err, status, "%s %s in partition %s: %s", what, path, fs->name,
		       ext2_message(code));
}

int ps_fs_open(struct ps_image *img, const struct ps_partition *part, bool writable,
	       struct ps_fs **out, struct ps_err *err)
{
	struct ps_fs *fs = calloc(1, sizeof(*fs));
	char options[64];
	char desc[128];
	int flags = EXT2_FLAG_64BITS | EXT2_FLAG_MASTER_SB_ONLY | (writable ? EXT2_FLAG_RW : 0);
	errcode_t code;
	int rc = 0;

	*out = NULL;
	pthread_once(&error_table_once, load_ext2_messages);
	if (fs == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	ps_partition_describe(part, desc, sizeof(desc));
	snprintf(fs->name, sizeof(fs->name), "p%d", part->number);
	fs->writable = writable;
	if (!is_ext(part)) {
		rc = ps_fail(err, PS_EINVAL, "partition %s is not ext2/3/4", desc);
		goto out;
	}
	snprintf(options, sizeof(options), "offset=%llu", (unsigned long long)part->offset);
	code = ext2fs_open2(img->path, options, flags, 0, 0,
			    ps_image_io_manager ? ps_image_io_manager : unix_io_manager, &fs->fs);
	if (code != 0) {
		fs->fs = NULL;
		rc = ps_fail(err, PS_EINVAL, "partition %s of %s: cannot open the filesystem: %s",
			     desc, img->path, ext2_message(code));
		goto out;
	}
	fs->fs->now = ps_now();
	if (fs->fs->super->s_state & EXT2_ERROR_FS) {
		rc = ps_fail(err, PS_EINVAL,
			     "partition %s of %s has filesystem errors; run e2fsck on the image",
			     desc, img->path);
		goto out;
	}
	if (writable && ext2fs_has_feature_journal_needs_recovery(fs->fs->super)) {
		rc = ps_fail(err, PS_EINVAL,
			     "partition %s of %s needs journal recovery (it was not unmounted "
			     "cleanly); run e2fsck on it first",
			     desc, img->path);
		goto out;
	}
	if (writable && !(fs->fs->super->s_state & EXT2_VALID_FS)) {
		rc = ps_fail(err, PS_EINVAL,
			     "partition %s of %s is not clean (mounted or not checked); "
			     "run e2fsck on it first",
			     desc, img->path);
		goto out;
	}
	if (writable) {
		/* Without the copy of the superblock as read, libext2fs writes the superblock
		 * whole, in one write, instead of each changed field and then the checksum in
		 * separate writes: an interruption between those leaves a superblock whose
		 * checksum does not match, which neither e2fsck nor the kernel will open. */
		ext2fs_free_mem(&fs->fs->orig_super);
		code = ext2fs_read_bitmaps(fs->fs);
		if (code != 0) {
			rc = ps_fail(err, PS_EINVAL, "partition %s of %s: reading bitmaps: %s",
				     desc, img->path, ext2_message(code));
			goto out;
		}
	}
	*out = fs;
	fs = NULL;
out:
	if (fs != NULL) {
		if (fs->fs != NULL)
			ext2fs_close_free(&fs->fs);
		free(fs);
	}
	return rc;
}

int ps_fs_close(struct ps_fs *fs, struct ps_err *err)
{
	errcode_t code = 0;
	int rc = 0;

	if (fs == NULL)
		return 0;
	if (fs->fs != NULL)
		code = ext2fs_close_free(&fs->fs);
	if (code != 0)
		rc = ps_fail(err, PS_EIO, "closing partition %s: %s", fs->name, ext2_message(code));
	free(fs);
	return rc;
}

static int lookup(struct ps_fs *fs, const char *path, ext2_ino_t *ino, struct ps_err *err)
{
	errcode_t code = ext2fs_namei(fs->fs, EXT2_ROOT_INO, EXT2_ROOT_INO, path, ino);

	if (code == EXT2_ET_FILE_NOT_FOUND || code == EXT2_ET_NO_DIRECTORY)
		return ps_fail(err, PS_ENOENT, "%s does not exist in partition %s", path, fs->name);
	if (code != 0)
		return fs_fail(fs, code, PS_EIO, "looking up", path, err);
	return 0;
}

int ps_fs_stat(struct ps_fs *fs, const char *path, struct ps_fs_stat *st, struct ps_err *err)
{
	struct ext2_inode inode;
	ext2_ino_t ino;
	errcode_t code;
	int rc = lookup(fs, path, &ino, err);

	if (rc < 0)
		return rc;
	code = ext2fs_read_inode(fs->fs, ino, &inode);
	if (code != 0)
		return fs_fail(fs, code, PS_EIO, "reading", path, err);
	st->mode = inode.i_mode & 07777;
	st->uid = inode_uid(inode);
	st->gid = inode_gid(inode);
	st->size = EXT2_I_SIZE(&inode);
	st->is_regular = LINUX_S_ISREG(inode.i_mode);
	return 0;
}

int ps_fs_read(struct ps_fs *fs, const char *path, size_t max, char **out, size_t *out_len,
	       struct ps_err *err)
{
	ext2_file_t file = NULL;
	struct ps_fs_stat st;
	ext2_ino_t ino;
	char *buf = NULL;
	unsigned int got = 0;
	size_t done = 0;
	errcode_t code;
	int rc;

	*out = NULL;
	rc = ps_fs_stat(fs, path, &st, err);
	if (rc < 0)
		goto out;
	if (!st.is_regular) {
		rc = ps_fail(err, PS_EINVAL, "%s in partition %s is not a regular file", path,
			     fs->name);
		goto out;
	}
	if (st.size > max) {
		rc = ps_fail(err, PS_EINVAL, "%s in partition %s is larger than %zu bytes", path,
			     fs->name, max);
		goto out;
	}
	rc = lookup(fs, path, &ino, err);
	if (rc < 0)
		goto out;
	buf = malloc((size_t)st.size + 1);
	if (buf == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	code = ext2fs_file_open(fs->fs, ino, 0, &file);
	while (code == 0 && done < st.size) {
		code = ext2fs_file_read(file, buf + done, (unsigned int)(st.size - done), &got);
		if (code == 0 && got == 0)
			break;
		done += got;
	}
	if (code != 0) {
		rc = fs_fail(fs, code, PS_EIO, "reading", path, err);
		goto out;
	}
	if (done != st.size) {
		rc = ps_fail(err, PS_EIO, "%s in partition %s: short read", path, fs->name);
		goto out;
	}
	buf[done] = '\0';
	*out = buf;
	buf = NULL;
	if (out_len != NULL)
		*out_len = done;
out:
	if (file != NULL)
		ext2fs_file_close(file);
	free(buf);
	return rc;
}

struct count_ctx {
	int entries;
};

static int count_entry(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset,
		       int blocksize, char *buf, void *priv)
{
	struct count_ctx *ctx = priv;
	int len = ext2fs_dirent_name_len(dirent);

	if ((len == 1 && dirent->name[0] == '.') ||
	    (len == 2 && strncmp(dirent->name, "..", 2) == 0) ||
	    (len == 10 && strncmp(dirent->name, "lost+found", 10) == 0))
		return 0;
	ctx->entries++;
	return DIRENT_ABORT;
}

bool ps_fs_is_empty(struct ps_fs *fs)
{
	struct count_ctx ctx = {0};

	if (ext2fs_dir_iterate2(fs->fs, EXT2_ROOT_INO, 0, NULL, count_entry, &ctx) != 0)
		return false;
	return ctx.entries == 0;
}

/* Split "/a/b/name" into its directory and base name. */
static int split_path(const char *path, char *dir, size_t dir_len, const char **base,
		      struct ps_err *err)
{
	const char *slash = strrchr(path, '/');

	if (path[0] != '/' || slash == NULL || slash[1] == '\0' ||
	    (size_t)(slash - path) + 1 >= dir_len || strlen(slash + 1) > 200)
		return ps_fail(err, PS_EINVAL, "bad path '%s' inside the image", path);
	memcpy(dir, path, (size_t)(slash - path));
	dir[slash - path] = '\0';
	if (dir[0] == '\0')
		snprintf(dir, dir_len, "/");
	*base = slash + 1;
	return 0;
}

/* Find or create the directory path; creates only when make is true. */
static int resolve_dir(struct ps_fs *fs, const char *path, bool make, ext2_ino_t *out,
		       struct ps_err *err)
{
	char buf[1024];
	char *component, *save = NULL;
	ext2_ino_t dir = EXT2_ROOT_INO, child;
	struct ext2_inode inode;
	errcode_t code;

	snprintf(buf, sizeof(buf), "%s", path);
	for (component = strtok_r(buf, "/", &save); component != NULL;
	     component = strtok_r(NULL, "/", &save)) {
		code = ext2fs_lookup(fs->fs, dir, component, (int)strlen(component), NULL, &child);
		if (code == EXT2_ET_FILE_NOT_FOUND) {
			if (!make) {
				*out = 0;
				return 0; /* would be created */
			}
			code = ext2fs_mkdir(fs->fs, dir, 0, component);
			if (code == EXT2_ET_DIR_NO_SPACE) {
				code = ext2fs_expand_dir(fs->fs, dir);
				if (code == 0)
					code = ext2fs_mkdir(fs->fs, dir, 0, component);
			}
			if (code == 0)
				code = ext2fs_lookup(fs->fs, dir, component, (int)strlen(component),
						     NULL, &child);
		}
		if (code != 0)
			return fs_fail(fs, code, PS_EIO, "making directory", path, err);
		code = ext2fs_read_inode(fs->fs, child, &inode);
		if (code != 0)
			return fs_fail(fs, code, PS_EIO, "reading", path, err);
		if (!LINUX_S_ISDIR(inode.i_mode))
			return ps_fail(err, PS_EINVAL, "%s in partition %s is not a directory",
				       path, fs->name);
		dir = child;
	}
	*out = dir;
	return 0;
}

int ps_fs_check_write(struct ps_fs *fs, const struct ps_fs_file *files, size_t n,
		      struct ps_err *err)
{
	blk64_t need_blocks = 8; /* directories, extent blocks, slack */
	unsigned block_size;
	size_t i;
	int rc;

	if (!fs->writable)
		return ps_fail(err, PS_EINVAL, "partition %s is open read-only", fs->name);
	block_size = fs->fs->blocksize;
	for (i = 0; i < n; i++) {
		char dir[1024];
		const char *base;
		ext2_ino_t dir_ino, ino;
		struct ext2_inode inode;
		errcode_t code;

		rc = split_path(files[i].path, dir, sizeof(dir), &base, err);
		if (rc == 0)
			rc = resolve_dir(fs, dir, false, &dir_ino, err);
		if (rc < 0)
			return rc;
		need_blocks += (files[i].len + block_size - 1) / block_size + 1;
		if (dir_ino == 0)
			continue;
		code = ext2fs_lookup(fs->fs, dir_ino, base, (int)strlen(base), NULL, &ino);
		if (code == EXT2_ET_FILE_NOT_FOUND)
			continue;
		if (code == 0)
			code = ext2fs_read_inode(fs->fs, ino, &inode);
		if (code != 0)
			return fs_fail(fs, code, PS_EIO, "looking up", files[i].path, err);
		if (!LINUX_S_ISREG(inode.i_mode))
			return ps_fail(err, PS_EINVAL,
				       "%s in partition %s exists and is not a regular file",
				       files[i].path, fs->name);
	}
	if (ext2fs_free_blocks_count(fs->fs->super) < need_blocks)
		return ps_fail(err, PS_EIO,
			       "partition %s is too full: %llu blocks free, %llu needed", fs->name,
			       (unsigned long long)ext2fs_free_blocks_count(fs->fs->super),
			       (unsigned long long)need_blocks);
	if (fs->fs->super->s_free_inodes_count < n + 2)
		return ps_fail(err, PS_EIO, "partition %s is too full: %u inodes free", fs->name,
			       fs->fs->super->s_free_inodes_count);
	return 0;
}

/* Crash safety. libext2fs writes in place, without the journal, so no state of the medium
 * between two writes may be one that e2fsck cannot put right without asking, and no name may
 * ever hold part of a file. Every name changes in one directory-block write, and around it the
 * writes go in an order such that, whatever write is the last to land:
 *
 *   - a name never points at an inode whose link count is 0: e2fsck reads such an inode as
 *     deleted whatever its dtime says, and clears the name;
 *   - an inode with a link count but no name is always empty (no blocks, no extended
 *     attributes): e2fsck -p clears an unattached empty inode without asking, but asks
 *     before connecting one with content to lost+found;
 *   - a link count never exceeds the names, and falls short of them by one only while a
 *     temporary name and the real one (or the old inode's second name and its real one)
 *     point at the same inode, for one step: e2fsck -p corrects the count without asking,
 *     and the next run knows that temporary as uncounted. (A count above the names, left
 *     without a temporary to mark it, could not be told from hard links of the image's
 *     own.)
 *   - blocks and inodes are marked in use in the bitmaps before anything refers to them and
 *     marked free only after nothing does (leaked ones are bitmap differences that e2fsck -p
 *     repairs silently).
 *
 * The medium is flushed between the steps (libext2fs's block cache written out, fsync), so
 * that neither the cache nor the kernel reorders them:
 *
 *   new inode:  content and inode written as deleted (links 0, dtime set), bitmaps flushed;
 *               then the inode written empty with links 1; then its temporary name linked
 *               (a name of an empty file); then the inode written complete (one inode write:
 *               the mapping and size of the first step, whose blocks are already on the
 *               medium);
 *   the name:   the temporary renamed in place (a new name in a linear directory) or swapped
 *               with the name it replaces, in one directory-block write when both share
 *               one; otherwise the name is linked beside the temporary (a new name in a
 *               hashed directory), or the old inode gets a second name (.provstation-old-*)
 *               and the name is pointed at the new inode; then the temporary unlinked;
 *   old inode:  written empty with links 1 (its blocks now leaked); then its last name
 *               unlinked; then written deleted (links 0, dtime); then its blocks and the
 *               inode freed in the bitmaps. With other names only the name goes and the
 *               count drops.
 *
 * An interruption leaves at worst leaked blocks and inodes, an unattached empty inode, a
 * count one short of the names beside a temporary, and temporary names holding an empty, a
 * complete or an old file, which the next run removes. (An old inode whose content cannot
 * be emptied in one inode write, with inline data or an extended attribute block, is
 * released the way it was before: links 0 first, so that an interruption between that write
 * and the unlinking leaves a temporary name pointing at a deleted inode, which e2fsck -p
 * clears.) */

/* The largest on-disk inode handled whole (mke2fs makes 128 or 256 bytes; up to the block
 * size is allowed). */
#define INODE_MAX 1024

/* An inode as on the medium: the base fields, the extra ones, in-inode extended attributes. */
union inode_buf {
	struct ext2_inode small;
	struct ext2_inode_large large;
	char raw[INODE_MAX];
};

static int inode_size(struct ps_fs *fs)
{
	return EXT2_INODE_SIZE(fs->fs->super);
}

static errcode_t read_whole(struct ps_fs *fs, ext2_ino_t ino, union inode_buf *b)
{
	memset(b, 0, sizeof(*b));
	if (inode_size(fs) > INODE_MAX)
		return ext2fs_read_inode(fs->fs, ino, &b->small);
	return ext2fs_read_inode_full(fs->fs, ino, &b->small, inode_size(fs));
}

static errcode_t write_whole(struct ps_fs *fs, ext2_ino_t ino, union inode_buf *b)
{
	if (inode_size(fs) > INODE_MAX)
		return ext2fs_write_inode(fs->fs, ino, &b->small);
	return ext2fs_write_inode_full(fs->fs, ino, &b->small, inode_size(fs));
}

/* *to: from without content, as one inode write can make it: size 0, no blocks, an empty
 * mapping, no in-inode extended attributes, links 1, dtime 0. False when that cannot be
 * done in one write (inline data, an extended attribute block, an inode larger than
 * INODE_MAX, a mapping that will not initialize). */
static bool empty_copy(struct ps_fs *fs, ext2_ino_t ino, const union inode_buf *from,
		       union inode_buf *to)
{
	int size = inode_size(fs);

	if (size > INODE_MAX || (from->small.i_flags & EXT4_INLINE_DATA_FL) ||
	    ext2fs_file_acl_block(fs->fs, &from->small) != 0)
		return false;
	*to = *from;
	to->small.i_size = 0;
	to->small.i_size_high = 0;
	if (ext2fs_iblk_set(fs->fs, &to->small, 0) != 0)
		return false;
	memset(to->small.i_block, 0, sizeof(to->small.i_block));
	if (from->small.i_flags & EXT4_EXTENTS_FL) {
		ext2_extent_handle_t extents;

		/* An all-zero i_block gets an empty extent header. */
		if (ext2fs_extent_open2(fs->fs, ino, &to->small, &extents) != 0)
			return false;
		ext2fs_extent_free(extents);
	}
	if (size > EXT2_GOOD_OLD_INODE_SIZE) {
		size_t extra = EXT2_GOOD_OLD_INODE_SIZE + (size_t)to->large.i_extra_isize;

		if (extra > (size_t)size)
			return false;
		memset(to->raw + extra, 0, (size_t)size - extra);
	}
	to->small.i_links_count = 1;
	to->small.i_dtime = 0;
	return true;
}

/* Write an inode's link count and deletion time. */
static errcode_t set_links(struct ps_fs *fs, ext2_ino_t ino, __u16 links, __u32 dtime)
{
	struct ext2_inode inode;
	errcode_t code = ext2fs_read_inode(fs->fs, ino, &inode);

	if (code == 0) {
		inode.i_links_count = links;
		inode.i_dtime = dtime;
		code = ext2fs_write_inode(fs->fs, ino, &inode);
	}
	return code;
}

static __u32 dtime_now(struct ps_fs *fs)
{
	return (__u32)fs->fs->now ? (__u32)fs->fs->now : 1;
}

/* Write out libext2fs's block cache and make the medium durable (an ordering point; the
 * bitmaps are written by flush()). */
static int sync_medium(struct ps_fs *fs, struct ps_err *err)
{
	errcode_t code = io_channel_flush(fs->fs->io);

	if (code != 0)
		return ps_fail(err, PS_EIO, "flushing partition %s: %s", fs->name,
			       ext2_message(code));
	return 0;
}

/* Allocate an inode owned by root with mode and write data into it, unlinked: links 0 and
 * dtime set (e2fsck reads it as deleted) until it is written empty with links 1. *out is set as
 * soon as the inode is allocated, so that a failure half-way can free it. */
static int create_inode(struct ps_fs *fs, ext2_ino_t dir, const struct ps_fs_file *file,
			ext2_ino_t *out, struct ps_err *err)
{
	struct ext2_inode inode;
	ext2_file_t handle = NULL;
	ext2_ino_t ino = 0;
	unsigned int written = 0;
	size_t done = 0;
	errcode_t code;
	__u32 now = (__u32)fs->fs->now;

	code = ext2fs_new_inode(fs->fs, dir, (int)(LINUX_S_IFREG | file->mode), NULL, &ino);
	if (code != 0)
		goto fail;
	ext2fs_inode_alloc_stats2(fs->fs, ino, +1, 0);
	*out = ino;
	memset(&inode, 0, sizeof(inode));
	inode.i_mode = (__u16)(LINUX_S_IFREG | (file->mode & 07777));
	inode.i_atime = inode.i_ctime = inode.i_mtime = now;
	inode.i_dtime = now ? now : 1;
	inode.i_links_count = 0;
	if (ext2fs_has_feature_extents(fs->fs->super)) {
		ext2_extent_handle_t extents;

		code = ext2fs_extent_open2(fs->fs, ino, &inode, &extents);
		if (code != 0)
			goto fail;
		ext2fs_extent_free(extents);
	}
	code = ext2fs_write_new_inode(fs->fs, ino, &inode);
	if (code == 0)
		code = ext2fs_file_open(fs->fs, ino, EXT2_FILE_WRITE, &handle);
	while (code == 0 && done < file->len) {
		code = ext2fs_file_write(handle, (const char *)file->data + done,
					 (unsigned int)(file->len - done), &written);
		done += written;
	}
	if (handle != NULL) {
		errcode_t close_code = ext2fs_file_close(handle);

		if (code == 0)
			code = close_code;
	}
	if (code != 0)
		goto fail;
	return 0;
fail:
	return fs_fail(fs, code, PS_EIO, "writing", file->path, err);
}

/* Free an inode that no name points at and that is deleted on the medium (links 0), its
 * blocks taken from mapping (the inode as it was before it was emptied; NULL: as it is now):
 * the blocks and the inode in the bitmaps, written by the next flush. */
static errcode_t release_inode(struct ps_fs *fs, ext2_ino_t ino, const union inode_buf *mapping)
{
	union inode_buf b;
	errcode_t code = 0;

	if (mapping != NULL)
		b = *mapping;
	else
		code = read_whole(fs, ino, &b);
	if (code != 0)
		return code;
	b.small.i_links_count = 0;
	b.small.i_dtime = dtime_now(fs);
	if (ext2fs_inode_has_valid_blocks2(fs->fs, &b.small))
		code = ext2fs_punch(fs->fs, ino, &b.small, NULL, 0, ~0ULL);
	if (code == 0)
		code = ext2fs_write_inode(fs->fs, ino, &b.small);
	if (code == 0)
		ext2fs_inode_alloc_stats2(fs->fs, ino, -1, 0);
	return code;
}

/* One name to remove together with the inode it names. */
struct drop {
	ext2_ino_t dir;
	const char *name;
	ext2_ino_t ino;
	const char *path; /* for messages */
	/* Other names point at the inode: only the name goes, and the count drops by one when
	 * it counted the name. */
	enum { OTHERS_NONE, OTHERS_COUNTED, OTHERS_UNCOUNTED } others;
	const union inode_buf *mapping; /* the inode's blocks (NULL: as read now) */
	enum { DROP_OTHER, DROP_DELETED, DROP_EMPTIED, DROP_LINKS0 } how;
	int step;	     /* 1: first write done, 2: name removed */
	union inode_buf was; /* the inode before the first write */
};

/* Remove names and release their inodes in the crash-safe order (see above). A name is
 * removed only while it still points at the expected inode. A failure does not stop the
 * others: each name ends either removed with its inode released, or in place with its inode
 * as it was, and the first error is returned. The bitmaps are written by the caller's
 * flush. */
static int drop_names(struct ps_fs *fs, struct drop *d, size_t n, struct ps_err *err)
{
	union inode_buf empty;
	errcode_t code, first = 0;
	const char *what = NULL, *path = NULL;
	bool synced;
	size_t i;

#define NOTE(c, w, p)                                                                              \
	do {                                                                                       \
		if ((c) != 0 && first == 0) {                                                      \
			first = (c);                                                               \
			what = (w);                                                                \
			path = (p);                                                                \
		}                                                                                  \
	} while (0)
	if (n == 0)
		return 0;
	/* 1: the inode emptied (links 1), or marked deleted when it cannot be emptied. */
	for (i = 0; i < n; i++) {
		d[i].step = 0;
		code = read_whole(fs, d[i].ino, &d[i].was);
		if (code == 0 && d[i].others != OTHERS_NONE) {
			d[i].how = DROP_OTHER;
		} else if (code == 0 && d[i].was.small.i_links_count == 0) {
			d[i].how = DROP_DELETED; /* already: only the name goes */
		} else if (code == 0 &&
			   empty_copy(fs, d[i].ino, d[i].mapping ? d[i].mapping : &d[i].was,
				      &empty)) {
			d[i].how = DROP_EMPTIED;
			code = write_whole(fs, d[i].ino, &empty);
			/* libext2fs changed its copy of the inode table block before the write
			 * failed; the change would land with the next write of that block. */
			if (code != 0)
				write_whole(fs, d[i].ino, &d[i].was);
		} else if (code == 0) {
			d[i].how = DROP_LINKS0;
			code = set_links(fs, d[i].ino, 0, dtime_now(fs));
			if (code != 0)
				set_links(fs, d[i].ino, d[i].was.small.i_links_count, 0);
		}
		NOTE(code, "releasing the old", d[i].path);
		if (code == 0)
			d[i].step = 1;
	}
	/* Unlinking before those writes are on the medium could leave a name's inode with
	 * content and no name: not without them. */
	code = io_channel_flush(fs->fs->io);
	NOTE(code, "flushing before unlinking", d[0].path);
	for (i = 0; code != 0 && i < n; i++)
		if (d[i].step == 1 && d[i].how != DROP_OTHER && d[i].how != DROP_DELETED)
			write_whole(fs, d[i].ino, &d[i].was);
	if (code != 0)
		goto out;
	/* 2: the names. */
	for (i = 0; i < n; i++) {
		if (d[i].step != 1)
			continue;
		code = ext2fs_unlink(fs->fs, d[i].dir, d[i].name, d[i].ino, 0);
		NOTE(code, "unlinking a temporary of", d[i].path);
		if (code == 0) {
			d[i].step = 2;
		} else if (d[i].how == DROP_EMPTIED || d[i].how == DROP_LINKS0) {
			/* The name is still there: it names the inode as it was again. */
			code = write_whole(fs, d[i].ino, &d[i].was);
			NOTE(code, "restoring", d[i].path);
		}
	}
	/* The names are gone on the medium before anything else is written. */
	code = io_channel_flush(fs->fs->io);
	NOTE(code, "flushing after unlinking", d[0].path);
	if (code != 0)
		goto out;
	/* 3: the counts of inodes with other names; the others deleted on the medium before
	 * the bitmaps free them. */
	for (i = 0; i < n; i++) {
		if (d[i].step != 2)
			continue;
		if (d[i].how == DROP_OTHER) {
			code = ext2fs_read_inode(fs->fs, d[i].ino, &d[i].was.small);
			if (code == 0 && d[i].others == OTHERS_COUNTED &&
			    d[i].was.small.i_links_count > 1) {
				d[i].was.small.i_links_count--;
				code = ext2fs_write_inode(fs->fs, d[i].ino, &d[i].was.small);
			}
			d[i].step = 3;
		} else if (d[i].how == DROP_EMPTIED) {
			code = set_links(fs, d[i].ino, 0, dtime_now(fs));
			if (code != 0)
				d[i].step = 3; /* left unattached and empty: leaked */
		}
		NOTE(code, "releasing the old", d[i].path);
	}
	code = io_channel_flush(fs->fs->io);
	NOTE(code, "flushing after releasing", d[0].path);
	synced = code == 0;
	for (i = 0; synced && i < n; i++) {
		if (d[i].step != 2 || d[i].how == DROP_DELETED)
			continue;
		code = release_inode(fs, d[i].ino, d[i].mapping ? d[i].mapping : &d[i].was);
		NOTE(code, "releasing the old", d[i].path);
	}
out:
#undef NOTE
	return first ? fs_fail(fs, first, PS_EIO, what, path, err) : 0;
}

static bool dir_is_hashed(struct ps_fs *fs, ext2_ino_t dir)
{
	struct ext2_inode inode;

	return ext2fs_read_inode(fs->fs, dir, &inode) != 0 || (inode.i_flags & EXT2_INDEX_FL);
}

static int link_name(struct ps_fs *fs, ext2_ino_t dir, const char *name, ext2_ino_t ino,
		     const char *path, struct ps_err *err)
{
	errcode_t code = ext2fs_link(fs->fs, dir, name, ino, EXT2_FT_REG_FILE);

	if (code == EXT2_ET_DIR_NO_SPACE) {
		code = ext2fs_expand_dir(fs->fs, dir);
		if (code == 0)
			code = ext2fs_link(fs->fs, dir, name, ino, EXT2_FT_REG_FILE);
	}
	if (code != 0)
		return fs_fail(fs, code, PS_EIO, "linking", path, err);
	return 0;
}

static int flush(struct ps_fs *fs, struct ps_err *err)
{
	errcode_t code = ext2fs_flush(fs->fs);

	if (code != 0)
		return ps_fail(err, PS_EIO, "flushing partition %s: %s", fs->name,
			       ext2_message(code));
	return 0;
}

/* Per-file state of a ps_fs_write_files batch. */
struct pending {
	const struct ps_fs_file *file;
	ext2_ino_t dir;
	const char *base;
	char temp[256];	    /* names the new inode until it has its name */
	char old_temp[256]; /* names the old inode while the name moves (split) */
	ext2_ino_t old_ino; /* 0: the name is new */
	ext2_ino_t new_ino; /* 0: not allocated yet */
	bool renames;	    /* a new name: its temporary is renamed in place in phase 2 */
	bool links_base;    /* a new name in a hashed directory: linked beside the temporary */
	bool hashed;	    /* the directory is hashed (htree) */
	bool split;	    /* the name and the temporary may not share a directory block */
	long base_block, temp_block; /* the directory blocks holding them (locate) */
	bool swapped;
	bool have_full;	      /* full holds the new inode as create_inode wrote it */
	union inode_buf full; /* its content's mapping and size */
};

struct walk_ctx {
	struct pending *items;
	size_t n;
	ext2_ino_t dir;
	long block; /* the directory block being walked (locate) */
};

static bool dirent_is(const struct ext2_dir_entry *dirent, const char *name, ext2_ino_t ino)
{
	size_t len = (size_t)ext2fs_dirent_name_len(dirent);

	return dirent->inode == ino && len == strlen(name) && strncmp(dirent->name, name, len) == 0;
}

/* Find the directory blocks of each name being replaced and of its temporary. Empty entries
 * are walked too, so that every block starts at offset 0. */
static int locate_entries(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset,
			  int blocksize, char *buf, void *priv)
{
	struct walk_ctx *ctx = priv;
	size_t i;

	(void)dir;
	(void)entry;
	(void)blocksize;
	(void)buf;
	if (offset == 0)
		ctx->block++;
	for (i = 0; dirent->inode != 0 && i < ctx->n; i++) {
		struct pending *p = &ctx->items[i];

		if (p->dir != ctx->dir || p->old_ino == 0)
			continue;
		if (dirent_is(dirent, p->base, p->old_ino))
			p->base_block = ctx->block;
		else if (dirent_is(dirent, p->temp, p->new_ino))
			p->temp_block = ctx->block;
	}
	return 0;
}

/* Phase 2's directory walk: swap the inode numbers of a name and its temporary when they are
 * in the same block (one block write), point a name in another block than its temporary at
 * the new inode, rename the temporaries of new names in place. */
static int swap_entries(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset,
			int blocksize, char *buf, void *priv)
{
	struct walk_ctx *ctx = priv;
	int ret = 0;
	size_t i;

	(void)dir;
	(void)entry;
	(void)offset;
	(void)blocksize;
	(void)buf;
	for (i = 0; i < ctx->n; i++) {
		struct pending *p = &ctx->items[i];

		if (p->dir != ctx->dir)
			continue;
		if (p->renames && dirent_is(dirent, p->temp, p->new_ino)) {
			/* The base name is a suffix of the temporary one: it fits in place. */
			memcpy(dirent->name, p->base, strlen(p->base));
			ext2fs_dirent_set_name_len(dirent, (int)strlen(p->base));
			p->swapped = true;
			ret |= DIRENT_CHANGED;
			continue;
		}
		if (p->old_ino == 0)
			continue;
		if (dirent_is(dirent, p->base, p->old_ino)) {
			dirent->inode = p->new_ino;
			p->swapped = true;
			ret |= DIRENT_CHANGED;
		} else if (!p->split && dirent_is(dirent, p->temp, p->new_ino)) {
			dirent->inode = p->old_ino;
			ret |= DIRENT_CHANGED;
		}
	}
	return ret;
}

/* One walk per directory of the batch. */
static int walk_dirs(struct ps_fs *fs, struct pending *items, size_t n,
		     int (*fn)(ext2_ino_t, int, struct ext2_dir_entry *, int, int, char *, void *),
		     int flags, struct ps_err *err)
{
	size_t i, j;

	for (i = 0; i < n; i++) {
		struct walk_ctx ctx = {items, n, items[i].dir, -1};
		bool seen = false;
		errcode_t code;

		for (j = 0; j < i; j++)
			seen |= items[j].dir == items[i].dir;
		if (seen)
			continue;
		code = ext2fs_dir_iterate2(fs->fs, ctx.dir, flags, NULL, fn, &ctx);
		if (code != 0)
			return fs_fail(fs, code, PS_EIO, "replacing", items[i].file->path, err);
	}
	return 0;
}

/* The removal of name, which points at the old inode and is the one counted (its last name,
 * unless the count says there are hard links). */
static struct drop old_drop(struct ps_fs *fs, const struct pending *p, const char *name)
{
	struct ext2_inode inode;

	return (struct drop){.dir = p->dir,
			     .name = name,
			     .ino = p->old_ino,
			     .path = p->file->path,
			     .others = ext2fs_read_inode(fs->fs, p->old_ino, &inode) == 0 &&
					       inode.i_links_count > 1
					   ? OTHERS_COUNTED
					   : OTHERS_NONE};
}

/* After a failure before every name had its new inode: a name that still has its old inode
 * (or none) keeps it, and the new inode and its temporary are removed; a name that has its
 * new inode keeps that, and the temporaries of both are removed with the old inode. A name
 * is touched only while it points at the inode expected; an inode is freed only when no
 * name points at it, so the bitmaps in memory stay safe to write out whatever fails here. */
static void roll_back(struct ps_fs *fs, struct pending *items, size_t n)
{
	struct drop *drops = calloc(2 * n + 1, sizeof(*drops));
	bool *unnamed = calloc(n ? n : 1, sizeof(*unnamed));
	size_t i, n_drops = 0;
	int rc = drops == NULL || unnamed == NULL ? PS_ENOMEM : 0;

	for (i = 0; rc == 0 && i < n; i++) {
		struct pending *p = &items[i];
		ext2_ino_t as_temp = 0, as_base = 0, as_old = 0;
		errcode_t c1, c2, c3;

		if (p->new_ino == 0)
			continue;
		c1 = ext2fs_lookup(fs->fs, p->dir, p->temp, (int)strlen(p->temp), NULL, &as_temp);
		c2 = ext2fs_lookup(fs->fs, p->dir, p->base, (int)strlen(p->base), NULL, &as_base);
		c3 = ext2fs_lookup(fs->fs, p->dir, p->old_temp, (int)strlen(p->old_temp), NULL,
				   &as_old);
		if ((c1 != 0 && c1 != EXT2_ET_FILE_NOT_FOUND) ||
		    (c2 != 0 && c2 != EXT2_ET_FILE_NOT_FOUND) ||
		    (c3 != 0 && c3 != EXT2_ET_FILE_NOT_FOUND))
			rc = PS_EIO;
		if (rc < 0)
			break;
		if (as_base == p->new_ino) {
			/* The name reached the directory: finish. */
			if (as_temp == p->new_ino)
				drops[n_drops++] = (struct drop){.dir = p->dir,
								 .name = p->temp,
								 .ino = p->new_ino,
								 .path = p->file->path,
								 .others = OTHERS_UNCOUNTED};
			else if (as_temp != 0 && as_temp == p->old_ino)
				drops[n_drops++] = old_drop(fs, p, p->temp);
			if (as_old != 0 && as_old == p->old_ino)
				drops[n_drops++] = old_drop(fs, p, p->old_temp);
			continue;
		}
		if (as_temp == p->new_ino)
			drops[n_drops++] = (struct drop){.dir = p->dir,
							 .name = p->temp,
							 .ino = p->new_ino,
							 .path = p->file->path,
							 .mapping = p->have_full ? &p->full : NULL};
		else
			unnamed[i] = true;
		/* The old inode's second name, beside its own. */
		if (as_old != 0 && as_old == as_base)
			drops[n_drops++] = (struct drop){.dir = p->dir,
							 .name = p->old_temp,
							 .ino = as_old,
							 .path = p->file->path,
							 .others = OTHERS_UNCOUNTED};
	}
	if (rc == 0)
		rc = drop_names(fs, drops, n_drops, NULL);
	/* Inodes no name points at: deleted on the medium (one may have been written empty
	 * with links 1), then freed in the bitmaps. */
	for (i = 0; rc == 0 && i < n; i++)
		if (unnamed[i] && set_links(fs, items[i].new_ino, 0, dtime_now(fs)) != 0)
			rc = PS_EIO;
	if (rc == 0)
		rc = sync_medium(fs, NULL);
	for (i = 0; rc == 0 && i < n; i++)
		if (unnamed[i] && release_inode(fs, items[i].new_ino,
						items[i].have_full ? &items[i].full : NULL) != 0)
			rc = PS_EIO;
	if (rc == 0)
		flush(fs, NULL);
	free(unnamed);
	free(drops);
}

/* A leftover of an interrupted run, name in dir: queued for removal (with its inode unless
 * other names point at it). Names never raise a link count: the temporary and the name
 * pointing at the same inode means the temporary is not counted (see "Crash safety"); a
 * count above 1 otherwise means hard links of the image's own. */
static int queue_stale(struct ps_fs *fs, struct pending *p, const char *name, struct drop *drops,
		       size_t *n_drops, struct ps_err *err)
{
	struct ext2_inode inode;
	ext2_ino_t stale;
	errcode_t code = ext2fs_lookup(fs->fs, p->dir, name, (int)strlen(name), NULL, &stale);

	if (code == EXT2_ET_FILE_NOT_FOUND)
		return 0;
	if (code == 0)
		code = ext2fs_read_inode(fs->fs, stale, &inode);
	if (code != 0)
		return fs_fail(fs, code, PS_EIO, "looking up", p->file->path, err);
	drops[(*n_drops)++] = (struct drop){.dir = p->dir,
					    .name = name,
					    .ino = stale,
					    .path = p->file->path,
					    .others = stale == p->old_ino	? OTHERS_UNCOUNTED
						      : inode.i_links_count > 1 ? OTHERS_COUNTED
										: OTHERS_NONE};
	return 0;
}

int ps_fs_write_files(struct ps_fs *fs, const struct ps_fs_file *files, size_t n,
		      struct ps_err *err)
{
	struct pending *items = calloc(n ? n : 1, sizeof(*items));
	struct drop *drops = calloc(2 * n + 1, sizeof(*drops));
	char dir[1024];
	size_t i, n_drops = 0;
	bool swapping = false;
	errcode_t code;
	int rc;

	if (items == NULL || drops == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory");
		goto out;
	}
	rc = ps_fs_check_write(fs, files, n, err);
	if (rc < 0)
		goto out;
	/* Phase 0: directories, existing names, leftovers of an interrupted run. */
	for (i = 0; i < n; i++) {
		struct pending *p = &items[i];

		p->file = &files[i];
		rc = split_path(files[i].path, dir, sizeof(dir), &p->base, err);
		if (rc == 0)
			rc = resolve_dir(fs, dir, true, &p->dir, err);
		if (rc < 0)
			goto out;
		snprintf(p->temp, sizeof(p->temp), TEMP_PREFIX "%s", p->base);
		snprintf(p->old_temp, sizeof(p->old_temp), OLD_TEMP_PREFIX "%s", p->base);
		code =
		    ext2fs_lookup(fs->fs, p->dir, p->base, (int)strlen(p->base), NULL, &p->old_ino);
		if (code == EXT2_ET_FILE_NOT_FOUND)
			p->old_ino = 0;
		else if (code != 0) {
			rc = fs_fail(fs, code, PS_EIO, "looking up", files[i].path, err);
			goto out;
		}
		rc = queue_stale(fs, p, p->temp, drops, &n_drops, err);
		if (rc == 0)
			rc = queue_stale(fs, p, p->old_temp, drops, &n_drops, err);
		if (rc < 0)
			goto out;
		/* A new name in a hashed (htree) directory cannot be renamed in place. */
		p->hashed = dir_is_hashed(fs, p->dir);
		p->renames = p->old_ino == 0 && !p->hashed;
		p->links_base = p->old_ino == 0 && p->hashed;
	}
	rc = drop_names(fs, drops, n_drops, err);
	if (rc < 0)
		goto out;
	/* Phase 1: new inodes with the complete content, written as deleted; the bitmaps
	 * marking them and their blocks in use reach the medium before anything refers to
	 * them. */
	swapping = true;
	for (i = 0; rc == 0 && i < n; i++) {
		struct pending *p = &items[i];

		rc = create_inode(fs, p->dir, p->file, &p->new_ino, err);
		code = rc == 0 ? read_whole(fs, p->new_ino, &p->full) : 0;
		if (code != 0)
			rc = fs_fail(fs, code, PS_EIO, "reading back", p->file->path, err);
		p->have_full = rc == 0;
	}
	if (rc == 0)
		rc = flush(fs, err);
	/* Written empty with links 1, linked under the temporary name, then written complete:
	 * each step on the medium before the next (see "Crash safety" above). */
	for (i = 0; rc == 0 && i < n; i++) {
		struct pending *p = &items[i];
		union inode_buf empty;

		if (!empty_copy(fs, p->new_ino, &p->full, &empty))
			rc = ps_fail(err, PS_EIO, "writing %s in partition %s: unexpected inode",
				     p->file->path, fs->name);
		else if ((code = write_whole(fs, p->new_ino, &empty)) != 0)
			rc = fs_fail(fs, code, PS_EIO, "writing", p->file->path, err);
	}
	if (rc == 0)
		rc = sync_medium(fs, err);
	for (i = 0; rc == 0 && i < n; i++) {
		struct pending *p = &items[i];

		rc = link_name(fs, p->dir, p->temp, p->new_ino, p->file->path, err);
	}
	if (rc == 0)
		rc = sync_medium(fs, err);
	for (i = 0; rc == 0 && i < n; i++) {
		struct pending *p = &items[i];

		p->full.small.i_links_count = 1;
		p->full.small.i_dtime = 0;
		code = write_whole(fs, p->new_ino, &p->full);
		if (code != 0)
			rc = fs_fail(fs, code, PS_EIO, "writing", p->file->path, err);
	}
	if (rc == 0)
		rc = flush(fs, err);
	/* Phase 2: the names. Where a name and its temporary share a directory block, one write
	 * swaps their inodes; where they do not, the old inode first gets a second name, the
	 * name then points at the new inode, and the temporary goes. A new name in a linear
	 * directory: the temporary renamed in place; in a hashed one, the name linked beside the
	 * temporary, which then goes. Such a second name is not counted in the link count: it
	 * exists only until the next step, and the count never exceeds the names (see
	 * "Crash safety"). In a hashed directory a link may split a block and move entries, so
	 * there a name and its temporary are never taken to share one; in a linear one, links
	 * fill free space or add a block and move nothing. */
	for (i = 0; i < n; i++)
		items[i].base_block = items[i].temp_block = -1;
	if (rc == 0)
		rc = walk_dirs(fs, items, n, locate_entries, DIRENT_FLAG_INCLUDE_EMPTY, err);
	for (i = 0; rc == 0 && i < n; i++) {
		struct pending *p = &items[i];

		if (p->old_ino != 0 && (p->base_block < 0 || p->temp_block < 0))
			rc = ps_fail(err, PS_EIO, "replacing %s in partition %s: entry vanished",
				     p->file->path, fs->name);
		p->split = p->old_ino != 0 && (p->hashed || p->base_block != p->temp_block);
		if (rc == 0 && p->split)
			rc = link_name(fs, p->dir, p->old_temp, p->old_ino, p->file->path, err);
		else if (rc == 0 && p->links_base)
			rc = link_name(fs, p->dir, p->base, p->new_ino, p->file->path, err);
	}
	if (rc == 0)
		rc = sync_medium(fs, err);
	if (rc == 0)
		rc = walk_dirs(fs, items, n, swap_entries, 0, err);
	for (i = 0; rc == 0 && i < n; i++) {
		if ((items[i].old_ino != 0 || items[i].renames) && !items[i].swapped)
			rc = ps_fail(err, PS_EIO, "replacing %s in partition %s: entry vanished",
				     items[i].file->path, fs->name);
	}
	if (rc == 0)
		rc = sync_medium(fs, err);
	for (i = 0; rc == 0 && i < n; i++) {
		struct pending *p = &items[i];

		if ((p->split || p->links_base) &&
		    (code = ext2fs_unlink(fs->fs, p->dir, p->temp, p->new_ino, 0)) != 0)
			rc = fs_fail(fs, code, PS_EIO, "renaming", p->file->path, err);
	}
	if (rc == 0)
		rc = flush(fs, err);
	if (rc < 0)
		goto out;
	swapping = false;
	/* Phase 3: the temporaries now name the old content; remove them (with the inode,
	 * unless it has other names: a count above 1). */
	n_drops = 0;
	for (i = 0; i < n; i++) {
		struct pending *p = &items[i];

		if (p->old_ino != 0)
			drops[n_drops++] = old_drop(fs, p, p->split ? p->old_temp : p->temp);
	}
	rc = drop_names(fs, drops, n_drops, err);
	if (rc == 0)
		rc = flush(fs, err);
out:
	if (rc < 0 && swapping)
		roll_back(fs, items, n);
	free(drops);
	free(items);
	return rc;
}
