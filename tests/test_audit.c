/* test_audit.c — unit tests for the audit store (db/): the lifecycle and its transitions,
 * supersede, history, revocation, CRL numbers, the hash chain catching changed, deleted and
 * reordered rows, CSV quoting, import (idempotent, byte-identical round trips, conflicts,
 * newer and older rows), backup and a busy database; serials from sequences (numbering,
 * certificates counted, prefixes with GLOB characters, concurrent threads and processes). */
#include "audit.h"
#include "config.h"
#include "export.h"
#include "import.h"
#include "sequence.h"
#include "tap.h"

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define CA_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define CA_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

static char dir[] = "/tmp/ps-test-audit.XXXXXX";
static struct ps_audit_context ctx = {"line-3", "alice", "WO-17", CA_A};

static void at(const char *when)
{
	setenv("PROVSTATION_NOW", when, 1);
}

static char *path_of(const char *name)
{
	static char buf[8][512];
	static int i;

	i = (i + 1) % 8;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
	return buf[i];
}

static int64_t issue(struct ps_db *db, const char *device, const char *serial,
		     const struct ps_audit_context *c)
{
	struct ps_issue_record rec = {
	    .device_serial = device,
	    .common_name = device,
	    .pubkey_pem = "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
	    .pubkey_sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	    .cert_serial = serial,
	    .cert_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
	    .not_before = 1795000000,
	    .not_after = 2110000000,
	    .target = "/dev/sdb",
	    .image_name = "core-image.sdimg",
	    .image_sha256 = "",
	};
	struct ps_err err = {""};
	int64_t id = 0;

	if (ps_db_record_issued(db, c ? c : &ctx, &rec, &id, &err) < 0)
		printf("# record_issued: %s\n", err.msg);
	return id;
}

struct rows {
	char text[4096];
	long n;
};

static int collect(const struct ps_cert_row *row, void *user)
{
	struct rows *r = user;
	size_t used = strlen(r->text);

	snprintf(r->text + used, sizeof(r->text) - used, "%s%s:%s:%s", r->n ? " " : "",
		 row->cert_serial, row->state, row->reason);
	r->n++;
	return 0;
}

static const char *state_of(struct ps_db *db, int64_t id)
{
	static struct rows r;
	struct ps_db_filter one = {.id = id};

	memset(&r, 0, sizeof(r));
	ps_db_each(db, &one, collect, &r, NULL);
	return r.text;
}

/* Export to a string (malloc'd). */
static char *export_string(struct ps_db *db, enum ps_export_format format, long *count)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	struct ps_err err = {""};

	if (ps_export(db, NULL, format, f, count, &err) < 0)
		printf("# export: %s\n", err.msg);
	fclose(f);
	return buf;
}

static int import_string(struct ps_db *db, const char *text, struct ps_import_stats *stats,
			 struct ps_err *err)
{
	/* glibc's fmemopen refuses a zero size: an empty file is /dev/null. */
	FILE *f =
	    *text ? fmemopen((void *)(uintptr_t)text, strlen(text), "r") : fopen("/dev/null", "r");
	int rc = ps_import(db, f, "test", PS_IMPORT_DETECT, &ctx, stats, NULL, err);

	fclose(f);
	return rc;
}

/* Run SQL on a database file behind provstation's back, as someone with the sqlite3 shell. */
static void tamper(const char *file, const char *sql)
{
	sqlite3 *s = NULL;
	char *msg = NULL;

	if (sqlite3_open(file, &s) != SQLITE_OK || sqlite3_exec(s, sql, NULL, NULL, &msg) != 0)
		printf("# tamper: %s\n", msg ? msg : sqlite3_errmsg(s));
	sqlite3_free(msg);
	sqlite3_close(s);
}

static int verify_file(const char *file, struct ps_err *err)
{
	struct ps_db *db = NULL;
	struct ps_db_verify_report rep;
	int rc = ps_db_open(file, &db, err);

	if (rc == 0)
		rc = ps_db_verify(db, &rep, err);
	ps_db_close(db);
	return rc;
}

/* A copy of the database (through the backup API) to tamper with, then verified. */
static int tampered(struct ps_db *db, const char *name, const char *sql, struct ps_err *err)
{
	char *copy = path_of(name);

	if (ps_db_backup(db, copy, err) < 0)
		return 1;
	tamper(copy, sql);
	return verify_file(copy, err);
}

