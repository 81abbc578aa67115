/* station.h — the station: its slots (configured ports and virtual image-file slots), what
 * is in each, the jobs that provision them on worker threads, and one pollable event fd a
 * front end watches. Every call is thread-safe; nothing here blocks on a job. */
#ifndef PS_STATION_H
#define PS_STATION_H

#include "audit.h"
#include "ca.h"
#include "config.h"
#include "err.h"
#include "flash.h"
#include "hotplug.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define PS_MAX_SLOTS 64

enum ps_slot_state {
	PS_SLOT_EMPTY,		 /* nothing inserted */
	PS_SLOT_DETECTED,	 /* a disk or board is there; getting ready */
	PS_SLOT_WAITING_SERIAL,	 /* waiting for the operator to scan or type the serial */
	PS_SLOT_WAITING_CONFIRM, /* serial known; waiting for the operator's confirm key */
	PS_SLOT_FLASHING,	 /* writing the golden image and reading it back */
	PS_SLOT_PERSONALIZING,	 /* issuing and writing key, certificate, mender.conf */
	PS_SLOT_VERIFYING,	 /* reading everything back */
	PS_SLOT_PREAUTH_QUEUED,	 /* done; preauthorization queued */
	PS_SLOT_PASS,
	PS_SLOT_FAIL,	    /* message says why */
	PS_SLOT_NOT_A_SLOT, /* a disk on no configured port: shown, never written */
};

/* Name of a state for display and logs ("waiting for serial", "PASS", ...). */
const char *ps_slot_state_name(enum ps_slot_state state);
/* True while a job runs on the slot. */
bool ps_slot_state_busy(enum ps_slot_state state);

/* A snapshot of one slot, for display. */
struct ps_slot_view {
	int id;		 /* stable for the station's lifetime */
	char name[64];	 /* configured name, or the image file's name */
	bool is_virtual; /* an image file in the slots directory */
	enum ps_slot_state state;
	char target[1024]; /* /dev/sdb or the image file path */
	char vendor[64], model[64];
	uint64_t size; /* bytes */
	char serial[PS_SERIAL_MAX + 1];
	char common_name[PS_CN_MAX + 1];
	char message[256];   /* FAIL reason, refusal, what is awaited */
	double progress;     /* 0..1 during long steps, < 0 when unknown */
	double rate;	     /* bytes per second during long steps */
	double eta;	     /* seconds left, < 0 when unknown */
	time_t since;	     /* when the slot entered its state */
	uint64_t generation; /* changes whenever the slot changes */
	/* While FLASHING: the golden image's phase (PS_FLASH_WRITING, then PS_FLASH_VERIFYING
	 * when it is read back) and its bytes; progress, rate and eta above follow them. */
	enum ps_flash_phase flash_phase;
	uint64_t flash_done, flash_total; /* total 0 while not known (compressed, no bmap) */
};

struct ps_station_counts {
	long pass_today, fail_today;
	long jobs_running;
};

struct ps_station;

/* Open the station on a loaded configuration and CA (with its key; the station borrows both
 * for its lifetime). Starts watching the slots directory and, unless cfg says otherwise,
 * the udev hotplug monitor. */
int ps_station_open(const struct ps_config *cfg, struct ps_ca *ca, struct ps_station **out,
		    struct ps_err *err);
/* Cancel nothing: waits for running jobs to finish, then releases everything. */
void ps_station_close(struct ps_station *st);

/* Readable whenever something changed (a slot, the log); read it with ps_station_ack. */
int ps_station_event_fd(struct ps_station *st);
/* Clear the event fd's readiness. */
void ps_station_ack(struct ps_station *st);

/* Copy up to max slot views in display order; returns how many slots there are. */
size_t ps_station_slots(struct ps_station *st, struct ps_slot_view *out, size_t max);

/* Log lines, newest last: copies lines with sequence number > after into out (each at most
 * line_len bytes); returns the number copied and sets *last to the newest sequence seen. */
size_t ps_station_log(struct ps_station *st, uint64_t after, char (*out)[256], size_t max,
		      uint64_t *last);

/* The slot that has waited longest for a serial, or -1. */
int ps_station_next_waiting(struct ps_station *st);

/* Check a serial against the serial rules and the configured pattern, without using it. */
int ps_station_check_serial(struct ps_station *st, const char *serial, struct ps_err *err);

/* How many certificates the audit database holds for serial (field service). */
int ps_station_serial_seen(struct ps_station *st, const char *serial, long *count,
			   struct ps_err *err);

/* Give slot (its id; -1: the slot that has waited longest) its serial. A serial seen before
 * is refused with PS_EEXIST unless reprovision is true. Starts the job, or waits for a
 * confirm when the configuration asks for one. */
int ps_station_submit_serial(struct ps_station *st, int slot, const char *serial, bool reprovision,
			     struct ps_err *err);
/* Start a slot that waits for the operator's confirm key. */
int ps_station_confirm(struct ps_station *st, int slot, struct ps_err *err);
/* Return a slot to WAITING_SERIAL: one waiting for a confirm (the operator takes the serial
 * back), or a finished (PASS or FAIL) virtual image, e.g. to provision the same image file
 * again; physical slots go back to empty when removed. */
int ps_station_reset(struct ps_station *st, int slot, struct ps_err *err);

void ps_station_counts(struct ps_station *st, struct ps_station_counts *out);

/* The preauthorization outbox for the status bar ("preauth: OFFLINE, 3 queued" with
 * ps_preauth_status_line): off, online, or offline with what is queued. UI thread only (it
 * reads through the UI's database connection). */
struct ps_preauth_status;
int ps_station_preauth_status(struct ps_station *st, struct ps_preauth_status *out,
			      struct ps_err *err);

/* Feed a hotplug event as if the udev monitor had reported it (disk for DISK_* events, board
 * for BOARD_* events; anything else is ignored): for tests, and for stations that learn of
 * devices by other means. */
void ps_station_hotplug_event(struct ps_station *st, enum ps_hotplug_event event,
			      const struct ps_disk *disk, const struct ps_usb_board *board);

/* For tests: called on a job's thread each time the job enters a stage of the provisioning
 * pipeline (enum ps_stage, after the slot shows it), with the job's target. */
extern void (*ps_station_stage_hook)(int stage, const char *target);

/* The station's audit database connection for the UI thread's own queries (audit view,
 * export). Only the calling thread may use it; jobs use their own connections. */
struct ps_db *ps_station_ui_db(struct ps_station *st);

#endif
