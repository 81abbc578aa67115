/* station.c — the station core (see station.h): the slot table, virtual slots watched in a
 * directory (inotify), disks and boards from the hotplug backend, one worker thread per job,
 * and the event fd plus log ring a front end reads. One mutex guards all shared state; jobs
 * run the provisioning pipeline without holding it. */
#include "station.h"
#include "hotplug.h"
#include "preauth.h"
#include "provision.h"
#include "safety.h"
#include "sequence.h"
#include "slotmatch.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#define LOG_LINES 256
/* Flash progress wakes the front end at most this often per slot (and at phase changes). */
#define PROGRESS_NOTIFY_MS 250

struct slot {
	struct ps_slot_view view;
	bool in_use;			   /* the table entry is a slot */
	const struct ps_slot_config *conf; /* NULL for virtual and unlisted disks */
	bool job_running;
	bool removed;	      /* the device left while a job ran on it */
	bool reprovision;     /* the operator confirmed a serial seen before */
	time_t waiting_since; /* when it started to wait for a serial */
	/* A board in a boot mode on the slot's port: its helper runs, then the disk that appears
	 * on the same USB port becomes the slot's disk (see "boards" below). */
	struct ps_usb_board board;
	uint64_t board_wait; /* nonzero while the slot waits for the board's disk */
	bool board_disk;     /* the slot's disk came from a board (its ID_PATH may match no port) */
};

struct ps_station {
	const struct ps_config *cfg;
	struct ps_ca *ca;
	struct ps_db *ui_db;
	regex_t serial_re;
	bool have_serial_re;

	pthread_mutex_t lock;
	pthread_cond_t jobs_done;
	struct slot slots[PS_MAX_SLOTS];
	int next_id;
	long jobs_running;
	long pass_today, fail_today;
	char log[LOG_LINES][256];
	uint64_t log_seq; /* sequence number of the newest line */

	int event_fd;
	int stop_pipe[2];
	int inotify_fd;
	struct ps_hotplug *hotplug;
	pthread_t watcher;
	bool watcher_started;
	pthread_cond_t board_cond; /* a board's wait ended, a helper finished, or closing */
	uint64_t board_waits;	   /* numbers the waits for boards' disks */
	long helpers_running;
	bool closing;
	struct ps_preauth_worker *preauth; /* NULL when [preauth] is off */
	pthread_t prehash; /* hashes the golden images at start (see prehash_main) */
	bool prehash_started;
	atomic_bool prehash_stop;
};

const char *ps_slot_state_name(enum ps_slot_state state)
{
	static const char *const names[] = {
	    [PS_SLOT_EMPTY] = "empty",
	    [PS_SLOT_DETECTED] = "detected",
	    [PS_SLOT_WAITING_SERIAL] = "waiting for serial",
	    [PS_SLOT_WAITING_CONFIRM] = "waiting for confirm",
	    [PS_SLOT_FLASHING] = "flashing",
	    [PS_SLOT_PERSONALIZING] = "personalizing",
	    [PS_SLOT_VERIFYING] = "verifying",
	    [PS_SLOT_PREAUTH_QUEUED] = "preauthorization queued",
	    [PS_SLOT_PASS] = "PASS",
	    [PS_SLOT_FAIL] = "FAIL",
	    [PS_SLOT_NOT_A_SLOT] = "not a station slot",
	};

	if ((size_t)state < PS_ARRAY_SIZE(names) && names[state] != NULL)
		return names[state];
	return "?";
}

bool ps_slot_state_busy(enum ps_slot_state state)
{
	return state == PS_SLOT_FLASHING || state == PS_SLOT_PERSONALIZING ||
	       state == PS_SLOT_VERIFYING;
}