static void test_lifecycle(struct ps_db *db)
{
	struct ps_err err = {""};
	struct rows r;
	int64_t a1, a2, b1;

	ok(ps_db_transition_allowed("issued", "written") &&
	       ps_db_transition_allowed("written", "verified") &&
	       ps_db_transition_allowed("verified", "revoked") &&
	       ps_db_transition_allowed("superseded", "revoked") &&
	       ps_db_transition_allowed("failed", "revoked"),
	   "the lifecycle's transitions are allowed");
	ok(!ps_db_transition_allowed("verified", "written") &&
	       !ps_db_transition_allowed("revoked", "verified") &&
	       !ps_db_transition_allowed("failed", "verified") &&
	       !ps_db_transition_allowed("verified", "verified"),
	   "backwards, out of revoked and to the same state are not");

	at("1795000100");
	a1 = issue(db, "SN-A", "0a01", NULL);
	ok(a1 > 0, "issued a certificate");
	is_str(state_of(db, a1), "0a01:issued:", "it starts in state issued");
	ok(ps_db_set_state(db, a1, PS_STATE_WRITTEN, "", &ctx, &err) == 0, "issued -> written");
	ok(ps_db_set_state(db, a1, PS_STATE_VERIFIED, "", &ctx, &err) == 0, "written -> verified");
	is_int(ps_db_set_state(db, a1, PS_STATE_WRITTEN, "", &ctx, &err), PS_EINVAL,
	       "verified -> written is refused");
	is_str(err.msg, "certificate 1 is verified; it cannot become written",
	       "the refusal names the certificate and both states");
	is_int(ps_db_set_state(db, 999, PS_STATE_WRITTEN, "", &ctx, &err), PS_ENOENT,
	       "an unknown certificate id");

	b1 = issue(db, "SN-B", "0b01", NULL);
	ok(ps_db_set_state(db, b1, PS_STATE_FAILED, "write failed: p4: I/O error", &ctx, &err) == 0,
	   "issued -> failed with a reason");
	is_str(state_of(db, b1), "0b01:failed:write failed: p4: I/O error",
	       "the failure reason is kept in the row");
	is_int(ps_db_set_state(db, b1, PS_STATE_VERIFIED, "", &ctx, &err), PS_EINVAL,
	       "failed -> verified is refused");
	ok(ps_db_restate_failure(db, b1,
				 "card removed from slot front during the job: write failed: p4: "
				 "I/O error",
				 &ctx, &err) == 0,
	   "a failure's reason restated: %s", err.msg);
	is_str(state_of(db, b1),
	       "0b01:failed:card removed from slot front during the job: write failed: p4: I/O "
	       "error",
	       "the row has the new reason");
	is_int(ps_db_restate_failure(db, a1, "card removed", &ctx, &err), PS_EINVAL,
	       "only a failed certificate's reason is restated");
	{
		struct ps_db_verify_report rep;

		ok(ps_db_verify(db, &rep, &err) == 0 && rep.events == 6,
		   "the chain holds the restatement as a sixth event and verifies: %s", err.msg);
	}

	/* The device is provisioned again: the new certificate supersedes the old one. */
	at("1795000200");
	a2 = issue(db, "SN-A", "0a02", NULL);
	ps_db_set_state(db, a2, PS_STATE_WRITTEN, "", &ctx, &err);
	ps_db_set_state(db, a2, PS_STATE_VERIFIED, "", &ctx, &err);
	ok(ps_db_supersede(db, "SN-A", a2, false, &ctx, &err) == 0, "supersede: %s", err.msg);
	is_str(state_of(db, a1), "0a01:superseded:by 0a02", "the old certificate is superseded");
	is_str(state_of(db, a2), "0a02:verified:", "the new one stays verified");
	ok(ps_db_supersede(db, "SN-A", a2, false, &ctx, &err) == 0, "supersede again: no-op");
	is_str(state_of(db, a1), "0a01:superseded:by 0a02", "... still superseded, once");
	is_int(ps_db_supersede(db, "SN-B", a2, false, &ctx, &err), PS_EINVAL,
	       "supersede with another device's certificate is refused");

	memset(&r, 0, sizeof(r));
	ok(ps_db_history(db, "SN-A", collect, &r, &err) == 0, "history of SN-A");
	is_str(r.text, "0a01:superseded:by 0a02 0a02:verified:", "its rows, oldest first");
	memset(&r, 0, sizeof(r));
	ps_db_history(db, "SN-none", collect, &r, &err);
	is_int(r.n, 0, "history of an unknown device is empty");
}

