/* hotplug.h — what the station sees arrive and leave: block disks (libudev monitor, enabled
 * before the existing devices are enumerated so nothing is missed) with their physical port
 * (ID_PATH) and attributes, and USB boards in a boot or recovery mode (a VID:PID table). */
#ifndef PS_HOTPLUG_H
#define PS_HOTPLUG_H

#include "err.h"

#include <stdbool.h>
#include <stdint.h>

struct ps_disk {
	char node[64]; /* /dev/sdb */
	char syspath[256];
	char id_path[256]; /* the physical port, udev's ID_PATH */
	char vendor[64];
	char model[64];
	uint64_t size; /* bytes */
	bool removable;
	bool read_only;
	char bus[16];		   /* "usb", "mmc", "ata", ... */
	char cid_serial[64];	   /* SD/MMC card serial from the CID (sysfs "serial"), or "" */
	uint16_t usb_vid, usb_pid; /* USB parent, 0 when not on USB */
	char usb_serial[128];	   /* USB parent's serial number (read with libusb), or "" */
	char usb_port[64];	   /* USB parent's bus-port path, "1-2.3", or "" */
};

struct ps_usb_board {
	uint16_t vid, pid;
	char serial[128];
	char port[64];	   /* bus-port path, "1-2.3" */
	char id_path[256]; /* udev ID_PATH of the USB device */
	char syspath[256];
};

enum ps_hotplug_event {
	PS_HOTPLUG_DISK_ADDED,
	PS_HOTPLUG_DISK_CHANGED, /* media inserted or removed in a card reader, size changed */
	PS_HOTPLUG_DISK_REMOVED,
	PS_HOTPLUG_BOARD_ADDED,
	PS_HOTPLUG_BOARD_REMOVED,
};

/* Called for every event, existing devices first (as ADDED). disk is set for DISK_* events,
 * board for BOARD_* events. Duplicate or out-of-order events may reach it: the receiver
 * treats them as harmless (a REMOVED for an unknown node, an ADDED for a known one). */
typedef void (*ps_hotplug_fn)(enum ps_hotplug_event event, const struct ps_disk *disk,
			      const struct ps_usb_board *board, void *user);

/* A USB VID:PID to watch for (boards in boot/recovery mode). */
struct ps_board_id {
	uint16_t vid, pid;
};

struct ps_hotplug;

/* Start watching: the udev monitor is enabled first, then existing devices are enumerated
 * and reported. boards (n_boards entries) lists the USB IDs reported as boards. */
int ps_hotplug_open(ps_hotplug_fn fn, void *user, const struct ps_board_id *boards, size_t n_boards,
		    struct ps_hotplug **out, struct ps_err *err);
/* The fd to poll for readability; then call ps_hotplug_dispatch. */
int ps_hotplug_fd(struct ps_hotplug *hp);
/* Receive pending udev events and report them. */
int ps_hotplug_dispatch(struct ps_hotplug *hp, struct ps_err *err);
void ps_hotplug_close(struct ps_hotplug *hp);

/* What is reported: whole disks (no partitions, RAM or zram disks); a loop device while it
 * has a backing file (losetup attaching and detaching it reads as ADDED and REMOVED);
 * DISK_CHANGED only when what is shown of the disk differs from the last report (size,
 * removable, read-only, vendor, model, ID_PATH, CID serial, node) or the kernel flags a media
 * change, not for udev's change event after every write; a new disk on the node of a known one
 * whose removal was missed reports that one REMOVED first. Without udevd (containers) the
 * kernel's uevents are watched and disks have no ID_PATH. One thread owns a ps_hotplug. */

/* A short name for an event, for logs and `provstation devices --watch` ("disk-added"). */
const char *ps_hotplug_event_name(enum ps_hotplug_event event);

/* Describe one block device by its node (for the CLI and the safety gate's messages). */
int ps_hotplug_describe(const char *node, struct ps_disk *disk, struct ps_err *err);

#endif
