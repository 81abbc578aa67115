/* test_station.c — the station core on virtual slots: image files appearing in the slots
 * directory become slots, a submitted serial runs a job on a worker thread to PASS, a
 * corrupt image FAILs with its reason, serial rules and field-service refusals, the
 * longest-waiting slot gets the next serial, and the log and counts follow; slots whose
 * serials come from a sequence, fed injected hotplug events; cards pulled during the job
 * (an image file deleted, a disk removed, a loop device shrunk) and the audit rows saying so;
 * boards in boot mode: the helper run, the disk on the same port taken, timeout, failure.
 * With [station] slots_flash the job flashes the golden image first (FLASHING, held there by
 * a file lease on the target), then personalizes; the audit row names the image and its
 * SHA-256; a corrupt golden image FAILs the slot and issues nothing. */
#include "provision.h"
#include "station.h"
#include "tap.h"
#include "util.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[] = "/tmp/ps-test-station-XXXXXX";

static const char *path(const char *name)
{
	static char buf[4][600];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", root, name);
	return buf[i];
}

/* Wait (up to 20 s) until slot named name is in state want; returns its view. */
static bool wait_state(struct ps_station *st, const char *name, enum ps_slot_state want,
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
		for (i = 0; i < n; i++) {
			if (strcmp(views[i].name, name) == 0 && views[i].state == want) {
				if (out)
					*out = views[i];
				return true;
			}
		}
	}
	return false;
}

static int slot_id(struct ps_station *st, const char *name)
{
	struct ps_slot_view views[PS_MAX_SLOTS];
	size_t n = ps_station_slots(st, views, PS_MAX_SLOTS), i;

	for (i = 0; i < n; i++)
		if (strcmp(views[i].name, name) == 0)
			return views[i].id;
	return -1;
}

static bool wait_gone(struct ps_station *st, const char *name)
{
	int tries;

	for (tries = 0; tries < 200 && slot_id(st, name) >= 0; tries++)
		usleep(100000);
	return slot_id(st, name) < 0;
}

static int run(const char *cmd)
{
	return system(cmd);
}

/* A disk on a slot's port, for injected hotplug events: an image file stands in for it. */
static void fake_disk(struct ps_disk *disk, const char *file, const char *port)
{
	struct stat sb;

	memset(disk, 0, sizeof(*disk));
	snprintf(disk->node, sizeof(disk->node), "%s", path(file));
	snprintf(disk->id_path, sizeof(disk->id_path), "%s", port);
	snprintf(disk->vendor, sizeof(disk->vendor), "Test");
	snprintf(disk->model, sizeof(disk->model), "Card");
	snprintf(disk->bus, sizeof(disk->bus), "usb");
	disk->removable = true;
	disk->size = stat(disk->node, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* Two cards inserted at once into two slots whose serials come from the same sequence: both
 * start without a serial typed, and get two different serials of the sequence. */
static void test_sequence(struct ps_station *st)
{
	struct ps_slot_view a, b;
	struct ps_disk card_a, card_b;
	char cmd[2048];
	long seen = 0;

	snprintf(cmd, sizeof(cmd), "cp --sparse=always %s %s && cp --sparse=always %s %s",
		 path("b.img"), path("card-a.img"), path("b.img"), path("card-b.img"));
	ok(run(cmd) == 0, "two cards for the sequence slots");
	ok(wait_state(st, "seq-a", PS_SLOT_EMPTY, NULL) &&
	       wait_state(st, "seq-b", PS_SLOT_EMPTY, NULL),
	   "the sequence slots are empty");
	fake_disk(&card_a, "card-a.img", "test-port-a");
	fake_disk(&card_b, "card-b.img", "test-port-b");
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_ADDED, &card_a, NULL);
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_ADDED, &card_b, NULL);
	ok(wait_state(st, "seq-a", PS_SLOT_PASS, &a), "seq-a PASSes without a typed serial: %s",
	   a.message);
	ok(wait_state(st, "seq-b", PS_SLOT_PASS, &b), "seq-b PASSes without a typed serial: %s",
	   b.message);
	ok(strncmp(a.serial, "ABC-00000", 9) == 0 && strlen(a.serial) == 10 &&
	       strncmp(b.serial, "ABC-00000", 9) == 0 && strlen(b.serial) == 10,
	   "both serials come from the sequence (%s, %s)", a.serial, b.serial);
	ok(strcmp(a.serial, b.serial) != 0 &&
	       ((strcmp(a.serial, "ABC-000001") == 0 && strcmp(b.serial, "ABC-000002") == 0) ||
		(strcmp(a.serial, "ABC-000002") == 0 && strcmp(b.serial, "ABC-000001") == 0)),
	   "two slots at once: ABC-000001 and ABC-000002, one each");
	snprintf(cmd, sizeof(cmd), "%s.example.com", a.serial);
	is_str(a.common_name, cmd, "the certificate names the sequence serial");
	ok(ps_station_serial_seen(st, a.serial, &seen, NULL) == 0 && seen == 1,
	   "the audit database has a certificate for %s", a.serial);

	/* The card goes, another comes: the next number. */
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_REMOVED, &card_a, NULL);
	ok(wait_state(st, "seq-a", PS_SLOT_EMPTY, NULL), "card removed: seq-a is empty");
	snprintf(cmd, sizeof(cmd), "cp --sparse=always %s %s", path("b.img"), path("card-a.img"));
	ok(run(cmd) == 0, "a fresh card");
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_ADDED, &card_a, NULL);
	ok(wait_state(st, "seq-a", PS_SLOT_PASS, &a), "the next card PASSes");
	is_str(a.serial, "ABC-000003", "with the next serial");
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_REMOVED, &card_a, NULL);
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_REMOVED, &card_b, NULL);
}