static void test_revoke(struct ps_db *db)
{
	struct ps_revoke_request req = {.reason = "keyCompromise"};
	struct ps_revoke_result res;
	struct ps_err err = {""};
	struct ps_audit_context other = ctx;
	struct rows r;
	int64_t c1, c2, c3;
	long n = 0;

	at("1795000300");
	c1 = issue(db, "SN-C", "0c01", NULL);
	c2 = issue(db, "SN-C", "c02f", NULL);
	/* Replaced with revocation: the old certificate is revoked as superseded. */
	ok(ps_db_supersede(db, "SN-C", c2, true, &ctx, &err) == 0, "supersede with revoke");
	is_str(state_of(db, c1), "0c01:revoked:superseded", "revoked, reason superseded");

	req.cert_serial = "C0:2F"; /* as openssl -text prints it */
	ok(ps_db_revoke(db, &req, &ctx, &res, &err) == 0, "revoke by serial: %s", err.msg);
	ok(res.revoked == 1 && res.already == 0, "one certificate revoked");
	is_str(state_of(db, c2), "c02f:revoked:keyCompromise", "with its reason");
	ok(ps_db_revoke(db, &req, &ctx, &res, &err) == 0 && res.revoked == 0 && res.already == 1,
	   "revoking it again changes nothing");
	req.cert_serial = "a02"; /* no leading zero: stored as 0a02 */
	ok(ps_db_revoke(db, &req, &ctx, &res, &err) == 0 && res.revoked == 1,
	   "a serial without its leading zero finds the certificate");
	is_str(state_of(db, 3), "0a02:revoked:keyCompromise", "it is 0a02");
	req.cert_serial = "ffff";
	is_int(ps_db_revoke(db, &req, &ctx, &res, &err), PS_ENOENT, "an unknown serial");
	contains(err.msg, "no certificate with serial ffff", "the error names it");
	req.cert_serial = "xyz";
	is_int(ps_db_revoke(db, &req, &ctx, &res, &err), PS_EINVAL, "a serial that is not hex");

	/* The same serial from another CA: ambiguous unless the CA is given. */
	other.ca_fingerprint = CA_B;
	c3 = issue(db, "SN-D", "0c01", &other);
	ok(c3 > 0, "the same serial under another CA is another certificate");
	req.cert_serial = "0c01";
	req.reason = "cessationOfOperation";
	is_int(ps_db_revoke(db, &req, &ctx, &res, &err), PS_ECONFLICT,
	       "a serial of two CAs is ambiguous");
	req.ca_fingerprint = CA_B;
	ok(ps_db_revoke(db, &req, &ctx, &res, &err) == 0 && res.revoked == 1,
	   "... and revoked once the CA is given");
	is_str(state_of(db, c3), "0c01:revoked:cessationOfOperation", "the other CA's one");

	req = (struct ps_revoke_request){.device_serial = "SN-A", .reason = "unspecified"};
	ok(ps_db_revoke(db, &req, &ctx, &res, &err) == 0 && res.revoked == 1 && res.already == 1,
	   "revoke a device: the certificate not revoked yet; the other was already");
	req.device_serial = "SN-nobody";
	is_int(ps_db_revoke(db, &req, &ctx, &res, &err), PS_ENOENT, "an unknown device");

	ok(ps_db_next_crl_number(db, CA_A, &n, &err) == 0 && n == 1, "first CRL number is 1");
	ok(ps_db_next_crl_number(db, CA_A, &n, &err) == 0 && n == 2, "then 2");
	ok(ps_db_next_crl_number(db, CA_B, &n, &err) == 0 && n == 1, "another CA counts its own");

	memset(&r, 0, sizeof(r));
	{
		struct ps_db_filter f = {.state = PS_STATE_REVOKED, .ca_fingerprint = CA_A};

		ps_db_each(db, &f, collect, &r, &err);
	}
	is_str(r.text,
	       "0a01:revoked:unspecified 0a02:revoked:keyCompromise 0c01:revoked:superseded "
	       "c02f:revoked:keyCompromise",
	       "the revoked certificates of one CA, for its CRL");
}

