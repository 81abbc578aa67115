/* cmd_preauth.c — `provstation preauth`: the preauthorization outbox from the command line:
 * its status, a bounded flush of what is pending, and (re)sending one device. */
#include "cli.h"
#include "outbox.h"
#include "preauth.h"
#include "util.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OPT_WAIT = 1000, OPT_SERIAL, OPT_QUEUE_ONLY, OPT_ON_CONFLICT, OPT_ALL };

static atomic_bool interrupted;

static void on_signal(int sig)
{
	atomic_store(&interrupted, true);
}

static void usage_preauth(FILE *out)
{
	fprintf(
	    out,
	    "usage: provstation preauth status [--all] [--config FILE] [--db FILE]\n"
	    "       provstation preauth flush [--wait SECONDS] [--config FILE] [--db FILE]\n"
	    "       provstation preauth --serial SERIAL [--queue-only]\n"
	    "                           [--on-conflict fail|replace] [--config FILE] [--db FILE]\n"
	    "\n"
	    "Preauthorize devices on the Mender server ([preauth] in the configuration) with\n"
	    "the public key provisioning issued them. Preauthorizations are queued in the\n"
	    "audit database and sent by the station, or by:\n"
	    "\n"
	    "  status         the queue: queued, waiting for verification, failed, done, and\n"
	    "                 whether the server was reachable (--all: also every done row)\n"
	    "  flush          send what is due; stops when everything is sent or everything\n"
	    "                 left is backing off after a failed attempt (--wait SECONDS: go\n"
	    "                 on waiting for backoffs that end within that long); prints what\n"
	    "                 remains. Exit status 0 when nothing remains and none failed.\n"
	    "  --serial S     queue the newest verified certificate of device S again (even\n"
	    "                 when it was sent or failed) and send it now; --queue-only only\n"
	    "                 queues it; --on-conflict overrides [preauth] on_conflict\n"
	    "\n"
	    "Failed attempts (network, timeouts, HTTP 429 and 5xx) are retried with\n"
	    "exponential backoff; HTTP 400 and conflicts under on_conflict = fail are\n"
	    "failures shown by status, sent again with --serial.\n");
}

/* "in 12 s", "now" */
static void when_text(int64_t at_ms, char *out, size_t len)
{
	int64_t ms = at_ms - ps_preauth_now_ms();

	if (at_ms == 0 || ms <= 0)
		snprintf(out, len, "now");
	else
		snprintf(out, len, "in %lld s", (long long)((ms + 999) / 1000));
}

static void print_event(const struct ps_preauth_event *ev, void *user)
{
	switch (ev->result) {
	case PS_PREAUTH_CREATED:
		printf("%s: preauthorized, device %s\n", ev->serial, ev->device_id);
		break;
	case PS_PREAUTH_EXISTING:
		printf("%s: already preauthorized with this key, device %s\n", ev->serial,
		       ev->device_id);
		break;
	case PS_PREAUTH_REPLACED:
		printf("%s: preauthorized, replacing the key of device %s\n", ev->serial,
		       ev->device_id);
		break;
	case PS_PREAUTH_FAILED:
		printf("%s: FAILED: %s\n", ev->serial, ev->message);
		break;
	case PS_PREAUTH_RETRY:
	case PS_PREAUTH_BLOCKED:
		printf("%s: not sent (attempt %ld), retry in %ld s: %s\n", ev->serial, ev->attempts,
		       (ev->retry_in_ms + 999) / 1000, ev->message);
		break;
	case PS_PREAUTH_CANCELLED:
		break;
	}
	fflush(stdout);
}

enum row_kind { ROW_QUEUED, ROW_FAILED, ROW_DONE };

static int print_row(const struct ps_outbox_row *row, void *user)
{
	const enum row_kind *kind = user;
	char when[32];

	if (*kind == ROW_QUEUED) {
		when_text(row->next_attempt_ms, when, sizeof(when));
		if (strcmp(row->cert_state, PS_STATE_VERIFIED) != 0)
			printf("  %s  cert %lld  waiting for its certificate (%s) to be verified\n",
			       row->device_serial, (long long)row->cert_id, row->cert_state);
		else
			printf("  %s  cert %lld  attempts %ld  next %s%s%s\n", row->device_serial,
			       (long long)row->cert_id, row->attempts, when,
			       row->last_error[0] ? "  last error: " : "", row->last_error);
	} else if (*kind == ROW_FAILED) {
		printf("  %s  cert %lld  %s%s%s\n", row->device_serial, (long long)row->cert_id,
		       row->device_id[0] ? "device " : "", row->device_id,
		       row->device_id[0] ? ": " : "");
		printf("      %s\n", row->last_error);
	} else {
		printf("  %s  cert %lld  device %s  %s  %s\n", row->device_serial,
		       (long long)row->cert_id, row->device_id, row->result, row->sent_at);
	}
	return 0;
}