/* Whether the log holds a line that contains text. */
static bool log_has(struct ps_station *st, const char *text)
{
	static char lines[256][256];
	uint64_t last = 0;
	size_t n = ps_station_log(st, 0, lines, 256, &last), i;

	for (i = 0; i < n; i++)
		if (strstr(lines[i], text) != NULL)
			return true;
	return false;
}

/* Wait (up to 20 s) for a log line that contains text. */
static bool wait_log(struct ps_station *st, const char *text)
{
	int tries;

	for (tries = 0; tries < 200 && !log_has(st, text); tries++)
		usleep(100000);
	return log_has(st, text);
}

/* The card pulled in the middle of a job: when the job whose target is pull_target starts
 * writing, the stage hook pulls it in the way pull_how says. */
enum pull_how { PULL_FILE, PULL_FILE_AND_EVENT, PULL_MEDIUM, PULL_LOOP };
static const char *pull_target;
static enum pull_how pull_how;
static struct ps_station *pull_station;
static struct ps_disk pull_disk;
static int pulls;

static void shrink_loop(const char *dev)
{
	struct loop_info64 info;
	int fd = open(dev, O_RDONLY | O_CLOEXEC);

	/* As a card reader does when the card goes: one sector left, reads short, writes fail. */
	if (fd < 0 || ioctl(fd, LOOP_GET_STATUS64, &info) != 0)
		printf("# cannot shrink %s\n", dev);
	info.lo_sizelimit = 512;
	if (fd >= 0 &&
	    (ioctl(fd, LOOP_SET_STATUS64, &info) != 0 || ioctl(fd, LOOP_SET_CAPACITY, 0) != 0))
		printf("# cannot shrink %s\n", dev);
	if (fd >= 0)
		close(fd);
}

static void pull_hook(int stage, const char *target)
{
	if (stage != PS_STAGE_WRITING || pull_target == NULL || strcmp(target, pull_target) != 0)
		return;
	pulls++;
	if (pull_how == PULL_LOOP) {
		shrink_loop(target);
		return;
	}
	if (pull_how == PULL_MEDIUM) {
		/* A card reader: the disk stays, the medium goes (size 0). */
		if (truncate(target, 0) != 0)
			printf("# cannot pull %s\n", target);
		pull_disk.size = 0;
		ps_station_hotplug_event(pull_station, PS_HOTPLUG_DISK_CHANGED, &pull_disk, NULL);
		return;
	}
	if (truncate(target, 0) != 0 || unlink(target) != 0)
		printf("# cannot pull %s\n", target);
	if (pull_how == PULL_FILE_AND_EVENT)
		ps_station_hotplug_event(pull_station, PS_HOTPLUG_DISK_REMOVED, &pull_disk, NULL);
}

struct audit_row {
	char state[32], reason[1024], image_name[256], image_sha256[65];
	long n;
};

static int keep_row(const struct ps_cert_row *row, void *user)
{
	struct audit_row *r = user;

	snprintf(r->state, sizeof(r->state), "%s", row->state);
	snprintf(r->reason, sizeof(r->reason), "%s", row->reason);
	snprintf(r->image_name, sizeof(r->image_name), "%s", row->image_name);
	snprintf(r->image_sha256, sizeof(r->image_sha256), "%s", row->image_sha256);
	r->n++;
	return 0;
}

