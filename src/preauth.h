/* preauth.h — preauthorizing devices through the Mender management API: the identity each
 * device reports, a client over libcurl (personal access token, or login with user and
 * password), the answers it parses (fuzzable entry points), and the outbox: preauthorizations
 * are stored in the audit database first and sent by a worker that retries with backoff, so a
 * factory network going down neither stops the line nor loses a device. */
#ifndef PS_PREAUTH_H
#define PS_PREAUTH_H

#include "audit.h"
#include "config.h"
#include "err.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Environment: the access token (when [preauth] token_file is not set), the password (when
 * password_file is not set), and for tests the backoff base, its cap and the request timeout. */
#define PS_PREAUTH_TOKEN_ENV	   "PROVSTATION_MENDER_TOKEN"
#define PS_PREAUTH_PASSWORD_ENV	   "PROVSTATION_MENDER_PASSWORD"
#define PS_PREAUTH_BACKOFF_ENV	   "PROVSTATION_PREAUTH_BACKOFF_MS"
#define PS_PREAUTH_BACKOFF_MAX_ENV "PROVSTATION_PREAUTH_BACKOFF_MAX_MS"
#define PS_PREAUTH_TIMEOUT_ENV	   "PROVSTATION_PREAUTH_TIMEOUT_MS"

#define PS_PREAUTH_DEFAULT_IDENTITY "{\"serialnumber\": \"{serial}\"}"
#define PS_PREAUTH_BACKOFF_MS	    5000L   /* first retry after about this long */
#define PS_PREAUTH_BACKOFF_MAX_MS   600000L /* never wait longer than 10 minutes */
#define PS_PREAUTH_TIMEOUT_MS	    30000L  /* one HTTP request, connecting included */

#define PS_PREAUTH_API_DEVICES "/api/management/v2/devauth/devices"
#define PS_PREAUTH_API_LOGIN   "/api/management/v1/useradm/auth/login"

/* ---- identity --------------------------------------------------------------------------- */

/* The identity_data of a device: tmpl (JSON with {serial} and {cn}) with the values inserted
 * as JSON string content (quotes, backslashes and control characters escaped), then parsed
 * with jansson. It must be an object of string values, and name {serial} or {cn} (otherwise
 * every device would have the same identity). *out: compact JSON with sorted keys (free). */
int ps_preauth_identity(const char *tmpl, const char *serial, const char *cn, char **out,
			struct ps_err *err);

/* Check [preauth] serial_file: "" (none) or an absolute path inside the data partition that
 * does not name one of the files provisioning writes. */
int ps_preauth_check_serial_file(const char *path, struct ps_err *err);

/* ---- parsing the server's answers (safe on any input; fuzz targets) -------------------- */

#define PS_PREAUTH_ID_MAX	128
#define PS_PREAUTH_MAX_AUTHSETS 16

/* An existing device, as a 409 (or GET device) body describes it. */
struct ps_preauth_conflict {
	char device_id[PS_PREAUTH_ID_MAX];
	char status[32];	  /* the device's status, "" when absent */
	bool decommissioning;	  /* being removed; a new preauthorization will pass soon */
	bool same_key;		  /* an auth set with our key is preauthorized or accepted */
	char same_key_status[32]; /* status of the auth set holding our key, "" when none */
	int n_auth_sets;	  /* all auth sets in the body */
	/* Auth sets that are not our key preauthorized or accepted (those a replace removes);
	 * at most PS_PREAUTH_MAX_AUTHSETS are listed, n_others counts them all. */
	int n_others;
	char other_ids[PS_PREAUTH_MAX_AUTHSETS][PS_PREAUTH_ID_MAX];
};

/* Parse a Device (deviceauth management API v2) from body. pubkey_pem (may be NULL) is the
 * key being preauthorized, compared with each auth set's key as a public key, not as text.
 * PS_EINVAL, with a message that does not echo the body, when it is not a Device object with
 * an id made of [A-Za-z0-9._-] (ids go into URLs). */
int ps_preauth_parse_conflict(const char *body, size_t len, const char *pubkey_pem,
			      struct ps_preauth_conflict *out, struct ps_err *err);

/* The device id from a 201's Location ("devices/ID", a path or a URL ending in it). */
int ps_preauth_parse_location(const char *location, char *id, size_t id_len, struct ps_err *err);

/* The message of an error body ({"error": "..."}, else its first line), cleaned of control
 * characters and cut to fit; "" when there is none. */
void ps_preauth_error_message(const char *body, size_t len, char *out, size_t out_len);

