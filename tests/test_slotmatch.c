/* test_slotmatch.c — unit tests for slot matching (ID_PATH patterns, /dev/ patterns), board
 * lookup by USB id, boards mapped to the slot of the disk they become and that disk found by
 * its port, the helper command quoted for sh, and the serial each source gives, on a parsed
 * configuration. */
#include "config.h"
#include "slotmatch.h"
#include "tap.h"

#include <stdlib.h>

static const char conf[] =
    "[slot front-left]\n"
    "ports = pci-0000:00:14.0-usb-0:2:1.0-*\n"
    "serial_source = usb\n"
    "[slot front-right]\n"
    "ports = pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0, platform-fe320000.mmc\n"
    "serial_source = cid\n"
    "[slot rig]\n"
    "ports = /dev/loop*\n"
    "serial_source = sequence\n"
    "serial_prefix = SN-\n"
    "allow_fixed = true\n"
    "[slot board]\n"
    "ports = pci-0000:00:14.0-usb-0:4, pci-0000:00:14.0-usb-0:4:1.0-*\n"
    "[board cm4]\n"
    "usb_id = 0a5c:2711, 0a5c:2764\n"
    "helper = rpiboot -p {port}\n"
    "[board imx]\n"
    "usb_id = 1fc9:012b\n";

static struct ps_disk disk(const char *node, const char *id_path)
{
	struct ps_disk d;

	memset(&d, 0, sizeof(d));
	snprintf(d.node, sizeof(d.node), "%s", node);
	snprintf(d.id_path, sizeof(d.id_path), "%s", id_path);
	return d;
}