/* The audit row of serial (the only one), through the station's connection. */
static struct audit_row audit_row_of(struct ps_station *st, const char *serial)
{
	struct ps_db_filter filter = {.device_serial = serial};
	struct audit_row r;

	memset(&r, 0, sizeof(r));
	ps_db_each(ps_station_ui_db(st), &filter, keep_row, &r, NULL);
	return r;
}

/* A card pulled during the job, three ways: an image file slot's file deleted; a slot's disk
 * removed (udev's remove event); a loop device in a slot shrunk under the job, no event at
 * all (root only). Each job FAILs, and its audit row says the card left during the job. */
static void test_pulled(struct ps_station *st)
{
	struct ps_slot_view view;
	struct audit_row row;
	char cmd[2048], loop[64] = "";
	FILE *p;

	ps_station_stage_hook = pull_hook;
	pull_station = st;

	/* 1. An image file slot whose file goes during the job. */
	snprintf(cmd, sizeof(cmd), "cp --sparse=always %s %s/pull.img", path("b.img"),
		 path("slots"));
	ok(run(cmd) == 0, "an image file for a pull");
	ok(wait_state(st, "pull.img", PS_SLOT_WAITING_SERIAL, NULL), "pull.img waits for a serial");
	snprintf(cmd, sizeof(cmd), "%s/pull.img", path("slots"));
	pull_target = cmd;
	pull_how = PULL_FILE;
	ok(ps_station_submit_serial(st, slot_id(st, "pull.img"), "SN-0005", false, NULL) == 0,
	   "its job starts");
	ok(wait_gone(st, "pull.img"), "the file is deleted while written: its slot goes");
	row = audit_row_of(st, "SN-0005");
	ok(row.n == 1 && strcmp(row.state, "failed") == 0, "the audit row failed (%s)", row.state);
	contains(row.reason, "image file removed from slot pull.img during the job: ",
		 "its reason: the file was removed during the job: %s", row.reason);
	ok(strlen(row.reason) > strlen("image file removed from slot pull.img during the job: "),
	   "followed by the error it caused");

	/* 2. A slot's disk removed (udev) during the job; the serial comes from a sequence. */
	snprintf(cmd, sizeof(cmd), "cp --sparse=always %s %s", path("b.img"), path("card-p.img"));
	ok(run(cmd) == 0, "a card for a pull");
	fake_disk(&pull_disk, "card-p.img", "test-port-a");
	snprintf(cmd, sizeof(cmd), "%s", pull_disk.node);
	pull_target = cmd;
	pull_how = PULL_FILE_AND_EVENT;
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_ADDED, &pull_disk, NULL);
	ok(wait_state(st, "seq-a", PS_SLOT_EMPTY, &view) && pulls == 2,
	   "the card is pulled while written: seq-a is empty again");
	row = audit_row_of(st, "ABC-000004");
	ok(row.n == 1 && strcmp(row.state, "failed") == 0, "ABC-000004's audit row failed (%s)",
	   row.state);
	contains(row.reason, "card removed from slot seq-a during the job: ",
		 "its reason: the card was removed during the job: %s", row.reason);

	/* 2b. A card reader's card pulled: the disk changes to size 0 during the job. */
	snprintf(cmd, sizeof(cmd), "cp --sparse=always %s %s", path("b.img"), path("card-m.img"));
	ok(run(cmd) == 0, "a card in a reader for a pull");
	fake_disk(&pull_disk, "card-m.img", "test-port-b");
	snprintf(cmd, sizeof(cmd), "%s", pull_disk.node);
	pull_target = cmd;
	pull_how = PULL_MEDIUM;
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_ADDED, &pull_disk, NULL);
	ok(wait_state(st, "seq-b", PS_SLOT_EMPTY, &view) && pulls == 3,
	   "the reader's medium goes while written: seq-b is empty again");
	row = audit_row_of(st, "ABC-000005");
	ok(row.n == 1 && strcmp(row.state, "failed") == 0, "ABC-000005's audit row failed (%s)",
	   row.state);
	contains(row.reason, "card removed from slot seq-b during the job: ",
		 "its reason: the card was removed during the job: %s", row.reason);
	ok(wait_log(st, "seq-b: the card left "), "the log says the card left");
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_REMOVED, &pull_disk, NULL);

	/* 3. A loop device in slot rig, shrunk to one sector under the job (as a card reader
	 * does when the card goes), and no hotplug event at all: the station finds it out. */
	if (geteuid() != 0 || access("/dev/loop-control", F_OK) != 0) {
		printf("ok %d - # SKIP loop devices need root\n", ++tap_count);
		goto out;
	}
	snprintf(cmd, sizeof(cmd), "cp --sparse=always %s %s && losetup -f --show %s",
		 path("b.img"), path("loop.img"), path("loop.img"));
	p = popen(cmd, "r");
	if (p == NULL || fgets(loop, sizeof(loop), p) == NULL)
		loop[0] = '\0';
	if (p != NULL)
		pclose(p);
	loop[strcspn(loop, "\n")] = '\0';
	if (strncmp(loop, "/dev/loop", 9) != 0) {
		printf("ok %d - # SKIP losetup cannot attach a loop device here\n", ++tap_count);
		goto out;
	}
	memset(&pull_disk, 0, sizeof(pull_disk));
	snprintf(pull_disk.node, sizeof(pull_disk.node), "%s", loop);
	pull_disk.size = 64 << 20;
	pull_target = pull_disk.node;
	pull_how = PULL_LOOP;
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_ADDED, &pull_disk, NULL);
	ok(wait_state(st, "rig", PS_SLOT_FAIL, &view) && pulls == 4,
	   "the loop device shrinks under the job: rig FAILs: %s", view.message);
	contains(view.message, "card removed from slot rig during the job: ",
		 "the slot says the card was removed during the job");
	row = audit_row_of(st, view.serial);
	ok(row.n == 1 && strcmp(row.state, "failed") == 0, "%s's audit row failed (%s)",
	   view.serial, row.state);
	contains(row.reason, "card removed from slot rig during the job: ", "with that reason: %s",
		 row.reason);
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_REMOVED, &pull_disk, NULL);
	snprintf(cmd, sizeof(cmd), "losetup -d %s", loop);
	ok(run(cmd) == 0, "loop device detached");
