#!/bin/sh
# audit_cli.sh — the audit trail through the real binary: production context on every row,
# revoke (by certificate and by device, with RFC 5280 reasons), crl (a v2 CRL openssl reads
# and verifies, numbered one up each time, only the loaded CA's certificates; the serials
# list), export round trips through import (CSV and JSON lines, identical bytes, a field with
# a comma, quotes and a line break), import idempotence, export --sign checked with plain
# openssl, audit backup, audit verify catching rows edited, deleted and swapped with the
# sqlite3 shell, and a busy database giving one line instead of hanging.
. "$SRCDIR/tests/lib.sh"
PATH=$PATH:/usr/sbin:/sbin
need openssl sqlite3 python3 sfdisk mkfs.ext4 mkfs.vfat debugfs mkfifo

unset PROVSTATION_CONFIG PROVSTATION_CA_PASSPHRASE PROVSTATION_DB_BUSY_MS PROVSTATION_NOW
export LC_ALL=C
PS=$PROVSTATION
DB=$TMP/audit.db

# run COMMAND...: its output in $TMP/run.out and $TMP/run.err, its status in $run_rc.
run() {
	"$@" >"$TMP/run.out" 2>"$TMP/run.err" </dev/null
	run_rc=$?
	return $run_rc
}
# one_line_error STATUS PATTERN: the last run exited STATUS with one line on stderr matching
# PATTERN (grep -E); says why not.
one_line_error() {
	if [ "$run_rc" -ne "$1" ]; then
		echo "exit status $run_rc, not $1: $(cat "$TMP/run.err")"
		return 1
	fi
	if [ "$(wc -l <"$TMP/run.err")" -ne 1 ]; then
		echo "stderr is not one line:"
		cat "$TMP/run.err"
		return 1
	fi
	grep -q -E -e "$2" "$TMP/run.err" || {
		echo "stderr does not match /$2/: $(cat "$TMP/run.err")"
		return 1
	}
}
# refused DESC STATUS PATTERN COMMAND...: COMMAND exits STATUS with one matching line.
refused() {
	r_desc=$1 r_status=$2 r_pat=$3
	shift 3
	run "$@"
	one_line_error "$r_status" "$r_pat" >"$TMP/why"
	r_st=$?
	[ $r_st -eq 0 ]
	check "$r_desc"
	[ $r_st -eq 0 ] || sed 's/^/#   /' "$TMP/why"
}

# jq-like queries on a JSON lines export, in python3.
# rows FILE EXPR: print EXPR (python, row is r) for every row, one per line.
rows() {
	python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(eval(sys.argv[2]))' "$1" "$2"
}
export_jsonl() { "$PS" export --config "$CONF" --format jsonl "$@"; }

# --- a station: CA, configuration, four provisionings ---------------------------------------
ok "ca init" "$PS" ca init --dir "$TMP/ca" --subject "/CN=audit test CA/O=provstation tests"
CONF=$TMP/station.conf
cat >"$CONF" <<EOF
[station]
id = line-3
operator = alice
database = $DB
batch = WO-2026-117
[ca]
dir = $TMP/ca
[device]
common_name = {serial}.devices.example.com
EOF
ok "a Mender image" "$SRCDIR/scripts/mkmenderimg.sh" --size 64 "$TMP/dev.img"
for s in SN-1 SN-2 SN-3 SN-1; do
	ok "provision $s" "$PS" provision --config "$CONF" --target "$TMP/dev.img" --serial "$s"
done
# A target whose name holds a comma, quotes and a line break, and such a serial.
WEIRD_TARGET="$TMP/slot 2,
\"left\".img"
cp "$TMP/dev.img" "$WEIRD_TARGET"
ok "provision a device whose serial holds a comma and quotes, on a path with a line break" \
	"$PS" provision --config "$CONF" --target "$WEIRD_TARGET" --serial 'SN,"5"'

export_jsonl >"$TMP/rows.jsonl"
[ "$(wc -l <"$TMP/rows.jsonl")" -eq 5 ]
check "five rows"
CA_FP=$(openssl x509 -in "$TMP/ca/ca-cert.pem" -outform DER | sha256sum | cut -d' ' -f1)
[ "$(rows "$TMP/rows.jsonl" '(r["station_id"], r["operator"], r["batch"], r["ca_fingerprint"])' |
	sort -u)" = "('line-3', 'alice', 'WO-2026-117', '$CA_FP')" ]
