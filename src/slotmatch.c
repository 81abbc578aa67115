/* slotmatch.c — slots, boards and serials for detected devices (see slotmatch.h). */
#include "slotmatch.h"

#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

bool ps_slot_port_matches(const char *pattern, const char *id_path, const char *node)
{
	if (pattern == NULL || *pattern == '\0')
		return false;
	if (strncmp(pattern, "/dev/", 5) == 0)
		return node != NULL && *node != '\0' && fnmatch(pattern, node, FNM_PATHNAME) == 0;
	return id_path != NULL && *id_path != '\0' && fnmatch(pattern, id_path, 0) == 0;
}

static const struct ps_slot_config *slot_for(const struct ps_config *cfg, const char *id_path,
					     const char *node)
{
	int i, j;

	for (i = 0; cfg != NULL && i < cfg->n_slots; i++)
		for (j = 0; j < cfg->slots[i].n_ports; j++)
			if (ps_slot_port_matches(cfg->slots[i].ports[j], id_path, node))
				return &cfg->slots[i];
	return NULL;
}

const struct ps_slot_config *ps_slot_for_disk(const struct ps_config *cfg,
					      const struct ps_disk *disk)
{
	return disk != NULL ? slot_for(cfg, disk->id_path, disk->node) : NULL;
}

const struct ps_slot_config *ps_slot_for_board(const struct ps_config *cfg,
					       const struct ps_usb_board *board)
{
	return board != NULL ? slot_for(cfg, board->id_path, NULL) : NULL;
}

const struct ps_board_config *ps_board_for_usb_id(const struct ps_config *cfg, uint16_t vid,
						  uint16_t pid)
{
	int i, j;

	for (i = 0; cfg != NULL && i < cfg->n_boards; i++)
		for (j = 0; j < cfg->boards[i].n_usb_ids; j++)
			if (cfg->boards[i].usb_ids[j][0] == vid &&
			    cfg->boards[i].usb_ids[j][1] == pid)
				return &cfg->boards[i];
	return NULL;
}

size_t ps_board_ids(const struct ps_config *cfg, struct ps_board_id *out, size_t max)
{
	size_t n = 0;
	int i, j;

	for (i = 0; cfg != NULL && i < cfg->n_boards; i++) {
		for (j = 0; j < cfg->boards[i].n_usb_ids && n < max; j++) {
			out[n].vid = cfg->boards[i].usb_ids[j][0];
			out[n].pid = cfg->boards[i].usb_ids[j][1];
			n++;
		}
	}
	return n;
}

const char *ps_serial_source_name(enum ps_serial_source source)
{
	switch (source) {
	case PS_SERIAL_OPERATOR:
		return "operator";
	case PS_SERIAL_USB:
		return "usb";
	case PS_SERIAL_CID:
		return "cid";
	case PS_SERIAL_SEQUENCE:
		return "sequence";
	}
	return "unknown";
}

int ps_slot_serial(const struct ps_slot_config *slot, const struct ps_disk *disk, char *out,
		   size_t len, struct ps_err *err)
{
	const char *serial = NULL;
	int rc;

	if (out == NULL || len == 0 || slot == NULL || disk == NULL)
		return ps_fail(err, PS_EINVAL, "no slot, disk or room for the serial");
	out[0] = '\0';
	switch (slot->serial_source) {
	case PS_SERIAL_OPERATOR:
	case PS_SERIAL_SEQUENCE:
		return 0;
	case PS_SERIAL_USB:
		serial = disk->usb_serial;
		if (*serial == '\0')
			return ps_fail(err, PS_ENOENT,
				       "slot %s takes the USB serial number, and %s has none%s",
				       slot->name, disk->node,
				       disk->usb_vid == 0 && disk->usb_pid == 0 ? " (not on USB)"
										: "");
		break;
	case PS_SERIAL_CID:
		serial = disk->cid_serial;
		if (*serial == '\0')
			return ps_fail(err, PS_ENOENT,
				       "slot %s takes the SD card's CID serial, and %s has none%s",
				       slot->name, disk->node,
				       strcmp(disk->bus, "usb") == 0
					   ? " (a USB card reader does not pass the CID on)"
					   : "");
		break;
	}
	if (serial == NULL)
		return ps_fail(err, PS_EINVAL, "slot %s: unknown serial source", slot->name);
	rc = ps_check_serial(serial, err);
	if (rc < 0)
		return ps_prefix(err, rc, "%s", disk->node);
	if (strlen(serial) >= len)
		return ps_fail(err, PS_EINVAL, "%s: serial '%s' does not fit", disk->node, serial);
	memcpy(out, serial, strlen(serial) + 1);
	return 0;
}

void ps_slot_serial_text(const struct ps_slot_config *slot, const struct ps_disk *disk, char *out,
			 size_t len)
{
	struct ps_err err = {""};
	char serial[PS_SERIAL_MAX + 1];

	if (len == 0)
		return;
	if (slot == NULL) {
		snprintf(out, len, "(none: not a station slot)");
		return;
	}
	if (ps_slot_serial(slot, disk, serial, sizeof(serial), &err) < 0)
		snprintf(out, len, "(none: %s)", err.msg);
	else if (slot->serial_source == PS_SERIAL_OPERATOR)
		snprintf(out, len, "(scanned by the operator)");
	else if (slot->serial_source == PS_SERIAL_SEQUENCE)
		snprintf(out, len, "(next in sequence, prefix '%s')",
			 slot->serial_prefix ? slot->serial_prefix : "");
	else
		snprintf(out, len, "%s", serial);
}