/* Wake the front end. Called with or without the lock. */
static void notify(struct ps_station *st)
{
	uint64_t one = 1;

	if (write(st->event_fd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
		/* nothing to do: the front end polls with a timeout as well */
	}
}

/* Append a line to the log ring. Called with the lock held. */
static void log_locked(struct ps_station *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_locked(struct ps_station *st, const char *fmt, ...)
{
	char stamp[32];
	char *line;
	struct tm tm;
	time_t now = ps_now();
	va_list ap;
	int n;

	st->log_seq++;
	line = st->log[st->log_seq % LOG_LINES];
	localtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
	n = snprintf(line, sizeof(st->log[0]), "%s ", stamp);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(st->log[0]) - (size_t)n, fmt, ap);
	va_end(ap);
	notify(st);
}

/* Move a slot to a state. Called with the lock held. */
static void set_state(struct ps_station *st, struct slot *slot, enum ps_slot_state state,
		      const char *message)
{
	slot->view.state = state;
	slot->view.since = ps_now();
	slot->view.generation++;
	slot->view.progress = -1;
	slot->view.rate = 0;
	slot->view.eta = -1;
	snprintf(slot->view.message, sizeof(slot->view.message), "%s", message ? message : "");
	if (state == PS_SLOT_WAITING_SERIAL)
		slot->waiting_since = slot->view.since;
	notify(st);
}

/* Copy src into dst of size len; false (and dst empty) when it does not fit. */
static bool copy_str(char *dst, size_t len, const char *src)
{
	size_t n = strlen(src);

	if (n >= len) {
		dst[0] = '\0';
		return false;
	}
	memcpy(dst, src, n + 1);
	return true;
}

static struct slot *slot_by_id(struct ps_station *st, int id)
{
	int i;

	for (i = 0; i < PS_MAX_SLOTS; i++)
		if (st->slots[i].in_use && st->slots[i].view.id == id)
			return &st->slots[i];
	return NULL;
}

static struct slot *slot_by_target(struct ps_station *st, const char *target)
{
	int i;

	for (i = 0; i < PS_MAX_SLOTS; i++)
		if (st->slots[i].in_use && strcmp(st->slots[i].view.target, target) == 0)
			return &st->slots[i];
	return NULL;
}

static struct slot *new_slot(struct ps_station *st, const char *name)
{
	int i;

	for (i = 0; i < PS_MAX_SLOTS; i++) {
		struct slot *slot = &st->slots[i];

		if (slot->in_use)
			continue;
		memset(slot, 0, sizeof(*slot));
		slot->in_use = true;
		slot->view.id = st->next_id++;
		slot->view.progress = -1;
		slot->view.eta = -1;
		slot->view.since = ps_now();
		snprintf(slot->view.name, sizeof(slot->view.name), "%s", name);
		return slot;
	}
	return NULL;
}

/* ---- jobs ---------------------------------------------------------------------------- */

struct job {
	struct ps_station *st;
	int slot_id;
	char target[1024];
	char serial[PS_SERIAL_MAX + 1];
	struct ps_safety_policy safety;
	bool is_slot;
	/* The golden image flashed first (configuration strings: they outlive the job), or NULL */
	const char *flash_image, *flash_bmap;
	double flash_notified;	     /* when its progress last woke the front end */
	const char *sequence_prefix; /* the serial comes from this sequence, or NULL */
	/* The target as the job found it, to tell afterwards whether the card left. */
	bool target_known;
	struct stat target_st;
	char target_size[32]; /* a block device's size in sysfs */
};

void (*ps_station_stage_hook)(int stage, const char *target);

static double monotonic(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The golden image of a slot: its [slot] flash, or [station] slots_flash for image files. */
static void job_flash_setup(struct ps_station *st, const struct slot *slot, struct job *job)
{
	const char *image = slot->conf != NULL	    ? slot->conf->flash
			    : slot->view.is_virtual ? st->cfg->slots_flash
						    : NULL;
	const char *bmap = slot->conf != NULL	   ? slot->conf->bmap
			   : slot->view.is_virtual ? st->cfg->slots_bmap
						   : NULL;

	job->flash_image = image != NULL && image[0] != '\0' ? image : NULL;
	job->flash_bmap = job->flash_image != NULL && bmap != NULL && bmap[0] != '\0' ? bmap : NULL;
}

/* The state a job starts in, and its log line. Called with the lock held. */
static void job_first_state(struct ps_station *st, struct slot *slot, const char *flash_image,
			    const char *sequence_prefix)
{
	char msg[sizeof(slot->view.message)];

	log_locked(st, "%s: provisioning %s%s%s%s%s", slot->view.name, slot->view.serial,
		   sequence_prefix ? "the next serial of sequence " : "",
		   sequence_prefix ? sequence_prefix : "", flash_image ? ", flashing " : "",
		   flash_image ? ps_base_name(flash_image) : "");
	if (flash_image == NULL) {
		set_state(st, slot, PS_SLOT_PERSONALIZING, "issuing the device identity");
		return;
	}
	snprintf(msg, sizeof(msg), "writing %s", ps_base_name(flash_image));
	set_state(st, slot, PS_SLOT_FLASHING, msg);
	slot->view.flash_phase = PS_FLASH_WRITING;
	slot->view.flash_done = slot->view.flash_total = 0;
}

/* Flash progress, from the flashing threads: always kept in the slot's view, but the front
 * end is woken only at a phase change or once PROGRESS_NOTIFY_MS have passed. */
static void job_flash_progress(const char *target, const struct ps_flash_progress *p, void *user)
{
	struct job *job = user;
	struct ps_station *st = job->st;
	struct slot *slot;
	double t = monotonic();

	(void)target;
	if (p->phase != PS_FLASH_WRITING && p->phase != PS_FLASH_VERIFYING)
		return; /* done or failed: the job's next state says so */
	pthread_mutex_lock(&st->lock);
	slot = slot_by_id(st, job->slot_id);
	if (slot != NULL && slot->view.state == PS_SLOT_FLASHING) {
		struct ps_slot_view *v = &slot->view;
		bool phase_changed = v->flash_phase != p->phase;

		if (phase_changed)
			snprintf(v->message, sizeof(v->message), "%s %s",
				 p->phase == PS_FLASH_VERIFYING ? "reading back" : "writing",
				 ps_base_name(job->flash_image));
		v->flash_phase = p->phase;
		v->flash_done = p->done;
		v->flash_total = p->total;
		v->progress = p->total > 0 ? (double)p->done / (double)p->total : -1;
		if (v->progress > 1)
			v->progress = 1;
		v->rate = p->rate;
		v->eta = p->eta;
		v->generation++;
		if (phase_changed || t - job->flash_notified >= PROGRESS_NOTIFY_MS / 1000.0) {
			job->flash_notified = t;
			notify(st);
		}
	}
	pthread_mutex_unlock(&st->lock);
}

/* The station log's line about the flash. Called with the lock held. */
static void log_flash(struct ps_station *st, const char *name, const struct ps_flash_result *f)
{
	double rate = f->write_seconds > 0 ? (double)f->bytes_written / f->write_seconds : 0;

	if (f->status != 0)
		return; /* the FAIL line has the reason */
	log_locked(st, "%s: flashed %s (%.0f MiB, %.1f MB/s, %s), sha256 %.16s...", name,
		   f->image_name, (double)f->bytes_written / (1 << 20), rate / 1e6,
		   f->verified ? "verified" : "not verified", f->image_sha256);
}

static void job_observer(enum ps_stage stage, void *user)
{
	struct job *job = user;
	struct ps_station *st = job->st;
	struct slot *slot;

	pthread_mutex_lock(&st->lock);
	slot = slot_by_id(st, job->slot_id);
	if (slot != NULL && stage == PS_STAGE_ISSUING && slot->view.state == PS_SLOT_FLASHING)
		set_state(st, slot, PS_SLOT_PERSONALIZING, "issuing the device identity");
	else if (slot != NULL && stage == PS_STAGE_WRITING)
		set_state(st, slot, PS_SLOT_PERSONALIZING, "writing key, certificate, mender.conf");
	else if (slot != NULL && stage == PS_STAGE_VERIFYING)
		set_state(st, slot, PS_SLOT_VERIFYING, "reading everything back");
	else if (slot != NULL && stage == PS_STAGE_DONE && st->preauth != NULL)
		/* Verified, and queued: the worker's outcome (never earlier than this) moves the
		 * slot on to PASS or FAIL. */
		set_state(st, slot, PS_SLOT_PREAUTH_QUEUED,
			  "remove the card; preauthorization queued");
	pthread_mutex_unlock(&st->lock);
	if (ps_station_stage_hook != NULL)
		ps_station_stage_hook((int)stage, job->target);
}

/* ---- a card pulled during a job ---------------------------------------------------------- */

/* A block device's size in sysfs (512-byte sectors, as text), "" when sysfs has none. */
static void block_size_text(dev_t rdev, char *out, size_t len)
{
	char path[64];
	FILE *f;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/size", major(rdev), minor(rdev));
	out[0] = '\0';
	f = fopen(path, "re");
	if (f != NULL) {
		if (fgets(out, (int)len, f) == NULL)
			out[0] = '\0';
		fclose(f);
	}
	out[strcspn(out, "\n")] = '\0';
}

static void note_target(struct job *job)
{
	job->target_known = stat(job->target, &job->target_st) == 0;
	if (job->target_known && S_ISBLK(job->target_st.st_mode))
		block_size_text(job->target_st.st_rdev, job->target_size, sizeof(job->target_size));
}

/* True when the job's target is no longer what the job found: the file or device node is
 * gone or is another one, or the block device finds no medium when opened (the open makes
 * the kernel check a removable disk's medium) or changed size (a card reader's disk shows 0
 * once the card is out; a detached loop device too). */
static bool target_left(const struct job *job)
{
	struct stat now;
	char size[32];
	int fd;

	if (!job->target_known)
		return false;
	if (stat(job->target, &now) != 0)
		return errno == ENOENT || errno == ENODEV || errno == ENXIO;
	if (S_ISREG(job->target_st.st_mode))
		return !S_ISREG(now.st_mode) || now.st_ino != job->target_st.st_ino ||
		       now.st_dev != job->target_st.st_dev;
	if (!S_ISBLK(now.st_mode) || now.st_rdev != job->target_st.st_rdev)
		return true;
	fd = open(job->target, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOMEDIUM || errno == ENXIO || errno == ENODEV || errno == ENOENT;
	close(fd);
	block_size_text(now.st_rdev, size, sizeof(size));
	return strcmp(size, job->target_size) != 0;
}

/* A job failed: when its card left the slot during the job (the removal was reported, or the
 * target is gone or changed now), the reason says so, followed by the error the removal
 * caused, on the slot, in the log and in the audit row. An I/O error on a block device waits
 * up to 2 s for the kernel and udev to tell a pulled card. */
static void explain_removal(struct job *job, struct ps_db *db, int64_t audit_id, int rc,
			    struct ps_err *err)
{
	struct ps_station *st = job->st;
	struct ps_audit_context ctx = {st->cfg->station_id, st->cfg->operator_name, st->cfg->batch,
				       st->ca->fingerprint};
	struct ps_err why = {""};
	char name[64], reason[sizeof(err->msg)];
	bool removed = false, is_virtual = false;
	int tries;

	snprintf(name, sizeof(name), "%.63s", job->target);
	for (tries = 0;; tries++) {
		struct slot *slot;

		pthread_mutex_lock(&st->lock);
		slot = slot_by_id(st, job->slot_id);
		if (slot != NULL) {
			removed = slot->removed;
			is_virtual = slot->view.is_virtual;
			snprintf(name, sizeof(name), "%s", slot->view.name);
		}
		pthread_mutex_unlock(&st->lock);
		if (!removed)
			removed = target_left(job);
		if (removed || rc != PS_EIO || !job->target_known ||
		    !S_ISBLK(job->target_st.st_mode) || tries == 20)
			break;
		usleep(100000);
	}
	if (!removed)
		return;
	snprintf(reason, sizeof(reason), "%s removed from slot %s during the job: %.*s",
		 is_virtual ? "image file" : "card", name, (int)(sizeof(reason) / 2), err->msg);
	memcpy(err->msg, reason, sizeof(err->msg));
	if (audit_id > 0 && ps_db_restate_failure(db, audit_id, err->msg, &ctx, &why) < 0) {
		pthread_mutex_lock(&st->lock);
		log_locked(st, "%s: audit row %lld keeps its first reason: %s", name,
			   (long long)audit_id, why.msg);
		pthread_mutex_unlock(&st->lock);
	}
}

/* A slot with serial_source = sequence: reserve the next serial in the audit database (on the
 * job's thread and connection: the allocation is one durable transaction, safe against other
 * slots and other processes), and show it on the slot. */
static int take_sequence_serial(struct job *job, struct ps_db *db, struct ps_err *err)
{
	struct ps_station *st = job->st;
	struct ps_audit_context ctx = {st->cfg->station_id, st->cfg->operator_name, st->cfg->batch,
				       st->ca->fingerprint};
	struct slot *slot;
	int rc = ps_db_next_serial(db, job->sequence_prefix, &ctx, job->target, job->serial,
				   sizeof(job->serial), err);

	pthread_mutex_lock(&st->lock);
	slot = slot_by_id(st, job->slot_id);
	if (rc == 0 && slot != NULL) {
		snprintf(slot->view.serial, sizeof(slot->view.serial), "%s", job->serial);
		slot->view.generation++;
		log_locked(st, "%s: serial %s from the sequence", slot->view.name, job->serial);
	}
	pthread_mutex_unlock(&st->lock);
	return rc;
}

static void *run_job(void *arg)
{
	struct job *job = arg;
	struct ps_station *st = job->st;
	struct ps_provision_request req = {
	    .cfg = st->cfg,
	    .target = job->target,
	    .serial = job->serial,
	    .ca = st->ca,
	    .target_is_slot = job->is_slot,
	    .safety = job->safety,
	    .observer = job_observer,
	    .observer_user = job,
	    .preauth = st->cfg->preauth_enabled,
	    .flash_image = job->flash_image,
	    .flash_bmap = job->flash_bmap,
	    .flash_progress = job_flash_progress,
	    .flash_progress_user = job,
	};
	struct ps_provision_result res;
	struct ps_err err = {""};
	struct ps_db *db = NULL;
	struct slot *slot;
	int rc;

	memset(&res, 0, sizeof(res));
	note_target(job);
	rc = ps_db_open(st->cfg->database, &db, &err);
	if (rc == 0 && job->sequence_prefix != NULL)
		rc = take_sequence_serial(job, db, &err);
	if (rc == 0) {
		req.db = db;
		rc = ps_provision(&req, &res, &err);
		if (rc < 0)
			explain_removal(job, db, res.audit_id, rc, &err);
	}
	ps_db_close(db);

	pthread_mutex_lock(&st->lock);
	slot = slot_by_id(st, job->slot_id);
	if (res.flashed)
		log_flash(st, slot ? slot->view.name : job->target, &res.flash);
	/* An image file now holds the golden image: show its new size. */
	if (slot != NULL && slot->view.is_virtual && res.flashed && res.flash.status == 0 &&
	    res.flash.image_size > 0)
		slot->view.size = res.flash.image_size;
	if (rc == 0) {
		st->pass_today++;
		log_locked(st, "PASS %s: %s, %s, cert %s", slot ? slot->view.name : job->target,
			   job->serial, res.common_name, res.cert_serial);
	} else {
		st->fail_today++;
		log_locked(st, "FAIL %s: %s: %s", slot ? slot->view.name : job->target, job->serial,
			   err.msg);
	}
	if (slot != NULL) {
		slot->job_running = false;
		if (rc == 0)
			snprintf(slot->view.common_name, sizeof(slot->view.common_name), "%s",
				 res.common_name);
		if (slot->removed) {
			/* The device left during the job: the slot goes back to empty. */
			log_locked(st, "%s: removed during the job", slot->view.name);
			if (slot->conf != NULL) {
				memset(slot->view.target, 0, sizeof(slot->view.target));
				slot->removed = false;
				set_state(st, slot, PS_SLOT_EMPTY, "");
			} else {
				slot->in_use = false;
			}
		} else if (rc == 0 && st->preauth == NULL) {
			set_state(st, slot, PS_SLOT_PASS, "remove the card");
		} else if (rc == 0) {
			/* PREAUTH_QUEUED since the observer's DONE, or PASS/FAIL already when the
			 * worker was quicker: leave it to the worker's outcome. */
		} else {
			set_state(st, slot, PS_SLOT_FAIL, err.msg);
		}
	}
	st->jobs_running--;
	pthread_cond_broadcast(&st->jobs_done);
	notify(st);
	pthread_mutex_unlock(&st->lock);
	if (rc == 0)
		ps_preauth_worker_wake(st->preauth); /* NULL is fine */
	free(job);
	return NULL;
}

/* At start, the SHA-256 of every golden image the slots flash goes into the image hash cache
 * (beside the audit database), so that even the first card of the day is flashed without
 * hashing the whole image; each image is logged with its SHA-256 for the operator. */
static void *prehash_main(void *arg)
{
	struct ps_station *st = arg;
	const struct ps_config *cfg = st->cfg;
	const char *images[PS_MAX_CONFIG_SLOTS + 1];
	char cache[PATH_MAX], sha[65];
	int n = 0, i, k;

	if (ps_sibling_path(cfg->database, PS_IMAGE_HASH_CACHE, cache, sizeof(cache)) < 0)
		return NULL;
	if (cfg->slots_flash[0] != '\0')
		images[n++] = cfg->slots_flash;
	for (i = 0; i < cfg->n_slots; i++) {
		const char *image = cfg->slots[i].flash;

		for (k = 0; k < n && strcmp(images[k], image) != 0; k++)
			;
		if (image[0] != '\0' && k == n)
			images[n++] = image;
	}
	for (i = 0; i < n && !atomic_load(&st->prehash_stop); i++) {
		struct ps_err err = {""};
		bool cached = false;
		double t0 = monotonic();
		int rc =
		    ps_flash_hash_image(images[i], cache, &st->prehash_stop, sha, &cached, &err);

		pthread_mutex_lock(&st->lock);
		if (rc == 0 && cached)
			log_locked(st, "golden image %s: sha256 %.16s... (known)",
				   ps_base_name(images[i]), sha);
		else if (rc == 0)
			log_locked(st, "golden image %s: sha256 %.16s... (hashed in %.1f s)",
				   ps_base_name(images[i]), sha, monotonic() - t0);
		else if (!atomic_load(&st->prehash_stop))
			log_locked(st, "golden image %s: %s", ps_base_name(images[i]), err.msg);
		pthread_mutex_unlock(&st->lock);
	}
	return NULL;
}

/* Start a job on slot. Called with the lock held. */
static int start_job(struct ps_station *st, struct slot *slot, struct ps_err *err)
{
	struct job *job = calloc(1, sizeof(*job));
	const char *flash_image, *sequence_prefix;
	pthread_attr_t attr;
	pthread_t thread;
	int rc;

	if (job == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	job->st = st;
	job->slot_id = slot->view.id;
	job->is_slot = slot->conf != NULL || slot->view.is_virtual;
	job->safety.allow_fixed = slot->conf != NULL && slot->conf->allow_fixed;
	copy_str(job->target, sizeof(job->target), slot->view.target);
	snprintf(job->serial, sizeof(job->serial), "%s", slot->view.serial);
	job_flash_setup(st, slot, job);
	if (slot->view.serial[0] == '\0' && slot->conf != NULL &&
	    slot->conf->serial_source == PS_SERIAL_SEQUENCE)
		job->sequence_prefix = slot->conf->serial_prefix;
	/* job belongs to its thread once started */
	flash_image = job->flash_image;
	sequence_prefix = job->sequence_prefix;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&thread, &attr, run_job, job);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		free(job);
		return ps_fail(err, PS_ENOMEM, "cannot start a job: %s", strerror(rc));
	}
	slot->job_running = true;
	slot->view.common_name[0] = '\0';
	st->jobs_running++;
	job_first_state(st, slot, flash_image, sequence_prefix);
	return 0;
}

/* ---- slots coming and going ---------------------------------------------------------- */

static bool is_image_name(const char *name)
{
	static const char *const suffixes[] = {".img",	  ".sdimg",   ".uefiimg",
					       ".gptimg", ".biosimg", ".wic"};
	size_t len = strlen(name), i;

	if (name[0] == '.')
		return false;
	for (i = 0; i < PS_ARRAY_SIZE(suffixes); i++) {
		size_t n = strlen(suffixes[i]);

		if (len > n && strcmp(name + len - n, suffixes[i]) == 0)
			return true;
	}
	return false;
}

/* An image file appeared in the slots directory. Called with the lock held. */
static void virtual_added(struct ps_station *st, const char *name)
{
	char path[PATH_MAX];
	struct slot *slot;
	struct stat sb;

	if (!is_image_name(name) ||
	    snprintf(path, sizeof(path), "%s/%s", st->cfg->slots_dir, name) >= (int)sizeof(path) ||
	    stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || slot_by_target(st, path) != NULL)
		return;
	slot = new_slot(st, name);
	if (slot == NULL) {
		log_locked(st, "%s: no free slot (at most %d)", name, PS_MAX_SLOTS);
		return;
	}
	slot->view.is_virtual = true;
	slot->view.size = (uint64_t)sb.st_size;
	copy_str(slot->view.target, sizeof(slot->view.target), path);
	snprintf(slot->view.vendor, sizeof(slot->view.vendor), "image file");
	set_state(st, slot, PS_SLOT_WAITING_SERIAL, "scan or type the serial");
	log_locked(st, "%s: image file detected", name);
}

static void virtual_removed(struct ps_station *st, const char *name)
{
	char path[PATH_MAX];
	struct slot *slot;

	if (snprintf(path, sizeof(path), "%s/%s", st->cfg->slots_dir, name) >= (int)sizeof(path))
		return;
	slot = slot_by_target(st, path);
	if (slot == NULL)
		return;
	log_locked(st, "%s: image file removed", slot->view.name);
	if (slot->job_running)
		slot->removed = true;
	else
		slot->in_use = false;
	notify(st);
}

static struct slot *slot_for_config(struct ps_station *st, const struct ps_slot_config *conf)
{
	int i;

	for (i = 0; i < PS_MAX_SLOTS; i++)
		if (st->slots[i].in_use && st->slots[i].conf == conf)
			return &st->slots[i];
	return NULL;
}

/* ---- boards in a boot mode ------------------------------------------------------------- */
/* A USB board of a [board NAME] appears on a slot's port: the slot shows it, its helper runs
 * on a thread of its own (/bin/sh -c, output into the log), then the slot waits for the disk
 * that appears on the same USB port, at most the board's timeout. */

struct helper_job {
	struct ps_station *st;
	int slot_id;
	uint64_t wait;
	char slot[64], board[64], port[64];
	char command[2048];
	long timeout;
};

static long ms_until(const struct timespec *deadline)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long)(deadline->tv_sec - now.tv_sec) * 1000 +
	       (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

/* Log a line of the helper's output, control characters shown as '?'. */
static void helper_line(struct helper_job *hj, char *line)
{
	char *p;

	for (p = line; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	pthread_mutex_lock(&hj->st->lock);
	log_locked(hj->st, "%s: helper: %s", hj->slot, line);
	pthread_mutex_unlock(&hj->st->lock);
}

/* Run the helper: /bin/sh -c COMMAND in a process group of its own, stdin /dev/null, stdout
 * and stderr line by line into the log. It is killed (the whole group) when it runs longer
 * than the board's timeout (*killed) or the station closes. *status: waitpid's. */
static int run_helper(struct helper_job *hj, int *status, bool *killed, struct ps_err *err)
{
	char sh[] = "/bin/sh", dash_c[] = "-c";
	char *argv[] = {sh, dash_c, hj->command, NULL};
	posix_spawn_file_actions_t actions;
	posix_spawnattr_t attr;
	struct timespec deadline;
	sigset_t none, defaults;
	char buf[4096];
	size_t used = 0;
	bool exited = false, open_pipe = true;
	int pipefd[2], rc;
	pid_t pid;

	*killed = false;
	if (pipe2(pipefd, O_CLOEXEC) != 0)
		return ps_fail(err, PS_EIO, "cannot run the helper: %s", strerror(errno));
	sigemptyset(&none);
	sigemptyset(&defaults);
	sigaddset(&defaults, SIGPIPE);
	sigaddset(&defaults, SIGINT);
	sigaddset(&defaults, SIGTERM);
	sigaddset(&defaults, SIGCHLD);
	posix_spawn_file_actions_init(&actions);
	posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
	posix_spawn_file_actions_adddup2(&actions, pipefd[1], 2);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setpgroup(&attr, 0);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &defaults);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
					    POSIX_SPAWN_SETSIGDEF);
	rc = posix_spawn(&pid, "/bin/sh", &actions, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&actions);
	posix_spawnattr_destroy(&attr);
	close(pipefd[1]);
	if (rc != 0) {
		close(pipefd[0]);
		return ps_fail(err, PS_EIO, "cannot run /bin/sh: %s", strerror(rc));
	}
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += hj->timeout;
	while (open_pipe || !exited) {
		struct pollfd fds[2] = {{hj->st->stop_pipe[0], POLLIN, 0},
					{open_pipe ? pipefd[0] : -1, POLLIN, 0}};
		long left = ms_until(&deadline);
		ssize_t n;
		char *nl;

		if (!exited && waitpid(pid, status, WNOHANG) == pid)
			exited = true;
		if (left <= 0 || poll(fds, 2, exited ? 0 : (left < 200 ? (int)left : 200)) < 0 ||
		    fds[0].revents) {
			if (!exited) {
				kill(-pid, SIGKILL);
				waitpid(pid, status, 0);
				*killed = true;
			}
			break;
		}
		if (fds[1].revents == 0) {
			if (exited)
				break; /* nothing more: what it left running keeps no pipe of ours
					*/
			continue;
		}
		n = read(pipefd[0], buf + used, sizeof(buf) - 1 - used);
		if (n <= 0) {
			open_pipe = n < 0 && errno == EINTR;
			continue;
		}
		used += (size_t)n;
		buf[used] = '\0';
		while ((nl = strchr(buf, '\n')) != NULL) {
			*nl = '\0';
			helper_line(hj, buf);
			used -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, used + 1);
		}
		if (used == sizeof(buf) - 1) {
			helper_line(hj, buf);
			used = 0;
		}
	}
	if (used > 0) {
		buf[used] = '\0';
		helper_line(hj, buf);
	}
	close(pipefd[0]);
	return 0;
}

