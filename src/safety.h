/* safety.h — the safety gate in front of every write to a block device: refuses a disk that
 * is mounted, holds the running system or swap, is held by LVM/md/dm, is write-protected, is
 * a fixed disk not on USB or MMC (unless allowed), or is smaller than what goes onto it.
 * Regular files (image files, virtual slots) pass. Reads sysfs and /proc only. */
#ifndef PS_SAFETY_H
#define PS_SAFETY_H

#include "err.h"

#include <stdbool.h>
#include <stdint.h>

struct ps_safety_policy {
	bool allow_fixed;  /* a non-removable disk not on USB or MMC is acceptable */
	uint64_t min_size; /* bytes the disk must hold (0: no requirement) */
};

/* What the gate learned about a block device, for messages and `provstation devices`. */
struct ps_disk_facts {
	char name[64]; /* kernel name, "sdb" */
	unsigned major, minor;
	bool removable;
	bool read_only;
	char bus[16]; /* "usb", "mmc", "" */
	uint64_t size;
};

/* 0 when path may be written; PS_EUNSAFE with the reason otherwise. A regular file passes.
 * facts (optional) is filled for block devices. */
int ps_safety_check(const char *path, const struct ps_safety_policy *policy,
		    struct ps_disk_facts *facts, struct ps_err *err);

/* Root directory of sysfs and procfs, for tests with a fake tree ("/" normally). */
extern const char *ps_safety_root;

#endif