check "every row carries station id, operator, batch and the CA certificate's SHA-256"
# (Row 1 may be superseded by row 4 once provisioning supersedes a device's older certificate.)
[ "$(rows "$TMP/rows.jsonl" 'r["state"]' | sed 1d | sort -u)" = verified ] &&
	rows "$TMP/rows.jsonl" 'r["state"]' | head -1 | grep -q -x -E 'verified|superseded'
check "all verified"
serial_of() { # serial_of N: the certificate serial of row N (1-based)
	rows "$TMP/rows.jsonl" 'r["cert_serial"]' | sed -n "${1}p"
}
S1A=$(serial_of 1) S2=$(serial_of 2) S3=$(serial_of 3) S1B=$(serial_of 4) S5=$(serial_of 5)
ok "audit verify: a fresh trail verifies" "$PS" audit verify --config "$CONF"
n_events=$(sqlite3 "$DB" 'SELECT count(*) FROM events')
grep -q -E "integrity ok; $n_events events in an unbroken chain, head [0-9a-f]{64}; 5 certificates match" \
	"$TMP/.out"
check "it reports the $n_events events, the head hash and 5 certificates"

# --- revoke ---------------------------------------------------------------------------------
refused "revoke without a certificate or device: usage error" 2 "give either" \
	"$PS" revoke --config "$CONF"
refused "revoke with both: usage error" 2 "give either" \
	"$PS" revoke --config "$CONF" --cert-serial "$S2" --serial SN-2
refused "an unknown reason: usage error naming the RFC 5280 ones" 2 "keyCompromise" \
	"$PS" revoke --config "$CONF" --cert-serial "$S2" --reason stolen
refused "an unknown certificate serial: one line, exit 1" 1 "no certificate with serial 0badc0de" \
	"$PS" revoke --config "$CONF" --cert-serial 0badc0de
refused "an unknown device: one line, exit 1" 1 "no certificate of device 'SN-404'" \
	"$PS" revoke --config "$CONF" --serial SN-404
refused "revoke on a database that does not exist: one line, nothing created" 1 \
	"audit database .*/none.db: No such file" "$PS" revoke --db "$TMP/none.db" --serial SN-1
[ ! -e "$TMP/none.db" ]
check "... and no database was created"

# The serial as openssl prints it: upper case with colons.
S2_COLONS=$(echo "$S2" | tr a-f A-F | sed 's/../&:/g; s/:$//')
ok "revoke --cert-serial $S2_COLONS --reason keycompromise" \
	"$PS" revoke --config "$CONF" --cert-serial "$S2_COLONS" --reason keycompromise
grep -q "^revoked .*$S2  device SN-2  (keyCompromise)" "$TMP/.out"
check "it names the certificate, the device and the reason (spelt as RFC 5280 does)"
ok "revoking it again is a no-op" "$PS" revoke --config "$CONF" --cert-serial "$S2"
grep -q "already revoked  $S2" "$TMP/.out" && grep -q "^nothing to revoke" "$TMP/.out"
check "... that says the certificate was already revoked"
ok "revoke --serial SN-1 --reason superseded: both of its certificates" \
	"$PS" revoke --config "$CONF" --serial SN-1 --reason superseded
grep -q "^2 certificates revoked" "$TMP/.out"
check "two revoked"
export_jsonl --status revoked >"$TMP/revoked.jsonl"
[ "$(rows "$TMP/revoked.jsonl" '" ".join((r["cert_serial"], r["reason"], str(len(r["revoked_at"]))))' |
	sort)" = "$(printf '%s superseded 20\n%s keyCompromise 20\n%s superseded 20\n' \
		"$S1A" "$S2" "$S1B" | sort)" ]
check "the rows say revoked, with their reasons and revocation times"
[ "$(sqlite3 "$DB" "SELECT count(*) || ' ' || group_concat(DISTINCT station_id) || ' ' ||
	group_concat(DISTINCT operator) FROM events WHERE kind = 'revoked'")" = "3 line-3 alice" ]
check "three revoked events, each with the station and operator"