/* The slot still waiting for the disk of hj's board, or NULL. Called with the lock held. */
static struct slot *board_waiter(struct ps_station *st, const struct helper_job *hj)
{
	struct slot *slot = slot_by_id(st, hj->slot_id);

	return slot != NULL && slot->board_wait == hj->wait ? slot : NULL;
}

/* Fail a board's slot with why, once. Called with the lock held. */
static void board_failed(struct ps_station *st, struct slot *slot, const char *why)
{
	slot->board_wait = 0;
	set_state(st, slot, PS_SLOT_FAIL, why);
	log_locked(st, "%s: %s", slot->view.name, why);
}

static void *run_board(void *arg)
{
	struct helper_job *hj = arg;
	struct ps_station *st = hj->st;
	struct ps_err err = {""};
	char why[1024] = "", msg[256];
	struct timespec deadline;
	struct slot *slot;
	bool killed = false;
	int status = 0;

	if (hj->command[0] != '\0') {
		if (run_helper(hj, &status, &killed, &err) < 0)
			snprintf(why, sizeof(why), "board %s on port %s: %.300s: %.400s", hj->board,
				 hj->port, err.msg, hj->command);
		else if (killed)
			snprintf(why, sizeof(why),
				 "board %s on port %s: the helper did not finish within %ld s and "
				 "was stopped: %.400s",
				 hj->board, hj->port, hj->timeout, hj->command);
		else if (WIFSIGNALED(status))
			snprintf(why, sizeof(why),
				 "board %s on port %s: the helper was killed by signal %d: %.400s",
				 hj->board, hj->port, WTERMSIG(status), hj->command);
		else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
			snprintf(why, sizeof(why),
				 "board %s on port %s: the helper exited with status %d: %.400s",
				 hj->board, hj->port, WEXITSTATUS(status), hj->command);
	}
	pthread_mutex_lock(&st->lock);
	slot = board_waiter(st, hj);
	if (slot != NULL && why[0] != '\0' && !st->closing) {
		board_failed(st, slot, why);
	} else if (slot != NULL && !st->closing) {
		if (hj->command[0] != '\0') {
			log_locked(st, "%s: the helper of board %s finished", hj->slot, hj->board);
			snprintf(
			    msg, sizeof(msg),
			    "board %s on port %s: helper done; waiting up to %ld s for its disk",
			    hj->board, hj->port, hj->timeout);
			set_state(st, slot, PS_SLOT_DETECTED, msg);
		}
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_sec += hj->timeout;
		while (!st->closing && board_waiter(st, hj) != NULL &&
		       pthread_cond_timedwait(&st->board_cond, &st->lock, &deadline) != ETIMEDOUT) {
		}
		slot = board_waiter(st, hj);
		if (slot != NULL && !st->closing) {
			if (hj->command[0] != '\0')
				snprintf(why, sizeof(why),
					 "board %s on port %s: no disk appeared within %ld s after "
					 "the helper; check the cable and the helper %.400s",
					 hj->board, hj->port, hj->timeout, hj->command);
			else
				snprintf(
				    why, sizeof(why),
				    "board %s on port %s: no disk appeared within %ld s; check "
				    "the cable (the board has no helper)",
				    hj->board, hj->port, hj->timeout);
			board_failed(st, slot, why);
		}
	} else if (hj->command[0] != '\0') {
		/* The disk came while the helper ran, or the slot moved on: the log has it. */
		log_locked(st, "%s: board %s: %s", hj->slot, hj->board,
			   why[0] != '\0' ? why : "the helper finished");
	}
	st->helpers_running--;
	pthread_cond_broadcast(&st->board_cond);
	pthread_mutex_unlock(&st->lock);
	free(hj);
	return NULL;
}