/* The token of a login answer (useradm): a JWT, raw (application/jwt) or as a JSON string,
 * trailing blanks ignored. It must be printable ASCII without spaces, quotes or backslashes
 * (it goes into a header), at most 16 KiB. *token: a copy (ps_free_secret_str); the message
 * never echoes the body. */
int ps_preauth_parse_token(const char *body, size_t len, char **token, struct ps_err *err);

/* Retry-After as milliseconds from now: delta-seconds or an HTTP date; -1 when absent or
 * unusable. Capped at one hour. */
long ps_preauth_retry_after_ms(const char *value, time_t now);

/* The delay before attempt number attempts + 1 after attempts failures: base * 2^(attempts-1)
 * capped at max, with jitter: a value in [delay/2, delay] chosen by random. */
long ps_preauth_backoff_ms(long attempts, long base_ms, long max_ms, uint32_t random);

/* True when two PEM public keys are the same key (compared as DER SubjectPublicKeyInfo; text
 * without whitespace when one does not parse). */
bool ps_preauth_same_pubkey(const char *a, const char *b);

/* ---- the management API client ---------------------------------------------------------- */

enum ps_preauth_result {
	PS_PREAUTH_CREATED,   /* 201: the device is preauthorized */
	PS_PREAUTH_EXISTING,  /* 409, and the device already holds this key preauthorized or
				 accepted: nothing to do */
	PS_PREAUTH_REPLACED,  /* a device with another key was replaced (on_conflict = replace) */
	PS_PREAUTH_RETRY,     /* not now: network, timeout, 429, 5xx, a malformed answer, a
				 device being decommissioned; retried after a backoff */
	PS_PREAUTH_BLOCKED,   /* the server refused the station (401/403 after a new login,
				 404): kept queued, the round stops */
	PS_PREAUTH_FAILED,    /* refused for this device (400, a conflict with on_conflict =
				 fail): kept as failed with the server's message */
	PS_PREAUTH_CANCELLED, /* the caller asked to stop during the attempt */
};

/* "created", "existing", "replaced", "retry", "blocked", "failed", "cancelled" (stored as
 * the outbox row's result for the first three). */
const char *ps_preauth_result_name(enum ps_preauth_result result);

struct ps_preauth_item {
	const char *serial;
	const char *common_name;
	const char *identity;	/* identity_data as JSON (ps_preauth_identity) */
	const char *pubkey_pem; /* SPKI PEM ("BEGIN PUBLIC KEY") */
};

struct ps_preauth_outcome {
	enum ps_preauth_result result;
	char device_id[PS_PREAUTH_ID_MAX];
	int http_status;     /* of the answer that decided, 0 without one */
	long retry_after_ms; /* from Retry-After, -1 when none */
	bool server_level;   /* the server as a whole is unavailable: pause every item */
	char message[512];   /* for the operator; never holds a token */
};

struct ps_preauth_client;

/* Prepare a client from [preauth]: server (https only), ca_bundle, and the credentials: a
 * personal access token from token_file (mode 0600) or PROVSTATION_MENDER_TOKEN, else
 * username with password_file (mode 0600) or PROVSTATION_MENDER_PASSWORD. Nothing is sent
 * yet. cancel (may be NULL) aborts a request in progress when it becomes true. */
int ps_preauth_client_open(const struct ps_config *cfg, const atomic_bool *cancel,
			   struct ps_preauth_client **out, struct ps_err *err);
void ps_preauth_client_close(struct ps_preauth_client *client);

/* How the client authenticates, for display: "personal access token (file /etc/...)". */
const char *ps_preauth_client_auth(const struct ps_preauth_client *client);

/* One preauthorization, conflicts handled by policy: 409 with our key preauthorized or
 * accepted is success; otherwise fail, or replace: "force": true (mender-server 4.0 and
 * later), else delete the old auth sets (decommission the device when it stays) and retry
 * while the server still answers 409. A login token is renewed once on 401. */
void ps_preauth_send(struct ps_preauth_client *client, const struct ps_preauth_item *item,
		     enum ps_preauth_conflict_policy policy, struct ps_preauth_outcome *out);

/* ---- the outbox ------------------------------------------------------------------------- */

/* Queue certificate cert_id (its device serial and commonName) for preauthorization with the
 * identity the configuration gives it. Call it right after the certificate is recorded: the
 * row is sent only once the certificate is verified, and never when it failed or a newer
 * verified certificate of the device exists. Queuing a certificate twice keeps one row. */