static void test_chain(struct ps_db *db)
{
	struct ps_db_verify_report rep;
	struct ps_err err = {""};

	ok(ps_db_check_integrity(db, false, &err) == 0, "integrity check: %s", err.msg);
	ok(ps_db_check_integrity(db, true, &err) == 0, "quick integrity check: %s", err.msg);
	ok(ps_db_verify(db, &rep, &err) == 0, "the chain verifies: %s", err.msg);
	ok(rep.events > 10 && rep.certificates == 6 && strlen(rep.head) == 64,
	   "%ld events, %ld certificates, head hash", rep.events, rep.certificates);

	is_int(tampered(db, "t1.db",
			"UPDATE certificates SET state = 'verified', reason = '', "
			"revoked_at = '' WHERE id = 4",
			&err),
	       PS_EDB, "a certificate un-revoked with the sqlite3 shell");
	contains(err.msg, "certificate id 4", "names the certificate");
	contains(err.msg, "state", "... and the column");
	is_int(tampered(db, "t2.db", "UPDATE certificates SET batch = 'WO-99' WHERE id = 1", &err),
	       PS_EDB, "an edited batch");
	contains(err.msg, "has batch 'WO-99', but its events", "shows both values");
	is_int(tampered(db, "t3.db", "UPDATE events SET operator = 'mallory' WHERE seq = 2", &err),
	       PS_EDB, "an edited event");
	contains(err.msg, "event seq 2: the row was changed", "names its seq");
	is_int(tampered(db, "t4.db", "DELETE FROM events WHERE seq = 5", &err), PS_EDB,
	       "a deleted event");
	contains(err.msg, "event seq 5 is missing", "names the gap");
	is_int(tampered(db, "t5.db",
			"UPDATE events SET seq = -1 WHERE seq = 3; UPDATE events SET seq = 3 "
			"WHERE seq = 4; UPDATE events SET seq = 4 WHERE seq = -1",
			&err),
	       PS_EDB, "two events swapped");
	contains(err.msg, "event seq 3: it does not follow seq 2", "names where the order breaks");
	is_int(tampered(db, "t6.db",
			"UPDATE events SET detail = (SELECT detail FROM events WHERE seq = 3) "
			"WHERE seq = 2",
			&err),
	       PS_EDB, "one event's detail copied over another's");
	contains(err.msg, "seq 2", "names it");
	is_int(tampered(db, "t7.db",
			"PRAGMA foreign_keys = OFF; DELETE FROM certificates WHERE id = 2", &err),
	       PS_EDB, "a deleted certificate");
	contains(err.msg, "names certificate id 2, which is not in the certificates table",
		 "names it");
	is_int(tampered(db, "t8.db",
			"INSERT INTO certificates (device_serial, common_name, pubkey_pem, "
			"pubkey_sha256, cert_serial, cert_pem, not_before, not_after, state, "
			"station_id, operator, ca_fingerprint, created_at, updated_at) SELECT "
			"device_serial, common_name, pubkey_pem, pubkey_sha256, 'dead', cert_pem, "
			"not_before, not_after, 'verified', station_id, operator, ca_fingerprint, "
			"created_at, updated_at FROM certificates WHERE id = 1",
			&err),
	       PS_EDB, "a certificate inserted around the chain");
	contains(err.msg, "has no events", "is found");
	is_int(tampered(db, "t9.db", "DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)",
			&err),
	       PS_EDB, "the last event deleted");
	ok(tampered(db, "t10.db", "SELECT 1", &err) == 0, "an untouched copy verifies: %s",
	   err.msg);
	is_int(ps_db_backup(db, path_of("t10.db"), &err), PS_EEXIST,
	       "a backup never overwrites a file");
}

static void test_csv_quoting(struct ps_db *db)
{
	struct ps_audit_context odd = {"line-3", "o'brien", "a,\"b\"\nc", CA_A};
	struct ps_err err = {""};
	char *csv;
	int64_t id;

	at("1795000400");
	id = issue(db, " SN,E \"quoted\"", "0e01", &odd);
	ok(ps_db_set_state(db, id, PS_STATE_FAILED, "line one\r\nline two, \"said\" it", &odd,
			   &err) == 0,
	   "a failure reason with CR LF, a comma and quotes");
	csv = export_string(db, PS_EXPORT_CSV, NULL);
	ok(strncmp(csv, "device_serial,common_name,cert_serial,state,reason,not_before,", 62) == 0,
	   "the CSV header names the columns in order");
	contains(csv,
		 "\r\n\" SN,E \"\"quoted\"\"\",\" SN,E \"\"quoted\"\"\",0e01,failed,"
		 "\"line one\r\nline two, \"\"said\"\" it\",",
		 "fields with commas, quotes, CR LF are quoted, quotes doubled, spaces kept");
	contains(csv, ",line-3,o'brien,\"a,\"\"b\"\"\nc\",", "the batch with a line break too");
	ok(strstr(csv, "\r\n") != NULL && csv[strlen(csv) - 1] == '\n' &&
	       csv[strlen(csv) - 2] == '\r',
	   "records end with CR LF");
	free(csv);
}

/* The JSON lines export writes its strings itself; every line must be what jansson's
 * json_dumps(JSON_COMPACT | JSON_PRESERVE_ORDER) gives for the same object. */
static void test_jsonl_is_janssons(struct ps_db *db)
{
	struct ps_audit_context odd = {"line-3", "b\\ack\tslash/",
				       "\x01\x1f\x7f \xc3\xb8 \xe2\x82\xac "
				       "\xf0\x9f\x98\x80 \\u0041",
				       CA_A};
	char *text, *line, *save = NULL;
	long lines = 0, same = 0;

	issue(db, "SN-\xe2\x80\xa8-G", "0e02", &odd); /* U+2028, which JSON leaves as it is */
	text = export_string(db, PS_EXPORT_JSONL, NULL);
	for (line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
		json_t *obj = json_loads(line, 0, NULL), *again = json_object();
		const char *key;
		json_t *value;
		char *dump;

		json_object_foreach(obj, key, value)
		{
			json_object_set(again, key, value);
		}
		dump = json_dumps(again, JSON_COMPACT | JSON_PRESERVE_ORDER);
		lines++;
		same += dump != NULL && strcmp(dump, line) == 0;
		if (dump == NULL || strcmp(dump, line) != 0)
			printf("# ours:    %s\n# jansson: %s\n", line, dump ? dump : "(null)");
		free(dump);
		json_decref(obj);
		json_decref(again);
	}
	ok(lines > 5 && same == lines, "%ld JSON lines, each byte for byte what jansson writes",
	   lines);
	free(text);
}

