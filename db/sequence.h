/* sequence.h — serials from a sequence ([slot NAME] serial_source = sequence): a prefix and
 * the next number, zero-padded to PS_SEQUENCE_WIDTH digits ("ABC-000042"), unique in the
 * audit database. Each serial handed out is first reserved durably (table serial_sequence), so
 * a crash, another slot or another process on the same database never gets it again. */
#ifndef PS_SEQUENCE_H
#define PS_SEQUENCE_H

#include "audit.h"
#include "err.h"

#include <stddef.h>

/* Digits of a sequence number; larger numbers simply grow wider ("ABC-1000000"). */
#define PS_SEQUENCE_WIDTH 6

/* Reserve the next serial of prefix into out (len bytes): 1 + the largest number among the
 * serials reserved with that prefix and the certificates whose device serial is the prefix
 * followed by digits only (typed or imported ones), in one BEGIN IMMEDIATE transaction that
 * commits (durably) before the serial is returned. ctx and target (may be NULL) are recorded
 * with the reservation. A number that is reserved and then never used leaves a gap; it is
 * never handed out twice. PS_EINVAL when prefix plus the number is no usable serial. */
int ps_db_next_serial(struct ps_db *db, const char *prefix, const struct ps_audit_context *ctx,
		      const char *target, char *out, size_t len, struct ps_err *err);

#endif