/* A board of a [board NAME] appeared. Called with the lock held. */
static void board_added(struct ps_station *st, const struct ps_usb_board *board)
{
	const struct ps_board_config *bc = ps_board_for_usb_id(st->cfg, board->vid, board->pid);
	const struct ps_slot_config *conf = ps_slot_for_board(st->cfg, board);
	struct helper_job *hj = NULL;
	struct ps_err err = {""};
	struct slot *slot = conf ? slot_for_config(st, conf) : NULL;
	pthread_attr_t attr;
	pthread_t thread;
	char msg[256];
	int rc;

	log_locked(st, "USB board %04x:%04x%s%s on port %s detected", board->vid, board->pid,
		   bc ? ", " : "", bc ? bc->name : "", board->port);
	if (bc == NULL)
		return;
	if (slot == NULL) {
		log_locked(
		    st,
		    "board %s on port %s (ID_PATH %s): not a station slot; its helper does not run",
		    bc->name, board->port, board->id_path[0] ? board->id_path : "unknown");
		return;
	}
	if (slot->job_running || slot->board_wait != 0) {
		log_locked(st, "%s: busy; board %s on port %s is left alone", slot->view.name,
			   bc->name, board->port);
		return;
	}
	hj = calloc(1, sizeof(*hj));
	if (hj == NULL) {
		board_failed(st, slot, "out of memory");
		return;
	}
	rc = ps_board_helper_command(bc, board, hj->command, sizeof(hj->command), &err);
	if (rc < 0) {
		free(hj);
		board_failed(st, slot, err.msg);
		return;
	}
	hj->st = st;
	hj->slot_id = slot->view.id;
	hj->timeout = bc->timeout;
	snprintf(hj->slot, sizeof(hj->slot), "%s", slot->view.name);
	snprintf(hj->board, sizeof(hj->board), "%s", bc->name);
	snprintf(hj->port, sizeof(hj->port), "%s", board->port);
	slot->board = *board;
	slot->board_disk = false;
	hj->wait = slot->board_wait = ++st->board_waits;
	memset(slot->view.target, 0, sizeof(slot->view.target));
	snprintf(slot->view.vendor, sizeof(slot->view.vendor), "board %s", bc->name);
	snprintf(slot->view.model, sizeof(slot->view.model), "%04x:%04x", board->vid, board->pid);
	slot->view.size = 0;
	slot->view.serial[0] = slot->view.common_name[0] = '\0';
	if (hj->command[0] != '\0')
		snprintf(msg, sizeof(msg),
			 "board %s (%04x:%04x) in boot mode on port %s: running its helper",
			 bc->name, board->vid, board->pid, board->port);
	else
		snprintf(msg, sizeof(msg),
			 "board %s (%04x:%04x) in boot mode on port %s: no helper; waiting up to "
			 "%ld s for its disk",
			 bc->name, board->vid, board->pid, board->port, bc->timeout);
	set_state(st, slot, PS_SLOT_DETECTED, msg);
	if (hj->command[0] != '\0')
		log_locked(st, "%s: board %s on port %s: running %s", slot->view.name, bc->name,
			   board->port, hj->command);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&thread, &attr, run_board, hj);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		free(hj);
		snprintf(msg, sizeof(msg), "board %s: cannot start its helper: %s", bc->name,
			 strerror(rc));
		board_failed(st, slot, msg);
		return;
	}
	st->helpers_running++;
}