# --- crl ------------------------------------------------------------------------------------
refused "crl without --out: usage error" 2 "--out is required" "$PS" crl --config "$CONF"
ok "crl --out crl.pem --days 7" "$PS" crl --config "$CONF" --out "$TMP/crl.pem" --days 7
grep -q "^CRL number 1 of .*audit test CA.*: 3 revoked certificates" "$TMP/.out"
check "CRL number 1 with 3 revoked certificates"
openssl crl -in "$TMP/crl.pem" -noout -text >"$TMP/crl.txt"
check "openssl reads the CRL"
grep -q "Version 2 (0x1)" "$TMP/crl.txt"
check "it is a v2 CRL"
openssl crl -in "$TMP/crl.pem" -noout -CAfile "$TMP/ca/ca-cert.pem" 2>&1 | grep -q "verify OK"
check "its signature verifies against the CA certificate"
awk '/CRL Number/{getline; gsub(/ /,""); print}' "$TMP/crl.txt" | grep -qx 1
check "CRL number 1"
last=$(openssl crl -in "$TMP/crl.pem" -noout -lastupdate | cut -d= -f2)
next=$(openssl crl -in "$TMP/crl.pem" -noout -nextupdate | cut -d= -f2)
[ $(($(date -d "$next" +%s) - $(date -d "$last" +%s))) -eq $((7 * 86400)) ]
check "next update is 7 days after this update"
upper() { echo "$1" | tr a-f A-F; }
for s in "$S1A" "$S2" "$S1B"; do
	grep -q "Serial Number: $(upper "$s")" "$TMP/crl.txt" || echo "missing $s"
done >"$TMP/why"
[ ! -s "$TMP/why" ]
check "the three revoked serials are listed"
! grep -q -e "$(upper "$S3")" -e "$(upper "$S5")" "$TMP/crl.txt"
check "the certificates not revoked are not"
python3 - "$TMP/crl.txt" "$(upper "$S2")" <<'EOF' >"$TMP/reasons"
import sys
reason, cur, out = None, None, []
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("Serial Number:"):
        cur = line.split(":", 1)[1].strip()
    elif cur and line in ("Key Compromise", "Superseded"):
        out.append((cur == sys.argv[2], line))
print(sorted(out))
EOF
[ "$(cat "$TMP/reasons")" = "[(False, 'Superseded'), (False, 'Superseded'), (True, 'Key Compromise')]" ]
check "with their reason codes (keyCompromise for $S2, superseded for the others)"
ok "a second CRL" "$PS" crl --config "$CONF" --out "$TMP/crl2.pem"
openssl crl -in "$TMP/crl2.pem" -noout -crlnumber | grep -qx "crlNumber=0x02"
check "is number 2"
[ "$(sqlite3 "$DB" "SELECT last FROM crl_numbers WHERE ca_fingerprint = '$CA_FP'")" = 2 ]
check "the CRL number is kept durably in the audit database"
ok "crl --format serials" "$PS" crl --config "$CONF" --format serials --out "$TMP/blacklist.txt"
strip0() { echo "$1" | sed 's/^0*//'; }
[ "$(sort "$TMP/blacklist.txt")" = "$(printf '%s\n' "$(strip0 "$S1A")" "$(strip0 "$S2")" \
	"$(strip0 "$S1B")" | sort)" ]
check "the serials file: one lower-case hex serial per line, no colons or leading zeros"
refused "crl with an encrypted CA key and no passphrase: one line" 1 "encrypted" \
	sh -c "printf 'secret\n' >'$TMP/pass' && chmod 600 '$TMP/pass' &&
		'$PS' ca init --dir '$TMP/ca-enc' --passphrase-file '$TMP/pass' >/dev/null &&
		exec '$PS' crl --db '$DB' --ca-dir '$TMP/ca-enc' --out '$TMP/enc.pem'"
ok "... and with --passphrase-file it signs" \
	"$PS" crl --db "$DB" --ca-dir "$TMP/ca-enc" --passphrase-file "$TMP/pass" \
	--out "$TMP/enc.pem"
openssl crl -in "$TMP/enc.pem" -noout -text | grep -q "No Revoked Certificates"
check "... a CRL of that CA, which has no revoked certificates here"

