/* test_hotplug.c — the hotplug detector and the safety gate on devices replayed by umockdev: a
 * USB card reader (empty, then with a card, write-protected, pulled), an SD card on an MMC
 * host, a USB board in recovery mode, a SATA disk, loop and RAM disks; duplicate and
 * out-of-order events; the station running a board's helper when the board appears on a
 * slot's port and taking the disk that follows on the same port, or failing after the
 * board's timeout. Runs under umockdev-wrapper (tests/hotplug.sh). */
#include "config.h"
#include "hotplug.h"
#include "safety.h"
#include "slotmatch.h"
#include "station.h"
#include "tap.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <umockdev.h>
#include <unistd.h>

#define PCI	"/sys/devices/pci0000:00/0000:00:14.0"
#define READER	PCI "/usb1/1-2"
#define SDB	READER "/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb"
#define READER2 PCI "/usb1/1-3"
#define SDC	READER2 "/1-3:1.0/host7/target7:0:0/7:0:0:0/block/sdc"
#define STICK	PCI "/usb1/1-6"
#define SDD	STICK "/1-6:1.0/host8/target8:0:0/8:0:0:0/block/sdd"
#define BOARD	PCI "/usb1/1-4"
#define MMCHOST "/sys/devices/platform/fe320000.mmc"
#define MMCBLK	MMCHOST "/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0"
#define LOOP0	"/sys/devices/virtual/block/loop0"

/* The station's PCI xHCI controller, its root hub, a SATA disk, RAM disks, loop devices, a
 * keyboard, and a USB card reader (Realtek 0bda:0129) with no card in it. libusb sees the
 * reader through its sysfs descriptors (vid:pid 0bda:0129, serial string index 3). */
static const char base[] =
    "P: /devices/pci0000:00/0000:00:14.0\nE: SUBSYSTEM=pci\nE: DRIVER=xhci_hcd\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1\nN: bus/usb/001/001\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/001\nE: MAJOR=189\nE: MINOR=0\n"
    "A: busnum=1\nA: devnum=1\nA: devpath=0\nA: idVendor=1d6b\nA: idProduct=0002\n"
    "A: dev=189:0\n\n"
    "P: /devices/pci0000:00/0000:00:17.0\nE: SUBSYSTEM=pci\n\n"
    "P: /devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0\nE: SUBSYSTEM=scsi\n"
    "E: DEVTYPE=scsi_device\nA: vendor=ATA     \nA: model=Samsung SSD 870 \n\n"
    "P: /devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda\nN: sda\n"
    "E: SUBSYSTEM=block\nE: DEVTYPE=disk\nE: DEVNAME=/dev/sda\nE: MAJOR=8\nE: MINOR=0\n"
    "E: ID_BUS=ata\nE: ID_PATH=pci-0000:00:17.0-ata-1\nA: size=976773168\nA: removable=0\n"
    "A: ro=0\nA: dev=8:0\n\n"
    "P: /devices/virtual/block/ram0\nN: ram0\nE: SUBSYSTEM=block\nE: DEVTYPE=disk\n"
    "E: DEVNAME=/dev/ram0\nE: MAJOR=1\nE: MINOR=0\nA: size=8192\nA: dev=1:0\n\n"
    "P: /devices/virtual/block/zram0\nN: zram0\nE: SUBSYSTEM=block\nE: DEVTYPE=disk\n"
    "E: DEVNAME=/dev/zram0\nE: MAJOR=251\nE: MINOR=0\nA: size=8192\nA: dev=251:0\n\n"
    "P: /devices/virtual/block/loop0\nN: loop0\nE: SUBSYSTEM=block\nE: DEVTYPE=disk\n"
    "E: DEVNAME=/dev/loop0\nE: MAJOR=7\nE: MINOR=0\nA: size=0\nA: removable=0\nA: ro=0\n"
    "A: dev=7:0\n\n"
    "P: /devices/virtual/block/loop1\nN: loop1\nE: SUBSYSTEM=block\nE: DEVTYPE=disk\n"
    "E: DEVNAME=/dev/loop1\nE: MAJOR=7\nE: MINOR=1\nA: size=131072\nA: removable=0\n"
    "A: ro=0\nA: dev=7:1\nA: loop/backing_file=/srv/golden.img\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-5\nN: bus/usb/001/006\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/006\nE: MAJOR=189\nE: MINOR=5\n"
    "A: busnum=1\nA: devnum=6\nA: devpath=5\nA: idVendor=046d\nA: idProduct=c31c\n"
    "A: dev=189:5\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-2\nN: bus/usb/001/003\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/003\nE: MAJOR=189\nE: MINOR=2\n"
    "E: ID_SERIAL_SHORT=000000001234\nA: busnum=1\nA: devnum=3\nA: devpath=2\n"
    "A: idVendor=0bda\nA: idProduct=0129\nA: serial=000000001234\nA: dev=189:2\n"
    "H: descriptors=1201000200000040DA0B290100010102030109021900010100803209040000010806"
    "500007058102000200\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_interface\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6\nE: SUBSYSTEM=scsi\n"
    "E: DEVTYPE=scsi_host\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0\n"
    "E: SUBSYSTEM=scsi\nE: DEVTYPE=scsi_device\nA: vendor=Generic-\n"
    "A: model=SD/MMC          \n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb\n"
    "N: sdb\nE: SUBSYSTEM=block\nE: DEVTYPE=disk\nE: DEVNAME=/dev/sdb\nE: MAJOR=8\n"
    "E: MINOR=16\nE: ID_BUS=usb\nE: ID_VENDOR=Generic-\nE: ID_MODEL=SD_MMC\n"
    "E: ID_PATH=pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0\nA: size=0\nA: removable=1\n"
    "A: ro=0\nA: dev=8:16\n";