int ps_preauth_enqueue(struct ps_db *db, const struct ps_config *cfg, int64_t cert_id,
		       const char *serial, const char *common_name, struct ps_err *err);

/* (Re)queue the newest verified certificate of serial, whatever its row's state (done,
 * failed, pending): attempts cleared, identity from the configuration as it is now. */
int ps_preauth_requeue_serial(struct ps_db *db, const struct ps_config *cfg, const char *serial,
			      int64_t *cert_id, struct ps_err *err);

/* What happened to one row during a flush. */
struct ps_preauth_event {
	int64_t cert_id;
	const char *serial;
	const char *common_name;
	enum ps_preauth_result result;
	const char *device_id; /* created, existing, replaced */
	const char *message;   /* retry, blocked, failed */
	long retry_in_ms;      /* retry, blocked */
	long attempts;	       /* failed attempts so far */
};

struct ps_preauth_flush_opts {
	int64_t only_cert_id; /* 0: every row */
	long wait_ms;	      /* also wait for backoffs ending within this long */
	enum ps_preauth_conflict_policy policy;
	void (*report)(const struct ps_preauth_event *event, void *user);
	void *user;
	const atomic_bool *stop; /* may be NULL; also give it to ps_preauth_client_open */
};

struct ps_preauth_flush_result {
	long sent;		 /* created, existing or replaced */
	long failed;		 /* refused for a device */
	long retried;		 /* attempts that will be retried */
	long remaining;		 /* still queued at the end */
	long in_flight;		 /* of those, being sent by another process */
	int64_t next_attempt_ms; /* earliest next attempt of what remains (epoch ms), 0 none */
};

/* Send what is due, oldest first, until every row is done or every remaining one is backing
 * off past the wait (a row another live process is sending counts as remaining). One
 * network failure pauses the whole round. Returns 0, or PS_EPERM/PS_ENET when the server
 * blocked the station (err says why; the rows stay queued), or a database error. */
int ps_preauth_flush(struct ps_db *db, struct ps_preauth_client *client,
		     const struct ps_preauth_flush_opts *opts, struct ps_preauth_flush_result *res,
		     struct ps_err *err);

/* ---- status ------------------------------------------------------------------------------ */

enum ps_preauth_state {
	PS_PREAUTH_OFF,	    /* [preauth] enabled = false */
	PS_PREAUTH_ONLINE,  /* nothing waits on a failed attempt */
	PS_PREAUTH_OFFLINE, /* queued rows wait after failed attempts (server unreachable,
			       refusing the station, ...) */
};

struct ps_preauth_status {
	enum ps_preauth_state state;
	long queued;   /* waiting to be sent (certificate verified) */
	long held;     /* waiting for their certificate to be verified */
	long retrying; /* of queued: after at least one failed attempt */
	long failed;   /* refused for the device: see `preauth status` */
	long done;
	int64_t next_attempt_ms; /* earliest next attempt (epoch ms), 0 none */
	char last_error[256];	 /* of the latest failed attempt still queued */
};

/* The outbox as the TUI shows it; reads only. */
int ps_preauth_status(struct ps_db *db, const struct ps_config *cfg, struct ps_preauth_status *out,
		      struct ps_err *err);
const char *ps_preauth_state_name(enum ps_preauth_state state);
/* One line for a status bar: "preauth: off", "preauth: online", "preauth: online, 2 queued",
 * "preauth: OFFLINE, 5 queued (next try in 40 s)". */
void ps_preauth_status_line(const struct ps_preauth_status *status, char *out, size_t len);

/* Milliseconds since the epoch (the outbox's clock: real time, never PROVSTATION_NOW). */
int64_t ps_preauth_now_ms(void);

/* ---- the worker -------------------------------------------------------------------------- */

/* A thread that sends the outbox of cfg's database: at start, when woken, and when backoffs
 * end. log receives one line per event ("preauth SN1: created, device 1234"); both
 * callbacks run on the worker thread. */
struct ps_preauth_worker;
int ps_preauth_worker_start(const struct ps_config *cfg, void (*log)(const char *line, void *user),
			    void (*on_event)(const struct ps_preauth_event *event, void *user),
			    void *user, struct ps_preauth_worker **out, struct ps_err *err);
/* Something was queued: send now. */
void ps_preauth_worker_wake(struct ps_preauth_worker *worker);
/* Stop (aborting a request in progress; that row stays queued) and free. NULL is fine. */
void ps_preauth_worker_stop(struct ps_preauth_worker *worker);

#endif
