/* test_slotmatch.c — unit tests for slot matching (ID_PATH patterns, /dev/ patterns), board
 * lookup by USB id and the serial each source gives, on a parsed configuration. */
#include "config.h"
#include "slotmatch.h"
#include "tap.h"

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