/* An SD card in the MMC host of an ARM station: CID serial, no udev ID_BUS; a partition. */
static const char mmc[] =
    "P: /devices/platform/fe320000.mmc\nE: SUBSYSTEM=platform\n\n"
    "P: /devices/platform/fe320000.mmc/mmc_host/mmc0\nE: SUBSYSTEM=mmc_host\n\n"
    "P: /devices/platform/fe320000.mmc/mmc_host/mmc0/mmc0:aaaa\nE: SUBSYSTEM=mmc\n"
    "A: serial=0x1a2b3c4d\nA: name=SC32G\nA: type=SD\nA: manfid=0x000003\n\n"
    "P: /devices/platform/fe320000.mmc/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0\nN: mmcblk0\n"
    "E: SUBSYSTEM=block\nE: DEVTYPE=disk\nE: DEVNAME=/dev/mmcblk0\nE: MAJOR=179\n"
    "E: MINOR=0\nE: ID_PATH=platform-fe320000.mmc\nA: size=62333952\nA: removable=0\n"
    "A: ro=0\nA: dev=179:0\n\n"
    "P: /devices/platform/fe320000.mmc/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0/mmcblk0p1\n"
    "N: mmcblk0p1\nE: SUBSYSTEM=block\nE: DEVTYPE=partition\nE: DEVNAME=/dev/mmcblk0p1\n"
    "E: MAJOR=179\nE: MINOR=1\nA: partition=1\nA: size=524288\nA: dev=179:1\n";

/* A Raspberry Pi CM4 in rpiboot mode (0a5c:2711): a board, without udev's ID_PATH. */
static const char cm4[] =
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-4\nN: bus/usb/001/005\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/005\nE: MAJOR=189\nE: MINOR=4\n"
    "A: busnum=1\nA: devnum=5\nA: devpath=4\nA: idVendor=0a5c\nA: idProduct=2711\n"
    "A: serial=c0ffee01\nA: dev=189:4\n";

/* A second reader whose card has its write-protect switch on. */
static const char reader2[] =
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-3\nN: bus/usb/001/004\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/004\nE: MAJOR=189\nE: MINOR=3\n"
    "A: busnum=1\nA: devnum=4\nA: devpath=3\nA: idVendor=05e3\nA: idProduct=0751\n"
    "A: serial=RDR2\nA: dev=189:3\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/host7/target7:0:0/7:0:0:0\n"
    "E: SUBSYSTEM=scsi\nE: DEVTYPE=scsi_device\nA: vendor=Generic\nA: model=STORAGE DEVICE\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/host7/target7:0:0/7:0:0:0/block/sdc\n"
    "N: sdc\nE: SUBSYSTEM=block\nE: DEVTYPE=disk\nE: DEVNAME=/dev/sdc\nE: MAJOR=8\n"
    "E: MINOR=32\nE: ID_BUS=usb\nE: ID_PATH=pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:0\n"
    "A: size=31116288\nA: removable=1\nA: ro=1\nA: dev=8:32\n";

/* A USB stick with one partition, for the in-use checks. */
static const char stick[] =
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-6\nN: bus/usb/001/007\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/007\nE: MAJOR=189\nE: MINOR=6\n"
    "A: busnum=1\nA: devnum=7\nA: devpath=6\nA: idVendor=0781\nA: idProduct=5567\n"
    "A: serial=4C530001\nA: dev=189:6\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-6/1-6:1.0/host8/target8:0:0/8:0:0:0\n"
    "E: SUBSYSTEM=scsi\nE: DEVTYPE=scsi_device\nA: vendor=SanDisk\nA: model=Cruzer Blade\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-6/1-6:1.0/host8/target8:0:0/8:0:0:0/block/sdd\n"
    "N: sdd\nE: SUBSYSTEM=block\nE: DEVTYPE=disk\nE: DEVNAME=/dev/sdd\nE: MAJOR=8\n"
    "E: MINOR=48\nE: ID_BUS=usb\nE: ID_PATH=pci-0000:00:14.0-usb-0:6:1.0-scsi-0:0:0:0\n"
    "A: size=30031872\nA: removable=1\nA: ro=0\nA: dev=8:48\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-6/1-6:1.0/host8/target8:0:0/8:0:0:0/block/sdd/"
    "sdd1\nN: sdd1\nE: SUBSYSTEM=block\nE: DEVTYPE=partition\nE: DEVNAME=/dev/sdd1\n"
    "E: MAJOR=8\nE: MINOR=49\nA: partition=1\nA: size=30029824\nA: dev=8:49\n";