static void test_import(struct ps_db *db)
{
	struct ps_import_stats st;
	struct ps_err err = {""};
	struct ps_db *copy = NULL, *j = NULL;
	char *csv1, *csv2, *jsonl1, *text;
	long n1 = 0, n2 = 0;

	csv1 = export_string(db, PS_EXPORT_CSV, &n1);
	jsonl1 = export_string(db, PS_EXPORT_JSONL, NULL);
	ok(ps_db_open(path_of("copy.db"), &copy, &err) == 0, "an empty database");
	at("1795000500");
	ok(import_string(copy, csv1, &st, &err) == 0, "import the CSV export: %s", err.msg);
	is_int(st.added, n1, "every row added");
	csv2 = export_string(copy, PS_EXPORT_CSV, &n2);
	ok(n1 == n2 && strcmp(csv1, csv2) == 0, "CSV: export, import, export: identical bytes");
	free(csv2);
	ok(import_string(copy, csv1, &st, &err) == 0 && st.added == 0 && st.updated == 0 &&
	       st.unchanged == n1,
	   "importing it again changes nothing");
	ok(import_string(copy, jsonl1, &st, &err) == 0 && st.unchanged == n1,
	   "nor does the same rows as JSON lines");
	text = export_string(copy, PS_EXPORT_JSONL, NULL);
	ok(strcmp(text, jsonl1) == 0, "its JSON lines export is the original's");
	free(text);
	{
		struct ps_db_verify_report rep;

		ok(ps_db_verify(copy, &rep, &err) == 0 && rep.events == n1,
		   "one imported event per row, and the chain verifies: %s", err.msg);
	}

	ok(ps_db_open(path_of("j.db"), &j, &err) == 0 && import_string(j, jsonl1, &st, &err) == 0,
	   "import the JSON lines export into another empty database: %s", err.msg);
	text = export_string(j, PS_EXPORT_JSONL, NULL);
	ok(strcmp(text, jsonl1) == 0, "JSON lines: export, import, export: identical bytes");
	free(text);
	text = export_string(j, PS_EXPORT_CSV, NULL);
	ok(strcmp(text, csv1) == 0, "... and its CSV is the original CSV");
	free(text);

	/* The original moves on: a certificate is revoked there; merging carries it over. */
	at("1795000600");
	{
		struct ps_revoke_request req = {.cert_serial = "0b01", .reason = "keyCompromise"};
		struct ps_revoke_result res;

		ps_db_revoke(db, &req, &ctx, &res, &err);
	}
	text = export_string(db, PS_EXPORT_CSV, NULL);
	ok(import_string(copy, text, &st, &err) == 0 && st.updated == 1 && st.unchanged == n1 - 1,
	   "a later export: the revoked row is updated, the rest unchanged");
	is_str(state_of(copy, 2), "0b01:revoked:keyCompromise", "the copy has the revocation");
	ok(import_string(copy, csv1, &st, &err) == 0 && st.skipped == 1 && st.updated == 0,
	   "the older export again: the newer row is kept (skipped)");
	free(text);
	{
		struct ps_db_verify_report rep;

		ok(ps_db_verify(copy, &rep, &err) == 0, "the merged copy verifies: %s", err.msg);
	}

	/* Rows that cannot be right. */
	text = strdup(csv1);
	{
		char *p = strstr(text, "MIIB");

		p[0] = 'X'; /* another certificate under a known serial */
	}
	is_int(import_string(copy, text, &st, &err), PS_ECONFLICT,
	       "a known certificate with other content is refused");
	contains(err.msg, "record 2", "names the record");
	contains(err.msg, "different cert_pem", "and the column");
	free(text);

	is_int(import_string(copy, "device_serial,bogus\r\n", &st, &err), PS_EINVAL,
	       "an unknown header column");
	contains(err.msg, "record 1: field 2 of the header is an unknown column 'bogus'",
		 "names it");
	is_int(import_string(copy, "{\"device_serial\":\"x\"}\n", &st, &err), PS_EINVAL,
	       "a JSON line without every column");
	contains(err.msg, "line 1: no string member \"common_name\"", "names what is missing");
	is_int(import_string(copy, "hello\n", &st, &err), PS_EINVAL, "neither CSV nor JSON");
	ok(import_string(copy, "", &st, &err) == 0 && st.added == 0, "an empty file: nothing");

	ps_db_close(copy);
	ps_db_close(j);
	free(csv1);
	free(jsonl1);
}

/* CSV as other tools write it: spaces kept, CR LF in a quoted field, a byte order mark,
 * columns in another order, no CR before LF, no final line break; and malformed CSV. */