/* A board left: expected once its helper ran (it comes back as the disk), so a slot waiting
 * for its disk goes on waiting; a slot that gave up on it goes back to empty. Called with the
 * lock held. */
static void board_removed(struct ps_station *st, const struct ps_usb_board *board)
{
	int i;

	log_locked(st, "USB board on port %s removed", board->port);
	for (i = 0; i < PS_MAX_SLOTS; i++) {
		struct slot *slot = &st->slots[i];

		if (!slot->in_use || slot->conf == NULL ||
		    strcmp(slot->board.port, board->port) != 0)
			continue;
		if (slot->board_wait != 0)
			log_locked(
			    st,
			    "%s: the board left port %s (it comes back as a disk); still waiting",
			    slot->view.name, board->port);
		else if (slot->view.state == PS_SLOT_FAIL && slot->view.target[0] == '\0')
			set_state(st, slot, PS_SLOT_EMPTY, "");
	}
}

/* The slot a disk belongs to through a board: one waiting for the disk of a board on the
 * same USB port (the wait ends here), or one whose disk came from a board. NULL otherwise.
 * Called with the lock held. */
static const struct ps_slot_config *board_slot_for_disk(struct ps_station *st,
							const struct ps_disk *disk)
{
	int i;

	for (i = 0; i < PS_MAX_SLOTS; i++) {
		struct slot *slot = &st->slots[i];

		if (!slot->in_use || slot->conf == NULL)
			continue;
		if (slot->board_wait != 0 && ps_disk_under_board(disk, &slot->board)) {
			slot->board_wait = 0;
			slot->board_disk = true;
			pthread_cond_broadcast(&st->board_cond);
			log_locked(st, "%s: disk %s appeared on the board's port %s",
				   slot->view.name, disk->node, slot->board.port);
			return slot->conf;
		}
		if (slot->board_disk && strcmp(slot->view.target, disk->node) == 0)
			return slot->conf;
	}
	return NULL;
}