static void describe_auth(const struct ps_config *cfg, char *out, size_t len)
{
	const char *env_token = getenv(PS_PREAUTH_TOKEN_ENV);

	if (cfg->preauth_token_file[0] != '\0')
		snprintf(out, len, "personal access token (file %s)", cfg->preauth_token_file);
	else if (cfg->preauth_username[0] == '\0' && env_token != NULL && *env_token != '\0')
		snprintf(out, len, "personal access token ($%s)", PS_PREAUTH_TOKEN_ENV);
	else if (cfg->preauth_username[0] != '\0')
		snprintf(out, len, "login as %s", cfg->preauth_username);
	else
		snprintf(out, len, "no credentials configured");
}

static int run_status(struct ps_db *db, const struct ps_config *cfg, bool all, struct ps_err *err)
{
	struct ps_preauth_status s;
	enum row_kind queued = ROW_QUEUED, failed = ROW_FAILED, done = ROW_DONE;
	char when[32], auth[320];
	int rc = ps_preauth_status(db, cfg, &s, err);

	if (rc < 0)
		return rc;
	describe_auth(cfg, auth, sizeof(auth));
	if (cfg->preauth_enabled)
		printf(
		    "preauthorization  on: %s, %s, on_conflict = %s\n", cfg->preauth_server, auth,
		    cfg->preauth_on_conflict == PS_PREAUTH_CONFLICT_REPLACE ? "replace" : "fail");
	else
		printf("preauthorization  off ([preauth] enabled = false)\n");
	when_text(s.next_attempt_ms, when, sizeof(when));
	printf("state             %s\n", ps_preauth_state_name(s.state));
	printf("queued            %ld", s.queued);
	if (s.queued > 0)
		printf(" (%ld after failed attempts; next attempt %s)", s.retrying, when);
	printf("\nawaiting verify   %ld\n", s.held);
	printf("failed            %ld\n", s.failed);
	printf("done              %ld\n", s.done);
	if (s.last_error[0] != '\0')
		printf("last error        %s\n", s.last_error);
	if (s.queued + s.held > 0) {
		printf("queued:\n");
		rc = ps_outbox_each(db, PS_OUTBOX_PENDING, 0, print_row, &queued, err);
	}
	if (rc == 0 && s.failed > 0) {
		printf("failed:\n");
		rc = ps_outbox_each(db, PS_OUTBOX_FAILED, 0, print_row, &failed, err);
	}
	if (rc == 0 && all && s.done > 0) {
		printf("done:\n");
		rc = ps_outbox_each(db, PS_OUTBOX_DONE, 0, print_row, &done, err);
	}
	return rc;
}

/* Send (one certificate's row, or all); prints each event and what remains. 0 when nothing
 * remains and nothing failed, 1 when something remains queued, 2 when something failed, or
 * an error. */
static int run_flush(struct ps_db *db, const struct ps_config *cfg, int64_t only_cert_id,
		     long wait_ms, enum ps_preauth_conflict_policy policy, struct ps_err *err)
{
	struct ps_preauth_flush_opts opts = {
	    .only_cert_id = only_cert_id,
	    .wait_ms = wait_ms,
	    .policy = policy,
	    .report = print_event,
	    .stop = &interrupted,
	};
	struct ps_preauth_flush_result res;
	struct ps_preauth_client *client = NULL;
	struct sigaction sa;
	char when[32];
	int rc;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	rc = ps_preauth_client_open(cfg, &interrupted, &client, err);
	if (rc < 0)
		return rc;
	rc = ps_preauth_flush(db, client, &opts, &res, err);
	ps_preauth_client_close(client);
	if (rc < 0 && rc != PS_EPERM && rc != PS_ENET)
		return rc;
	when_text(res.next_attempt_ms, when, sizeof(when));
	printf("%ld sent, %ld failed, %ld remaining", res.sent, res.failed, res.remaining);
	if (res.remaining > 0 && res.in_flight > 0)
		printf(" (%ld being sent by another process)", res.in_flight);
	if (res.remaining > 0)
		printf("; next attempt %s", when);
	printf("\n");
	if (res.remaining > 0) {
		struct ps_err lerr = {""};
		enum row_kind kind = ROW_QUEUED;

		printf("remaining:\n");

		if (ps_outbox_each(db, PS_OUTBOX_PENDING, only_cert_id, print_row, &kind, &lerr) <
		    0)
			printf("  (%s)\n", lerr.msg);
	}
	if (atomic_load(&interrupted))
		return ps_fail(err, PS_EIO, "interrupted; what remains stays queued");
	if (rc < 0)
		return rc;
	return res.remaining > 0 ? 1 : (res.failed > 0 ? 2 : 0);
}

