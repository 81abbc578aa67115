/* test_station.c — the station core on virtual slots: image files appearing in the slots
 * directory become slots, a submitted serial runs a job on a worker thread to PASS, a
 * corrupt image FAILs with its reason, serial rules and field-service refusals, the
 * longest-waiting slot gets the next serial, and the log and counts follow. With
 * [station] slots_flash the job flashes the golden image first (FLASHING, held there by a
 * file lease on the target), then personalizes; the audit row names the image and its
 * SHA-256; a corrupt golden image FAILs the slot and issues nothing. */
#include "provision.h"
#include "station.h"
#include "tap.h"
#include "util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
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

/* True when the station's log holds a line containing needle. */
static bool logged(struct ps_station *st, const char *needle)
{
	static char lines[256][256];
	uint64_t last;
	size_t n = ps_station_log(st, 0, lines, 256, &last), i;

	for (i = 0; i < n; i++)
		if (strstr(lines[i], needle) != NULL)
			return true;
	return false;
}

struct audit_row {
	long n;
	char state[32], image_name[256], image_sha256[65];
};

static int keep_row(const struct ps_cert_row *row, void *user)
{
	struct audit_row *r = user;

	r->n++;
	snprintf(r->state, sizeof(r->state), "%s", row->state);
	snprintf(r->image_name, sizeof(r->image_name), "%s", row->image_name);
	snprintf(r->image_sha256, sizeof(r->image_sha256), "%s", row->image_sha256);
	return 0;
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
		ok(logged(st, "dev-1.img: provisioning SN-0100, flashing g.img.gz"), "logged");
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
	ok(ps_verify(&cfg, ca, path("fslots/dev-1.img"), &vres, &err) == 0, "it verifies: %s",
	   err.msg);
	ok(logged(st, "dev-1.img: flashed g.img.gz (64 MiB, "), "the log says what was flashed");
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
		 "serial_pattern = ^SN-[0-9]{4}$\n[device]\ncommon_name = {serial}.example.com\n",
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
	ps_station_close(st);
	ps_config_free(&cfg);
	flash_slots(&ca, srcdir);
	ps_ca_free(&ca);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	ok(run(cmd) == 0, "temporary files removed");
	return tap_done();
}