/* The slot of a disk: through a board, else by its port. Called with the lock held. */
static const struct ps_slot_config *slot_conf_for_disk(struct ps_station *st,
						       const struct ps_disk *disk)
{
	const struct ps_slot_config *conf = board_slot_for_disk(st, disk);

	return conf != NULL ? conf : ps_slot_for_disk(st->cfg, disk);
}

/* A disk changed while a job writes it: a card reader's disk shows size 0 once the card is
 * out (or another size for another card). The job fails on its next I/O; its reason will
 * say the card was removed. Called with the lock held. */
static void medium_changed_during_job(struct ps_station *st, struct slot *slot,
				      const struct ps_disk *disk)
{
	if (strcmp(slot->view.target, disk->node) != 0 ||
	    (disk->size != 0 && disk->size == slot->view.size) || slot->removed)
		return;
	slot->removed = true;
	log_locked(st, "%s: the card left %s while it was being written", slot->view.name,
		   disk->node);
}

/* A disk arrived (or changed). Called with the lock held. */
static void disk_added(struct ps_station *st, const struct ps_disk *disk)
{
	const struct ps_slot_config *conf = slot_conf_for_disk(st, disk);
	struct ps_safety_policy policy = {.allow_fixed = conf && conf->allow_fixed};
	struct ps_err err = {""};
	struct slot *slot = slot_by_target(st, disk->node);

	if (slot == NULL)
		slot = conf ? slot_for_config(st, conf) : new_slot(st, disk->node);
	if (slot != NULL && slot->job_running)
		medium_changed_during_job(st, slot, disk);
	if (slot == NULL || slot->job_running)
		return;
	slot->removed = false;
	copy_str(slot->view.target, sizeof(slot->view.target), disk->node);
	copy_str(slot->view.vendor, sizeof(slot->view.vendor), disk->vendor);
	copy_str(slot->view.model, sizeof(slot->view.model), disk->model);
	slot->view.size = disk->size;
	slot->view.serial[0] = '\0';
	slot->view.common_name[0] = '\0';
	if (conf == NULL) {
		set_state(st, slot, PS_SLOT_NOT_A_SLOT, disk->id_path);
		log_locked(st, "%s: not a station slot (port %s); it will not be written",
			   disk->node, disk->id_path[0] ? disk->id_path : "unknown");
		return;
	}
	if (disk->size == 0) {
		set_state(st, slot, PS_SLOT_EMPTY, "no medium");
		return;
	}
	if (ps_safety_check(disk->node, &policy, NULL, &err) < 0) {
		set_state(st, slot, PS_SLOT_FAIL, err.msg);
		log_locked(st, "%s: refused: %s", slot->view.name, err.msg);
		return;
	}
	log_locked(st, "%s: %s %s %s detected", slot->view.name, disk->node, disk->vendor,
		   disk->model);
	/* usb and cid sources give the serial; operator and sequence leave it empty here (the
	 * job takes a sequence's next serial when it starts). */
	if (ps_slot_serial(conf, disk, slot->view.serial, sizeof(slot->view.serial), NULL) < 0)
		slot->view.serial[0] = '\0';
	if (conf->serial_source == PS_SERIAL_OPERATOR ||
	    (slot->view.serial[0] == '\0' && conf->serial_source != PS_SERIAL_SEQUENCE)) {
		if (conf->serial_source != PS_SERIAL_OPERATOR)
			log_locked(st, "%s: the device has no %s serial; type it", slot->view.name,
				   conf->serial_source == PS_SERIAL_USB ? "USB" : "card");
		set_state(st, slot, PS_SLOT_WAITING_SERIAL, "scan or type the serial");
	} else if (st->cfg->confirm) {
		set_state(st, slot, PS_SLOT_WAITING_CONFIRM, "press confirm to start");
	} else if (start_job(st, slot, &err) < 0) {
		set_state(st, slot, PS_SLOT_FAIL, err.msg);
	}
}

static void disk_removed(struct ps_station *st, const struct ps_disk *disk)
{
	struct slot *slot = slot_by_target(st, disk->node);

	if (slot == NULL)
		return;
	if (slot->job_running) {
		slot->removed = true;
		log_locked(st, "%s: %s removed while it was being written", slot->view.name,
			   disk->node);
		return;
	}
	if (slot->conf == NULL) {
		slot->in_use = false;
		notify(st);
		return;
	}
	memset(slot->view.target, 0, sizeof(slot->view.target));
	slot->board_disk = false;
	slot->view.vendor[0] = slot->view.model[0] = '\0';
	slot->view.size = 0;
	slot->view.serial[0] = slot->view.common_name[0] = '\0';
	set_state(st, slot, PS_SLOT_EMPTY, "");
}

static void on_hotplug(enum ps_hotplug_event event, const struct ps_disk *disk,
		       const struct ps_usb_board *board, void *user)
{
	struct ps_station *st = user;

	pthread_mutex_lock(&st->lock);
	switch (event) {
	case PS_HOTPLUG_DISK_ADDED:
	case PS_HOTPLUG_DISK_CHANGED:
		disk_added(st, disk);
		break;
	case PS_HOTPLUG_DISK_REMOVED:
		disk_removed(st, disk);
		break;
	case PS_HOTPLUG_BOARD_ADDED:
		board_added(st, board);
		break;
	case PS_HOTPLUG_BOARD_REMOVED:
		board_removed(st, board);
		break;
	}
	pthread_mutex_unlock(&st->lock);
}

void ps_station_hotplug_event(struct ps_station *st, enum ps_hotplug_event event,
			      const struct ps_disk *disk, const struct ps_usb_board *board)
{
	if ((disk == NULL) !=
		(event == PS_HOTPLUG_BOARD_ADDED || event == PS_HOTPLUG_BOARD_REMOVED) ||
	    (board == NULL) == (disk == NULL))
		return;
	on_hotplug(event, disk, board, st);
}

/* The image files already there, in name order (the first waits longest). */
static void scan_slots_dir(struct ps_station *st)
{
	struct dirent **names = NULL;
	int n = scandir(st->cfg->slots_dir, &names, NULL, alphasort), i;

	for (i = 0; i < n; i++) {
		virtual_added(st, names[i]->d_name);
		free(names[i]);
	}
	free(names);
}

static void drain_inotify(struct ps_station *st)
{
	char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n;

	while ((n = read(st->inotify_fd, buf, sizeof(buf))) > 0) {
		char *p = buf;

		pthread_mutex_lock(&st->lock);
		while (p < buf + n) {
			const struct inotify_event *ev = (const struct inotify_event *)(void *)p;

			if (ev->len > 0 && (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO)))
				virtual_added(st, ev->name);
			else if (ev->len > 0 && (ev->mask & (IN_DELETE | IN_MOVED_FROM)))
				virtual_removed(st, ev->name);
			p += sizeof(*ev) + ev->len;
		}
		pthread_mutex_unlock(&st->lock);
	}
}

