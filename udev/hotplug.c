/* hotplug.c — the udev monitor behind hotplug.h: block disks and USB boards as they arrive and
 * leave, a table of the devices already reported (so duplicate and out-of-order events are
 * harmless), and each disk's attributes from udev, sysfs and, for its USB parent, libusb. */
#include "hotplug.h"

#include <errno.h>
#include <libudev.h>
#include <libusb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A device already reported as ADDED, keyed by its sysfs path. */
struct known {
	char syspath[256];
	bool is_board;
	struct ps_disk disk;
	struct ps_usb_board board;
};

struct ps_hotplug {
	struct udev *udev;
	struct udev_monitor *monitor;
	libusb_context *usb; /* NULL when libusb cannot start: serials then come from sysfs */
	ps_hotplug_fn fn;
	void *user;
	struct ps_board_id *boards;
	size_t n_boards;
	struct known *known;
	size_t n_known, cap_known;
};

const char *ps_hotplug_event_name(enum ps_hotplug_event event)
{
	switch (event) {
	case PS_HOTPLUG_DISK_ADDED:
		return "disk-added";
	case PS_HOTPLUG_DISK_CHANGED:
		return "disk-changed";
	case PS_HOTPLUG_DISK_REMOVED:
		return "disk-removed";
	case PS_HOTPLUG_BOARD_ADDED:
		return "board-added";
	case PS_HOTPLUG_BOARD_REMOVED:
		return "board-removed";
	}
	return "unknown";
}

/* Copy an attribute into a fixed field: surrounding blanks trimmed (SCSI pads vendor and
 * model), anything but printable ASCII replaced by '?' (as libusb does with string
 * descriptors), truncated to fit. NULL gives "". */