# --- export, import, round trips ------------------------------------------------------------
for fmt in csv jsonl; do
	ok "export --format $fmt" "$PS" export --config "$CONF" --format $fmt --out "$TMP/e1.$fmt"
	ok "import it into an empty database" "$PS" import --db "$TMP/r-$fmt.db" "$TMP/e1.$fmt"
	grep -q "^imported .*($fmt): 5 added, 0 updated, 0 unchanged, 0 skipped" "$TMP/.out"
	check "5 rows added"
	ok "import it again" "$PS" import --db "$TMP/r-$fmt.db" "$TMP/e1.$fmt"
	grep -q ": 0 added, 0 updated, 5 unchanged, 0 skipped" "$TMP/.out"
	check "importing twice changes nothing"
	ok "export the copy" "$PS" export --db "$TMP/r-$fmt.db" --format $fmt --out "$TMP/e2.$fmt"
	cmp "$TMP/e1.$fmt" "$TMP/e2.$fmt" >/dev/null
	check "$fmt round trip: export, import, export gives identical bytes"
	ok "the copy's audit trail verifies" "$PS" audit verify --db "$TMP/r-$fmt.db"
done
python3 - "$TMP/e1.csv" "$WEIRD_TARGET" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
r = rows[-1]
assert r["device_serial"] == 'SN,"5"', r["device_serial"]
assert r["target"] == sys.argv[2], repr(r["target"])
assert r["common_name"] == 'SN,"5".devices.example.com'
EOF
check "python's csv module reads the comma, the quotes and the line break back (RFC 4180)"
grep -q '^"SN,""5""",' "$TMP/e1.csv"
check "the field is quoted and its quotes doubled"
ok "sqlite3 sees the same target in the copy" \
	sh -c "[ \"\$(sqlite3 '$TMP/r-csv.db' \"SELECT target FROM certificates WHERE id = 5\")\" = '$WEIRD_TARGET' ]"

# Central audit: another station with its own CA merges in; the CRL keeps to its CA.
cat >"$TMP/other.conf" <<EOF
[station]
id = line-9
operator = bob
database = $TMP/other.db
batch = WO-9
[ca]
dir = $TMP/ca-other
EOF
ok "another station's CA" "$PS" ca init --dir "$TMP/ca-other"
ok "it provisions SN-9" "$PS" provision --config "$TMP/other.conf" --target "$TMP/dev.img" \
	--serial SN-9
ok "and revokes it" "$PS" revoke --config "$TMP/other.conf" --serial SN-9
ok "its export" "$PS" export --config "$TMP/other.conf" --format jsonl --out "$TMP/other.jsonl"
ok "merged into this station's database" "$PS" import --config "$CONF" "$TMP/other.jsonl"
grep -q ": 1 added" "$TMP/.out"
check "one row added"
export_jsonl --station line-9 >"$TMP/merged.jsonl"
[ "$(rows "$TMP/merged.jsonl" '(r["station_id"], r["operator"], r["batch"], r["state"])')" = \
	"('line-9', 'bob', 'WO-9', 'revoked')" ]
check "the merged row keeps its station, operator, batch and state"
[ "$(rows "$TMP/merged.jsonl" 'r["created_at"]')" = \
	"$(rows "$TMP/other.jsonl" 'r["created_at"]')" ]
check "... and its times"
[ "$(sqlite3 "$DB" "SELECT kind, station_id, operator FROM events ORDER BY seq DESC LIMIT 1")" = \
	"imported|line-3|alice" ]
check "an imported event in this station's chain, by this station's operator"
ok "crl --format serials after the merge" \
	"$PS" crl --config "$CONF" --format serials --out "$TMP/blacklist2.txt"
cmp "$TMP/blacklist.txt" "$TMP/blacklist2.txt" >/dev/null
check "the other CA's revoked certificate is not in this CA's list"
ok "crl of the other CA from the merged database" \
	"$PS" crl --config "$CONF" --ca-dir "$TMP/ca-other" --out "$TMP/other-crl.pem"
[ "$(openssl crl -in "$TMP/other-crl.pem" -noout -text | grep -c 'Serial Number')" -eq 1 ]
check "... lists its one revoked certificate"
printf 'not,an,export\n' >"$TMP/junk.csv"
refused "importing something else: one line" 1 "neither JSON lines nor CSV" \
	"$PS" import --config "$CONF" "$TMP/junk.csv"