/* The watcher thread: the slots directory and the hotplug monitor, until stopped. */
static void *watch(void *arg)
{
	struct ps_station *st = arg;

	for (;;) {
		struct pollfd fds[3] = {{st->stop_pipe[0], POLLIN, 0},
					{st->inotify_fd, POLLIN, 0},
					{st->hotplug ? ps_hotplug_fd(st->hotplug) : -1, POLLIN, 0}};

		if (poll(fds, 3, -1) < 0 && errno != EINTR)
			break;
		if (fds[0].revents)
			break;
		if (fds[1].revents)
			drain_inotify(st);
		if (fds[2].revents) {
			struct ps_err err = {""};

			if (ps_hotplug_dispatch(st->hotplug, &err) < 0) {
				pthread_mutex_lock(&st->lock);
				log_locked(st, "hotplug: %s", err.msg);
				pthread_mutex_unlock(&st->lock);
			}
		}
	}
	return NULL;
}

/* The preauthorization worker's log lines and outcomes (called on its thread). */
static void preauth_log(const char *line, void *user)
{
	struct ps_station *st = user;

	pthread_mutex_lock(&st->lock);
	log_locked(st, "%s", line);
	pthread_mutex_unlock(&st->lock);
}

static void preauth_event(const struct ps_preauth_event *ev, void *user)
{
	struct ps_station *st = user;
	int i;

	if (ev->result == PS_PREAUTH_RETRY || ev->result == PS_PREAUTH_BLOCKED ||
	    ev->result == PS_PREAUTH_CANCELLED)
		return; /* still queued: the slot says so already */
	pthread_mutex_lock(&st->lock);
	for (i = 0; i < PS_MAX_SLOTS; i++) {
		struct slot *slot = &st->slots[i];

		if (!slot->in_use || slot->view.state != PS_SLOT_PREAUTH_QUEUED ||
		    strcmp(slot->view.serial, ev->serial) != 0)
			continue;
		if (ev->result == PS_PREAUTH_FAILED)
			set_state(st, slot, PS_SLOT_FAIL, ev->message);
		else
			set_state(st, slot, PS_SLOT_PASS, "preauthorized; remove the card");
	}
	pthread_mutex_unlock(&st->lock);
}

int ps_station_preauth_status(struct ps_station *st, struct ps_preauth_status *out,
			      struct ps_err *err)
{
	return ps_preauth_status(st->ui_db, st->cfg, out, err);
}

static long count_today(struct ps_db *db, const char *state)
{
	struct tm tm;
	time_t now = ps_now();
	long n = 0;

	localtime_r(&now, &tm);
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	if (ps_db_count(db, state, mktime(&tm), &n, NULL) < 0)
		return 0;
	return n;
}

int ps_station_open(const struct ps_config *cfg, struct ps_ca *ca, struct ps_station **out,
		    struct ps_err *err)
{
	struct ps_station *st = calloc(1, sizeof(*st));
	struct ps_board_id boards[PS_MAX_BOARDS * PS_MAX_BOARD_IDS];
	size_t n_boards = 0;
	int i, j, rc = 0;