static const char station_conf[] = "[slot front-left]\n"
				   "ports = pci-0000:00:14.0-usb-0:2:1.0-*\n"
				   "serial_source = usb\n"
				   "[slot sd]\n"
				   "ports = platform-fe320000.mmc\n"
				   "serial_source = cid\n"
				   "[slot rig]\n"
				   "ports = /dev/loop*\n"
				   "allow_fixed = true\n"
				   "[board cm4]\n"
				   "usb_id = 0a5c:2711\n";

struct record {
	enum ps_hotplug_event event;
	struct ps_disk disk;
	struct ps_usb_board board;
};

static struct record records[64];
static int n_records;

static void on_event(enum ps_hotplug_event event, const struct ps_disk *disk,
		     const struct ps_usb_board *board, void *user)
{
	struct record *r;

	(void)user;
	if (n_records == (int)(sizeof(records) / sizeof(records[0])))
		return;
	r = &records[n_records++];
	memset(r, 0, sizeof(*r));
	r->event = event;
	if (disk != NULL)
		r->disk = *disk;
	if (board != NULL)
		r->board = *board;
}

/* Receive what umockdev sent: until nothing more arrives for wait_ms. */
static void pump(struct ps_hotplug *hp, int wait_ms)
{
	struct pollfd pfd = {.fd = ps_hotplug_fd(hp), .events = POLLIN};
	struct ps_err err = {""};

	n_records = 0;
	while (poll(&pfd, 1, wait_ms) > 0)
		if (ps_hotplug_dispatch(hp, &err) < 0)
			printf("# dispatch: %s\n", err.msg);
}

/* The record of an event for node, or NULL; how many there are goes to count. */
static const struct record *find(enum ps_hotplug_event event, const char *node, int *count)
{
	const struct record *found = NULL;
	int i, n = 0;

	for (i = 0; i < n_records; i++) {
		const char *name = records[i].event == PS_HOTPLUG_BOARD_ADDED ||
					   records[i].event == PS_HOTPLUG_BOARD_REMOVED
				       ? records[i].board.port
				       : records[i].disk.node;

		if (records[i].event == event && strcmp(name, node) == 0) {
			found = found ? found : &records[i];
			n++;
		}
	}
	if (count != NULL)
		*count = n;
	return found;
}

static void uevent(UMockdevTestbed *tb, const char *syspath, const char *action)
{
	umockdev_testbed_uevent(tb, syspath, action);
}

static bool add(UMockdevTestbed *tb, const char *text)
{
	GError *error = NULL;
	bool done = umockdev_testbed_add_from_string(tb, text, &error);

	if (!done) {
		printf("# umockdev: %s\n", error->message);
		g_error_free(error);
	}
	return done;
}