static void copy_text(char *dst, size_t len, const char *src)
{
	size_t n = 0, end;

	dst[0] = '\0';
	if (src == NULL || len == 0)
		return;
	while (*src == ' ' || *src == '\t' || *src == '\n')
		src++;
	end = strlen(src);
	while (end > 0 && (src[end - 1] == ' ' || src[end - 1] == '\t' || src[end - 1] == '\n'))
		end--;
	for (; n < end && n + 1 < len; n++) {
		unsigned char c = (unsigned char)src[n];

		dst[n] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	dst[n] = '\0';
}

static bool is_empty(const char *s)
{
	return s == NULL || *s == '\0';
}

/* A hexadecimal sysfs attribute (idVendor, idProduct); 0 when absent or malformed. */
static uint16_t hex_attr(struct udev_device *dev, const char *name)
{
	const char *value = udev_device_get_sysattr_value(dev, name);
	char *end = NULL;
	unsigned long v;

	if (is_empty(value))
		return 0;
	v = strtoul(value, &end, 16);
	return end != value && v <= 0xffff ? (uint16_t)v : 0;
}

static bool attr_is_one(struct udev_device *dev, const char *name)
{
	const char *value = udev_device_get_sysattr_value(dev, name);

	return value != NULL && strtol(value, NULL, 10) == 1;
}

static bool has_prefix(const char *s, const char *prefix)
{
	return s != NULL && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Block devices hotplug never reports: RAM disks, compressed swap, partitions. */
static bool ignored_block(struct udev_device *dev)
{
	const char *name = udev_device_get_sysname(dev);
	const char *devtype = udev_device_get_devtype(dev);

	return devtype == NULL || strcmp(devtype, "disk") != 0 || has_prefix(name, "ram") ||
	       has_prefix(name, "zram");
}

/* A disk that exists but holds nothing a station could use: a loop device with no backing
 * file. Attaching one (losetup) makes it present, detaching it absent, as plugging a disk
 * in and out would; unattached loop devices are not listed. */
static bool absent_block(struct udev_device *dev)
{
	return has_prefix(udev_device_get_sysname(dev), "loop") &&
	       udev_device_get_sysattr_value(dev, "loop/backing_file") == NULL;
}

/* The USB parent's identity from libusb: the device on the same bus whose port numbers are
 * the udev device's devpath ("2.3" is ports 2, 3). vid and pid come from its device
 * descriptor. Reading its serial string needs libusb_open, that is write access to
 * /dev/bus/usb/BBB/DDD, which a station user outside the udev rules' group lacks (and which
 * a device busy resetting refuses); serial is left "" then, and the caller falls back to the
 * copy the kernel read at enumeration (sysfs "serial", udev's ID_SERIAL_SHORT). True when
 * the device was found. */
static bool usb_from_libusb(libusb_context *ctx, struct udev_device *usb, uint16_t *vid,
			    uint16_t *pid, char *serial, size_t serial_len)
{
	const char *busnum = udev_device_get_sysattr_value(usb, "busnum");
	const char *devpath = udev_device_get_sysattr_value(usb, "devpath");
	uint8_t want[8], have[8];
	libusb_device **list = NULL;
	ssize_t n_devs, i;
	int n_want = 0, bus;
	bool found = false;
	const char *p = devpath;
	char *end = NULL;

	serial[0] = '\0';
	if (ctx == NULL || is_empty(busnum) || is_empty(devpath))
		return false;
	bus = atoi(busnum);
	for (;;) {
		long port = strtol(p, &end, 10);

		if (end == p || port <= 0 || port > 255 || n_want == (int)sizeof(want))
			return false; /* a root hub ("0"), or not a devpath */
		want[n_want++] = (uint8_t)port;
		if (*end == '\0')
			break;
		if (*end != '.')
			return false;
		p = end + 1;
	}
	n_devs = libusb_get_device_list(ctx, &list);
	for (i = 0; i < n_devs && !found; i++) {
		struct libusb_device_descriptor desc;
		libusb_device_handle *handle = NULL;
		unsigned char text[256];
		int n_have;

		if (libusb_get_bus_number(list[i]) != bus)
			continue;
		n_have = libusb_get_port_numbers(list[i], have, sizeof(have));
		if (n_have != n_want || memcmp(have, want, (size_t)n_want) != 0)
			continue;
		if (libusb_get_device_descriptor(list[i], &desc) != 0)
			continue;
		found = true;
		*vid = desc.idVendor;
		*pid = desc.idProduct;
		if (desc.iSerialNumber == 0 || libusb_open(list[i], &handle) != 0)
			continue;
		if (libusb_get_string_descriptor_ascii(handle, desc.iSerialNumber, text,
						       sizeof(text)) > 0)
			copy_text(serial, serial_len, (const char *)text);
		libusb_close(handle);
	}
	if (n_devs >= 0)
		libusb_free_device_list(list, 1);
	return found;
}

/* vid, pid, serial and bus-port path ("1-2.3", the kernel's name) of a usb_device. */
static void usb_identity(libusb_context *ctx, struct udev_device *usb, uint16_t *vid, uint16_t *pid,
			 char *serial, size_t serial_len, char *port, size_t port_len)
{
	if (!usb_from_libusb(ctx, usb, vid, pid, serial, serial_len)) {
		*vid = hex_attr(usb, "idVendor");
		*pid = hex_attr(usb, "idProduct");
	}
	if (serial[0] == '\0')
		copy_text(serial, serial_len, udev_device_get_sysattr_value(usb, "serial"));
	if (serial[0] == '\0')
		copy_text(serial, serial_len,
			  udev_device_get_property_value(usb, "ID_SERIAL_SHORT"));
	copy_text(port, port_len, udev_device_get_sysname(usb));
}

/* Prepend "what-" to the path being built in buf (what has at most len bytes). */
static void path_prepend(char *buf, size_t len, const char *what)
{
	char tmp[256];

	snprintf(tmp, sizeof(tmp), "%s%s%s", what, buf[0] ? "-" : "", buf);
	snprintf(buf, len, "%s", tmp);
}

/* udev's ID_PATH of a USB device, or the same built the way udev's path_id builds it for
 * one ("pci-0000:00:14.0-usb-0:2.3") when udev has not (its rules set ID_PATH on disks,
 * not on every USB device, and without udevd there are no properties at all). */
static void usb_id_path(struct udev_device *usb, char *out, size_t len)
{
	struct udev_device *dev;
	const char *skip = NULL;

	copy_text(out, len, udev_device_get_property_value(usb, "ID_PATH"));
	if (out[0] != '\0')
		return;
	for (dev = usb; dev != NULL; dev = udev_device_get_parent(dev)) {
		const char *subsystem = udev_device_get_subsystem(dev);
		const char *name = udev_device_get_sysname(dev);
		const char *dash;
		char part[128];

		if (subsystem == NULL || name == NULL)
			continue;
		if (skip != NULL && strcmp(subsystem, skip) == 0)
			continue;
		skip = NULL;
		if (strcmp(subsystem, "usb") == 0 && (dash = strchr(name, '-')) != NULL) {
			snprintf(part, sizeof(part), "usb-0:%s", dash + 1);
			path_prepend(out, len, part);
			skip = "usb";
		} else if (strcmp(subsystem, "pci") == 0 || strcmp(subsystem, "platform") == 0) {
			snprintf(part, sizeof(part), "%s-%s", subsystem, name);
			path_prepend(out, len, part);
			skip = subsystem;
		}
	}
}

/* The bus a disk hangs on: udev's ID_BUS, else what its parents say ("mmc" for mmcblk). */
static void disk_bus(struct udev_device *dev, char *bus, size_t len)
{
	static const char *const buses[] = {"mmc", "usb", "nvme", "virtio"};
	size_t i;

	copy_text(bus, len, udev_device_get_property_value(dev, "ID_BUS"));
	if (bus[0] != '\0')
		return;
	for (i = 0; i < sizeof(buses) / sizeof(buses[0]); i++) {
		if (udev_device_get_parent_with_subsystem_devtype(dev, buses[i], NULL) != NULL) {
			copy_text(bus, len, buses[i]);
			return;
		}
	}
	if (udev_device_get_parent_with_subsystem_devtype(dev, "scsi", NULL) != NULL)
		copy_text(bus, len, strstr(udev_device_get_syspath(dev), "/ata") ? "ata" : "scsi");
}

/* Everything struct ps_disk holds, from one udev device (a disk). */
static void describe(struct udev_device *dev, libusb_context *ctx, struct ps_disk *disk)
{
	struct udev_device *scsi = udev_device_get_parent_with_subsystem_devtype(dev, "scsi", NULL);
	struct udev_device *mmc = udev_device_get_parent_with_subsystem_devtype(dev, "mmc", NULL);
	struct udev_device *usb =
	    udev_device_get_parent_with_subsystem_devtype(dev, "usb", "usb_device");
	const char *size = udev_device_get_sysattr_value(dev, "size");

	memset(disk, 0, sizeof(*disk));
	copy_text(disk->node, sizeof(disk->node), udev_device_get_devnode(dev));
	copy_text(disk->syspath, sizeof(disk->syspath), udev_device_get_syspath(dev));
	copy_text(disk->id_path, sizeof(disk->id_path),
		  udev_device_get_property_value(dev, "ID_PATH"));

	/* sysfs first: the same with and without udevd, and with real spaces, where udev's
	 * ID_VENDOR and ID_MODEL have underscores. */
	if (scsi != NULL) {
		copy_text(disk->vendor, sizeof(disk->vendor),
			  udev_device_get_sysattr_value(scsi, "vendor"));
		copy_text(disk->model, sizeof(disk->model),
			  udev_device_get_sysattr_value(scsi, "model"));
	} else if (mmc != NULL) {
		copy_text(disk->model, sizeof(disk->model),
			  udev_device_get_sysattr_value(mmc, "name"));
	} else {
		/* NVMe and others; virtio's "vendor" is a PCI id ("0x1af4"), not a name. */
		const char *vendor = udev_device_get_sysattr_value(dev, "device/vendor");

		if (!has_prefix(vendor, "0x"))
			copy_text(disk->vendor, sizeof(disk->vendor), vendor);
		copy_text(disk->model, sizeof(disk->model),
			  udev_device_get_sysattr_value(dev, "device/model"));
	}
	if (disk->vendor[0] == '\0')
		copy_text(disk->vendor, sizeof(disk->vendor),
			  udev_device_get_property_value(dev, "ID_VENDOR"));
	if (disk->model[0] == '\0')
		copy_text(disk->model, sizeof(disk->model),
			  udev_device_get_property_value(dev, "ID_MODEL"));

	disk->size = is_empty(size) ? 0 : strtoull(size, NULL, 10) * 512;
	disk->removable = attr_is_one(dev, "removable");
	disk->read_only = attr_is_one(dev, "ro");
	disk_bus(dev, disk->bus, sizeof(disk->bus));
	if (mmc != NULL)
		copy_text(disk->cid_serial, sizeof(disk->cid_serial),
			  udev_device_get_sysattr_value(mmc, "serial"));
	if (usb != NULL)
		usb_identity(ctx, usb, &disk->usb_vid, &disk->usb_pid, disk->usb_serial,
			     sizeof(disk->usb_serial), disk->usb_port, sizeof(disk->usb_port));
}

/* libusb for reading USB descriptors, or NULL (no usbfs, e.g. in a container). */
static libusb_context *usb_open(void)
{
	libusb_context *ctx = NULL;

	if (libusb_init(&ctx) != 0)
		return NULL;
	/* Library code never prints; libusb would log failed opens to stderr. */
	libusb_set_option(ctx, LIBUSB_OPTION_LOG_LEVEL, LIBUSB_LOG_LEVEL_NONE);
	return ctx;
}

static struct known *find_known(struct ps_hotplug *hp, const char *syspath)
{
	size_t i;

	for (i = 0; i < hp->n_known; i++)
		if (strcmp(hp->known[i].syspath, syspath) == 0)
			return &hp->known[i];
	return NULL;
}

/* A known disk under another sysfs path with the same node: its removal was missed. */
static struct known *find_known_node(struct ps_hotplug *hp, const char *node, const char *syspath)
{
	size_t i;

	for (i = 0; i < hp->n_known && node[0] != '\0'; i++)
		if (!hp->known[i].is_board && strcmp(hp->known[i].disk.node, node) == 0 &&
		    strcmp(hp->known[i].syspath, syspath) != 0)
			return &hp->known[i];
	return NULL;
}

static struct known *add_known(struct ps_hotplug *hp, const char *syspath)
{
	struct known *k;

	if (hp->n_known == hp->cap_known) {
		size_t cap = hp->cap_known ? hp->cap_known * 2 : 16;
		struct known *grown = realloc(hp->known, cap * sizeof(*grown));

		if (grown == NULL)
			return NULL;
		hp->known = grown;
		hp->cap_known = cap;
	}
	k = &hp->known[hp->n_known++];
	memset(k, 0, sizeof(*k));
	snprintf(k->syspath, sizeof(k->syspath), "%s", syspath);
	return k;
}

/* Report a known device as removed and forget it. */
static void report_removed(struct ps_hotplug *hp, struct known *k)
{
	struct known gone = *k;

	*k = hp->known[--hp->n_known];
	if (gone.is_board)
		hp->fn(PS_HOTPLUG_BOARD_REMOVED, NULL, &gone.board, hp->user);
	else
		hp->fn(PS_HOTPLUG_DISK_REMOVED, &gone.disk, NULL, hp->user);
}

/* What makes a known disk CHANGED: the medium or what the station would show of it. */
static bool disk_differs(const struct ps_disk *a, const struct ps_disk *b)
{
	return a->size != b->size || a->read_only != b->read_only || a->removable != b->removable ||
	       strcmp(a->cid_serial, b->cid_serial) != 0 || strcmp(a->vendor, b->vendor) != 0 ||
	       strcmp(a->model, b->model) != 0 || strcmp(a->id_path, b->id_path) != 0 ||
	       strcmp(a->node, b->node) != 0;
}

/* A disk event (or a disk found by the enumeration, as "add"). */
static int handle_disk(struct ps_hotplug *hp, struct udev_device *event, const char *action,
		       struct ps_err *err)
{
	const char *syspath = udev_device_get_syspath(event);
	struct known *k = find_known(hp, syspath), *stale;
	struct udev_device *dev = NULL;
	struct ps_disk disk;
	const char *media_change = udev_device_get_property_value(event, "DISK_MEDIA_CHANGE");
	int rc = 0;

	if (strcmp(action, "remove") == 0) {
		if (k != NULL)
			report_removed(hp, k);
		goto out;
	}
	/* Read the device afresh: the event may be late, and sysfs is the truth now. */
	dev = udev_device_new_from_syspath(hp->udev, syspath);
	if (dev == NULL || absent_block(dev)) {
		if (k != NULL)
			report_removed(hp, k);
		goto out;
	}
	describe(dev, hp->usb, &disk);
	if (k != NULL) {
		if (disk_differs(&k->disk, &disk) ||
		    (strcmp(action, "change") == 0 && media_change != NULL &&
		     strcmp(media_change, "1") == 0)) {
			k->disk = disk;
			hp->fn(PS_HOTPLUG_DISK_CHANGED, &k->disk, NULL, hp->user);
		}
		goto out;
	}
	stale = find_known_node(hp, disk.node, syspath);
	if (stale != NULL)
		report_removed(hp, stale);
	k = add_known(hp, syspath);
	if (k == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory tracking %s", disk.node);
		goto out;
	}
	k->disk = disk;
	hp->fn(PS_HOTPLUG_DISK_ADDED, &k->disk, NULL, hp->user);
out:
	if (dev != NULL)
		udev_device_unref(dev);
	return rc;
}

static bool is_board_id(const struct ps_hotplug *hp, uint16_t vid, uint16_t pid)
{
	size_t i;

	for (i = 0; i < hp->n_boards; i++)
		if (hp->boards[i].vid == vid && hp->boards[i].pid == pid)
			return true;
	return false;
}

/* A USB device event: boards in the table are reported, everything else ignored. */
static int handle_usb(struct ps_hotplug *hp, struct udev_device *event, const char *action,
		      struct ps_err *err)
{
	const char *syspath = udev_device_get_syspath(event);
	const char *devtype = udev_device_get_devtype(event);
	struct known *k = find_known(hp, syspath);
	struct udev_device *dev = NULL;
	struct ps_usb_board board;
	int rc = 0;

	if (devtype == NULL || strcmp(devtype, "usb_device") != 0 || strcmp(action, "unbind") == 0)
		goto out;
	if (strcmp(action, "remove") == 0) {
		if (k != NULL)
			report_removed(hp, k);
		goto out;
	}
	if (k != NULL || hp->n_boards == 0)
		goto out;
	dev = udev_device_new_from_syspath(hp->udev, syspath);
	if (dev == NULL || !is_board_id(hp, hex_attr(dev, "idVendor"), hex_attr(dev, "idProduct")))
		goto out;
	memset(&board, 0, sizeof(board));
	usb_identity(hp->usb, dev, &board.vid, &board.pid, board.serial, sizeof(board.serial),
		     board.port, sizeof(board.port));
	usb_id_path(dev, board.id_path, sizeof(board.id_path));
	copy_text(board.syspath, sizeof(board.syspath), syspath);
	k = add_known(hp, syspath);
	if (k == NULL) {
		rc = ps_fail(err, PS_ENOMEM, "out of memory tracking USB device %s", board.port);
		goto out;
	}
	k->is_board = true;
	k->board = board;
	hp->fn(PS_HOTPLUG_BOARD_ADDED, NULL, &k->board, hp->user);
out:
	if (dev != NULL)
		udev_device_unref(dev);
	return rc;
}

static int handle(struct ps_hotplug *hp, struct udev_device *dev, const char *action,
		  struct ps_err *err)
{
	const char *subsystem = udev_device_get_subsystem(dev);

	if (action == NULL || subsystem == NULL)
		return 0;
	if (strcmp(subsystem, "block") == 0)
		return ignored_block(dev) ? 0 : handle_disk(hp, dev, action, err);
	if (strcmp(subsystem, "usb") == 0)
		return handle_usb(hp, dev, action, err);
	return 0;
}

/* Report every existing device of a subsystem (and devtype) as added. */
static int enumerate(struct ps_hotplug *hp, const char *subsystem, const char *devtype,
		     struct ps_err *err)
{
	struct udev_enumerate *en = udev_enumerate_new(hp->udev);
	struct udev_list_entry *entry;
	int rc = 0;

	if (en == NULL)
		return ps_fail(err, PS_ENOMEM, "udev: cannot enumerate %s devices", subsystem);
	if (udev_enumerate_add_match_subsystem(en, subsystem) < 0 ||
	    udev_enumerate_add_match_property(en, "DEVTYPE", devtype) < 0 ||
	    udev_enumerate_scan_devices(en) < 0) {
		rc = ps_fail(err, PS_EIO, "udev: cannot enumerate %s devices", subsystem);
		goto out;
	}
	udev_list_entry_foreach(entry, udev_enumerate_get_list_entry(en))
	{
		struct udev_device *dev =
		    udev_device_new_from_syspath(hp->udev, udev_list_entry_get_name(entry));

		if (dev == NULL)
			continue; /* gone meanwhile; its remove event is ignored */
		rc = handle(hp, dev, "add", err);
		udev_device_unref(dev);
		if (rc < 0)
			goto out;
	}
out:
	udev_enumerate_unref(en);
	return rc;
}

int ps_hotplug_open(ps_hotplug_fn fn, void *user, const struct ps_board_id *boards, size_t n_boards,
		    struct ps_hotplug **out, struct ps_err *err)
{
	struct ps_hotplug *hp = NULL;
	const char *source;
	int rc = 0;

	*out = NULL;
	if (fn == NULL || (n_boards > 0 && boards == NULL))
		return ps_fail(err, PS_EINVAL, "hotplug: no callback or no board table");
	hp = calloc(1, sizeof(*hp));
	if (hp == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	hp->fn = fn;
	hp->user = user;
	if (n_boards > 0) {
		hp->boards = calloc(n_boards, sizeof(*hp->boards));
		if (hp->boards == NULL) {
			rc = ps_fail(err, PS_ENOMEM, "out of memory");
			goto out;
		}
		memcpy(hp->boards, boards, n_boards * sizeof(*boards));
		hp->n_boards = n_boards;
	}
	hp->udev = udev_new();
	if (hp->udev == NULL) {
		rc = ps_fail(err, PS_EIO, "udev: cannot start libudev");
		goto out;
	}
	/* Events processed by udevd (with ID_PATH and the other properties) when it runs. Without
	 * udevd (containers, minimal systems) libudev never delivers those, so the kernel's own
	 * uevents are watched instead: same devices, attributes from sysfs, no properties. */
	source = access("/run/udev/control", F_OK) == 0 ? "udev" : "kernel";
	hp->monitor = udev_monitor_new_from_netlink(hp->udev, source);
	if (hp->monitor == NULL) {
		rc = ps_fail(err, PS_EIO, "udev: cannot open the %s event monitor", source);
		goto out;
	}
	if (udev_monitor_filter_add_match_subsystem_devtype(hp->monitor, "block", "disk") < 0 ||
	    udev_monitor_filter_add_match_subsystem_devtype(hp->monitor, "usb", "usb_device") < 0) {
		rc = ps_fail(err, PS_EIO, "udev: cannot filter the event monitor");
		goto out;
	}
	/* Large enough for a hub full of readers arriving at once; failure is not fatal. */
	udev_monitor_set_receive_buffer_size(hp->monitor, 4 * 1024 * 1024);
	/* Receiving before enumerating: a device arriving in between is seen by the enumeration,
	 * the monitor or both, never by neither (the table makes "both" harmless). */
	if (udev_monitor_enable_receiving(hp->monitor) < 0) {
		rc = ps_fail(err, PS_EIO, "udev: cannot receive events (%s)", strerror(errno));
		goto out;
	}
	hp->usb = usb_open();
	rc = enumerate(hp, "block", "disk", err);
	if (rc == 0 && hp->n_boards > 0)
		rc = enumerate(hp, "usb", "usb_device", err);
out:
	if (rc < 0)
		ps_hotplug_close(hp);
	else
		*out = hp;
	return rc;
}

int ps_hotplug_fd(struct ps_hotplug *hp)
{
	return udev_monitor_get_fd(hp->monitor);
}

int ps_hotplug_dispatch(struct ps_hotplug *hp, struct ps_err *err)
{
	struct udev_device *dev;
	int rc = 0;

	/* The monitor's socket is non-blocking: receive until it is drained. */
	while (rc == 0 && (dev = udev_monitor_receive_device(hp->monitor)) != NULL) {
		rc = handle(hp, dev, udev_device_get_action(dev), err);
		udev_device_unref(dev);
	}
	return rc;
}

void ps_hotplug_close(struct ps_hotplug *hp)
{
	if (hp == NULL)
		return;
	if (hp->usb != NULL)
		libusb_exit(hp->usb);
	if (hp->monitor != NULL)
		udev_monitor_unref(hp->monitor);
	if (hp->udev != NULL)
		udev_unref(hp->udev);
	free(hp->known);
	free(hp->boards);
	free(hp);
}

int ps_hotplug_describe(const char *node, struct ps_disk *disk, struct ps_err *err)
{
	struct udev *udev = NULL;
	struct udev_device *dev = NULL;
	libusb_context *ctx = NULL;
	struct stat st;
	int rc = 0;

	memset(disk, 0, sizeof(*disk));
	if (stat(node, &st) != 0)
		return ps_fail(err, errno == ENOENT ? PS_ENOENT : PS_EIO, "%s: %s", node,
			       strerror(errno));
	if (!S_ISBLK(st.st_mode))
		return ps_fail(err, PS_EINVAL, "%s is not a block device", node);
	udev = udev_new();
	if (udev == NULL)
		return ps_fail(err, PS_EIO, "udev: cannot start libudev");
	dev = udev_device_new_from_devnum(udev, 'b', st.st_rdev);
	if (dev == NULL) {
		rc = ps_fail(err, PS_ENOENT, "%s: the kernel does not describe it in sysfs", node);
		goto out;
	}
	ctx = usb_open();
	describe(dev, ctx, disk);
	/* udev's name for the node; the one given when udev knows none (no devtmpfs). */
	if (disk->node[0] == '\0')
		copy_text(disk->node, sizeof(disk->node), node);
out:
	if (ctx != NULL)
		libusb_exit(ctx);
	if (dev != NULL)
		udev_device_unref(dev);
	udev_unref(udev);
	return rc;
}