	*out = NULL;
	if (st == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	st->cfg = cfg;
	st->ca = ca;
	st->event_fd = st->inotify_fd = st->stop_pipe[0] = st->stop_pipe[1] = -1;
	pthread_mutex_init(&st->lock, NULL);
	pthread_cond_init(&st->jobs_done, NULL);
	{
		pthread_condattr_t attr;

		pthread_condattr_init(&attr);
		pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
		pthread_cond_init(&st->board_cond, &attr);
		pthread_condattr_destroy(&attr);
	}
	if (cfg->serial_pattern[0] != '\0') {
		if (regcomp(&st->serial_re, cfg->serial_pattern, REG_EXTENDED | REG_NOSUB) != 0) {
			rc =
			    ps_fail(err, PS_EINVAL, "bad serial_pattern '%s'", cfg->serial_pattern);
			goto out;
		}
		st->have_serial_re = true;
	}
	rc = ps_db_open(cfg->database, &st->ui_db, err);
	if (rc == 0)
		rc = ps_db_check_integrity(st->ui_db, true, err);
	if (rc < 0)
		goto out;
	st->pass_today = count_today(st->ui_db, PS_STATE_VERIFIED);
	st->fail_today = count_today(st->ui_db, PS_STATE_FAILED);
	st->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (st->event_fd < 0 || pipe2(st->stop_pipe, O_CLOEXEC) != 0) {
		rc = ps_fail(err, PS_EIO, "station: %s", strerror(errno));
		goto out;
	}
	pthread_mutex_lock(&st->lock);
	for (i = 0; i < cfg->n_slots; i++) {
		struct slot *slot = new_slot(st, cfg->slots[i].name);

		if (slot != NULL) {
			slot->conf = &cfg->slots[i];
			set_state(st, slot, PS_SLOT_EMPTY, "");
		}
	}
	log_locked(st, "station %s started; CA %s", cfg->station_id, ca->subject);
	if (cfg->slots_dir[0] != '\0') {
		st->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		if (st->inotify_fd < 0 ||
		    inotify_add_watch(st->inotify_fd, cfg->slots_dir,
				      IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM) < 0)
			log_locked(st, "slots directory %s: %s", cfg->slots_dir, strerror(errno));
		scan_slots_dir(st);
	}
	pthread_mutex_unlock(&st->lock);
	for (i = 0; i < cfg->n_boards; i++)
		for (j = 0; j < cfg->boards[i].n_usb_ids; j++)
			boards[n_boards++] = (struct ps_board_id){cfg->boards[i].usb_ids[j][0],
								  cfg->boards[i].usb_ids[j][1]};
	if (cfg->hotplug) {
		struct ps_err hp_err = {""};

		/* Existing devices are reported through on_hotplug during the open. */
		if (ps_hotplug_open(on_hotplug, st, boards, n_boards, &st->hotplug, &hp_err) < 0) {
			pthread_mutex_lock(&st->lock);
			log_locked(st, "hotplug unavailable: %s", hp_err.msg);
			pthread_mutex_unlock(&st->lock);
			st->hotplug = NULL;
		}
	}
	if (cfg->preauth_enabled) {
		struct ps_err pa_err = {""};

		if (ps_preauth_worker_start(cfg, preauth_log, preauth_event, st, &st->preauth,
					    &pa_err) < 0) {
			pthread_mutex_lock(&st->lock);
			log_locked(st, "preauthorization: %s", pa_err.msg);
			pthread_mutex_unlock(&st->lock);
		}
	}
	if (pthread_create(&st->prehash, NULL, prehash_main, st) == 0)
		st->prehash_started = true;
	rc = pthread_create(&st->watcher, NULL, watch, st);
	if (rc != 0) {
		rc = ps_fail(err, PS_ENOMEM, "cannot start the watcher: %s", strerror(rc));
		goto out;
	}
	st->watcher_started = true;
	*out = st;
	st = NULL;
out:
	ps_station_close(st);
	return rc;
}

void ps_station_close(struct ps_station *st)
{
	char stop = 1;

	if (st == NULL)
		return;
	/* The stop pipe ends the watcher and stops boards' helpers. */
	if (st->stop_pipe[1] >= 0 && write(st->stop_pipe[1], &stop, 1) != 1) {
		/* the watcher also ends when the pipe closes below */
	}
	if (st->watcher_started)
		pthread_join(st->watcher, NULL);
	atomic_store(&st->prehash_stop, true);
	if (st->prehash_started)
		pthread_join(st->prehash, NULL);
	pthread_mutex_lock(&st->lock);
	while (st->jobs_running > 0)
		pthread_cond_wait(&st->jobs_done, &st->lock);
	st->closing = true;
	pthread_cond_broadcast(&st->board_cond);
	while (st->helpers_running > 0)
		pthread_cond_wait(&st->board_cond, &st->lock);
	pthread_mutex_unlock(&st->lock);
	/* After the jobs (they wake it), before the lock its callbacks take goes away; what it
	 * has not sent stays queued in the database. */
	ps_preauth_worker_stop(st->preauth);
	ps_hotplug_close(st->hotplug);
	if (st->inotify_fd >= 0)
		close(st->inotify_fd);
	if (st->stop_pipe[0] >= 0)
		close(st->stop_pipe[0]);
	if (st->stop_pipe[1] >= 0)
		close(st->stop_pipe[1]);
	if (st->event_fd >= 0)
		close(st->event_fd);
	if (st->have_serial_re)
		regfree(&st->serial_re);
	ps_db_close(st->ui_db);
	pthread_cond_destroy(&st->jobs_done);
	pthread_cond_destroy(&st->board_cond);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

int ps_station_event_fd(struct ps_station *st)
{
	return st->event_fd;
}

void ps_station_ack(struct ps_station *st)
{
	uint64_t value;

	while (read(st->event_fd, &value, sizeof(value)) == sizeof(value)) {
	}
}

static int compare_views(const void *a, const void *b)
{
	const struct ps_slot_view *x = a, *y = b;

	if (x->is_virtual != y->is_virtual)
		return x->is_virtual ? 1 : -1;
	if (x->is_virtual)
		return strcmp(x->name, y->name);
	return x->id - y->id;
}

size_t ps_station_slots(struct ps_station *st, struct ps_slot_view *out, size_t max)
{
	struct ps_slot_view all[PS_MAX_SLOTS];
	size_t n = 0, i;

	pthread_mutex_lock(&st->lock);
	for (i = 0; i < PS_MAX_SLOTS; i++)
		if (st->slots[i].in_use)
			all[n++] = st->slots[i].view;
	pthread_mutex_unlock(&st->lock);
	qsort(all, n, sizeof(all[0]), compare_views);
	memcpy(out, all, (n < max ? n : max) * sizeof(all[0]));
	return n;
}

size_t ps_station_log(struct ps_station *st, uint64_t after, char (*out)[256], size_t max,
		      uint64_t *last)
{
	uint64_t first, seq;
	size_t n = 0;

	pthread_mutex_lock(&st->lock);
	first = st->log_seq >= LOG_LINES ? st->log_seq - LOG_LINES + 1 : 1;
	if (after + 1 > first)
		first = after + 1;
	if (st->log_seq >= max && first + max <= st->log_seq)
		first = st->log_seq - max + 1;
	for (seq = first; seq <= st->log_seq && n < max; seq++)
		memcpy(out[n++], st->log[seq % LOG_LINES], sizeof(out[0]));
	*last = st->log_seq;
	pthread_mutex_unlock(&st->lock);
	return n;
}

int ps_station_next_waiting(struct ps_station *st)
{
	int i, best = -1;
	time_t oldest = 0;

	pthread_mutex_lock(&st->lock);
	for (i = 0; i < PS_MAX_SLOTS; i++) {
		struct slot *slot = &st->slots[i];

		if (!slot->in_use || slot->view.state != PS_SLOT_WAITING_SERIAL)
			continue;
		if (best < 0 || slot->waiting_since < oldest ||
		    (slot->waiting_since == oldest && slot->view.id < best)) {
			best = slot->view.id;
			oldest = slot->waiting_since;
		}
	}
	pthread_mutex_unlock(&st->lock);
	return best;
}

int ps_station_check_serial(struct ps_station *st, const char *serial, struct ps_err *err)
{
	int rc = ps_check_serial(serial, err);

	if (rc < 0)
		return rc;
	if (st->have_serial_re && regexec(&st->serial_re, serial, 0, NULL, 0) != 0)
		return ps_fail(err, PS_EINVAL, "serial '%s' does not match the pattern %s", serial,
			       st->cfg->serial_pattern);
	return 0;
}

static int count_row(const struct ps_cert_row *row, void *user)
{
	(*(long *)user)++;
	return 0;
}

int ps_station_serial_seen(struct ps_station *st, const char *serial, long *count,
			   struct ps_err *err)
{
	struct ps_db_filter filter = {.device_serial = serial};

	*count = 0;
	return ps_db_each(st->ui_db, &filter, count_row, count, err);
}

int ps_station_submit_serial(struct ps_station *st, int slot_id, const char *serial,
			     bool reprovision, struct ps_err *err)
{
	struct slot *slot;
	long seen = 0;
	int rc = ps_station_check_serial(st, serial, err);

	if (rc < 0)
		return rc;
	if (slot_id < 0)
		slot_id = ps_station_next_waiting(st);
	if (slot_id < 0)
		return ps_fail(err, PS_ENOENT, "no slot is waiting for a serial");
	if (!reprovision) {
		rc = ps_station_serial_seen(st, serial, &seen, err);
		if (rc < 0)
			return rc;
		if (seen > 0)
			return ps_fail(err, PS_EEXIST,
				       "serial %s was provisioned before (%ld certificate%s)",
				       serial, seen, seen == 1 ? "" : "s");
	}
	pthread_mutex_lock(&st->lock);
	slot = slot_by_id(st, slot_id);
	if (slot == NULL || slot->view.state != PS_SLOT_WAITING_SERIAL) {
		rc = ps_fail(err, PS_EBUSY, "slot %s is not waiting for a serial",
			     slot ? slot->view.name : "?");
		goto out;
	}
	snprintf(slot->view.serial, sizeof(slot->view.serial), "%s", serial);
	slot->reprovision = reprovision;
	if (st->cfg->confirm)
		set_state(st, slot, PS_SLOT_WAITING_CONFIRM, "press confirm to start");
	else
		rc = start_job(st, slot, err);
out:
	pthread_mutex_unlock(&st->lock);
	return rc;
}

int ps_station_confirm(struct ps_station *st, int slot_id, struct ps_err *err)
{
	struct slot *slot;
	int rc;

	pthread_mutex_lock(&st->lock);
	slot = slot_by_id(st, slot_id);
	if (slot == NULL || slot->view.state != PS_SLOT_WAITING_CONFIRM)
		rc = ps_fail(err, PS_EBUSY, "slot %s is not waiting for a confirm",
			     slot ? slot->view.name : "?");
	else
		rc = start_job(st, slot, err);
	pthread_mutex_unlock(&st->lock);
	return rc;
}

int ps_station_reset(struct ps_station *st, int slot_id, struct ps_err *err)
{
	struct slot *slot;
	int rc = 0;

	pthread_mutex_lock(&st->lock);
	slot = slot_by_id(st, slot_id);
	if (slot == NULL || !(slot->view.state == PS_SLOT_WAITING_CONFIRM ||
			      (slot->view.is_virtual && (slot->view.state == PS_SLOT_PASS ||
							 slot->view.state == PS_SLOT_FAIL)))) {
		rc = ps_fail(err, PS_EBUSY,
			     "only a slot waiting for a confirm or a finished image-file slot can "
			     "be reset");
	} else {
		slot->view.serial[0] = slot->view.common_name[0] = '\0';
		set_state(st, slot, PS_SLOT_WAITING_SERIAL, "scan or type the serial");
	}
	pthread_mutex_unlock(&st->lock);
	return rc;
}

void ps_station_counts(struct ps_station *st, struct ps_station_counts *out)
{
	pthread_mutex_lock(&st->lock);
	out->pass_today = st->pass_today;
	out->fail_today = st->fail_today;
	out->jobs_running = st->jobs_running;
	pthread_mutex_unlock(&st->lock);
}

struct ps_db *ps_station_ui_db(struct ps_station *st)
{
	return st->ui_db;
}