int main(void)
{
	struct ps_config cfg;
	struct ps_err err = {""};
	struct ps_disk d;
	struct ps_usb_board b;
	struct ps_board_id ids[8];
	const struct ps_slot_config *slot;
	char serial[PS_SERIAL_MAX + 1], text[256], tiny[4];

	ok(ps_config_load_string(&cfg, conf, "station.conf", &err) == 0, "configuration loads: %s",
	   err.msg);

	ok(ps_slot_port_matches("pci-*-usb-0:2:1.0-*", "pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0",
				"/dev/sdb"),
	   "an fnmatch pattern matches the ID_PATH");
	ok(!ps_slot_port_matches("pci-*-usb-0:2:1.0-*", "", "/dev/sdb"),
	   "an empty ID_PATH matches no ID_PATH pattern");
	ok(!ps_slot_port_matches("*", "", "/dev/loop3"), "not even '*'");
	ok(ps_slot_port_matches("/dev/loop*", "", "/dev/loop3"),
	   "a /dev/ pattern matches the node");
	ok(!ps_slot_port_matches("/dev/loop*", "loop", "/dev/sdb"), "and only the node");
	ok(!ps_slot_port_matches("", "x", "/dev/x"), "an empty pattern matches nothing");

	d = disk("/dev/sdb", "pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0");
	slot = ps_slot_for_disk(&cfg, &d);
	ok(slot != NULL && strcmp(slot->name, "front-left") == 0,
	   "a reader on port 2 is front-left");
	d = disk("/dev/sdc", "pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0");
	slot = ps_slot_for_disk(&cfg, &d);
	ok(slot != NULL && strcmp(slot->name, "front-right") == 0, "port 3 is front-right");
	d = disk("/dev/mmcblk0", "platform-fe320000.mmc");
	slot = ps_slot_for_disk(&cfg, &d);
	ok(slot != NULL && strcmp(slot->name, "front-right") == 0,
	   "the second pattern of a slot counts too");
	d = disk("/dev/sdd", "pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:1");
	ok(ps_slot_for_disk(&cfg, &d) == NULL, "another LUN on port 3 is not a slot");
	d = disk("/dev/loop7", "");
	slot = ps_slot_for_disk(&cfg, &d);
	ok(slot != NULL && strcmp(slot->name, "rig") == 0, "a loop device maps by node");
	d = disk("/dev/sda", "pci-0000:00:17.0-ata-1");
	ok(ps_slot_for_disk(&cfg, &d) == NULL, "the SATA disk is not a slot");
	ok(ps_slot_for_disk(NULL, &d) == NULL, "no configuration, no slot");

	memset(&b, 0, sizeof(b));
	snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:4");
	slot = ps_slot_for_board(&cfg, &b);
	ok(slot != NULL && strcmp(slot->name, "board") == 0, "a board maps by its ID_PATH");
	ok(ps_board_for_usb_id(&cfg, 0x0a5c, 0x2764) == &cfg.boards[0], "second id of cm4");
	ok(ps_board_for_usb_id(&cfg, 0x1fc9, 0x012b) == &cfg.boards[1], "imx");
	ok(ps_board_for_usb_id(&cfg, 0x0bda, 0x0129) == NULL, "a card reader is no board");
	is_int(ps_board_ids(&cfg, ids, 8), 3, "three board ids in the table");
	ok(ids[1].vid == 0x0a5c && ids[1].pid == 0x2764 && ids[2].vid == 0x1fc9, "in order");
	is_int(ps_board_ids(&cfg, ids, 2), 2, "the table is bounded");

	/* A board maps to the slot its disk will be in: a pattern for the disks under it. */
	snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:2");
	slot = ps_slot_for_board(&cfg, &b);
	ok(slot != NULL && strcmp(slot->name, "front-left") == 0,
	   "a board on port 2 maps to front-left (pattern ...usb-0:2:1.0-*)");
	snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:3");
	slot = ps_slot_for_board(&cfg, &b);
	ok(slot != NULL && strcmp(slot->name, "front-right") == 0,
	   "on port 3 to front-right (a pattern without wildcards)");
	snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:21");
	ok(ps_slot_for_board(&cfg, &b) == NULL, "port 21 is not port 2");
	snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:2.1");
	ok(ps_slot_for_board(&cfg, &b) == NULL, "nor is port 2.1 (behind a hub)");
	snprintf(b.id_path, sizeof(b.id_path), "%s", "");
	ok(ps_slot_for_board(&cfg, &b) == NULL, "a board without ID_PATH is in no slot");
	{
		static const char extra[] = "[slot hub]\n"
					    "ports = pci-0000:00:1?.0-usb-0:[5-7]:1.0-scsi-*\n"
					    "[slot not]\n"
					    "ports = pci-0000:00:14.0-usb-0:[!5-7]:9.9\n";
		struct ps_config c2;

		ok(ps_config_load_string(&c2, extra, "station.conf", &err) == 0, "classes: %s",
		   err.msg);
		snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:6");
		slot = ps_slot_for_board(&c2, &b);
		ok(slot != NULL && strcmp(slot->name, "hub") == 0, "'?' and [5-7] for a board");
		snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:8");
		slot = ps_slot_for_board(&c2, &b);
		ok(slot != NULL && strcmp(slot->name, "not") == 0, "[!5-7]");
		snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:1a.0-usb-0:7");
		slot = ps_slot_for_board(&c2, &b);
		ok(slot != NULL && strcmp(slot->name, "hub") == 0, "another controller, port 7");
		snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:5:2");
		ok(ps_slot_for_board(&c2, &b) == NULL, "a path past the pattern's literal text");
		ps_config_free(&c2);
	}

	/* Which disk is the board's: the same USB port. */
	memset(&b, 0, sizeof(b));
	snprintf(b.port, sizeof(b.port), "1-4");
	snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:4");
	d = disk("/dev/sde", "pci-0000:00:14.0-usb-0:4:1.0-scsi-0:0:0:0");
	ok(ps_disk_under_board(&d, &b), "a disk under the board's ID_PATH is its disk");
	d = disk("/dev/sde", "");
	snprintf(d.usb_port, sizeof(d.usb_port), "1-4");
	ok(ps_disk_under_board(&d, &b), "so is one on its USB port (no ID_PATH)");
	d = disk("/dev/sde", "pci-0000:00:14.0-usb-0:41:1.0-scsi-0:0:0:0");
	snprintf(d.usb_port, sizeof(d.usb_port), "1-41");
	ok(!ps_disk_under_board(&d, &b), "port 41 is another port");
	d = disk("/dev/sde", "pci-0000:00:14.0-usb-0:4.2:1.0-scsi-0:0:0:0");
	ok(!ps_disk_under_board(&d, &b), "and 4.2 (behind a hub on 4) too");
	memset(&b, 0, sizeof(b));
	d = disk("/dev/sde", "");
	ok(!ps_disk_under_board(&d, &b), "nothing known matches nothing");

	/* The helper command, its values quoted for sh. */
	memset(&b, 0, sizeof(b));
	b.vid = 0x0a5c;
	b.pid = 0x2711;
	snprintf(b.port, sizeof(b.port), "1-4.2");
	snprintf(b.id_path, sizeof(b.id_path), "pci-0000:00:14.0-usb-0:4.2");
	snprintf(b.serial, sizeof(b.serial), "it's $(reboot)");
	is_int(ps_board_helper_command(&cfg.boards[0], &b, text, sizeof(text), &err), 0,
	       "helper command");
	is_str(text, "rpiboot -p '1-4.2'", "{port} is the quoted bus-port path");
	free(cfg.boards[0].helper);
	cfg.boards[0].helper = strdup("h {id_path} {serial} {vid}:{pid} {unknown} {port");
	is_int(ps_board_helper_command(&cfg.boards[0], &b, text, sizeof(text), &err), 0,
	       "every placeholder");
	is_str(text,
	       "h 'pci-0000:00:14.0-usb-0:4.2' 'it'\\''s $(reboot)' '0a5c':'2711' {unknown} {port",
	       "quoted, a quote in a value closed and reopened; unknown ones left");
	is_int(ps_board_helper_command(&cfg.boards[0], &b, tiny, sizeof(tiny), &err), PS_EINVAL,
	       "a command that does not fit is refused");
	contains(err.msg, "board cm4", "naming the board: %s", err.msg);
	is_int(ps_board_helper_command(&cfg.boards[1], &b, text, sizeof(text), &err), 0,
	       "a board without helper");
	is_str(text, "", "has an empty command");

	/* Serials. */
	d = disk("/dev/sdb", "pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0");
	d.usb_vid = 0x0bda;
	d.usb_pid = 0x0129;
	snprintf(d.usb_serial, sizeof(d.usb_serial), "000000001234");
	snprintf(d.bus, sizeof(d.bus), "usb");
	is_int(ps_slot_serial(&cfg.slots[0], &d, serial, sizeof(serial), &err), 0, "usb serial");
	is_str(serial, "000000001234", "is the USB parent's serial number");
	ps_slot_serial_text(&cfg.slots[0], &d, text, sizeof(text));
	is_str(text, "000000001234", "and shown as such");
	is_int(ps_slot_serial(&cfg.slots[1], &d, serial, sizeof(serial), &err), PS_ENOENT,
	       "a card in a USB reader has no CID serial");
	contains(err.msg, "USB card reader", "the reason says why: %s", err.msg);
	ps_slot_serial_text(&cfg.slots[1], &d, text, sizeof(text));
	ok(strncmp(text, "(none: ", 7) == 0, "shown as none: %s", text);
	is_int(ps_slot_serial(&cfg.slots[0], &d, tiny, sizeof(tiny), &err), PS_EINVAL,
	       "a serial that does not fit is refused");

	d = disk("/dev/mmcblk0", "platform-fe320000.mmc");
	snprintf(d.cid_serial, sizeof(d.cid_serial), "0x1a2b3c4d");
	snprintf(d.bus, sizeof(d.bus), "mmc");
	is_int(ps_slot_serial(&cfg.slots[1], &d, serial, sizeof(serial), &err), 0, "cid serial");
	is_str(serial, "0x1a2b3c4d", "is the card's CID serial");
	is_int(ps_slot_serial(&cfg.slots[0], &d, serial, sizeof(serial), &err), PS_ENOENT,
	       "an MMC card has no USB serial");
	contains(err.msg, "not on USB", "the reason says why: %s", err.msg);

	is_int(ps_slot_serial(&cfg.slots[2], &d, serial, sizeof(serial), &err), 0, "sequence");
	is_str(serial, "", "gives no serial here: the audit database numbers it");
	ps_slot_serial_text(&cfg.slots[2], &d, text, sizeof(text));
	is_str(text, "(next in sequence, prefix 'SN-')", "shown as the next in sequence");
	is_int(ps_slot_serial(&cfg.slots[3], &d, serial, sizeof(serial), &err), 0, "operator");
	is_str(serial, "", "gives no serial: the operator scans it");
	ps_slot_serial_text(&cfg.slots[3], &d, text, sizeof(text));
	is_str(text, "(scanned by the operator)", "shown as the operator's");
	ps_slot_serial_text(NULL, &d, text, sizeof(text));
	is_str(text, "(none: not a station slot)", "no slot, no serial");

	snprintf(d.usb_serial, sizeof(d.usb_serial), "bad\tserial");
	is_int(ps_slot_serial(&cfg.slots[0], &d, serial, sizeof(serial), &err), PS_EINVAL,
	       "a serial with a control character is refused");
	contains(err.msg, "/dev/mmcblk0", "naming the disk: %s", err.msg);

	is_str(ps_serial_source_name(PS_SERIAL_CID), "cid", "source names");
	ok(cfg.slots[2].allow_fixed && !cfg.slots[0].allow_fixed, "allow_fixed per slot");
	ps_config_free(&cfg);
	return tap_done();
}
