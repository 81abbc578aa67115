#!/bin/bash
# audit.sh — `make bench`, audit part: issuance rows committed per second with durable commits
# (bench_audit, through the C API), then the time and peak memory (/usr/bin/time -v, maximum
# resident set size) of exporting 1,000,000 rows as CSV and as JSON lines, against 10,000
# rows: the export streams, so its memory does not grow with the rows. Also SQLite's integrity
# check of that database, and the time and peak memory of importing 100,000 rows back.
#
# Environment: PROVSTATION (the binary), BENCH_AUDIT (bench/bench_audit), BENCH_ROWS (default
# 1000000), BENCH_IMPORT_ROWS (default 100000), TMPDIR (needs about 4 GB for 1M rows).
set -eu
: "${PROVSTATION:?run through make bench}"
: "${BENCH_AUDIT:?run through make bench (bench/bench_audit)}"
ROWS=${BENCH_ROWS:-1000000}
IMPORT_ROWS=${BENCH_IMPORT_ROWS:-100000}
for tool in sqlite3 /usr/bin/time; do
	command -v "$tool" >/dev/null || {
		echo "audit bench: skipped ($tool is not installed)"
		exit 0
	}
done
work=$(mktemp -d "${TMPDIR:-/tmp}/ps-bench-audit.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- durable issuance through the C API ------------------------------------------------------
read -r _ n_rows t_rows rate_rows < <("$BENCH_AUDIT" "$work/durable.db" 2000 500 | grep '^issued_rows')
read -r _ n_dev t_dev rate_dev < <("$BENCH_AUDIT" "$work/durable2.db" 1 500 | grep '^lifecycles')

# --- a database of ROWS rows, generated fast -------------------------------------------------
# The schema comes from provstation itself; the rows from one INSERT with a recursive CTE,
# shaped like real ones (P-256 certificate and key PEMs with line breaks, which CSV quotes).
gen() { # gen DB N
	"$PROVSTATION" export --db "$1" --format csv >/dev/null
	sqlite3 "$1" >/dev/null <<SQL
PRAGMA journal_mode = DELETE;
PRAGMA synchronous = OFF;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2)
INSERT INTO certificates (device_serial, common_name, pubkey_pem, pubkey_sha256, cert_serial,
	cert_pem, not_before, not_after, state, station_id, operator, batch, ca_fingerprint,
	target, image_name, image_sha256, created_at, updated_at)
SELECT printf('SN-%08d', i), printf('SN-%08d.devices.example.com', i),
	'-----BEGIN PUBLIC KEY-----' || char(10) || hex(randomblob(32)) || char(10) ||
	substr(hex(randomblob(30)), 1, 60) || char(10) || '-----END PUBLIC KEY-----' || char(10),
	lower(hex(randomblob(32))), lower(hex(randomblob(16))),
	'-----BEGIN CERTIFICATE-----' || char(10) || hex(randomblob(32)) || char(10) ||
	replace(printf('%.9c', 'M'), 'M',
		'MIIBszCCAVmgAwIBAgIQWpZ5Cw2XqvP4sUu5R3c0ITAKBggqhkjOPQQDAjAgMR4w' || char(10)) ||
	'-----END CERTIFICATE-----' || char(10),
	'2026-11-23T11:07:36Z', '2036-11-21T11:07:36Z', 'verified', 'line-' || (i % 4), 'alice',
	'WO-' || (i / 10000), 'e9786e112c62110265fa18a579471e781f5a156675c72c9caed4ddbf6cb866be',
	'/dev/sdb', 'core-image-minimal-raspberrypi4.sdimg', '',
	strftime('%Y-%m-%dT%H:%M:%SZ', 1795000000 + i, 'unixepoch'),
	strftime('%Y-%m-%dT%H:%M:%SZ', 1795000000 + i, 'unixepoch')
FROM n;
PRAGMA journal_mode = WAL;
SQL
}

