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

#define TEMP_PREFIX ".provstation-new-"

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
 * writes go in this order, with the medium flushed (block cache written out, fsync) between
 * the steps so that neither libext2fs's cache nor the kernel can reorder them:
 *
 *   new inode:  content and inode written unlinked (links 0, dtime set: e2fsck reads it as
 *               deleted), bitmaps flushed; then the name is linked; then links 1;
 *   old inode:  links 0 and dtime first; then the name is unlinked; then its blocks and the
 *               inode are freed in the bitmaps.
 *
 * An interruption leaves at worst leaked blocks and inodes (bitmap and count differences),
 * or, between the two writes that link or unlink a temporary name, that temporary name
 * pointing at a deleted inode, which e2fsck -p clears and the next run removes. */

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

/* Write out libext2fs's block cache and make the medium durable (an ordering point). */
static int sync_medium(struct ps_fs *fs, struct ps_err *err)
{
	errcode_t code = io_channel_flush(fs->fs->io);

	if (code != 0)
		return ps_fail(err, PS_EIO, "flushing partition %s: %s", fs->name,
			       ext2_message(code));
	return 0;
}

/* Allocate an inode owned by root with mode and write data into it, unlinked: links 0 and
 * dtime set until a name points at it. *out is set as soon as the inode is allocated, so
 * that a failure half-way can free it. */
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

/* Free an inode whose link count is 0 on the medium and that no name points at: its blocks
 * and the inode itself, in the bitmaps (written by the next flush). */
static errcode_t free_inode(struct ps_fs *fs, ext2_ino_t ino)
{
	struct ext2_inode inode;
	errcode_t code = ext2fs_read_inode(fs->fs, ino, &inode);

	if (code == 0 && ext2fs_inode_has_valid_blocks2(fs->fs, &inode))
		code = ext2fs_punch(fs->fs, ino, &inode, NULL, 0, ~0ULL);
	if (code == 0) {
		inode.i_links_count = 0;
		inode.i_dtime = (__u32)fs->fs->now ? (__u32)fs->fs->now : 1;
		code = ext2fs_write_inode(fs->fs, ino, &inode);
	}
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
	bool other_links; /* the inode has further names: only its link count drops */
	int step;	  /* 1: link count written, 2: name removed */
};

/* Remove names and release their inodes in the crash-safe order (see above). A name is
 * removed only while it still points at the expected inode. A failure does not stop the
 * others: each name ends either removed with its inode released, or in place with its inode
 * as it was, and the first error is returned. */
static int drop_names(struct ps_fs *fs, struct drop *d, size_t n, struct ps_err *err)
{
	struct ext2_inode inode;
	__u32 now = (__u32)fs->fs->now ? (__u32)fs->fs->now : 1;
	errcode_t code, first = 0;
	const char *what = NULL, *path = NULL;
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
	for (i = 0; i < n; i++) {
		d[i].step = 0;
		code = ext2fs_read_inode(fs->fs, d[i].ino, &inode);
		d[i].other_links = code == 0 && inode.i_links_count > 1;
		if (code == 0 && !d[i].other_links) {
			code = set_links(fs, d[i].ino, 0, now);
			/* libext2fs changed its copy of the inode table block before the write
			 * failed; the change would land with the next write of that block. */
			if (code != 0)
				set_links(fs, d[i].ino, 1, 0);
		}
		NOTE(code, "releasing the old", d[i].path);
		if (code == 0)
			d[i].step = 1;
	}
	code = io_channel_flush(fs->fs->io);
	NOTE(code, "flushing before unlinking", d[0].path);
	for (i = 0; i < n; i++) {
		if (d[i].step != 1)
			continue;
		code = ext2fs_unlink(fs->fs, d[i].dir, d[i].name, d[i].ino, 0);
		NOTE(code, "unlinking a temporary of", d[i].path);
		if (code == 0) {
			d[i].step = 2;
		} else if (!d[i].other_links) {
			/* The name is still there: it names the inode again. */
			code = set_links(fs, d[i].ino, 1, 0);
			NOTE(code, "restoring", d[i].path);
		}
	}
	/* The names are gone on the medium before anything else is written. */
	code = io_channel_flush(fs->fs->io);
	NOTE(code, "flushing after unlinking", d[0].path);
	for (i = 0; i < n; i++) {
		if (d[i].step != 2)
			continue;
		if (d[i].other_links) {
			code = ext2fs_read_inode(fs->fs, d[i].ino, &inode);
			if (code == 0) {
				inode.i_links_count--;
				code = ext2fs_write_inode(fs->fs, d[i].ino, &inode);
			}
		} else {
			code = free_inode(fs, d[i].ino);
		}
		NOTE(code, "releasing the old", d[i].path);
	}
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
	char temp[256];
	ext2_ino_t old_ino;  /* 0: the name is new */
	ext2_ino_t new_ino;  /* 0: not allocated yet */
	const char *link_as; /* the name phase 1 links: temp, or base in a hashed directory */
	bool renames;	     /* a new name: its temporary is renamed in place in phase 2 */
	bool swapped;
};