out:
	ps_station_stage_hook = NULL;
	pull_target = NULL;
}

static struct ps_usb_board make_board(uint16_t pid)
{
	struct ps_usb_board b;

	memset(&b, 0, sizeof(b));
	b.vid = 0x0a5c;
	b.pid = pid;
	snprintf(b.port, sizeof(b.port), "1-4");
	snprintf(b.id_path, sizeof(b.id_path), "test-usb-0:4");
	return b;
}

/* A board in boot mode on slot brd's port: the slot shows it and runs its helper, then takes
 * the disk that appears on the same USB port; a board whose disk never comes, and one whose
 * helper fails, FAIL with the reason. */
static void test_boards(struct ps_station *st)
{
	struct ps_usb_board board = make_board(0x2711);
	struct ps_slot_view view;
	struct ps_disk disk;
	char cmd[2048], marker[1024] = "";
	FILE *f;
	int tries;

	f = fopen(path("helper.sh"), "w");
	if (f != NULL) {
		fprintf(f, "echo \"helper for port $1\"\necho \"$1\" > %s.tmp && mv %s.tmp %s\n",
			path("marker"), path("marker"), path("marker"));
		fclose(f);
	}
	snprintf(cmd, sizeof(cmd), "cp --sparse=always %s %s", path("b.img"), path("emmc.img"));
	ok(f != NULL && run(cmd) == 0, "a helper script, and an image for the board's disk");
	ok(wait_state(st, "brd", PS_SLOT_EMPTY, NULL), "slot brd is empty");

	/* 1. The helper runs, the disk appears on the same USB port. */
	ps_station_hotplug_event(st, PS_HOTPLUG_BOARD_ADDED, NULL, &board);
	ok(wait_log(st, "brd: board pi on port 1-4: running sh "), "the station runs the helper");
	for (tries = 0; tries < 200 && access(path("marker"), F_OK) != 0; tries++)
		usleep(100000);
	f = fopen(path("marker"), "r");
	if (f == NULL || fgets(marker, sizeof(marker), f) == NULL)
		marker[0] = '\0';
	if (f != NULL)
		fclose(f);
	is_str(marker, "1-4\n", "the helper ran with {port}, the board's USB port");
	ok(wait_log(st, "brd: helper: helper for port 1-4"), "its output is in the log");
	ok(slot_id(st, "brd") >= 0, "the slot is there");
	/* The board comes back as a disk: no ID_PATH matching the slot, but on the same port. */
	ps_station_hotplug_event(st, PS_HOTPLUG_BOARD_REMOVED, NULL, &board);
	fake_disk(&disk, "emmc.img", "");
	snprintf(disk.usb_port, sizeof(disk.usb_port), "1-4");
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_ADDED, &disk, NULL);
	ok(wait_state(st, "brd", PS_SLOT_WAITING_SERIAL, &view),
	   "the disk on the board's port becomes slot brd's disk: it waits for a serial");
	is_str(view.target, disk.node, "the slot's target is the board's disk");
	ok(wait_log(st, "brd: disk "), "the log says the disk appeared on the board's port");
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_CHANGED, &disk, NULL);
	ok(wait_state(st, "brd", PS_SLOT_WAITING_SERIAL, NULL), "a change keeps it in the slot");
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_REMOVED, &disk, NULL);
	ok(wait_state(st, "brd", PS_SLOT_EMPTY, NULL), "the disk leaves: empty");

	/* 2. The helper succeeds, no disk comes: FAIL after the board's timeout (1 s). */
	board = make_board(0x2712);
	ps_station_hotplug_event(st, PS_HOTPLUG_BOARD_ADDED, NULL, &board);
	ok(wait_state(st, "brd", PS_SLOT_FAIL, &view), "no disk after the helper: brd FAILs");
	is_str(view.message,
	       "board slow on port 1-4: no disk appeared within 1 s after the helper; check the "
	       "cable and the helper true",
	       "saying what was awaited and what to check");
	ok(wait_log(st, "brd: board slow on port 1-4: no disk appeared"), "and logs it");
	fake_disk(&disk, "emmc.img", "");
	snprintf(disk.usb_port, sizeof(disk.usb_port), "1-4");
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_ADDED, &disk, NULL);
	ok(wait_state(st, "brd", PS_SLOT_FAIL, NULL) && slot_id(st, disk.node) >= 0,
	   "a disk after the timeout is no longer the slot's: not a station slot");
	ps_station_hotplug_event(st, PS_HOTPLUG_DISK_REMOVED, &disk, NULL);
	ps_station_hotplug_event(st, PS_HOTPLUG_BOARD_REMOVED, NULL, &board);
	ok(wait_state(st, "brd", PS_SLOT_EMPTY, NULL), "the board unplugged: brd is empty");

	/* 3. The helper fails. */
	board = make_board(0x2713);
	ps_station_hotplug_event(st, PS_HOTPLUG_BOARD_ADDED, NULL, &board);
	ok(wait_state(st, "brd", PS_SLOT_FAIL, &view), "a failing helper: brd FAILs");
	contains(view.message, "board broken on port 1-4: the helper exited with status 3: echo",
		 "with the helper's exit status: %s", view.message);
	ok(wait_log(st, "brd: helper: no rpiboot here"), "its stderr is in the log");
	ps_station_hotplug_event(st, PS_HOTPLUG_BOARD_REMOVED, NULL, &board);
	ok(wait_state(st, "brd", PS_SLOT_EMPTY, NULL), "unplugged: empty");

	/* 4. A board on no slot's port: its helper does not run. */
	board = make_board(0x2711);
	snprintf(board.port, sizeof(board.port), "1-9");
	snprintf(board.id_path, sizeof(board.id_path), "test-usb-0:9");
	unlink(path("marker"));
	ps_station_hotplug_event(st, PS_HOTPLUG_BOARD_ADDED, NULL, &board);
	ok(wait_log(st, "board pi on port 1-9 (ID_PATH test-usb-0:9): not a station slot"),
	   "a board on no slot's port is logged as not a station slot");
	ok(!log_has(st, "board pi on port 1-9: running") && access(path("marker"), F_OK) != 0,
	   "and its helper does not run");
	ps_station_hotplug_event(st, PS_HOTPLUG_BOARD_REMOVED, NULL, &board);
}