int cmd_preauth(int argc, char **argv)
{
	static const struct option opts[] = {
	    /* the common options but --ca-dir: preauthorizing needs no CA */
	    {"config", required_argument, NULL, CLI_OPT_CONFIG},
	    {"db", required_argument, NULL, CLI_OPT_DB},
	    {"wait", required_argument, NULL, OPT_WAIT},
	    {"serial", required_argument, NULL, OPT_SERIAL},
	    {"queue-only", no_argument, NULL, OPT_QUEUE_ONLY},
	    {"on-conflict", required_argument, NULL, OPT_ON_CONFLICT},
	    {"all", no_argument, NULL, OPT_ALL},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct cli_common_args args = {0};
	const char *serial = NULL, *action = NULL;
	const char *on_conflict = NULL;
	bool queue_only = false, all = false, have_cfg = false;
	enum ps_preauth_conflict_policy policy;
	struct ps_config cfg;
	struct ps_db *db = NULL;
	struct ps_err err = {""};
	long wait_s = 0;
	int64_t cert_id = 0;
	int c, rc = PS_EXIT_OK;

	if (argc > 1 && argv[1][0] != '-') {
		action = argv[1];
		argc--;
		argv++;
	}
	optind = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (cli_common_option(c, &args))
			continue;
		switch (c) {
		case OPT_WAIT:
			if (ps_parse_int("--wait", optarg, 0, 86400, &wait_s, &err) < 0)
				return cli_usage_error("preauth", "%s", err.msg);
			break;
		case OPT_SERIAL:
			serial = optarg;
			break;
		case OPT_QUEUE_ONLY:
			queue_only = true;
			break;
		case OPT_ON_CONFLICT:
			on_conflict = optarg;
			break;
		case OPT_ALL:
			all = true;
			break;
		case 'h':
			usage_preauth(stdout);
			return PS_EXIT_OK;
		default:
			return cli_usage_error("preauth", "bad option");
		}
	}
	if (optind < argc)
		return cli_usage_error("preauth", "unexpected argument '%s'", argv[optind]);
	if (action != NULL && strcmp(action, "status") != 0 && strcmp(action, "flush") != 0)
		return cli_usage_error("preauth", "unknown action '%s' (status, flush)", action);
	if ((action == NULL) == (serial == NULL))
		return cli_usage_error("preauth", "give status, flush or --serial SERIAL");
	if ((queue_only || on_conflict != NULL) && serial == NULL)
		return cli_usage_error("preauth",
				       "--queue-only and --on-conflict go with --serial");
	if (wait_s > 0 && (action == NULL || strcmp(action, "flush") != 0))
		return cli_usage_error("preauth", "--wait goes with flush");
	if (all && (action == NULL || strcmp(action, "status") != 0))
		return cli_usage_error("preauth", "--all goes with status");
	if (on_conflict != NULL && strcmp(on_conflict, "fail") != 0 &&
	    strcmp(on_conflict, "replace") != 0)
		return cli_usage_error("preauth", "--on-conflict is fail or replace");

	if (cli_load_config(&cfg, args.config, NULL, args.db, &err) < 0)
		goto fail;
	have_cfg = true;
	policy = cfg.preauth_on_conflict;
	if (on_conflict != NULL)
		policy = strcmp(on_conflict, "replace") == 0 ? PS_PREAUTH_CONFLICT_REPLACE
							     : PS_PREAUTH_CONFLICT_FAIL;
	if (action == NULL || strcmp(action, "status") != 0) {
		if (!cfg.preauth_enabled) {
			ps_fail(&err, PS_EINVAL,
				"preauthorization is off: set [preauth] enabled = true in %s",
				cfg.source ? cfg.source : PS_DEFAULT_CONFIG);
			goto fail;
		}
	}
	if (ps_db_open(cfg.database, &db, &err) < 0)
		goto fail;
	if (action != NULL && strcmp(action, "status") == 0) {
		if (run_status(db, &cfg, all, &err) < 0)
			goto fail;
		goto out;
	}
	if (serial != NULL) {
		if (ps_check_serial(serial, &err) < 0 ||
		    ps_preauth_requeue_serial(db, &cfg, serial, &cert_id, &err) < 0)
			goto fail;
		if (queue_only) {
			printf("%s: queued (certificate %lld)\n", serial, (long long)cert_id);
			goto out;
		}
	}
	rc = run_flush(db, &cfg, cert_id, wait_s * 1000, policy, &err);
	if (rc < 0)
		goto fail;
	if (rc == 1 && serial != NULL)
		fprintf(stderr,
			"provstation: %s is not preauthorized yet; it stays queued for the station "
			"or `provstation preauth flush`\n",
			serial);
	rc = rc > 0 ? PS_EXIT_FAIL : PS_EXIT_OK;
	goto out;
fail:
	rc = cli_error(&err);
out:
	ps_db_close(db);
	if (have_cfg)
		ps_config_free(&cfg);
	return rc;
}
