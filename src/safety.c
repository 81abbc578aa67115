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

/* Undo mountinfo's octal escapes ("\\040" for a blank) in place. */
static void unescape(char *s)
{
	char *out = s;

	while (*s != '\0') {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 4;
		} else {
			*out++ = *s++;
		}
	}
	*out = '\0';
}

/* The kernel name of a block device number ("sdb1"), from /sys/dev/block/M:m. */
static bool kernel_name(unsigned major, unsigned minor, char *name, size_t len)
{
	char path[PATH_MAX], target[PATH_MAX];
	const char *base;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/sys/dev/block/%u:%u", ps_safety_root, major, minor);
	n = readlink(path, target, sizeof(target) - 1);
	if (n <= 0)
		return false;
	target[n] = '\0';
	base = strrchr(target, '/');
	base = base ? base + 1 : target;
	return snprintf(name, len, "%s", base) < (int)len;
}

/* The btrfs filesystem that has name among its devices (/sys/fs/btrfs/FSID/devices/NAME; the
 * kernel lists mounted btrfs filesystems there, every member device of each): its fsid and
 * the NUL-separated names of all its member devices. */
static bool btrfs_members(const char *name, char *fsid, size_t fsid_len, char *members, size_t len)
{
	char path[PATH_MAX];
	struct dirent *de;
	bool found = false;
	DIR *dir;

	snprintf(path, sizeof(path), "%s/sys/fs/btrfs", ps_safety_root);
	dir = opendir(path);
	if (dir == NULL)
		return false;
	while (!found && (de = readdir(dir)) != NULL) {
		char probe[PATH_MAX];
		struct dirent *m;
		size_t used = 0;
		DIR *devs;

		if (de->d_name[0] == '.' ||
		    snprintf(probe, sizeof(probe), "%s/sys/fs/btrfs/%s/devices/%s", ps_safety_root,
			     de->d_name, name) >= (int)sizeof(probe) ||
		    access(probe, F_OK) != 0)
			continue;
		found = true;
		snprintf(fsid, fsid_len, "%s", de->d_name);
		snprintf(probe, sizeof(probe), "%s/sys/fs/btrfs/%s/devices", ps_safety_root,
			 de->d_name);
		devs = opendir(probe);
		while (devs != NULL && (m = readdir(devs)) != NULL) {
			size_t n = strlen(m->d_name) + 1;

			if (m->d_name[0] == '.' || used + n + 1 > len)
				continue;
			memcpy(members + used, m->d_name, n);
			used += n;
		}
		if (devs != NULL)
			closedir(devs);
		members[used] = '\0';
	}
	closedir(dir);
	return found;
}

static bool in_list(const char *list, const char *name)
{
	for (; *list != '\0'; list += strlen(list) + 1)
		if (strcmp(list, name) == 0)
			return true;
	return false;
}

/* Whether the device (kernel name, major:minor) is mounted, from mountinfo, and how, as the
 * end of a sentence into how ("/dev/sdb1 is mounted on /media/x"). A line matches on its
 * device number, or on its mount source (the field after " - fstype ") when that names a
 * block device in /dev/ with the same number: btrfs and other filesystems show an anonymous
 * 0:NN device number. For btrfs every member device of the filesystem counts, so a disk
 * that is the second device of a mounted multi-device btrfs is caught too; and a device the
 * kernel lists under a mounted btrfs counts even when this mount namespace does not show the
 * mount. */
static bool mounted(const char *name, unsigned major, unsigned minor, char *how, size_t len)
{
	char path[PATH_MAX], line[4096], fsid[256] = "", members[4096] = "";
	bool btrfs = btrfs_members(name, fsid, sizeof(fsid), members, sizeof(members) - 1);
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "%s/proc/self/mountinfo", ps_safety_root);
	f = fopen(path, "re");
	while (f != NULL && !found && fgets(line, sizeof(line), f) != NULL) {
		char mount_point[1024], fstype[64] = "", source[1024] = "", via[64] = "";
		const char *tail = strstr(line, " - ");
		unsigned ma, mi;
		struct stat st;

		if (sscanf(line, "%*s %*s %u:%u %*s %1023s", &ma, &mi, mount_point) != 3)
			continue;
		unescape(mount_point);
		if (tail != NULL && sscanf(tail, " - %63s %1023s", fstype, source) == 2)
			unescape(source);
		if (ma == major && mi == minor) {
			found = true;
		} else if (strncmp(source, "/dev/", 5) == 0 && stat(source, &st) == 0 &&
			   S_ISBLK(st.st_mode)) {
			if (major(st.st_rdev) == major && minor(st.st_rdev) == minor)
				found = true;
			else if (btrfs && strcmp(fstype, "btrfs") == 0 &&
				 kernel_name(major(st.st_rdev), minor(st.st_rdev), via,
					     sizeof(via)) &&
				 in_list(members, via))
				found = true;
		}
		if (found && via[0] != '\0')
			snprintf(
			    how, len,
			    "/dev/%s belongs to the btrfs filesystem of /dev/%s, mounted on %s",
			    name, via, mount_point);
		else if (found)
			snprintf(how, len, "/dev/%s is mounted on %s", name, mount_point);
	}
	if (f != NULL)
		fclose(f);
	if (!found && btrfs) {
		snprintf(how, len, "/dev/%s belongs to a mounted btrfs filesystem (%s)", name,
			 fsid);
		found = true;
	}
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
	char parts[4096], how[1600], holder[64];
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
			if (mounted(name, major, minor, how, sizeof(how)))
				return ps_fail(err, PS_EUNSAFE, "%s is in use: %s", node, how);
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
