/* fuzz_image.c — libFuzzer target for partition and filesystem discovery: the input is a
 * whole disk image (at most 1 MiB), held in a memory file. ps_image_open reads the partition
 * table (libblkid) and probes every partition; when a data partition is found, it and the
 * root filesystems are opened read-only through libext2fs and /mender/mender.conf and
 * /etc/mender/mender.conf are read, as the pipeline reads them. */
#include "image.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_IMAGE (1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void read_partition(struct ps_image *img, const struct ps_partition *part, const char *path)
{
	struct ps_fs *fs = NULL;
	struct ps_fs_stat st;
	struct ps_err err;
	char *text = NULL;
	size_t len = 0;

	if (ps_fs_open(img, part, false, &fs, &err) != 0)
		return;
	ps_fs_is_empty(fs);
	ps_fs_stat(fs, path, &st, &err);
	if (ps_fs_read(fs, path, 1 << 20, &text, &len, &err) == 0 && strlen(text) > len)
		abort(); /* the buffer is terminated at its length */
	free(text);
	ps_fs_close(fs, &err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];
	struct ps_image img;
	struct ps_err err;
	int i;

	if (size > MAX_IMAGE)
		return 0;
	if (fd < 0) {
		fd = memfd_create("fuzz-image", 0);
		if (fd < 0)
			abort();
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	if (ps_image_open(&img, path, false, NULL, &err) != 0)
		return 0;
	read_partition(&img, &img.parts[img.data], "/mender/mender.conf");
	for (i = 0; i < img.n_rootfs; i++)
		read_partition(&img, &img.parts[img.rootfs[i]], "/etc/mender/mender.conf");
	ps_image_close(&img);
	return 0;
}
