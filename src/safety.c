/* safety.c — the safety gate for block devices (see safety.h). */
#include "safety.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

const char *ps_safety_root = "";

/* Read the first line of a sysfs or procfs file (path below ps_safety_root); -1 when absent. */
static int read_line(char *buf, size_t len, const char *path)
{
	char full[PATH_MAX];
	FILE *f;

	if (snprintf(full, sizeof(full), "%s%s", ps_safety_root, path) >= (int)sizeof(full))
		return -1;
	f = fopen(full, "re");
	if (f == NULL)
		return -1;
	if (fgets(buf, (int)len, f) == NULL)
		buf[0] = '\0';
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

/* read_line on "/sys/block/DISK[/PART]/ATTR". */
static int read_attr(char *buf, size_t len, const char *disk, const char *part, const char *attr)
{
	char path[PATH_MAX];
	int n = part ? snprintf(path, sizeof(path), "/sys/block/%s/%s/%s", disk, part, attr)
		     : snprintf(path, sizeof(path), "/sys/block/%s/%s", disk, attr);

	if (n < 0 || (size_t)n >= sizeof(path))
		return -1;
	return read_line(buf, len, path);
}

/* The names of a disk's partitions ("sdb1", ...), as a NUL-separated list in buf. */
static size_t list_partitions(const char *disk, char *buf, size_t len)
{
	char path[PATH_MAX];
	struct dirent *de;
	size_t used = 0;
	DIR *dir;

	snprintf(path, sizeof(path), "%s/sys/block/%s", ps_safety_root, disk);
	dir = opendir(path);
	if (dir == NULL)
		return 0;
	while ((de = readdir(dir)) != NULL) {
		char probe[16];
		size_t n = strlen(de->d_name) + 1;

		if (strncmp(de->d_name, disk, strlen(disk)) != 0 || used + n > len)
			continue;
		if (read_attr(probe, sizeof(probe), disk, de->d_name, "partition") != 0)
			continue;
		memcpy(buf + used, de->d_name, n);
		used += n;
	}
	closedir(dir);
	return used;
}

/* True when name (disk or partition) has holders (LVM, md, dm); the first goes to holder. */
static bool has_holder(const char *disk, const char *part, char *holder, size_t len)
{
	char path[PATH_MAX];
	struct dirent *de;
	bool found = false;
	DIR *dir;

	if (part == NULL)
		snprintf(path, sizeof(path), "%s/sys/block/%s/holders", ps_safety_root, disk);
	else
		snprintf(path, sizeof(path), "%s/sys/block/%s/%s/holders", ps_safety_root, disk,
			 part);
	dir = opendir(path);
	if (dir == NULL)
		return false;
	while (!found && (de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		found = true;
		if (strlen(de->d_name) < len)
			memcpy(holder, de->d_name, strlen(de->d_name) + 1);
		else
			snprintf(holder, len, "?");
	}
	closedir(dir);
	return found;
}

/* "major:minor" of a disk or partition. */
static bool dev_numbers(const char *disk, const char *part, unsigned *major, unsigned *minor)
{
	char line[32];
	int rc = read_attr(line, sizeof(line), disk, part, "dev");

	return rc == 0 && sscanf(line, "%u:%u", major, minor) == 2;
}

/* Where a device number is mounted, from mountinfo ("" when nowhere). */
static bool mounted_at(unsigned major, unsigned minor, char *where, size_t len)
{
	char path[PATH_MAX], line[4096];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "%s/proc/self/mountinfo", ps_safety_root);
	f = fopen(path, "re");
	if (f == NULL)
		return false;
	while (!found && fgets(line, sizeof(line), f) != NULL) {
		unsigned ma, mi;
		char mount_point[1024];

		if (sscanf(line, "%*s %*s %u:%u %*s %1023s", &ma, &mi, mount_point) == 3 &&
		    ma == major && mi == minor) {
			snprintf(where, len, "%s", mount_point);
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* True when a swap area of /proc/swaps lives on this device number. */
static bool used_as_swap(unsigned major, unsigned minor)
{
	char path[PATH_MAX], line[1024], dev[512];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "%s/proc/swaps", ps_safety_root);
	f = fopen(path, "re");
	if (f == NULL)
		return false;
	while (!found && fgets(line, sizeof(line), f) != NULL) {
		struct stat st;

		if (sscanf(line, "%511s", dev) == 1 && stat(dev, &st) == 0 && S_ISBLK(st.st_mode))
			found = major(st.st_rdev) == major && minor(st.st_rdev) == minor;
	}
	fclose(f);
	return found;
}

/* Check the disk and each of its partitions: mounted, swap, held, or the system's root. */
static int check_in_use(const char *disk, const char *node, struct ps_err *err)
{
	char parts[4096], where[1024], holder[64];
	size_t used = list_partitions(disk, parts, sizeof(parts)), off = 0;
	struct stat root;
	unsigned major, minor;
	bool have_root = stat("/", &root) == 0;
	const char *part = NULL;

	for (;;) {
		const char *name = part ? part : disk;

		if (dev_numbers(disk, part, &major, &minor)) {
			if (have_root && major(root.st_dev) == major && minor(root.st_dev) == minor)
				return ps_fail(
				    err, PS_EUNSAFE,
				    "%s holds the running system (/dev/%s is mounted on /)", node,
				    name);
			if (mounted_at(major, minor, where, sizeof(where)))
				return ps_fail(err, PS_EUNSAFE,
					       "%s is in use: /dev/%s is mounted on %s", node, name,
					       where);
			if (used_as_swap(major, minor))
				return ps_fail(err, PS_EUNSAFE, "%s is in use: /dev/%s is swap",
					       node, name);
		}
		if (has_holder(disk, part, holder, sizeof(holder)))
			return ps_fail(err, PS_EUNSAFE,
				       "%s is in use: /dev/%s is held by %s (LVM, md or dm)", node,
				       name, holder);
		if (off >= used)
			break;
		part = parts + off;
		off += strlen(part) + 1;
	}
	return 0;
}

/* The bus a disk hangs on, from the path of its sysfs device. */
static void disk_bus(const char *disk, char *bus, size_t len)
{
	char path[PATH_MAX], target[PATH_MAX];
	ssize_t n;

	bus[0] = '\0';
	snprintf(path, sizeof(path), "%s/sys/block/%s", ps_safety_root, disk);
	n = readlink(path, target, sizeof(target) - 1);
	if (n <= 0)
		return;
	target[n] = '\0';
	if (strstr(target, "/usb") != NULL)
		snprintf(bus, len, "usb");
	else if (strstr(target, "/mmc") != NULL)
		snprintf(bus, len, "mmc");
}

int ps_safety_check(const char *path, const struct ps_safety_policy *policy,
		    struct ps_disk_facts *facts, struct ps_err *err)
{
	static const struct ps_safety_policy defaults;
	struct ps_disk_facts local;
	char line[64], sys[PATH_MAX], link[PATH_MAX];
	struct stat st;
	ssize_t n;
	char *base;
	int rc;

	if (policy == NULL)
		policy = &defaults;
	if (facts == NULL)
		facts = &local;
	memset(facts, 0, sizeof(*facts));
	if (stat(path, &st) != 0)
		return ps_fail(err, PS_ENOENT, "target %s: %s", path, strerror(errno));
	if (S_ISREG(st.st_mode))
		return 0;
	if (!S_ISBLK(st.st_mode))
		return ps_fail(err, PS_EUNSAFE, "%s is neither an image file nor a block device",
			       path);
	facts->major = major(st.st_rdev);
	facts->minor = minor(st.st_rdev);
	snprintf(sys, sizeof(sys), "%s/sys/dev/block/%u:%u", ps_safety_root, facts->major,
		 facts->minor);
	n = readlink(sys, link, sizeof(link) - 1);
	if (n <= 0)
		return ps_fail(err, PS_EUNSAFE, "%s: the kernel does not describe it in sysfs",
			       path);
	link[n] = '\0';
	base = strrchr(link, '/');
	base = base ? base + 1 : link;
	if (strlen(base) >= sizeof(facts->name))
		return ps_fail(err, PS_EUNSAFE, "%s: unexpected kernel name", path);
	memcpy(facts->name, base, strlen(base) + 1);
	snprintf(sys, sizeof(sys), "%s/sys/dev/block/%u:%u/partition", ps_safety_root, facts->major,
		 facts->minor);
	if (access(sys, F_OK) == 0)
		return ps_fail(err, PS_EUNSAFE, "%s is a partition; give the whole disk", path);
	if (read_attr(line, sizeof(line), facts->name, NULL, "removable") == 0)
		facts->removable = strcmp(line, "1") == 0;
	if (read_attr(line, sizeof(line), facts->name, NULL, "ro") == 0)
		facts->read_only = strcmp(line, "1") == 0;
	if (read_attr(line, sizeof(line), facts->name, NULL, "size") == 0)
		facts->size = strtoull(line, NULL, 10) * 512;
	disk_bus(facts->name, facts->bus, sizeof(facts->bus));

	rc = check_in_use(facts->name, path, err);
	if (rc < 0)
		return rc;
	if (facts->read_only)
		return ps_fail(err, PS_EUNSAFE, "%s is read-only (write-protect switch?)", path);
	if (!facts->removable && facts->bus[0] == '\0' && !policy->allow_fixed)
		return ps_fail(err, PS_EUNSAFE,
			       "%s is a fixed disk, not removable and not on USB or MMC; refusing "
			       "it unless explicitly allowed",
			       path);
	if (policy->min_size > 0 && facts->size < policy->min_size)
		return ps_fail(err, PS_EUNSAFE, "%s holds %llu bytes, less than the %llu needed",
			       path, (unsigned long long)facts->size,
			       (unsigned long long)policy->min_size);
	return 0;
}