static void test_csv_reader(void)
{
	struct ps_db *db = NULL;
	struct ps_import_stats st;
	struct ps_err err = {""};
	struct rows r;
	char csv[4096];
#define FOREIGN_ROW(serial)                                                                        \
	"  dev 1 ,dev1," serial ",revoked,\"keyCompromise\",2026-11-23T11:07:36Z,"                 \
	"2036-11-23T11:07:36Z,ab,\"-----BEGIN PUBLIC KEY-----\r\nMFkw\r\n"                         \
	"-----END PUBLIC KEY-----\r\n\",pem,st-9,bob,," CA_B ",,,,2026-11-24T00:00:00Z,"           \
	"2026-11-23T11:07:36Z,2026-11-24T00:00:00Z"

	ok(ps_db_open(path_of("reader.db"), &db, &err) == 0, "a database for foreign CSV");
	snprintf(csv, sizeof(csv),
		 "\xef\xbb\xbf"
		 "device_serial,common_name,cert_serial,state,reason,not_before,not_after,"
		 "pubkey_sha256,pubkey_pem,cert_pem,station_id,operator,batch,ca_fingerprint,"
		 "target,image_name,image_sha256,revoked_at,created_at,updated_at\n%s",
		 FOREIGN_ROW("0f01"));
	ok(import_string(db, csv, &st, &err) == 0 && st.added == 1,
	   "a BOM, LF line ends, no final line break: %s", err.msg);
	memset(&r, 0, sizeof(r));
	ps_db_history(db, "  dev 1 ", collect, &r, &err);
	is_str(r.text, "0f01:revoked:keyCompromise", "spaces around an unquoted field are kept");
	{
		char *out = export_string(db, PS_EXPORT_CSV, NULL);

		contains(out,
			 "\"-----BEGIN PUBLIC KEY-----\r\nMFkw\r\n-----END PUBLIC KEY-----\r\n\"",
			 "CR LF inside a quoted field survive");
		free(out);
	}
	snprintf(csv, sizeof(csv),
		 "common_name,device_serial,cert_serial,state,reason,not_before,not_after,"
		 "pubkey_sha256,pubkey_pem,cert_pem,station_id,operator,batch,ca_fingerprint,"
		 "target,image_name,image_sha256,revoked_at,created_at,updated_at\r\n%s\r\n",
		 FOREIGN_ROW("0f05"));
	ok(import_string(db, csv, &st, &err) == 0 && st.added == 1,
	   "columns in another order are read by name: %s", err.msg);
	memset(&r, 0, sizeof(r));
	ps_db_history(db, "dev1", collect, &r, &err);
	is_str(r.text, "0f05:revoked:keyCompromise", "... into the columns they name");
	snprintf(csv, sizeof(csv),
		 "device_serial,common_name,cert_serial,state,reason,not_before,not_after,"
		 "pubkey_sha256,pubkey_pem,cert_pem,station_id,operator,batch,ca_fingerprint,"
		 "target,image_name,image_sha256,revoked_at,created_at,updated_at\r\n"
		 "a\"b,x,0f02\r\n");
	is_int(import_string(db, csv, &st, &err), PS_EINVAL, "a quote inside an unquoted field");
	contains(err.msg, "record 2", "names the record");
	snprintf(csv, sizeof(csv),
		 "device_serial,common_name,cert_serial,state,reason,not_before,not_after,"
		 "pubkey_sha256,pubkey_pem,cert_pem,station_id,operator,batch,ca_fingerprint,"
		 "target,image_name,image_sha256,revoked_at,created_at,updated_at\r\n"
		 "\"unterminated,x,0f02\r\n");
	is_int(import_string(db, csv, &st, &err), PS_EINVAL, "an unterminated quoted field");
	snprintf(csv, sizeof(csv),
		 "device_serial,common_name,cert_serial,state,reason,not_before,not_after,"
		 "pubkey_sha256,pubkey_pem,cert_pem,station_id,operator,batch,ca_fingerprint,"
		 "target,image_name,image_sha256,revoked_at,created_at,updated_at\r\n"
		 "d,x,0F03,verified,,2026-11-23T11:07:36Z,2036-11-23T11:07:36Z,ab,p,c,s,o,," CA_B
		 ",,,,,2026-11-24T00:00:00Z,2026-11-24T00:00:00Z\r\n");
	is_int(import_string(db, csv, &st, &err), PS_EINVAL, "an upper-case serial");
	contains(err.msg, "cert_serial is not lower-case hexadecimal", "says so");
	{
		struct ps_db_filter f = {.cert_serial = "0f02"};

		memset(&r, 0, sizeof(r));
		ps_db_each(db, &f, collect, &r, &err);
		is_int(r.n, 0, "a failed import leaves nothing behind");
	}
	ps_db_close(db);
}

