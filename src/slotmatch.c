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

/* Whether the fnmatch(3) pattern (flags 0) matches some string that starts with prefix: the
 * pattern is matched against prefix until prefix ends, whatever is left of the pattern
 * could match the rest. */
static bool matches_extension(const char *p, const char *s)
{
	for (;;) {
		if (*s == '\0')
			return true;
		switch (*p) {
		case '\0':
			return false;
		case '*': /* it takes the rest of the prefix */
			return true;
		case '?':
			p++;
			s++;
			break;
		case '[': {
			const char *q = p + 1;
			bool negate = *q == '!' || *q == '^', in = false;

			if (negate)
				q++;
			do {
				if (q[0] != '\0' && q[1] == '-' && q[2] != ']' && q[2] != '\0') {
					in = in || ((unsigned char)*s >= (unsigned char)q[0] &&
						    (unsigned char)*s <= (unsigned char)q[2]);
					q += 3;
				} else if (*q != '\0') {
					in = in || *q == *s;
					q++;
				}
			} while (*q != '\0' && *q != ']');
			if (*q == '\0') { /* no closing bracket: a literal '[' */
				if (*s != '[')
					return false;
				p++;
				s++;
				break;
			}
			if (in == negate)
				return false;
			p = q + 1;
			s++;
			break;
		}
		default:
			if (*p == '\\' && p[1] != '\0')
				p++; /* an escaped character stands for itself */
			if (*p != *s)
				return false;
			p++;
			s++;
			break;
		}
	}
}

static const struct ps_slot_config *slot_for(const struct ps_config *cfg, const char *id_path,
					     const char *node, bool or_below)
{
	char below[300];
	int i, j;

	snprintf(below, sizeof(below), "%s:", id_path ? id_path : "");
	for (i = 0; cfg != NULL && i < cfg->n_slots; i++)
		for (j = 0; j < cfg->slots[i].n_ports; j++)
			if (ps_slot_port_matches(cfg->slots[i].ports[j], id_path, node) ||
			    (or_below && id_path != NULL && *id_path != '\0' &&
			     strncmp(cfg->slots[i].ports[j], "/dev/", 5) != 0 &&
			     matches_extension(cfg->slots[i].ports[j], below)))
				return &cfg->slots[i];
	return NULL;
}

const struct ps_slot_config *ps_slot_for_disk(const struct ps_config *cfg,
					      const struct ps_disk *disk)
{
	return disk != NULL ? slot_for(cfg, disk->id_path, disk->node, false) : NULL;
}

const struct ps_slot_config *ps_slot_for_board(const struct ps_config *cfg,
					       const struct ps_usb_board *board)
{
	return board != NULL ? slot_for(cfg, board->id_path, NULL, true) : NULL;
}

bool ps_disk_under_board(const struct ps_disk *disk, const struct ps_usb_board *board)
{
	size_t n;

	if (disk == NULL || board == NULL)
		return false;
	if (board->port[0] != '\0' && strcmp(disk->usb_port, board->port) == 0)
		return true;
	n = strlen(board->id_path);
	return n > 0 && strncmp(disk->id_path, board->id_path, n) == 0 && disk->id_path[n] == ':';
}

/* Append text to out (at *used of len), single-quoted for sh when quote. */
static bool append(char *out, size_t len, size_t *used, const char *text, bool quote)
{
	const char *p;

	if (quote) {
		if (*used + 1 >= len)
			return false;
		out[(*used)++] = '\'';
	}
	for (p = text; *p != '\0'; p++) {
		const char *piece = quote && *p == '\'' ? "'\\''" : NULL;
		size_t n = piece ? strlen(piece) : 1;

		if (*used + n >= len)
			return false;
		memcpy(out + *used, piece ? piece : p, n);
		*used += n;
	}
	if (quote) {
		if (*used + 1 >= len)
			return false;
		out[(*used)++] = '\'';
	}
	out[*used] = '\0';
	return true;
}

int ps_board_helper_command(const struct ps_board_config *bc, const struct ps_usb_board *board,
			    char *out, size_t len, struct ps_err *err)
{
	char vid[8], pid[8];
	const char *p;
	size_t used = 0;

	if (out == NULL || len == 0 || bc == NULL || board == NULL)
		return ps_fail(err, PS_EINVAL, "no board, helper or room for the command");
	out[0] = '\0';
	snprintf(vid, sizeof(vid), "%04x", board->vid);
	snprintf(pid, sizeof(pid), "%04x", board->pid);
	for (p = bc->helper ? bc->helper : ""; *p != '\0';) {
		static const char *const names[] = {"{port}", "{id_path}", "{serial}", "{vid}",
						    "{pid}"};
		const char *values[] = {board->port, board->id_path, board->serial, vid, pid};
		size_t i;
		char one[2] = {*p, '\0'};
		bool done = false;

		for (i = 0; !done && i < sizeof(names) / sizeof(names[0]); i++) {
			if (strncmp(p, names[i], strlen(names[i])) != 0)
				continue;
			if (!append(out, len, &used, values[i], true))
				goto too_long;
			p += strlen(names[i]);
			done = true;
		}
		if (done)
			continue;
		if (!append(out, len, &used, one, false))
			goto too_long;
		p++;
	}
	return 0;
too_long:
	out[0] = '\0';
	return ps_fail(err, PS_EINVAL, "board %s: the helper command is too long once expanded",
		       bc->name);
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