head -c 700 "$TMP/e1.csv" >"$TMP/cut.csv"
refused "a truncated CSV: one line naming the record, nothing imported" 1 "record 2" \
	"$PS" import --db "$TMP/cut.db" "$TMP/cut.csv"
[ "$(sqlite3 "$TMP/cut.db" 'SELECT count(*) FROM certificates')" = 0 ]
check "... the database is as it was"

# --- export --sign --------------------------------------------------------------------------
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/station.key" 2>/dev/null &&
	chmod 600 "$TMP/station.key" &&
	openssl pkey -in "$TMP/station.key" -pubout -out "$TMP/station.pub"
check "a station key (P-256) and its public half"
ok "export --sign" "$PS" export --config "$CONF" --format csv --out "$TMP/export.csv" \
	--sign "$TMP/station.key"
[ -s "$TMP/export.csv.sig" ]
check "writes export.csv.sig next to the export"
ok "the auditor's check: openssl dgst -sha256 -verify station.pub -signature export.csv.sig export.csv" \
	openssl dgst -sha256 -verify "$TMP/station.pub" -signature "$TMP/export.csv.sig" "$TMP/export.csv"
grep -q "^Verified OK" "$TMP/.out"
check "openssl says Verified OK"
pub_sha=$(openssl pkey -pubin -in "$TMP/station.pub" -outform DER | sha256sum | cut -d' ' -f1)
"$PS" export --config "$CONF" --format csv --out "$TMP/export.csv" --sign "$TMP/station.key" \
	2>&1 | grep -q "station key sha256:$pub_sha"
check "provstation names the key by its SPKI SHA-256, which the auditor can compare"
cp "$TMP/export.csv" "$TMP/forged.csv"
sed -i 's/line-3/line-4/' "$TMP/forged.csv"
fails "a changed export fails the auditor's check" \
	openssl dgst -sha256 -verify "$TMP/station.pub" -signature "$TMP/export.csv.sig" "$TMP/forged.csv"
openssl genpkey -algorithm ed25519 -out "$TMP/ed.key" && chmod 600 "$TMP/ed.key" &&
	openssl pkey -in "$TMP/ed.key" -pubout -out "$TMP/ed.pub"
check "an Ed25519 station key"
ok "export --format jsonl --sign with it" "$PS" export --config "$CONF" --format jsonl \
	--out "$TMP/export.jsonl" --sign "$TMP/ed.key"
ok "the auditor's check for Ed25519: openssl pkeyutl -verify -rawin" \
	openssl pkeyutl -verify -pubin -inkey "$TMP/ed.pub" -rawin -in "$TMP/export.jsonl" \
	-sigfile "$TMP/export.jsonl.sig"
chmod 640 "$TMP/station.key"
refused "a group-readable station key is refused" 1 "readable by group or others" \
	"$PS" export --config "$CONF" --format csv --out "$TMP/x.csv" --sign "$TMP/station.key"
refused "--sign without --out: usage error" 2 "--sign needs --out" \
	"$PS" export --config "$CONF" --format csv --sign "$TMP/ed.key"

# --- backup ---------------------------------------------------------------------------------
ok "audit backup" "$PS" audit backup --config "$CONF" "$TMP/backup.db"
[ "$(stat -c %a "$TMP/backup.db")" = 600 ] && [ ! -e "$TMP/backup.db.partial" ]
check "the backup is mode 0600, nothing partial left"
ok "the backup verifies" "$PS" audit verify --db "$TMP/backup.db"
"$PS" export --db "$TMP/backup.db" --format csv >"$TMP/b.csv" 2>/dev/null
"$PS" export --config "$CONF" --format csv >"$TMP/a.csv" 2>/dev/null
cmp "$TMP/a.csv" "$TMP/b.csv" >/dev/null
check "and holds every row"
refused "a backup never overwrites a file" 1 "exists" \
	"$PS" audit backup --config "$CONF" "$TMP/backup.db"
refused "audit with no action: usage error" 2 "verify or backup" "$PS" audit --config "$CONF"