# measure NAME COMMAND...: run it under /usr/bin/time -v; sets NAME_s (wall clock seconds),
# NAME_cpu (user + system seconds) and NAME_kb (maximum resident set size).
measure() {
	m_name=$1
	shift
	/usr/bin/time -v "$@" 2>"$work/time.$m_name" >/dev/null
	eval "$(awk -F': ' -v n="$m_name" '
		/Elapsed \(wall clock\)/ {
			k = split($2, p, ":"); s = 0
			for (i = 1; i <= k; i++) s = s * 60 + p[i]
			print n "_s=" s }
		/User time \(seconds\)/ { u = $2 }
		/System time \(seconds\)/ { y = $2 }
		/Maximum resident set size/ { print n "_kb=" $2 }
		END { print n "_cpu=" u + y }' "$work/time.$m_name")"
}

t0=$(date +%s.%N)
gen "$work/big.db" "$ROWS"
t1=$(date +%s.%N)
gen "$work/small.db" 10000

measure csv "$PROVSTATION" export --db "$work/big.db" --format csv --out "$work/big.csv"
measure jsonl "$PROVSTATION" export --db "$work/big.db" --format jsonl --out "$work/big.jsonl"
measure small_csv "$PROVSTATION" export --db "$work/small.db" --format csv --out "$work/small.csv"
measure small_jsonl "$PROVSTATION" export --db "$work/small.db" --format jsonl \
	--out "$work/small.jsonl"
csv_mb=$(($(stat -c %s "$work/big.csv") / 1048576))
jsonl_mb=$(($(stat -c %s "$work/big.jsonl") / 1048576))
[ "$(($(wc -l <"$work/big.jsonl")))" -eq "$ROWS" ]

measure integrity sqlite3 "$work/big.db" 'PRAGMA integrity_check'
db_mb=$(($(stat -c %s "$work/big.db") / 1048576))
head -n "$IMPORT_ROWS" "$work/big.jsonl" >"$work/part.jsonl"
measure import "$PROVSTATION" import --db "$work/imported.db" "$work/part.jsonl"

rate() { echo "$1 / $2" | bc -l; }
printf '\naudit store (WAL, synchronous = FULL, one transaction per commit):\n'
printf '  issuance rows committed durably   %8.0f rows/s   (%d rows in %.2f s, C API)\n' \
	"$rate_rows" "$n_rows" "$t_rows"
printf '  whole lifecycles (3 commits each) %8.0f devices/s (%d devices in %.2f s)\n' \
	"$rate_dev" "$n_dev" "$t_dev"
printf '\nexport of %d rows (generated in %.1f s with sqlite3):\n' "$ROWS" \
	"$(echo "$t1 - $t0" | bc -l)"
printf '  csv    %6.1f s (CPU %5.1f s)  %8.0f rows/s  %5d MiB  peak RSS %6d KiB\n' "$csv_s" \
	"$csv_cpu" "$(rate "$ROWS" "$csv_s")" "$csv_mb" "$csv_kb"
printf '  jsonl  %6.1f s (CPU %5.1f s)  %8.0f rows/s  %5d MiB  peak RSS %6d KiB\n' "$jsonl_s" \
	"$jsonl_cpu" "$(rate "$ROWS" "$jsonl_s")" "$jsonl_mb" "$jsonl_kb"
printf '  the same export of 10,000 rows: peak RSS %d KiB (csv), %d KiB (jsonl): memory does\n' \
	"$small_csv_kb" "$small_jsonl_kb"
printf '  not grow with the number of rows\n'
printf '  SQLite integrity check of that database (%d MiB, what the station runs when it\n' "$db_mb"
printf '  starts and audit verify runs first): %.1f s (CPU %.1f s)\n' "$integrity_s" "$integrity_cpu"
printf '\nimport of %d rows (JSON lines, one transaction, an event each):\n' "$IMPORT_ROWS"
printf '         %6.1f s (CPU %5.1f s)  %8.0f rows/s           peak RSS %6d KiB\n' "$import_s" \
	"$import_cpu" "$(rate "$IMPORT_ROWS" "$import_s")" "$import_kb"