/* Image-file slots with [station] slots_flash: flash, then personalize. */
static void flash_slots(struct ps_ca *ca, const char *srcdir)
{
	struct ps_config cfg;
	struct ps_station *st = NULL;
	struct ps_slot_view view;
	struct ps_verify_result vres;
	struct ps_db_filter filter = {.device_serial = "SN-0100"};
	struct audit_row row = {0};
	struct ps_err err = {""};
	struct ps_db *db = NULL;
	char text[2048], cmd[2048], sha[80] = "";
	struct stat sb;
	FILE *f;
	long seen = -1;
	int fd, lease;

	snprintf(cmd, sizeof(cmd),
		 "mkdir -p %s && %s/scripts/mkmenderimg.sh --size 64 %s >/dev/null", path("fslots"),
		 srcdir, path("g.img"));
	ok(run(cmd) == 0, "golden image built");
	snprintf(cmd, sizeof(cmd), "sha256sum %s | cut -c1-64 > %s && gzip -1 %s", path("g.img"),
		 path("g.sha"), path("g.img"));
	ok(run(cmd) == 0, "golden image built and compressed");
	f = fopen(path("g.sha"), "r");
	ok(f != NULL && fgets(sha, sizeof(sha), f) != NULL, "its SHA-256");
	if (f != NULL)
		fclose(f);
	sha[strcspn(sha, "\n")] = '\0';
	snprintf(text, sizeof(text),
		 "[station]\nid = test-station\ndatabase = %s\nslots_dir = %s\nhotplug = no\n"
		 "slots_flash = %s\n[device]\ncommon_name = {serial}.example.com\n",
		 path("audit.db"), path("fslots"), path("g.img.gz"));
	ok(ps_config_load_string(&cfg, text, "test", &err) == 0, "config with slots_flash: %s",
	   err.msg);
	ok(ps_station_open(&cfg, ca, &st, &err) == 0, "station opens: %s", err.msg);
	if (st == NULL) {
		ps_config_free(&cfg);
		return;
	}

	{
		char line[128];

		snprintf(line, sizeof(line), "golden image g.img.gz: sha256 %.16s...", sha);
		ok(wait_log(st, line), "at start the golden image is hashed for the cache (%s)",
		   line);
	}
	/* A placeholder file: its content does not matter, the golden image replaces it. */
	snprintf(cmd, sizeof(cmd), "echo placeholder > %s/dev-1.img", path("fslots"));
	ok(run(cmd) == 0, "a placeholder image file dropped in");
	ok(wait_state(st, "dev-1.img", PS_SLOT_WAITING_SERIAL, NULL), "it waits for a serial");
	/* A write lease on it: the job's open for writing waits until the lease goes, which
	 * holds the slot in FLASHING for as long as the test looks. */
	signal(SIGIO, SIG_IGN);
	fd = open(path("fslots/dev-1.img"), O_RDONLY);
	lease = fd >= 0 ? fcntl(fd, F_SETLEASE, F_WRLCK) : -1;
	ok(ps_station_submit_serial(st, -1, "SN-0100", false, &err) == 0, "serial submitted: %s",
	   err.msg);
	if (lease == 0) {
		ok(wait_state(st, "dev-1.img", PS_SLOT_FLASHING, &view), "the slot is FLASHING");
		ok(ps_slot_state_busy(view.state), "a busy state");
		is_str(view.message, "writing g.img.gz", "says what it writes");
		is_int(view.flash_phase, PS_FLASH_WRITING, "phase: writing");
		ok(log_has(st, "dev-1.img: provisioning SN-0100, flashing g.img.gz"), "logged");
		fcntl(fd, F_SETLEASE, F_UNLCK);
	} else {
		printf("ok %d - # SKIP the FLASHING state: no file lease here\n", ++tap_count);
	}
	if (fd >= 0)
		close(fd);
	ok(wait_state(st, "dev-1.img", PS_SLOT_PASS, &view), "then PASS: %s", view.message);
	is_str(view.common_name, "SN-0100.example.com", "personalized");
	ok(stat(path("fslots/dev-1.img"), &sb) == 0 && sb.st_size == 64 << 20,
	   "the file now has the image's size");
	is_int(view.size, 64 << 20, "and the slot shows it");
	ok(ps_verify(&cfg, ca, path("fslots/dev-1.img"), &vres, &err) == 0, "it verifies: %s",
	   err.msg);
	ok(log_has(st, "dev-1.img: flashed g.img.gz (64 MiB, "), "the log says what was flashed");
	ok(ps_db_open(path("audit.db"), &db, &err) == 0 &&
	       ps_db_each(db, &filter, keep_row, &row, &err) == 0,
	   "audit rows read: %s", err.msg);
	is_int(row.n, 1, "one row for SN-0100");
	is_str(row.state, "verified", "verified");
	is_str(row.image_name, "g.img.gz", "the row names the image");
	is_str(row.image_sha256, sha, "and its SHA-256 (of the decompressed image)");
	ps_db_close(db);

	/* The golden image goes bad: the slot FAILs and nothing is issued. */
	snprintf(cmd, sizeof(cmd),
		 "printf '\\377\\377\\377\\377\\377\\377\\377\\377' | "
		 "dd of=%s bs=1 seek=2000 conv=notrunc status=none && "
		 "echo placeholder > %s/dev-2.img",
		 path("g.img.gz"), path("fslots"));
	ok(run(cmd) == 0, "golden image corrupted, a second placeholder dropped in");
	ok(wait_state(st, "dev-2.img", PS_SLOT_WAITING_SERIAL, NULL), "it waits for a serial");
	ok(ps_station_submit_serial(st, -1, "SN-0101", false, &err) == 0, "serial submitted: %s",
	   err.msg);
	ok(wait_state(st, "dev-2.img", PS_SLOT_FAIL, &view), "the slot FAILs");
	contains(view.message, "cannot flash g.img.gz onto ", "because of the flash");
	contains(view.message, "is corrupt", "with the reason: %s", view.message);
	ok(ps_station_serial_seen(st, "SN-0101", &seen, &err) == 0 && seen == 0,
	   "no certificate was issued");
	ps_station_close(st);
	ps_config_free(&cfg);
}

