/* bench_audit.c — `make bench`, audit part: issuance rows committed per second through the
 * audit store's C API, each in its own durable transaction (WAL, synchronous = FULL: the
 * commit is on disk when ps_db_record_issued returns), as provisioning commits them; then the
 * whole lifecycle of a device (issued, written, verified: three durable commits).
 *
 * usage: bench_audit DB [ROWS [DEVICES]]   (DB must not exist yet)
 * prints: issued_rows ROWS SECONDS ROWS_PER_SECOND
 *         lifecycles DEVICES SECONDS DEVICES_PER_SECOND */
#include "audit.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A PEM block of about the size a P-256 certificate or key has. */
static void fake_pem(char *out, size_t len, const char *label, int lines, unsigned seed)
{
	size_t n = (size_t)snprintf(out, len, "-----BEGIN %s-----\n", label);
	int i, j;

	for (i = 0; i < lines; i++) {
		for (j = 0; j < 64 && n + 2 < len; j++)
			out[n++] =
			    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
				[(seed * 2654435761u + (unsigned)(i * 64 + j) * 40503u) % 64];
		out[n++] = '\n';
	}
	snprintf(out + n, len - n, "-----END %s-----\n", label);
}

static int issue(struct ps_db *db, const struct ps_audit_context *ctx, long i, int64_t *id)
{
	char serial[40], device[32], cn[64], cert[1024], pub[256];
	struct ps_issue_record rec;
	struct ps_err err = {""};
	int rc;

	snprintf(serial, sizeof(serial), "%032lx", 0x5a5a0000000L + i);
	snprintf(device, sizeof(device), "SN-%07ld", i);
	snprintf(cn, sizeof(cn), "%s.devices.example.com", device);
	fake_pem(cert, sizeof(cert), "CERTIFICATE", 10, (unsigned)i);
	fake_pem(pub, sizeof(pub), "PUBLIC KEY", 2, (unsigned)i);
	rec = (struct ps_issue_record){
	    .device_serial = device,
	    .common_name = cn,
	    .pubkey_pem = pub,
	    .pubkey_sha256 = "3f1c2bd4f0e9a1c8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4",
	    .cert_serial = serial,
	    .cert_pem = cert,
	    .not_before = 1795000000,
	    .not_after = 2110000000,
	    .target = "/dev/sdb",
	    .image_name = "core-image-minimal-raspberrypi4.sdimg",
	    .image_sha256 = "",
	};
	rc = ps_db_record_issued(db, ctx, &rec, id, &err);
	if (rc < 0)
		fprintf(stderr, "bench_audit: %s\n", err.msg);
	return rc;
}

int main(int argc, char **argv)
{
	struct ps_audit_context ctx = {
	    "line-3", "alice", "WO-2026-117",
	    "e9786e112c62110265fa18a579471e781f5a156675c72c9caed4ddbf6cb866be"};
	struct ps_db *db = NULL;
	struct ps_err err = {""};
	long rows = argc > 2 ? atol(argv[2]) : 2000;
	long devices = argc > 3 ? atol(argv[3]) : 500;
	double t0, t1;
	int64_t id;
	long i;

	if (argc < 2 || rows < 1 || devices < 1) {
		fprintf(stderr, "usage: bench_audit DB [ROWS [DEVICES]]\n");
		return 2;
	}
	if (access(argv[1], F_OK) == 0) {
		fprintf(stderr, "bench_audit: %s exists\n", argv[1]);
		return 1;
	}
	if (ps_db_open(argv[1], &db, &err) < 0) {
		fprintf(stderr, "bench_audit: %s\n", err.msg);
		return 1;
	}
	t0 = now_s();
	for (i = 0; i < rows; i++)
		if (issue(db, &ctx, i, &id) < 0)
			return 1;
	t1 = now_s();
	printf("issued_rows %ld %.3f %.1f\n", rows, t1 - t0, (double)rows / (t1 - t0));
	t0 = now_s();
	for (i = 0; i < devices; i++) {
		if (issue(db, &ctx, rows + i, &id) < 0 ||
		    ps_db_set_state(db, id, PS_STATE_WRITTEN, "", &ctx, &err) < 0 ||
		    ps_db_set_state(db, id, PS_STATE_VERIFIED, "", &ctx, &err) < 0) {
			fprintf(stderr, "bench_audit: %s\n", err.msg);
			return 1;
		}
	}
	t1 = now_s();
	printf("lifecycles %ld %.3f %.1f\n", devices, t1 - t0, (double)devices / (t1 - t0));
	ps_db_close(db);
	return 0;
}