/* Write a file below the test bed's root (its /proc, and sysfs entries umockdev cannot make). */
static void put(const char *root, const char *path, const char *text)
{
	char full[1024], dir[1024], *slash;
	FILE *f;

	snprintf(full, sizeof(full), "%s%s", root, path);
	snprintf(dir, sizeof(dir), "%s", full);
	for (slash = strchr(dir + strlen(root) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
		*slash = '\0';
		mkdir(dir, 0755);
		*slash = '/';
	}
	f = fopen(full, "w");
	if (f != NULL) {
		fputs(text, f);
		fclose(f);
	}
}

static void test_safety(const char *root)
{
	struct ps_safety_policy fixed_ok = {.allow_fixed = true};
	struct ps_disk_facts facts;
	struct ps_err err = {""};
	char path[1024];

	/* The gate reads /proc/self/mountinfo and /proc/swaps: the test bed's, empty first. */
	put(root, "/proc/self/mountinfo", "");
	put(root, "/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");

	is_int(ps_safety_check("/dev/sdb", NULL, &facts, &err), 0,
	       "safety: a card in a USB reader may be written: %s", err.msg);
	is_str(facts.name, "sdb", "safety facts: kernel name");
	is_str(facts.bus, "usb", "safety facts: on USB");
	ok(facts.removable && !facts.read_only && facts.major == 8 && facts.minor == 16,
	   "safety facts: removable, writable, 8:16");
	is_int(ps_safety_check("/dev/mmcblk0", NULL, &facts, &err), 0,
	       "safety: an SD card on the MMC host may be written (not removable, but MMC): %s",
	       err.msg);
	is_str(facts.bus, "mmc", "safety facts: on MMC");
	is_int(ps_safety_check("/dev/sda", NULL, NULL, &err), PS_EUNSAFE,
	       "safety: the SATA disk (not removable, no USB or MMC) is refused");
	contains(err.msg, "fixed disk", "as a fixed disk: %s", err.msg);
	is_int(ps_safety_check("/dev/sda", &fixed_ok, NULL, &err), 0,
	       "safety: unless the slot allows fixed disks");
	is_int(ps_safety_check("/dev/sdc", NULL, NULL, &err), PS_EUNSAFE,
	       "safety: a write-protected card is refused");
	contains(err.msg, "read-only", "as read-only: %s", err.msg);
	is_int(ps_safety_check("/dev/sdd", NULL, NULL, &err), 0, "safety: the USB stick passes");
	is_int(ps_safety_check("/dev/sdd1", NULL, NULL, &err), PS_EUNSAFE,
	       "safety: a partition is refused");
	contains(err.msg, "partition", "naming it a partition: %s", err.msg);

	put(root, "/proc/self/mountinfo",
	    "25 1 252:1 / / rw,relatime - ext4 /dev/vda1 rw\n"
	    "61 25 8:49 / /media/op/STICK rw,nosuid - vfat /dev/sdd1 rw\n");
	is_int(ps_safety_check("/dev/sdd", NULL, NULL, &err), PS_EUNSAFE,
	       "safety: a disk with a mounted partition is refused");
	contains(err.msg, "/dev/sdd1 is mounted on /media/op/STICK", "naming both: %s", err.msg);

	/* btrfs shows an anonymous device number (0:NN): the mount source names the device. */
	put(root, "/proc/self/mountinfo",
	    "25 1 252:1 / / rw,relatime - ext4 /dev/vda1 rw\n"
	    "70 25 0:45 / /srv/my\\040data rw,relatime - btrfs /dev/sdd1 rw,space_cache=v2\n");
	is_int(ps_safety_check("/dev/sdd", NULL, NULL, &err), PS_EUNSAFE,
	       "safety: a partition mounted as btrfs (device 0:45) is refused");
	contains(err.msg, "/dev/sdd1 is mounted on /srv/my data", "through its mount source: %s",
		 err.msg);
	put(root, "/proc/self/mountinfo",
	    "25 1 252:1 / / rw,relatime - ext4 /dev/vda1 rw\n"
	    "71 25 0:46 / /pool rw,relatime - btrfs /dev/sda rw,space_cache=v2\n");
	err.msg[0] = '\0';
	is_int(ps_safety_check("/dev/sdd", NULL, NULL, &err), 0,
	       "safety: another disk's btrfs does not refuse the stick: %s", err.msg);
	/* A two-device btrfs mounted through /dev/sda, /dev/sdd1 its second device. */
	put(root, "/sys/fs/btrfs/4a1e0c55-0b8e-4d3a-9f1e-6c2d7b9e0a11/devices/sda", "");
	put(root, "/sys/fs/btrfs/4a1e0c55-0b8e-4d3a-9f1e-6c2d7b9e0a11/devices/sdd1", "");
	is_int(ps_safety_check("/dev/sdd", NULL, NULL, &err), PS_EUNSAFE,
	       "safety: the second device of a mounted multi-device btrfs is refused");
	contains(err.msg, "/dev/sdd1 belongs to the btrfs filesystem of /dev/sda, mounted on /pool",
		 "naming the mounted device: %s", err.msg);
	put(root, "/proc/self/mountinfo", "");
	is_int(ps_safety_check("/dev/sdd", NULL, NULL, &err), PS_EUNSAFE,
	       "safety: a member of a mounted btrfs this mount namespace does not show is refused");
	contains(err.msg, "belongs to a mounted btrfs filesystem (4a1e0c55-", "saying so: %s",
		 err.msg);
	snprintf(path, sizeof(path),
		 "%s/sys/fs/btrfs/4a1e0c55-0b8e-4d3a-9f1e-6c2d7b9e0a11/devices/", root);
	unlink(strcat(path, "sdd1"));
	err.msg[0] = '\0';
	is_int(ps_safety_check("/dev/sdd", NULL, NULL, &err), 0,
	       "safety: passes again once it is no btrfs member: %s", err.msg);

	put(root, "/proc/swaps",
	    "Filename\tType\tSize\tUsed\tPriority\n/dev/sdd\tpartition\t1000\t0\t-2\n");
	is_int(ps_safety_check("/dev/sdd", NULL, NULL, &err), PS_EUNSAFE,
	       "safety: a disk used as swap is refused");
	contains(err.msg, "swap", "as swap: %s", err.msg);
	put(root, "/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");

	put(root, SDD "/sdd1/holders/dm-0", "");
	is_int(ps_safety_check("/dev/sdd", NULL, NULL, &err), PS_EUNSAFE,
	       "safety: a disk whose partition is held by device mapper is refused");
	contains(err.msg, "held by dm-0", "naming the holder: %s", err.msg);
}

/* A CM4 in rpiboot mode on port 1-8, then (its helper ran) the same port as a mass storage
 * device with its eMMC as /dev/sdf; a CM5 (0a5c:2712) on port 1-9 whose disk never comes. */
#define BOARD8 PCI "/usb1/1-8"
static const char cm4_on_8[] =
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-8\nN: bus/usb/001/009\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/009\nE: MAJOR=189\nE: MINOR=8\n"
    "A: busnum=1\nA: devnum=9\nA: devpath=8\nA: idVendor=0a5c\nA: idProduct=2711\n"
    "A: serial=c0ffee08\nA: dev=189:8\n";
static const char emmc_on_8[] =
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-8\nN: bus/usb/001/010\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/010\nE: MAJOR=189\nE: MINOR=9\n"
    "A: busnum=1\nA: devnum=10\nA: devpath=8\nA: idVendor=0a5c\nA: idProduct=0001\n"
    "A: serial=c0ffee08\nA: dev=189:9\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-8/1-8:1.0/host10/target10:0:0/10:0:0:0\n"
    "E: SUBSYSTEM=scsi\nE: DEVTYPE=scsi_device\nA: vendor=RPi-MSD-\nA: model=0001\n\n"
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-8/1-8:1.0/host10/target10:0:0/10:0:0:0/block/"
    "sdf\nN: sdf\nE: SUBSYSTEM=block\nE: DEVTYPE=disk\nE: DEVNAME=/dev/sdf\nE: MAJOR=8\n"
    "E: MINOR=80\nE: ID_BUS=usb\nE: ID_PATH=pci-0000:00:14.0-usb-0:8:1.0-scsi-0:0:0:0\n"
    "A: size=61071360\nA: removable=1\nA: ro=0\nA: dev=8:80\n";
static const char cm5_on_9[] =
    "P: /devices/pci0000:00/0000:00:14.0/usb1/1-9\nN: bus/usb/001/011\nE: SUBSYSTEM=usb\n"
    "E: DEVTYPE=usb_device\nE: DEVNAME=/dev/bus/usb/001/011\nE: MAJOR=189\nE: MINOR=10\n"
    "A: busnum=1\nA: devnum=11\nA: devpath=9\nA: idVendor=0a5c\nA: idProduct=2712\n"
    "A: serial=c0ffee09\nA: dev=189:10\n";

/* Wait (up to 20 s) until the station's slot name is in state want. */
static bool station_wait(struct ps_station *st, const char *name, enum ps_slot_state want,
			 struct ps_slot_view *out)
{
	struct ps_slot_view views[PS_MAX_SLOTS];
	int tries;

	for (tries = 0; tries < 200; tries++) {
		struct pollfd pfd = {ps_station_event_fd(st), POLLIN, 0};
		size_t n, i;

		poll(&pfd, 1, 100);
		ps_station_ack(st);
		n = ps_station_slots(st, views, PS_MAX_SLOTS);
		for (i = 0; i < n && i < PS_MAX_SLOTS; i++) {
			if (strcmp(views[i].name, name) == 0 && views[i].state == want) {
				if (out != NULL)
					*out = views[i];
				return true;
			}
		}
	}
	return false;
}

static void test_station_boards(UMockdevTestbed *tb)
{
	char dir[] = "/tmp/ps-test-boards-XXXXXX", text[2048], file[600], marker[64] = "";
	struct ps_ca_init_opts init = {.key_type = PS_KEY_P256, .days = 30};
	struct ps_station *st = NULL;
	struct ps_slot_view view;
	struct ps_config cfg;
	struct ps_err err = {""};
	struct ps_ca ca;
	bool have_ca;
	FILE *f;
	int tries;

	if (mkdtemp(dir) == NULL) {
		ok(false, "a temporary directory for the station");
		return;
	}
	snprintf(file, sizeof(file), "%s/ca", dir);
	init.dir = file;
	have_ca = ps_ca_init(&init, &err) == 0 && ps_ca_load(&ca, file, true, NULL, &err) == 0;
	ok(have_ca, "station: CA: %s", err.msg);
	snprintf(file, sizeof(file), "%s/helper.sh", dir);
	f = fopen(file, "w");
	if (f != NULL) {
		fprintf(f,
			"echo \"rpiboot for $1\"\necho \"$1\" > %s/marker.tmp\n"
			"mv %s/marker.tmp %s/marker\n",
			dir, dir, dir);
		fclose(f);
	}
	snprintf(text, sizeof(text),
		 "[station]\ndatabase = %s/audit.db\n"
		 "[slot pi]\nports = pci-0000:00:14.0-usb-0:8:1.0-*\n"
		 "[slot pi5]\nports = pci-0000:00:14.0-usb-0:9:1.0-*\n"
		 "[board cm4]\nusb_id = 0a5c:2711\nhelper = sh %s {port}\ntimeout = 20\n"
		 "[board cm5]\nusb_id = 0a5c:2712\nhelper = true\ntimeout = 1\n",
		 dir, file);
	ok(ps_config_load_string(&cfg, text, "station.conf", &err) == 0, "station config: %s",
	   err.msg);
	if (!have_ca || ps_station_open(&cfg, &ca, &st, &err) < 0) {
		ok(false, "the station opens on the test bed: %s", err.msg);
		goto out;
	}
	ok(station_wait(st, "pi", PS_SLOT_EMPTY, NULL), "station: slot pi is empty");

	/* The board appears; its helper runs with its port; the eMMC comes up on the port. */
	ok(add(tb, cm4_on_8), "test bed: a CM4 in rpiboot mode on port 1-8");
	ok(station_wait(st, "pi", PS_SLOT_DETECTED, &view), "slot pi shows the board: %s",
	   view.message);
	ok(strstr(view.message, "board cm4 ") != NULL &&
	       strstr(view.message, "on port 1-8: ") != NULL,
	   "naming the board and its port");
	snprintf(file, sizeof(file), "%s/marker", dir);
	for (tries = 0; tries < 200 && access(file, F_OK) != 0; tries++)
		usleep(100000);
	f = fopen(file, "r");
	if (f == NULL || fgets(marker, sizeof(marker), f) == NULL)
		marker[0] = '\0';
	if (f != NULL)
		fclose(f);
	is_str(marker, "1-8\n", "the helper ran for port 1-8");
	uevent(tb, BOARD8, "remove");
	umockdev_testbed_remove_device(tb, BOARD8);
	ok(add(tb, emmc_on_8), "test bed: port 1-8 is now a mass storage device with /dev/sdf");
	ok(station_wait(st, "pi", PS_SLOT_WAITING_SERIAL, &view),
	   "the disk on the board's port is slot pi's: it waits for a serial");
	is_str(view.target, "/dev/sdf", "slot pi's target is the eMMC");

	/* A board whose disk never comes. */
	ok(add(tb, cm5_on_9), "test bed: a CM5 on port 1-9");
	ok(station_wait(st, "pi5", PS_SLOT_FAIL, &view), "no disk within 1 s: pi5 FAILs");
	is_str(view.message,
	       "board cm5 on port 1-9: no disk appeared within 1 s after the helper; check the "
	       "cable and the helper true",
	       "with what to check");
	ps_station_close(st);
out:
	ps_config_free(&cfg);
	if (have_ca)
		ps_ca_free(&ca);
	snprintf(text, sizeof(text), "rm -rf '%s'", dir);
	if (system(text) != 0)
		printf("# could not remove %s\n", dir);
}

int main(void)
{
	UMockdevTestbed *tb;
	struct ps_board_id boards[] = {{0x0a5c, 0x2711}};
	struct ps_hotplug *hp = NULL;
	struct ps_config cfg;
	struct ps_err err = {""};
	struct ps_disk d;
	const struct record *r;
	const struct ps_slot_config *slot;
	char serial[PS_SERIAL_MAX + 1], root[512], path[1024];
	const char *preload;
	gchar *dir;
	int count;

	preload = getenv("LD_PRELOAD");
	if (preload == NULL || strstr(preload, "libumockdev-preload") == NULL) {
		printf("1..0 # SKIP not under umockdev-wrapper (run tests/hotplug.sh)\n");
		return 0;
	}
	tb = umockdev_testbed_new();
	dir = umockdev_testbed_get_root_dir(tb);
	snprintf(root, sizeof(root), "%s", dir);
	g_free(dir);
	ok(ps_config_load_string(&cfg, station_conf, "station.conf", &err) == 0,
	   "station configuration: %s", err.msg);
	ok(add(tb, base), "test bed: controller, SATA disk, RAM, loop, keyboard, empty reader");

	/* Existing devices come first, as added. */
	n_records = 0;
	ok(ps_hotplug_open(on_event, NULL, boards, 1, &hp, &err) == 0, "open: %s", err.msg);
	if (hp == NULL)
		return tap_done();
	r = find(PS_HOTPLUG_DISK_ADDED, "/dev/sdb", &count);
	is_int(count, 1, "the empty card reader is reported once");
	if (r != NULL) {
		is_str(r->disk.syspath, SDB, "syspath");
		is_str(r->disk.id_path, "pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0", "ID_PATH");
		is_str(r->disk.vendor, "Generic-", "vendor from sysfs, blanks trimmed");
		is_str(r->disk.model, "SD/MMC", "model from sysfs, not udev's SD_MMC");
		is_int(r->disk.size, 0, "size 0: no card");
		ok(r->disk.removable && !r->disk.read_only, "removable, writable");
		is_str(r->disk.bus, "usb", "bus usb");
		is_int(r->disk.usb_vid, 0x0bda, "USB vendor 0bda (libusb's descriptor)");
		is_int(r->disk.usb_pid, 0x0129, "USB product 0129");
		/* umockdev's usbfs node answers no control transfer: the string descriptor read
		 * fails, and the serial is the kernel's copy in sysfs. */
		is_str(r->disk.usb_serial, "000000001234",
		       "USB serial (sysfs, libusb cannot read)");
		is_str(r->disk.usb_port, "1-2", "USB port 1-2");
		is_str(r->disk.cid_serial, "", "no CID serial through a USB reader");
	}
	r = find(PS_HOTPLUG_DISK_ADDED, "/dev/sda", &count);
	is_int(count, 1, "the SATA disk is reported");
	ok(r && strcmp(r->disk.bus, "ata") == 0 && !r->disk.removable &&
	       r->disk.size == 976773168ULL * 512 && strcmp(r->disk.model, "Samsung SSD 870") == 0,
	   "as a fixed ATA disk of 500 GB");
	r = find(PS_HOTPLUG_DISK_ADDED, "/dev/loop1", &count);
	is_int(count, 1, "an attached loop device is reported");
	ok(r && r->disk.bus[0] == '\0' && r->disk.id_path[0] == '\0' && r->disk.usb_vid == 0,
	   "without bus, ID_PATH or USB parent");
	find(PS_HOTPLUG_DISK_ADDED, "/dev/loop0", &count);
	is_int(count, 0, "an unattached loop device is not");
	find(PS_HOTPLUG_DISK_ADDED, "/dev/ram0", &count);
	is_int(count, 0, "RAM disks are not");
	find(PS_HOTPLUG_DISK_ADDED, "/dev/zram0", &count);
	is_int(count, 0, "zram is not");
	is_int(n_records, 3, "three devices in all (no keyboard, no root hub)");

	pump(hp, 100);
	is_int(n_records, 0, "nothing more without events");

	/* A card goes into the reader: the size changes. */
	umockdev_testbed_set_attribute(tb, SDB, "size", "62333952");
	uevent(tb, SDB, "change");
	pump(hp, 300);
	r = find(PS_HOTPLUG_DISK_CHANGED, "/dev/sdb", &count);
	is_int(count, 1, "card inserted: the reader's disk changed");
	ok(r && r->disk.size == 62333952ULL * 512, "to 31.9 GB");
	is_int(n_records, 1, "and nothing else");
	if (r != NULL) {
		slot = ps_slot_for_disk(&cfg, &r->disk);
		ok(slot && strcmp(slot->name, "front-left") == 0, "the reader is slot front-left");
		is_int(ps_slot_serial(slot, &r->disk, serial, sizeof(serial), &err), 0,
		       "which takes the USB serial");
		is_str(serial, "000000001234", "the reader's serial number");
	}

	/* The same state again (udev's watch after a write), a duplicate add: harmless. */
	uevent(tb, SDB, "change");
	uevent(tb, SDB, "add");
	pump(hp, 150);
	is_int(n_records, 0, "a change that changes nothing and a duplicate add report nothing");

	/* A card swapped for another of the same size: the kernel says the media changed. */
	umockdev_testbed_set_property(tb, SDB, "DISK_MEDIA_CHANGE", "1");
	uevent(tb, SDB, "change");
	pump(hp, 300);
	find(PS_HOTPLUG_DISK_CHANGED, "/dev/sdb", &count);
	is_int(count, 1, "a media change of the same size is reported");
	umockdev_testbed_set_property(tb, SDB, "DISK_MEDIA_CHANGE", "0");

	/* An SD card on the MMC host, with a partition. */
	ok(add(tb, mmc), "test bed: SD card on the MMC host");
	pump(hp, 300);
	r = find(PS_HOTPLUG_DISK_ADDED, "/dev/mmcblk0", &count);
	is_int(count, 1, "the SD card is added");
	is_int(n_records, 1, "its partition is not reported");
	if (r != NULL) {
		is_str(r->disk.bus, "mmc", "bus mmc (udev sets no ID_BUS)");
		is_str(r->disk.cid_serial, "0x1a2b3c4d", "CID serial from sysfs");
		is_str(r->disk.model, "SC32G", "model: the card's name");
		is_str(r->disk.id_path, "platform-fe320000.mmc", "ID_PATH");
		ok(r->disk.usb_vid == 0 && r->disk.usb_port[0] == '\0', "no USB parent");
		slot = ps_slot_for_disk(&cfg, &r->disk);
		ok(slot && strcmp(slot->name, "sd") == 0, "slot sd");
		is_int(ps_slot_serial(slot, &r->disk, serial, sizeof(serial), &err), 0,
		       "which takes the CID serial");
		is_str(serial, "0x1a2b3c4d", "the card's serial");
	}

	/* A board in recovery mode and a keyboard. */
	ok(add(tb, cm4), "test bed: a CM4 in rpiboot mode");
	uevent(tb, PCI "/usb1/1-5", "add");
	pump(hp, 300);
	r = find(PS_HOTPLUG_BOARD_ADDED, "1-4", &count);
	is_int(count, 1, "the board is reported");
	is_int(n_records, 1, "the keyboard is not");
	if (r != NULL) {
		ok(r->board.vid == 0x0a5c && r->board.pid == 0x2711, "0a5c:2711");
		is_str(r->board.serial, "c0ffee01", "its serial");
		is_str(r->board.id_path, "pci-0000:00:14.0-usb-0:4", "ID_PATH as udev's path_id");
		is_str(r->board.syspath, BOARD, "syspath");
	}
	uevent(tb, BOARD, "bind");
	uevent(tb, BOARD, "add");
	pump(hp, 150);
	is_int(n_records, 0, "bind and a duplicate add of the board report nothing");

	/* Safety on the replayed devices. */
	ok(add(tb, reader2) && add(tb, stick), "test bed: a write-protected card, a USB stick");
	pump(hp, 300);
	find(PS_HOTPLUG_DISK_ADDED, "/dev/sdc", &count);
	is_int(count, 1, "the write-protected card is added");
	r = find(PS_HOTPLUG_DISK_ADDED, "/dev/sdc", NULL);
	ok(r && r->disk.read_only, "as read-only");
	find(PS_HOTPLUG_DISK_ADDED, "/dev/sdd", &count);
	is_int(count, 1, "the stick is added (its partition is not)");
	test_safety(root);

	/* ps_hotplug_describe by node. */
	is_int(ps_hotplug_describe("/dev/mmcblk0", &d, &err), 0, "describe /dev/mmcblk0: %s",
	       err.msg);
	ok(strcmp(d.cid_serial, "0x1a2b3c4d") == 0 && d.size == 62333952ULL * 512 &&
	       strcmp(d.syspath, MMCBLK) == 0,
	   "describe gives the same attributes");
	is_int(ps_hotplug_describe("/dev/sdb", &d, &err), 0, "describe /dev/sdb");
	ok(d.usb_vid == 0x0bda && strcmp(d.usb_serial, "000000001234") == 0 &&
	       strcmp(d.usb_port, "1-2") == 0,
	   "with its USB parent");
	is_int(ps_hotplug_describe("/dev/null", &d, &err), PS_EINVAL,
	       "describe refuses a character device");
	is_int(ps_hotplug_describe("/nonexistent/disk", &d, &err), PS_ENOENT,
	       "describe names a missing node");

	/* The card comes out of the reader. */
	umockdev_testbed_set_attribute(tb, SDB, "size", "0");
	uevent(tb, SDB, "change");
	pump(hp, 300);
	r = find(PS_HOTPLUG_DISK_CHANGED, "/dev/sdb", &count);
	ok(count == 1 && r->disk.size == 0, "card pulled: changed to size 0");

	/* The reader is unplugged: remove, and the same remove again. */
	uevent(tb, SDB, "remove");
	uevent(tb, SDB, "remove");
	umockdev_testbed_remove_device(tb, READER);
	pump(hp, 300);
	r = find(PS_HOTPLUG_DISK_REMOVED, "/dev/sdb", &count);
	is_int(count, 1, "reader unplugged: removed once for two remove events");
	ok(r && strcmp(r->disk.id_path, "pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0") == 0,
	   "the removal carries what was known (ID_PATH)");
	is_int(n_records, 1, "and nothing else");

	/* Remove events for devices never reported: RAM, an unattached loop device. */
	uevent(tb, "/sys/devices/virtual/block/ram0", "remove");
	uevent(tb, LOOP0, "remove");
	pump(hp, 150);
	is_int(n_records, 0, "removals of unknown devices report nothing");

	/* A change for a disk never seen (its add was missed) reports it. */
	put(root, "/sys/devices/virtual/block/loop0/loop/backing_file", "/srv/image.img\n");
	umockdev_testbed_set_attribute(tb, LOOP0, "size", "131072");
	uevent(tb, LOOP0, "change");
	pump(hp, 300);
	r = find(PS_HOTPLUG_DISK_ADDED, "/dev/loop0", &count);
	is_int(count, 1, "losetup: a loop device getting a backing file is added");
	if (r != NULL) {
		slot = ps_slot_for_disk(&cfg, &r->disk);
		ok(slot && strcmp(slot->name, "rig") == 0, "and maps by node to slot rig");
	}
	snprintf(path, sizeof(path), "%s/sys/devices/virtual/block/loop0/loop/backing_file", root);
	unlink(path);
	umockdev_testbed_set_attribute(tb, LOOP0, "size", "0");
	uevent(tb, LOOP0, "change");
	pump(hp, 300);
	find(PS_HOTPLUG_DISK_REMOVED, "/dev/loop0", &count);
	is_int(count, 1, "losetup -d: removed when the backing file goes");

	/* A missed removal: the stick vanishes silently, a new disk takes its node /dev/sdd. */
	umockdev_testbed_remove_device(tb, STICK);
	{
		/* umockdev leaves the node and the links behind: clear them for the new sdd. */
		static const char *const leftovers[] = {"/sys/class/block/sdd", "/sys/block/sdd",
							"/sys/dev/block/8:48", "/dev/.node/sdd",
							"/dev/sdd"};
		size_t i;

		for (i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++) {
			snprintf(path, sizeof(path), "%s%s", root, leftovers[i]);
			unlink(path);
		}
	}
	ok(add(tb, "P: /devices/pci0000:00/0000:00:14.0/usb1/1-7/1-7:1.0/host9/target9:0:0/"
		   "9:0:0:0/block/sdd\nN: sdd\nE: SUBSYSTEM=block\nE: DEVTYPE=disk\n"
		   "E: DEVNAME=/dev/sdd\nE: MAJOR=8\nE: MINOR=48\nE: ID_BUS=usb\n"
		   "E: ID_PATH=pci-0000:00:14.0-usb-0:7:1.0-scsi-0:0:0:0\nA: size=1000\n"
		   "A: removable=1\nA: ro=0\nA: dev=8:48\n"),
	   "test bed: a new disk on another port gets the node /dev/sdd");
	pump(hp, 300);
	find(PS_HOTPLUG_DISK_REMOVED, "/dev/sdd", &count);
	is_int(count, 1, "the old /dev/sdd is reported removed");
	r = find(PS_HOTPLUG_DISK_ADDED, "/dev/sdd", &count);
	ok(count == 1 && r != NULL && strstr(r->disk.id_path, "usb-0:7") != NULL,
	   "then the new one added");
	ok(n_records == 2 && records[0].event == PS_HOTPLUG_DISK_REMOVED,
	   "removal first, then the addition");

	/* The board and the SD card leave. */
	uevent(tb, BOARD, "unbind");
	uevent(tb, BOARD, "remove");
	uevent(tb, MMCBLK "/mmcblk0p1", "remove");
	uevent(tb, MMCBLK, "remove");
	pump(hp, 300);
	find(PS_HOTPLUG_BOARD_REMOVED, "1-4", &count);
	is_int(count, 1, "the board is removed");
	find(PS_HOTPLUG_DISK_REMOVED, "/dev/mmcblk0", &count);
	is_int(count, 1, "the SD card is removed");
	is_int(n_records, 2, "nothing else");

	ps_hotplug_close(hp);
	ps_config_free(&cfg);
	test_station_boards(tb);
	g_object_unref(tb);
	return tap_done();
}