/* A damaged audit database: the station refuses to start, naming the check that failed. */
static void damaged_database(struct ps_ca *ca)
{
	struct ps_config cfg;
	struct ps_station *st = NULL;
	struct ps_err err = {""};
	char text[1024], cmd[4096], audit[512], damaged[512];
	int rc;

	snprintf(audit, sizeof(audit), "%s", path("audit.db"));
	snprintf(damaged, sizeof(damaged), "%s", path("damaged.db"));
	/* The events table's root page gets a broken b-tree header. */
	snprintf(cmd, sizeof(cmd),
		 "sqlite3 %s \"VACUUM INTO '%s'\" && "
		 "python3 -c 'import sys; f = open(sys.argv[1], \"r+b\"); "
		 "f.seek((int(sys.argv[2]) - 1) * int(sys.argv[3])); f.write(b\"\\x0d\" + "
		 "b\"\\xff\" * 300)' %s "
		 "$(sqlite3 %s \"SELECT rootpage FROM sqlite_master WHERE name = 'events'\") "
		 "$(sqlite3 %s 'PRAGMA page_size')",
		 audit, damaged, damaged, damaged, damaged);
	ok(run(cmd) == 0, "a copy of the audit database, damaged");
	snprintf(text, sizeof(text), "[station]\nid = test-station\ndatabase = %s\nhotplug = no\n",
		 damaged);
	ok(ps_config_load_string(&cfg, text, "test", &err) == 0, "config: %s", err.msg);
	rc = ps_station_open(&cfg, ca, &st, &err);
	ok(rc == PS_EDB && st == NULL, "the station does not start on it (%d)", rc);
	contains(err.msg, "failed SQLite's integrity check (", "and says why: %s", err.msg);
	ps_station_close(st);
	ps_config_free(&cfg);
}