struct swap_ctx {
	struct pending *items;
	size_t n;
	ext2_ino_t dir;
};

/* Swap the inode numbers of "name" and its temporary twin, in the same directory walk so
 * that entries in one block are rewritten by a single block write. */
static int swap_entries(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset,
			int blocksize, char *buf, void *priv)
{
	struct swap_ctx *ctx = priv;
	int len = ext2fs_dirent_name_len(dirent);
	int ret = 0;
	size_t i;

	for (i = 0; i < ctx->n; i++) {
		struct pending *p = &ctx->items[i];

		if (p->dir != ctx->dir)
			continue;
		if (p->renames && (size_t)len == strlen(p->temp) &&
		    strncmp(dirent->name, p->temp, len) == 0 && dirent->inode == p->new_ino) {
			/* The base name is a suffix of the temporary one: it fits in place. */
			memcpy(dirent->name, p->base, strlen(p->base));
			ext2fs_dirent_set_name_len(dirent, (int)strlen(p->base));
			p->swapped = true;
			ret |= DIRENT_CHANGED;
			continue;
		}
		if (p->old_ino == 0)
			continue;
		if ((size_t)len == strlen(p->base) && strncmp(dirent->name, p->base, len) == 0 &&
		    dirent->inode == p->old_ino) {
			dirent->inode = p->new_ino;
			p->swapped = true;
			ret |= DIRENT_CHANGED;
		} else if ((size_t)len == strlen(p->temp) &&
			   strncmp(dirent->name, p->temp, len) == 0 &&
			   dirent->inode == p->new_ino) {
			dirent->inode = p->old_ino;
			ret |= DIRENT_CHANGED;
		}
	}
	return ret;
}

/* After a failure before the names were swapped: remove the new inodes and the names that
 * point at them, so that the partition holds what it held before. A name is touched only
 * while it still points at the new inode; an inode is freed only when no name points at it,
 * so the bitmaps in memory stay safe to write out whatever fails here. */
static void roll_back(struct ps_fs *fs, struct pending *items, size_t n)
{
	struct drop *drops = calloc(n ? n : 1, sizeof(*drops));
	size_t i, n_drops = 0;
	int rc = drops == NULL ? PS_ENOMEM : 0;

	for (i = 0; rc == 0 && i < n; i++) {
		struct pending *p = &items[i];
		ext2_ino_t as_temp = 0, as_base = 0;
		errcode_t c1, c2;

		if (p->new_ino == 0)
			continue;
		c1 = ext2fs_lookup(fs->fs, p->dir, p->temp, (int)strlen(p->temp), NULL, &as_temp);
		c2 = ext2fs_lookup(fs->fs, p->dir, p->base, (int)strlen(p->base), NULL, &as_base);
		if ((c1 != 0 && c1 != EXT2_ET_FILE_NOT_FOUND) ||
		    (c2 != 0 && c2 != EXT2_ET_FILE_NOT_FOUND))
			rc = PS_EIO;
		else if (as_base == p->new_ino && p->link_as != p->base)
			rc = PS_EIO; /* the swap reached the directory after all: leave it */
		else if (as_base == p->new_ino || as_temp == p->new_ino)
			drops[n_drops++] = (struct drop){.dir = p->dir,
							 .name = p->link_as,
							 .ino = p->new_ino,
							 .path = p->file->path};
		else if (free_inode(fs, p->new_ino) != 0)
			rc = PS_EIO;
	}
	if (rc == 0)
		rc = drop_names(fs, drops, n_drops, NULL);
	if (rc == 0)
		flush(fs, NULL);
	free(drops);
}

