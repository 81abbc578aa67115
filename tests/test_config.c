/* test_config.c — unit tests for the INI configuration: defaults, every key, errors that
 * name file, line and key. */
#include "config.h"
#include "tap.h"

static int load(struct ps_config *cfg, const char *text, struct ps_err *err)
{
	int rc = ps_config_load_string(cfg, text, "station.conf", err);

	if (rc == 0)
		ps_config_free(cfg);
	return rc;
}

int main(void)
{
	struct ps_config cfg;
	struct ps_err err = {""};
	char long_token[2048];

	ok(ps_config_load_string(&cfg, "", "empty", &err) == 0, "empty file gives defaults");
	is_int(cfg.key_type, PS_KEY_P256, "default key type p256");
	is_int(cfg.days, 3650, "default validity 10 years");
	is_str(cfg.common_name, "{serial}", "default commonName template");
	is_int(cfg.conf_target, PS_CONF_TARGET_DATA, "default conf_target data");
	ps_config_free(&cfg);

	memset(long_token, 'a', sizeof(long_token) - 1);
	long_token[sizeof(long_token) - 1] = '\0';
	{
		char text[4096];

		snprintf(
		    text, sizeof(text),
		    "# comment\n[station]\nid = line-3\noperator = alice\n"
		    "database = /tmp/x.db\nbatch = WO-17\n"
		    "[ca]\ndir = /ca\npassphrase_file = /ca/pass\n"
		    "[device]\nkey_type = ed25519\ncommon_name = {serial}.devices.example.com\n"
		    "subject = /O=My Organization/OU=My Unit/C=NO/L=Oslo\ndays = 365\n"
		    "[mender]\nserver_url = https://mender.example.com\n"
		    "tenant_token = %s\nserver_certificate = /ca/server-ca.pem\n"
		    "conf_target = rootfs\ndata_partition = 4\nrootfs_partitions = 2, 3\n"
		    "[audit]\nrevoke_superseded = yes\n",
		    long_token);
		ok(ps_config_load_string(&cfg, text, "station.conf", &err) == 0,
		   "full configuration loads: %s", err.msg);
	}
	is_str(cfg.station_id, "line-3", "station id");
	is_str(cfg.operator_name, "alice", "operator");
	is_str(cfg.batch, "WO-17", "batch");
	is_int(cfg.key_type, PS_KEY_ED25519, "key type");
	is_int(cfg.days, 365, "days");
	is_int(strlen(cfg.tenant_token), sizeof(long_token) - 1, "a 2 KiB tenant token survives");
	is_int(cfg.conf_target, PS_CONF_TARGET_ROOTFS, "conf_target rootfs");
	is_int(cfg.data_partition, 4, "data partition");
	is_int(cfg.n_rootfs_partitions, 2, "two rootfs partitions");
	is_int(cfg.rootfs_partitions[1], 3, "second rootfs partition");
	ok(cfg.revoke_superseded, "revoke_superseded");
	ps_config_free(&cfg);

	ok(load(&cfg, "[station]\nid = a\ncolour = red\n", &err) == PS_EINVAL, "unknown key");
	is_str(err.msg, "station.conf:3: unknown key 'colour' in [station]",
	       "error names file, line and key");
	ok(load(&cfg, "[stations]\n", &err) == PS_EINVAL, "unknown section");
	contains(err.msg, "station.conf:1: unknown section [stations]", "names the section");
	ok(load(&cfg, "[device]\nkey_type = dsa\n", &err) == PS_EINVAL, "bad key type");
	contains(err.msg, "station.conf:2: [device] key_type: unknown key type 'dsa'",
		 "names line and key");
	ok(load(&cfg, "[device]\ndays = -4\n", &err) == PS_EINVAL, "negative days");
	contains(err.msg, ":2: [device] days", "names days");
	ok(load(&cfg, "[device]\ncommon_name = {serial}-{mac}\n", &err) == PS_EINVAL,
	   "bad template");
	contains(err.msg, "common_name", "names common_name");
	ok(load(&cfg, "[device]\nsubject = O=no slash\n", &err) == PS_EINVAL, "bad subject");
	contains(err.msg, "[device] subject", "names subject");
	ok(load(&cfg, "[device]\nsubject = /XX=1\n", &err) == PS_EINVAL, "unknown subject field");
	ok(load(&cfg, "[device]\nsubject = /CN=foo\n", &err) == PS_EINVAL, "CN in subject");
	ok(load(&cfg, "[mender]\nconf_target = boot\n", &err) == PS_EINVAL, "bad conf_target");
	ok(load(&cfg, "[mender]\nrootfs_partitions = 2,x\n", &err) == PS_EINVAL, "bad list");
	ok(load(&cfg, "[audit]\nrevoke_superseded = maybe\n", &err) == PS_EINVAL, "bad bool");
	ok(load(&cfg, "id = 3\n", &err) == PS_EINVAL, "key outside a section");
	ok(load(&cfg, "[station]\njust words\n", &err) == PS_EINVAL, "line without =");
	contains(err.msg, "station.conf:2:", "names the line");
	ok(ps_config_load_string(
	       &cfg,
	       "[station]\nslots_dir = /srv/slots\nserial_pattern = ^SN-[0-9]{4}$\n"
	       "confirm = yes\nhotplug = no\nslots_flash = /srv/g.img.xz\nslots_bmap = "
	       "/srv/g.bmap\n"
	       "[slot A]\nports = pci-*-usb-0:1:1.0-*, pci-*-usb-0:2:1.0-*\n"
	       "serial_source = usb\n"
	       "[slot B]\nserial_source = sequence\nserial_prefix = SN-\nallow_fixed = yes\n"
	       "flash = /srv/golden.img.zst\nbmap = /srv/golden.bmap\n"
	       "[board rpi4]\nusb_id = 0a5c:2711, 0a5c:2712\nhelper = rpiboot\ntimeout = 30\n",
	       "station.conf", &err) == 0,
	   "slots and boards load: %s", err.msg);
	is_int(cfg.n_slots, 2, "two slots");
	is_str(cfg.slots[0].name, "A", "slot name");
	is_int(cfg.slots[0].n_ports, 2, "two port patterns");
	is_str(cfg.slots[0].ports[1], "pci-*-usb-0:2:1.0-*", "second port pattern");
	is_int(cfg.slots[0].serial_source, PS_SERIAL_USB, "usb serial source");
	is_int(cfg.slots[1].serial_source, PS_SERIAL_SEQUENCE, "sequence serial source");
	is_str(cfg.slots[1].serial_prefix, "SN-", "sequence prefix");
	ok(cfg.slots[1].allow_fixed && !cfg.slots[0].allow_fixed, "allow_fixed per slot");
	is_str(cfg.slots[1].flash, "/srv/golden.img.zst", "flash image per slot");
	is_str(cfg.slots[1].bmap, "/srv/golden.bmap", "and its bmap");
	ok(cfg.slots[0].flash[0] == '\0' && cfg.slots[0].bmap[0] == '\0', "no flash by default");
	is_str(cfg.slots_flash, "/srv/g.img.xz", "flash image for image-file slots");
	is_str(cfg.slots_bmap, "/srv/g.bmap", "and its bmap");
	is_int(cfg.n_boards, 1, "one board");
	is_int(cfg.boards[0].n_usb_ids, 2, "two USB ids");
	is_int(cfg.boards[0].usb_ids[1][1], 0x2712, "second PID");
	is_int(cfg.boards[0].timeout, 30, "board timeout");
	ok(cfg.confirm && !cfg.hotplug, "confirm and hotplug switches");
	is_str(cfg.serial_pattern, "^SN-[0-9]{4}$", "serial pattern");
	ps_config_free(&cfg);
	ok(load(&cfg, "[slot A]\n[slot A]\n", &err) == PS_EINVAL, "duplicate slot");
	contains(err.msg, "station.conf:2: slot 'A' is defined twice", "names the slot and line");
	ok(load(&cfg, "[slot A]\nserial_source = barcode\n", &err) == PS_EINVAL,
	   "unknown serial source");
	ok(load(&cfg, "[slot A]\nid = 3\n", &err) == PS_EINVAL, "station key in a slot");
	contains(err.msg, "unknown key 'id' in [slot]", "names the key");
	ok(load(&cfg, "[slot A]\nbmap = /srv/g.bmap\n", &err) == PS_EINVAL, "bmap without flash");
	contains(err.msg, "[slot A] bmap needs flash", "names the slot");
	ok(load(&cfg, "[station]\nslots_bmap = /srv/g.bmap\n", &err) == PS_EINVAL,
	   "slots_bmap without slots_flash");
	contains(err.msg, "[station] slots_bmap needs slots_flash", "says so");
	ok(load(&cfg,
		"[slot A]\nserial_source = sequence\nserial_prefix = "
		"PPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPP\n",
		&err) == PS_EINVAL,
	   "a sequence prefix too long for a serial");
	contains(err.msg, "[slot A] serial_prefix", "names the slot: %s", err.msg);
	ok(load(&cfg,
		"[slot A]\nserial_source = usb\nserial_prefix = "
		"PPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPPP\n",
		&err) == 0,
	   "the prefix only matters to a sequence");
	ok(load(&cfg, "[board b]\nusb_id = 0a5c\n", &err) == PS_EINVAL, "bad USB id");
	ok(load(&cfg, "[station]\nserial_pattern = ([\n", &err) == PS_EINVAL, "bad regex");
	ok(load(&cfg, "[gadget x]\n", &err) == PS_EINVAL, "unknown named section");
	ok(ps_config_load(&cfg, "/nonexistent/station.conf", &err) == PS_ENOENT,
	   "an explicit missing file is an error");
	contains(err.msg, "/nonexistent/station.conf", "names the file");
	return tap_done();
}