int main(void)
{
	struct ps_config cfg;
	struct ps_ca ca;
	struct ps_station *st = NULL;
	struct ps_slot_view view;
	struct ps_err err = {""};
	struct ps_ca_init_opts init = {.key_type = PS_KEY_P256, .days = 30};
	struct ps_station_counts counts;
	char text[2048], cmd[2048], lines[8][256];
	const char *srcdir = getenv("SRCDIR");
	uint64_t last = 0;
	long seen = 0;
	size_t n;
	int a, b;

	if (mkdtemp(root) == NULL || srcdir == NULL) {
		printf("1..0 # SKIP needs SRCDIR (run through make check)\n");
		return 0;
	}
	snprintf(cmd, sizeof(cmd),
		 "mkdir -p %s/slots && %s/scripts/mkmenderimg.sh --size 64 %s >/dev/null"
		 " && cp --sparse=always %s %s",
		 root, srcdir, path("a.img"), path("a.img"), path("b.img"));
	ok(run(cmd) == 0, "sample images built");
	init.dir = path("ca");
	ok(ps_ca_init(&init, &err) == 0 && ps_ca_load(&ca, init.dir, true, NULL, &err) == 0,
	   "CA: %s", err.msg);
	snprintf(text, sizeof(text),
		 "[station]\nid = test-station\ndatabase = %s\nslots_dir = %s\nhotplug = no\n"
		 "serial_pattern = ^SN-[0-9]{4}$\n[device]\ncommon_name = {serial}.example.com\n"
		 "[slot seq-a]\nports = test-port-a\nserial_source = sequence\n"
		 "serial_prefix = ABC-\n"
		 "[slot seq-b]\nports = test-port-b\nserial_source = sequence\n"
		 "serial_prefix = ABC-\n"
		 "[slot rig]\nports = /dev/loop*\nallow_fixed = yes\nserial_source = sequence\n"
		 "serial_prefix = RIG-\n"
		 "[slot brd]\nports = test-usb-0:4:1.0-*\n"
		 "[board pi]\nusb_id = 0a5c:2711\nhelper = sh %s {port}\ntimeout = 20\n"
		 "[board slow]\nusb_id = 0a5c:2712\nhelper = true\ntimeout = 1\n"
		 "[board broken]\nusb_id = 0a5c:2713\n"
		 "helper = echo 'no rpiboot here' >&2; exit 3\ntimeout = 20\n",
		 path("audit.db"), path("slots"), path("helper.sh"));
	ok(ps_config_load_string(&cfg, text, "test", &err) == 0, "config: %s", err.msg);
	ok(ps_station_open(&cfg, &ca, &st, &err) == 0, "station opens: %s", err.msg);
	is_int(ps_station_next_waiting(st), -1, "no slot waits yet");

	snprintf(cmd, sizeof(cmd), "mv %s %s/", path("a.img"), path("slots"));
	ok(run(cmd) == 0, "first image moved into the slots directory");
	ok(wait_state(st, "a.img", PS_SLOT_WAITING_SERIAL, &view), "a.img waits for a serial");
	ok(view.is_virtual, "it is a virtual slot");
	sleep(1); /* distinct waiting times */
	snprintf(cmd, sizeof(cmd), "cp --sparse=always %s %s/", path("b.img"), path("slots"));
	ok(run(cmd) == 0, "second image copied in");
	ok(wait_state(st, "b.img", PS_SLOT_WAITING_SERIAL, NULL), "b.img waits for a serial");
	a = slot_id(st, "a.img");
	b = slot_id(st, "b.img");
	is_int(ps_station_next_waiting(st), a, "the slot that waited longest is next");

	ok(ps_station_submit_serial(st, -1, "BAD", false, &err) == PS_EINVAL,
	   "a serial that misses the pattern is refused");
	contains(err.msg, "does not match the pattern", "says so");
	ok(ps_station_submit_serial(st, -1, "SN-0001", false, &err) == 0, "serial submitted: %s",
	   err.msg);
	ok(wait_state(st, "a.img", PS_SLOT_PASS, &view), "a.img PASSes");
	is_str(view.serial, "SN-0001", "slot shows the serial");
	is_str(view.common_name, "SN-0001.example.com", "slot shows the commonName");
	is_int(ps_station_next_waiting(st), b, "now b.img is next");

	ok(ps_station_serial_seen(st, "SN-0001", &seen, &err) == 0 && seen == 1,
	   "the audit database knows SN-0001");
	ok(ps_station_submit_serial(st, b, "SN-0001", false, &err) == PS_EEXIST,
	   "a serial seen before asks first");
	contains(err.msg, "provisioned before (1 certificate)", "says how often");
	ok(ps_station_submit_serial(st, b, "SN-0001", true, &err) == 0, "re-provision confirmed");
	ok(wait_state(st, "b.img", PS_SLOT_PASS, NULL), "b.img PASSes");

	ok(ps_station_reset(st, a, &err) == 0, "a finished virtual slot can be reset");
	ok(wait_state(st, "a.img", PS_SLOT_WAITING_SERIAL, NULL), "and waits again");

	snprintf(cmd, sizeof(cmd), "head -c 1048576 /dev/urandom > %s/corrupt.img", path("slots"));
	ok(run(cmd) == 0, "a corrupt image dropped in");
	ok(wait_state(st, "corrupt.img", PS_SLOT_WAITING_SERIAL, NULL), "it becomes a slot");
	ok(ps_station_submit_serial(st, slot_id(st, "corrupt.img"), "SN-0002", false, &err) == 0,
	   "serial submitted to the corrupt one");
	ok(wait_state(st, "corrupt.img", PS_SLOT_FAIL, &view), "corrupt.img FAILs");
	contains(view.message, "not a disk image", "with the reason");

	snprintf(cmd, sizeof(cmd), "rm %s/corrupt.img", path("slots"));
	ok(run(cmd) == 0, "corrupt image removed");
	{
		int tries;

		for (tries = 0; tries < 100 && slot_id(st, "corrupt.img") >= 0; tries++)
			usleep(50000);
		is_int(slot_id(st, "corrupt.img"), -1, "its slot is gone");
	}
	ps_station_counts(st, &counts);
	ok(counts.pass_today >= 2 && counts.fail_today >= 1 && counts.jobs_running == 0,
	   "counts: %ld pass, %ld fail, %ld running", counts.pass_today, counts.fail_today,
	   counts.jobs_running);
	n = ps_station_log(st, 0, lines, 8, &last);
	ok(n == 8 && last > 8, "the log returns the newest lines (%zu, last %llu)", n,
	   (unsigned long long)last);
	contains(lines[n - 1], "corrupt.img", "newest line is about the last event");
	test_sequence(st);
	test_pulled(st);
	test_boards(st);
	ps_station_close(st);
	ps_config_free(&cfg);
	damaged_database(&ca);
	flash_slots(&ca, srcdir);
	ps_ca_free(&ca);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	ok(run(cmd) == 0, "temporary files removed");
	return tap_done();
}