# --- tampering with the sqlite3 shell -------------------------------------------------------
n_copy=0
# tampered DESC PATTERN SQL: a backup copy edited with the sqlite3 shell fails audit verify
# with one line matching PATTERN.
tampered() {
	n_copy=$((n_copy + 1))
	t_db="$TMP/tampered-$n_copy.db"
	"$PS" audit backup --config "$CONF" "$t_db" >/dev/null &&
		sqlite3 "$t_db" "$3" || echo "# could not tamper: $3"
	refused "$1" 1 "$2" "$PS" audit verify --db "$t_db"
}
tampered "a certificate un-revoked (state edited) is detected" \
	"certificate id 2 .*has state 'verified', but its events .* say 'revoked'" \
	"UPDATE certificates SET state = 'verified', reason = '', revoked_at = '' WHERE id = 2"
tampered "an edited operator is detected" "certificate id 3 .*has operator 'mallory'" \
	"UPDATE certificates SET operator = 'mallory' WHERE id = 3"
tampered "an edited event is detected, by its seq" "event seq 4: the row was changed" \
	"UPDATE events SET at = '2020-01-01T00:00:00Z' WHERE seq = 4"
tampered "a deleted event is detected, by its seq" "event seq 7 is missing" \
	"DELETE FROM events WHERE seq = 7"
tampered "two events swapped (renumbered) are detected" "event seq 5: it does not follow seq 4" \
	"UPDATE events SET seq = -1 WHERE seq = 5; UPDATE events SET seq = 5 WHERE seq = 6;
	 UPDATE events SET seq = 6 WHERE seq = -1"
tampered "two events' details swapped are detected" "event seq 2: the row was changed" \
	"UPDATE events SET detail = CASE seq WHEN 2 THEN (SELECT detail FROM events WHERE seq = 3)
	 ELSE (SELECT detail FROM events WHERE seq = 2) END WHERE seq IN (2, 3)"
tampered "a deleted certificate is detected" "names certificate id 4, which is not in" \
	"DELETE FROM certificates WHERE id = 4"
tampered "the last event deleted is detected" "audit mismatch" \
	"DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)"
n_copy=$((n_copy + 1))
"$PS" audit backup --config "$CONF" "$TMP/tampered-$n_copy.db" >/dev/null
# The events table's root page gets a broken b-tree header.
python3 - "$TMP/tampered-$n_copy.db" \
	"$(sqlite3 "$TMP/tampered-$n_copy.db" "SELECT rootpage FROM sqlite_master WHERE name = 'events'")" \
	"$(sqlite3 "$TMP/tampered-$n_copy.db" 'PRAGMA page_size')" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek((int(sys.argv[2]) - 1) * int(sys.argv[3]))
    f.write(b"\x0d" + b"\xff" * 300)
EOF
refused "a damaged file fails audit verify (SQLite's integrity check), one line" 1 \
	"integrity check|malformed" "$PS" audit verify --db "$TMP/tampered-$n_copy.db"

# --- a busy database ------------------------------------------------------------------------
# Another process holds the write lock (the sqlite3 shell in BEGIN IMMEDIATE, fed through a
# FIFO so the test decides when it lets go).
mkfifo "$TMP/sql.fifo"
sqlite3 "$DB" <"$TMP/sql.fifo" >"$TMP/sql.out" 2>&1 &
SQL_PID=$!
at_exit "kill $SQL_PID 2>/dev/null"
exec 3>"$TMP/sql.fifo"
printf 'BEGIN IMMEDIATE;\n.shell touch %s\n' "$TMP/locked" >&3
i=0
while [ ! -e "$TMP/locked" ] && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
[ -e "$TMP/locked" ]
check "the sqlite3 shell holds the write lock"
t0=$(date +%s%N)
refused "revoke while it is held: one line saying busy, exit 1" 1 "busy" \
	env PROVSTATION_DB_BUSY_MS=300 "$PS" revoke --config "$CONF" --serial SN-3
t1=$(date +%s%N)
[ $(((t1 - t0) / 1000000)) -lt 3000 ]
check "... after the short busy timeout, not the default"
ok "export meanwhile: readers are not blocked" "$PS" export --config "$CONF" --format csv \
	--out "$TMP/during.csv"
ok "audit verify meanwhile" "$PS" audit verify --config "$CONF"
printf 'COMMIT;\n' >&3
exec 3>&-
wait $SQL_PID
ok "once the lock is released revoke works" "$PS" revoke --config "$CONF" --serial SN-3
ok "and the trail still verifies" "$PS" audit verify --config "$CONF"
done_testing
