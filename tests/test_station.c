/* test_station.c — the station core on virtual slots: image files appearing in the slots
 * directory become slots, a submitted serial runs a job on a worker thread to PASS, a
 * corrupt image FAILs with its reason, serial rules and field-service refusals, the
 * longest-waiting slot gets the next serial, and the log and counts follow; slots whose
 * serials come from a sequence, fed injected hotplug events. */
#include "station.h"
#include "tap.h"
#include "util.h"

#include <poll.h>
#include <stdlib.h>
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
		 "serial_prefix = ABC-\n",
		 path("audit.db"), path("slots"));
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
	ps_station_close(st);
	ps_config_free(&cfg);
	ps_ca_free(&ca);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	ok(run(cmd) == 0, "temporary files removed");
	return tap_done();
}
