/* slotmatch.h — which station slot a detected disk or board belongs to, which [board NAME] a
 * USB device is, and which device serial a disk would be provisioned with: pure functions of
 * the configuration and what hotplug saw (no I/O), for the station and `provstation devices`. */
#ifndef PS_SLOTMATCH_H
#define PS_SLOTMATCH_H

#include "config.h"
#include "err.h"
#include "hotplug.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One [slot NAME] ports pattern against a device: fnmatch(3) on its ID_PATH; a pattern that
 * starts with "/dev/" matches the device node instead (loop devices and other disks udev
 * gives no ID_PATH, for test rigs). An empty id_path never matches an ID_PATH pattern. */
bool ps_slot_port_matches(const char *pattern, const char *id_path, const char *node);

/* The first configured slot one of whose ports matches the disk, or NULL: not a station
 * slot, never to be written. */
const struct ps_slot_config *ps_slot_for_disk(const struct ps_config *cfg,
					      const struct ps_disk *disk);

/* The same for a USB board: a ports pattern that matches its ID_PATH
 * ("pci-0000:00:14.0-usb-0:2"), or could match the ID_PATH of a disk under it (one that
 * starts with "pci-0000:00:14.0-usb-0:2:", as "pci-0000:00:14.0-usb-0:2:1.0-*" does): the
 * slot that the disk the board becomes will be in. */
const struct ps_slot_config *ps_slot_for_board(const struct ps_config *cfg,
					       const struct ps_usb_board *board);

/* Whether a disk hangs on the same physical USB port as a board: the same bus-port path
 * ("1-2.3"), or an ID_PATH under the board's ("pci-...-usb-0:2.3:1.0-scsi-0:0:0:0" under
 * "pci-...-usb-0:2.3"). The board re-enumerates as another USB device once its helper ran,
 * on the same port. */
bool ps_disk_under_board(const struct ps_disk *disk, const struct ps_usb_board *board);

/* The helper command of a [board NAME] for one board, into out: the configured helper with
 * {port} (bus-port path, "1-2.3"), {id_path}, {serial}, {vid} and {pid} (4 hex digits)
 * replaced by the board's values, each single-quoted for sh (so do not quote them in the
 * configuration). "" when the board has no helper. PS_EINVAL when it does not fit. */
int ps_board_helper_command(const struct ps_board_config *bc, const struct ps_usb_board *board,
			    char *out, size_t len, struct ps_err *err);

/* The [board NAME] whose usb_id lists vid:pid, or NULL. */
const struct ps_board_config *ps_board_for_usb_id(const struct ps_config *cfg, uint16_t vid,
						  uint16_t pid);

/* Every configured board USB id, for ps_hotplug_open; returns how many (at most max). */
size_t ps_board_ids(const struct ps_config *cfg, struct ps_board_id *out, size_t max);

/* The serial the slot's disk would be provisioned with, into out:
 *   usb       the USB parent's serial number (disk->usb_serial);
 *   cid       the SD/MMC card's CID serial (disk->cid_serial);
 *   operator  "" and 0: the operator scans or types it;
 *   sequence  "" and 0: the station takes the next number from the audit database.
 * PS_ENOENT when the source is usb or cid and the disk has none (not on USB; a card in a USB
 * reader, whose CID the reader hides); PS_EINVAL when it is no usable serial (ps_check_serial)
 * or does not fit in len. */
int ps_slot_serial(const struct ps_slot_config *slot, const struct ps_disk *disk, char *out,
		   size_t len, struct ps_err *err);

/* The name of a serial source as configured ("operator", "usb", "cid", "sequence"). */
const char *ps_serial_source_name(enum ps_serial_source source);

/* For display: the serial, "(scanned by the operator)", "(next in sequence, prefix P)", or
 * "(none: <why>)". Never fails; truncates to len. */
void ps_slot_serial_text(const struct ps_slot_config *slot, const struct ps_disk *disk, char *out,
			 size_t len);

#endif