static void test_text_and_busy(struct ps_db *db)
{
	struct ps_issue_record rec = {.device_serial = "SN-F",
				      .common_name = "SN-F",
				      .pubkey_pem = "p",
				      .pubkey_sha256 = "ab",
				      .cert_serial = "0f0f",
				      .cert_pem = "c",
				      .target = "/images/caf\xe9.img"}; /* Latin-1, not UTF-8 */
	struct ps_db_verify_report rep;
	struct ps_err err = {""};
	struct ps_db *second = NULL;
	sqlite3 *holder = NULL;
	int64_t id = 0;
	char *jsonl;

	ok(ps_db_record_issued(db, &ctx, &rec, &id, &err) == 0,
	   "a target path that is not UTF-8 is recorded: %s", err.msg);
	jsonl = export_string(db, PS_EXPORT_JSONL, NULL);
	contains(jsonl, "\"target\":\"/images/caf\xef\xbf\xbd.img\"",
		 "with U+FFFD for the bad byte, so JSON can carry it");
	free(jsonl);
	ok(ps_db_verify(db, &rep, &err) == 0, "and the chain verifies: %s", err.msg);

	/* Someone holds the write lock (BEGIN IMMEDIATE) longer than the busy timeout. */
	sqlite3_open(path_of("audit.db"), &holder);
	sqlite3_exec(holder, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	setenv(PS_DB_BUSY_ENV, "100", 1);
	ok(ps_db_open(path_of("audit.db"), &second, &err) == 0,
	   "opening works while another process writes: %s", err.msg);
	is_int(ps_db_set_state(second, id, PS_STATE_WRITTEN, "", &ctx, &err), PS_EBUSY,
	       "a write waits 100 ms, then gives up");
	contains(err.msg, "is busy (another process holds it); try again", "saying it is busy");
	ok(ps_db_verify(second, &rep, &err) == 0, "reading is not blocked by the writer");
	sqlite3_exec(holder, "COMMIT", NULL, NULL, NULL);
	sqlite3_close(holder);
	ok(ps_db_set_state(second, id, PS_STATE_WRITTEN, "", &ctx, &err) == 0,
	   "once it is done the write goes through");
	ps_db_close(second);
	setenv(PS_DB_BUSY_ENV, "-5", 1);
	is_int(ps_db_open(path_of("audit.db"), &second, &err), PS_EINVAL,
	       "a bad " PS_DB_BUSY_ENV " is refused");
	unsetenv(PS_DB_BUSY_ENV);
}

static void next_serial_is(struct ps_db *db, const char *prefix, const char *want)
{
	struct ps_err err = {""};
	char serial[PS_SERIAL_MAX + 1] = "";
	int rc = ps_db_next_serial(db, prefix, &ctx, "/dev/sdb", serial, sizeof(serial), &err);

	ok(rc == 0 && strcmp(serial, want) == 0, "sequence '%s': %s (got '%s'%s%s)", prefix, want,
	   serial, rc < 0 ? ": " : "", err.msg);
}

/* Allocate n serials of prefix on a connection of its own, into out (n lines). */
struct allocator {
	const char *prefix;
	int n;
	char serials[64][PS_SERIAL_MAX + 1];
	int failures;
	char error[1024];
};

static void *allocate(void *arg)
{
	struct allocator *a = arg;
	struct ps_err err = {""};
	struct ps_db *db = NULL;
	int i;

	if (ps_db_open(path_of("sequence.db"), &db, &err) < 0) {
		a->failures = a->n;
		snprintf(a->error, sizeof(a->error), "%s", err.msg);
		return NULL;
	}
	for (i = 0; i < a->n; i++) {
		if (ps_db_next_serial(db, a->prefix, &ctx, NULL, a->serials[i],
				      sizeof(a->serials[i]), &err) < 0) {
			a->failures++;
			snprintf(a->error, sizeof(a->error), "%s", err.msg);
		}
	}
	ps_db_close(db);
	return NULL;
}

static int compare_serials(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* Every serial of all[n] distinct and exactly prefix 1 .. prefix n. */
static bool exactly_1_to_n(const char *prefix, char (*all)[PS_SERIAL_MAX + 1], int n)
{
	char want[PS_SERIAL_MAX + 1];
	int i;

	qsort(all, (size_t)n, sizeof(all[0]), compare_serials);
	for (i = 0; i < n; i++) {
		snprintf(want, sizeof(want), "%s%06d", prefix, i + 1);
		if (strcmp(all[i], want) != 0) {
			printf("# serial %d is '%s', expected '%s'\n", i, all[i], want);
			return false;
		}
	}
	return true;
}

static void test_sequence(void)
{
	static char all[200][PS_SERIAL_MAX + 1];
	struct allocator threads[2];
	pthread_t tid[2];
	struct ps_err err = {""};
	struct ps_db *db = NULL;
	char serial[PS_SERIAL_MAX + 1], longer[80];
	int pipes[2], i, n = 0, status, children_ok = 1;
	FILE *in;

	ok(ps_db_open(path_of("sequence.db"), &db, &err) == 0, "sequence database: %s", err.msg);
	if (db == NULL)
		return;
	next_serial_is(db, "ABC-", "ABC-000001");
	next_serial_is(db, "ABC-", "ABC-000002");
	next_serial_is(db, "XYZ/", "XYZ/000001");
	/* Certificates with the prefix and digits count, typed or imported ones too. */
	issue(db, "ABC-000041", "5E01", NULL);
	issue(db, "ABC-7", "5E02", NULL);
	issue(db, "ABC-X-000900", "5E03", NULL);
	issue(db, "ABC-12x", "5E04", NULL);
	issue(db, "ABC-99999999999999999999", "5E05", NULL);
	issue(db, "ABCD-000800", "5E06", NULL);
	next_serial_is(db, "ABC-", "ABC-000042");
	/* GLOB characters in the prefix are literal. */
	issue(db, "L1X-000050", "5E07", NULL);
	next_serial_is(db, "L[1]*-", "L[1]*-000001");
	issue(db, "L[1]*-000010", "5E08", NULL);
	next_serial_is(db, "L[1]*-", "L[1]*-000011");
	next_serial_is(db, "", "000001");
	memset(longer, 'P', 60);
	longer[60] = '\0';
	is_int(ps_db_next_serial(db, longer, &ctx, NULL, serial, sizeof(serial), &err), PS_EINVAL,
	       "a prefix too long for a serial is refused");
	contains(err.msg, "sequence with prefix", "naming the sequence: %s", err.msg);
	is_int(ps_db_next_serial(db, "ABC-", &ctx, NULL, serial, 8, &err), PS_EINVAL,
	       "a serial that does not fit the buffer is refused");
	next_serial_is(db, "ABC-", "ABC-000043"); /* a refused allocation reserved nothing */

	/* Two slots at once: two threads, a connection each. */
	for (i = 0; i < 2; i++) {
		memset(&threads[i], 0, sizeof(threads[i]));
		threads[i].prefix = "THR-";
		threads[i].n = 25;
		pthread_create(&tid[i], NULL, allocate, &threads[i]);
	}
	for (i = 0; i < 2; i++) {
		pthread_join(tid[i], NULL);
		ok(threads[i].failures == 0, "thread %d allocated its serials: %s", i,
		   threads[i].error);
		memcpy(all[n], threads[i].serials, 25 * sizeof(all[0]));
		n += 25;
	}
	ok(exactly_1_to_n("THR-", all, n), "two threads: 50 distinct serials, THR-000001 to 50");

	/* Other processes on the same database: four of them, each one ending abruptly
	 * (_exit, the database left open, as in a crash) after its serials. */
	ok(pipe(pipes) == 0, "pipe");
	for (i = 0; i < 4; i++) {
		pid_t pid = fork();

		if (pid == 0) {
			struct allocator a = {.prefix = "PRC-", .n = 30};
			FILE *outp = fdopen(pipes[1], "w");
			int j;

			close(pipes[0]);
			allocate(&a);
			for (j = 0; outp != NULL && j < a.n; j++)
				fprintf(outp, "%s\n", a.failures ? "FAILED" : a.serials[j]);
			if (outp != NULL)
				fflush(outp);
			_exit(a.failures ? 1 : 0);
		}
		if (pid < 0)
			children_ok = 0;
	}
	close(pipes[1]);
	in = fdopen(pipes[0], "r");
	n = 0;
	while (in != NULL && n < 200 && fgets(all[n], sizeof(all[n]), in) != NULL) {
		all[n][strcspn(all[n], "\n")] = '\0';
		n++;
	}
	if (in != NULL)
		fclose(in);
	for (i = 0; i < 4; i++)
		if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			children_ok = 0;
	ok(children_ok, "four processes allocated their serials");
	is_int(n, 120, "120 serials came back");
	ok(exactly_1_to_n("PRC-", all, n),
	   "four processes: 120 distinct serials, PRC-000001 to 120");
	next_serial_is(db, "PRC-", "PRC-000121");
	ps_db_close(db);
}

int main(void)
{
	struct ps_db *db = NULL;
	struct ps_err err = {""};
	char cmd[600];

	if (mkdtemp(dir) == NULL) {
		printf("Bail out! mkdtemp failed\n");
		return 1;
	}
	unsetenv(PS_DB_BUSY_ENV);
	ok(ps_db_open(path_of("audit.db"), &db, &err) == 0, "open a new database: %s", err.msg);
	if (db == NULL) {
		printf("Bail out! no database\n");
		return 1;
	}
	test_lifecycle(db);
	test_revoke(db);
	test_chain(db);
	test_csv_quoting(db);
	test_jsonl_is_janssons(db);
	test_import(db);
	test_csv_reader();
	test_text_and_busy(db);
	test_sequence();
	ps_db_close(db);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", dir);
	return tap_done();
}