int ps_fs_write_files(struct ps_fs *fs, const struct ps_fs_file *files, size_t n,
		      struct ps_err *err)
{
	struct pending *items = calloc(n ? n : 1, sizeof(*items));
	struct drop *drops = calloc(n ? n : 1, sizeof(*drops));
	char dir[1024];
	size_t i, j, n_drops = 0;
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
	/* Phase 0: directories, existing names, stale temporaries from an interrupted run. */
	for (i = 0; i < n; i++) {
		struct pending *p = &items[i];
		ext2_ino_t stale;

		p->file = &files[i];
		rc = split_path(files[i].path, dir, sizeof(dir), &p->base, err);
		if (rc == 0)
			rc = resolve_dir(fs, dir, true, &p->dir, err);
		if (rc < 0)
			goto out;
		snprintf(p->temp, sizeof(p->temp), TEMP_PREFIX "%s", p->base);
		code = ext2fs_lookup(fs->fs, p->dir, p->temp, (int)strlen(p->temp), NULL, &stale);
		if (code == 0)
			drops[n_drops++] = (struct drop){
			    .dir = p->dir, .name = p->temp, .ino = stale, .path = files[i].path};
		code =
		    ext2fs_lookup(fs->fs, p->dir, p->base, (int)strlen(p->base), NULL, &p->old_ino);
		if (code == EXT2_ET_FILE_NOT_FOUND)
			p->old_ino = 0;
		else if (code != 0) {
			rc = fs_fail(fs, code, PS_EIO, "looking up", files[i].path, err);
			goto out;
		}
		/* A new name in a hashed (htree) directory cannot be renamed in place. */
		p->renames = p->old_ino == 0 && !dir_is_hashed(fs, p->dir);
		p->link_as = p->old_ino != 0 || p->renames ? p->temp : p->base;
	}
	rc = drop_names(fs, drops, n_drops, err);
	if (rc < 0)
		goto out;
	/* Phase 1: new inodes with the complete content, unlinked; the bitmaps marking them in
	 * use reach the medium before any name points at them. */
	swapping = true;
	for (i = 0; rc == 0 && i < n; i++)
		rc = create_inode(fs, items[i].dir, items[i].file, &items[i].new_ino, err);
	if (rc == 0)
		rc = flush(fs, err);
	/* Linked under a temporary name (a new name in a hashed directory: under the real
	 * one), then made live: the directory blocks reach the medium before the link counts.
	 * Phase 2 swaps the temporaries with the names they replace, and renames those of new
	 * names in place, all in one directory-block write. */
	for (i = 0; rc == 0 && i < n; i++) {
		struct pending *p = &items[i];

		rc = link_name(fs, p->dir, p->link_as, p->new_ino, p->file->path, err);
	}
	if (rc == 0)
		rc = sync_medium(fs, err);
	for (i = 0; rc == 0 && i < n; i++) {
		code = set_links(fs, items[i].new_ino, 1, 0);
		if (code != 0)
			rc = fs_fail(fs, code, PS_EIO, "writing", items[i].file->path, err);
	}
	if (rc == 0)
		rc = flush(fs, err);
	/* Phase 2: swap names and temporaries, one directory walk per directory. */
	for (i = 0; rc == 0 && i < n; i++) {
		struct swap_ctx ctx = {items, n, items[i].dir};
		bool seen = false;

		for (j = 0; j < i; j++)
			seen |= items[j].dir == items[i].dir;
		if (seen)
			continue;
		code = ext2fs_dir_iterate2(fs->fs, ctx.dir, 0, NULL, swap_entries, &ctx);
		if (code != 0)
			rc = fs_fail(fs, code, PS_EIO, "replacing", items[i].file->path, err);
	}
	for (i = 0; rc == 0 && i < n; i++) {
		if ((items[i].old_ino != 0 || items[i].renames) && !items[i].swapped)
			rc = ps_fail(err, PS_EIO, "replacing %s in partition %s: entry vanished",
				     items[i].file->path, fs->name);
	}
	if (rc == 0)
		rc = flush(fs, err);
	if (rc < 0)
		goto out;
	swapping = false;
	/* Phase 3: the temporaries now name the old content; remove them. */
	n_drops = 0;
	for (i = 0; i < n; i++) {
		struct pending *p = &items[i];

		if (p->old_ino != 0)
			drops[n_drops++] = (struct drop){.dir = p->dir,
							 .name = p->temp,
							 .ino = p->old_ino,
							 .path = p->file->path};
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
